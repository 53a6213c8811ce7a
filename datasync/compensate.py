"""Declared compensations: when a watched legacy row reaches a state, undo what the service did
on the rows that point at it, through the service's own API, as a saga recorded step by step.

The rule (`Compensation` in `spec.py`): a watched legacy row whose `column` equals `value` (an
order the monolith cancelled) makes every service row that points at it (`match`) and is in one
of the rule's action states subject to that state's action (authorized → void; captured or
partially refunded → refund of the whole balance). Why it is needed: after cutover the service
takes a payment while the monolith may still cancel its order (its cancel sees only its own
`payments` table, which the service's payment reaches only when to-legacy delivers it; an
outage widens the window to seconds). Neither side can prevent the race, so the sync closes it
afterwards.

Detection, each pass, per rule (keyset paging, IN lists of at most 500 keys: Oracle caps a list
at 1,000; plain Core on SQLite, PostgreSQL and Oracle):
  (a) watched rows in the trigger state changed since the rule's cursor, keyset by (change
      column, key) and re-read over the follow's look-back window (a late commit is still seen,
      as the follow's rule), then the service rows matching them in an action state;
  (b) service rows in an action state changed since their own cursor whose watched row is in
      the trigger state: a payment authorized AFTER cursor (a) passed its order's cancel;
  (c) a full sweep of every triggered watched row, at start and every `sweep` seconds: the net
      under both cursors (a row whose change column was not moved, a cursor lost).
Each row found becomes ONE saga (`saga.py`: unique per sync, rule and row key), `pending`.

Execution (orchestration, not choreography: microservices.io's "Saga" pattern, orchestration-
based; one orchestrator owns the saga's state, in the service's database, and calls the
participant): a due saga is claimed (`calling`, guarded update: two runners never call for one
saga at once), its action called through the service's API with `Idempotency-Key:
strangler-<sync>-<rule>-<row key>` (Stripe's idempotency keys: a retry of a call that did reach
the service replays the first answer, never voids or refunds twice), and settled:
  2xx → done; 409 whose problem type is `idempotency-key-in-progress` (the first call with this
  key is still running in the service) → retrying, no sooner than its `Retry-After`; other
  409/422 → the row is re-read: no longer in an action state → done ("already", someone else
  compensated it); in another action state than the one the saga was planned for (captured
  between detection and the void) → re-planned: `pending` again with that state's action and
  the key `strangler-<sync>-<rule>-<row key>-<state>` (a step "replanned"); still in the same
  state → failed; any other 4xx → failed (permanent, one log line); 5xx, connection error,
  timeout → retrying at `next_at` (full-jitter exponential backoff, AWS Architecture Blog, so
  never a tight loop), up to `max_attempts`, then failed. A saga left `calling` by a crash is
  called again (same key) once its claim is older than `call_timeout`.
No database transaction is open during a call. Every step is appended to `sync_saga_steps`.
Only the sagas of rules the declaration still names are run; a saga of a rule renamed or removed
is left as it is and counted as `orphaned` by `saga_summary`.

Before its first pass a runner checks that each watched table and its key, change and state
columns exist in the legacy database (`SchemaMissing`, naming the declaration's line): a typo
there would otherwise fail every pass with an error that looks transient.

Not compensated: a row in a state for which the rule declares no action (e.g. `refunded`, or a
state the declaration left out) is never touched; `open_violations(..., states=...)` reports it
for reconcile. A saga that failed stays failed until an operator decides (`retry_failed`,
`strangler sync compensate --retry-failed`: planned anew from the declaration and the row's
current state, with a fresh key); `saga_summary` shows it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any

import httpx
from sqlalchemy import Select, Table, and_, func, insert, inspect, select, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError

from datasync.batches import IN_LIST_MAX, chunks
from datasync.errors import SchemaMissing, SyncError
from datasync.incremental import after_mark
from datasync.lease import JobLease
from datasync.retry import Backoff, Guard, first_line
from datasync.saga import (
    CALLING,
    DETAIL_MAX,
    DONE,
    FAILED,
    OPEN_STATES,
    PENDING,
    RETRYING,
    SAGA_STATES,
    SOURCE_SERVICE,
    SOURCE_SWEEP,
    SOURCE_WATCHED,
    clip,
    ensure_schema,
    idempotency_key,
    sync_saga_cursors,
    sync_saga_steps,
    sync_sagas,
)
from datasync.spec import Action, Compensation, Spec, Watch, watched_table

log = logging.getLogger("strangler.sync.compensate")

RECENT_FAILURES = 10
KEY_IN_PROGRESS = "idempotency-key-in-progress"  # problem type: the key's first call still runs
JOB_COMPENSATE = "compensate"
Mark = tuple[datetime, int]
RowLike = Mapping[Any, Any]  # a row read with `.mappings()`, by legacy field name


@dataclass(frozen=True)
class Options:
    """The runner's knobs (the module header says what each one bounds)."""

    sweep: float = 300.0  # seconds between full sweeps (c)
    max_attempts: int = 20
    retry_base: float = 1.0  # backoff of a retrying saga: random(0, min(cap, base * 2^n))
    retry_cap: float = 300.0
    call_timeout: float = 60.0  # a claim older than this is taken over (the caller died)
    batch: int = 100  # sagas executed per pass


