"""The payment data sync: the monolith's `payments` table and the payment service's, moved by
the generic engine (`datasync`) as `payments.yaml` declares; `hooks.py` shapes its events.

Rules: the monolith is never edited and nothing is installed in its database (no triggers, no
tables, no columns); the sync reads the legacy `payments` table and, after cutover, writes only
its rows. All sync state lives in the service's database (`datasync.state`). This package
never imports `legacy_monolith`: the legacy table's shape is declared in `payments.yaml`.

This module keeps the payment's programmatic API (the demo, the tests): each function is the
engine's job with the payment declaration, and the to-legacy functions also take the payment
service's own events (`services.payment.events.Event`, its `RedisSubscriber` and
`InProcessBus` subscribers), converted to the engine's.

    from services.payment.sync import backfill, follow_once, reconcile
    result = backfill(legacy_engine, service_engine, batch_size=1000)
    poll = follow_once(legacy_engine, service_engine)
    report = reconcile(legacy_engine, service_engine, settle=0)
    assert report.passed
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection, Engine

from datasync import backfill as _backfill
from datasync import incremental as _incremental
from datasync import reconcile as _reconcile
from datasync import sources as _sources
from datasync import status as _status
from datasync import to_legacy as _to_legacy
from datasync.apply import ApplyCounts
from datasync.apply import apply_to_service as _apply_to_service
from datasync.backfill import BackfillResult, BatchDone
from datasync.engines import make_legacy_engine
from datasync.errors import DatabaseUnreachable, SchemaMissing, SyncError
from datasync.events import Converting
from datasync.events import Event as SyncEvent
from datasync.incremental import FollowResult
from datasync.lease import AlreadyRunning
from datasync.reconcile import Report
from datasync.spec import Spec
from datasync.status import CutoverCheck
from datasync.to_legacy import ToLegacyResult
from services.payment.db import make_engine as make_engine_for_service
from services.payment.events import Event as PaymentEvent

DECLARATION = Path(__file__).resolve().with_name("payments.yaml")


@cache
def spec() -> Spec:
    """The payment sync's `Spec`: `payments.yaml`."""
    from datasync.cli_support import load_spec

    return load_spec(DECLARATION)


def sync_event(event: Any) -> SyncEvent:
    """The engine's event for a payment event (an engine event passes through)."""
    if isinstance(event, SyncEvent):
        return event
    assert isinstance(event, PaymentEvent)
    return SyncEvent(
        event_id=event.event_id,
        type=event.type,
        key=event.payment_id,
        version=event.row_version,
        occurred_at=event.occurred_at,
        payload=event.payload,
        message_id=event.message_id,
    )


def backfill(legacy: Engine, service: Engine, **options: Any) -> BackfillResult:
    return _backfill.backfill(spec(), legacy, service, **options)


def follow_once(legacy: Engine, service: Engine, **options: Any) -> FollowResult:
    return _incremental.follow_once(spec(), legacy, service, **options)


def follow(legacy: Engine, service: Engine, **options: Any) -> None:
    _incremental.follow(spec(), legacy, service, **options)


def reconcile(legacy: Engine, service: Engine, **options: Any) -> Report:
    return _reconcile.reconcile(spec(), legacy, service, **options)


def apply_to_service(
    conn: Connection,
    rows: Sequence[Mapping[Any, Any]],
    key_range: tuple[int, int] | None = None,
    *,
    emit_events: bool = False,
) -> ApplyCounts:
    return _apply_to_service(spec(), conn, rows, key_range, emit_events=emit_events)


def cutover_check(service: Engine, **options: Any) -> CutoverCheck:
    return _status.cutover_check(spec(), service, **options)


def gather_status(service: Engine, legacy: Engine | None = None, **options: Any) -> dict[str, Any]:
    return _status.gather_status(spec(), service, legacy, **options)


class LegacyApplier(_to_legacy.LegacyApplier):
    """The engine's applier with the payment declaration, taking payment events too."""

    def __init__(self, legacy: Engine, service: Engine, **options: Any) -> None:
        super().__init__(spec(), legacy, service, **options)

    def handle(self, events: Sequence[Any]) -> Counter[str]:
        return super().handle([sync_event(e) for e in events])


def apply_events(
    legacy: Engine, service: Engine, events: Sequence[Any], **options: Any
) -> Counter[str]:
    return LegacyApplier(legacy, service, **options).handle(events)


def subscriber(source: Any) -> Converting:
    """A payment subscriber (`RedisSubscriber`, an `InProcessBus` one) as the engine's."""
    return Converting(source, sync_event)


async def run_to_legacy(
    source: Any, applier: _to_legacy.LegacyApplier, **options: Any
) -> ToLegacyResult:
    return await _to_legacy.run_to_legacy(subscriber(source), applier, **options)


def to_legacy_once(
    legacy: Engine, service: Engine, source: Any | None = None, **options: Any
) -> ToLegacyResult:
    wrapped = subscriber(source) if source is not None else None
    return _to_legacy.to_legacy_once(spec(), legacy, service, wrapped, **options)


def OutboxSubscriber(service: Engine, **options: Any) -> _sources.OutboxSubscriber:
    return _sources.OutboxSubscriber(spec(), service, **options)


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
    "spec",
    "sync_event",
    "to_legacy_once",
]
