"""Which route a request takes (pure): exact paths, then the deepest matching prefix; within
one path, the most specific route first (see table/compile.py). No match → None, which means
the table's default upstream.

`find_folded_route` matches a case-folded reading against the routes' paths folded too (plan.py
checks it where the table is case-sensitive but protects something: /ADMIN must not slip past
/admin's protection to a backend that folds case). That index is built on first use and kept
while its snapshot lives (a snapshot is immutable; the index is only a view of its routes).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from proxy.table.compile import CompiledRoute, Node, Snapshot, host_name

Headers = Sequence[tuple[bytes, bytes]]


def _accepts(route: CompiledRoute, method: str, host: bytes, headers: Headers) -> bool:
    if route.methods is not None and method not in route.methods:
        return False
    # Host names only: the port a client wrote is not the listener it reached.
    if route.host is not None and route.host != host_name(host):
        return False
    if not route.headers:  # most routes: no generator made per request
        return True
    return all(any(n == name and v == value for n, v in headers) for name, value in route.headers)


def _first(
    routes: tuple[CompiledRoute, ...], method: str, host: bytes, headers: Headers
) -> CompiledRoute | None:
    for route in routes:
        if _accepts(route, method, host, headers):
            return route
    return None


def _lookup(
    exact: Mapping[str, tuple[CompiledRoute, ...]],
    trie: Node,
    key: str,
    method: str,
    host: bytes,
    headers: Headers,
) -> CompiledRoute | None:
    host = host.lower()
    found = exact.get(key)
    if found is not None and (route := _first(found, method, host, headers)) is not None:
        return route
    node = trie
    chain = [node.routes] if node.routes else []
    for segment in key.split("/"):
        if not segment:
            continue
        child = node.children.get(segment)
        if child is None:
            break
        node = child
        if node.routes:
            chain.append(node.routes)
    for routes in reversed(chain):
        if (route := _first(routes, method, host, headers)) is not None:
            return route
    return None


def find_route(
    snapshot: Snapshot, key: str, method: str, host: bytes, headers: Headers
) -> CompiledRoute | None:
    """The route for a request whose normalised path is `key` (see normalize.py) and whose
    Host header is `host`."""
    return _lookup(snapshot.exact, snapshot.trie, key, method, host, headers)


@dataclass(frozen=True, slots=True)
class Folded:
    """The snapshot's routes by lower-cased path; `mixed`: some route's path has upper-case
    letters (so even a lower-case key may match differently here)."""

    exact: Mapping[str, tuple[CompiledRoute, ...]]
    trie: Node
    mixed: bool


_FOLDED: dict[int, tuple[weakref.ref[Snapshot], Folded]] = {}


def folded(snapshot: Snapshot) -> Folded:
    """The snapshot's folded index, built on first use (module header)."""
    ident = id(snapshot)
    entry = _FOLDED.get(ident)
    if entry is not None and entry[0]() is snapshot:
        return entry[1]
    index = _fold(snapshot)
    _FOLDED[ident] = (weakref.ref(snapshot, lambda _: _FOLDED.pop(ident, None)), index)
    return index


def _fold(snapshot: Snapshot) -> Folded:
    if snapshot.paths.case_insensitive:  # compiled folded already
        return Folded(snapshot.exact, snapshot.trie, False)
    exact: dict[str, tuple[CompiledRoute, ...]] = {}
    root = Node()
    for route in snapshot.routes:  # in precedence order
        path = route.path.lower()
        if route.exact:
            exact[path] = (*exact.get(path, ()), route)
            continue
        node = root
        for segment in path.split("/"):
            if segment:
                node = node.children.setdefault(segment, Node())
        node.routes = (*node.routes, route)
    mixed = any(route.path != route.path.lower() for route in snapshot.routes)
    return Folded(exact, root, mixed)


def find_folded_route(
    snapshot: Snapshot, key: str, method: str, host: bytes, headers: Headers
) -> CompiledRoute | None:
    """The route a case-folded `key` (normalize.fold) reaches among the routes' folded paths."""
    index = folded(snapshot)
    return _lookup(index.exact, index.trie, key, method, host, headers)
