"""A sync declaration (YAML) → `Spec`, with the file and line of every problem.

A platform engineer declares one table per file; the engine reads nothing table-specific from
anywhere else. The whole shape, with the payment service's table as the example:

    sync: payments                 # name: state, metrics and the CLI use it
    legacy:
      table: payments
      key: id                      # an integer column: batches walk it in order
      changed: updated_at          # a timestamp the monolith sets on every insert and update
                                   # (none: followed by full refresh, see below)
      soft_delete: {field: status, value: deleted}   # optional
    service:
      table: payments
      database: "sqlite:///./var/payment.db"   # optional: the commands' default service database
      origin: origin               # optional unless to-legacy: 'legacy' or 'service'
      version: row_version         # optional unless to-legacy: +1 on every service write
      key_floor: 3_000_000_000_000_000    # optional: the service's own keys start here ...
      key_ceiling: 4_000_000_000_000_000  # ... and end here: a legacy key between stops the sync
    fields:                        # every synced column, in order; the row hash follows it
      id: bigint                   # shorthand for {type: bigint}
      order_id: {type: bigint, nullable: false}
      status: {type: string, length: 20, nullable: false}
      amount: {type: decimal, precision: 12, scale: 2, nullable: false}
      currency: {type: string, length: 3, nullable: false}
      card_last4: {type: string, length: 4, service: last4}   # renamed in the service
      updated_at: {type: timestamp, nullable: false}
    directions: [to-service, to-legacy]
    conflict: newer-wins           # legacy-wins | service-wins
    follow: {interval: 1s, lookback: 30s, safety_delay: 1s, page_size: 1000}
    gate: {max_lag: 5s, confirmations: 2, reconcile_max_age: 15m}
    events:                        # the service's change events (required for to-legacy)
      stream: "payment:events"     # a Redis Stream, and/or
      outbox: outbox               # the service's outbox table
      key_field: payment_id        # the stream field naming the row's key
      synced_type: payment.synced  # the event the sync records for a change it copies in
      types_by_value: [{field: status, value: voided, type: payment.voided}]
    hooks:
      payload: "services.payment.sync.hooks:payload"   # row -> event payload (the API's shape)
      migrate: "services.payment.sync.hooks:migrate"   # the service's own schema migration
    compensate:
      - name: cancelled_order_with_live_payment
        watch: {table: orders, key: id, changed: updated_at, when: {state: cancelled}}
        match: order_id            # the synced field holding the watched row's key
        state: status              # the synced field whose value picks the action
        actions:
          authorized: {call: "POST /api/v1/payments/{id}/void"}
          captured: {call: "POST /api/v1/payments/{id}/refund", body: {reason: "order {order_id}"}}

Field types: bigint, integer, decimal (needs precision and scale), string (needs length), text,
timestamp, boolean, date. A field is nullable unless it says `nullable: false`; the key and the
change field never are.
Durations are seconds, or a number with a unit: `250ms`, `1s`, `2m`, `1h` (as in routes.yaml).

Rules (the engine may assume them once a `Spec` exists):
- Every problem is reported, as `FILE:LINE: field.path: reason`, and the file is refused whole
  (routes.yaml's loader, after Envoy's NACK and YARP's config validators). Field errors come
  first; the cross-field rules run once every field is well-formed.
- Unknown keys are refused, with the closest known key as a hint (a typo must not silently
  become a default: Kubernetes' strict field validation does the same).
- Table and column names are unquoted Oracle 19c identifiers: `[A-Za-z_][A-Za-z0-9_]*`, at most
  30 characters (Oracle's limit below COMPATIBLE 12.2, the project's rule), and none of the
  reserved words of Oracle's SQL Language Reference ("Oracle SQL Reserved Words").
- One key field, an integer (keyset batches and reconcile's bisection walk it in order); one
  change field, a timestamp (the follow's cursor is (change, key): Kafka Connect's JDBC source).
- A table without a change column (a lookup table the monolith never stamps) leaves `changed`
  out: follow then refreshes it whole every `follow.interval` (re-read by key, upsert what
  differs, delete what the legacy no longer has: Kafka Connect JDBC's `bulk` mode, Airbyte's full
  refresh). Such a sync moves rows to the service only, its conflict rule is `legacy-wins` (the
  default there: the service table is the legacy's copy, rows the legacy lacks are deleted, so
  no other rule, nor a key range of the service's own, can hold), it has no compensations, and
  its gate's
  `max_lag` must exceed the refresh interval (a change waits up to one interval plus a pass).
- `to-legacy` needs the service's `origin` and `version` columns (echo skipping and the stale
  guard, as DMS and GoldenGate tag bidirectional changes) and an event source. An outbox table
  and a stream carry ONE sync's events: to-legacy applies every event it reads, so each synced
  table needs its own (Debezium's outbox router routes by aggregate type to one topic each).
- Compensation calls are POST, PUT, PATCH or DELETE on a path of the service's API; `{name}`
  placeholders in the path and body name declared fields (legacy names).
- `hooks.payload` (row -> event payload), `hooks.migrate` (engine -> schema revision, run by
  `strangler sync migrate` and `--migrate` before the engine creates its own tables) and
  `hooks.project` (`(spec, connection, changed keys, deleted keys)`, called in the transaction
  of every batch the engine writes: a read side's pre-calculated views kept in step) are
  "module:function" strings, imported when the declaration is loaded (as uvicorn's
  `import_from_string`), so a typo fails at load time with its line, not at the first event.
"""

