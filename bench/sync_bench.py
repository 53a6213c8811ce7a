"""The data sync's benchmark: backfill rows/s, and follow lag while the monolith takes writes.

1. Backfill: a monolith database seeded with `--payments` payments (legacy_monolith.seed, the
   code behind `python -m legacy_monolith seed`), copied into a freshly migrated service database
   by `services.payment.sync.backfill`, on SQLite and on PostgreSQL. Reports rows/s.
2. Follow: the monolith runs as its operators run it (`python -m legacy_monolith`, 127.0.0.1,
   SQLite) and takes ~`--rate` payment writes/s through its HTTP API for `--seconds` seconds
   (create + capture, authorize, capture, partial refund; orders are placed beforehand by
   direct inserts shaped like the API's). The follower runs as its operators run it
   (`python -m services.payment.sync follow`, defaults: 1 s interval, 1 s safety delay, 30 s
   look-back). Two lags are reported:
   - visible: for every write, from its HTTP answer until the service database holds that
     state (polled every 20 ms by this process), p50/p99 after a 2 s warm-up, and max;
   - recorded: the follower's own lag samples (`sync_lag`: how far behind the legacy's
     commits the follower is at the end of each poll, `datasync.incremental`), p50/p99.

    python -m bench.sync_bench                       # 100k rows, 20 s at 100 writes/s
    python -m bench.sync_bench --payments 20000 --seconds 10 --skip-postgres
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import Engine

from datasync.state import JOB_FOLLOW
from datasync.state import lag as lag_samples
from legacy_monolith.db import make_engine as make_monolith_engine
from legacy_monolith.models import Order, User
from legacy_monolith.seed import DEMO_PASSWORD, DEMO_USER, STAFF_USER, seed
from proxy.procs import Child
from services.payment.db import alembic_config
from services.payment.db import make_engine as make_service_engine
from services.payment.models import Payment as ServicePayment
from services.payment.sync import backfill, make_legacy_engine

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN = os.environ.get(
    "STRANGLER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
WRITERS = 4
WARM_UP = 2.0  # seconds of writes left out of the lag percentiles (reported separately)


def migrate(engine: Engine) -> None:
    from alembic import command

    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --- backfill -----------------------------------------------------------------------------------
def bench_backfill(
    backend: str, legacy_url: str, service_url: str, payments: int, batch: int
) -> dict[str, Any]:
    started = time.perf_counter()
    engine = make_monolith_engine(legacy_url)
    seed(engine, payments=payments, password_iterations=1_000)
    engine.dispose()
    seeded = time.perf_counter() - started
    service = make_service_engine(service_url)
    migrate(service)
    legacy = make_legacy_engine(legacy_url)
    result = backfill(legacy, service, batch_size=batch)
    with service.connect() as conn:
        copied = conn.scalar(select(ServicePayment.id).order_by(ServicePayment.id.desc()).limit(1))
    legacy.dispose()
    service.dispose()
    return {
        "backend": backend,
        "rows": result.rows,
        "batch_size": batch,
        "seconds": round(result.seconds, 2),
        "rows_per_second": round(result.rows_per_second),
        "seed_seconds": round(seeded, 1),
        "last_id": copied,
    }


def postgres_database(name: str) -> tuple[str, Callable[[], None]]:
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    url = admin.url.set(database=name).render_as_string(hide_password=False)
    return url, drop


# --- follow under write load --------------------------------------------------------------------
@dataclass
class Write:
    payment_id: int
    status: str
    refunded: str
    done_at: float
    seen_at: float | None = None


@dataclass
class Load:
    base_url: str
    orders: list[int]
    rate: float
    seconds: float
    writes: list[Write] = field(default_factory=list)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    authorized: list[int] = field(default_factory=list)
    captured: list[int] = field(default_factory=list)
    next_op: int = 0

    def take(self) -> int | None:
        with self.lock:
            op = self.next_op
            self.next_op += 1
            return op if op < self.rate * self.seconds else None


def login(http: httpx.Client, email: str) -> dict[str, str]:
    answer = http.post("/api/v1/auth/login", json={"email": email, "password": DEMO_PASSWORD})
    answer.raise_for_status()
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def writer(load: Load, start: float) -> None:
    with httpx.Client(base_url=load.base_url, timeout=30) as http:
        me, staff = login(http, DEMO_USER), login(http, STAFF_USER)
        while (op := load.take()) is not None:
            delay = start + op / load.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            answer = one_write(load, http, op, me, staff)
            if answer is None or answer.status_code >= 300:
                with load.lock:
                    load.errors += 1
                continue
            body = answer.json()
            with load.lock:
                load.writes.append(
                    Write(body["id"], body["status"], body["refunded_amount"], time.monotonic())
                )
                if body["status"] == "authorized":
                    load.authorized.append(body["id"])
                elif body["status"] in ("captured", "partially_refunded"):
                    load.captured.append(body["id"])


def one_write(
    load: Load, http: httpx.Client, op: int, me: dict[str, str], staff: dict[str, str]
) -> httpx.Response | None:
    kind = op % 4  # create+capture, authorize, capture an authorized one, refund 1.00
    with load.lock:
        held = load.authorized.pop(0) if kind == 2 and load.authorized else None
        paid = load.captured.pop(0) if kind == 3 and load.captured else None
    if held is not None:
        return http.post(f"/api/v1/payments/{held}/capture", headers=staff)
    if paid is not None:
        return http.post(f"/api/v1/payments/{paid}/refund", json={"amount": "1.00"}, headers=staff)
    with load.lock:
        if not load.orders:
            return None
        order = load.orders.pop()
    body = {"order_id": order, "method": "card", "card_token": "tok_visa", "capture": kind != 1}
    return http.post("/api/v1/payments", json=body, headers=me)


def watch(load: Load, service: Engine, stop: threading.Event) -> None:
    """Mark each write seen once the service database holds its state (or a later one)."""
    while not stop.is_set():
        with load.lock:
            pending = [w for w in load.writes if w.seen_at is None]
        if pending:
            ids = sorted({w.payment_id for w in pending})
            with service.connect() as conn:
                rows = {
                    r.id: (r.status, f"{r.refunded_amount:.2f}", r.row_version)
                    for r in conn.execute(
                        select(
                            ServicePayment.id,
                            ServicePayment.status,
                            ServicePayment.refunded_amount,
                            ServicePayment.row_version,
                        ).where(ServicePayment.id.in_(ids[:900]))
                    )
                }
            now = time.monotonic()
            with load.lock:
                latest: dict[int, float] = {}
                for w in load.writes:  # in answer order: a visible later write covers earlier ones
                    state = rows.get(w.payment_id)
                    if state is not None and state[:2] == (w.status, w.refunded):
                        latest[w.payment_id] = w.done_at
                for w in load.writes:
                    if w.seen_at is None and w.done_at <= latest.get(w.payment_id, -1.0):
                        w.seen_at = now
        stop.wait(0.02)


def place_orders(legacy_url: str, count: int) -> list[int]:
    """Unpaid orders of the demo customer, inserted as the API's checkout inserts them."""
    engine = make_monolith_engine(legacy_url)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        user = conn.scalar(select(User.id).where(User.email == DEMO_USER))
        rows = [
            {
                "user_id": user,
                "state": "placed",
                "total_amount": Decimal("25.00"),
                "currency": "EUR",
                "shipping_address": "1 Main St",
                "created_at": now,
                "updated_at": now,
            }
            for _ in range(count)
        ]
        ids = list(
            conn.scalars(insert(Order).returning(Order.id, sort_by_parameter_order=True), rows)
        )
    engine.dispose()
    return ids


