"""Shadow traffic, overrides, key cookies and read-your-writes pins, end to end through the real
proxy process against real upstream servers.

- Shadows: a copy of a sampled safe request goes to the shadow after the primary answered; a
  write is never copied; a slow, saturated or dead shadow changes nothing for the client; the
  differences (status, a declared header, JSON fields, an array's order) reach the report, with
  secrets kept out; fields that differ between two primary answers are learned as noise.
- Overrides: `X-Canary` / `canary` force an arm whatever the weights, the header first.
- Key cookies: a keyless client of a keyed route gets `strangler_key` whichever arm answers, and
  stays on its arm with it.
- Pins: after a write, a key stays on the arm that took it across a flip (either direction)
  until the pin window ends; `pin: off` pins nothing.

Three proxies, each with upstreams of its own: `shadowing` (every shadow, override and cookie
test that needs a responsive shadow), `stalled` (a shadow that answers after 10 s: the primary's
latency, then the full queue; its dispatcher stays clogged afterwards, so nothing else runs
there), and `flipping` (pins: its routes file is rewritten while it runs).

The shadow report is read from the file sink the proxy's worker writes once a second
(`proxy.shadow.sink`, merged and summarised in the test), and with `strangler shadow report`."""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest

from proxy.shadow.dispatch import QUEUE_SIZE, WORKERS
from proxy.shadow.report import Tally, summarise
from proxy.shadow.sink import open_sink
from proxy.store.base import DEFAULT_PREFIX
from tests.functional.faulty_upstream import FaultyUpstream, refused_port
from tests.functional.proxy_support import (
    STRANGLER,
    ProxyProcess,
    Reader,
    Recorder,
    Response,
    Seen,
    Writer,
    counter,
    get,
    read_body,
    running,
    send,
    wait_until,
)

MARKER = "strangler-shadow"
TOKEN = "Bearer tok-9f2c61d0e7a4"  # the client's credential: never in a report
PIN = 3.0  # seconds of the pinned routes' window


# --- a JSON upstream whose answers a test chooses ---------------------------------------------
Answer = tuple[int, list[tuple[str, str]], object]  # status, extra headers, JSON body
Answerer = Callable[[Seen], Answer]


def method_of(seen: Seen) -> str:
    return seen.request_line.split(b" ")[0].decode()


def path_of(seen: Seen) -> str:
    return seen.target.decode().split("?", 1)[0]


