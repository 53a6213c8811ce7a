"""Rate limits shared by replicas: N per window and then 429 with the RateLimit fields; three
replicas on one Redis enforce one limit; a burst refuses within its second without spending the
rate; counters never leak across routes, callers or specs; while Redis is away (stopped, or
frozen) each worker decides alone at its share, counted and logged, and goes back to sharing
when Redis answers; without Redis each worker holds amount // workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from limits import parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from proxy.access.ratelimit import Decision, Limiter, RateSpec, parse_rate
from proxy.observability import Metrics
from tests.support import redis_process


async def eventually(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def limiters(
    url: str | None,
    prefix: str,
    count: int = 1,
    metrics: Metrics | None = None,
    patience: float = 2.0,
) -> AsyncIterator[list[Limiter]]:
    """`count` started limiters ("replicas", each with its own connections) that heartbeat and
    probe every 50 ms, stopped afterwards. They wait `patience` seconds for Redis: tests that
    are not about a slow Redis must not fall back because a busy machine paused them."""
    made = [Limiter(url, prefix, 1, metrics) for _ in range(count)]
    for limiter in made:
        limiter.heartbeat_seconds = limiter.retry_seconds = 0.05
        limiter.timeout = patience
        await limiter.start()
    try:
        yield made
    finally:
        for limiter in made:
            await limiter.stop()


def fields(decision: Decision) -> dict[bytes, bytes]:
    return dict(decision.headers())


def local_count(metrics: Metrics, route: str) -> float:
    value = metrics.registry.get_sample_value("strangler_rate_limit_local_total", {"route": route})
    return value or 0.0


# --- the notation ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["100/minute", "5 per second", "1000/hour", "10/2 minutes"])
def test_one_limit_is_a_rate(text: str) -> None:
    parse_rate(text)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "is not a rate limit"),
        ("fast", "is not a rate limit"),
        ("100", "is not a rate limit"),
        ("100/fortnight", "is not a rate limit"),
        ("1/second;2/minute", "holds 2 limits: give one as `rate` and a second, shorter one"),
        ("1/second, 2/minute", "holds 2 limits"),
        ("0/second", "the amount must be from 1"),
        ("10/0 minutes", "a window of no length"),
        ("10/2 years", "at most a year"),
    ],
)
def test_anything_else_is_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_rate(text)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"rate": "100/minute", "burst": "200/minute"}, "must be a shorter window"),
        ({"rate": "100/minute", "burst": "1/hour"}, "must be a shorter window"),
        ({"rate": "100/minute", "strategy": "token-bucket"}, "is not one of sliding-window"),
        ({"rate": "100/minute", "by": "header"}, "is not one of consumer, client"),
        ({"rate": "lots"}, "is not a rate limit"),
    ],
)
def test_a_spec_is_checked_when_made(spec: dict[str, str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        RateSpec(**spec)


# --- shared in Redis ------------------------------------------------------------------------
@pytest.mark.redis
@pytest.mark.parametrize("strategy", ["sliding-window", "moving-window", "fixed-window"])
def test_n_per_window_then_429_with_the_ratelimit_fields(
    redis_url: str, redis_prefix: str, strategy: str
) -> None:
    spec = RateSpec("5/minute", strategy=strategy)

    async def run() -> list[Decision]:
        async with limiters(redis_url, redis_prefix) as (limiter,):
            return [await limiter.hit("orders", spec, "client-1") for _ in range(7)]

    decisions = asyncio.run(run())
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
    assert not any(d.local for d in decisions)
    admitted, refused = decisions[0], decisions[5]
    assert fields(admitted).keys() == {
        b"ratelimit-limit",
        b"ratelimit-remaining",
        b"ratelimit-reset",
    }
    assert fields(admitted)[b"ratelimit-limit"] == b"5"
    assert 0 <= admitted.reset <= 60
    assert fields(refused) == {
        b"ratelimit-limit": b"5",
        b"ratelimit-remaining": b"0",
        b"ratelimit-reset": str(refused.reset).encode(),
        b"retry-after": str(refused.reset).encode(),
    }
    assert 1 <= refused.reset <= 60  # the window frees a slot within the minute, not sooner


@pytest.mark.redis
def test_three_replicas_enforce_one_limit_under_concurrent_hits(
    redis_url: str, redis_prefix: str
) -> None:
    """600 requests, spread over three replicas hitting at once: 300 admitted in all (± 1 %),
    not 300 each."""
    spec = RateSpec("300/minute")

    async def replica(limiter: Limiter, tries: int) -> int:
        async def caller() -> int:
            return sum(
                [(await limiter.hit("search", spec, "consumer-a")).allowed for _ in range(tries)]
            )

        return sum(await asyncio.gather(*(caller() for _ in range(8))))

    async def run() -> tuple[list[int], list[int]]:
        async with limiters(redis_url, redis_prefix, 3) as replicas:
            admitted = await asyncio.gather(*(replica(limiter, 25) for limiter in replicas))
            await eventually(lambda: all(r.live_members == 3 for r in replicas), "3 members")
            return admitted, [r.live_members for r in replicas]

    admitted, members = asyncio.run(run())
    assert 297 <= sum(admitted) <= 303, admitted
    assert all(count > 0 for count in admitted)  # every replica took part
    assert members == [3, 3, 3]


@pytest.mark.redis
def test_a_burst_refuses_the_sixth_within_a_second_and_spares_the_rate(
    redis_url: str, redis_prefix: str
) -> None:
    spec = RateSpec("1000/minute", burst="5/second")

    async def run() -> tuple[list[Decision], int]:
        async with limiters(redis_url, redis_prefix) as (limiter,):
            decisions = [await limiter.hit("checkout", spec, "consumer-a") for _ in range(8)]
        # `limits`' own strategy reads the same counters: the rate spent only the admitted.
        client = aioredis.Redis.from_url(redis_url)
        options: dict[str, Any] = {"connection_pool": client.connection_pool}
        storage = RedisStorage(
            "redis://", implementation="redispy", key_prefix=redis_prefix[:-1], **options
        )
        stats = await SlidingWindowCounterRateLimiter(storage).get_window_stats(
            parse("1000/minute"), "checkout", "sliding-window", "consumer-a"
        )
        await client.aclose()
        return decisions, stats.remaining

    decisions, rate_remaining = asyncio.run(run())
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
    refused = decisions[5]
    assert (refused.limit, refused.remaining) == (5, 0)  # the burst refused
    assert refused.reset == 1
    # While both have room the one with fewer left governs: the burst.
    assert [d.limit for d in decisions[:5]] == [5] * 5
    assert rate_remaining == 995


@pytest.mark.redis
def test_routes_callers_and_specs_keep_counters_of_their_own(
    redis_url: str, redis_prefix: str
) -> None:
    two = RateSpec("2/hour")

    async def run() -> dict[str, list[bool]]:
        async with limiters(redis_url, redis_prefix) as (limiter,):

            async def allowed(route: str, spec: RateSpec, key: str, times: int = 3) -> list[bool]:
                return [(await limiter.hit(route, spec, key)).allowed for _ in range(times)]

            long_a, long_b = "k" * 300 + "a", "k" * 300 + "b"  # hashed: only the end differs
            return {
                "a/x": await allowed("a", two, "x"),
                "b/x": await allowed("b", two, "x"),
                "a/y": await allowed("a", two, "y"),
                "a/x fixed": await allowed("a", RateSpec("2/hour", strategy="fixed-window"), "x"),
                "a/x moving": await allowed("a", RateSpec("2/hour", strategy="moving-window"), "x"),
                "a/x 3/hour": await allowed("a", RateSpec("3/hour"), "x", 4),
                "a/long a": await allowed("a", two, long_a),
                "a/long b": await allowed("a", two, long_b),
                "a/odd": await allowed("a", two, "x/../{y}"),
            }

    results = asyncio.run(run())
    for name, decisions in results.items():
        admitted = 3 if name == "a/x 3/hour" else 2
        assert decisions == [True] * admitted + [False], name


# --- Redis away -----------------------------------------------------------------------------
@pytest.mark.redis
def test_redis_stopped_each_worker_holds_its_share_then_shares_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three members learnt while Redis answered; Redis killed: hits keep answering, decided
    locally at 30 // 3 = 10, counted and logged; Redis back (empty, without the scripts):
    shared counting again, and the time it was away is logged."""
    spec = RateSpec("30/hour")
    metrics = Metrics()

    async def run(server_url: str, stop: Callable[[], None], start: Callable[[], None]) -> None:
        async with limiters(server_url, "strangler:limits:", 3, metrics) as (
            first,
            *_others,
        ):
            await eventually(lambda: first.live_members == 3, "three live members")
            assert (await first.hit("orders", spec, "consumer-a")).local is False
            stop()
            decisions = [await first.hit("orders", spec, "consumer-a") for _ in range(11)]
            assert all(d.local for d in decisions)
            assert [d.allowed for d in decisions] == [True] * 10 + [False]
            assert {d.limit for d in decisions} == {10}
            assert local_count(metrics, "orders") == 11
            assert not first.shared
            start()
            await eventually(lambda: first.shared, "Redis answering again")
            back = await first.hit("orders", spec, "consumer-a")
            assert (back.allowed, back.local, back.limit) == (True, False, 30)
            assert back.remaining == 29  # a fresh Redis: counting starts anew
            assert local_count(metrics, "orders") == 11

    with (
        redis_process() as server,
        caplog.at_level(logging.WARNING, logger="strangler"),
    ):
        asyncio.run(run(server.url, server.stop, server.start))
    lines = [r.getMessage() for r in caplog.records if r.name == "strangler"]
    away = [line for line in lines if "does not answer" in line]
    again = [line for line in lines if "answers again" in line]
    # Once per limiter that saw it (the others may not have looked while Redis was away).
    assert 1 <= len(away) <= 3
    assert 1 <= len(again) <= 3
    assert "each worker enforces its share" in away[0]
    assert "s away; limits are shared again" in again[0]