@dataclass
class CompensationResult:
    """One pass: sagas created per detection source, whether it swept, and call outcomes."""

    found: dict[str, int] = field(default_factory=dict)  # source -> sagas created
    swept: bool = False
    # Calls by outcome: done, already, retrying, replanned (pending again with the action of
    # the row's new state), rejected (failed: 4xx), gave-up (failed: attempts)
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def created(self) -> int:
        return sum(self.found.values())

    @property
    def calls(self) -> int:
        return sum(self.outcomes.values())

    def as_dict(self) -> dict[str, Any]:
        return {"found": dict(self.found), "swept": self.swept, "outcomes": dict(self.outcomes)}


@dataclass(frozen=True)
class Violation:
    """A service row live on a triggered watched row, with its saga's state when it has one."""

    rule: str
    row_key: int
    watched_key: int
    state: str
    action: str | None  # the declared call, None: not declared (reported, never touched)
    saga_state: str | None
    saga_outcome: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "row_key": self.row_key,
            "watched_key": self.watched_key,
            "state": self.state,
            "action": self.action,
            "saga_state": self.saga_state,
            "saga_outcome": self.saga_outcome,
        }


def service_client(base_url: str, token: str, timeout: float = 10.0) -> httpx.Client:
    """The client a runner calls the service with: its base URL and a staff bearer token."""
    return httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


# -- statements ------------------------------------------------------------------------------
@lru_cache(maxsize=64)
def _watched(watch: Watch) -> Table:
    return watched_table(watch)


def watched_changed_query(
    watch: Watch, since: datetime | None, after: Mark | None, size: int
) -> Select[Any]:
    """(a): the next page of triggered watched rows by (change column, key)."""
    t = _watched(watch)
    changed, key = t.c[watch.changed], t.c[watch.key]
    query = select(key, changed).where(t.c[watch.column] == watch.value)
    if since is not None:
        query = query.where(changed >= since)
    if after is not None:
        query = query.where(after_mark(changed, key, after))
    return query.order_by(changed, key).limit(size)


def triggered_keys_query(watch: Watch, after: int | None, size: int) -> Select[Any]:
    """(c): the next page of triggered watched keys, by key."""
    t = _watched(watch)
    key = t.c[watch.key]
    query = select(key).where(t.c[watch.column] == watch.value)
    if after is not None:
        query = query.where(key > after)
    return query.order_by(key).limit(size)


def triggered_among_query(watch: Watch, keys: Sequence[int]) -> Select[Any]:
    """(b): which of these watched keys (at most 500) are in the trigger state."""
    t = _watched(watch)
    return select(t.c[watch.key]).where(
        t.c[watch.key].in_(list(keys)), t.c[watch.column] == watch.value
    )


def service_rows_query(
    spec: Spec, rule: Compensation, watched_keys: Sequence[int], states: Sequence[str]
) -> Select[Any]:
    """Service rows (legacy names) matching these watched keys (at most 500) in `states`."""
    t = spec.service()
    return (
        spec.service_select()
        .where(
            t.c[spec.service_name(rule.match)].in_(list(watched_keys)),
            t.c[spec.service_name(rule.state_field)].in_(list(states)),
        )
        .order_by(t.c[spec.service_name(spec.key)])
    )


def service_changed_query(
    spec: Spec, rule: Compensation, since: datetime | None, after: Mark | None, size: int
) -> Select[Any]:
    """(b): the next page of service rows in an action state by (change column, key)."""
    t = spec.service()
    changed, key = t.c[spec.service_name(spec.change_column)], t.c[spec.service_name(spec.key)]
    query = spec.service_select().where(
        t.c[spec.service_name(rule.state_field)].in_(list(rule.actions))
    )
    if since is not None:
        query = query.where(changed >= since)
    if after is not None:
        query = query.where(after_mark(changed, key, after))
    return query.order_by(changed, key).limit(size)


