"""The projection keeps the views exactly consistent with the mirrors as the monolith's data
moves: each change is made in the monolith's database, synced by the declared syncs (follow
for products, a refresh pass for categories), and then the catalog's answers (lists, counts,
search, single products) are the monolith's again. After every change the views equal a
rebuild from the mirrors; the hooks are idempotent and indifferent to which table arrives
first."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection, Engine

from datasync.engines import make_service_engine
from legacy_monolith.models import Category, Product
from services.catalog.db import migrate
from services.catalog.projection import project_categories, project_products, rebuild
from services.catalog.tables import categories, category_view, product_view, products, search
from tests.services.catalog.conftest import Apps, Shop, legacy_now, making_shop, serving

P = "/api/v1/products"
SAMPLE: list[dict[str, Any]] = [
    {"per_page": 100},
    {"per_page": 100, "page": 2},
    {"per_page": 100, "page": 5},
    {"sort": "price"},
    {"sort": "-price", "per_page": 7},
    {"sort": "newest"},
    {"in_stock": "true", "per_page": 100},
    {"in_stock": "false", "per_page": 100},
]


@pytest.fixture(params=["sqlite", "postgres"])
def shop(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shop]:
    with making_shop(request, tmp_path) as made:
        yield made


def snapshot(engine: Engine) -> tuple[list[Any], ...]:
    """Every view row (and search entry), in key order."""
    with engine.connect() as conn:
        views = [
            list(conn.execute(select(view).order_by(view.c.id)))
            for view in (product_view, category_view)
        ]
        if conn.dialect.name == "sqlite":
            entries = select(search.c.rowid, search.c.name, search.c.sku)
            views.append(list(conn.execute(entries.order_by(search.c.rowid))))
    return tuple(views)


def same_as_monolith(apps: Apps, products_: list[int], *extra: dict[str, Any]) -> None:
    apps.same("/api/v1/categories")
    for product_id in products_:
        apps.same(f"{P}/{product_id}")
    for params in (*SAMPLE, *extra):
        apps.same(P, params)


def change(shop: Shop, statement: Any) -> None:
    with shop.monolith_db.begin() as conn:
        conn.execute(statement)


def in_category(shop: Shop, category_id: int) -> list[int]:
    with shop.monolith_db.connect() as conn:
        query = select(Product.id).where(Product.category_id == category_id)
        return list(conn.scalars(query.order_by(Product.id)))


def moved(product_id: int, **values: Any) -> Any:
    return update(Product).where(Product.id == product_id).values(updated_at=legacy_now(), **values)


def test_changes_reach_the_views_and_answers(shop: Shop) -> None:
    a, b, c, d, e = shop.product_ids(active=True)[:5]
    with serving(shop) as apps:
        same_as_monolith(apps, [a, b, c, d, e])
        steps: list[tuple[str, Any, list[dict[str, Any]]]] = [
            ("price", moved(a, price=Decimal("1.23")), [{"sort": "price", "per_page": 3}]),
            ("stock to 0", moved(b, stock_qty=0), [{"in_stock": "false", "category_id": 1}]),
            ("category", moved(c, category_id=9), [{"category_id": 9}, {"category_id": 1}]),
            ("deactivated", moved(d, is_active=False), [{"category_id": 1, "per_page": 100}]),
            (
                "renamed",
                moved(e, name="Zebra Quartz Gadget", sku="ZQG-1"),
                [{"q": "quartz"}, {"q": "zqg-"}, {"q": "Gadget", "sort": "newest"}],
            ),
        ]
        for label, statement, extra in steps:
            change(shop, statement)
            shop.sync()
            same_as_monolith(apps, [a, b, c, d, e], *extra)
            assert snapshot(shop.service) == rebuilt(shop), label
        assert apps.catalog.get(f"{P}/{d}").status_code == 404


def test_category_renamed_and_deleted(shop: Shop) -> None:
    books, kitchen = 14, 12
    shelf = in_category(shop, books)
    with serving(shop) as apps:
        change(shop, update(Category).where(Category.id == kitchen).values(name="Cooking"))
        shop.sync()
        same_as_monolith(apps, shelf[:3], {"category_id": kitchen})
        assert denormalised(shop, kitchen) == {("kitchen", "Cooking")}

        with shop.monolith_db.begin() as conn:
            now = legacy_now()
            conn.execute(
                update(Product)
                .where(Product.category_id == books)
                .values(category_id=kitchen, updated_at=now)
            )
            conn.execute(delete(Category).where(Category.id == books))
        shop.sync()
        same_as_monolith(apps, shelf[:3], {"category_id": kitchen, "per_page": 100})
        assert books not in [
            c["id"] for c in apps.catalog.get("/api/v1/categories").json()["items"]
        ]
        assert snapshot(shop.service) == rebuilt(shop)


def denormalised(shop: Shop, category_id: int) -> set[tuple[str, str]]:
    query = select(product_view.c.category_slug, product_view.c.category_name).where(
        product_view.c.category_id == category_id
    )
    with shop.service.connect() as conn:
        return {(row[0], row[1]) for row in conn.execute(query)}


def rebuilt(shop: Shop) -> tuple[list[Any], ...]:
    """The views as a rebuild makes them (then left so)."""
    rebuild(shop.service)
    return snapshot(shop.service)


# --- the hooks on their own --------------------------------------------------------------------
NOW = legacy_now()


def product_row(key: int, category_id: int, **values: Any) -> dict[str, Any]:
    row = {
        "id": key,
        "sku": f"SKU-{key}",
        "name": f"Thing {key}",
        "description": None,
        "category_id": category_id,
        "price": Decimal("9.90"),
        "currency": "EUR",
        "stock_qty": key % 3,
        "image_path": f"img/{key}.svg" if key % 2 else None,
        "is_active": key != 4,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return {**row, **values}


def category_row(key: int) -> dict[str, Any]:
    return {"id": key, "slug": f"c{key}", "name": f"Cat {key}", "parent_id": None, "sort_order": 0}


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Engine]:
    engine = make_service_engine(f"sqlite:///{tmp_path / 'catalog.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


def fill(conn: Connection) -> None:
    conn.execute(insert(categories), [category_row(k) for k in (1, 2)])
    conn.execute(insert(products), [product_row(k, 1 + k % 2) for k in range(1, 7)])


@pytest.mark.parametrize("first", ["products", "categories"])
def test_hooks_in_either_order_make_what_a_rebuild_makes(catalog: Engine, first: str) -> None:
    with catalog.begin() as conn:
        fill(conn)
        hooks = [(project_products, range(1, 7)), (project_categories, (1, 2))]
        for hook, keys in hooks if first == "products" else hooks[::-1]:
            hook(None, conn, list(keys), ())
    projected = snapshot(catalog)
    rebuild(catalog)
    assert snapshot(catalog) == projected
    counts = {row.id: row.product_count for row in projected[1]}
    assert counts == {1: 2, 2: 3}  # product 4 is inactive


def test_hooks_are_idempotent_and_follow_deletes(catalog: Engine) -> None:
    with catalog.begin() as conn:
        fill(conn)
        project_categories(None, conn, [1, 2], ())
        project_products(None, conn, list(range(1, 7)), ())
    once = snapshot(catalog)
    with catalog.begin() as conn:
        project_products(None, conn, list(range(1, 7)), ())
        project_categories(None, conn, [1, 2], ())
    assert snapshot(catalog) == once
    with catalog.begin() as conn:
        conn.execute(delete(products).where(products.c.id == 2))
        conn.execute(delete(categories).where(categories.c.id == 1))
        project_products(None, conn, [], [2])
        project_categories(None, conn, [], [1])
    views, cats, entries = snapshot(catalog)
    assert [row.id for row in views] == [1, 3, 4, 5, 6]
    assert [row.rowid for row in entries] == [1, 3, 4, 5, 6]
    assert [(row.id, row.product_count) for row in cats] == [(2, 3)]
    assert {row.category_slug for row in views if row.category_id == 1} == {None}


def test_body_is_the_api_json(catalog: Engine) -> None:
    with catalog.begin() as conn:
        conn.execute(insert(products), [product_row(1, 1, price=Decimal("12.3"), stock_qty=0)])
        project_products(None, conn, [1], ())
        body = conn.scalar(select(product_view.c.body))
    assert body == (
        '{"id":1,"sku":"SKU-1","name":"Thing 1","description":null,"category_id":1,'
        '"price":"12.30","currency":"EUR","in_stock":false,"stock_qty":0,'
        f'"image_url":"/static/img/1.svg","updated_at":"{NOW.isoformat().replace("+00:00", "Z")}"}}'
    )


def test_concurrent_hooks_of_the_two_syncs_keep_counts_exact(
    postgres_databases: Callable[[], str],
) -> None:
    """The products follower and the categories refresh are separate processes: on PostgreSQL
    (READ COMMITTED) a products hook that starts while a categories hook is uncommitted waits
    for it, then reads its category and counts on what it committed."""
    engine = make_service_engine(postgres_databases())
    migrate(engine)
    with engine.begin() as conn:
        fill(conn)
        project_categories(None, conn, [1, 2], ())
        project_products(None, conn, list(range(1, 7)), ())
    first = engine.connect()
    renaming = first.begin()
    first.execute(update(categories).where(categories.c.id == 2).values(name="Two"))
    project_categories(None, first, [2], ())  # not committed yet

    def move() -> None:
        with engine.begin() as conn:
            conn.execute(update(products).where(products.c.id == 2).values(category_id=2))
            project_products(None, conn, [2], ())

    moving = threading.Thread(target=move)
    moving.start()
    moving.join(0.3)
    assert moving.is_alive()  # waiting for the categories hook's transaction
    renaming.commit()
    first.close()
    moving.join(10)
    projected = snapshot(engine)
    rebuild(engine)
    assert snapshot(engine) == projected
    assert {row.id: row.product_count for row in projected[1]} == {1: 1, 2: 4}
    assert {row.category_name for row in projected[0] if row.category_id == 2} == {"Two"}
    engine.dispose()
