"""The card gateway's sandbox, as the monolith has always called it (same test tokens, same
answers), so a payment made here looks exactly like one made by the monolith.

Wallets and bank transfers are always approved; a card is approved for the test cards below and
declined with the code the token names (any other token: `invalid_card_token`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class GatewayResult:
    approved: bool
    card_brand: str | None = None
    card_last4: str | None = None
    failure_code: str | None = None
    provider_ref: str | None = None


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
