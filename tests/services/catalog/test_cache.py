"""The answer cache and its event receiver, with a real Redis: every replica has its own
consumer group on the event stream and clears its cache on every event; the sync's events reach
the stream through the relay; a hit then costs no statement. Without Redis, or with Redis down,
the cache still answers, each hit checked against the read model's version (one primary-key
SELECT, counted), and a projection makes the next answer the new one at once (SQLite and
PostgreSQL). The cache's own rules (versions, generation, TTL, unchecked only while connected)
are tested without sockets, and the race of two misses around a sync's commit deterministically
on the real read model."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select, update
from sqlalchemy.engine import Connection, Engine

from legacy_monolith.models import Product
from services.catalog import reads
from services.catalog.api import Catalog
from services.catalog.app import create_app
from services.catalog.cache import AnswerCache, Rendered
from services.catalog.db import make_engine
from services.catalog.invalidation import group_name
from services.catalog.projection import project_products
from services.catalog.tables import outbox
from tests.services.catalog.conftest import (
    Shop,
    catalog_settings,
    legacy_now,
    making_shop,
    monolith_app,
)
from tests.support import free_port, redis_process, wait_until

P = "/api/v1/products"


# --- the cache's rules -------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def at(version: int) -> Callable[[], int]:
    return lambda: version


def unasked() -> int:
    raise AssertionError("the version was read")


OLD, NEW = Rendered(b"old", '"o"'), Rendered(b"new", '"n"')


def test_without_events_a_hit_is_served_only_at_the_current_version() -> None:
    clock = Clock()
    cache = AnswerCache(ttl=5, max_entries=2, clock=clock)
    cache.put("k", NEW, 3, cache.generation())
    assert cache.get("k", at(3)) == NEW
    assert cache.get("k", at(4)) is None  # projected since: a miss
    assert cache.get("k", at(2)) is None  # whatever the difference
    assert (cache.hits, cache.checks) == (1, 3)
    assert cache.get("absent", unasked) is None  # nothing to check
    clock.now += 5
    assert cache.get("k", unasked) is None  # expired: the TTL bounds it still
    assert len(cache) == 0


def test_while_connected_a_hit_is_served_unchecked_within_its_ttl() -> None:
    clock = Clock()
    cache = AnswerCache(ttl=5, max_entries=2, clock=clock)
    cache.put("k", OLD, 1, cache.generation())
    cache.connected()
    assert (cache.listening, len(cache)) == (True, 0)  # connecting cleared it
    cache.put("k", NEW, 3, cache.generation())
    assert cache.get("k", unasked) == NEW
    clock.now += 5
    assert cache.get("k", unasked) is None  # expired
    cache.put("k", NEW, 3, cache.generation())
    cache.disconnected()
    assert not cache.listening
    assert cache.get("k", at(3)) == NEW  # kept, and checked from now on
    assert cache.get("k", at(4)) is None


def test_an_older_answer_never_replaces_a_newer_one() -> None:
    """Two requests missed around a sync's commit: the one that read the older data stores its
    answer last. No clear happened in between, so the generation does not catch it."""
    for connected in (False, True):
        clock = Clock()
        cache = AnswerCache(ttl=5, max_entries=10, clock=clock)
        if connected:
            cache.connected()
        generation = cache.generation()
        cache.put("k", NEW, 8, generation)  # read after the commit
        cache.put("k", OLD, 7, generation)  # read before it, stored after
        assert cache.get("k", at(8)) == NEW
        cache.put("k", OLD, 8, generation)  # the same version replaces (and renews the TTL)
        assert cache.get("k", at(8)) == OLD
        clock.now += 5  # an expired entry holds nothing back
        cache.put("k", OLD, 2, generation)
        assert cache.get("k", at(2)) == OLD


def test_a_read_from_before_a_clear_is_not_stored() -> None:
    cache = AnswerCache(ttl=5, max_entries=10)
    cache.connected()
    before = cache.generation()
    cache.clear()  # an event arrived while the request read the database
    cache.put("k", OLD, 9, before)
    assert cache.get("k", unasked) is None


def test_the_cache_holds_at_most_max_entries() -> None:
    cache = AnswerCache(ttl=5, max_entries=2)
    for key in "abc":
        cache.put(key, Rendered(key.encode(), '"x"'), 1, cache.generation())
    assert (cache.get("a", at(1)), len(cache)) == (None, 2)
    assert cache.get("c", at(1)) == Rendered(b"c", '"x"')


def test_a_ttl_of_zero_is_no_cache() -> None:
    cache = AnswerCache(ttl=0, max_entries=2)
    cache.connected()
    cache.put("k", NEW, 1, cache.generation())
    assert (cache.get("k", unasked), len(cache), cache.listening) == (None, 0, False)


# --- on the read model ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    folder = tmp_path_factory.mktemp("cache")
    made = Shop.make(f"sqlite:///{folder / 'legacy.db'}", f"sqlite:///{folder / 'catalog.db'}")
    yield made
    made.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def any_shop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shop]:
    with making_shop(request, tmp_path_factory.mktemp("versioned")) as made:
        yield made


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


def version_of(engine: Engine) -> int:
    with engine.connect() as conn:
        return reads.projection_version(conn)


def engine_of(client: TestClient) -> Engine:
    app: Any = client.app
    engine: Engine = app.state.catalog.engine
    return engine


@contextlib.contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    """Every statement `engine` sends meanwhile (SQLite's explicit BEGIN included)."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def is_version_read(statement: str) -> bool:
    return statement.startswith("SELECT catalog_projection.batches FROM catalog_projection WHERE")


def selects(sent: list[str]) -> list[str]:
    return [statement for statement in sent if statement.startswith("SELECT")]


def test_every_projection_moves_the_version_in_its_own_transaction(shop: Shop) -> None:
    before = version_of(shop.service)
    with contextlib.suppress(RuntimeError), shop.service.begin() as conn:
        project_products(None, conn, [1], ())
        raise RuntimeError  # rolled back: the views and the version together
    assert version_of(shop.service) == before
    with shop.service.begin() as conn:
        project_products(None, conn, [1], ())
    assert version_of(shop.service) == before + 1
    shop.sync()  # nothing changed in the monolith: no hook called
    assert version_of(shop.service) == before + 1
    reprice(shop, shop.product_ids(active=True)[5], "8.88")
    assert version_of(shop.service) > before + 1


def test_the_older_of_two_misses_around_a_commit_does_not_replace_the_newer(shop: Shop) -> None:
    """Request A reads a product, then the sync commits its new price, then request B misses
    and stores the new answer (a client sees it), then A stores its old one: B's stays."""
    product_id = shop.product_ids(active=True)[6]
    engine = make_engine(shop.catalog_url)
    cache = AnswerCache(ttl=60, max_entries=10)
    cache.connected()  # hits unchecked, as with the events; no event will clear it here
    catalog = Catalog(engine, cache)
    key = f"product|{product_id}"
    read, stored = threading.Event(), threading.Event()

    def held(conn: Connection) -> bytes | None:
        body = reads.product(conn, product_id)
        read.set()
        assert stored.wait(10)
        return body

    answers: list[Rendered | None] = []
    request_a = threading.Thread(target=lambda: answers.append(catalog.answer(key, held)))
    try:
        request_a.start()
        assert read.wait(10)
        reprice(shop, product_id, "6.66")
        newer = catalog.answer(key, lambda conn: reads.product(conn, product_id))
        stored.set()
        request_a.join(10)
        assert newer is not None
        assert json.loads(newer.body)["price"] == "6.66"
        older = answers[0]
        assert older is not None
        assert json.loads(older.body)["price"] != "6.66"  # A read the old price
        assert cache.get(key, unasked) == newer
    finally:
        stored.set()
        request_a.join(10)
        engine.dispose()


def test_without_redis_a_hit_costs_one_select_and_a_projection_shows_at_once(
    any_shop: Shop,
) -> None:
    shop = any_shop
    product_id = shop.product_ids(active=True)[4]
    asked: list[tuple[str, dict[str, Any] | None, int]] = [  # path, query, SELECTs of a miss
        (f"{P}/{product_id}", None, 2),
        (P, {"per_page": 7, "sort": "-price"}, 3),
        (P, {"q": "phone", "in_stock": "true"}, 3),
        ("/api/v1/categories", None, 2),
    ]
    settings = catalog_settings(shop.catalog_url, cache_ttl=60)  # no Redis
    app = create_app(settings)
    with TestClient(monolith_app(shop)) as monolith, TestClient(app) as client:
        cache: AnswerCache = app.state.catalog.cache
        engine = engine_of(client)
        for path, params, queries in asked:
            with statements(engine) as missed:
                first = client.get(path, params=params)
            with statements(engine) as hit:
                again = client.get(path, params=params)
            assert first.status_code == 200, first.text
            assert (again.content, again.headers["etag"]) == (first.content, first.headers["etag"])
            assert [is_version_read(sql) for sql in hit] == [True], hit  # no BEGIN either
            assert len(selects(missed)) == queries, missed
            assert is_version_read(selects(missed)[0])  # the version first
        assert (cache.hits, cache.listening) == (len(asked), False)

        reprice(shop, product_id, "9.19")  # the monolith's change, one follow poll
        for path, params, queries in asked:
            with statements(engine) as sent:
                answer = client.get(path, params=params)
            assert is_version_read(sent[0]), sent  # the hit's check: another version
            assert len(selects(sent)) == 1 + queries, sent  # then the miss
            legacy = monolith.get(path, params=params)
            assert (answer.content, answer.headers["etag"]) == (
                legacy.content,
                legacy.headers["etag"],
            )
        assert price_of(client, product_id) == "9.19"
        assert cache.hits == len(asked) + 1
        ready = client.get("/readyz").json()
        assert (ready["cache"], ready["cache_mode"]) == ("off", "versioned")


# --- against Redis -----------------------------------------------------------------------------
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
        wait_until(lambda: all(cache.listening for cache, _ in running), what="both caches on")
        before = [price_of(client, product_id) for _, client in running]
        reprice(shop, product_id, "4.56")  # in the read model; no event published yet
        for _, client in running:
            with statements(engine_of(client)) as sent:
                assert price_of(client, product_id) == before[0]  # cached
            assert sent == []  # a hit while connected: no statement at all
        assert all(cache.hits == 1 for cache, _ in running)
        ready = running[0][1].get("/readyz").json()
        assert (ready["cache"], ready["cache_mode"]) == ("on", "events")

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
        wait_until(lambda: all(cache.listening for cache, _ in running), what="both caches on")
        assert all(price_of(client, product_id) != "7.89" for _, client in running)
        reprice(shop, product_id, "7.89")
        wait_until(
            lambda: all(price_of(client, product_id) == "7.89" for _, client in running),
            what="both replicas to answer the new price",
        )

        def unpublished() -> int:
            with shop.service.connect() as conn:
                query = select(func.count()).select_from(outbox)
                return int(conn.scalar(query.where(outbox.c.published_at.is_(None))) or 0)

        # The relay marks rows published once Redis took them: a replica may clear its cache
        # on an entry a moment before the mark commits.
        wait_until(lambda: unpublished() == 0, what="every outbox row marked published")
    client = redis.Redis.from_url(redis_url)
    entries: list[Any] = client.xrange(stream)  # type: ignore[assignment]
    client.close()
    assert {fields[b"type"] for _, fields in entries} == {b"catalog.product.changed"}
    assert str(product_id).encode() in {fields[b"aggregate_id"] for _, fields in entries}


def test_without_redis_answers_are_cached_and_checked_by_version(shop: Shop) -> None:
    product_id = shop.product_ids(active=True)[2]
    down = f"redis://127.0.0.1:{free_port()}/0"
    with replicas(shop, down, ["down"], cache_ttl=60) as [(cache, client)]:
        before = price_of(client, product_id)
        assert (price_of(client, product_id), cache.hits) == (before, 1)
        reprice(shop, product_id, "2.22")
        assert price_of(client, product_id) == "2.22"
        assert not cache.listening
    with replicas(shop, "", ["none"], cache_ttl=60) as [(cache, client)]:
        reprice(shop, product_id, "3.33")
        assert [price_of(client, product_id) for _ in range(2)] == ["3.33", "3.33"]
        assert (cache.hits, cache.listening) == (1, False)
        assert client.get("/healthz").json()["status"] == "ok"
        ready = client.get("/readyz").json()
        assert (ready["database"], ready["cache"], ready["cache_mode"]) == (
            "sqlite",
            "off",
            "versioned",
        )


def test_an_outage_makes_hits_checked_until_redis_is_back(
    shop: Shop, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    product_id = shop.product_ids(active=True)[3]
    caplog.set_level(logging.WARNING)
    options = {"relay_enabled": False, "cache_ttl": 60}
    with (
        redis_process() as server,
        replicas(shop, server.url, ["solo"], **options) as [(cache, client)],
    ):
        wait_until(lambda: cache.listening, what="the cache's events connected")
        before = price_of(client, product_id)
        server.stop()
        wait_until(lambda: not cache.listening, what="the cache's events lost")
        hits = cache.hits
        with statements(engine_of(client)) as sent:
            assert price_of(client, product_id) == before  # kept through the outage...
        assert (cache.hits, len(sent)) == (hits + 1, 1)  # ...and checked
        reprice(shop, product_id, "5.55")
        assert price_of(client, product_id) == "5.55"  # never the cached answer
        server.start()
        wait_until(lambda: cache.listening, timeout=20, what="the cache's events back")
    outages = [r for r in caplog.records if r.name == "datasync.stream" and "retrying" in r.message]
    assert len(outages) == 1, [r.message for r in caplog.records]