class JsonUpstream:
    """A real HTTP/1.1 upstream on 127.0.0.1:0 (proxy_support.Recorder: an asyncio server in a
    thread of its own) answering JSON: by the longest matching path prefix in `rules`, else
    {"upstream": name, "method": ..., "target": ...}. Every answer says `X-Upstream: name`;
    every request is logged with its exact head."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rules: dict[str, Answerer] = {}
        self.server = Recorder()
        self.server.handler = self._handle

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        self.server.close()

    def reset(self) -> None:
        self.rules = {}
        self.server.seen = []

    def answer(self, prefix: str, answerer: Answerer) -> None:
        self.rules[prefix] = answerer

    def seen(
        self, method: str | None = None, prefix: str = "/", marked: bool | None = None
    ) -> list[Seen]:
        """Requests received: of `method`, under `prefix`, with or without the shadow marker."""
        return [
            each
            for each in list(self.server.seen)
            if (method is None or method_of(each) == method)
            and path_of(each).startswith(prefix)
            and (marked is None or (each.value(MARKER) == b"1") == marked)
        ]

    async def _handle(self, seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        path = path_of(seen)
        found = [prefix for prefix in self.rules if path.startswith(prefix)]
        if found:
            status, extra, body = self.rules[max(found, key=len)](seen)
        else:
            target = seen.target.decode()
            status, extra = 200, []
            body = {"upstream": self.name, "method": method_of(seen), "target": target}
        data = json.dumps(body).encode()
        lines = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
            f"X-Upstream: {self.name}",
            *(f"{name}: {value}" for name, value in extra),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        writer.write(head if method_of(seen) == "HEAD" else head + data)
        await writer.drain()
        return True


# --- helpers ------------------------------------------------------------------------------------
def served(answer: Response, name: str) -> dict[str, Any]:
    """`answer` is a 200 from the upstream called `name`; its JSON body."""
    assert answer.status == 200, (answer.status, answer.head, answer.body[:300])
    assert answer.value("x-upstream") == name.encode(), answer.head
    data = answer.json()
    assert isinstance(data, dict), data
    return data


def arm(answer: Response) -> str:
    assert answer.status == 200, (answer.status, answer.head, answer.body[:300])
    value = answer.value("x-upstream")
    assert value is not None, answer.head
    return value.decode()


def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    return counter(proxy.metrics(), name, **labels)


def access_lines(proxy: ProxyProcess, *request_ids: str) -> dict[str, dict[str, Any]]:
    """The access-log lines (the proxy's stdout, flushed every 0.5 s) of these requests."""
    found: dict[str, dict[str, Any]] = {}

    def complete() -> bool:
        found.clear()
        for line in list(proxy.stdout):
            if line.startswith("{"):
                entry = json.loads(line)
                if entry["request_id"] in request_ids:
                    assert entry["request_id"] not in found, f"two lines for {entry}"
                    found[entry["request_id"]] = entry
        return len(found) == len(request_ids)

    wait_until(complete, 5, f"the access-log lines of {request_ids}")
    return found


def access_line(proxy: ProxyProcess, request_id: str) -> dict[str, Any]:
    return access_lines(proxy, request_id)[request_id]


def key_cookie(answer: Response) -> str | None:
    """The `strangler_key` value an answer sets, or None; asserts the cookie's attributes."""
    found = answer.values("set-cookie")
    if not found:
        return None
    assert len(found) == 1, answer.head
    name_value, *attributes = (part.strip() for part in found[0].decode().split(";"))
    name, _, value = name_value.partition("=")
    assert name == "strangler_key", found
    assert value, found
    assert {"Path=/", "HttpOnly", "SameSite=Lax"} <= set(attributes), found
    assert any(a.startswith("Max-Age=") and int(a[8:]) > 86_400 for a in attributes), found
    return value


def shadow_tallies(state_dir: Path) -> dict[str, Tally]:
    """Every worker's tallies in the file sink under `state_dir`, merged per route."""
    sink = open_sink("file", DEFAULT_PREFIX, state_dir)
    merged: dict[str, Tally] = {}
    for snapshot in asyncio.run(sink.tallies()):
        for route, data in snapshot.items():
            merged.setdefault(route, Tally()).merge(Tally.from_dict(data))
    return merged


def wait_for(upstream: JsonUpstream, method: str, prefix: str, number: int = 1) -> list[Seen]:
    wait_until(
        lambda: len(upstream.seen(method, prefix)) >= number,
        5,
        f"{number} {method} {prefix} at {upstream.name}",
    )
    return upstream.seen(method, prefix)


def shadow_report(state_dir: Path, *args: str) -> str:
    """`strangler shadow report ARGS` on the file sink under `state_dir`: its output."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STRANGLER_")}
    done = subprocess.run(
        [STRANGLER, "shadow", "report", *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=base,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def report(state_dir: Path, route: str) -> dict[str, Any]:
    return summarise(route, shadow_tallies(state_dir).get(route, Tally()))


def report_once(
    state_dir: Path, route: str, ready: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """The route's report once `ready` says it has everything (tallies go out every second)."""
    found: dict[str, Any] = {}

    def check() -> bool:
        found.update(report(state_dir, route))
        return ready(found)

    wait_until(check, 15, what)
    return found


def fields(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["field"]: entry for entry in summary["fields"]}


# --- proxy 1: shadows that answer, overrides, key cookies ---------------------------------------
OVERRIDE = {"header": "X-Canary", "cookie": "canary"}
SHADOW_ROUTES: list[dict[str, Any]] = [
    {
        "name": "writes",
        "match": {"path": "/writes"},
        "to": "monolith",
        "shadow": {"to": "service", "sample": 1.0},
    },
    {
        "name": "deadshadow",
        "match": {"path": "/deadshadow"},
        "to": "monolith",
        "shadow": {"to": "dead", "sample": 1.0},
    },
    {
        "name": "diffs",
        "match": {"path": "/diffs"},
        "to": "monolith",
        "shadow": {"to": "service", "noise": 0},
        "compare": {
            "headers": ["x-api-version", "set-cookie"],
            "unordered": ["$.items"],
            "secret": ["$.secret"],
        },
    },
    {
        "name": "ordered",
        "match": {"path": "/ordered"},
        "to": "monolith",
        "shadow": {"to": "service", "noise": 0},
        "compare": {"secret": ["$.secret"]},
    },
    {
        "name": "noisy",
        "match": {"path": "/noisy"},
        "to": "monolith",
        "shadow": {"to": "service", "noise": 1.0},
    },
    {
        "name": "canary",
        "match": {"path": "/canary"},
        "split": {"monolith": 100, "service": 0},
        "override": OVERRIDE,
    },
    {
        "name": "canary-full",
        "match": {"path": "/canary-full"},
        "split": {"monolith": 0, "service": 100},
        "override": OVERRIDE,
    },
    {"name": "half", "match": {"path": "/half"}, "split": {"monolith": 50, "service": 50}},
    {"name": "sticky", "match": {"path": "/sticky"}, "to": "service", "sticky": "header:X-User-Id"},
    {
        # Not yet on any arm of a split: `always` goes to the shadow, the service being prepared.
        "name": "prepared",
        "match": {"path": "/prepared"},
        "to": "monolith",
        "shadow": {"to": "service", "noise": 0},
        "override": {"header": "X-Canary"},
    },
]


@pytest.fixture(scope="module")
def arms() -> Iterator[tuple[JsonUpstream, JsonUpstream]]:
    monolith, service = JsonUpstream("monolith"), JsonUpstream("service")
    try:
        yield monolith, service
    finally:
        monolith.close()
        service.close()


@pytest.fixture(scope="module")
def shadow_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shadow-state")


@pytest.fixture(scope="module")
def shadowing(
    arms: tuple[JsonUpstream, JsonUpstream],
    shadow_state: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProxyProcess]:
    monolith, service = arms
    table = {
        "version": 1,
        "upstreams": {
            "monolith": {"url": monolith.url},
            "service": {"url": service.url},
            "dead": {"url": f"http://127.0.0.1:{refused_port()}", "connect_timeout": "1s"},
        },
        "default": "monolith",
        "routes": SHADOW_ROUTES,
    }
    path = tmp_path_factory.mktemp("shadowing") / "routes.yaml"
    path.write_text(json.dumps(table, indent=2))  # JSON is YAML
    env = {"STRANGLER_STATE_DIR": str(shadow_state), "STRANGLER_GRACEFUL_TIMEOUT": "3"}
    with running(["--routes", str(path)], env) as proxy:
        yield proxy


@pytest.fixture
def both(arms: tuple[JsonUpstream, JsonUpstream]) -> tuple[JsonUpstream, JsonUpstream]:
    """Both arms with their default answers and an empty log."""
    for each in arms:
        each.reset()
    return arms


# 1. A shadow never carries a write ---------------------------------------------------------------
def test_a_shadow_gets_copies_of_reads_only_and_the_client_gets_the_primarys_answer(
    shadowing: ProxyProcess, both: tuple[JsonUpstream, JsonUpstream]
) -> None:
    monolith, service = both
    # The service would answer differently: the client must never see it.
    service.answer("/writes", lambda seen: (503, [("X-Service", "1")], {"from": "service"}))
    identity = [
        ("Authorization", TOKEN),
        ("X-User-Id", "u-17"),
        ("Accept", "application/json"),
        ("X-Client-Note", "abc"),
    ]
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        answer = send(shadowing.external, method, f"/writes/{method}", identity, b'{"qty":1}')
        data = served(answer, "monolith")
        assert (data["method"], data["target"]) == (method, f"/writes/{method}")
        assert answer.value("x-service") is None
    # OPTIONS is safe but not among the default shadowed methods (GET, HEAD).
    served(send(shadowing.external, "OPTIONS", "/writes/options", identity), "monolith")

    answer = get(
        shadowing.external, "/writes/read?page=2", headers=[*identity, ("X-Request-Id", "w-read")]
    )
    data = served(answer, "monolith")
    assert data == {"upstream": "monolith", "method": "GET", "target": "/writes/read?page=2"}
    assert answer.value("x-service") is None
    head = send(shadowing.external, "HEAD", "/writes/head", identity)
    assert (head.status, head.value("x-upstream")) == (200, b"monolith")

    (copy,) = wait_for(service, "GET", "/writes/read")
    wait_for(service, "HEAD", "/writes/head")
    time.sleep(0.3)  # copies queued before these (none should be) have been sent by now

    # The service saw only the two reads, each marked as a copy.
    assert sorted((method_of(s), s.target) for s in service.seen()) == [
        ("GET", b"/writes/read?page=2"),
        ("HEAD", b"/writes/head"),
    ]
    for each in service.seen():
        assert each.value(MARKER) == b"1", each.head
    for name, value in identity:
        assert copy.value(name) == value.encode(), (name, copy.head)
    # The copy is the request as forwarded: same request id as the primary's.
    (primary,) = monolith.seen("GET", "/writes/read", marked=False)
    assert copy.value("x-request-id") == primary.value("x-request-id") == b"w-read"

    # The monolith got every write once, unmarked (noise re-sends, if any, are marked reads).
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        (write,) = monolith.seen(method, f"/writes/{method}")
        assert write.value(MARKER) is None
        assert write.body == b'{"qty":1}'
    assert primary.value(MARKER) is None
    assert {method_of(s) for s in monolith.seen(marked=True)} <= {"GET", "HEAD"}


# 4. A dead shadow changes nothing ----------------------------------------------------------------
def test_a_dead_shadow_changes_nothing_for_the_client_and_its_failures_are_counted(
    shadowing: ProxyProcess, both: tuple[JsonUpstream, JsonUpstream], shadow_state: Path
) -> None:
    labels = {"route": "deadshadow", "shadow": "dead"}
    before = metric(shadowing, "strangler_shadow_total", **labels, outcome="failed")
    for i in range(5):
        started = time.monotonic()
        data = served(get(shadowing.external, f"/deadshadow/{i}"), "monolith")
        assert time.monotonic() - started < 0.5
        assert data["target"] == f"/deadshadow/{i}"

    def failed() -> float:
        return metric(shadowing, "strangler_shadow_total", **labels, outcome="failed") - before

    wait_until(lambda: failed() == 5, 5, "5 failed copies counted")
    metrics = shadowing.metrics()
    for outcome in ("match", "differ", "dropped"):
        assert counter(metrics, "strangler_shadow_total", **labels, outcome=outcome) == 0
    summary = report_once(
        shadow_state,
        "deadshadow",
        lambda s: sum(s["failed"].values()) >= 5,
        "the dead shadow's failures in the report",
    )
    assert summary["failed"] == {"connect-failure": 5}
    assert (summary["compared"], summary["mismatched"]) == (0, 0)


# 5. Differences are found and reported -----------------------------------------------------------
def planted(side: str) -> dict[str, Answerer]:
    """Both arms answer the same JSON except for the differences planted on the service side."""
    service = side == "service"

    def token(seen: Seen) -> str:
        return (seen.value("authorization") or b"").decode()

    items = [{"sku": "a"}, {"sku": "b"}, {"sku": "c"}]
    shuffled = items[::-1] if service else items
    return {
        "/diffs/status": lambda seen: (404 if service else 200, [], {"id": 1}),
        "/diffs/header": lambda seen: (
            200,
            [
                ("X-Api-Version", "2" if service else "1"),
                ("Set-Cookie", f"session={token(seen)}-{side}"),  # listed, but a credential
            ],
            {"id": 2},
        ),
        "/diffs/amount": lambda seen: (
            200,
            [],
            {"id": 3, "amount": 12.25 if service else 10.5, "secret": f"{token(seen)}/{side}"},
        ),
        "/diffs/items": lambda seen: (200, [], {"id": 4, "items": shuffled}),
        "/ordered/items": lambda seen: (200, [], {"id": 4, "items": shuffled}),
    }


def test_differences_are_reported_with_examples_and_without_secrets(
    shadowing: ProxyProcess, both: tuple[JsonUpstream, JsonUpstream], shadow_state: Path
) -> None:
    monolith, service = both
    for upstream in both:
        for prefix, answerer in planted(upstream.name).items():
            upstream.answer(prefix, answerer)
    auth = [("Authorization", TOKEN)]
    for path in ("/diffs/status", "/diffs/header", "/diffs/amount", "/diffs/items"):
        for _ in range(3):
            answer = get(shadowing.external, path, headers=auth)
            assert (answer.status, answer.value("x-upstream")) == (200, b"monolith"), answer.head
    for _ in range(3):
        served(get(shadowing.external, "/ordered/items", headers=auth), "monolith")

    summary = report_once(
        shadow_state, "diffs", lambda s: s["compared"] >= 12, "12 comparisons on /diffs"
    )
    found = fields(summary)
    assert summary["compared"] == 12
    assert summary["mismatched"] == 9  # the reordered array is no mismatch
    assert set(found) == {"status", "header:x-api-version", "$.amount", "$.secret"}, found
    assert found["status"]["examples"][0] == {"primary": "200", "candidate": "404"}
    assert found["header:x-api-version"]["examples"][0] == {"primary": "1", "candidate": "2"}
    assert found["$.amount"]["examples"][0] == {"primary": "10.5", "candidate": "12.25"}
    assert found["$.secret"]["examples"][0] == {
        "primary": "<redacted>",
        "candidate": "<redacted>",
    }
    for entry in found.values():
        assert (entry["count"], entry["rate"]) == (3, 0.25), entry

    ordered = report_once(
        shadow_state, "ordered", lambda s: s["compared"] >= 3, "3 comparisons on /ordered"
    )
    assert (ordered["compared"], ordered["mismatched"]) == (3, 3)
    assert [entry["field"] for entry in ordered["fields"]] == ["$.items[*].sku"]
    assert ordered["fields"][0]["examples"][0] == {"primary": '"a"', "candidate": '"c"'}

    # `strangler shadow report` says the same.
    listed = shadow_report(shadow_state, "diffs", "--json")
    assert json.loads(listed) == [summary]
    text = shadow_report(shadow_state, "diffs")
    assert text.startswith("diffs: 12 compared, 75.0 % differ (9)"), text
    for name in ("status", "header:x-api-version", "$.amount", "$.secret"):
        assert f"\n  {name}: 3 (25.0 %)" in text, text
    assert "primary:   10.5\n      candidate: 12.25" in text, text

    # Neither the client's credential nor a secret field's value is anywhere: not in the
    # report (JSON or text), not in the sink's files on disk.
    on_disk = "".join(p.read_text() for p in shadow_state.rglob("*") if p.is_file())
    assert "tallies" in on_disk
    secret = TOKEN.split()[1]
    everything = shadow_report(shadow_state, "--json")
    for where in (json.dumps(summary), json.dumps(ordered), listed, text, everything, on_disk):
        assert secret not in where
        assert "session=" not in where
    assert len(service.seen("GET", "/diffs", marked=True)) == 12
    assert monolith.seen("GET", "/diffs", marked=True) == []  # noise: 0


# 6. Noise is learned -----------------------------------------------------------------------------
def test_fields_that_differ_between_two_primary_answers_are_noise_not_mismatches(
    shadowing: ProxyProcess, both: tuple[JsonUpstream, JsonUpstream], shadow_state: Path
) -> None:
    monolith, service = both

    def document(name: str) -> Answerer:
        def answer(seen: Seen) -> Answer:
            per_request = {"request_id": str(uuid.uuid4()), "served_at": time.time()}
            return 200, [], {"id": 7, "name": name, **per_request}

        return answer

    monolith.answer("/noisy", document("same"))
    service.answer("/noisy", document("same"))
    service.answer("/noisy/renamed", document("other"))  # one real difference
    for i in range(6):
        served(get(shadowing.external, f"/noisy/plain/{i}"), "monolith")
    for i in range(4):
        served(get(shadowing.external, f"/noisy/renamed/{i}"), "monolith")

    summary = report_once(
        shadow_state,
        "noisy",
        lambda s: s["compared"] >= 10 and s["noise_samples"] >= 10,
        "10 comparisons and 10 noise samples on /noisy",
    )
    assert (summary["compared"], summary["noise_samples"]) == (10, 10)
    assert {entry["field"] for entry in summary["noise"]} == {"$.request_id", "$.served_at"}
    assert [entry["field"] for entry in summary["fields"]] == ["$.name"]
    assert summary["fields"][0]["examples"][0] == {"primary": '"same"', "candidate": '"other"'}
    assert summary["mismatched"] == 4  # the six noise-only requests are no mismatch
    text = shadow_report(shadow_state, "noisy")
    assert text.startswith("noisy: 10 compared, 40.0 % differ (4)"), text
    assert "noise (ignored): $.request_id, $.served_at (learned from 10" in text, text
    assert "request_id:" not in text
    # The noise samples were real second requests to the primary, marked as copies.
    assert len(monolith.seen("GET", "/noisy", marked=True)) == 10
    assert len(monolith.seen("GET", "/noisy", marked=False)) == 10


# 7. Overrides ------------------------------------------------------------------------------------
def test_an_override_header_or_cookie_forces_an_arm_the_header_first(
    shadowing: ProxyProcess, both: tuple[JsonUpstream, JsonUpstream]
) -> None:
    _, service = both
    port = shadowing.external
    forced = metric(shadowing, "strangler_overrides_total", route="canary", upstream="service")
    cases = [
        ("/canary/a", [], "monolith", "split"),
        ("/canary/b", [("X-Canary", "always")], "service", "override"),
        ("/canary/c", [("Cookie", "theme=dark; canary=always")], "service", "override"),
        ("/canary/d", [("X-Canary", "never"), ("Cookie", "canary=always")], "monolith", "override"),
        ("/canary/e", [("X-Canary", "maybe")], "monolith", "split"),  # other values: weights
        ("/canary-full/a", [], "service", "split"),
        ("/canary-full/b", [("X-Canary", "never")], "monolith", "override"),
        ("/canary-full/c", [("Cookie", "canary=never")], "monolith", "override"),
        ("/prepared/a", [], "monolith", "to"),
        ("/prepared/b", [("X-Canary", "always")], "service", "override"),
    ]
    for i, (target, headers, expected, _) in enumerate(cases):
        served(get(port, target, headers=[*headers, ("X-Request-Id", f"override-{i}")]), expected)
    lines = access_lines(shadowing, *(f"override-{i}" for i in range(len(cases))))
    for i, (target, headers, expected, choice) in enumerate(cases):
        line = lines[f"override-{i}"]
        assert (line["upstream"], line["choice"]) == (expected, choice), (target, headers, line)
    metrics = shadowing.metrics()
    assert counter(metrics, "strangler_overrides_total", route="canary", upstream="service") == (
        forced + 2
    )
    assert counter(metrics, "strangler_overrides_total", route="canary", upstream="monolith") >= 1
    never = counter(metrics, "strangler_overrides_total", route="canary-full", upstream="monolith")
    assert never >= 2
    # An answer the service gave is not copied to the service again; the monolith's is.
    wait_until(lambda: bool(service.seen("GET", "/prepared", marked=True)), 5, "a copy")
    time.sleep(0.3)
    assert [s.target for s in service.seen("GET", "/prepared", marked=True)] == [b"/prepared/a"]
    assert [s.target for s in service.seen("GET", "/prepared", marked=False)] == [b"/prepared/b"]


# 8. Key cookies ----------------------------------------------------------------------------------
def test_a_keyless_client_gets_the_key_cookie_from_either_arm_and_stays_on_its_arm(
    shadowing: ProxyProcess, both: tuple[JsonUpstream, JsonUpstream]
) -> None:
    port = shadowing.external
    cookies: dict[str, str] = {}
    keys: set[str] = set()
    for i in range(60):
        answer = get(port, f"/half/{i}")
        cookie = key_cookie(answer)
        assert cookie is not None, (arm(answer), answer.head)
        keys.add(cookie)
        cookies.setdefault(arm(answer), cookie)
        if len(cookies) == 2:
            break
    assert set(cookies) == {"monolith", "service"}, cookies
    assert len(keys) == i + 1  # a new key for every new client
    for name, cookie in cookies.items():
        for j in range(20):
            answer = get(port, f"/half/again/{j}", headers=[("Cookie", f"strangler_key={cookie}")])
            assert arm(answer) == name
            assert answer.values("set-cookie") == [], answer.head


def test_a_sticky_route_sets_the_key_cookie_only_when_the_request_has_no_key(
    shadowing: ProxyProcess, both: tuple[JsonUpstream, JsonUpstream]
) -> None:
    port = shadowing.external
    answer = get(port, "/sticky/a")
    served(answer, "service")
    cookie = key_cookie(answer)
    assert cookie is not None
    answer = get(port, "/sticky/b", headers=[("X-User-Id", "u-1")])
    served(answer, "service")
    assert answer.values("set-cookie") == [], answer.head
    answer = get(port, "/sticky/c", headers=[("Cookie", f"strangler_key={cookie}")])
    served(answer, "service")
    assert answer.values("set-cookie") == [], answer.head


# --- proxy 2: a shadow that stalls ---------------------------------------------------------------
STALL = 10.0


@pytest.fixture(scope="module")
def stalling() -> Iterator[tuple[FaultyUpstream, FaultyUpstream]]:
    with FaultyUpstream("primary") as primary, FaultyUpstream("staller") as staller:
        staller.mode = f"stall:{STALL:g}"
        yield primary, staller


@pytest.fixture(scope="module")
def stalled(
    stalling: tuple[FaultyUpstream, FaultyUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    primary, staller = stalling
    shadow = {"to": "staller", "sample": 1.0, "noise": 0}
    table = {
        "version": 1,
        "upstreams": {"primary": {"url": primary.url}, "staller": {"url": staller.url}},
        "default": "primary",
        "routes": [
            {"name": "plain", "match": {"path": "/plain"}, "to": "primary"},
            {"name": "slow", "match": {"path": "/slow"}, "to": "primary", "shadow": shadow},
            {"name": "flood", "match": {"path": "/flood"}, "to": "primary", "shadow": shadow},
        ],
    }
    path = tmp_path_factory.mktemp("stalled") / "routes.yaml"
    path.write_text(json.dumps(table, indent=2))
    env = {
        "STRANGLER_STATE_DIR": str(path.parent / "state"),
        "STRANGLER_GRACEFUL_TIMEOUT": "3",
    }
    with running(["--routes", str(path), "--no-access-log"], env) as proxy:
        yield proxy


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


# 2. A slow shadow leaves the primary's latency unchanged -----------------------------------------
def test_a_shadow_stalling_ten_seconds_leaves_the_primarys_latency_unchanged(
    stalled: ProxyProcess, stalling: tuple[FaultyUpstream, FaultyUpstream]
) -> None:
    _, staller = stalling
    timings: dict[str, list[float]] = {"plain": [], "slow": []}
    for i in range(30):
        for route in ("plain", "slow"):
            target = f"/{route}/{i}"
            started = time.monotonic()
            answer = get(stalled.external, target)
            timings[route].append(time.monotonic() - started)
            assert (answer.status, answer.value("x-upstream")) == (200, b"primary"), answer.head
            assert answer.json()["path"] == target  # type: ignore[index]
    # The copies really were stuck at the shadow while the primary answered.
    copies = staller.wait_for_requests(min(30, WORKERS), "GET", prefix="/slow")
    assert not any(each.answered for each in copies)
    assert staller.count(prefix="/plain") == 0
    assert p99(timings["slow"]) < 0.5, timings["slow"]
    assert statistics.median(timings["slow"]) < statistics.median(timings["plain"]) + 0.1, timings


# 3. A full queue drops and counts ----------------------------------------------------------------
def test_copies_over_the_queue_are_dropped_and_counted_and_every_client_is_answered(
    stalled: ProxyProcess, stalling: tuple[FaultyUpstream, FaultyUpstream]
) -> None:
    primary, staller = stalling
    total = WORKERS + QUEUE_SIZE + 200
    answered = sum(each.answered for each in staller.requests)
    before = metric(stalled, "strangler_shadow_total", route="flood", outcome="dropped")

    def one(i: int) -> int:
        return get(stalled.external, f"/flood/{i}").status

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(one, range(total)))
    assert statuses == [200] * total
    dropped = metric(stalled, "strangler_shadow_total", route="flood", outcome="dropped") - before
    # At most WORKERS copies in flight and QUEUE_SIZE waiting; a copy leaves only when the
    # shadow answers (after 10 s), so nearly all of the 200 over the bound were dropped.
    completed = sum(each.answered for each in staller.requests) - answered
    assert dropped >= total - WORKERS - QUEUE_SIZE - completed, (dropped, completed)
    assert dropped <= total
    assert primary.count("GET", prefix="/flood") == total


# --- proxy 3: read-your-writes pins across flips -------------------------------------------------
class Flipper:
    """The pins proxy's routes file: each `serve` writes the next version and waits until the
    proxy serves it."""

    def __init__(self, path: Path, upstreams: dict[str, str]) -> None:
        self.path = path
        self.upstreams = upstreams
        self.version = 0
        self.proxy: ProxyProcess | None = None

    def write(self, routes: list[dict[str, Any]]) -> None:
        self.version += 1
        table = {
            "version": self.version,
            "upstreams": {name: {"url": url} for name, url in self.upstreams.items()},
            "default": "monolith",
            "routes": routes,
        }
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(table, indent=2))
        temporary.replace(self.path)

    def serve(self, routes: list[dict[str, Any]]) -> None:
        proxy = self.proxy
        assert proxy is not None
        logged = len(proxy.stderr)
        self.write(routes)

        def served() -> bool:
            said = "".join(proxy.stderr[logged:])
            if "route table refused" in said:
                raise AssertionError(f"the proxy refused version {self.version}:\n{said}")
            return proxy.readyz()["table_version"] == self.version

        wait_until(served, 5, f"version {self.version} served")


def pinned_route(name: str, pin: str = f"{PIN:g}s", **action: object) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"path": f"/{name}"},
        "sticky": "header:X-User-Id",
        "pin": pin,
        **action,
    }


