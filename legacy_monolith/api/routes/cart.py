"""The signed-in user's cart."""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter, Response
from sqlalchemy import delete, select, true

from legacy_monolith.api.deps import DB, CurrentUser
from legacy_monolith.db import lock_row
from legacy_monolith.errors import ApiError
from legacy_monolith.models import CartItem, Product, User
from legacy_monolith.schemas import (
    MAX_CART_LINES,
    MAX_QUANTITY,
    CartItemIn,
    CartLineOut,
    CartOut,
    CartQuantityIn,
    PathId,
)

router = APIRouter(tags=["cart"])


def cart_items(db: DB, user: User) -> list[CartItem]:
    return list(
        db.scalars(select(CartItem).where(CartItem.user_id == user.id).order_by(CartItem.id))
    )


def cart_out(items: list[CartItem]) -> CartOut:
    lines = [
        CartLineOut(
            product_id=i.product_id,
            sku=i.product.sku,
            name=i.product.name,
            quantity=i.quantity,
            unit_price=i.product.price,
            line_total=i.product.price * i.quantity,
        )
        for i in items
    ]
    return CartOut(
        items=lines,
        item_count=sum(i.quantity for i in items),
        total=sum((line.line_total for line in lines), Decimal("0.00")),
        currency=items[0].product.currency if items else "EUR",
    )


def _sellable(db: DB, product_id: int) -> Product:
    product = db.scalars(
        select(Product).where(Product.id == product_id, Product.is_active == true())
    ).first()
    if product is None:
        raise ApiError(404, "not-found", f"Product {product_id} does not exist")
    return product


def _check_stock(product: Product, quantity: int) -> None:
    if quantity > product.stock_qty:
        raise ApiError(
            409,
            "out-of-stock",
            f"Only {product.stock_qty} of {product.sku} left",
            product_id=product.id,
            available=product.stock_qty,
        )


@router.get("/cart", response_model=CartOut)
def get_cart(db: DB, user: CurrentUser) -> CartOut:
    return cart_out(cart_items(db, user))


@router.post("/cart/items", response_model=CartOut, status_code=201)
def add_item(body: CartItemIn, db: DB, user: CurrentUser) -> CartOut:
    lock_row(db, User, user.id)  # two adds at once (a double tap) merge instead of colliding
    product = _sellable(db, body.product_id)
    items = cart_items(db, user)
    existing = next((i for i in items if i.product_id == product.id), None)
    if existing is None and len(items) >= MAX_CART_LINES:
        raise ApiError(409, "conflict", f"A cart holds at most {MAX_CART_LINES} different products")
    quantity = body.quantity + (existing.quantity if existing else 0)
    if quantity > MAX_QUANTITY:
        raise ApiError(409, "conflict", f"At most {MAX_QUANTITY} of one product per order")
    _check_stock(product, quantity)
    if existing is None:
        db.add(CartItem(user_id=user.id, product_id=product.id, quantity=quantity))
    else:
        existing.quantity = quantity
    db.commit()
    return cart_out(cart_items(db, user))


@router.put("/cart/items/{product_id}", response_model=CartOut)
def set_quantity(product_id: PathId, body: CartQuantityIn, db: DB, user: CurrentUser) -> CartOut:
    lock_row(db, User, user.id)
    item = db.scalars(
        select(CartItem).where(CartItem.user_id == user.id, CartItem.product_id == product_id)
    ).first()
    if item is None:
        raise ApiError(404, "not-found", f"Product {product_id} is not in the cart")
    if body.quantity == 0:
        db.delete(item)
    else:
        _check_stock(item.product, body.quantity)
        item.quantity = body.quantity
    db.commit()
    return cart_out(cart_items(db, user))


@router.delete("/cart/items/{product_id}", response_model=CartOut)
def remove_item(product_id: PathId, db: DB, user: CurrentUser) -> CartOut:
    deleted = db.execute(
        delete(CartItem).where(CartItem.user_id == user.id, CartItem.product_id == product_id)
    )
    if not deleted.rowcount:  # type: ignore[attr-defined]
        raise ApiError(404, "not-found", f"Product {product_id} is not in the cart")
    db.commit()
    return cart_out(cart_items(db, user))


@router.delete("/cart", status_code=204, response_class=Response)
def clear_cart(db: DB, user: CurrentUser) -> Response:
    db.execute(delete(CartItem).where(CartItem.user_id == user.id))
    db.commit()
    return Response(status_code=204)