def row_state_query(spec: Spec, rule: Compensation, row_key: int) -> Select[Any]:
    t = spec.service()
    return select(t.c[spec.service_name(rule.state_field)]).where(
        t.c[spec.service_name(spec.key)] == row_key
    )


def row_query(spec: Spec, row_key: int) -> Select[Any]:
    """One service row, by legacy names (what an action's placeholders are filled from)."""
    t = spec.service()
    return spec.service_select().where(t.c[spec.service_name(spec.key)] == row_key)


def existing_sagas_query(spec: Spec, rule: str, row_keys: Sequence[int]) -> Select[Any]:
    s = sync_sagas
    return select(s.c.row_key, s.c.state, s.c.outcome).where(
        s.c.sync_name == spec.name, s.c.rule == rule, s.c.row_key.in_(list(row_keys))
    )


def declared_rules(spec: Spec) -> list[str]:
    return [rule.name for rule in spec.compensations]


def due_sagas_query(spec: Spec, now: datetime, limit: int) -> Select[Any]:
    """The open sagas due now, of the rules the declaration still names."""
    s = sync_sagas
    return (
        select(s)
        .where(
            s.c.sync_name == spec.name,
            s.c.rule.in_(declared_rules(spec)),
            s.c.state.in_(OPEN_STATES),
            s.c.next_at <= now,
        )
        .order_by(s.c.next_at, s.c.id)
        .limit(limit)
    )


def cursor_query(spec: Spec, rule: str, source: str) -> Select[Any]:
    c = sync_saga_cursors
    return select(c.c.changed_at, c.c.row_key, c.c.updated_at).where(
        c.c.sync_name == spec.name, c.c.rule == rule, c.c.source == source
    )


# -- cursors ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cursor:
    mark: Mark | None
    updated_at: datetime | None


def load_cursor(conn: Connection, spec: Spec, rule: str, source: str) -> Cursor:
    row = conn.execute(cursor_query(spec, rule, source)).first()
    if row is None:
        return Cursor(None, None)
    mark = (row.changed_at, int(row.row_key)) if row.changed_at is not None else None
    return Cursor(mark, row.updated_at)


def save_cursor(
    conn: Connection, spec: Spec, rule: str, source: str, mark: Mark | None, now: datetime
) -> None:
    c = sync_saga_cursors
    values = {
        "changed_at": mark[0] if mark else None,
        "row_key": mark[1] if mark else None,
        "updated_at": now,
    }
    where = and_(c.c.sync_name == spec.name, c.c.rule == rule, c.c.source == source)
    if conn.execute(update(c).where(where).values(values)).rowcount:
        return
    conn.execute(insert(c).values(sync_name=spec.name, rule=rule, source=source, **values))


def later(mark: Mark | None, other: Mark | None) -> Mark | None:
    if mark is None:
        return other
    if other is None:
        return mark
    return max(mark, other)


def window_start(spec: Spec, mark: Mark | None) -> tuple[datetime | None, Mark | None]:
    """Where a pass starts reading: the look-back window before the cursor (re-read, as the
    follow does), or, without a look-back, strictly after the cursor."""
    if mark is None:
        return None, None
    if spec.follow.lookback <= 0:
        return None, mark
    return mark[0] - timedelta(seconds=spec.follow.lookback), None


def page_size(spec: Spec) -> int:
    return max(1, min(spec.follow.page_size, IN_LIST_MAX))


# -- recording what was found ----------------------------------------------------------------
def render(action: Action, row: RowLike) -> tuple[str, str | None]:
    """The call ("METHOD path") and JSON body of `action` for `row` ({field} placeholders)."""
    values = dict(row)
    try:
        path = action.path.format_map(values)
        body = {k: v.format_map(values) for k, v in (action.body or {}).items()}
    except (KeyError, IndexError, ValueError) as exc:
        raise SyncError(f"compensation action {action.path!r}: bad placeholder {exc}") from None
    encoded = json.dumps(body, separators=(",", ":"), sort_keys=True) if action.body else None
    return f"{action.method.upper()} {path}", encoded


def add_step(conn: Connection, saga_id: int, outcome: str, detail: str, now: datetime) -> None:
    t = sync_saga_steps
    step = conn.scalar(select(func.coalesce(func.max(t.c.step), 0)).where(t.c.saga_id == saga_id))
    conn.execute(
        insert(t).values(
            saga_id=saga_id,
            step=int(step or 0) + 1,
            at=now,
            outcome=outcome,
            detail=clip(detail, DETAIL_MAX),
        )
    )


