"""Catalog fixtures: a seeded monolith database (SQLite, or a real PostgreSQL) copied into a
catalog read model of its own through the declared syncs (the toolkit's backfill and follow,
which call the projection hooks), and both apps side by side on httpx's ASGI transport
(TestClient), the monolith's own cache off so each answer is its database's."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine

from datasync.backfill import backfill
from datasync.engines import make_legacy_engine, make_service_engine
from datasync.incremental import follow_once
from legacy_monolith.app import create_app as create_legacy_app
from legacy_monolith.db import make_engine as make_monolith_engine
from legacy_monolith.models import Category, Product
from legacy_monolith.seed import seed
from legacy_monolith.settings import Settings as LegacySettings
from services.catalog.app import create_app
from services.catalog.db import migrate
from services.catalog.settings import Settings
from services.catalog.sync import load_declarations

FAST_HASH = 1_000  # PBKDF2 rounds for the seeded users; not under test here
PRODUCTS_PER_CATEGORY = 30
PRODUCTS, CATEGORIES = load_declarations()

# Products whose names and SKUs hold what a LIKE pattern or an FTS5 query could misread.
ODD = [
    ("ODD-100%", "Odd 100% Cotton_Tee"),
    ("ODD-B\\S", 'Back\\slash "Quoted" Mug'),
    ("ODD-SP", "Two  Spaces  Lamp"),
    ("odd_low", "lowercase sku item"),
    ("ODD-UNI", "Éclair Maker Ünique"),
]


def add_odd_products(engine: Engine) -> None:
    created = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    rows = [
        {
            "sku": sku,
            "name": name,
            "description": None if n % 2 else f"{name} (odd)",
            "category_id": 1 + n,
            "price": Decimal("10.00") + n,
            "currency": "EUR",
            "stock_qty": n * 5,
            "image_path": None if n == 1 else "img/odd.svg",
            "is_active": True,
            "created_at": created + timedelta(seconds=n),
            "updated_at": created + timedelta(seconds=n),
        }
        for n, (sku, name) in enumerate(ODD)
    ]
    with engine.begin() as conn:
        conn.execute(insert(Product), rows)


def seed_shop(url: str) -> None:
    engine = make_monolith_engine(url)
    try:
        seed(
            engine,
            payments=0,
            users=1,
            products_per_category=PRODUCTS_PER_CATEGORY,
            password_iterations=FAST_HASH,
        )
        add_odd_products(engine)
    finally:
        engine.dispose()


@dataclass
class Shop:
    """A monolith database and a catalog database kept by the declared syncs."""

    legacy_url: str
    catalog_url: str
    legacy: Engine  # the sync's reader of the monolith's database
    service: Engine  # the sync's writer of the catalog's database
    monolith_db: Engine  # the tests' writer of the monolith's database (as the monolith writes)

    @classmethod
    def make(cls, legacy_url: str, catalog_url: str) -> Shop:
        seed_shop(legacy_url)
        shop = cls(
            legacy_url,
            catalog_url,
            make_legacy_engine(legacy_url),
            make_service_engine(catalog_url),
            make_monolith_engine(legacy_url),
        )
        migrate(shop.service)
        for spec in (PRODUCTS, CATEGORIES):
            backfill(spec, shop.legacy, shop.service)
        return shop

    def sync(self) -> None:
        """One follow poll of products and one refresh pass of categories."""
        for spec in (PRODUCTS, CATEGORIES):
            follow_once(spec, self.legacy, self.service, safety_delay=0)

    def product_ids(self, *, active: bool) -> list[int]:
        query = select(Product.id).where(Product.is_active == active).order_by(Product.id)
        with self.monolith_db.connect() as conn:
            return list(conn.scalars(query))

    def category_ids(self) -> list[int]:
        with self.monolith_db.connect() as conn:
            return list(conn.scalars(select(Category.id).order_by(Category.id)))

    def dispose(self) -> None:
        for engine in (self.legacy, self.service, self.monolith_db):
            engine.dispose()


def database_url(request: pytest.FixtureRequest, folder: Path, name: str) -> str:
    if request.param == "postgres":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        return make()
    return f"sqlite:///{folder / f'{name}.db'}"


@contextmanager
def making_shop(request: pytest.FixtureRequest, folder: Path) -> Iterator[Shop]:
    shop = Shop.make(
        database_url(request, folder, "legacy"), database_url(request, folder, "catalog")
    )
    try:
        yield shop
    finally:
        shop.dispose()


def monolith_app(shop: Shop) -> Any:
    settings = LegacySettings(
        database_url=shop.legacy_url,
        cache_enabled=False,
        create_schema=False,
        cache_prefix=f"legacy-test:{secrets.token_hex(4)}:",
        password_iterations=FAST_HASH,
    )
    return create_legacy_app(settings)


def catalog_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": database_url, "redis_url": None, "instance": "t"}
    values.update(overrides)
    return Settings(**values)


@dataclass
class Apps:
    monolith: TestClient
    catalog: TestClient

    def both(
        self, path: str, params: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[Any, Any]:
        return (
            self.monolith.get(path, params=params, headers=headers),
            self.catalog.get(path, params=params, headers=headers),
        )

    def same(self, path: str, params: Any = None, headers: dict[str, str] | None = None) -> Any:
        """Ask both; assert the same status, body bytes and contract headers."""
        legacy, catalog = self.both(path, params, headers)
        assert answer(catalog) == answer(legacy), (path, params)
        return legacy


def answer(response: Any) -> tuple[Any, ...]:
    """What must be equal: status, body bytes and the contract's headers."""
    h = response.headers
    return (
        response.status_code,
        response.content,
        h.get("etag"),
        h.get("cache-control"),
        h.get("content-type"),
    )


@contextmanager
def serving(shop: Shop, **overrides: Any) -> Iterator[Apps]:
    catalog = create_app(catalog_settings(shop.catalog_url, **overrides))
    with TestClient(monolith_app(shop)) as legacy, TestClient(catalog) as mine:
        yield Apps(legacy, mine)


def legacy_now() -> datetime:
    return datetime.now(UTC)
