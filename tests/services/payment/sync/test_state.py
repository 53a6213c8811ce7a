"""The payment service's sync tables: migration 0002 built them and 0003 drops them again (the
engine keeps its own, `datasync.state`); 0003's downgrade recreates them as 0002 declared, and
`db.upgrade` leaves the engine's tables in place, leaving the service's own tables alone."""

from __future__ import annotations

from alembic import command
from sqlalchemy import Float, inspect

from datasync.state import STATE_TABLES
from services.payment.db import alembic_config, current_revision, upgrade
from tests.services.payment.sync.conftest import Pair, migrate

OLD_TABLES = ("sync_checkpoints", "sync_lag_samples", "sync_events_done", "sync_reconciles")


def test_the_old_sync_tables_are_dropped_and_come_back_on_downgrade(pair: Pair) -> None:
    assert current_revision(pair.service) == "0003_sync_state_moved"
    tables = set(inspect(pair.service).get_table_names())
    assert tables & set(OLD_TABLES) == set()
    assert "payments" in tables

    config = alembic_config()
    with pair.service.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0002_sync_state")
    assert set(inspect(pair.service).get_table_names()) >= set(OLD_TABLES)
    columns = {c["name"]: c for c in inspect(pair.service).get_columns("sync_checkpoints")}
    assert isinstance(columns["poll_interval"]["type"], Float)  # follow's, not in `message`
    assert columns["poll_interval"]["nullable"] is True
    migrate(pair.service)
    assert set(inspect(pair.service).get_table_names()) & set(OLD_TABLES) == set()


def test_upgrade_creates_the_engine_tables_too(pair: Pair) -> None:
    upgrade(pair.service)
    upgrade(pair.service)  # idempotent
    assert set(inspect(pair.service).get_table_names()) >= set(STATE_TABLES)
