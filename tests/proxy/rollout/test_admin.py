"""The admin API's rollouts on a real server (uvicorn on 127.0.0.1): the shapes the dashboard and
`strangler rollout --admin` read, the token on writes, and problem+json for every refusal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.admin.app import create_admin_app
from proxy.admin.problems import writer
from proxy.admin.rollout import rollout_router
from proxy.rollout.control import Rollouts
from proxy.rollout.store import FileRollouts
from proxy.store.file import FileStore
from tests.proxy.rollout.support import routes_yaml, write_routes
from tests.support import serving

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Author": "ana"}
ROLLOUT_KEYS = {
    "route", "to", "from", "state", "step", "steps", "weight", "bake_seconds", "step_started",
    "started", "updated", "driver", "reason", "author", "history", "last_analysis",
}  # fmt: skip
EVENT_KEYS = {"time", "event", "step", "weight", "version", "analysis", "message"}


def admin_app(tmp_path: Path, token: str | None = TOKEN) -> Any:
    block = "{to: payment, steps: [10, 50], bake: 1m}"
    routes = FileStore(write_routes(tmp_path, routes_yaml(rollout=block)))
    rollouts = FileRollouts(tmp_path / "var" / "routes-rollouts")
    app = create_admin_app(routes, token)
    app.include_router(rollout_router(lambda: Rollouts(routes, rollouts), writer))
    return app


@pytest.fixture
def api(tmp_path: Path) -> Iterator[httpx.Client]:
    with serving(admin_app(tmp_path)) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield client


def problem(answer: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert body["type"] == f"urn:strangler:problem:{kind}", body
    return body


def test_a_rollout_is_started_and_read_in_the_documented_shape(api: httpx.Client) -> None:
    assert api.get("/api/v1/rollouts").json() == []
    started = api.post(
        "/api/v1/rollouts",
        json={"route": "payments", "reason": "canary", "steps": [5, 20], "bake": "30s"},
        headers=AUTH,
    )
    assert started.status_code == 201, started.text
    body = started.json()
    assert set(body) >= ROLLOUT_KEYS
    assert (body["route"], body["to"], body["from"], body["state"]) == (
        "payments", "payment", "monolith", "pending",
    )  # fmt: skip
    assert (body["steps"], body["bake_seconds"], body["weight"]) == ([5, 20, 100], 30.0, 0)
    assert (body["author"], body["reason"], body["driver"]) == ("ana", "canary", None)
    assert set(body["history"][0]) == EVENT_KEYS
    assert api.get("/api/v1/rollouts/payments").json() == body
    assert api.get("/api/v1/rollouts").json() == [body]


def test_the_block_gives_the_defaults_and_thresholds_override_it(api: httpx.Client) -> None:
    body = api.post(
        "/api/v1/rollouts",
        json={"route": "payments", "reason": "canary", "max_p99_ratio": 3, "min_requests": 50},
        headers=AUTH,
    ).json()
    assert (body["steps"], body["bake_seconds"]) == ([10, 50, 100], 60.0)
    assert (body["analysis"]["max_p99_ratio"], body["analysis"]["min_requests"]) == (3.0, 50)


def test_pause_resume_promote_and_abort(api: httpx.Client) -> None:
    api.post("/api/v1/rollouts", json={"route": "payments", "reason": "go"}, headers=AUTH)
    say = {"reason": "looking"}
    paused = api.post("/api/v1/rollouts/payments/pause", json=say, headers=AUTH).json()
    assert paused["state"] == "paused"
    assert paused["history"][-1]["message"] == "looking (ana)"
    resumed = api.post("/api/v1/rollouts/payments/resume", json=say, headers=AUTH).json()
    assert resumed["state"] == "pending"
    promoted = api.post("/api/v1/rollouts/payments/promote", json=say, headers=AUTH).json()
    assert promoted["promote_requested"] is True
    aborted = api.post("/api/v1/rollouts/payments/abort", json=say, headers=AUTH).json()
    assert aborted["state"] == "aborted"  # nothing had moved yet


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "kind"),
    [
        pytest.param("GET", "/api/v1/rollouts/payments", None, 404, "unknown-rollout", id="none"),
        pytest.param(
            "POST",
            "/api/v1/rollouts",
            {"route": "orders", "reason": "x"},
            404,
            "unknown-route",
            id="unknown-route",
        ),
        pytest.param(
            "POST",
            "/api/v1/rollouts",
            {"route": "payments", "reason": "x", "steps": [50, 5]},
            422,
            "invalid-rollout",
            id="steps",
        ),
        pytest.param(
            "POST",
            "/api/v1/rollouts",
            {"route": "payments", "reason": "x", "to": "monolith"},
            422,
            "invalid-rollout",
            id="already-there",
        ),
        pytest.param(
            "POST",
            "/api/v1/rollouts",
            {"route": "payments", "reason": "x", "colour": "red"},
            422,
            "validation-failed",
            id="unknown-field",
        ),
        pytest.param(
            "POST",
            "/api/v1/rollouts",
            {"route": "payments"},
            422,
            "validation-failed",
            id="no-reason",
        ),
        pytest.param(
            "POST",
            "/api/v1/rollouts/payments/pause",
            {"reason": "x"},
            404,
            "unknown-rollout",
            id="pause-nothing",
        ),
    ],
)
def test_refusals_are_problems(
    api: httpx.Client, method: str, path: str, body: Any, status: int, kind: str
) -> None:
    problem(api.request(method, path, json=body, headers=AUTH), status, kind)


def test_one_rollout_per_route_at_a_time(api: httpx.Client) -> None:
    api.post("/api/v1/rollouts", json={"route": "payments", "reason": "go"}, headers=AUTH)
    again = api.post("/api/v1/rollouts", json={"route": "payments", "reason": "go"}, headers=AUTH)
    body = problem(again, 409, "rollout-refused")
    assert "already being rolled out to 'payment' (pending, 0%): abort it first" in body["detail"]
    api.post("/api/v1/rollouts/payments/abort", json={"reason": "x"}, headers=AUTH)
    done = api.post("/api/v1/rollouts/payments/resume", json={"reason": "x"}, headers=AUTH)
    problem(done, 409, "rollout-refused")
    fresh = api.post("/api/v1/rollouts", json={"route": "payments", "reason": "2"}, headers=AUTH)
    assert fresh.status_code == 201  # a finished one is replaced


def test_writes_need_the_token(api: httpx.Client, tmp_path: Path) -> None:
    body = {"route": "payments", "reason": "go"}
    problem(api.post("/api/v1/rollouts", json=body), 401, "unauthorized")
    wrong = {"Authorization": "Bearer nope"}
    problem(api.post("/api/v1/rollouts", json=body, headers=wrong), 401, "unauthorized")
    assert api.get("/api/v1/rollouts").status_code == 200  # reads are open, as the table's
    other = tmp_path / "other"
    other.mkdir()
    with serving(admin_app(other, token=None)) as url:
        refused = httpx.post(f"{url}/api/v1/rollouts", json=body, headers=AUTH, timeout=10)
    problem(refused, 403, "writes-disabled")
