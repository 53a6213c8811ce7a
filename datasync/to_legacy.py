"""To-legacy: after cutover, apply the service's change events to the legacy table, so the
monolith's other features (an order's status) keep reading correct data.

Writes only the legacy table's rows. Per batch of events read from a `Subscriber`
(`events.py`):

1. Service DB (read): which event ids were handled already, and the highest version applied
   per row key (`sync_events`).
2. Legacy DB (one transaction, a savepoint per event): each event is
   - `duplicate`  its id was handled before (delivery is at-least-once): skipped;
   - `echo`       its payload's origin is 'legacy' (a change the sync brought FROM the monolith):
                  skipped, so nothing loops back (DMS / GoldenGate bidirectional's tagging);
   - `stale`      its version is below one already applied, or the legacy row's change
                  column is newer by more than `max_clock_skew` (the monolith changed it
                  since, e.g. voided it): skipped;
   - `unchanged`  the legacy row already equals it (a redelivery after a crash): skipped;
   - `applied`    written by the guarded upsert of `legacy_write.py`;
   - `conflict`   written too (the record must be true), but a declared compensation's rule
                  is broken: the row is live (a state the rule acts on) and the legacy row it
                  points at has reached the watched state. The payment precedent: a payment
                  authorized or captured while the monolith CANCELLED its order (its cancel
                  cannot see a service payment not yet delivered, so the customer may have paid
                  for a cancelled order). Logged as a warning with both keys; the compensation
                  or an operator repairs it (`invariants.py`; reconcile reports it too);
   - `rejected`   the payload does not describe a whole row (a declared field missing, a
                  null where the field is not nullable, a value its type cannot hold), or
                  the legacy database refused the row (a constraint, a value out of range):
                  logged, counted, skipped, so one bad event cannot stop the stream. Any other
                  database error leaves the batch unacked, to be delivered again.
3. Service DB (one transaction): the handled event ids with their outcome, and the checkpoint
   (stream entry id or outbox id, the newest handled event's time as `position_at`, processed
   count, apply lag).
4. Ack the batch.

A crash between 2 and 3 redelivers the batch; the guard makes its events `unchanged`. Events of
one row arrive in order (the relay publishes in outbox order) and are applied in order.

Resilience: the loop never ends on a transient error (Redis closed, a database restarting, a
lost connection): the batch in hand stays unacked and is handled again after a jittered backoff
(`retry.AsyncGuard`), with one log line per problem and the job's health in its checkpoint and
metrics, as `follow` does.

Lost stream data: a Redis restarted without persistence comes back without the stream and its
group, and without the events published before the restart and not yet consumed: riding the
restart out does not bring them back (the monolith ends short of every such payment, as it ended
155 payments short while the job was down, and reconcile finds the drift only later). A
subscriber that counts such losses (`resets`:
`stream.StreamSubscriber`) is therefore paired with an `sources.OutboxCatchUp` when the sync
declares an outbox: once at start, after every reset and every `catch_up_every` seconds
(default 60), before the next read of the stream, the events the outbox holds and `sync_events`
does not (created since the newest handled event's time minus a margin) are applied through the
same applier, a batch at a time; a duplicate delivered later by the stream is skipped by its id.
Catch-up batches carry no stream position: the checkpoint's stream entry id stays the stream's.

Two clocks: the event's change time is stamped by the service's clock, the legacy row's by the
monolith's (or copied from an earlier event). A legacy row is therefore taken as newer only when
its change time is ahead of the event's by more than `max_clock_skew` (default 5 s, option
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
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, IntegrityError

from datasync.batches import chunks
from datasync.engines import check_service_schema, reading
from datasync.errors import SyncError
from datasync.events import Event, Subscriber
from datasync.invariants import live_states, singular
from datasync.legacy_write import guarded_upsert
from datasync.metrics import SyncMetrics
from datasync.retry import AsyncGuard, Health
from datasync.rows import INTEGER_TYPES, normalise
from datasync.sources import DEFAULT_CATCH_UP_EVERY, OutboxCatchUp
from datasync.spec import ORIGIN_LEGACY, Compensation, Field, Spec, watched_table
from datasync.state import (
    JOB_TO_LEGACY,
    ONCE,
    POLLING,
    STOPPED,
    Checkpoint,
    handled,
    load_checkpoint,
    new_checkpoint,
    note_health,
    save_checkpoint,
    set_status,
    utcnow,
)

log = logging.getLogger("strangler.sync.to_legacy")

OUTCOMES = ("applied", "conflict", "unchanged", "duplicate", "echo", "stale", "rejected")
APPLIED_OUTCOMES = ("applied", "conflict", "unchanged")
WRITTEN_OUTCOMES = ("applied", "conflict")
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


def _timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def payload_value(field_: Field, value: Any) -> Any:
    """One field of an event's payload as the legacy column takes it (by declared type)."""
    if value is None:
        return None
    if field_.type in INTEGER_TYPES:
        return int(value)
    if field_.type == "decimal":
        return Decimal(str(value))
    if field_.type == "timestamp":
        return value if isinstance(value, datetime) else _timestamp(str(value))
    if field_.type == "date":
        return value if isinstance(value, date) else date.fromisoformat(str(value))
    if field_.type == "boolean":
        return value if isinstance(value, bool) else str(value).lower() in ("true", "1")
    return value


