"""Payment events: what the service publishes on every change, and how to consume them.

Every change to a payment writes one `outbox` row in the same transaction as the change
(`record_event`), so an event exists if and only if its change committed. The relay
(`relay.py`: a task in the app, or `python -m services.payment relay`) publishes unpublished rows
in outbox-id order, then marks them published. Delivery is AT-LEAST-ONCE: a consumer dedupes by
`event_id`, or applies with a guard on `row_version` (never apply a version older than the one
it holds). Events of one payment are published in the order they happened (each change locks
the payment's row, so a later change's outbox id is always larger, and one relay publishes at a
time, by lease); events of different payments may interleave.

Where: a Redis Stream (key `PAYMENT_EVENTS_STREAM`, default "payment:events", capped with
`XADD MAXLEN ~ PAYMENT_EVENTS_MAXLEN`, default 100,000: a consumer group lagging further behind
than that loses the oldest entries). Consumers use consumer groups (`RedisSubscriber`): every
group gets every event; consumers within a group share them. Without Redis the in-process
`InProcessBus` delivers the same `Event`s to subscribers in the same process and event loop,
through the same `Subscriber` interface (groups subscribed before the event was published).

Stream entry fields (all strings):

    event_id     uuid4, unique per event (the dedupe key)
    type         one of EVENT_TYPES below
    payment_id   the payment's id (decimal)
    row_version  the payment's row_version after this change (decimal)
    occurred_at  when the change was made, ISO 8601 UTC
    payload      JSON object: the payment exactly as GET /api/v1/payments/{id} answers it
                 (money as "49.90" strings, timestamps ISO 8601 UTC), plus `refund_reason`,
                 `row_version` and `origin` ("service" or "legacy")

Types:

    payment.created   created and approved; payload.status is "authorized" or "captured"
    payment.failed    created and declined by the gateway; status "failed", failure_code set
    payment.captured  an authorized payment was captured
    payment.refunded  a refund, partial ("partially_refunded") or full ("refunded");
                      refunded_amount is the running total, refund_reason the latest reason
    payment.voided    an authorized payment was voided (the monolith voids when its order is
                      cancelled; recorded by the sync with origin "legacy")
    payment.synced    any other change copied from the monolith by the sync (origin "legacy")

Loop prevention: events whose payload origin is "legacy" describe changes that came FROM the
monolith; the to-legacy consumer skips them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.orm import Session

from services.payment.db import utcnow
from services.payment.models import OutboxEvent, Payment
from services.payment.schemas import PaymentOut

if TYPE_CHECKING:
    from redis.asyncio import Redis

CREATED = "payment.created"
FAILED = "payment.failed"
CAPTURED = "payment.captured"
REFUNDED = "payment.refunded"
VOIDED = "payment.voided"
SYNCED = "payment.synced"
EVENT_TYPES = (CREATED, FAILED, CAPTURED, REFUNDED, VOIDED, SYNCED)


def payment_payload(payment: Payment) -> dict[str, Any]:
    """The event payload: the API's JSON of the payment plus refund_reason, row_version, origin."""
    body = PaymentOut.model_validate(payment, from_attributes=True).model_dump(mode="json")
    body["refund_reason"] = payment.refund_reason
    body["row_version"] = payment.row_version
    body["origin"] = payment.origin
    return body


