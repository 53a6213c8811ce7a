"""Payment POST throughput of the payment service, with and without an Idempotency-Key, against
a real monolith, all on 127.0.0.1, in one run (so the ratios compare like with like).

Started as operators start them: `python -m legacy_monolith` (seeded SQLite) and
`python -m services.payment` (one uvicorn worker) on SQLite, and on PostgreSQL with
`--postgres URL` (a database of the bench's own is created there and dropped after). Every
request pays a fresh order (orders are written straight into the monolith's database beforehand:
placing thousands through its API would take longer than the measurement). Each POST costs the
service one call to the monolith (`GET /orders/{id}`; "who am I" is cached) and one transaction.

Modes, each for `--seconds` or `--requests`, whichever ends first, `--concurrency` in flight:

    monolith      POST /api/v1/payments on the monolith itself (the reference)
    no key        the service, as a client without Idempotency-Key calls it
    key           a new Idempotency-Key per request (claim + stored answer)
    replay        one key sent again and again (the stored answer, no new payment)

    python -m bench.payment_post
    python -m bench.payment_post --seconds 5 --postgres postgresql+psycopg://postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import aiohttp
import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.common import cpu_seconds, insert_orders, pct
from proxy.procs import Child

PY = sys.executable
ORDER_TOTAL = Decimal("19.90")


@dataclass
class Result:
    database: str
    mode: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    service_cpu: float = 0.0  # seconds, the process answering (service or monolith)
    monolith_cpu: float = 0.0  # seconds, the monolith (serving the service's order reads)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct_ms(self, q: float) -> float:
        """The `q` quantile of the latencies in ms (0.0 when there are none)."""
        return pct(self.latencies, q) * 1000 if self.latencies else 0.0


async def load(
    url: str,
    token: str,
    orders: list[int],
    *,
    key: str | None,
    seconds: float,
    concurrency: int,
) -> tuple[int, int, float, list[float]]:
    queue = iter(orders)
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for order_id in queue:
            if time.monotonic() >= deadline:
                return
            headers = {"Authorization": f"Bearer {token}"}
            if key == "new":
                headers["Idempotency-Key"] = secrets.token_hex(16)
            elif key is not None:
                headers["Idempotency-Key"] = key
            body = {"order_id": order_id, "method": "card", "card_token": "tok_visa"}
            started = time.perf_counter()
            async with session.post(f"{url}/api/v1/payments", json=body, headers=headers) as answer:
                await answer.read()
                if answer.status != 201:
                    errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return len(latencies), errors, time.monotonic() - started, latencies


def start_service(workdir: Path, database_url: str, legacy: str) -> Child:
    args = [PY, "-m", "services.payment", "--port", "0", "--database-url", database_url]
    args += ["--legacy-url", legacy]
    return Child("payment", args, cwd=str(workdir), env={"PAYMENT_RELAY_INTERVAL_SECONDS": "0.2"})


def bench_database(
    name: str, database_url: str, monolith: Child, legacy_url: str, args: argparse.Namespace
) -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp, httpx.Client(base_url=monolith.url) as http:
        email = f"bench-{secrets.token_hex(4)}@example.com"
        http.post(
            "/api/v1/users",
            json={"email": email, "password": "benchmark!", "full_name": "Bench"},
        ).raise_for_status()
        login = http.post("/api/v1/auth/login", json={"email": email, "password": "benchmark!"})
        token, user_id = login.json()["access_token"], login.json()["user_id"]
        results = []
        with start_service(Path(tmp), database_url, monolith.url) as service:
            modes: list[tuple[str, str, str | None]] = [
                ("monolith", monolith.url, None),
                ("no key", service.url, None),
                ("key", service.url, "new"),
                ("replay", service.url, secrets.token_hex(8)),
            ]
            # Warm up: connections, the token cache, the first id block.
            warm = insert_orders(legacy_url, user_id, 20, ORDER_TOTAL)
            asyncio.run(load(service.url, token, warm, key=None, seconds=5, concurrency=4))
            for mode, url, key in modes:
                orders = insert_orders(legacy_url, user_id, args.requests, ORDER_TOTAL)
                if mode == "replay":
                    orders = [orders[0]] * args.requests
                cpu_before = cpu_seconds(service.pid), cpu_seconds(monolith.pid)
                done, errors, seconds, latencies = asyncio.run(
                    load(
                        url,
                        token,
                        orders,
                        key=key,
                        seconds=args.seconds,
                        concurrency=args.concurrency,
                    )
                )
                own = cpu_seconds(service.pid) - cpu_before[0]
                legacy = cpu_seconds(monolith.pid) - cpu_before[1]
                if mode == "monolith":
                    own, legacy = legacy, 0.0
                results.append(Result(name, mode, done, errors, seconds, latencies, own, legacy))
        return results


def render(results: list[Result]) -> str:
    lines = [
        f"{'database':<10} {'mode':<9} {'requests':>8} {'errors':>6} {'req/s':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'vs no key':>9} {'cpu ms/req':>10} {'+monolith':>9}"
    ]
    for result in results:
        base = next(r.rps for r in results if r.database == result.database and r.mode == "no key")
        lines.append(
            f"{result.database:<10} {result.mode:<9} {result.requests:>8} {result.errors:>6} "
            f"{result.rps:>8.0f} {result.pct_ms(0.5):>7.1f} {result.pct_ms(0.99):>7.1f} "
            f"{result.rps / base if base else 0:>8.2f}x "
            f"{1000 * result.service_cpu / max(result.requests, 1):>10.2f} "
            f"{1000 * result.monolith_cpu / max(result.requests, 1):>9.2f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.payment_post", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="per mode (10)")
    parser.add_argument("--requests", type=int, default=3000, help="at most, per mode (3000)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (16)")
    parser.add_argument("--postgres", help="also bench on PostgreSQL (admin URL)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        legacy_url = f"sqlite:///{Path(tmp) / 'legacy.db'}"
        seed = Child("seed", [PY, "-m", "legacy_monolith", "seed", "--database-url", legacy_url])
        code, output = seed.run_to_end()
        if code:
            print(output, file=sys.stderr)
            return 1
        monolith_args = [PY, "-m", "legacy_monolith", "--port", "0"]
        monolith_args += ["--database-url", legacy_url]
        results: list[Result] = []
        with Child("monolith", monolith_args, cwd=tmp) as monolith:
            service_url = f"sqlite:///{Path(tmp) / 'payment.db'}"
            results += bench_database("sqlite", service_url, monolith, legacy_url, args)
            if args.postgres:
                admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
                name = f"bench_payment_{secrets.token_hex(4)}"
                with admin.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
                try:
                    url = make_url(args.postgres).set(database=name)
                    pg_url = url.render_as_string(hide_password=False)
                    results += bench_database("postgres", pg_url, monolith, legacy_url, args)
                finally:
                    with admin.connect() as conn:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    admin.dispose()
    print(render(results))
    mean = statistics.fmean(r.rps for r in results if r.mode == "no key")
    print(f"\n{len(results)} runs; service without a key averages {mean:.0f} req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
