"""`strangler routes get [VERSION]`, `routes diff --file NEW.yaml`, `--dry-run` on every write
and `--json` on failures: on a file store, a Redis store and a running proxy's admin API, with a
real gated upstream (an HTTP server whose answer the test switches between 503 and 200)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from proxy.cli import app
from tests.functional.proxy_support import ProxyProcess, running, wait_until
from tests.functional.test_proxy_gates import NOT_READY, gated_table
from tests.proxy.table.test_gates import Gate, serving_gate

TOKEN = "t0ken"


@pytest.fixture(scope="module")
def module_gate() -> Iterator[Gate]:
    with serving_gate() as gate:
        yield gate


@pytest.fixture
def gate(module_gate: Gate) -> Gate:
    """The gate, closed with NOT_READY and its request count reset."""
    module_gate.refuses(*NOT_READY)
    module_gate.asked = 0
    return module_gate


def cli(*args: str, token: str | None = None) -> tuple[int, str, str]:
    env = {"STRANGLER_AUTHOR": "ops", "STRANGLER_ADMIN_TOKEN": token or ""}
    result = CliRunner().invoke(app, ["routes", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def failure(out: str) -> dict[str, Any]:
    """The one JSON object a --json failure prints, checked for its shape."""
    report = json.loads(out)
    assert report["ok"] is False
    assert set(report["error"]) == {"kind", "message", "details"}
    assert isinstance(report["error"]["details"], list)
    return dict(report)


@pytest.fixture
def routes(gate: Gate, tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(gated_table(gate))
    return path


@pytest.fixture
def moved(gate: Gate, tmp_path: Path) -> Path:
    """A new table: payments sent to the gated payment upstream."""
    path = tmp_path / "moved.yaml"
    path.write_text(gated_table(gate).replace("to: monolith", "to: payment"))
    return path


def history(*where: str) -> list[str]:
    code, out, err = cli("history", *where)
    assert code == 0, err
    return out.splitlines()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- routes get ---------------------------------------------------------------------------------


def test_get_prints_the_served_table_as_set_takes_it_back(routes: Path, tmp_path: Path) -> None:
    at = ("--routes", str(routes))
    code, out, err = cli("get", *at)
    assert (code, err) == (0, "")
    assert out == routes.read_text()
    first = out
    code, _, err = cli("flip", "payments", "--to", "payment", "--reason", "moved", "--force", *at)
    assert code == 0, err
    assert cli("get", "1", *at)[1] == first
    assert "to: payment" in cli("get", *at)[1]
    assert cli("get", *at)[1] == routes.read_text()

    (tmp_path / "one.yaml").write_text(cli("get", "1", *at)[1])  # what `set` takes back
    code, out, err = cli("set", str(tmp_path / "one.yaml"), "--reason", "back", *at)
    assert code == 0, err
    assert out.splitlines() == [
        "version 3 committed (ops: back)",
        "  changed route payments: to: payment → monolith",
    ]

    code, out, _ = cli("get", "2", "--json", *at)
    assert code == 0
    got = json.loads(out)
    assert (got["version"], got["reason"]) == (2, "moved [gates overridden]")
    assert got["table"]["routes"][0]["to"] == "payment"
    assert got["text"] == cli("get", "2", *at)[1]


def test_get_an_unknown_version(routes: Path) -> None:
    at = ("--routes", str(routes))
    code, out, err = cli("get", "9", *at)
    assert (code, out) == (1, "")
    assert err == "strangler routes: there is no version 9\n"
    code, out, err = cli("get", "9", "--json", *at)
    assert code == 1
    assert failure(out)["error"] == {
        "kind": "unknown-version",
        "message": "there is no version 9",
        "details": [],
    }
    assert err == "strangler routes: there is no version 9\n"


def test_get_from_the_redis_store(
    routes: Path, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    at = ("--store", redis_url, "--store-prefix", redis_prefix, "--routes", str(routes))
    code, out, err = cli("get", *at)  # the store seeded from routes.yaml: version 1
    assert (code, err) == (0, "")
    assert out == routes.read_text()
    flip = ("flip", "payments", "--to", "payment", "--reason", "x", "--force", *at)
    code, out, err = cli(*flip, "--dry-run")
    assert code == 0, err
    assert (
        out.splitlines()[0] == "dry run: version 2 would be committed (ops: x [gates overridden])"
    )
    assert len(history(*at)) == 1
    code, _, err = cli(*flip)
    assert code == 0, err
    assert "to: payment" in cli("get", *at)[1]
    assert cli("get", "1", *at)[1] == routes.read_text()
    code, out, _ = cli("get", "5", "--json", *at)
    assert code == 1
    assert failure(out)["error"]["kind"] == "unknown-version"


# --- routes diff --file -------------------------------------------------------------------------


def test_diff_file_says_what_would_change_and_what_the_gates_answer(
    gate: Gate, routes: Path, moved: Path
) -> None:
    at = ("--routes", str(routes))
    code, out, err = cli("diff", "--file", str(moved), *at)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"version 1 → {moved} (valid)",
        "  changed route payments: to: monolith → payment",
        "gates:",
        f"  upstream 'payment' (routes payments) at {gate.url}: closed (503): "
        "the backfill has not finished; follow has not run",
        "a commit of it would be refused: the gate of upstream 'payment' (routes payments) is "
        "closed (503): the backfill has not finished; follow has not run; nothing changed",
    ]
    assert gate.asked == 1

    gate.opens()
    code, out, _ = cli("diff", "--file", str(moved), "--json", *at)
    assert code == 0
    report = json.loads(out)
    assert report["from"] == 1
    assert (report["valid"], report["would_commit"], report["refusal"]) == (True, True, None)
    assert report["changes"] == [
        {
            "kind": "route",
            "name": "payments",
            "action": "changed",
            "fields": {"to": {"old": "monolith", "new": "payment"}},
        }
    ]
    assert [(g["upstream"], g["open"], g["status"]) for g in report["gates"]] == [
        ("payment", True, 200)
    ]
    # Nothing committed: the same version, the same file.
    assert len(history(*at)) == 1
    assert routes.read_text() == cli("get", *at)[1]
    assert "to: monolith" in routes.read_text()

    code, out, _ = cli("diff", "--file", str(routes), *at)  # the served table itself
    assert code == 0
    assert out.splitlines()[1:3] == ["  (the same table)", "gates: none to ask"]


def test_diff_file_of_an_invalid_table(routes: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(routes.read_text().replace("to: monolith", "to: orders"))
    line = routes.read_text().splitlines().index("    to: monolith") + 1
    at = ("--routes", str(routes))
    code, out, err = cli("diff", "--file", str(broken), *at)
    assert (code, out) == (1, "")
    assert err.splitlines()[0] == f"{broken}:{line}: routes[0].to: unknown upstream 'orders'"
    code, out, _ = cli("diff", "--file", str(broken), "--json", *at)
    assert code == 1
    error = failure(out)["error"]
    assert error["kind"] == "invalid-table"
    assert error["details"] == [
        {"line": line, "field": "routes[0].to", "message": "unknown upstream 'orders'"}
    ]
    code, out, _ = cli("diff", "1", "--file", str(broken), "--json", *at)
    assert code == 2
    assert failure(out)["error"]["kind"] == "usage"


# --- --dry-run on a file store ------------------------------------------------------------------


def test_a_dry_run_flip_commits_nothing_and_says_what_the_flip_then_does(
    gate: Gate, routes: Path
) -> None:
    at = ("--routes", str(routes))
    flip = ("flip", "payments", "--to", "payment", "--reason", "cut", *at)
    before = routes.read_text()

    code, out, err = cli(*flip, "--dry-run")  # the gate is closed: it would be refused
    assert code == 1
    assert out.splitlines() == [
        "dry run: version 2 would be refused (ops: cut)",
        "  changed route payments: to: monolith → payment",
        "gates:",
        f"  upstream 'payment' (routes payments) at {gate.url}: closed (503): "
        "the backfill has not finished; follow has not run",
        "nothing committed",
    ]
    assert "is closed (503)" in err
    assert (routes.read_text(), len(history(*at))) == (before, 1)

    code, out, _ = cli(*flip, "--dry-run", "--json")
    assert code == 1
    report = failure(out)
    assert (report["dry_run"], report["version"], report["would_commit"]) == (True, 2, False)
    assert report["error"]["kind"] == "gate-closed"
    assert report["error"]["details"][0]["status"] == 503
    assert report["error"]["details"][0]["reasons"] == "; ".join(NOT_READY)

    gate.opens()
    code, dry, err = cli(*flip, "--dry-run")
    assert code == 0, err
    assert dry.splitlines()[0] == "dry run: version 2 would be committed (ops: cut)"
    assert dry.splitlines()[-1] == "nothing committed"
    assert (routes.read_text(), len(history(*at))) == (before, 1)
    asked = gate.asked

    code, out, err = cli(*flip)  # what the dry run said, done
    assert code == 0, err
    assert out.splitlines() == [
        "version 2 committed (ops: cut)",
        dry.splitlines()[1],
    ]
    assert gate.asked == asked + 1
    assert len(history(*at)) == 2

    code, out, _ = cli(*flip, "--split", "monolith=50,payment=50", "--dry-run", "--json")
    assert code == 2  # --to and --split
    assert failure(out)["error"]["kind"] == "usage"


def test_dry_run_set_and_rollback(gate: Gate, routes: Path, moved: Path) -> None:
    at = ("--routes", str(routes))
    code, out, err = cli("set", str(moved), "--reason", "cut", "--force", "--dry-run", *at)
    assert code == 0, err
    assert out.splitlines() == [
        "dry run: version 2 would be committed (ops: cut [gates overridden])",
        "  changed route payments: to: monolith → payment",
        "gates: none to ask",
        "nothing committed",
    ]
    assert gate.asked == 0  # forced: not asked, as the real one
    assert len(history(*at)) == 1
    code, out, err = cli("set", str(moved), "--reason", "cut", "--force", *at)
    assert code == 0, err
    assert out.splitlines()[0] == "version 2 committed (ops: cut [gates overridden])"

    code, out, err = cli("rollback", "1", "--reason", "undo", "--dry-run", "--json", *at)
    assert code == 0, err
    report = json.loads(out)
    assert report == {
        "dry_run": True,
        "committed": False,
        "would_commit": True,
        "version": 3,
        "author": "ops",
        "reason": "rollback to version 1: undo",
        "changes": [
            {
                "kind": "route",
                "name": "payments",
                "action": "changed",
                "fields": {"to": {"old": "payment", "new": "monolith"}},
            }
        ],
        "gates": [],
        "refusal": None,
    }
    assert len(history(*at)) == 2
    assert "to: payment" in routes.read_text()
    code, out, err = cli("rollback", "1", "--reason", "undo", "--json", *at)
    assert code == 0, err
    done = json.loads(out)
    assert (done["version"], done["reason"], done["changes"]) == (
        3,
        "rollback to version 1: undo",
        report["changes"],
    )


# --- --json on failures, file store ---------------------------------------------------------------


def test_json_failures_on_a_file_store(gate: Gate, routes: Path, tmp_path: Path) -> None:
    at = ("--routes", str(routes))
    code, out, err = cli("flip", "payments", "--to", "payment", "--reason", "x", "--json", *at)
    assert code == 1
    assert "is closed (503)" in err  # the human line stays on stderr
    error = failure(out)["error"]
    assert error["kind"] == "gate-closed"
    assert "nothing changed" in error["message"]
    assert error["details"] == [
        {
            "upstream": "payment",
            "routes": ["payments"],
            "gate": gate.url,
            "open": False,
            "status": 503,
            "reasons": "the backfill has not finished; follow has not run",
            "lag_seconds": None,  # a data gate's own numbers, when it reports them
            "drift": None,
        }
    ]

    broken = tmp_path / "broken.yaml"
    broken.write_text(routes.read_text().replace("to: monolith", "to: orders"))
    code, out, _ = cli("set", str(broken), "--reason", "x", "--json", *at)
    assert code == 1
    error = failure(out)["error"]
    assert (error["kind"], error["message"]) == (
        "invalid-table",
        "refused: the table is invalid; nothing changed",
    )
    assert [d["field"] for d in error["details"]] == ["routes[0].to"]

    code, out, _ = cli("flip", "nope", "--to", "payment", "--reason", "x", "--json", *at)
    assert code == 1
    assert failure(out)["error"]["kind"] == "unknown-route"
    code, out, _ = cli("rollback", "7", "--reason", "x", "--json", *at)
    assert code == 1
    assert failure(out)["error"]["kind"] == "unknown-version"
    code, out, _ = cli("diff", "7", "--json", *at)
    assert (code, failure(out)["error"]["kind"]) == (1, "unknown-version")
    code, out, _ = cli("show", str(broken), "--json")
    assert (code, failure(out)["error"]["kind"]) == (1, "invalid-table")
    code, out, _ = cli("validate", str(broken), "--json")
    report = failure(out)
    assert (code, report["valid"], report["error"]["kind"]) == (1, False, "invalid-table")
    assert report["problems"] == report["error"]["details"]
    assert len(history(*at)) == 1


# --- the admin API of a running proxy ---------------------------------------------------------


@pytest.fixture
def proxy(routes: Path) -> Iterator[ProxyProcess]:
    with running(["--routes", str(routes)], {"STRANGLER_ADMIN_TOKEN": TOKEN}) as proxy:
        yield proxy


def test_get_diff_and_dry_runs_through_the_admin_api(
    gate: Gate, proxy: ProxyProcess, routes: Path, moved: Path
) -> None:
    admin = f"http://127.0.0.1:{proxy.admin}"
    remote = ("--admin", admin)

    code, out, err = cli("get", *remote)
    assert (code, err) == (0, "")
    assert out == routes.read_text()
    code, out, _ = cli("get", "4", "--json", *remote)
    assert code == 1
    assert failure(out)["error"] == {
        "kind": "unknown-version",
        "message": "there is no version 4",
        "details": [],
    }

    # diff --file: the proxy asks the gates it is sent, so it wants the token
    code, out, err = cli("diff", "--file", str(moved), "--json", *remote)
    assert code == 1
    assert failure(out)["error"]["kind"] == "unauthorized"
    code, out, err = cli("diff", "--file", str(moved), *remote, token=TOKEN)
    assert code == 0, err
    assert out.splitlines()[:2] == [
        f"version 1 → {moved} (valid)",
        "  changed route payments: to: monolith → payment",
    ]
    assert "a commit of it would be refused: the gate of upstream 'payment'" in out
    assert gate.asked == 1

    # dry runs: nothing committed, nothing served
    flip = ("flip", "payments", "--to", "payment", "--reason", "cut", *remote)
    code, out, err = cli(*flip, "--dry-run", token=TOKEN)
    assert code == 1
    assert out.splitlines()[0] == "dry run: version 2 would be refused (ops: cut)"
    assert "follow has not run" in err
    code, out, _ = cli(*flip, "--dry-run", "--json", token=TOKEN)
    report = failure(out)
    assert (code, report["dry_run"], report["error"]["kind"]) == (1, True, "gate-closed")
    assert report["error"]["details"][0]["status"] == 503
    gate.opens()
    code, dry, err = cli(*flip, "--dry-run", token=TOKEN)
    assert code == 0, err
    assert dry.splitlines()[0] == "dry run: version 2 would be committed (ops: cut)"
    code, out, err = cli("set", str(moved), "--reason", "s", "--dry-run", *remote, token=TOKEN)
    assert code == 0, err
    assert out.splitlines()[0] == "dry run: version 2 would be committed (ops: s)"
    code, out, err = cli("rollback", "1", "--reason", "r", "--dry-run", *remote, token=TOKEN)
    assert code == 0, err
    assert out.splitlines()[1] == "  (no change to the table)"
    assert [h["version"] for h in httpx.get(f"{admin}/api/v1/routes/history").json()] == [1]
    assert proxy.readyz()["table_version"] == 1

    code, out, err = cli(*flip, token=TOKEN)  # what the dry run said, done
    assert code == 0, err
    assert out.splitlines() == ["version 2 committed (ops: cut)", dry.splitlines()[1]]
    wait_until(lambda: proxy.readyz()["table_version"] == 2, what="version 2 served")
    assert cli("get", "1", *remote)[1] == cli("get", "1", "--routes", str(routes))[1]


def test_json_failures_through_the_admin_api(gate: Gate, proxy: ProxyProcess) -> None:
    admin = f"http://127.0.0.1:{proxy.admin}"
    flip = ("flip", "payments", "--to", "payment", "--reason", "x", "--json", "--admin", admin)

    code, out, err = cli(*flip, token=TOKEN)  # refused by the gate
    assert code == 1
    assert "follow has not run" in err
    error = failure(out)["error"]
    assert error["kind"] == "gate-closed"
    assert [(d["upstream"], d["status"], d["open"]) for d in error["details"]] == [
        ("payment", 503, False)
    ]

    code, out, _ = cli(*flip, token="wrong")  # a bad token
    assert code == 1
    assert failure(out)["error"] == {
        "kind": "unauthorized",
        "message": "a valid bearer token is required",
        "details": [],
    }

    url = f"http://127.0.0.1:{closed_port()}"  # an unreachable admin API
    for args in (
        ("rollback", "1", "--reason", "x", "--json", "--admin", url),
        ("history", "--json", "--admin", url),
        ("status", "--json", "--admin", url),
        ("get", "--json", "--admin", url),
    ):
        code, out, err = cli(*args, token=TOKEN)
        assert code == 1, args
        error = failure(out)["error"]
        assert error["kind"] == "unreachable"
        assert error["message"].startswith(f"cannot reach the admin API at {url}: ")
        assert err.startswith("strangler routes: cannot reach the admin API")
    assert httpx.get(f"{admin}/api/v1/routes").json()["version"] == 1