from __future__ import annotations

import difflib
import importlib
import re
import string
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    model_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from datasync.errors import SyncError
from datasync.spec import (
    CONFLICT_RULES,
    LEGACY_WINS,
    NEWER_WINS,
    TO_LEGACY,
    TO_SERVICE,
    TYPES,
    Action,
    Compensation,
    EventSource,
    Follow,
    Gate,
    Spec,
    Watch,
)
from datasync.spec import Field as SpecField
from proxy.table.units import parse_duration  # routes.yaml's durations, the same spelling

Loc = tuple[str | int, ...]

SYNC_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
COMPENSATION_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
IDENTIFIER_MAX = 30  # Oracle 19c below COMPATIBLE 12.2, and CONVENTIONS.md rule 12
HOOK = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
METHODS = ("POST", "PUT", "PATCH", "DELETE")
INTEGER_TYPES = ("bigint", "integer")
# Oracle SQL Language Reference, "Oracle SQL Reserved Words": unusable unquoted.
_RESERVED = """
    access add all alter and any as asc audit between by char check cluster column comment
    compress connect create current date decimal default delete desc distinct drop else exclusive
    exists file float for from grant group having identified immediate in increment index initial
    insert integer intersect into is level like lock long maxextents minus mlslabel mode modify
    noaudit nocompress not nowait null number of offline on online option or order pctfree prior
    public raw rename resource revoke row rowid rownum rows select session set share size smallint
    start successful synonym sysdate table then to trigger uid union unique update user validate
    values varchar varchar2 view whenever where with"""
ORACLE_RESERVED = frozenset(_RESERVED.split())


@dataclass(frozen=True)
class Problem:
    """One reason a declaration is refused: where (field path, line once known) and why."""

    loc: Loc
    message: str
    line: int | None = None

    def where(self) -> str:
        parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.loc]
        return "".join(parts).lstrip(".")

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message


class DeclarationError(SyncError):
    """A declaration that cannot be run; `problems` holds every reason, each with its line."""

    kind = "invalid-declaration"

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: p.line or 0)
        super().__init__(
            "\n".join(
                f"{source}:{p.line}: {p}" if p.line else f"{source}: {p}" for p in self.problems
            )
        )


# --- value checks ------------------------------------------------------------------------------
def identifier_problem(name: str) -> str | None:
    """Why `name` cannot be an unquoted Oracle table or column name, or None."""
    if not IDENTIFIER.match(name):
        return (
            f"{name!r} is not a lowercase SQL identifier (a-z, digits, _; not starting with a "
            "digit): other spellings are quoted by SQLAlchemy and then differ between databases"
        )
    if len(name) > IDENTIFIER_MAX:
        return f"{name!r} is {len(name)} characters; Oracle allows {IDENTIFIER_MAX}"
    if name.lower() in ORACLE_RESERVED:
        return f"{name!r} is an Oracle reserved word (it would need quoting)"
    return None


def _identifier(value: str) -> str:
    if (why := identifier_problem(value)) is not None:
        raise ValueError(why)
    return value


