"""Sync declarations → Spec: the payment table's, another table's, and every rule refused with
its file, line and reason."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.dialects import oracle
from sqlalchemy.dialects.oracle import base as oracle_base
from sqlalchemy.schema import CreateTable

import datasync.declaration
from datasync.declaration import (
    IDENTIFIER,
    IDENTIFIER_MAX,
    ORACLE_RESERVED,
    DeclarationError,
    load,
    loads,
    parse_duration,
)
from datasync.spec import TO_LEGACY, TO_SERVICE, Spec

ROOT = Path(__file__).resolve().parents[2]
PAYMENTS = ROOT / "services" / "payment" / "sync" / "payments.yaml"
HOOK_MODULE = "services.payment.sync.hooks"


def payload(row: Any) -> Any:
    """A payload hook for the test declaration."""
    return row


PRODUCTS = """\
sync: products
legacy:
  table: products
  key: id
  changed: updated_at
  soft_delete: {field: state, value: deleted}
service:
  table: catalogue_items
  origin: origin
  version: row_version
fields:
  id: integer
  sku: {type: string, length: 32, nullable: false}
  title: text
  price: {type: decimal, precision: 10, scale: 2}
  in_stock: boolean
  state: {type: string, length: 12}
  launched_on: date
  updated_at: {type: timestamp, nullable: false}
  category_id: {type: bigint, service: category}
directions: [to-service, to-legacy]
conflict: legacy-wins
follow: {interval: 250ms, lookback: 2m, safety_delay: 0.5, page_size: 500}
gate: {max_lag: 10s, confirmations: 3, reconcile_max_age: 1h}
events:
  outbox: catalogue_outbox
hooks: {payload: "tests.datasync.test_declaration:payload"}
compensate:
  - name: closed_category
    watch: {table: categories, key: id, changed: updated_at, when: {state: closed}}
    match: category_id
    state: state
    actions:
      active: {call: "PATCH /api/v1/products/{id}", body: {note: "category {category_id}"}}