@pytest.fixture(scope="module")
def pin_arms() -> Iterator[tuple[JsonUpstream, JsonUpstream]]:
    monolith, service = JsonUpstream("monolith"), JsonUpstream("service")
    try:
        yield monolith, service
    finally:
        monolith.close()
        service.close()


@pytest.fixture(scope="module")
def flipper(
    pin_arms: tuple[JsonUpstream, JsonUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flipper]:
    monolith, service = pin_arms
    directory = tmp_path_factory.mktemp("flipping")
    table = Flipper(directory / "routes.yaml", {"monolith": monolith.url, "service": service.url})
    table.write([pinned_route("start", to="monolith")])
    env = {
        "STRANGLER_STATE_DIR": str(directory / "state"),
        "STRANGLER_WATCH_INTERVAL": "0.1",
        "STRANGLER_GRACEFUL_TIMEOUT": "3",
    }
    with running(["--routes", str(table.path)], env) as proxy:
        table.proxy = proxy
        yield table


def user(name: str, request_id: str | None = None) -> list[tuple[str, str]]:
    headers = [("X-User-Id", name)]
    return [*headers, ("X-Request-Id", request_id)] if request_id else headers


def until_moved(port: int, target: str, headers: list[tuple[str, str]], to: str) -> float:
    """GET `target` every 0.05 s until `to` answers it; the time it happened. Every answer
    before must come from the other arm."""
    deadline = time.monotonic() + PIN + 5
    while time.monotonic() < deadline:
        answer = get(port, target, headers=headers)
        if arm(answer) == to:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"{target} never moved to {to}")


