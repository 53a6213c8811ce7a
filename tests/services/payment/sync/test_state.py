"""The sync's state tables: migration 0002 builds exactly what state.py declares (SQLite and
PostgreSQL) and its downgrade removes them again, leaving the service's own tables alone."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Float, Table, inspect

from services.payment.db import Base, alembic_config, current_revision
from services.payment.sync.state import STATE_TABLES
from tests.services.payment.sync.conftest import Pair, migrate


def _table_of(diff: Any) -> str | None:
    first = diff[0] if isinstance(diff, list) else diff
    for part in first[1:] if isinstance(first, tuple) else ():
        if isinstance(part, Table):
            return part.name
        table = getattr(part, "table", None)
        if isinstance(table, Table):
            return table.name
        if isinstance(part, str) and part in STATE_TABLES:
            return part
    return None


def test_the_migration_builds_the_declared_state_tables_and_undoes_them(pair: Pair) -> None:
    assert current_revision(pair.service) == "0002_sync_state"
    with pair.service.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = [
            d for d in compare_metadata(context, Base.metadata) if _table_of(d) in STATE_TABLES
        ]
    assert diffs == []
    columns = {c["name"]: c for c in inspect(pair.service).get_columns("sync_checkpoints")}
    assert isinstance(columns["poll_interval"]["type"], Float)  # follow's, not in `message`
    assert columns["poll_interval"]["nullable"] is True

    config = alembic_config()
    with pair.service.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0001_initial")
    tables = set(inspect(pair.service).get_table_names())
    assert tables & set(STATE_TABLES) == set()
    assert "payments" in tables
    migrate(pair.service)
    assert set(inspect(pair.service).get_table_names()) >= set(STATE_TABLES)
