"""The answer cache's event receiver: a Redis Stream consumer group on `catalog:events`.

- One group per replica, `catalog-cache:<instance>` (consumer `<instance>`): a group delivers
  each entry to ONE of its consumers, so replicas sharing a group would each hear only some
  events; a group each makes every replica hear every event. A group (not a plain XREAD) keeps
  a restarted replica's position and its unacked entries (`datasync.stream.StreamSubscriber`:
  its backlog first, stale entries claimed). A new group starts at the stream's end ("$"): a
  fresh replica has nothing cached that older events could concern.
- Every event read clears the cache (`cache.py`), then is acked: a crash in between re-delivers
  it, and clearing twice is harmless.
- The cache answers hits from memory only while the consumer is connected: after each read the
  subscriber's health says whether Redis answered (an outage makes `read` return [] and is
  logged by the subscriber, one line when it starts and one when it ends); otherwise each hit is
  checked against the read model's version (`cache.py`), so an outage costs a query per hit,
  never a stale answer. A stream entry that is not an event (a foreign writer's) is acked and
  skipped by the subscriber with one warning (`datasync.stream`): it announces no catalog
  change; any other error counts as disconnected and is retried after a second, logged once
  per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from datasync.events import Event
from datasync.retry import Health
from services.catalog.cache import AnswerCache

log = logging.getLogger("services.catalog.invalidation")

READ_BLOCK_MS = 1_000
RETRY_SECONDS = 1.0


class Source(Protocol):
    """What the receiver needs of `datasync.stream.StreamSubscriber`."""

    health: Health

    async def read(self, count: int = 100, block_ms: int = 1000) -> list[Event]: ...

    async def ack(self, *events: Event) -> None: ...

    async def close(self) -> None: ...


def group_name(instance: str) -> str:
    return f"catalog-cache:{instance}"


def subscriber(redis_url: str, stream: str, instance: str) -> Source:
    """This replica's consumer of the event stream."""
    from datasync.stream import StreamSubscriber

    # Both declarations name the row's key `aggregate_id` (`sync/*.yaml`); `type` tells
    # products from categories, which this receiver need not do.
    return StreamSubscriber(
        redis_url, stream, group_name(instance), instance, key_field="aggregate_id", start="$"
    )


class Invalidator:
    """Reads the stream until `stop` is set, clearing `cache` on every event."""

    def __init__(self, source: Source, cache: AnswerCache) -> None:
        self.source = source
        self.cache = cache
        self.events = 0
        self.health = Health("catalog cache invalidation")
        self._block_ms = 0  # the first read does not wait: the cache turns on at once

    async def step(self) -> None:
        try:
            events = await self.source.read(count=100, block_ms=self._block_ms)
        except Exception as exc:
            self.cache.disconnected()
            self.health.failed(exc, log, RETRY_SECONDS)
            await asyncio.sleep(RETRY_SECONDS)
            return
        if not self.source.health.healthy:
            self.cache.disconnected()
            return
        self.health.ok(log)
        self.cache.connected()
        self._block_ms = READ_BLOCK_MS
        if events:
            self.cache.clear()
            self.events += len(events)
            await self.source.ack(*events)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.step()
        finally:
            self.cache.disconnected()
            with contextlib.suppress(Exception):
                await self.source.close()
