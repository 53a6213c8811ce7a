"""The CLI stays quick for a rollback typed in a hurry (no timings here: what is imported).

`strangler --version` loads nothing but the entry point; building the command tree loads typer
and the commands' signatures, not what they run; `strangler routes rollback N --reason WHY
--admin URL` is one request to the admin API through the standard library, without typer's
parser (its coercion imports pydantic) nor the table's model, the store, the data plane, the sync
engine. The quick rollback does exactly what typer's does: same request, output, exit code.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from proxy import cli
from proxy.admin.client import AdminClient, AdminRefused
from proxy.control.remote import RemoteControl

# What a command that does not use them must not import (a module or a package and its modules).
HEAVY = (
    "pydantic",
    "pydantic_core",
    "sqlalchemy",
    "alembic",
    "aiohttp",
    "uvicorn",
    "uvloop",
    "httptools",
    "fastapi",
    "starlette",
    "redis",
    "rich",
    "httpx",
    "httpcore",
    "anyio",
    "asyncio",
    "ruamel",
    "yaml",
    "prometheus_client",
    "datasync",
    "proxy.table.model",
    "proxy.table.loader",
    "proxy.table.compile",
    "proxy.table.edit",
    "proxy.table.gates",
    "proxy.store.file",
    "proxy.store.redis",
    "proxy.store.pins",
    "proxy.settings",
    "proxy.server",
    "proxy.runtime",
    "proxy.dataplane",
    "proxy.admin.app",
    "proxy.shadow.sink",
    "proxy.shadow.report",
    "proxy.shadow.recording",
    "proxy.shadow.contract",
    "proxy.static_export",
    "proxy.demo",
)

# Runs `strangler ARGS...` (proxy.cli's main, as the installed script does) and writes every
# module it imported to OUT, however it exits.
PROBE = """
import sys
out, sys.argv = sys.argv[1], ["strangler", *sys.argv[2:]]
try:
    from proxy.cli import main
    main()
finally:
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
"""

# Builds the whole command tree, as typer does before it parses any command.
TREE = """
import sys
import typer.main
from proxy.cli import app
typer.main.get_command(app)
with open(sys.argv[1], "w") as f:
    f.write("\\n".join(sorted(sys.modules)))
