"""The whole move through real servers: the monolith and the payment service on 127.0.0.1, the
data backfilled, a payment captured through the SERVICE's HTTP API after cutover, its events
applied to the monolith's table (from the Redis Stream, or the outbox table without Redis), and
the monolith's own GET /orders/{id} answering "paid"."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from legacy_monolith.app import create_app as create_legacy_app
from legacy_monolith.seed import DEMO_PASSWORD, STAFF_USER
from services.payment.app import create_app as create_service_app
from services.payment.events import RedisSubscriber, redis_client
from services.payment.settings import Settings as ServiceSettings
from services.payment.sync import (
    LegacyApplier,
    backfill,
    follow_once,
    reconcile,
    run_to_legacy,
    to_legacy_once,
)
from tests.legacy_monolith.conftest import make_settings
from tests.services.payment.sync.conftest import Pair
from tests.support import serving, wait_until


@pytest.fixture
def shop(sqlite_pair: Pair) -> Iterator[httpx.Client]:
    """The monolith, served on 127.0.0.1 from the pair's legacy database."""
    with (
        serving(create_legacy_app(make_settings(sqlite_pair.legacy_url))) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        yield http


def login(shop: httpx.Client, email: str, password: str = DEMO_PASSWORD) -> dict[str, str]:
    answer = shop.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def customer_with_an_order(shop: httpx.Client) -> tuple[dict[str, str], int]:
    email = f"user-{secrets.token_hex(6)}@example.com"
    made = shop.post(
        "/api/v1/users", json={"email": email, "password": "correct horse", "full_name": "T"}
    )
    assert made.status_code == 201, made.text
    me = login(shop, email, "correct horse")
    products = shop.get("/api/v1/products", params={"in_stock": True, "per_page": 100}).json()
    product = max(products["items"], key=lambda p: p["stock_qty"])["id"]
    added = shop.post("/api/v1/cart/items", json={"product_id": product}, headers=me)
    assert added.status_code == 201, added.text
    order = shop.post("/api/v1/orders", json={}, headers=me)
    assert order.status_code == 201, order.text
    return me, int(order.json()["id"])


def drain_redis(pair: Pair, url: str, stream: str) -> None:
    async def run() -> None:
        subscriber = RedisSubscriber(redis_client(url, block_ms=20), stream, "to-legacy", "e2e")
        try:
            await run_to_legacy(
                subscriber, LegacyApplier(pair.writer, pair.service), block_ms=20, until_idle=True
            )
        finally:
            await subscriber.close()

    asyncio.run(run())


@pytest.mark.parametrize("source", ["redis", "outbox"])
def test_a_payment_captured_through_the_service_api_shows_paid_in_the_monolith(
    source: str, sqlite_pair: Pair, shop: httpx.Client, request: pytest.FixtureRequest
) -> None:
    pair = sqlite_pair
    backfill(pair.legacy, pair.service)
    options: dict[str, Any] = {
        "database_url": pair.service_url,
        "legacy_url": str(shop.base_url).rstrip("/"),
        "relay_interval_seconds": 0.05,
        "events_stream": f"e2e:{secrets.token_hex(4)}:events",
    }
    if source == "redis":
        options["redis_url"] = request.getfixturevalue("redis_url")
        options["events_stream"] = request.getfixturevalue("redis_prefix") + "events"
    settings = ServiceSettings(**options)
    me, order = customer_with_an_order(shop)
    staff = login(shop, STAFF_USER)

    def order_status() -> dict[str, Any]:
        return dict(shop.get(f"/api/v1/orders/{order}", headers=me).json())

    with (
        serving(create_service_app(settings)) as service,
        httpx.Client(base_url=service, timeout=30) as api,
    ):
        pay = {"order_id": order, "method": "card", "card_token": "tok_visa", "capture": False}
        made = api.post("/api/v1/payments", json=pay, headers=me)
        assert made.status_code == 201, made.text
        paid = made.json()["id"]
        captured = api.post(f"/api/v1/payments/{paid}/capture", headers=staff)
        assert captured.status_code == 200, captured.text
        assert order_status()["status"] == "pending_payment"  # the monolith knows nothing yet

        def applied() -> bool:
            if source == "redis":
                drain_redis(pair, options["redis_url"], settings.events_stream)
            else:
                to_legacy_once(pair.writer, pair.service)
            row = pair.legacy_row(paid)
            return row is not None and row["status"] == "captured"

        wait_until(applied, what="the service's events to reach the monolith's table")

    shown = order_status()
    assert (shown["status"], shown["payment"]) == ("paid", {"id": paid, "status": "captured"})
    assert follow_once(pair.legacy, pair.service, safety_delay=0).counts.written == 0
    assert reconcile(pair.legacy, pair.service, settle=0).drift == 0
