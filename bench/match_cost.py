"""Matching cost at 10, 1,000 and 10,000 routes: ns per lookup of the compiled matcher (it must
stay flat as the table grows). Pure CPU, no sockets.

    python -m bench.match_cost
"""

from __future__ import annotations

import random
import time

from proxy.dataplane.match import find_route
from proxy.dataplane.normalize import match_key
from proxy.table.compile import compile_table
from proxy.table.model import RouteTable


def table_of(n: int) -> RouteTable:
    routes = []
    for i in range(n):
        route: dict[str, object] = {
            "name": f"r{i}",
            "match": {"path": f"/api/v{i % 7}/svc{i}/items", "exact": i % 5 == 0},
            "to": "b",
        }
        if i % 3 == 0:
            route["match"]["methods"] = ["GET", "POST"]  # type: ignore[index]
        routes.append(route)
    return RouteTable.model_validate(
        {
            "upstreams": {"a": {"url": "http://127.0.0.1:1"}, "b": {"url": "http://127.0.0.1:2"}},
            "default": "a",
            "routes": routes,
        }
    )


def measure(n: int, lookups: int = 200_000) -> tuple[float, float]:
    snapshot = compile_table(table_of(n))
    rng = random.Random(n)
    paths = [
        f"/api/v{i % 7}/svc{i}/items/{rng.randrange(999)}".encode()
        for i in (rng.randrange(n) for _ in range(512))
    ] + [b"/api/v1/unknown/path"] * 64
    headers = [(b"host", b"shop.example"), (b"accept", b"*/*")]
    best_match = best_total = float("inf")
    for _ in range(5):
        started = time.perf_counter_ns()
        for i in range(lookups):
            find_route(snapshot, paths[i % len(paths)].decode(), "GET", b"shop.example", headers)
        best_match = min(best_match, (time.perf_counter_ns() - started) / lookups)
        started = time.perf_counter_ns()
        for i in range(lookups):
            key = match_key(paths[i % len(paths)])
            find_route(snapshot, key, "GET", b"shop.example", headers)
        best_total = min(best_total, (time.perf_counter_ns() - started) / lookups)
    return best_match, best_total


def main() -> None:
    print("| routes | match ns/lookup | normalise + match ns/lookup |")
    print("|---:|---:|---:|")
    for n in (10, 1_000, 10_000):
        match_ns, total_ns = measure(n)
        print(f"| {n:,} | {match_ns:,.0f} | {total_ns:,.0f} |")


if __name__ == "__main__":
    main()