"""

TOKEN = "s3cret"
ROLLED_BACK = {
    "version": 4,
    "author": "ops",
    "time": 1_700_000_000.0,
    "reason": "rollback to version 2: errors up",
    "sha256": "ab" * 32,
    "changes": [
        {
            "kind": "route",
            "name": "payments",
            "action": "changed",
            "fields": {"to": {"old": "payment", "new": "monolith"}},
        }
    ],
}


def heavy(modules: set[str], *allowed: str) -> list[str]:
    """The modules of HEAVY (other than `allowed`) among `modules`."""
    return sorted(
        m for m in modules for h in HEAVY if h not in allowed and (m == h or m.startswith(h + "."))
    )


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class AdminStub:
    """An admin API that answers every request with `status` and `answer` (JSON unless bytes),
    and keeps what it was sent."""

    url: str = ""
    status: int = 200
    answer: Any = field(default_factory=lambda: ROLLED_BACK)
    extra_headers: dict[str, str] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)


@pytest.fixture
def admin() -> Iterator[AdminStub]:
    stub = AdminStub()

    class Handler(BaseHTTPRequestHandler):
        def handle_one(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            stub.seen.append(
                Seen(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
            )
            body = (
                stub.answer if isinstance(stub.answer, bytes) else json.dumps(stub.answer).encode()
            )
            self.send_response(stub.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in stub.extra_headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = handle_one

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def imported(tmp_path: Path, *args: str) -> tuple[int, str, set[str]]:
    """`strangler ARGS` in a new interpreter: exit code, stdout and the modules it imported."""
    out = tmp_path / "modules.txt"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, set(out.read_text().split())


def test_version_imports_nothing_but_the_entry_point(tmp_path: Path) -> None:
    code, out, modules = imported(tmp_path, "--version")
    assert (code, out) == (0, "strangler 0.1.0\n")
    assert heavy(modules) == []
    assert not {"typer", "proxy.commands"} & modules


def test_version_answers_as_typer_did() -> None:
    result = CliRunner().invoke(cli.app, ["--version"])
    assert (result.exit_code, result.stdout) == (0, "strangler 0.1.0\n")


def test_building_the_command_tree_imports_no_command_s_implementation(tmp_path: Path) -> None:
    out = tmp_path / "modules.txt"
    subprocess.run([sys.executable, "-c", TREE, str(out)], check=True, timeout=60)
    assert heavy(set(out.read_text().split())) == []


def test_a_remote_rollback_is_one_request_and_light(
    tmp_path: Path, admin: AdminStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("STRANGLER_AUTHOR", "ops")
    code, out, modules = imported(
        tmp_path, "routes", "rollback", "2", "--reason", "errors up", "--admin", admin.url
    )
    assert code == 0
    assert out.splitlines() == [
        "version 4 committed (ops: rollback to version 2: errors up)",
        "  changed route payments: to: payment → monolith",
    ]
    assert heavy(modules) == []
    (request,) = admin.seen
    assert (request.method, request.path) == ("POST", "/api/v1/routes/rollback")
    assert json.loads(request.body) == {"version": 2, "reason": "errors up", "force": False}
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["x-author"] == "ops"


def test_a_remote_rollback_typer_parses_loads_no_table_nor_store(
    tmp_path: Path, admin: AdminStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A form the quick path leaves to typer (here --routes, ignored with --admin): typer's own
    coercion imports pydantic, but the command still loads no table, store or server."""
    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", TOKEN)
    code, _, modules = imported(
        tmp_path,
        "routes",
        "rollback",
        "2",
        "--reason",
        "errors up",
        "--routes",
        "elsewhere.yaml",
        "--admin",
        admin.url,
    )
    assert code == 0
    assert "typer.main" in modules
    assert heavy(modules, "pydantic", "pydantic_core", "rich") == []
    assert len(admin.seen) == 1


