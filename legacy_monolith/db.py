"""Database plumbing: engine factory, declarative base and portable column types.

The same models run on Oracle (production, python-oracledb thin mode), PostgreSQL and SQLite
(the embedded default). Portability rules (tested by compiling for Oracle 19c and 23ai):
identifiers are lowercase, at most 30 characters and not reserved; primary keys use `Identity()`;
timestamps are `TIMESTAMP WITH TIME ZONE` read back as aware UTC; no `Text` column in a WHERE.
Nothing here runs at import time: engines come from `make_engine(url)`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import TIMESTAMP, BigInteger, Integer, MetaData, create_engine, event, update
from sqlalchemy.engine import URL, Dialect, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

# Short, deterministic constraint names: Oracle 19c caps identifiers at 30 characters.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT keys everywhere, but SQLite only auto-numbers an `INTEGER PRIMARY KEY` (a rowid alias).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """`TIMESTAMP WITH TIME ZONE` that always binds UTC and always reads back an aware UTC value.

    SQLite keeps no zone and returns naive values; Oracle and PostgreSQL return aware ones.
    """

    impl = TIMESTAMP(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """Build an engine for `url` (Oracle, PostgreSQL or SQLite), creating SQLite's folder."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Worker threads share pooled connections; wait on locks instead of failing at once.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        kwargs.pop("pool_pre_ping")
    engine = create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def lock_row(session: OrmSession, model: type[Any], row_id: int) -> None:
    """Lock one row for the rest of the transaction, on every database, before reading it.

    A no-op UPDATE is the portable lock: a row lock on Oracle and PostgreSQL, the database write
    lock on SQLite (which ignores SELECT ... FOR UPDATE). Concurrent writers of the row then run
    one after another, and the second reads what the first committed.
    """
    session.execute(update(model).where(model.id == row_id).values(updated_at=model.updated_at))


def make_session_factory(engine: Engine) -> sessionmaker[OrmSession]:
    return sessionmaker(engine, expire_on_commit=False)


def create_schema(engine: Engine) -> None:
    """Create missing tables (the monolith predates migration tooling: it makes what it lacks)."""
    from legacy_monolith import models  # noqa: F401  (registers the tables)

    Base.metadata.create_all(engine, checkfirst=True)
