"""Cutover gates end to end: `strangler routes` on a file store and the admin API of a running
proxy both ask the payment upstream's gate (a real HTTP server whose answer the test switches)
before sending it more traffic; a closed gate refuses and changes nothing, `--force` (or
`"force": true`) commits and says so in the history, and a rollback is never gated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from proxy.cli import app
from tests.functional.proxy_support import ProxyProcess, running, wait_until
from tests.proxy.table.test_gates import Gate, serving_gate

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Author": "ops"}
NOT_READY = ("the backfill has not finished", "follow has not run")


def gated_table(gate: Gate) -> str:
    return (
        "version: 1\nupstreams:\n"
        '  monolith: {url: "http://127.0.0.1:8001"}\n'
        f'  payment: {{url: "http://127.0.0.1:8002", gate: "{gate.url}"}}\n'
        "default: monolith\nroutes:\n"
        "  - name: payments\n    match: {path: /api/v1/payments}\n    to: monolith\n"
    )


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


# --- the CLI on a file store ------------------------------------------------------------------


def test_the_cli_asks_the_gate_before_moving_traffic_to_it(gate: Gate, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(gated_table(gate))
    at = ("--routes", str(routes))

    code, out, err = cli("flip", "payments", "--to", "payment", "--reason", "too early", *at)
    assert code == 1
    assert out == ""
    assert "the gate of upstream 'payment' (routes payments)" in err
    assert "is closed (503): the backfill has not finished; follow has not run" in err
    assert "nothing changed" in err
    assert gate.asked == 1
    assert routes.read_text() == gated_table(gate)  # still version 1
    assert cli("history", *at)[1].split()[0] == "1"

    code, out, err = cli(
        "flip", "payments", "--split", "monolith=90,payment=10", "--reason", "canary", *at
    )
    assert code == 1, out  # a canary is more traffic too
    assert gate.asked == 2

    code, out, err = cli(
        "flip", "payments", "--to", "payment", "--reason", "we know", "--force", *at
    )
    assert code == 0, err
    assert out.splitlines()[0] == "version 2 committed (ops: we know [gates overridden])"
    assert gate.asked == 2  # forced: not even asked

    code, out, err = cli("rollback", "1", "--reason", "data behind", *at)  # closed, not forced
    assert code == 0, err
    assert "version 3 committed (ops: rollback to version 1: data behind)" in out
    assert gate.asked == 2  # lowering payment's share never asks

    gate.opens()
    code, out, err = cli("flip", "payments", "--to", "payment", "--reason", "data ready", *at)
    assert code == 0, err
    assert "version 4 committed (ops: data ready)" in out
    assert "changed route payments: to: monolith → payment" in out
    assert gate.asked == 3

    history = [line.split(None, 4)[::4] for line in cli("history", *at)[1].splitlines()]
    assert history[:3] == [
        ["4", "data ready"],
        ["3", "rollback to version 1: data behind"],
        ["2", "we know [gates overridden]"],
    ]


def test_set_is_gated_and_forced_like_a_flip(gate: Gate, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(gated_table(gate))
    moved = tmp_path / "moved.yaml"
    moved.write_text(gated_table(gate).replace("to: monolith", "to: payment"))
    at = ("--routes", str(routes))
    code, _, err = cli("set", str(moved), "--reason", "cut", *at)
    assert (code, "follow has not run" in err) == (1, True)
    code, out, err = cli("set", str(moved), "--reason", "cut", "--force", *at)
    assert code == 0, err
    assert "version 2 committed (ops: cut [gates overridden])" in out


# --- the admin API of a running proxy ---------------------------------------------------------


@pytest.fixture
def proxy(gate: Gate, tmp_path: Path) -> Iterator[ProxyProcess]:
    routes = tmp_path / "routes.yaml"
    routes.write_text(gated_table(gate))
    with running(["--routes", str(routes)], {"STRANGLER_ADMIN_TOKEN": TOKEN}) as proxy:
        yield proxy


def test_the_admin_api_refuses_a_closed_gate_unless_forced(gate: Gate, proxy: ProxyProcess) -> None:
    admin = f"http://127.0.0.1:{proxy.admin}"
    flip = {"route": "payments", "to": "payment", "reason": "too early"}

    refused = httpx.post(f"{admin}/api/v1/routes/flip", json=flip, headers=AUTH)
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["type"].endswith("gate-closed")
    assert problem["status"] == 409
    assert "the backfill has not finished; follow has not run" in problem["detail"]
    assert gate.asked == 1
    current = httpx.get(f"{admin}/api/v1/routes").json()
    assert current["version"] == 1
    assert current["table"]["routes"][0]["to"] == "monolith"

    forced = httpx.post(
        f"{admin}/api/v1/routes/flip",
        json={**flip, "reason": "ops call", "force": True},
        headers=AUTH,
    )
    assert forced.status_code == 200, forced.text
    assert (forced.json()["version"], forced.json()["reason"]) == (2, "ops call [gates overridden]")
    assert gate.asked == 1
    wait_until(lambda: proxy.readyz()["table_version"] == 2, what="version 2 served")

    back = httpx.post(
        f"{admin}/api/v1/routes/rollback", json={"version": 1, "reason": "undo"}, headers=AUTH
    )
    assert back.status_code == 200, back.text  # closed, yet a rollback goes through
    assert back.json()["version"] == 3
    assert gate.asked == 1

    text = httpx.get(f"{admin}/api/v1/routes/versions/2").json()["text"]

    def put(**params: str) -> httpx.Response:
        headers = {**AUTH, "If-Match": '"3"', "Content-Type": "application/yaml"}
        return httpx.put(
            f"{admin}/api/v1/routes", params=params, content=text.encode(), headers=headers
        )

    refused = put(reason="again")
    assert refused.status_code == 409
    assert refused.json()["type"].endswith("gate-closed")
    assert gate.asked == 2
    replaced = put(reason="again", force="true")
    assert replaced.status_code == 200, replaced.text
    assert (replaced.json()["version"], replaced.json()["reason"]) == (
        4,
        "again [gates overridden]",
    )
    assert gate.asked == 2

    # The CLI through the admin API: refused, then forced.
    remote = ("--admin", admin)
    code, _, err = cli("rollback", "3", "--reason", "back", *remote, token=TOKEN)
    assert code == 0, err
    code, _, err = cli("flip", "payments", "--to", "payment", "--reason", "x", *remote, token=TOKEN)
    assert code == 1
    assert "follow has not run" in err
    assert "nothing changed" in err
    code, out, err = cli(
        "flip", "payments", "--to", "payment", "--reason", "cli", "--force", *remote, token=TOKEN
    )
    assert code == 0, err
    assert "version 6 committed (ops: cli [gates overridden])" in out
    code, out, err = cli("rollback", "5", "--reason", "undo", *remote, token=TOKEN)
    assert code == 0, err
    gate.opens()
    code, out, err = cli(
        "flip", "payments", "--to", "payment", "--reason", "ok", *remote, token=TOKEN
    )
    assert code == 0, err
    assert "version 8 committed (ops: ok)" in out
    history = httpx.get(f"{admin}/api/v1/routes/history").json()
    assert [h["reason"] for h in history][:3] == [
        "ok",
        "rollback to version 5: undo",
        "cli [gates overridden]",
    ]
    wait_until(lambda: proxy.readyz()["table_version"] == 8, what="version 8 served")
