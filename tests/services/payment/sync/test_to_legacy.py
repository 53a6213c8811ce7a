"""To-legacy: a payment captured in the service makes the monolith show its order as paid; a
duplicate is applied once; an old event never overwrites a newer row; echoes of the monolith's
own changes are not sent back, and follow does not re-import the service's writes. Sources: the
outbox table, a real Redis Stream (consumer group) and the in-process bus."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update

from datasync.state import JOB_TO_LEGACY, load_checkpoint
from datasync.state import handled as events_done
from legacy_monolith.app import create_app as create_legacy_app
from legacy_monolith.models import Order, User
from legacy_monolith.models import Payment as LegacyPayment
from legacy_monolith.seed import DEMO_USER
from services.payment import billing
from services.payment.db import make_session_factory, utcnow
from services.payment.events import (
    Event,
    InProcessBus,
    RedisPublisher,
    RedisSubscriber,
    redis_client,
)
from services.payment.models import OutboxEvent
from services.payment.schemas import LegacyOrder, PaymentIn
from services.payment.sync import (
    LegacyApplier,
    apply_events,
    backfill,
    follow_once,
    reconcile,
    run_to_legacy,
    spec,
    to_legacy_once,
)
from tests.legacy_monolith.conftest import login, make_settings
from tests.services.payment.sync.conftest import Pair

SERVICE_ID = 3_999_999_999_999_999


def new_order(pair: Pair, total: str = "42.00") -> LegacyOrder:
    """An unpaid order of the demo customer, as the monolith would have placed it."""
    with pair.writer.begin() as conn:
        user_id = conn.scalar(select(User.id).where(User.email == DEMO_USER))
        order_id = conn.execute(
            insert(Order)
            .values(user_id=user_id, total_amount=Decimal(total), currency="EUR", state="placed")
            .returning(Order.id)
        ).scalar_one()
    return LegacyOrder(
        id=order_id, user_id=user_id, status="pending_payment", total=total, currency="EUR"
    )


def service_payment(pair: Pair, order: LegacyOrder, payment_id: int = SERVICE_ID) -> int:
    """Authorize, then capture, through the service's own billing code (outbox events)."""
    sessions = make_session_factory(pair.service)
    body = PaymentIn(order_id=order.id, method="card", card_token="tok_visa", capture=False)
    with sessions() as session, session.begin():
        billing.create_payment(session, order, body, payment_id, utcnow())
    with sessions() as session, session.begin():
        billing.capture(session, payment_id, utcnow())
    return payment_id


def outbox_events(pair: Pair, payment_id: int) -> list[Event]:
    with make_session_factory(pair.service)() as session:
        rows = session.scalars(
            select(OutboxEvent)
            .where(OutboxEvent.aggregate_id == payment_id)
            .order_by(OutboxEvent.id)
        )
        return [Event.from_outbox(row) for row in rows]


def order_status(pair: Pair, order_id: int) -> dict[str, Any]:
    with TestClient(create_legacy_app(make_settings(pair.legacy_url))) as shop:
        answer = shop.get(f"/api/v1/orders/{order_id}", headers=login(shop, DEMO_USER))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_payment_captured_in_the_service_shows_its_order_paid(pair: Pair) -> None:
    order = new_order(pair)
    assert order_status(pair, order.id)["status"] == "pending_payment"
    paid = service_payment(pair, order)

    result = to_legacy_once(pair.writer, pair.service)  # the outbox table as the source

    assert result.outcomes == {"applied": 2}
    shown = order_status(pair, order.id)
    assert (shown["status"], shown["payment"]) == ("paid", {"id": paid, "status": "captured"})
    assert pair.legacy_rows()[paid] == pair.service_rows()[paid]
    with pair.service.connect() as conn:
        checkpoint = load_checkpoint(conn, spec().name, JOB_TO_LEGACY)
    assert checkpoint is not None
    assert (checkpoint.rows_done, checkpoint.rows_written) == (2, 2)
    assert to_legacy_once(pair.writer, pair.service).events == 0  # nothing left to read


