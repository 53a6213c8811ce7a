"""The catalog service's `GET /cutover`, the route table's gate for it. The read model is fed by
two syncs, products (followed by its change column) and categories (full refresh), so the gate
is both declarations' gates at once: 503 naming each sync whose data is not ready, 200 only when
both have finished their backfill, polled, and confirmed drift 0 with two fresh reconciles; a
reconcile of one sync finding drift closes the gate again naming only that sync. Real databases
(SQLite and PostgreSQL), the toolkit's own jobs, and the proxy's `check_gates` over HTTP; a
database the service cannot read is a 503 problem, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from datasync.backfill import backfill
from datasync.engines import make_legacy_engine, make_service_engine
from datasync.incremental import follow_once
from datasync.reconcile import reconcile
from datasync.spec import Spec
from legacy_monolith.db import make_engine as make_monolith_engine
from legacy_monolith.models import Category, Product
from proxy.table.gates import GateClosed, check_gates
from proxy.table.loader import load_text
from services.catalog.app import create_app
from services.catalog.db import migrate
from tests.services.catalog.conftest import (
    CATEGORIES,
    PRODUCTS,
    catalog_settings,
    database_url,
    legacy_now,
    seed_shop,
)
from tests.support import free_port, serving

CHECKS = ["backfill", "follow_alive", "lag", "reconciles"]
SYNCS = [PRODUCTS, CATEGORIES]
NAMES = [spec.name for spec in SYNCS]


class Databases:
    """A seeded monolith database and a migrated (empty) catalog database."""

    def __init__(self, legacy_url: str, catalog_url: str) -> None:
        seed_shop(legacy_url)
        self.catalog_url = catalog_url
        self.legacy = make_legacy_engine(legacy_url)
        self.service = make_service_engine(catalog_url)
        self.monolith = make_monolith_engine(legacy_url)
        migrate(self.service)

    def backfill(self, *specs: Spec) -> None:
        for spec in specs:
            backfill(spec, self.legacy, self.service)

    def follow(self, *specs: Spec) -> None:
        for spec in specs:
            follow_once(spec, self.legacy, self.service, safety_delay=0)

    def reconcile(self, *specs: Spec) -> list[int]:
        return [reconcile(spec, self.legacy, self.service, settle=0).drift for spec in specs]

    def ready(self) -> None:
        self.backfill(*SYNCS)
        self.follow(*SYNCS)
        assert self.reconcile(*SYNCS) + self.reconcile(*SYNCS) == [0, 0, 0, 0]

    def dispose(self) -> None:
        for engine in (self.legacy, self.service, self.monolith):
            engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    made = Databases(
        database_url(request, tmp_path, "legacy"), database_url(request, tmp_path, "catalog")
    )
    yield made
    made.dispose()


@pytest.fixture
def client(databases: Databases) -> Iterator[TestClient]:
    settings = catalog_settings(databases.catalog_url, migrate_on_start=False)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def cutover(client: TestClient, status: int) -> dict[str, Any]:
    """GET /cutover, expecting `status`; check the body's shape and its consistency."""
    answer = client.get("/cutover")
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    body: dict[str, Any] = answer.json()
    assert body["ready"] is (status == 200)
    assert list(body["syncs"]) == NAMES
    for name, sync in body["syncs"].items():
        assert [c["name"] for c in sync["checks"]] == CHECKS
        assert sync["reasons"] == [c["detail"] for c in sync["checks"] if not c["ok"]]
        assert sync["ready"] is not sync["reasons"]
        assert [c for c in body["checks"] if c["sync"] == name] == [
            {"sync": name, **c} for c in sync["checks"]
        ]
    assert body["reasons"] == [
        f"{name}: {reason}" for name, sync in body["syncs"].items() for reason in sync["reasons"]
    ]
    return body


def not_ready(body: dict[str, Any]) -> list[str]:
    return [name for name, sync in body["syncs"].items() if not sync["ready"]]


