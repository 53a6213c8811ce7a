"""Void: staff release an authorized payment (its order was cancelled); one `payment.voided`
event through the outbox; 409 `not-voidable` in any other state; Idempotency-Key honoured as
for capture and refund. The monolith has no such route (it voids only inside its order cancel),
so to anyone but staff the service answers as the monolith does: 404, no such resource."""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy import select

from services.payment.db import make_engine
from services.payment.models import OutboxEvent
from tests.services.payment.conftest import Customer, ServerThread, ServiceFactory, Shop

CARD = {"method": "card", "card_token": "tok_visa"}


def authorized(shop: Shop, service: ServerThread, who: Customer) -> dict[str, Any]:
    order = shop.order(who)
    body = {"order_id": order["id"], **CARD, "capture": False}
    made = httpx.post(f"{service.url}/api/v1/payments", json=body, headers=who.headers)
    assert made.status_code == 201, made.text
    assert made.json()["status"] == "authorized"
    return dict(made.json())


def void(
    service: ServerThread, payment_id: int, who: Customer, key: str | None = None
) -> httpx.Response:
    headers = {**who.headers, **({"Idempotency-Key": key} if key else {})}
    return httpx.post(f"{service.url}/api/v1/payments/{payment_id}/void", headers=headers)


def test_an_authorized_payment_is_voided_once_with_its_event(
    shop: Shop, start_service: ServiceFactory, database_url: str
) -> None:
    service = start_service(database_url)
    alice = shop.customer()
    paid = authorized(shop, service, alice)
    done = void(service, paid["id"], shop.staff)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "voided"
    assert done.json()["refunded_amount"] == "0.00"
    seen = httpx.get(f"{service.url}/api/v1/payments/{paid['id']}", headers=alice.headers)
    assert seen.json()["status"] == "voided"

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            events = conn.execute(
                select(OutboxEvent.event_type, OutboxEvent.row_version, OutboxEvent.payload)
                .where(OutboxEvent.aggregate_id == paid["id"])
                .order_by(OutboxEvent.id)
            ).all()
    finally:
        engine.dispose()
    assert [(e.event_type, e.row_version) for e in events] == [
        ("payment.created", 1),
        ("payment.voided", 2),
    ]
    payload = json.loads(events[-1].payload)
    assert (payload["status"], payload["origin"]) == ("voided", "service")

    again = void(service, paid["id"], shop.staff)
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json()["type"].endswith("/not-voidable")
    assert "voided" in again.json()["detail"]


def test_only_an_authorized_payment_can_be_voided(
    shop: Shop, start_service: ServiceFactory
) -> None:
    service = start_service()
    alice = shop.customer()
    order = shop.order(alice)
    captured = httpx.post(
        f"{service.url}/api/v1/payments",
        json={"order_id": order["id"], **CARD},
        headers=alice.headers,
    ).json()
    refused = void(service, captured["id"], shop.staff)
    assert refused.status_code == 409
    assert refused.json()["type"] == "https://problems.legacy-shop.example/not-voidable"
    assert refused.json()["status"] == 409
    assert void(service, 4_000_000, shop.staff).status_code == 404


def test_void_is_staff_only_and_hidden_from_everyone_else(
    shop: Shop, start_service: ServiceFactory
) -> None:
    service = start_service()
    alice = shop.customer()
    paid = authorized(shop, service, alice)
    path = f"/api/v1/payments/{paid['id']}/void"
    # As the monolith answers a route it does not have, whoever asks (contract parity).
    monolith = shop.http.post(path, headers=alice.headers)
    for headers in (alice.headers, {}, {"Authorization": "Bearer not-a-token"}):
        answer = httpx.post(f"{service.url}{path}", headers=headers)
        assert answer.status_code == 404
        assert answer.json() == monolith.json()
    still = httpx.get(f"{service.url}/api/v1/payments/{paid['id']}", headers=alice.headers)
    assert still.json()["status"] == "authorized"


def test_a_keyed_void_replays_its_first_answer(shop: Shop, start_service: ServiceFactory) -> None:
    service = start_service()
    alice = shop.customer()
    paid = authorized(shop, service, alice)
    first = void(service, paid["id"], shop.staff, key="void-once")
    again = void(service, paid["id"], shop.staff, key="void-once")
    assert (first.status_code, again.status_code) == (200, 200)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    # Another key is another request: the payment is voided already.
    assert void(service, paid["id"], shop.staff, key="void-twice").status_code == 409


def test_the_monolith_has_no_void_route(shop: Shop) -> None:
    alice = shop.customer()
    order = shop.order(alice)
    made = shop.http.post(
        "/api/v1/payments",
        json={"order_id": order["id"], **CARD, "capture": False},
        headers=alice.headers,
    )
    assert made.status_code == 201, made.text
    answer = shop.http.post(
        f"/api/v1/payments/{made.json()['id']}/void", headers=shop.staff.headers
    )
    assert answer.status_code == 404
    assert answer.json()["detail"] == f"No resource at /api/v1/payments/{made.json()['id']}/void"
