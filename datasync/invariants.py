"""A business invariant reconcile checks besides row equality, one per declared compensation:
no synced row is live (its state one the compensation acts on) while the legacy row it points
at has reached the watched state. The payment precedent: no payment is live on an order the
monolith has cancelled.

Why: after cutover a customer pays in the service while the monolith can still cancel the order
(its cancel checks only its own `payments` table, which the service's payment reaches only when
to-legacy delivers it). The order ends cancelled with money taken, and both copies of the
payment agree, so the row comparison sees no drift. The monolith cannot be changed and the
service cannot see the cancel in time, so the sync makes it visible: to-legacy counts such an
apply as a `conflict`, and reconcile reports every such row under the rule's name (e.g.
`cancelled_order_with_live_payment`), counted in the drift, so reconcile exits 3 and the cutover
gate closes. The compensation (`compensate.py`) or an operator repairs it.

Read-only. The watched row's state is read from the LEGACY database only:

- legacy rows: one join in the legacy database (rows x watched rows in the state, live state);
- service rows: the watched rows' keys, read from the legacy database a page of 500 at a time
  (keyset by key), each page one `match IN (...)` query on the service's table: every IN-list
  stays at 500 or fewer (Oracle's cap is 1,000), every statement is plain Core that compiles on
  SQLite, PostgreSQL and Oracle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, Table, select
from sqlalchemy.engine import Connection

from datasync.batches import IN_LIST_MAX, chunks
from datasync.spec import Compensation, Spec, watched_table


def singular(table: str) -> str:
    """A table's name for one of its rows, in messages and report labels (payments → payment)."""
    return table[:-1] if table.endswith("s") and not table.endswith("ss") else table


def category(spec: Spec, rule: Compensation) -> str:
    """The report's name for the rule's violations: the compensation's declared name."""
    del spec
    return rule.name


def live_states(rule: Compensation) -> tuple[str, ...]:
    """The states a compensation acts on: a row in one of them holds something to undo."""
    return tuple(rule.actions)


@dataclass(frozen=True)
class LiveOnWatched:
    """A row live in at least one database whose watched legacy row reached the watched state."""

    category: str
    key: int
    watched_key: int
    legacy_state: str | None  # None: not in that database
    service_state: str | None
    labels: tuple[str, str, str, str]  # as_dict's keys

    def as_dict(self) -> dict[str, Any]:
        values = (self.key, self.watched_key, self.legacy_state, self.service_state)
        return dict(zip(self.labels, values, strict=True))


def labels(spec: Spec, rule: Compensation) -> tuple[str, str, str, str]:
    """`<row>_<key>`, the match field, `legacy_<state>`, `service_<state>` (for the payment:
    payment_id, order_id, legacy_status, service_status)."""
    state = rule.state_field
    row = f"{singular(spec.legacy_table)}_{spec.key}"
    return row, rule.match, f"legacy_{state}", f"service_{state}"


def legacy_live_query(spec: Spec, rule: Compensation) -> Select[Any]:
    """Legacy rows live on a watched row in the state: one join in the legacy database."""
    rows, watched = spec.legacy(), watched_table(rule.watch)
    return (
        select(rows.c[spec.key], rows.c[rule.match], rows.c[rule.state_field])
        .join(watched, watched.c[rule.watch.key] == rows.c[rule.match])
        .where(
            watched.c[rule.watch.column] == rule.watch.value,
            rows.c[rule.state_field].in_(live_states(rule)),
        )
        .order_by(rows.c[spec.key])
    )


def watched_page_query(rule: Compensation, after: int | None, limit: int = IN_LIST_MAX) -> Any:
    """The next page of watched keys in the state, in the legacy database (keyset by key)."""
    watched = watched_table(rule.watch)
    key = watched.c[rule.watch.key]
    query = select(key).where(watched.c[rule.watch.column] == rule.watch.value)
    if after is not None:
        query = query.where(key > after)
    return query.order_by(key).limit(limit)


def service_live_query(spec: Spec, rule: Compensation, watched: Sequence[int]) -> Any:
    """Service rows live on these watched keys (at most `IN_LIST_MAX`)."""
    table = spec.service()
    match = table.c[spec.service_name(rule.match)]
    state = table.c[spec.service_name(rule.state_field)]
    return select(table.c[spec.service_name(spec.key)], match, state).where(
        match.in_(list(watched)), state.in_(live_states(rule))
    )


def state_query(spec: Spec, rule: Compensation, table: Table, legacy: bool, keys: Any) -> Any:
    name = (lambda n: n) if legacy else spec.service_name
    key = table.c[name(spec.key)]
    return select(key, table.c[name(rule.state_field)]).where(key.in_(list(keys)))


def live_on_watched(
    spec: Spec, rule: Compensation, legacy: Connection, service: Connection
) -> list[LiveOnWatched]:
    """Every row live in either database whose watched legacy row is in the state, by key."""
    watched: dict[int, int] = {}
    legacy_state: dict[int, str] = {}
    service_state: dict[int, str] = {}
    for key, match, state in legacy.execute(legacy_live_query(spec, rule)):
        watched[int(key)] = int(match)
        legacy_state[int(key)] = str(state)
    after: int | None = None
    while True:
        page = [int(i) for i in legacy.scalars(watched_page_query(rule, after))]
        if not page:
            break
        for key, match, state in service.execute(service_live_query(spec, rule, page)):
            watched[int(key)] = int(match)
            service_state[int(key)] = str(state)
        if len(page) < IN_LIST_MAX:
            break
        after = page[-1]
    # The other side's state of each row found, for the report.
    missing = [k for k in watched if k not in service_state]
    _fill(service, spec, rule, spec.service(), False, missing, service_state)
    missing = [k for k in watched if k not in legacy_state]
    _fill(legacy, spec, rule, spec.legacy(), True, missing, legacy_state)
    kind, names = category(spec, rule), labels(spec, rule)
    return [
        LiveOnWatched(kind, k, watched[k], legacy_state.get(k), service_state.get(k), names)
        for k in sorted(watched)
    ]


def _fill(
    conn: Connection,
    spec: Spec,
    rule: Compensation,
    table: Table,
    legacy: bool,
    keys: list[int],
    into: dict[int, str],
) -> None:
    for chunk in chunks(keys):
        query = state_query(spec, rule, table, legacy, chunk)
        into.update({int(k): str(s) for k, s in conn.execute(query)})


def violations(spec: Spec, legacy: Connection, service: Connection) -> list[LiveOnWatched]:
    """Every declared rule's violations."""
    found: list[LiveOnWatched] = []
    for rule in spec.compensations:
        found += live_on_watched(spec, rule, legacy, service)
    return found
