"""The payment service's `GET /cutover`, the route table's gate for it: 503 with the reasons
until the backfill is done, follow has polled and two reconciles found drift 0, then 200; on
SQLite and PostgreSQL (the sync's database pairs), and asked by `check_gates` over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from proxy.table.gates import GateClosed, ask_gates, check_gates
from proxy.table.loader import load_text
from services.payment.app import create_app
from services.payment.settings import Settings
from services.payment.sync import backfill, follow_once, reconcile
from tests.services.payment.conftest import service_settings
from tests.services.payment.sync.conftest import (  # noqa: F401 (fixtures)
    Pair,
    pair,
    postgres_database,
    sqlite_pair,
    sqlite_templates,
)
from tests.support import serving

CHECKS = ["backfill", "follow_alive", "lag", "reconciles"]


def settings(database_url: str) -> Settings:
    # Migrated by the fixture already (Alembic's config cannot take the PostgreSQL schema URL's
    # `%`); the monolith is never asked by /cutover.
    return service_settings(database_url, migrate_on_start=False, legacy_url="http://127.0.0.1:9")


@pytest.fixture
def client(pair: Pair) -> Iterator[TestClient]:  # noqa: F811
    with TestClient(create_app(settings(pair.service_url))) as test_client:
        yield test_client


def cutover(client: TestClient, status: int) -> dict[str, Any]:
    answer = client.get("/cutover")
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    body: dict[str, Any] = answer.json()
    assert [c["name"] for c in body["checks"]] == CHECKS
    assert body["ready"] is (status == 200)
    assert body["reasons"] == [c["detail"] for c in body["checks"] if not c["ok"]]
    return body


def test_cutover_opens_once_the_data_is_ready(pair: Pair, client: TestClient) -> None:  # noqa: F811
    body = cutover(client, 503)
    assert body["reasons"] == [
        "the backfill has not finished",
        "follow has not run",
        "follow has not run, so its lag is unknown",
        "0 of the 2 reconciles needed have run",
    ]
    assert (body["lag_seconds"], body["drift"]) == (None, None)  # nothing has run: unknown

    backfill(pair.legacy, pair.service)
    follow_once(pair.legacy, pair.service, safety_delay=0)
    assert reconcile(pair.legacy, pair.service, settle=0).drift == 0
    body = cutover(client, 503)
    assert body["reasons"] == ["1 of the 2 reconciles needed have run"]

    assert reconcile(pair.legacy, pair.service, settle=0).drift == 0
    body = cutover(client, 200)
    assert body["reasons"] == []
    assert all(c["ok"] for c in body["checks"])
    # What the route table's control plane keeps as the evidence of the change it allows.
    assert body["drift"] == 0
    assert 0 <= body["lag_seconds"] < 60


def test_a_route_table_gated_on_cutover_moves_payments_only_when_ready(
    sqlite_pair: Pair,  # noqa: F811
) -> None:
    with serving(create_app(settings(sqlite_pair.service_url))) as url:
        text = (
            "version: 1\nupstreams:\n"
            '  monolith: {url: "http://127.0.0.1:8001"}\n'
            f'  payment: {{url: "{url}", gate: "{url}/cutover"}}\n'
            "default: monolith\nroutes:\n"
            "  - name: payments\n    match: {path: /api/v1/payments}\n    to: {upstream}\n"
        )
        before = load_text(text.replace("{upstream}", "monolith"))
        after = load_text(text.replace("{upstream}", "payment"))
        with pytest.raises(GateClosed) as caught:
            check_gates(before, after)
        assert "is closed (503): the backfill has not finished; follow has not run" in str(
            caught.value
        )
        backfill(sqlite_pair.legacy, sqlite_pair.service)
        follow_once(sqlite_pair.legacy, sqlite_pair.service, safety_delay=0)
        for _ in range(2):
            reconcile(sqlite_pair.legacy, sqlite_pair.service, settle=0)
        assert check_gates(before, after) == ["payment"]
        (answer,) = ask_gates(before, after)
        assert (answer.open, answer.drift) == (True, 0)
        assert answer.lag_seconds is not None
        assert answer.lag_seconds >= 0


def test_cutover_without_its_tables_is_a_503_problem(tmp_path: Path) -> None:
    app = create_app(settings(f"sqlite:///{tmp_path / 'empty.db'}"))  # never migrated
    answer = TestClient(app).get("/cutover")  # no lifespan: nothing creates the tables
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == "The database is unreachable"
