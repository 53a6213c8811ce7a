"""The outbox relay: committed outbox rows → the declared Redis Stream, in outbox id order.

The declaration's `events: {outbox: <table>, stream: <key>, key_field: …}` names both ends. The
engine (`apply.emit_events`) and the service write change events into the outbox table in the
transaction of the change (the transactional outbox: Richardson, Microservices Patterns, ch. 3);
this relay is its polling publisher, as the payment service's `services/payment/relay.py` is for
payments. Rules:

- Order and delivery: each pass reads the oldest unpublished rows (`published_at IS NULL`, by
  id), XADDs them in one pipeline, and only after the publish returned marks them published
  (the same transaction records the relay's checkpoint). A crash or an outage between the two
  publishes them again: AT-LEAST-ONCE, as Debezium's outbox router and every polling publisher
  deliver; consumers dedupe by `event_id` and guard on `row_version` (`to_legacy.py`). No
  position cursor is kept, so a row whose transaction took its id early and committed late is
  published too (later than its neighbours: order holds per row, whose changes lock it).
- The entries carry exactly what `stream.StreamSubscriber` parses: `event_id`, `type`, the
  declared `key_field` (the row's key), `row_version`, `occurred_at` (ISO 8601 UTC) and
  `payload` (the outbox's JSON text, as stored). The stream is capped with `XADD MAXLEN ~`
  (`RelaySettings.maxlen`, default 100,000): a group lagging further than that loses the oldest
  entries (the outbox keeps them for the retention: `sources.OutboxCatchUp` reads them there).
- One relay per outbox TABLE at a time: the lease (`lease.JobLease`) is keyed by the outbox's
  name and the job `relay`, not by the sync, because several syncs may share one outbox (a
  catalog's products and categories both writing `catalog_outbox`): relays started from either
  declaration, or embedded in every replica of a service, stand by while one publishes, and
  retry the lease every third of its duration (a stopped holder releases it at once; a crashed
  one's expires). The holder renews it as it goes and takes it again after any failed pass, as
  the payment relay does.
- Outages never end the loop: a pass failing on a transient error (Redis restarting,
  unreachable or read-only; the service database gone: `retry.is_transient`) is retried after a
  fully jittered exponential backoff (`retry.Guard`), with one warning when the outage begins
  and one when it ends (`retry.Health`: the symptoms of one restart are one problem), and the
  problem recorded as the relay's health in `sync_jobs` (sync name: the outbox's). A permanent
  error (the stream key holds another type, a refused password, no outbox table) ends it with
  one line. A failed publish drops the Redis connections, so the next one connects afresh.
- Housekeeping, once a minute (holder only): rows published more than `retention` ago (default
  24 h) are deleted in batches of `purge_batch` ids, each its own short transaction, at most
  `purge_batches` per run. Unpublished rows are never deleted, however old. A consumer reading
  the outbox itself (`sources.OutboxSubscriber`, the catch-up) must not lag by more than this.

Use: `run_relay(spec, engine, redis_url, stop=…)` blocks (the `strangler sync relay` command);
`Relay.start()` / `stop()` run it in a thread, `await Relay.serve(stop_event)` from an event
loop (a service's lifespan); `wake()` after a commit that wrote events publishes at once
instead of at the next poll. `publish_once()` is one pass, `drain()` publishes everything
pending then purges (`--once`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import RowMapping, delete, inspect, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, ProgrammingError

from datasync.batches import chunks
from datasync.engines import describe, reading
from datasync.errors import EventSourceError, SchemaMissing, SyncError
from datasync.lease import AlreadyRunning, JobLease
from datasync.outbox import outbox_table
from datasync.retry import Backoff, Guard, Health, first_line, is_transient
from datasync.spec import Spec
from datasync.state import (
    ONCE,
    POLLING,
    STOPPED,
    ensure_schema,
    load_checkpoint,
    new_checkpoint,
    note_health,
    save_checkpoint,
    set_status,
    utcnow,
)

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("datasync.relay")

JOB_RELAY = "relay"
ENTRY_FIELDS = ("event_id", "type", "row_version", "occurred_at", "payload")
CONNECT_TIMEOUT_SECONDS = 1.0


class NoEventStream(SyncError):
    """The declaration names no outbox table or no stream: there is nothing to relay."""

    kind = "no-event-stream"


class PublishRefused(SyncError):
    """Redis answered the publish with an error a retry cannot cure (a wrong type, auth)."""

    kind = "publish-refused"


@dataclass(frozen=True)
class RelaySettings:
    """The relay's knobs (the command's options)."""

    interval: float = 0.25  # seconds between polls of the outbox while idle
    batch_size: int = 500  # rows per pass (one pipeline)
    maxlen: int = 100_000  # XADD MAXLEN ~
    retention: float = 24 * 3600.0  # seconds a published row stays in the outbox
    housekeeping_every: float = 60.0
    purge_batch: int = 1_000
    purge_batches: int = 50  # per housekeeping run
    lease_seconds: float = 10.0
    timeout: float = 2.0  # Redis socket timeout: bounds a publish well within the lease
    max_backoff: float = 5.0


@dataclass(frozen=True)
class Target:
    """What one relay moves: the outbox table, the stream, and the stream's key field."""

    outbox: str
    stream: str
    key_field: str

    @classmethod
    def of(cls, spec: Spec) -> Target:
        events = spec.events
        outbox = events.outbox if events is not None else None
        stream = events.stream if events is not None else None
        if events is None or not outbox or not stream:
            pairs = (("outbox", outbox), ("stream", stream))
            missing = [f"events.{name}" for name, value in pairs if not value]
            raise NoEventStream(
                f"sync {spec.name} declares no {' and no '.join(missing)}: the relay publishes "
                f"the outbox table to the stream ({spec.source})"
            )
        if events.key_field in ENTRY_FIELDS:
            raise NoEventStream(
                f"sync {spec.name}: events.key_field {events.key_field!r} would overwrite the "
                f"entry's own field of that name ({spec.source})"
            )
        return cls(outbox, stream, events.key_field)


