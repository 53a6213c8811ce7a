"""The payment service's tables (created by the Alembic migrations in `migrations/`).

- `payments`: the monolith's payment columns, same names, types and check constraints, so the
  sync copies rows one to one. No foreign keys: orders and users live in the monolith. The id is
  assigned by the service (`ids.py`): legacy rows keep their monolith id, new payments take ids
  from a descending range. `origin` says who wrote the row last ('legacy': the sync from the
  monolith; 'service': this service's API) so each sync direction skips its own echoes;
  `row_version` grows by one on every service-side change (the to-legacy version guard).
- `idempotency_keys`: one row per (user, Idempotency-Key): the request's fingerprint and, once
  done, the stored answer that a replay returns.
- `outbox`: events written in the same transaction as the change they describe, published in id
  (commit) order by the relay (`events.py`).
- `id_blocks`: the id allocator's state, one row per named range.
- `order_locks`: one row per order that has been paid for, locked while a payment is created so
  two concurrent POSTs for one order run one after the other (the monolith locks its order row;
  the service has no orders table).
- `leases`: named leases with an expiry, so that of several service processes exactly one runs
  the outbox relay at a time (per-payment event order holds across processes).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.payment.db import Base, BigId, UTCDateTime, utcnow

Money = Numeric(12, 2, asdecimal=True)

PAYMENT_STATUSES = (
    "authorized",
    "captured",
    "partially_refunded",
    "refunded",
    "voided",
    "failed",
)
PAYMENT_METHODS = ("card", "wallet", "bank_transfer")
ORIGINS = ("legacy", "service")
ORIGIN_LEGACY = "legacy"
ORIGIN_SERVICE = "service"
IDEMPOTENCY_STATES = ("in_progress", "done")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Payment(Base):
    __tablename__ = "payments"
    __table_args__ = (
        CheckConstraint(_in("status", PAYMENT_STATUSES), name="status"),
        CheckConstraint(_in("method", PAYMENT_METHODS), name="method"),
        CheckConstraint(_in("origin", ORIGINS), name="origin"),
        # The high-water mark that incremental readers of this table poll by.
        Index("ix_payments_updated_at_id", "updated_at", "id"),
    )

    # Assigned by the service (ids.py) or copied from the monolith: never auto-numbered.
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    order_id: Mapped[int] = mapped_column(BigInteger, index=True)
    user_id: Mapped[int] = mapped_column(BigInteger, index=True)
    amount: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    method: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(20))
    card_brand: Mapped[str | None] = mapped_column(String(16))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    provider_ref: Mapped[str | None] = mapped_column(String(64))
    failure_code: Mapped[str | None] = mapped_column(String(40))
    refunded_amount: Mapped[Decimal] = mapped_column(Money, default=Decimal("0.00"))
    refund_reason: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    origin: Mapped[str] = mapped_column(String(8), default=ORIGIN_SERVICE)
    row_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("user_id", "idem_key", name="uq_idempotency_keys_user_key"),
        CheckConstraint(_in("state", IDEMPOTENCY_STATES), name="state"),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    idem_key: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[int] = mapped_column(BigInteger)
    # "POST /api/v1/payments/{id}/refund" with the id filled in: a key names one operation.
    endpoint: Mapped[str] = mapped_column(String(200))
    request_sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(12), default="in_progress")
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[str | None] = mapped_column(Text)
    response_headers: Mapped[str | None] = mapped_column(Text)  # JSON object
    payment_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class OutboxEvent(Base):
    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_published_at_id", "published_at", "id"),)

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    aggregate_id: Mapped[int] = mapped_column(BigInteger, index=True)
    event_type: Mapped[str] = mapped_column(String(40))
    row_version: Mapped[int] = mapped_column(Integer)
    payload: Mapped[str] = mapped_column(Text)  # JSON, see events.py
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdBlock(Base):
    __tablename__ = "id_blocks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    next_id: Mapped[int] = mapped_column(BigInteger)


class OrderLock(Base):
    __tablename__ = "order_locks"

    order_id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    locked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Lease(Base):
    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


__all__ = ["IdBlock", "IdempotencyKey", "Lease", "OrderLock", "OutboxEvent", "Payment"]
