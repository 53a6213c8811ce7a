"""Static routes in routes.yaml: root relative to the file, refused combinations and missing
roots with their lines, and how `routes show` and the status describe them."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.admin.status import route_status
from proxy.table.compile import compile_table
from proxy.table.loader import TableInvalid, load_file, load_text
from proxy.table.show import rows
from tests.proxy.tables import HEADER, marks


class _NoTraffic:
    def recent(self) -> tuple[float, dict[object, tuple[float, float, float]]]:
        return 0.0, {}


STATIC = "  - name: assets\n    match: {path: /static}\n    static: {root: files, max_age: 2h}\n"


def test_root_is_relative_to_the_routes_file(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    routes = tmp_path / "routes.yaml"
    routes.write_text(HEADER + STATIC)
    table = load_file(routes)
    static = table.routes[0].static
    assert static is not None
    assert static.root == str((tmp_path / "files").resolve())
    assert static.max_age == 7200
    compiled = compile_table(table).routes[0].static
    assert compiled is not None
    assert compiled.prefix == "/static"
    assert compiled.immutable.search("app.0123abcd.js")
    assert not compiled.immutable.search("app.js")


def test_a_missing_root_is_refused_with_its_line(tmp_path: Path) -> None:
    text = HEADER + "  - name: assets\n    match: {path: /static}\n    static:\n"
    text += "      root: nowhere  # @here\n"
    with pytest.raises(TableInvalid) as caught:
        load_text(text, "routes.yaml", tmp_path)
    ((problem,),) = [caught.value.problems]
    assert problem.line == marks(text)["here"]
    assert problem.where() == "routes[0].static.root"
    assert "not a directory" in problem.message


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("    to: monolith  # @here\n", "to"),
        ("    split: {monolith: 50, payment: 50}  # @here\n", "split"),
        ("    shadow: {to: payment}  # @here\n", "shadow"),
        ("    sticky: header:X-User  # @here\n", "sticky"),
        ("    override: {header: X-Canary}  # @here\n", "override"),
        ("    retry: {attempts: 2}  # @here\n", "retry"),
        ("    fallback: monolith  # @here\n", "fallback"),
    ],
)
def test_a_static_route_takes_nothing_about_upstreams(
    tmp_path: Path, extra: str, field: str
) -> None:
    (tmp_path / "files").mkdir()
    text = HEADER + STATIC + extra
    with pytest.raises(TableInvalid) as caught:
        load_text(text, "routes.yaml", tmp_path)
    found = [(p.line, p.where(), p.message) for p in caught.value.problems]
    assert (marks(text)["here"], f"routes[0].{field}") in [
        (line, where) for line, where, _ in found
    ]
    assert all("static route" in message for _, _, message in found), found


def test_a_bad_immutable_pattern_is_refused(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    text = HEADER + "  - name: assets\n    match: {path: /static}\n"
    text += "    static: {root: files, immutable: '(('}  # @here\n"
    with pytest.raises(TableInvalid) as caught:
        load_text(text, "routes.yaml", tmp_path)
    assert "not a regular expression" in caught.value.describe()


def test_show_and_status_name_the_static_route(tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    snapshot = compile_table(load_text(HEADER + STATIC, "routes.yaml", tmp_path))
    (row, _default) = rows(snapshot)
    assert row["to"].startswith("static ")
    assert str(tmp_path / "files") in row["to"]
    status = route_status(snapshot, _NoTraffic())  # type: ignore[arg-type]
    (route,) = status["routes"]
    assert route["state"] == "static"
    assert route["upstreams"][0]["name"] == "static"
    assert route["static"]["max_age_s"] == 7200
