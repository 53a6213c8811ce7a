"""Read-your-writes pins (pure): after a write by a key on a route, that key's requests on the
route go to the upstream that took the write until the pin expires, whatever the weights say
meanwhile (a flip, a rollback). The window is the route's `pin` (10s by default): longer than
the data sync's lag, so the other arm has the write by the time the user is moved to it.

A pin names its upstream, not an arm of the split: it holds across a rollback to `to:` (the
very case it exists for), and is ignored once that upstream is gone from the table. Keys are
kept as BLAKE2b digests (a key may be a bearer token; pins travel between replicas). Expiry is
this process's monotonic clock: a pin from another replica arrives as a time to live, so clocks
that disagree between machines cannot shorten it. The board is bounded: over `limit` pins, the
1 % closest to expiry go first; expiry is kept in a heap, so pruning costs what expires.
"""

from __future__ import annotations

import hashlib
import heapq

PinKey = tuple[str, bytes]  # route name, key digest
MAX_TTL = 86_400.0  # the longest window a route may declare


def digest(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=16).digest()


class Pins:
    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._pins: dict[PinKey, tuple[str, float]] = {}
        self._expiry: list[tuple[float, PinKey]] = []  # may hold renewed (stale) entries
        self._per_route: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._pins)

    def __bool__(self) -> bool:
        return bool(self._pins)

    def has(self, route: str) -> bool:
        """Whether any pin (live or not yet pruned) is kept for `route`."""
        return self._per_route.get(route, 0) > 0

    def get(self, route: str, key: bytes, now: float) -> str | None:
        """The upstream `key` (a digest) is pinned to on `route`, if a pin is live."""
        found = self._pins.get((route, key))
        if found is None:
            return None
        if found[1] <= now:
            self._drop((route, key))
            return None
        return found[0]

    def put(self, route: str, key: bytes, upstream: str, until: float, now: float) -> bool:
        """Pin `key` on `route` to `upstream` until `until` (this process's monotonic time);
        False when it has expired or is no time at all, or a pin to the same upstream lasting
        at least as long is already there (nothing to tell other replicas)."""
        if not now < until <= now + MAX_TTL:  # also refuses NaN
            return False
        pin = (route, key)
        found = self._pins.get(pin)
        if found is not None and found[0] == upstream and found[1] >= until:
            return False
        if found is None:
            if len(self._pins) >= self.limit:
                self._make_room(now)
            self._per_route[route] = self._per_route.get(route, 0) + 1
        self._pins[pin] = (upstream, until)
        heapq.heappush(self._expiry, (until, pin))
        if len(self._expiry) > 4 * max(len(self._pins), 1024):
            self._compact()
        return True

    def prune(self, now: float) -> int:
        """Drop the pins expired by `now`; costs what expires, not the board's size."""
        dropped = 0
        while self._expiry and self._expiry[0][0] <= now:
            until, pin = heapq.heappop(self._expiry)
            found = self._pins.get(pin)
            if found is not None and found[1] == until:
                self._drop(pin)
                dropped += 1
        return dropped

    def live(self, now: float) -> dict[str, int]:
        """Live pins per route (for status)."""
        counts: dict[str, int] = {}
        for (route, _), (_, until) in self._pins.items():
            if until > now:
                counts[route] = counts.get(route, 0) + 1
        return counts

    def _drop(self, pin: PinKey) -> None:
        del self._pins[pin]
        left = self._per_route[pin[0]] - 1
        if left:
            self._per_route[pin[0]] = left
        else:
            del self._per_route[pin[0]]

    def _make_room(self, now: float) -> None:
        if self.prune(now):
            return
        room = max(1, self.limit // 100)
        while room and self._expiry:
            until, pin = heapq.heappop(self._expiry)
            found = self._pins.get(pin)
            if found is not None and found[1] == until:
                self._drop(pin)
                room -= 1

    def _compact(self) -> None:
        """Drop the heap's entries of renewed pins (each renewal leaves one behind)."""
        self._expiry = [(until, pin) for pin, (_, until) in self._pins.items()]
        heapq.heapify(self._expiry)
