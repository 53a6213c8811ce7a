"""The rollout driver over a real file store, with evidence the test sets and a clock it moves:
every step committed through the gates, rollbacks (by analysis, by a closed gate, on request)
back to where the route was, quiet steps, manual changes, pause, promote, the lease, and a
restart that continues where the rollout was. Webhooks and gates are real HTTP servers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from proxy.rollout.control import Rollouts
from proxy.rollout.driver import RolloutDriver
from proxy.rollout.model import Rollout
from proxy.rollout.store import FileRollouts
from proxy.store.file import FileStore
from proxy.table.edit import flip
from proxy.table.gates import ask_gates
from proxy.table.model import RouteTable
from tests.proxy.rollout.support import Clock, FakeEvidence, arm, drive, routes_yaml, write_routes
from tests.proxy.table.test_gates import serving_gate
from tests.support import serving

FAST = "analysis: {interval: 0, settle: 0}"


class GatedEvidence(FakeEvidence):
    """The test's numbers, and the real gates asked over HTTP."""

    def gates(self, before: object, after: object) -> Any:
        assert isinstance(before, RouteTable)
        assert isinstance(after, RouteTable)
        return ask_gates(before, after)


@dataclass
class Bench:
    routes: FileStore
    rollouts: FileRollouts
    ops: Rollouts
    evidence: FakeEvidence
    clock: Clock

    def driver(self, holder: str = "replica-1", lease: float = 5.0) -> RolloutDriver:
        return RolloutDriver(
            self.routes,
            self.rollouts,
            self.evidence,
            holder,
            tick=0.01,
            lease=lease,
            clock=self.clock,
        )

    def start(self, **overrides: Any) -> Rollout:
        return self.ops.start("payments", overrides, reason="canary", author="ana")

    def run(self, *drivers: RolloutDriver, until: set[str] | None = None) -> Rollout:
        async def go() -> Rollout:
            try:
                kwargs: dict[str, Any] = {"clock": self.clock}
                if until is not None:
                    kwargs["until"] = until
                return await drive(drivers[0], self.rollouts, "payments", **kwargs)
            finally:
                for each in drivers:
                    await each.webhooks.close()

        return asyncio.run(go())

    def ticks(self, driver: RolloutDriver, n: int, advance: float = 1.0) -> Rollout:
        async def go() -> None:
            for _ in range(n):
                await driver.tick_once()
                self.clock.advance(advance)
            await driver.webhooks.close()

        asyncio.run(go())
        found = self.rollouts.get("payments")
        assert found is not None
        return found

    def until(
        self, driver: RolloutDriver, done: Callable[[Rollout], bool], ticks: int = 100
    ) -> Rollout:
        """Tick (the clock 10 s on each time) until `done` says so."""
        for _ in range(ticks):
            found = self.ticks(driver, 1, advance=10)
            if done(found):
                return found
        raise AssertionError(f"not done after {ticks} ticks: {found}")

    def route(self) -> dict[str, Any]:
        table = self.routes.current().table
        (route,) = [r for r in table.routes if r.name == "payments"]
        return {"to": route.to} if route.split is None else {"split": route.split}

    def versions(self) -> list[tuple[str, str]]:
        return [(i.author, i.reason) for i in reversed(self.routes.history())]


def bench_for(tmp_path: Path, text: str, evidence: FakeEvidence | None = None) -> Bench:
    routes = FileStore(write_routes(tmp_path, text))
    rollouts = FileRollouts(tmp_path / "var" / "routes-rollouts")
    clock = Clock()
    return Bench(
        routes, rollouts, Rollouts(routes, rollouts, clock), evidence or FakeEvidence(), clock
    )


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    block = f"{{to: payment, steps: [10, 50], bake: 60s, {FAST}}}"
    return bench_for(tmp_path, routes_yaml(rollout=block))