"""


@pytest.fixture
def payment_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """The payment declaration's payload hook: the real one where it exists, else a stand-in,
    so these tests check the declaration itself."""
    if importlib.util.find_spec(HOOK_MODULE) is None:
        stand_in = types.ModuleType(HOOK_MODULE)
        stand_in.payload = payload  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, HOOK_MODULE, stand_in)


def todays_fields() -> tuple[str, ...]:
    """The payment sync's field order before the declaration (the row hash's order): the
    monolith's own `payments` columns, which the sync's hard-coded shape listed in order."""
    from legacy_monolith.models import Payment

    return tuple(column.name for column in Payment.__table__.columns)


def sql_identifiers(spec: Spec) -> list[str]:
    """Every table and column name a Spec makes the engine write into SQL."""
    names = [spec.legacy_table, spec.service_table]
    names += [name for f in spec.fields for name in (f.name, f.service)]
    names += [n for n in (spec.origin_column, spec.version_column) if n is not None]
    if spec.events is not None and spec.events.outbox is not None:
        names.append(spec.events.outbox)
    for rule in spec.compensations:
        names += [rule.watch.table, rule.watch.key, rule.watch.changed, rule.watch.column]
    return names


# --- declarations that load ----------------------------------------------------------------------
@pytest.mark.usefixtures("payment_hook")
def test_the_payment_declaration_keeps_todays_fields_in_order() -> None:
    spec = load(PAYMENTS)
    assert spec.names == todays_fields()
    assert spec.name == "payments"
    assert (spec.legacy_table, spec.service_table, spec.key, spec.changed) == (
        "payments",
        "payments",
        "id",
        "updated_at",
    )
    assert spec.directions == frozenset({TO_SERVICE, TO_LEGACY})
    assert (spec.origin_column, spec.version_column) == ("origin", "row_version")
    assert spec.key_floor == 3_000_000_000_000_000
    assert spec.source == PAYMENTS
    assert callable(spec.hooks["payload"])


@pytest.mark.usefixtures("payment_hook")
def test_the_payment_declaration_matches_the_legacy_schema() -> None:
    from legacy_monolith.models import Payment

    spec = load(PAYMENTS)
    for column in Payment.__table__.columns:
        declared = spec.legacy().c[column.name]
        assert declared.nullable == column.nullable, column.name
        assert repr(declared.type) == repr(column.type) or column.name.endswith("_at"), column.name
    assert (spec.field("amount").precision, spec.field("amount").scale) == (12, 2)


@pytest.mark.usefixtures("payment_hook")
def test_the_payment_declaration_events_and_compensation() -> None:
    spec = load(PAYMENTS)
    assert spec.events is not None
    assert (spec.events.stream, spec.events.outbox, spec.events.key_field) == (
        "payment:events",
        "outbox",
        "payment_id",
    )
    assert spec.events.synced_type == "payment.synced"
    assert spec.events.types_by_value == (("status", "voided", "payment.voided"),)
    assert spec.events.payload == f"{HOOK_MODULE}:payload"
    (rule,) = spec.compensations
    assert rule.name == "cancelled_order_with_live_payment"
    assert (rule.watch.table, rule.watch.column, rule.watch.value) == (
        "orders",
        "state",
        "cancelled",
    )
    assert (rule.match, rule.state_field) == ("order_id", "status")
    assert set(rule.actions) == {"authorized", "captured", "partially_refunded"}
    assert rule.actions["authorized"].path == "/api/v1/payments/{id}/void"
    assert rule.actions["partially_refunded"].body == {"reason": "order {order_id} cancelled"}


def test_another_table_loads() -> None:
    spec = loads(PRODUCTS, "products.yaml")
    assert spec.names[:3] == ("id", "sku", "title")
    assert spec.service_name("category_id") == "category"
    assert spec.field("id").nullable is False
    assert spec.field("title").nullable is True
    assert spec.field("sku").nullable is False
    assert spec.soft_delete == ("state", "deleted")
    assert spec.conflict == "legacy-wins"
    assert (spec.follow.interval, spec.follow.lookback, spec.follow.safety_delay) == (
        0.25,
        120.0,
        0.5,
    )
    assert (spec.gate.max_lag, spec.gate.confirmations, spec.gate.reconcile_max_age) == (
        10.0,
        3,
        3600.0,
    )
    assert spec.hooks["payload"] is payload
    assert spec.compensations[0].actions["active"].method == "PATCH"
    assert str(spec.service_select().compile()).startswith("SELECT catalogue_items.id")


def test_line_of_maps_dotted_paths_to_lines() -> None:
    spec = loads(PRODUCTS, "products.yaml")
    lines = PRODUCTS.splitlines()
    assert lines[spec.line_of["fields.price"] - 1].startswith("  price:")
    assert lines[spec.line_of["compensate.0.match"] - 1].strip() == "match: category_id"
    assert spec.line_of["sync"] == 1


def test_defaults_of_a_minimal_declaration() -> None:
    spec = loads(
        "sync: notes\nlegacy: {table: notes, key: id, changed: changed_at}\n"
        "service: {table: notes}\nfields: {id: bigint, changed_at: timestamp}\n"
    )
    assert spec.directions == frozenset({TO_SERVICE})
    assert spec.conflict == "newer-wins"
    assert (spec.events, spec.compensations, spec.hooks) == (None, (), {})
    assert spec.source is None


@pytest.mark.usefixtures("payment_hook")
def test_the_module_docstring_example_loads() -> None:
    doc = datasync.declaration.__doc__ or ""
    block = doc.split("as the example:\n\n", 1)[1].split("\n\n", 1)[0]
    spec = loads(re.sub(r"(?m)^    ", "", block), "docstring")
    assert spec.service_name("card_last4") == "last4"


# --- every rule refused with its file, line and reason ------------------------------------------
def edit(old: str, new: str, here: str | None = None, text: str = PRODUCTS) -> str:
    """`text` with `old` replaced by `new`, and the line holding `here` (default: `new`)
    marked `# @here`: the line the problem must be reported on."""
    assert old in text, old
    text = text.replace(old, new, 1)
    needle = here if here is not None else new.strip().splitlines()[0]
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if needle in line)
    lines[index] += "  # @here"
    return "\n".join(lines) + "\n"


NO_EVENTS = PRODUCTS.replace("events:\n  outbox: catalogue_outbox\n", "").replace(
    'hooks: {payload: "tests.datasync.test_declaration:payload"}\n', ""
)
REFUSED = [
    pytest.param(edit("sync: products", "sync: Products"), "sync", "not a sync name", id="name"),
    pytest.param(
        edit("  changed: updated_at\n", "  chnged: updated_at\n"),
        "legacy.chnged",
        "unknown field 'chnged' (did you mean 'changed'?)",
        id="unknown-key-with-hint",
    ),
    pytest.param(
        edit("page_size: 500", "pagesize: 500"),
        "follow.pagesize",
        "did you mean 'page_size'?",
        id="unknown-follow-key",
    ),
    pytest.param(
        edit("  key: id\n", "  key: ident\n"),
        "legacy.key",
        "no field 'ident' is declared",
        id="key-undeclared",
    ),
    pytest.param(
        edit("  key: id\n", "  key: [id, sku]\n"), "legacy.key", "valid string", id="two-keys"
    ),
    pytest.param(
        edit("  key: id\n", "  key: sku\n"),
        "legacy.key",
        "field 'sku' is string; it must be bigint or integer",
        id="key-not-integer",
    ),
    pytest.param(
        edit("  id: integer", "  id: {type: integer, nullable: true}"),
        "fields.id.nullable",
        "the key field cannot be nullable",
        id="key-nullable",
    ),
    pytest.param(
        edit("  changed: updated_at\n", "  changed: launched_on\n"),
        "legacy.changed",
        "field 'launched_on' is date; it must be timestamp",
        id="changed-not-timestamp",
    ),
    pytest.param(
        edit("  in_stock: boolean", "  in-stock: boolean"),
        "fields.in-stock",
        "not a lowercase SQL identifier",
        id="field-not-identifier",
    ),
    pytest.param(
        edit("  in_stock: boolean", "  in_stock_at_the_main_warehouses: boolean"),
        "fields.in_stock_at_the_main_warehouses",
        "is 31 characters; Oracle allows 30",
        id="field-name-too-long",
    ),
    pytest.param(
        edit("  in_stock: boolean", "  level: boolean"),
        "fields.level",
        "'level' is an Oracle reserved word",
        id="field-reserved-word",
    ),
    pytest.param(
        edit("  table: products", "  table: order"),
        "legacy.table",
        "'order' is an Oracle reserved word",
        id="table-reserved-word",
    ),
    pytest.param(
        edit("  table: catalogue_items", "  table: catalogue_items_of_the_service_x"),
        "service.table",
        "Oracle allows 30",
        id="table-too-long",
    ),
    pytest.param(
        edit("  table: catalogue_items", "  table: 2items"),
        "service.table",
        "not a lowercase SQL identifier",
        id="table-not-identifier",
    ),
    pytest.param(
        edit("  in_stock: boolean", "  in_stock: bool"),
        "fields.in_stock.type",
        "(did you mean 'boolean'?)",
        id="unknown-type",
    ),
    pytest.param(
        edit("{type: decimal, precision: 10, scale: 2}", "{type: decimal}", "price:"),
        "fields.price",
        "a decimal needs `precision` and `scale`",
        id="decimal-unsized",
    ),
    pytest.param(
        edit("{type: string, length: 32, nullable: false}", "{type: string}", "sku:"),
        "fields.sku",
        "a string needs `length`",
        id="string-without-length",
    ),
    pytest.param(
        edit("  origin: origin\n", "", "service:"),
        "service.origin",
        "to-legacy needs the column saying who wrote a row last",
        id="to-legacy-without-origin",
    ),
    pytest.param(
        edit("  version: row_version\n", "", "service:"),
        "service.version",
        "to-legacy needs the column the service increments",
        id="to-legacy-without-version",
    ),
    pytest.param(
        edit("directions:", "directions:", text=NO_EVENTS),
        "events",
        "to-legacy needs an event source (a stream or an outbox)",
        id="to-legacy-without-events",
    ),
    pytest.param(
        edit("  outbox: catalogue_outbox\n", "  group: sync\n", "events:"),
        "events",
        "name a `stream`, an `outbox`, or both",
        id="events-without-source",
    ),
    pytest.param(
        edit("    match: category_id", "    match: category"),
        "compensate[0].match",
        "no field 'category' is declared",
        id="match-undeclared",
    ),
    pytest.param(
        edit("    state: state", "    state: status"),
        "compensate[0].state",
        "no field 'status' is declared",
        id="state-undeclared",
    ),
    pytest.param(
        edit('"PATCH /api/v1/products/{id}"', '"GET /api/v1/products/{id}"'),
        "compensate[0].actions.active.call",
        "'GET': a call is one of POST, PUT, PATCH, DELETE",
        id="action-method",
    ),
    pytest.param(
        edit("/products/{id}", "/products/{ident}"),
        "compensate[0].actions.active.call",
        "placeholder {ident} names no field",
        id="path-placeholder",
    ),
    pytest.param(
        edit("category {category_id}", "category {category}"),
        "compensate[0].actions.active.body.note",
        "placeholder {category} names no field",
        id="body-placeholder",
    ),
    pytest.param(
        edit("test_declaration:payload", "nowhere:payload"),
        "hooks.payload",
        "cannot import 'tests.datasync.nowhere'",
        id="hook-module-missing",
    ),
    pytest.param(
        edit("test_declaration:payload", "test_declaration:absent"),
        "hooks.payload",
        "has no 'absent'",
        id="hook-function-missing",
    ),
    pytest.param(
        edit("test_declaration:payload", "test_declaration.payload"),
        "hooks.payload",
        "is not 'module:function'",
        id="hook-not-module-function",
    ),
    pytest.param(
        edit("interval: 250ms", "interval: soon"),
        "follow.interval",
        "'soon' is not a duration",
        id="bad-duration",
    ),
    pytest.param(
        edit("max_lag: 10s", "max_lag: 0s"),
        "gate.max_lag",
        "greater than zero",
        id="zero-duration",
    ),
    pytest.param(
        edit("conflict: legacy-wins", "conflict: legacy-win"),
        "conflict",
        "(did you mean 'legacy-wins'?)",
        id="conflict-rule",
    ),
    pytest.param(
        edit("[to-service, to-legacy]", "[to-service, backwards]"),
        "directions[1]",
        "'to-service' or 'to-legacy'",
        id="direction",
    ),
    pytest.param(
        edit("{field: state, value: deleted}", "{field: gone, value: deleted}"),
        "legacy.soft_delete.field",
        "no field 'gone' is declared",
        id="soft-delete-field",
    ),
    pytest.param(
        edit("service: category}", "service: sku}"),
        "fields.category_id",
        "service column 'sku' is also 'sku'",
        id="service-column-twice",
    ),
    pytest.param(
        edit("when: {state: closed}", "when: {state: closed, kind: x}"),
        "compensate[0].watch",
        "exactly one column",
        id="watch-two-conditions",
    ),
]


def marked_line(text: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if "# @here" in line)


@pytest.mark.parametrize(("text", "where", "reason"), REFUSED)
def test_every_rule_is_refused_with_file_line_and_reason(
    text: str, where: str, reason: str
) -> None:
    with pytest.raises(DeclarationError) as caught:
        loads(text, "products.yaml")
    line = marked_line(text)
    reported = str(caught.value).splitlines()
    assert any(
        entry.startswith(f"products.yaml:{line}: {where}: ") and reason in entry
        for entry in reported
    ), reported
    assert caught.value.kind == "invalid-declaration"


def test_every_problem_is_reported_at_once() -> None:
    text = PRODUCTS.replace("sync: products", "sync: Products").replace(
        "interval: 250ms", "interval: soon"
    )
    with pytest.raises(DeclarationError) as caught:
        loads(text, "products.yaml")
    assert [p.where() for p in caught.value.problems] == ["sync", "follow.interval"]


@pytest.mark.usefixtures("payment_hook")
def test_a_missing_hook_of_the_payment_declaration_is_reported_with_its_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, HOOK_MODULE, None)  # the import fails, as if absent
    with pytest.raises(DeclarationError) as caught:
        load(PAYMENTS)
    # Both hooks live in that module: each is reported on its own line.
    payload, migrate = caught.value.problems
    text = PAYMENTS.read_text().splitlines()
    assert (payload.where(), migrate.where()) == ("hooks.payload", "hooks.migrate")
    for problem in (payload, migrate):
        assert HOOK_MODULE in text[(problem.line or 0) - 1]
    assert str(caught.value).startswith(f"{PAYMENTS}:{payload.line}: hooks.payload: ")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("sync: x\nlegacy:\n  table: [a, b\nservice: {}\n", 4, id="open-list"),
        pytest.param("sync: x\nlegacy: {}\nlegacy: {}\n", 3, id="duplicate-key"),
        pytest.param("sync: x\n  legacy: y\n", 2, id="bad-indent"),
    ],
)
def test_a_yaml_syntax_error_reports_its_line(text: str, line: int) -> None:
    with pytest.raises(DeclarationError) as caught:
        loads(text, "bad.yaml")
    assert str(caught.value).startswith(f"bad.yaml:{line}: YAML: ")


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(DeclarationError, match=r"^x.yaml:1: a declaration is a YAML mapping$"):
        loads("- sync\n", "x.yaml")


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeclarationError, match="cannot read"):
        load(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("1s", 1.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        (3, 3.0),
        (0.5, 0.5),
        ("15", 15.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "-1s", "1d", 0, "0ms", True, float("inf")])
def test_durations_refused(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


# --- Oracle identifiers --------------------------------------------------------------------------
@pytest.mark.usefixtures("payment_hook")
def test_every_identifier_of_the_payment_declaration_suits_oracle() -> None:
    spec = load(PAYMENTS)
    for name in sql_identifiers(spec):
        assert IDENTIFIER.match(name), name
        assert len(name) <= IDENTIFIER_MAX == 30, name
        assert name.lower() not in ORACLE_RESERVED, name
        assert name.upper() not in oracle_base.RESERVED_WORDS, name


@pytest.mark.usefixtures("payment_hook")
def test_the_payment_tables_compile_for_oracle_unquoted() -> None:
    spec = load(PAYMENTS)
    for table in (spec.legacy(), spec.service()):
        ddl = str(CreateTable(table).compile(dialect=oracle.dialect()))
        assert '"' not in ddl, ddl


def test_upper_case_names_are_refused_before_they_are_quoted_differently() -> None:
    with pytest.raises(DeclarationError) as caught:
        loads(PRODUCTS.replace("table: products", "table: PRODUCTS", 1), "products.yaml")
    assert "'PRODUCTS' is not a lowercase SQL identifier" in str(caught.value)


def test_the_change_field_is_never_nullable() -> None:
    spec = loads(PRODUCTS, "products.yaml")
    assert spec.field(spec.changed).nullable is False
    with pytest.raises(DeclarationError) as caught:
        loads(
            PRODUCTS.replace(
                "  updated_at: {type: timestamp, nullable: false}",
                "  updated_at: {type: timestamp, nullable: true}",
            ),
            "products.yaml",
        )
    assert "the change field cannot be nullable" in str(caught.value)


def test_declared_values_are_compared_as_the_fields_own_values() -> None:
    """`value: false` on a boolean and `value: 5` on a decimal match what the engine reads
    back (`false`, `5.00`), not the YAML's spelling; a value the type cannot hold is refused."""
    text = PRODUCTS.replace(
        "  outbox: catalogue_outbox\n",
        "  outbox: catalogue_outbox\n  types_by_value:\n"
        "    - {field: in_stock, value: false, type: product.sold_out}\n"
        "    - {field: price, value: 5, type: product.five}\n",
    )
    spec = loads(text, "products.yaml")
    assert spec.events is not None
    assert spec.events.types_by_value == (
        ("in_stock", "false", "product.sold_out"),
        ("price", "5.00", "product.five"),
    )
    with pytest.raises(DeclarationError) as caught:
        loads(text.replace("value: 5,", "value: five,"), "products.yaml")
    assert "'five' is not a decimal value" in str(caught.value)