def record_found(
    conn: Connection, spec: Spec, rule: Compensation, rows: Sequence[RowLike], how: str
) -> int:
    """A pending saga for each row that has none (a concurrent runner's insert is skipped)."""
    if not rows:
        return 0
    keys = [int(row[spec.key]) for row in rows]
    known = {
        int(r.row_key)
        for chunk in chunks(keys)
        for r in conn.execute(existing_sagas_query(spec, rule.name, chunk))
    }
    made = 0
    for row in rows:
        if int(row[spec.key]) in known:
            continue
        try:
            with conn.begin_nested():
                new_saga(conn, spec, rule, row, how)
        except IntegrityError:
            continue
        known.add(int(row[spec.key]))
        made += 1
    return made


def new_saga(conn: Connection, spec: Spec, rule: Compensation, row: RowLike, how: str) -> None:
    now = utcnow()
    row_key, watched_key = int(row[spec.key]), int(row[rule.match])
    state = str(row[rule.state_field])
    call, body = render(rule.actions[state], row)
    made = conn.execute(
        insert(sync_sagas).values(
            sync_name=spec.name,
            rule=rule.name,
            row_key=row_key,
            watched_key=watched_key,
            row_state=state,
            action=call,
            body=body,
            state=PENDING,
            attempts=0,
            next_at=now,
            idem_key=idempotency_key(spec.name, rule.name, row_key),
            created_at=now,
            updated_at=now,
        )
    )
    saga_id = made.inserted_primary_key[0] if made.inserted_primary_key else None
    if saga_id is None:
        raise SyncError(f"sync {spec.name}: the database returned no id for a new saga")
    detail = f"{how}: {rule.watch.table} {watched_key} is {rule.watch.value}; row is {state}"
    add_step(conn, int(saga_id), "found", detail, now)


# -- detection -------------------------------------------------------------------------------
def detect_watched(spec: Spec, rule: Compensation, legacy: Engine, service: Engine) -> int:
    """(a): triggered watched rows changed since the cursor, minus the look-back."""
    with service.connect() as conn:
        cursor = load_cursor(conn, spec, rule.name, SOURCE_WATCHED).mark
    (since, after), made, size = window_start(spec, cursor), 0, page_size(spec)
    while True:
        with legacy.connect() as conn:
            page = conn.execute(watched_changed_query(rule.watch, since, after, size)).all()
        if not page:
            return made
        after = (page[-1][1], int(page[-1][0]))
        cursor = later(cursor, after)
        keys = [int(r[0]) for r in page]
        with service.begin() as conn:
            rows = conn.execute(service_rows_query(spec, rule, keys, list(rule.actions)))
            made += record_found(conn, spec, rule, rows.mappings().all(), "watched row changed")
            save_cursor(conn, spec, rule.name, SOURCE_WATCHED, cursor, utcnow())
        if len(page) < size:
            return made


def detect_service(spec: Spec, rule: Compensation, legacy: Engine, service: Engine) -> int:
    """(b): service rows in an action state changed since their cursor, on triggered rows."""
    with service.connect() as conn:
        cursor = load_cursor(conn, spec, rule.name, SOURCE_SERVICE).mark
    (since, after), made, size = window_start(spec, cursor), 0, page_size(spec)
    while True:
        with service.connect() as conn:
            query = service_changed_query(spec, rule, since, after, size)
            page = conn.execute(query).mappings().all()
        if not page:
            return made
        after = (page[-1][spec.change_column], int(page[-1][spec.key]))
        cursor = later(cursor, after)
        matches = sorted({int(row[rule.match]) for row in page})
        with legacy.connect() as conn:
            query_in = triggered_among_query(rule.watch, matches)
            triggered = {int(k) for k in conn.scalars(query_in)}
        rows = [row for row in page if int(row[rule.match]) in triggered]
        with service.begin() as conn:
            made += record_found(conn, spec, rule, rows, "service row changed")
            save_cursor(conn, spec, rule.name, SOURCE_SERVICE, cursor, utcnow())
        if len(page) < size:
            return made


def sweep(spec: Spec, rule: Compensation, legacy: Engine, service: Engine) -> int:
    """(c): every triggered watched row, by key, against the service rows in an action state."""
    after: int | None = None
    made = 0
    while True:
        with legacy.connect() as conn:
            keys = [int(k) for k in conn.scalars(triggered_keys_query(rule.watch, after, 500))]
        if keys:
            with service.begin() as conn:
                rows = conn.execute(service_rows_query(spec, rule, keys, list(rule.actions)))
                made += record_found(conn, spec, rule, rows.mappings().all(), "sweep")
        if len(keys) < IN_LIST_MAX:
            break
        after = keys[-1]
    with service.begin() as conn:
        save_cursor(conn, spec, rule.name, SOURCE_SWEEP, None, utcnow())
    return made


