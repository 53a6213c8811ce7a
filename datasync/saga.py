"""The compensation sagas' state, in the service's database (nothing is ever installed in the
legacy database): one row per compensated service row, its steps, and each rule's cursors.

    sync_sagas         one saga per (sync, rule, row key): unique, so a row is never compensated
                       twice, however often detection finds it
    sync_saga_steps    every step of a saga, appended, never rewritten (found, call, done, ...)
    sync_saga_cursors  per (sync, rule, source) the detection's high-water mark (change time, key)
                       and, on the `sweep` source, when the last full sweep ran

A saga's states (`compensate.py` moves them):

    pending --claim--> calling --2xx--> done
                          |----409/422, row no longer in an action state--> done ("already")
                          |----409/422, row in another action state--> pending ("replanned":
                          |        that state's action, a key naming the state)
                          |----other 4xx, or 409/422 with the row still in its state--> failed
                          +----5xx, connection error, timeout, 409 idempotency key in progress
                               (no sooner than its Retry-After)--> retrying --(next_at)--> calling
                                                         (after `max_attempts`: failed)

Portable Core only (SQLite, PostgreSQL, Oracle 19c): the tables live on a MetaData of their own
(the service's Alembic metadata does not know them; `ensure_schema` creates them, checkfirst, as
the engine's other state tables are), identifiers are lowercase and at most 30 characters
(Oracle before 12.2 and Oracle's tooling), ids are identity columns (Oracle 12c+), and every
state and time is a plain column (no JSON, no enums).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.engine import Engine

from datasync.types import UTCDateTime

PENDING = "pending"
CALLING = "calling"
DONE = "done"
FAILED = "failed"
RETRYING = "retrying"
SAGA_STATES = (PENDING, CALLING, DONE, FAILED, RETRYING)
OPEN_STATES = (PENDING, CALLING, RETRYING)

# Cursor sources: the watched legacy table, the service table, and the full sweep's clock.
SOURCE_WATCHED = "watched"
SOURCE_SERVICE = "service"
SOURCE_SWEEP = "sweep"

ERROR_MAX = 400
DETAIL_MAX = 400

# An integer primary key SQLite numbers by itself (its BIGINT columns do not autoincrement).
SagaId = BigInteger().with_variant(Integer(), "sqlite")

saga_metadata = MetaData()

sync_sagas = Table(
    "sync_sagas",
    saga_metadata,
    Column("id", SagaId, Identity(), primary_key=True),
    Column("sync_name", String(64), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("row_key", BigInteger, nullable=False),
    Column("watched_key", BigInteger, nullable=False),
    Column("row_state", String(40), nullable=False),  # the row's state when found
    Column("action", String(250), nullable=False),  # "POST /api/v1/payments/7/void"
    Column("body", String(1000)),  # the call's JSON body, rendered when found
    Column("state", String(10), nullable=False),
    Column("outcome", String(20)),  # how it ended: "done", "already", "rejected", "gave-up"
    Column("attempts", Integer, nullable=False),
    Column("next_at", UTCDateTime(), nullable=False),
    Column("idem_key", String(200), nullable=False),
    Column("http_status", Integer),
    Column("last_error", String(ERROR_MAX)),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    UniqueConstraint("sync_name", "rule", "row_key", name="uq_sync_sagas_row"),
    CheckConstraint(
        "state IN ({})".format(", ".join(f"'{s}'" for s in SAGA_STATES)),
        name="ck_sync_sagas_state",
    ),
    Index("ix_sync_sagas_due", "state", "next_at"),
)

sync_saga_steps = Table(
    "sync_saga_steps",
    saga_metadata,
    Column("id", SagaId, Identity(), primary_key=True),
    Column(
        "saga_id",
        SagaId,
        ForeignKey("sync_sagas.id", name="fk_sync_saga_steps_saga"),
        nullable=False,
    ),
    Column("step", Integer, nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("detail", String(DETAIL_MAX)),
    UniqueConstraint("saga_id", "step", name="uq_sync_saga_steps_step"),
)

sync_saga_cursors = Table(
    "sync_saga_cursors",
    saga_metadata,
    Column("sync_name", String(64), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("source", String(10), nullable=False),
    Column("changed_at", UTCDateTime()),
    Column("row_key", BigInteger),
    Column("updated_at", UTCDateTime(), nullable=False),
    PrimaryKeyConstraint("sync_name", "rule", "source", name="pk_sync_saga_cursors"),
)

SAGA_TABLES = ("sync_sagas", "sync_saga_steps", "sync_saga_cursors")


def ensure_schema(engine: Engine) -> None:
    """Create the saga tables that are missing (never alters an existing one)."""
    saga_metadata.create_all(engine, checkfirst=True)


def idempotency_key(sync: str, rule: str, row_key: int, state: str | None = None) -> str:
    """The key every call of one saga carries: a retry of a call the service already made
    replays its first answer instead of acting twice (the service keeps keys for 24 h). A saga
    re-planned for the state its row moved to carries that state too: its new call is another
    operation, which the first call's key would be refused for."""
    base = f"strangler-{sync}-{rule}-{row_key}"
    return base if state is None else f"{base}-{state}"


def clip(text: str, limit: int = ERROR_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
