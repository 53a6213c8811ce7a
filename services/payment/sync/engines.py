"""Engines for both databases, each database's own clock, and the checks the CLI runs first.

The legacy engine sets nothing persistent: on SQLite only connection-level options (a busy
timeout; for the to-legacy writer, foreign keys enforced as the monolith's own connections do,
and `BEGIN IMMEDIATE`, without which a read-then-write transaction fails at once with
SQLITE_BUSY_SNAPSHOT when the monolith commits in between). It never changes the journal mode
or creates anything. SQLAlchemy's connection errors are translated to `DatabaseUnreachable`
here, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, create_engine, event, func, inspect, literal_column, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from services.payment.db import make_engine as make_service_engine
from services.payment.sync.errors import DatabaseUnreachable, SchemaMissing
from services.payment.sync.state import STATE_TABLES

SERVICE_TABLES = ("payments", "outbox", *STATE_TABLES)
SQLITE_BUSY_TIMEOUT_S = 30  # as the monolith's and the service's own engines


def _sqlite_writer_connection(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN itself
    # Enforce the monolith's foreign keys as its own connections do (a per-connection setting).
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


def _sqlite_begin_immediate(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_legacy_engine(url: str, *, writer: bool = False) -> Engine:
    """An engine on the monolith's database; `writer=True` for the to-legacy consumer."""
    try:
        parsed = make_url(url)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        sqlite = parsed.get_backend_name() == "sqlite"
        if sqlite:
            kwargs = {
                "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
            }
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise DatabaseUnreachable(f"bad legacy database URL {url!r}: {exc}") from None
    if sqlite and writer:
        event.listen(engine, "connect", _sqlite_writer_connection)
        event.listen(engine, "begin", _sqlite_begin_immediate)
    return engine


def make_engine_for_service(url: str) -> Engine:
    try:
        return make_service_engine(url)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise DatabaseUnreachable(f"bad service database URL {url!r}: {exc}") from None


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads only. The service's SQLite engine starts every transaction with
    BEGIN IMMEDIATE (the write lock), which a long read must not hold: on SQLite this reads
    through a plain engine on the same file (WAL readers never block writers)."""
    if engine.dialect.name != "sqlite":
        with engine.connect() as conn:
            yield conn
        return
    plain = create_engine(
        engine.url,
        poolclass=NullPool,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
    )
    try:
        with plain.connect() as conn:
            yield conn
    finally:
        plain.dispose()


def describe(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def check_reachable(engine: Engine, which: str) -> None:
    """Connect once, translating any failure into `DatabaseUnreachable` with the reason."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:" and not _sqlite_file_exists(database):
            raise DatabaseUnreachable(
                f"the {which} database {describe(engine)} does not exist (no such file)"
            )
    try:
        with engine.connect() as conn:
            conn.execute(select(literal_column("1")))
    except SQLAlchemyError as exc:
        origin = getattr(exc, "orig", None)
        reason = str(origin if origin is not None else exc).strip().splitlines()[0]
        raise DatabaseUnreachable(
            f"cannot reach the {which} database {describe(engine)}: {reason}"
        ) from None


def _sqlite_file_exists(database: str) -> bool:
    from pathlib import Path

    return database.startswith("file:") or Path(database).exists()


def check_service_schema(engine: Engine) -> None:
    """Fail with `SchemaMissing` (and how to fix it) unless the sync's service tables exist."""
    with reading(engine) as conn:
        absent = [name for name in SERVICE_TABLES if not inspect(conn).has_table(name)]
    if absent:
        raise SchemaMissing(
            f"the service database {describe(engine)} lacks {', '.join(absent)}: run its "
            "migrations first (`python -m services.payment.sync migrate --service-db URL`, "
            "or pass --migrate)"
        )


def clock_query(dialect_name: str) -> Select[Any]:
    """The database's current time, in the form each dialect answers it best."""
    if dialect_name == "sqlite":  # UTC, to the millisecond (CURRENT_TIMESTAMP stops at seconds)
        return select(func.strftime("%Y-%m-%d %H:%M:%f", "now"))
    if dialect_name == "oracle":
        # python-oracledb hands TIMESTAMP WITH TIME ZONE back without its zone: ask for UTC.
        return select(literal_column("SYS_EXTRACT_UTC(SYSTIMESTAMP)"))
    return select(func.clock_timestamp())  # PostgreSQL: now() would be the transaction's start


def database_now(conn: Connection) -> datetime:
    """The database server's clock as aware UTC: the sync caps its reads by this, not by ours."""
    value = conn.scalar(clock_query(conn.dialect.name))
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"the database clock returned {value!r}")
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
