"""Corner cases of the engine found after its first release, each pinned by a test: a synced
field named `version`, a compensation whose row moved on (or whose key is still in progress)
when its call was answered, long key lists, rules renamed under open sagas, a watched table that
is not there, and a backfill through a restart of either database."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert, select, update

from datasync import compensate as comp
from datasync.apply import apply_to_service
from datasync.backfill import BatchDone, backfill
from datasync.compensate import Options
from datasync.declaration import loads
from datasync.errors import SchemaMissing
from datasync.saga import ensure_schema, sync_sagas
from datasync.spec import Action
from services.payment.db import utcnow
from services.payment.models import IdempotencyKey
from tests.datasync.tables.declared import create_declared, hours_ago, insert_rows, sample
from tests.datasync.tables.stock import STOCK_YAML, create_stock, databases, sqlite_databases
from tests.datasync.test_compensate import (  # noqa: F401 (fixtures)
    COMPENSATION,
    FAST,
    RULE,
    World,
    payment_spec,
    world,
)
from tests.restartable import postgres_process
from tests.services.payment.conftest import (  # noqa: F401 (fixtures)
    legacy_url,
    monolith,
    shop,
    start_service,
)

PAYMENTS = payment_spec().service()
VERSIONED = """\
sync: documents
legacy:
  table: documents
  key: id
  changed: updated_at
service:
  table: service_documents
  origin: origin
  version: row_version
fields:
  id: {type: bigint, nullable: false}
  title: {type: string, length: 40, nullable: false}
  version: {type: integer, nullable: false}
  updated_at: {type: timestamp, nullable: false}
"""

WATCHED = """\
sync: tickets
legacy:
  table: tickets
  key: id
  changed: updated_at
service:
  table: service_tickets
  origin: origin
  version: row_version
fields:
  id: {type: bigint, nullable: false}
  queue_id: {type: bigint, nullable: false}
  status: {type: string, length: 20, nullable: false}
  updated_at: {type: timestamp, nullable: false}
compensate:
  - name: closed_queue
    watch: {table: queues, key: id, changed: updated_at, when: {state: closed}}
    match: queue_id
    state: status
    actions:
      open: {call: "POST /api/v1/tickets/{id}/close"}
