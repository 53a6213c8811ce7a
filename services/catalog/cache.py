"""The answer cache: each GET's rendered body and ETag, in process, keyed by path and the
validated (normalised) query, so `in_stock=1` and `in_stock=true` share an entry.

Rules:
- It serves only while the invalidation consumer is connected (`invalidation.py` calls
  `connected()` after each good read of the stream and `disconnected()` on an outage): with no
  Redis configured, or the event channel down, every request reads the read model: an answer is
  never served stale because the channel that would have cleared it is gone. Going either way
  clears it (events missed meanwhile cannot be trusted to arrive).
- Any event clears it whole: a list depends on many rows, and which lists a product is in is
  the question the cache exists not to ask.
- An entry also expires after `ttl` seconds: the second bound, for a change whose event is not
  published yet (the outbox relay's interval), a change that has none (a backfill records no
  events) or an outage not yet detected (a blocked read notices a silent network loss only at
  its socket timeout).
- A request that read the database before a clear must not store what it read after the clear:
  `generation()` is taken before the read and `put` drops a value from an older generation.
- At most `max_entries` entries (oldest dropped first); one lock, held for dict operations only.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rendered:
    body: bytes
    etag: str


class AnswerCache:
    """See the module docstring."""

    def __init__(
        self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, Rendered]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0
        self._active = False
        self.hits = 0
        self.clears = 0

    @property
    def active(self) -> bool:
        return self._active and self.ttl > 0

    def generation(self) -> int:
        return self._generation

    def get(self, key: str) -> Rendered | None:
        if not self.active:
            return None
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            expires, value = found
            if expires <= self.clock():
                del self._entries[key]
                return None
            self.hits += 1
            return value

    def put(self, key: str, value: Rendered, generation: int) -> None:
        if not self.active:
            return
        with self._lock:
            if generation != self._generation:
                return
            self._entries[key] = (self.clock() + self.ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self.clears += 1

    def connected(self) -> None:
        if not self._active:
            self.clear()
            self._active = True

    def disconnected(self) -> None:
        if self._active:
            self._active = False
            self.clear()

    def __len__(self) -> int:
        return len(self._entries)
