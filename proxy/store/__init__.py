"""Versioned route tables: every change is a new immutable version with author, time and
reason; the current one is what the proxies serve."""

from __future__ import annotations

from pathlib import Path

from proxy.store.base import RouteStore, StoreError

__all__ = ["open_store"]


def open_store(store: str, routes: Path | None, prefix: str = "strangler:routes:") -> RouteStore:
    """The file store for `routes` ("file"), or the Redis store at a redis:// URL (seeded from
    `routes` when it is empty)."""
    if store == "file":
        if routes is None:
            raise StoreError("the file store needs a routes file (--routes FILE)")
        from proxy.store.file import FileStore

        return FileStore(routes)
    from proxy.store.redis import RedisStore

    return RedisStore(store, prefix, seed=routes)