def test_a_rollout_that_passes_every_step_moves_the_route(bench: Bench) -> None:
    bench.start()
    done = bench.run(bench.driver())
    assert (done.state, done.weight, done.driver) == ("succeeded", 100, "replica-1")
    assert bench.route() == {"to": "payment"}
    assert bench.versions()[1:] == [
        ("rollout", "rollout payments step 1/3: 10% to payment (canary)"),
        ("rollout", "rollout payments step 2/3: 50% to payment (canary)"),
        ("rollout", "rollout payments step 3/3: 100% to payment (canary)"),
    ]
    events = [(e.event, e.step, e.weight, e.version) for e in done.history]
    assert events == [
        ("started", 0, 0, 1),
        ("driving", 0, 0, None),
        ("step", 0, 10, 2),
        ("passed", 0, 10, None),
        ("step", 1, 50, 3),
        ("passed", 1, 50, None),
        ("succeeded", 2, 100, 4),
    ]
    # Each step was judged on its own window: from its start (no settle here).
    steps = [e.time for e in done.history if e.event == "step"]
    assert bench.evidence.asked_since == steps


def test_each_version_a_rollout_commits_can_have_its_evidence_kept(tmp_path: Path) -> None:
    block = f"{{to: payment, steps: [10], bake: 60s, {FAST}}}"
    b = bench_for(tmp_path, routes_yaml(rollout=block))
    kept: list[tuple[int, str]] = []

    async def record(version: int, route: str, gates: list[Any]) -> None:
        assert isinstance(gates, list)  # the gates' answers to that version, kept beside it
        kept.append((version, route))
        if version == 3:
            raise OSError("the sink is down")  # a record the rollout goes on without

    driver = RolloutDriver(
        b.routes, b.rollouts, b.evidence, "replica-1", tick=0.01, clock=b.clock, record=record
    )
    b.start()
    assert b.run(driver).state == "succeeded"
    assert kept == [(2, "payments"), (3, "payments")]


def test_each_step_is_judged_only_after_its_bake(bench: Bench) -> None:
    bench.start()
    driver = bench.driver()
    baking = bench.ticks(driver, 3)
    assert (baking.state, baking.weight) == ("baking", 10)
    assert baking.due is not None
    assert baking.due - bench.clock.now > 50  # nothing judged before the bake's end
    assert bench.evidence.asked_since == []


def test_a_failed_analysis_puts_the_route_back_where_it_was(tmp_path: Path) -> None:
    block = f"{{to: payment, steps: [25, 50], bake: 60s, {FAST}}}"
    b = bench_for(tmp_path, routes_yaml("split: {monolith: 95, payment: 5}", block))
    b.start()
    driver = b.driver()
    assert b.ticks(driver, 3).weight == 25
    b.evidence.arms_of = {"monolith": arm(100, 1), "payment": arm(100, 9)}
    done = b.run(driver)
    assert (done.state, done.weight) == ("rolled-back", 5)
    assert b.route() == {"split": {"monolith": 95, "payment": 5}}
    author, reason = b.versions()[-1]
    assert author == "rollout"
    assert reason.startswith(
        "rollout payments rolled back: step 1/3 (25% to payment) failed: error rate 9.00% on "
        "payment vs 1.00% on monolith: +8.00 points (at most 1.00)"
    )
    assert reason.endswith("(canary)")
    assert [e.event for e in done.history[-3:]] == [
        "failed-analysis",
        "rolling-back",
        "rolled-back",
    ]
    assert done.last_analysis is not None
    assert done.last_analysis["passed"] is False


def test_a_failure_during_the_bake_rolls_back_at_once(tmp_path: Path) -> None:
    block = "{to: payment, steps: [10], bake: 1h, analysis: {interval: 10s, settle: 0}}"
    b = bench_for(tmp_path, routes_yaml(rollout=block))
    b.start()
    driver = b.driver()
    assert b.ticks(driver, 3).state == "baking"
    b.evidence.arms_of = {"monolith": arm(100), "payment": arm(100, p99=0.5)}
    done = b.run(driver)
    assert done.state == "rolled-back"
    assert "p99 500 ms on payment vs 20 ms on monolith: 20.00 times (at most 2)" in done.message
    assert done.step_started is not None
    assert b.clock.now - done.step_started < 60  # long before the hour's bake ended


