"""The payment service's own database: engine factory, declarative base, portable types, migrations.

The service owns this database; the monolith's tables are never read from here (the service
reaches the monolith over HTTP, `legacy.py`, and the sync reads the legacy database itself).
Portability rules, as in the monolith and tested by compiling the DDL for Oracle 19c and 23ai:
identifiers lowercase, at most 30 characters, not reserved; timestamps `TIMESTAMP WITH TIME ZONE`
read back as aware UTC; no `Text` column in a WHERE. The schema is created by Alembic
(`upgrade(engine)`, configured in code: no alembic.ini), never by `create_all` (the data sync
engine's own tables excepted: `upgrade` has `datasync.state.ensure_schema` create them). Nothing
runs at import time. On SQLite, transactions that may write start with `BEGIN IMMEDIATE` after
queueing in the process; work that only reads goes through `read_only(engine)` and never waits.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Integer, MetaData, create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.pool import ConnectionPoolEntry

# The toolkit's type: the payment's tables and the sync read timestamps the same way.
from datasync.types import UTCDateTime as UTCDateTime

# Short, deterministic constraint names: Oracle 19c caps identifiers at 30 characters.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT keys everywhere, but SQLite only auto-numbers (and stores 64-bit keys as the rowid for)
# an `INTEGER PRIMARY KEY`.
BigId = BigInteger().with_variant(Integer(), "sqlite")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    # Hand transaction control to SQLAlchemy's "begin" event (pysqlite's own BEGIN is deferred
    # and skipped before SELECTs, so reads would not share the transaction's snapshot).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


READ_ONLY = "payment_read_only"
_HOLDS_WRITE_LOCK = "payment_sqlite_write_lock"


class _SqliteWriters:
    """Write transactions on SQLite, queued in the process before they queue in SQLite.

    SQLite has one writer at a time. A deferred transaction that reads and then writes fails at
    once with "database is locked" when another writer committed in between, so writers start
    with `BEGIN IMMEDIATE`, which takes the write lock up front. Waiting for it in SQLite means
    its busy handler: sleeps of up to 100 ms between tries, which under load turns milliseconds
    into seconds. So this process's writers first take a lock of its own (woken at once on
    release) and meet SQLite's busy wait only against other processes. Read-only transactions
    (`read_only(engine)`) take neither and read a consistent WAL snapshot.
    """

    def __init__(self, timeout: float) -> None:
        self._lock = threading.Lock()
        self._timeout = timeout

    def begin(self, conn: Any) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN")
            return
        if not self._lock.acquire(timeout=self._timeout):
            raise TimeoutError(f"no SQLite write lock after {self._timeout:.0f} s")
        conn.info[_HOLDS_WRITE_LOCK] = True
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self.end(conn)
            raise

    def end(self, conn: Any, *_args: Any) -> None:
        if conn.info.pop(_HOLDS_WRITE_LOCK, False):
            self._lock.release()

    def returned(self, _dbapi_connection: Any, record: Any, *_args: Any) -> None:
        # A connection back in the pool no longer holds a transaction, whatever happened.
        if record.info.pop(_HOLDS_WRITE_LOCK, False):
            self._lock.release()


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def read_only(engine: Engine) -> Engine:
    """The same engine for transactions that only read (on SQLite: no write lock taken)."""
    return engine.execution_options(**{READ_ONLY: True})


def make_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """Build an engine for `url` (Oracle, PostgreSQL or SQLite), creating SQLite's folder.

    On SQLite (WAL mode) every transaction that may write starts with `BEGIN IMMEDIATE`, after
    queueing in-process (`_SqliteWriters`); writers of other processes wait up to 30 s.
    Transactions on `read_only(engine)` never wait.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite:
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Worker threads share pooled connections; wait on locks instead of failing at once.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        kwargs.pop("pool_pre_ping")
    engine = create_engine(parsed, **kwargs)
    if sqlite:
        writers = _SqliteWriters(timeout=30)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", writers.begin)
        event.listen(engine, "commit", writers.end)
        event.listen(engine, "rollback", writers.end)
        event.listen(engine.pool, "checkin", writers.returned)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[OrmSession]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine | None = None) -> Any:
    """An Alembic `Config` for the service's migrations, built in code (no alembic.ini needed)."""
    from alembic.config import Config

    config = Config()
    # ConfigParser interpolates '%': escape it (URL-encoded passwords are full of them).
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if engine is not None:
        url = engine.url.render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations on `engine` up to `revision` (idempotent: a no-op at head),
    then create the data sync engine's own tables if missing (`datasync.state.ensure_schema`:
    the sync's state is the engine's, not a migration of this service)."""
    from alembic import command

    from datasync.state import ensure_schema

    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    ensure_schema(engine)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