def sweep_due(spec: Spec, rule: Compensation, service: Engine, every: float) -> bool:
    with service.connect() as conn:
        last = load_cursor(conn, spec, rule.name, SOURCE_SWEEP).updated_at
    return last is None or (utcnow() - last).total_seconds() >= every


# -- execution -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """What a call came back with: an HTTP status, or None when no answer arrived."""

    status: int | None
    detail: str
    problem: str | None = None  # the problem+json type's last segment, e.g. "not-voidable"
    retry_after: float | None = None  # seconds, from a Retry-After header


def call(client: httpx.Client, saga: Row[Any]) -> Reply:
    method, path = str(saga.action).split(" ", 1)
    body = json.loads(saga.body) if saga.body else None
    try:
        answer = client.request(method, path, json=body, headers={"Idempotency-Key": saga.idem_key})
    except httpx.RequestError as exc:  # connect error, reset, timeout: no answer
        return Reply(None, f"{type(exc).__name__}: {first_line(exc)}")
    return Reply(
        answer.status_code,
        describe(answer),
        problem_type(answer),
        retry_after(answer.headers.get("retry-after")),
    )


def problem_type(answer: httpx.Response) -> str | None:
    try:
        body = answer.json()
    except ValueError:
        return None
    if isinstance(body, dict) and body.get("type"):
        return str(body["type"]).rsplit("/", 1)[-1]
    return None


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - utcnow()).total_seconds())


def describe(answer: httpx.Response) -> str:
    """'HTTP 409 not-voidable: Payment 7 is voided; ...' from a problem+json answer."""
    text = f"HTTP {answer.status_code}"
    kind = problem_type(answer)
    if kind:
        text += f" {kind}"
    try:
        body = answer.json()
    except ValueError:
        return text
    if isinstance(body, dict) and body.get("detail"):
        text += f": {body['detail']}"
    return text


def claim(service: Engine, saga: Row[Any], options: Options) -> bool:
    """Take a due saga (guarded by its state and attempts: one caller per saga at a time)."""
    now = utcnow()
    s = sync_sagas
    with service.begin() as conn:
        taken = conn.execute(
            update(s)
            .where(s.c.id == saga.id, s.c.state == saga.state, s.c.attempts == saga.attempts)
            .values(
                state=CALLING,
                attempts=s.c.attempts + 1,
                next_at=now + timedelta(seconds=options.call_timeout),
                updated_at=now,
            )
        ).rowcount
        if taken != 1:
            return False
        detail = f"{saga.action} attempt {saga.attempts + 1} (Idempotency-Key {saga.idem_key})"
        add_step(conn, int(saga.id), "call", detail, now)
    return True


@dataclass(frozen=True)
class Plan:
    """A saga's new call, for the state its row has moved to."""

    row_state: str
    action: str
    body: str | None
    idem_key: str


@dataclass(frozen=True)
class Settlement:
    state: str
    outcome: str
    next_at: datetime | None = None
    plan: Plan | None = None  # outcome "replanned": the call the saga makes next


def settle(
    spec: Spec, rule: Compensation, service: Engine, saga: Row[Any], reply: Reply, options: Options
) -> Settlement:
    """What the reply means for the saga (the module header's table)."""
    status, attempts = reply.status, int(saga.attempts) + 1
    if status is not None and 200 <= status < 300:
        return Settlement(DONE, "done")
    if status == 409 and reply.problem == KEY_IN_PROGRESS:
        return retry_later(attempts, options, reply.retry_after)
    if status in (409, 422):
        with service.connect() as conn:
            row = conn.execute(row_query(spec, int(saga.row_key))).mappings().first()
        now_state = None if row is None else str(row[rule.state_field])
        if now_state is None or now_state not in rule.actions:
            return Settlement(DONE, "already")
        if now_state == str(saga.row_state):
            return Settlement(FAILED, "rejected")
        assert row is not None
        action, body = render(rule.actions[now_state], row)
        key = idempotency_key(spec.name, rule.name, int(saga.row_key), now_state)
        return Settlement(PENDING, "replanned", plan=Plan(now_state, action, body, key))
    if status is not None and status < 500:
        return Settlement(FAILED, "rejected")
    return retry_later(attempts, options)


def retry_later(attempts: int, options: Options, at_least: float | None = None) -> Settlement:
    """Retrying after the backoff (and no sooner than `at_least` seconds), or failed once the
    attempts are spent."""
    if attempts >= options.max_attempts:
        return Settlement(FAILED, "gave-up")
    backoff = Backoff(base=options.retry_base, cap=options.retry_cap, failures=attempts - 1)
    delay = backoff.next_delay()
    if at_least is not None:
        delay = max(delay, at_least)
    return Settlement(RETRYING, "retrying", utcnow() + timedelta(seconds=delay))


