"""A compiled sync declaration: everything the engine needs to move one table (pure: no I/O).

`declaration.py` turns a YAML file into a `Spec`; every job (backfill, follow, to-legacy,
reconcile, status, the cutover gate, compensation) takes the `Spec` as its first argument and
reads nothing table-specific from anywhere else. A `Spec` is immutable and hashable by name.

Names: the LEGACY column name is the canonical name of a field everywhere in the engine (row
mappings, hashes, reports); the service table may spell a column differently (`Field.service`),
and every read of the service table labels its columns with the legacy names
(`service_select`), so no job ever translates names by hand.

Rules the declaration enforces (so the engine may assume them):
- one key column, an integer (keyset batches and reconcile's bisection walk it in order);
- one change column, a timestamp, set by the monolith on every insert and update (the follow's
  cursor is (change column, key): Kafka Connect JDBC source's rule), or none: the table is then
  followed by full refresh (`refresh.py`), to the service only, legacy-wins;
- `to_legacy` needs the service table's `origin` and `version` columns (loop prevention and the
  stale-event guard) and an event source.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    select,
)
from sqlalchemy.sql import Select
from sqlalchemy.types import TypeEngine

from datasync.types import UTCDateTime

# Field types a declaration may name, and how each is normalised for comparison (`rows.py`).
TYPES = ("bigint", "integer", "decimal", "string", "text", "timestamp", "boolean", "date")

# Directions.
TO_SERVICE = "to-service"  # backfill + follow (before cutover)
TO_LEGACY = "to-legacy"  # the service's change events applied to the legacy table (after)

# Conflict rules, for a row both sides changed (see apply.py and to_legacy.py):
NEWER_WINS = "newer-wins"  # the later change column wins (within the allowed clock skew)
LEGACY_WINS = "legacy-wins"  # follow overwrites whatever the service wrote
SERVICE_WINS = "service-wins"  # follow never overwrites a row the service wrote
CONFLICT_RULES = (NEWER_WINS, LEGACY_WINS, SERVICE_WINS)

ORIGIN_LEGACY = "legacy"
ORIGIN_SERVICE = "service"


@dataclass(frozen=True)
class Field:
    """One synced column: `name` in the legacy table, `service` in the service table."""

    name: str
    type: str
    service: str
    nullable: bool = True
    length: int | None = None
    precision: int | None = None
    scale: int | None = None

    def sa_type(self) -> TypeEngine[Any]:
        if self.type == "bigint":
            return BigInteger()
        if self.type == "integer":
            return Integer()
        if self.type == "decimal":
            return Numeric(self.precision or 38, self.scale or 0, asdecimal=True)
        if self.type == "string":
            return String(self.length or 255)
        if self.type == "text":
            return Text()
        if self.type == "timestamp":
            return UTCDateTime()
        if self.type == "boolean":
            return Boolean()
        if self.type == "date":
            return Date()
        raise ValueError(f"unknown field type {self.type!r}")


@dataclass(frozen=True)
class EventSource:
    """Where the service's change events come from (to-legacy), and how they are spelled.

    A Redis Stream entry carries the fields `event_id`, `type`, `<key_field>`, `row_version`,
    `occurred_at` and `payload` (a JSON object holding the row's fields by SERVICE name, plus
    `origin` and `row_version`); an outbox table has the columns `id`, `event_id`,
    `aggregate_id`, `event_type`, `row_version`, `payload`, `created_at`, `published_at`.
    """

    stream: str | None = None  # Redis Stream key
    outbox: str | None = None  # the service's outbox table
    key_field: str = "aggregate_id"  # the stream field naming the row's key
    group: str = "to-legacy"  # consumer group
    # Event types the sync writes to the outbox for changes it copies FROM the legacy table:
    # `synced` by default, or the type mapped from a field's value (e.g. status voided →
    # payment.voided). None: the sync emits no events.
    synced_type: str | None = None
    types_by_value: tuple[tuple[str, str, str], ...] = ()  # (field, value, event type)
    # The event a refreshed table's hard delete records (default: `synced_type`).
    deleted_type: str | None = None
    # Optional "module:function" turning a row mapping into the event payload (a service's own
    # API shape); default: every field by service name, JSON-encoded as `rows.json_value` says.
    payload: str | None = None


@dataclass(frozen=True)
class Action:
    """A compensation step: an HTTP call to the service's own API for one row."""

    method: str
    path: str  # with {field} placeholders, e.g. /api/v1/payments/{id}/void
    body: Mapping[str, str] | None = None  # values with {field} placeholders


@dataclass(frozen=True)
class Watch:
    """A legacy table a compensation rule follows (read-only): rows whose `column` equals
    `value` trigger the rule."""

    table: str
    key: str
    changed: str
    column: str
    value: str


@dataclass(frozen=True)
class Compensation:
    """When a watched legacy row reaches a state (an order cancelled), act on the service rows
    that point at it (`match`: the synced field holding the watched row's key) and are in one of
    the `actions`' states (`state_field`: the synced field holding the row's state)."""

    name: str
    watch: Watch
    match: str
    state_field: str
    actions: Mapping[str, Action]


