"""Where the to-legacy consumer gets the service's payment events from.

- `redis`: the service's Redis Stream through its own `RedisSubscriber` (a consumer group:
  at-least-once, a restart gets its unacked entries back, a dead consumer's are claimed).
- `outbox`: the service's `outbox` table, read directly by id. For the demo and any setup
  without Redis: the service's `InProcessBus` only reaches subscribers in the service's own
  process and event loop, and this consumer is a process of its own. Outbox ids are assigned at
  insert, so a transaction can commit an id lower than one already read: every read re-reads the
  last `lookback_ids` ids below its position and skips those already handled
  (`sync_events_done`), as `follow` does with its look-back. The relay deletes published rows
  after its retention, so a consumer stopped for longer than that must read the stream instead.
- `InProcessBus` subscribers work too (a test or a demo running the consumer in the service's
  process): anything with the `events.Subscriber` interface does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from sqlalchemy import Table, exists, select
from sqlalchemy.engine import Engine

from services.payment.events import Event
from services.payment.models import OutboxEvent
from services.payment.sync.engines import reading
from services.payment.sync.lease import JobLease
from services.payment.sync.state import JOB_TO_LEGACY, events_done, load_checkpoint

outbox = cast(Table, OutboxEvent.__table__)
# Outbox ids re-read behind the position: a transaction that took its id while this many later
# ids were taken and committed is still caught (~10 s of the service's peak write rate).
DEFAULT_LOOKBACK_IDS = 1_000
POLL_SECONDS = 0.25


def outbox_query(after_id: int, lookback_ids: int, limit: int) -> Any:
    """Unhandled outbox rows from `lookback_ids` below the position on, in id order (a range
    scan of the primary key, anti-joined with the handled event ids' unique index)."""
    handled = exists().where(events_done.c.event_id == outbox.c.event_id)
    return (
        select(outbox)
        .where(outbox.c.id > after_id - lookback_ids, ~handled)
        .order_by(outbox.c.id)
        .limit(limit)
    )


class OutboxSubscriber:
    """An `events.Subscriber` over the service's outbox table (see the module docstring).

    Its position is the to-legacy checkpoint's `position_id` (the highest outbox id handled),
    which the consumer moves as it records handled events; `ack` has nothing to do."""

    def __init__(self, service: Engine, lookback_ids: int = DEFAULT_LOOKBACK_IDS) -> None:
        self._service = service
        self.lookback_ids = lookback_ids
        # One outbox reader at a time (a stream's consumer group shares; a table scan doesn't).
        self._lease = JobLease(service, JOB_TO_LEGACY)
        self._holding = False

    def _read_now(self, count: int) -> list[Event]:
        if self._holding:
            self._lease.renew()
        else:
            self._lease.acquire()
            self._holding = True
        with reading(self._service) as conn:
            checkpoint = load_checkpoint(conn, JOB_TO_LEGACY)
            after = int(checkpoint.position_id or 0) if checkpoint is not None else 0
            query = outbox_query(after, self.lookback_ids, count)
            return [_event(row) for row in conn.execute(query).mappings()]

    async def read(self, count: int = 100, block_ms: int = 1000) -> list[Event]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000
        while True:
            events = await asyncio.to_thread(self._read_now, count)
            if events or loop.time() >= deadline:
                return events
            await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - loop.time())))

    async def ack(self, *events: Event) -> None:
        return None

    async def close(self) -> None:
        if self._holding:
            await asyncio.to_thread(self._lease.release)
            self._holding = False


def _event(row: Any) -> Event:
    return Event(
        event_id=str(row["event_id"]),
        type=str(row["event_type"]),
        payment_id=int(row["aggregate_id"]),
        row_version=int(row["row_version"]),
        occurred_at=row["created_at"].isoformat().replace("+00:00", "Z"),
        payload=json.loads(row["payload"]),
        message_id=str(row["id"]),
    )