def _text(value: object) -> object:
    """A YAML scalar compared with column values (`value: 3`) as text."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _named(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return AfterValidator(check)


def _scalar(value: object) -> object:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return _text(value)


def _shorthand(value: object) -> object:
    return {"type": value} if isinstance(value, str) else value


Identifier = Annotated[str, AfterValidator(_identifier)]
SyncName = Annotated[str, _named(SYNC_NAME, "a sync name ([a-z][a-z0-9_-], at most 40)")]
RuleName = Annotated[str, _named(COMPENSATION_NAME, "a name ([a-z][a-z0-9_-], at most 64)")]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Text = Annotated[str, BeforeValidator(_text), Field(min_length=1)]
# A value a field may hold, as YAML spells it (`true`, `5`, `deleted`): kept as its text here,
# normalised by the field's declared type when the Spec is built (`_declared_value`).
Value = Annotated[str, BeforeValidator(_scalar), Field(min_length=1)]


# --- the YAML shape ----------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SoftDeleteIn(_Strict):
    field: Identifier
    value: Value


class LegacyIn(_Strict):
    table: Identifier
    key: Identifier
    changed: Identifier | None = None  # none: followed by full refresh
    soft_delete: SoftDeleteIn | None = None


class ServiceIn(_Strict):
    table: Identifier
    # The service database the commands use unless told (--service-db, STRANGLER_SERVICE_DB):
    # where the service itself keeps its data by default.
    database: Text | None = None
    origin: Identifier | None = None
    version: Identifier | None = None
    key_floor: Annotated[StrictInt, Field(gt=0)] | None = None
    key_ceiling: Annotated[StrictInt, Field(gt=0)] | None = None


class FieldIn(_Strict):
    type: Literal[TYPES]  # type: ignore[valid-type]
    nullable: bool | None = None
    service: Identifier | None = None
    length: Annotated[StrictInt, Field(ge=1, le=32_767)] | None = None
    precision: Annotated[StrictInt, Field(ge=1, le=38)] | None = None  # Oracle NUMBER's range
    scale: Annotated[StrictInt, Field(ge=0, le=38)] | None = None


class FollowIn(_Strict):
    interval: Duration = Follow.interval
    lookback: Duration = Follow.lookback
    safety_delay: Duration = Follow.safety_delay
    page_size: Annotated[StrictInt, Field(ge=1)] = Follow.page_size


class GateIn(_Strict):
    max_lag: Duration = Gate.max_lag
    confirmations: Annotated[StrictInt, Field(ge=1)] = Gate.confirmations
    reconcile_max_age: Duration = Gate.reconcile_max_age


class TypeByValueIn(_Strict):
    field: str
    value: Value
    type: Text


class EventsIn(_Strict):
    stream: Text | None = None
    outbox: Identifier | None = None
    key_field: Text = EventSource.key_field
    group: Text = EventSource.group
    synced_type: Text | None = None
    deleted_type: Text | None = None  # a refreshed table's hard delete (default synced_type)
    types_by_value: list[TypeByValueIn] = []

    @model_validator(mode="after")
    def _has_source(self) -> EventsIn:
        if self.stream is None and self.outbox is None:
            raise ValueError("name a `stream`, an `outbox`, or both")
        return self


class HooksIn(_Strict):
    payload: str | None = None
    migrate: str | None = None
    project: str | None = None


class WatchIn(_Strict):
    table: Identifier
    key: Identifier
    changed: Identifier
    when: dict[str, Value]

    @model_validator(mode="after")
    def _one_condition(self) -> WatchIn:
        if len(self.when) != 1:
            raise ValueError("`when` names exactly one column and its value, e.g. {state: x}")
        return self


class ActionIn(_Strict):
    call: str
    body: dict[str, str] | None = None


class CompensationIn(_Strict):
    name: RuleName
    watch: WatchIn
    match: str
    state: str
    actions: Annotated[dict[str, ActionIn], Field(min_length=1)]


class DeclarationIn(_Strict):
    sync: SyncName
    legacy: LegacyIn
    service: ServiceIn
    fields: Annotated[
        dict[str, Annotated[FieldIn, BeforeValidator(_shorthand)]], Field(min_length=1)
    ]
    directions: list[Literal[TO_SERVICE, TO_LEGACY]] = [TO_SERVICE]  # type: ignore[valid-type]
    # Default: newer-wins, or legacy-wins for a table without a change column.
    conflict: Literal[CONFLICT_RULES] | None = None  # type: ignore[valid-type]
    follow: FollowIn = FollowIn()
    gate: GateIn = GateIn()
    events: EventsIn | None = None
    hooks: HooksIn = HooksIn()
    compensate: list[CompensationIn] = []


# --- YAML, lines and pydantic's errors ---------------------------------------------------------
def _parse(text: str, source: str) -> Any:
    try:
        document = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise DeclarationError(source, [Problem((), f"YAML: {reason}", line)]) from None
    except YAMLError as exc:
        raise DeclarationError(source, [Problem((), f"YAML: {exc}")]) from None
    if not isinstance(document, dict):
        raise DeclarationError(source, [Problem((), "a declaration is a YAML mapping", 1)])
    return document


def _line_of(document: Any, loc: Loc) -> int | None:
    """1-based line of the deepest node of `loc` that the document has."""
    node, line = document, None
    for part in loc:
        lc = getattr(node, "lc", None)
        if isinstance(node, dict) and part in node:
            line = lc.key(part)[0] + 1 if lc is not None else line
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            line = lc.item(part)[0] + 1 if lc is not None else line
        else:
            break
        node = node[part]
    return line


def _lines(node: Any, prefix: str = "") -> Iterator[tuple[str, int]]:
    """(dotted path, line) of every key and list item under `node`."""
    lc = getattr(node, "lc", None)
    if isinstance(node, dict):
        items: Iterator[tuple[Any, Any]] = iter(node.items())
    elif isinstance(node, list):
        items = iter(enumerate(node))
    else:
        return
    for part, child in items:
        path = f"{prefix}{part}"
        if lc is not None:
            yield path, (lc.key(part) if isinstance(node, dict) else lc.item(part))[0] + 1
        yield from _lines(child, path + ".")


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model a pydantic error's location ends in (for an unknown key's hint)."""
    annotation: Any = DeclarationIn
    for part in loc:
        annotation = _unwrap(annotation, part)
    found = _unwrap(annotation, None)
    return found if isinstance(found, type) and issubclass(found, BaseModel) else None


