"""Contract parity: the same requests to the monolith and to the payment service get the same
answers (status, the headers clients read, JSON field by field).

Both keep payments in tables of their own, so each case is set up twice: one order for the
monolith and an identical one (same customer, same product, same total) for the service. Values
that legitimately differ are compared by what they stand for: order and payment ids through the
case's names for them ("order a", "payment 1"), ids in `detail`, `instance` and `Location` too;
`provider_ref` and timestamps by format.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.services.payment.conftest import Customer, Shop

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
PROVIDER_REF = re.compile(r"^psp_[0-9a-f]{16}$")
HEADERS = ("content-type", "location", "www-authenticate", "allow", "retry-after")
# Where ids appear inside strings, and which kind of id each is.
ID_IN_TEXT = (
    (re.compile(r"(?<=Order )\d+"), "orders"),
    (re.compile(r"(?<=[Pp]ayment )\d+"), "payments"),
    (re.compile(r"(?<=/payments/)\d+"), "payments"),
)
ID_FIELDS = {"id": "payments", "payment_id": "payments", "order_id": "orders"}


@dataclass
class Side:
    """One of the two systems, with the case's names for the ids it made."""

    name: str
    http: httpx.Client
    orders: dict[int, str] = field(default_factory=dict)
    payments: dict[int, str] = field(default_factory=dict)

    def names(self, kind: str) -> dict[int, str]:
        names: dict[int, str] = getattr(self, kind)
        return names


