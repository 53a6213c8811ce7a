"""How a replica follows the shared Redis store (`RedisStore.watch`): each newer version, once it
loads, for the data plane to serve.

- The store's channel for speed, a read of its pointer for safety: a subscription can be lost
  without notice (a failover, a `CLIENT KILL`, a NAT dropping an idle connection), so the pointer
  is read again at every message and at least every poll interval, and at once when Redis
  answers again after an outage (the follower reconnects for ever, saying so once).
- Only forward: a pointer older than the served version (the store lost its data and was seeded
  again) is refused, said once, and the served version is put back from the replica's
  last-known-good file, so the fleet and the next commits continue from it instead of a split
  fleet whose commits are ignored (etcd's watch is the precedent: a follower resumes from the
  revision it has, never an older one).
- A version that does not load here is refused and said once with its problems; one the pointer
  names but that cannot be read (not yet, or evicted: Redis must run with
  maxmemory-policy noeviction) is said once and read again at the next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from proxy.store.base import Version, VersionInfo
from proxy.store.redis import RESTORE, describe, table_of
from proxy.table.edit import stated_version
from proxy.table.loader import TableInvalid

log = logging.getLogger("strangler")
FIELDS = ("text", "table", "author", "time", "reason", "sha256")  # of a version's hash


class RedisWatch:
    """`changes()` yields each version newer than `served()` once it loads; `ready` is set once
    the channel is subscribed and the pointer was read."""

    source = "the store"

    def __init__(
        self,
        url: str,
        prefix: str,
        served: Callable[[], int],
        every: float,
        last_good: Path | None = None,
    ) -> None:
        self.url, self.prefix, self.served, self.every = url, prefix, served, every
        self.last_good = last_good
        self.ready = asyncio.Event()
        self._refused: set[int] = set()  # older than the served one, or does not load
        self._missing: set[int] = set()  # named by the pointer but unreadable: said once

    async def changes(self) -> AsyncGenerator[Version, None]:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        where = describe(self.url)
        client = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        down = False
        try:
            while True:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(self.prefix + "changes")
                    while True:
                        version = await self._catch_up(client)
                        if version is not None:
                            yield version
                        self.ready.set()
                        if down:
                            down = False
                            log.warning(
                                "route store %s reconnected; serving version %s",
                                where,
                                self.served(),
                            )
                        await pubsub.get_message(timeout=self.every)  # a change, or time's up
                except (RedisError, OSError) as exc:
                    if not down:
                        down = True
                        log.warning(
                            "route store %s: connection lost (%s); reconnecting, still serving "
                            "version %s",
                            where,
                            exc,
                            self.served(),
                        )
                    await asyncio.sleep(self.every)
                except Exception:  # the follower must outlive any one bad version
                    log.exception("route store follower failed; retrying")
                    await asyncio.sleep(self.every)
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
        finally:
            await client.aclose()

    async def _catch_up(self, client: Any) -> Version | None:
        """The store's current version if it is newer than the served one and loads."""
        raw = await client.get(self.prefix + "current")
        number = int(raw) if raw is not None else 0
        served = self.served()
        if number == served or number in self._refused:
            return None
        if number < served:
            self._refused.add(number)
            restored = await self._restore(client, served)
            log.warning(
                "route store says version %s, older than the served version %s (its data was "
                "lost?); keeping version %s%s",
                number,
                served,
                served,
                " and restoring it to the store" if restored else "",
            )
            return None
        text, *fields = await client.hmget(f"{self.prefix}v:{number}", *FIELDS)
        if text is None:
            if number not in self._missing:
                self._missing.add(number)
                log.warning(
                    "route store points at version %s but it cannot be read; still serving "
                    "version %s",
                    number,
                    served,
                )
            return None
        try:
            version = await asyncio.to_thread(_version_of, number, text, fields)
        except TableInvalid as exc:
            self._refused.add(number)
            log.error(
                "route table version %s refused, still serving version %s:\n%s",
                number,
                served,
                exc.describe(),
            )
            return None
        return version if number > self.served() else None  # a newer one was served meanwhile

    async def _restore(self, client: Any, served: int) -> bool:
        """Put the served version back in a store that went behind it, from the last-known-good
        file when that holds the served version: whether it did (not when the store caught up
        meanwhile)."""
        if self.last_good is None:
            return False
        try:
            text = self.last_good.read_text(encoding="utf-8")
        except OSError:
            return False
        if stated_version(text) != served:
            return False
        sha = hashlib.sha256(text.encode()).hexdigest()
        prefix = self.prefix
        keys = [prefix + "current", f"{prefix}v:{served}", prefix + "changes"]
        args = [served, text, "replica", round(time.time(), 3), "restored by a replica", sha]
        return bool(await client.eval(RESTORE, 3, *keys, *args))


def _version_of(number: int, text: bytes, fields: list[bytes | None]) -> Version:
    """A version as its hash holds it (one a replica restored has no compiled table: its text
    is parsed)."""
    compiled, author, at, reason, sha = fields
    decoded = text.decode()
    info = VersionInfo(
        number,
        author.decode() if author is not None else "",
        float(at) if at is not None else 0.0,
        reason.decode() if reason is not None else "",
        sha.decode() if sha is not None else hashlib.sha256(text).hexdigest(),
    )
    return Version(info, decoded, table_of(compiled, decoded, number))
