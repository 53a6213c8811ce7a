"""Payments' life-cycle and the operations on it, inside a transaction the caller owns.

    authorized --capture--> captured --refund(part)--> partially_refunded --refund(rest)--> refunded
         |                      \\-------------------refund(all)------------------------/
         +--void (order cancelled: in the monolith, or POST .../void)--> voided
                                                          failed (declined; terminal)

The same rules, checks, order of checks and problem types as the monolith's payment routes.
What differs is where the facts come from: the order (owner, total, currency, cancelled or not)
from the monolith over HTTP, read before the transaction; the payments from this service's table.

Locking (portable: a no-op UPDATE is a row lock on Oracle and PostgreSQL and takes SQLite's write
lock): creating a payment first locks the order's `order_locks` row (inserted on first use), so
two concurrent payments for one order run one after the other and the second sees the first; a
capture or refund locks the payment's row, so two refunds never exceed the balance.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.payment import events, gateway
from services.payment.errors import TITLES, ApiError
from services.payment.ids import SERVICE_ID_FLOOR
from services.payment.models import ORIGIN_SERVICE, OrderLock, Payment
from services.payment.schemas import LegacyOrder, PaymentIn, RefundIn

LIVE_STATUSES = frozenset({"authorized", "captured", "partially_refunded", "refunded"})
PAID_STATUSES = frozenset({"captured", "partially_refunded"})
REFUNDABLE_STATUSES = PAID_STATUSES
# The service's own problem kind (the monolith has no void route), registered with the others.
TITLES.setdefault("not-voidable", "Payment cannot be voided")


@dataclass(frozen=True)
class Attempt:
    """A payment of the order, as far as the duplicate check needs to know it."""

    id: int
    status: str
    created_at: datetime | None = None


def _recency(attempt: Attempt) -> tuple[int, float, int]:
    # Service ids count down, so among them the newest is the latest created; legacy ids count
    # up; a service payment is newer than any legacy one below the range. Monolith ids above the
    # range (SQLite's jump, ids.py) are newer than those too: they also rank by creation time.
    if attempt.id >= SERVICE_ID_FLOOR:
        stamp = attempt.created_at.timestamp() if attempt.created_at else 0.0
        return (1, stamp, -attempt.id)
    return (0, 0.0, attempt.id)


def current_attempt(attempts: Iterable[Attempt]) -> Attempt | None:
    """The order's current payment: the newest one that is not failed or voided."""
    live = [a for a in attempts if a.status in LIVE_STATUSES]
    return max(live, key=_recency) if live else None


def order_attempts(session: Session, order: LegacyOrder) -> list[Attempt]:
    """The order's payments here, plus the monolith's current one if this service lacks it (a
    payment made in the monolith that the sync has not copied yet still blocks a second one)."""
    rows = session.scalars(select(Payment).where(Payment.order_id == order.id)).all()
    attempts = [Attempt(p.id, p.status, p.created_at) for p in rows]
    hint = order.payment
    if hint is not None and all(a.id != hint.id for a in attempts):
        attempts.append(Attempt(hint.id, hint.status))
    return attempts


def lock_order(session: Session, order_id: int, now: datetime) -> None:
    """Lock the order's `order_locks` row (creating it) until the transaction ends."""
    lock = update(OrderLock).where(OrderLock.order_id == order_id).values(locked_at=now)
    if session.execute(lock).rowcount:  # type: ignore[attr-defined]
        return
    try:
        with session.begin_nested():
            session.execute(insert(OrderLock).values(order_id=order_id, locked_at=now))
    except IntegrityError:  # a concurrent first payment inserted it: wait for its lock
        session.execute(lock)


def create_payment(
    session: Session, order: LegacyOrder, body: PaymentIn, payment_id: int, now: datetime
) -> tuple[Payment, gateway.GatewayResult]:
    """Check, charge and record a payment for `order`; raises the monolith's problems."""
    lock_order(session, order.id, now)
    current = current_attempt(order_attempts(session, order))
    if order.status == "cancelled":
        raise ApiError(409, "order-cancelled", f"Order {order.id} is cancelled")
    if current is not None and current.status == "refunded":
        raise ApiError(409, "order-refunded", f"Order {order.id} was paid and refunded")
    if current is not None and current.status in {"authorized", *PAID_STATUSES}:
        raise ApiError(
            409,
            "order-already-paid",
            f"Order {order.id} already has payment {current.id} ({current.status})",
            payment_id=current.id,
        )
    if body.amount is not None and body.amount != order.total:
        raise ApiError(
            422,
            "amount-mismatch",
            f"Amount {body.amount:.2f} differs from the order total {order.total:.2f}",
        )
    if body.method == "card" and not body.card_token:
        raise ApiError(422, "validation-failed", "body.card_token: required for card payments")
    result = gateway.charge(body.method, body.card_token)
    payment = Payment(
        id=payment_id,
        order_id=order.id,
        user_id=order.user_id,
        amount=order.total,
        currency=order.currency,
        method=body.method,
        status=("captured" if body.capture else "authorized") if result.approved else "failed",
        card_brand=result.card_brand,
        card_last4=result.card_last4,
        provider_ref=result.provider_ref,
        failure_code=result.failure_code,
        refunded_amount=Decimal("0.00"),
        created_at=now,
        updated_at=now,
        origin=ORIGIN_SERVICE,
        row_version=1,
    )
    session.add(payment)
    events.record_event(session, payment, events.CREATED if result.approved else events.FAILED, now)
    session.flush()
    return payment, result


def locked_payment(session: Session, payment_id: int) -> Payment:
    """The payment, locked for the rest of the transaction and read after the lock."""
    session.execute(
        update(Payment).where(Payment.id == payment_id).values(row_version=Payment.row_version)
    )
    payment = session.get(Payment, payment_id, populate_existing=True)
    if payment is None:
        raise ApiError(404, "not-found", f"Payment {payment_id} does not exist")
    return payment


def _changed(session: Session, payment: Payment, event_type: str, now: datetime) -> None:
    payment.updated_at = now
    payment.row_version += 1
    payment.origin = ORIGIN_SERVICE
    events.record_event(session, payment, event_type, now)
    session.flush()


def capture(session: Session, payment_id: int, now: datetime) -> Payment:
    payment = locked_payment(session, payment_id)
    if payment.status != "authorized":
        raise ApiError(
            409,
            "payment-not-capturable",
            f"Payment {payment_id} is {payment.status}; only authorized payments can be captured",
        )
    payment.status = "captured"
    _changed(session, payment, events.CAPTURED, now)
    return payment


def void(session: Session, payment_id: int, now: datetime) -> Payment:
    """Release an authorized payment's hold (its order was cancelled): nothing was taken, so
    nothing is refunded. The monolith voids only inside its order cancel; here it is a call of
    its own, which the data sync's compensation makes for an order the monolith cancelled."""
    payment = locked_payment(session, payment_id)
    if payment.status != "authorized":
        raise ApiError(
            409,
            "not-voidable",
            f"Payment {payment_id} is {payment.status}; only authorized payments can be voided",
        )
    payment.status = "voided"
    _changed(session, payment, events.VOIDED, now)
    return payment


def refund(session: Session, payment_id: int, body: RefundIn | None, now: datetime) -> Payment:
    payment = locked_payment(session, payment_id)
    if payment.status not in REFUNDABLE_STATUSES:
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
    _changed(session, payment, events.REFUNDED, now)
    return payment