def normalise(side: Side, value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: normalise(side, v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(side, v, key) for v in value]
    if key in ("created_at", "updated_at") and isinstance(value, str):
        return "<timestamp>" if TIMESTAMP.match(value) else value
    if key == "provider_ref" and isinstance(value, str):
        return "<provider-ref>" if PROVIDER_REF.match(value) else value
    if key in ID_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return side.names(ID_FIELDS[key]).get(value, value)
    if isinstance(value, str):
        for pattern, kind in ID_IN_TEXT:
            names = side.names(kind)
            value = pattern.sub(lambda m, n=names: n.get(int(m.group()), m.group()), value)
    return value


def view(side: Side, answer: httpx.Response) -> dict[str, Any]:
    """What a client sees of an answer, ids replaced by the case's names for them."""
    try:
        body: Any = answer.json()
    except ValueError:
        body = answer.text
    headers = {h: normalise(side, answer.headers[h]) for h in HEADERS if h in answer.headers}
    return {"status": answer.status_code, "headers": headers, "body": normalise(side, body)}


def differences(legacy: Any, service: Any, path: str = "$") -> list[str]:
    if isinstance(legacy, dict) and isinstance(service, dict):
        found = []
        for key in sorted(set(legacy) | set(service)):
            if key not in service:
                found.append(f"{path}.{key}: only the monolith has it ({legacy[key]!r})")
            elif key not in legacy:
                found.append(f"{path}.{key}: only the service has it ({service[key]!r})")
            else:
                found += differences(legacy[key], service[key], f"{path}.{key}")
        return found
    if isinstance(legacy, list) and isinstance(service, list):
        if len(legacy) != len(service):
            return [
                f"{path}: {len(legacy)} items from the monolith, {len(service)} from the service"
            ]
        return [
            d
            for i, pair in enumerate(zip(legacy, service, strict=True))
            for d in differences(*pair, f"{path}[{i}]")
        ]
    if legacy != service or type(legacy) is not type(service):
        return [f"{path}: monolith {legacy!r} != service {service!r}"]
    return []


@dataclass
class Pair:
    shop: Shop
    legacy: Side
    service: Side
    totals: dict[str, str] = field(default_factory=dict)

    def orders(self, who: Customer, name: str, quantity: int = 1) -> None:
        """One identical order per side, both called `name` in the comparison."""
        product = self.shop.product()
        for side in (self.legacy, self.service):
            order = self.shop.order(who, quantity, product)
            side.orders[order["id"]] = f"<order {name}>"
            self.totals[name] = order["total"]

    def order_id(self, side: Side, name: str) -> int:
        return next(i for i, n in side.orders.items() if n == f"<order {name}>")

    def payment_id(self, side: Side, name: str) -> int:
        return next(i for i, n in side.payments.items() if n == f"<payment {name}>")

    def send(
        self,
        method: str,
        path: str | Callable[[Side], str],
        who: Customer | None,
        *,
        json: Any = None,
        content: bytes | None = None,
        names: str | None = None,
    ) -> dict[str, Any]:
        """Send to both; fail with every difference; `names` the payment each one made."""
        views = []
        for side in (self.legacy, self.service):
            url = path(side) if callable(path) else path
            answer = side.http.request(
                method,
                url,
                json=json(side) if callable(json) else json,
                content=content,
                headers={
                    **(who.headers if who else {}),
                    **({"content-type": "application/json"} if content else {}),
                },
            )
            assert "idempotent-replayed" not in answer.headers
            if names is not None and answer.status_code in (201, 402):
                made = answer.json().get("id") or answer.json().get("payment_id")
                side.payments[made] = f"<payment {names}>"
            views.append(view(side, answer))
        found = differences(*views)
        assert not found, f"{method} {path if isinstance(path, str) else '...'}:\n  " + "\n  ".join(
            found
        )
        return views[0]


@pytest.fixture
def pair(shop: Shop, monolith: Any, service: str) -> Any:
    with httpx.Client(base_url=monolith.url) as legacy, httpx.Client(base_url=service) as new:
        yield Pair(shop, Side("monolith", legacy), Side("service", new))


def pay_body(pair: Pair, name: str, **extra: Any) -> Callable[[Side], dict[str, Any]]:
    return lambda side: {"order_id": pair.order_id(side, name), **extra}


def test_creating_payments_answers_as_the_monolith(pair: Pair, shop: Shop) -> None:
    alice, bob = shop.customer(), shop.customer()
    for name in "abcdefg":
        pair.orders(alice, name)
    card = {"method": "card", "card_token": "tok_visa"}
    created = pair.send(
        "POST", "/api/v1/payments", alice, json=pay_body(pair, "a", **card), names="1"
    )
    assert created["status"] == 201
    assert created["headers"]["location"] == "/api/v1/payments/<payment 1>"
    wallet = {"method": "wallet", "capture": False}
    assert (
        pair.send("POST", "/api/v1/payments", alice, json=pay_body(pair, "b", **wallet), names="2")[
            "body"
        ]["status"]
        == "authorized"
    )
    declined = {"method": "card", "card_token": "tok_chargeDeclined"}
    answer = pair.send(
        "POST", "/api/v1/payments", alice, json=pay_body(pair, "c", **declined), names="3"
    )
    assert answer["status"] == 402
    assert answer["body"]["failure_code"] == "card_declined"
    for token in ("tok_insufficientFunds", "tok_expiredCard", "tok_unknown"):
        body = pay_body(pair, "c", method="card", card_token=token)
        assert pair.send("POST", "/api/v1/payments", alice, json=body, names=token)["status"] == 402
    # After declines, the order can still be paid; then it is paid once.
    pair.send("POST", "/api/v1/payments", alice, json=pay_body(pair, "c", **card), names="4")
    again = pair.send("POST", "/api/v1/payments", alice, json=pay_body(pair, "c", **card))
    assert again["body"]["payment_id"] == "<payment 4>"
    assert again["status"] == 409
    # The order's total, given wrong; a card payment without a token; bank transfers.
    wrong = pay_body(pair, "d", method="wallet", amount="1.00")
    assert pair.send("POST", "/api/v1/payments", alice, json=wrong)["status"] == 422
    no_token = pair.send("POST", "/api/v1/payments", alice, json=pay_body(pair, "d", method="card"))
    assert no_token["body"]["detail"] == "body.card_token: required for card payments"
    exact = pay_body(pair, "d", method="bank_transfer", amount=pair.totals["d"])
    assert pair.send("POST", "/api/v1/payments", alice, json=exact, names="5")["status"] == 201
    # Someone else's order is as good as missing; staff may pay any order.
    assert (
        pair.send("POST", "/api/v1/payments", bob, json=pay_body(pair, "e", **card))["status"]
        == 404
    )
    by_staff = pair.send(
        "POST", "/api/v1/payments", shop.staff, json=pay_body(pair, "e", **card), names="6"
    )
    assert by_staff["body"]["user_id"] == alice.id
    missing = {"order_id": 9_000_000_000_000, **card}
    assert pair.send("POST", "/api/v1/payments", alice, json=missing)["status"] == 404
    # A cancelled order; a paid-then-refunded one.
    for side in (pair.legacy, pair.service):
        shop.cancel(alice, pair.order_id(side, "f"))
    assert (
        pair.send("POST", "/api/v1/payments", alice, json=pay_body(pair, "f", **card))["status"]
        == 409
    )
    pair.send("POST", "/api/v1/payments", alice, json=pay_body(pair, "g", **card), names="7")
    refund = pair.send(
        "POST", lambda s: f"/api/v1/payments/{pair.payment_id(s, '7')}/refund", shop.staff
    )
    assert refund["body"]["status"] == "refunded"
    refunded = pair.send("POST", "/api/v1/payments", alice, json=pay_body(pair, "g", **card))
    assert refunded["body"]["type"].endswith("/order-refunded")


def test_reading_and_listing_answer_as_the_monolith(pair: Pair, shop: Shop) -> None:
    alice, bob = shop.customer(), shop.customer()
    for name in "abcde":
        pair.orders(alice, name)
    pair.orders(bob, "z")
    card = {"method": "card", "card_token": "tok_visa"}
    pair.send("POST", "/api/v1/payments", alice, json=pay_body(pair, "a", **card), names="1")
    declined = pay_body(pair, "b", method="card", card_token="tok_chargeDeclined")
    pair.send("POST", "/api/v1/payments", alice, json=declined, names="2")
    pair.send("POST", "/api/v1/payments", alice, json=pay_body(pair, "b", **card), names="3")
    wallet = pay_body(pair, "c", method="wallet", capture=False)
    pair.send("POST", "/api/v1/payments", alice, json=wallet, names="4")
    pair.send("POST", "/api/v1/payments", alice, json=pay_body(pair, "d", **card), names="5")
    pair.send("POST", "/api/v1/payments", bob, json=pay_body(pair, "z", **card), names="bob")

    def get(path: str | Callable[[Side], str], who: Customer | None) -> dict[str, Any]:
        return pair.send("GET", path, who)

    mine = get("/api/v1/payments", alice)["body"]
    assert [p["id"] for p in mine["items"]] == [f"<payment {n}>" for n in "54321"]
    assert mine["total"] == 5
    get(lambda s: f"/api/v1/payments?user_id={alice.id}&per_page=2&page=2", alice)
    get(f"/api/v1/payments?user_id={alice.id}&status=captured", shop.staff)
    get(lambda s: f"/api/v1/payments?order_id={pair.order_id(s, 'b')}", alice)
    get(lambda s: f"/api/v1/payments?order_id={pair.order_id(s, 'z')}", alice)  # bob's: empty
    get(f"/api/v1/payments?user_id={bob.id}", alice)  # 403
    get(f"/api/v1/payments?user_id={bob.id}&status=failed&page=9", bob)
    get("/api/v1/payments?status=lost&per_page=0&page=0", alice)  # 422, every error listed
    get("/api/v1/payments?order_id=abc", alice)
    get(lambda s: f"/api/v1/payments/{pair.payment_id(s, '1')}", alice)
    get(lambda s: f"/api/v1/payments/{pair.payment_id(s, '1')}", bob)  # 404: not bob's
    get(lambda s: f"/api/v1/payments/{pair.payment_id(s, 'bob')}", shop.staff)
    for bad in ("0", "abc", "-1", str(2**53), "1.5", "999999999999"):
        get(f"/api/v1/payments/{bad}", alice)
    get("/api/v1/payments", None)
    get("/api/v1/payments/1", Customer(0, {"Authorization": "Bearer not-a-token"}))
    get("/api/v1/payments", Customer(0, {"Authorization": "Basic YWxpY2U6c2VjcmV0"}))


def test_capture_and_refund_answer_as_the_monolith(pair: Pair, shop: Shop) -> None:
    alice = shop.customer()
    staff = shop.staff
    for name in "abc":
        pair.orders(alice, name, quantity=2)
    authorize = {"method": "card", "card_token": "tok_mastercard", "capture": False}
    pair.send("POST", "/api/v1/payments", alice, json=pay_body(pair, "a", **authorize), names="1")
    declined = pay_body(pair, "b", method="card", card_token="tok_expiredCard")
    pair.send("POST", "/api/v1/payments", alice, json=declined, names="failed")
    pair.send(
        "POST", "/api/v1/payments", alice, json=pay_body(pair, "c", method="wallet"), names="2"
    )

    def at(name: str, action: str) -> Callable[[Side], str]:
        return lambda s: f"/api/v1/payments/{pair.payment_id(s, name)}/{action}"

    assert pair.send("POST", at("1", "refund"), staff)["status"] == 409  # not captured yet
    assert pair.send("POST", at("1", "capture"), alice)["status"] == 403
    assert pair.send("POST", at("1", "capture"), None)["status"] == 401
    assert pair.send("POST", at("1", "capture"), staff)["body"]["status"] == "captured"
    assert pair.send("POST", at("1", "capture"), staff)["status"] == 409
    assert pair.send("POST", at("failed", "capture"), staff)["status"] == 409
    assert pair.send("POST", "/api/v1/payments/987654321/capture", staff)["status"] == 404
    assert pair.send("POST", "/api/v1/payments/0/capture", staff)["status"] == 422
    part = {"amount": "1.50", "reason": "one item arrived broken"}
    assert pair.send("POST", at("1", "refund"), alice, json=part)["status"] == 403
    assert pair.send("POST", at("1", "refund"), staff, json=part)["body"]["status"] == (
        "partially_refunded"
    )
    too_much = pair.send("POST", at("1", "refund"), staff, json={"amount": "999999.00"})
    assert too_much["status"] == 422
    assert "refundable" in too_much["body"]
    pair.send("POST", at("1", "refund"), staff, json={"amount": "0.00"})
    pair.send("POST", at("1", "refund"), staff, json={"amount": "1.234"})
    pair.send("POST", at("1", "refund"), staff, json={"reason": "x" * 201})
    pair.send("POST", at("1", "refund"), staff, json={"amount": "1.00", "note": "unknown field"})
    pair.send("POST", at("1", "refund"), staff, content=b'{"amount": ')  # malformed JSON
    pair.send("POST", at("1", "refund"), staff, json=[1, 2])
    rest = pair.send("POST", at("1", "refund"), staff, json={})
    assert (rest["body"]["status"], rest["body"]["refunded_amount"]) == (
        "refunded",
        rest["body"]["amount"],
    )
    assert pair.send("POST", at("1", "refund"), staff)["status"] == 409
    assert pair.send("POST", at("2", "refund"), staff)["body"]["status"] == "refunded"
    pair.send("GET", lambda s: f"/api/v1/payments/{pair.payment_id(s, '1')}", alice)


def test_bad_requests_answer_as_the_monolith(pair: Pair, shop: Shop) -> None:
    alice = shop.customer()
    pair.orders(alice, "a")
    send = pair.send
    send(
        "POST",
        "/api/v1/payments",
        alice,
        json=pay_body(pair, "a", method="card", card_token="tok_visa", extra=1),
    )
    send("POST", "/api/v1/payments", alice, json={"method": "cash", "order_id": "x"})
    send(
        "POST",
        "/api/v1/payments",
        alice,
        json=pay_body(pair, "a", method="card", card_token="tok\x00visa"),
    )
    send("POST", "/api/v1/payments", alice, json=pay_body(pair, "a", method="card", card_token=""))
    send("POST", "/api/v1/payments", alice, json=pay_body(pair, "a", method="wallet", amount="-5"))
    send(
        "POST",
        "/api/v1/payments",
        alice,
        json=pay_body(pair, "a", method="wallet", amount="10.001"),
    )
    send("POST", "/api/v1/payments", alice, json={"order_id": 2**53, "method": "wallet"})
    send("POST", "/api/v1/payments", alice, content=b"{not json")
    send("POST", "/api/v1/payments", alice, json=None)
    send("POST", "/api/v1/payments", None, json={"order_id": 1})  # 401 comes before 422
    send("POST", "/api/v1/payments", None, content=b"{not json")  # malformed JSON before 401
    send("DELETE", "/api/v1/payments/1", alice)  # 405 with Allow
    send("PUT", "/api/v1/payments", alice, json={})
    send("POST", "/api/v1/payments/1/void", alice)  # no such route
