"""Backfill: an exact, resumable copy; a crash after batch k and a re-run give no gap and no
duplicate; a finished backfill is not repeated unless asked; unchanged rows are not rewritten."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import func, select, update

from datasync.state import JOB_BACKFILL, load_checkpoint
from legacy_monolith.models import Payment as LegacyPayment
from services.payment.models import Payment as ServicePayment
from services.payment.sync import BatchDone, backfill, spec
from tests.services.payment.sync.conftest import SEEDED_PAYMENTS, Pair


class Crash(Exception):
    pass


def crash_after(batch: int) -> Callable[[BatchDone], None]:
    def hook(done: BatchDone) -> None:
        if done.number == batch:
            raise Crash(f"killed after batch {batch}")

    return hook


def test_a_crash_then_a_rerun_gives_an_exact_copy(pair: Pair) -> None:
    with pytest.raises(Crash):
        backfill(pair.legacy, pair.service, batch_size=7, on_batch=crash_after(3))
    with pair.service.connect() as conn:
        checkpoint = load_checkpoint(conn, spec().name, JOB_BACKFILL)
        copied = conn.scalar(select(func.count()).select_from(ServicePayment))
    assert checkpoint is not None
    assert checkpoint.status == "running"
    assert checkpoint.rows_done == copied == 21  # three committed batches, nothing of a fourth
    legacy_ids = sorted(pair.legacy_rows())
    assert checkpoint.position_id == legacy_ids[20]

    result = backfill(pair.legacy, pair.service, batch_size=7)

    assert result.resumed_after_id == legacy_ids[20]
    assert result.rows == SEEDED_PAYMENTS - 21
    assert result.counts.inserted == SEEDED_PAYMENTS - 21
    assert pair.service_rows() == pair.legacy_rows()  # row for row, field for field
    with pair.service.connect() as conn:
        done = load_checkpoint(conn, spec().name, JOB_BACKFILL)
        origins = set(conn.scalars(select(ServicePayment.origin)))
        versions = set(conn.scalars(select(ServicePayment.row_version)))
    assert done is not None
    assert done.status == "done"
    assert done.rows_done == SEEDED_PAYMENTS
    assert (origins, versions) == ({"legacy"}, {1})


def test_a_finished_backfill_is_not_repeated_and_a_restart_rewrites_nothing(
    sqlite_pair: Pair,
) -> None:
    first = backfill(sqlite_pair.legacy, sqlite_pair.service, batch_size=25)
    assert (first.status, first.rows, first.batches) == ("done", SEEDED_PAYMENTS, 3)
    again = backfill(sqlite_pair.legacy, sqlite_pair.service)
    assert (again.status, again.rows) == ("already-done", 0)
    restarted = backfill(sqlite_pair.legacy, sqlite_pair.service, restart=True)
    assert restarted.counts.as_dict() == {
        "inserted": 0,
        "updated": 0,
        "unchanged": SEEDED_PAYMENTS,
        "kept_service": 0,
        "deleted": 0,
    }


def test_rows_added_after_the_start_are_left_to_follow_and_changes_are_updated(
    sqlite_pair: Pair,
) -> None:
    pair = sqlite_pair
    seen: list[int] = []

    def meanwhile(done: BatchDone) -> None:
        seen.append(done.rows)
        if done.number == 1:
            pair.insert_legacy()  # arrives during the backfill, above its upper bound

    result = backfill(pair.legacy, pair.service, batch_size=40, on_batch=meanwhile)
    assert result.upper_id is not None
    assert seen == [40, 20]
    assert max(pair.service_rows()) == result.upper_id < max(pair.legacy_rows())
    # A row changed in the monolith after its copy is brought up to date by a restart.
    changed = min(pair.legacy_rows())
    with pair.writer.begin() as conn:
        conn.execute(
            update(LegacyPayment).where(LegacyPayment.id == changed).values(card_last4="0000")
        )
    redo = backfill(pair.legacy, pair.service, restart=True)
    assert redo.counts.updated == 1
    row = pair.service_row(changed)
    assert (row["card_last4"], row["row_version"], row["origin"]) == ("0000", 2, "legacy")
