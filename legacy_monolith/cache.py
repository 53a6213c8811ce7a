"""Cache-aside for catalog reads: Redis when configured, an in-process LRU otherwise.

Rules:
- Readers call `get_or_load(key, loader)`; writers call `invalidate(...)` after committing.
- List and search answers live under a generation number; a catalog write bumps it, so every
  cached list is dropped at once without scanning keys.
- A Redis outage degrades to uncached reads, never to errors: after a failure Redis is skipped
  for `retry_seconds` so requests do not each wait for a connect timeout.
- Entries expire after `ttl_seconds` even if an invalidation was lost while Redis was down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

log = logging.getLogger("legacy_monolith.cache")


class CacheUnavailable(Exception):
    """The backend could not be reached; callers carry on without the cache."""


class Backend(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, value: bytes, ttl: float) -> None: ...
    def delete(self, *keys: str) -> None: ...
    def incr(self, key: str) -> int: ...
    def close(self) -> None: ...


class MemoryBackend:
    """A bounded, thread-safe LRU with per-entry expiry (the embedded default)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._counters: dict[str, int] = {}
        self._lock = threading.Lock()
        self._max = max_entries

    def get(self, key: str) -> bytes | None:
        with self._lock:
            if key in self._counters:
                return str(self._counters[key]).encode()
            item = self._data.get(key)
            if item is None:
                return None
            expires, value = item
            if expires < time.monotonic():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return value

    def set(self, key: str, value: bytes, ttl: float) -> None:
        with self._lock:
            self._data[key] = (time.monotonic() + ttl, value)
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)

    def delete(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._data.pop(key, None)
                self._counters.pop(key, None)

    def incr(self, key: str) -> int:
        """Like Redis INCR: a counter readable with `get`, never evicted by the LRU."""
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + 1
            return self._counters[key]

    def close(self) -> None:
        with self._lock:
            self._data.clear()


class RedisBackend:
    """Redis through redis-py's blocking client (the monolith's handlers run in threads)."""

    def __init__(self, url: str, timeout: float = 0.25) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "a Redis URL needs the redis extra: pip install strangler[redis]"
            ) from exc
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
        )

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise CacheUnavailable(str(exc)) from exc

    def get(self, key: str) -> bytes | None:
        value = self._call(self._client.get, key)
        return value if value is None else bytes(value)

    def set(self, key: str, value: bytes, ttl: float) -> None:
        self._call(self._client.set, key, value, px=max(1, int(ttl * 1000)))

    def delete(self, *keys: str) -> None:
        if keys:
            self._call(self._client.delete, *keys)

    def incr(self, key: str) -> int:
        return int(self._call(self._client.incr, key))

    def close(self) -> None:
        self._client.close()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


class Cache:
    """Cache-aside with outage tolerance; see the module rules."""

    def __init__(
        self, backend: Backend, *, prefix: str, ttl_seconds: float, retry_seconds: float = 5.0
    ) -> None:
        self.backend = backend
        self.prefix = prefix
        self.ttl = ttl_seconds
        self.retry_seconds = retry_seconds
        self.stats = CacheStats()
        self._down_until = 0.0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _guard(self, fn: Callable[[], Any]) -> Any:
        if not self.available:
            return None
        try:
            return fn()
        except CacheUnavailable as exc:
            self.stats.count("errors")
            self._down_until = time.monotonic() + self.retry_seconds
            log.warning(
                "cache unavailable, serving uncached for %.1fs: %s", self.retry_seconds, exc
            )
            return None

    def generation(self, namespace: str) -> int:
        raw = self._guard(lambda: self.backend.get(self.prefix + namespace + ":gen"))
        return int(raw) if raw else 0

    def get_or_load(self, key: str, loader: Callable[[], bytes]) -> bytes:
        full = self.prefix + key
        cached = self._guard(lambda: self.backend.get(full))
        if cached is not None:
            self.stats.count("hits")
            return bytes(cached)
        self.stats.count("misses")
        value = loader()
        self._guard(lambda: self.backend.set(full, value, self.ttl))
        return value

    def invalidate(self, keys: tuple[str, ...] = (), bump: tuple[str, ...] = ()) -> None:
        """Drop `keys` and start a new generation of each namespace in `bump`."""
        if keys:
            self._guard(lambda: self.backend.delete(*(self.prefix + k for k in keys)))
        for namespace in bump:
            self._guard(partial(self.backend.incr, self.prefix + namespace + ":gen"))

    def close(self) -> None:
        self.backend.close()


class NullBackend:
    """No cache at all (see Settings.cache_enabled)."""

    def get(self, key: str) -> bytes | None:
        return None

    def set(self, key: str, value: bytes, ttl: float) -> None:
        return None

    def delete(self, *keys: str) -> None:
        return None

    def incr(self, key: str) -> int:
        return 0

    def close(self) -> None:
        return None


def make_cache(
    redis_url: str | None,
    *,
    prefix: str,
    ttl_seconds: float,
    retry_seconds: float,
    enabled: bool = True,
) -> Cache:
    backend: Backend
    if not enabled:
        backend = NullBackend()
    elif redis_url:
        backend = RedisBackend(redis_url)
    else:
        backend = MemoryBackend()
    return Cache(backend, prefix=prefix, ttl_seconds=ttl_seconds, retry_seconds=retry_seconds)
