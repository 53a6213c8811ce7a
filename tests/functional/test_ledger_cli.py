"""`strangler ledger` after real `routes flip` and `routes rollback` commands: on a file store
(a version whose table no longer loads is said and left out), a Redis store and a running
proxy's admin API; `--json`, one route, and failures in the routes commands' shape."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from proxy.cli import app
from tests.functional.proxy_support import ProxyProcess, running

TOKEN = "t0ken"
TABLE = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  payment: {url: "http://127.0.0.1:8002"}
  catalog: {url: "http://127.0.0.1:8003"}
default: monolith
routes:
  - name: payments
    match: {path: /api/v1/payments}
    to: monolith
    shadow: {to: payment, sample: 0.2}
  - name: catalog
    match: {path: /api/v1/products, methods: [GET]}
    to: monolith
"""
WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def strangler(*args: str) -> tuple[int, str, str]:
    env = {"STRANGLER_AUTHOR": "ops", "STRANGLER_ADMIN_TOKEN": TOKEN}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def ok(*args: str) -> str:
    code, out, err = strangler(*args)
    assert code == 0, out + err
    return out


def failure(out: str) -> dict[str, Any]:
    """The one JSON object a --json failure prints, checked for its shape."""
    report = json.loads(out)
    assert report["ok"] is False
    assert set(report["error"]) == {"kind", "message", "details"}
    return dict(report)


def migrate(*at: str) -> None:
    """Version 2: a payments canary; 3: payments moved; 4: rolled back to the canary;
    5: the catalog moved."""
    ok("routes", "flip", "payments", "--split", "monolith=90,payment=10", "--reason", "canary", *at)
    ok("routes", "flip", "payments", "--to", "payment", "--reason", "payment live", *at)
    ok("routes", "rollback", "2", "--reason", "error rate up", *at)
    ok("routes", "flip", "catalog", "--to", "catalog", "--reason", "catalog live", *at)


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(TABLE)
    return path


def test_the_ledger_of_a_file_store(routes: Path) -> None:
    at = ("--routes", str(routes))
    migrate(*at)
    printed = ok("ledger", *at).split("\n\nWhat the monolith still serves")[0].splitlines()
    # Each change the CLI committed keeps the evidence it was made on (no proxy ran: no numbers).
    evidence = [n for n, line in enumerate(printed) if line.startswith("      evidence")]
    assert [printed[n - 1].split()[2] for n in evidence] == ["v2", "v3", "v4", "v5"], printed
    assert all(printed[n].endswith("no requests in the window") for n in evidence), printed
    lines = [line for n, line in enumerate(printed) if n not in evidence]
    expected = [
        "versions 1 to 5",
        rf"payments  canary 10% to payment  since version 4 \({WHEN}\)",
        rf"  {WHEN}  v1    \(added\) → shadowed to payment +"
        r"store: first version, from routes\.yaml",
        rf"  {WHEN}  v2    shadowed to payment → canary 10% to payment +ops: canary",
        rf"  {WHEN}  v3    canary 10% to payment → moved to payment +ops: payment live",
        rf"  {WHEN}  v4    moved to payment → canary 10% to payment +"
        r"ops: rollback to version 2: error rate up",
        rf"catalog   moved to catalog       since version 5 \({WHEN}\)",
        rf"  {WHEN}  v1    \(added\) → legacy +store: first version, from routes\.yaml",
        rf"  {WHEN}  v5    legacy → moved to catalog +ops: catalog live",
    ]
    assert len(lines) == len(expected), lines
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)

    found = json.loads(ok("ledger", "--json", *at))
    assert found["versions"] == {"first": 1, "last": 5}
    assert found["unreadable"] == []
    assert [r["name"] for r in found["routes"]] == ["payments", "catalog"]
    payments = found["routes"][0]
    assert payments["state"] == {
        "state": "canary",
        "percent": 10,
        "upstreams": ["payment"],
        "label": "canary 10% to payment",
    }
    assert payments["since"]["version"] == 4
    assert payments["since"]["author"] == "ops"
    assert [
        (t["version"], t["from"] and t["from"]["state"], t["to"]["state"])
        for t in payments["transitions"]
    ] == [
        (1, None, "shadowed"),
        (2, "shadowed", "canary"),
        (3, "canary", "moved"),
        (4, "moved", "canary"),
    ]
    history = {h["version"]: h for h in json.loads(ok("routes", "history", "--json", *at))}
    assert [t["time"] for t in payments["transitions"]] == [
        history[n]["time"] for n in (1, 2, 3, 4)
    ]

    one = json.loads(ok("ledger", "catalog", "--json", *at))
    assert [r["name"] for r in one["routes"]] == ["catalog"]
    assert one["routes"][0]["state"]["label"] == "moved to catalog"
    assert ok("ledger", "catalog", *at).splitlines()[1].startswith("catalog  moved to catalog  ")


