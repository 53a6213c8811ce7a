"""The monolith's `payments` table (and the two `orders` columns it needs) as the sync sees
them, declared here with SQLAlchemy Core.

The service never imports `legacy_monolith` (a separate team would not have its code), so the
shape is written down from the production schema. This metadata is never used to create
anything: nothing is ever installed in the legacy database. `check_legacy_schema` compares the
declaration with the live table so a drifted schema fails loudly before any row is copied.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, MetaData, Numeric, String, Table, inspect
from sqlalchemy.engine import Connection

from services.payment.db import UTCDateTime
from services.payment.sync.errors import SchemaMissing

Money = Numeric(12, 2, asdecimal=True)

legacy_metadata = MetaData()

legacy_payments = Table(
    "payments",
    legacy_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("order_id", BigInteger, nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("amount", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("method", String(16), nullable=False),
    Column("status", String(20), nullable=False),
    Column("card_brand", String(16)),
    Column("card_last4", String(4)),
    Column("provider_ref", String(64)),
    Column("failure_code", String(40)),
    Column("refunded_amount", Money, nullable=False),
    Column("refund_reason", String(200)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Only what the business-invariant check reads (a payment live on a cancelled order): read-only.
legacy_orders = Table(
    "orders",
    legacy_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("state", String(16), nullable=False),
)
ORDER_CANCELLED = "cancelled"


def check_legacy_schema(conn: Connection) -> None:
    """Fail with `SchemaMissing` unless the legacy database has `payments` with every column."""
    inspector = inspect(conn)
    if not inspector.has_table("payments"):
        raise SchemaMissing(
            f"the legacy database ({conn.engine.url.render_as_string(hide_password=True)}) "
            "has no payments table: is this the monolith's database?"
        )
    present = {str(column["name"]).lower() for column in inspector.get_columns("payments")}
    absent = [c.name for c in legacy_payments.columns if c.name not in present]
    if absent:
        raise SchemaMissing(f"the legacy payments table lacks column(s) {', '.join(absent)}")
