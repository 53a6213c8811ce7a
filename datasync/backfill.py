"""Backfill: copy the legacy table into the service's table, in keyed batches, resumably.

Reads the legacy database only. Batches are keyset ranges of the declared key
(`key > last AND key <= upper ORDER BY key`, `batch_size` rows), so each batch is an index range
scan whatever the gaps in the keys. `upper` is the largest legacy key when the run starts: rows
inserted later belong to `follow`, whose first poll starts at the backfill's start time (by the
legacy database's clock) minus its look-back, so rows changed while the backfill ran are picked
up too.

Each batch's upserts and its checkpoint (last id, rows done) commit in ONE service transaction:
after a crash, the next run resumes after the last committed batch, with no gap (a batch is
either wholly in with its checkpoint, or not at all) and no duplicate (rows are upserted by key,
and an unchanged row is not rewritten). A lost checkpoint means "copy again from the start",
never "skip ahead" (pt-table-checksum `--resume`, Ghostferry's state dumps).

A transient error (a lost connection, a database restarting) does not end the run: the batch
loop waits it out (`retry.Guard`: full-jitter backoff, one log line per outage), reloads the
last committed checkpoint and goes on from there. An outage longer than `max_wait` seconds ends
the run with `DatabaseUnreachable` naming the last error; the next run resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.engine import Connection, Engine

from datasync.apply import ApplyCounts, apply_to_service, in_transaction
from datasync.engines import (
    analyze,
    check_legacy_schema,
    check_service_schema,
    database_now,
    reading,
)
from datasync.errors import DatabaseUnreachable
from datasync.lease import JobLease
from datasync.progress import NoProgress, Progress
from datasync.retry import Guard, first_line
from datasync.spec import Spec
from datasync.state import (
    JOB_BACKFILL,
    Checkpoint,
    load_checkpoint,
    new_checkpoint,
    save_checkpoint,
    utcnow,
)

DEFAULT_BATCH_SIZE = 1_000  # ~10-30 ms a batch on SQLite; Debezium snapshots fetch 2,048 rows
MAX_WAIT = 300.0  # seconds of one outage the batch loop waits out

log = logging.getLogger("strangler.sync.backfill")
T = TypeVar("T")


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


def batch_query(spec: Spec, after: int, upper: int, limit: int) -> Select[Any]:
    """The next keyset batch of legacy rows."""
    key = spec.legacy().c[spec.key]
    return spec.legacy_select().where(key > after, key <= upper).order_by(key).limit(limit)


def _start(spec: Spec, legacy: Engine) -> Checkpoint:
    key = spec.legacy().c[spec.key]
    with legacy.connect() as conn:
        check_legacy_schema(spec, conn)
        started = database_now(conn)
        lowest, upper, total = conn.execute(
            select(func.min(key), func.max(key), func.count()).select_from(spec.legacy())
        ).one()
    return new_checkpoint(
        spec.name,
        JOB_BACKFILL,
        status="running",
        position_id=int(lowest) - 1 if lowest is not None else 0,
        upper_id=int(upper) if upper is not None else 0,
        rows_total=int(total),
        source_at=started,
    )


def _copy_batch(
    spec: Spec, service: Engine, rows: Sequence[Mapping[Any, Any]], checkpoint: Checkpoint
) -> tuple[Checkpoint, ApplyCounts]:
    """Upsert one batch and move the checkpoint past it, in one service transaction."""
    id_range = (int(rows[0][spec.key]), int(rows[-1][spec.key]))

    def write(conn: Connection) -> tuple[Checkpoint, ApplyCounts]:
        counts = apply_to_service(spec, conn, rows, id_range)
        moved = replace(
            checkpoint,
            position_id=id_range[1],
            rows_done=checkpoint.rows_done + len(rows),
            rows_written=checkpoint.rows_written + counts.written,
        )
        save_checkpoint(conn, moved)
        return moved, counts

    return in_transaction(service, write)


def backfill(
    spec: Spec,
    legacy: Engine,
    service: Engine,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    restart: bool = False,
    progress: Progress | None = None,
    on_batch: Callable[[BatchDone], None] | None = None,
    max_wait: float = MAX_WAIT,
    wait: Callable[[float], object] = time.sleep,
) -> BackfillResult:
    """Copy every legacy row up to the largest key at start, resuming a crashed run; a
    transient error is waited out for up to `max_wait` seconds (module docstring)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    progress = progress or NoProgress()
    check_service_schema(spec, service)
    ride = Outage(Guard(f"backfill {spec.name}", log, wait=wait), max_wait)
    with JobLease(service, spec.name, JOB_BACKFILL) as lease:
        return _run(spec, legacy, service, lease, batch_size, restart, progress, on_batch, ride)