def finish(service: Engine, saga: Row[Any], reply: Reply, settled: Settlement) -> None:
    now = utcnow()
    s = sync_sagas
    final = settled.state in (DONE, FAILED)
    values: dict[str, Any] = {
        "state": settled.state,
        "outcome": settled.outcome if final else None,
        "http_status": reply.status,
        "last_error": None if settled.outcome == "done" else clip(reply.detail),
        "next_at": settled.next_at or now,
        "updated_at": now,
        "finished_at": now if final else None,
    }
    detail = reply.detail
    if settled.next_at is not None:
        detail += f"; next attempt at {settled.next_at.isoformat(timespec='milliseconds')}"
    if settled.plan is not None:
        plan = settled.plan
        values.update(
            row_state=plan.row_state, action=plan.action, body=plan.body, idem_key=plan.idem_key
        )
        detail += f"; row is now {plan.row_state}: {plan.action} (Idempotency-Key {plan.idem_key})"
    with service.begin() as conn:
        mine = (s.c.id == saga.id, s.c.state == CALLING, s.c.attempts == saga.attempts + 1)
        if conn.execute(update(s).where(*mine).values(values)).rowcount != 1:
            return  # taken over after `call_timeout`: that caller settles it
        add_step(conn, int(saga.id), settled.outcome, detail, now)


def execute(
    spec: Spec, service: Engine, client: httpx.Client, saga: Row[Any], options: Options
) -> str | None:
    """Claim, call and settle one saga; its outcome, or None when another runner took it."""
    rule = rule_named(spec, str(saga.rule))
    if not claim(service, saga, options):
        return None
    reply = call(client, saga)
    settled = settle(spec, rule, service, saga, reply, options)
    finish(service, saga, reply, settled)
    if settled.state == FAILED:
        log.warning(
            "compensate %s: %s on %s %s failed (%s): %s",
            spec.name,
            rule.name,
            spec.service_table,
            saga.row_key,
            settled.outcome,
            reply.detail,
        )
    return settled.outcome


def rule_named(spec: Spec, name: str) -> Compensation:
    for rule in spec.compensations:
        if rule.name == name:
            return rule
    raise SyncError(f"sync {spec.name}: a saga names rule {name!r}, which is no longer declared")


# -- public API ------------------------------------------------------------------------------
def compensate_once(
    spec: Spec,
    legacy: Engine,
    service: Engine,
    client: httpx.Client,
    *,
    options: Options | None = None,
    force_sweep: bool = False,
) -> CompensationResult:
    """One pass: detect (a), (b) and, when due, (c) for every rule, then run the due sagas."""
    options = options or Options()
    check_watched(spec, legacy)
    ensure_schema(service)
    result = CompensationResult()
    for rule in spec.compensations:
        add(result.found, "watched", detect_watched(spec, rule, legacy, service))
        add(result.found, "service", detect_service(spec, rule, legacy, service))
        if force_sweep or sweep_due(spec, rule, service, options.sweep):
            add(result.found, "sweep", sweep(spec, rule, legacy, service))
            result.swept = True
    with service.connect() as conn:
        due = conn.execute(due_sagas_query(spec, utcnow(), options.batch)).all()
    for saga in due:
        outcome = execute(spec, service, client, saga, options)
        if outcome is not None:
            add(result.outcomes, outcome, 1)
    return result


_CHECKED: set[tuple[str, str]] = set()
_CHECKED_LOCK = threading.Lock()


def check_watched(spec: Spec, legacy: Engine) -> None:
    """`SchemaMissing` unless every watched table has its key, change and state columns (once
    per legacy database and sync: a later pass finds them checked)."""
    seen = (legacy.url.render_as_string(hide_password=True), spec.name)
    with _CHECKED_LOCK:
        if seen in _CHECKED:
            return
    with legacy.connect() as conn:
        inspector = inspect(conn)
        for number, rule in enumerate(spec.compensations):
            watch = rule.watch
            where = declared_at(spec, f"compensate.{number}.watch")
            if not inspector.has_table(watch.table):
                raise SchemaMissing(
                    f"compensation {rule.name}: the legacy database has no {watch.table} table "
                    f"(watch.table{where})"
                )
            present = {str(c["name"]).lower() for c in inspector.get_columns(watch.table)}
            absent = [
                f"{role} {name}"
                for role, name in (
                    ("key", watch.key),
                    ("changed", watch.changed),
                    ("state", watch.column),
                )
                if name.lower() not in present
            ]
            if absent:
                raise SchemaMissing(
                    f"compensation {rule.name}: the legacy {watch.table} table has no column "
                    f"{', '.join(absent)} (watch{where})"
                )
    with _CHECKED_LOCK:
        _CHECKED.add(seen)


