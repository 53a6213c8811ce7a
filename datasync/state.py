"""The engine's own state, kept in the SERVICE database (never in the legacy one), on a
MetaData of its own and created by `ensure_schema(engine)`: a service needs no migration of its
own for the sync. Every row carries the sync's name (`sync_name`, the declaration's `name`), so
several syncs run side by side in one service database, each with its own rows.

- `sync_jobs`: one row per (sync, job) (`backfill`, `follow`, `to_legacy`): its position
  (backfill: last copied key and the key it runs up to; follow: the (change column, key)
  high-water mark; to-legacy: the stream entry id or outbox id), counters, last lag and rows/s,
  timestamps, and its health: `last_success_at`, `problem` (the current problem's one line,
  NULL while healthy) and `problem_since`. Each batch writes it in the same transaction as the
  batch's rows, so a crash resumes exactly after the last committed batch. Follow's
  `poll_interval` is the seconds between its polls (NULL after a `--once` poll): the cutover
  gate judges whether the follower is alive by it. Follow's `source_at` is the legacy time it
  has caught up to (its lag's reference, `incremental.py`). `message` is a free human note,
  never parsed.
- `sync_lag`: one row per follow poll (lag, rows, rows/s), pruned to a day.
- `sync_events`: every event id the to-legacy job has handled, with its row key, version and
  outcome: delivery is at-least-once, so a redelivered id is skipped, and an event older than
  one already applied for the row is not applied.
- `sync_reconcile_runs`: one row per reconcile run with its counts, verdict and JSON report.
- `sync_leases`: one runner per (sync, job) (`lease.py`).

`ensure_schema` is `create_all(checkfirst=True)`: idempotent, portable (SQLite, PostgreSQL,
Oracle 19c+), and it never alters an existing table. Identifiers are lowercase and at most 30
characters (Oracle 19c), checked by the tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from datasync.retry import Health
from datasync.types import UTCDateTime

JOB_BACKFILL = "backfill"
JOB_FOLLOW = "follow"
JOB_TO_LEGACY = "to_legacy"
# A follow or to-legacy job's status: its loop is running, has stopped, or it made one pass.
POLLING, STOPPED, ONCE = "polling", "stopped", "once"
LAG_SAMPLE_RETENTION = timedelta(days=1)
PROBLEM_MAX = 400

# BIGINT keys, but SQLite only auto-numbers an `INTEGER PRIMARY KEY`.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _name() -> Column[str]:
    return Column("sync_name", String(64), nullable=False)


jobs = Table(
    "sync_jobs",
    metadata,
    _name(),
    Column("job", String(16), nullable=False),
    Column("status", String(12), nullable=False),
    Column("position_at", UTCDateTime()),
    Column("position_id", BigInteger),
    Column("position_ref", String(40)),
    Column("upper_id", BigInteger),
    Column("rows_total", BigInteger),
    Column("rows_done", BigInteger, nullable=False),
    Column("rows_written", BigInteger, nullable=False),
    Column("lag_seconds", Float),
    Column("rows_per_second", Float),
    Column("poll_interval", Float),  # follow's; NULL: --once
    Column("source_at", UTCDateTime()),
    Column("started_at", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("message", String(400)),
    Column("last_success_at", UTCDateTime()),
    Column("problem", String(PROBLEM_MAX)),
    Column("problem_since", UTCDateTime()),
    PrimaryKeyConstraint("sync_name", "job"),
)

lag = Table(
    "sync_lag",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    _name(),
    Column("job", String(16), nullable=False),
    Column("sampled_at", UTCDateTime(), nullable=False),
    Column("lag_seconds", Float, nullable=False),
    Column("rows_read", Integer, nullable=False),  # `rows` is reserved in Oracle
    Column("rows_per_second", Float, nullable=False),
    Index("ix_sync_lag_name_job_at", "sync_name", "job", "sampled_at"),
)

handled = Table(
    "sync_events",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    _name(),
    Column("event_id", String(64), nullable=False),
    Column("row_key", BigInteger, nullable=False),
    Column("row_version", Integer, nullable=False),
    Column("outcome", String(12), nullable=False),
    Column("processed_at", UTCDateTime(), nullable=False),
    UniqueConstraint("sync_name", "event_id", name="uq_sync_events_name_event"),
    Index("ix_sync_events_name_key_ver", "sync_name", "row_key", "row_version"),
    Index("ix_sync_events_at", "processed_at"),
)

reconciles = Table(
    "sync_reconcile_runs",
    metadata,
    Column("id", BigId, Identity(), primary_key=True),
    _name(),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=False),
    Column("settle_seconds", Float, nullable=False),
    Column("rows_compared", BigInteger, nullable=False),
    Column("missing", Integer, nullable=False),
    Column("extra", Integer, nullable=False),
    Column("differing", Integer, nullable=False),
    Column("drift", Integer, nullable=False),
    Column("max_drift", Integer, nullable=False),
    Column("passed", Boolean, nullable=False),
    Column("report", Text, nullable=False),  # JSON, never in a WHERE
    Index("ix_sync_reconcile_runs_name", "sync_name", "id"),
)

leases = Table(
    "sync_leases",
    metadata,
    _name(),
    Column("job", String(16), nullable=False),
    Column("holder", String(64), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("sync_name", "job"),
)

STATE_TABLES = tuple(metadata.tables)


def ensure_schema(engine: Engine | Connection) -> None:
    """Create the engine's tables that are missing (idempotent; never alters a table)."""
    if isinstance(engine, Connection):
        metadata.create_all(engine, checkfirst=True)
        return
    with engine.begin() as conn:
        metadata.create_all(conn, checkfirst=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Checkpoint:
    """One job's row of `sync_jobs`, as a plain value."""

    job: str
    sync_name: str = ""
    status: str = "idle"
    position_at: datetime | None = None
    position_id: int | None = None
    position_ref: str | None = None
    upper_id: int | None = None
    rows_total: int | None = None
    rows_done: int = 0
    rows_written: int = 0
    lag_seconds: float | None = None
    rows_per_second: float | None = None
    poll_interval: float | None = None
    source_at: datetime | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    message: str | None = None
    last_success_at: datetime | None = None
    problem: str | None = None
    problem_since: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _mine(sync: str, job: str) -> Any:
    return (jobs.c.sync_name == sync) & (jobs.c.job == job)


def load_checkpoint(conn: Connection, sync: str, job: str) -> Checkpoint | None:
    row = conn.execute(select(jobs).where(_mine(sync, job))).mappings().first()
    return Checkpoint(**dict(row)) if row is not None else None


def save_checkpoint(conn: Connection, checkpoint: Checkpoint) -> None:
    """Insert or update the job's row; call it inside the transaction of the work it records."""
    if not checkpoint.sync_name:
        raise ValueError("a checkpoint needs its sync's name")
    checkpoint.updated_at = utcnow()
    values = checkpoint.as_dict()
    mine = _mine(checkpoint.sync_name, checkpoint.job)
    if not conn.execute(update(jobs).where(mine).values(values)).rowcount:
        conn.execute(insert(jobs).values(values))


def new_checkpoint(sync: str, job: str, **values: Any) -> Checkpoint:
    return Checkpoint(job=job, sync_name=sync, started_at=utcnow(), **values)


def set_status(conn: Connection, sync: str, job: str, status: str) -> None:
    """Mark a job's state (`polling` while its loop runs, `stopped` after, `once` after a single
    pass), creating its row if it has none yet."""
    checkpoint = load_checkpoint(conn, sync, job) or new_checkpoint(sync, job)
    checkpoint.status = status
    save_checkpoint(conn, checkpoint)


def record_health(
    conn: Connection,
    sync: str,
    job: str,
    problem: str | None,
    since: datetime | None,
    last_success: datetime | None,
) -> None:
    """Write a job's health (its current problem, or None, and its last success)."""
    checkpoint = load_checkpoint(conn, sync, job) or new_checkpoint(sync, job)
    checkpoint.problem = problem[:PROBLEM_MAX] if problem else None
    checkpoint.problem_since = since if problem else None
    if last_success is not None:
        checkpoint.last_success_at = last_success
    save_checkpoint(conn, checkpoint)


def note_health(service: Engine, sync: str, job: str, health: Health) -> None:
    """A running job's health in its checkpoint, when the service database answers (a problem
    with that database itself is then only in the log and the metrics)."""
    try:
        with service.begin() as conn:
            record_health(
                conn, sync, job, health.problem, health.problem_since, health.last_success
            )
    except Exception as exc:
        logging.getLogger("strangler.sync").debug(
            "%s %s: health not recorded (%s)", sync, job, type(exc).__name__
        )


def record_lag(
    conn: Connection, sync: str, job: str, lag_seconds: float, rows: int, rows_per_second: float
) -> None:
    now = utcnow()
    conn.execute(
        insert(lag).values(
            sync_name=sync,
            job=job,
            sampled_at=now,
            lag_seconds=lag_seconds,
            rows_read=rows,
            rows_per_second=rows_per_second,
        )
    )
    conn.execute(
        delete(lag).where(
            lag.c.sync_name == sync,
            lag.c.job == job,
            lag.c.sampled_at < now - LAG_SAMPLE_RETENTION,
        )
    )


def lag_percentiles(
    conn: Connection, sync: str, job: str, since: datetime
) -> dict[str, float] | None:
    """p50/p99/max of the lag samples taken since `since` (None when there are none)."""
    query = select(lag.c.lag_seconds).where(
        lag.c.sync_name == sync, lag.c.job == job, lag.c.sampled_at >= since
    )
    values = sorted(conn.scalars(query))
    if not values:
        return None

    def pick(q: float) -> float:
        return float(values[min(len(values) - 1, int(q * len(values)))])

    return {"p50": pick(0.50), "p99": pick(0.99), "max": float(values[-1]), "n": len(values)}


def processed_count(conn: Connection, sync: str) -> int:
    query = select(func.count()).select_from(handled).where(handled.c.sync_name == sync)
    return int(conn.scalar(query) or 0)
