"""The engine on a table it has never seen: an inventory `stock_items` table, declared in
`tables/stock_items.yaml` and unlike payments in every way the declaration allows (key and change
column named differently, a decimal of scale 3, a boolean, a date, text, a nullable string, two
columns renamed in the service, origin and version columns of other names, its own outbox), on
SQLite and on PostgreSQL. Nothing of the payment service is imported: every job takes the
declaration alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from datasync.backfill import BatchDone, backfill
from datasync.declaration import load
from datasync.engines import reading
from datasync.incremental import follow_once
from datasync.reconcile import reconcile
from datasync.sources import OutboxSubscriber
from datasync.state import JOB_BACKFILL, load_checkpoint
from datasync.status import gather_status
from datasync.to_legacy import LegacyApplier, run_to_legacy, to_legacy_once
from tests.datasync.tables.stock import (
    STOCK_SOFT_YAML,
    STOCK_YAML,
    Databases,
    StockTables,
    bookkeeping,
    create_stock,
    delete_legacy,
    delete_service,
    insert_legacy,
    legacy_rows,
    now,
    outbox_events,
    postgres_schemas,
    service_event,
    service_insert,
    service_rows,
    service_write,
    set_service,
    sqlite_databases,
    stock_row,
    update_legacy,
)

ROOT = Path(__file__).resolve().parents[2]
# Loaded once: the jobs key their table metadata by the Spec object.
SPEC = load(STOCK_YAML)
SOFT_SPEC = load(STOCK_SOFT_YAML)
HOURS_AGO = timedelta(hours=3)


def keys(count: int, start: int = 1_000, step: int = 7) -> list[int]:
    """Keys with gaps, as a monolith's table has after deletes."""
    return [start + step * i for i in range(count)]


@pytest.fixture(scope="module")
def postgres_database(postgres_databases: Callable[[], str]) -> str:
    return postgres_databases()


@pytest.fixture(params=["sqlite", "postgres"])
def dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    if request.param == "postgres":
        made = postgres_schemas(request.getfixturevalue("postgres_database"), request.addfinalizer)
    else:
        made = sqlite_databases(tmp_path)
    yield made
    made.dispose()


@pytest.fixture
def stock(dbs: Databases) -> StockTables:
    return create_stock(dbs, SPEC)


def seed(dbs: Databases, tables: StockTables, count: int, age: timedelta = HOURS_AGO) -> list[int]:
    """`count` legacy rows last changed `age` ago."""
    made = keys(count)
    insert_legacy(dbs, tables, (stock_row(k, now() - age) for k in made))
    return made


def assert_same(dbs: Databases, tables: StockTables) -> None:
    """Both sides hold the same rows, field for field (read without the engine)."""
    legacy, service = legacy_rows(dbs, tables), service_rows(dbs, tables)
    assert sorted(legacy) == sorted(service)
    for key, row in legacy.items():
        assert service[key] == row, key


# --- backfill ------------------------------------------------------------------------------------
def test_a_finished_backfill_leaves_the_planner_statistics_of_the_filled_table(
    dbs: Databases, stock: StockTables
) -> None:
    from sqlalchemy import text

    seed(dbs, stock, 40)
    backfill(SPEC, dbs.legacy, dbs.service)
    table = SPEC.service_table
    with dbs.service.connect() as conn:
        if dbs.backend == "postgres":  # not planned as an empty table until autovacuum runs
            rows = conn.scalar(
                text("SELECT reltuples FROM pg_class WHERE relname = :t"), {"t": table}
            )
            assert rows == 40
        else:
            assert conn.scalar(
                text("SELECT count(*) FROM sqlite_stat1 WHERE tbl = :t"), {"t": table}
            )


class Crash(Exception):
    pass


def test_a_crashed_backfill_resumes_after_its_last_batch(
    dbs: Databases, stock: StockTables
) -> None:
    made = seed(dbs, stock, 120)

    def crash(done: BatchDone) -> None:
        if done.number == 3:
            raise Crash

    with pytest.raises(Crash):
        backfill(SPEC, dbs.legacy, dbs.service, batch_size=25, on_batch=crash)
    with reading(dbs.service) as conn:
        checkpoint = load_checkpoint(conn, SPEC.name, JOB_BACKFILL)
    assert checkpoint is not None
    assert (checkpoint.status, checkpoint.position_id, checkpoint.rows_done) == (
        "running",
        made[74],
        75,
    )
    assert sorted(service_rows(dbs, stock)) == made[:75]

    result = backfill(SPEC, dbs.legacy, dbs.service, batch_size=25)

    assert (result.status, result.resumed_after_id, result.rows) == ("done", made[74], 45)
    assert (result.counts.inserted, result.last_id, result.upper_id) == (45, made[-1], made[-1])
    assert_same(dbs, stock)
    assert bookkeeping(dbs, stock, made[0]) == ("legacy", 1)
    assert outbox_events(dbs, stock) == []  # a bulk copy is not a stream of changes
    again = backfill(SPEC, dbs.legacy, dbs.service, batch_size=25)
    assert again.status == "already-done"
    report = reconcile(SPEC, dbs.legacy, dbs.service, settle=0)
    assert (report.drift, report.rows_legacy, report.rows_service) == (0, 120, 120)


