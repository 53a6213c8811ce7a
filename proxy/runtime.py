"""What one worker holds while it serves: the current snapshot (swapped in one assignment), the
forwarder, metrics, the access log, and the watcher that follows the route store.

A new table is loaded, validated and compiled off to the side; only a table that passes is
swapped in. Requests read `runtime.snapshot` once, so one in flight finishes on the snapshot it
started with. An invalid file is refused with its problems logged; the running table stays.

With the file store the watcher checks routes.yaml; with the Redis store it listens on the
store's channel and polls the current version every `store_poll_interval` (a subscription can be
lost without notice). It only ever moves forward: a store that reports an older version than
the one served (its data was lost) is logged and ignored. Every table served from Redis is
written to the last-known-good file, which the next start uses if Redis is down then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import time
from pathlib import Path
from typing import Any

from proxy.dataplane.breaker import Guards
from proxy.dataplane.forward import Forwarder
from proxy.dataplane.pins import Pins
from proxy.observability import AccessLog, Metrics, TrafficWindow
from proxy.settings import ProxySettings
from proxy.store.base import StoreError
from proxy.store.file import atomic_write
from proxy.store.pins import RedisWire
from proxy.table.compile import Snapshot, compile_table
from proxy.table.edit import stated_version
from proxy.table.loader import TableInvalid, load_file, single_upstream

log = logging.getLogger("strangler")
SHARE_INTERVAL = 1.0
SUBSCRIBE_WAIT = 1.0  # seconds a starting worker waits for the store's channels and pins


def initial_table(settings: ProxySettings) -> Snapshot:
    if settings.store != "file":
        return _initial_from_store(settings)
    if settings.routes is not None:
        return compile_table(load_file(settings.routes))
    if settings.default_upstream:
        return compile_table(single_upstream(settings.default_upstream))
    raise TableInvalid("strangler serve", [])


def _initial_from_store(settings: ProxySettings) -> Snapshot:
    """Redis's current version; when Redis is down (or its current version does not load
    here), the last-known-good copy on disk, so a replica can start during an outage. Never the
    seed routes file: a new replica serving the day-0 table during an outage would undo every
    flip for its share of the traffic. Wrong credentials stop the start."""
    from proxy.store.redis import RedisStore, StoreUnavailable, describe

    try:
        store = RedisStore(settings.store, settings.store_prefix, seed=settings.routes)
        try:
            version = store.current()
        finally:
            store.close()
    except (StoreUnavailable, TableInvalid) as exc:
        why = exc.describe() if isinstance(exc, TableInvalid) else str(exc)
        cache = settings.store_cache
        if not cache.exists():
            raise StoreError(
                f"{why}; and there is no last-known-good table at {cache} to start from"
            ) from None
        table = load_file(cache)
        log.warning(
            "route store %s: %s; serving version %s from %s until it answers",
            describe(settings.store),
            why,
            table.version,
            cache,
        )
        return compile_table(table)
    _write_cache(settings.store_cache, version.text)
    return compile_table(version.table)


def _write_cache(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
    except OSError as exc:  # serving matters more than the cache
        log.warning("could not write the last-known-good table to %s: %s", path, exc)


class Runtime:
    def __init__(self, settings: ProxySettings, snapshot: Snapshot) -> None:
        self.settings = settings
        self.snapshot = snapshot
        self.forwarder = Forwarder()
        self.metrics = Metrics()
        self.guards = Guards(self.metrics.upstream_changed)
        self.access_log = AccessLog(None, enabled=settings.access_log)
        self.in_flight = 0
        self.per_client: dict[str, int] = {}
        self._trusted = [ipaddress.ip_network(c, strict=False) for c in settings.trusted_hops]
        self._trusted_cache: dict[str, bool] = {}
        self.traffic = TrafficWindow(self.metrics)
        self._init_shadow(settings)
        self._init_access(settings, snapshot)
        self._missing: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.metrics.table_version.set(snapshot.version)

    def _init_shadow(self, settings: ProxySettings) -> None:
        """Read-your-writes pins, the shadow dispatcher and the recorder; what they share with
        other workers goes through the route store's Redis, or files and sockets beside it."""
        from proxy.shadow.dispatch import Mirror
        from proxy.shadow.recording import Recorder
        from proxy.shadow.sink import open_sink, worker_id
        from proxy.store.pins import open_wire

        self.pins = Pins()
        self.pin_wire = open_wire(self.pins, settings.store, settings.store_prefix)
        self.subscribed = asyncio.Event()  # the store's channels (and the live pins) are read
        # Pins from other workers are applied in a socket callback (Redis: store/pins.PinFeed;
        # siblings: datagrams), before any request read in the same loop turn.
        self.mirror = Mirror(self.metrics)
        self.worker = worker_id()
        self.sink = open_sink(settings.store, settings.store_prefix, settings.state_dir)
        self.recorder = Recorder(self.sink, self.worker)

    def _init_access(self, settings: ProxySettings, snapshot: Snapshot) -> None:
        """Who may call what (access/): the consumers this worker follows, the token issuers
        of the table it serves, and the rate limiter (shared through Redis when there is one)."""
        from proxy.access.gate import Gate
        from proxy.access.ratelimit import Limiter
        from proxy.store.consumers import ConsumerFollower

        self.gate = Gate(settings.credentials_grace)
        self.gate.issuers(snapshot.credentials.issuers)
        self.consumers = ConsumerFollower(settings, self.gate.use)
        self.gate.fresh = lambda: self.consumers.fresh_at
        shared = settings.rate_limit_store or (None if settings.store == "file" else settings.store)
        # Beside the route store's keys: strangler:routes: → strangler:limits:.
        prefix = settings.store_prefix.removesuffix("routes:") + "limits:"
        self.limiter = Limiter(shared, prefix, settings.workers, self.metrics)

    async def _share(self) -> None:
        """Once a second: this worker's shadow tallies to the sink, the recorder's turn, and
        expired pins out."""
        while True:
            await asyncio.sleep(SHARE_INTERVAL)
            try:
                self.pins.prune(time.monotonic())
                await self.recorder.tick()
                if self.mirror.tallies:  # every turn: a put is also how a reset is learned
                    await self._share_tallies()
            except Exception:  # the sink is down: serving goes on, the next turn retries
                log.debug("shadow sharing failed", exc_info=True)

    async def _share_tallies(self) -> None:
        """This worker's tallies to the sink; the routes whose report was reset since are
        counted again from nothing."""
        mirror = self.mirror
        tallies = {r: t.to_dict() for r, t in mirror.tallies.items()}
        for route in await self.sink.put_tallies(self.worker, tallies):
            mirror.tallies.pop(route, None)

    def trusted(self, client: str) -> bool:
        if not self._trusted:
            return False
        known = self._trusted_cache.get(client)
        if known is None:
            try:
                address = ipaddress.ip_address(client)
                known = any(address in net for net in self._trusted)
            except ValueError:
                known = False
            if len(self._trusted_cache) < 65_536:
                self._trusted_cache[client] = known
        return known

    def origin(self, forwarded_for: str) -> str:
        """The right-most address of a trusted hop's X-Forwarded-For that is not itself a
        trusted hop: the client (addresses further left could be forged by it)."""
        for hop in reversed(forwarded_for.split(",")):
            address = hop.strip()
            if address and not self.trusted(address):
                return address
        return forwarded_for.split(",", 1)[0].strip()

    def swap(self, snapshot: Snapshot) -> None:
        self.gate.issuers(snapshot.credentials.issuers)
        self.snapshot = snapshot
        self.metrics.table_version.set(snapshot.version)
        self.forwarder.retire_unused(snapshot.upstreams.values())
        self.guards.keep_only(snapshot.upstreams.values())

    def reload(self, path: Path) -> bool:
        """Load `path`; swap it in if valid. Returns whether the served table changed."""
        try:
            table = load_file(path)
        except TableInvalid as exc:
            log.error(
                "route table refused, still serving version %s:\n%s",
                self.snapshot.version,
                exc.describe(),
            )
            return False
        self.swap(compile_table(table))
        log.info(
            "route table version %s loaded from %s (%d routes)",
            table.version,
            path,
            len(table.routes),
        )
        return True

    async def start(self) -> None:
        if self.settings.store != "file":
            self._tasks.append(asyncio.create_task(self._follow_store()))
        elif self.settings.routes is not None:
            self._tasks.append(asyncio.create_task(self._watch_file(self.settings.routes)))
        self._tasks.append(asyncio.create_task(self._sample_traffic()))
        await self.pin_wire.start()
        self._tasks.append(asyncio.create_task(self._share()))
        await self.consumers.start()
        await self.gate.start()
        await self.limiter.start()
        if self.settings.store != "file":
            # Serve once the live pins are loaded (a replica started mid-canary honours them),
            # but never wait long for a Redis that is down: the table is already served.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SUBSCRIBE_WAIT):
                    await self.subscribed.wait()
                    if isinstance(self.pin_wire, RedisWire):
                        await self.pin_wire.ready.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.mirror.stop()
        await self.limiter.stop()
        await self.gate.stop()
        await self.consumers.stop()
        if self.mirror.tallies:
            with contextlib.suppress(Exception):  # the last numbers, if the sink answers
                await self._share_tallies()
        await self.pin_wire.stop()
        with contextlib.suppress(Exception):
            await self.sink.close()
        await self.forwarder.close()
        self.access_log.flush()

    async def _sample_traffic(self) -> None:
        while True:
            try:
                self.traffic.sample()
            except Exception:  # metrics files being rotated: the next sample will do
                log.debug("traffic sample failed", exc_info=True)
            await asyncio.sleep(self.traffic.step)

    async def _watch_file(self, path: Path) -> None:
        def stamp() -> tuple[int, int, int] | None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return (st.st_mtime_ns, st.st_size, st.st_ino)

        last = stamp()
        while True:
            await asyncio.sleep(self.settings.watch_interval)
            current = stamp()
            if current is not None and current != last:
                last = current
                try:
                    self.reload(path)
                except Exception:  # the watcher must outlive any one bad file
                    log.exception(
                        "route table reload failed, still serving version %s", self.snapshot.version
                    )

    async def _follow_store(self) -> None:
        """Follow the Redis store: its channel for speed, a poll of the pointer for safety."""
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        from proxy.store.redis import describe

        settings = self.settings
        prefix = settings.store_prefix
        where = describe(settings.store)
        client = aioredis.Redis.from_url(
            settings.store, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        down = False
        refused: set[int] = set()
        try:
            while True:
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                try:
                    await pubsub.subscribe(prefix + "changes")
                    while True:
                        await self._catch_up(client, prefix, refused)
                        self.subscribed.set()
                        if down:
                            down = False
                            log.warning(
                                "route store %s reconnected; serving version %s",
                                where,
                                self.snapshot.version,
                            )
                        await self._next_change(pubsub)
                except (RedisError, OSError) as exc:
                    if not down:
                        down = True
                        log.warning(
                            "route store %s: connection lost (%s); reconnecting, still serving "
                            "version %s",
                            where,
                            exc,
                            self.snapshot.version,
                        )
                    await asyncio.sleep(settings.store_poll_interval)
                except Exception:  # the follower must outlive any one bad version
                    log.exception("route store follower failed; retrying")
                    await asyncio.sleep(settings.store_poll_interval)
                finally:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
        finally:
            await client.aclose()

    async def _next_change(self, pubsub: Any) -> None:
        """Wait for a table change, at most the poll interval."""
        await pubsub.get_message(timeout=self.settings.store_poll_interval)

    async def _catch_up(self, client: Any, prefix: str, refused: set[int]) -> None:
        raw = await client.get(prefix + "current")
        number = int(raw) if raw is not None else 0
        served = self.snapshot.version
        if number == served or number in refused:
            return
        if number < served:
            refused.add(number)
            restored = await self._restore_store(client, prefix, served)
            log.warning(
                "route store says version %s, older than the served version %s (its data was "
                "lost?); keeping version %s%s",
                number,
                served,
                served,
                " and restoring it to the store" if restored else "",
            )
            return
        text, compiled = await client.hmget(f"{prefix}v:{number}", "text", "table")
        if text is None:
            # Not readable yet (the next tick gets it) or gone (evicted: Redis must run with
            # maxmemory-policy noeviction); said once per version.
            if number not in self._missing:
                self._missing.add(number)
                log.warning(
                    "route store points at version %s but it cannot be read; still serving "
                    "version %s",
                    number,
                    served,
                )
            return
        try:
            snapshot = await asyncio.to_thread(self._compile_text, text.decode(), compiled, number)
        except TableInvalid as exc:
            refused.add(number)
            log.error(
                "route table version %s refused, still serving version %s:\n%s",
                number,
                served,
                exc.describe(),
            )
            return
        if snapshot.version <= self.snapshot.version:
            return  # a newer one landed while this one compiled
        self.swap(snapshot)
        log.info(
            "route table version %s loaded from the store (%d routes)", number, len(snapshot.routes)
        )
        await asyncio.to_thread(_write_cache, self.settings.store_cache, text.decode())

    async def _restore_store(self, client: Any, prefix: str, served: int) -> bool:
        """Put the served version back in a store that went behind it (its data was lost and
        it was re-seeded lower), so every replica and every later commit continue from the
        newest version any replica serves, instead of a split fleet whose commits are ignored.
        The text is the last-known-good file, which holds the served version."""
        from proxy.store.redis import RESTORE

        try:
            text = self.settings.store_cache.read_text(encoding="utf-8")
        except OSError:
            return False
        if stated_version(text) != served:
            return False
        sha = hashlib.sha256(text.encode()).hexdigest()
        keys = [prefix + "current", f"{prefix}v:{served}", prefix + "changes"]
        args = [served, text, "replica", round(time.time(), 3), "restored by a replica", sha]
        return bool(await client.eval(RESTORE, 3, *keys, *args))

    @staticmethod
    def _compile_text(text: str, compiled: bytes | None, number: int) -> Snapshot:
        from proxy.store.redis import table_of

        return compile_table(table_of(compiled, text, number))