"""


# -- 1. a synced field whose service column is `version` ------------------------------------
def test_a_field_named_version_is_written_as_is_and_then_compares_equal(tmp_path: Path) -> None:
    spec = loads(VERSIONED, "documents.yaml")
    dbs = sqlite_databases(tmp_path)
    try:
        legacy, service = create_declared(dbs, spec)
        row = sample(spec, 1, hours_ago(2), title="draft", version=8)
        insert_rows(dbs, legacy, [row])
        with dbs.service.begin() as conn:
            assert apply_to_service(spec, conn, [row]).inserted == 1
        changed = {**row, "title": "final", "version": 9, "updated_at": hours_ago(1)}
        with dbs.service.begin() as conn:
            assert apply_to_service(spec, conn, [changed]).updated == 1
        with dbs.service.connect() as conn:
            stored = conn.execute(select(service)).mappings().one()
        assert (stored["title"], stored["version"], stored["row_version"]) == ("final", 9, 2)
        with dbs.service.begin() as conn:
            again = apply_to_service(spec, conn, [changed])
        assert (again.unchanged, again.updated) == (1, 0)
    finally:
        dbs.dispose()


# -- 2. a 409 that is not the end of the saga ------------------------------------------------
def test_a_payment_captured_before_its_void_is_replanned_as_a_refund(world: World) -> None:  # noqa: F811
    _, paid = world.race()
    assert world.once(options=Options(batch=0)).created == 1  # planned: void
    assert world.saga(paid)["action"] == f"POST /api/v1/payments/{paid}/void"
    with world.engine.begin() as conn:  # captured meanwhile, as the service's own job would
        conn.execute(
            update(PAYMENTS).where(PAYMENTS.c.id == paid),
            {"status": "captured"},
        )

    first = world.once(options=FAST)
    assert first.outcomes == {"replanned": 1}, first.as_dict()
    saga = world.saga(paid)
    assert (saga["state"], saga["outcome"], saga["row_state"]) == ("pending", None, "captured")
    assert saga["action"] == f"POST /api/v1/payments/{paid}/refund"
    assert saga["idem_key"] == f"strangler-payments-{RULE}-{paid}-captured"
    assert [outcome for outcome, _ in world.steps(paid)] == ["found", "call", "replanned"]

    second = world.once(options=FAST)
    assert second.outcomes == {"done": 1}, second.as_dict()
    payment = world.payment(paid)
    assert payment["status"] == "refunded"
    assert Decimal(payment["refunded_amount"]) == Decimal(payment["amount"])
    assert world.saga(paid)["state"] == "done"


def test_a_409_or_422_in_the_same_state_still_fails(world: World) -> None:  # noqa: F811
    bad = replace(
        COMPENSATION,
        actions={"captured": Action("POST", "/api/v1/payments/{id}/refund", {"amount": "-1"})},
    )
    spec = payment_spec(compensations=(bad,))
    _, paid = world.race(capture=True)
    result = world.once(spec, options=FAST)
    assert result.outcomes == {"rejected": 1}, result.as_dict()
    saga = world.saga(paid)
    assert (saga["state"], saga["outcome"], saga["http_status"]) == ("failed", "rejected", 422)
    assert world.payment(paid)["status"] == "captured"


def test_a_key_still_in_progress_is_retried_after_retry_after(world: World) -> None:  # noqa: F811
    _, paid = world.race()
    assert world.once(options=Options(batch=0)).created == 1
    key = world.saga(paid)["idem_key"]
    # The saga's call reached the service once already, and that request is still running.
    first = world.client.post(f"/api/v1/payments/{paid}/void", headers={"Idempotency-Key": key})
    assert first.status_code == 200, first.text
    with world.engine.begin() as conn:
        conn.execute(
            update(IdempotencyKey).where(IdempotencyKey.idem_key == key),
            {"state": "in_progress", "created_at": utcnow()},
        )

    busy = world.once(options=FAST)
    assert busy.outcomes == {"retrying": 1}, busy.as_dict()
    saga = world.saga(paid)
    assert (saga["state"], saga["http_status"]) == ("retrying", 409)
    assert "idempotency-key-in-progress" in saga["last_error"]
    assert saga["next_at"] - saga["updated_at"] >= timedelta(seconds=0.9)  # Retry-After: 1

    with world.engine.begin() as conn:  # the first request finishes
        conn.execute(
            update(IdempotencyKey).where(IdempotencyKey.idem_key == key), {"state": "done"}
        )
    assert world.once(options=FAST).outcomes == {}  # not due before Retry-After
    time.sleep(max(0.0, (saga["next_at"] - utcnow()).total_seconds()) + 0.05)
    done = world.once(options=FAST)
    assert done.outcomes == {"done": 1}, done.as_dict()
    assert world.saga(paid)["state"] == "done"


# -- 3. long key lists -----------------------------------------------------------------------
def test_existing_sagas_are_read_500_keys_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = payment_spec()
    engine = create_engine(f"sqlite:///{tmp_path / 'sagas.db'}")
    ensure_schema(engine)
    now = utcnow()
    keys = list(range(1, 1_201))
    with engine.begin() as conn:
        conn.execute(
            insert(sync_sagas),
            [
                {
                    "sync_name": spec.name,
                    "rule": RULE,
                    "row_key": key,
                    "watched_key": key,
                    "row_state": "authorized",
                    "action": f"POST /api/v1/payments/{key}/void",
                    "state": "done",
                    "attempts": 1,
                    "next_at": now,
                    "idem_key": f"k{key}",
                    "created_at": now,
                    "updated_at": now,
                }
                for key in keys
            ],
        )
    sizes: list[int] = []
    real = comp.existing_sagas_query

    def counted(spec_: Any, rule: str, row_keys: Any) -> Any:
        sizes.append(len(row_keys))
        return real(spec_, rule, row_keys)

    monkeypatch.setattr(comp, "existing_sagas_query", counted)
    rows = [{"id": key, "order_id": key, "status": "authorized"} for key in keys]
    with engine.begin() as conn:
        assert comp.record_found(conn, spec, COMPENSATION, rows, "sweep") == 0
    assert max(sizes) <= 500
    assert sum(sizes) == len(keys)
    engine.dispose()


# -- 4. rules renamed or removed under open sagas --------------------------------------------
def test_a_saga_of_a_rule_no_longer_declared_is_left_alone_and_reported(world: World) -> None:  # noqa: F811
    world.race()
    assert world.once(options=Options(batch=0)).created == 1  # open, never called
    renamed = payment_spec(compensations=(replace(COMPENSATION, name="renamed_rule"),))
    removed = payment_spec(compensations=())
    assert world.once(removed).outcomes == {}
    with world.engine.connect() as conn:
        summary = comp.saga_summary(removed, conn)
    assert (summary["orphaned"], summary["open"], summary["counts"]["pending"]) == (1, 0, 0)

    result = world.once(renamed)  # the new name finds the row again, under its own saga
    assert result.outcomes == {"done": 1}, result.as_dict()
    with world.engine.connect() as conn:
        summary = comp.saga_summary(renamed, conn)
        old = conn.execute(select(sync_sagas.c.state).where(sync_sagas.c.rule == RULE)).one()
    assert (summary["orphaned"], summary["counts"]["done"]) == (1, 1)
    assert old.state == "pending"


# -- 5. a watched table that is not there ----------------------------------------------------
@pytest.mark.parametrize(
    ("watch", "named"),
    [
        ({"table": "queuez"}, "queuez table"),
        ({"column": "stat"}, "state stat"),
        ({"changed": "modified"}, "changed modified"),
    ],
)
def test_a_missing_watched_table_or_column_is_a_permanent_error_with_its_line(
    tmp_path: Path, watch: dict[str, str], named: str
) -> None:
    spec = loads(WATCHED, "tickets.yaml")
    dbs = sqlite_databases(tmp_path)
    try:
        create_declared(dbs, spec)
        rule = replace(spec.compensations[0], watch=replace(spec.compensations[0].watch, **watch))
        broken = replace(spec, compensations=(rule,))
        with pytest.raises(SchemaMissing) as raised:
            comp.compensate_once(broken, dbs.legacy, dbs.service, None)  # type: ignore[arg-type]
        assert named in str(raised.value)
        assert "tickets.yaml line 17" in str(raised.value)
    finally:
        dbs.dispose()


# -- 6. a backfill through a database restart ------------------------------------------------
@pytest.mark.parametrize("restarted", ["legacy", "service"])
def test_a_backfill_rides_out_a_database_restart(
    tmp_path: Path, restarted: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.datasync.tables.stock import insert_legacy, legacy_rows, service_rows, stock_row
    from tests.datasync.test_any_table import SPEC, keys

    assert STOCK_YAML.exists()
    with postgres_process() as server:
        sqlite = f"sqlite:///{tmp_path / 'other.db'}"
        legacy_url_, service_url = (
            (server.url, sqlite) if restarted == "legacy" else (sqlite, server.url)
        )
        dbs = databases("mixed", legacy_url_, service_url)
        try:
            tables = create_stock(dbs, SPEC)
            insert_legacy(dbs, tables, [stock_row(k) for k in keys(250)])
            restarts: list[threading.Thread] = []

            def back_after(seconds: float) -> None:
                time.sleep(seconds)
                server.start()

            def outage(done: BatchDone) -> None:
                if done.number == 2:  # down for a while: connections refused, then back
                    server.stop()
                    later = threading.Thread(target=back_after, args=(1.5,))
                    later.start()
                    restarts.append(later)

            try:
                with caplog.at_level(logging.WARNING, logger="strangler.sync.backfill"):
                    result = backfill(SPEC, dbs.legacy, dbs.service, batch_size=40, on_batch=outage)
            finally:
                for thread in restarts:
                    thread.join()
            dbs.monolith.dispose()  # the test's own pool lost its connections in the restart
            assert result.status == "done"
            assert result.rows == 250
            assert result.counts.inserted == 250
            assert service_rows(dbs, tables) == legacy_rows(dbs, tables)
            outages = [r for r in caplog.records if "retrying" in r.getMessage()]
            assert len(outages) == 1, [r.getMessage() for r in caplog.records]
        finally:
            dbs.dispose()


def test_a_backfill_gives_up_after_max_wait(tmp_path: Path) -> None:
    from datasync.errors import DatabaseUnreachable
    from tests.datasync.tables.stock import insert_legacy, stock_row
    from tests.datasync.test_any_table import SPEC, keys

    with postgres_process() as server:
        dbs = databases("mixed", server.url, f"sqlite:///{tmp_path / 'svc.db'}")
        try:
            tables = create_stock(dbs, SPEC)
            insert_legacy(dbs, tables, [stock_row(k) for k in keys(100)])

            def down(done: BatchDone) -> None:
                if done.number == 1:
                    server.stop()

            with pytest.raises(DatabaseUnreachable, match="still failing"):
                backfill(
                    SPEC,
                    dbs.legacy,
                    dbs.service,
                    batch_size=40,
                    on_batch=down,
                    max_wait=1.0,
                    wait=lambda _: time.sleep(0.1),
                )
        finally:
            dbs.dispose()
