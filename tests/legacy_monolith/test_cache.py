"""The catalog cache: in-process LRU, real Redis, and a Redis outage that never becomes an error."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from legacy_monolith import cache as cache_module
from legacy_monolith.app import create_app
from legacy_monolith.cache import Cache, MemoryBackend, RedisBackend
from legacy_monolith.seed import STAFF_USER
from tests.legacy_monolith.conftest import login, make_settings
from tests.support import redis_process


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(cache_module.time, "monotonic", fake)
    return fake


def test_memory_backend_expires_entries(clock: Clock) -> None:
    backend = MemoryBackend()
    backend.set("k", b"v", ttl=5)
    clock.now += 4.9
    assert backend.get("k") == b"v"
    clock.now += 0.2
    assert backend.get("k") is None


def test_memory_backend_evicts_least_recently_used() -> None:
    backend = MemoryBackend(max_entries=2)
    backend.set("a", b"1", 60)
    backend.set("b", b"2", 60)
    assert backend.get("a") == b"1"  # a is now the most recent
    backend.set("c", b"3", 60)
    assert backend.get("b") is None
    assert backend.get("a") == b"1"
    assert backend.get("c") == b"3"


def test_generations_survive_eviction_and_drop_old_lists() -> None:
    cache = Cache(MemoryBackend(max_entries=1), prefix="p:", ttl_seconds=60)
    assert cache.generation("catalog") == 0
    cache.get_or_load("catalog:g0:list", lambda: b"old")
    cache.invalidate(bump=("catalog",))
    cache.get_or_load("x", lambda: b"fills the LRU")
    assert cache.generation("catalog") == 1


def test_get_or_load_calls_the_loader_once_per_ttl(clock: Clock) -> None:
    cache = Cache(MemoryBackend(), prefix="p:", ttl_seconds=30)
    calls: list[int] = []

    def load() -> bytes:
        calls.append(1)
        return b"answer"

    assert cache.get_or_load("k", load) == b"answer"
    assert cache.get_or_load("k", load) == b"answer"
    assert len(calls) == 1
    clock.now += 31
    cache.get_or_load("k", load)
    assert len(calls) == 2
    assert (cache.stats.hits, cache.stats.misses) == (1, 2)


@pytest.mark.redis
def test_redis_backend_stores_with_ttl_under_the_prefix(redis_url: str, redis_prefix: str) -> None:
    cache = Cache(RedisBackend(redis_url), prefix=redis_prefix, ttl_seconds=45)
    assert cache.get_or_load("catalog:product:1", lambda: b"{}") == b"{}"
    raw = redis.Redis.from_url(redis_url)
    assert raw.get(redis_prefix + "catalog:product:1") == b"{}"
    assert 40_000 < raw.pttl(redis_prefix + "catalog:product:1") <= 45_000
    cache.invalidate(keys=("catalog:product:1",), bump=("catalog",))
    assert raw.get(redis_prefix + "catalog:product:1") is None
    assert cache.generation("catalog") == 1
    raw.close()
    cache.close()


@pytest.mark.redis
def test_app_caches_catalog_reads_in_redis_and_invalidates_on_write(
    sqlite_seeded: str, redis_url: str, redis_prefix: str
) -> None:
    settings = make_settings(sqlite_seeded, redis_url=redis_url, cache_prefix=redis_prefix)
    raw = redis.Redis.from_url(redis_url)
    with TestClient(create_app(settings)) as client:
        product = client.get("/api/v1/products", params={"per_page": 1}).json()["items"][0]
        key = f"{redis_prefix}catalog:g0:product:{product['id']}"
        first = client.get(f"/api/v1/products/{product['id']}")
        assert raw.exists(key)
        assert client.get(f"/api/v1/products/{product['id']}").content == first.content
        assert client.app.state.cache.stats.hits >= 1  # type: ignore[attr-defined]
        lists = list(raw.scan_iter(match=f"{redis_prefix}catalog:g0:products:*"))
        assert lists
        staff = login(client, STAFF_USER)
        patched = client.patch(
            f"/api/v1/products/{product['id']}", json={"stock_qty": 77}, headers=staff
        )
        assert patched.status_code == 200
        assert raw.get(f"{redis_prefix}catalog:gen") == b"1"
        assert client.get(f"/api/v1/products/{product['id']}").json()["stock_qty"] == 77
        assert raw.exists(f"{redis_prefix}catalog:g1:product:{product['id']}")
    raw.close()


def test_unreachable_redis_serves_uncached(sqlite_seeded: str) -> None:
    settings = make_settings(sqlite_seeded, redis_url="redis://127.0.0.1:9/0")
    with TestClient(create_app(settings)) as client:
        for _ in range(3):
            assert client.get("/api/v1/categories").status_code == 200
            assert client.get("/api/v1/products").status_code == 200
        health = client.get("/healthz").json()
        assert health["cache"] == "redis"
        assert health["cache_available"] is False
        stats = client.app.state.cache.stats  # type: ignore[attr-defined]
        assert stats.errors >= 1
        assert stats.hits == 0


@pytest.mark.redis
def test_redis_outage_mid_traffic_degrades_then_recovers(sqlite_seeded: str) -> None:
    with redis_process() as server:
        settings = make_settings(sqlite_seeded, redis_url=server.url, cache_retry_seconds=0.0)
        with TestClient(create_app(settings)) as client:
            cache = client.app.state.cache  # type: ignore[attr-defined]
            assert client.get("/api/v1/categories").status_code == 200
            assert client.get("/api/v1/categories").status_code == 200
            assert cache.stats.hits == 1
            server.stop()
            for _ in range(5):
                answer = client.get("/api/v1/categories")
                assert answer.status_code == 200
                assert answer.json()["items"]
            assert cache.stats.errors >= 1
            server.start()
            client.get("/api/v1/categories")
            hits = cache.stats.hits
            client.get("/api/v1/categories")
            assert cache.stats.hits == hits + 1
