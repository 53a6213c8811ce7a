"""The command line (`strangler sync …`, `python -m services.payment.sync …`): every command on
real databases, JSON output, exit codes, and clear one-line errors instead of tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete
from typer.testing import CliRunner

from datasync.cli import app
from services.payment.models import Payment as ServicePayment
from tests.services.payment.sync.conftest import SEEDED_PAYMENTS, Pair
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[4]
runner = CliRunner()


def run(pair: Pair, *args: str) -> Any:
    return runner.invoke(
        app, [*args, "--legacy-db", pair.legacy_url, "--service-db", pair.service_url]
    )


def as_json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_commands_in_the_order_of_a_migration(sqlite_pair: Pair) -> None:
    pair = sqlite_pair
    copied = as_json(run(pair, "backfill", "--json", "--batch-size", "25"))
    assert (copied["status"], copied["rows"], copied["inserted"]) == ("done", SEEDED_PAYMENTS, 60)
    polled = as_json(run(pair, "follow", "--once", "--json", "--safety-delay", "0"))
    assert polled["inserted"] == polled["updated"] == 0
    applied = as_json(run(pair, "to-legacy", "--once", "--json"))
    assert applied["events"] == 0
    report = as_json(run(pair, "reconcile", "--json", "--settle", "0"))
    assert (report["passed"], report["drift"], report["rows_legacy"]) == (True, 0, 60)

    status = as_json(run(pair, "status", "--json"))
    assert status["backfill"]["status"] == "done"
    assert status["backfill"]["rows_done"] == status["backfill"]["rows_total"] == 60
    assert status["follow"]["high_water"]["updated_at"] is not None
    assert status["follow"]["lag_seconds"] is not None
    assert status["to_legacy"]["processed"] == 0
    assert status["reconcile"]["passed"] is True
    gate = status["cutover"]
    assert (gate["ready"], gate["reasons"]) == (False, ["1 of the 2 reconciles needed have run"])
    assert [(c["name"], c["ok"]) for c in gate["checks"]] == [
        ("backfill", True),
        ("follow_alive", True),
        ("lag", True),
        ("reconciles", False),
    ]
    as_json(run(pair, "reconcile", "--json", "--settle", "0"))  # drift 0, confirmed twice
    gate = as_json(run(pair, "status", "--json"))["cutover"]
    assert (gate["ready"], gate["reasons"]) == (True, [])

    table = run(pair, "status")
    assert table.exit_code == 0
    for job in ("backfill", "follow", "to-legacy", "reconcile", "cutover gate"):
        assert job in table.stdout
    assert "60/60 rows" in table.stdout


def test_the_human_output_says_what_happened(sqlite_pair: Pair) -> None:
    done = run(sqlite_pair, "backfill")
    assert done.exit_code == 0, done.output
    assert "backfill done: 60 rows in 1 batches" in done.stdout
    again = run(sqlite_pair, "backfill", "--quiet")
    assert "already done up to id" in again.stdout
    follow = run(sqlite_pair, "follow", "--once")
    assert follow.stdout.startswith("follow: read ")


def test_reconcile_exits_3_over_the_threshold_with_a_table_or_json(sqlite_pair: Pair) -> None:
    pair = sqlite_pair
    assert run(pair, "backfill", "--quiet").exit_code == 0
    gone = sorted(pair.legacy_rows())[:2]
    with pair.service.begin() as conn:
        conn.execute(delete(ServicePayment).where(ServicePayment.id.in_(gone)))

    shown = run(pair, "reconcile", "--settle", "0")
    assert shown.exit_code == 3
    assert "missing" in shown.stdout
    assert str(gone[0]) in shown.stdout
    assert "reconcile FAILED: drift 2 (max 0): 2 missing, 0 extra, 0 differing" in shown.stdout

    report = run(pair, "reconcile", "--settle", "0", "--json")
    assert report.exit_code == 3
    body = json.loads(report.stdout)
    assert set(body) >= {"passed", "drift", "max_drift", "missing", "extra", "differing", "counts"}
    assert (body["missing"], body["extra"], body["differing"]) == (gone, [], [])
    assert run(pair, "reconcile", "--settle", "0", "--max-drift", "2").exit_code == 0


def test_environment_variables_name_the_databases(sqlite_pair: Pair) -> None:
    env = {
        "STRANGLER_LEGACY_DB": sqlite_pair.legacy_url,
        "STRANGLER_SERVICE_DB": sqlite_pair.service_url,
    }
    result = runner.invoke(app, ["backfill", "--json"], env=env)
    assert as_json(result)["rows"] == SEEDED_PAYMENTS


def error_of(result: Any) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return str(result.stderr).strip()


def test_unreachable_and_missing_databases_are_one_line_errors(
    sqlite_pair: Pair, tmp_path: Path
) -> None:
    closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    down = runner.invoke(
        app, ["backfill", "--legacy-db", closed, "--service-db", sqlite_pair.service_url]
    )
    assert error_of(down).startswith("error: cannot reach the legacy database postgresql")

    absent = runner.invoke(
        app,
        [
            "reconcile",
            "--legacy-db",
            f"sqlite:///{tmp_path / 'no.db'}",
            "--service-db",
            sqlite_pair.service_url,
        ],
    )
    assert "does not exist (no such file)" in error_of(absent)

    bad = runner.invoke(app, ["status", "--service-db", "nosuchdriver://x"])
    assert error_of(bad).startswith("error: bad service database URL")

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    (tmp_path / "empty.db").touch()
    unmigrated = runner.invoke(
        app, ["follow", "--once", "--legacy-db", sqlite_pair.legacy_url, "--service-db", empty]
    )
    message = error_of(unmigrated)
    assert "lacks payments" in message
    assert "migrate" in message

    migrated = runner.invoke(
        app,
        [
            "follow",
            "--once",
            "--json",
            "--migrate",
            "--legacy-db",
            sqlite_pair.legacy_url,
            "--service-db",
            empty,
        ],
    )
    assert as_json(migrated)["inserted"] == SEEDED_PAYMENTS  # no backfill: follow copies it all


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'payment.db'}"
    result = runner.invoke(app, ["migrate", "--service-db", url, "--json"])
    assert as_json(result) == {"revision": "0003_sync_state_moved"}


def test_python_dash_m_runs_the_same_commands(sqlite_pair: Pair) -> None:
    assert run(sqlite_pair, "backfill", "--quiet").exit_code == 0
    env = {**os.environ, "STRANGLER_SERVICE_DB": sqlite_pair.service_url, "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "services.payment.sync", "status", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["backfill"]["rows_done"] == SEEDED_PAYMENTS
    failed = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.payment.sync",
            "status",
            "--service-db",
            "sqlite:///" + str(ROOT / "var" / "nope" / "x.db"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("error: the service database")
    assert "Traceback" not in failed.stderr


@pytest.mark.parametrize("command", ["backfill", "follow", "to-legacy", "reconcile", "status"])
def test_every_command_documents_both_databases(command: str) -> None:
    shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert shown.exit_code == 0
    assert "--legacy-db" in shown.stdout
    assert "--service-db" in shown.stdout
    assert "--json" in shown.stdout