def record_event(
    session: Session, payment: Payment, event_type: str, at: datetime | None = None
) -> OutboxEvent:
    """Add the outbox row for a change to `payment` (call after setting its final state, in the
    transaction that makes the change)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    row = OutboxEvent(
        event_id=str(uuid.uuid4()),
        aggregate_id=payment.id,
        event_type=event_type,
        row_version=payment.row_version,
        payload=json.dumps(payment_payload(payment), separators=(",", ":")),
        created_at=at or utcnow(),
    )
    session.add(row)
    return row


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Event:
    """One published payment event (see the module header for the fields)."""

    event_id: str
    type: str
    payment_id: int
    row_version: int
    occurred_at: str
    payload: dict[str, Any]
    # Where it came from: the Redis Stream entry id, or the in-process bus's sequence number.
    message_id: str = ""

    @classmethod
    def from_outbox(cls, row: OutboxEvent) -> Event:
        return cls(
            event_id=row.event_id,
            type=row.event_type,
            payment_id=row.aggregate_id,
            row_version=row.row_version,
            occurred_at=row.created_at.isoformat().replace("+00:00", "Z"),
            payload=json.loads(row.payload),
        )

    def fields(self) -> dict[str, str]:
        """The Redis Stream entry's fields."""
        return {
            "event_id": self.event_id,
            "type": self.type,
            "payment_id": str(self.payment_id),
            "row_version": str(self.row_version),
            "occurred_at": self.occurred_at,
            "payload": json.dumps(self.payload, separators=(",", ":")),
        }

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any], message_id: bytes | str = "") -> Event:
        """Parse a stream entry's fields (bytes or str keys and values, as redis-py returns)."""
        values = {_text(k): _text(v) for k, v in fields.items()}
        return cls(
            event_id=values["event_id"],
            type=values["type"],
            payment_id=int(values["payment_id"]),
            row_version=int(values["row_version"]),
            occurred_at=values.get("occurred_at", ""),
            payload=json.loads(values["payload"]),
            message_id=_text(message_id),
        )


class Publisher(Protocol):
    """Where the relay sends events, in order. Raising means "not published, try again"."""

    async def publish(self, events: Sequence[Event]) -> None: ...

    async def close(self) -> None: ...


class Subscriber(Protocol):
    """One consumer of one consumer group. At-least-once: `ack` what was handled; what is not
    acked is delivered again (to this consumer after a restart, or to another after it idles)."""

    async def read(self, count: int = 100, block_ms: int = 1000) -> list[Event]: ...

    async def ack(self, *events: Event) -> None: ...

    async def close(self) -> None: ...


async def consume(
    subscriber: Subscriber,
    handle: Callable[[Event], Awaitable[None]],
    stop: asyncio.Event,
    *,
    count: int = 100,
    block_ms: int = 1000,
) -> None:
    """Handle events until `stop` is set, acking each one its handler returned from.

    A handler that raises leaves its event unacked (delivered again later) and stops this call
    with the error: the caller decides whether to restart, back off or give up.
    """
    while not stop.is_set():
        for event in await subscriber.read(count=count, block_ms=block_ms):
            await handle(event)
            await subscriber.ack(event)


# --- in-process -------------------------------------------------------------------------------
@dataclass
class _Group:
    queue: deque[Event] = field(default_factory=deque)
    pending: dict[str, tuple[Event, float]] = field(default_factory=dict)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)


class InProcessBus:
    """Delivers events to in-process subscribers, one queue per consumer group (no Redis).

    Events live in memory only: a group sees what was published after it subscribed, and
    nothing survives the process. Use within one event loop.
    """

    def __init__(self, claim_idle_seconds: float = 30.0) -> None:
        self._groups: dict[str, _Group] = {}
        self._sequence = 0
        self.claim_idle_seconds = claim_idle_seconds

    def subscribe(self, group: str) -> InProcessSubscriber:
        return InProcessSubscriber(self, self._groups.setdefault(group, _Group()))

    async def publish(self, events: Sequence[Event]) -> None:
        for event in events:
            self._sequence += 1
            message = Event(**{**event.__dict__, "message_id": f"{self._sequence}-0"})
            for group in self._groups.values():
                group.queue.append(message)
                group.wakeup.set()

    async def close(self) -> None:
        return None


class InProcessSubscriber:
    """`Subscriber` over an `InProcessBus` group."""

    def __init__(self, bus: InProcessBus, group: _Group) -> None:
        self._bus = bus
        self._group = group

    def _stale(self) -> list[Event]:
        cutoff = time.monotonic() - self._bus.claim_idle_seconds
        return [event for event, at in self._group.pending.values() if at <= cutoff]

    async def read(self, count: int = 100, block_ms: int = 1000) -> list[Event]:
        deadline = time.monotonic() + block_ms / 1000
        group = self._group
        while True:
            batch = self._stale()[:count]
            while group.queue and len(batch) < count:
                batch.append(group.queue.popleft())
            if batch:
                now = time.monotonic()
                for event in batch:
                    group.pending[event.message_id] = (event, now)
                return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            group.wakeup.clear()
            try:
                await asyncio.wait_for(group.wakeup.wait(), remaining)
            except TimeoutError:
                return []

    async def ack(self, *events: Event) -> None:
        for event in events:
            self._group.pending.pop(event.message_id, None)

    async def close(self) -> None:
        return None