def test_cutover_opens_only_once_both_syncs_are_ready(
    databases: Databases, client: TestClient
) -> None:
    body = cutover(client, 503)
    never = [
        "the backfill has not finished",
        "follow has not run",
        "follow has not run, so its lag is unknown",
        "0 of the 2 reconciles needed have run",
    ]
    assert body["reasons"] == [f"{name}: {reason}" for name in NAMES for reason in never]

    databases.backfill(*SYNCS)
    databases.follow(*SYNCS)
    assert databases.reconcile(*SYNCS) == [0, 0]
    body = cutover(client, 503)
    assert body["reasons"] == [f"{name}: 1 of the 2 reconciles needed have run" for name in NAMES]

    assert databases.reconcile(PRODUCTS) == [0]  # products confirmed; categories not yet
    body = cutover(client, 503)
    assert not_ready(body) == [CATEGORIES.name]
    assert body["reasons"] == [f"{CATEGORIES.name}: 1 of the 2 reconciles needed have run"]

    assert databases.reconcile(CATEGORIES) == [0]
    body = cutover(client, 200)
    assert body["reasons"] == []
    assert all(c["ok"] for c in body["checks"])
    assert len(body["checks"]) == len(CHECKS) * len(SYNCS)


def drift_products(databases: Databases) -> None:
    """A price changed in the monolith that follow has not brought over."""
    with databases.monolith.begin() as conn:
        conn.execute(
            update(Product)
            .where(Product.id == 1)
            .values(price=Decimal("123.45"), updated_at=legacy_now())
        )


def drift_categories(databases: Databases) -> None:
    """A category renamed in the monolith that no refresh pass has brought over."""
    with databases.monolith.begin() as conn:
        conn.execute(update(Category).where(Category.id == 1).values(name="Renamed"))


@pytest.mark.parametrize(
    ("drifting", "make_drift"),
    [(PRODUCTS, drift_products), (CATEGORIES, drift_categories)],
    ids=["products", "categories"],
)
def test_drift_in_one_sync_closes_the_gate_naming_only_it(
    databases: Databases, client: TestClient, drifting: Spec, make_drift: Any
) -> None:
    databases.ready()
    cutover(client, 200)
    make_drift(databases)
    assert databases.reconcile(*SYNCS) == [1 if spec is drifting else 0 for spec in SYNCS]
    body = cutover(client, 503)
    assert not_ready(body) == [drifting.name]
    assert body["reasons"] == [
        f"{drifting.name}: the last 2 reconciles did not all find drift 0 (drift 1, 0)"
    ]

    databases.follow(drifting)  # the change brought over: drift 0, confirmed twice
    assert databases.reconcile(drifting, drifting) == [0, 0]
    cutover(client, 200)


def test_a_route_table_gated_on_cutover_moves_catalog_reads_only_when_ready(
    tmp_path: Path,
) -> None:
    databases = Databases(f"sqlite:///{tmp_path / 'legacy.db'}", f"sqlite:///{tmp_path / 'c.db'}")
    try:
        app = create_app(catalog_settings(databases.catalog_url, migrate_on_start=False))
        with serving(app) as url:
            text = (
                "version: 1\nupstreams:\n"
                '  monolith: {url: "http://127.0.0.1:8001"}\n'
                f'  catalog: {{url: "{url}", gate: "{url}/cutover"}}\n'
                "default: monolith\nroutes:\n"
                "  - name: catalog\n    match: {path: /api/v1/products}\n    to: {upstream}\n"
            )
            before = load_text(text.replace("{upstream}", "monolith"))
            after = load_text(text.replace("{upstream}", "catalog"))
            with pytest.raises(GateClosed) as caught:
                check_gates(before, after)
            assert (
                "is closed (503): catalog-products: the backfill has not finished; "
                "catalog-products: follow has not run" in str(caught.value)
            )
            databases.backfill(*SYNCS)
            databases.follow(*SYNCS)
            databases.reconcile(*SYNCS)
            with pytest.raises(GateClosed) as caught:  # one reconcile each is not enough
                check_gates(before, after)
            assert "catalog-categories: 1 of the 2 reconciles needed have run" in str(caught.value)
            databases.reconcile(*SYNCS)
            assert check_gates(before, after) == ["catalog"]
    finally:
        databases.dispose()


def test_a_catalog_database_never_migrated_is_a_503_problem(tmp_path: Path) -> None:
    app = create_app(catalog_settings(f"sqlite:///{tmp_path / 'empty.db'}"))
    answer = TestClient(app).get("/cutover")  # no lifespan: nothing creates the tables
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["detail"] == "The database is unreachable"


def test_an_unreachable_catalog_database_is_a_503_problem() -> None:
    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/catalog"
    answer = TestClient(create_app(catalog_settings(nowhere))).get("/cutover")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert (body["status"], body["detail"]) == (503, "The database is unreachable")
    assert body["type"].endswith("/service-unavailable")