def test_a_quiet_step_bakes_again_then_fails_on_no_data(tmp_path: Path) -> None:
    block = f"{{to: payment, steps: [10], bake: 60s, analysis: {{quiet_limit: 2, {FAST[11:-1]}}}}}"
    b = bench_for(tmp_path, routes_yaml(rollout=block))
    b.evidence.arms_of = {"monolith": arm(500), "payment": arm(4)}
    b.start()
    done = b.run(b.driver())
    assert done.state == "rolled-back"
    assert [e.event for e in done.history].count("quiet") == 2
    assert "too little traffic: 4 requests on payment, 500 on monolith" in done.message
    assert b.route() == {"to": "monolith"}


def test_a_threshold_of_two_gives_a_failing_step_a_fresh_window(tmp_path: Path) -> None:
    block = f"{{to: payment, steps: [10], bake: 60s, analysis: {{threshold: 2, {FAST[11:-1]}}}}}"
    b = bench_for(tmp_path, routes_yaml(rollout=block))
    b.start()
    driver = b.driver()
    b.ticks(driver, 3)
    b.evidence.arms_of = {"monolith": arm(100), "payment": arm(100, 5)}
    once = b.until(driver, lambda r: r.failures == 1)
    assert (once.state, once.weight) == ("baking", 10)
    assert "(1 of 2: the step's window starts again)" in once.message
    b.evidence.arms_of = {"monolith": arm(100), "payment": arm(100)}
    done = b.run(driver)
    assert done.state == "succeeded"  # the blip passed: the fresh window was clean


def test_the_gate_of_the_new_upstream_is_asked_at_every_step(tmp_path: Path) -> None:
    with serving_gate() as gate:
        block = f"{{to: payment, steps: [10, 50], bake: 60s, {FAST}}}"
        b = bench_for(tmp_path, routes_yaml(rollout=block, gate=gate.url), GatedEvidence())
        gate.refuses("the backfill has not finished")
        b.start()
        done = b.run(b.driver())
        assert done.state == "failed"  # nothing had moved: nothing to roll back
        assert "is closed (503): the backfill has not finished" in done.message
        assert b.route() == {"to": "monolith"}
        assert len(b.versions()) == 1

        gate.opens()
        b.start()
        driver = b.driver()
        assert b.ticks(driver, 3).weight == 10
        gate.refuses("follow lag 12s over its 5s budget")
        done = b.run(driver)
        assert done.state == "rolled-back"
        assert done.last_analysis is not None
        (checked,) = [c for c in done.last_analysis["checks"] if c["name"] == "gate"]
        assert "follow lag 12s over its 5s budget" in checked["message"]
        assert b.route() == {"to": "monolith"}


def test_a_rollback_is_never_refused_by_a_gate(tmp_path: Path) -> None:
    with serving_gate() as gate:
        gate.refuses("the monolith's gate is shut")
        block = f"{{to: payment, steps: [50], bake: 60s, {FAST}}}"
        text = routes_yaml("split: {monolith: 90, payment: 10}", block, monolith_gate=gate.url)
        b = bench_for(tmp_path, text)
        b.start()
        driver = b.driver()
        assert b.ticks(driver, 3).weight == 50  # moving traffic away from it is not gated
        b.evidence.arms_of = {"monolith": arm(100), "payment": arm(100, 50)}
        done = b.run(driver)
        assert done.state == "rolled-back"
        assert b.route() == {"split": {"monolith": 90, "payment": 10}}
        assert b.versions()[-1][1].endswith("[gates overridden]")
        assert "gates overridden: gate of upstream 'monolith'" in done.message
        assert "the monolith's gate is shut" in done.message


def test_somebody_elses_flip_pauses_the_rollout_until_resumed(bench: Bench) -> None:
    bench.start()
    driver = bench.driver()
    assert bench.ticks(driver, 3).weight == 10
    current = bench.routes.current()
    text = flip(current.text, "payments", to="monolith")
    bench.routes.commit(text, author="bo", reason="emergency", expected_version=2)
    stopped = bench.ticks(driver, 5, advance=100)
    assert stopped.state == "paused"
    assert stopped.message.startswith("version 3 set it to monolith 100% while the rollout served")
    assert bench.route() == {"to": "monolith"}  # the rollout does not fight a person
    assert len(bench.versions()) == 3
    bench.ops.resume("payments", reason="fixed", author="bo")
    again = bench.ticks(driver, 2)
    assert (again.state, again.weight) == ("baking", 10)
    assert bench.versions()[-1] == ("rollout", "rollout payments step 1/3: 10% to payment (canary)")


