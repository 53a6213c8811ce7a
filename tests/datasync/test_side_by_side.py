"""Two syncs in ONE service database (the payment declaration and the inventory one): each has
its own checkpoints, lag, handled events, reconcile runs and cutover gate, and `status` shows
both. The payment tables are made from its declaration's field list; its service code is not
used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Table
from typer.testing import CliRunner

from datasync.backfill import backfill
from datasync.cli import DEFAULT_SYNC, app
from datasync.declaration import load
from datasync.incremental import follow_once
from datasync.reconcile import reconcile
from datasync.status import cutover_check, gather_status, status_lines
from datasync.to_legacy import to_legacy_once
from tests.datasync.tables.declared import create_declared, hours_ago, insert_rows, sample
from tests.datasync.tables.stock import (
    STOCK_YAML,
    Databases,
    StockTables,
    create_stock,
    insert_legacy,
    postgres_schemas,
    service_write,
    sqlite_databases,
    stock_row,
    update_legacy,
)

PAYMENTS = load(DEFAULT_SYNC)
STOCK = load(STOCK_YAML)
PAYMENT_VALUES = {"currency": "EUR", "method": "card", "status": "captured", "card_last4": "4242"}


@pytest.fixture(scope="module")
def postgres_database(postgres_databases: Callable[[], str]) -> str:
    return postgres_databases()


@pytest.fixture(params=["sqlite", "postgres"])
def dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    if request.param == "postgres":
        made = postgres_schemas(request.getfixturevalue("postgres_database"), request.addfinalizer)
    else:
        made = sqlite_databases(tmp_path)
    yield made
    made.dispose()


@pytest.fixture
def both(dbs: Databases) -> tuple[StockTables, Table]:
    """Both syncs' tables, each side seeded with old rows, nothing synced yet."""
    stock = create_stock(dbs, STOCK)
    insert_legacy(dbs, stock, (stock_row(k, hours_ago(2)) for k in range(1, 21)))
    payments, _service = create_declared(dbs, PAYMENTS)
    rows = [sample(PAYMENTS, k, hours_ago(3), **PAYMENT_VALUES) for k in range(1, 6)]
    insert_rows(dbs, payments, rows)
    return stock, payments


def jobs(status: dict[str, Any]) -> dict[str, str]:
    return dict(status_lines(status))


def test_each_sync_keeps_its_own_jobs_and_gate(
    dbs: Databases, both: tuple[StockTables, Table]
) -> None:
    stock, _payments = both
    assert backfill(STOCK, dbs.legacy, dbs.service).rows == 20

    quiet = gather_status(PAYMENTS, dbs.service, dbs.legacy)
    assert (quiet["backfill"], quiet["follow"], quiet["to_legacy"], quiet["reconcile"]) == (
        None,
        None,
        None,
        None,
    )
    lines = jobs(quiet)
    assert [lines[job] for job in ("backfill", "follow", "to-legacy", "reconcile")] == [
        "never run"
    ] * 4

    update_legacy(dbs, stock, 3, quantity=1)
    assert follow_once(STOCK, dbs.legacy, dbs.service, safety_delay=0).counts.updated == 1
    service_write(dbs, stock, 4, quantity=444)
    assert to_legacy_once(STOCK, dbs.writer, dbs.service).outcomes["applied"] == 1

    stock_status = gather_status(STOCK, dbs.service, dbs.legacy)
    pay_status = gather_status(PAYMENTS, dbs.service, dbs.legacy)
    assert stock_status["backfill"]["rows_done"] == 20
    assert stock_status["follow"]["rows_written"] == 1
    assert stock_status["follow"]["lag_last_hour"]["n"] == 1
    # Two events handled: the follow's own (origin legacy: an echo) and the service's write.
    assert (stock_status["to_legacy"]["processed"], stock_status["to_legacy"]["applied"]) == (2, 1)
    assert (pay_status["backfill"], pay_status["follow"], pay_status["to_legacy"]) == (
        None,
        None,
        None,
    )

    # Drift in the payments (nothing copied) does not close the stock's gate, nor the reverse.
    assert reconcile(PAYMENTS, dbs.legacy, dbs.service, settle=0).drift == 5
    for _ in range(2):
        assert reconcile(STOCK, dbs.legacy, dbs.service, settle=0).drift == 0
    stock_gate = {c["name"]: c["ok"] for c in cutover_check(STOCK, dbs.service).checks}
    pay_gate = {c["name"]: c for c in cutover_check(PAYMENTS, dbs.service).checks}
    assert stock_gate == {"backfill": True, "follow_alive": True, "lag": True, "reconciles": True}
    assert not pay_gate["backfill"]["ok"]
    assert not pay_gate["reconciles"]["ok"]
    assert "1 of the 2 reconciles" in pay_gate["reconciles"]["detail"]
    assert gather_status(PAYMENTS, dbs.service)["reconcile"]["drift"] == 5
    assert gather_status(STOCK, dbs.service)["reconcile"]["drift"] == 0

    # The payments' turn: the stock's checkpoints stay as they were.
    assert backfill(PAYMENTS, dbs.legacy, dbs.service).rows == 5
    assert reconcile(PAYMENTS, dbs.legacy, dbs.service, settle=0).drift == 0
    after = gather_status(STOCK, dbs.service, dbs.legacy)
    assert after["backfill"] == {**stock_status["backfill"], "health": after["backfill"]["health"]}
    assert gather_status(PAYMENTS, dbs.service)["backfill"]["rows_done"] == 5


def test_status_shows_both_syncs(dbs: Databases, both: tuple[StockTables, Table]) -> None:
    backfill(STOCK, dbs.legacy, dbs.service)
    reconcile(STOCK, dbs.legacy, dbs.service, settle=0)
    args = ["status", "--sync", str(STOCK_YAML), "--sync", str(DEFAULT_SYNC)]
    args += ["--service-db", dbs.service_url, "--legacy-db", dbs.legacy_url]

    result = CliRunner().invoke(app, [*args, "--json"])

    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert sorted(shown) == ["payments", "stock_items"]
    assert shown["stock_items"]["backfill"]["status"] == "done"
    assert shown["stock_items"]["reconcile"]["drift"] == 0
    assert shown["payments"]["backfill"] is None
    assert shown["payments"]["reconcile"] is None
    assert not shown["payments"]["cutover"]["ready"]
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "sync stock_items status" in table.stdout
    assert "sync payments status" in table.stdout