# 9. A write pins ---------------------------------------------------------------------------------
def test_a_write_keeps_its_user_on_the_monolith_across_a_flip_until_the_pin_ends(
    flipper: Flipper, pin_arms: tuple[JsonUpstream, JsonUpstream]
) -> None:
    assert flipper.proxy is not None
    proxy, port = flipper.proxy, flipper.proxy.external
    flipper.serve([pinned_route("pinned", split={"monolith": 100, "service": 0})])
    pins = metric(proxy, "strangler_pins_total", route="pinned", upstream="monolith")
    pinned = metric(proxy, "strangler_pinned_total", route="pinned", upstream="monolith")

    written = time.monotonic()
    served(send(port, "POST", "/pinned/orders", user("U"), b'{"qty":1}'), "monolith")
    assert metric(proxy, "strangler_pins_total", route="pinned", upstream="monolith") == pins + 1
    flipper.serve([pinned_route("pinned", split={"monolith": 0, "service": 100})])

    served(get(port, "/pinned/orders", headers=user("U", "pin-u-1")), "monolith")
    served(get(port, "/pinned/orders", headers=user("V", "pin-v-1")), "service")
    served(get(port, "/pinned/orders", headers=user("U", "pin-u-2")), "monolith")
    assert access_line(proxy, "pin-u-1")["choice"] == "pin"
    assert access_line(proxy, "pin-v-1")["choice"] == "split"
    assert metric(proxy, "strangler_pinned_total", route="pinned", upstream="monolith") >= (
        pinned + 2
    )

    moved = until_moved(port, "/pinned/orders", user("U"), "service")
    assert moved - written >= PIN - 0.1, moved - written  # not before the window ended
    for _ in range(3):
        served(get(port, "/pinned/orders", headers=user("U")), "service")


