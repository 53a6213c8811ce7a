"""Automated rollouts end to end: the real `strangler serve` in front of two real upstreams, users'
requests flowing while a driver moves the route, and each step judged on what the proxy itself
measured on both arms (its per-arm statistics in the shadow sink, read by SinkEvidence).

- a rollout that passes every step ends with the route moved;
- an error rate, a latency regression and a planted shadow difference on the new arm each roll
  the route back to where it was, by themselves, and the proxy serves the monolith again;
- a data gate that closes mid-rollout rolls it back;
- a step without traffic does not pass on no data;
- webhooks of each kind are called, and a refusing pre-rollout webhook stops the start.

Every test has a route of its own (so one test's numbers never land in another's windows), on
one proxy whose table each test replaces. The first two use the rollouts beside routes.yaml, as
a replica's driver does: once the proxy runs its own driver (proxy/runtime.py), it drives them;
until then the test runs the driver the proxy would. The others run a driver of their own over
rollouts kept apart, with the same evidence. The takeover by another replica when the driving one
is killed is in test_rollout_takeover.py.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from proxy.rollout.control import Rollouts
from proxy.rollout.driver import RolloutDriver, SinkEvidence
from proxy.rollout.model import FINAL, Rollout
from proxy.rollout.store import FileRollouts, RolloutStore, open_rollouts
from proxy.shadow.sink import FileSink
from proxy.store.file import FileStore
from tests.functional.proxy_support import (
    ProxyProcess,
    Recorder,
    echo,
    get,
    recorder,
    reply,
    running,
    wait_until,
)
from tests.proxy.rollout.support import DriverThread
from tests.proxy.table.test_gates import serving_gate
from tests.support import serving

FAILING = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail"
# Quick steps; latencies under 100 ms count as equal (a shared test machine's hiccups are not a
# regression); a step waits up to 30 bakes for the proxy's numbers (shared once a second).
ANALYSIS = "{min_requests: 10, quiet_limit: 30, interval: 0, settle: 0, latency_floor: 100ms}"
WAIT = 60.0


@dataclass
class World:
    folder: Path
    routes: Path
    proxy: ProxyProcess
    monolith: Recorder
    payment: Recorder
    names: Counter[str] = field(default_factory=Counter)

    def sink(self) -> FileSink:
        return FileSink(self.folder / "var" / "shadow")

    def serve(self, route: str, rollout: str, *, extra: str = "", gate: str | None = None) -> None:
        """Replace the proxy's table by one whose only route, `route`, takes the payments path
        to the monolith, with this `rollout:` block; wait until the proxy serves it."""
        payment = f'{{url: "{self.payment.url}"' + (f', gate: "{gate}"}}' if gate else "}")
        text = (
            "upstreams:\n"
            f'  monolith: {{url: "{self.monolith.url}"}}\n'
            f"  payment: {payment}\n"
            "default: monolith\n"
            "routes:\n"
            f"  - name: {route}\n"
            "    match: {path: /api/v1/payments}\n"
            "    to: monolith\n"
            f"{extra}"
            f"    rollout: {rollout}\n"
        )
        store = FileStore(self.routes)
        version = store.commit(
            text, author="test", reason=route, expected_version=store.current().info.version
        ).info.version
        wait_until(lambda: self.proxy.readyz()["table_version"] == version, what="the table")

    def served(self) -> dict[str, Any]:
        (route,) = FileStore(self.routes).current().table.routes
        return {"to": route.to} if route.split is None else {"split": route.split}

    def answers(self, n: int = 20) -> Counter[str]:
        """Who answers `n` requests now, once the proxy serves the store's current version."""
        version = FileStore(self.routes).current().info.version
        wait_until(lambda: self.proxy.readyz()["table_version"] == version, what="the rollback")
        return Counter(get(self.proxy.external, "/api/v1/payments").body.decode() for _ in range(n))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("rollout")
    with recorder() as monolith, recorder() as payment:
        routes = folder / "routes.yaml"
        routes.write_text(f'upstreams:\n  monolith: {{url: "{monolith.url}"}}\ndefault: monolith\n')
        args = [
            "--routes",
            str(routes),
            "--state-dir",
            str(folder / "var"),
            "--consumers",
            str(folder / "consumers.json"),
        ]
        env = {"STRANGLER_WATCH_INTERVAL": "0.1"}
        with running(args, env) as proxy:
            yield World(folder, routes, proxy, monolith, payment)


@pytest.fixture
def each(world: World) -> World:
    """The world with both upstreams answering who they are, at once."""
    world.monolith.reset(echo("monolith"))
    world.payment.reset(echo("payment"))
    return world


class Traffic:
    """Users' GETs on the payments path from a few threads, each on a new connection without a
    cookie (so each lands where the weights say); what answered is counted."""

    def __init__(self, port: int, threads: int = 6) -> None:
        self.port = port
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                answer = get(self.port, "/api/v1/payments", timeout=5)
                said = f"{answer.status} {answer.body.decode(errors='replace')}"
            except OSError as exc:
                said = f"error {type(exc).__name__}"
            with self.lock:
                self.seen[said] += 1

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)


