"""Payments: create for an order (through the card gateway), read, list, capture and refund."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import func, select

from legacy_monolith import billing
from legacy_monolith.api.deps import DB, CurrentUser, PagingDep, StaffUser, is_staff
from legacy_monolith.api.routes.orders import visible_order
from legacy_monolith.db import lock_row
from legacy_monolith.errors import ApiError
from legacy_monolith.models import Order, Payment, User
from legacy_monolith.schemas import (
    MAX_ID,
    PathId,
    PaymentIn,
    PaymentOut,
    PaymentPage,
    PaymentStatus,
    Problem,
    RefundIn,
)

router = APIRouter(tags=["payments"])
_ERRORS: dict[int | str, dict[str, object]] = {
    402: {"model": Problem, "description": "Declined by the gateway (the payment is kept)"},
    404: {"model": Problem, "description": "No such order or payment"},
    409: {"model": Problem, "description": "Not allowed in the current state"},
}


def visible_payment(db: DB, user: User, payment_id: int) -> Payment:
    payment = db.get(Payment, payment_id)
    if payment is None or (payment.user_id != user.id and not is_staff(user)):
        raise ApiError(404, "not-found", f"Payment {payment_id} does not exist")
    return payment


def locked_payment(db: DB, user: User, payment_id: int) -> Payment:
    """The payment, locked in the same order as every other writer (its order, then it), so a
    capture racing a cancel waits for it instead of being overwritten."""
    payment = visible_payment(db, user, payment_id)
    lock_row(db, Order, payment.order_id)
    lock_row(db, Payment, payment.id)
    db.refresh(payment)
    return payment


@router.post("/payments", response_model=PaymentOut, status_code=201, responses=_ERRORS)
def create_payment(body: PaymentIn, db: DB, user: CurrentUser, response: Response) -> Payment:
    # Concurrent attempts (a double-tapped Pay button) run one after another: the second sees
    # the first payment and gets a 409.
    lock_row(db, Order, body.order_id)
    order = visible_order(db, user, body.order_id)
    payments = list(db.scalars(select(Payment).where(Payment.order_id == order.id)))
    current = billing.current_payment(payments)
    status = billing.order_status(order, current)
    if status == "cancelled":
        raise ApiError(409, "order-cancelled", f"Order {order.id} is cancelled")
    if current is not None and current.status == "refunded":
        raise ApiError(409, "order-refunded", f"Order {order.id} was paid and refunded")
    if current is not None and current.status in {"authorized", *billing.PAID_STATUSES}:
        raise ApiError(
            409,
            "order-already-paid",
            f"Order {order.id} already has payment {current.id} ({current.status})",
            payment_id=current.id,
        )
    if body.amount is not None and body.amount != order.total_amount:
        raise ApiError(
            422,
            "amount-mismatch",
            f"Amount {body.amount:.2f} differs from the order total {order.total_amount:.2f}",
        )
    if body.method == "card" and not body.card_token:
        raise ApiError(422, "validation-failed", "body.card_token: required for card payments")
    result = billing.charge(body.method, body.card_token)
    payment = Payment(
        order_id=order.id,
        user_id=order.user_id,
        amount=order.total_amount,
        currency=order.currency,
        method=body.method,
        status=("captured" if body.capture else "authorized") if result.approved else "failed",
        card_brand=result.card_brand,
        card_last4=result.card_last4,
        provider_ref=result.provider_ref,
        failure_code=result.failure_code,
        refunded_amount=Decimal("0.00"),
    )
    db.add(payment)
    db.commit()
    if not result.approved:
        raise ApiError(
            402,
            "payment-declined",
            f"The gateway declined the payment: {result.failure_code}",
            payment_id=payment.id,
            failure_code=result.failure_code,
        )
    response.headers["Location"] = f"/api/v1/payments/{payment.id}"
    return payment


@router.get("/payments", response_model=PaymentPage)
def list_payments(
    db: DB,
    user: CurrentUser,
    paging: PagingDep,
    order_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    user_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    status: PaymentStatus | None = None,
) -> PaymentPage:
    """Payments of one order or one user (yours, unless you are staff), newest first."""
    if user_id is not None and user_id != user.id and not is_staff(user):
        raise ApiError(403, "forbidden", "You may only list your own payments")
    base = select(Payment)
    if order_id is not None:
        base = base.where(Payment.order_id == order_id)
    if user_id is not None:
        base = base.where(Payment.user_id == user_id)
    elif not is_staff(user):
        base = base.where(Payment.user_id == user.id)
    if status is not None:
        base = base.where(Payment.status == status)
    total = db.scalar(select(func.count()).select_from(base.subquery())) or 0
    items = db.scalars(
        base.order_by(Payment.id.desc()).limit(paging.per_page).offset(paging.offset)
    ).all()
    return PaymentPage(
        items=[PaymentOut.model_validate(p, from_attributes=True) for p in items],
        page=paging.page,
        per_page=paging.per_page,
        total=total,
        pages=paging.pages(total),
    )


@router.get("/payments/{payment_id}", response_model=PaymentOut, responses=_ERRORS)
def get_payment(payment_id: PathId, db: DB, user: CurrentUser) -> Payment:
    return visible_payment(db, user, payment_id)


@router.post("/payments/{payment_id}/capture", response_model=PaymentOut, responses=_ERRORS)
def capture_payment(payment_id: PathId, db: DB, staff: StaffUser) -> Payment:
    """Staff only: the shop captures an authorized payment when it ships."""
    payment = locked_payment(db, staff, payment_id)
    if payment.status != "authorized":
        raise ApiError(
            409,
            "payment-not-capturable",
            f"Payment {payment_id} is {payment.status}; only authorized payments can be captured",
        )
    payment.status = "captured"
    db.commit()
    return payment


@router.post("/payments/{payment_id}/refund", response_model=PaymentOut, responses=_ERRORS)
def refund_payment(
    payment_id: PathId, db: DB, staff: StaffUser, body: RefundIn | None = None
) -> Payment:
    """Staff only: customer service refunds. Two refunds at once never exceed the balance."""
    payment = locked_payment(db, staff, payment_id)
    if payment.status not in billing.REFUNDABLE_STATUSES:
        raise ApiError(
            409,
            "payment-not-refundable",
            f"Payment {payment_id} is {payment.status}; only captured payments can be refunded",
        )
    balance = payment.amount - payment.refunded_amount
    amount = body.amount if body and body.amount is not None else balance
    if amount > balance:
        raise ApiError(
            422,
            "refund-exceeds-balance",
            f"Refund {amount:.2f} exceeds the refundable balance {balance:.2f}",
            refundable=f"{balance:.2f}",
        )
    payment.refunded_amount = payment.refunded_amount + amount
    payment.status = (
        "refunded" if payment.refunded_amount == payment.amount else "partially_refunded"
    )
    if body and body.reason:
        payment.refund_reason = body.reason
    db.commit()
    return payment
