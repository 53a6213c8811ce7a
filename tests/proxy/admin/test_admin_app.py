"""The admin API over a real file store: reads, writes with If-Match, auth, problems."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from proxy.admin.app import create_admin_app
from proxy.store.file import FileStore

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Author": "ana"}
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
def store(tmp_path: Path) -> FileStore:
    (tmp_path / "routes.yaml").write_text(TABLE)
    return FileStore(tmp_path / "routes.yaml")


@pytest.fixture
def client(store: FileStore) -> Iterator[TestClient]:
    with TestClient(create_admin_app(store, TOKEN)) as test_client:
        yield test_client


def test_current_table_with_its_version_as_etag(client: TestClient) -> None:
    answer = client.get("/api/v1/routes")
    assert answer.status_code == 200
    assert answer.headers["etag"] == '"1"'
    body = answer.json()
    assert body["version"] == 1
    assert body["text"] == TABLE
    assert body["table"]["routes"][0]["to"] == "monolith"


def test_flip_history_diff_and_rollback(client: TestClient) -> None:
    flipped = client.post(
        "/api/v1/routes/flip",
        json={"route": "payments", "split": {"monolith": 90, "payment": 10}, "reason": "canary"},
        headers=AUTH,
    )
    assert flipped.status_code == 200
    assert flipped.json()["version"] == 2
    assert flipped.json()["author"] == "ana"
    assert flipped.json()["changes"][0]["fields"]["split"]["new"] == {"monolith": 90, "payment": 10}
    assert "# moves first" in flipped.json()["text"]
    back = client.post(
        "/api/v1/routes/rollback", json={"version": 1, "reason": "errors"}, headers=AUTH
    )
    assert back.json()["version"] == 3
    assert back.json()["reason"] == "rollback to version 1: errors"
    history = client.get("/api/v1/routes/history").json()
    assert [v["version"] for v in history] == [3, 2, 1]
    diff = client.get("/api/v1/routes/diff", params={"from": 1, "to": 2}).json()
    assert diff["changes"][0]["name"] == "payments"
    assert client.get("/api/v1/routes/versions/2").json()["table"]["routes"][0]["split"]


def test_replace_needs_if_match_and_loses_to_a_concurrent_change(client: TestClient) -> None:
    changed = TABLE.replace("to: monolith", "to: payment")
    yaml = {"Content-Type": "application/yaml"}
    missing = client.put(
        "/api/v1/routes", params={"reason": "x"}, content=changed, headers={**AUTH, **yaml}
    )
    assert missing.status_code == 428
    ok = client.put(
        "/api/v1/routes",
        params={"reason": "cut"},
        content=changed,
        headers={**AUTH, **yaml, "If-Match": '"1"'},
    )
    assert ok.status_code == 200, ok.text
    stale = client.put(
        "/api/v1/routes",
        params={"reason": "late"},
        content=TABLE,
        headers={**AUTH, **yaml, "If-Match": '"1"'},
    )
    assert stale.status_code == 409
    assert stale.headers["content-type"] == "application/problem+json"
    assert stale.json()["type"].endswith("version-conflict")


def test_an_invalid_table_is_422_with_every_problem_and_nothing_changes(client: TestClient) -> None:
    broken = TABLE.replace("to: monolith", "to: nowhere").replace(
        "version: 1", "version: 1\nmax_body: lots"
    )
    answer = client.put(
        "/api/v1/routes",
        params={"reason": "oops"},
        content=broken,
        headers={**AUTH, "Content-Type": "application/yaml", "If-Match": '"1"'},
    )
    assert answer.status_code == 422
    problems = answer.json()["problems"]
    assert {p["field"] for p in problems} >= {"max_body", "routes[0].to"}
    assert all(p["line"] for p in problems)
    assert client.get("/api/v1/routes").json()["version"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-token"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong-token"),
    ],
)
def test_writes_need_the_token(client: TestClient, headers: dict[str, str]) -> None:
    answer = client.post(
        "/api/v1/routes/rollback", json={"version": 1, "reason": "x"}, headers=headers
    )
    assert answer.status_code == 401
    assert answer.json()["type"].endswith("unauthorized")


def test_the_openapi_document_lists_every_operation(client: TestClient) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    assert set(paths) == {
        "/api/v1/routes",
        "/api/v1/routes/status",
        "/api/v1/routes/history",
        "/api/v1/routes/versions/{number}",
        "/api/v1/routes/diff",
        "/api/v1/routes/flip",
        "/api/v1/routes/rollback",
        "/api/v1/routes/dry-run",
        "/api/v1/routes/flip/dry-run",
        "/api/v1/routes/rollback/dry-run",
        "/api/v1/shadow",
        "/api/v1/ledger",
    }


def test_the_ledger_of_the_history(store: FileStore) -> None:
    """Open like the other reads: each route's state, since when, who changed it and why."""
    with TestClient(create_admin_app(store, TOKEN)) as client:
        for body in (
            {"route": "payments", "split": {"monolith": 90, "payment": 10}, "reason": "canary"},
            {"route": "payments", "to": "payment", "reason": "live"},
        ):
            assert client.post("/api/v1/routes/flip", json=body, headers=AUTH).status_code == 200
        back = {"version": 2, "reason": "errors"}
        assert client.post("/api/v1/routes/rollback", json=back, headers=AUTH).status_code == 200
    with TestClient(create_admin_app(store, None)) as client:
        answer = client.get("/api/v1/ledger")
        assert answer.status_code == 200
        ledger = answer.json()
        assert ledger["versions"] == {"first": 1, "last": 4}
        assert ledger["unreadable"] == []
        (payments,) = ledger["routes"]
        assert payments["name"] == "payments"
        assert payments["state"]["label"] == "canary 10% to payment"
        assert (payments["since"]["version"], payments["since"]["author"]) == (4, "ana")
        assert payments["since"]["reason"] == "rollback to version 2: errors"
        assert [
            (t["version"], t["from"] and t["from"]["label"], t["to"]["label"])
            for t in payments["transitions"]
        ] == [
            (1, None, "legacy"),
            (2, "legacy", "canary 10% to payment"),
            (3, "canary 10% to payment", "moved to payment"),
            (4, "moved to payment", "canary 10% to payment"),
        ]
        assert client.get("/api/v1/ledger", params={"route": "payments"}).json() == ledger
        unknown = client.get("/api/v1/ledger", params={"route": "nope"})
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == "application/problem+json"
        assert unknown.json()["type"].endswith("unknown-route")
        assert unknown.json()["detail"] == "no route 'nope' in the history"


