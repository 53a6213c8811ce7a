"""Alembic environment for the payment service (configured in code: `db.alembic_config`).

`db.upgrade(engine)` passes an open connection in `config.attributes["connection"]`; the
`alembic` command line (with a `-x url=...` or `sqlalchemy.url`) gets an engine of its own.
Batch mode on SQLite, whose ALTER TABLE cannot change constraints.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from datasync.state import STATE_TABLES
from services.payment import models  # noqa: F401  (registers the tables)
from services.payment.db import Base, make_engine

config = context.config
target_metadata = Base.metadata


def include_name(name: str | None, type_: str, _parents: Any) -> bool:
    """Leave the data sync engine's tables out of autogenerate: they are the engine's
    (`datasync.state.ensure_schema`), not this service's migrations'."""
    return not (type_ == "table" and name in STATE_TABLES)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no database URL: pass -x url=... or set sqlalchemy.url")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
