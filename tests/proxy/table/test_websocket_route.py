"""`websocket:` on a route: the shorthand and the mapping, their defaults and bounds (refused with
their lines), refused on a static route, compiled to a TunnelPolicy, shown and diffed."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.table.compile import TunnelPolicy, compile_table
from proxy.table.diff import diff_tables
from proxy.table.loader import TableInvalid, load_text
from proxy.table.model import WebSocket
from proxy.table.show import rows
from tests.proxy.tables import HEADER, marks

ROUTE = "  - name: chat\n    match: {path: /ws}\n    to: payment\n"


def _load(extra: str = "") -> TunnelPolicy | None:
    (route,) = compile_table(load_text(HEADER + ROUTE + extra)).routes
    return route.websocket


def _refused(
    extra: str, tmp_path: Path | None = None, route: str = ROUTE
) -> list[tuple[bool, str, str]]:
    text = HEADER + route + extra
    with pytest.raises(TableInvalid) as caught:
        load_text(text, "routes.yaml", tmp_path)
    here = marks(text)["here"]
    return [(p.line == here, p.where(), p.message) for p in caught.value.problems]


@pytest.mark.parametrize("on", ["true", "on", "{}"])
def test_the_shorthand_takes_the_defaults(on: str) -> None:
    assert _load(f"    websocket: {on}\n") == TunnelPolicy(idle_timeout=300.0, max_connections=1000)


def test_the_mapping_sets_the_limits() -> None:
    extra = "    websocket: {idle_timeout: 5m, max_connections: 500}\n"
    assert _load(extra) == TunnelPolicy(idle_timeout=300.0, max_connections=500)
    extra = "    websocket:\n      idle_timeout: 24h\n      max_connections: 1000000\n"
    assert _load(extra) == TunnelPolicy(idle_timeout=86_400.0, max_connections=1_000_000)
    assert _load("    websocket: {idle_timeout: 90s}\n") == TunnelPolicy(90.0, 1000)


def test_the_model_defaults() -> None:
    spec = WebSocket()
    assert (spec.idle_timeout, spec.max_connections) == (300.0, 1000)


@pytest.mark.parametrize("off", ["", "    websocket: false\n", "    websocket: off\n"])
def test_absent_or_false_is_off(off: str) -> None:
    table = load_text(HEADER + ROUTE + off)
    assert table.routes[0].websocket is None
    assert _load(off) is None


@pytest.mark.parametrize(
    ("value", "field", "says"),
    [
        ("{idle_timeout: 0}", "idle_timeout", "greater than zero"),
        ("{idle_timeout: 0s}", "idle_timeout", "greater than zero"),
        ("{idle_timeout: 25h}", "idle_timeout", "more than 24h"),
        ("{idle_timeout: soon}", "idle_timeout", "not a duration"),
        ("{max_connections: 0}", "max_connections", "not within 1-1000000"),
        ("{max_connections: 1000001}", "max_connections", "not within 1-1000000"),
        ("{max_connections: -1}", "max_connections", "not within 1-1000000"),
        ("{max_connections: many}", "max_connections", "whole number"),
        ("{max_connections: true}", "max_connections", "whole number"),
        ("{max_connections: 1.5}", "max_connections", "whole number"),
    ],
)
def test_each_bound_is_refused_with_its_line(value: str, field: str, says: str) -> None:
    found = _refused(f"    websocket: {value}  # @here\n")
    assert len(found) == 1, found
    ((on_line, where, message),) = found
    assert on_line
    assert where == f"routes[0].websocket.{field}"
    assert says in message
    assert field in message or (field == "idle_timeout" and "duration" in message)


def test_an_unknown_field_or_value_is_refused() -> None:
    ((on_line, where, message),) = _refused("    websocket: {idle: 5m}  # @here\n")
    assert (on_line, where, message) == (True, "routes[0].websocket.idle", "unknown field 'idle'")
    found = _refused("    websocket: maybe  # @here\n")
    assert found
    assert all(line and where == "routes[0].websocket" for line, where, _ in found)


def test_a_static_route_refuses_websocket(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    static = "  - name: assets\n    match: {path: /static}\n    static: {root: files}\n"
    found = _refused("    websocket: true  # @here\n", tmp_path, route=static)
    assert found == [
        (True, "routes[0].websocket", "a static route serves files itself: it takes no `websocket`")
    ]
    # Off on a static route is no problem.
    table = load_text(HEADER + static + "    websocket: false\n", "routes.yaml", tmp_path)
    assert compile_table(table).routes[0].websocket is None


def test_show_and_diff_name_it() -> None:
    off = load_text(HEADER + ROUTE)
    on = load_text(HEADER + ROUTE + "    websocket: {idle_timeout: 1m, max_connections: 50}\n")
    (row, _default) = rows(compile_table(on))
    assert "websocket idle 60s max 50" in row["safety"]
    assert "websocket" not in rows(compile_table(off))[0]["safety"]
    (change,) = diff_tables(off, on)
    assert change.fields == {"websocket": (None, {"idle_timeout": 60.0, "max_connections": 50})}
    (change,) = diff_tables(on, load_text(HEADER + ROUTE + "    websocket: true\n"))
    assert change.fields == {
        "websocket.idle_timeout": (60.0, None),
        "websocket.max_connections": (50, None),
    }
