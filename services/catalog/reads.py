"""The three answers, read from the views: the JSON bytes the monolith would send.

- Categories: the category view in (sort_order, id) order, rendered with the monolith's model
  (its count is pre-calculated: no GROUP BY per request).
- A product: its stored `body`, when its view row exists and is active (else None: a 404).
- A product list: the monolith's filters (active; category; `q` via `search.py`; in stock or
  not), order (each sort ends with the key) and paging, counted and paged in one transaction.
  The body is assembled from the stored bodies as pydantic would render the page
  (`{"items":[...],"page":..,"per_page":..,"total":..,"pages":..}`, no spaces), so no product
  is parsed or rendered per request.
- The read model's version (`projection_version`): `catalog_projection.batches`, one row read
  by its primary key, which every projection hook moves (`projection.py`); the answer cache's
  tag and check (`cache.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select, true
from sqlalchemy.engine import Connection

from services.catalog.schemas import CategoryList, CategoryOut, Paging
from services.catalog.search import search_condition
from services.catalog.tables import category_view, product_view, projection_lock

v = product_view.c
ORDERING: dict[str, tuple[Any, ...]] = {
    "name": (v.name, v.id),
    "price": (v.price, v.id),
    "-price": (v.price.desc(), v.id),
    "newest": (v.created_at.desc(), v.id.desc()),
}


@dataclass(frozen=True)
class ProductQuery:
    """A product list request, validated."""

    category_id: int | None
    q: str | None
    in_stock: bool | None
    sort: str
    paging: Paging

    def cache_key(self) -> str:
        """The cache's key: the validated values, unambiguous whatever `q` holds."""
        p = self.paging
        values = [self.category_id, self.q, self.in_stock, self.sort, p.page, p.per_page]
        return "products" + json.dumps(values, ensure_ascii=False)


def conditions(dialect_name: str, query: ProductQuery) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [v.is_active == true()]
    if query.category_id is not None:
        where.append(v.category_id == query.category_id)
    if query.q:
        where.append(search_condition(dialect_name, query.q))
    if query.in_stock is True:
        where.append(v.stock_qty > 0)
    elif query.in_stock is False:
        where.append(v.stock_qty == 0)
    return where


def count_statement(dialect_name: str, query: ProductQuery) -> Select[Any]:
    return select(func.count()).select_from(product_view).where(*conditions(dialect_name, query))


def page_statement(dialect_name: str, query: ProductQuery) -> Select[Any]:
    return (
        select(v.body)
        .where(*conditions(dialect_name, query))
        .order_by(*ORDERING[query.sort])
        .limit(query.paging.per_page)
        .offset(query.paging.offset)
    )


def product_statement(product_id: int) -> Select[Any]:
    return select(v.body).where(v.id == product_id, v.is_active == true())


def categories_statement() -> Select[Any]:
    c = category_view.c
    return select(c.id, c.slug, c.name, c.parent_id, c.product_count).order_by(c.sort_order, c.id)


# Built once: the cache runs it on every hit without its events, and building a statement
# (and its cache key) costs about as much as running this one on SQLite.
_VERSION = select(projection_lock.c.batches).where(projection_lock.c.id == 1)


def version_statement() -> Select[Any]:
    return _VERSION


def projection_version(conn: Connection) -> int:
    """The read model's version (module docstring); 0 before the lock row exists."""
    return int(conn.scalar(_VERSION) or 0)


def product_page(conn: Connection, query: ProductQuery) -> bytes:
    dialect = conn.dialect.name
    total = int(conn.scalar(count_statement(dialect, query)) or 0)
    bodies = list(conn.scalars(page_statement(dialect, query)))
    paging = query.paging
    tail = (
        f'],"page":{paging.page},"per_page":{paging.per_page},"total":{total},'
        f'"pages":{paging.pages(total)}}}'
    )
    return ('{"items":[' + ",".join(bodies) + tail).encode()


def product(conn: Connection, product_id: int) -> bytes | None:
    body = conn.scalar(product_statement(product_id))
    return None if body is None else str(body).encode()


def category_list(conn: Connection) -> bytes:
    rows = conn.execute(categories_statement()).mappings()
    items = [CategoryOut.model_validate(dict(row)) for row in rows]
    return CategoryList(items=items).model_dump_json().encode()
