"""The answer cache and its event receiver, with a real Redis: every replica has its own
consumer group on the event stream and clears its cache on every event; the sync's events reach
the stream through the relay; with no Redis, or Redis down, answers come from the read model.
The cache's own rules (generation, TTL, off while disconnected) are tested without sockets."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from legacy_monolith.models import Product
from services.catalog.app import create_app
from services.catalog.cache import AnswerCache, Rendered
from services.catalog.invalidation import group_name
from services.catalog.tables import outbox
from tests.services.catalog.conftest import Shop, catalog_settings, legacy_now
from tests.support import free_port, redis_process, wait_until

P = "/api/v1/products"


# --- the cache's rules -------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cache_serves_only_while_connected_and_within_its_ttl() -> None:
    clock = Clock()
    cache = AnswerCache(ttl=5, max_entries=2, clock=clock)
    value = Rendered(b"{}", '"e"')
    cache.put("k", value, cache.generation())
    assert cache.get("k") is None  # never connected: off
    cache.connected()
    cache.put("k", value, cache.generation())
    assert cache.get("k") == value
    clock.now += 5
    assert cache.get("k") is None  # expired
    cache.put("k", value, cache.generation())
    cache.disconnected()
    cache.connected()
    assert cache.get("k") is None  # an outage cleared it


def test_a_read_from_before_a_clear_is_not_stored() -> None:
    cache = AnswerCache(ttl=5, max_entries=10)
    cache.connected()
    before = cache.generation()
    cache.clear()  # an event arrived while the request read the database
    cache.put("k", Rendered(b"old", '"o"'), before)
    assert cache.get("k") is None


def test_the_cache_holds_at_most_max_entries() -> None:
    cache = AnswerCache(ttl=5, max_entries=2)
    cache.connected()
    for key in "abc":
        cache.put(key, Rendered(key.encode(), '"x"'), cache.generation())
    assert (cache.get("a"), len(cache)) == (None, 2)


# --- against Redis -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    folder = tmp_path_factory.mktemp("cache")
    made = Shop.make(f"sqlite:///{folder / 'legacy.db'}", f"sqlite:///{folder / 'catalog.db'}")
    yield made
    made.dispose()


def reprice(shop: Shop, product_id: int, price: str) -> None:
    """Change a product in the monolith and let the sync bring it over (with its event)."""
    with shop.monolith_db.begin() as conn:
        conn.execute(
            update(Product)
            .where(Product.id == product_id)
            .values(price=Decimal(price), updated_at=legacy_now())
        )
    shop.sync()


def price_of(client: TestClient, product_id: int) -> str:
    return str(client.get(f"{P}/{product_id}").json()["price"])


@contextlib.contextmanager
def replicas(shop: Shop, redis_url: str, names: list[str], **overrides: Any) -> Iterator[Any]:
    apps = [
        create_app(
            catalog_settings(shop.catalog_url, redis_url=redis_url, instance=name, **overrides)
        )
        for name in names
    ]
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(TestClient(app)) for app in apps]
        yield [(app.state.catalog.cache, client) for app, client in zip(apps, clients, strict=True)]


def event_fields(product_id: int) -> dict[str, str]:
    return {
        "event_id": secrets.token_hex(8),
        "type": "catalog.product.changed",
        "aggregate_id": str(product_id),
        "row_version": "1",
        "occurred_at": "",
        "payload": json.dumps({"id": product_id}),
    }


@pytest.mark.redis
def test_one_event_clears_every_replicas_cache(
    shop: Shop, redis_url: str, redis_prefix: str
) -> None:
    stream = f"{redis_prefix}catalog:events"
    product_id = shop.product_ids(active=True)[0]
    names = [f"{redis_prefix}a", f"{redis_prefix}b"]
    options = {"events_stream": stream, "cache_ttl": 60, "relay_enabled": False}
    with replicas(shop, redis_url, names, **options) as running:
        wait_until(lambda: all(cache.active for cache, _ in running), what="both caches on")
        before = [price_of(client, product_id) for _, client in running]
        reprice(shop, product_id, "4.56")  # in the read model; no event published yet
        assert [price_of(client, product_id) for _, client in running] == before  # cached
        assert all(cache.hits == 1 for cache, _ in running)

        client = redis.Redis.from_url(redis_url)
        entry = client.xadd(stream, event_fields(product_id))  # type: ignore[arg-type]
        wait_until(lambda: all(len(cache) == 0 for cache, _ in running), what="both cleared")
        assert [price_of(c, product_id) for _, c in running] == ["4.56", "4.56"]
        groups = {g["name"].decode(): g for g in client.xinfo_groups(stream)}
        client.close()
    assert set(groups) == {group_name(name) for name in names}
    for group in groups.values():
        assert group["last-delivered-id"] == entry
        assert group["pending"] == 0  # acked after clearing


@pytest.mark.redis
def test_the_syncs_events_reach_every_replica_through_the_relay(
    shop: Shop, redis_url: str, redis_prefix: str
) -> None:
    stream = f"{redis_prefix}catalog:events"
    product_id = shop.product_ids(active=True)[1]
    names = [f"{redis_prefix}a", f"{redis_prefix}b"]
    options = {"events_stream": stream, "cache_ttl": 60, "relay_interval_seconds": 0.05}
    with replicas(shop, redis_url, names, **options) as running:
        wait_until(lambda: all(cache.active for cache, _ in running), what="both caches on")
        assert all(price_of(client, product_id) != "7.89" for _, client in running)
        reprice(shop, product_id, "7.89")
        wait_until(
            lambda: all(price_of(client, product_id) == "7.89" for _, client in running),
            what="both replicas to answer the new price",
        )
        with shop.service.connect() as conn:
            unpublished = conn.scalar(
                select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
            )
    assert unpublished == 0
    client = redis.Redis.from_url(redis_url)
    entries: list[Any] = client.xrange(stream)  # type: ignore[assignment]
    client.close()
    assert {fields[b"type"] for _, fields in entries} == {b"catalog.product.changed"}
    assert str(product_id).encode() in {fields[b"aggregate_id"] for _, fields in entries}


def test_without_redis_every_answer_is_read_from_the_model(shop: Shop) -> None:
    product_id = shop.product_ids(active=True)[2]
    with replicas(shop, f"redis://127.0.0.1:{free_port()}/0", ["down"]) as [(cache, client)]:
        price_of(client, product_id)
        reprice(shop, product_id, "2.22")
        assert price_of(client, product_id) == "2.22"
        assert not cache.active
    with replicas(shop, "", ["none"]) as [(cache, client)]:
        reprice(shop, product_id, "3.33")
        assert price_of(client, product_id) == "3.33"
        assert not cache.active
        assert client.get("/healthz").json()["status"] == "ok"
        ready = client.get("/readyz").json()
        assert (ready["database"], ready["cache"]) == ("sqlite", "off")


def test_an_outage_turns_the_cache_off_until_redis_is_back(
    shop: Shop, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    product_id = shop.product_ids(active=True)[3]
    caplog.set_level(logging.WARNING)
    with (
        redis_process() as server,
        replicas(shop, server.url, ["solo"], relay_enabled=False) as [(cache, client)],
    ):
        wait_until(lambda: cache.active, what="the cache on")
        price_of(client, product_id)
        server.stop()
        wait_until(lambda: not cache.active, what="the cache off")
        reprice(shop, product_id, "5.55")
        assert price_of(client, product_id) == "5.55"  # never the cached answer
        server.start()
        wait_until(lambda: cache.active, timeout=20, what="the cache on again")
    outages = [r for r in caplog.records if r.name == "datasync.stream" and "retrying" in r.message]
    assert len(outages) == 1, [r.message for r in caplog.records]
