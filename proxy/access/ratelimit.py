"""Rate limits shared by replicas: one limit per route and caller, counted in Redis so that N
replicas enforce ONE limit (Kong's rate-limiting plugin with `policy: redis`, Envoy's global
rate limit service), with a bounded local fallback while Redis is away (Envoy's local rate
limit beside the global one).

    rate_limit: {rate: 100/minute, burst: 20/second, by: consumer, strategy: sliding-window}

Rules:
- **A limit** is one `limits` expression (`100/minute`, `5 per second`, `1000/hour`); `burst`
  is an optional second, shorter one. A request is admitted when every limit has room; the
  burst is counted first and a request it refuses costs the rate nothing (Kong checks every
  limit before it counts any; here a refusal by the rate costs at most a slot of the short
  window). The decision reports the limit that refused, else the one with fewer remaining.
- **Strategies** (the `limits` library's): `sliding-window` (the default: the previous window's
  count weighted by how much of it still overlaps, plus the current one; two counters per key,
  as Cloudflare and nginx's limit_req approximate), `moving-window` (a log of timestamps, exact,
  memory in proportion to the amount) and `fixed-window` (one counter per window; up to twice
  the amount across a boundary).
- **Who is counted**: `by: consumer` counts the identified consumer and an anonymous caller by
  its address; `by: client` always by address (the data plane passes the key).
- **Keys**: `{prefix}LIMITER/{route}/{strategy}/{key}/{amount}/{multiples}/{unit}`, `limits`'
  own layout, so routes, strategies and limits never share a counter. A key longer than 64
  characters or with others than `A-Za-z0-9._:@-` is replaced by `#` and its BLAKE2b digest.
- **Redis down or slow** (no answer within REDIS_TIMEOUT, on every call): this worker decides
  alone, in memory (`limits`' MemoryStorage, same strategy), at its share of each limit:
  amount // live members (at least 1). Every limiter heartbeats a member entry (the sorted set
  `{prefix}members`, scored by Redis' clock, refreshed every HEARTBEAT_SECONDS, entries older
  than MEMBER_TTL dropped) and remembers the last count it saw. Kong's `fault_tolerant` lets
  every request through while Redis is away; a share keeps the fleet near its limit instead.
  One warning when the fallback starts, one when Redis answers again (with the time it was
  away); meanwhile requests never wait for Redis: a background probe tries it every
  RETRY_SECONDS. Decisions taken by the fallback are counted in
  `strangler_rate_limit_local_total{route}`.
- **No Redis** (the embedded file store, one machine): each worker enforces amount // workers.
- **Headers**: RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset (seconds), the three
  fields of the IETF httpapi draft "RateLimit header fields for HTTP" (drafts -00 to -06), and
  Retry-After (RFC 9110 §10.2.3) on a refusal.

Cost: with Redis, one pipelined round trip per limit (the hit and its window together: the
`limits` strategies would take two). The Lua scripts and the key layout are `limits`' own (its
RedisStorage on redis-py's asyncio client), so its strategies read the same counters. Measured
(2 cores, local Redis, uvloop, sliding window): ~95 µs of CPU per hit with one limit, ~180 µs
with a burst (`limits`' hit + get_window_stats: ~300 µs per limit); in memory ~14 and ~28 µs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

if TYPE_CHECKING:
    from proxy.observability import Metrics

log = logging.getLogger("strangler")

SLIDING, MOVING, FIXED = "sliding-window", "moving-window", "fixed-window"
STRATEGIES = (SLIDING, MOVING, FIXED)
BY = ("consumer", "client")
REDIS_TIMEOUT = 0.1  # seconds a decision may wait for Redis before the fallback takes it
HEARTBEAT_SECONDS = 5.0  # members refresh their entry this often while Redis answers
MEMBER_TTL = 15.0  # an entry older than this is a member that has gone
RETRY_SECONDS = 1.0  # while Redis is away, it is tried again this often (never per request)
POOL_SIZE = 32  # Redis connections per worker (a round trip each takes ~0.1-0.2 ms)
MAX_AMOUNT = 1_000_000_000
MAX_WINDOW = 31_104_000  # a year, as `limits` counts it (360 days)
MAX_SPECS = 10_000  # parsed specs kept; more (a table churning limits) starts afresh
PLAIN_KEY = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
ZERO_WINDOW = re.compile(r"(?:/|per)\s*0+\s*[a-z]", re.IGNORECASE)

# KEYS: the members set. ARGV: this member, seconds an entry stays live. Scores are Redis' own
# clock, so replicas whose clocks disagree still agree on who is live.
HEARTBEAT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], t, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t - ttl)
redis.call('EXPIRE', KEYS[1], math.ceil(ttl * 2))
return redis.call('ZCARD', KEYS[1])
"""