def test_a_step_a_dead_driver_committed_is_taken_up_by_the_next(bench: Bench) -> None:
    bench.start()
    driver = bench.driver()
    bench.ticks(driver, 3)
    passed = bench.until(driver, lambda r: r.state == "progressing")
    current = bench.routes.current()
    text = flip(current.text, "payments", split={"monolith": 50, "payment": 50})
    reason = "rollout payments step 2/3: 50% to payment (canary)"
    bench.routes.commit(text, author="rollout", reason=reason, expected_version=2)
    # ... and the driver that committed it died before recording it.
    bench.rollouts.release("replica-1")
    taken = bench.ticks(bench.driver("replica-2"), 1)
    assert (taken.state, taken.step, taken.weight) == ("baking", passed.step, 50)
    assert taken.history[-1].version == 3
    assert len(bench.versions()) == 3  # not committed twice


def test_abort_puts_the_route_back_and_ends_aborted(bench: Bench) -> None:
    bench.start()
    driver = bench.driver()
    bench.ticks(driver, 3)
    asked = bench.ops.abort("payments", reason="not today", author="bo")
    assert (asked.state, asked.end) == ("rolling-back", "aborted")
    done = bench.run(driver)
    assert (done.state, done.weight) == ("aborted", 0)
    assert bench.route() == {"to": "monolith"}
    assert bench.versions()[-1][1].startswith(
        "rollout payments aborted at step 1/3: not today (bo) (canary)"
    )


def test_a_route_that_cannot_be_put_back_fails_the_rollout_saying_so(bench: Bench) -> None:
    bench.start()
    driver = bench.driver()
    assert bench.ticks(driver, 3).weight == 10
    current = bench.routes.current()
    renamed = (
        current.text.replace("  monolith:", "  legacy:")
        .replace("default: monolith", "default: legacy")
        .replace("split: {monolith: 90", "split: {legacy: 90")
    )
    bench.routes.commit(renamed, author="bo", reason="rename", expected_version=2)
    assert bench.ticks(driver, 1).state == "paused"  # somebody else's change
    bench.ops.abort("payments", reason="back out", author="bo")
    done = bench.ticks(driver, 1)
    assert done.state == "failed"
    assert "putting it back refused: the table would be invalid" in done.message
    assert done.message.endswith("it still serves legacy 90%, payment 10%; move it by hand")
    assert bench.route() == {"split": {"legacy": 90, "payment": 10}}


def test_an_abort_before_the_first_step_changes_nothing(bench: Bench) -> None:
    bench.start()
    assert bench.ops.abort("payments", reason="typo", author="bo").state == "aborted"
    bench.ticks(bench.driver(), 3)
    assert len(bench.versions()) == 1


def test_pause_stops_the_clock_and_resume_finishes_the_bake(bench: Bench) -> None:
    bench.start()
    driver = bench.driver()
    started = bench.ticks(driver, 3)
    assert started.due is not None
    left = started.due - bench.clock.now
    bench.ops.pause("payments", reason="watching a graph", author="bo")
    held = bench.ticks(driver, 10, advance=600)  # an hour and more
    assert (held.state, held.weight) == ("paused", 10)
    assert bench.evidence.asked_since == []
    resumed = bench.ops.resume("payments", reason="fine", author="bo")
    assert resumed.due is not None
    assert resumed.due - bench.clock.now == pytest.approx(left, abs=1.0)
    done = bench.run(driver)
    assert done.state == "succeeded"


