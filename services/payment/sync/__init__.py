"""The payment data sync: backfill, follow (before cutover), to-legacy (after), reconcile.

Rules: the monolith is never edited and nothing is installed in its database (no triggers, no
tables, no columns); the sync reads the legacy `payments` table and, after cutover, writes only
its rows. All sync state lives in the service's database (`state.py`). This package never
imports `legacy_monolith`: the legacy table's shape is declared in `legacy_schema.py`.

Reading order: rows (normalise, hash) → apply (upsert into the service) → backfill → incremental
(follow) → legacy_write (guarded upsert into the monolith) → to_legacy (+ sources) → diff and
reconcile → status (+ the cutover gate) → cli. Around them: legacy_schema (the legacy table's
declared shape), state (the sync's tables), engines (both databases, their clocks), lease (one
runner per job), metrics, progress, render, errors.

Programmatic use (the demo, tests):

    from services.payment.sync import backfill, follow_once, reconcile
    result = backfill(legacy_engine, service_engine, batch_size=1000)
    poll = follow_once(legacy_engine, service_engine)
    report = reconcile(legacy_engine, service_engine, settle=0)
    assert report.passed
"""

from __future__ import annotations

from services.payment.sync.apply import ApplyCounts, apply_to_service
from services.payment.sync.backfill import BackfillResult, BatchDone, backfill
from services.payment.sync.engines import make_engine_for_service, make_legacy_engine
from services.payment.sync.errors import DatabaseUnreachable, SchemaMissing, SyncError
from services.payment.sync.incremental import FollowResult, follow, follow_once
from services.payment.sync.lease import AlreadyRunning
from services.payment.sync.reconcile import Report, reconcile
from services.payment.sync.sources import OutboxSubscriber
from services.payment.sync.status import CutoverCheck, cutover_check, gather_status
from services.payment.sync.to_legacy import (
    LegacyApplier,
    ToLegacyResult,
    apply_events,
    run_to_legacy,
    to_legacy_once,
)

__all__ = [
    "AlreadyRunning",
    "ApplyCounts",
    "BackfillResult",
    "BatchDone",
    "CutoverCheck",
    "DatabaseUnreachable",
    "FollowResult",
    "LegacyApplier",
    "OutboxSubscriber",
    "Report",
    "SchemaMissing",
    "SyncError",
    "ToLegacyResult",
    "apply_events",
    "apply_to_service",
    "backfill",
    "cutover_check",
    "follow",
    "follow_once",
    "gather_status",
    "make_engine_for_service",
    "make_legacy_engine",
    "reconcile",
    "run_to_legacy",
    "to_legacy_once",
]
