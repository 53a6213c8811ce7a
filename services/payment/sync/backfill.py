"""Backfill: copy the monolith's payments into the service's schema, in keyed batches, resumably.

Reads the legacy database only. Batches are keyset ranges of the primary key
(`id > last AND id <= upper ORDER BY id`, `batch_size` rows), so each batch is an index range
scan whatever the gaps in the ids. `upper` is the largest legacy id when the run starts: rows
inserted later belong to `follow`, whose first poll starts at the backfill's start time (by the
legacy database's clock) minus its look-back, so rows changed while the backfill ran are picked
up too.

Each batch's upserts and its checkpoint (last id, rows done) commit in ONE service transaction:
after a crash, the next run resumes after the last committed batch, with no gap (a batch is
either wholly in with its checkpoint, or not at all) and no duplicate (rows are upserted by key,
and an unchanged row is not rewritten). A lost checkpoint means "copy again from the start",
never "skip ahead" (pt-table-checksum `--resume`, Ghostferry's state dumps).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from services.payment.db import utcnow
from services.payment.sync.apply import ApplyCounts, apply_to_service
from services.payment.sync.engines import check_service_schema, database_now, reading
from services.payment.sync.lease import JobLease
from services.payment.sync.legacy_schema import check_legacy_schema, legacy_payments
from services.payment.sync.progress import NoProgress, Progress
from services.payment.sync.state import JOB_BACKFILL, Checkpoint, load_checkpoint, save_checkpoint

DEFAULT_BATCH_SIZE = 1_000  # ~10-30 ms a batch on SQLite; Debezium snapshots fetch 2,048 rows


@dataclass
class BackfillResult:
    """What a backfill run did (`status`: 'done', or 'already-done' when nothing was left)."""

    status: str
    rows: int
    batches: int
    seconds: float
    resumed_after_id: int | None
    last_id: int | None
    upper_id: int | None
    rows_total: int | None
    counts: ApplyCounts = field(default_factory=ApplyCounts)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "rows": self.rows,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "resumed_after_id": self.resumed_after_id,
            "last_id": self.last_id,
            "upper_id": self.upper_id,
            "rows_total": self.rows_total,
            **self.counts.as_dict(),
        }


@dataclass(frozen=True)
class BatchDone:
    """Handed to `on_batch` after a batch committed (tests inject crashes here)."""

    number: int
    first_id: int
    last_id: int
    rows: int
    counts: ApplyCounts


def batch_query(after_id: int, upper_id: int, limit: int) -> Select[Any]:
    """The next keyset batch of legacy payments."""
    table = legacy_payments
    return (
        select(table)
        .where(table.c.id > after_id, table.c.id <= upper_id)
        .order_by(table.c.id)
        .limit(limit)
    )


def _start(legacy: Engine) -> Checkpoint:
    table = legacy_payments
    with legacy.connect() as conn:
        check_legacy_schema(conn)
        started = database_now(conn)
        lowest, upper, total = conn.execute(
            select(func.min(table.c.id), func.max(table.c.id), func.count())
        ).one()
    return Checkpoint(
        job=JOB_BACKFILL,
        status="running",
        position_id=int(lowest) - 1 if lowest is not None else 0,
        upper_id=int(upper) if upper is not None else 0,
        rows_total=int(total),
        source_at=started,
        started_at=utcnow(),
    )


def _copy_batch(
    service: Engine, rows: Sequence[Mapping[Any, Any]], checkpoint: Checkpoint
) -> tuple[Checkpoint, ApplyCounts]:
    """Upsert one batch and move the checkpoint past it, in one service transaction."""
    id_range = (int(rows[0]["id"]), int(rows[-1]["id"]))
    for attempt in (1, 2):
        try:
            with service.begin() as conn:
                counts = apply_to_service(conn, rows, id_range)
                moved = replace(
                    checkpoint,
                    position_id=id_range[1],
                    rows_done=checkpoint.rows_done + len(rows),
                    rows_written=checkpoint.rows_written + counts.written,
                )
                save_checkpoint(conn, moved)
            return moved, counts
        except IntegrityError:
            # Another writer inserted one of these ids meanwhile: the retry sees it as existing.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def backfill(
    legacy: Engine,
    service: Engine,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    restart: bool = False,
    progress: Progress | None = None,
    on_batch: Callable[[BatchDone], None] | None = None,
) -> BackfillResult:
    """Copy every legacy payment up to the largest id at start, resuming a crashed run."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    progress = progress or NoProgress()
    check_service_schema(service)
    with JobLease(service, JOB_BACKFILL) as lease:
        return _run(legacy, service, lease, batch_size, restart, progress, on_batch)


def _run(
    legacy: Engine,
    service: Engine,
    lease: JobLease,
    batch_size: int,
    restart: bool,
    progress: Progress,
    on_batch: Callable[[BatchDone], None] | None,
) -> BackfillResult:
    with reading(service) as conn:
        checkpoint = load_checkpoint(conn, JOB_BACKFILL)
    if checkpoint is not None and checkpoint.status == "done" and not restart:
        return BackfillResult(
            status="already-done",
            rows=0,
            batches=0,
            seconds=0.0,
            resumed_after_id=None,
            last_id=checkpoint.position_id,
            upper_id=checkpoint.upper_id,
            rows_total=checkpoint.rows_total,
        )
    resumed = checkpoint is not None and checkpoint.status != "done" and not restart
    if checkpoint is None or not resumed:
        checkpoint = _start(legacy)
        with service.begin() as conn:
            save_checkpoint(conn, checkpoint)
    else:
        with legacy.connect() as conn:
            check_legacy_schema(conn)
    position, upper = int(checkpoint.position_id or 0), int(checkpoint.upper_id or 0)
    result = BackfillResult(
        status="done",
        rows=0,
        batches=0,
        seconds=0.0,
        resumed_after_id=position if resumed else None,
        last_id=None,
        upper_id=upper,
        rows_total=checkpoint.rows_total,
    )
    started = time.perf_counter()
    progress.start(checkpoint.rows_total, checkpoint.rows_done)
    try:
        while True:
            with legacy.connect() as conn:
                query = batch_query(int(checkpoint.position_id or 0), upper, batch_size)
                rows = list(conn.execute(query).mappings())
            if not rows:
                break
            lease.renew()
            checkpoint, counts = _copy_batch(service, rows, checkpoint)
            result.batches += 1
            result.rows += len(rows)
            result.counts.add(counts)
            progress.advance(len(rows))
            if on_batch is not None:
                on_batch(
                    BatchDone(result.batches, rows[0]["id"], rows[-1]["id"], len(rows), counts)
                )
    finally:
        progress.stop()
    result.seconds = time.perf_counter() - started
    result.last_id = checkpoint.position_id
    checkpoint.status = "done"
    checkpoint.finished_at = utcnow()
    checkpoint.rows_per_second = result.rows_per_second
    with service.begin() as conn:
        save_checkpoint(conn, checkpoint)
    return result
