"""Every error is an RFC 9457 problem with a stable type, including the ones nobody planned."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from legacy_monolith.app import create_app
from legacy_monolith.errors import PROBLEM_BASE, TITLES, ApiError
from tests.legacy_monolith.conftest import make_settings


def test_unknown_route_and_wrong_method_are_problems(client: TestClient) -> None:
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json() == {
        "type": PROBLEM_BASE + "not-found",
        "title": TITLES["not-found"],
        "status": 404,
        "detail": "No resource at /api/v1/nothing-here",
        "instance": "/api/v1/nothing-here",
    }
    wrong = client.delete("/api/v1/products")
    assert wrong.status_code == 405
    assert wrong.headers["content-type"] == "application/problem+json"
    assert wrong.json()["type"] == PROBLEM_BASE + "method-not-allowed"
    assert "GET" in wrong.headers["allow"]


def test_malformed_json_is_400_and_wrong_shape_is_422(client: TestClient) -> None:
    broken = client.post(
        "/api/v1/auth/login", content=b'{"email": ', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["type"] == PROBLEM_BASE + "malformed-json"
    shape = client.post("/api/v1/auth/login", json=["not", "an", "object"])
    assert shape.status_code == 422
    assert shape.json()["errors"][0]["location"] == "body"


def test_an_unexpected_exception_is_a_500_problem_without_internals(sqlite_seeded: str) -> None:
    app = create_app(make_settings(sqlite_seeded))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/boom")
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == PROBLEM_BASE + "internal-error"
    assert "secret" not in answer.text


def test_health_is_503_problem_when_the_database_is_unreachable(tmp_path: Path) -> None:
    settings = make_settings(
        "postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1", create_schema=False
    )
    with TestClient(create_app(settings)) as client:
        answer = client.get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["type"] == PROBLEM_BASE + "service-unavailable"


def test_problem_kinds_are_a_closed_set() -> None:
    with pytest.raises(ValueError, match="unknown problem kind"):
        ApiError(400, "made-up", "no such type")