def _parse(text: str) -> RateLimitItem:
    try:
        items = parse_many(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a rate limit: write one limit such as 100/minute, "
            "5 per second or 1000/hour"
        ) from None
    if len(items) != 1:
        raise ValueError(
            f"{text!r} holds {len(items)} limits: give one as `rate` and a second, shorter "
            "one as `burst`"
        )
    item = items[0]
    if ZERO_WINDOW.search(text):
        raise ValueError(f"{text!r} has a window of no length")
    if not 1 <= item.amount <= MAX_AMOUNT:
        raise ValueError(f"{text!r}: the amount must be from 1 to {MAX_AMOUNT:,}")
    if item.get_expiry() > MAX_WINDOW:
        raise ValueError(f"{text!r}: the window must be at most a year")
    return item


def parse_rate(text: str) -> None:
    """Raise ValueError, saying why, unless `text` is one limit such as "100/minute"."""
    _parse(text)


class Rate(Protocol):
    """What a limit is: a RateSpec, or the route table's compiled form (table/compile.py's
    RatePolicy, checked by the table's own validation with parse_rate)."""

    @property
    def rate(self) -> str: ...
    @property
    def burst(self) -> str | None: ...
    @property
    def strategy(self) -> str: ...
    @property
    def by(self) -> str: ...


@dataclass(frozen=True, slots=True)
class RateSpec:
    rate: str  # limits syntax, e.g. "100/minute"; validated by parse_rate
    burst: str | None = None  # optional second, shorter limit, e.g. "20/second"
    strategy: str = SLIDING  # or "moving-window" or "fixed-window"
    by: str = "consumer"  # "consumer" (else the client address) or "client" (always the address)

    def __post_init__(self) -> None:
        rate = _parse(self.rate)
        if self.burst is not None:
            burst = _parse(self.burst)
            if burst.get_expiry() >= rate.get_expiry():
                raise ValueError(
                    f"burst {self.burst!r} must be a shorter window than rate {self.rate!r}"
                )
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.by not in BY:
            raise ValueError(f"by {self.by!r} is not one of {', '.join(BY)}")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int  # the governing limit's amount (this worker's share when decided locally)
    remaining: int
    reset: int  # seconds until the window allows again (>= 0, rounded up; >= 1 when refused)
    local: bool  # decided by this worker alone: no Redis configured, or it did not answer

    def headers(self) -> list[tuple[bytes, bytes]]:
        fields = [
            (b"ratelimit-limit", b"%d" % self.limit),
            (b"ratelimit-remaining", b"%d" % self.remaining),
            (b"ratelimit-reset", b"%d" % self.reset),
        ]
        if not self.allowed:
            fields.append((b"retry-after", b"%d" % self.reset))
        return fields


def _decision(allowed: bool, amount: int, remaining: int, seconds: float, local: bool) -> Decision:
    reset = max(0, math.ceil(seconds - 0.001))  # a window's end read back a hair late
    if not allowed:
        return Decision(False, amount, 0, max(1, reset), local)
    return Decision(True, amount, max(0, remaining), reset, local)


def describe(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def _ident(key: str) -> str:
    """The caller's part of a counter's key: itself when short and plain, else its digest."""
    if PLAIN_KEY.fullmatch(key):
        return key
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=12)
    return "#" + digest.hexdigest()


