"""The answer cache: each GET's rendered body and ETag, in process, keyed by path and the
validated (normalised) query, so `in_stock=1` and `in_stock=true` share an entry.

Every entry is tagged with the read model's version (`catalog_projection.batches`, which every
projection hook moves in its own transaction: `projection.py`, `reads.projection_version`).

Rules:
- A miss reads the version FIRST, then the answer, in one transaction (`api.Catalog.answer`),
  and tags the answer with it: the answer is then at least as new as its tag, never older. On
  SQLite (a WAL snapshot from the first read) and PostgreSQL (REPEATABLE READ) the two reads
  are one snapshot, so the answer is exactly the tag's; under READ COMMITTED (Oracle here, or
  PostgreSQL's default) each statement has its own snapshot and a commit between the two would
  make the answer newer than its tag, which costs a later miss, never a stale hit. Read the
  other way round, an answer could be older than its tag and pass the check below.
- `put` never replaces an entry with an older one: it keeps the answer only if its version is
  >= the one already held for the key (unexpired). So two requests that missed around a sync's
  commit cannot leave the older answer in place of the newer one a client has already seen.
- While the invalidation consumer is connected (`invalidation.py` calls `connected()` after
  each good read of the stream and `disconnected()` on an outage), a hit is answered from
  memory, no database round trip, and any event clears the cache whole (a list depends on many
  rows, and which lists a product is in is the question the cache exists not to ask). An answer
  may then be served after its data changed for as long as the change's event takes: the outbox
  relay's interval (0.25 s by default), at most the TTL.
- Without it (no Redis configured, an outage, or before the first read), a hit is served only
  if its version equals the read model's current one, read by `current_version`: one
  primary-key SELECT of a one-row table, outside a transaction (`db.single`), about 0.06 ms on
  SQLite (in process, mostly SQLAlchemy's own) and on PostgreSQL one round trip plus the
  pool's ping at checkout (0.2-0.35 ms measured on one loaded 2-core machine), where a miss
  runs the version, count and page queries in a transaction. Another version is a miss. Equal
  versions mean no projection committed since the answer's version was read (its reads came
  after), so a hit is exactly as fresh as the read model: the events only spare the round trip.
- Connecting clears the cache (what happened while disconnected may have no event to come: a
  new consumer group starts at the stream's end); disconnecting keeps it (its hits are checked
  from then on).
- An entry also expires after `ttl` seconds (0: no cache): the upper bound, for a change whose
  event is not published yet, a change that has none (a view written by hand, outside a hook)
  or an outage not yet detected (a blocked read notices a silent network loss only at its
  socket timeout).
- A request that read the database before a clear must not store what it read after the clear:
  `generation()` is taken before the read and `put` drops a value from an older generation.
- At most `max_entries` entries (oldest stored dropped first); one lock, held for dict
  operations only (never across the version read).
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


@dataclass(frozen=True)
class Entry:
    expires: float
    version: int
    value: Rendered


class AnswerCache:
    """See the module docstring."""

    def __init__(
        self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0
        self._listening = False
        self.hits = 0  # answered from the cache (checked or not)
        self.checks = 0  # current versions read (by hits that were not listening)
        self.clears = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    @property
    def listening(self) -> bool:
        """The invalidation consumer is connected: hits are served unchecked."""
        return self._listening and self.enabled

    def generation(self) -> int:
        return self._generation

    def get(self, key: str, current_version: Callable[[], int]) -> Rendered | None:
        """The entry of `key` when it may be served (module docstring), else None."""
        if not self.enabled:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires <= self.clock():
                del self._entries[key]
                return None
            if self._listening:
                self.hits += 1
                return entry.value
        current = current_version()
        with self._lock:
            self.checks += 1
            if current != entry.version:
                return None
            self.hits += 1
        return entry.value

    def put(self, key: str, value: Rendered, version: int, generation: int) -> None:
        """Keep `value`, read at `version` (or later) in `generation`, unless the key holds a
        newer entry or the cache was cleared since (module docstring)."""
        if not self.enabled:
            return
        with self._lock:
            if generation != self._generation:
                return
            now = self.clock()
            held = self._entries.get(key)
            if held is not None and held.version > version and held.expires > now:
                return
            self._entries[key] = Entry(now + self.ttl, version, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()
            self.clears += 1

    def connected(self) -> None:
        if not self._listening:
            self.clear()
            self._listening = True

    def disconnected(self) -> None:
        self._listening = False

    def __len__(self) -> int:
        return len(self._entries)
