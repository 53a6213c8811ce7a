"""Idempotency-Key: a retried payment, capture or refund takes effect once and answers the same."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from services.payment.db import utcnow
from services.payment.idempotency import fingerprint
from services.payment.models import IdempotencyKey, OutboxEvent, Payment
from services.payment.schemas import PaymentIn
from tests.services.payment.conftest import Customer, ServerThread, ServiceFactory, Shop

CARD = {"method": "card", "card_token": "tok_visa"}


def post(base: str, path: str, who: Customer, key: str | None, json: Any = None) -> httpx.Response:
    headers = {**who.headers, **({"Idempotency-Key": key} if key is not None else {})}
    return httpx.post(f"{base}{path}", json=json, headers=headers, timeout=30)


def count(server: ServerThread, model: type[Any]) -> int:
    engine = server.server.config.app.state.services.engine  # type: ignore[union-attr]
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(model)))


@pytest.fixture
def started(start_service: ServiceFactory) -> ServerThread:
    return start_service()


def test_a_replay_answers_the_first_answer_and_pays_once(shop: Shop, started: ServerThread) -> None:
    alice = shop.customer()
    order = shop.order(alice)
    body = {"order_id": order["id"], **CARD}
    first = post(started.url, "/api/v1/payments", alice, "checkout-1", body)
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    # The client re-serialises the same body differently: still the same request.
    again = post(started.url, "/api/v1/payments", alice, "checkout-1", {**body, "capture": True})
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["content-type"] == "application/json"
    assert again.content == first.content
    assert count(started, Payment) == 1
    assert count(started, OutboxEvent) == 1
    # Without a key the same request is a new attempt, answered as the monolith answers it.
    assert post(started.url, "/api/v1/payments", alice, None, body).status_code == 409


def test_the_same_key_with_another_request_is_refused(shop: Shop, started: ServerThread) -> None:
    alice = shop.customer()
    order, other = shop.order(alice), shop.order(alice)
    key = secrets.token_hex(8)
    paying = post(started.url, "/api/v1/payments", alice, key, {"order_id": order["id"], **CARD})
    assert paying.status_code == 201
    reused = post(started.url, "/api/v1/payments", alice, key, {"order_id": other["id"], **CARD})
    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert reused.json()["type"] == "https://problems.legacy-shop.example/idempotency-key-reused"
    paid = httpx.get(f"{started.url}/api/v1/payments", headers=alice.headers).json()
    assert paid["total"] == 1
    # Another endpoint with the key is another request too.
    first_id = paid["items"][0]["id"]
    refund = post(started.url, f"/api/v1/payments/{first_id}/refund", shop.staff, key)
    assert refund.status_code == 200  # staff's keys are not alice's
    elsewhere = post(started.url, f"/api/v1/payments/{first_id}/capture", shop.staff, key)
    assert elsewhere.json()["type"].endswith("/idempotency-key-reused")


def test_keys_belong_to_their_user(shop: Shop, started: ServerThread) -> None:
    alice, bob = shop.customer(), shop.customer()
    key = "same-key-for-both"
    for who in (alice, bob):
        order = shop.order(who)
        answer = post(started.url, "/api/v1/payments", who, key, {"order_id": order["id"], **CARD})
        assert answer.status_code == 201
        assert "idempotent-replayed" not in answer.headers
        assert answer.json()["user_id"] == who.id
    assert count(started, Payment) == 2


def test_a_declined_payment_replays_its_402(shop: Shop, started: ServerThread) -> None:
    alice = shop.customer()
    order = shop.order(alice)
    body = {"order_id": order["id"], "method": "card", "card_token": "tok_insufficientFunds"}
    first = post(started.url, "/api/v1/payments", alice, "k-402", body)
    assert first.status_code == 402
    again = post(started.url, "/api/v1/payments", alice, "k-402", body)
    assert (again.status_code, again.content) == (402, first.content)
    assert again.headers["content-type"] == "application/problem+json"
    assert again.headers["idempotent-replayed"] == "true"
    assert count(started, Payment) == 1  # one failed attempt recorded, not two


def test_refund_and_capture_with_a_key_happen_once(shop: Shop, started: ServerThread) -> None:
    alice = shop.customer()
    order = shop.order(alice, quantity=2)
    body = {"order_id": order["id"], "method": "wallet", "capture": False}
    payment = post(started.url, "/api/v1/payments", alice, None, body).json()
    capture = f"/api/v1/payments/{payment['id']}/capture"
    assert post(started.url, capture, shop.staff, "cap").json()["status"] == "captured"
    replayed = post(started.url, capture, shop.staff, "cap")
    assert (replayed.status_code, replayed.headers["idempotent-replayed"]) == (200, "true")
    refund = f"/api/v1/payments/{payment['id']}/refund"
    for _ in range(3):
        answer = post(started.url, refund, shop.staff, "ref", {"amount": "1.00"})
        assert answer.json()["refunded_amount"] == "1.00"
    shown = httpx.get(f"{started.url}/api/v1/payments/{payment['id']}", headers=alice.headers)
    assert shown.json()["refunded_amount"] == "1.00"
    assert count(started, OutboxEvent) == 3  # created, captured, refunded once


def test_errors_of_the_request_are_stored_but_outages_are_not(
    shop: Shop, start_service: ServiceFactory
) -> None:
    alice = shop.customer()
    order = shop.order(alice)

    class FlakyOnce(httpx.HTTPTransport):
        """The monolith unreachable for the first order read: an outage on demand."""

        failed = False

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if "/orders/" in request.url.path and not FlakyOnce.failed:
                FlakyOnce.failed = True
                raise httpx.ConnectError("connection refused", request=request)
            return super().handle_request(request)

    service = start_service(legacy_transport=FlakyOnce())
    body = {"order_id": order["id"], **CARD}
    down = post(service.url, "/api/v1/payments", alice, "retry-me", body)
    assert down.status_code == 503
    assert count(service, IdempotencyKey) == 0  # released: the retry runs again
    retried = post(service.url, "/api/v1/payments", alice, "retry-me", body)
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    unpaid = shop.order(alice)
    wrong = {"order_id": unpaid["id"], "method": "wallet", "amount": "0.01"}
    mismatch = post(service.url, "/api/v1/payments", alice, "wrong", wrong)
    assert mismatch.status_code == 422
    assert post(service.url, "/api/v1/payments", alice, "wrong", wrong).headers[
        "idempotent-replayed"
    ] == ("true")


@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "tab\there", "é-accent"],
    ids=["empty", "256-chars", "control-char", "non-ascii"],
)
def test_invalid_keys_are_422_validation_problems(shop: Shop, service: str, key: str) -> None:
    alice = shop.customer()
    answer = httpx.post(
        f"{service}/api/v1/payments",
        json={"order_id": 1, **CARD},
        headers=[*alice.headers.items(), ("Idempotency-Key", key.encode())],
    )
    assert answer.status_code == 422
    problem = answer.json()
    assert problem["type"].endswith("/validation-failed")
    assert problem["errors"][0]["location"] == "header.Idempotency-Key"


def test_a_255_character_key_is_fine(shop: Shop, service: str) -> None:
    alice = shop.customer()
    order = shop.order(alice)
    answer = post(service, "/api/v1/payments", alice, "k" * 255, {"order_id": order["id"], **CARD})
    assert answer.status_code == 201


def test_concurrent_requests_with_one_key_make_one_payment(
    shop: Shop, start_service: ServiceFactory, database_url: str
) -> None:
    service = start_service(database_url)
    alice = shop.customer()
    order = shop.order(alice)
    body = {"order_id": order["id"], **CARD}
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: post(service.url, "/api/v1/payments", alice, "double-tap", body), range(8)
            )
        )
    made = {a.json()["id"] for a in answers if a.status_code == 201}
    assert len(made) == 1, [a.text for a in answers]
    for answer in answers:
        # Each one either made it, replayed it, or was told to retry (still in progress).
        assert answer.status_code in (201, 409), answer.text
        if answer.status_code == 409:
            assert answer.json()["type"].endswith("/idempotency-key-in-progress")
            assert answer.headers["retry-after"] == "1"
    assert sum("idempotent-replayed" not in a.headers for a in answers if a.status_code == 201) == 1
    assert count(service, Payment) == 1


def test_an_expired_key_is_a_new_key(shop: Shop, start_service: ServiceFactory) -> None:
    service = start_service(idempotency_ttl_seconds=0.05)
    alice = shop.customer()
    first, second = shop.order(alice), shop.order(alice)
    made = post(service.url, "/api/v1/payments", alice, "k", {"order_id": first["id"], **CARD})
    assert made.status_code == 201
    time.sleep(0.1)  # the TTL under test, not a wait for readiness
    reused = post(service.url, "/api/v1/payments", alice, "k", {"order_id": second["id"], **CARD})
    assert reused.status_code == 201
    assert count(service, IdempotencyKey) == 1


def claim_in_flight(
    server: ServerThread, user_id: int, key: str, body: dict[str, Any], age: float
) -> None:
    """A request with `key` that started `age` seconds ago and has not finished (or died)."""
    endpoint = "POST /api/v1/payments"
    digest = fingerprint(endpoint, PaymentIn.model_validate(body).model_dump(mode="json"))
    started = utcnow() - timedelta(seconds=age)
    sessions = server.server.config.app.state.services.sessions  # type: ignore[union-attr]
    with sessions() as session, session.begin():
        session.add(
            IdempotencyKey(
                idem_key=key,
                user_id=user_id,
                endpoint=endpoint,
                request_sha256=digest,
                state="in_progress",
                created_at=started,
                expires_at=started + timedelta(hours=24),
            )
        )


def test_a_key_in_progress_is_409_with_retry_after(
    shop: Shop, start_service: ServiceFactory
) -> None:
    service = start_service(idempotency_wait_seconds=0.1)
    alice = shop.customer()
    body = {"order_id": shop.order(alice)["id"], **CARD}
    claim_in_flight(service, alice.id, "busy", body, age=0)
    answer = post(service.url, "/api/v1/payments", alice, "busy", body)
    assert answer.status_code == 409
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["type"].endswith("/idempotency-key-in-progress")
    assert count(service, Payment) == 0


def test_a_key_held_by_a_request_that_died_is_taken_over(
    shop: Shop, start_service: ServiceFactory
) -> None:
    service = start_service(idempotency_lock_seconds=30)
    alice = shop.customer()
    body = {"order_id": shop.order(alice)["id"], **CARD}
    claim_in_flight(service, alice.id, "orphan", body, age=31)
    answer = post(service.url, "/api/v1/payments", alice, "orphan", body)
    assert answer.status_code == 201
    again = post(service.url, "/api/v1/payments", alice, "orphan", body)
    assert (again.status_code, again.headers["idempotent-replayed"]) == (201, "true")
    assert count(service, Payment) == 1


def paid_order(shop: Shop, base: str, who: Customer, amount_quantity: int = 2) -> dict[str, Any]:
    order = shop.order(who, quantity=amount_quantity)
    paid = post(base, "/api/v1/payments", who, None, {"order_id": order["id"], **CARD})
    assert paid.status_code == 201, paid.text
    return dict(paid.json())


def test_a_zero_padded_payment_id_is_the_same_payment_as_on_the_monolith(
    shop: Shop, start_service: ServiceFactory, database_url: str
) -> None:
    """A padded id is parsed to the same payment (never stored raw: it would overflow the
    key's endpoint column on PostgreSQL and answer 500), and a key names the operation, not
    its spelling: /payments/1/refund and /payments/01/refund are one request."""
    started = start_service(database_url)
    alice = shop.customer()
    pad = "0" * 250

    # Missing, padded: the monolith's 404, with or without a key, on both backends.
    missing = f"/api/v1/payments/{pad}999999999999/refund"
    legacy = post(shop.url, missing, shop.staff, None, {})
    assert legacy.status_code == 404, legacy.text
    for key in (None, "padded-missing", "padded-missing"):
        answer = post(started.url, missing, shop.staff, key, {})
        assert (answer.status_code, answer.json()) == (404, legacy.json())

    # Existing, padded: the monolith refunds its own payment as if the id were unpadded.
    legacy_paid = paid_order(shop, shop.url, alice)
    refunded = post(shop.url, f"/api/v1/payments/{pad}{legacy_paid['id']}/refund", shop.staff, None)
    assert refunded.status_code == 200, refunded.text
    assert refunded.json()["id"] == legacy_paid["id"]

    # ... and so does the service, replaying one key across spellings of the id.
    payment = paid_order(shop, started.url, alice)
    spellings = [str(payment["id"]), f"0{payment['id']}", f"{pad}{payment['id']}"]
    answers = [
        post(
            started.url,
            f"/api/v1/payments/{s}/refund",
            shop.staff,
            "one-refund",
            {"amount": "1.00"},
        )
        for s in spellings
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.headers.get("idempotent-replayed") for a in answers] == [None, "true", "true"]
    assert {a.content for a in answers} == {answers[0].content}
    assert answers[0].json()["refunded_amount"] == "1.00"
    shown = httpx.get(f"{started.url}/api/v1/payments/{payment['id']}", headers=alice.headers)
    assert shown.json()["refunded_amount"] == "1.00"  # refunded once
    with started.server.config.app.state.services.engine.connect() as conn:  # type: ignore[union-attr]
        endpoints = set(conn.scalars(select(IdempotencyKey.endpoint)))
    assert endpoints == {
        "POST /api/v1/payments/999999999999/refund",
        f"POST /api/v1/payments/{payment['id']}/refund",
    }


def test_a_refund_without_a_body_and_with_an_empty_one_are_the_same_request(
    shop: Shop, started: ServerThread
) -> None:
    alice = shop.customer()
    payment = paid_order(shop, started.url, alice)
    refund = f"/api/v1/payments/{payment['id']}/refund"
    first = post(started.url, refund, shop.staff, "whole-balance")  # no body: the whole balance
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "refunded"
    for body in ({}, {"amount": None, "reason": None}):
        again = post(started.url, refund, shop.staff, "whole-balance", body)
        assert (again.status_code, again.headers.get("idempotent-replayed")) == (200, "true")
        assert again.content == first.content
    # The other way round: `{}` first, then no body.
    other = paid_order(shop, started.url, alice)
    path = f"/api/v1/payments/{other['id']}/refund"
    assert post(started.url, path, shop.staff, "empty-first", {}).status_code == 200
    replayed = post(started.url, path, shop.staff, "empty-first")
    assert (replayed.status_code, replayed.headers.get("idempotent-replayed")) == (200, "true")
    # A different refund with the same key is still refused.
    changed = post(started.url, path, shop.staff, "empty-first", {"amount": "1.00"})
    assert changed.status_code == 422
    assert changed.json()["type"].endswith("/idempotency-key-reused")