# --- follow --------------------------------------------------------------------------------------
def test_follow_under_concurrent_writes_ends_with_every_row_equal(
    dbs: Databases, stock: StockTables
) -> None:
    made = seed(dbs, stock, 40)
    backfill(SPEC, dbs.legacy, dbs.service)
    stop, errors = threading.Event(), []
    polls = [0]

    def writer(number: int) -> None:
        rng = random.Random(number)
        next_key = 100_000 * (number + 1)
        try:
            while not stop.is_set():
                if rng.random() < 0.4:
                    insert_legacy(dbs, stock, [stock_row(next_key)])
                    next_key += 1
                else:
                    key = rng.choice(made)
                    update_legacy(
                        dbs,
                        stock,
                        key,
                        quantity=rng.randrange(1_000),
                        unit_cost=Decimal(rng.randrange(100_000)) / 1000,
                        in_stock=rng.random() < 0.5,
                        warehouse=rng.choice(("AMS", "BER", "LIS", "OSL")),
                        bin_label=rng.choice((None, "X-1", "Y-22")),
                    )
                time.sleep(rng.uniform(0.002, 0.02))
        except Exception as exc:
            errors.append(exc)

    def follower() -> None:
        rng = random.Random(99)
        try:
            while not stop.is_set():
                follow_once(SPEC, dbs.legacy, dbs.service)
                polls[0] += 1
                time.sleep(rng.uniform(0.05, 0.25))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    threads.append(threading.Thread(target=follower))
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert polls[0] >= 3
    time.sleep(SPEC.follow.safety_delay + 0.05)
    follow_once(SPEC, dbs.legacy, dbs.service)  # the last writes, once past the safety delay

    assert_same(dbs, stock)
    report = reconcile(SPEC, dbs.legacy, dbs.service, settle=0)
    assert report.drift == 0, report.as_dict()
    assert report.rows_legacy > len(made)
    # Every row the follower wrote was announced, as a change from the legacy side.
    events = outbox_events(dbs, stock)
    assert events
    assert {json.loads(e["payload"])["origin"] for e in events} == {"legacy"}
    assert {e["event_type"] for e in events} <= {"stock.synced", "stock.sold_out"}


def test_a_quiet_table_reports_the_lag_of_its_new_write_not_the_age_of_its_old_rows(
    dbs: Databases, stock: StockTables
) -> None:
    seed(dbs, stock, 10)
    backfill(SPEC, dbs.legacy, dbs.service)
    first = follow_once(SPEC, dbs.legacy, dbs.service, safety_delay=0)
    assert first.lag_seconds == 0.0

    insert_legacy(dbs, stock, [stock_row(5_000), stock_row(5_007)])
    # Younger than the safety delay: one page of them is applied early (a page of one here),
    # the other waits, and the lag is its age, not three hours.
    pending = follow_once(SPEC, dbs.legacy, dbs.service, safety_delay=1.0, page_size=1)

    assert pending.counts.inserted == 1
    assert 0.0 <= pending.lag_seconds < 1.5
    live = gather_status(SPEC, dbs.service, dbs.legacy)["follow"]["live_lag_seconds"]
    assert 0.0 <= live < 2.0
    caught = follow_once(SPEC, dbs.legacy, dbs.service, safety_delay=0)
    assert (caught.counts.inserted, caught.lag_seconds) == (1, 0.0)


def test_a_quiet_table_followed_without_a_backfill_lags_only_by_its_new_write(
    dbs: Databases, stock: StockTables
) -> None:
    seed(dbs, stock, 5)
    first = follow_once(SPEC, dbs.legacy, dbs.service, safety_delay=0)
    assert (first.counts.inserted, first.lag_seconds) == (5, 0.0)
    insert_legacy(dbs, stock, [stock_row(6_000)])
    paged = follow_once(SPEC, dbs.legacy, dbs.service, safety_delay=0, page_size=1, max_pages=1)
    assert paged.counts.inserted == 1  # the look-back's pages come on top of the one allowed
    assert paged.lag_seconds < 60  # not hours
    assert follow_once(SPEC, dbs.legacy, dbs.service, safety_delay=0).lag_seconds == 0.0
    assert_same(dbs, stock)


