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

Catching up from the outbox (`OutboxCatchUp`): a Redis restarted without persistence comes back
without the stream and its group (`stream.StreamSubscriber.resets` counts it): the events
published before the restart and not yet consumed are gone from Redis, but still in the
service's outbox table, where the relay keeps published rows for its retention (the payment
service's: 7 days). So the to-legacy job reading a stream also reads the declared outbox table
for events it has not handled (anti-joined with `sync_events`, as `OutboxSubscriber` does) and
applies them through the same applier (an event the stream delivers again later is a
`duplicate`):
- after every reset, and once at start: every outbox row created since the to-legacy
  checkpoint's newest handled event time (`position_at`) minus `margin` (default 5 minutes: the
  relay publishes in outbox order, so what the stream lost was created after the last event
  handled, give or take a transaction that stamped its row and committed later); with no event
  handled yet, the whole outbox. One scan of the outbox (`created_at` has no index), bounded by
  its retention; rare (a start, a lost Redis);
- every `every` seconds (default 60) as a safety net against a loss nothing reported (a stream
  trimmed by MAXLEN past a lagging group, a group deleted by hand): the same, and only ids above
  the previous pass's highest outbox id minus `lookback_ids` (a primary-key range scan; a
  transaction that took its id while that many later ones committed is caught, as
  `OutboxSubscriber`'s look-back rule says).
The catch-up applies an event the stream has not delivered YET too (the stream then delivers a
duplicate): harmless, and per row still in version order (the stale guard of `to_legacy.py`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, exists, func, select
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
DEFAULT_CATCH_UP_EVERY = 60.0  # seconds between the catch-up's safety-net passes
DEFAULT_CATCH_UP_MARGIN = 300.0  # seconds re-read before the newest handled event's time


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


def catch_up_query(
    spec: Spec, since: datetime | None, above_id: int | None, limit: int
) -> Select[Any]:
    """Unhandled outbox rows created at or after `since` (all when None) with an id above
    `above_id` (any when None), in id order."""
    assert spec.events is not None
    assert spec.events.outbox is not None
    outbox = outbox_table(spec.events.outbox)
    done = exists().where(handled.c.sync_name == spec.name, handled.c.event_id == outbox.c.event_id)
    query = select(outbox).where(~done)
    if since is not None:
        query = query.where(outbox.c.created_at >= since)
    if above_id is not None:
        query = query.where(outbox.c.id > above_id)
    return query.order_by(outbox.c.id).limit(limit)


@dataclass
class CatchUpPass:
    """One catch-up pass: what it reads, and why it runs."""

    resets: int  # the subscriber's resets when it began
    since: datetime | None
    above_id: int | None
    upto_id: int  # the outbox's highest id when it began
    reason: str  # "start", "reset" or "safety net"
    events: int = 0


class OutboxCatchUp:
    """Reads the outbox events a stream consumer has not handled (module docstring, "Catching
    up from the outbox"). The caller asks `due(resets)` before each read of the stream; while
    it is, it reads batches with `read(count, resets)` (blocking: run it in a thread), applies
    them, and calls `finished()` once a batch came back short."""

    def __init__(
        self,
        spec: Spec,
        service: Engine,
        *,
        every: float = DEFAULT_CATCH_UP_EVERY,
        margin: float = DEFAULT_CATCH_UP_MARGIN,
        lookback_ids: int = DEFAULT_LOOKBACK_IDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if spec.events is None or not spec.events.outbox:
            raise ValueError(f"the {spec.name} sync declares no outbox table")
        self.spec = spec
        self._service = service
        self.every = every
        self.margin = timedelta(seconds=margin)
        self.lookback_ids = lookback_ids
        self._clock = clock
        self._resets: int | None = None  # the resets the last finished pass covered
        self._next_at = 0.0
        self._floor: int | None = None  # ids at or below it were covered by a finished pass
        self.current: CatchUpPass | None = None
        self.passes = 0

    def due(self, resets: int) -> bool:
        return self.current is not None or resets != self._resets or self._clock() >= self._next_at

    def _begin(self, resets: int) -> CatchUpPass:
        outbox = outbox_table(self.spec.events.outbox)  # type: ignore[union-attr]
        with reading(self._service) as conn:
            checkpoint = load_checkpoint(conn, self.spec.name, JOB_TO_LEGACY)
            upto = int(conn.scalar(select(func.max(outbox.c.id))) or 0)
        newest = checkpoint.position_at if checkpoint is not None else None
        since = newest - self.margin if newest is not None else None
        if self._resets is None:
            reason, above = "start", None
        elif resets != self._resets:
            reason, above = "reset", None  # what the stream lost may be below the floor
        else:
            reason, above = "safety net", self._floor
        return CatchUpPass(resets, since, above, upto, reason)

    def read(self, count: int, resets: int) -> list[Event]:
        """The next batch of unhandled outbox events (as `Event`s without a carrier position:
        they never move the stream position in the checkpoint)."""
        if self.current is None or resets != self.current.resets:
            self.current = self._begin(resets)  # a reset during a pass begins it again
        step = self.current
        query = catch_up_query(self.spec, step.since, step.above_id, count)
        with reading(self._service) as conn:
            rows = list(conn.execute(query).mappings())
        step.events += len(rows)
        return [replace(outbox_event(row), message_id="") for row in rows]

    def finished(self) -> CatchUpPass | None:
        """The current pass has read everything: schedule the next; returns the pass."""
        step, self.current = self.current, None
        if step is None:
            return None
        self._resets = step.resets
        self._floor = max(self._floor or 0, step.upto_id - self.lookback_ids)
        self._next_at = self._clock() + self.every
        self.passes += 1
        return step
