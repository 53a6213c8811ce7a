"""The projection hooks: keep the catalog's views exactly consistent with its mirrors.

The sync engine calls `project_products` / `project_categories` (named by the declarations'
`hooks.project`) inside the transaction that wrote a batch of mirror rows (backfill batches,
follow pages, refresh passes), with the keys it inserted or updated (`changed`) and removed
(`deleted`). The views therefore commit with their mirror rows or not at all: the denormalised
read model of CQRS, kept in the writer's transaction rather than by a second consumer that
could lag or fail alone.

Rules (each hook is idempotent: called twice with the same keys it leaves the same views):
- a product's view row (and its search entry) is deleted and rendered again from its mirror row
  and its category's; a key without a mirror row just loses its view row;
- `product_count` (active products) is recounted for every category whose count may have
  moved: the product's category before the batch and after it (a product moved between
  categories changes both);
- a category's view row is rendered again from its mirror row, its count recounted, and its
  slug and name denormalised again into its products' view rows (NULL once it is deleted);
- the product's `body` is `ProductOut.model_dump_json()`, the bytes the monolith answers:
  `image_url` "/static/<image_path>" or null, `in_stock` stock_qty > 0, price "12.30".

Concurrency: the products follower and the categories refresh are separate processes, and on
PostgreSQL and Oracle (READ COMMITTED) two hooks running at once would each recount a category
from a view that misses the other's uncommitted rows. So every hook first updates the one row
of `catalog_projection` (a no-op UPDATE is the portable row lock, as the monolith's `lock_row`):
the second waits for the first to commit, and its statements then read what the first wrote.
The engine's own writes before the hook touch only each sync's mirror and the outbox, so the
two never wait on each other in the other order. (SQLite has one writer at a time anyway.)
That UPDATE adds 1 to the row's `batches`: the read model's version, which therefore moves in
the transaction of every view change and commits with it (the answer cache relies on it,
`cache.py`: keep the increment, and keep every view write in a hook).

`rebuild(engine)` re-projects everything from the mirrors in one transaction (after a restore,
or a view lost by hand): `python -m services.catalog rebuild`.

Keys travel in IN lists of at most 500 (Oracle refuses more than 1,000: `datasync.batches`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, true, update
from sqlalchemy.engine import Connection, Engine, RowMapping

from datasync import batches
from datasync.spec import Spec
from services.catalog.db import writing
from services.catalog.schemas import ProductOut
from services.catalog.tables import (
    categories,
    category_view,
    product_view,
    products,
    projection_lock,
    search,
)


def serialise(conn: Connection) -> None:
    """Take the projections' lock for the rest of the transaction, moving the read model's
    version by one (module docstring)."""
    lock = projection_lock.c
    conn.execute(update(projection_lock).where(lock.id == 1).values(batches=lock.batches + 1))


def chunks(keys: Iterable[int]) -> Iterator[Sequence[int]]:
    """The distinct keys, in order, in IN lists Oracle accepts (`datasync.batches`)."""
    return batches.chunks(sorted(set(keys)))


def product_body(row: Mapping[Any, Any]) -> str:
    """The API's JSON of a product (a mirror row), as the monolith renders it."""
    return ProductOut(
        id=row["id"],
        sku=row["sku"],
        name=row["name"],
        description=row["description"],
        category_id=row["category_id"],
        price=row["price"],
        currency=row["currency"],
        in_stock=row["stock_qty"] > 0,
        stock_qty=row["stock_qty"],
        image_url=f"/static/{row['image_path']}" if row["image_path"] else None,
        updated_at=row["updated_at"],
    ).model_dump_json()


def _view_row(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "category_id": row["category_id"],
        "is_active": row["is_active"],
        "stock_qty": row["stock_qty"],
        "name": row["name"],
        "sku": row["sku"],
        "price": row["price"],
        "created_at": row["created_at"],
        "category_slug": row["category_slug"],
        "category_name": row["category_name"],
        "body": product_body(row),
    }


