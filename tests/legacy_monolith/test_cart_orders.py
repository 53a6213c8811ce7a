"""Cart and orders: placing from the cart, stock, listing, access and cancelling."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
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


def scarce_product(client: TestClient, stock: int) -> dict[str, object]:
    """A product of the test's own with exactly `stock` left (set by staff)."""
    staff = login(client, STAFF_USER)
    product = in_stock_product(client)
    answer = client.patch(
        f"/api/v1/products/{product['id']}", json={"stock_qty": stock}, headers=staff
    )
    assert answer.status_code == 200
    return dict(answer.json())


def test_cart_refuses_more_than_the_stock(client: TestClient) -> None:
    _, headers = register(client)
    product = scarce_product(client, 3)
    answer = client.post(
        "/api/v1/cart/items", json={"product_id": product["id"], "quantity": 4}, headers=headers
    )
    assert answer.status_code == 409
    assert answer.json()["type"].endswith("/out-of-stock")
    assert answer.json()["available"] == 3
    ok = client.post(
        "/api/v1/cart/items", json={"product_id": product["id"], "quantity": 3}, headers=headers
    )
    assert ok.status_code == 201


def test_order_refused_when_stock_ran_out_after_carting(client: TestClient) -> None:
    staff = login(client, STAFF_USER)
    _, headers = register(client)
    product = scarce_product(client, 5)
    client.post(
        "/api/v1/cart/items", json={"product_id": product["id"], "quantity": 4}, headers=headers
    )
    client.patch(f"/api/v1/products/{product['id']}", json={"stock_qty": 2}, headers=staff)
    answer = client.post("/api/v1/orders", json={}, headers=headers)
    assert answer.status_code == 409
    assert answer.json()["type"].endswith("/out-of-stock")
    assert answer.json()["product_id"] == product["id"]
    assert client.get(f"/api/v1/products/{product['id']}").json()["stock_qty"] == 2
    assert len(client.get("/api/v1/cart", headers=headers).json()["items"]) == 1


def test_a_double_tapped_checkout_places_one_order(client: TestClient) -> None:
    _, headers = register(client)
    product = in_stock_product(client)
    client.post("/api/v1/cart/items", json={"product_id": product["id"]}, headers=headers)
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(
            pool.map(lambda _: client.post("/api/v1/orders", json={}, headers=headers), range(4))
        )
    assert sorted(a.status_code for a in answers) == [201, 409, 409, 409]
    assert client.get("/api/v1/orders", headers=headers).json()["total"] == 1
    taken = int(str(product["stock_qty"])) - 1
    assert client.get(f"/api/v1/products/{product['id']}").json()["stock_qty"] == taken


def test_concurrent_adds_of_one_product_merge(client: TestClient) -> None:
    _, headers = register(client)
    product = in_stock_product(client)
    body = {"product_id": product["id"], "quantity": 1}
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(
            pool.map(
                lambda _: client.post("/api/v1/cart/items", json=body, headers=headers), range(4)
            )
        )
    assert [a.status_code for a in answers] == [201] * 4
    cart = client.get("/api/v1/cart", headers=headers).json()
    assert [(i["product_id"], i["quantity"]) for i in cart["items"]] == [(product["id"], 4)]


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
