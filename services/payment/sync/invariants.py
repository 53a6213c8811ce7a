"""A business invariant reconcile checks besides row equality: no payment is live on an order the
monolith has cancelled.

Why: after cutover a customer pays in the service while the monolith can still cancel the order
(its cancel checks only its own `payments` table, which the service's payment reaches only when
to-legacy delivers it). The order ends cancelled with money taken, and both copies of the payment
agree, so the row comparison sees no drift. The monolith cannot be changed and the service cannot
see the cancel in time, so the sync makes it visible: to-legacy counts such an apply as a
`conflict`, and reconcile reports every such payment as `cancelled_order_with_live_payment`
(counted in the drift, so reconcile exits 3 and the cutover gate closes). An operator must
refund it.

Read-only. The order's state is read from the LEGACY `orders` table only (`legacy_schema.py`):

- legacy payments: one join in the legacy database (payments x orders, cancelled, live status);
- service payments: the cancelled orders' ids, read from the legacy database a page of 500 at a
  time (keyset by id), each page one `order_id IN (...)` query on the service's payments: every
  IN-list stays at 500 or fewer (Oracle's cap is 1,000), every statement is plain Core that
  compiles on SQLite, PostgreSQL and Oracle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.engine import Connection

from services.payment.sync.apply import IN_LIST_MAX, service_payments
from services.payment.sync.legacy_schema import ORDER_CANCELLED, legacy_orders, legacy_payments

CATEGORY = "cancelled_order_with_live_payment"
# A payment that holds (or may still take) the customer's money.
LIVE_STATUSES = ("authorized", "captured", "partially_refunded")


@dataclass(frozen=True)
class LiveOnCancelled:
    """A payment live in at least one database whose order the monolith has cancelled."""

    payment_id: int
    order_id: int
    legacy_status: str | None  # None: not in that database
    service_status: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "order_id": self.order_id,
            "legacy_status": self.legacy_status,
            "service_status": self.service_status,
        }


def legacy_live_query() -> Select[Any]:
    """Legacy payments that are live on a cancelled order: one join in the legacy database."""
    p, o = legacy_payments, legacy_orders
    return (
        select(p.c.id, p.c.order_id, p.c.status)
        .join(o, o.c.id == p.c.order_id)
        .where(o.c.state == ORDER_CANCELLED, p.c.status.in_(LIVE_STATUSES))
        .order_by(p.c.id)
    )


def cancelled_orders_query(after: int | None, limit: int = IN_LIST_MAX) -> Select[Any]:
    """The next page of cancelled order ids in the legacy database (keyset by id)."""
    o = legacy_orders
    query = select(o.c.id).where(o.c.state == ORDER_CANCELLED)
    if after is not None:
        query = query.where(o.c.id > after)
    return query.order_by(o.c.id).limit(limit)


def service_live_query(order_ids: Sequence[int]) -> Select[Any]:
    """Service payments that are live on these orders (at most `IN_LIST_MAX` ids)."""
    t = service_payments
    return select(t.c.id, t.c.order_id, t.c.status).where(
        t.c.order_id.in_(list(order_ids)), t.c.status.in_(LIVE_STATUSES)
    )


def status_query(table: Any, ids: Sequence[int]) -> Select[Any]:
    return select(table.c.id, table.c.status).where(table.c.id.in_(list(ids)))


def live_on_cancelled(legacy: Connection, service: Connection) -> list[LiveOnCancelled]:
    """Every payment live in either database whose legacy order is cancelled, by payment id."""
    orders: dict[int, int] = {}
    legacy_status: dict[int, str] = {}
    service_status: dict[int, str] = {}
    for payment_id, order_id, status in legacy.execute(legacy_live_query()):
        orders[int(payment_id)] = int(order_id)
        legacy_status[int(payment_id)] = str(status)
    after: int | None = None
    while True:
        page = [int(i) for i in legacy.scalars(cancelled_orders_query(after))]
        if not page:
            break
        for payment_id, order_id, status in service.execute(service_live_query(page)):
            orders[int(payment_id)] = int(order_id)
            service_status[int(payment_id)] = str(status)
        if len(page) < IN_LIST_MAX:
            break
        after = page[-1]
    # The other side's status of each payment found, for the report.
    _fill(service, service_payments, [i for i in orders if i not in service_status], service_status)
    _fill(legacy, legacy_payments, [i for i in orders if i not in legacy_status], legacy_status)
    return [
        LiveOnCancelled(pid, orders[pid], legacy_status.get(pid), service_status.get(pid))
        for pid in sorted(orders)
    ]


def _fill(conn: Connection, table: Any, ids: list[int], into: dict[int, str]) -> None:
    for start in range(0, len(ids), IN_LIST_MAX):
        chunk = ids[start : start + IN_LIST_MAX]
        into.update({int(i): str(s) for i, s in conn.execute(status_query(table, chunk))})
