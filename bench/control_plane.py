"""The control plane's benchmark: how fast a committed route-table version reaches every replica,
what reloading a large table costs, and what a flip storm costs the data plane.

Three `strangler serve --store redis://…` replicas share one Redis (a key prefix of their own,
deleted afterwards) in front of an nginx upstream; loopback only, bounded in time and count.

1. Convergence: 100 flips, one every 200 ms; for each, the time from the commit call to the
   moment all three replicas report the new version on /readyz (polled back to back), p50/p99.
   The same again with a 1,000-route table.
2. Reload cost: parsing, validating and compiling a 1,000-route table in-process (what a replica
   does off the event loop before the swap), median of 20.
3. Flip storm: wrk on one replica for `--seconds`, without flips and with a flip every 100 ms,
   interleaved for `--rounds`; the ratio of the two in the same round.

    python -m bench.control_plane                    # --rounds 3 --seconds 10
    python -m bench.control_plane --redis-url redis://127.0.0.1:6379/13 --flips 100
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

from bench.common import pct, wait_port
from bench.run import NGINX_UPSTREAM, Target, wrk
from proxy.store.redis import RedisStore, table_of
from proxy.table.compile import compile_table
from proxy.table.loader import load_text

UPSTREAM_PORT = 18281
REPLICA_PORTS = [(18291, 18391), (18292, 18392), (18293, 18393)]  # (external, admin)


def table(routes: int, weight: int, up: int) -> str:
    """A table whose `payments` route splits `weight`% to `payment`, plus `routes` - 1 more."""
    lines = [
        "version: 1",
        "upstreams:",
        f'  monolith: {{url: "http://127.0.0.1:{up}", timeout: 30s}}',
        f'  payment: {{url: "http://127.0.0.1:{up}", timeout: 5s}}',
        "default: monolith",
        "routes:",
        "  - name: payments",
        "    match: {path: /api/v1/payments}",
    ]
    if weight in (0, 100):
        lines.append(f"    to: {'payment' if weight else 'monolith'}")
    else:
        lines.append(f"    split: {{monolith: {100 - weight}, payment: {weight}}}")
        lines.append("    sticky: header:X-User-Id")
    for i in range(routes - 1):
        lines += [f"  - name: r{i:04d}", f"    match: {{path: /svc/r{i:04d}}}", "    to: monolith"]
    return "\n".join(lines) + "\n"


async def converge(
    store: RedisStore, texts: list[str], admin_ports: list[int]
) -> tuple[list[float], list[float]]:
    """Commit each text in turn: how long each commit took (validation included), and the
    seconds from the commit's return until every replica serves it."""
    commits, times = [], []
    async with aiohttp.ClientSession() as http:

        async def until(port: int, version: int) -> float:
            url = f"http://127.0.0.1:{port}/readyz"
            while True:
                async with http.get(url) as answer:
                    if (await answer.json())["table_version"] >= version:
                        return time.perf_counter()

        for text in texts:
            base = store.current_number()
            started = time.perf_counter()
            store.commit(text, author="bench", reason="flip", expected_version=base)
            committed = time.perf_counter()
            done = await asyncio.gather(*(until(port, base + 1) for port in admin_ports))
            commits.append(committed - started)
            times.append(max(done) - committed)
            await asyncio.sleep(0.2)
    return commits, times