@dataclass
class Hooks:
    """A webhook receiver: what it was sent (kind from the path) and what it answers."""

    url: str = ""
    status: dict[str, int] = field(default_factory=dict)
    seen: list[dict[str, Any]] = field(default_factory=list)
    on: dict[str, Callable[[], None]] = field(default_factory=dict)  # kind -> done when called
    lock: threading.Lock = field(default_factory=threading.Lock)

    def kinds(self) -> list[str]:
        with self.lock:
            return [body["kind"] for body in self.seen]


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    app = FastAPI()

    @app.post("/{kind}")
    async def hook(kind: str, request: Request) -> JSONResponse:
        body = await request.json()
        with receiver.lock:
            receiver.seen.append(body)
        if kind in receiver.on:
            receiver.on[kind]()
        status = receiver.status.get(kind, 200)
        return JSONResponse({"said": f"{kind} {status}"}, status_code=status)

    with serving(app) as url:
        receiver.url = url
        yield receiver


def with_hooks(tmp_path: Path, hooks: Hooks, steps: str = "[10, 50]") -> Bench:
    kinds = ("pre-rollout", "rollout", "confirm-promotion", "post-rollout", "rollback")
    listed = ", ".join(f'{{kind: {k}, url: "{hooks.url}/{k}", timeout: 2s}}' for k in kinds)
    block = f"{{to: payment, steps: {steps}, bake: 60s, {FAST}, webhooks: [{listed}]}}"
    return bench_for(tmp_path, routes_yaml(rollout=block))


def test_webhooks_of_every_kind_are_called_with_the_rollout(tmp_path: Path, hooks: Hooks) -> None:
    b = with_hooks(tmp_path, hooks)
    b.start()
    done = b.run(b.driver())
    assert done.state == "succeeded"
    assert hooks.kinds() == [
        "pre-rollout",
        "rollout",
        "rollout",
        "rollout",
        "confirm-promotion",
        "post-rollout",
    ]
    first = hooks.seen[0]
    assert {k: first[k] for k in ("route", "to", "from", "step", "weight", "reason")} == {
        "route": "payments",
        "to": "payment",
        "from": "monolith",
        "step": 0,
        "weight": 0,
        "reason": "canary",
    }
    assert first["steps"] == [10, 50, 100]
    assert hooks.seen[-2]["analysis"]["passed"] is True  # confirm-promotion sees the last one
    assert hooks.seen[-1]["state"] == "succeeded"
    assert "post-rollout webhook http://127.0.0.1" in done.history[-1].message


def test_a_refusing_pre_rollout_webhook_stops_the_start(tmp_path: Path, hooks: Hooks) -> None:
    hooks.status["pre-rollout"] = 412
    b = with_hooks(tmp_path, hooks)
    b.start()
    done = b.run(b.driver())
    assert done.state == "failed"
    assert done.message.startswith("not started: pre-rollout webhook http://127.0.0.1:")
    assert "answered 412" in done.message
    assert len(b.versions()) == 1
    assert hooks.kinds() == ["pre-rollout", "post-rollout"]


def test_refusing_rollout_and_confirm_webhooks_hold_the_rollout(
    tmp_path: Path, hooks: Hooks
) -> None:
    b = with_hooks(tmp_path, hooks, steps="[10]")
    hooks.status["rollout"] = 503
    b.start()
    driver = b.driver()
    held = b.ticks(driver, 5)
    assert (held.state, held.weight) == ("progressing", 0)
    assert "step 1/2 waits: rollout webhook" in held.message
    assert [e.event for e in held.history].count("waiting") == 1  # said once, asked each tick
    assert hooks.kinds().count("rollout") == 4
    hooks.status["rollout"] = 200
    hooks.status["confirm-promotion"] = 409
    waits = b.run(driver, until={"waiting-promotion"})
    assert waits.weight == 10
    assert "promotion waits: confirm-promotion webhook" in waits.message
    hooks.status["confirm-promotion"] = 200
    done = b.run(driver)
    assert done.state == "succeeded"


