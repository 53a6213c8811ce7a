"""One runner per job and sync: backfill, follow and the outbox-fed to-legacy each hold a lease
in the engine's `sync_leases` table (the outbox relay's mechanism: a conditional UPDATE, then an
INSERT, in one short transaction) while they run, renewed as they go. Two followers would write
the same rows and fight over one checkpoint; the second one is refused with the holder's name
instead. A crashed runner's lease expires after `LEASE_SECONDS`; a Redis consumer group needs
none (its consumers share the stream).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from datetime import timedelta
from types import TracebackType

from sqlalchemy import insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from datasync.errors import SyncError
from datasync.state import ensure_schema, leases, utcnow

LEASE_SECONDS = 30.0  # a backfill batch on a slow Oracle may take a while


class AlreadyRunning(SyncError):
    kind = "already-running"


def take_lease(engine: Engine, sync: str, job: str, holder: str, seconds: float) -> bool:
    """Take or renew the lease of (sync, job) for `holder`; False while another holds it."""
    now = utcnow()
    expires = now + timedelta(seconds=seconds)
    mine = (leases.c.sync_name == sync) & (leases.c.job == job)
    try:
        with engine.begin() as conn:
            renewed = conn.execute(
                update(leases)
                .where(mine, or_(leases.c.holder == holder, leases.c.expires_at < now))
                .values(holder=holder, expires_at=expires)
            )
            if renewed.rowcount:
                return True
            if conn.scalar(select(leases.c.job).where(mine)) is not None:
                return False
            conn.execute(
                insert(leases).values(sync_name=sync, job=job, holder=holder, expires_at=expires)
            )
            return True
    except IntegrityError:  # another runner created it first
        return False


def release_lease(engine: Engine, sync: str, job: str, holder: str) -> None:
    mine = (leases.c.sync_name == sync) & (leases.c.job == job) & (leases.c.holder == holder)
    with engine.begin() as conn:
        conn.execute(update(leases).where(mine).values(expires_at=utcnow() - timedelta(seconds=1)))


class JobLease:
    """`with JobLease(engine, sync, "follow"):` holds the job's lease; `renew()` as work goes."""

    def __init__(self, engine: Engine, sync: str, job: str, seconds: float = LEASE_SECONDS) -> None:
        self.engine = engine
        self.sync = sync
        self.job = job
        self.seconds = seconds
        self.holder = f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"
        self._renewed = 0.0

    def acquire(self) -> None:
        if not self._renewed:  # the first time: the lease table may not exist yet
            ensure_schema(self.engine)
        if not take_lease(self.engine, self.sync, self.job, self.holder, self.seconds):
            raise AlreadyRunning(
                f"another {self.job.replace('_', '-')} is running for the {self.sync} sync (lease "
                f"held{self._held_by()}); stop it first, or wait for its lease to expire"
            )
        self._renewed = time.monotonic()

    def _held_by(self) -> str:
        mine = (leases.c.sync_name == self.sync) & (leases.c.job == self.job)
        with self.engine.connect() as conn:
            lease = conn.execute(select(leases).where(mine)).mappings().first()
        if lease is None:
            return ""
        return f" by {lease['holder']} until {lease['expires_at']:%H:%M:%S} UTC"

    def renew(self) -> None:
        """Extend the lease if a third of it has passed (a cheap UPDATE, at most that often)."""
        if time.monotonic() - self._renewed >= self.seconds / 3:
            self.acquire()

    def release(self) -> None:
        release_lease(self.engine, self.sync, self.job, self.holder)

    def __enter__(self) -> JobLease:
        self.acquire()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.release()
