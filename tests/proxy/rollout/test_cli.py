"""`strangler rollout` on a local file store and through a real admin API: the same operations
and answers through both doors, failures with their exit codes (and --json objects), and a
driver running in the background acting on what the commands ask."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from proxy.admin.app import create_admin_app
from proxy.admin.problems import writer
from proxy.admin.rollout import rollout_router
from proxy.rollout import cli as rollout_cli
from proxy.rollout.cli import rollout_app
from proxy.rollout.control import Rollouts
from proxy.rollout.driver import RolloutDriver
from proxy.rollout.store import FileRollouts
from proxy.store.file import FileStore
from tests.proxy.rollout.support import FakeEvidence, driving, routes_yaml, write_routes
from tests.support import serving, wait_until

TOKEN = "s3cret"
BLOCK = (
    "{to: payment, steps: [10, 50], bake: 200ms, "
    "analysis: {interval: 0, settle: 0, min_requests: 1}}"
)


def cli(*args: str, token: str = "") -> tuple[int, str, str]:
    env = {"STRANGLER_AUTHOR": "ana", "STRANGLER_ADMIN_TOKEN": token}
    result = CliRunner().invoke(rollout_app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    return write_routes(tmp_path, routes_yaml(rollout=BLOCK))


def stores(routes: Path) -> tuple[FileStore, FileRollouts]:
    return FileStore(routes), FileRollouts(routes.parent / "var" / "routes-rollouts")


def served(routes: Path) -> dict[str, Any]:
    table = FileStore(routes).current().table
    (route,) = table.routes
    return {"to": route.to} if route.split is None else {"split": route.split}


def test_start_status_pause_and_resume_on_the_file_store(routes: Path) -> None:
    at = ("--routes", str(routes))
    code, out, err = cli("start", "payments", "--reason", "canary", *at)
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == (
        "rollout of payments to payment started: steps 10, 50, 100 %, 0.2s each"
    )
    code, out, _ = cli("status", "payments", *at)
    assert code == 0
    assert out.splitlines()[0] == (
        "payments: monolith → payment, pending, 0% to payment (step 1/3 of 10, 50, 100 %)"
    )
    assert "started" in out
    assert "by ana: canary" in out
    code, out, _ = cli("pause", "payments", "--reason", "lunch", "--json", *at)
    assert (code, json.loads(out)["state"]) == (0, "paused")
    code, out, _ = cli("resume", "payments", "--reason", "back", "--json", *at)
    assert (code, json.loads(out)["state"]) == (0, "pending")
    code, out, _ = cli("status", "--json", *at)
    listed = json.loads(out)
    assert [(r["route"], r["state"]) for r in listed] == [("payments", "pending")]
    assert [e["event"] for e in listed[0]["history"]] == ["started", "paused", "resumed"]


def test_flags_override_the_routes_block(routes: Path) -> None:
    code, out, _ = cli(
        "start", "payments", "--reason", "r", "--steps", "20,40", "--bake", "1m",
        "--max-p95-ratio", "1.2", "--webhook", "rollback=http://chat.test/T/s3cret", "--json",
        "--routes", str(routes),
    )  # fmt: skip
    assert code == 0, out
    started = json.loads(out)
    assert (started["steps"], started["bake_seconds"]) == ([20, 40, 100], 60.0)
    assert started["analysis"]["max_p95_ratio"] == 1.2
    assert started["webhooks"] == [
        {"kind": "rollback", "url": "http://chat.test/…", "timeout": 5.0}
    ]


@pytest.mark.parametrize(
    ("args", "code", "kind", "said"),
    [
        pytest.param(
            ("start", "orders", "--reason", "x"),
            1,
            "unknown-route",
            "no route 'orders'",
            id="route",
        ),
        pytest.param(
            ("start", "payments", "--reason", "x", "--steps", "50,10"),
            1,
            "invalid-rollout",
            "steps grow strictly",
            id="plan",
        ),
        pytest.param(
            ("start", "payments", "--reason", "x", "--steps", "ten"),
            2,
            "usage",
            "--steps",
            id="steps-usage",
        ),
        pytest.param(
            ("start", "payments", "--reason", "x", "--webhook", "http://x"),
            2,
            "usage",
            "KIND=URL",
            id="webhook-usage",
        ),
        pytest.param(
            ("start", "payments", "--reason", "x", "--webhook", "rollout=http://169.254.169.254/"),
            1,
            "invalid-rollout",
            "never webhooks",
            id="webhook-address",
        ),
        pytest.param(
            ("status", "payments"),
            1,
            "unknown-rollout",
            "no rollout of route 'payments'",
            id="status",
        ),
        pytest.param(
            ("abort", "payments", "--reason", "x"), 1, "unknown-rollout", "no rollout", id="abort"
        ),
        pytest.param(("status", "--watch"), 2, "usage", "name its route", id="watch-usage"),
    ],
)
def test_failures_say_why_and_exit_non_zero(
    routes: Path, args: tuple[str, ...], code: int, kind: str, said: str
) -> None:
    got, out, err = cli(*args, "--json", "--routes", str(routes))
    assert got == code
    failure = json.loads(out)
    assert failure["ok"] is False
    assert failure["error"]["kind"] == kind
    assert said in failure["error"]["message"]
    assert err.startswith("strangler rollout: ")
    assert served(routes) == {"to": "monolith"}


def test_a_second_start_is_refused_while_one_runs(routes: Path) -> None:
    at = ("--routes", str(routes))
    assert cli("start", "payments", "--reason", "one", *at)[0] == 0
    code, _, err = cli("start", "payments", "--reason", "two", *at)
    assert code == 1
    assert "already being rolled out to 'payment' (pending, 0%): abort it first" in err


@pytest.fixture
def admin(routes: Path) -> Iterator[str]:
    table, rollouts = stores(routes)
    app = create_admin_app(table, TOKEN)
    app.include_router(rollout_router(lambda: Rollouts(table, rollouts), writer))
    with serving(app) as url:
        yield url


def test_the_admin_api_door_gives_the_same_answers(routes: Path, admin: str) -> None:
    remote = ("--admin", admin)
    code, out, _ = cli("start", "payments", "--reason", "canary", *remote, token=TOKEN)
    assert code == 0, out
    assert out.startswith("rollout of payments to payment started: steps 10, 50, 100 %")
    code, out, _ = cli("status", "payments", "--json", *remote)
    assert (code, json.loads(out)["author"]) == (0, "ana")
    local = cli("status", "payments", "--json", "--routes", str(routes))[1]
    assert json.loads(local) == json.loads(out)
    code, out, _ = cli("pause", "payments", "--reason", "x", "--json", *remote, token=TOKEN)
    assert (code, json.loads(out)["state"]) == (0, "paused")
    code, out, _err = cli("resume", "payments", "--reason", "x", "--json", *remote, token="nope")
    assert code == 1
    assert json.loads(out)["error"]["kind"] == "unauthorized"
    code, out, _ = cli("status", "orders", "--json", *remote)
    assert (code, json.loads(out)["error"]["kind"]) == (1, "unknown-rollout")
    code, out, _ = cli("resume", "payments", "--reason", "x", *remote, "--token", TOKEN)
    assert code == 0
    assert ", pending, " in out.splitlines()[0]


def test_abort_waits_for_the_driver_to_put_the_route_back(routes: Path) -> None:
    table, rollouts = stores(routes)
    at = ("--routes", str(routes))
    slow = ("--bake", "1h")
    assert cli("start", "payments", "--reason", "canary", *slow, *at)[0] == 0
    driver = RolloutDriver(table, rollouts, FakeEvidence(), "replica-1", tick=0.02)
    with driving(driver):
        wait_until(lambda: served(routes) == {"split": {"monolith": 90, "payment": 10}})
        code, out, _ = cli("abort", "payments", "--reason", "enough", "--wait", "--json", *at)
    assert code == 0
    done = json.loads(out)
    assert (done["state"], done["weight"]) == ("aborted", 0)
    assert served(routes) == {"to": "monolith"}


def test_abort_wait_says_when_no_proxy_acts(routes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout_cli, "WAIT_FOR", 0.2)
    at = ("--routes", str(routes))
    cli("start", "payments", "--reason", "canary", *at)
    table, rollouts = stores(routes)
    driver = RolloutDriver(table, rollouts, FakeEvidence(), "replica-1", tick=0.02)
    with driving(driver):
        wait_until(lambda: served(routes) != {"to": "monolith"})
    code, out, err = cli("abort", "payments", "--reason", "enough", "--wait", "--json", *at)
    assert code == 1
    assert json.loads(out)["error"]["kind"] == "not-driven"
    assert json.loads(out)["rollout"]["state"] == "rolling-back"
    assert "no proxy acted on it within 0.2s" in err


def test_watch_prints_each_change_until_the_rollout_ends(
    routes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rollout_cli, "WATCH_EVERY", 0.02)
    table, rollouts = stores(routes)
    at = ("--routes", str(routes))
    cli("start", "payments", "--reason", "canary", *at)
    driver = RolloutDriver(table, rollouts, FakeEvidence(), "replica-1", tick=0.02)
    with driving(driver):
        code, out, _ = cli("status", "payments", "--watch", "--json", *at)
    assert code == 0
    seen = [json.loads(line) for line in out.splitlines()]
    assert seen[-1]["state"] == "succeeded"
    weights = [r["weight"] for r in seen]
    assert weights == sorted(weights)
    assert {10, 50, 100} <= set(weights)
    assert served(routes) == {"to": "payment"}