def test_a_duplicate_is_applied_once_and_an_old_event_never_overwrites(pair: Pair) -> None:
    paid = service_payment(pair, new_order(pair))
    created, captured = outbox_events(pair, paid)

    assert apply_events(pair.writer, pair.service, [created, created]) == {
        "applied": 1,
        "duplicate": 1,
    }
    assert apply_events(pair.writer, pair.service, [captured]) == {"applied": 1}
    assert apply_events(pair.writer, pair.service, [captured, created]) == {"duplicate": 2}
    # The same old version again under a new id (a re-publication) is older than what is there.
    again = replace(created, event_id="00000000-0000-4000-8000-000000000001")
    assert apply_events(pair.writer, pair.service, [again]) == {"stale": 1}
    assert pair.legacy_row(paid)["status"] == "captured"  # type: ignore[index]

    # The monolith voids it later (its own write after cutover): an event older than that
    # write is not applied, even with a higher row_version than any applied so far.
    voided_at = utcnow() + timedelta(seconds=60)  # well beyond the 5 s clock-skew tolerance
    with pair.writer.begin() as conn:
        conn.execute(
            update(LegacyPayment)
            .where(LegacyPayment.id == paid)
            .values(status="voided", updated_at=voided_at)
        )
    late = replace(
        captured,
        event_id="00000000-0000-4000-8000-000000000002",
        row_version=3,
        payload={**captured.payload, "status": "refunded", "row_version": 3},
    )
    assert apply_events(pair.writer, pair.service, [late]) == {"stale": 1}
    assert pair.legacy_row(paid)["status"] == "voided"  # type: ignore[index]
    with pair.service.connect() as conn:
        recorded = dict(conn.execute(select(events_done.c.event_id, events_done.c.outcome)).all())
    assert recorded == {
        created.event_id: "applied",
        captured.event_id: "applied",
        again.event_id: "stale",
        late.event_id: "stale",
    }


def test_echoes_are_not_sent_back_and_follow_does_not_reimport(sqlite_pair: Pair) -> None:
    pair = sqlite_pair
    backfill(pair.legacy, pair.service)
    # A monolith change copied by follow has an outbox event with origin 'legacy': an echo.
    changed = min(pair.legacy_rows())
    with pair.writer.begin() as conn:
        conn.execute(
            update(LegacyPayment)
            .where(LegacyPayment.id == changed)
            .values(refund_reason="asked by phone", updated_at=utcnow())
        )
    follow_once(pair.legacy, pair.service, safety_delay=0)
    before = pair.legacy_row(changed)
    paid = service_payment(pair, new_order(pair))

    result = to_legacy_once(pair.writer, pair.service)

    assert result.outcomes == {"echo": 1, "applied": 2}
    assert pair.legacy_row(changed) == before
    # The service's writes, now in the monolith's table, are not imported back as changes.
    with pair.service.connect() as conn:
        outbox_before = conn.scalar(select(OutboxEvent.id).order_by(OutboxEvent.id.desc()))
    polled = follow_once(pair.legacy, pair.service, safety_delay=0, lookback=10**9)
    assert polled.counts.written == 0
    row = pair.service_row(paid)
    assert (row["origin"], row["row_version"]) == ("service", 2)
    with pair.service.connect() as conn:
        assert conn.scalar(select(OutboxEvent.id).order_by(OutboxEvent.id.desc())) == outbox_before
    assert reconcile(pair.legacy, pair.service, settle=0).drift == 0


@pytest.fixture
def stream(redis_url: str, redis_prefix: str) -> str:
    """A stream key under the test's own Redis prefix (deleted afterwards)."""
    return f"{redis_prefix}payment:events"


async def _through_redis(
    url: str, stream: str, events: list[Event], applier: LegacyApplier, consumer: str
) -> dict[str, int]:
    publisher = RedisPublisher(redis_client(url), stream)
    await publisher.publish(events)
    await publisher.close()
    subscriber = RedisSubscriber(redis_client(url, block_ms=50), stream, "to-legacy", consumer)
    try:
        result = await run_to_legacy(subscriber, applier, block_ms=50, until_idle=True)
    finally:
        await subscriber.close()
    return dict(result.outcomes)


