"""Orders: placed from the cart, listed, read and cancelled. Payment state is read from payments."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from fastapi import APIRouter, Response
from sqlalchemy import delete, func, select, update

from legacy_monolith import billing
from legacy_monolith.api.deps import DB, CacheDep, CurrentUser, PagingDep, is_staff
from legacy_monolith.api.routes.cart import cart_items
from legacy_monolith.api.routes.catalog import invalidate_products
from legacy_monolith.db import lock_row, utcnow
from legacy_monolith.errors import ApiError
from legacy_monolith.models import CartItem, Order, OrderLine, Payment, Product, User
from legacy_monolith.schemas import (
    OrderIn,
    OrderLineOut,
    OrderOut,
    OrderPage,
    OrderPaymentOut,
    PathId,
)

router = APIRouter(tags=["orders"])


def orders_out(db: DB, orders: list[Order]) -> list[OrderOut]:
    """Render orders with the state their payments give them (one query for all payments)."""
    by_order: dict[int, list[Payment]] = defaultdict(list)
    if orders:
        ids = [o.id for o in orders]
        for row in db.scalars(select(Payment).where(Payment.order_id.in_(ids))):
            by_order[row.order_id].append(row)
    result = []
    for order in orders:
        payment = billing.current_payment(by_order[order.id])
        result.append(
            OrderOut(
                id=order.id,
                user_id=order.user_id,
                status=billing.order_status(order, payment),
                total=order.total_amount,
                currency=order.currency,
                shipping_address=order.shipping_address,
                lines=[
                    OrderLineOut(
                        product_id=line.product_id,
                        sku=line.sku,
                        name=line.product_name,
                        quantity=line.quantity,
                        unit_price=line.unit_price,
                        line_total=line.line_total,
                    )
                    for line in order.lines
                ],
                payment=OrderPaymentOut(id=payment.id, status=payment.status) if payment else None,
                created_at=order.created_at,
                updated_at=order.updated_at,
            )
        )
    return result


def visible_order(db: DB, user: User, order_id: int) -> Order:
    """The order if this user may see it; someone else's order is as good as missing."""
    order = db.get(Order, order_id)
    if order is None or (order.user_id != user.id and not is_staff(user)):
        raise ApiError(404, "not-found", f"Order {order_id} does not exist")
    return order


@router.post("/orders", response_model=OrderOut, status_code=201)
def place_order(
    body: OrderIn, db: DB, cache: CacheDep, user: CurrentUser, response: Response
) -> OrderOut:
    # One checkout per user at a time: a second tap waits, then finds the cart empty.
    lock_row(db, User, user.id)
    items = cart_items(db, user)
    if not items:
        raise ApiError(409, "cart-empty", "Add products to the cart before ordering")
    lines = []
    for item in items:
        # Decrement stock only if enough is left: safe under concurrent orders on every database.
        taken = db.execute(
            update(Product)
            .where(Product.id == item.product_id, Product.stock_qty >= item.quantity)
            .values(stock_qty=Product.stock_qty - item.quantity)
        )
        if not taken.rowcount:  # type: ignore[attr-defined]
            db.rollback()
            raise ApiError(
                409,
                "out-of-stock",
                f"Not enough {item.product.sku} left for this order",
                product_id=item.product_id,
            )
        lines.append(
            OrderLine(
                product_id=item.product_id,
                sku=item.product.sku,
                product_name=item.product.name,
                quantity=item.quantity,
                unit_price=item.product.price,
                line_total=item.product.price * item.quantity,
            )
        )
    order = Order(
        user_id=user.id,
        total_amount=sum((line.line_total for line in lines), Decimal("0.00")),
        currency=items[0].product.currency,
        shipping_address=body.shipping_address,
        lines=lines,
    )
    db.add(order)
    db.execute(delete(CartItem).where(CartItem.user_id == user.id))
    db.commit()
    invalidate_products(cache)
    response.headers["Location"] = f"/api/v1/orders/{order.id}"
    return orders_out(db, [order])[0]


@router.get("/orders", response_model=OrderPage)
def list_orders(db: DB, user: CurrentUser, paging: PagingDep) -> OrderPage:
    base = select(Order).where(Order.user_id == user.id)
    total = db.scalar(select(func.count()).select_from(base.subquery())) or 0
    orders = list(
        db.scalars(base.order_by(Order.id.desc()).limit(paging.per_page).offset(paging.offset))
    )
    return OrderPage(
        items=orders_out(db, orders),
        page=paging.page,
        per_page=paging.per_page,
        total=total,
        pages=paging.pages(total),
    )


@router.get("/orders/{order_id}", response_model=OrderOut)
def get_order(order_id: PathId, db: DB, user: CurrentUser) -> OrderOut:
    return orders_out(db, [visible_order(db, user, order_id)])[0]


@router.post("/orders/{order_id}/cancel", response_model=OrderOut)
def cancel_order(order_id: PathId, db: DB, cache: CacheDep, user: CurrentUser) -> OrderOut:
    lock_row(db, Order, order_id)  # a payment arriving meanwhile waits, then sees the cancel
    order = visible_order(db, user, order_id)
    payments = list(db.scalars(select(Payment).where(Payment.order_id == order.id)))
    status = billing.order_status(order, billing.current_payment(payments))
    if status == "cancelled":
        raise ApiError(409, "order-not-cancellable", f"Order {order_id} is already cancelled")
    if status == "paid":
        raise ApiError(
            409, "order-not-cancellable", f"Order {order_id} is paid: refund its payment first"
        )
    for payment in payments:
        if payment.status == "authorized":
            payment.status = "voided"
    for line in order.lines:
        db.execute(
            update(Product)
            .where(Product.id == line.product_id)
            .values(stock_qty=Product.stock_qty + line.quantity)
        )
    order.state = "cancelled"
    order.cancelled_at = utcnow()
    db.commit()
    invalidate_products(cache)
    return orders_out(db, [order])[0]