def _mirrored_products(conn: Connection, keys: Sequence[int]) -> list[RowMapping]:
    query = (
        select(
            products,
            categories.c.slug.label("category_slug"),
            categories.c.name.label("category_name"),
        )
        .outerjoin(categories, categories.c.id == products.c.category_id)
        .where(products.c.id.in_(keys))
    )
    return list(conn.execute(query).mappings())


def _has_search(conn: Connection) -> bool:
    return conn.dialect.name == "sqlite"


def _put_products(conn: Connection, keys: Sequence[int]) -> set[int]:
    """Render the view rows of `keys` again; the categories whose counts may have moved."""
    before = set(
        conn.scalars(select(product_view.c.category_id).where(product_view.c.id.in_(keys)))
    )
    conn.execute(delete(product_view).where(product_view.c.id.in_(keys)))
    if _has_search(conn):
        conn.execute(delete(search).where(search.c.rowid.in_(keys)))
    rows = _mirrored_products(conn, keys)
    if rows:
        conn.execute(insert(product_view), [_view_row(row) for row in rows])
        if _has_search(conn):
            entries = [{"rowid": r["id"], "name": r["name"], "sku": r["sku"]} for r in rows]
            conn.execute(insert(search), entries)
    return before | {int(row["category_id"]) for row in rows}


def recount(conn: Connection, category_ids: Iterable[int]) -> None:
    """Set `product_count` of these categories to their number of active products."""
    active = (
        select(func.count())
        .where(product_view.c.category_id == category_view.c.id, product_view.c.is_active == true())
        .scalar_subquery()
    )
    for chunk in chunks(category_ids):
        conn.execute(
            update(category_view).where(category_view.c.id.in_(chunk)).values(product_count=active)
        )


def _denormalise(conn: Connection, category_ids: Sequence[int]) -> None:
    """Copy the categories' slug and name into their products' view rows (NULL if gone)."""

    def of_category(name: str) -> Any:
        return (
            select(categories.c[name])
            .where(categories.c.id == product_view.c.category_id)
            .scalar_subquery()
        )

    conn.execute(
        update(product_view)
        .where(product_view.c.category_id.in_(category_ids))
        .values(category_slug=of_category("slug"), category_name=of_category("name"))
    )


def _put_categories(conn: Connection, keys: Sequence[int]) -> None:
    conn.execute(delete(category_view).where(category_view.c.id.in_(keys)))
    rows = conn.execute(select(categories).where(categories.c.id.in_(keys))).mappings().all()
    if rows:
        conn.execute(insert(category_view), [{**row, "product_count": 0} for row in rows])
        recount(conn, [int(row["id"]) for row in rows])
    _denormalise(conn, keys)


def project_products(
    spec: Spec | None, conn: Connection, changed: Sequence[int], deleted: Sequence[int]
) -> None:
    """The products sync's `project` hook (module docstring)."""
    del spec  # one read model: the tables are this module's own
    serialise(conn)
    touched: set[int] = set()
    for chunk in chunks([*changed, *deleted]):
        touched |= _put_products(conn, chunk)
    recount(conn, touched)


def project_categories(
    spec: Spec | None, conn: Connection, changed: Sequence[int], deleted: Sequence[int]
) -> None:
    """The categories sync's `project` hook (module docstring)."""
    del spec
    serialise(conn)
    for chunk in chunks([*changed, *deleted]):
        _put_categories(conn, chunk)


@dataclass(frozen=True)
class Rebuilt:
    products: int
    categories: int


def rebuild(engine: Engine) -> Rebuilt:
    """Re-project every view row from the mirrors, in one transaction."""
    with writing(engine).begin() as conn:
        serialise(conn)  # the lock before any view row: a follower's hook waits, never deadlocks
        conn.execute(delete(product_view))
        conn.execute(delete(category_view))
        if _has_search(conn):
            conn.execute(delete(search))
        category_keys = list(conn.scalars(select(categories.c.id)))
        product_keys = list(conn.scalars(select(products.c.id)))
        project_categories(None, conn, category_keys, ())
        project_products(None, conn, product_keys, ())
    return Rebuilt(products=len(product_keys), categories=len(category_keys))
