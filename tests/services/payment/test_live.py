"""A payment's live channel (`/api/v1/live/payments/{id}`, a WebSocket): the app watches a payment
it made settle, with the token it uses everywhere, and sees nobody else's payments."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from services.payment.app import create_app
from tests.services.payment.conftest import ServerThread, Shop, service_settings

CARD = {"method": "card", "card_token": "tok_visa"}


@pytest.fixture(scope="module")
def live_service(monolith: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('live') / 'payment.db'}"
    server = ServerThread(
        create_app(service_settings(url, legacy_url=monolith.url)), ws="auto"
    ).start()
    try:
        yield server.url
    finally:
        server.stop()


def channel(service: str, payment: int, headers: dict[str, str]) -> ClientConnection:
    url = service.replace("http://", "ws://") + f"/api/v1/live/payments/{payment}"
    return connect(url, additional_headers=headers, open_timeout=10)


def test_the_channel_shows_the_payment_then_each_change(shop: Shop, live_service: str) -> None:
    alice = shop.customer()
    order = shop.order(alice)
    made = httpx.post(
        f"{live_service}/api/v1/payments",
        json={"order_id": order["id"], **CARD, "capture": False},
        headers=alice.headers,
    )
    assert made.status_code == 201, made.text
    payment = made.json()["id"]
    with channel(live_service, payment, alice.headers) as live:
        first = json.loads(live.recv(timeout=10))
        shown = httpx.get(f"{live_service}/api/v1/payments/{payment}", headers=alice.headers)
        assert first == shown.json()
        assert first["status"] == "authorized"
        captured = httpx.post(  # the shop captures it when the order ships
            f"{live_service}/api/v1/payments/{payment}/capture", headers=shop.staff.headers
        )
        assert captured.status_code == 200, captured.text
        second = json.loads(live.recv(timeout=10))
        assert second["status"] == "captured"
        assert second == captured.json()


def test_no_token_or_someone_elses_payment_closes_the_channel(
    shop: Shop, live_service: str
) -> None:
    alice, mallory = shop.customer(), shop.customer()
    order = shop.order(alice)
    made = httpx.post(
        f"{live_service}/api/v1/payments",
        json={"order_id": order["id"], **CARD},
        headers=alice.headers,
    )
    payment = made.json()["id"]
    for headers in ({}, mallory.headers):
        with pytest.raises(InvalidStatus) as refused:
            channel(live_service, payment, headers)
        assert refused.value.response.status_code == 403  # closed before it opened
    assert "amount" not in str(refused.value.response.body)  # nothing of the payment shown