@pytest.mark.parametrize(
    ("argv", "env", "arguments"),
    [
        (
            ["routes", "rollback", "3", "--reason", "errors up", "--admin", "http://a:9090"],
            {},
            {"version": 3, "reason": "errors up", "admin": "http://a:9090", "author": None},
        ),
        (
            ["routes", "rollback", "--admin=http://a", "--reason=", "7", "--force", "--json"],
            {"STRANGLER_ADMIN": "http://env", "STRANGLER_AUTHOR": ""},
            {
                "version": 7,
                "reason": "",
                "admin": "http://a",
                "author": None,
                "force": True,
                "json_output": True,
            },
        ),
        (
            ["routes", "rollback", "03", "--author", "ana", "--reason", "5", "--admin", "u"],
            {"STRANGLER_AUTHOR": "env-author"},
            {"version": 3, "reason": "5", "admin": "u", "author": "ana"},
        ),
        (
            ["routes", "rollback", "2", "--reason", "x"],
            {"STRANGLER_ADMIN": "http://env", "STRANGLER_AUTHOR": "env-author"},
            {"version": 2, "reason": "x", "admin": "http://env", "author": "env-author"},
        ),
    ],
)
def test_the_quick_rollback_reads_the_plain_form(
    argv: list[str],
    env: dict[str, str],
    arguments: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("STRANGLER_ADMIN", "STRANGLER_AUTHOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.quick_rollback(argv) == arguments


@pytest.mark.parametrize(
    "argv",
    [
        ["--version", "routes", "rollback", "2", "--reason", "x", "--admin", "u"],
        ["routes", "rollback", "2", "--reason", "x"],  # no admin API: the local store
        ["routes", "rollback", "2", "--reason", "x", "--admin", ""],
        ["routes", "rollback", "2", "--admin", "u"],  # no reason: typer says so
        ["routes", "rollback", "--reason", "x", "--admin", "u"],
        ["routes", "rollback", "two", "--reason", "x", "--admin", "u"],
        ["routes", "rollback", "-2", "--reason", "x", "--admin", "u"],
        ["routes", "rollback", "2", "3", "--reason", "x", "--admin", "u"],
        ["routes", "rollback", "2", "--reason", "x", "--reason", "y", "--admin", "u"],
        ["routes", "rollback", "2", "--reason", "--force", "--admin", "u"],
        ["routes", "rollback", "2", "--reason", "x", "--admin"],
        ["routes", "rollback", "2", "--reason", "x", "--admin", "u", "--help"],
        ["routes", "rollback", "2", "--reason", "x", "--admin", "u", "--force=true"],
        ["routes", "rollback", "2", "--reason", "x", "--admin", "u", "--dry-run"],
        ["routes", "rollback", "2", "--reason", "x", "--admin", "u", "--routes", "r.yaml"],
        ["routes", "rollback", "2", "--reason", "x", "--admin", "u", "--", "3"],
        ["routes", "rollback", "٣", "--reason", "x", "--admin", "u"],
        ["routes", "flip", "payments", "--to", "payment", "--reason", "x", "--admin", "u"],
    ],
)
def test_anything_else_is_left_to_typer(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRANGLER_ADMIN", raising=False)
    assert cli.quick_rollback(argv) is None


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`strangler ARGV` through main() (the quick path when it applies)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["strangler", *argv])
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def run_typer(argv: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.app, argv)
    return result.exit_code, result.stdout, result.stderr


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("status", "answer", "flags"),
    [
        pytest.param(200, ROLLED_BACK, [], id="committed"),
        pytest.param(200, ROLLED_BACK, ["--json", "--force"], id="json-forced"),
        pytest.param(200, {**ROLLED_BACK, "changes": []}, [], id="no-change"),
        pytest.param(
            409,
            {"type": "urn:x:gate-closed", "detail": "the gate of upstream 'payment' is closed"},
            [],
            id="refused",
        ),
        pytest.param(
            422,
            {
                "detail": "the table is invalid",
                "problems": [{"line": 7, "field": "routes[0].to", "message": "unknown upstream"}],
            },
            [],
            id="invalid",
        ),
        pytest.param(401, {"detail": "a valid bearer token is required"}, [], id="no-token"),
        pytest.param(
            409,
            {
                "type": "urn:strangler:problem:gate-closed",
                "detail": "the gate of upstream 'payment' is closed",
                "gates": [{"upstream": "payment", "open": False, "status": 503}],
            },
            ["--json"],
            id="json-refused",
        ),
        pytest.param(401, {"detail": "bad token"}, ["--json"], id="json-no-token"),
        pytest.param(502, b"<html>bad gateway</html>", [], id="not-json"),
    ],
)
def test_the_quick_rollback_does_what_typer_does(
    status: int,
    answer: Any,
    flags: list[str],
    admin: AdminStub,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("STRANGLER_AUTHOR", "ops")
    admin.status, admin.answer = status, answer
    argv = ["routes", "rollback", "2", "--reason", "errors up", "--admin", admin.url, *flags]
    assert cli.quick_rollback(argv) is not None
    quick = run_main(argv, capsys)
    typed = run_typer(argv)
    assert quick == typed
    assert quick[0] == (0 if status == 200 else 1)
    first, second = admin.seen
    assert (first.method, first.path, first.body) == (second.method, second.path, second.body)
    assert {k: first.headers[k] for k in ("authorization", "x-author", "content-type")} == {
        k: second.headers[k] for k in ("authorization", "x-author", "content-type")
    }


def test_a_remote_dry_run_rollback_is_left_to_typer_and_loads_no_table_nor_store(
    tmp_path: Path, admin: AdminStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", TOKEN)
    admin.answer = {**ROLLED_BACK, "dry_run": True, "gates": [], "refusal": None}
    argv = ["routes", "rollback", "2", "--reason", "errors up", "--admin", admin.url, "--dry-run"]
    assert cli.quick_rollback(argv) is None
    code, out, modules = imported(tmp_path, *argv)
    assert code == 0
    assert (
        out.splitlines()[0]
        == "dry run: version 4 would be committed (ops: rollback to version 2: errors up)"
    )
    assert out.splitlines()[-1] == "nothing committed"
    assert "typer.main" in modules
    assert heavy(modules, "pydantic", "pydantic_core", "rich") == []
    (request,) = admin.seen
    assert request.path == "/api/v1/routes/rollback/dry-run"  # a proxy without it: 404
    assert json.loads(request.body) == {"version": 2, "reason": "errors up", "force": False}


def test_a_json_failure_of_the_quick_rollback(
    admin: AdminStub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", TOKEN)
    admin.status = 409
    admin.answer = {
        "type": "urn:strangler:problem:gate-closed",
        "detail": "the gate of upstream 'payment' is closed",
        "gates": [{"upstream": "payment", "open": False, "status": 503}],
    }
    argv = ["routes", "rollback", "2", "--reason", "x", "--admin", admin.url, "--json"]
    code, out, err = run_main(argv, capsys)
    assert code == 1
    assert json.loads(out) == {
        "ok": False,
        "error": {
            "kind": "gate-closed",
            "message": "the gate of upstream 'payment' is closed",
            "details": [{"upstream": "payment", "open": False, "status": 503}],
        },
    }
    assert err == "strangler routes: the gate of upstream 'payment' is closed\n"


def test_an_unreachable_admin_api_fails_the_same_both_ways(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", TOKEN)
    url = f"http://127.0.0.1:{closed_port()}"
    argv = ["routes", "rollback", "2", "--reason", "errors up", "--admin", url]
    quick = run_main(argv, capsys)
    assert quick == run_typer(argv)
    code, out, err = quick
    assert (code, out) == (1, "")
    assert err.startswith(f"strangler routes: cannot reach the admin API at {url}: ")
    assert "Connection refused" in err


def test_the_admin_client_sends_queries_and_bodies_as_before(admin: AdminStub) -> None:
    client = AdminClient(admin.url + "/", "cli", token="t")
    admin.answer = {"version": 3}
    assert client.call("GET", "/api/v1/routes") == {"version": 3}
    client.call("GET", "/api/v1/routes/history", params={"limit": 5})
    RemoteControl(client).set(
        "version: 1\n", author="ana é", reason="why not → é", expect=3, force=True
    )
    current, history, put = admin.seen
    assert (current.method, current.path) == ("GET", "/api/v1/routes")
    assert current.headers["authorization"] == "Bearer t"
    assert history.path == "/api/v1/routes/history?limit=5"
    assert (put.method, put.body) == ("PUT", b"version: 1\n")
    assert put.path == "/api/v1/routes?reason=why%20not%20%E2%86%92%20%C3%A9&force=true"
    assert (put.headers["content-type"], put.headers["if-match"]) == ("application/yaml", '"3"')
    assert put.headers["x-author"] == "ana é"


def test_the_admin_client_follows_no_redirect(admin: AdminStub) -> None:
    admin.status, admin.answer = 307, b""
    admin.extra_headers["Location"] = admin.url + "/elsewhere"
    with pytest.raises(AdminRefused, match=r"^307 from the admin API$"):
        AdminClient(admin.url, "ana").call("POST", "/api/v1/routes/rollback", json={})
    assert len(admin.seen) == 1


def test_the_admin_client_wants_an_http_url() -> None:
    with pytest.raises(AdminRefused, match="cannot reach the admin API at localhost:9090: give"):
        AdminClient("localhost:9090", "ana").call("GET", "/api/v1/routes")


def test_an_answer_that_is_not_json_is_a_clear_failure_not_a_traceback(
    admin: AdminStub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--admin pointed at a data-plane listener (or anything else answering 200 with HTML)."""
    monkeypatch.setenv("STRANGLER_ADMIN_TOKEN", TOKEN)
    admin.answer = b"<html>the shop</html>"
    argv = ["routes", "rollback", "2", "--reason", "x", "--admin", admin.url, "--json"]
    code, out, err = run_main(argv, capsys)
    assert code == 1
    failure = json.loads(out)
    assert (failure["ok"], failure["error"]["kind"]) == (False, "bad-answer")
    assert "without JSON: is it the admin API?" in err


def test_a_version_too_long_for_an_integer_is_left_to_typer() -> None:
    argv = ["routes", "rollback", "9" * 5000, "--reason", "x", "--admin", "http://127.0.0.1:9"]
    assert cli.quick_rollback(argv) is None
