"""Who is calling: the caller's bearer token, checked by the monolith (`GET /api/v1/users/me`).

A token the monolith accepted is remembered for `ttl` seconds (30 by default) in a bounded LRU
keyed by the token's SHA-256, so a burst of payment calls costs one round trip to the monolith.
Refusals are never cached (a user who just logged in must not wait for an entry to expire); the
price is that a logout reaches this service up to `ttl` seconds late.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from services.payment.errors import unauthorized
from services.payment.legacy import REFUSED_DETAIL, LegacyClient


@dataclass(frozen=True)
class Caller:
    id: int
    role: str
    token: str

    @property
    def is_staff(self) -> bool:
        return self.role == "staff"


class AuthCache:
    """A thread-safe LRU of recently accepted tokens with a time to live."""

    def __init__(self, ttl: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[float, int, str]] = OrderedDict()

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, token: str) -> tuple[int, str] | None:
        key = self._key(token)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, user_id, role = entry
            if expires <= self._clock():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return user_id, role

    def put(self, token: str, user_id: int, role: str) -> None:
        if self._ttl <= 0:
            return
        key = self._key(token)
        with self._lock:
            self._entries[key] = (self._clock() + self._ttl, user_id, role)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class Authenticator:
    def __init__(self, legacy: LegacyClient, cache: AuthCache) -> None:
        self._legacy = legacy
        self._cache = cache

    def caller(self, token: str) -> Caller:
        """The caller behind `token`, or the monolith's 401 when it refuses the token."""
        known = self._cache.get(token)
        if known is not None:
            return Caller(known[0], known[1], token)
        user = self._legacy.whoami(token)
        if user is None:
            raise unauthorized(REFUSED_DETAIL)
        self._cache.put(token, user.id, user.role)
        return Caller(user.id, user.role, token)