def test_a_pause_typed_while_the_webhooks_are_asked_stops_the_step(
    tmp_path: Path, hooks: Hooks
) -> None:
    """A person who pauses while a step's webhooks answer sees no traffic move."""
    b = with_hooks(tmp_path, hooks, steps="[10]")
    rollouts = Rollouts(b.routes, b.rollouts)
    hooks.on["rollout"] = lambda: rollouts.pause("payments", reason="a look first", author="ana")
    b.start()
    held = b.ticks(b.driver(), 4)
    assert (held.state, held.weight) == ("paused", 0)
    assert len(b.versions()) == 1  # no step was committed
    assert hooks.kinds().count("rollout") == 1


def test_a_rollback_notifies_the_rollback_webhooks(tmp_path: Path, hooks: Hooks) -> None:
    b = with_hooks(tmp_path, hooks)
    hooks.status["rollback"] = 500  # a notice that fails is recorded, nothing more
    b.start()
    driver = b.driver()
    b.ticks(driver, 4)
    b.evidence.arms_of = {"monolith": arm(100), "payment": arm(100, 20)}
    done = b.run(driver)
    assert done.state == "rolled-back"
    assert hooks.kinds()[-2:] == ["rollback", "post-rollout"]
    assert hooks.seen[-2]["state"] == "rolled-back"
    assert "rollback webhook" in done.history[-2].message
    assert "answered 500" in done.history[-2].message


def test_promote_goes_to_100_percent_now(bench: Bench) -> None:
    bench.start()
    driver = bench.driver()
    bench.ticks(driver, 3)
    bench.ops.promote("payments", reason="looks good", author="bo")
    done = bench.ticks(driver, 1)
    assert (done.state, done.weight) == ("succeeded", 100)
    assert bench.versions()[-1] == (
        "rollout",
        "rollout payments step 3/3: 100% to payment (canary)",
    )


def test_one_driver_at_a_time_and_another_takes_over(bench: Bench) -> None:
    bench.start()
    first, second = bench.driver("replica-1", lease=60), bench.driver("replica-2", lease=60)
    bench.ticks(first, 3)
    before = bench.versions()
    bench.ticks(second, 3)
    assert bench.versions() == before  # replica-2 moved nothing: replica-1 holds the lease
    assert bench.rollouts.holder() == "replica-1"

    async def stop_first() -> None:
        task = asyncio.create_task(first.run())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stop_first())  # a driver that stops lets go of the lease
    done = bench.run(second)
    assert (done.state, done.driver) == ("succeeded", "replica-2")


def test_a_driver_holds_the_lease_only_while_a_rollout_runs(bench: Bench) -> None:
    driver = bench.driver()
    asyncio.run(driver.tick_once())
    assert bench.rollouts.holder() is None  # idle replicas only read
    bench.start()
    bench.ticks(driver, 1)
    assert bench.rollouts.holder() == "replica-1"
    assert bench.run(driver).state == "succeeded"
    bench.ticks(driver, 1)
    assert bench.rollouts.holder() is None


def test_a_restarted_driver_continues_the_bake_where_it_was(bench: Bench) -> None:
    bench.start()
    baking = bench.ticks(bench.driver(), 3)
    assert baking.due is not None
    bench.rollouts.release("replica-1")  # the replica restarted
    bench.clock.advance(30)
    again = bench.ticks(bench.driver(), 1)
    assert (again.state, again.weight, again.due) == ("baking", 10, baking.due)
    assert bench.evidence.asked_since == []
    assert len(bench.versions()) == 2  # the step was not committed again


def test_the_shadow_is_judged_on_the_comparisons_of_the_step_only(tmp_path: Path) -> None:
    block = f"{{to: payment, steps: [10], bake: 60s, {FAST}}}"
    b = bench_for(tmp_path, routes_yaml(rollout=block, shadow=True))
    b.evidence.shadow_counts = {"compared": 1000, "differed": 500}  # before the step
    b.start()
    driver = b.driver()
    baking = b.ticks(driver, 3)
    assert baking.shadow_baseline == {"compared": 1000, "differed": 500}
    b.evidence.shadow_counts = {"compared": 1100, "differed": 510}
    done = b.run(driver)
    assert done.state == "rolled-back"
    assert "shadow: 10 of 100 copies differed (10.00%, at most 1.00%)" in done.message
