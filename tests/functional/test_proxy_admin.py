"""The real proxy's admin listener (health, readiness, metrics), listener exposure, the access log,
and routes.yaml reloads while serving."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.proxy_support import (
    ProxyProcess,
    Recorder,
    Table,
    counter,
    get,
    problem,
    recorder,
    running,
    send,
    wait_until,
)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Recorder, Recorder]]:
    with recorder() as main, recorder() as other:
        yield main, other


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def base_table(path: Path, main: Recorder, other: Recorder, dead_port: int) -> Table:
    return Table(
        path,
        {"main": main.url, "other": other.url, "dead": f"http://127.0.0.1:{dead_port}"},
        [
            {"name": "api", "match": {"path": "/api"}, "to": "other"},
            {"name": "private", "match": {"path": "/private"}, "to": "other", "expose": "internal"},
            {"name": "public", "match": {"path": "/public"}, "to": "other", "expose": "external"},
            {"name": "dead", "match": {"path": "/dead"}, "to": "dead"},
        ],
    )


@pytest.fixture(scope="module")
def proxy(
    upstreams: tuple[Recorder, Recorder], dead_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    table = base_table(tmp_path_factory.mktemp("admin") / "routes.yaml", *upstreams, dead_port)
    with running(["--routes", str(table.write())]) as proxy:
        yield proxy


@pytest.fixture
def reset(upstreams: tuple[Recorder, Recorder]) -> tuple[Recorder, Recorder]:
    for upstream in upstreams:
        upstream.reset()
    return upstreams


# --- admin endpoints ------------------------------------------------------------------------------
def test_healthz_and_readyz(proxy: ProxyProcess) -> None:
    health = get(proxy.admin, "/healthz")
    assert health.status == 200
    assert health.json() == {"status": "ok"}
    assert proxy.readyz() == {"status": "ready", "table_version": 1, "routes": 4}


def test_the_admin_listener_is_read_only_and_has_nothing_else(proxy: ProxyProcess) -> None:
    problem(send(proxy.admin, "POST", "/healthz", body=b"{}"), 405)
    problem(get(proxy.admin, "/api/things"), 404, "not-found")


def test_metrics_count_requests_by_route_and_upstream(
    proxy: ProxyProcess, reset: tuple[Recorder, Recorder]
) -> None:
    main, other = reset
    before = proxy.metrics()
    for _ in range(3):
        assert get(proxy.external, "/api/items").status == 200
    for _ in range(2):
        assert get(proxy.external, "/elsewhere").status == 200
    assert get(proxy.external, "/dead/x").status == 502
    after = proxy.metrics()

    def delta(name: str, **labels: str) -> float:
        return counter(after, name, **labels) - counter(before, name, **labels)

    assert delta("strangler_requests_total", route="api", upstream="other", code="200") == 3
    assert delta("strangler_requests_total", route="default", upstream="main", code="200") == 2
    assert delta("strangler_requests_total", route="dead", upstream="dead", code="502") == 1
    assert delta("strangler_requests_total") == 6
    assert (
        delta(
            "strangler_upstream_errors_total",
            route="dead",
            upstream="dead",
            kind="upstream-unreachable",
        )
        == 1
    )
    assert delta("strangler_request_duration_seconds_count", route="api", upstream="other") == 3
    assert counter(after, "strangler_route_table_version") == 1
    assert counter(after, "strangler_requests_in_flight", listener="external") == 0
    assert len(main.seen) == 2
    assert len(other.seen) == 3
    # Labels come from the table, never from raw paths.
    assert "/api/items" not in after


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz"])
def test_admin_endpoints_are_not_served_on_the_external_listener(
    proxy: ProxyProcess, reset: tuple[Recorder, Recorder], path: str
) -> None:
    main, _ = reset
    answer = get(proxy.external, path)
    assert answer.body == b"ok"  # the upstream's answer
    assert main.only().target == path.encode()


# --- exposure -------------------------------------------------------------------------------------
def test_an_internal_route_is_404_on_the_external_listener(
    proxy: ProxyProcess, reset: tuple[Recorder, Recorder]
) -> None:
    main, other = reset
    found = problem(get(proxy.external, "/private/report"), 404, "not-found")
    assert found.get("request_id")
    assert main.seen == []
    assert other.seen == []


def test_an_internal_route_is_proxied_on_the_internal_listener(
    proxy: ProxyProcess, reset: tuple[Recorder, Recorder]
) -> None:
    _, other = reset
    assert get(proxy.internal, "/private/report").body == b"ok"
    assert other.only().target == b"/private/report"


def test_an_external_route_is_404_on_the_internal_listener(
    proxy: ProxyProcess, reset: tuple[Recorder, Recorder]
) -> None:
    main, other = reset
    problem(get(proxy.internal, "/public/page"), 404, "not-found")
    assert get(proxy.external, "/public/page").body == b"ok"
    assert [seen.target for seen in other.seen] == [b"/public/page"]
    assert main.seen == []


def test_routes_exposed_to_both_answer_on_both_listeners(
    proxy: ProxyProcess, reset: tuple[Recorder, Recorder]
) -> None:
    main, other = reset
    assert get(proxy.external, "/api/x").status == 200
    assert get(proxy.internal, "/api/x").status == 200
    assert get(proxy.internal, "/unrouted").status == 200
    assert len(other.seen) == 2
    assert len(main.seen) == 1


# --- access log -----------------------------------------------------------------------------------
def test_each_request_writes_one_access_log_line(
    proxy: ProxyProcess, reset: tuple[Recorder, Recorder]
) -> None:
    send(proxy.external, "GET", "/api/logged?q=1", [("X-Request-ID", "log-line-1")])

    def logged() -> list[dict[str, object]]:
        lines = [json.loads(line) for line in list(proxy.stdout) if "log-line-1" in line]
        return lines

    wait_until(lambda: bool(logged()), 5, "the access log line")
    (line,) = logged()
    assert line["target"] == "/api/logged?q=1"
    assert line["route"] == "api"
    assert line["upstream"] == "other"
    assert line["status"] == 200
    assert line["listener"] == "external"
    assert line["table_version"] == 1


# --- reloading routes.yaml ------------------------------------------------------------------------
WATCH = {"STRANGLER_WATCH_INTERVAL": "0.2"}


def test_a_rewritten_routes_file_is_served_within_seconds(
    upstreams: tuple[Recorder, Recorder], dead_port: int, tmp_path: Path
) -> None:
    main, other = upstreams
    table = base_table(tmp_path / "routes.yaml", main, other, dead_port)
    with running(["--routes", str(table.write())], WATCH) as proxy:
        main.reset()
        other.reset()
        assert get(proxy.external, "/moved/1").status == 200
        assert main.only().target == b"/moved/1"
        table.version = 2
        table.routes.append({"name": "moved", "match": {"path": "/moved"}, "to": "other"})
        table.write()
        wait_until(lambda: proxy.readyz()["table_version"] == 2, 10, "table version 2")
        assert proxy.readyz()["routes"] == 5
        main.reset()
        other.reset()
        assert get(proxy.external, "/moved/2").status == 200
        assert other.only().target == b"/moved/2"
        assert main.seen == []
        assert counter(proxy.metrics(), "strangler_route_table_version") == 2


def test_an_invalid_rewrite_is_logged_and_the_old_table_keeps_serving(
    upstreams: tuple[Recorder, Recorder], dead_port: int, tmp_path: Path
) -> None:
    main, other = upstreams
    table = base_table(tmp_path / "routes.yaml", main, other, dead_port)
    path = table.write()
    with running(["--routes", str(path)], WATCH) as proxy:
        table.version = 2
        table.routes.append({"name": "broken", "match": {"path": "/broken"}, "to": "nowhere"})
        table.write()
        wait_until(
            lambda: any("route table refused" in line for line in proxy.stderr),
            10,
            "the refusal on stderr",
        )
        log = "".join(proxy.stderr)
        assert "nowhere" in log
        assert "still serving version 1" in log
        assert proxy.readyz()["table_version"] == 1
        other.reset()
        assert get(proxy.external, "/api/still").status == 200
        assert other.only().target == b"/api/still"
        # Not YAML at all: refused the same way.
        path.write_text("version: 3\nupstreams: [unclosed\n")
        wait_until(
            lambda: sum("route table refused" in line for line in proxy.stderr) >= 2,
            10,
            "the second refusal",
        )
        assert proxy.readyz()["table_version"] == 1
        # A valid table afterwards is picked up again.
        table.version = 4
        table.routes.pop()
        table.write()
        wait_until(lambda: proxy.readyz()["table_version"] == 4, 10, "table version 4")
