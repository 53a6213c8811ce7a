"""`/api/v1` catalog reads, as the monolith answers them: 200 with a strong ETag (sha256 of the
body, 32 hex digits, quoted) and `Cache-Control: public, max-age=30`, or 304 when the client's
If-None-Match names it (RFC 9110: weak comparison, `*` matches); problem+json errors.

Each parameter is declared as the monolith declares it, in the same order (paging first, then
the list's own filters), so a bad request gets the same 422 with its errors in the same order.
The endpoints are plain functions (run in the threadpool): the database driver is synchronous.
Each answer goes through the answer cache (`cache.py`): a hit costs no query while the cache's
events are connected, else one primary-key SELECT (the read model's version); a miss reads the
version, then the answer, in one transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.engine import Connection, Engine

from services.catalog import db, reads
from services.catalog.cache import AnswerCache, Rendered
from services.catalog.errors import ApiError
from services.catalog.schemas import (
    MAX_ID,
    CategoryList,
    Paging,
    PathId,
    ProductOut,
    ProductPage,
    SearchText,
    Sort,
    paging,
)

# Mobile apps may reuse a catalog answer this long, then revalidate (the monolith's value).
CACHE_CONTROL = "public, max-age=30"


Load = Callable[[Connection], bytes | None]


@dataclass(frozen=True)
class Catalog:
    """What the endpoints use: the read model's engine and the answer cache."""

    engine: Engine
    cache: AnswerCache
    single: Engine = field(init=False)  # one-statement reads: the version check

    def __post_init__(self) -> None:
        object.__setattr__(self, "single", db.single(self.engine))

    def current_version(self) -> int:
        """The read model's version now (one primary-key SELECT, no transaction)."""
        with self.single.connect() as conn:
            return reads.projection_version(conn)

    def answer(self, key: str, load: Load) -> Rendered | None:
        """The cached answer for `key`, or `load`'s, cached with the version read before it
        (`cache.py`: the generation first, then the version, then the answer)."""
        cached = self.cache.get(key, self.current_version)
        if cached is not None:
            return cached
        generation = self.cache.generation()
        with self.engine.begin() as conn:
            version = reads.projection_version(conn)
            body = load(conn)
        if body is None:
            return None
        rendered = Rendered(body, etag_for(body))
        self.cache.put(key, rendered, version, generation)
        return rendered


def get_catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


CatalogDep = Annotated[Catalog, Depends(get_catalog)]
PagingDep = Annotated[Paging, Depends(paging)]
router = APIRouter(prefix="/api/v1", tags=["catalog"])


def etag_for(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def json_with_etag(request: Request, rendered: Rendered) -> Response:
    """200 with the ETag, or 304 when the client's If-None-Match already names it."""
    headers = {"ETag": rendered.etag, "Cache-Control": CACHE_CONTROL}
    if _matches(request.headers.get("if-none-match"), rendered.etag):
        return Response(status_code=304, headers=headers)
    return Response(rendered.body, media_type="application/json", headers=headers)


@router.get("/categories", response_model=CategoryList)
def list_categories(request: Request, catalog: CatalogDep) -> Response:
    rendered = catalog.answer("categories", reads.category_list)
    assert rendered is not None
    return json_with_etag(request, rendered)


@router.get("/products", response_model=ProductPage)
def list_products(
    request: Request,
    catalog: CatalogDep,
    paging: PagingDep,
    category_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    q: Annotated[SearchText | None, Query(description="Search in name and SKU")] = None,
    in_stock: bool | None = None,
    sort: Sort = "name",
) -> Response:
    query = reads.ProductQuery(category_id, q, in_stock, sort, paging)
    rendered = catalog.answer(query.cache_key(), partial(reads.product_page, query=query))
    assert rendered is not None
    return json_with_etag(request, rendered)


@router.get(
    "/products/{product_id}",
    response_model=ProductOut,
    responses={404: {"description": "No such product"}, 304: {"description": "Not modified"}},
)
def get_product(product_id: PathId, request: Request, catalog: CatalogDep) -> Response:
    rendered = catalog.answer(
        f"product|{product_id}", partial(reads.product, product_id=product_id)
    )
    if rendered is None:
        raise ApiError(404, "not-found", f"Product {product_id} does not exist")
    return json_with_etag(request, rendered)
