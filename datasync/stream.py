"""A Redis Stream consumer group as the engine's event source (`StreamSubscriber`).

One subscriber is one consumer of one consumer group (XREADGROUP / XACK / XAUTOCLAIM), as the
payment service's `RedisSubscriber`: its first reads return its own unacked entries (a restart
resumes where it was), every `claim_idle_ms / 2` it claims the entries another consumer of its
group has held unacked for longer than `claim_idle_ms` (that consumer died), and entries
trimmed by `MAXLEN` while pending are acked (nothing is left to deliver). The group is created
on first use from `start` ("0": the whole stream; "$": only new entries).

Entry fields (strings): `event_id`, `type`, the key field (`key_field`, "aggregate_id" unless
told: the payment stream says "payment_id"), `row_version`, `occurred_at`, `payload` (a JSON
object).

Restarts of Redis are ridden out, never raised (the to-legacy job exited with a traceback on
every Redis restart and never came back, and the monolith fell behind by every payment made
meanwhile):
- a transient error (connection refused or closed, timeout, LOADING, READONLY: `retry.
  is_transient`) makes `read` return [] after dropping the connection pool; the next attempt
  waits a fully jittered exponential backoff (`retry.Backoff`), slept in slices no longer than
  the caller's `block_ms`, so a caller checking a stop flag between reads is never held longer;
- the outage is logged once, its end once (`retry.Health`: no traceback); the symptoms one
  restart shows in turn (connection closed, then refused, then LOADING) are one problem, counted
  and shown in `health`, not logged again;
- a `NOGROUP` reply means Redis came back without its data (no persistence): the group is made
  again from `start`, `resets` counts it, one line says so, and the subscriber reads its own
  backlog first again;
- an entry that is not an event (a foreign writer's, fields missing) is logged, counted in
  `unreadable` and acked without delivery: it could never be read, and left pending it would
  fail every read of the group's backlog;
- an `ack` that fails transiently is swallowed (logged as part of the outage): the entry is
  delivered again, and consumers dedupe by `event_id`.
Any other error (a wrong type at the key, a refused password) is raised: retrying cannot cure it.

The client's socket timeout is longer than the longest XREADGROUP block asked for so far (a
longer block rebuilds the client), so a blocking read is never cut by its own timeout; redis-py's
own retries are off: this class does the retrying, bounded by the caller's `block_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from datasync.events import Event
from datasync.retry import BASE_DELAY, Backoff, Health, is_transient

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("datasync.stream")

CONNECT_TIMEOUT_SECONDS = 1.0
# How much longer than a blocking read the socket waits before calling the server gone.
SOCKET_TIMEOUT_MARGIN_SECONDS = 2.0


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _is_nogroup(exc: BaseException) -> bool:
    from redis.exceptions import ResponseError

    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


class StreamSubscriber:
    """`datasync.events.Subscriber` over one consumer group of a Redis Stream (see the module
    header for the rules). `health` tells the current problem; `resets` how often the group had
    to be made again because Redis lost it."""

    def __init__(
        self,
        url: str,
        stream: str,
        group: str,
        consumer: str,
        *,
        key_field: str = "aggregate_id",
        claim_idle_ms: int = 30_000,
        start: str = "0",
        backoff: Backoff | None = None,
    ) -> None:
        self.url = url
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.key_field = key_field
        self.claim_idle_ms = claim_idle_ms
        self.start = start
        self.health = Health(f"stream {stream} group {group} consumer {consumer}")
        self.resets = 0
        self.unreadable = 0  # entries that were not events, acked without delivery
        self._backoff = backoff or Backoff()
        self._client: Redis | None = None
        self._client_block_ms = 0
        self._ready = False  # the group is known to exist
        self._own_backlog = True
        self._next_claim = 0.0
        self._retry_at = 0.0

    # --- connection ---------------------------------------------------------------------------
    async def _connection(self, block_ms: int) -> Redis:
        if self._client is not None and block_ms <= self._client_block_ms:
            return self._client
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        if self._client is not None:
            # A longer block than the client was built for: build one whose timeout allows it.
            await self._discard()
        self._client_block_ms = max(block_ms, 1000)
        self._client = Redis.from_url(
            self.url,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=SOCKET_TIMEOUT_MARGIN_SECONDS + self._client_block_ms / 1000,
            retry=Retry(NoBackoff(), 0),
        )
        return self._client

    async def _discard(self) -> None:
        """Drop the client and its pool (a dead server's sockets are closed without waiting)."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), CONNECT_TIMEOUT_SECONDS)

    async def _failed(self, exc: BaseException) -> None:
        delay = self._backoff.next_delay()
        # One line per outage, whatever symptoms it shows in turn (`retry.Health`).
        self.health.failed(exc, log, delay)
        self._retry_at = time.monotonic() + delay
        # What was delivered but not acked (a lost reply, a dropped ack) comes back first.
        self._own_backlog = True
        await self._discard()

    # --- reading ------------------------------------------------------------------------------
    async def _ensure_group(self, client: Redis) -> None:
        if self._ready:
            return
        from redis.exceptions import ResponseError

        try:
            await client.xgroup_create(self.stream, self.group, id=self.start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._ready = True

    def _event(self, message_id: str, fields: Mapping[Any, Any]) -> Event:
        values = {_text(k): _text(v) for k, v in fields.items()}
        try:
            return Event(
                event_id=values["event_id"],
                type=values["type"],
                key=int(values[self.key_field]),
                version=int(values["row_version"]),
                occurred_at=values.get("occurred_at", ""),
                payload=json.loads(values["payload"]),
                message_id=message_id,
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"stream {self.stream} entry {message_id} is not an event "
                f"(fields {sorted(values)}): {exc!r}"
            ) from None

    def _events(self, entries: Sequence[Any]) -> tuple[list[Event], list[str]]:
        """The entries' events, and the ids to ack without delivering: entries trimmed while
        pending, and entries that are not events (a foreign writer's), each logged once and
        counted in `unreadable`. Retrying cannot make those readable; left pending, one would
        fail every read of the backlog after a restart."""
        events, gone = [], []
        for raw_id, fields in entries:
            message_id = _text(raw_id)
            if not fields:  # trimmed by MAXLEN while pending: nothing left to deliver
                gone.append(message_id)
                continue
            try:
                events.append(self._event(message_id, fields))
            except ValueError as exc:
                self.unreadable += 1
                log.warning("%s: skipped (acked): %s", self.health.job, exc)
                gone.append(message_id)
        return events, gone

    async def _claim_stale(self, client: Redis, count: int) -> list[Event]:
        now = time.monotonic()
        if now < self._next_claim:
            return []
        self._next_claim = now + self.claim_idle_ms / 2000
        answer: Any = await client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count
        )
        events, gone = self._events(answer[1])
        gone += [_text(m) for m in (answer[2] if len(answer) > 2 else [])]
        if gone:
            await client.xack(self.stream, self.group, *gone)
        return events

    async def _read(self, count: int, block_ms: int) -> list[Event]:
        client = await self._connection(block_ms)
        await self._ensure_group(client)
        if self._own_backlog:
            answer: Any = await client.xreadgroup(
                self.group, self.consumer, {self.stream: "0"}, count=count
            )
            events, gone = self._events(answer[0][1] if answer else [])
            if gone:
                await client.xack(self.stream, self.group, *gone)
            if events or gone:
                return events
            self._own_backlog = False
        claimed = await self._claim_stale(client, count)
        if claimed:
            return claimed
        # BLOCK 0 would wait forever: a caller asking for no wait gets no block at all.
        fresh: Any = await client.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=count,
            block=block_ms if block_ms > 0 else None,
        )
        events, gone = self._events(fresh[0][1] if fresh else [])
        if gone:
            await client.xack(self.stream, self.group, *gone)
        return events

    def _reset_group(self) -> None:
        self.resets += 1
        self._ready = False
        self._own_backlog = True
        self._next_claim = 0.0
        log.warning(
            "%s: the consumer group was gone (Redis lost its data); made again from %r (reset %d)",
            self.health.job,
            self.start,
            self.resets,
        )

    async def read(self, count: int = 100, block_ms: int = 1000) -> list[Event]:
        """Up to `count` events, waiting up to `block_ms` for new ones; [] during an outage."""
        remaining = self._retry_at - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(min(remaining, max(block_ms / 1000, BASE_DELAY)))
            if time.monotonic() < self._retry_at:
                return []
        try:
            try:
                events = await self._read(count, block_ms)
            except Exception as exc:
                if not _is_nogroup(exc):
                    raise
                self._reset_group()
                events = await self._read(count, block_ms)
        except Exception as exc:
            if not is_transient(exc):
                raise
            await self._failed(exc)
            return []
        self._backoff.reset()
        self.health.ok(log)
        return events

    async def ack(self, *events: Event) -> None:
        """Ack handled events; during an outage the ack is dropped (the entries come again)."""
        if not events:
            return
        try:
            client = await self._connection(0)
            await client.xack(self.stream, self.group, *(e.message_id for e in events))
        except Exception as exc:
            if not is_transient(exc):
                raise
            await self._failed(exc)

    async def close(self) -> None:
        await self._discard()