def _unwrap(annotation: Any, part: str | int | None) -> Any:
    while True:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is Annotated:
            annotation = args[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next((a for a in args if a is not type(None)), None)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if part is None or not isinstance(part, str) or part not in annotation.model_fields:
                return annotation
            return annotation.model_fields[part].annotation
        elif origin is list and isinstance(part, int):
            return args[0]
        elif origin is dict and part is not None:
            return args[1]
        else:
            return annotation


def _hint(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _pydantic_problems(document: Any, exc: ValidationError) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if isinstance(p, str | int))
        message = str(error["msg"]).removeprefix("Value error, ")
        line_loc = loc
        if error["type"] == "extra_forbidden" and loc:
            model = _model_at(loc[:-1])
            known = model.model_fields if model is not None else ()
            message = f"unknown field {loc[-1]!r}{_hint(str(loc[-1]), known)}"
        elif error["type"] == "missing" and loc:
            message = f"missing field {loc[-1]!r}"
            line_loc = loc[:-1]
        elif error["type"] == "literal_error" and loc:
            expected = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
            message += _hint(str(error.get("input")), expected)
        problems.append(Problem(loc, message, _line_of(document, line_loc)))
    return problems


# --- cross-field rules -------------------------------------------------------------------------
class _Checker:
    """Collects the problems of a declaration whose fields are each well-formed."""

    def __init__(self, document: Any, declared: DeclarationIn) -> None:
        self.document = document
        self.d = declared
        self.problems: list[Problem] = []
        self.names = list(declared.fields)
        self.hooks_found: dict[str, Callable[..., Any]] = {}

    def add(self, loc: Loc, message: str, at: Loc | None = None) -> None:
        line = _line_of(self.document, loc if at is None else at)
        self.problems.append(Problem(loc, message, line))

    def field_named(self, loc: Loc, name: str, types_: tuple[str, ...] = ()) -> None:
        """`name` (at `loc`) must be a declared field, of one of `types_` when given."""
        if name not in self.d.fields:
            self.add(loc, f"no field {name!r} is declared{_hint(name, self.names)}")
        elif types_ and self.d.fields[name].type not in types_:
            kind = self.d.fields[name].type
            self.add(loc, f"field {name!r} is {kind}; it must be {' or '.join(types_)}")

    def value_fits(self, loc: Loc, name: str, value: str) -> None:
        """A declared value must be one the field's type can hold."""
        if name not in self.d.fields:
            return  # reported by field_named
        try:
            _declared_value(self.d, name, value)
        except (InvalidOperation, ValueError):
            self.add(loc, f"{value!r} is not a {self.d.fields[name].type} value")

    def run(self) -> list[Problem]:
        d = self.d
        self.fields()
        self.field_named(("legacy", "key"), d.legacy.key, INTEGER_TYPES)
        key = d.fields.get(d.legacy.key)
        if key is not None and key.nullable:
            self.add(("fields", d.legacy.key, "nullable"), "the key field cannot be nullable")
        if d.legacy.changed is None:
            self.refreshed()
        else:
            self.field_named(("legacy", "changed"), d.legacy.changed, ("timestamp",))
            changed = d.fields.get(d.legacy.changed)
            if changed is not None and changed.nullable:
                self.add(
                    ("fields", d.legacy.changed, "nullable"),
                    "the change field cannot be nullable (a row without a change time can be "
                    "neither followed nor compared)",
                )
        if d.legacy.soft_delete is not None:
            soft = d.legacy.soft_delete
            self.field_named(("legacy", "soft_delete", "field"), soft.field)
            self.value_fits(("legacy", "soft_delete", "value"), soft.field, soft.value)
        self.directions()
        self.events()
        self.hooks()
        for index, rule in enumerate(d.compensate):
            self.compensation(index, rule)
        return self.problems

    def fields(self) -> None:
        seen: dict[str, str] = {}
        for name, spec in self.d.fields.items():
            if (why := identifier_problem(name)) is not None:
                self.add(("fields", name), why)
            if spec.type == "decimal" and (spec.precision is None or spec.scale is None):
                self.add(("fields", name), "a decimal needs `precision` and `scale`")
            if spec.type == "decimal" and (spec.scale or 0) > (spec.precision or 38):
                self.add(("fields", name, "scale"), "the scale exceeds the precision")
            if spec.type == "string" and spec.length is None:
                self.add(("fields", name), "a string needs `length`")
            for option in ("precision", "scale", "length"):
                wanted = "decimal" if option != "length" else "string"
                if getattr(spec, option) is not None and spec.type != wanted:
                    self.add(("fields", name, option), f"only a {wanted} has a {option}")
            column = spec.service or name
            if column in seen:
                self.add(("fields", name), f"service column {column!r} is also {seen[column]!r}")
            seen[column] = name
        for part in ("origin", "version"):
            own = getattr(self.d.service, part)
            if own is not None and own in seen:
                self.add(("service", part), f"{own!r} is also the column of field {seen[own]!r}")
            elif own is not None and own in self.d.fields:
                # Service rows are read with fields labelled by their legacy names, beside the
                # bookkeeping columns: one name for two columns would be ambiguous.
                self.add(("service", part), f"{own!r} is also the legacy name of a field")

    def refreshed(self) -> None:
        """A table without a change column is followed by full refresh (module docstring)."""
        d, why = self.d, "a table without a change column (`legacy.changed`)"
        if TO_LEGACY in d.directions:
            self.add(("directions",), f"{why} moves to the service only: to-legacy guards by it")
        if d.conflict not in (None, LEGACY_WINS):
            self.add(
                ("conflict",),
                f"{why} is the legacy's copy, refreshed whole (rows it lacks are deleted): it "
                "takes legacy-wins",
            )
        for bound in ("key_floor", "key_ceiling"):
            if getattr(d.service, bound) is not None:
                self.add(
                    ("service", bound),
                    f"{why} is refreshed whole: the service has no keys of its own there",
                )
        if d.compensate:
            self.add(("compensate",), f"{why} cannot be compensated: its cursor is that column")
        if d.gate.max_lag <= d.follow.interval:
            self.add(
                ("gate", "max_lag"),
                f"{why} is refreshed every {d.follow.interval:g}s (follow.interval): a max_lag "
                "of at most that never lets the gate pass",
            )

    def directions(self) -> None:
        d = self.d
        if len(set(d.directions)) != len(d.directions):
            self.add(("directions",), "a direction is named twice")
        if TO_LEGACY not in d.directions:
            return
        at = ("directions",)
        reasons = {
            "origin": "the column saying who wrote a row last ('legacy' or 'service')",
            "version": "the column the service increments on every write",
        }
        for column, reason in reasons.items():
            if getattr(d.service, column) is None:
                self.add(("service", column), f"to-legacy needs {reason}", ("service",))
        if d.events is None:
            self.add(("events",), "to-legacy needs an event source (a stream or an outbox)", at)

    def events(self) -> None:
        if self.d.events is None:
            return
        for index, item in enumerate(self.d.events.types_by_value):
            self.field_named(("events", "types_by_value", index, "field"), item.field)
            self.value_fits(("events", "types_by_value", index, "value"), item.field, item.value)

    def hooks(self) -> None:
        for name in ("payload", "migrate", "project"):
            target = getattr(self.d.hooks, name)
            if target is None:
                continue
            loc = ("hooks", name)
            if name == "payload" and self.d.events is None:
                self.add(loc, "a payload hook shapes events: declare `events` too")
            hook = self.imported(loc, target)
            if hook is not None:
                self.hooks_found[name] = hook

    def imported(self, loc: Loc, target: str) -> Callable[..., Any] | None:
        """The callable a "module:function" string names, or None with the problem added."""
        if not HOOK.match(target):
            self.add(loc, f"{target!r} is not 'module:function'")
            return None
        module_name, _, attribute = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # an import runs arbitrary code: report whatever it raised
            self.add(loc, f"cannot import {module_name!r}: {type(exc).__name__}: {exc}")
            return None
        hook = getattr(module, attribute, None)
        if hook is None:
            self.add(loc, f"module {module_name!r} has no {attribute!r}")
            return None
        if not callable(hook):
            self.add(loc, f"{target!r} is not callable")
            return None
        return hook  # type: ignore[no-any-return]

    def compensation(self, index: int, rule: CompensationIn) -> None:
        at: Loc = ("compensate", index)
        if [r.name for r in self.d.compensate].index(rule.name) != index:
            self.add((*at, "name"), f"compensation {rule.name!r} is declared twice")
        for column in rule.watch.when:
            if (why := identifier_problem(column)) is not None:
                self.add((*at, "watch", "when", column), why)
        self.field_named((*at, "match"), rule.match)
        self.field_named((*at, "state"), rule.state)
        for state, action in rule.actions.items():
            where: Loc = (*at, "actions", state)
            method, _, path = action.call.partition(" ")
            if method not in METHODS:
                self.add((*where, "call"), f"{method!r}: a call is one of {', '.join(METHODS)}")
            if not path.startswith("/") or " " in path:
                self.add((*where, "call"), "a call is 'METHOD /path', e.g. 'POST /api/v1/x/{id}'")
            self.placeholders((*where, "call"), path)
            for name, value in (action.body or {}).items():
                self.placeholders((*where, "body", name), value)

    def placeholders(self, loc: Loc, template: str) -> None:
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as exc:
            self.add(loc, f"{template!r}: {exc}")
            return
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if spec or conversion or not name:
                self.add(loc, f"{template!r}: a placeholder is a field name, e.g. {{id}}")
            elif name not in self.d.fields:
                self.add(loc, f"placeholder {{{name}}} names no field{_hint(name, self.names)}")


# --- the Spec ----------------------------------------------------------------------------------
def _field(name: str, f: FieldIn, d: DeclarationIn) -> SpecField:
    never_null = name in (d.legacy.key, d.legacy.changed)
    return SpecField(
        name=name,
        type=f.type,
        service=f.service or name,
        nullable=f.nullable if f.nullable is not None else not never_null,
        length=f.length,
        precision=f.precision,
        scale=f.scale,
    )


def _declared_value(d: DeclarationIn, name: str, value: str) -> str:
    """A declared value as the engine compares it: normalised like the field's own values (a
    decimal at its scale, a boolean as true/false), so `5` matches a stored 5.00."""
    from datasync.rows import normalise_value

    declared = d.fields[name]
    field_ = _field(name, declared, d)
    if declared.type == "decimal":
        return normalise_value(Decimal(value), field_) or value
    if declared.type in INTEGER_TYPES:
        return normalise_value(int(value), field_) or value
    if declared.type == "boolean":
        return normalise_value(value.lower() in ("true", "1", "yes"), field_) or value
    return value


def _spec(
    d: DeclarationIn, source: str | Path | None, lines: dict[str, int], hooks: dict[str, Any]
) -> Spec:
    fields = tuple(_field(name, f, d) for name, f in d.fields.items())
    events = None
    if d.events is not None:
        e = d.events
        events = EventSource(
            stream=e.stream,
            outbox=e.outbox,
            key_field=e.key_field,
            group=e.group,
            synced_type=e.synced_type,
            deleted_type=e.deleted_type,
            types_by_value=tuple(
                (t.field, _declared_value(d, t.field, t.value), t.type) for t in e.types_by_value
            ),
            payload=d.hooks.payload,
        )
    compensations = tuple(
        Compensation(
            name=rule.name,
            watch=Watch(
                table=rule.watch.table,
                key=rule.watch.key,
                changed=rule.watch.changed,
                column=next(iter(rule.watch.when)),
                value=next(iter(rule.watch.when.values())),
            ),
            match=rule.match,
            state_field=rule.state,
            actions={
                state: Action(
                    method=action.call.partition(" ")[0],
                    path=action.call.partition(" ")[2],
                    body=dict(action.body) if action.body is not None else None,
                )
                for state, action in rule.actions.items()
            },
        )
        for rule in d.compensate
    )
    soft = d.legacy.soft_delete
    return Spec(
        name=d.sync,
        legacy_table=d.legacy.table,
        service_table=d.service.table,
        service_database=d.service.database,
        key=d.legacy.key,
        changed=d.legacy.changed,
        fields=fields,
        directions=frozenset(d.directions),
        conflict=d.conflict or (NEWER_WINS if d.legacy.changed else LEGACY_WINS),
        origin_column=d.service.origin,
        version_column=d.service.version,
        soft_delete=(soft.field, _declared_value(d, soft.field, soft.value))
        if soft is not None
        else None,
        key_floor=d.service.key_floor,
        key_ceiling=d.service.key_ceiling,
        events=events,
        compensations=compensations,
        gate=Gate(d.gate.max_lag, d.gate.confirmations, d.gate.reconcile_max_age),
        follow=Follow(
            d.follow.interval, d.follow.lookback, d.follow.safety_delay, d.follow.page_size
        ),
        source=Path(source) if source is not None else None,
        line_of=lines,
        hooks=hooks,
    )


def _plain(node: Any) -> Any:
    """ruamel's round-trip containers and scalars as plain Python values."""
    if isinstance(node, Mapping):
        return {str(k) if isinstance(k, str) else k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(item) for item in node]
    if isinstance(node, bool | float | None):
        return node
    if isinstance(node, int):
        return int(node)
    return str(node) if isinstance(node, str) else node


def loads(text: str, source: str | Path | None = None) -> Spec:
    """Parse and check a declaration; raise DeclarationError listing every problem."""
    name = str(source) if source is not None else "<declaration>"
    document = _parse(text, name)
    try:
        declared = DeclarationIn.model_validate(_plain(document))
    except ValidationError as exc:
        raise DeclarationError(name, _pydantic_problems(document, exc)) from None
    checker = _Checker(document, declared)
    problems = checker.run()
    if problems:
        raise DeclarationError(name, problems)
    return _spec(declared, source, dict(_lines(document)), checker.hooks_found)


def load(path: str | Path) -> Spec:
    """The `Spec` a declaration file describes; DeclarationError names every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DeclarationError(
            str(path), [Problem((), f"cannot read: {exc.strerror or exc}")]
        ) from None
    except UnicodeDecodeError:
        raise DeclarationError(str(path), [Problem((), "not UTF-8 text")]) from None
    return loads(text, path)


__all__ = ["DeclarationError", "Problem", "identifier_problem", "load", "loads", "parse_duration"]
