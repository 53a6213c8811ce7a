"""The shadow sink's arm statistics and evidence, the same in a directory and in a real Redis:
each worker's latest document, gone once its worker stops putting it; only the filling bucket
rewritten, and everything again after Redis lost it; evidence per version, the last ones kept."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy.dataplane.armstats import ArmStats, arms_window
from proxy.shadow import sink as sinks
from proxy.shadow.sink import STATS_TTL, FileSink, RedisSink, Sink, SinkError

Scenario = Callable[[Callable[[], Sink]], Awaitable[None]]
Run = Callable[[Scenario], None]
T0 = 1_000_000.0


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.redis)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Run:
    """Runs a scenario on an event loop of its own; its sinks share one place (a directory or
    a Redis prefix), like the workers of several processes or replicas."""

    def play(scenario: Scenario) -> None:
        async def main() -> None:
            opened: list[Sink] = []

            def make() -> Sink:
                if kind == "file":
                    sink: Sink = FileSink(tmp_path / "shadow")
                else:
                    url = request.getfixturevalue("redis_url")
                    sink = RedisSink(url, request.getfixturevalue("redis_prefix"))
                opened.append(sink)
                return sink

            try:
                await scenario(make)
            finally:
                for sink in opened:
                    await sink.close()

        asyncio.run(main())

    return play


def counted(clock: list[float], *arms: tuple[str, str, int]) -> ArmStats:
    stats = ArmStats(lambda: clock[0])
    for route, upstream, status in arms:
        stats.observe(route, upstream, status, 0.01)
    return stats


def requests(docs: list[dict[str, Any]], route: str, upstream: str) -> int:
    found = arms_window(docs, route, 0).get(upstream)
    return found.requests if found is not None else 0


def test_every_workers_latest_document(run: Run) -> None:
    clock = [T0]

    async def scenario(make: Callable[[], Sink]) -> None:
        a, b = make(), make()
        one = counted(clock, ("payments", "payment", 200), ("payments", "payment", 502))
        two = counted(clock, ("payments", "monolith", 200))
        await a.put_stats("host:1:1", one.doc())
        await b.put_stats("host:2:1", two.doc())
        one.observe("payments", "payment", 200, 0.01)
        await a.put_stats("host:1:1", one.doc())  # replaces its previous one
        docs = await make().stats()
        assert sorted(d["worker"] for d in docs) == ["host:1:1", "host:2:1"]
        assert requests(docs, "payments", "payment") == 3
        assert requests(docs, "payments", "monolith") == 1
        arm = arms_window(docs, "payments", 0)["payment"]
        assert arm.errors == 1

    run(scenario)


def test_buckets_move_on_with_the_clock(run: Run) -> None:
    """A bucket that aged out of the worker's document leaves the shared one; closed buckets
    stay as they were while the filling one grows."""
    clock = [T0]

    async def scenario(make: Callable[[], Sink]) -> None:
        sink = make()
        stats = counted(clock, ("r", "u", 200))
        await sink.put_stats("w", stats.doc())
        for step in range(1, 4):
            clock[0] = T0 + 5 * step
            stats.observe("r", "u", 200, 0.01)
            stats.observe("r", "u", 200, 0.01)
            await sink.put_stats("w", stats.doc())
        (doc,) = await sink.stats()
        assert doc["buckets"] == stats.doc()["buckets"]
        assert requests([doc], "r", "u") == 7
        clock[0] = T0 + 900 + 5  # the first bucket has aged out
        stats.observe("r", "u", 200, 0.01)
        await sink.put_stats("w", stats.doc())
        (doc,) = await sink.stats()
        assert str(int(T0 // 5)) not in doc["buckets"]
        assert doc["buckets"] == stats.doc()["buckets"]

    run(scenario)


def test_a_stopped_workers_document_expires_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        sink = FileSink(tmp_path / "shadow")
        await sink.put_stats("gone", counted([T0], ("r", "u", 200)).doc())
        await sink.put_stats("live", counted([T0], ("r", "u", 200)).doc())
        old = time.time() - STATS_TTL - 1
        path = tmp_path / "shadow" / "stats" / "gone.json"
        os.utime(path, (old, old))
        assert [d["worker"] for d in await sink.stats()] == ["live"]
        assert not path.exists()  # the reader removed it

    asyncio.run(scenario())


@pytest.mark.redis
def test_a_stopped_workers_document_expires_redis(redis_url: str, redis_prefix: str) -> None:
    async def scenario() -> None:
        sink = RedisSink(redis_url, redis_prefix)
        try:
            await sink.put_stats("w", counted([T0], ("r", "u", 200)).doc())
        finally:
            await sink.close()

    asyncio.run(scenario())
    client = redis.Redis.from_url(redis_url)
    try:
        ttl = client.ttl(f"{redis_prefix}stats:w")
    finally:
        client.close()
    assert 0 < ttl <= STATS_TTL


@pytest.mark.redis
def test_statistics_come_back_after_redis_lost_them(redis_url: str, redis_prefix: str) -> None:
    clock = [T0]

    async def scenario() -> None:
        sink = RedisSink(redis_url, redis_prefix)
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            stats = counted(clock, ("r", "u", 200))
            clock[0] += 5
            stats.observe("r", "u", 200, 0.01)
            await sink.put_stats("w", stats.doc())
            await client.delete(f"{redis_prefix}stats:w")  # a flush, a failover
            for _ in range(2):
                await sink.put_stats("w", stats.doc())
            (doc,) = await sink.stats()
            assert doc["buckets"] == stats.doc()["buckets"]
        finally:
            await sink.close()
            await client.aclose()

    asyncio.run(scenario())


def test_evidence_per_version(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinks, "KEEP_EVIDENCE", 3)

    async def scenario(make: Callable[[], Sink]) -> None:
        sink = make()
        assert await sink.evidence() == {}
        for version in (1, 2, 3):
            await sink.put_evidence(version, {"routes": {"payments": {"window": version}}})
        await sink.put_evidence(2, {"routes": {"payments": {"window": 20}}})  # replaced
        assert await make().evidence() == {
            1: {"routes": {"payments": {"window": 1}}},
            2: {"routes": {"payments": {"window": 20}}},
            3: {"routes": {"payments": {"window": 3}}},
        }
        await sink.put_evidence(4, {"routes": {}})
        assert list(await sink.evidence()) == [2, 3, 4]  # the oldest went

    run(scenario)


@pytest.mark.parametrize(
    ("version", "doc"),
    [(0, {}), (True, {}), ("3", {}), (3, []), (3, {"x": float("nan")}), (3, {"x": object()})],
)
def test_bad_evidence_is_refused(run: Run, version: Any, doc: Any) -> None:
    async def scenario(make: Callable[[], Sink]) -> None:
        sink = make()
        with pytest.raises(SinkError):
            await sink.put_evidence(version, doc)
        assert await sink.evidence() == {}

    run(scenario)
