"""Follow: the incremental sync before cutover, polling the legacy `payments` by a high-water
mark. Reads the legacy database only.

- The cursor is (updated_at, id), never the timestamp alone: rows sharing one `updated_at` are
  read in id order and a restart resumes between them (Kafka Connect JDBC source, PR #1093).
- Each poll reads only rows with `updated_at <= cap`, where cap is the LEGACY DATABASE's clock
  minus `safety_delay`: the monolith stamps `updated_at` at flush time and commits later, and its
  app servers' clocks may drift from the database's (Kafka Connect's `timestamp.delay.interval.ms`
  is the same knob).
- Every poll re-reads a rolling look-back window, `updated_at >= high_water - lookback`, so a
  transaction that committed later than the safety delay is still caught (PostHog found 273
  missing and 2,133 stale rows before adding one, PR #64417). The re-read is cheap because the
  upsert compares first and rewrites only rows that changed (`apply.py`).
- Rows are applied page by page; each page's upserts and the moved high-water mark commit in one
  service transaction, so a crash resumes at the last committed page.
- Lag is the legacy's newest `updated_at` minus the newest one applied (0 when caught up), kept
  in the checkpoint and in `sync_lag_samples`, and exported as a Prometheus gauge.
- Each row written also gets an outbox event (origin 'legacy'; `apply.py`), so the service's
  other consumers hear of the monolith's changes; `emit_events=False` turns that off.
- Who wins (`apply.py`): before cutover the monolith is the only writer, so its copy wins;
  a row whose content is already equal is never rewritten (which also makes the monolith's
  copy of a to-legacy write a no-op: nothing is re-imported), and a row the service wrote
  (origin 'service') with an `updated_at` at or after the legacy copy's is kept.
- One follower at a time (`lease.py`); a failed poll is retried with a backoff.
- Hard deletes are invisible to polling: `reconcile` reports them as rows extra in the service.

The first poll starts where the backfill started (by the legacy clock), or at the beginning of
the table when there was no backfill.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from services.payment.sync.apply import ApplyCounts, apply_to_service
from services.payment.sync.engines import check_service_schema, database_now, reading
from services.payment.sync.errors import SyncError
from services.payment.sync.lease import JobLease
from services.payment.sync.legacy_schema import check_legacy_schema, legacy_payments
from services.payment.sync.metrics import SyncMetrics
from services.payment.sync.state import (
    JOB_BACKFILL,
    JOB_FOLLOW,
    ONCE,
    POLLING,
    STOPPED,
    Checkpoint,
    load_checkpoint,
    record_lag,
    save_checkpoint,
    set_status,
)

log = logging.getLogger("strangler.sync.follow")

# One poll a second keeps the lag near safety delay + 1 s; the look-back covers commits up to
# 30 s late (the monolith's longest payment transaction is a gateway call, timed out at 10 s).
DEFAULT_INTERVAL = 1.0
DEFAULT_LOOKBACK = 30.0
DEFAULT_SAFETY_DELAY = 1.0
DEFAULT_PAGE_SIZE = 1_000
BEFORE_ANY_ID = -1
MAX_BACKOFF = 30.0

Mark = tuple[datetime, int]


@dataclass
class FollowResult:
    """One poll: rows read and what became of them, the high-water mark after it, the lag."""

    rows_read: int = 0
    pages: int = 0
    counts: ApplyCounts = field(default_factory=ApplyCounts)
    high_water: Mark | None = None
    source_newest: datetime | None = None
    cap: datetime | None = None
    lag_seconds: float = 0.0
    rows_per_second: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "pages": self.pages,
            **self.counts.as_dict(),
            "high_water": None
            if self.high_water is None
            else {"updated_at": self.high_water[0].isoformat(), "id": self.high_water[1]},
            "source_newest": self.source_newest.isoformat() if self.source_newest else None,
            "lag_seconds": round(self.lag_seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "seconds": round(self.seconds, 3),
        }


def page_query(after: Mark | None, cap: datetime, limit: int) -> Select[Any]:
    """Legacy rows after `after` in (updated_at, id) order, none newer than `cap`.

    Spelled with OR/AND rather than a row-value comparison, which Oracle does not accept in a
    range predicate; the (updated_at, id) index serves it on all three databases."""
    table = legacy_payments
    condition = table.c.updated_at <= cap
    if after is not None:
        at, after_id = after
        condition = and_(
            condition,
            or_(table.c.updated_at > at, and_(table.c.updated_at == at, table.c.id > after_id)),
        )
    return select(table).where(condition).order_by(table.c.updated_at, table.c.id).limit(limit)


def _first_mark(service: Engine) -> tuple[Checkpoint, Mark | None]:
    with reading(service) as conn:
        follow = load_checkpoint(conn, JOB_FOLLOW)
        backfill = load_checkpoint(conn, JOB_BACKFILL)
    if follow is not None and follow.position_at is not None:
        return follow, (follow.position_at, int(follow.position_id or BEFORE_ANY_ID))
    checkpoint = follow or Checkpoint(job=JOB_FOLLOW, started_at=_now())
    if backfill is not None and backfill.source_at is not None:
        return checkpoint, (backfill.source_at, BEFORE_ANY_ID)
    return checkpoint, None


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class PollOptions:
    lookback: float = DEFAULT_LOOKBACK
    safety_delay: float = DEFAULT_SAFETY_DELAY
    page_size: int = DEFAULT_PAGE_SIZE
    max_pages: int | None = None
    emit_events: bool = True
    interval: float | None = None  # a continuous follower's; None for one poll (--once)


def follow_once(
    legacy: Engine,
    service: Engine,
    *,
    lookback: float = DEFAULT_LOOKBACK,
    safety_delay: float = DEFAULT_SAFETY_DELAY,
    page_size: int = DEFAULT_PAGE_SIZE,
    max_pages: int | None = None,
    emit_events: bool = True,
    metrics: SyncMetrics | None = None,
) -> FollowResult:
    """One poll: apply every legacy change up to the capped clock, re-reading the look-back.

    Holds the follow lease meanwhile: refused while a continuous follower runs."""
    options = PollOptions(lookback, safety_delay, page_size, max_pages, emit_events)
    check_service_schema(service)
    with JobLease(service, JOB_FOLLOW) as lease:
        return _poll(legacy, service, lease, options, metrics, check_legacy=True, status=ONCE)


def _poll(
    legacy: Engine,
    service: Engine,
    lease: JobLease,
    options: PollOptions,
    metrics: SyncMetrics | None,
    *,
    check_legacy: bool,
    status: str,
) -> FollowResult:
    lease.renew()
    lookback, safety_delay = options.lookback, options.safety_delay
    page_size, max_pages, emit_events = options.page_size, options.max_pages, options.emit_events
    started = time.perf_counter()
    checkpoint, mark = _first_mark(service)
    with legacy.connect() as conn:
        if check_legacy:
            check_legacy_schema(conn)
        now = database_now(conn)
        # Rows stamped after the database's clock (an app server's clock ahead) are not changes
        # that have happened yet: the lag is measured against changes up to now.
        newest = conn.scalar(
            select(func.max(legacy_payments.c.updated_at)).where(
                legacy_payments.c.updated_at <= now
            )
        )
    cap = now - timedelta(seconds=safety_delay)
    scan: Mark | None = None if mark is None else (mark[0] - timedelta(seconds=lookback), -1)
    result = FollowResult(source_newest=newest, cap=cap)
    held: Mark | None = None
    while max_pages is None or result.pages < max_pages:
        with legacy.connect() as conn:
            rows = list(conn.execute(page_query(scan, cap, page_size)).mappings())
        if not rows:
            break
        last: Mark = (rows[-1]["updated_at"], int(rows[-1]["id"]))
        moved = mark if mark is not None and mark >= last else last
        if held is not None:  # a row raced earlier in this poll: the mark stays before it
            moved = min(moved, held)
        checkpoint, counts, moved = _apply_page(service, rows, checkpoint, moved, emit_events)
        if counts.raced:
            held = moved
        mark, scan = moved, last
        result.pages += 1
        result.rows_read += len(rows)
        result.counts.add(counts)
        if len(rows) < page_size:
            break
    result.high_water = mark
    result.seconds = time.perf_counter() - started
    _finish(service, checkpoint, result, now, metrics, status, options.interval)
    return result


def _apply_page(
    service: Engine, rows: list[Any], checkpoint: Checkpoint, mark: Mark, emit_events: bool
) -> tuple[Checkpoint, ApplyCounts, Mark]:
    """Apply one page and move the mark in one transaction. When a service write won a row's
    version guard (`ApplyCounts.raced`), the mark is held just before that row instead, so the
    next poll reads it again whatever the look-back: never skip ahead of an unsettled row."""
    for attempt in (1, 2):
        try:
            with service.begin() as conn:
                counts = apply_to_service(conn, rows, emit_events=emit_events)
                if counts.raced:
                    at, raced_id = min(counts.raced)
                    mark = min(mark, (at, raced_id - 1))
                moved = replace(
                    checkpoint,
                    position_at=mark[0],
                    position_id=mark[1],
                    rows_done=checkpoint.rows_done + len(rows),
                    rows_written=checkpoint.rows_written + counts.written,
                )
                save_checkpoint(conn, moved)
            return moved, counts, mark
        except IntegrityError:
            if attempt == 2:  # a concurrent backfill inserted one of these ids: retry once
                raise
    raise AssertionError("unreachable")


def _finish(
    service: Engine,
    checkpoint: Checkpoint,
    result: FollowResult,
    now: datetime,
    metrics: SyncMetrics | None,
    status: str,
    interval: float | None,
) -> None:
    newest, mark = result.source_newest, result.high_water
    reference = mark[0] if mark is not None else result.cap
    if newest is not None and reference is not None:
        result.lag_seconds = max(0.0, (newest - reference).total_seconds())
    previous = checkpoint.finished_at
    elapsed = (now - previous).total_seconds() if previous is not None else result.seconds
    result.rows_per_second = result.counts.written / max(elapsed, result.seconds, 1e-6)
    checkpoint = replace(
        checkpoint,
        status=status,
        position_at=mark[0] if mark is not None else checkpoint.position_at,
        position_id=mark[1] if mark is not None else checkpoint.position_id,
        lag_seconds=result.lag_seconds,
        rows_per_second=result.rows_per_second,
        source_at=newest,
        finished_at=now,
        poll_interval=interval,  # read by the cutover gate (`status.py`)
    )
    with service.begin() as conn:
        save_checkpoint(conn, checkpoint)
        record_lag(conn, JOB_FOLLOW, result.lag_seconds, result.rows_read, result.rows_per_second)
    if metrics is not None:
        metrics.lag_seconds.labels(job=JOB_FOLLOW).set(result.lag_seconds)
        metrics.rows_per_second.labels(job=JOB_FOLLOW).set(result.rows_per_second)
        metrics.count(JOB_FOLLOW, result.counts.as_dict())
        if mark is not None:
            metrics.high_water.labels(job=JOB_FOLLOW).set(mark[0].timestamp())
        metrics.last_run.labels(job=JOB_FOLLOW).set(time.time())


def follow(
    legacy: Engine,
    service: Engine,
    *,
    interval: float = DEFAULT_INTERVAL,
    stop: threading.Event | None = None,
    on_poll: Callable[[FollowResult], None] | None = None,
    metrics: SyncMetrics | None = None,
    lookback: float = DEFAULT_LOOKBACK,
    safety_delay: float = DEFAULT_SAFETY_DELAY,
    page_size: int = DEFAULT_PAGE_SIZE,
    emit_events: bool = True,
) -> None:
    """Poll until `stop` is set, holding the follow lease. A failed poll is logged and retried
    with a doubling backoff (up to 30 s): a database blip must not end the follower."""
    stop = stop or threading.Event()
    options = PollOptions(lookback, safety_delay, page_size, None, emit_events, interval)
    check_service_schema(service)
    with JobLease(service, JOB_FOLLOW) as lease:
        failures = 0
        first = True
        while not stop.is_set():
            try:
                result = _poll(
                    legacy, service, lease, options, metrics, check_legacy=first, status=POLLING
                )
            except SyncError:
                raise
            except SQLAlchemyError as exc:
                failures += 1
                delay = min(MAX_BACKOFF, interval * 2**failures)
                log.warning(
                    "follow: poll failed (%s); retrying in %.1fs", type(exc).__name__, delay
                )
                if metrics is not None:
                    metrics.errors.labels(job=JOB_FOLLOW).inc()
                stop.wait(delay)
                continue
            first, failures = False, 0
            if on_poll is not None:
                on_poll(result)
            stop.wait(interval)
        with service.begin() as conn:
            set_status(conn, JOB_FOLLOW, STOPPED)