@contextlib.contextmanager
def driven(world: World, rollouts: RolloutStore, own: bool) -> Iterator[None]:
    """A driver for `rollouts` over the proxy's evidence: the test's own when `own` (rollouts
    kept apart from the proxy's), else the one `strangler serve` runs."""
    if not own:
        yield
        return
    routes = FileStore(world.routes)
    driver = RolloutDriver(routes, rollouts, SinkEvidence(world.sink()), "test-driver", tick=0.05)
    thread = DriverThread(driver).start()
    try:
        yield
    finally:
        thread.stop()


def finish(rollouts: RolloutStore, route: str, states: frozenset[str] = FINAL) -> Rollout:
    found: list[Rollout] = []

    def done() -> bool:
        rollout = rollouts.get(route)
        found[:] = [rollout] if rollout is not None else []
        return rollout is not None and rollout.state in states

    wait_until(done, WAIT, f"the rollout of {route} to end")
    return found[0]


def start(world: World, rollouts: RolloutStore, route: str, **overrides: Any) -> Rollout:
    return Rollouts(FileStore(world.routes), rollouts).start(
        route, overrides, reason="canary", author="ana"
    )


def own_rollouts(world: World, route: str) -> FileRollouts:
    return FileRollouts(world.folder / f"rollouts-{route}")


def check(rollout: Rollout, name: str) -> dict[str, Any]:
    assert rollout.last_analysis is not None
    (found,) = [c for c in rollout.last_analysis["checks"] if c["name"] == name]
    return dict(found)


# --- the proxy's own rollouts (driven by the proxy once it runs the driver) -------------------
def test_a_rollout_that_passes_every_step_moves_the_route(each: World) -> None:
    route = "pay-pass"
    each.serve(route, f"{{to: payment, steps: [25, 50], bake: 300ms, analysis: {ANALYSIS}}}")
    rollouts = open_rollouts("file", each.routes)
    with Traffic(each.proxy.external) as traffic, driven(each, rollouts, own=False):
        start(each, rollouts, route)
        done = finish(rollouts, route)
    assert done.state == "succeeded", done.message
    assert each.served() == {"to": "payment"}
    reasons = [
        i.reason for i in reversed(FileStore(each.routes).history()) if i.author == "rollout"
    ]
    assert reasons[-3:] == [
        f"rollout {route} step 1/3: 25% to payment (canary)",
        f"rollout {route} step 2/3: 50% to payment (canary)",
        f"rollout {route} step 3/3: 100% to payment (canary)",
    ]
    passed = [e.analysis for e in done.history if e.event == "passed"]
    assert len(passed) == 2
    for analysis in passed:
        assert analysis is not None
        assert analysis["arms"]["payment"]["requests"] >= 10  # what the proxy measured
        assert analysis["arms"]["payment"]["error_rate"] == 0.0
    assert traffic.seen["200 payment"] > 0
    assert each.answers() == Counter({"payment": 20})


def test_an_error_rate_on_the_new_arm_rolls_the_route_back(each: World) -> None:
    route = "pay-errors"
    each.payment.reset(reply(FAILING))
    each.serve(route, f"{{to: payment, steps: [25, 50], bake: 300ms, analysis: {ANALYSIS}}}")
    rollouts = open_rollouts("file", each.routes)
    with Traffic(each.proxy.external) as traffic, driven(each, rollouts, own=False):
        start(each, rollouts, route)
        done = finish(rollouts, route)
    assert done.state == "rolled-back", done.message
    found = check(done, "error_rate_delta")
    assert found["passed"] is False
    assert found["value"] > 0.5
    assert "error rate 100.00% on payment vs 0.00% on monolith" in done.message
    assert each.served() == {"to": "monolith"}
    assert traffic.seen["500 fail"] > 0  # users met the failing arm, for one step only
    assert each.answers() == Counter({"monolith": 20})


