"""Follow: the incremental sync before cutover, polling the legacy table by a high-water mark.
Reads the legacy database only.

- The cursor is (change column, key), never the timestamp alone: rows sharing one change time
  are read in key order and a restart resumes between them (Kafka Connect JDBC source, PR
  #1093).
- Each poll reads only rows with `changed <= cap`, where cap is the LEGACY DATABASE's clock
  minus `safety_delay`: the monolith stamps the change column at flush time and commits later,
  and its app servers' clocks may drift from the database's (Kafka Connect's
  `timestamp.delay.interval.ms` is the same knob).
- Once the capped pages are drained, a poll also applies the rows changed AFTER the cap (one
  page), without moving the mark past the cap: a row changed again and again (a best-seller's
  stock, a price under edit) is otherwise always younger than the safety delay and never read
  while the changes go on, however low the lag looks. They are committed rows, so applying
  them early is safe; the next polls read them again, unchanged, once the cap passes them, and
  any row that commits late behind them is still caught by the mark and the look-back. The
  lag still counts from the cap (a row stamped before them may not have committed yet), so it
  may read up to the safety delay while they are in fact applied: the cautious side.
- Every poll re-reads a rolling look-back window, `changed >= high_water - lookback`, so a
  transaction that committed later than the safety delay is still caught (PostHog found 273
  missing and 2,133 stale rows before adding one, PR #64417). The re-read is cheap because the
  upsert compares first and rewrites only rows that changed (`apply.py`).
- Rows are applied page by page; each page's upserts and the moved high-water mark commit in one
  service transaction, so a crash resumes at the last committed page. A poll's `max_pages`
  counts only pages reaching past the mark it started from: the look-back's re-read pages come
  on top, so a look-back window holding more rows than the pages allowed cannot stall the
  follower at the same rows poll after poll.
- Lag is how far the follower is behind the legacy database's COMMITS, not the age of the
  newest row (which on a quiet table is hours old at its first new write): at the end of a
  poll, `caught_up` is the poll's cap when it drained every page (else the high-water mark's
  time), and lag = the legacy clock at the poll's start minus the change time of the OLDEST
  legacy row changed in (caught_up, clock], or 0 when there is none. It is kept in the
  checkpoint (with `caught_up` as `source_at`, which `sync status` measures its live lag from)
  and in `sync_lag`, and exported as a Prometheus gauge.
- Each row written also gets an outbox event when the declaration names an outbox (origin
  'legacy'; `apply.py`), so the service's other consumers hear of the legacy's changes;
  `emit_events=False` turns that off.
- Who wins is the declared conflict rule (`apply.py`); a row whose content is already equal is
  never rewritten (which also makes the legacy's copy of a to-legacy write a no-op: nothing is
  re-imported).
- One follower per sync at a time (`lease.py`). A poll that fails on a transient error (a lost
  connection, a database restarting) never ends the follower: it is retried with jittered
  backoff (`retry.Guard`), resuming from the checkpoint, with one log line per problem; the
  problem, since when, and the last success are written to the checkpoint whenever the service
  database answers, and exported as `strangler_sync_up` and
  `strangler_sync_last_success_timestamp_seconds`.
- Hard deletes are invisible to polling: `reconcile` reports them as rows extra in the service
  (a declared soft-delete column is synced like any other field).
- A table without a change column is followed by full-refresh passes instead of polls
  (`refresh.py`), under the same lease, checkpoint, health and metrics.

The first poll starts where the backfill started (by the legacy clock), or at the beginning of
the table when there was no backfill.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.engine import Connection, Engine

from datasync.apply import ApplyCounts, apply_to_service, in_transaction
from datasync.engines import check_legacy_schema, check_service_schema, database_now, reading
from datasync.lease import JobLease
from datasync.metrics import SyncMetrics
from datasync.refresh import refresh_pass
from datasync.retry import Guard, Health
from datasync.spec import Spec
from datasync.state import (
    JOB_BACKFILL,
    JOB_FOLLOW,
    ONCE,
    POLLING,
    STOPPED,
    Checkpoint,
    load_checkpoint,
    new_checkpoint,
    note_health,
    record_lag,
    save_checkpoint,
    set_status,
    utcnow,
)

log = logging.getLogger("strangler.sync.follow")

# One poll a second keeps the lag near safety delay + 1 s; the look-back covers commits up to
# 30 s late (a declaration sets its own defaults, `spec.Follow`).
DEFAULT_INTERVAL = 1.0
DEFAULT_LOOKBACK = 30.0
DEFAULT_SAFETY_DELAY = 1.0
DEFAULT_PAGE_SIZE = 1_000
BEFORE_ANY_ID = -1

Mark = tuple[datetime, int]


@dataclass
class FollowResult:
    """One poll: rows read and what became of them, the high-water mark after it, the lag."""

    rows_read: int = 0
    pages: int = 0
    counts: ApplyCounts = field(default_factory=ApplyCounts)
    high_water: Mark | None = None
    caught_up: datetime | None = None
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
            else {"changed": self.high_water[0].isoformat(), "key": self.high_water[1]},
            "caught_up": self.caught_up.isoformat() if self.caught_up else None,
            "lag_seconds": round(self.lag_seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "seconds": round(self.seconds, 3),
        }


def page_query(spec: Spec, after: Mark | None, cap: datetime, limit: int) -> Select[Any]:
    """Legacy rows after `after` in (change column, key) order, none newer than `cap`.

    Spelled with OR/AND rather than a row-value comparison, which Oracle does not accept in a
    range predicate; a (change column, key) index serves it on all three databases."""
    table = spec.legacy()
    changed, key = table.c[spec.change_column], table.c[spec.key]
    condition = changed <= cap
    if after is not None:
        condition = and_(condition, after_mark(changed, key, after))
    return spec.legacy_select().where(condition).order_by(changed, key).limit(limit)


def after_mark(changed: Any, key: Any, mark: Mark) -> Any:
    """Keyset condition: (changed, key) strictly after `mark`, as OR/AND (`page_query`)."""
    return or_(changed > mark[0], and_(changed == mark[0], key > mark[1]))


def oldest_pending_query(spec: Spec, caught_up: datetime, now: datetime) -> Select[Any]:
    """The change time of the oldest legacy row changed after `caught_up`, up to `now`."""
    changed = spec.legacy().c[spec.change_column]
    return select(func.min(changed)).where(changed > caught_up, changed <= now)


def lag_behind(spec: Spec, conn: Connection, caught_up: datetime, now: datetime) -> float:
    """Seconds the follower is behind the legacy's commits (module docstring)."""
    oldest = conn.scalar(oldest_pending_query(spec, caught_up, now))
    if oldest is None:
        return 0.0
    return max(0.0, float((now - oldest).total_seconds()))


