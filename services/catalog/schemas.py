"""The JSON contract of the monolith's catalog reads, reproduced field for field.

The apps parse these bytes, and cached copies are revalidated by an ETag computed from them, so
the models and their order are the monolith's: money as a decimal string with two places
("49.90"), timestamps as pydantic renders an aware UTC datetime. The query parameters are
declared as the monolith declares them (same bounds, same validators, same order), so a bad
request gets the same 422 problem, message for message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, PlainSerializer, StringConstraints

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


SearchText = Annotated[
    str, StringConstraints(min_length=1, max_length=100), AfterValidator(_storable)
]
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]
MoneyOut = Annotated[Decimal, PlainSerializer(lambda d: f"{d:.2f}", return_type=str)]
Sort = Literal["name", "price", "-price", "newest"]


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


class ProductPage(BaseModel):
    """The shape of a product list (documentation: the body is assembled from stored JSON)."""

    items: list[ProductOut]
    page: int
    per_page: int
    total: int
    pages: int


@dataclass(frozen=True)
class Paging:
    page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    def pages(self, total: int) -> int:
        return max(1, -(-total // self.per_page))


def paging(
    page: Annotated[int, Query(ge=1, le=100_000, description="1-based page number")] = 1,
    per_page: Annotated[int, Query(ge=1, le=100, description="Items per page")] = 20,
) -> Paging:
    return Paging(page, per_page)
