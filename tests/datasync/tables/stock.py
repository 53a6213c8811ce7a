"""The inventory `stock_items` table of a made-up monolith and of the service that takes it over,
created with SQLAlchemy Core as each side would (never from the engine's own metadata), and the
writes each side makes: the monolith's inserts, updates and hard deletes; the service's updates
with its outbox events.

Two declarations describe it: `stock_items.yaml` (no soft delete) and `stock_items_soft.yaml`
(a `row_state` column, D meaning deleted). Both sides are read back here without the engine,
by the tables defined below, so a comparison does not trust the code under test.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url

from datasync.engines import make_legacy_engine, make_service_engine
from datasync.spec import Spec
from datasync.types import UTCDateTime

HERE = Path(__file__).resolve().parent
STOCK_YAML = HERE / "stock_items.yaml"
STOCK_SOFT_YAML = HERE / "stock_items_soft.yaml"

# Legacy name -> service name of the columns the service renamed.
RENAMED = {"quantity": "qty_on_hand", "warehouse": "warehouse_code"}
ORIGIN, VERSION = "written_by", "revision"
FIELDS = (
    "item_no",
    "sku",
    "description",
    "unit_cost",
    "in_stock",
    "restock_on",
    "bin_label",
    "quantity",
    "warehouse",
    "modified_at",
)
SOFT_FIELD = "row_state"
# SQLite numbers BIGINT keys only as INTEGER PRIMARY KEY.
OutboxId = BigInteger().with_variant(Integer(), "sqlite")


def now() -> datetime:
    return datetime.now(UTC)


# --- the tables ----------------------------------------------------------------------------------
def legacy_table(metadata: MetaData, name: str, soft: bool) -> Table:
    """The monolith's table: its own key sequence, its change column indexed with the key."""
    extra = [Column(SOFT_FIELD, String(1), nullable=False, server_default="A")] if soft else []
    return Table(
        name,
        metadata,
        Column("item_no", Integer, primary_key=True, autoincrement=True),
        Column("sku", String(24), nullable=False),
        Column("description", Text),
        Column("unit_cost", Numeric(12, 3), nullable=False),
        Column("in_stock", Boolean, nullable=False),
        Column("restock_on", Date),
        Column("bin_label", String(16)),
        Column("quantity", Integer, nullable=False),
        Column("warehouse", String(8), nullable=False),
        Column("modified_at", UTCDateTime(), nullable=False),
        *extra,
        Index(f"ix_{name}_modified", "modified_at", "item_no"),
    )


def service_table(metadata: MetaData, name: str, soft: bool) -> Table:
    """The service's table: two columns renamed, plus who wrote the row last and its revision."""
    extra = [Column(SOFT_FIELD, String(1), nullable=False)] if soft else []
    return Table(
        name,
        metadata,
        Column("item_no", Integer, primary_key=True, autoincrement=False),
        Column("sku", String(24), nullable=False),
        Column("description", Text),
        Column("unit_cost", Numeric(12, 3), nullable=False),
        Column("in_stock", Boolean, nullable=False),
        Column("restock_on", Date),
        Column("bin_label", String(16)),
        Column(RENAMED["quantity"], Integer, nullable=False),
        Column(RENAMED["warehouse"], String(8), nullable=False),
        Column("modified_at", UTCDateTime(), nullable=False),
        *extra,
        Column(ORIGIN, String(8), nullable=False),
        Column(VERSION, Integer, nullable=False),
    )


