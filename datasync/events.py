"""The service's change events as the to-legacy job reads them, whatever carries them.

An `Event` is one change of one row: `key` is the row's key, `version` the service's version
column after the change, `payload` the row's fields by SERVICE name plus `origin` and
`row_version` (see `spec.EventSource`). Delivery is at-least-once: the consumer dedupes by
`event_id` and never applies a version older than one it applied (`to_legacy.py`).

A `Subscriber` is anything that reads, acknowledges and closes, as a consumer group does
(Redis Streams' XREADGROUP / XACK): the declared outbox table (`sources.OutboxSubscriber`), a
Redis Stream (`stream.StreamSubscriber`), or a service's own in-process bus through
`Converting`, which maps another event shape onto this one and acknowledges the originals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Event:
    """One change event (see the module docstring)."""

    event_id: str
    type: str
    key: int
    version: int
    occurred_at: str  # ISO 8601 UTC, '' when unknown
    payload: dict[str, Any]
    message_id: str = ""  # the carrier's position: a stream entry id, an outbox id


class Subscriber(Protocol):
    """A source of events with consumer-group semantics: what is read stays pending until
    acknowledged, and is delivered again after a crash."""

    async def read(self, count: int = 100, block_ms: int = 1000) -> list[Event]: ...

    async def ack(self, *events: Event) -> None: ...

    async def close(self) -> None: ...


class Foreign(Protocol):
    """A subscriber of some other event type (a service's own bus)."""

    async def read(self, count: int = 100, block_ms: int = 1000) -> list[Any]: ...

    async def ack(self, *events: Any) -> None: ...

    async def close(self) -> None: ...


class Converting:
    """A `Subscriber` over a `Foreign` one: each event read is converted by `convert`, and
    acknowledging a converted event acknowledges its original."""

    def __init__(self, inner: Foreign, convert: Callable[[Any], Event]) -> None:
        self.inner = inner
        self.convert = convert
        self._originals: dict[str, Any] = {}

    async def read(self, count: int = 100, block_ms: int = 1000) -> list[Event]:
        originals = await self.inner.read(count=count, block_ms=block_ms)
        events = []
        for original in originals:
            event = self.convert(original)
            self._originals[event.event_id] = original
            events.append(event)
        return events

    async def ack(self, *events: Event) -> None:
        originals = [
            self._originals.pop(e.event_id) for e in events if e.event_id in self._originals
        ]
        if originals:
            await self.inner.ack(*originals)

    async def close(self) -> None:
        await self.inner.close()