def wait_for_first_poll(service: Engine, follower: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and follower.poll() is None:
        with service.connect() as conn:
            if conn.scalar(select(lag_samples.c.id).limit(1)) is not None:
                return
        time.sleep(0.05)
    raise RuntimeError("the follower did not start polling")


def bench_follow(
    folder: Path, rate: float, seconds: float, interval: float, safety: float
) -> dict[str, Any]:
    polls_log = folder / "follow-polls.jsonl"
    legacy_url = f"sqlite:///{folder / 'follow-legacy.db'}"
    service_url = f"sqlite:///{folder / 'follow-service.db'}"
    engine = make_monolith_engine(legacy_url)
    seed(engine, payments=2_000, password_iterations=1_000)
    engine.dispose()
    service = make_service_engine(service_url)
    migrate(service)
    legacy = make_legacy_engine(legacy_url)
    backfill(legacy, service)
    legacy.dispose()
    orders = place_orders(legacy_url, int(rate * seconds) + 100)
    python = sys.executable
    monolith = Child(
        "monolith",
        [python, "-m", "legacy_monolith", "--port", "0", "--database-url", legacy_url],
        cwd=str(folder),
    ).start()
    follower = subprocess.Popen(
        [
            python,
            "-m",
            "services.payment.sync",
            "follow",
            "--json",
            "--interval",
            str(interval),
            "--safety-delay",
            str(safety),
            "--legacy-db",
            legacy_url,
            "--service-db",
            service_url,
        ],
        cwd=ROOT,
        stdout=polls_log.open("w"),
    )
    wait_for_first_poll(service, follower)
    load = Load(monolith.url, orders, rate, seconds)
    stop = threading.Event()
    watcher = threading.Thread(target=watch, args=(load, service, stop), daemon=True)
    window_start = datetime.now(UTC)
    try:
        watcher.start()
        start = time.monotonic() + 0.5
        threads = [threading.Thread(target=writer, args=(load, start)) for _ in range(WRITERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - start
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(w.seen_at is None for w in load.writes):
            time.sleep(0.05)
    finally:
        stop.set()
        watcher.join(timeout=5)
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=30)
        monolith.stop()
    with service.connect() as conn:
        recorded = [
            float(v)
            for v in conn.scalars(
                select(lag_samples.c.lag_seconds).where(
                    lag_samples.c.job == JOB_FOLLOW,
                    lag_samples.c.sampled_at >= window_start + timedelta(seconds=WARM_UP),
                    lag_samples.c.sampled_at <= window_start + timedelta(seconds=seconds),
                )
            )
        ]
    service.dispose()
    visible = [w.seen_at - w.done_at for w in load.writes if w.seen_at is not None]
    # The first seconds warm up three processes (logins, connection pools, the first polls).
    steady = [
        w.seen_at - w.done_at
        for w in load.writes
        if w.seen_at is not None and w.done_at >= start + WARM_UP
    ]
    polls = [json.loads(line) for line in polls_log.read_text().splitlines() if line.strip()]
    busy = [p["seconds"] for p in polls if p["rows_read"]]
    return {
        "writes": len(load.writes),
        "write_errors": load.errors,
        "writes_per_second": round(len(load.writes) / elapsed, 1),
        "unseen": sum(1 for w in load.writes if w.seen_at is None),
        "interval": interval,
        "safety_delay": safety,
        "visible_lag_p50": round(pct(steady, 0.50), 3),
        "visible_lag_p99": round(pct(steady, 0.99), 3),
        "visible_lag_p99_with_warm_up": round(pct(visible, 0.99), 3),
        "visible_lag_max": round(max(visible), 3) if visible else None,
        "visible_lag_mean": round(statistics.fmean(visible), 3) if visible else None,
        "recorded_lag_p50": round(pct(recorded, 0.50), 3),
        "recorded_lag_p99": round(pct(recorded, 0.99), 3),
        "recorded_samples": len(recorded),
        "poll_seconds_p50": round(pct(busy, 0.50), 3),
        "poll_seconds_max": round(max(busy), 3) if busy else None,
        "rows_read_per_poll_p50": pct([float(p["rows_read"]) for p in polls], 0.5),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sync_bench", description=__doc__)
    parser.add_argument("--payments", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--interval", type=float, default=1.0, help="follow --interval")
    parser.add_argument("--safety-delay", type=float, default=1.0, help="follow --safety-delay")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-follow", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"backfill": [], "follow": None}
    with tempfile.TemporaryDirectory(prefix="sync-bench-") as tmp:
        folder = Path(tmp)
        results["backfill"].append(
            bench_backfill(
                "sqlite",
                f"sqlite:///{folder / 'legacy.db'}",
                f"sqlite:///{folder / 'service.db'}",
                args.payments,
                args.batch_size,
            )
        )
        if not args.skip_postgres:
            tag = secrets.token_hex(4)
            legacy_url, drop_legacy = postgres_database(f"sync_bench_legacy_{tag}")
            service_url, drop_service = postgres_database(f"sync_bench_service_{tag}")
            try:
                results["backfill"].append(
                    bench_backfill(
                        "postgres", legacy_url, service_url, args.payments, args.batch_size
                    )
                )
            finally:
                drop_legacy()
                drop_service()
        if not args.skip_follow:
            results["follow"] = bench_follow(
                folder, args.rate, args.seconds, args.interval, args.safety_delay
            )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for row in results["backfill"]:
        print(
            f"backfill {row['backend']:>8}: {row['rows']:,} rows in {row['seconds']}s = "
            f"{row['rows_per_second']:,} rows/s (batch {row['batch_size']}; seeding took "
            f"{row['seed_seconds']}s)"
        )
    follow = results["follow"]
    if follow:
        print(
            f"follow (SQLite, interval {follow['interval']}s, safety delay "
            f"{follow['safety_delay']}s): {follow['writes']} API writes at "
            f"{follow['writes_per_second']}/s ({follow['write_errors']} errors, "
            f"{follow['unseen']} never seen)\n"
            f"  visible lag  p50 {follow['visible_lag_p50']}s  p99 {follow['visible_lag_p99']}s  "
            f"(after {WARM_UP:.0f}s warm-up; with it p99 {follow['visible_lag_p99_with_warm_up']}s,"
            f" max {follow['visible_lag_max']}s)\n"
            f"  recorded lag p50 {follow['recorded_lag_p50']}s  p99 {follow['recorded_lag_p99']}s "
            f"({follow['recorded_samples']} polls)\n"
            f"  a poll takes p50 {follow['poll_seconds_p50']}s, max {follow['poll_seconds_max']}s "
            f"(re-reading ~{follow['rows_read_per_poll_p50']:.0f} rows of look-back)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