# --- to-legacy -----------------------------------------------------------------------------------
def test_service_writes_reach_the_legacy_table_and_echoes_and_stale_events_do_not(
    dbs: Databases, stock: StockTables
) -> None:
    made = seed(dbs, stock, 12)
    backfill(SPEC, dbs.legacy, dbs.service)
    # A monolith change the follower copies in: it is announced with origin 'legacy' (an echo).
    update_legacy(dbs, stock, made[0], in_stock=False)
    assert follow_once(SPEC, dbs.legacy, dbs.service, safety_delay=0).counts.updated == 1
    echoes = outbox_events(dbs, stock)
    assert [e["event_type"] for e in echoes] == ["stock.sold_out"]

    # The service's own writes: renamed columns, a decimal's third place, a NULL, a new row.
    a, b, c = made[1], made[2], made[3]
    service_write(dbs, stock, a, quantity=999, unit_cost=Decimal("12.346"))
    service_write(dbs, stock, b, warehouse="OSL", bin_label=None, description="moved")
    service_write(dbs, stock, c, restock_on=None, in_stock=True)
    later, version = service_write(dbs, stock, a, quantity=1_000)
    assert version == 3
    service_insert(dbs, stock, stock_row(900_001, sku="SVC-1"))
    # Stale: an event older than a version already applied to its row...
    service_event(dbs, stock, a, {**later, "quantity": 1}, 2)
    # ...and one the monolith has overtaken since (its row is newer by more than the skew).
    d = made[4]
    old = legacy_rows(dbs, stock)[d]
    update_legacy(dbs, stock, d, quantity=77)
    service_event(dbs, stock, d, {**old, "modified_at": now() - timedelta(minutes=5)}, 2)

    result = to_legacy_once(SPEC, dbs.writer, dbs.service, batch=3)

    assert result.outcomes["applied"] == 5
    assert result.outcomes["echo"] == 1
    assert result.outcomes["stale"] == 2
    legacy, service = legacy_rows(dbs, stock), service_rows(dbs, stock)
    for key in (a, b, c, 900_001):
        assert legacy[key] == service[key], key
    assert legacy[a]["quantity"] == 1_000  # the stale version 2 did not undo version 3
    assert legacy[a]["unit_cost"] == Decimal("12.346")
    assert (legacy[b]["warehouse"], legacy[b]["bin_label"]) == ("OSL", None)
    assert legacy[d]["quantity"] == 77  # the monolith's later write stands

    # Nothing is handled twice, and the follower sees its own writes come back unchanged.
    assert to_legacy_once(SPEC, dbs.writer, dbs.service).events == 0
    back = follow_once(SPEC, dbs.legacy, dbs.service, safety_delay=0)
    assert back.counts.written == 1  # only the monolith's own change to d
    assert service_rows(dbs, stock)[d]["quantity"] == 77
    assert reconcile(SPEC, dbs.legacy, dbs.service, settle=0).drift == 0


def test_run_to_legacy_over_the_outbox_source(dbs: Databases, stock: StockTables) -> None:
    made = seed(dbs, stock, 6)
    backfill(SPEC, dbs.legacy, dbs.service)
    for key in made[:3]:
        service_write(dbs, stock, key, quantity=key % 13 + 100, sku=f"NEW-{key}")

    async def run() -> Any:
        source = OutboxSubscriber(SPEC, dbs.service)
        try:
            applier = LegacyApplier(SPEC, dbs.writer, dbs.service)
            return await run_to_legacy(source, applier, block_ms=1, until_idle=True)
        finally:
            await source.close()

    result = asyncio.run(run())

    assert (result.events, result.outcomes["applied"]) == (3, 3)
    assert_same(dbs, stock)
    status = gather_status(SPEC, dbs.service)["to_legacy"]
    assert (status["processed"], status["applied"]) == (3, 3)
    assert status["position"] == str(outbox_events(dbs, stock)[-1]["id"])


# --- reconcile -----------------------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "datasync", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )


