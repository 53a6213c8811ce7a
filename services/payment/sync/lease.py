"""One runner per job: backfill, follow and the outbox-fed to-legacy each hold a lease in the
service's `leases` table (the relay's mechanism, `relay.take_lease`) while they run, renewed as
they go. Two followers would write the same rows and fight over one checkpoint; the second
one is refused with the holder's name instead. A crashed runner's lease expires after
`LEASE_SECONDS`; a Redis consumer group needs none (its consumers share the stream).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from types import TracebackType

from sqlalchemy import select
from sqlalchemy.engine import Engine

from services.payment.models import Lease
from services.payment.relay import release_lease, take_lease
from services.payment.sync.errors import SyncError

LEASE_SECONDS = 30.0  # the relay's is 10 s; a backfill batch on a slow Oracle may take longer


class AlreadyRunning(SyncError):
    kind = "already-running"


class JobLease:
    """`with JobLease(engine, "follow"):` holds the job's lease; call `renew()` as work goes."""

    def __init__(self, engine: Engine, job: str, seconds: float = LEASE_SECONDS) -> None:
        self.engine = engine
        self.name = f"sync_{job}"
        self.seconds = seconds
        self.holder = f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"
        self._renewed = 0.0

    def acquire(self) -> None:
        if not take_lease(self.engine, self.name, self.holder, self.seconds):
            with self.engine.connect() as conn:
                lease = conn.execute(select(Lease).where(Lease.name == self.name)).first()
            held = f" by {lease.holder} until {lease.expires_at:%H:%M:%S} UTC" if lease else ""
            raise AlreadyRunning(
                f"another {self.name.removeprefix('sync_').replace('_', '-')} is running "
                f"(lease held{held}); stop it first, or wait for its lease to expire"
            )
        self._renewed = time.monotonic()

    def renew(self) -> None:
        """Extend the lease if a third of it has passed (a cheap UPDATE, at most that often)."""
        if time.monotonic() - self._renewed >= self.seconds / 3:
            self.acquire()

    def release(self) -> None:
        release_lease(self.engine, self.name, self.holder)

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