def test_without_a_token_the_api_is_read_only(store: FileStore) -> None:
    with TestClient(create_admin_app(store, None)) as client:
        assert client.get("/api/v1/routes").status_code == 200
        refused = client.post("/api/v1/routes/rollback", json={"version": 1, "reason": "x"})
        assert refused.status_code == 403


def test_unknown_route_version_and_bad_bodies_are_problems(client: TestClient) -> None:
    assert client.get("/api/v1/routes/versions/99").status_code == 404
    unknown = client.post(
        "/api/v1/routes/flip", json={"route": "nope", "to": "payment", "reason": "r"}, headers=AUTH
    )
    assert unknown.status_code == 404
    both = client.post(
        "/api/v1/routes/flip",
        json={"route": "payments", "to": "payment", "split": {"a": 100}, "reason": "r"},
        headers=AUTH,
    )
    assert both.status_code == 422
    no_reason = client.post("/api/v1/routes/rollback", json={"version": 1}, headers=AUTH)
    assert no_reason.status_code == 422
    assert no_reason.headers["content-type"] == "application/problem+json"


def test_a_dry_run_of_each_write_commits_nothing(client: TestClient, store: FileStore) -> None:
    changed = TABLE.replace("to: monolith", "to: payment")
    headers = {**AUTH, "Content-Type": "application/yaml", "If-Match": '"1"'}
    put = client.put(
        "/api/v1/routes/dry-run", params={"reason": "cut"}, content=changed, headers=headers
    )
    assert put.status_code == 200, put.text
    report = put.json()
    assert (report["dry_run"], report["committed"], report["would_commit"]) == (True, False, True)
    assert (report["version"], report["author"], report["reason"]) == (2, "ana", "cut")
    assert report["changes"][0]["fields"] == {"to": {"old": "monolith", "new": "payment"}}
    assert report["gates"] == []  # no upstream here has a gate
    flip = client.post(
        "/api/v1/routes/flip/dry-run",
        json={"route": "payments", "to": "payment", "reason": "r"},
        headers=AUTH,
    )
    assert flip.status_code == 200
    assert flip.json()["changes"] == report["changes"]
    rollback = client.post(
        "/api/v1/routes/rollback/dry-run", json={"version": 1, "reason": "r"}, headers=AUTH
    )
    assert (rollback.status_code, rollback.json()["changes"]) == (200, [])
    stale = client.put(
        "/api/v1/routes/dry-run",
        params={"reason": "cut"},
        content=changed,
        headers={**headers, "If-Match": '"7"'},
    )
    assert stale.status_code == 409  # the same checks as the write
    assert [v.version for v in store.history()] == [1]
    assert store.current().text == TABLE
    # A flag the proxy does not know is refused, never ignored into a plain write.
    unknown = client.post(
        "/api/v1/routes/flip",
        json={"route": "payments", "to": "payment", "reason": "r", "dry_run": True},
        headers=AUTH,
    )
    assert unknown.status_code == 422
    assert [v.version for v in store.history()] == [1]

    done = client.put("/api/v1/routes", params={"reason": "cut"}, content=changed, headers=headers)
    assert (done.json()["version"], done.json()["changes"]) == (2, report["changes"])


def test_posting_a_table_to_diff_answers_its_changes_and_needs_the_token(
    client: TestClient, store: FileStore
) -> None:
    changed = TABLE.replace("to: monolith", "to: payment")
    yaml = {"Content-Type": "application/yaml"}
    refused = client.post("/api/v1/routes/diff", content=changed, headers=yaml)
    assert refused.status_code == 401
    answer = client.post("/api/v1/routes/diff", content=changed, headers={**AUTH, **yaml})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["from"], body["valid"], body["would_commit"], body["gates"]) == (1, True, True, [])
    assert body["changes"][0]["name"] == "payments"
    invalid = client.post(
        "/api/v1/routes/diff",
        content=changed.replace("to: payment", "to: nowhere"),
        headers={**AUTH, **yaml},
    )
    assert invalid.status_code == 422
    assert [p["field"] for p in invalid.json()["problems"]] == ["routes[0].to"]
    assert [v.version for v in store.history()] == [1]