def test_a_write_on_the_service_keeps_its_user_there_across_a_rollback(
    flipper: Flipper, pin_arms: tuple[JsonUpstream, JsonUpstream]
) -> None:
    assert flipper.proxy is not None
    proxy, port = flipper.proxy, flipper.proxy.external
    flipper.serve([pinned_route("pinback", split={"monolith": 0, "service": 100})])
    written = time.monotonic()
    served(send(port, "POST", "/pinback/orders", user("U"), b'{"qty":1}'), "service")
    # Rolled back as `strangler routes flip --to monolith` does it: the sticky key is kept.
    flipper.serve([pinned_route("pinback", to="monolith")])

    served(get(port, "/pinback/orders", headers=user("U", "back-u-1")), "service")
    served(get(port, "/pinback/orders", headers=user("V", "back-v-1")), "monolith")
    assert access_line(proxy, "back-u-1")["choice"] == "pin"
    assert access_line(proxy, "back-v-1")["choice"] == "to"
    assert metric(proxy, "strangler_pinned_total", route="pinback", upstream="service") >= 1

    moved = until_moved(port, "/pinback/orders", user("U"), "monolith")
    assert moved - written >= PIN - 0.1, moved - written


def test_a_keyless_writer_is_pinned_by_the_key_cookie_it_was_given(
    flipper: Flipper, pin_arms: tuple[JsonUpstream, JsonUpstream]
) -> None:
    assert flipper.proxy is not None
    port = flipper.proxy.external
    route = {"name": "cookiepin", "match": {"path": "/cookiepin"}, "pin": f"{PIN:g}s"}
    flipper.serve([{**route, "split": {"monolith": 100, "service": 0}}])
    answer = send(port, "POST", "/cookiepin/orders", [], b'{"qty":1}')
    served(answer, "monolith")
    cookie = key_cookie(answer)
    assert cookie is not None
    flipper.serve([{**route, "split": {"monolith": 0, "service": 100}}])
    jar = [("Cookie", f"strangler_key={cookie}")]
    served(get(port, "/cookiepin/orders", headers=jar), "monolith")
    served(get(port, "/cookiepin/orders"), "service")  # a new client: the weights