def test_reconcile_finds_planted_drift_by_legacy_names_and_the_cli_exits_3(
    dbs: Databases, stock: StockTables
) -> None:
    made = seed(dbs, stock, 40)
    backfill(SPEC, dbs.legacy, dbs.service)
    missing, extra, cost, renamed = made[3], made[10], made[20], made[30]
    delete_service(dbs, stock, missing)
    delete_legacy(dbs, stock, extra)  # a hard delete: without a soft delete, polling misses it
    cost_before = legacy_rows(dbs, stock)[cost]["unit_cost"]
    set_service(dbs, stock, cost, unit_cost=cost_before + Decimal("0.001"))
    set_service(dbs, stock, renamed, quantity=4_242, warehouse="ZZZ")

    report = reconcile(SPEC, dbs.legacy, dbs.service, settle=0, chunk_rows=7)

    assert report.findings.missing == [missing]
    assert report.findings.extra == [extra]
    assert report.findings.differing == {
        cost: {"unit_cost": (str(cost_before), str(cost_before + Decimal("0.001")))},
        renamed: {
            "quantity": (str(made[30] % 50), "4242"),
            "warehouse": (("AMS", "BER", "LIS")[made[30] % 3], "ZZZ"),
        },
    }
    assert report.drift == 4
    differing = report.as_dict()["differing"]
    assert [row["item_no"] for row in differing] == [cost, renamed]

    base = ["--sync", str(STOCK_YAML), "--legacy-db", dbs.legacy_url]
    base += ["--service-db", dbs.service_url, "--settle", "0"]
    failed = cli("reconcile", *base, "--json")
    assert failed.returncode == 3, failed.stderr
    body = json.loads(failed.stdout)
    assert (body["missing"], body["extra"], body["drift"]) == ([missing], [extra], 4)
    assert set(body["differing"][1]["fields"]) == {"quantity", "warehouse"}
    table = cli("reconcile", *base)
    assert table.returncode == 3
    assert "unit_cost" in table.stdout

    # Repaired: the extra row removed from the service, the rest copied again.
    delete_service(dbs, stock, extra)
    backfill(SPEC, dbs.legacy, dbs.service, restart=True)
    fixed = cli("reconcile", *base, "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert json.loads(fixed.stdout)["drift"] == 0
    assert_same(dbs, stock)


def test_a_soft_deleted_row_is_an_ordinary_change(dbs: Databases) -> None:
    soft = create_stock(dbs, SOFT_SPEC)
    made = keys(8)
    insert_legacy(dbs, soft, (stock_row(k, now() - HOURS_AGO, row_state="A") for k in made))
    backfill(SOFT_SPEC, dbs.legacy, dbs.service)
    update_legacy(dbs, soft, made[2], row_state="D")

    result = follow_once(SOFT_SPEC, dbs.legacy, dbs.service, safety_delay=0)

    assert result.counts.updated == 1
    assert service_rows(dbs, soft)[made[2]]["row_state"] == "D"
    report = reconcile(SOFT_SPEC, dbs.legacy, dbs.service, settle=0)
    assert (report.drift, report.findings.extra) == (0, [])
    assert_same(dbs, soft)


def test_rows_sharing_one_change_time_are_read_across_pages_and_polls(
    dbs: Databases, stock: StockTables
) -> None:
    at = now() - timedelta(minutes=10)
    made = keys(23, start=50, step=3)
    insert_legacy(dbs, stock, (stock_row(k, at) for k in reversed(made)))
    # Two new pages of four per poll: the mark stops between rows of one change time, and the
    # look-back's re-read of the rows behind it does not use up a poll's pages.
    copied = []
    for _ in range(3):
        poll = follow_once(SPEC, dbs.legacy, dbs.service, safety_delay=0, page_size=4, max_pages=2)
        copied.append(poll.counts.inserted)
        assert poll.high_water is not None
        assert poll.high_water[0] == at
    assert copied == [8, 8, 7]
    assert_same(dbs, stock)
    update_legacy(dbs, stock, made[7], sku="LATER")
    assert (
        follow_once(SPEC, dbs.legacy, dbs.service, safety_delay=0, page_size=4).counts.updated == 1
    )
    assert reconcile(SPEC, dbs.legacy, dbs.service, settle=0).drift == 0


def test_newer_wins_between_a_service_write_and_an_older_monolith_write(
    dbs: Databases, stock: StockTables
) -> None:
    made = seed(dbs, stock, 5)
    backfill(SPEC, dbs.legacy, dbs.service)
    key = made[1]
    update_legacy(dbs, stock, key, quantity=5)  # the monolith first...
    service_write(dbs, stock, key, quantity=6)  # ...then the service, later

    kept = follow_once(SPEC, dbs.legacy, dbs.service, safety_delay=0)

    assert (kept.counts.kept_service, kept.counts.updated) == (1, 0)
    assert service_rows(dbs, stock)[key]["quantity"] == 6
    assert to_legacy_once(SPEC, dbs.writer, dbs.service).outcomes["applied"] == 1
    assert legacy_rows(dbs, stock)[key]["quantity"] == 6
    assert follow_once(SPEC, dbs.legacy, dbs.service, safety_delay=0).counts.written == 0
    assert reconcile(SPEC, dbs.legacy, dbs.service, settle=0).drift == 0