def reload_cost(text: str, repeat: int = 20) -> tuple[float, float]:
    """Median seconds to load and compile `text` as a replica does (from the committed JSON,
    re-validated) and from its YAML (a hand-edited routes.yaml, or a version without JSON)."""
    compiled = load_text(text, "bench").model_dump_json()
    replica, yaml = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        compile_table(table_of(compiled, text, 1))
        middle = time.perf_counter()
        compile_table(load_text(text, "bench"))
        yaml.append(time.perf_counter() - middle)
        replica.append(middle - started)
    return statistics.median(replica), statistics.median(yaml)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--flips", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (see bench/README or the README's benchmark section)")
            return 2

    prefix = f"bench:{secrets.token_hex(4)}:"
    work = Path(tempfile.mkdtemp(prefix="strangler-cp-bench-"))
    (work / "big.bin").write_bytes(b"x" * 65536)
    (work / "up.conf").write_text(NGINX_UPSTREAM.format(dir=work, port=UPSTREAM_PORT))
    seed = work / "routes.yaml"
    seed.write_text(table(2, 0, UPSTREAM_PORT))
    store = RedisStore(args.redis_url, prefix, seed=seed)
    store.current()  # seeds version 1
    upstream = Target("nginx-upstream", UPSTREAM_PORT, ["nginx", "-c", str(work / "up.conf")])
    replicas = [
        Target(
            f"replica-{n}",
            port,
            [
                sys.executable,
                "-m",
                "proxy",
                "serve",
                "--store",
                args.redis_url,
                "--store-prefix",
                prefix,
                "--store-cache",
                str(work / f"lkg-{n}.yaml"),
                "--listen",
                f"127.0.0.1:{port}",
                "--internal-listen",
                "off",
                "--admin-listen",
                f"127.0.0.1:{admin}",
                "--no-access-log",
            ],
        )
        for n, (port, admin) in enumerate(REPLICA_PORTS, 1)
    ]
    try:
        upstream.start(work)
        for replica in replicas:
            replica.start(work)
            wait_port(REPLICA_PORTS[replicas.index(replica)][1])
        admins = [admin for _, admin in REPLICA_PORTS]

        weights = [(i * 7) % 101 for i in range(1, args.flips + 1)]
        small = asyncio.run(converge(store, [table(2, w, UPSTREAM_PORT) for w in weights], admins))
        large = asyncio.run(
            converge(store, [table(1000, w, UPSTREAM_PORT) for w in weights[:30]], admins)
        )
        cost = reload_cost(table(1000, 10, UPSTREAM_PORT))
        cost_small = reload_cost(table(2, 10, UPSTREAM_PORT))
        asyncio.run(converge(store, [table(2, 10, UPSTREAM_PORT)], admins))

        rows = []
        for round_ in range(args.rounds):
            steady = wrk(REPLICA_PORTS[0][0], "small", args.seconds, work)
            stop = threading.Event()

            def storm(stop: threading.Event) -> None:
                flips = 0
                while not stop.is_set():
                    base = store.current_number()
                    w = 10 + (flips % 2) * 10
                    store.commit(
                        table(2, w, UPSTREAM_PORT),
                        author="bench",
                        reason="storm",
                        expected_version=base,
                    )
                    flips += 1
                    stop.wait(0.1)

            flipper = threading.Thread(target=storm, args=(stop,))
            flipper.start()
            stormy = wrk(REPLICA_PORTS[0][0], "small", args.seconds, work)
            stop.set()
            flipper.join()
            rows.append((round_ + 1, steady, stormy))
    finally:
        for target in [*replicas, upstream]:
            target.stop()
        client = store._client
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        store.close()

    ms = 1000
    print(f"\nConvergence: committed → all {len(replicas)} replicas serving it (ms)")
    print("| table | flips | commit p50 | p50 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (commits, times) in (("2 routes", small), ("1,000 routes", large)):
        print(
            f"| {name} | {len(times)} | {pct(commits, 0.50, rounded=True) * ms:.1f} "
            f"| {pct(times, 0.50, rounded=True) * ms:.1f} "
            f"| {pct(times, 0.99, rounded=True) * ms:.1f} | {max(times) * ms:.1f} |"
        )
    print("\nReload cost: load + validate + compile, median of 20 (ms)")
    print("| table | from the stored JSON (replicas) | from YAML (routes.yaml) |")
    print("|---|---:|---:|")
    for name, (from_json, yaml) in (("1,000 routes", cost), ("2 routes", cost_small)):
        print(f"| {name} | {from_json * ms:.2f} | {yaml * ms:.2f} |")
    print("\nFlip storm (a flip every 100 ms) vs none, wrk -c64 small GET on one replica")
    print(
        "| round | steady req/s | storm req/s | storm/steady | steady p99 ms | storm p99 ms "
        "| errors |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for round_, steady, stormy in rows:
        print(
            f"| {round_} | {steady['rps']:,.0f} | {stormy['rps']:,.0f} | "
            f"{stormy['rps'] / steady['rps']:.3f} | {steady['p99']:.1f} | {stormy['p99']:.1f} | "
            f"{int(steady['errors'] + stormy['errors'])} |"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
