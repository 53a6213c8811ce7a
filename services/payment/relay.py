"""The outbox relay: publishes committed outbox rows in id order, then marks them published.

It runs as a task in the app's lifespan (woken right after each commit that recorded an event,
and every `interval` seconds) or alone (`python -m services.payment relay`). Of several relays
on one database exactly one works at a time: it takes the `leases` row "outbox_relay" for 10 s
and renews it every ~3 s while it works, so per-payment order holds across processes.

Failures lose nothing: a row is marked published only after the publisher returned, so a Redis
outage (or a crash between publish and mark) means the rows are published again later:
at-least-once, as `events.py` tells consumers. Outages never end the relay: whatever fails, the
publisher (Redis restarting, unreachable, read-only) or the service's database (PostgreSQL
restarting: every query of a pass, the lease's included, raises OperationalError until it is
back; the engine's pre-ping replaces the dead pooled connections), the pass is retried after a
fully jittered exponential backoff (random(interval, min(5 s, interval * 2^n)), as
`datasync/retry.py` does for the sync's jobs) and the lease is taken again first. One line per
problem, never a traceback: the first failure logs the error's class and first line; a failure
moving from the publisher to the database (or back) during the same outage logs once more; the
symptoms one restart shows in turn (connection closed, then refused) are counted, not logged;
the recovery logs once with how long it lasted and how many passes failed.

Housekeeping, once a minute: published outbox rows older than `retention` and expired
idempotency keys are deleted, in bounded batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from datetime import timedelta

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.payment.db import read_only, utcnow
from services.payment.events import Event, Publisher
from services.payment.models import IdempotencyKey, Lease, OutboxEvent

log = logging.getLogger("services.payment.relay")

RELAY_LEASE = "outbox_relay"
MAX_BACKOFF_SECONDS = 5.0
HOUSEKEEPING_SECONDS = 60.0
PURGE_BATCH = 1_000


def take_lease(engine: Engine, name: str, holder: str, seconds: float) -> bool:
    """Take or renew the lease `name` for `holder`; False while someone else holds it."""
    now = utcnow()
    expires = now + timedelta(seconds=seconds)
    try:
        with engine.begin() as conn:
            renewed = conn.execute(
                update(Lease)
                .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < now))
                .values(holder=holder, expires_at=expires)
            )
            if renewed.rowcount:
                return True
            if conn.scalar(select(Lease.name).where(Lease.name == name)) is not None:
                return False
            conn.execute(insert(Lease).values(name=name, holder=holder, expires_at=expires))
            return True
    except IntegrityError:  # another relay created it first
        return False


def release_lease(engine: Engine, name: str, holder: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(Lease)
            .where(Lease.name == name, Lease.holder == holder)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


def pending_events(engine: Engine, limit: int) -> list[tuple[int, Event]]:
    """The oldest unpublished outbox rows, in id order."""
    with Session(read_only(engine)) as session:
        rows = session.scalars(
            select(OutboxEvent)
            .where(OutboxEvent.published_at.is_(None))
            .order_by(OutboxEvent.id)
            .limit(limit)
        ).all()
        return [(row.id, Event.from_outbox(row)) for row in rows]


def mark_published(engine: Engine, ids: list[int]) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(OutboxEvent).where(OutboxEvent.id.in_(ids)).values(published_at=utcnow())
        )


def purge(engine: Engine, retention_seconds: float) -> int:
    """Delete published outbox rows older than the retention and expired idempotency keys."""
    now = utcnow()
    removed = 0
    with engine.begin() as conn:
        old = select(OutboxEvent.id).where(
            OutboxEvent.published_at < now - timedelta(seconds=retention_seconds)
        )
        ids = list(conn.scalars(old.order_by(OutboxEvent.id).limit(PURGE_BATCH)))
        if ids:
            removed += conn.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(ids))).rowcount
        expired = select(IdempotencyKey.id).where(IdempotencyKey.expires_at <= now)
        ids = list(conn.scalars(expired.limit(PURGE_BATCH)))
        if ids:
            removed += conn.execute(
                delete(IdempotencyKey).where(IdempotencyKey.id.in_(ids))
            ).rowcount
    return removed


class OutboxRelay:
    def __init__(
        self,
        engine: Engine,
        publisher: Publisher,
        *,
        batch_size: int = 200,
        interval: float = 0.2,
        lease_seconds: float = 10.0,
        retention_seconds: float = 7 * 24 * 3600.0,
    ) -> None:
        self._engine = engine
        self._publisher = publisher
        self._batch_size = batch_size
        self._interval = interval
        self._lease_seconds = lease_seconds
        self._retention = retention_seconds
        self.holder = f"relay-{uuid.uuid4()}"
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.published = 0
        self._renew_at = 0.0
        # What the pass was doing ("database" or "publisher"): which dependency a failure is of.
        self._stage = "database"

    def notify(self) -> None:
        """Wake the relay now (callable from any thread, e.g. right after a commit)."""
        loop, wakeup = self._loop, self._wakeup
        if loop is not None and wakeup is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wakeup.set)

    async def publish_pending(self) -> int:
        """One pass: publish up to a batch of pending events; returns how many (0 if not the
        lease holder)."""
        self._stage = "database"
        if time.monotonic() >= self._renew_at:
            self._renew_at = 0.0
            holds = await asyncio.to_thread(
                take_lease, self._engine, RELAY_LEASE, self.holder, self._lease_seconds
            )
            if not holds:
                return 0
            # Renewed well before it expires (publishing is bounded by Redis' 2 s timeouts).
            self._renew_at = time.monotonic() + self._lease_seconds / 3
        batch = await asyncio.to_thread(pending_events, self._engine, self._batch_size)
        if not batch:
            return 0
        self._stage = "publisher"
        await self._publisher.publish([event for _, event in batch])
        self._stage = "database"
        await asyncio.to_thread(mark_published, self._engine, [row_id for row_id, _ in batch])
        self.published += len(batch)
        return len(batch)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; never raises for an outage (it retries)."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        outage = _Outage()
        next_housekeeping = time.monotonic()
        try:
            while not stop.is_set():
                self._wakeup.clear()
                try:
                    done = await self.publish_pending()
                    if time.monotonic() >= next_housekeeping:
                        self._stage = "database"
                        next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
                        await asyncio.to_thread(purge, self._engine, self._retention)
                except Exception as exc:  # any outage: Redis, the database, the network
                    self._renew_at = 0.0
                    outage.failed(self._stage, exc)
                    ceiling = min(MAX_BACKOFF_SECONDS, self._interval * 2**outage.failures)
                    jittered = random.uniform(self._interval, max(self._interval, ceiling))  # noqa: S311
                    await _wait(stop, jittered)
                    continue
                outage.ended()
                if done == self._batch_size:
                    continue
                await _wait_any(stop, self._wakeup, self._interval)
        finally:
            self._loop = None
            try:
                await asyncio.to_thread(release_lease, self._engine, RELAY_LEASE, self.holder)
            except Exception:  # the database is gone: the lease simply expires
                log.debug("could not release the relay lease", exc_info=True)


def _problem(exc: BaseException) -> str:
    """ "<ErrorClass>: first line" (SQLAlchemy's errors carry the SQL and a link on later lines)."""
    origin = getattr(exc, "orig", None)
    text = str(origin if origin is not None else exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else type(exc).__name__}"


class _Outage:
    """The relay's current problem, logged per the module header's rules: the symptoms one
    restart shows in turn (connection closed, then refused) are one problem; the database
    failing after the publisher, or the other way round, is another."""

    def __init__(self) -> None:
        self.where: str | None = None
        self.problem = ""
        self.since = 0.0
        self.failures = 0

    def failed(self, where: str, exc: BaseException) -> None:
        self.problem = _problem(exc)
        if self.where is None:
            self.since = time.monotonic()
            log.warning("outbox relay cannot publish (will retry): %s: %s", where, self.problem)
        elif where != self.where:
            log.warning(
                "outbox relay now failing on the %s: %s; still retrying", where, self.problem
            )
        self.where = where
        self.failures += 1

    def ended(self) -> None:
        if self.where is None:
            return
        log.warning(
            "outbox relay publishing again after %.1fs and %d failed tries (%s)",
            time.monotonic() - self.since,
            self.failures,
            self.problem,
        )
        self.where, self.failures = None, 0


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _wait_any(stop: asyncio.Event, wakeup: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wakeup.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