@pytest.mark.redis
def test_a_frozen_redis_never_holds_a_request_and_is_found_back() -> None:
    """A Redis that takes connections but never answers (SIGSTOP): the request is decided
    locally after the short timeout instead of waiting, and sharing resumes after SIGCONT."""
    spec = RateSpec("4/hour")

    async def run(pid: int, url: str) -> None:
        async with limiters(url, "strangler:limits:", 2, patience=0.5) as (
            first,
            _second,
        ):
            await eventually(lambda: first.live_members == 2, "two live members")
            os.kill(pid, signal.SIGSTOP)
            try:
                decisions = [
                    await asyncio.wait_for(first.hit("orders", spec, "10.0.0.7"), 5)
                    for _ in range(3)
                ]
            finally:
                os.kill(pid, signal.SIGCONT)
            assert [(d.allowed, d.local, d.limit) for d in decisions] == [
                (True, True, 2),
                (True, True, 2),
                (False, True, 2),
            ]
            await eventually(lambda: first.shared, "Redis answering again")
            assert (await first.hit("orders", spec, "10.0.0.7")).local is False

    with redis_process() as server:
        assert server.proc is not None
        asyncio.run(run(server.proc.pid, server.url))


@pytest.mark.redis
def test_a_stopped_limiter_leaves_the_members_at_once(redis_url: str, redis_prefix: str) -> None:
    async def run() -> None:
        async with limiters(redis_url, redis_prefix, 3) as (first, second, third):
            await eventually(lambda: first.live_members == 3, "three live members")
            await third.stop()
            await eventually(lambda: first.live_members == 2, "two live members")
            await second.stop()
            await eventually(lambda: first.live_members == 1, "one live member")

    asyncio.run(run())


