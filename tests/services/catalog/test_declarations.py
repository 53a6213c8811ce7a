"""The catalog's declared syncs and schema: both declarations pass `strangler sync check`;
their fields are the monolith's columns and the mirror tables' (type, length, scale,
nullability); `migrate` (their hook) is idempotent on SQLite and PostgreSQL (pg_trgm and its
indexes there); `python -m services.catalog migrate|rebuild` and the settings' env vars (the
pool of a server database among them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Numeric, String, inspect, text
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.schema import Column
from typer.testing import CliRunner

from datasync.cli import app as sync_cli
from datasync.engines import make_service_engine
from datasync.spec import LEGACY_WINS, TO_SERVICE, Spec
from datasync.state import STATE_TABLES
from legacy_monolith.models import Category, Product
from services.catalog.__main__ import main
from services.catalog.app import create_app
from services.catalog.db import SCHEMA_VERSION, make_engine, migrate
from services.catalog.projection import project_categories, project_products
from services.catalog.settings import Settings
from services.catalog.sync import DECLARATIONS
from services.catalog.tables import SEARCH_TABLE, categories, metadata, products
from tests.services.catalog.conftest import CATEGORIES, PRODUCTS

PAIRS = [(PRODUCTS, products, Product), (CATEGORIES, categories, Category)]


def test_sync_check_accepts_both_declarations() -> None:
    args = ["check", *(arg for path in DECLARATIONS for arg in ("--sync", str(path)))]
    result = CliRunner().invoke(sync_cli, args)
    assert result.exit_code == 0, result.output
    assert "catalog-products" in result.output
    assert "catalog-categories" in result.output


def test_declared_rules() -> None:
    assert PRODUCTS.changed == "updated_at"
    assert CATEGORIES.changed is None  # followed by full refresh
    for spec, hook in ((PRODUCTS, project_products), (CATEGORIES, project_categories)):
        assert spec.directions == frozenset({TO_SERVICE})
        assert spec.conflict == LEGACY_WINS
        assert spec.hooks["project"] is hook
        assert spec.hooks["migrate"] is migrate
        assert spec.events is not None
        assert (spec.events.outbox, spec.events.stream) == ("catalog_outbox", "catalog:events")
        assert spec.events.key_field == "aggregate_id"  # one relay labels both syncs' events
    assert PRODUCTS.follow.interval == 1.0
    assert CATEGORIES.follow.interval == 5.0


def shape(column: Column[Any]) -> tuple[Any, ...]:
    kind = column.type
    impl = getattr(kind, "impl", kind)
    length = kind.length if isinstance(kind, String) else None
    scale = (kind.precision, kind.scale) if isinstance(kind, Numeric) else None
    return type(impl).__name__, length, scale, column.nullable


@pytest.mark.parametrize(("spec", "mirror", "model"), PAIRS, ids=["products", "categories"])
def test_fields_are_the_monolith_columns_and_the_mirror_columns(
    spec: Spec, mirror: Any, model: Any
) -> None:
    legacy = model.__table__
    assert spec.names == tuple(legacy.columns.keys())
    assert spec.names == tuple(mirror.columns.keys())
    declared = spec.service()
    for name in spec.names:
        assert shape(declared.c[name]) == shape(mirror.c[name]), name
        assert declared.c[name].nullable == legacy.c[name].nullable, name


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_migrate_is_idempotent(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "postgres":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        url = make()
    else:
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
    engine = make_service_engine(url)
    try:
        assert migrate(engine) == migrate(engine) == SCHEMA_VERSION
        with engine.connect() as conn:
            present = set(inspect(conn).get_table_names())
            assert {*metadata.tables, *STATE_TABLES} <= present
            if backend == "sqlite":
                assert SEARCH_TABLE in present
            else:
                indexes = set(conn.scalars(text("SELECT indexname FROM pg_indexes")))
                assert {"ix_cpv_name_trgm", "ix_cpv_sku_trgm"} <= indexes
    finally:
        engine.dispose()


def test_migrate_and_rebuild_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    assert main(["migrate", "--database-url", url]) == 0
    assert main(["rebuild", "--database-url", url]) == 0
    out = capsys.readouterr().out
    assert f"to {SCHEMA_VERSION}" in out
    assert "rebuilt" in out
    assert "0 products, 0 categories" in out


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CATALOG_DATABASE_URL", "sqlite:///x.db")
    monkeypatch.setenv("CATALOG_REDIS_URL", "redis://r:6379/0")
    monkeypatch.setenv("CATALOG_INSTANCE", "catalog-2")
    monkeypatch.setenv("CATALOG_CACHE_TTL", "2.5")
    settings = Settings()
    assert (settings.port, settings.instance, settings.cache_ttl) == (8003, "catalog-2", 2.5)
    assert (settings.database_url, settings.redis_url) == ("sqlite:///x.db", "redis://r:6379/0")
    monkeypatch.delenv("CATALOG_INSTANCE")
    assert Settings().instance  # the hostname


def test_a_server_databases_pool_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://catalog@127.0.0.1:1/catalog"  # never connected to
    default = make_engine(url)
    pool = cast(QueuePool, default.pool)
    assert (pool.size(), pool._max_overflow) == (10, 10)
    monkeypatch.setenv("CATALOG_DATABASE_URL", url)
    monkeypatch.setenv("CATALOG_DB_POOL_SIZE", "24")
    monkeypatch.setenv("CATALOG_DB_MAX_OVERFLOW", "4")
    settings = Settings()
    assert (settings.db_pool_size, settings.db_max_overflow) == (24, 4)
    app: Any = create_app(settings)
    pool = cast(QueuePool, app.state.catalog.engine.pool)
    assert (pool.size(), pool._max_overflow) == (24, 4)
