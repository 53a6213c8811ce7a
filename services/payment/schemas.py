"""The JSON contract of the monolith's payment endpoints, reproduced field for field.

Money travels as a decimal string with two places ("49.90"), timestamps as ISO 8601 UTC. Input
strings refuse NUL, other control characters and lone surrogates (a 422, not a 500), exactly as
the monolith's do. Also here: the parts of the monolith's answers this service reads (`/users/me`
and `/orders/{id}`), parsed leniently (extra fields ignored) so the monolith may grow them.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Generic, Literal, TypeVar

from fastapi import Path
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_ID = 2**53 - 1  # exact in every JSON client, and fits every database's BIGINT / NUMBER(19)


def _storable(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("control characters are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


_STORABLE = AfterValidator(_storable)
CardToken = Annotated[str, StringConstraints(min_length=1, max_length=64), _STORABLE]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=200), _STORABLE]
MoneyOut = Annotated[Decimal, PlainSerializer(lambda d: f"{d:.2f}", return_type=str)]
MoneyIn = Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]

PaymentStatus = Literal[
    "authorized", "captured", "partially_refunded", "refunded", "voided", "failed"
]
PaymentMethod = Literal["card", "wallet", "bank_transfer"]
OrderStatus = Literal["pending_payment", "paid", "refunded", "cancelled"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list; `pages` is at least 1."""

    items: list[T]
    page: int
    per_page: int
    total: int
    pages: int


class PaymentIn(Strict):
    order_id: Id
    method: PaymentMethod
    amount: MoneyIn | None = Field(
        default=None, description="Must equal the order total when given."
    )
    card_token: CardToken | None = Field(
        default=None, description="Required for card payments (tok_visa, tok_mastercard, ...)."
    )
    capture: bool = Field(default=True, description="Capture now, or only authorize.")


class RefundIn(Strict):
    amount: MoneyIn | None = Field(default=None, description="Defaults to the whole balance.")
    reason: Reason | None = None


class PaymentOut(BaseModel):
    id: int
    order_id: int
    user_id: int
    amount: MoneyOut
    refunded_amount: MoneyOut
    currency: str
    method: PaymentMethod
    status: PaymentStatus
    card_brand: str | None
    card_last4: str | None
    provider_ref: str | None
    failure_code: str | None
    created_at: datetime
    updated_at: datetime


PaymentPage = Page[PaymentOut]


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


# --- what the service reads from the monolith -------------------------------------------------
class LegacyUser(BaseModel):
    """`GET /api/v1/users/me`: who the bearer token belongs to."""

    id: int
    role: str


class LegacyOrderPayment(BaseModel):
    id: int
    status: PaymentStatus


class LegacyOrder(BaseModel):
    """`GET /api/v1/orders/{id}`: the order's owner, total and the state the monolith gives it."""

    id: int
    user_id: int
    status: OrderStatus
    total: Decimal
    currency: str
    payment: LegacyOrderPayment | None = None
