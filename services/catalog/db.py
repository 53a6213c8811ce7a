"""The catalog's own database: engine factory, read and write transactions, and `migrate`.

- Reads (the API): one transaction per answer, so a list's count and its page see the same
  data while the sync commits: on SQLite a deferred `BEGIN` (a WAL snapshot from the first
  read; readers never wait for the writer), on PostgreSQL REPEATABLE READ and on Oracle
  SERIALIZABLE (one snapshot for the transaction, where READ COMMITTED takes one per statement;
  a transaction that only reads never fails to serialise).
- Writes (migrate, rebuild, the relay's marks): `writing(engine)`; on SQLite `BEGIN
  IMMEDIATE`, the write lock up front (a deferred transaction that reads then writes fails at
  once when another writer committed in between; the sync's engine does the same).
- One-statement reads (the answer cache's version check): `single(engine)`, no transaction
  around the statement (no `BEGIN`/`COMMIT` round trips): on SQLite no `BEGIN` (the statement
  is its own transaction), elsewhere AUTOCOMMIT.
- The pool (server databases only; SQLite's is SQLAlchemy's default): `pool_size` connections
  stay open (`CATALOG_DB_POOL_SIZE`, 10), up to `max_overflow` more open under a burst
  (`CATALOG_DB_MAX_OVERFLOW`, 10) and are closed when they come back, so a pool smaller than the
  requests served at once makes PostgreSQL fork (and reap) a backend per extra request; beyond
  both, a request waits for a connection (up to 30 s). Every checkout is pinged first
  (`pool_pre_ping`: one round trip, so a connection the server dropped is replaced, not failed).
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
POOL_SIZE = 10
POOL_MAX_OVERFLOW = 10
_WRITER = "catalog_writer"
_SINGLE = "catalog_single_statement"


# One snapshot per read transaction, by server database (SQLite's deferred BEGIN is one).
SNAPSHOT_READS = {"postgresql": "REPEATABLE READ", "oracle": "SERIALIZABLE"}


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are begun by the "begin" listener below, never implicitly by pysqlite
    # (which skips BEGIN before a SELECT: a count and a page would read two snapshots).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    options = conn.get_execution_options()
    if options.get(_SINGLE):
        return
    conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITER) else "BEGIN")


def make_engine(
    url: str | URL, *, pool_size: int = POOL_SIZE, max_overflow: int = POOL_MAX_OVERFLOW
) -> Engine:
    """An engine on the catalog's database (SQLite, PostgreSQL or Oracle), creating SQLite's
    folder; transactions read one snapshot; a server database's pool holds `pool_size`
    connections, `max_overflow` more under a burst (module docstring)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        options: dict[str, Any] = {
            "pool_pre_ping": True,
            "pool_size": pool_size,
            "max_overflow": max_overflow,
        }
        if parsed.get_backend_name() in SNAPSHOT_READS:
            options["isolation_level"] = SNAPSHOT_READS[parsed.get_backend_name()]
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


def single(engine: Engine) -> Engine:
    """The same engine for reads of one statement, outside any transaction (module
    docstring): the statement sees what is committed when it runs."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{_SINGLE: True})
    return engine.execution_options(isolation_level="AUTOCOMMIT")


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