def test_with_pin_off_a_write_pins_nothing(
    flipper: Flipper, pin_arms: tuple[JsonUpstream, JsonUpstream]
) -> None:
    assert flipper.proxy is not None
    proxy, port = flipper.proxy, flipper.proxy.external
    flipper.serve([pinned_route("nopin", pin="off", split={"monolith": 100, "service": 0})])
    served(send(port, "POST", "/nopin/orders", user("U"), b'{"qty":1}'), "monolith")
    flipper.serve([pinned_route("nopin", pin="off", split={"monolith": 0, "service": 100})])
    served(get(port, "/nopin/orders", headers=user("U", "nopin-u-1")), "service")
    assert access_line(proxy, "nopin-u-1")["choice"] == "split"
    metrics = proxy.metrics()
    assert counter(metrics, "strangler_pins_total", route="nopin") == 0
    assert counter(metrics, "strangler_pinned_total", route="nopin") == 0


def test_a_failed_write_pins_nobody(
    flipper: Flipper, pin_arms: tuple[JsonUpstream, JsonUpstream]
) -> None:
    """A write the upstream answered 5xx changed nothing to read back: a user retrying it must
    not be held on a failing arm (through a rollback, say) by pins it keeps renewing."""
    assert flipper.proxy is not None
    proxy, port = flipper.proxy, flipper.proxy.external
    monolith, _ = pin_arms
    monolith.answer("/failpin", lambda seen: (503, [], {"error": "down"}))
    try:
        flipper.serve([pinned_route("failpin", split={"monolith": 100, "service": 0})])
        answer = send(port, "POST", "/failpin/orders", user("U"), b'{"qty":1}')
        assert answer.status == 503
        flipper.serve([pinned_route("failpin", split={"monolith": 0, "service": 100})])
        served(get(port, "/failpin/orders", headers=user("U", "failpin-u-1")), "service")
        assert access_line(proxy, "failpin-u-1")["choice"] == "split"
        assert counter(proxy.metrics(), "strangler_pins_total", route="failpin") == 0
    finally:
        monolith.rules.pop("/failpin", None)


