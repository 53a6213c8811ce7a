"""Payments: create for an order (through the card gateway), read, list, capture, refund, void.

The monolith's routes, signatures and answers, served from this service's own table. Void is
the service's own: the monolith voids only inside its order cancel and has no such route, so the
route table keeps `/void` on the service (the data sync's compensation calls it directly, with a
staff token). To every caller but staff it answers exactly as the monolith answers a route it
does not have (404 "No resource at ..."), so a client sees one contract from either backend
during a canary (`test_contract.py`'s parity). Listing
is "newest first" as the monolith means it for its data: payments with legacy ids come in id
order, descending, exactly as the monolith lists them (its `created_at` is not in id order for
imported history, so sorting them by time would reorder what clients see); payments created by
this service (descending ids, `ids.py`) list above all legacy ones, the latest created first,
and so do the monolith's own payments made after SQLite's jump above the service range (ids
above 4e15, `ids.py`: they too are newer than every legacy id below the range).

Known difference, kept on purpose: once the to-legacy sync has copied the service's payments
into the monolith, the monolith lists them by id descending, i.e. among themselves OLDEST first
(service ids count down), while this service lists them newest first. Listing by id descending
here too would make both backends agree during a canary or rollback, but would list a client's
new payments oldest first, against the contract the parity test (`test_contract.py`) holds both
to; that trade-off is the owners' call, not this module's.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from services.payment import billing
from services.payment.api.deps import (
    CurrentCaller,
    PagingDep,
    ServicesDep,
    StaffCaller,
    bearer_scheme,
)
from services.payment.api.writes import Work, payment_response, run_write
from services.payment.auth import Caller
from services.payment.db import utcnow
from services.payment.errors import ApiError, problem
from services.payment.idempotency import KEY_MAX_LENGTH, KEY_PATTERN
from services.payment.ids import SERVICE_ID_FLOOR
from services.payment.models import Payment
from services.payment.schemas import (
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
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=KEY_MAX_LENGTH,
        pattern=KEY_PATTERN,
        description="Retry-safe writes: the same key and body replay the first answer (24 h).",
    ),
]

# The service's range and, above it, the monolith's ids after SQLite's jump: all newer than any
# id below the floor, so they come first, by creation time.
_is_service = Payment.id >= SERVICE_ID_FLOOR
NEWEST_FIRST = (
    case((_is_service, 1), else_=0).desc(),
    case((_is_service, Payment.created_at), else_=None).desc(),
    Payment.id.desc(),
)


def visible_payment(session: Session, caller: Caller, payment_id: int) -> Payment:
    payment = session.get(Payment, payment_id)
    if payment is None or (payment.user_id != caller.id and not caller.is_staff):
        raise ApiError(404, "not-found", f"Payment {payment_id} does not exist")
    return payment


@router.post("/payments", response_model=PaymentOut, status_code=201, responses=_ERRORS)
def create_payment(
    body: PaymentIn,
    request: Request,
    services: ServicesDep,
    caller: CurrentCaller,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    def prepare() -> Work:
        order = services.legacy.order(caller.token, body.order_id)
        if order is None:
            raise ApiError(404, "not-found", f"Order {body.order_id} does not exist")
        payment_id = services.ids.next_id()

        def work(session: Session) -> tuple[Response, int | None]:
            payment, result = billing.create_payment(session, order, body, payment_id, utcnow())
            if not result.approved:
                declined = problem(
                    402,
                    "payment-declined",
                    f"The gateway declined the payment: {result.failure_code}",
                    instance=request.url.path,
                    payment_id=payment.id,
                    failure_code=result.failure_code,
                )
                return declined, payment.id
            location = {"Location": f"/api/v1/payments/{payment.id}"}
            return payment_response(payment, 201, location), payment.id

        return work

    return run_write(
        services, request, caller, idempotency_key, body.model_dump(mode="json"), prepare
    )


@router.get("/payments", response_model=PaymentPage)
def list_payments(
    services: ServicesDep,
    caller: CurrentCaller,
    paging: PagingDep,
    order_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    user_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    status: PaymentStatus | None = None,
) -> PaymentPage:
    """Payments of one order or one user (yours, unless you are staff), newest first."""
    if user_id is not None and user_id != caller.id and not caller.is_staff:
        raise ApiError(403, "forbidden", "You may only list your own payments")
    base = select(Payment)
    if order_id is not None:
        base = base.where(Payment.order_id == order_id)
    if user_id is not None:
        base = base.where(Payment.user_id == user_id)
    elif not caller.is_staff:
        base = base.where(Payment.user_id == caller.id)
    if status is not None:
        base = base.where(Payment.status == status)
    with services.readers() as session:
        total = session.scalar(select(func.count()).select_from(base.subquery())) or 0
        items = session.scalars(
            base.order_by(*NEWEST_FIRST).limit(paging.per_page).offset(paging.offset)
        ).all()
    return PaymentPage(
        items=[PaymentOut.model_validate(p, from_attributes=True) for p in items],
        page=paging.page,
        per_page=paging.per_page,
        total=total,
        pages=paging.pages(total),
    )


@router.get("/payments/{payment_id}", response_model=PaymentOut, responses=_ERRORS)
def get_payment(payment_id: PathId, services: ServicesDep, caller: CurrentCaller) -> Response:
    with services.readers() as session:
        return payment_response(visible_payment(session, caller, payment_id))


@router.post("/payments/{payment_id}/capture", response_model=PaymentOut, responses=_ERRORS)
def capture_payment(
    payment_id: PathId,
    request: Request,
    services: ServicesDep,
    staff: StaffCaller,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Staff only: the shop captures an authorized payment when it ships."""

    def prepare() -> Work:
        def work(session: Session) -> tuple[Response, int | None]:
            payment = billing.capture(session, payment_id, utcnow())
            return payment_response(payment), payment.id

        return work

    target = {"payment_id": payment_id}
    return run_write(services, request, staff, idempotency_key, None, prepare, target)