@dataclass(frozen=True)
class Gate:
    """The cutover gate's thresholds for this sync."""

    max_lag: float = 5.0
    confirmations: int = 2
    reconcile_max_age: float = 15 * 60.0


@dataclass(frozen=True)
class Follow:
    """The follower's defaults (each overridable on the command line)."""

    interval: float = 1.0
    lookback: float = 30.0
    safety_delay: float = 1.0
    page_size: int = 1_000


@dataclass(frozen=True, eq=False)
class Spec:
    """One declared sync (see the module docstring)."""

    name: str
    legacy_table: str
    service_table: str
    key: str  # legacy name of the key field
    changed: str | None  # legacy name of the change-timestamp field; None: full refresh
    fields: tuple[Field, ...]
    directions: frozenset[str] = frozenset({TO_SERVICE})
    conflict: str = NEWER_WINS
    origin_column: str | None = None  # service column: 'legacy' or 'service'
    version_column: str | None = None  # service column: incremented on every write
    soft_delete: tuple[str, str] | None = None  # (legacy field, value meaning deleted)
    key_floor: int | None = None  # legacy keys must stay below this (service's own id space)
    # The top of the service's own key range, when legacy keys may lie above it again (SQLite
    # numbers its next row max(key) + 1: past a service row copied in, the legacy's own keys
    # continue above the range). None: every key from `key_floor` up is the service's.
    key_ceiling: int | None = None
    events: EventSource | None = None
    compensations: tuple[Compensation, ...] = ()
    gate: Gate = field(default_factory=Gate)
    follow: Follow = field(default_factory=Follow)
    service_database: str | None = None  # the commands' default service database URL
    source: Path | None = None  # the declaration file, for messages
    line_of: Mapping[str, int] = field(default_factory=dict)  # dotted path -> line, for messages
    hooks: Mapping[str, Callable[..., Any]] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def refreshed(self) -> bool:
        """Followed by full refresh: the legacy table has no change column."""
        return self.changed is None

    @property
    def change_column(self) -> str:
        """The change column, for the jobs that walk or guard by it (the declaration refuses
        them for a refreshed table, so this never fails on a loaded declaration)."""
        if self.changed is None:
            raise ValueError(f"sync {self.name}: the legacy table has no change column")
        return self.changed

    # -- names ----------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """The synced fields' legacy names, in declaration order (the hash's order)."""
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        for item in self.fields:
            if item.name == name:
                return item
        raise KeyError(name)

    def service_name(self, name: str) -> str:
        return self.field(name).service

    # -- tables (built once per Spec; never used to create the legacy table) -----------------
    def legacy(self) -> Table:
        return _tables(self)[0]

    def service(self) -> Table:
        return _tables(self)[1]

    def legacy_select(self) -> Select[Any]:
        """Every synced column of the legacy table."""
        table = self.legacy()
        return select(*(table.c[name] for name in self.names))

    def service_select(self, *extra: str) -> Select[Any]:
        """Every synced column of the service table, labelled with its legacy name, plus the
        bookkeeping columns named in `extra` (e.g. the origin and version columns)."""
        table = self.service()
        columns: list[Any] = [table.c[f.service].label(f.name) for f in self.fields]
        columns += [table.c[name] for name in extra]
        return select(*columns)


# Keyed by the Spec itself, weakly: an id() could be reused by a later Spec after this one is
# collected, and hand it another declaration's tables.
_TABLES: weakref.WeakKeyDictionary[Spec, tuple[Table, Table]] = weakref.WeakKeyDictionary()


def _tables(spec: Spec) -> tuple[Table, Table]:
    """The legacy and service tables as SQLAlchemy Core sees them, one MetaData per Spec."""
    found = _TABLES.get(spec)
    if found is not None:
        return found
    metadata = MetaData()
    legacy = Table(
        spec.legacy_table,
        metadata,
        *(
            Column(f.name, f.sa_type(), primary_key=f.name == spec.key, nullable=f.nullable)
            for f in spec.fields
        ),
    )
    service_columns = [
        Column(f.service, f.sa_type(), primary_key=f.name == spec.key, nullable=f.nullable)
        for f in spec.fields
    ]
    if spec.origin_column:
        service_columns.append(Column(spec.origin_column, String(8)))
    if spec.version_column:
        service_columns.append(Column(spec.version_column, Integer))
    service = Table(spec.service_table, MetaData(), *service_columns)
    _TABLES[spec] = (legacy, service)
    return legacy, service


def watched_table(watch: Watch) -> Table:
    """A compensation rule's watched legacy table: its key, change column and state column."""
    return Table(
        watch.table,
        MetaData(),
        Column(watch.key, BigInteger, primary_key=True),
        Column(watch.changed, UTCDateTime()),
        Column(watch.column, String(255)),
    )
