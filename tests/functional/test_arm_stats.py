"""Per-arm statistics and what the monolith still serves, through the real `strangler serve`
with two workers: a split route's arms (a failing service's errors on its own arm), the
default upstream's requests by path template (query left out), and nothing for requests the
proxy answered itself (a static file, a refusal by access, a route not exposed); both workers'
numbers together in `GET /api/v1/stats`, whichever worker answers it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.functional.proxy_support import (
    ProxyProcess,
    Recorder,
    get,
    recorder,
    reply,
    running,
    wait_until,
)

FAILING = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail"
PAYMENTS = 20  # requests to the split route

TABLE = """\
version: 1
upstreams:
  monolith: {{url: "{monolith}"}}
  payment: {{url: "{payment}"}}
default: monolith
routes:
  - name: payments
    match: {{path: /api/v1/payments}}
    split: {{monolith: 50, payment: 50}}
  - name: refunds
    match: {{path: /api/v1/refunds}}
    to: payment
    fallback: {{to: monolith, on: [500]}}
  - name: assets
    match: {{path: /static}}
    static: {{root: files}}
  - name: staff
    match: {{path: /staff}}
    to: payment
    access: {{groups: [staff]}}
  - name: back-office
    match: {{path: /back-office}}
    to: payment
    expose: internal
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Recorder]]:
    folder = tmp_path_factory.mktemp("armstats")
    (folder / "files").mkdir()
    (folder / "files" / "app.txt").write_text("static")
    with recorder() as monolith, recorder() as payment:
        payment.reset(reply(FAILING))
        routes = folder / "routes.yaml"
        routes.write_text(TABLE.format(monolith=monolith.url, payment=payment.url))
        args = [
            "--routes",
            str(routes),
            "--state-dir",
            str(folder / "var"),
            "--consumers",
            str(folder / "consumers.json"),
            "--workers",
            "2",
        ]
        with running(args) as proxy:
            yield proxy, monolith


def stats(proxy: ProxyProcess, window: int = 60) -> dict[str, Any]:
    answer = get(proxy.admin, f"/api/v1/stats?window={window}")
    assert answer.status == 200, answer.body
    return dict(json.loads(answer.body))


def requests_of(body: dict[str, Any], route: str) -> int:
    return sum(arm["requests"] for arm in body["routes"].get(route, {}).values())


def test_arms_errors_and_what_the_monolith_serves(
    world: tuple[ProxyProcess, Recorder],
) -> None:
    proxy, monolith = world
    for n in range(PAYMENTS):
        get(proxy.external, f"/api/v1/payments/{n}")
    assert get(proxy.external, "/api/v1/orders/123").status == 200
    assert get(proxy.external, "/api/v1/orders/456?expand=items").status == 200
    assert get(proxy.external, "/api/v1/orders?page=2").status == 200
    # Answered by the proxy itself: no upstream's arm.
    assert get(proxy.external, "/static/app.txt").status == 200
    assert get(proxy.external, "/staff/list").status == 401
    assert get(proxy.external, "/back-office/x").status == 404

    # The two workers' numbers meet in the sink within a second or so.
    body: dict[str, Any] = {}

    def complete() -> bool:
        nonlocal body
        body = stats(proxy)
        return requests_of(body, "payments") == PAYMENTS and requests_of(body, "default") == 3

    wait_until(complete, what="both workers' numbers in /api/v1/stats")
    arms = body["routes"]["payments"]
    assert set(arms) == {"monolith", "payment"}  # 20 random picks: both arms took some
    assert arms["payment"]["errors"] == arms["payment"]["requests"]  # it always fails
    assert arms["payment"]["error_rate"] == 1.0
    assert arms["monolith"]["errors"] == 0
    assert arms["monolith"]["requests"] == len(monolith.seen) - 3
    for arm in arms.values():
        assert 0 < arm["p50"] <= arm["p95"] <= arm["p99"] <= 60
    assert body["routes"]["default"] == {
        "monolith": {**body["routes"]["default"]["monolith"], "requests": 3, "errors": 0}
    }
    assert set(body["routes"]) == {"payments", "default"}  # no static, staff, back-office

    ranked = {entry["template"]: entry["requests"] for entry in body["legacy_paths"]}
    assert ranked == {
        "GET /api/v1/payments/{id}": arms["monolith"]["requests"],
        "GET /api/v1/orders/{id}": 2,
        "GET /api/v1/orders": 1,  # the query is never part of it
    }
    assert body["legacy_paths"] == sorted(
        body["legacy_paths"], key=lambda e: (-e["requests"], e["template"])
    )


def test_a_bad_window_is_a_problem(world: tuple[ProxyProcess, Recorder]) -> None:
    proxy, _ = world
    answer = get(proxy.admin, "/api/v1/stats?window=901")
    assert answer.status == 422
    assert answer.value("content-type") == b"application/problem+json"


def test_workers_share_their_numbers_through_the_sink(world: tuple[ProxyProcess, Recorder]) -> None:
    """Each worker's document is in the state directory's sink, as `strangler` commands and
    the other replicas read it."""
    proxy, _ = world
    folder = Path(proxy.args[proxy.args.index("--state-dir") + 1])
    wait_until(
        lambda: len(list((folder / "shadow" / "stats").glob("*.json"))) == 2,
        what="two workers' statistics documents",
    )


def test_a_fallback_does_not_hide_the_failures_of_the_arm_it_fell_back_from(
    world: tuple[ProxyProcess, Recorder],
) -> None:
    """The client is served by the monolith, but the service failed each of these: a rollout
    judging the service must see its errors, not a healthy monolith only."""
    proxy, _ = world
    for n in range(4):
        answer = get(proxy.internal, f"/api/v1/refunds/{n}")
        assert answer.status == 200
        assert answer.value("strangler-fallback") is not None

    body: dict[str, Any] = {}

    def counted() -> bool:  # every worker's share arrived (each shares once a second)
        nonlocal body
        body = stats(proxy)
        return requests_of(body, "refunds") == 8

    wait_until(counted, what="both arms of the fallen-back requests in /api/v1/stats")
    arms = body["routes"]["refunds"]
    assert (arms["payment"]["requests"], arms["payment"]["errors"]) == (4, 4)
    assert (arms["monolith"]["requests"], arms["monolith"]["errors"]) == (4, 0)