def _first_mark(spec: Spec, service: Engine) -> tuple[Checkpoint, Mark | None]:
    with reading(service) as conn:
        follow = load_checkpoint(conn, spec.name, JOB_FOLLOW)
        backfill = load_checkpoint(conn, spec.name, JOB_BACKFILL)
    if follow is not None and follow.position_at is not None:
        return follow, (follow.position_at, int(follow.position_id or BEFORE_ANY_ID))
    checkpoint = follow or new_checkpoint(spec.name, JOB_FOLLOW)
    if backfill is not None and backfill.source_at is not None:
        return checkpoint, (backfill.source_at, BEFORE_ANY_ID)
    return checkpoint, None


@dataclass(frozen=True)
class PollOptions:
    lookback: float = DEFAULT_LOOKBACK
    safety_delay: float = DEFAULT_SAFETY_DELAY
    page_size: int = DEFAULT_PAGE_SIZE
    max_pages: int | None = None
    emit_events: bool = True
    interval: float | None = None  # a continuous follower's; None for one poll (--once)


def options_of(spec: Spec, **given: Any) -> PollOptions:
    """The declared follow defaults, overridden by what is given (None: not given)."""
    declared = spec.follow
    values: dict[str, Any] = {
        "lookback": declared.lookback,
        "safety_delay": declared.safety_delay,
        "page_size": declared.page_size,
    }
    values.update({k: v for k, v in given.items() if v is not None})
    return PollOptions(**values)


def follow_once(
    spec: Spec,
    legacy: Engine,
    service: Engine,
    *,
    lookback: float | None = None,
    safety_delay: float | None = None,
    page_size: int | None = None,
    max_pages: int | None = None,
    emit_events: bool = True,
    metrics: SyncMetrics | None = None,
) -> FollowResult:
    """One poll: apply every legacy change up to the capped clock, re-reading the look-back.

    Holds the follow lease meanwhile: refused while a continuous follower runs."""
    options = options_of(
        spec,
        lookback=lookback,
        safety_delay=safety_delay,
        page_size=page_size,
        max_pages=max_pages,
        emit_events=emit_events,
    )
    check_service_schema(spec, service)
    with JobLease(service, spec.name, JOB_FOLLOW) as lease:
        return _poll(spec, legacy, service, lease, options, metrics, check=True, status=ONCE)


