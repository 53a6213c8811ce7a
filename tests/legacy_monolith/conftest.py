"""Monolith fixtures: one seeded database per backend (SQLite always, PostgreSQL for real) shared
by the session; each test gets a fresh app and registers users of its own, so tests stay apart."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from legacy_monolith.app import create_app
from legacy_monolith.db import make_engine
from legacy_monolith.seed import DEMO_PASSWORD, seed
from legacy_monolith.settings import Settings

FAST_HASH = 1_000  # PBKDF2 rounds for test users; production strength is not under test here


def seed_small(url: str) -> None:
    engine = make_engine(url)
    try:
        seed(engine, payments=80, users=12, products_per_category=6, password_iterations=FAST_HASH)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def sqlite_seeded(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('legacy') / 'legacy.db'}"
    seed_small(url)
    return url


@pytest.fixture(scope="session")
def postgres_seeded(postgres_databases: Callable[[], str]) -> str:
    url = postgres_databases()
    seed_small(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The seeded shop on each backend; the PostgreSQL one is real (see tests/conftest.py)."""
    return str(request.getfixturevalue(f"{request.param}_seeded"))


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "cache_prefix": f"legacy-test:{secrets.token_hex(4)}:",
        "password_iterations": FAST_HASH,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(database_url))) as test_client:
        yield test_client


def register(client: TestClient, password: str = "correct horse") -> tuple[int, dict[str, str]]:
    """A new customer of the test's own; returns (user id, Authorization header)."""
    email = f"user-{secrets.token_hex(6)}@example.com"
    created = client.post(
        "/api/v1/users", json={"email": email, "password": password, "full_name": "Test User"}
    )
    assert created.status_code == 201, created.text
    token = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert token.status_code == 200, token.text
    return created.json()["id"], {"Authorization": f"Bearer {token.json()['access_token']}"}


def login(client: TestClient, email: str, password: str = DEMO_PASSWORD) -> dict[str, str]:
    answer = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def in_stock_product(client: TestClient, at_least: int = 20) -> dict[str, object]:
    """A product with plenty of stock, so concurrent tests sharing the shop don't run it dry."""
    page = client.get("/api/v1/products", params={"in_stock": True, "per_page": 100}).json()
    for product in page["items"]:
        if product["stock_qty"] >= at_least:
            return dict(product)
    raise AssertionError("the seeded shop has no product with enough stock")


def place_order(
    client: TestClient, headers: dict[str, str], quantity: int = 1
) -> dict[str, object]:
    product = in_stock_product(client)
    added = client.post(
        "/api/v1/cart/items",
        json={"product_id": product["id"], "quantity": quantity},
        headers=headers,
    )
    assert added.status_code == 201, added.text
    order = client.post("/api/v1/orders", json={"shipping_address": "1 Main St"}, headers=headers)
    assert order.status_code == 201, order.text
    return dict(order.json())


@pytest.fixture
def customer(client: TestClient) -> tuple[int, dict[str, str]]:
    return register(client)


@pytest.fixture
def seeded_file(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shop.db'}"
