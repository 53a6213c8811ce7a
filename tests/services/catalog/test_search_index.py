"""Search is served by an index, not a scan: on SQLite the plan scans the FTS5 trigram table,
on PostgreSQL (sequential scans off) it names the pg_trgm indexes. Plus the spelling rules of
the pattern and the phrase, and the documented non-ASCII difference on SQLite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection, Engine

from datasync.engines import make_service_engine
from services.catalog.db import migrate
from services.catalog.projection import project_categories, project_products
from services.catalog.reads import ProductQuery, count_statement
from services.catalog.schemas import Paging
from services.catalog.search import fts_phrase, like_condition, like_pattern, uses_fts
from services.catalog.tables import categories, product_view, products

NOW = datetime(2025, 1, 1, tzinfo=UTC)
NAMES = ["Aurora Phone Pro", "Helix Buds Max", "Éclair Maker", "Zephyr Hub One"]


def query(q: str) -> ProductQuery:
    return ProductQuery(None, q, None, "name", Paging(1, 20))


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgres":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        url = make()
    else:
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
    engine = make_service_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        fill(conn, 600)
    yield engine
    engine.dispose()


def fill(conn: Connection, count: int) -> None:
    conn.execute(insert(categories), [{"id": 1, "slug": "c", "name": "C", "sort_order": 0}])
    rows = [
        {
            "id": key,
            "sku": f"SKU-{key:05d}",
            "name": f"{NAMES[key % len(NAMES)]} {key}",
            "category_id": 1,
            "price": Decimal("1.00"),
            "currency": "EUR",
            "stock_qty": 1,
            "is_active": True,
            "created_at": NOW,
            "updated_at": NOW,
        }
        for key in range(1, count + 1)
    ]
    conn.execute(insert(products), rows)
    project_categories(None, conn, [1], ())
    project_products(None, conn, list(range(1, count + 1)), ())


def plan(conn: Connection, q: str) -> str:
    statement = count_statement(conn.dialect.name, query(q))
    sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    if conn.dialect.name == "sqlite":
        return "\n".join(str(row[3]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    conn.exec_driver_sql("ANALYZE catalog_product_view")
    conn.exec_driver_sql("SET enable_seqscan = off")
    return "\n".join(str(row[0]) for row in conn.exec_driver_sql(f"EXPLAIN {sql}"))


def test_the_search_is_served_by_the_index(catalog: Engine) -> None:
    with catalog.connect() as conn:
        found = plan(conn, "hone pr")
        if conn.dialect.name == "sqlite":
            assert "SCAN catalog_search VIRTUAL TABLE" in found, found
            assert "SCAN catalog_product_view" not in found, found
        else:
            assert "ix_cpv_name_trgm" in found, found
            assert "ix_cpv_sku_trgm" in found, found
        assert conn.scalar(count_statement(conn.dialect.name, query("hone pr"))) == 150
        assert conn.scalar(count_statement(conn.dialect.name, query("sku-0001"))) == 10


def test_short_queries_fall_back_to_like_on_sqlite() -> None:
    assert not uses_fts("sqlite", "ph")
    assert uses_fts("sqlite", "pho")
    assert not uses_fts("postgresql", "phone")  # pg_trgm serves the LIKE itself
    assert not uses_fts("oracle", "phone")


@pytest.mark.parametrize(
    ("text", "pattern", "phrase"),
    [
        ("Phone", "%phone%", '"Phone"'),
        ("100%", "%100\\%%", '"100%"'),
        ("a_b", "%a\\_b%", '"a_b"'),
        ("back\\slash", "%back\\\\slash%", '"back\\slash"'),
        ('say "hi"', '%say "hi"%', '"say ""hi"""'),
    ],
)
def test_pattern_and_phrase_spelling(text: str, pattern: str, phrase: str) -> None:
    assert like_pattern(text) == pattern
    assert fts_phrase(text) == phrase


def test_non_ascii_capitals_on_sqlite(tmp_path: Path) -> None:
    """The documented difference: the monolith's LIKE on SQLite folds ASCII only, so 'éclair'
    misses 'Éclair'; FTS5 folds Unicode, so the catalog finds it (more, never fewer)."""
    engine = make_service_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    migrate(engine)
    with engine.begin() as conn:
        fill(conn, 8)
        count = select(func.count()).select_from(product_view)
        assert conn.scalar(count.where(like_condition("éclair"))) == 0
        assert conn.scalar(count_statement("sqlite", query("éclair"))) == 2
        assert conn.scalar(count_statement("sqlite", query("ÉCLAIR"))) == 2
        assert conn.scalar(count.where(like_condition("ECLAIR"))) == 0  # ASCII: both agree
        assert conn.scalar(count_statement("sqlite", query("ECLAIR"))) == 0
    engine.dispose()
