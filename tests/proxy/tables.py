"""Route tables for tests: built from plain data (fast, for the matcher and the splitter) or
from YAML text whose lines are marked with `# @label` comments (for line numbers)."""

from __future__ import annotations

import re
from typing import Any

from proxy.dataplane.match import find_route
from proxy.table.compile import Snapshot, compile_table
from proxy.table.model import RouteTable
from proxy.table.validate import validate

UPSTREAMS = {
    "monolith": {"url": "http://127.0.0.1:8001"},
    "payment": {"url": "http://127.0.0.1:8002"},
    "catalog": {"url": "http://127.0.0.1:8003"},
}

# The first lines of most YAML tables in the tests; routes follow from line 9.
HEADER = """\
version: 3
upstreams:
  monolith:
    url: http://127.0.0.1:8001
  payment:
    url: http://127.0.0.1:8002
default: monolith
routes:
"""


def route(name: str, path: str, to: str = "monolith", **match: Any) -> dict[str, Any]:
    """A route spec sending `path` (and the given match conditions) to one upstream."""
    return {"name": name, "match": {"path": path, **match}, "to": to}


def make_table(routes: list[dict[str, Any]], **fields: Any) -> RouteTable:
    """A table over UPSTREAMS with monolith as the default; it must be valid."""
    table = RouteTable.model_validate(
        {"upstreams": UPSTREAMS, "default": "monolith", "routes": routes, **fields}
    )
    assert validate(table) == []
    return table


def make_snapshot(routes: list[dict[str, Any]], **fields: Any) -> Snapshot:
    return compile_table(make_table(routes, **fields))


def routed(
    snapshot: Snapshot,
    path: str,
    method: str = "GET",
    host: bytes = b"shop.example",
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> str | None:
    """The name of the route a request takes, None for the default upstream."""
    found = find_route(snapshot, path, method, host, headers)
    return found.name if found is not None else None


_MARK = re.compile(r"#\s*@([\w-]+)")


def marks(text: str) -> dict[str, int]:
    """1-based line of each `# @label` comment in `text`."""
    found: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        for label in _MARK.findall(line):
            assert label not in found, f"label {label} used twice"
            found[label] = number
    return found
