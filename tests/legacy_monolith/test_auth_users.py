"""Login, tokens, registration and the profile, on SQLite and PostgreSQL."""

from __future__ import annotations

from fastapi.testclient import TestClient

from legacy_monolith.seed import DEMO_USER
from tests.legacy_monolith.conftest import login, register

PROBLEM = "application/problem+json"


def test_login_returns_a_bearer_token_that_opens_the_profile(client: TestClient) -> None:
    answer = client.post("/api/v1/auth/login", json={"email": DEMO_USER, "password": "password123"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] > 0
    me = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200
    assert me.json()["email"] == DEMO_USER
    assert me.json()["id"] == body["user_id"]
    assert "password_hash" not in me.json()


def test_login_email_is_case_insensitive(client: TestClient) -> None:
    assert login(client, DEMO_USER.upper())["Authorization"].startswith("Bearer ")


def test_wrong_password_is_401_problem(client: TestClient) -> None:
    answer = client.post("/api/v1/auth/login", json={"email": DEMO_USER, "password": "nope"})
    assert answer.status_code == 401
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["type"].endswith("/invalid-credentials")


def test_missing_or_bad_token_is_401_with_challenge(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic eDp5"}):
        answer = client.get("/api/v1/users/me", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["content-type"] == PROBLEM
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_logout_revokes_the_token(client: TestClient) -> None:
    _, headers = register(client)
    assert client.post("/api/v1/auth/logout", headers=headers).status_code == 204
    assert client.get("/api/v1/users/me", headers=headers).status_code == 401


def test_register_refuses_a_taken_email_in_any_case(client: TestClient) -> None:
    answer = client.post(
        "/api/v1/users",
        json={"email": DEMO_USER.upper(), "password": "long enough", "full_name": "Copy Cat"},
    )
    assert answer.status_code == 409
    assert answer.json()["type"].endswith("/email-taken")


def test_register_validates_input(client: TestClient) -> None:
    answer = client.post(
        "/api/v1/users", json={"email": "not-an-email", "password": "short", "full_name": ""}
    )
    assert answer.status_code == 422
    fields = {e["location"] for e in answer.json()["errors"]}
    assert fields == {"body.email", "body.password", "body.full_name"}


def test_an_email_that_lengthens_when_lowered_is_refused_not_a_500(client: TestClient) -> None:
    email = "İ" * 200 + "@example.com"  # 212 characters, 412 once lower-cased
    answer = client.post(
        "/api/v1/users", json={"email": email, "password": "long enough", "full_name": "X"}
    )
    assert answer.status_code == 422
    assert "254" in answer.json()["detail"]


def test_empty_strings_are_refused_since_oracle_would_store_null(client: TestClient) -> None:
    _, headers = register(client)
    answer = client.patch("/api/v1/users/me", json={"phone": ""}, headers=headers)
    assert answer.status_code == 422


def test_profile_update_changes_only_given_fields(client: TestClient) -> None:
    _, headers = register(client)
    answer = client.patch("/api/v1/users/me", json={"phone": "+3512100"}, headers=headers)
    assert answer.status_code == 200
    assert answer.json()["phone"] == "+3512100"
    assert answer.json()["full_name"] == "Test User"
    again = client.get("/api/v1/users/me", headers=headers).json()
    assert again["phone"] == "+3512100"


def test_profile_refuses_unknown_fields_and_control_characters(client: TestClient) -> None:
    _, headers = register(client)
    unknown = client.patch("/api/v1/users/me", json={"role": "staff"}, headers=headers)
    assert unknown.status_code == 422
    nul = client.patch("/api/v1/users/me", json={"full_name": "a\u0000b"}, headers=headers)
    assert nul.status_code == 422
    assert client.get("/api/v1/users/me", headers=headers).json()["role"] == "customer"
