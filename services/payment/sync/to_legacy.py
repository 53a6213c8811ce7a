"""To-legacy: after cutover, apply the service's payment events to the monolith's `payments`
table, so the monolith's other features (an order's status) keep reading correct data.

Writes only the legacy `payments` rows. Per batch of events read from a `Subscriber`:

1. Service DB (read): which event ids were handled already, and the highest row_version applied
   per payment (`sync_events_done`).
2. Legacy DB (one transaction, a savepoint per event): each event is
   - `duplicate`  its id was handled before (delivery is at-least-once): skipped;
   - `echo`       its payload's origin is 'legacy' (a change the sync brought FROM the monolith):
                  skipped, so nothing loops back (DMS / GoldenGate bidirectional's tagging);
   - `stale`      its row_version is below one already applied, or the legacy row's
                  `updated_at` is newer by more than `max_clock_skew` (the monolith changed it
                  since, e.g. voided it): skipped;
   - `unchanged`  the legacy row already equals it (a redelivery after a crash): skipped;
   - `applied`    written by the guarded upsert of `legacy_write.py`;
   - `conflict`   written too (the record must be true), but the payment is live (authorized,
                  captured, partially_refunded) and the monolith has CANCELLED its order: the
                  monolith's cancel cannot see a service payment not yet delivered, so the
                  customer may have paid for a cancelled order. Logged as a warning with the
                  payment and order ids; an operator must refund (`invariants.py`; reconcile
                  reports it too);
   - `rejected`   the legacy database refused the row (a constraint, a value out of range):
                  logged, counted, skipped, so one bad event cannot stop the stream. Any other
                  database error leaves the batch unacked, to be delivered again.
3. Service DB (one transaction): the handled event ids with their outcome, and the checkpoint
   (stream entry id or outbox id, processed count, apply lag).
4. Ack the batch.

A crash between 2 and 3 redelivers the batch; the guard makes its events `unchanged`. Events of
one payment arrive in order (the relay publishes in outbox order) and are applied in order.

Two clocks: the event's `updated_at` is stamped by the service's clock, the legacy row's by the
monolith's (or copied from an earlier event). A legacy row is therefore taken as newer only when
its `updated_at` is ahead of the event's by more than `max_clock_skew` (default 5 s, option
`--max-clock-skew`), both in the read and in the upsert's guard: otherwise a service clock
running behind the monolith's would mark a real refund stale forever. The price: a monolith
write less than that skew before a service change is overwritten by it; keep the hosts' clocks
synchronised (NTP) well within it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, IntegrityError

from services.payment.db import utcnow
from services.payment.events import Event, Subscriber
from services.payment.models import ORIGIN_LEGACY
from services.payment.sync.engines import reading
from services.payment.sync.invariants import LIVE_STATUSES
from services.payment.sync.legacy_schema import ORDER_CANCELLED, legacy_orders, legacy_payments
from services.payment.sync.legacy_write import guarded_upsert
from services.payment.sync.metrics import SyncMetrics
from services.payment.sync.rows import FIELDS, normalise
from services.payment.sync.state import (
    JOB_TO_LEGACY,
    ONCE,
    POLLING,
    STOPPED,
    Checkpoint,
    events_done,
    load_checkpoint,
    save_checkpoint,
    set_status,
)

log = logging.getLogger("strangler.sync.to_legacy")

OUTCOMES = ("applied", "conflict", "unchanged", "duplicate", "echo", "stale", "rejected")
APPLIED_OUTCOMES = ("applied", "conflict", "unchanged")
WRITTEN_OUTCOMES = ("applied", "conflict")
IN_LIST_MAX = 500
DEFAULT_BATCH = 100
DEFAULT_MAX_CLOCK_SKEW = 5.0  # seconds the service's and the monolith's clocks may differ


@dataclass
class ToLegacyResult:
    events: int = 0
    batches: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    lag_seconds: float | None = None
    seconds: float = 0.0

    def add(self, outcomes: Mapping[str, int]) -> None:
        self.outcomes.update(outcomes)
        self.events += sum(outcomes.values())
        self.batches += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "batches": self.batches,
            **{name: self.outcomes.get(name, 0) for name in OUTCOMES},
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "seconds": round(self.seconds, 3),
        }


def payload_values(payload: Mapping[Any, Any]) -> dict[str, Any]:
    """The legacy row an event's payload describes (money as Decimal, times as aware UTC)."""
    values: dict[str, Any] = {name: payload.get(name) for name in FIELDS}
    for name in ("id", "order_id", "user_id"):
        values[name] = int(payload[name])
    for name in ("amount", "refunded_amount"):
        values[name] = Decimal(str(payload[name]))
    for name in ("created_at", "updated_at"):
        values[name] = _timestamp(str(payload[name]))
    return values


def _timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