def _poll(
    spec: Spec,
    legacy: Engine,
    service: Engine,
    lease: JobLease,
    options: PollOptions,
    metrics: SyncMetrics | None,
    *,
    check: bool,
    status: str,
) -> FollowResult:
    if spec.refreshed:
        return _refresh(spec, legacy, service, lease, options, metrics, check=check, status=status)
    lease.renew()
    started = time.perf_counter()
    checkpoint, mark = _first_mark(spec, service)
    with legacy.connect() as conn:
        if check:
            check_legacy_schema(spec, conn)
        now = database_now(conn)
    cap = now - timedelta(seconds=options.safety_delay)
    lookback = timedelta(seconds=options.lookback)
    scan: Mark | None = None if mark is None else (mark[0] - lookback, BEFORE_ANY_ID)
    result = FollowResult(cap=cap)
    held: Mark | None = None
    drained = False
    start = mark
    fresh = 0  # pages reaching past the mark the poll started from (what `max_pages` counts)
    while options.max_pages is None or fresh < options.max_pages:
        with legacy.connect() as conn:
            rows = list(conn.execute(page_query(spec, scan, cap, options.page_size)).mappings())
        if not rows:
            drained = True
            break
        lease.renew()  # a backlog drained in one poll may outlast the lease
        last: Mark = (rows[-1][spec.change_column], int(rows[-1][spec.key]))
        moved = mark if mark is not None and mark >= last else last
        if held is not None:  # a row raced earlier in this poll: the mark stays before it
            moved = min(moved, held)
        checkpoint, counts, moved = _apply_page(spec, service, rows, checkpoint, moved, options)
        if counts.raced:
            held = moved
        mark, scan = moved, last
        result.pages += 1
        if start is None or last > start:
            fresh += 1
        result.rows_read += len(rows)
        result.counts.add(counts)
        if len(rows) < options.page_size:
            drained = True
            break
    result.high_water = mark
    result.caught_up = cap if drained and held is None else (mark[0] if mark else None)
    if drained:  # the lag still counts them: a row stamped before them may commit late
        read, counts = _apply_fresh(spec, legacy, service, cap, options)
        result.rows_read += read
        result.counts.add(counts)
    with legacy.connect() as conn:
        reference = result.caught_up or cap
        result.lag_seconds = lag_behind(spec, conn, reference, now)
    result.seconds = time.perf_counter() - started
    _finish(spec, service, checkpoint, result, now, metrics, status, options.interval)
    return result


def fresh_query(spec: Spec, cap: datetime, limit: int) -> Select[Any]:
    """Legacy rows changed after `cap` (younger than the safety delay), oldest first."""
    table = spec.legacy()
    changed, key = table.c[spec.change_column], table.c[spec.key]
    return spec.legacy_select().where(changed > cap).order_by(changed, key).limit(limit)


def _apply_fresh(
    spec: Spec, legacy: Engine, service: Engine, cap: datetime, options: PollOptions
) -> tuple[int, ApplyCounts]:
    """Apply one page of rows changed after the cap, leaving the mark where it is (module
    docstring): (rows read, what they did)."""
    with legacy.connect() as conn:
        rows = list(conn.execute(fresh_query(spec, cap, options.page_size)).mappings())
    if not rows:
        return 0, ApplyCounts()
    return len(rows), in_transaction(
        service, lambda conn: apply_to_service(spec, conn, rows, emit_events=options.emit_events)
    )


def _refresh(
    spec: Spec,
    legacy: Engine,
    service: Engine,
    lease: JobLease,
    options: PollOptions,
    metrics: SyncMetrics | None,
    *,
    check: bool,
    status: str,
) -> FollowResult:
    """One full-refresh pass in place of a poll (`refresh.py`)."""
    lease.renew()
    checkpoint, _ = _first_mark(spec, service)
    began, seconds, rows_read, pages, counts = refresh_pass(
        spec,
        legacy,
        service,
        lease,
        page_size=options.page_size,
        emit_events=options.emit_events,
        check=check,
    )
    result = FollowResult(rows_read=rows_read, pages=pages, counts=counts, caught_up=began)
    result.cap, result.lag_seconds, result.seconds = began, seconds, seconds
    checkpoint = replace(
        checkpoint,
        rows_done=checkpoint.rows_done + rows_read,
        rows_written=checkpoint.rows_written + counts.written + counts.deleted,
    )
    _finish(spec, service, checkpoint, result, began, metrics, status, options.interval)
    return result


