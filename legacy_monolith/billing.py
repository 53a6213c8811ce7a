"""Payments' life-cycle, the card gateway this backend talks to, and what orders read of it.

    authorized --capture--> captured --refund(part)--> partially_refunded --refund(rest)--> refunded
         |                      \\-------------------refund(all)------------------------/
         +--void (order cancelled)--> voided            failed (declined at creation; terminal)

An order is *paid* while its current payment is captured or partially refunded, *refunded* once
that payment is fully refunded, and *pending_payment* otherwise (unless the order is cancelled).
The current payment is the newest one that is not failed or voided.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from legacy_monolith.models import Order, Payment

LIVE_STATUSES = frozenset({"authorized", "captured", "partially_refunded", "refunded"})
PAID_STATUSES = frozenset({"captured", "partially_refunded"})
REFUNDABLE_STATUSES = PAID_STATUSES


@dataclass(frozen=True)
class GatewayResult:
    approved: bool
    card_brand: str | None = None
    card_last4: str | None = None
    failure_code: str | None = None
    provider_ref: str | None = None


# The gateway's test tokens (the sandbox the app's QA team has always used).
_CARDS = {
    "tok_visa": ("visa", "4242"),
    "tok_mastercard": ("mastercard", "4444"),
    "tok_amex": ("amex", "8431"),
}
_DECLINES = {
    "tok_chargeDeclined": "card_declined",
    "tok_insufficientFunds": "insufficient_funds",
    "tok_expiredCard": "expired_card",
}


def charge(method: str, card_token: str | None) -> GatewayResult:
    """Ask the (sandboxed) gateway to approve a payment."""
    ref = "psp_" + secrets.token_hex(8)
    if method != "card":
        return GatewayResult(approved=True, provider_ref=ref)
    if card_token in _CARDS:
        brand, last4 = _CARDS[card_token]
        return GatewayResult(approved=True, card_brand=brand, card_last4=last4, provider_ref=ref)
    code = _DECLINES.get(card_token or "", "invalid_card_token")
    return GatewayResult(approved=False, failure_code=code, provider_ref=ref)


def current_payment(payments: Iterable[Payment]) -> Payment | None:
    live = [p for p in payments if p.status in LIVE_STATUSES]
    return max(live, key=lambda p: p.id) if live else None


def order_status(order: Order, payment: Payment | None) -> str:
    if order.state == "cancelled":
        return "cancelled"
    if payment is None:
        return "pending_payment"
    if payment.status in PAID_STATUSES:
        return "paid"
    if payment.status == "refunded":
        return "refunded"
    return "pending_payment"
