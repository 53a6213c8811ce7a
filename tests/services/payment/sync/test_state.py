"""The payment service's sync tables: migration 0002 built them and 0003 drops them again (the
engine keeps its own, `datasync.state`); 0003's downgrade recreates them as 0002 declared, and
`db.upgrade` leaves the engine's tables in place, leaving the service's own tables alone."""

from __future__ import annotations

from alembic import command
from sqlalchemy import Float, MetaData, Table, inspect

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


def test_a_deployed_sync_keeps_its_positions_across_0003(pair: Pair) -> None:
    """A service upgraded from 0002 keeps what its sync knew: the follower's high-water mark,
    to-legacy's handled events (their dedupe) and the reconciles the gate counts."""
    from datetime import UTC, datetime

    from sqlalchemy import insert, select

    from datasync.state import handled, jobs, reconciles

    config = alembic_config()
    with pair.service.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0002_sync_state")
    at = datetime(2026, 12, 1, 9, 30, tzinfo=UTC).replace(tzinfo=None)
    old = {
        name: Table(name, MetaData(), autoload_with=pair.service)
        for name in ("sync_checkpoints", "sync_events_done", "sync_reconciles")
    }
    with pair.service.begin() as conn:
        conn.execute(
            insert(old["sync_checkpoints"]).values(
                job="follow",
                status="polling",
                position_at=at,
                position_id=41,
                rows_done=7,
                rows_written=5,
                updated_at=at,
            )
        )
        conn.execute(
            insert(old["sync_events_done"]).values(
                event_id="e-1", payment_id=41, row_version=2, outcome="applied", processed_at=at
            )
        )
        conn.execute(
            insert(old["sync_reconciles"]).values(
                started_at=at,
                finished_at=at,
                settle_seconds=5.0,
                rows_compared=41,
                missing=0,
                extra=0,
                differing=0,
                drift=0,
                max_drift=0,
                passed=True,
                report="{}",
            )
        )
    migrate(pair.service)
    with pair.service.connect() as conn:
        follow = conn.execute(select(jobs).where(jobs.c.job == "follow")).mappings().one()
        assert (follow["sync_name"], follow["position_id"], follow["rows_done"]) == (
            "payments",
            41,
            7,
        )
        assert follow["position_at"].replace(tzinfo=None) == at
        event = conn.execute(select(handled)).mappings().one()
        assert (event["sync_name"], event["event_id"], event["row_key"]) == ("payments", "e-1", 41)
        run = conn.execute(select(reconciles)).mappings().one()
        assert (run["sync_name"], run["drift"], run["passed"]) == ("payments", 0, True)
