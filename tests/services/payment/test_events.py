"""Events: every change and its outbox row commit together; the relay publishes them to a real
Redis Stream in order, through outages; consumer groups each get every event, at least once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from services.payment import billing
from services.payment.db import make_engine, make_session_factory, upgrade, utcnow
from services.payment.events import (
    CAPTURED,
    CREATED,
    REFUNDED,
    Event,
    InProcessBus,
    RedisPublisher,
    RedisSubscriber,
    consume,
    redis_client,
)
from services.payment.models import OutboxEvent, Payment
from services.payment.relay import OutboxRelay
from services.payment.schemas import LegacyOrder, PaymentIn
from tests.services.payment.conftest import ServiceFactory, Shop
from tests.support import redis_process, wait_until

ORDER = LegacyOrder(
    id=7, user_id=3, status="pending_payment", total=Decimal("12.50"), currency="EUR"
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'events.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def counts(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        payments = conn.scalar(select(func.count()).select_from(Payment))
        events = conn.scalar(select(func.count()).select_from(OutboxEvent))
    return int(payments or 0), int(events or 0)


def test_a_change_and_its_event_commit_together_or_not_at_all(engine: Engine) -> None:
    sessions = make_session_factory(engine)
    body = PaymentIn(order_id=ORDER.id, method="wallet", capture=False)

    def crash(change: Callable[[Session], object]) -> None:
        with sessions() as session, session.begin():
            change(session)
            raise RuntimeError("the process dies before the commit")

    with pytest.raises(RuntimeError):
        crash(lambda s: billing.create_payment(s, ORDER, body, 4_000, utcnow()))
    assert counts(engine) == (0, 0)
    with sessions() as session, session.begin():
        billing.create_payment(session, ORDER, body, 4_000, utcnow())
    with pytest.raises(RuntimeError):
        crash(lambda s: billing.capture(s, 4_000, utcnow()))
    with sessions() as session:
        assert session.get(Payment, 4_000).status == "authorized"  # type: ignore[union-attr]
    assert counts(engine) == (1, 1)


def stream_events(url: str, stream: str) -> list[Event]:
    client = redis.Redis.from_url(url)
    try:
        return [Event.from_fields(f, m) for m, f in client.xrange(stream)]
    finally:
        client.close()


def read_all(url: str, stream: str, group: str, expected: int) -> list[Event]:
    async def run() -> list[Event]:
        subscriber = RedisSubscriber(redis_client(url, block_ms=200), stream, group, "c1")
        got: list[Event] = []
        try:
            for _ in range(50):
                batch = await subscriber.read(count=100, block_ms=100)
                await subscriber.ack(*batch)
                got += batch
                if len(got) >= expected:
                    break
        finally:
            await subscriber.close()
        return got

    return asyncio.run(run())


def test_the_relay_publishes_every_change_in_order_to_each_consumer_group(
    shop: Shop, start_service: ServiceFactory, redis_url: str, redis_prefix: str
) -> None:
    stream = f"{redis_prefix}events"
    service = start_service(redis_url=redis_url, events_stream=stream)
    alice = shop.customer()
    order = shop.order(alice, quantity=2)
    paid = httpx.post(
        f"{service.url}/api/v1/payments",
        json={"order_id": order["id"], "method": "wallet", "capture": False},
        headers=alice.headers,
    ).json()
    at = f"{service.url}/api/v1/payments/{paid['id']}"
    httpx.post(f"{at}/capture", headers=shop.staff.headers).raise_for_status()
    refund = {"amount": "1.00", "reason": "late delivery"}
    httpx.post(f"{at}/refund", json=refund, headers=shop.staff.headers).raise_for_status()
    wait_until(lambda: len(stream_events(redis_url, stream)) == 3, what="three events")
    for group in ("to-legacy", "analytics"):
        events = read_all(redis_url, stream, group, expected=3)
        assert [(e.type, e.row_version) for e in events] == [
            (CREATED, 1),
            (CAPTURED, 2),
            (REFUNDED, 3),
        ]
        assert {e.payment_id for e in events} == {paid["id"]}
        assert len({e.event_id for e in events}) == 3
    last = stream_events(redis_url, stream)[-1]
    shown = httpx.get(at, headers=alice.headers).json()
    assert last.payload == {
        **shown,
        "refund_reason": "late delivery",
        "row_version": 3,
        "origin": "service",
    }
    assert last.occurred_at.endswith("Z")
    ready = httpx.get(f"{service.url}/readyz").json()
    assert (ready["events"], ready["outbox_pending"]) == ("redis", 0)


def test_the_stream_is_capped(redis_url: str, redis_prefix: str) -> None:
    stream = f"{redis_prefix}capped"
    event = Event("e", CREATED, 1, 1, "2025-01-01T00:00:00Z", {"id": 1})

    async def run() -> None:
        publisher = RedisPublisher(redis_client(redis_url), stream, maxlen=10)
        try:
            for _ in range(6):
                await publisher.publish([event] * 100)
        finally:
            await publisher.close()

    asyncio.run(run())
    client = redis.Redis.from_url(redis_url)
    try:
        # MAXLEN ~ trims whole stream nodes (100 entries by default), never leaves 600.
        assert client.xlen(stream) <= 10 + 100
    finally:
        client.close()


def test_events_made_while_redis_is_down_are_published_when_it_is_back(
    shop: Shop, start_service: ServiceFactory
) -> None:
    with redis_process() as server:
        service = start_service(redis_url=server.url, events_stream="events")
        alice = shop.customer()

        def pay() -> None:
            order = shop.order(alice)
            body = {"order_id": order["id"], "method": "wallet"}
            answer = httpx.post(f"{service.url}/api/v1/payments", json=body, headers=alice.headers)
            assert answer.status_code == 201  # payments do not need Redis

        def pending() -> int:
            return int(httpx.get(f"{service.url}/readyz").json()["outbox_pending"])

        pay()
        wait_until(lambda: pending() == 0, what="the first event published")
        server.stop()
        pay()
        pay()
        assert pending() >= 2
        server.start()
        wait_until(lambda: pending() == 0, timeout=20, what="the relay to publish again")
        # The restarted Redis kept nothing; what it has now is what was made during the outage.
        assert [e.type for e in stream_events(server.url, "events")] == [CREATED, CREATED]


def test_a_dead_consumers_events_go_to_another_and_a_restart_resumes(
    redis_url: str, redis_prefix: str
) -> None:
    stream = f"{redis_prefix}events"
    events = [Event(f"e{i}", CREATED, i, 1, "2025-01-01T00:00:00Z", {"id": i}) for i in range(3)]

    async def run() -> None:
        publisher = RedisPublisher(redis_client(redis_url), stream)
        await publisher.publish(events)
        await publisher.close()

        def consumer(name: str) -> RedisSubscriber:
            client = redis_client(redis_url, block_ms=100)
            return RedisSubscriber(client, stream, "g", name, claim_idle_ms=50)

        dying = consumer("c1")
        assert [e.event_id for e in await dying.read(count=2, block_ms=100)] == ["e0", "e1"]
        await dying.close()  # died without acking
        restarted = consumer("c1")  # comes back under its name: gets its own unacked first
        again = await restarted.read(count=10, block_ms=100)
        assert [e.event_id for e in again] == ["e0", "e1"]
        await restarted.close()
        other = consumer("c2")  # c1 is gone for good: c2 claims what c1 held once it idles
        fresh = await other.read(count=10, block_ms=100)
        assert [e.event_id for e in fresh] == ["e2"]
        await other.ack(*fresh)
        await asyncio.sleep(0.06)  # the idle time under test
        claimed = await other.read(count=10, block_ms=100)
        assert [e.event_id for e in claimed] == ["e0", "e1"]
        await other.ack(*claimed)
        assert await other.read(count=10, block_ms=50) == []
        await other.close()

    asyncio.run(run())


def test_without_redis_the_in_process_bus_delivers_to_each_group(engine: Engine) -> None:
    sessions = make_session_factory(engine)
    with sessions() as session, session.begin():
        billing.create_payment(session, ORDER, PaymentIn(order_id=7, method="wallet"), 5, utcnow())

    async def run() -> None:
        bus = InProcessBus(claim_idle_seconds=0.05)
        groups = [bus.subscribe("to-legacy"), bus.subscribe("analytics")]
        relay = OutboxRelay(engine, bus)
        other = OutboxRelay(engine, bus)
        assert await relay.publish_pending() == 1
        assert await other.publish_pending() == 0  # one relay at a time (lease)
        for subscriber in groups:
            (event,) = await subscriber.read(block_ms=100)
            assert (event.type, event.payment_id, event.payload["amount"]) == (CREATED, 5, "12.50")
        handled: list[str] = []
        stop = asyncio.Event()

        async def handle(event: Event) -> None:
            handled.append(event.event_id)
            stop.set()

        # Not acked by the first read: delivered again once it idles, then acked by `consume`.
        await consume(groups[0], handle, stop, block_ms=200)
        assert len(handled) == 1
        assert await groups[0].read(block_ms=100) == []

    asyncio.run(run())
    with engine.connect() as conn:
        published = conn.scalar(select(OutboxEvent.published_at))
    assert published is not None
    payload = json.loads(make_session_factory(engine)().scalars(select(OutboxEvent.payload)).one())
    assert payload["origin"] == "service"
