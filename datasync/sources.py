"""Where the to-legacy job gets the service's change events from.

- `redis`: the declared Redis Stream, through `stream.StreamSubscriber` (a consumer group:
  at-least-once, a restart gets its unacked entries back, a dead consumer's are claimed).
- `outbox`: the service's declared outbox table, read directly by id (`OutboxSubscriber`). For
  the demo and any setup without Redis. Outbox ids are assigned at insert, so a transaction can
  commit an id lower than one already read: every read re-reads the last `lookback_ids` ids
  below its position and skips those already handled (`sync_events`), as `follow` does with
  its look-back. A relay that deletes published rows after a retention means a consumer stopped
  for longer than that must read the stream instead.
- anything else with the `events.Subscriber` interface (a service's in-process bus, through
  `events.Converting`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sqlalchemy import Select, exists, select
from sqlalchemy.engine import Engine

from datasync.engines import reading
from datasync.events import Event
from datasync.lease import JobLease
from datasync.outbox import outbox_table
from datasync.spec import Spec
from datasync.state import JOB_TO_LEGACY, handled, load_checkpoint

# Outbox ids re-read behind the position: a transaction that took its id while this many later
# ids were taken and committed is still caught (~10 s of a service's peak write rate).
DEFAULT_LOOKBACK_IDS = 1_000
POLL_SECONDS = 0.25


def outbox_query(spec: Spec, after_id: int, lookback_ids: int, limit: int) -> Select[Any]:
    """Unhandled outbox rows from `lookback_ids` below the position on, in id order (a range
    scan of the primary key, anti-joined with the handled event ids' unique index)."""
    assert spec.events is not None
    assert spec.events.outbox is not None
    outbox = outbox_table(spec.events.outbox)
    done = exists().where(handled.c.sync_name == spec.name, handled.c.event_id == outbox.c.event_id)
    return (
        select(outbox)
        .where(outbox.c.id > after_id - lookback_ids, ~done)
        .order_by(outbox.c.id)
        .limit(limit)
    )


class OutboxSubscriber:
    """An `events.Subscriber` over the declared outbox table (see the module docstring).

    Its position is the to-legacy checkpoint's `position_id` (the highest outbox id handled),
    which the consumer moves as it records handled events; `ack` has nothing to do."""

    def __init__(
        self, spec: Spec, service: Engine, lookback_ids: int = DEFAULT_LOOKBACK_IDS
    ) -> None:
        if spec.events is None or not spec.events.outbox:
            raise ValueError(f"the {spec.name} sync declares no outbox table")
        self.spec = spec
        self._service = service
        self.lookback_ids = lookback_ids
        # One outbox reader at a time (a stream's consumer group shares; a table scan doesn't).
        self._lease = JobLease(service, spec.name, JOB_TO_LEGACY)
        self._holding = False

    def _read_now(self, count: int) -> list[Event]:
        if self._holding:
            self._lease.renew()
        else:
            self._lease.acquire()
            self._holding = True
        with reading(self._service) as conn:
            checkpoint = load_checkpoint(conn, self.spec.name, JOB_TO_LEGACY)
            after = int(checkpoint.position_id or 0) if checkpoint is not None else 0
            query = outbox_query(self.spec, after, self.lookback_ids, count)
            return [outbox_event(row) for row in conn.execute(query).mappings()]

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


def outbox_event(row: Any) -> Event:
    return Event(
        event_id=str(row["event_id"]),
        type=str(row["event_type"]),
        key=int(row["aggregate_id"]),
        version=int(row["row_version"]),
        occurred_at=row["created_at"].isoformat().replace("+00:00", "Z"),
        payload=json.loads(row["payload"]),
        message_id=str(row["id"]),
    )
