"""Read-your-writes pins (pure): after a write by a key on a route, that key's requests on the
route go to the upstream that took the write until the pin expires, whatever the weights say
meanwhile (a flip, a rollback). The window is the route's `pin` (10s by default): longer than
the data sync's lag, so the other arm has the write by the time the user is moved to it.

A pin names its upstream, not an arm of the split: it holds across a rollback to `to:` (the
very case it exists for), and is ignored once that upstream is gone from the table. Keys are
kept as BLAKE2b digests (a key may be a bearer token; pins travel between replicas). Times are
wall-clock seconds, since pins cross machines. The board is bounded: over `limit` pins, expired
ones go first, then the 1 % closest to expiry.
"""

from __future__ import annotations

import hashlib
import heapq

PinKey = tuple[str, bytes]  # route name, key digest


def digest(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=16).digest()


class Pins:
    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._pins: dict[PinKey, tuple[str, float]] = {}

    def __len__(self) -> int:
        return len(self._pins)

    def __bool__(self) -> bool:
        return bool(self._pins)

    def get(self, route: str, key: bytes, now: float) -> str | None:
        """The upstream `key` (a digest) is pinned to on `route`, if a pin is live."""
        found = self._pins.get((route, key))
        if found is None:
            return None
        if found[1] <= now:
            del self._pins[(route, key)]
            return None
        return found[0]

    def put(self, route: str, key: bytes, upstream: str, until: float, now: float) -> bool:
        """Pin `key` on `route` to `upstream` until `until`; False when it has expired, or a pin
        to the same upstream lasting at least as long is already there (nothing to tell other
        replicas)."""
        if until <= now:
            return False  # expired on its way here
        found = self._pins.get((route, key))
        if found is not None and found[0] == upstream and found[1] >= until:
            return False
        if found is None and len(self._pins) >= self.limit:
            self._make_room(now)
        self._pins[(route, key)] = (upstream, until)
        return True

    def prune(self, now: float) -> int:
        expired = [pin for pin, (_, until) in self._pins.items() if until <= now]
        for pin in expired:
            del self._pins[pin]
        return len(expired)

    def live(self, now: float) -> dict[str, int]:
        """Live pins per route (for metrics and status)."""
        counts: dict[str, int] = {}
        for (route, _), (_, until) in self._pins.items():
            if until > now:
                counts[route] = counts.get(route, 0) + 1
        return counts

    def _make_room(self, now: float) -> None:
        if self.prune(now):
            return
        for pin in heapq.nsmallest(
            max(1, self.limit // 100), self._pins, key=lambda pin: self._pins[pin][1]
        ):
            del self._pins[pin]
