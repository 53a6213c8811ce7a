"""The catalog's own database: engine factory, read and write transactions, and `migrate`.

- Reads (the API): one transaction per answer, so a list's count and its page see the same
  data while the sync commits: on SQLite a deferred `BEGIN` (a WAL snapshot from the first
  read; readers never wait for the writer), on PostgreSQL REPEATABLE READ (one snapshot for
  the transaction, where READ COMMITTED takes one per statement).
- Writes (migrate, rebuild, the relay's marks): `writing(engine)`; on SQLite `BEGIN
  IMMEDIATE`, the write lock up front (a deferred transaction that reads then writes fails at
  once when another writer committed in between; the sync's engine does the same).
- `migrate(engine)` is idempotent: `create_all(checkfirst=True)` (and the projections' lock
  row), pg_trgm on PostgreSQL (a
  trusted extension since PostgreSQL 13: a database owner may create it), the FTS5 table on
  SQLite, and the sync engine's state tables. It is the declarations' `migrate` hook, so
  `strangler sync migrate --sync services/catalog/sync/products.yaml` makes the read model.
  No Alembic yet: there is one schema version; the first change to it brings Alembic in, as in
  the payment service.
Nothing runs at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, insert, inspect, select, text
from sqlalchemy.engine import URL, Connection, Engine, make_url

from datasync.state import ensure_schema
from services.catalog.tables import (
    LOCK_ROW,
    SEARCH_DDL,
    SEARCH_TABLE,
    metadata,
    product_view,
    projection_lock,
    search,
)

SCHEMA_VERSION = "catalog-1"
SQLITE_BUSY_TIMEOUT_S = 30  # as the monolith's, the payment service's and the sync's engines
_WRITER = "catalog_writer"


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are begun by the "begin" listener below, never implicitly by pysqlite
    # (which skips BEGIN before a SELECT: a count and a page would read two snapshots).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(_WRITER)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str | URL) -> Engine:
    """An engine on the catalog's database (SQLite, PostgreSQL or Oracle), creating SQLite's
    folder; transactions read one snapshot (module docstring)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        options: dict[str, Any] = {"pool_pre_ping": True}
        if parsed.get_backend_name() == "postgresql":
            options["isolation_level"] = "REPEATABLE READ"
        return create_engine(parsed, **options)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        parsed,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def writing(engine: Engine) -> Engine:
    """The same engine for transactions that write (`BEGIN IMMEDIATE` on SQLite; READ
    COMMITTED on PostgreSQL, where a write must not fail on a snapshot conflict)."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="READ COMMITTED")
    return engine.execution_options(**{_WRITER: True})


def migrate(engine: Engine) -> str | None:
    """Create what the read model lacks (idempotent); return the schema version."""
    with writing(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        metadata.create_all(conn, checkfirst=True)
        if conn.scalar(select(projection_lock.c.id)) is None:
            conn.execute(insert(projection_lock).values(LOCK_ROW))
        if conn.dialect.name == "sqlite":
            _create_search(conn)
    ensure_schema(writing(engine))
    return SCHEMA_VERSION


def _create_search(conn: Connection) -> None:
    """The FTS5 table, filled from the view when it is new (a database made before it)."""
    if inspect(conn).has_table(SEARCH_TABLE):
        return
    conn.execute(text(SEARCH_DDL))
    conn.execute(
        insert(search).from_select(
            ["rowid", "name", "sku"],
            select(product_view.c.id, product_view.c.name, product_view.c.sku),
        )
    )
