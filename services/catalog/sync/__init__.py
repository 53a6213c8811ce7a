"""The catalog's declared syncs: the monolith's `products` (followed by its `updated_at`) and
`categories` (no change column: followed by full refresh) into the catalog's mirror tables,
with the projection hooks keeping the views in step. Run them with the toolkit's engine:

    strangler sync migrate  --sync services/catalog/sync/products.yaml --service-db URL
    strangler sync backfill --sync services/catalog/sync/products.yaml --service-db URL ...
    strangler sync follow   --sync services/catalog/sync/categories.yaml --service-db URL ...
"""

from __future__ import annotations

from pathlib import Path

from datasync.spec import Spec

HERE = Path(__file__).resolve().parent
PRODUCTS_SYNC = HERE / "products.yaml"
CATEGORIES_SYNC = HERE / "categories.yaml"
DECLARATIONS = (PRODUCTS_SYNC, CATEGORIES_SYNC)


def load_declarations() -> tuple[Spec, ...]:
    """Both declarations, checked (imports their hooks)."""
    from datasync.declaration import load

    return tuple(load(path) for path in DECLARATIONS)
