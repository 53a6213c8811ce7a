"""The data sync's state moves to the engine's own tables (`datasync.state`, created by
`ensure_schema`): the payment sync's positions, lag samples, handled events and reconciles are
copied there under the sync name `payments`, then the four payment-only tables are dropped.

Revision ID: 0003_sync_state_moved
Revises: 0002_sync_state
Create Date: 2025-02-01

The engine keeps every sync's state in `sync_jobs`, `sync_lag`, `sync_events`,
`sync_reconcile_runs` and `sync_leases`, keyed by the sync's name, created by
`datasync.state.ensure_schema` (which `db.upgrade` also runs after the migrations, so a service
needs no migration of its own for the sync). Copying matters: without it a deployed follower
would start over from the beginning of the table, to-legacy would lose its position and its
handled event ids, and the cutover gate would close until two new reconciles. Rows are copied
server-side (INSERT ... SELECT), ids renumbered by the new tables' identities. The downgrade
recreates the old tables empty (run the backfill with `--restart` after a downgrade).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from alembic import context, op
from sqlalchemy import String, Table, column, insert, inspect, literal, select, table

revision: str = "0003_sync_state_moved"
down_revision: str | None = "0002_sync_state"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0002's own DDL, reused by the downgrade (a module name may not start with a digit in import).
_previous = importlib.import_module("services.payment.migrations.versions.0002_sync_state")


SYNC = "payments"
# old table -> (new table, {new column: old column}) for the columns that moved as they were.
_SAME = [
    "status",
    "position_at",
    "position_id",
    "position_ref",
    "upper_id",
    "rows_total",
    "rows_done",
    "rows_written",
    "lag_seconds",
    "rows_per_second",
    "poll_interval",
    "source_at",
    "started_at",
    "updated_at",
    "finished_at",
    "message",
]
_REPORT = [
    "started_at",
    "finished_at",
    "settle_seconds",
    "rows_compared",
    "missing",
    "extra",
    "differing",
    "drift",
    "max_drift",
    "passed",
    "report",
]


def _moves() -> dict[str, tuple[str, dict[str, str]]]:
    lag = ["sampled_at", "lag_seconds", "rows_read", "rows_per_second"]
    return {
        "sync_checkpoints": ("sync_jobs", {"job": "job", **{c: c for c in _SAME}}),
        "sync_lag_samples": ("sync_lag", {"job": "job", **{c: c for c in lag}}),
        "sync_events_done": (
            "sync_events",
            {
                "event_id": "event_id",
                "row_key": "payment_id",
                "row_version": "row_version",
                "outcome": "outcome",
                "processed_at": "processed_at",
            },
        ),
        "sync_reconciles": ("sync_reconcile_runs", {c: c for c in _REPORT}),
    }


def _copy(old_name: str, new: Table, columns: dict[str, str]) -> None:
    old = table(old_name, *(column(source) for source in columns.values()))
    names = ["sync_name", *columns]
    picked = [literal(SYNC, String(64)), *(old.c[source] for source in columns.values())]
    op.execute(insert(new).from_select(names, select(*picked)))


def upgrade() -> None:
    from datasync.state import ensure_schema, metadata

    bind = op.get_bind()
    if context.is_offline_mode():  # rendering SQL: the old tables are there, as 0002 made them
        metadata.create_all(bind, checkfirst=False)
        present = set(_moves())
    else:
        ensure_schema(bind)
        present = set(inspect(bind).get_table_names())
    for old_name, (new_name, columns) in _moves().items():
        if old_name in present:
            _copy(old_name, metadata.tables[new_name], columns)
    _previous.downgrade()


def downgrade() -> None:
    _previous.upgrade()
