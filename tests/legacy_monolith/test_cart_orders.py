"""Cart and orders: placing from the cart, stock, listing, access and cancelling."""

from __future__ import annotations

from decimal import Decimal

from fastapi.testclient import TestClient

from legacy_monolith.seed import STAFF_USER
from tests.legacy_monolith.conftest import in_stock_product, login, place_order, register


def test_cart_adds_merges_updates_and_removes(client: TestClient) -> None:
    _, headers = register(client)
    product = in_stock_product(client)
    pid = product["id"]
    assert client.get("/api/v1/cart", headers=headers).json()["items"] == []
    client.post("/api/v1/cart/items", json={"product_id": pid, "quantity": 1}, headers=headers)
    merged = client.post(
        "/api/v1/cart/items", json={"product_id": pid, "quantity": 2}, headers=headers
    ).json()
    assert merged["item_count"] == 3
    assert merged["total"] == f"{Decimal(str(product['price'])) * 3:.2f}"
    updated = client.put(f"/api/v1/cart/items/{pid}", json={"quantity": 1}, headers=headers)
    assert updated.json()["items"][0]["quantity"] == 1
    removed = client.delete(f"/api/v1/cart/items/{pid}", headers=headers)
    assert removed.json()["items"] == []
    again = client.delete(f"/api/v1/cart/items/{pid}", headers=headers)
    assert again.status_code == 404


def test_cart_refuses_more_than_the_stock(client: TestClient) -> None:
    _, headers = register(client)
    product = in_stock_product(client, at_least=1)
    answer = client.post(
        "/api/v1/cart/items",
        json={"product_id": product["id"], "quantity": 99},
        headers=headers,
    )
    if int(str(product["stock_qty"])) >= 99:
        assert answer.status_code == 201
        return
    assert answer.status_code == 409
    assert answer.json()["type"].endswith("/out-of-stock")
    assert answer.json()["available"] == product["stock_qty"]


def test_cart_refuses_unknown_products_and_bad_quantities(client: TestClient) -> None:
    _, headers = register(client)
    unknown = client.post("/api/v1/cart/items", json={"product_id": 10**12}, headers=headers)
    assert unknown.status_code == 404
    for quantity in (0, -1, 100, "many"):
        answer = client.post(
            "/api/v1/cart/items", json={"product_id": 1, "quantity": quantity}, headers=headers
        )
        assert answer.status_code == 422, quantity


def test_order_from_cart_takes_stock_and_empties_the_cart(client: TestClient) -> None:
    _, headers = register(client)
    product = in_stock_product(client)
    client.post(
        "/api/v1/cart/items", json={"product_id": product["id"], "quantity": 2}, headers=headers
    )
    answer = client.post("/api/v1/orders", json={"shipping_address": "2 Oak Ave"}, headers=headers)
    assert answer.status_code == 201
    order = answer.json()
    assert answer.headers["location"] == f"/api/v1/orders/{order['id']}"
    assert order["status"] == "pending_payment"
    assert order["payment"] is None
    assert order["total"] == f"{Decimal(str(product['price'])) * 2:.2f}"
    assert order["lines"][0]["sku"] == product["sku"]
    assert client.get("/api/v1/cart", headers=headers).json()["items"] == []
    after = client.get(f"/api/v1/products/{product['id']}").json()
    assert after["stock_qty"] == int(str(product["stock_qty"])) - 2


def test_empty_cart_cannot_be_ordered(client: TestClient) -> None:
    _, headers = register(client)
    answer = client.post("/api/v1/orders", json={}, headers=headers)
    assert answer.status_code == 409
    assert answer.json()["type"].endswith("/cart-empty")


def test_orders_list_newest_first_and_paginated(client: TestClient) -> None:
    _, headers = register(client)
    ids = [place_order(client, headers)["id"] for _ in range(3)]
    page = client.get("/api/v1/orders", params={"per_page": 2}, headers=headers).json()
    assert page["total"] == 3
    assert [o["id"] for o in page["items"]] == sorted(ids, reverse=True)[:2]


def test_someone_elses_order_is_not_found(client: TestClient) -> None:
    _, alice = register(client)
    _, bob = register(client)
    order = place_order(client, alice)
    assert client.get(f"/api/v1/orders/{order['id']}", headers=bob).status_code == 404
    assert client.post(f"/api/v1/orders/{order['id']}/cancel", headers=bob).status_code == 404


def test_cancel_restocks_and_cannot_repeat(client: TestClient) -> None:
    _, headers = register(client)
    order = place_order(client, headers, quantity=2)
    product_id = order["lines"][0]["product_id"]  # type: ignore[index]
    stock_before = client.get(f"/api/v1/products/{product_id}").json()["stock_qty"]
    cancelled = client.post(f"/api/v1/orders/{order['id']}/cancel", headers=headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert client.get(f"/api/v1/products/{product_id}").json()["stock_qty"] == stock_before + 2
    again = client.post(f"/api/v1/orders/{order['id']}/cancel", headers=headers)
    assert again.status_code == 409
    assert again.json()["type"].endswith("/order-not-cancellable")


def test_the_largest_possible_order_fits_the_money_columns(client: TestClient) -> None:
    """Price cap x quantity cap must fit NUMBER(12,2) (PostgreSQL and Oracle refuse overflow)."""
    staff = login(client, STAFF_USER)
    _, headers = register(client)
    product = in_stock_product(client)
    too_dear = client.patch(
        f"/api/v1/products/{product['id']}", json={"price": "1000000.00"}, headers=staff
    )
    assert too_dear.status_code == 422
    top = client.patch(
        f"/api/v1/products/{product['id']}",
        json={"price": "999999.99", "stock_qty": 1_000_000},
        headers=staff,
    )
    assert top.status_code == 200
    try:
        added = client.post(
            "/api/v1/cart/items",
            json={"product_id": product["id"], "quantity": 99},
            headers=headers,
        )
        assert added.status_code == 201
        order = client.post("/api/v1/orders", json={}, headers=headers)
        assert order.status_code == 201, order.text
        assert order.json()["total"] == "98999999.01"
        paid = client.post(
            "/api/v1/payments",
            json={"order_id": order.json()["id"], "method": "wallet", "amount": "98999999.01"},
            headers=headers,
        )
        assert paid.status_code == 201
    finally:
        client.patch(
            f"/api/v1/products/{product['id']}",
            json={"price": product["price"], "stock_qty": product["stock_qty"]},
            headers=staff,
        )
