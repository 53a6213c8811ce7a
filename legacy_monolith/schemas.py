"""The JSON contract the mobile apps rely on (and the payment service must reproduce).

Money travels as a decimal string with two places ("49.90"), timestamps as ISO 8601 UTC.
Input strings refuse NUL, other control characters and lone surrogates, which no database here
stores faithfully (PostgreSQL refuses NUL; Oracle and UTF-8 refuse surrogates): a 422, not a 500.
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


def _text(low: int, high: int) -> StringConstraints:
    return StringConstraints(min_length=low, max_length=high)


_STORABLE = AfterValidator(_storable)
Password = Annotated[str, _text(1, 128), _STORABLE]
NewPassword = Annotated[str, _text(8, 128), _STORABLE]
PersonName = Annotated[str, _text(1, 120), _STORABLE]
# No empty strings: Oracle stores '' as NULL, so the answer would differ by database.
Phone = Annotated[str, _text(1, 32), _STORABLE]
ProductName = Annotated[str, _text(1, 160), _STORABLE]
Description = Annotated[str, _text(1, 4000), _STORABLE]
Address = Annotated[str, _text(1, 400), _STORABLE]
CardToken = Annotated[str, _text(1, 64), _STORABLE]
Reason = Annotated[str, _text(1, 200), _STORABLE]
SearchText = Annotated[str, _text(1, 100), _STORABLE]

MoneyOut = Annotated[Decimal, PlainSerializer(lambda d: f"{d:.2f}", return_type=str)]
# Money columns are NUMBER(12,2). A price is capped so that the largest cart (MAX_CART_LINES
# lines of MAX_QUANTITY units) still fits an order total: 50 x 99 x 999,999.99 < 10^10.
MAX_QUANTITY = 99
MAX_CART_LINES = 50
Price = Annotated[Decimal, Field(gt=0, le=Decimal("999999.99"), decimal_places=2)]
MoneyIn = Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]


def _email(value: str) -> str:
    # Stored lower-cased; lowering can lengthen a string ('İ' → 'i̇'), so check after it.
    value = value.lower()
    if len(value) > 254:
        raise ValueError("an email address has at most 254 characters")
    return value


Email = Annotated[
    str,
    StringConstraints(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
    AfterValidator(_storable),
    AfterValidator(_email),
]
PaymentStatus = Literal[
    "authorized", "captured", "partially_refunded", "refunded", "voided", "failed"
]
PaymentMethod = Literal["card", "wallet", "bank_transfer"]
OrderStatus = Literal["pending_payment", "paid", "refunded", "cancelled"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- auth and users ---------------------------------------------------------------------------
class LoginIn(Strict):
    email: Email
    password: Password


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    user_id: int


class RegisterIn(Strict):
    email: Email
    password: NewPassword
    full_name: PersonName
    phone: Phone | None = None


class UserOut(BaseModel):
    id: int
    email: str
    full_name: str
    phone: str | None
    role: str
    created_at: datetime


class UserPatch(Strict):
    full_name: PersonName | None = None
    phone: Phone | None = None


# --- catalog ----------------------------------------------------------------------------------
class CategoryOut(BaseModel):
    id: int
    slug: str
    name: str
    parent_id: int | None
    product_count: int


class CategoryList(BaseModel):
    items: list[CategoryOut]


class ProductOut(BaseModel):
    id: int
    sku: str
    name: str
    description: str | None
    category_id: int
    price: MoneyOut
    currency: str
    in_stock: bool
    stock_qty: int
    image_url: str | None
    updated_at: datetime


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list; `pages` is at least 1."""

    items: list[T]
    page: int
    per_page: int
    total: int
    pages: int


ProductPage = Page[ProductOut]


class ProductPatch(Strict):
    name: ProductName | None = None
    description: Description | None = None
    price: Price | None = None
    stock_qty: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    is_active: bool | None = None


# --- cart -------------------------------------------------------------------------------------
Quantity = Annotated[int, Field(ge=1, le=MAX_QUANTITY)]


class CartItemIn(Strict):
    product_id: Id
    quantity: Quantity = 1


class CartQuantityIn(Strict):
    quantity: Annotated[int, Field(ge=0, le=MAX_QUANTITY)]


class CartLineOut(BaseModel):
    product_id: int
    sku: str
    name: str
    quantity: int
    unit_price: MoneyOut
    line_total: MoneyOut


class CartOut(BaseModel):
    items: list[CartLineOut]
    item_count: int
    total: MoneyOut
    currency: str


# --- orders -----------------------------------------------------------------------------------
class OrderIn(Strict):
    shipping_address: Address | None = None


class OrderLineOut(BaseModel):
    product_id: int
    sku: str
    name: str
    quantity: int
    unit_price: MoneyOut
    line_total: MoneyOut


class OrderPaymentOut(BaseModel):
    id: int
    status: PaymentStatus


class OrderOut(BaseModel):
    id: int
    user_id: int
    status: OrderStatus
    total: MoneyOut
    currency: str
    shipping_address: str | None
    lines: list[OrderLineOut]
    payment: OrderPaymentOut | None
    created_at: datetime
    updated_at: datetime


OrderPage = Page[OrderOut]


# --- payments ---------------------------------------------------------------------------------
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
