"""The data sync's state: checkpoints, lag samples, processed event ids, reconcile runs.

Revision ID: 0002_sync_state
Revises: 0001_initial
Create Date: 2025-01-02

Written out by hand (not imported from sync/state.py) so the migration stays what it was when
later migrations change the tables. The sync keeps all of its state here, in the service's
database: nothing is ever installed in the legacy one.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from services.payment.db import BigId, UTCDateTime

revision: str = "0002_sync_state"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sync_checkpoints",
        sa.Column("job", sa.String(16), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("position_at", UTCDateTime(), nullable=True),
        sa.Column("position_id", sa.BigInteger(), nullable=True),
        sa.Column("position_ref", sa.String(40), nullable=True),
        sa.Column("upper_id", sa.BigInteger(), nullable=True),
        sa.Column("rows_total", sa.BigInteger(), nullable=True),
        sa.Column("rows_done", sa.BigInteger(), nullable=False),
        sa.Column("rows_written", sa.BigInteger(), nullable=False),
        sa.Column("lag_seconds", sa.Float(), nullable=True),
        sa.Column("rows_per_second", sa.Float(), nullable=True),
        sa.Column("poll_interval", sa.Float(), nullable=True),
        sa.Column("source_at", UTCDateTime(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("message", sa.String(400), nullable=True),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_sync_checkpoints")),
    )
    op.create_table(
        "sync_lag_samples",
        sa.Column("id", BigId, sa.Identity(), primary_key=True),
        sa.Column("job", sa.String(16), nullable=False),
        sa.Column("sampled_at", UTCDateTime(), nullable=False),
        sa.Column("lag_seconds", sa.Float(), nullable=False),
        sa.Column("rows_read", sa.Integer(), nullable=False),
        sa.Column("rows_per_second", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_lag_samples")),
    )
    op.create_index("ix_sync_lag_samples_job_at", "sync_lag_samples", ["job", "sampled_at"])
    op.create_table(
        "sync_events_done",
        sa.Column("id", BigId, sa.Identity(), primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("payment_id", sa.BigInteger(), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(12), nullable=False),
        sa.Column("processed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_events_done")),
        sa.UniqueConstraint("event_id", name=op.f("uq_sync_events_done_event_id")),
    )
    op.create_index(
        "ix_sync_events_done_pay_ver", "sync_events_done", ["payment_id", "row_version"]
    )
    op.create_index("ix_sync_events_done_at", "sync_events_done", ["processed_at"])
    op.create_table(
        "sync_reconciles",
        sa.Column("id", BigId, sa.Identity(), primary_key=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=False),
        sa.Column("settle_seconds", sa.Float(), nullable=False),
        sa.Column("rows_compared", sa.BigInteger(), nullable=False),
        sa.Column("missing", sa.Integer(), nullable=False),
        sa.Column("extra", sa.Integer(), nullable=False),
        sa.Column("differing", sa.Integer(), nullable=False),
        sa.Column("drift", sa.Integer(), nullable=False),
        sa.Column("max_drift", sa.Integer(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_reconciles")),
    )


def downgrade() -> None:
    op.drop_table("sync_reconciles")
    op.drop_index("ix_sync_events_done_at", table_name="sync_events_done")
    op.drop_index("ix_sync_events_done_pay_ver", table_name="sync_events_done")
    op.drop_table("sync_events_done")
    op.drop_index("ix_sync_lag_samples_job_at", table_name="sync_lag_samples")
    op.drop_table("sync_lag_samples")
    op.drop_table("sync_checkpoints")
