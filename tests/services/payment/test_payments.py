"""What the service adds around the monolith's contract: concurrency on one order, the monolith
being down, who the caller is (cached briefly), and payments the monolith made first."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_DOWN, Decimal

import httpx
import pytest
from sqlalchemy import func, select

from services.payment.db import make_engine
from services.payment.models import OutboxEvent, Payment
from tests.services.payment.conftest import ServiceFactory, Shop
from tests.support import free_port

CARD = {"method": "card", "card_token": "tok_visa"}


def test_concurrent_payments_for_one_order_make_one_payment(
    shop: Shop, start_service: ServiceFactory, database_url: str
) -> None:
    service = start_service(database_url)
    alice = shop.customer()
    order = shop.order(alice)

    def pay(_: int) -> httpx.Response:
        body = {"order_id": order["id"], **CARD}
        return httpx.post(f"{service.url}/api/v1/payments", json=body, headers=alice.headers)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(pay, range(8)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] + [409] * 7, [a.text for a in answers]
    made = next(a.json()["id"] for a in answers if a.status_code == 201)
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["payment_id"] == made
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Payment)) == 1
            assert conn.scalar(select(func.count()).select_from(OutboxEvent)) == 1
    finally:
        engine.dispose()


def test_concurrent_refunds_never_exceed_the_captured_amount(
    shop: Shop, start_service: ServiceFactory, database_url: str
) -> None:
    service = start_service(database_url)
    alice = shop.customer()
    order = shop.order(alice, quantity=2)
    paid = httpx.post(
        f"{service.url}/api/v1/payments",
        json={"order_id": order["id"], **CARD},
        headers=alice.headers,
    ).json()
    total = Decimal(paid["amount"])
    share = (total / 3).quantize(Decimal("0.01"), rounding=ROUND_DOWN)

    def refund(_: int) -> httpx.Response:
        return httpx.post(
            f"{service.url}/api/v1/payments/{paid['id']}/refund",
            json={"amount": str(share)},
            headers=shop.staff.headers,
        )

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(refund, range(6)))
    assert sorted(a.status_code for a in answers).count(200) == 3
    final = httpx.get(f"{service.url}/api/v1/payments/{paid['id']}", headers=alice.headers).json()
    assert Decimal(final["refunded_amount"]) == share * 3 <= total


def test_monolith_down_is_a_503_problem_and_nothing_is_made(
    shop: Shop, start_service: ServiceFactory
) -> None:
    alice = shop.customer()
    order = shop.order(alice)
    service = start_service(legacy_url=f"http://127.0.0.1:{free_port()}")
    answer = httpx.post(
        f"{service.url}/api/v1/payments",
        json={"order_id": order["id"], **CARD},
        headers=alice.headers,
    )
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["retry-after"] == "1"
    assert answer.json()["type"] == "https://problems.legacy-shop.example/legacy-unavailable"
    # Liveness does not depend on the monolith; readiness reports the database.
    assert httpx.get(f"{service.url}/healthz").status_code == 200
    assert httpx.get(f"{service.url}/readyz").json()["outbox_pending"] == 0


class Counting(httpx.HTTPTransport):
    """The real transport, counting calls to the monolith's "who am I"."""

    whoami = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/users/me":
            Counting.whoami += 1
        return super().handle_request(request)


def test_accepted_tokens_are_cached_briefly_and_logout_is_seen_after(
    shop: Shop, start_service: ServiceFactory
) -> None:
    alice = shop.customer()
    counting = Counting()
    Counting.whoami = 0
    cached = start_service()
    uncached = start_service(legacy_transport=counting, auth_cache_seconds=0)
    for _ in range(3):
        for service in (cached, uncached):
            listed = httpx.get(f"{service.url}/api/v1/payments", headers=alice.headers)
            assert listed.status_code == 200
    assert Counting.whoami == 3  # without the cache every call asks the monolith
    assert shop.http.post("/api/v1/auth/logout", headers=alice.headers).status_code == 204
    refused = httpx.get(f"{uncached.url}/api/v1/payments", headers=alice.headers)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Bearer realm="legacy-shop"'
    # With the cache an accepted token stays accepted for its TTL (30 s): logouts arrive late.
    assert httpx.get(f"{cached.url}/api/v1/payments", headers=alice.headers).status_code == 200


def test_a_payment_the_monolith_made_blocks_a_second_one_here(shop: Shop, service: str) -> None:
    """Before the sync has copied it, the monolith's own payment of the order still counts."""
    alice = shop.customer()
    order = shop.order(alice)
    legacy = shop.http.post(
        "/api/v1/payments", json={"order_id": order["id"], **CARD}, headers=alice.headers
    )
    assert legacy.status_code == 201
    answer = httpx.post(
        f"{service}/api/v1/payments",
        json={"order_id": order["id"], **CARD},
        headers=alice.headers,
    )
    assert answer.status_code == 409
    assert answer.json()["payment_id"] == legacy.json()["id"]


@pytest.mark.parametrize("per_page", [1, 2, 3], ids=lambda n: f"per_page={n}")
def test_service_payments_list_newest_first_across_pages(
    shop: Shop, service: str, per_page: int
) -> None:
    alice = shop.customer()
    made = []
    for _ in range(4):
        order = shop.order(alice)
        answer = httpx.post(
            f"{service}/api/v1/payments",
            json={"order_id": order["id"], "method": "wallet"},
            headers=alice.headers,
        )
        made.append(answer.json()["id"])
    assert made == sorted(made, reverse=True)  # service ids count down
    seen = []
    for page in range(1, 5):
        body = httpx.get(
            f"{service}/api/v1/payments",
            params={"per_page": per_page, "page": page},
            headers=alice.headers,
        ).json()
        seen += [p["id"] for p in body["items"]]
    assert seen == made[::-1]