class LegacyApplier:
    """Applies batches of events to the legacy table and records them in the service DB."""

    def __init__(
        self,
        legacy: Engine,
        service: Engine,
        *,
        metrics: SyncMetrics | None = None,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        self.legacy = legacy
        self.service = service
        self.metrics = metrics
        self.skew = timedelta(seconds=max_clock_skew)

    def mark(self, status: str) -> None:
        with self.service.begin() as conn:
            set_status(conn, JOB_TO_LEGACY, status)

    def handle(self, events: Sequence[Event]) -> Counter[str]:
        """Apply one batch (steps 1-3 of the module docstring); the caller acks afterwards."""
        if not events:
            return Counter()
        handled, versions = self._history(events)
        decided: list[tuple[Event, str]] = []
        with self.legacy.begin() as conn:
            for event in events:
                outcome = self._decide(conn, event, handled, versions)
                handled.add(event.event_id)
                decided.append((event, outcome))
        self._record(decided)
        outcomes = Counter(outcome for _event, outcome in decided)
        if self.metrics is not None:
            self.metrics.count(JOB_TO_LEGACY, dict(outcomes))
        return outcomes

    def _history(self, events: Sequence[Event]) -> tuple[set[str], dict[int, int]]:
        ids = sorted({e.event_id for e in events})
        payments = sorted({e.payment_id for e in events})
        handled: set[str] = set()
        versions: dict[int, int] = {}
        with reading(self.service) as conn:
            for start in range(0, len(ids), IN_LIST_MAX):
                chunk = ids[start : start + IN_LIST_MAX]
                handled.update(
                    conn.scalars(
                        select(events_done.c.event_id).where(events_done.c.event_id.in_(chunk))
                    )
                )
            for start in range(0, len(payments), IN_LIST_MAX):
                chunk_ids = payments[start : start + IN_LIST_MAX]
                query = (
                    select(events_done.c.payment_id, func.max(events_done.c.row_version))
                    .where(
                        events_done.c.payment_id.in_(chunk_ids),
                        events_done.c.outcome.in_(APPLIED_OUTCOMES),
                    )
                    .group_by(events_done.c.payment_id)
                )
                versions.update({int(p): int(v) for p, v in conn.execute(query)})
        return handled, versions

    def _decide(
        self, conn: Connection, event: Event, handled: set[str], versions: dict[int, int]
    ) -> str:
        if event.event_id in handled:
            return "duplicate"
        if event.payload.get("origin") == ORIGIN_LEGACY:
            return "echo"
        if event.row_version < versions.get(event.payment_id, 0):
            return "stale"
        values = payload_values(event.payload)
        table = legacy_payments
        current = conn.execute(select(table).where(table.c.id == values["id"])).mappings().first()
        newest_allowed = values["updated_at"] + self.skew  # the two clocks may differ this much
        if current is not None and current["updated_at"] > newest_allowed:
            return "stale"
        if current is not None and normalise(current) == normalise(values):
            self._applied(versions, event)
            return "unchanged"
        try:
            with conn.begin_nested():
                statement = guarded_upsert(conn.dialect.name, values, newest_allowed)
                written = conn.execute(statement)
        except (IntegrityError, DataError) as exc:
            # The row itself is refused (a constraint, a value out of range): retrying cannot
            # help. Anything else (a lock timeout, a lost connection) propagates: the batch is
            # not acked and comes again.
            log.error("to-legacy: payment %s refused by the legacy database: %s", values["id"], exc)
            return "rejected"
        if not written.rowcount:
            return "stale"  # the monolith wrote a newer row between our read and the upsert
        self._applied(versions, event)
        return "conflict" if self._on_cancelled_order(conn, values) else "applied"

    @staticmethod
    def _on_cancelled_order(conn: Connection, values: Mapping[str, Any]) -> bool:
        """A live payment just written for an order the monolith has cancelled (logged)."""
        if values["status"] not in LIVE_STATUSES:
            return False
        orders = legacy_orders
        state = conn.scalar(select(orders.c.state).where(orders.c.id == values["order_id"]))
        if state != ORDER_CANCELLED:
            return False
        log.warning(
            "to-legacy: CONFLICT: payment %s is %s but its order %s is cancelled in the "
            "monolith (cancelled before this payment reached it): applied anyway; an operator "
            "must refund payment %s",
            values["id"],
            values["status"],
            values["order_id"],
            values["id"],
        )
        return True

    @staticmethod
    def _applied(versions: dict[int, int], event: Event) -> None:
        versions[event.payment_id] = max(versions.get(event.payment_id, 0), event.row_version)

    def _record(self, decided: Sequence[tuple[Event, str]]) -> None:
        now = utcnow()
        fresh: dict[str, dict[str, Any]] = {}
        for event, outcome in decided:
            if outcome != "duplicate":
                fresh.setdefault(
                    event.event_id,
                    {
                        "event_id": event.event_id,
                        "payment_id": event.payment_id,
                        "row_version": event.row_version,
                        "outcome": outcome,
                        "processed_at": now,
                    },
                )
        last = decided[-1][0]
        occurred = [_timestamp(e.occurred_at) for e, _o in decided if e.occurred_at]
        lag = max(0.0, (now - max(occurred)).total_seconds()) if occurred else None
        for attempt in (1, 2):
            try:
                with self.service.begin() as conn:
                    rows = list(fresh.values())
                    if attempt == 2:
                        rows = self._not_recorded(conn, rows)
                    if rows:
                        conn.execute(insert(events_done), rows)
                    self._move(conn, last, decided, lag)
                break
            except IntegrityError:
                if attempt == 2:  # a consumer that claimed these events recorded them too
                    raise
        if self.metrics is not None and lag is not None:
            self.metrics.lag_seconds.labels(job=JOB_TO_LEGACY).set(lag)
            self.metrics.last_run.labels(job=JOB_TO_LEGACY).set(time.time())

    @staticmethod
    def _not_recorded(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = [row["event_id"] for row in rows]
        known = set(
            conn.scalars(select(events_done.c.event_id).where(events_done.c.event_id.in_(ids)))
        )
        return [row for row in rows if row["event_id"] not in known]

    @staticmethod
    def _move(
        conn: Connection, last: Event, decided: Sequence[tuple[Event, str]], lag: float | None
    ) -> None:
        checkpoint = load_checkpoint(conn, JOB_TO_LEGACY) or Checkpoint(
            job=JOB_TO_LEGACY, started_at=utcnow()
        )
        applied = sum(1 for _e, outcome in decided if outcome in WRITTEN_OUTCOMES)
        position_id = checkpoint.position_id
        if last.message_id.isdigit():  # an outbox id (the outbox source)
            position_id = max(position_id or 0, *(int(e.message_id) for e, _o in decided))
        save_checkpoint(
            conn,
            replace(
                checkpoint,
                position_ref=last.message_id or checkpoint.position_ref,
                position_id=position_id,
                rows_done=checkpoint.rows_done + len(decided),
                rows_written=checkpoint.rows_written + applied,
                lag_seconds=lag if lag is not None else checkpoint.lag_seconds,
                finished_at=utcnow(),
            ),
        )


async def run_to_legacy(
    subscriber: Subscriber,
    applier: LegacyApplier,
    *,
    stop: asyncio.Event | None = None,
    batch: int = DEFAULT_BATCH,
    block_ms: int = 1000,
    until_idle: bool = False,
) -> ToLegacyResult:
    """Consume until `stop` is set (or, with `until_idle`, until a read returns nothing).

    Like `events.consume`, but a batch at a time: one legacy and one service transaction per
    batch rather than per event. A batch whose handling raises is not acked (delivered again)."""
    stop = stop or asyncio.Event()
    result = ToLegacyResult()
    started = time.perf_counter()
    await asyncio.to_thread(applier.mark, ONCE if until_idle else POLLING)
    while not stop.is_set():
        events = await subscriber.read(count=batch, block_ms=block_ms)
        if not events:
            if until_idle:
                break
            continue
        outcomes = await asyncio.to_thread(applier.handle, events)
        await subscriber.ack(*events)
        result.add(outcomes)
    result.seconds = time.perf_counter() - started
    if not until_idle:
        await asyncio.to_thread(applier.mark, STOPPED)
    with reading(applier.service) as conn:
        checkpoint = load_checkpoint(conn, JOB_TO_LEGACY)
    result.lag_seconds = checkpoint.lag_seconds if checkpoint is not None else None
    return result


def apply_events(
    legacy: Engine,
    service: Engine,
    events: Sequence[Event],
    *,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
) -> Counter[str]:
    """Apply these events now (a demo or a test handing events over directly)."""
    return LegacyApplier(legacy, service, max_clock_skew=max_clock_skew).handle(events)


def to_legacy_once(
    legacy: Engine,
    service: Engine,
    subscriber: Subscriber | None = None,
    *,
    batch: int = DEFAULT_BATCH,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
) -> ToLegacyResult:
    """Apply every event available now, then return: from `subscriber` (left open), or the
    service's outbox table (`sources.OutboxSubscriber`) when none is given. Not for use inside
    an event loop."""
    from services.payment.sync.sources import OutboxSubscriber

    source = subscriber or OutboxSubscriber(service)
    applier = LegacyApplier(legacy, service, max_clock_skew=max_clock_skew)

    async def run() -> ToLegacyResult:
        try:
            return await run_to_legacy(source, applier, batch=batch, block_ms=1, until_idle=True)
        finally:
            if subscriber is None:  # ours: release its lease
                await source.close()

    return asyncio.run(run())
