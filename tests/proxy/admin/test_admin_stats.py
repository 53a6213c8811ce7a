"""GET /api/v1/stats over a real file sink: every worker's arms merged over the window (this
worker's own numbers fresh), what the default upstream still serves, and problems for a bad
window or a sink that cannot be read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from proxy.admin.app import create_admin_app
from proxy.admin.stats import stats_router
from proxy.dataplane.armstats import ArmStats
from proxy.shadow.sink import FileSink, SinkUnavailable
from proxy.store.file import FileStore

TABLE = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  payment: {url: "http://127.0.0.1:8002"}
default: monolith
routes:
  - name: payments
    match: {path: /api/v1/payments}
    split: {monolith: 90, payment: 10}
"""


class DownSink(FileSink):
    async def stats(self) -> list[dict[str, Any]]:
        raise SinkUnavailable("the shadow sink at redis://127.0.0.1:1 is unreachable")


def make_client(tmp_path: Path, runtime: Any) -> TestClient:
    (tmp_path / "routes.yaml").write_text(TABLE)
    app = create_admin_app(FileStore(tmp_path / "routes.yaml"), None, runtime)
    app.include_router(stats_router(runtime))
    return TestClient(app)


@pytest.fixture
def runtime(tmp_path: Path) -> SimpleNamespace:
    """What the endpoint reads of the proxy's runtime: its sink, worker id and statistics."""
    return SimpleNamespace(
        sink=FileSink(tmp_path / "shadow"),
        worker="here:1:1",
        arm_stats=ArmStats(),
        record_commit=lambda outcome: None,
    )


@pytest.fixture
def client(tmp_path: Path, runtime: SimpleNamespace) -> Iterator[TestClient]:
    with make_client(tmp_path, runtime) as test_client:
        yield test_client


def test_arms_of_every_worker_and_what_the_monolith_serves(
    client: TestClient, runtime: SimpleNamespace
) -> None:
    other = ArmStats()
    for status in (200, 200, 503):
        other.observe("payments", "payment", status, 0.05)
    other.observe("default", "monolith", 200, 0.01)
    other.legacy("GET", b"/api/v1/orders/456")
    asyncio.run(runtime.sink.put_stats("there:2:1", other.doc()))
    here = runtime.arm_stats
    here.observe("payments", "monolith", 200, 0.02)
    for path in (b"/api/v1/orders/123", b"/api/v1/users/9"):
        here.observe("default", "monolith", 200, 0.01)
        here.legacy("GET", path)
    # This worker's put of a second ago is stale: the endpoint takes its numbers fresh.
    asyncio.run(runtime.sink.put_stats("here:1:1", ArmStats().doc()))

    answer = client.get("/api/v1/stats", params={"window": 60})
    assert answer.status_code == 200
    body = answer.json()
    assert body["window"] == 60
    assert body["now"] > 0
    payment = body["routes"]["payments"]["payment"]
    assert (payment["requests"], payment["errors"]) == (3, 1)
    assert payment["error_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert 0.0444 < payment["p50"] <= 0.0649
    assert body["routes"]["payments"]["monolith"]["requests"] == 1
    assert body["routes"]["default"]["monolith"]["requests"] == 3
    assert body["legacy_paths"] == [
        {"template": "GET /api/v1/orders/{id}", "requests": 2},
        {"template": "GET /api/v1/users/{id}", "requests": 1},
    ]
    top = client.get("/api/v1/stats", params={"top": 1}).json()
    assert top["window"] == 60  # the default
    assert len(top["legacy_paths"]) == 1


def test_no_traffic_yet(client: TestClient) -> None:
    body = client.get("/api/v1/stats").json()
    assert (body["routes"], body["legacy_paths"]) == ({}, [])


@pytest.mark.parametrize("window", ["0", "901", "1m", ""])
def test_a_bad_window_is_a_problem(client: TestClient, window: str) -> None:
    answer = client.get("/api/v1/stats", params={"window": window})
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["errors"][0]["location"] == "query.window"


def test_a_sink_that_cannot_be_read_is_a_503(tmp_path: Path) -> None:
    runtime = SimpleNamespace(
        sink=DownSink(tmp_path), worker="w", arm_stats=ArmStats(), record_commit=lambda o: None
    )
    with make_client(tmp_path, runtime) as client:
        answer = client.get("/api/v1/stats")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["retry-after"] == "5"
    assert "unreachable" in answer.json()["detail"]
