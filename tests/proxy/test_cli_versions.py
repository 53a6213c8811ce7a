"""strangler routes set | flip | rollback | history | diff on the file store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from proxy.cli import app

TABLE = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  payment: {url: "http://127.0.0.1:8002"}
default: monolith
routes:
  - name: payments  # moves first
    match: {path: /api/v1/payments}
    to: monolith
"""


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(TABLE)
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"STRANGLER_AUTHOR": "ana"})
    return result.exit_code, result.stdout, result.stderr


def test_the_route_table_life_cycle(routes: Path) -> None:
    code, out, _ = run(
        "routes",
        "flip",
        "payments",
        "--split",
        "monolith=90,payment=10",
        "--reason",
        "canary 10%",
        "--routes",
        str(routes),
    )
    assert code == 0
    assert out.splitlines()[0] == "version 2 committed (ana: canary 10%)"
    assert "split: - → {monolith: 90, payment: 10}" in out
    assert "# moves first" in routes.read_text()
    code, out, _ = run(
        "routes",
        "flip",
        "payments",
        "--to",
        "payment",
        "--reason",
        "cut over",
        "--routes",
        str(routes),
    )
    assert code == 0
    code, out, _ = run("routes", "rollback", "1", "--reason", "errors up", "--routes", str(routes))
    assert code == 0
    assert "version 4 committed (ana: rollback to version 1: errors up)" in out
    code, out, _ = run("routes", "history", "--routes", str(routes))
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["4", "3", "2", "1"]
    assert "rollback to version 1: errors up" in lines[0]
    code, out, _ = run("routes", "diff", "1", "3", "--routes", str(routes), "--json")
    (change,) = json.loads(out)
    assert change["fields"]["to"] == {"old": "monolith", "new": "payment"}
    code, out, _ = run("routes", "diff", "1", "--routes", str(routes))
    assert "(the same table)" in out


def test_set_commits_a_file_and_refuses_an_invalid_one(routes: Path, tmp_path: Path) -> None:
    good = tmp_path / "next.yaml"
    good.write_text(TABLE.replace("to: monolith", "to: payment"))
    code, out, _ = run("routes", "set", str(good), "--reason", "cut", "--routes", str(routes))
    assert code == 0
    assert "changed route payments: to: monolith → payment" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(TABLE.replace("to: monolith", "to: nowhere"))
    code, _, err = run("routes", "set", str(bad), "--reason", "oops", "--routes", str(routes))
    assert code == 1
    assert "unknown upstream 'nowhere'" in err
    assert "nothing changed" in err
    assert "version: 2" in routes.read_text()


def test_set_with_a_stale_expected_version_is_a_conflict(routes: Path, tmp_path: Path) -> None:
    new = tmp_path / "next.yaml"
    new.write_text(TABLE)
    assert run("routes", "set", str(new), "--reason", "a", "--routes", str(routes))[0] == 0
    code, _, err = run(
        "routes", "set", str(new), "--reason", "b", "--expect", "1", "--routes", str(routes)
    )
    assert code == 1
    assert "based on version 1, but version 2 is current" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["flip", "orders", "--to", "payment"], "has no route 'orders'", id="unknown-route"
        ),
        pytest.param(["flip", "payments"], "exactly one of --to and --split", id="no-action"),
        pytest.param(["flip", "payments", "--split", "a:90"], "--split wants", id="bad-split"),
        pytest.param(["rollback", "9"], "there is no version 9", id="unknown-version"),
    ],
)
def test_mistakes_exit_non_zero_with_the_reason(
    routes: Path, args: list[str], message: str
) -> None:
    code, _, err = run("routes", *args, "--reason", "r", "--routes", str(routes))
    assert code != 0
    assert message in err