def test_events_from_a_redis_stream_are_applied_once_and_acked(
    sqlite_pair: Pair, redis_url: str, stream: str
) -> None:
    pair = sqlite_pair
    order = new_order(pair)
    paid = service_payment(pair, order)
    events = outbox_events(pair, paid)
    applier = LegacyApplier(pair.writer, pair.service)

    first = asyncio.run(_through_redis(redis_url, stream, events, applier, "one"))
    # Published twice (at-least-once relay): the second copies are duplicates.
    second = asyncio.run(_through_redis(redis_url, stream, events, applier, "two"))

    assert (first, second) == ({"applied": 2}, {"duplicate": 2})
    assert order_status(pair, order.id)["status"] == "paid"
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.xpending(stream, "to-legacy")["pending"] == 0
    finally:
        client.close()
    with pair.service.connect() as conn:
        checkpoint = load_checkpoint(conn, spec().name, JOB_TO_LEGACY)
    assert checkpoint is not None
    assert checkpoint.position_ref is not None
    assert checkpoint.position_ref.count("-") == 1  # a stream entry id


def test_events_from_the_in_process_bus_are_applied(sqlite_pair: Pair) -> None:
    pair = sqlite_pair
    order = new_order(pair)
    paid = service_payment(pair, order)

    async def run() -> dict[str, int]:
        bus = InProcessBus()
        subscriber = bus.subscribe("to-legacy")
        await bus.publish(outbox_events(pair, paid))
        applier = LegacyApplier(pair.writer, pair.service)
        result = await run_to_legacy(subscriber, applier, block_ms=10, until_idle=True)
        return dict(result.outcomes)

    assert asyncio.run(run()) == {"applied": 2}
    assert order_status(pair, order.id)["status"] == "paid"


def test_a_row_the_legacy_database_refuses_is_counted_not_blocking(sqlite_pair: Pair) -> None:
    pair = sqlite_pair
    paid = service_payment(pair, new_order(pair))
    created, captured = outbox_events(pair, paid)
    orphan = replace(
        created,
        event_id="00000000-0000-4000-8000-000000000003",
        payment_id=paid - 1,
        payload={**created.payload, "id": paid - 1, "order_id": 10**9},  # no such order
    )
    assert apply_events(pair.writer, pair.service, [orphan, created, captured]) == {
        "rejected": 1,
        "applied": 2,
    }
    assert pair.legacy_row(paid - 1) is None
    assert json.loads(json.dumps(created.payload))["origin"] == "service"


def test_a_service_clock_behind_the_monolith_does_not_make_a_refund_stale(pair: Pair) -> None:
    """The monolith stamped the payment with its clock 3 s ahead; the service, its clock behind,
    refunds it: within the clock-skew tolerance (5 s) the refund is applied, not 'stale'."""
    from services.payment.schemas import RefundIn

    ahead = utcnow() + timedelta(seconds=3)
    paid = pair.insert_legacy(status="captured", created_at=ahead, updated_at=ahead)
    backfill(pair.legacy, pair.service)
    sessions = make_session_factory(pair.service)
    with sessions() as session, session.begin():
        billing.refund(session, paid, RefundIn(reason="changed my mind"), utcnow())
    (refunded,) = outbox_events(pair, paid)
    assert refunded.payload["origin"] == "service"
    assert refunded.payload["updated_at"] < pair.legacy_row(paid)["updated_at"].isoformat()  # type: ignore[index]

    # With no tolerance the two clocks' difference wins (the old behaviour): stale forever.
    assert apply_events(pair.writer, pair.service, [refunded], max_clock_skew=0) == {"stale": 1}
    again = replace(refunded, event_id="00000000-0000-4000-8000-000000000009")
    assert apply_events(pair.writer, pair.service, [again]) == {"applied": 1}
    row = pair.legacy_row(paid)
    assert row is not None
    assert (row["status"], row["refund_reason"]) == ("refunded", "changed my mind")
    assert pair.legacy_rows()[paid] == pair.service_rows()[paid]
