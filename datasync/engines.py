"""Engines for both databases, each database's own clock, and the checks every job runs first.

The legacy engine sets nothing persistent: on SQLite only connection-level options (a busy
timeout; for the to-legacy writer, foreign keys enforced as the monolith's own connections do,
and `BEGIN IMMEDIATE`, without which a read-then-write transaction fails at once with
SQLITE_BUSY_SNAPSHOT when the monolith commits in between). It never changes the journal mode
or creates anything. The service engine is the sync's to write: on SQLite it writes in WAL mode
with `BEGIN IMMEDIATE`, as the services' own engines do. SQLAlchemy's connection errors are
translated to `DatabaseUnreachable` here, once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Select, create_engine, event, func, inspect, literal_column, select
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from datasync.errors import DatabaseUnreachable, SchemaMissing
from datasync.spec import Spec
from datasync.state import ensure_schema

SQLITE_BUSY_TIMEOUT_S = 30  # as the monolith's and the services' own engines


def _sqlite_writer_connection(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN itself
    # Enforce the monolith's foreign keys as its own connections do (a per-connection setting).
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


def _sqlite_service_connection(dbapi_connection: Any, record: Any) -> None:
    _sqlite_writer_connection(dbapi_connection, record)
    dbapi_connection.execute("PRAGMA journal_mode=WAL")


def _sqlite_begin_immediate(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_args() -> dict[str, Any]:
    return {"connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}}


def _utc_session(dbapi_connection: Any, _record: Any, dialect: str) -> None:
    """Every session speaks UTC: a `TIMESTAMP` column without a zone is compared with the
    sync's aware values in the session's zone, so a server set to another zone would shift the
    cap, the look-back and the lag by its offset. A session setting, nothing installed."""
    statement = (
        "SET TIME ZONE 'UTC'"
        if dialect == "postgresql"
        else "ALTER SESSION SET TIME_ZONE = '+00:00'"
    )
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()
    if dialect == "postgresql":
        dbapi_connection.commit()  # psycopg opens a transaction for the SET


def _speak_utc(engine: Engine) -> None:
    dialect = engine.dialect.name
    if dialect in ("postgresql", "oracle"):
        event.listen(engine, "connect", lambda conn, record: _utc_session(conn, record, dialect))


def make_legacy_engine(url: str, *, writer: bool = False) -> Engine:
    """An engine on the monolith's database; `writer=True` for the to-legacy consumer."""
    try:
        parsed = make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        kwargs = _sqlite_args() if sqlite else {"pool_pre_ping": True}
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise DatabaseUnreachable(f"bad legacy database URL {url!r}: {exc}") from None
    if sqlite and writer:
        event.listen(engine, "connect", _sqlite_writer_connection)
        event.listen(engine, "begin", _sqlite_begin_immediate)
    _speak_utc(engine)
    return engine


def make_service_engine(url: str) -> Engine:
    """An engine on the service's database, where the sync writes rows and keeps its state."""
    try:
        parsed = make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        if sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **(_sqlite_args() if sqlite else {"pool_pre_ping": True}))
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise DatabaseUnreachable(f"bad service database URL {url!r}: {exc}") from None
    if sqlite:
        event.listen(engine, "connect", _sqlite_service_connection)
        event.listen(engine, "begin", _sqlite_begin_immediate)
    _speak_utc(engine)
    return engine


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads only. A SQLite engine that starts every transaction with BEGIN
    IMMEDIATE (the write lock) must not hold it for a long read: on SQLite this reads through a
    plain engine on the same file (WAL readers never block writers)."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        with engine.connect() as conn:
            yield conn
        return
    plain = create_engine(engine.url, poolclass=NullPool, **_sqlite_args())
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
    return database.startswith("file:") or Path(database).exists()


def service_tables(spec: Spec) -> tuple[str, ...]:
    """The service's own tables the sync reads and writes (the state tables are the engine's)."""
    outbox = spec.events.outbox if spec.events is not None else None
    return (spec.service_table, *((outbox,) if outbox else ()))


def check_service_schema(spec: Spec, engine: Engine) -> None:
    """Fail with `SchemaMissing` (and how to fix it) unless the service's declared tables exist,
    then create the engine's own state tables if they are missing."""
    with reading(engine) as conn:
        absent = [name for name in service_tables(spec) if not inspect(conn).has_table(name)]
    if absent:
        raise SchemaMissing(
            f"the service database {describe(engine)} lacks {', '.join(absent)}: run its "
            "migrations first (`strangler sync migrate --service-db URL`, or pass --migrate)"
        )
    ensure_schema(engine)


def check_legacy_schema(spec: Spec, conn: Connection) -> None:
    """Fail with `SchemaMissing` unless the legacy table has every declared column."""
    inspector = inspect(conn)
    name = spec.legacy_table
    if not inspector.has_table(name):
        raise SchemaMissing(
            f"the legacy database ({describe(conn.engine)}) has no {name} table: is this the "
            "monolith's database?"
        )
    present = {str(column["name"]).lower() for column in inspector.get_columns(name)}
    absent = [field for field in spec.names if field.lower() not in present]
    if absent:
        raise SchemaMissing(f"the legacy {name} table lacks column(s) {', '.join(absent)}")


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


def analyze(engine: Engine, table: str) -> None:
    """Refresh the planner's statistics of a table just filled (after a backfill): without
    them PostgreSQL plans a fresh table as empty (scans and sorts instead of its indexes) until
    autovacuum gets to it. PostgreSQL and SQLite; Oracle gathers its own statistics nightly."""
    if engine.dialect.name not in ("postgresql", "sqlite"):
        return
    quoted = engine.dialect.identifier_preparer.quote(table)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ANALYZE {quoted}")