class Outage:
    """Runs a step until it succeeds, through transient errors (`Guard`), for at most
    `max_wait` seconds of one outage; then the last error, as `DatabaseUnreachable`."""

    def __init__(self, guard: Guard, max_wait: float) -> None:
        self.guard = guard
        self.max_wait = max_wait
        self.failed = False  # whether the last `run` met a transient error on the way

    def run(self, step: Callable[[], T]) -> T:
        self.failed = False
        started: float | None = None
        while True:
            last: list[BaseException] = []

            def attempt(errors: list[BaseException] = last) -> T:
                try:
                    return step()
                except Exception as exc:
                    errors.append(exc)
                    raise

            value = self.guard.run(attempt)
            if not last:
                return value  # type: ignore[return-value]
            self.failed = True
            now = time.monotonic()
            started = now if started is None else started
            if now - started >= self.max_wait:
                error = last[-1]
                raise DatabaseUnreachable(
                    f"{self.guard.health.job}: still failing after {now - started:.0f}s "
                    f"({type(error).__name__}: {first_line(error)}); run it again to resume"
                ) from error


def _run(
    spec: Spec,
    legacy: Engine,
    service: Engine,
    lease: JobLease,
    batch_size: int,
    restart: bool,
    progress: Progress,
    on_batch: Callable[[BatchDone], None] | None,
    ride: Outage,
) -> BackfillResult:
    with reading(service) as conn:
        checkpoint = load_checkpoint(conn, spec.name, JOB_BACKFILL)
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
        checkpoint = _start(spec, legacy)
        with service.begin() as conn:
            save_checkpoint(conn, checkpoint)
    else:
        with legacy.connect() as conn:
            check_legacy_schema(spec, conn)
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

            def next_batch(
                last: Checkpoint = checkpoint,
            ) -> tuple[Checkpoint, list[Mapping[Any, Any]], ApplyCounts | None]:
                if ride.failed:  # after an outage: from the last checkpoint that committed
                    with reading(service) as conn:
                        last = load_checkpoint(conn, spec.name, JOB_BACKFILL) or last
                with legacy.connect() as conn:
                    query = batch_query(spec, int(last.position_id or 0), upper, batch_size)
                    rows: list[Mapping[Any, Any]] = list(conn.execute(query).mappings())
                if not rows:
                    return last, rows, None
                lease.renew()
                moved, counts = _copy_batch(spec, service, rows, last)
                return moved, rows, counts

            checkpoint, rows, copied = ride.run(next_batch)
            if copied is None:
                break
            counts = copied
            result.batches += 1
            result.rows += len(rows)
            result.counts.add(counts)
            progress.advance(len(rows))
            if on_batch is not None:
                on_batch(
                    BatchDone(
                        result.batches, rows[0][spec.key], rows[-1][spec.key], len(rows), counts
                    )
                )
    finally:
        progress.stop()
    result.seconds = time.perf_counter() - started
    result.last_id = checkpoint.position_id
    checkpoint.status = "done"
    checkpoint.finished_at = utcnow()
    checkpoint.rows_per_second = result.rows_per_second

    def finished() -> None:
        with service.begin() as conn:
            save_checkpoint(conn, checkpoint)

    ride.run(finished)
    ride.run(lambda: analyze(service, spec.service_table))
    return result