@router.post("/payments/{payment_id}/refund", response_model=PaymentOut, responses=_ERRORS)
def refund_payment(
    payment_id: PathId,
    request: Request,
    services: ServicesDep,
    staff: StaffCaller,
    body: RefundIn | None = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Staff only: customer service refunds. Two refunds at once never exceed the balance."""

    def prepare() -> Work:
        def work(session: Session) -> tuple[Response, int | None]:
            payment = billing.refund(session, payment_id, body, utcnow())
            return payment_response(payment), payment.id

        return work

    # The semantic request: no body means the whole balance, exactly as `{}` does.
    fingerprinted = (body or RefundIn()).model_dump(mode="json")
    target = {"payment_id": payment_id}
    return run_write(services, request, staff, idempotency_key, fingerprinted, prepare, target)


def hidden_staff(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Caller:
    """Staff; anyone else (no token, a refused token, a customer) gets the monolith's answer for
    a route it does not have."""
    caller: Caller | None = None
    if credentials is not None:
        try:
            caller = services.auth.caller(credentials.credentials)
        except ApiError as exc:
            if exc.status != 401:
                raise
    if caller is None or not caller.is_staff:
        raise ApiError(404, "not-found", f"No resource at {request.url.path}")
    return caller


HiddenStaffCaller = Annotated[Caller, Depends(hidden_staff)]


@router.post("/payments/{payment_id}/void", response_model=PaymentOut, responses=_ERRORS)
def void_payment(
    payment_id: PathId,
    request: Request,
    services: ServicesDep,
    staff: HiddenStaffCaller,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Staff only: release an authorized payment whose order was cancelled."""

    def prepare() -> Work:
        def work(session: Session) -> tuple[Response, int | None]:
            payment = billing.void(session, payment_id, utcnow())
            return payment_response(payment), payment.id

        return work

    target = {"payment_id": payment_id}
    return run_write(services, request, staff, idempotency_key, None, prepare, target)