def test_a_route_that_was_never_keyed_never_pins_even_for_a_key_cookie(
    flipper: Flipper, pin_arms: tuple[JsonUpstream, JsonUpstream]
) -> None:
    """The key cookie is sent on every path (Path=/): a plain `to:` route must not pay for it,
    neither a cookie scan per read nor a pin (and a round trip to Redis) per write."""
    assert flipper.proxy is not None
    proxy, port = flipper.proxy, flipper.proxy.external
    plain = {"name": "plainpin", "match": {"path": "/plainpin"}, "to": "monolith"}
    flipper.serve([plain])
    jar = [("Cookie", "strangler_key=abc123")]
    answer = send(port, "POST", "/plainpin/orders", jar, b'{"qty":1}')
    served(answer, "monolith")
    assert key_cookie(answer) is None
    assert counter(proxy.metrics(), "strangler_pins_total", route="plainpin") == 0


def test_a_client_cannot_mark_a_request_as_a_copy_and_utf8_headers_are_copied(
    shadowing: ProxyProcess, both: tuple[JsonUpstream, JsonUpstream]
) -> None:
    """`Strangler-Shadow: 1` from a client is dropped (a real write marked as a copy could skip
    the service's side effects), and a UTF-8 header value reaches the shadow as sent, after
    the client got its whole answer, with nothing logged as an error."""
    monolith, service = both
    logged = len(shadowing.stderr)
    write = send(shadowing.external, "POST", "/writes/marked", [(MARKER, "1")], b'{"qty":1}')
    served(write, "monolith")
    (received,) = monolith.seen("POST", "/writes/marked")
    assert received.value(MARKER) is None
    answer = get(shadowing.external, "/writes/utf8", headers=[("X-Name", "日本")])
    served(answer, "monolith")
    (copy,) = wait_for(service, "GET", "/writes/utf8")
    assert copy.value("x-name") == "日本".encode()
    assert copy.value(MARKER) == b"1"
    said = "".join(shadowing.stderr[logged:])
    assert "Traceback" not in said
    assert "Exception" not in said