# --- the test's own driver --------------------------------------------------------------------
def test_a_latency_regression_rolls_the_route_back(each: World) -> None:
    route = "pay-slow"
    each.payment.reset(reply(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\npayment", delay=0.4))
    each.serve(route, f"{{to: payment, steps: [25, 50], bake: 300ms, analysis: {ANALYSIS}}}")
    rollouts = own_rollouts(each, route)
    with Traffic(each.proxy.external, threads=10), driven(each, rollouts, own=True):
        start(each, rollouts, route)
        done = finish(rollouts, route)
    assert done.state == "rolled-back", done.message
    assert check(done, "p95_ratio")["passed"] is False
    assert check(done, "p95_ratio")["value"] >= 3.0  # 400 ms against the 100 ms floor
    assert check(done, "error_rate_delta")["passed"] is True
    assert each.answers() == Counter({"monolith": 20})


def test_a_planted_shadow_difference_rolls_the_route_back(each: World) -> None:
    """The route is shadowed to the service, whose answers differ from the monolith's: its
    arms are equally fast and healthy, and the shadow's comparisons still say no."""
    route = "pay-shadow"
    each.serve(
        route,
        f"{{to: payment, steps: [25, 50], bake: 300ms, analysis: {ANALYSIS}}}",
        extra="    shadow: {to: payment}\n",
    )
    rollouts = own_rollouts(each, route)
    with Traffic(each.proxy.external), driven(each, rollouts, own=True):
        start(each, rollouts, route)
        done = finish(rollouts, route)
    assert done.state == "rolled-back", done.message
    found = check(done, "shadow_mismatch")
    assert found["passed"] is False
    assert found["value"] == 1.0  # every copy compared in the step differed
    assert "copies differed (100.00%, at most 1.00%)" in done.message
    assert each.served() == {"to": "monolith"}


def test_a_data_gate_that_closes_mid_rollout_rolls_it_back(each: World) -> None:
    route = "pay-gate"
    with serving_gate() as gate:
        analysis = ANALYSIS.replace("interval: 0", "interval: 200ms")
        each.serve(
            route,
            f"{{to: payment, steps: [25, 50], bake: 1h, analysis: {analysis}}}",
            gate=gate.url,
        )
        rollouts = own_rollouts(each, route)
        with Traffic(each.proxy.external), driven(each, rollouts, own=True):
            start(each, rollouts, route)
            finish(rollouts, route, frozenset({"baking"}))
            assert each.served() == {"split": {"monolith": 75, "payment": 25}}
            gate.refuses("follow lag 12s over its 5s budget")
            done = finish(rollouts, route)
    assert done.state == "rolled-back", done.message
    assert check(done, "gate")["passed"] is False
    assert "follow lag 12s over its 5s budget" in done.message
    assert each.answers() == Counter({"monolith": 20})


def test_a_step_without_traffic_does_not_pass(each: World) -> None:
    route = "pay-quiet"
    quiet = ANALYSIS.replace("quiet_limit: 30", "quiet_limit: 2")
    each.serve(route, f"{{to: payment, steps: [25, 50], bake: 300ms, analysis: {quiet}}}")
    rollouts = own_rollouts(each, route)
    with driven(each, rollouts, own=True):  # nobody calls the route
        start(each, rollouts, route)
        done = finish(rollouts, route)
    assert done.state == "rolled-back", done.message
    assert [e.event for e in done.history].count("quiet") == 2
    assert "too little traffic: 0 requests on payment, 0 on monolith" in done.message
    assert each.served() == {"to": "monolith"}


# --- webhooks ---------------------------------------------------------------------------------
@dataclass
class Hooks:
    url: str = ""
    status: dict[str, int] = field(default_factory=dict)
    seen: list[dict[str, Any]] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [body["kind"] for body in list(self.seen)]


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    app = FastAPI()

    @app.post("/{kind}")
    async def hook(kind: str, request: Request) -> JSONResponse:
        receiver.seen.append(await request.json())
        status = receiver.status.get(kind, 200)
        return JSONResponse({"kind": kind}, status_code=status)

    with serving(app) as url:
        receiver.url = url
        yield receiver


def hooked(world: World, route: str, hooks: Hooks) -> None:
    kinds = ("pre-rollout", "rollout", "confirm-promotion", "post-rollout", "rollback")
    listed = ", ".join(f'{{kind: {k}, url: "{hooks.url}/{k}"}}' for k in kinds)
    block = f"{{to: payment, steps: [50], bake: 300ms, analysis: {ANALYSIS}, webhooks: [{listed}]}}"
    world.serve(route, block)


def test_webhooks_of_each_kind_are_called(each: World, hooks: Hooks) -> None:
    route = "pay-hooks"
    hooked(each, route, hooks)
    rollouts = own_rollouts(each, route)
    with Traffic(each.proxy.external), driven(each, rollouts, own=True):
        start(each, rollouts, route)
        done = finish(rollouts, route)
        wait_until(lambda: hooks.kinds()[-1:] == ["post-rollout"], what="the notice")
    assert done.state == "succeeded", done.message
    assert hooks.kinds() == [
        "pre-rollout",
        "rollout",
        "rollout",
        "confirm-promotion",
        "post-rollout",
    ]
    assert {body["route"] for body in hooks.seen} == {route}
    assert hooks.seen[-1]["state"] == "succeeded"


def test_a_refusing_pre_rollout_webhook_stops_the_start(each: World, hooks: Hooks) -> None:
    route = "pay-refused"
    hooks.status["pre-rollout"] = 503
    hooked(each, route, hooks)
    before = FileStore(each.routes).current().info.version
    rollouts = own_rollouts(each, route)
    with driven(each, rollouts, own=True):
        start(each, rollouts, route)
        done = finish(rollouts, route)
        wait_until(lambda: hooks.kinds()[-1:] == ["post-rollout"], what="the notice")
    assert done.state == "failed"
    assert "pre-rollout webhook" in done.message
    assert "answered 503" in done.message
    assert FileStore(each.routes).current().info.version == before
    assert hooks.kinds() == ["pre-rollout", "post-rollout"]
