"""What one worker holds while it serves: the current snapshot (swapped in one assignment), the
forwarder, metrics, the access log, and the route store it follows.

The store says what to serve (`RouteStore.watch`: routes.yaml's stamp with the file store; the
Redis store's channel and a poll of its pointer every `store_poll_interval`, only ever forward):
each version it yields was loaded and validated off to the side; here it is compiled, swapped in
and, with a shared store, written to the last-known-good file, which the next start uses if the
store is down then. Requests read `runtime.snapshot` once, so one in flight finishes on the
snapshot it started with. A version that does not load is refused by the store's watch with its
problems logged; the running table stays.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import gc
import ipaddress
import logging
import os
import platform
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.cancel import cancel_within
from proxy.dataplane.armstats import ArmStats
from proxy.dataplane.breaker import Guards
from proxy.dataplane.forward import Forwarder, Forwarding
from proxy.dataplane.h1client import Forwarder as H1Forwarder
from proxy.dataplane.pins import Pins
from proxy.dataplane.tunnel import Tunnels
from proxy.observability import AccessLog, Metrics, TrafficWindow
from proxy.settings import ProxySettings
from proxy.store.base import StoreError, Version, Watch
from proxy.store.file import atomic_write
from proxy.store.pins import RedisWire
from proxy.table.compile import Snapshot, compile_table
from proxy.table.loader import TableInvalid, load_file, single_upstream

if TYPE_CHECKING:
    from proxy.control import Outcome
    from proxy.rollout.driver import RolloutDriver

log = logging.getLogger("strangler")
SHARE_INTERVAL = 1.0
SUBSCRIBE_WAIT = 1.0  # seconds a starting worker waits for the store's channels and pins
# Seconds each step of a worker's stop may take: a dependency that hangs (a Redis coming back,
# a client library that swallows a cancellation) must not hold the exit, whose whole budget is
# the graceful timeout (Envoy's drain has its own deadline too). A step past it is logged and
# left behind.
STOP_STEP_SECONDS = 2.0


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


def _said_if_failed(version: int) -> Callable[[concurrent.futures.Future[Any]], None]:
    def said(kept: concurrent.futures.Future[Any]) -> None:
        if not kept.cancelled() and kept.exception() is not None:
            log.warning("evidence of version %s not kept: %s", version, kept.exception())

    return said


def _write_cache(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text)
    except OSError as exc:  # serving matters more than the cache
        log.warning("could not write the last-known-good table to %s: %s", path, exc)


# A young-generation collection walks the objects of the requests in flight, whatever the
# threshold: collecting every 700 allocations (the default, a few requests) costs ~10% of a
# loaded worker's CPU, every 20,000 a fraction of that; a cycle left by a request waits a
# little longer to be freed.
GC_THRESHOLDS = (20_000, 20, 20)


async def _bounded(what: str, step: Awaitable[None]) -> None:
    """Await one step of a stop for at most STOP_STEP_SECONDS (logged when it takes longer)."""
    try:
        async with asyncio.timeout(STOP_STEP_SECONDS):
            await step
    except TimeoutError:
        log.warning("stopping: %s took over %.0f s; left behind", what, STOP_STEP_SECONDS)


def settle_heap() -> None:
    """Move what lives as long as the worker (modules, the served table, its compiled routes)
    out of the cyclic garbage collector's sight (gc.freeze, as Instagram's Django workers do):
    otherwise each full collection walks them all, a 20-50 ms pause of every request in
    flight with a 1,000-route table (the p99 of a loaded proxy). Called at start and after a
    table change: what the change left behind is collected once, then the rest frozen again."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# glibc's malloc gives a freed block at the top of its heap back to the kernel once more than
