"""The data sync's state moves to the engine's own tables (`datasync.state`, created by
`ensure_schema`): the four payment-only sync tables are dropped.

Revision ID: 0003_sync_state_moved
Revises: 0002_sync_state
Create Date: 2025-02-01

The engine keeps every sync's state in `sync_jobs`, `sync_lag`, `sync_events`,
`sync_reconcile_runs` and `sync_leases`, keyed by the sync's name; they are created by
`datasync.state.ensure_schema` (which `db.upgrade` runs after the migrations), not here, so a
service needs no migration of its own for the sync. The downgrade recreates the old tables
empty (their rows were positions of the old code and are not carried over: run the backfill
with `--restart` after a downgrade).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

revision: str = "0003_sync_state_moved"
down_revision: str | None = "0002_sync_state"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0002's own DDL, reused by the downgrade (a module name may not start with a digit in import).
_previous = importlib.import_module("services.payment.migrations.versions.0002_sync_state")


def upgrade() -> None:
    _previous.downgrade()


def downgrade() -> None:
    _previous.upgrade()
