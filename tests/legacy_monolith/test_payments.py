"""Payments and the life-cycle the orders feature reads: paid only when captured."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from legacy_monolith.seed import STAFF_USER
from tests.legacy_monolith.conftest import login, place_order, register


def pay(client: TestClient, headers: dict[str, str], order_id: object, **extra: object):  # type: ignore[no-untyped-def]
    body = {"order_id": order_id, "method": "card", "card_token": "tok_visa", **extra}
    return client.post("/api/v1/payments", json=body, headers=headers)


def order_status(client: TestClient, headers: dict[str, str], order_id: object) -> str:
    return str(client.get(f"/api/v1/orders/{order_id}", headers=headers).json()["status"])


def test_captured_card_payment_marks_the_order_paid(client: TestClient) -> None:
    user_id, headers = register(client)
    order = place_order(client, headers)
    answer = pay(client, headers, order["id"])
    assert answer.status_code == 201
    payment = answer.json()
    assert answer.headers["location"] == f"/api/v1/payments/{payment['id']}"
    assert payment["status"] == "captured"
    assert payment["amount"] == order["total"]
    assert payment["refunded_amount"] == "0.00"
    assert (payment["card_brand"], payment["card_last4"]) == ("visa", "4242")
    assert payment["user_id"] == user_id
    assert payment["provider_ref"].startswith("psp_")
    shown = client.get(f"/api/v1/orders/{order['id']}", headers=headers).json()
    assert shown["status"] == "paid"
    assert shown["payment"] == {"id": payment["id"], "status": "captured"}
    assert client.get(f"/api/v1/payments/{payment['id']}", headers=headers).json() == payment


def test_authorized_payment_is_not_paid_until_captured(client: TestClient) -> None:
    staff = login(client, STAFF_USER)
    _, headers = register(client)
    order = place_order(client, headers)
    payment = pay(client, headers, order["id"], capture=False).json()
    assert payment["status"] == "authorized"
    assert order_status(client, headers, order["id"]) == "pending_payment"
    captured = client.post(f"/api/v1/payments/{payment['id']}/capture", headers=staff)
    assert captured.json()["status"] == "captured"
    assert order_status(client, headers, order["id"]) == "paid"
    twice = client.post(f"/api/v1/payments/{payment['id']}/capture", headers=staff)
    assert twice.status_code == 409
    assert twice.json()["type"].endswith("/payment-not-capturable")


def test_declined_card_is_402_and_kept_as_failed(client: TestClient) -> None:
    _, headers = register(client)
    order = place_order(client, headers)
    answer = pay(client, headers, order["id"], card_token="tok_chargeDeclined")
    assert answer.status_code == 402
    problem = answer.json()
    assert problem["type"].endswith("/payment-declined")
    assert problem["failure_code"] == "card_declined"
    failed = client.get(f"/api/v1/payments/{problem['payment_id']}", headers=headers).json()
    assert failed["status"] == "failed"
    assert order_status(client, headers, order["id"]) == "pending_payment"
    retry = pay(client, headers, order["id"])
    assert retry.status_code == 201
    assert order_status(client, headers, order["id"]) == "paid"


def test_wallet_payment_needs_no_card(client: TestClient) -> None:
    _, headers = register(client)
    order = place_order(client, headers)
    answer = client.post(
        "/api/v1/payments", json={"order_id": order["id"], "method": "wallet"}, headers=headers
    )
    assert answer.status_code == 201
    assert answer.json()["card_last4"] is None
    card = place_order(client, headers)
    no_token = client.post(
        "/api/v1/payments", json={"order_id": card["id"], "method": "card"}, headers=headers
    )
    assert no_token.status_code == 422


def test_an_order_is_paid_once(client: TestClient) -> None:
    _, headers = register(client)
    order = place_order(client, headers)
    first = pay(client, headers, order["id"]).json()
    second = pay(client, headers, order["id"])
    assert second.status_code == 409
    assert second.json()["type"].endswith("/order-already-paid")
    assert second.json()["payment_id"] == first["id"]


def test_amount_must_match_the_order_total(client: TestClient) -> None:
    _, headers = register(client)
    order = place_order(client, headers)
    answer = pay(client, headers, order["id"], amount="0.01")
    assert answer.status_code == 422
    assert answer.json()["type"].endswith("/amount-mismatch")
    exact = pay(client, headers, order["id"], amount=order["total"])
    assert exact.status_code == 201


def test_partial_then_full_refund_moves_the_order_to_refunded(client: TestClient) -> None:
    staff = login(client, STAFF_USER)
    _, headers = register(client)
    order = place_order(client, headers, quantity=2)
    payment = pay(client, headers, order["id"]).json()
    partial = client.post(
        f"/api/v1/payments/{payment['id']}/refund", json={"amount": "0.01"}, headers=staff
    ).json()
    assert partial["status"] == "partially_refunded"
    assert partial["refunded_amount"] == "0.01"
    assert order_status(client, headers, order["id"]) == "paid"
    too_much = client.post(
        f"/api/v1/payments/{payment['id']}/refund", json={"amount": order["total"]}, headers=staff
    )
    assert too_much.status_code == 422
    assert too_much.json()["type"].endswith("/refund-exceeds-balance")
    rest = client.post(
        f"/api/v1/payments/{payment['id']}/refund", json={"reason": "changed mind"}, headers=staff
    ).json()
    assert rest["status"] == "refunded"
    assert rest["refunded_amount"] == order["total"]
    assert order_status(client, headers, order["id"]) == "refunded"
    again = client.post(f"/api/v1/payments/{payment['id']}/refund", headers=staff)
    assert again.status_code == 409


def test_paid_order_cannot_be_cancelled_but_authorized_one_is_voided(client: TestClient) -> None:
    _, headers = register(client)
    paid = place_order(client, headers)
    pay(client, headers, paid["id"])
    refused = client.post(f"/api/v1/orders/{paid['id']}/cancel", headers=headers)
    assert refused.status_code == 409
    held = place_order(client, headers)
    auth = pay(client, headers, held["id"], capture=False).json()
    assert client.post(f"/api/v1/orders/{held['id']}/cancel", headers=headers).status_code == 200
    voided = client.get(f"/api/v1/payments/{auth['id']}", headers=headers).json()
    assert voided["status"] == "voided"
    late = pay(client, headers, held["id"])
    assert late.status_code == 409
    assert late.json()["type"].endswith("/order-cancelled")


def test_list_by_order_and_by_user_with_access_rules(client: TestClient) -> None:
    user_id, headers = register(client)
    other_id, other = register(client)
    first = place_order(client, headers)
    second = place_order(client, headers)
    pay(client, headers, first["id"], card_token="tok_insufficientFunds")
    pay(client, headers, first["id"])
    pay(client, headers, second["id"])
    by_order = client.get(
        "/api/v1/payments", params={"order_id": first["id"]}, headers=headers
    ).json()
    assert by_order["total"] == 2
    assert [p["status"] for p in by_order["items"]] == ["captured", "failed"]
    mine = client.get("/api/v1/payments", params={"user_id": user_id}, headers=headers).json()
    assert mine["total"] == 3
    default = client.get("/api/v1/payments", headers=headers).json()
    assert default["total"] == 3
    failed = client.get("/api/v1/payments", params={"status": "failed"}, headers=headers).json()
    assert failed["total"] == 1
    forbidden = client.get("/api/v1/payments", params={"user_id": user_id}, headers=other)
    assert forbidden.status_code == 403
    hidden = client.get("/api/v1/payments", params={"order_id": first["id"]}, headers=other)
    assert hidden.json()["total"] == 0
    payment_id = by_order["items"][0]["id"]
    assert client.get(f"/api/v1/payments/{payment_id}", headers=other).status_code == 404
    staff = login(client, STAFF_USER)
    seen = client.get("/api/v1/payments", params={"user_id": user_id}, headers=staff).json()
    assert seen["total"] == 3
    assert other_id != user_id


def test_concurrent_payments_for_one_order_capture_once(client: TestClient) -> None:
    """A double-tapped Pay button (or a retrying app) must not charge twice."""
    _, headers = register(client)
    order = place_order(client, headers)
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda _: pay(client, headers, order["id"]), range(12)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] + [409] * 11, [a.text for a in answers]
    listed = client.get("/api/v1/payments", params={"order_id": order["id"]}, headers=headers)
    assert listed.json()["total"] == 1


def test_concurrent_refunds_never_exceed_the_captured_amount(client: TestClient) -> None:
    staff = login(client, STAFF_USER)
    _, headers = register(client)
    order = place_order(client, headers, quantity=2)
    payment = pay(client, headers, order["id"]).json()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(
                lambda _: client.post(f"/api/v1/payments/{payment['id']}/refund", headers=staff),
                range(8),
            )
        )
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] + [409] * 7, [a.text for a in answers]
    final = client.get(f"/api/v1/payments/{payment['id']}", headers=headers).json()
    assert final["refunded_amount"] == payment["amount"]


def test_customers_cannot_capture_or_refund_their_own_payments(client: TestClient) -> None:
    _, headers = register(client)
    order = place_order(client, headers)
    held = pay(client, headers, order["id"], capture=False).json()
    for action in ("capture", "refund"):
        answer = client.post(f"/api/v1/payments/{held['id']}/{action}", headers=headers)
        assert answer.status_code == 403, action
        assert answer.json()["type"].endswith("/forbidden")
    assert client.get(f"/api/v1/payments/{held['id']}", headers=headers).json()["status"] == (
        "authorized"
    )


def test_a_refunded_order_cannot_be_paid_again(client: TestClient) -> None:
    staff = login(client, STAFF_USER)
    _, headers = register(client)
    order = place_order(client, headers)
    payment = pay(client, headers, order["id"]).json()
    client.post(f"/api/v1/payments/{payment['id']}/refund", headers=staff)
    again = pay(client, headers, order["id"])
    assert again.status_code == 409
    assert again.json()["type"].endswith("/order-refunded")


def test_capture_racing_a_cancel_never_loses_the_capture(client: TestClient) -> None:
    """Either the capture wins (the order is paid, cancel refused) or the cancel wins (the
    payment is voided, capture refused): never a 'captured' answer for a voided payment."""
    staff = login(client, STAFF_USER)
    _, headers = register(client)
    for _ in range(4):
        order = place_order(client, headers)
        held = pay(client, headers, order["id"], capture=False).json()
        with ThreadPoolExecutor(max_workers=2) as pool:
            capture = pool.submit(
                client.post, f"/api/v1/payments/{held['id']}/capture", headers=staff
            )
            cancel = pool.submit(
                client.post, f"/api/v1/orders/{order['id']}/cancel", headers=headers
            )
            captured, cancelled = capture.result(), cancel.result()
        final = client.get(f"/api/v1/payments/{held['id']}", headers=headers).json()["status"]
        status = order_status(client, headers, order["id"])
        if captured.status_code == 200:
            assert (cancelled.status_code, final, status) == (409, "captured", "paid")
        else:
            assert (captured.status_code, cancelled.status_code) == (409, 200)
            assert (final, status) == ("voided", "cancelled")
