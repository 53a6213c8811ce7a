"""The catalog's read model, in the service's own database (SQLAlchemy Core).

- Mirrors, written only by the data sync engine (`sync/*.yaml`): `catalog_products` and
  `catalog_categories`, column for column the monolith's `products` and `categories` (the
  declarations list the same fields; a test holds them equal). No foreign keys: the engine
  copies each table on its own schedule, so a product may arrive before its category.
- Views, written only by the projection hooks (`projection.py`), in the transaction of the
  mirror rows they are computed from:
  `catalog_product_view`, one row per product: what lists filter and sort on, the category
  denormalised, and `body`, the product's JSON exactly as the API answers it;
  `catalog_category_view`, one row per category with its count of active products, so the
  category list is one ordered scan with no GROUP BY.
- The search index: on SQLite the FTS5 table `catalog_search` (trigram: `search.py`), made by
  `db.migrate` (a virtual table has no Core DDL); on PostgreSQL two pg_trgm GIN indexes on
  the view, declared here for that dialect only.
- `catalog_projection`: one row, the projections' lock (`projection.py`), whose `batches` is
  the read model's version: +1 by every projection hook, in its transaction, so no view row
  changes without it moving in the same commit; the answer cache tags and checks its answers
  with it (`cache.py`).
- `catalog_outbox`: the transactional outbox the engine fills while following (the columns
  `datasync.outbox` expects), published to the `catalog:events` stream by the engine's relay
  (`datasync.relay`, embedded in the app).

Portability (SQLite, PostgreSQL, Oracle 19c+; a test compiles the DDL for Oracle): lowercase
identifiers of at most 30 characters, timestamps `TIMESTAMP WITH TIME ZONE` read back as aware
UTC, `Text` (`body`, `description`, `payload`) never in a WHERE. Names sort in the database's
collation, as the monolith's do in its own: equal when both compare code points (SQLite's
BINARY, Oracle's default NLS_SORT=BINARY, PostgreSQL's C and C.UTF-8).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    column,
    func,
    table,
)
from sqlalchemy.sql.expression import TableClause

from datasync.types import UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}
# BIGINT keys, but SQLite only makes an `INTEGER PRIMARY KEY` the rowid (what FTS5 joins on).
BigKey = BigInteger().with_variant(Integer(), "sqlite")
Money = Numeric(12, 2, asdecimal=True)

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _key() -> Column[int]:
    return Column("id", BigKey, primary_key=True, autoincrement=False)


products = Table(
    "catalog_products",
    metadata,
    _key(),
    Column("sku", String(32), nullable=False),
    Column("name", String(160), nullable=False),
    Column("description", Text),
    Column("category_id", BigInteger, nullable=False),
    Column("price", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("stock_qty", Integer, nullable=False),
    Column("image_path", String(200)),
    Column("is_active", Boolean, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

categories = Table(
    "catalog_categories",
    metadata,
    _key(),
    Column("slug", String(64), nullable=False),
    Column("name", String(80), nullable=False),
    Column("parent_id", BigInteger),
    Column("sort_order", Integer, nullable=False),
)

product_view = Table(
    "catalog_product_view",
    metadata,
    _key(),
    Column("category_id", BigInteger, nullable=False),
    Column("is_active", Boolean, nullable=False),
    Column("stock_qty", Integer, nullable=False),
    Column("name", String(160), nullable=False),
    Column("sku", String(32), nullable=False),
    Column("price", Money, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("category_slug", String(64)),  # NULL until the product's category is mirrored
    Column("category_name", String(80)),
    Column("body", Text, nullable=False),  # the API's JSON of the product
    # The lists' orders (each ends with the key, the tie-breaker) and the category filter.
    Index("ix_cpv_name", "name", "id"),
    Index("ix_cpv_price", "price", "id"),
    Index("ix_cpv_created", "created_at", "id"),
    Index("ix_cpv_category", "category_id"),
)

# PostgreSQL's search index (`search.py`): trigram GIN on the lowered texts, which serves
# `lower(col) LIKE '%...%'` whatever the pattern's position.
for _name in ("name", "sku"):
    Index(
        f"ix_cpv_{_name}_trgm",
        func.lower(product_view.c[_name]).label(f"lower_{_name}"),
        postgresql_using="gin",
        postgresql_ops={f"lower_{_name}": "gin_trgm_ops"},
    ).ddl_if(dialect="postgresql")

category_view = Table(
    "catalog_category_view",
    metadata,
    _key(),
    Column("slug", String(64), nullable=False),
    Column("name", String(80), nullable=False),
    Column("parent_id", BigInteger),
    Column("sort_order", Integer, nullable=False),
    Column("product_count", Integer, nullable=False),
    Index("ix_ccv_order", "sort_order", "id"),
)

outbox = Table(
    "catalog_outbox",
    metadata,
    Column("id", BigKey, Identity(), primary_key=True),
    Column("event_id", String(36), nullable=False),
    Column("aggregate_id", BigInteger, nullable=False),
    Column("event_type", String(40), nullable=False),
    Column("row_version", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("published_at", UTCDateTime()),
    Index("ix_cob_published", "published_at", "id"),
)

# One row, updated first by every projection: the hooks of the two syncs (separate processes)
# run one after another, so each recounts what the other committed (`projection.py`). Its
# `batches` (+1 per hook call) is the read model's version (`reads.projection_version`).
projection_lock = Table(
    "catalog_projection",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("batches", BigInteger, nullable=False),
)
LOCK_ROW = {"id": 1, "batches": 0}

# SQLite's FTS5 index: rowid = the product's id; the hidden column named after the table is
# what `MATCH` searches (every indexed column).
SEARCH_TABLE = "catalog_search"
search: TableClause = table(
    SEARCH_TABLE, column("rowid"), column("name"), column("sku"), column(SEARCH_TABLE)
)
SEARCH_DDL = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {SEARCH_TABLE} USING fts5(name, sku, tokenize='trigram')"
)

MIRRORS = (products, categories)
VIEWS = (product_view, category_view)