def test_a_retired_route_and_a_version_that_no_longer_loads(routes: Path) -> None:
    at = ("--routes", str(routes))
    migrate(*at)
    # version 6: the catalog route removed by a hand edit of routes.yaml
    routes.write_text(routes.read_text().split("  - name: catalog")[0])
    # and version 3's stored text no longer loads (as if written by another release)
    stored = routes.parent / "var" / "routes-history" / "v000003.yaml"
    stored.write_text(stored.read_text().replace("to: payment", "to: nowhere"))
    code, out, err = strangler("ledger", *at)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "versions 1 to 6"
    assert re.fullmatch(
        rf"version 3 \({WHEN}, ops: payment live\): its table does not load here, left out: "
        r"version 3:\d+: routes\[0\]\.to: .*nowhere.*",
        lines[1],
    ), lines[1]
    assert " v3 " not in out  # its transitions are not made up
    assert re.search(r"  v4 +shadowed to payment → canary 10% to payment", out) is None
    assert re.search(r"catalog +retired +since version 6", out)
    assert re.search(r"  v6 +moved to catalog → retired +file: routes\.yaml edited by hand", out)
    found = json.loads(ok("ledger", "--json", *at))
    assert [(e["version"], e["reason"]) for e in found["unreadable"]] == [(3, "payment live")]
    assert [r["name"] for r in found["routes"]] == ["payments", "catalog"]
    payments = found["routes"][0]
    assert [t["version"] for t in payments["transitions"]] == [1, 2]  # 4 is the canary of 2 again
    assert payments["since"]["version"] == 2
    assert found["routes"][1]["state"]["state"] == "retired"


def test_failures_are_the_routes_commands_shape(routes: Path, tmp_path: Path) -> None:
    at = ("--routes", str(routes))
    code, out, err = strangler("ledger", "nope", *at)
    assert (code, out) == (1, "")
    assert err == "strangler ledger: no route 'nope' in the history\n"
    code, out, err = strangler("ledger", "nope", "--json", *at)
    assert code == 1
    assert failure(out)["error"] == {
        "kind": "unknown-route",
        "message": "no route 'nope' in the history",
        "details": [],
    }
    code, out, err = strangler("ledger", "--json", "--routes", str(tmp_path / "none.yaml"))
    assert code == 1
    assert failure(out)["error"]["kind"] == "unknown-version"
    assert err.startswith("strangler ledger: ")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # nobody listens there
    code, out, err = strangler("ledger", "--json", "--admin", url)
    assert code == 1
    assert failure(out)["error"]["message"].startswith(f"cannot reach the admin API at {url}: ")
    assert err.startswith("strangler ledger: cannot reach the admin API")


def test_the_ledger_of_a_redis_store(routes: Path, redis_url: str, redis_prefix: str) -> None:
    at = ("--store", redis_url, "--store-prefix", redis_prefix, "--routes", str(routes))
    migrate(*at)
    found = json.loads(ok("ledger", "--json", *at))
    assert found["versions"] == {"first": 1, "last": 5}
    labels = {r["name"]: r["state"]["label"] for r in found["routes"]}
    assert labels == {"payments": "canary 10% to payment", "catalog": "moved to catalog"}
    assert found["routes"][0]["transitions"][-1]["reason"] == "rollback to version 2: error rate up"


@pytest.fixture
def proxy(routes: Path) -> Iterator[ProxyProcess]:
    with running(["--routes", str(routes)], {"STRANGLER_ADMIN_TOKEN": TOKEN}) as proxy:
        yield proxy


def test_the_ledger_through_the_admin_api(proxy: ProxyProcess, routes: Path) -> None:
    admin = f"http://127.0.0.1:{proxy.admin}"
    migrate("--admin", admin)
    local = json.loads(ok("ledger", "--json", "--routes", str(routes)))
    remote = json.loads(ok("ledger", "--json", "--admin", admin))
    assert remote == local == httpx.get(f"{admin}/api/v1/ledger").json()
    assert ok("ledger", "--admin", admin) == ok("ledger", "--routes", str(routes))
    one = json.loads(ok("ledger", "payments", "--json", "--admin", admin))
    assert [r["name"] for r in one["routes"]] == ["payments"]
    code, out, err = strangler("ledger", "nope", "--json", "--admin", admin)
    assert code == 1
    assert failure(out)["error"]["kind"] == "unknown-route"
    assert err == "strangler ledger: no route 'nope' in the history\n"