def occurred_at(row: Mapping[Any, Any]) -> str:
    return str(row["created_at"].isoformat().replace("+00:00", "Z"))


def stream_entry(row: Mapping[Any, Any], key_field: str) -> dict[str, str]:
    """The stream entry of one outbox row (module header: the fields `StreamSubscriber` reads)."""
    return {
        "event_id": str(row["event_id"]),
        "type": str(row["event_type"]),
        key_field: str(int(row["aggregate_id"])),
        "row_version": str(int(row["row_version"])),
        "occurred_at": occurred_at(row),
        "payload": str(row["payload"]),
    }


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class StreamPublisher:
    """XADDs outbox rows to one stream in one pipeline (MAXLEN ~), with redis-py's own retries
    off: the relay retries. A publish either returns (every entry is in) or raises (some may
    be): `EventSourceError` when a retry may cure it, `PublishRefused` when not."""

    def __init__(
        self, url: str, target: Target, *, maxlen: int = 100_000, timeout: float = 2.0
    ) -> None:
        self.url = url
        self.target = target
        self.maxlen = maxlen
        self.timeout = timeout
        self._client: Redis | None = None

    def _connection(self) -> Redis:
        if self._client is None:
            from redis import Redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._client = Redis.from_url(
                self.url,
                socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
                socket_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
            )
        return self._client

    def publish(self, rows: Sequence[Mapping[Any, Any]]) -> None:
        if not rows:
            return
        try:
            with self._connection().pipeline(transaction=False) as pipe:
                for row in rows:
                    entry: dict[Any, Any] = stream_entry(row, self.target.key_field)
                    pipe.xadd(self.target.stream, entry, maxlen=self.maxlen, approximate=True)
                pipe.execute()
        except Exception as exc:
            self.close()
            raise self._translated(exc) from exc

    def _translated(self, exc: Exception) -> Exception:
        from redis.exceptions import RedisError

        where = f"stream {self.target.stream} at {safe_url(self.url)}"
        problem = f"{type(exc).__name__}: {first_line(exc)}"
        if is_transient(exc):
            return EventSourceError(f"cannot publish to {where}: {problem}")
        if isinstance(exc, RedisError):
            return PublishRefused(f"Redis refused the publish to {where}: {problem}")
        return exc

    def close(self) -> None:
        """Drop the client and its connections (a restarted Redis is connected to afresh)."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # a dead server's sockets: nothing to save
                log.debug("closing the Redis client failed (%s)", type(exc).__name__)


@dataclass
class RelayResult:
    outbox: str
    stream: str
    published: int
    purged: int
    retention: float
    standby: bool  # the lease was held by another relay at the end
    problem: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "outbox": self.outbox,
            "stream": self.stream,
            "published": self.published,
            "purged": self.purged,
            "retention_seconds": self.retention,
            "standby": self.standby,
            "problem": self.problem,
        }

    def summary(self) -> str:
        text = (
            f"relay {self.outbox} -> {self.stream}: published {self.published} event(s); "
            f"purged {self.purged} row(s) published over {self.retention / 3600:g}h ago"
        )
        if self.standby:
            text += "; standing by (another relay holds the lease)"
        return text + (f"; problem: {self.problem}" if self.problem else "")


class Relay:
    """The relay of one declared outbox table to its stream (see the module header)."""

    def __init__(
        self,
        spec: Spec,
        service: Engine,
        redis_url: str,
        *,
        settings: RelaySettings | None = None,
    ) -> None:
        self.target = Target.of(spec)
        self.service = service
        self.settings = settings or RelaySettings()
        self.job = f"relay {self.target.outbox} -> {self.target.stream}"
        self.publisher = StreamPublisher(
            redis_url, self.target, maxlen=self.settings.maxlen, timeout=self.settings.timeout
        )
        self.lease = JobLease(service, self.target.outbox, JOB_RELAY, self.settings.lease_seconds)
        self.health = Health(self.job)
        self.published = 0
        self.purged = 0
        self.error: BaseException | None = None  # what ended a `start()`ed relay
        self._status = ONCE
        self._checked = False
        self._holding = False
        self._standby = False
        self._verify = False  # take the lease again before the next publish (after a failure)
        self._lease_retry_at = 0.0
        self._housekeeping_at = 0.0
        self._nudge = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- one pass ---------------------------------------------------------------------------
    def publish_once(self) -> int:
        """Publish up to a batch of pending rows, in id order; the number published (0 while
        another relay holds the lease). Raises what failed: the loop retries, a test sees it."""
        self._check_schema()
        if not self._hold_lease():
            return 0
        rows = self._pending()
        if not rows:
            return 0
        self.publisher.publish(rows)
        self._mark([int(row["id"]) for row in rows])
        self.published += len(rows)
        return len(rows)

    def purge_once(self) -> int:
        """Delete rows published more than `retention` ago, in bounded batches; how many."""
        outbox = outbox_table(self.target.outbox)
        cutoff = utcnow() - timedelta(seconds=self.settings.retention)
        old = (
            select(outbox.c.id)
            .where(outbox.c.published_at < cutoff)
            .order_by(outbox.c.id)
            .limit(self.settings.purge_batch)
        )
        removed = 0
        for _ in range(self.settings.purge_batches):
            with self.service.begin() as conn:
                ids = list(conn.scalars(old))
                if ids:
                    conn.execute(delete(outbox).where(outbox.c.id.in_(ids)))
            removed += len(ids)
            if len(ids) < self.settings.purge_batch:
                break
        self.purged += removed
        return removed

    def _check_schema(self) -> None:
        if self._checked:
            return
        self._ensure_state_tables()
        with reading(self.service) as conn:
            present = inspect(conn).has_table(self.target.outbox)
        if not present:
            raise SchemaMissing(
                f"the service database {describe(self.service)} has no {self.target.outbox} "
                "table (events.outbox): run the service's migrations first"
            )
        self._checked = True

    def _ensure_state_tables(self) -> None:
        """The engine's tables (the lease's among them). Relays started together on a fresh
        database race to create them: the loser's CREATE fails on what the winner just made,
        and a second look finds them there."""
        try:
            ensure_schema(self.service)
        except (IntegrityError, ProgrammingError):
            ensure_schema(self.service)

    def _hold_lease(self) -> bool:
        now = time.monotonic()
        if not self._holding and now < self._lease_retry_at:
            return False
        try:
            if self._holding and not self._verify:
                self.lease.renew()
            else:
                self.lease.acquire()
        except AlreadyRunning as exc:
            self._stand_by(exc, now)
            return False
        if not self._holding:
            log.info("%s: lease taken; publishing", self.job)
        self._holding, self._standby, self._verify = True, False, False
        return True

    def _stand_by(self, exc: AlreadyRunning, now: float) -> None:
        if self._holding:
            log.warning("%s: lost the lease (%s); standing by", self.job, exc.detail)
        elif not self._standby:
            log.info("%s: standing by: %s", self.job, exc.detail)
        self._holding, self._standby = False, True
        self._lease_retry_at = now + self.settings.lease_seconds / 3

    def _pending(self) -> list[RowMapping]:
        outbox = outbox_table(self.target.outbox)
        query = (
            select(outbox)
            .where(outbox.c.published_at.is_(None))
            .order_by(outbox.c.id)
            .limit(self.settings.batch_size)
        )
        with reading(self.service) as conn:
            return list(conn.execute(query).mappings())

    def _mark(self, ids: list[int]) -> None:
        outbox = outbox_table(self.target.outbox)
        now = utcnow()
        with self.service.begin() as conn:  # one transaction: all marked, or none
            for chunk in chunks(ids):
                conn.execute(update(outbox).where(outbox.c.id.in_(chunk)).values(published_at=now))
            self._checkpoint(conn, ids)

    def _checkpoint(self, conn: Connection, ids: list[int]) -> None:
        name = self.target.outbox
        checkpoint = load_checkpoint(conn, name, JOB_RELAY) or new_checkpoint(name, JOB_RELAY)
        checkpoint.position_id = max(checkpoint.position_id or 0, *ids)
        checkpoint.rows_done += len(ids)
        checkpoint.status = self._status
        checkpoint.last_success_at = utcnow()
        save_checkpoint(conn, checkpoint)

    # --- loops ------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> RelayResult:
        """Relay until `stop` (or `halt()`); never ends on an outage (module header). A
        permanent error is raised, after the lease is released."""
        self._stop = stop or threading.Event()
        guard = Guard(
            self.job, log, wait=self._stop.wait, backoff=Backoff(cap=self.settings.max_backoff)
        )
        guard.health = self.health
        self._status = POLLING
        try:
            while not self._stop.is_set():
                self._nudge.clear()
                failing = not guard.health.healthy
                done = guard.run(self._pass)
                if done is None:
                    self._verify = True
                    self._note_health()
                    continue
                if failing:
                    self._note_health()
                if done < self.settings.batch_size:
                    self._nudge.wait(self.settings.interval)
        finally:
            self._finish(STOPPED)
        return self.result()

    def _pass(self) -> int:
        done = self.publish_once()
        if self._holding and time.monotonic() >= self._housekeeping_at:
            self._housekeeping_at = time.monotonic() + self.settings.housekeeping_every
            self.purge_once()
        return done

    def drain(self) -> RelayResult:
        """Publish everything pending, purge, release (`--once`). Raises `AlreadyRunning`
        while another relay holds the lease, and whatever else fails."""
        self._status = ONCE
        self._check_schema()
        self.lease.acquire()
        self._holding = True
        try:
            while self.publish_once() == self.settings.batch_size:
                pass
            self.purge_once()
        finally:
            self._finish(ONCE)
        return self.result()

    def _note_health(self) -> None:
        """The relay's health in its `sync_jobs` row, when the service database answers."""
        note_health(self.service, self.target.outbox, JOB_RELAY, self.health)

    def _finish(self, status: str) -> None:
        try:
            if self._holding:
                with self.service.begin() as conn:
                    set_status(conn, self.target.outbox, JOB_RELAY, status)
                self.lease.release()
        except Exception as exc:
            log.warning("%s: stopped, but not recorded (%s); the lease expires", self.job, exc)
        finally:
            self._holding = False
            self.publisher.close()

    def close(self) -> None:
        """Release the lease and the Redis connections (after `publish_once` or `purge_once`
        called directly; the loops do it themselves)."""
        self._finish(self._status)

    def result(self) -> RelayResult:
        return RelayResult(
            self.target.outbox,
            self.target.stream,
            self.published,
            self.purged,
            self.settings.retention,
            self._standby,
            self.health.problem,
        )

    # --- embedding --------------------------------------------------------------------------
    def wake(self) -> None:
        """Publish now rather than at the next poll (from any thread, e.g. after a commit)."""
        self._nudge.set()

    def halt(self) -> None:
        """Ask the loop to end after its current pass (signal-safe; does not wait)."""
        self._stop.set()
        self._nudge.set()

    def start(self) -> threading.Thread:
        """Run the loop in a daemon thread; `stop()` ends it. A permanent error ends the
        thread with one logged line, kept in `error`."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{self.job} is already running")
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run_logged, name=f"relay-{self.target.outbox}", daemon=True
        )
        self._thread.start()
        return self._thread

    def _run_logged(self) -> None:
        try:
            self.run(self._stop)
        except Exception as exc:
            self.error = exc
            log.error("%s: stopped: %s: %s", self.job, type(exc).__name__, first_line(exc))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """End the `start()`ed loop after its current pass and wait for it."""
        self.halt()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    async def serve(self, stop: asyncio.Event) -> RelayResult:
        """Run the loop (in a worker thread) until `stop` is set: a service lifespan's task."""
        self._stop = threading.Event()
        worker = asyncio.ensure_future(asyncio.to_thread(self.run, self._stop))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({worker, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.halt()
            stopping.cancel()
        return await worker


def run_relay(
    spec: Spec,
    service: Engine,
    redis_url: str,
    *,
    interval: float | None = None,
    stop: threading.Event | None = None,
    settings: RelaySettings | None = None,
) -> RelayResult:
    """Relay the declared outbox to its stream until `stop` is set (blocking)."""
    settings = settings or RelaySettings()
    if interval is not None:
        settings = replace(settings, interval=interval)
    return Relay(spec, service, redis_url, settings=settings).run(stop)
