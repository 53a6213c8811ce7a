"""The control plane's two doors give the same answers and the same refusals: LocalControl on a
file store and on a Redis store, and RemoteControl through a real admin app (uvicorn on
127.0.0.1) over each of them, run the same story of writes, dry runs, gate refusals and reads;
the CLI prints the same thing whichever door a command took."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from proxy.admin.app import create_admin_app
from proxy.admin.client import AdminClient, AdminRefused
from proxy.cli import app
from proxy.control import ControlPlane
from proxy.control.local import LocalControl
from proxy.control.remote import RemoteControl
from proxy.store.base import (
    GateRefused,
    InvalidChange,
    InvalidTable,
    RouteStore,
    StoreError,
    UnknownRoute,
    UnknownVersion,
    VersionConflict,
)
from proxy.store.file import FileStore
from proxy.store.redis import RedisStore, StoreUnavailable
from tests.proxy.table.test_gates import Gate, free_port, serving_gate
from tests.support import serving

TOKEN = "s3cret"
NOT_READY = ("the backfill has not finished", "follow has not run")


def table_text(gate: Gate) -> str:
    return (
        "version: 1\nupstreams:\n"
        '  monolith: {url: "http://127.0.0.1:8001"}\n'
        f'  payment: {{url: "http://127.0.0.1:8002", gate: "{gate.url}"}}\n'
        "default: monolith\nroutes:\n"
        "  - name: payments  # moves first\n    match: {path: /api/v1/payments}\n"
        "    to: monolith\n"
    )


@pytest.fixture(scope="module")
def module_gate() -> Iterator[Gate]:
    with serving_gate() as gate:
        yield gate


@pytest.fixture
def gate(module_gate: Gate) -> Gate:
    """The gate, closed, its request count reset."""
    module_gate.refuses(*NOT_READY)
    module_gate.asked = 0
    return module_gate


# --- the doors ----------------------------------------------------------------------------------

# (a folder of its own, the first table, remote?) → the control plane of a new store
Door = Callable[[Path, str, bool], AbstractContextManager[ControlPlane]]


@contextmanager
def on_store(store: RouteStore, remote: bool) -> Iterator[ControlPlane]:
    if not remote:
        yield LocalControl(store)
        return
    with serving(create_admin_app(store, TOKEN)) as url:
        yield RemoteControl(AdminClient(url, "cli", token=TOKEN))


@pytest.fixture
def file_door() -> Door:
    @contextmanager
    def door(where: Path, text: str, remote: bool) -> Iterator[ControlPlane]:
        (where / "routes.yaml").write_text(text)
        with on_store(FileStore(where / "routes.yaml"), remote) as control:
            yield control

    return door


@pytest.fixture
def redis_door(redis_url: str, redis_prefix: str) -> Door:
    @contextmanager
    def door(where: Path, text: str, remote: bool) -> Iterator[ControlPlane]:
        (where / "seed.yaml").write_text(text)
        store = RedisStore(redis_url, f"{redis_prefix}{where.name}:", seed=where / "seed.yaml")
        try:
            with on_store(store, remote) as control:
                yield control
        finally:
            store.close()

    return door


def without_times(found: Any) -> Any:
    if isinstance(found, dict):
        return {k: without_times(v) for k, v in found.items() if k != "time"}
    if isinstance(found, list):
        return [without_times(v) for v in found]
    return found


def said(call: Callable[[], Any]) -> Any:
    """What a call answered or how it refused, without what differs between runs (times)."""
    try:
        answer = call()
    except StoreError as exc:
        return {
            "refused": type(exc).__name__,
            "message": str(exc),
            "kind": exc.kind,
            "status": exc.status,
            "details": exc.details(),
            "fields": exc.problem_fields(),
            "lines": getattr(exc, "lines", None),
        }
    if answer is None:
        return None
    if isinstance(answer, list):
        return without_times([info.as_dict() for info in answer])
    return without_times(answer.as_dict())


def story(control: ControlPlane, gate: Gate) -> list[Any]:
    """Every operation, answered and refused, as an engineer moving one route does them."""
    flip = control.flip
    moved = table_text(gate).replace("to: monolith", "to: payment")
    canary = {"monolith": 90, "payment": 10}
    steps: list[Callable[[], Any]] = [
        lambda: control.get(),
        lambda: flip("payments", author="ana", reason="cut", to="payment"),  # the gate is closed
        lambda: flip("payments", author="ana", reason="cut", to="payment", dry_run=True),
        gate.opens,
        lambda: flip("payments", author="ana", reason="try", to="payment", dry_run=True),
        lambda: flip("payments", author="ana", reason="canary", split=canary),
        lambda: flip("orders", author="ana", reason="typo", to="payment"),
        lambda: flip("payments", author="ana", reason="typo", to="nowhere"),
        lambda: flip("payments", author="ana", reason="both", to="payment", split={"a": 100}),
        lambda: control.set(moved, author="bo", reason="late", expect=1),
        lambda: control.set(moved, author="bo", reason="cut", dry_run=True),
        lambda: control.diff(1),
        lambda: control.diff(1, 2),
        lambda: control.diff(9),
        lambda: control.diff_text(moved, author="bo"),
        lambda: control.rollback(1, author="cy", reason="errors", dry_run=True),
        lambda: control.rollback(1, author="cy", reason="errors"),
        lambda: control.rollback(9, author="cy", reason="errors"),
        lambda: gate.refuses(*NOT_READY),
        lambda: control.set(moved, author="bo", reason="cut", force=True),
        lambda: control.history(10),
        lambda: control.get(2),
        lambda: control.get(9),
    ]
    return [said(call) for call in steps]


def test_both_doors_answer_and_refuse_alike_on_a_file_store(
    gate: Gate, file_door: Door, tmp_path: Path
) -> None:
    told = {}
    for remote in (False, True):
        where = tmp_path / ("remote" if remote else "local")
        where.mkdir()
        with file_door(where, table_text(gate), remote) as control:
            told[remote] = story(control, gate)
    assert told[True] == told[False]
    check_the_story(told[False])


@pytest.mark.redis
def test_both_doors_answer_and_refuse_alike_on_a_redis_store(
    gate: Gate, redis_door: Door, tmp_path: Path
) -> None:
    told = {}
    for remote in (False, True):
        where = tmp_path / ("remote" if remote else "local")
        where.mkdir()
        with redis_door(where, table_text(gate), remote) as control:
            told[remote] = story(control, gate)
    assert told[True] == told[False]
    check_the_story(told[False])


def check_the_story(told: list[Any]) -> None:
    """What the story must say (the same on every door and store)."""
    (
        first,
        closed,
        closed_dry,
        _,
        open_dry,
        canary,
        unknown_route,
        invalid,
        both,
        stale,
        set_dry,
        diff_1,
        diff_1_2,
        diff_9,
        diff_text,
        rollback_dry,
        rollback,
        rollback_9,
        _,
        forced,
        history,
        second,
        ninth,
    ) = told
    assert (first["version"], first["author"]) == (1, "store")
    assert "# moves first" in first["text"]
    assert first["table"]["routes"][0]["to"] == "monolith"

    assert (closed["refused"], closed["status"], closed["kind"]) == (
        "GateRefused",
        409,
        "gate-closed",
    )
    assert closed["message"].endswith(
        "is closed (503): " + "; ".join(NOT_READY) + "; nothing changed"
    )
    assert [(g["upstream"], g["open"], g["status"]) for g in closed["details"]] == [
        ("payment", False, 503)
    ]
    assert closed_dry["dry_run"] is True
    assert (closed_dry["would_commit"], closed_dry["refusal"]) == (False, closed["message"])
    assert closed_dry["gates"] == closed["details"]
    assert (open_dry["would_commit"], open_dry["version"], open_dry["refusal"]) == (True, 2, None)
    assert open_dry["changes"] == [
        {
            "kind": "route",
            "name": "payments",
            "action": "changed",
            "fields": {"to": {"old": "monolith", "new": "payment"}},
        }
    ]

    assert (canary["version"], canary["author"], canary["reason"]) == (2, "ana", "canary")
    assert canary["changes"][0]["fields"]["split"]["new"] == {"monolith": 90, "payment": 10}
    assert "# moves first" in canary["text"]

    assert (unknown_route["refused"], unknown_route["status"]) == ("UnknownRoute", 404)
    assert unknown_route["message"] == "version 2 has no route 'orders'"
    assert (invalid["refused"], invalid["status"]) == ("InvalidTable", 422)
    assert [(p["field"], p["message"]) for p in invalid["details"]] == [
        ("routes[0].to", "unknown upstream 'nowhere'")
    ]
    assert invalid["lines"] == [
        f"{invalid['details'][0]['line']}: routes[0].to: unknown upstream 'nowhere'"
    ]
    assert (both["refused"], both["status"], both["kind"]) == (
        "InvalidChange",
        422,
        "validation-failed",
    )
    assert (stale["refused"], stale["fields"]) == ("VersionConflict", {"expected": 1, "current": 2})
    assert stale["message"] == "based on version 1, but version 2 is current"

    assert (set_dry["dry_run"], set_dry["version"], set_dry["would_commit"]) == (True, 3, True)
    assert [g["open"] for g in set_dry["gates"]] == [True]
    assert diff_1 == {"from": 1, "to": 2, "changes": canary["changes"]}
    assert diff_1_2 == diff_1
    assert (diff_9["refused"], diff_9["message"]) == ("UnknownVersion", "there is no version 9")
    assert (diff_text["from"], diff_text["valid"], diff_text["would_commit"]) == (2, True, True)
    assert diff_text["changes"] == set_dry["changes"]

    assert rollback_dry["reason"] == "rollback to version 1: errors"
    assert (rollback["version"], rollback["reason"]) == (3, "rollback to version 1: errors")
    assert rollback["changes"] == rollback_dry["changes"]
    assert rollback_9["refused"] == "UnknownVersion"
    assert (forced["version"], forced["reason"]) == (4, "cut [gates overridden]")

    assert [(i["version"], i["author"], i["reason"]) for i in history] == [
        (4, "bo", "cut [gates overridden]"),
        (3, "cy", "rollback to version 1: errors"),
        (2, "ana", "canary"),
        (1, "store", first["reason"]),
    ]
    assert second["text"] == canary["text"]
    assert ninth["refused"] == "UnknownVersion"


def test_a_store_that_is_down_is_the_same_refusal_through_the_admin_api(tmp_path: Path) -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", "down:")
    try:
        local = LocalControl(store)
        with serving(create_admin_app(store, TOKEN)) as url:
            remote = RemoteControl(AdminClient(url, "cli", token=TOKEN))
            for control in (local, remote):
                with pytest.raises(StoreUnavailable, match="is unreachable"):
                    control.get()
                with pytest.raises(StoreUnavailable, match="nothing was changed"):
                    control.rollback(1, author="ana", reason="x")
    finally:
        store.close()


def test_what_the_remote_door_cannot_rebuild_stays_the_client_s_refusal(
    gate: Gate, file_door: Door, tmp_path: Path
) -> None:
    with file_door(tmp_path, table_text(gate), True) as control:
        assert isinstance(control, RemoteControl)
        control.client.headers.pop("Authorization")
        with pytest.raises(AdminRefused) as refused:
            control.rollback(1, author="ana", reason="x")
        assert (refused.value.kind, refused.value.status) == ("unauthorized", 401)
        assert isinstance(refused.value, StoreError)  # one tree: the CLI fails alike


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        pytest.param(VersionConflict(3, 4), "version-conflict", id="conflict"),
        pytest.param(UnknownVersion(9), "unknown-version", id="version"),
        pytest.param(UnknownRoute("orders", 3), "unknown-route", id="route"),
        pytest.param(
            InvalidTable([{"line": 7, "field": "default", "message": "no"}]),
            "invalid-table",
            id="invalid",
        ),
        pytest.param(GateRefused("closed", [{"upstream": "payment"}]), "gate-closed", id="gate"),
        pytest.param(InvalidChange("give exactly one"), "validation-failed", id="change"),
        pytest.param(StoreUnavailable("down"), "store-unavailable", id="unavailable"),
    ],
)
def test_each_refusal_is_rebuilt_from_its_problem(exc: StoreError, kind: str) -> None:
    """What the admin API answers (admin/problems.py) is read back as the same exception."""
    from proxy.control.remote import rebuilt

    body = {"type": f"urn:strangler:problem:{kind}", "detail": str(exc), **exc.problem_fields()}
    found = rebuilt(AdminRefused(str(exc), kind=kind, status=exc.status, body=body))
    assert type(found) is type(exc)
    assert (str(found), found.status, found.problem_fields()) == (
        str(exc),
        exc.status,
        exc.problem_fields(),
    )


# --- the CLI, whichever door --------------------------------------------------------------------


def cli(*args: str) -> tuple[int, str, str]:
    env = {"STRANGLER_AUTHOR": "ops", "STRANGLER_ADMIN_TOKEN": TOKEN}
    result = CliRunner().invoke(app, ["routes", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["flip", "payments", "--to", "payment", "--reason", "r"], id="gate-closed"),
        pytest.param(
            ["flip", "payments", "--to", "payment", "--reason", "r", "--json"], id="gate-json"
        ),
        pytest.param(
            ["flip", "payments", "--to", "payment", "--reason", "r", "--dry-run"], id="dry-run"
        ),
        pytest.param(
            ["flip", "payments", "--to", "payment", "--reason", "r", "--dry-run", "--json"],
            id="dry-json",
        ),
        pytest.param(
            ["flip", "orders", "--to", "payment", "--reason", "r", "--json"], id="unknown-route"
        ),
        pytest.param(["flip", "payments", "--to", "nowhere", "--reason", "r"], id="invalid"),
        pytest.param(
            ["flip", "payments", "--to", "nowhere", "--reason", "r", "--json"], id="invalid-json"
        ),
        pytest.param(["rollback", "9", "--reason", "r", "--json"], id="unknown-version"),
        pytest.param(["rollback", "1", "--reason", "r", "--force"], id="rollback"),
        pytest.param(["diff", "1"], id="diff"),
        pytest.param(["get", "1"], id="get"),
    ],
)
def test_the_cli_says_the_same_whichever_door(args: list[str], gate: Gate, tmp_path: Path) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    for where in (local, remote):
        where.mkdir()
        (where / "routes.yaml").write_text(table_text(gate))
    by_store = cli(*args, "--routes", str(local / "routes.yaml"))
    with serving(create_admin_app(FileStore(remote / "routes.yaml"), TOKEN)) as url:
        by_api = cli(*args, "--admin", url)
    assert by_api == by_store
    assert by_store[0] == (0 if args[0] in {"rollback", "diff", "get"} and "9" not in args else 1)