def _apply_page(
    spec: Spec,
    service: Engine,
    rows: list[Any],
    checkpoint: Checkpoint,
    mark: Mark,
    options: PollOptions,
) -> tuple[Checkpoint, ApplyCounts, Mark]:
    """Apply one page and move the mark in one transaction. When a service write won a row's
    version guard (`ApplyCounts.raced`), the mark is held just before that row instead, so the
    next poll reads it again whatever the look-back: never skip ahead of an unsettled row."""

    def write(conn: Connection) -> tuple[Checkpoint, ApplyCounts, Mark]:
        held = mark
        counts = apply_to_service(spec, conn, rows, emit_events=options.emit_events)
        if counts.raced:
            at, raced_key = min(counts.raced)
            assert at is not None  # polled tables have a change column
            held = min(held, (at, raced_key - 1))
        moved = replace(
            checkpoint,
            position_at=held[0],
            position_id=held[1],
            rows_done=checkpoint.rows_done + len(rows),
            rows_written=checkpoint.rows_written + counts.written,
        )
        save_checkpoint(conn, moved)
        return moved, counts, held

    return in_transaction(service, write)


def _finish(
    spec: Spec,
    service: Engine,
    checkpoint: Checkpoint,
    result: FollowResult,
    now: datetime,
    metrics: SyncMetrics | None,
    status: str,
    interval: float | None,
) -> None:
    mark = result.high_water
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
        source_at=result.caught_up,
        finished_at=now,
        poll_interval=interval,  # read by the cutover gate (`status.py`)
        last_success_at=utcnow(),
        problem=None,
        problem_since=None,
    )
    with service.begin() as conn:
        save_checkpoint(conn, checkpoint)
        record_lag(
            conn,
            spec.name,
            JOB_FOLLOW,
            result.lag_seconds,
            result.rows_read,
            result.rows_per_second,
        )
    if metrics is not None:
        labels = {"sync": spec.name, "job": JOB_FOLLOW}
        metrics.lag_seconds.labels(**labels).set(result.lag_seconds)
        metrics.rows_per_second.labels(**labels).set(result.rows_per_second)
        metrics.count(spec.name, JOB_FOLLOW, result.counts.as_dict())
        if mark is not None:
            metrics.high_water.labels(**labels).set(mark[0].timestamp())
        metrics.last_run.labels(**labels).set(time.time())


class _Follower:
    """The continuous follower's state across guarded passes (`follow`)."""

    def __init__(
        self,
        spec: Spec,
        legacy: Engine,
        service: Engine,
        options: PollOptions,
        metrics: SyncMetrics | None,
    ) -> None:
        self.spec, self.legacy, self.service = spec, legacy, service
        self.options, self.metrics = options, metrics
        self.lease = JobLease(service, spec.name, JOB_FOLLOW)
        self.holding = False
        self.checked = False

    def step(self) -> FollowResult:
        if not self.checked:
            check_service_schema(self.spec, self.service)
        if not self.holding:
            self.lease.acquire()
            self.holding = True
        result = _poll(
            self.spec,
            self.legacy,
            self.service,
            self.lease,
            self.options,
            self.metrics,
            check=not self.checked,
            status=POLLING,
        )
        self.checked = True
        return result

    def stopped(self) -> None:
        if not self.holding:
            return
        try:
            with self.service.begin() as conn:
                set_status(conn, self.spec.name, JOB_FOLLOW, STOPPED)
            self.lease.release()
        except Exception as exc:
            log.warning("follow: stopped, but not recorded (%s); the lease expires", exc)


def follow(
    spec: Spec,
    legacy: Engine,
    service: Engine,
    *,
    interval: float | None = None,
    stop: threading.Event | None = None,
    on_poll: Callable[[FollowResult], None] | None = None,
    metrics: SyncMetrics | None = None,
    lookback: float | None = None,
    safety_delay: float | None = None,
    page_size: int | None = None,
    emit_events: bool = True,
    guard: Guard | None = None,
) -> None:
    """Poll until `stop` is set, holding the follow lease. A transient failure (the legacy or
    the service database gone, restarting, a lock timeout) is logged once, retried with
    jittered backoff and recorded as the job's health; it never ends the follower. A permanent
    one (a missing table, another follower holding the lease) ends it with its error."""
    stop = stop or threading.Event()
    every = spec.follow.interval if interval is None else interval
    options = replace(
        options_of(spec, lookback=lookback, safety_delay=safety_delay, page_size=page_size),
        emit_events=emit_events,
        interval=every,
    )
    guard = guard or Guard("follow", log, wait=stop.wait)
    follower = _Follower(spec, legacy, service, options, metrics)
    try:
        while not stop.is_set():
            result = guard.run(follower.step)
            if result is None:
                _unhealthy(spec, service, guard.health, metrics)
                continue
            if metrics is not None:
                metrics.healthy(spec.name, JOB_FOLLOW)
            if on_poll is not None:
                on_poll(result)
            stop.wait(every)
    finally:
        follower.stopped()


def _unhealthy(spec: Spec, service: Engine, health: Health, metrics: SyncMetrics | None) -> None:
    if metrics is not None:
        metrics.failing(spec.name, JOB_FOLLOW)
    note_health(service, spec.name, JOB_FOLLOW, health)