def outbox_table(metadata: MetaData, name: str) -> Table:
    """The service's transactional outbox, with the columns `spec.EventSource` names."""
    return Table(
        name,
        metadata,
        Column("id", OutboxId, Identity(), primary_key=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("aggregate_id", BigInteger, nullable=False),
        Column("event_type", String(40), nullable=False),
        Column("row_version", Integer, nullable=False),
        Column("payload", Text, nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("published_at", UTCDateTime()),
    )


@dataclass
class Databases:
    """Both databases of one test. `legacy` is the sync's reader and `writer` its to-legacy
    engine (both `datasync.engines`); `monolith` is the monolith's own connection pool, which the
    tests write through; `service` is the service's."""

    backend: str
    legacy_url: str
    service_url: str
    legacy: Engine
    writer: Engine
    monolith: Engine
    service: Engine

    def dispose(self) -> None:
        for engine in (self.legacy, self.writer, self.monolith, self.service):
            engine.dispose()


def _monolith_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _monolith_engine(url: str) -> Engine:
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _monolith_pragmas)
        return engine
    return create_engine(url, pool_size=8)


def databases(backend: str, legacy_url: str, service_url: str) -> Databases:
    return Databases(
        backend,
        legacy_url,
        service_url,
        make_legacy_engine(legacy_url),
        make_legacy_engine(legacy_url, writer=True),
        _monolith_engine(legacy_url),
        make_service_engine(service_url),
    )


def sqlite_databases(folder: Path) -> Databases:
    return databases(
        "sqlite", f"sqlite:///{folder / 'legacy.db'}", f"sqlite:///{folder / 'svc.db'}"
    )


def postgres_schemas(
    database_url: str, add_finalizer: Callable[[Callable[[], None]], None]
) -> Databases:
    """Two fresh schemas of the session's PostgreSQL database (legacy, service), dropped after
    the test."""
    tag = secrets.token_hex(4)
    names = [f"legacy_{tag}", f"service_{tag}"]
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
    admin.dispose()

    def drop() -> None:
        engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        engine.dispose()

    add_finalizer(drop)
    urls = [
        make_url(database_url)
        .update_query_dict({"options": f"-csearch_path={name}"})
        .render_as_string(hide_password=False)
        for name in names
    ]
    return databases("postgres", urls[0], urls[1])


@dataclass
class StockTables:
    """One declaration's tables on both sides, as the tests read and write them."""

    spec: Spec
    legacy: Table
    service: Table
    outbox: Table

    @property
    def soft(self) -> bool:
        return self.spec.soft_delete is not None

    @property
    def fields(self) -> tuple[str, ...]:
        return (*FIELDS, SOFT_FIELD) if self.soft else FIELDS


def create_stock(dbs: Databases, spec: Spec) -> StockTables:
    """Create the declaration's legacy table (in the monolith's database) and its service table
    and outbox (in the service's)."""
    soft = spec.soft_delete is not None
    assert spec.events is not None
    assert spec.events.outbox is not None
    legacy_md, service_md = MetaData(), MetaData()
    tables = StockTables(
        spec,
        legacy_table(legacy_md, spec.legacy_table, soft),
        service_table(service_md, spec.service_table, soft),
        outbox_table(service_md, spec.events.outbox),
    )
    legacy_md.create_all(dbs.monolith)
    service_md.create_all(dbs.service)
    return tables


# --- rows ----------------------------------------------------------------------------------------
def stock_row(key: int, changed: datetime | None = None, **values: Any) -> dict[str, Any]:
    """A legacy row (legacy names) whose values vary with its key: every type, NULLs too."""
    row: dict[str, Any] = {
        "item_no": key,
        "sku": f"SKU-{key:06d}",
        "description": None if key % 5 == 0 else f"Item {key}: bolts, nuts & 'washers'\nline 2",
        "unit_cost": Decimal(key % 1000) + Decimal("0.125") + Decimal(key % 7) / 1000,
        "in_stock": key % 3 != 0,
        "restock_on": None if key % 4 == 0 else date(2024, 1, 1) + timedelta(days=key % 300),
        "bin_label": None if key % 2 else f"B-{key % 97}",
        "quantity": key % 50,
        "warehouse": ("AMS", "BER", "LIS")[key % 3],
        "modified_at": changed or now(),
    }
    row.update(values)
    return row


def insert_legacy(dbs: Databases, tables: StockTables, rows: Iterable[dict[str, Any]]) -> None:
    with dbs.monolith.begin() as conn:
        conn.execute(insert(tables.legacy), list(rows))


def update_legacy(dbs: Databases, tables: StockTables, key: int, **values: Any) -> None:
    """The monolith's update: it stamps the change column (unless given)."""
    values.setdefault("modified_at", now())
    with dbs.monolith.begin() as conn:
        done = conn.execute(
            update(tables.legacy).where(tables.legacy.c.item_no == key).values(**values)
        )
        assert done.rowcount == 1, key


def delete_legacy(dbs: Databases, tables: StockTables, key: int) -> None:
    """A hard delete in the monolith (invisible to polling)."""
    with dbs.monolith.begin() as conn:
        conn.execute(delete(tables.legacy).where(tables.legacy.c.item_no == key))


def legacy_rows(dbs: Databases, tables: StockTables) -> dict[int, dict[str, Any]]:
    """Every legacy row by key, legacy names."""
    table = tables.legacy
    with dbs.monolith.connect() as conn:
        found = conn.execute(select(table).order_by(table.c.item_no)).mappings()
        return {int(row["item_no"]): {n: row[n] for n in tables.fields} for row in found}


def service_rows(dbs: Databases, tables: StockTables) -> dict[int, dict[str, Any]]:
    """Every service row by key, translated by hand to the legacy names (no bookkeeping)."""
    table = tables.service
    with dbs.service.connect() as conn:
        found = conn.execute(select(table).order_by(table.c.item_no)).mappings()
        return {
            int(row["item_no"]): {n: row[RENAMED.get(n, n)] for n in tables.fields} for row in found
        }


def bookkeeping(dbs: Databases, tables: StockTables, key: int) -> tuple[str, int]:
    """(who wrote the service row last, its revision)."""
    table = tables.service
    with dbs.service.connect() as conn:
        origin, version = conn.execute(
            select(table.c[ORIGIN], table.c[VERSION]).where(table.c.item_no == key)
        ).one()
    return str(origin), int(version)


def outbox_events(dbs: Databases, tables: StockTables) -> list[dict[str, Any]]:
    table = tables.outbox
    with dbs.service.connect() as conn:
        return [dict(row) for row in conn.execute(select(table).order_by(table.c.id)).mappings()]


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


def _event(
    tables: StockTables,
    key: int,
    values: dict[str, Any],
    version: int,
    origin: str,
    event_type: str,
) -> dict[str, Any]:
    payload = {RENAMED.get(n, n): _json(values[n]) for n in tables.fields}
    payload.update(origin=origin, row_version=version)
    return {
        "event_id": str(uuid.uuid4()),
        "aggregate_id": key,
        "event_type": event_type,
        "row_version": version,
        "payload": json.dumps(payload),
        "created_at": now(),
    }


def service_event(
    dbs: Databases,
    tables: StockTables,
    key: int,
    values: dict[str, Any],
    version: int,
    *,
    origin: str = "service",
    event_type: str = "stock.updated",
) -> str:
    """Append an event to the service's outbox: the row's fields by SERVICE name plus origin and
    row_version, as the service publishes it. Returns its event id."""
    row = _event(tables, key, values, version, origin, event_type)
    with dbs.service.begin() as conn:
        conn.execute(insert(tables.outbox).values(row))
    return str(row["event_id"])


def service_write(
    dbs: Databases, tables: StockTables, key: int, **changes: Any
) -> tuple[dict[str, Any], int]:
    """The service's own write (legacy names in `changes`): it stamps the change column, marks
    the row as its own, bumps its revision and appends the event, in one transaction. Returns
    the row written and its revision."""
    table = tables.service
    changes.setdefault("modified_at", now())
    with dbs.service.begin() as conn:
        row = conn.execute(select(table).where(table.c.item_no == key)).mappings().one()
        values = {n: row[RENAMED.get(n, n)] for n in tables.fields}
        values.update(changes)
        version = int(row[VERSION]) + 1
        written = {RENAMED.get(n, n): v for n, v in changes.items()}
        written.update({ORIGIN: "service", VERSION: version})
        conn.execute(update(table).where(table.c.item_no == key).values(written))
        event = _event(tables, key, values, version, "service", "stock.updated")
        conn.execute(insert(tables.outbox).values(event))
    return values, version


def service_insert(dbs: Databases, tables: StockTables, values: dict[str, Any]) -> None:
    """A row the service creates itself (revision 1), with its event."""
    table = tables.service
    key = int(values["item_no"])
    with dbs.service.begin() as conn:
        conn.execute(
            insert(table).values(
                {RENAMED.get(n, n): values[n] for n in tables.fields}
                | {ORIGIN: "service", VERSION: 1}
            )
        )
    service_event(dbs, tables, key, values, 1, event_type="stock.created")


def delete_service(dbs: Databases, tables: StockTables, key: int) -> None:
    with dbs.service.begin() as conn:
        conn.execute(delete(tables.service).where(tables.service.c.item_no == key))


def set_service(dbs: Databases, tables: StockTables, key: int, **values: Any) -> None:
    """Change a service row behind every job's back (legacy names): planted drift."""
    with dbs.service.begin() as conn:
        conn.execute(
            update(tables.service)
            .where(tables.service.c.item_no == key)
            .values({RENAMED.get(n, n): v for n, v in values.items()})
        )
