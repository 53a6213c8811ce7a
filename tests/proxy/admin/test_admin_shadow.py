"""The admin API's shadow report and its reset, over a real file sink, and a flip that sets a
route's sticky key: what a dashboard or a platform engineer's script reads and does."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from proxy.admin.app import create_admin_app
from proxy.runtime import Runtime
from proxy.settings import ProxySettings
from proxy.shadow.compare import Answer, Rules, compare
from proxy.shadow.report import Tally
from proxy.store.file import FileStore
from proxy.table.compile import compile_table
from proxy.table.loader import load_file

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Author": "ana"}
TABLE = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  payment: {url: "http://127.0.0.1:8002"}
default: monolith
routes:
  - name: payments
    match: {path: /api/v1/payments}
    to: monolith
    shadow: {to: payment}
"""
JSON = ((b"content-type", b"application/json"),)


def tally(differing: int, same: int) -> Tally:
    """Comparisons as a worker makes them: `differing` answers differ in $.amount."""
    counted = Tally()
    primary = Answer(200, JSON, b'{"amount": "10.00", "token": "tok-secret"}')
    for _ in range(differing):
        candidate = Answer(200, JSON, b'{"amount": "10.01", "token": "tok-secret"}')
        counted.add(compare(primary, candidate, Rules()))
    for _ in range(same):
        counted.add(compare(primary, primary, Rules()))
    return counted


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    (tmp_path / "routes.yaml").write_text(TABLE)
    settings = ProxySettings(routes=tmp_path / "routes.yaml", state_dir=tmp_path / "var")
    return Runtime(settings, compile_table(load_file(tmp_path / "routes.yaml")))


@pytest.fixture
def client(tmp_path: Path, runtime: Runtime) -> Iterator[TestClient]:
    store = FileStore(tmp_path / "routes.yaml")
    with TestClient(create_admin_app(store, TOKEN, runtime)) as test_client:
        yield test_client


def put(runtime: Runtime, worker: str, counted: Tally) -> None:
    asyncio.run(runtime.sink.put_tallies(worker, {"payments": counted.to_dict()}))


def test_the_report_merges_every_worker(runtime: Runtime, client: TestClient) -> None:
    put(runtime, "host:1:1", tally(differing=2, same=3))
    put(runtime, "host:2:1", tally(differing=1, same=4))
    (report,) = client.get("/api/v1/shadow", headers=AUTH).json()
    assert report["route"] == "payments"
    assert (report["compared"], report["mismatched"]) == (10, 3)
    assert report["mismatch_rate"] == 0.3
    (field,) = report["fields"]
    assert field["field"] == "$.amount"
    assert field["examples"][0] == {"primary": '"10.00"', "candidate": '"10.01"'}
    assert client.get("/api/v1/shadow", params={"route": "payments"}, headers=AUTH).json() == [
        report
    ]


def test_the_example_pairs_are_users_data_and_need_the_token(client: TestClient) -> None:
    refused = client.get("/api/v1/shadow")
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"


def test_a_route_without_comparisons_reports_zero(client: TestClient) -> None:
    (report,) = client.get("/api/v1/shadow", params={"route": "orders"}, headers=AUTH).json()
    assert (report["route"], report["compared"], report["mismatch_rate"]) == ("orders", 0, 0)


def test_a_reset_needs_the_token_and_starts_the_numbers_again(
    runtime: Runtime, client: TestClient
) -> None:
    put(runtime, "host:1:1", tally(differing=2, same=3))
    refused = client.delete("/api/v1/shadow", params={"route": "payments"})
    assert refused.status_code in (401, 403)
    assert refused.headers["content-type"] == "application/problem+json"
    assert client.get("/api/v1/shadow", headers=AUTH).json()[0]["compared"] == 5
    assert (
        client.delete("/api/v1/shadow", params={"route": "payments"}, headers=AUTH).status_code
        == 204
    )
    after = client.get("/api/v1/shadow", params={"route": "payments"}, headers=AUTH)
    assert after.json()[0]["compared"] == 0


def test_a_bad_query_is_a_problem_not_a_500(client: TestClient) -> None:
    answer = client.get("/api/v1/shadow", params={"top": 0}, headers=AUTH)
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"


def test_flip_sets_the_sticky_key_and_a_later_flip_keeps_it(client: TestClient) -> None:
    first = client.post(
        "/api/v1/routes/flip",
        json={
            "route": "payments",
            "split": {"monolith": 99, "payment": 1},
            "sticky": "header:Authorization",
            "reason": "canary 1%",
        },
        headers=AUTH,
    )
    assert first.status_code == 200, first.text
    again = client.post(
        "/api/v1/routes/flip",
        json={"route": "payments", "to": "payment", "reason": "moved"},
        headers=AUTH,
    )
    assert again.status_code == 200, again.text
    table = client.get("/api/v1/routes").json()["table"]
    assert table["routes"][0]["sticky"] == "header:authorization"
    bad = client.post(
        "/api/v1/routes/flip",
        json={"route": "payments", "to": "payment", "sticky": "nonsense", "reason": "x"},
        headers=AUTH,
    )
    assert bad.status_code == 422
    assert "sticky" in bad.text