class _Compiled:
    """A spec's parsed limits, burst first, and their shares for the fallback."""

    __slots__ = ("items", "local", "local_members", "strategy")

    def __init__(self, strategy: str, items: tuple[RateLimitItem, ...]) -> None:
        self.strategy = strategy
        self.items = items
        self.local: tuple[RateLimitItem, ...] = ()
        self.local_members = 0  # the member count `local` was divided by


def _compile(spec: Rate) -> _Compiled:
    rate = _parse(spec.rate)
    burst = _parse(spec.burst) if spec.burst is not None else None
    if spec.strategy not in STRATEGIES:
        raise ValueError(f"strategy {spec.strategy!r} is not one of {', '.join(STRATEGIES)}")
    # The same limit twice would be one counter hit twice.
    items = (rate,) if burst is None or burst == rate else (burst, rate)
    return _Compiled(spec.strategy, items)


class _RedisCounts:
    """Hits and windows in Redis, through `limits`' RedisStorage: its Lua scripts and key
    layout, each hit pipelined with the read of its window (one round trip per limit)."""

    def __init__(self, client: Any, prefix: str) -> None:
        from limits.aio.storage import RedisStorage
        from limits.aio.storage.redis.redispy import RedispyBridge
        from redis.exceptions import NoScriptError

        # The connections are ours (one pool, our timeouts); the URI only names the kind.
        options: dict[str, Any] = {"connection_pool": client.connection_pool}
        storage = RedisStorage(
            "redis://", implementation="redispy", key_prefix=prefix.removesuffix(":"), **options
        )
        bridge = cast(RedispyBridge, storage.bridge)
        self.client = client
        self.bridge = bridge
        self.no_script = NoScriptError
        self.acquire_sliding = bridge.lua_acquire_sliding_window.sha
        self.sliding = bridge.lua_sliding_window.sha
        self.acquire_moving = bridge.lua_acquire_moving_window.sha
        self.moving = bridge.lua_moving_window.sha
        self.incr = bridge.lua_incr_expire.sha
        self.scripts = (
            bridge.SCRIPT_ACQUIRE_SLIDING_WINDOW,
            bridge.SCRIPT_SLIDING_WINDOW,
            bridge.SCRIPT_ACQUIRE_MOVING_WINDOW,
            bridge.SCRIPT_MOVING_WINDOW,
            bridge.SCRIPT_INCR_EXPIRE,
        )

    async def _run(self, *commands: tuple[Any, ...]) -> list[Any]:
        """The commands in one round trip; a Redis that lost its scripts (a restart, a
        failover, SCRIPT FLUSH) is given them again, once."""
        try:
            return await self._pipeline(commands)
        except self.no_script:
            for script in self.scripts:
                await self.client.script_load(script)
            return await self._pipeline(commands)

    async def _pipeline(self, commands: tuple[tuple[Any, ...], ...]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return cast(list[Any], await pipe.execute())

    async def count(
        self, strategy: str, item: RateLimitItem, route: str, key: str, now: float
    ) -> tuple[bool, int, float]:
        """One hit of `item`: (admitted, remaining, epoch seconds when it allows again), as
        `limits`' strategy's hit followed by its get_window_stats would say."""
        base = item.key_for(route, strategy, key)
        amount, expiry = item.amount, item.get_expiry()
        if strategy == SLIDING:
            current = self.bridge.prefixed_key(f"{{{base}}}")  # `limits`' cluster hash tag
            previous = current + "/-1"
            acquired, window = await self._run(
                ("EVALSHA", self.acquire_sliding, 2, previous, current, amount, expiry, 1),
                ("EVALSHA", self.sliding, 2, previous, current, expiry),
            )
            return (acquired is not None, *_sliding(item, window, now))
        redis_key = self.bridge.prefixed_key(base)
        if strategy == MOVING:
            acquired, window = await self._run(
                ("EVALSHA", self.acquire_moving, 1, redis_key, now, amount, expiry, 1),
                ("EVALSHA", self.moving, 1, redis_key, now - expiry, amount),
            )
            start, hits = (float(window[0]), int(window[1])) if window else (now, 0)
            return acquired is not None, amount - hits, start + expiry
        hits, ttl = await self._run(
            ("EVALSHA", self.incr, 1, redis_key, expiry, 1), ("TTL", redis_key)
        )
        return int(hits) <= amount, amount - int(hits), now + max(int(ttl), 0)


def _sliding(item: RateLimitItem, window: list[Any] | None, now: float) -> tuple[int, float]:
    """(remaining, when it allows again) from the sliding window script's answer, with
    SlidingWindowCounterRateLimiter.get_window_stats' arithmetic."""
    if not window:
        return item.amount, now
    previous = int(window[0] or 0)
    previous_ttl = max(0.0, float(window[1] or 0)) / 1000
    current = int(window[2] or 0)
    current_ttl = max(0.0, float(window[3] or 0)) / 1000
    expiry = item.get_expiry()
    remaining = item.amount - math.floor(previous * previous_ttl / expiry + current)
    if not (previous or current):
        return remaining, now
    previous_in = previous_ttl % (expiry / previous) if previous else math.inf
    # The current counter lives two windows (`limits`); its window ends a window before it
    # expires, which `%` reads as 0 when it was set this very millisecond.
    current_in = (current_ttl % expiry or expiry) if current else math.inf
    return remaining, now + min(previous_in, current_in)


class Limiter:
    """One worker's rate limiter (module header). `start` learns the members and heartbeats;
    `stop` leaves the members set and closes the connections."""

    def __init__(
        self,
        redis_url: str | None,
        prefix: str,
        workers: int = 1,
        metrics: Metrics | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.workers = max(1, workers)
        self.metrics = metrics
        # The workers sharing each limit: this replica's own until Redis says how many.
        self.live_members = self.workers
        self.shared = redis_url is not None  # counting in Redis now
        self.down_since = 0.0
        self.member = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.timeout = REDIS_TIMEOUT
        self.heartbeat_seconds = HEARTBEAT_SECONDS
        self.retry_seconds = RETRY_SECONDS
        self.member_ttl = MEMBER_TTL
        self._specs: dict[Rate, _Compiled] = {}
        self._memory = MemoryStorage()
        self._local: dict[str, RateLimiter] = {
            SLIDING: SlidingWindowCounterRateLimiter(self._memory),
            MOVING: MovingWindowRateLimiter(self._memory),
            FIXED: FixedWindowRateLimiter(self._memory),
        }
        self._fallbacks: dict[str, Any] = {}  # route -> its fallback counter child
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._counts: _RedisCounts | None = None
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self._heartbeat: Any = None
        if redis_url is not None:
            self._connect(redis_url)

    def _connect(self, url: str) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        # No retries: an unanswered call goes to the fallback at once, and the probe retries.
        # Every call runs under asyncio.timeout(self.timeout); no socket_timeout, which redis-py
        # applies to each write with asyncio.wait_for: a task per command, and on Python 3.11 a
        # wait_for whose inner task is done swallows its caller's cancellation (CPython
        # gh-86296), so a cancelled heartbeat would go on for ever and `stop` never return.
        # At most POOL_SIZE connections: a spike of requests waits for one (within the
        # timeout) rather than opening a connection each.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=None,
            socket_timeout=None,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        self._client = aioredis.Redis(connection_pool=pool)
        self._counts = _RedisCounts(self._client, self.prefix)
        self._heartbeat = self._client.register_script(HEARTBEAT)
        self._errors = (RedisError, OSError)  # asyncio's TimeoutError is an OSError

    # --- deciding -------------------------------------------------------------------------------
    async def hit(self, route: str, spec: Rate, key: str) -> Decision:
        """One request of `key` (a consumer name or client address) on `route`."""
        compiled = self._specs.get(spec)
        if compiled is None:
            compiled = self._compile(spec)
        ident = _ident(key)
        if self.shared:
            try:
                async with asyncio.timeout(self.timeout):
                    return await self._shared(route, compiled, ident)
            except self._errors as exc:
                self._went_down(exc)
        decision = await self._alone(route, compiled, ident)
        if self._counts is not None:  # Redis is configured: this is the fallback
            child = self._fallbacks.get(route)
            if child is None and self.metrics is not None:
                child = self._fallbacks[route] = self.metrics.rate_limit_local.labels(route)
            if child is not None:
                child.inc()
        return decision

    def _compile(self, spec: Rate) -> _Compiled:
        compiled = _compile(spec)
        if len(self._specs) >= MAX_SPECS:
            self._specs.clear()
        self._specs[spec] = compiled
        return compiled

    async def _shared(self, route: str, compiled: _Compiled, key: str) -> Decision:
        counts = self._counts
        assert counts is not None
        now = time.time()
        chosen: Decision | None = None
        for item in compiled.items:
            allowed, remaining, reset_at = await counts.count(
                compiled.strategy, item, route, key, now
            )
            decision = _decision(allowed, item.amount, remaining, reset_at - now, False)
            if not allowed:
                return decision
            if chosen is None or decision.remaining <= chosen.remaining:
                chosen = decision
        assert chosen is not None
        return chosen

    async def _alone(self, route: str, compiled: _Compiled, key: str) -> Decision:
        """This worker's decision at its share of each limit."""
        members = self.live_members
        if compiled.local_members != members:
            compiled.local = tuple(
                type(item)(max(1, item.amount // members), item.multiples)
                for item in compiled.items
            )
            compiled.local_members = members
        limiter = self._local[compiled.strategy]
        chosen: Decision | None = None
        for item in compiled.local:
            allowed = await limiter.hit(item, route, compiled.strategy, key)
            stats = await limiter.get_window_stats(item, route, compiled.strategy, key)
            decision = _decision(
                allowed, item.amount, stats.remaining, stats.reset_time - time.time(), True
            )
            if not allowed:
                return decision
            if chosen is None or decision.remaining <= chosen.remaining:
                chosen = decision
        assert chosen is not None
        return chosen

    # --- Redis away and back --------------------------------------------------------------------
    def _went_down(self, exc: BaseException) -> None:
        if not self.shared:
            return
        self.shared = False
        self.down_since = time.monotonic()
        log.warning(
            "rate limits: Redis at %s does not answer (%s); each worker enforces its share of "
            "every limit (1/%d) until it does",
            describe(self.redis_url or ""),
            str(exc) or exc.__class__.__name__,
            self.live_members,
        )

    def _came_back(self) -> None:
        self.shared = True
        log.warning(
            "rate limits: Redis at %s answers again after %.1fs away; limits are shared again",
            describe(self.redis_url or ""),
            time.monotonic() - self.down_since,
        )

    async def _beat(self) -> None:
        """Refresh this member's entry and learn how many are live; while Redis is away this
        is the probe that finds it back."""
        try:
            async with asyncio.timeout(self.timeout):
                count = await self._heartbeat(
                    keys=[self.prefix + "members"], args=[self.member, self.member_ttl]
                )
        except self._errors as exc:
            self._went_down(exc)
            return
        self.live_members = max(1, int(count))
        if not self.shared:
            self._came_back()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds if self.shared else self.retry_seconds)
            try:
                await self._beat()
            except Exception:  # the heartbeat must outlive any one surprise
                log.exception("rate limits: heartbeat failed; retrying")

    async def start(self) -> None:
        if self._client is None or self._task is not None:
            return
        await self._beat()
        self._task = asyncio.create_task(self._heartbeats(), name="rate-limit heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        client, self._client = self._client, None
        if client is not None:
            self.shared = False
            with contextlib.suppress(*self._errors):  # leave at once, not after MEMBER_TTL
                async with asyncio.timeout(self.timeout):
                    await client.zrem(self.prefix + "members", self.member)
            await client.aclose()
            await client.connection_pool.aclose()
        timer = self._memory.timer  # `limits`' expiry sweep
        if timer is not None and not timer.done():
            timer.cancel()
