"""`strangler sync check` and the command line's handling of declarations: a valid one says
what it moves, an invalid one is refused with every problem on its own line (file and line),
whatever the command; `compensate` says what it needs instead of failing later."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datasync.cli import DEFAULT_SYNC, app
from datasync.cli_support import load_spec

runner = CliRunner()

BROKEN = """\
sync: stock
legacy: {table: stock_items, key: item_no, changed: modified_at}
service: {table: stock}
fields:
  item_no: bigint
  modified_at: {type: string, length: 30}
  price: decimal
"""


def test_the_shipped_declaration_is_valid_and_says_what_it_moves() -> None:
    done = runner.invoke(app, ["check", "--sync", str(DEFAULT_SYNC)])
    assert done.exit_code == 0, done.output
    assert "sync payments (" in done.stdout
    assert "): valid" in done.stdout
    assert "moves    to-legacy, to-service; conflicts: newer-wins" in done.stdout
    assert "compensate cancelled_order_with_live_payment: when orders.state = cancelled" in (
        done.stdout
    )
    as_json = json.loads(runner.invoke(app, ["check", "--json"]).stdout)
    assert as_json["valid"] is True
    (payments,) = as_json["syncs"]
    assert (payments["sync"], payments["fields"], payments["renamed"]) == ("payments", 15, {})


def test_an_invalid_declaration_is_refused_with_every_problem_and_its_line(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "stock.yaml"
    broken.write_text(BROKEN)
    done = runner.invoke(app, ["check", "--sync", str(broken)])
    assert done.exit_code == 1
    assert done.stderr.splitlines() == [
        f"error: {broken}:2: legacy.changed: field 'modified_at' is string; it must be timestamp",
        f"error: {broken}:7: fields.price: a decimal needs `precision` and `scale`",
    ]
    # Every other command refuses it the same way before touching a database.
    status = runner.invoke(app, ["status", "--sync", str(broken)])
    assert status.exit_code == 1
    assert len(status.stderr.splitlines()) == 2
    assert "Traceback" not in status.output


def test_a_missing_declaration_is_one_line(tmp_path: Path) -> None:
    done = runner.invoke(app, ["check", "--sync", str(tmp_path / "absent.yaml")])
    assert done.exit_code == 1
    assert "absent.yaml" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_compensate_asks_for_the_token_it_calls_the_service_with(tmp_path: Path) -> None:
    done = runner.invoke(
        app,
        ["compensate", "--once", "--service-db", f"sqlite:///{tmp_path}/s.db"],
        env={"STRANGLER_SERVICE_TOKEN": ""},
    )
    assert done.exit_code == 1
    assert done.stderr.startswith("error: compensate needs --service-token")


def test_an_event_missing_a_declared_field_is_rejected_not_written_as_null() -> None:
    from datasync.to_legacy import MalformedEvent, payload_values

    spec = load_spec(DEFAULT_SYNC)
    row = {f.service: None for f in spec.fields}
    row.update(
        id=1,
        order_id=2,
        user_id=3,
        amount="4.00",
        currency="EUR",
        method="card",
        status="captured",
        refunded_amount="0.00",
        created_at="2026-12-06T10:00:00Z",
        updated_at="2026-12-06T10:00:00Z",
    )
    assert payload_values(spec, row)["amount"] == Decimal("4.00")
    without = {k: v for k, v in row.items() if k != "card_brand"}
    with pytest.raises(MalformedEvent, match="no field 'card_brand'"):
        payload_values(spec, without)
    with pytest.raises(MalformedEvent, match="'currency' is null"):
        payload_values(spec, {**row, "currency": None})
    with pytest.raises(MalformedEvent, match="'amount' is not a decimal"):
        payload_values(spec, {**row, "amount": "lots"})


def test_a_declaration_names_the_service_database_its_commands_default_to() -> None:
    from datasync.cli_support import default_service_db
    from datasync.declaration import loads

    text = BROKEN.replace("modified_at: {type: string, length: 30}", "modified_at: timestamp")
    text = text.replace("  price: decimal\n", "")
    assert default_service_db(loads(text)) == "sqlite:///./var/stock.db"  # from the sync's name
    named = text.replace("service: {table: stock}", "service: {table: stock, database: pg://x}")
    assert default_service_db(loads(named)) == "pg://x"
    catalog = Path(__file__).resolve().parents[2] / "services" / "catalog" / "sync"
    for declaration in ("products.yaml", "categories.yaml"):  # beside the catalog's own data
        assert default_service_db(load_spec(catalog / declaration)) == "sqlite:///./var/catalog.db"


def test_a_shipped_declaration_is_found_by_its_package_path_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    done = runner.invoke(app, ["check", "--sync", "services/catalog/sync/categories.yaml"])
    assert done.exit_code == 0, done.output
    assert "sync catalog-categories (" in done.stdout
    (tmp_path / "services" / "catalog" / "sync").mkdir(parents=True)
    (tmp_path / "services" / "catalog" / "sync" / "categories.yaml").write_text(BROKEN)
    done = runner.invoke(app, ["check", "--sync", "services/catalog/sync/categories.yaml"])
    assert done.exit_code == 1  # a file in the working directory comes first
    missing = runner.invoke(app, ["status", "--sync", "services/nothing.yaml"])
    assert "error: no sync declaration at services/nothing.yaml" in missing.output