def declared_at(spec: Spec, path: str) -> str:
    """', declared at payments.yaml line 30' when the declaration's line is known."""
    line = spec.line_of.get(path)
    if line is None:
        return ""
    source = spec.source.name if spec.source is not None else "the declaration"
    return f", declared at {source} line {line}"


def add(counts: dict[str, int], name: str, n: int) -> None:
    if n:
        counts[name] = counts.get(name, 0) + n


def run_compensation(
    spec: Spec,
    legacy: Engine,
    service: Engine,
    client: httpx.Client,
    *,
    stop: threading.Event,
    interval: float = 1.0,
    on_pass: Callable[[CompensationResult], object] | None = None,
    options: Options | None = None,
) -> None:
    """Pass after pass until `stop` is set; a transient database error is logged once and the
    pass retried with backoff (`retry.Guard`), a permanent one ends the run. The first pass that
    succeeds sweeps. One runner per sync at a time (a lease, as follow's): a second is refused
    with the holder's name, so two runners never repeat each other's detection work."""
    guard = Guard(f"compensate {spec.name}", log, wait=stop.wait)
    first = True
    lease = JobLease(service, spec.name, JOB_COMPENSATE)

    def one_pass() -> CompensationResult:
        lease.renew()
        return compensate_once(spec, legacy, service, client, options=options, force_sweep=first)

    with lease:
        while not stop.is_set():
            result = guard.run(one_pass)
            if result is not None:
                first = False
                if on_pass is not None:
                    on_pass(result)
            stop.wait(interval)


def retry_failed(spec: Spec, service: Engine, *, rule: str | None = None) -> int:
    """An operator's decision to try failed sagas again, after fixing what refused them (a
    declaration, the service). Each is planned anew from the declaration as it is now and the
    row's current state: `pending` with that state's action, attempts reset and a fresh
    idempotency key (the service replays a stored 4xx for the old one); a row no longer in a
    declared state is done ("already"). A step records it. Returns how many were retried."""
    ensure_schema(service)
    s = sync_sagas
    rules = {r.name: r for r in spec.compensations}
    query = select(s).where(s.c.sync_name == spec.name, s.c.state == FAILED)
    if rule is not None:
        query = query.where(s.c.rule == rule)
    now = utcnow()
    retried = 0
    with service.begin() as conn:
        for saga in conn.execute(query).mappings().all():
            declared = rules.get(str(saga["rule"]))
            if declared is not None:
                retried += replan_failed(spec, conn, declared, saga, now)
    return retried


def replan_failed(
    spec: Spec, conn: Connection, rule: Compensation, saga: RowLike, now: datetime
) -> int:
    row = conn.execute(row_query(spec, int(saga["row_key"]))).mappings().first()
    state = str(row[rule.state_field]) if row is not None else ""
    saga_id, s = int(saga["id"]), sync_sagas
    if row is None or state not in rule.actions:
        conn.execute(
            update(s)
            .where(s.c.id == saga_id)
            .values(state=DONE, outcome="already", finished_at=now, updated_at=now)
        )
        now_is = state or "gone"
        add_step(conn, saga_id, "already", f"retried by an operator: the row is {now_is}", now)
        return 0
    call, body = render(rule.actions[state], row)
    base = idempotency_key(spec.name, rule.name, int(saga["row_key"]), state)
    fresh = f"{base}-retry-{int(now.timestamp())}"
    conn.execute(
        update(s)
        .where(s.c.id == saga_id, s.c.state == FAILED)
        .values(
            state=PENDING,
            row_state=state,
            action=call,
            body=body,
            attempts=0,
            next_at=now,
            idem_key=fresh,
            outcome=None,
            finished_at=None,
            updated_at=now,
        )
    )
    add_step(conn, saga_id, "retried", f"by an operator: {call}, key {fresh}", now)
    return 1


