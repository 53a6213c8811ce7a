"""Catalog reads (cached, with ETags) and the staff's product edits (which invalidate)."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import Select, func, or_, select, true

from legacy_monolith.api.deps import DB, CacheDep, PagingDep, StaffUser
from legacy_monolith.cache import Cache
from legacy_monolith.errors import ApiError
from legacy_monolith.models import Category, Product
from legacy_monolith.schemas import (
    MAX_ID,
    CategoryList,
    CategoryOut,
    PathId,
    ProductOut,
    ProductPage,
    ProductPatch,
    SearchText,
)

router = APIRouter(tags=["catalog"])

NAMESPACE = "catalog"
# Mobile apps may reuse a catalog answer this long, then revalidate with If-None-Match.
CACHE_CONTROL = "public, max-age=30"
Sort = Literal["name", "price", "-price", "newest"]
_ORDERING = {
    "name": (Product.name, Product.id),
    "price": (Product.price, Product.id),
    "-price": (Product.price.desc(), Product.id),
    "newest": (Product.created_at.desc(), Product.id.desc()),
}


def etag_for(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def json_with_etag(request: Request, body: bytes) -> Response:
    """200 with an ETag, or 304 when the client's If-None-Match already names it (RFC 9110)."""
    etag = etag_for(body)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def product_out(product: Product) -> ProductOut:
    return ProductOut(
        id=product.id,
        sku=product.sku,
        name=product.name,
        description=product.description,
        category_id=product.category_id,
        price=product.price,
        currency=product.currency,
        in_stock=product.stock_qty > 0,
        stock_qty=product.stock_qty,
        image_url=f"/static/{product.image_path}" if product.image_path else None,
        updated_at=product.updated_at,
    )


def _like_pattern(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _product_filter(
    query: Select[Product], category_id: int | None, q: str | None, in_stock: bool | None
) -> Select[Product]:
    query = query.where(Product.is_active == true())
    if category_id is not None:
        query = query.where(Product.category_id == category_id)
    if q:
        pattern = _like_pattern(q)
        query = query.where(
            or_(
                func.lower(Product.name).like(pattern, escape="\\"),
                func.lower(Product.sku).like(pattern, escape="\\"),
            )
        )
    if in_stock is True:
        query = query.where(Product.stock_qty > 0)
    elif in_stock is False:
        query = query.where(Product.stock_qty == 0)
    return query


@router.get("/categories", response_model=CategoryList)
def list_categories(request: Request, db: DB, cache: CacheDep) -> Response:
    def load() -> bytes:
        counts = (
            select(Product.category_id, func.count(Product.id).label("n"))
            .where(Product.is_active == true())
            .group_by(Product.category_id)
            .subquery()
        )
        rows = db.execute(
            select(Category, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.category_id == Category.id)
            .order_by(Category.sort_order, Category.id)
        ).all()
        items = [
            CategoryOut(
                id=c.id, slug=c.slug, name=c.name, parent_id=c.parent_id, product_count=int(n)
            )
            for c, n in rows
        ]
        return CategoryList(items=items).model_dump_json().encode()

    key = f"{NAMESPACE}:g{cache.generation(NAMESPACE)}:categories"
    return json_with_etag(request, cache.get_or_load(key, load))


@router.get("/products", response_model=ProductPage)
def list_products(
    request: Request,
    db: DB,
    cache: CacheDep,
    paging: PagingDep,
    category_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    q: Annotated[SearchText | None, Query(description="Search in name and SKU")] = None,
    in_stock: bool | None = None,
    sort: Sort = "name",
) -> Response:
    def load() -> bytes:
        base = _product_filter(select(Product), category_id, q, in_stock)
        total = db.scalar(select(func.count()).select_from(base.subquery())) or 0
        products = db.scalars(
            base.order_by(*_ORDERING[sort]).limit(paging.per_page).offset(paging.offset)
        ).all()
        page = ProductPage(
            items=[product_out(p) for p in products],
            page=paging.page,
            per_page=paging.per_page,
            total=total,
            pages=paging.pages(total),
        )
        return page.model_dump_json().encode()

    params = f"{category_id}|{q}|{in_stock}|{sort}|{paging.page}|{paging.per_page}"
    digest = hashlib.sha256(params.encode()).hexdigest()[:24]
    key = f"{NAMESPACE}:g{cache.generation(NAMESPACE)}:products:{digest}"
    return json_with_etag(request, cache.get_or_load(key, load))


@router.get(
    "/products/{product_id}",
    response_model=ProductOut,
    responses={404: {"description": "No such product"}, 304: {"description": "Not modified"}},
)
def get_product(product_id: PathId, request: Request, db: DB, cache: CacheDep) -> Response:
    def load() -> bytes:
        product = db.get(Product, product_id)
        if product is None or not product.is_active:
            raise ApiError(404, "not-found", f"Product {product_id} does not exist")
        return product_out(product).model_dump_json().encode()

    # The generation is part of the key: a reader that loaded the row just before a write
    # stores it under the old generation, which nobody reads after the write bumped it.
    key = f"{NAMESPACE}:g{cache.generation(NAMESPACE)}:product:{product_id}"
    return json_with_etag(request, cache.get_or_load(key, load))


@router.patch("/products/{product_id}", response_model=ProductOut, tags=["staff"])
def update_product(
    product_id: PathId, body: ProductPatch, db: DB, cache: CacheDep, _staff: StaffUser
) -> ProductOut:
    product = db.get(Product, product_id)
    if product is None:
        raise ApiError(404, "not-found", f"Product {product_id} does not exist")
    for field, value in body.model_dump(exclude_unset=True).items():
        if value is None and field != "description":
            continue
        setattr(product, field, value)
    db.commit()
    invalidate_products(cache)
    return product_out(product)


def invalidate_products(cache: Cache) -> None:
    """After a commit that changed products: start a new catalog generation, so every cached
    product, list and search is read afresh (old entries expire with their TTL)."""
    cache.invalidate(bump=(NAMESPACE,))
