"""`strangler routes validate FILE` and `strangler routes show FILE`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from proxy.cli import app
from tests.proxy.tables import marks

VALID = """\
version: 3
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  payment:  {url: "http://127.0.0.1:8002", timeout: 2s}
default: monolith
routes:
  - name: payments
    match: {path: /api/v1/payments, methods: [GET, POST]}
    split: {monolith: 90, payment: 10}
    sticky: header:X-User-Id
  - name: health
    match: {path: /healthz, exact: true}
    to: payment
"""

INVALID = """\
version: 3
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  payment:  {url: "http://169.254.169.254"}  # @url
default: monolith
routes:
  - name: payments
    match: {path: /api/v1/payments}
    split: {monolith: 90, payment: 20}  # @weights
  - name: orders
    match: {path: /api/v1/orders}
    to: orders  # @unknown
    timeout: soon  # @timeout
"""

PROBLEM_LINE = re.compile(r"(?P<file>.+):(?P<line>\d+): (?P<field>[\w.\[\]-]+): (?P<reason>.+)")


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def valid(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(VALID, encoding="utf-8")
    return path


@pytest.fixture
def invalid(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(INVALID, encoding="utf-8")
    return path


def test_validate_accepts_a_valid_table(valid: Path) -> None:
    code, out, err = run("routes", "validate", str(valid))
    assert (code, err) == (0, "")
    assert out == f"{valid}: valid (version 3, 2 routes, 2 upstreams)\n"


def test_validate_lists_every_problem_one_per_line(invalid: Path) -> None:
    code, out, err = run("routes", "validate", str(invalid))
    assert (code, out) == (1, "")
    at = marks(INVALID)
    found = []
    for line in err.splitlines():
        parsed = PROBLEM_LINE.fullmatch(line)
        assert parsed is not None, line
        assert parsed["file"] == str(invalid)
        found.append((int(parsed["line"]), parsed["field"]))
    assert found == [
        (at["url"], "upstreams.payment.url"),
        (at["weights"], "routes[0].split"),
        (at["unknown"], "routes[1].to"),
        (at["timeout"], "routes[1].timeout"),
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param("version: 3\ndefault: a: b  # @here\n", "mapping values", id="syntax"),
        pytest.param(VALID + "default: payment  # @here\n", "duplicate key", id="duplicate-key"),
    ],
)
def test_validate_gives_the_line_of_broken_yaml(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(text, encoding="utf-8")
    code, _, err = run("routes", "validate", str(path))
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith(f"{path}:{marks(text)['here']}: YAML: ")
    assert reason in line


def test_validate_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    code, out, err = run("routes", "validate", str(path))
    assert (code, out) == (1, "")
    assert err.startswith(f"{path}: cannot read")


def test_validate_json_of_a_valid_table(valid: Path) -> None:
    code, out, _ = run("routes", "validate", "--json", str(valid))
    assert code == 0
    assert json.loads(out) == {"valid": True, "version": 3, "routes": 2}


def test_validate_json_of_an_invalid_table(invalid: Path) -> None:
    code, out, _ = run("routes", "validate", "--json", str(invalid))
    assert code == 1
    report = json.loads(out)
    assert report["valid"] is False
    at = marks(INVALID)
    assert sorted((p["line"], p["field"]) for p in report["problems"]) == [
        (at["url"], "upstreams.payment.url"),
        (at["weights"], "routes[0].split"),
        (at["unknown"], "routes[1].to"),
        (at["timeout"], "routes[1].timeout"),
    ]
    reasons = {p["field"]: p["message"] for p in report["problems"]}
    assert reasons["routes[0].split"] == "weights sum to 110, not 100"
    assert reasons["routes[1].to"] == "unknown upstream 'orders'"


def test_validate_json_lists_problems_by_line_like_the_text(invalid: Path) -> None:
    _, out, _ = run("routes", "validate", "--json", str(invalid))
    lines = [p["line"] for p in json.loads(out)["problems"]]
    assert lines == sorted(lines)


def test_show_prints_what_goes_where(valid: Path) -> None:
    code, out, err = run("routes", "show", str(valid))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "route table version 3"
    assert lines[1].split() == ["ROUTE", "MATCH", "GOES", "TO", "EXPOSED", "SAFETY", "NETS"]
    assert lines[2].split() == ["health", "/healthz", "payment", "both", "-"]
    assert lines[3].split() == [
        "payments",
        "GET,HEAD,POST",
        "/api/v1/payments/**",
        "monolith",
        "90%,",
        "payment",
        "10%",
        "sticky",
        "header:x-user-id",
        "both",
        "pin",  # a keyed route keeps users' writes readable (10s by default)
        "10s",
    ]
    assert lines[4].split() == ["(default)", "anything", "else", "monolith", "both", "-"]
    assert "upstreams:" in lines
    assert any(line.split()[:2] == ["payment", "http://127.0.0.1:8002"] for line in lines)


def test_show_json(valid: Path) -> None:
    code, out, _ = run("routes", "show", "--json", str(valid))
    assert code == 0
    rows = json.loads(out)
    assert [(r["route"], r["match"], r["to"]) for r in rows] == [
        ("health", "/healthz", "payment"),
        (
            "payments",
            "GET,HEAD,POST /api/v1/payments/**",
            "monolith 90%, payment 10% sticky header:x-user-id",
        ),
        ("(default)", "anything else", "monolith"),
    ]
    assert {r["max_body"] for r in rows} == {30_000_000}


def test_show_refuses_an_invalid_table(invalid: Path) -> None:
    code, out, err = run("routes", "show", str(invalid))
    assert (code, out) == (1, "")
    assert len(err.splitlines()) == 4
    assert all(PROBLEM_LINE.fullmatch(line) for line in err.splitlines())


def test_the_installed_command(valid: Path, invalid: Path) -> None:
    strangler = Path(sys.executable).parent / "strangler"
    ok = subprocess.run(
        [strangler, "routes", "validate", valid], capture_output=True, text=True, check=False
    )
    assert (ok.returncode, ok.stdout) == (0, f"{valid}: valid (version 3, 2 routes, 2 upstreams)\n")
    bad = subprocess.run(
        [strangler, "routes", "validate", invalid], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1
    assert len(bad.stderr.splitlines()) == 4