class MalformedEvent(SyncError):
    """An event whose payload does not describe a whole row of the declaration."""

    kind = "malformed-event"


def payload_values(spec: Spec, payload: Mapping[Any, Any]) -> dict[str, Any]:
    """The legacy row (legacy names) an event's payload describes (payload: service names).

    Every declared field must be present, and a field that is not nullable must have a value:
    a field a payload hook left out would otherwise be written as NULL into the legacy row."""
    values: dict[str, Any] = {}
    for f in spec.fields:
        if f.service not in payload:
            raise MalformedEvent(f"the payload has no field {f.service!r}")
        if payload[f.service] is None and not f.nullable:
            raise MalformedEvent(f"the payload's {f.service!r} is null")
        try:
            values[f.name] = payload_value(f, payload[f.service])
        except (ValueError, ArithmeticError, TypeError) as exc:
            raise MalformedEvent(f"the payload's {f.service!r} is not a {f.type}: {exc}") from None
    return values


class LegacyApplier:
    """Applies batches of events to the legacy table and records them in the service DB."""

    def __init__(
        self,
        spec: Spec,
        legacy: Engine,
        service: Engine,
        *,
        metrics: SyncMetrics | None = None,
        max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        self.spec = spec
        self.legacy = legacy
        self.service = service
        self.metrics = metrics
        self.skew = timedelta(seconds=max_clock_skew)
        self._checked = False

    def prepare(self) -> None:
        """Check the service's tables and create the engine's (once)."""
        if not self._checked:
            check_service_schema(self.spec, self.service)
            self._checked = True

    def mark(self, status: str) -> str:
        self.prepare()
        with self.service.begin() as conn:
            set_status(conn, self.spec.name, JOB_TO_LEGACY, status)
        return status

    def note(self, health: Health) -> None:
        """The job's health in its checkpoint, when the service database answers."""
        note_health(self.service, self.spec.name, JOB_TO_LEGACY, health)

    def handle(self, events: Sequence[Event]) -> Counter[str]:
        """Apply one batch (steps 1-3 of the module docstring); the caller acks afterwards."""
        if not events:
            return Counter()
        self.prepare()
        seen, versions = self._history(events)
        decided: list[tuple[Event, str]] = []
        with self.legacy.begin() as conn:
            for event in events:
                outcome = self._decide(conn, event, seen, versions)
                seen.add(event.event_id)
                decided.append((event, outcome))
        self._record(decided)
        outcomes = Counter(outcome for _event, outcome in decided)
        if self.metrics is not None:
            self.metrics.count(self.spec.name, JOB_TO_LEGACY, dict(outcomes))
        return outcomes

    def _history(self, events: Sequence[Event]) -> tuple[set[str], dict[int, int]]:
        ids = sorted({e.event_id for e in events})
        keys = sorted({e.key for e in events})
        mine = handled.c.sync_name == self.spec.name
        seen: set[str] = set()
        versions: dict[int, int] = {}
        with reading(self.service) as conn:
            for chunk in chunks(ids):
                query = select(handled.c.event_id).where(mine, handled.c.event_id.in_(chunk))
                seen.update(conn.scalars(query))
            for chunk_keys in chunks(keys):
                query = (
                    select(handled.c.row_key, func.max(handled.c.row_version))
                    .where(
                        mine,
                        handled.c.row_key.in_(chunk_keys),
                        handled.c.outcome.in_(APPLIED_OUTCOMES),
                    )
                    .group_by(handled.c.row_key)
                )
                versions.update({int(k): int(v) for k, v in conn.execute(query)})
        return seen, versions

    def _decide(
        self, conn: Connection, event: Event, seen: set[str], versions: dict[int, int]
    ) -> str:
        spec = self.spec
        if event.event_id in seen:
            return "duplicate"
        if event.payload.get("origin") == ORIGIN_LEGACY:
            return "echo"
        if event.version < versions.get(event.key, 0):
            return "stale"
        try:
            values = payload_values(spec, event.payload)
        except MalformedEvent as exc:
            log.error("to-legacy: event %s (key %s) rejected: %s", event.event_id, event.key, exc)
            return "rejected"
        table = spec.legacy()
        key = table.c[spec.key]
        current = (
            conn.execute(spec.legacy_select().where(key == values[spec.key])).mappings().first()
        )
        # The two clocks may differ this much.
        newest_allowed = values[spec.change_column] + self.skew
        if current is not None and current[spec.change_column] > newest_allowed:
            return "stale"
        if current is not None and normalise(spec, current) == normalise(spec, values):
            self._applied(versions, event)
            return "unchanged"
        try:
            with conn.begin_nested():
                statement = guarded_upsert(spec, conn.dialect.name, values, newest_allowed)
                written = conn.execute(statement)
        except (IntegrityError, DataError) as exc:
            # The row itself is refused (a constraint, a value out of range): retrying cannot
            # help. Anything else (a lock timeout, a lost connection) propagates: the batch is
            # not acked and comes again.
            log.error(
                "to-legacy: %s %s refused by the legacy database: %s",
                singular(spec.legacy_table),
                values[spec.key],
                exc,
            )
            return "rejected"
        if not written.rowcount:
            return "stale"  # the monolith wrote a newer row between our read and the upsert
        self._applied(versions, event)
        broken = [rule for rule in spec.compensations if self._broken(conn, rule, values)]
        return "conflict" if broken else "applied"

    def _broken(self, conn: Connection, rule: Compensation, values: Mapping[str, Any]) -> bool:
        """A live row just written that points at a watched row in the watched state (logged)."""
        state = values[rule.state_field]
        if state not in live_states(rule) or values[rule.match] is None:
            return False
        watch = rule.watch
        watched = watched_table(watch)
        found = conn.scalar(
            select(watched.c[watch.column]).where(watched.c[watch.key] == values[rule.match])
        )
        if found != watch.value:
            return False
        row, other = singular(self.spec.legacy_table), singular(watch.table)
        key = values[self.spec.key]
        log.warning(
            "to-legacy: CONFLICT: %s %s is %s but its %s %s is %s in the legacy database (%s "
            "before this %s reached it): applied anyway; %s %s must be compensated (%s)",
            row,
            key,
            state,
            other,
            values[rule.match],
            watch.value,
            watch.value,
            row,
            row,
            key,
            rule.name,
        )
        return True

    @staticmethod
    def _applied(versions: dict[int, int], event: Event) -> None:
        versions[event.key] = max(versions.get(event.key, 0), event.version)

    def _record(self, decided: Sequence[tuple[Event, str]]) -> None:
        now = utcnow()
        fresh: dict[str, dict[str, Any]] = {}
        for event, outcome in decided:
            if outcome != "duplicate":
                fresh.setdefault(
                    event.event_id,
                    {
                        "sync_name": self.spec.name,
                        "event_id": event.event_id,
                        "row_key": event.key,
                        "row_version": event.version,
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
                        conn.execute(insert(handled), rows)
                    self._move(conn, last, decided, lag, max(occurred, default=None))
                break
            except IntegrityError:
                if attempt == 2:  # a consumer that claimed these events recorded them too
                    raise
        if self.metrics is not None and lag is not None:
            labels = {"sync": self.spec.name, "job": JOB_TO_LEGACY}
            self.metrics.lag_seconds.labels(**labels).set(lag)
            self.metrics.last_run.labels(**labels).set(time.time())

    def _not_recorded(self, conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = [row["event_id"] for row in rows]
        known = set(
            conn.scalars(
                select(handled.c.event_id).where(
                    handled.c.sync_name == self.spec.name, handled.c.event_id.in_(ids)
                )
            )
        )
        return [row for row in rows if row["event_id"] not in known]

    def _move(
        self,
        conn: Connection,
        last: Event,
        decided: Sequence[tuple[Event, str]],
        lag: float | None,
        newest: datetime | None,
    ) -> None:
        name = self.spec.name
        checkpoint: Checkpoint = load_checkpoint(conn, name, JOB_TO_LEGACY) or new_checkpoint(
            name, JOB_TO_LEGACY
        )
        applied = sum(1 for _e, outcome in decided if outcome in WRITTEN_OUTCOMES)
        position_id = checkpoint.position_id
        if last.message_id.isdigit():  # an outbox id (the outbox source)
            position_id = max(position_id or 0, *(int(e.message_id) for e, _o in decided))
        if checkpoint.position_at is not None and newest is not None:
            newest = max(newest, checkpoint.position_at)
        now = utcnow()
        save_checkpoint(
            conn,
            replace(
                checkpoint,
                position_at=newest or checkpoint.position_at,
                position_ref=last.message_id or checkpoint.position_ref,
                position_id=position_id,
                rows_done=checkpoint.rows_done + len(decided),
                rows_written=checkpoint.rows_written + applied,
                lag_seconds=lag if lag is not None else checkpoint.lag_seconds,
                finished_at=now,
                last_success_at=now,
                problem=None,
                problem_since=None,
            ),
        )


class _Consumer:
    """The to-legacy loop's passes: a batch is read once and handled until it is acked."""

    def __init__(self, subscriber: Subscriber, applier: LegacyApplier, batch: int, block_ms: int):
        self.subscriber = subscriber
        self.applier = applier
        self.batch = batch
        self.block_ms = block_ms
        self.pending: list[Event] = []

    async def step(self) -> Counter[str] | None:
        """One batch: None when nothing was there to read."""
        if not self.pending:
            self.pending = await self.subscriber.read(count=self.batch, block_ms=self.block_ms)
        if not self.pending:
            return None
        outcomes = await asyncio.to_thread(self.applier.handle, self.pending)
        await self.subscriber.ack(*self.pending)
        self.pending = []
        return outcomes


class _CatchingUp:
    """The catch-up's passes (`sources.OutboxCatchUp`, module docstring "Lost stream data")."""

    def __init__(self, catch_up: OutboxCatchUp, subscriber: Subscriber, applier: LegacyApplier):
        self.catch_up = catch_up
        self.subscriber = subscriber
        self.applier = applier
        self.outcomes: Counter[str] = Counter()

    def resets(self) -> int:
        return int(getattr(self.subscriber, "resets", 0))

    def due(self) -> bool:
        return self.catch_up.due(self.resets())

    async def step(self, batch: int) -> Counter[str]:
        """One batch of the current pass (a pass ends with a short batch)."""
        events = await asyncio.to_thread(self.catch_up.read, batch, self.resets())
        outcomes = await asyncio.to_thread(self.applier.handle, events) if events else Counter()
        self.outcomes.update(outcomes)
        if len(events) < batch:
            done = self.catch_up.finished()
            written = sum(self.outcomes[o] for o in WRITTEN_OUTCOMES)
            # A pass after a reset is always told (what Redis lost, even nothing); the others
            # only when they found events the stream had not delivered.
            if done is not None and (done.events or done.reason == "reset"):
                log.info(
                    "to-legacy: caught up from the outbox table (%s): %d event(s) the stream had "
                    "not delivered, %d written to the legacy table",
                    done.reason,
                    done.events,
                    written,
                )
            self.outcomes = Counter()
        return outcomes


def outbox_catch_up(
    subscriber: Subscriber, applier: LegacyApplier, every: float
) -> OutboxCatchUp | None:
    """The catch-up a subscriber needs: one that counts lost data (`resets`) on a sync that
    declares an outbox; None otherwise."""
    from datasync.sources import OutboxCatchUp

    events = applier.spec.events
    if not isinstance(getattr(subscriber, "resets", None), int):
        return None
    if events is None or not events.outbox:
        return None
    return OutboxCatchUp(applier.spec, applier.service, every=every)


async def run_to_legacy(
    subscriber: Subscriber,
    applier: LegacyApplier,
    *,
    stop: asyncio.Event | None = None,
    batch: int = DEFAULT_BATCH,
    block_ms: int = 1000,
    until_idle: bool = False,
    guard: AsyncGuard | None = None,
    catch_up: OutboxCatchUp | None = None,
    catch_up_every: float = DEFAULT_CATCH_UP_EVERY,
) -> ToLegacyResult:
    """Consume until `stop` is set (or, with `until_idle`, until a read returns nothing).

    A batch at a time: one legacy and one service transaction per batch. A batch whose handling
    fails is not acked: on a transient error it is handled again after a backoff (the loop never
    ends on one, module docstring); on any other error the loop ends with it. A subscriber that
    counts lost data (`resets`) is paired with `catch_up` (made from the declaration unless
    given; module docstring, "Lost stream data")."""
    stop = stop or asyncio.Event()
    guard = guard or AsyncGuard("to-legacy", log)
    spec, metrics = applier.spec, applier.metrics
    result = ToLegacyResult()
    started = time.perf_counter()
    consumer = _Consumer(subscriber, applier, batch, block_ms)
    catch_up = catch_up or outbox_catch_up(subscriber, applier, catch_up_every)
    catching_up = _CatchingUp(catch_up, subscriber, applier) if catch_up is not None else None
    status = ONCE if until_idle else POLLING
    # A subscriber that rides out its own outages (`stream.StreamSubscriber`) reads [] while
    # they last: its `health` is the job's then.
    source = getattr(subscriber, "health", None)
    source_failures = 0
    marked = None
    while marked is None and not stop.is_set():  # None: the service database is not there yet
        marked = await guard.run(lambda: asyncio.to_thread(applier.mark, status))
    while not stop.is_set():
        failures = guard.health.failures
        outcomes: Counter[str] | None
        caught = catching_up is not None and catching_up.due()
        if catching_up is not None and caught:
            outcomes = await guard.run(lambda: catching_up.step(batch))
        else:
            outcomes = await guard.run(consumer.step)
        if guard.health.failures > failures:  # a transient failure: retried after backoff
            if metrics is not None:
                metrics.failing(spec.name, JOB_TO_LEGACY)
            await asyncio.to_thread(applier.note, guard.health)
            continue
        if isinstance(source, Health) and source.failures != source_failures:
            # The event source failed (or recovered) since the last look: on record once per
            # attempt, as the guard does for a failed pass.
            source_failures = source.failures
            await asyncio.to_thread(applier.note, source if source.failures else guard.health)
        if isinstance(source, Health) and not source.healthy:
            if metrics is not None:
                metrics.failing(spec.name, JOB_TO_LEGACY)
        elif metrics is not None:
            metrics.healthy(spec.name, JOB_TO_LEGACY)
        if caught:  # a catch-up batch, never an idle read
            if outcomes:
                result.add(outcomes)
            continue
        if outcomes is None:
            if until_idle:
                break
            continue
        result.add(outcomes)
    result.seconds = time.perf_counter() - started
    if not until_idle:
        await _stopped(applier)
    with reading(applier.service) as conn:
        checkpoint = load_checkpoint(conn, spec.name, JOB_TO_LEGACY)
    result.lag_seconds = checkpoint.lag_seconds if checkpoint is not None else None
    return result


async def _stopped(applier: LegacyApplier) -> None:
    try:
        await asyncio.to_thread(applier.mark, STOPPED)
    except Exception as exc:
        log.warning("to-legacy: stopped, but not recorded (%s)", exc)


def apply_events(
    spec: Spec,
    legacy: Engine,
    service: Engine,
    events: Sequence[Event],
    *,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
) -> Counter[str]:
    """Apply these events now (a demo or a test handing events over directly)."""
    return LegacyApplier(spec, legacy, service, max_clock_skew=max_clock_skew).handle(events)


def to_legacy_once(
    spec: Spec,
    legacy: Engine,
    service: Engine,
    subscriber: Subscriber | None = None,
    *,
    batch: int = DEFAULT_BATCH,
    max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
) -> ToLegacyResult:
    """Apply every event available now, then return: from `subscriber` (left open), or the
    declared outbox table (`sources.OutboxSubscriber`) when none is given. Not for use inside
    an event loop."""
    from datasync.sources import OutboxSubscriber

    applier = LegacyApplier(spec, legacy, service, max_clock_skew=max_clock_skew)
    applier.prepare()
    source: Subscriber = subscriber or OutboxSubscriber(spec, service)

    async def run() -> ToLegacyResult:
        try:
            return await run_to_legacy(source, applier, batch=batch, block_ms=1, until_idle=True)
        finally:
            if subscriber is None:  # ours: release its lease
                await source.close()

    return asyncio.run(run())
