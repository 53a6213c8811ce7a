"""Which route a request takes (pure): exact paths, then the deepest matching prefix; within
one path, the most specific route first (see table/compile.py). No match → None, which means
the table's default upstream."""

from __future__ import annotations

from collections.abc import Sequence

from proxy.table.compile import CompiledRoute, Snapshot

Headers = Sequence[tuple[bytes, bytes]]


def host_name(host: bytes) -> bytes:
    """`host` (lower-cased) without its port (`[v6]:port` aware)."""
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end != -1 else host
    return host.split(b":", 1)[0]


def _accepts(route: CompiledRoute, method: str, host: bytes, headers: Headers) -> bool:
    if route.methods is not None and method not in route.methods:
        return False
    if route.host is not None and route.host != host and route.host != host_name(host):
        return False
    return all(any(n == name and v == value for n, v in headers) for name, value in route.headers)


def _first(
    routes: tuple[CompiledRoute, ...], method: str, host: bytes, headers: Headers
) -> CompiledRoute | None:
    for route in routes:
        if _accepts(route, method, host, headers):
            return route
    return None


def find_route(
    snapshot: Snapshot, key: str, method: str, host: bytes, headers: Headers
) -> CompiledRoute | None:
    """The route for a request whose normalised path is `key` (see normalize.match_key) and
    whose Host header is `host`."""
    host = host.lower()
    exact = snapshot.exact.get(key)
    if exact is not None and (route := _first(exact, method, host, headers)) is not None:
        return route
    node = snapshot.trie
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