# --- no Redis -------------------------------------------------------------------------------
def test_without_redis_each_worker_holds_amount_over_workers() -> None:
    metrics = Metrics()
    spec = RateSpec("10/hour", burst="6/minute")

    async def run() -> list[Decision]:
        limiter = Limiter(None, "strangler:limits:", workers=4, metrics=metrics)
        await limiter.start()
        try:
            return [await limiter.hit("orders", spec, "consumer-a") for _ in range(3)]
        finally:
            await limiter.stop()

    decisions = asyncio.run(run())
    assert [d.allowed for d in decisions] == [True, False, False]
    # Shares: burst 6 // 4 = 1, rate 10 // 4 = 2; the burst refuses the second.
    assert [(d.limit, d.remaining, d.local) for d in decisions] == [
        (1, 0, True),
        (1, 0, True),
        (1, 0, True),
    ]
    assert 1 <= decisions[1].reset <= 60
    assert local_count(metrics, "orders") == 0  # not a fallback: the configured mode


def test_without_redis_a_share_is_at_least_one() -> None:
    async def run() -> list[bool]:
        limiter = Limiter(None, "strangler:limits:", workers=8)
        try:
            return [(await limiter.hit("r", RateSpec("3/hour"), "k")).allowed for _ in range(2)]
        finally:
            await limiter.stop()

    assert asyncio.run(run()) == [True, False]