def saga_summary(spec: Spec, service_conn: Connection) -> dict[str, Any]:
    """For `sync status`: sagas by state, the oldest open saga's age, the last failures, and
    how many sagas belong to rules the declaration no longer names (`orphaned`: never run,
    counted in no state)."""
    s = sync_sagas
    counts = {state: 0 for state in SAGA_STATES}
    if not has_sagas(service_conn):
        return {
            "counts": counts,
            "open": 0,
            "oldest_open_seconds": None,
            "failures": [],
            "orphaned": 0,
        }
    mine = s.c.sync_name == spec.name
    declared = s.c.rule.in_(declared_rules(spec))
    by_state = select(s.c.state, func.count()).where(mine, declared)
    for state, n in service_conn.execute(by_state.group_by(s.c.state)):
        counts[str(state)] = int(n)
    orphaned = service_conn.scalar(select(func.count()).select_from(s).where(mine, ~declared))
    oldest = service_conn.scalar(
        select(func.min(s.c.created_at)).where(mine, declared, s.c.state.in_(OPEN_STATES))
    )
    failures = service_conn.execute(
        select(s)
        .where(mine, declared, s.c.state == FAILED)
        .order_by(s.c.finished_at.desc(), s.c.id.desc())
        .limit(RECENT_FAILURES)
    ).mappings()
    return {
        "counts": counts,
        "open": sum(counts[state] for state in OPEN_STATES),
        "oldest_open_seconds": age(oldest),
        "failures": [failure_dict(row) for row in failures],
        "orphaned": int(orphaned or 0),
    }


def has_sagas(conn: Connection) -> bool:
    return bool(inspect(conn).has_table(sync_sagas.name))


def age(since: datetime | None) -> float | None:
    if since is None:
        return None
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return round((utcnow() - since).total_seconds(), 3)


def failure_dict(row: RowLike) -> dict[str, Any]:
    finished = row["finished_at"]
    return {
        "rule": row["rule"],
        "row_key": int(row["row_key"]),
        "watched_key": int(row["watched_key"]),
        "action": row["action"],
        "outcome": row["outcome"],
        "attempts": int(row["attempts"]),
        "http_status": row["http_status"],
        "last_error": row["last_error"],
        "finished_at": finished.isoformat() if finished is not None else None,
    }


def open_violations(
    spec: Spec,
    legacy_conn: Connection,
    service_conn: Connection,
    *,
    states: Iterable[str] | None = None,
) -> list[Violation]:
    """For reconcile: every service row in an action state (or in `states`, e.g. every live
    state, declared or not) whose watched row is in the trigger state, with its saga's state."""
    found: list[Violation] = []
    sagas = has_sagas(service_conn)  # no saga table: compensation never ran, no saga to tag
    for rule in spec.compensations:
        wanted = tuple(states) if states is not None else tuple(rule.actions)
        rows = live_rows(spec, rule, legacy_conn, service_conn, wanted)
        tags = saga_tags(spec, rule, service_conn, rows) if sagas else {}
        found += [violation(spec, rule, row, tags.get(int(row[spec.key]))) for row in rows]
    return found


def live_rows(
    spec: Spec,
    rule: Compensation,
    legacy_conn: Connection,
    service_conn: Connection,
    states: Sequence[str],
) -> list[RowLike]:
    """Service rows in `states` on a triggered watched row (watched keys 500 at a time)."""
    rows: list[RowLike] = []
    after: int | None = None
    while True:
        keys = [int(k) for k in legacy_conn.scalars(triggered_keys_query(rule.watch, after, 500))]
        if keys:
            query = service_rows_query(spec, rule, keys, states)
            rows += service_conn.execute(query).mappings().all()
        if len(keys) < IN_LIST_MAX:
            break
        after = keys[-1]
    return rows


def saga_tags(
    spec: Spec, rule: Compensation, service_conn: Connection, rows: Sequence[RowLike]
) -> dict[int, tuple[str, str | None]]:
    """Row key -> (saga state, outcome) of these rows' sagas."""
    return saga_states(spec, rule.name, service_conn, [int(row[spec.key]) for row in rows])


def saga_states(
    spec: Spec, rule: str, service_conn: Connection, keys: Sequence[int]
) -> dict[int, tuple[str, str | None]]:
    """Row key -> (saga state, outcome) of the sagas rule `rule` has for these row keys."""
    tags: dict[int, tuple[str, str | None]] = {}
    if not keys or not has_sagas(service_conn):
        return tags
    for chunk in chunks(list(keys)):
        for saga in service_conn.execute(existing_sagas_query(spec, rule, chunk)):
            tags[int(saga.row_key)] = (str(saga.state), saga.outcome)
    return tags


def violation(
    spec: Spec, rule: Compensation, row: RowLike, saga: tuple[str, str | None] | None
) -> Violation:
    state = str(row[rule.state_field])
    action = rule.actions.get(state)
    return Violation(
        rule=rule.name,
        row_key=int(row[spec.key]),
        watched_key=int(row[rule.match]),
        state=state,
        action=render(action, row)[0] if action is not None else None,
        saga_state=saga[0] if saga else None,
        saga_outcome=saga[1] if saga else None,
    )
