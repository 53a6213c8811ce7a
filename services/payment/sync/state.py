"""The sync's own state, kept in the SERVICE database (never in the legacy one), on the service's
`Base` metadata and created by migration `0002_sync_state`.

- `sync_checkpoints`: one row per job (`backfill`, `follow`, `to_legacy`): its position (backfill:
  last copied id and the id it runs up to; follow: the (updated_at, id) high-water mark; to-legacy:
  the stream entry id or outbox id), counters, last lag and rows/s, timestamps, last error.
  Each batch writes it in the same transaction as the batch's rows, so a crash resumes exactly
  after the last committed batch. Follow's `poll_interval` is the seconds between its polls
  (NULL after a `--once` poll): the cutover gate judges whether the follower is alive by it.
  `message` is a free human note, never parsed.
- `sync_lag_samples`: one row per follow poll (lag, rows, rows/s), pruned to a day.
- `sync_events_done`: every event id the to-legacy consumer has handled, with its payment id,
  row version and outcome: delivery is at-least-once, so a redelivered id is skipped, and an
  event older than one already applied for the payment is not applied.
- `sync_reconciles`: one row per reconcile run with its counts, verdict and JSON report.

Identifiers are lowercase and at most 30 characters (Oracle 19c), checked by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Identity,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, mapped_column

from services.payment.db import Base, BigId, UTCDateTime, utcnow

JOB_BACKFILL = "backfill"
JOB_FOLLOW = "follow"
JOB_TO_LEGACY = "to_legacy"
# A follow or to-legacy job's status: its loop is running, has stopped, or it made one pass.
POLLING, STOPPED, ONCE = "polling", "stopped", "once"
LAG_SAMPLE_RETENTION = timedelta(days=1)


class SyncCheckpoint(Base):
    __tablename__ = "sync_checkpoints"

    job: Mapped[str] = mapped_column(String(16), primary_key=True)
    status: Mapped[str] = mapped_column(String(12))
    position_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    position_id: Mapped[int | None] = mapped_column(BigInteger)
    position_ref: Mapped[str | None] = mapped_column(String(40))
    upper_id: Mapped[int | None] = mapped_column(BigInteger)
    rows_total: Mapped[int | None] = mapped_column(BigInteger)
    rows_done: Mapped[int] = mapped_column(BigInteger)
    rows_written: Mapped[int] = mapped_column(BigInteger)
    lag_seconds: Mapped[float | None] = mapped_column(Float)
    rows_per_second: Mapped[float | None] = mapped_column(Float)
    poll_interval: Mapped[float | None] = mapped_column(Float)  # follow's; NULL: --once
    source_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    message: Mapped[str | None] = mapped_column(String(400))


class SyncLagSample(Base):
    __tablename__ = "sync_lag_samples"
    __table_args__ = (Index("ix_sync_lag_samples_job_at", "job", "sampled_at"),)

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    job: Mapped[str] = mapped_column(String(16))
    sampled_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lag_seconds: Mapped[float] = mapped_column(Float)
    rows_read: Mapped[int] = mapped_column(Integer)  # `rows` is reserved in Oracle
    rows_per_second: Mapped[float] = mapped_column(Float)


class SyncEventDone(Base):
    __tablename__ = "sync_events_done"
    __table_args__ = (
        Index("ix_sync_events_done_pay_ver", "payment_id", "row_version"),
        Index("ix_sync_events_done_at", "processed_at"),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    payment_id: Mapped[int] = mapped_column(BigInteger)
    row_version: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(12))
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SyncReconcile(Base):
    __tablename__ = "sync_reconciles"

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    settle_seconds: Mapped[float] = mapped_column(Float)
    rows_compared: Mapped[int] = mapped_column(BigInteger)
    missing: Mapped[int] = mapped_column(Integer)
    extra: Mapped[int] = mapped_column(Integer)
    differing: Mapped[int] = mapped_column(Integer)
    drift: Mapped[int] = mapped_column(Integer)
    max_drift: Mapped[int] = mapped_column(Integer)
    passed: Mapped[bool] = mapped_column(Boolean)
    report: Mapped[str] = mapped_column(Text)  # JSON, never in a WHERE


STATE_TABLES = ("sync_checkpoints", "sync_lag_samples", "sync_events_done", "sync_reconciles")
checkpoints = cast(Table, SyncCheckpoint.__table__)
lag_samples = cast(Table, SyncLagSample.__table__)
events_done = cast(Table, SyncEventDone.__table__)
reconciles = cast(Table, SyncReconcile.__table__)


@dataclass
class Checkpoint:
    """One job's row of `sync_checkpoints`, as a plain value."""

    job: str
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

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def load_checkpoint(conn: Connection, job: str) -> Checkpoint | None:
    row = conn.execute(select(checkpoints).where(checkpoints.c.job == job)).mappings().first()
    return Checkpoint(**dict(row)) if row is not None else None


def save_checkpoint(conn: Connection, checkpoint: Checkpoint) -> None:
    """Insert or update the job's row; call it inside the transaction of the work it records."""
    checkpoint.updated_at = utcnow()
    values = checkpoint.as_dict()
    done = conn.execute(
        update(checkpoints).where(checkpoints.c.job == checkpoint.job).values(values)
    )
    if not done.rowcount:
        conn.execute(insert(checkpoints).values(values))


def set_status(conn: Connection, job: str, status: str) -> None:
    """Mark a job's state (`polling` while its loop runs, `stopped` after, `once` after a single
    pass), creating its row if it has none yet."""
    checkpoint = load_checkpoint(conn, job) or Checkpoint(job=job, started_at=utcnow())
    checkpoint.status = status
    save_checkpoint(conn, checkpoint)


def record_lag(
    conn: Connection, job: str, lag_seconds: float, rows: int, rows_per_second: float
) -> None:
    now = utcnow()
    conn.execute(
        insert(lag_samples).values(
            job=job,
            sampled_at=now,
            lag_seconds=lag_seconds,
            rows_read=rows,
            rows_per_second=rows_per_second,
        )
    )
    conn.execute(
        delete(lag_samples).where(
            lag_samples.c.job == job, lag_samples.c.sampled_at < now - LAG_SAMPLE_RETENTION
        )
    )


def lag_percentiles(conn: Connection, job: str, since: datetime) -> dict[str, float] | None:
    """p50/p99/max of the lag samples taken since `since` (None when there are none)."""
    values = sorted(
        conn.scalars(
            select(lag_samples.c.lag_seconds).where(
                lag_samples.c.job == job, lag_samples.c.sampled_at >= since
            )
        )
    )
    if not values:
        return None

    def pick(q: float) -> float:
        return float(values[min(len(values) - 1, int(q * len(values)))])

    return {"p50": pick(0.50), "p99": pick(0.99), "max": float(values[-1]), "n": len(values)}


def processed_count(conn: Connection) -> int:
    return int(conn.scalar(select(func.count()).select_from(events_done)) or 0)