# --- Redis Streams ----------------------------------------------------------------------------
def redis_client(url: str, *, block_ms: int = 0) -> Redis:
    """An asyncio Redis client with short timeouts (a read may block `block_ms` on XREADGROUP)."""
    from redis.asyncio import Redis

    return Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=2.0 + block_ms / 1000,
        health_check_interval=30,
    )


class RedisPublisher:
    """XADDs events to one stream, capped with `MAXLEN ~ maxlen`, in one pipeline per batch.

    A publish either returns (every event is in the stream) or raises (some may be: the relay
    publishes the batch again, at-least-once). It never takes longer than `timeout` seconds,
    whatever redis-py's own retries would do: the relay's lease (10 s, renewed every ~3 s)
    must outlast a publish. After a failure the connection pool is dropped, so the next publish
    connects afresh to a restarted Redis instead of trying the old sockets first.
    """

    def __init__(
        self, client: Redis, stream: str, maxlen: int = 100_000, *, timeout: float = 5.0
    ) -> None:
        self._client = client
        self.stream = stream
        self.maxlen = maxlen
        self.timeout = timeout

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        try:
            async with asyncio.timeout(self.timeout):
                async with self._client.pipeline(transaction=False) as pipe:
                    for event in events:
                        pipe.xadd(
                            self.stream,
                            event.fields(),  # type: ignore[arg-type]
                            maxlen=self.maxlen,
                            approximate=True,
                        )
                    await pipe.execute()
        except Exception:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.connection_pool.disconnect(), 1.0)
            raise

    async def close(self) -> None:
        await self._client.aclose()


class RedisSubscriber:
    """One consumer of a consumer group on the payment stream (XREADGROUP / XACK / XAUTOCLAIM).

    On its first reads it gets its own unacked entries back (a restart resumes where it was);
    every `claim_idle_ms / 2` it claims entries another consumer of its group has held unacked
    for longer than `claim_idle_ms` (that consumer died). The group is created on first use,
    from `start` ("0": the whole stream; "$": only new entries).
    """

    def __init__(
        self,
        client: Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        claim_idle_ms: int = 30_000,
        start: str = "0",
    ) -> None:
        self._client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self._start = start
        self._ready = False
        self._own_backlog = True
        self._next_claim = 0.0

    async def _ensure_group(self) -> None:
        if self._ready:
            return
        from redis.exceptions import ResponseError

        try:
            await self._client.xgroup_create(self.stream, self.group, id=self._start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._ready = True

    def _events(self, entries: Sequence[Any]) -> tuple[list[Event], list[str]]:
        events, gone = [], []
        for message_id, fields in entries:
            if not fields:  # trimmed by MAXLEN while pending: nothing left to deliver
                gone.append(_text(message_id))
                continue
            events.append(Event.from_fields(fields, message_id))
        return events, gone

    async def _claim_stale(self, count: int) -> list[Event]:
        now = time.monotonic()
        if now < self._next_claim:
            return []
        self._next_claim = now + self.claim_idle_ms / 2000
        answer: Any = await self._client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count
        )
        events, gone = self._events(answer[1])
        gone += [_text(m) for m in (answer[2] if len(answer) > 2 else [])]
        if gone:
            await self._client.xack(self.stream, self.group, *gone)
        return events

    async def read(self, count: int = 100, block_ms: int = 1000) -> list[Event]:
        await self._ensure_group()
        if self._own_backlog:
            answer: Any = await self._client.xreadgroup(
                self.group, self.consumer, {self.stream: "0"}, count=count
            )
            events, gone = self._events(answer[0][1] if answer else [])
            if gone:
                await self._client.xack(self.stream, self.group, *gone)
            if events or gone:
                return events
            self._own_backlog = False
        claimed = await self._claim_stale(count)
        if claimed:
            return claimed
        fresh: Any = await self._client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return self._events(fresh[0][1] if fresh else [])[0]

    async def ack(self, *events: Event) -> None:
        if events:
            await self._client.xack(self.stream, self.group, *(e.message_id for e in events))

    async def close(self) -> None:
        await self._client.aclose()