# M_TRIM_THRESHOLD (128 KiB) is free there, and maps blocks of M_MMAP_THRESHOLD (128 KiB) or more
# apart, unmapping them when freed. A worker's answers are such blocks (a 64 KiB body read from
# an upstream is one bytes object): freed together, then made again, each 4 KiB page of them was
# a page fault and a page zeroed by the kernel, up to 16 per 64 KiB answer (measured in a
# loaded proxy, varying with the heap's layout from run to run). Fixed thresholds keep the heap's
# pages for the next answers (Go's runtime and tcmalloc, Envoy's, give memory back gradually in
# the background, never at each free): blocks under MMAP_THRESHOLD come from the heap, and up to
# TRIM_THRESHOLD of it may stay free.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
TRIM_THRESHOLD = 32 << 20
MMAP_THRESHOLD = 4 << 20
MALLOC_ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_heap() -> bool:
    """Fix glibc's thresholds (above) for this process, once at a worker's start; False where
    there is no glibc, or the operator has set them in the environment (glibc's own variables
    win)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in MALLOC_ENVIRONMENT):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


class Runtime:
    def __init__(self, settings: ProxySettings, snapshot: Snapshot) -> None:
        self.settings = settings
        self.snapshot = snapshot
        self.forwarder: Forwarding = (
            Forwarder() if settings.upstream_client == "aiohttp" else H1Forwarder()
        )
        self.metrics = Metrics()
        self.guards = Guards(self.metrics.upstream_changed)
        self.access_log = AccessLog(None, enabled=settings.access_log)
        self.in_flight = 0
        self.per_client: dict[str, int] = {}
        self.tunnels = Tunnels(self.metrics)  # Upgrade tunnels open, per route
        self._trusted = [ipaddress.ip_network(c, strict=False) for c in settings.trusted_hops]
        self._trusted_cache: dict[str, bool] = {}
        self.traffic = TrafficWindow(self.metrics)
        self.arm_stats = ArmStats()  # per-arm numbers, shared through the sink (rollouts, ledger)
        self._init_shadow(settings)
        self._init_access(settings, snapshot)
        self.rollout_driver = self._rollout_driver(settings)
        self.watch = self._watch(settings)
        self._tasks: list[asyncio.Task[None]] = []
        # The worker's loop once started (the data plane's timeouts use it: see
        # dataplane/forward.Deadline).
        self.loop: asyncio.AbstractEventLoop | None = None
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
        # Pins from other workers are applied in a socket callback (Redis: store/pins.PinFeed;
        # siblings: datagrams), before any request read in the same loop turn.
        self.mirror = Mirror(self.metrics)
        self.worker = worker_id()
        self.sink = open_sink(settings.store, settings.store_prefix, settings.state_dir)
        self.recorder = Recorder(self.sink, self.worker)

    def _rollout_driver(self, settings: ProxySettings) -> RolloutDriver | None:
        """The rollout driver (rollout/driver.py): every worker of every replica runs one and
        the store's lease lets one drive; none without a route store."""
        if settings.store == "file" and settings.routes is None:
            return None
        from proxy.rollout.driver import RolloutDriver, SinkEvidence
        from proxy.rollout.store import open_rollouts
        from proxy.store import open_store

        routes = open_store(settings.store, settings.routes, settings.store_prefix)
        rollouts = open_rollouts(settings.store, settings.routes, settings.store_prefix)

        async def record(version: int, route: str, gates: list[Any]) -> None:
            await self.keep_evidence(version, [route], gates)

        evidence = SinkEvidence(self.sink)
        return RolloutDriver(routes, rollouts, evidence, self.worker, record=record)

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
        """Once a second: this worker's request counts to its metrics, its shadow tallies to the
        sink, the recorder's turn, and expired pins out."""
        while True:
            await asyncio.sleep(SHARE_INTERVAL)
            try:
                self.metrics.publish()
            except Exception:  # a metrics file that cannot grow: what was not written waits
                log.warning("publishing the request counts failed", exc_info=True)
            try:
                self.pins.prune(time.monotonic())
                await self.recorder.tick()
                if self.mirror.tallies:  # every turn: a put is also how a reset is learned
                    await self._share_tallies()
            except Exception:  # the sink is down: serving goes on, the next turn retries
                log.debug("shadow sharing failed", exc_info=True)
            try:
                await self.sink.put_stats(self.worker, self.arm_stats.doc())
            except Exception:  # the same: rollouts and the ledger see this worker's last put
                log.debug("sharing the per-arm numbers failed", exc_info=True)

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
        """Serve `snapshot` from the next request on."""
        self.gate.issuers(snapshot.credentials.issuers)
        self.snapshot = snapshot
        self.metrics.table_version.set(snapshot.version)
        self.forwarder.retire_unused(snapshot.upstreams.values())
        self.guards.keep_only(snapshot.upstreams.values())
        settle_heap()  # once the new table serves: the old one is collected, the new one frozen

    def _watch(self, settings: ProxySettings) -> Watch | None:
        """The store this worker follows: the Redis store, or routes.yaml (none with only a
        default upstream)."""
        if settings.store != "file":
            from proxy.store.redis import RedisStore

            store = RedisStore(settings.store, settings.store_prefix)
            return store.watch(self._served, settings.store_poll_interval, settings.store_cache)
        if settings.routes is not None:
            from proxy.store.file import FileStore

            return FileStore(settings.routes).watch(self._served, settings.watch_interval)
        return None

    def _served(self) -> int:
        return self.snapshot.version

    def record_commit(self, outcome: Outcome) -> None:
        """Keep what a change committed here was decided on (control/evidence.py), from any
        thread (the admin API's writes run in a thread pool): recorded on this worker's loop,
        the numbers of this worker fresher than its last share."""
        from proxy.control.evidence import routes_of

        routes = routes_of(outcome)
        if not routes or self.loop is None:
            return
        evidence = self.keep_evidence(outcome.version, routes, outcome.gates)
        kept = asyncio.run_coroutine_threadsafe(evidence, self.loop)
        kept.add_done_callback(_said_if_failed(outcome.version))

    async def keep_evidence(self, version: int, routes: list[str], gates: list[Any]) -> None:
        """The evidence of committed `version` for the ledger (store/ledger.record_evidence),
        with this worker's numbers fresher than its last share; every change this replica
        commits (the admin API's, the rollout driver's) is kept by it."""
        from proxy.store.ledger import record_evidence

        await record_evidence(
            self.sink, version, routes, gates=gates, worker=self.worker, local=self.arm_stats
        )

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self.watch is not None:
            self._tasks.append(asyncio.create_task(self._follow(self.watch)))
        self._tasks.append(asyncio.create_task(self._sample_traffic()))
        await self.pin_wire.start()
        self._tasks.append(asyncio.create_task(self._share()))
        await self.consumers.start()
        await self.gate.start()
        await self.limiter.start()
        if self.rollout_driver is not None:
            self._tasks.append(asyncio.create_task(self.rollout_driver.run()))
        if self.watch is not None:
            # Serve once the store's feed and the live pins are read (a replica started
            # mid-canary honours them), but never wait long for a Redis that is down: the table
            # is already served.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SUBSCRIBE_WAIT):
                    await self.watch.ready.wait()
                    if isinstance(self.pin_wire, RedisWire):
                        await self.pin_wire.ready.wait()
        keep_heap()
        settle_heap()

    async def stop(self) -> None:
        """Stop every background task and close every client, each step within
        STOP_STEP_SECONDS (the access log is flushed whatever happened before)."""
        try:
            await self._stop_tasks()
            self._tasks = []  # the rollout driver, cancelled, has let its lease go
            if self.rollout_driver is not None:
                with contextlib.suppress(Exception):
                    self.rollout_driver.close()
            await _bounded("the shadow", self.mirror.stop())
            await _bounded("the rate limiter", self.limiter.stop())
            await _bounded("the access gate", self.gate.stop())
            await _bounded("the consumers", self.consumers.stop())
            if self.mirror.tallies:
                with contextlib.suppress(Exception):  # the last numbers, if the sink answers
                    await _bounded("the shadow's last numbers", self._share_tallies())
            await _bounded("the pins' wire", self.pin_wire.stop())
            with contextlib.suppress(Exception):
                await _bounded("the sink", self.sink.close())
            await _bounded("the upstream pools", self.forwarder.close())
        finally:
            with contextlib.suppress(Exception):  # the log is flushed whatever happens here
                self.metrics.publish()
            self.access_log.flush()

    async def _stop_tasks(self) -> None:
        """Cancel the background tasks, twice if need be (a cancellation swallowed by a
        client library's wait_for, Python 3.11), within STOP_STEP_SECONDS."""
        for task in await cancel_within(self._tasks, STOP_STEP_SECONDS):
            log.warning("stopping: %s did not end once cancelled; left behind", task.get_coro())
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.warning("stopping: %s had failed", task.get_coro(), exc_info=task.exception())

    async def _sample_traffic(self) -> None:
        while True:
            try:
                self.traffic.sample()
            except Exception:  # metrics files being rotated: the next sample will do
                log.debug("traffic sample failed", exc_info=True)
            await asyncio.sleep(self.traffic.step)

    async def _follow(self, watch: Watch) -> None:
        """Serve each version the store yields: compile it, swap it in and, with a shared
        store, keep it as the last-known-good table."""
        async with contextlib.aclosing(watch.changes()) as changes:
            async for version in changes:
                try:
                    await self._serve(version, watch.source)
                except Exception:  # the follower must outlive any one bad version
                    log.exception(
                        "route table version %s could not be served, still serving version %s",
                        version.info.version,
                        self.snapshot.version,
                    )

    async def _serve(self, version: Version, source: str) -> None:
        snapshot = await asyncio.to_thread(compile_table, version.table)
        self.swap(snapshot)
        log.info(
            "route table version %s loaded from %s (%d routes)",
            snapshot.version,
            source,
            len(snapshot.routes),
        )
        if self.settings.store != "file":
            await asyncio.to_thread(_write_cache, self.settings.store_cache, version.text)
