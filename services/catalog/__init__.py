"""The catalog service: the read side of the shop's catalog, extracted from the monolith (CQRS).

Rules: this package never imports `legacy_monolith` nor another service; it may use the
toolkit's `datasync` package. It serves the monolith's catalog reads (`GET /api/v1/categories`,
`/products`, `/products/{id}`) with the same contract, byte for byte, from a read model of its
own: mirror tables the data sync engine fills from the monolith's (`sync/*.yaml`), and views
pre-calculated in the same transaction by the declarations' `project` hooks (`projection.py`).
The service never writes a catalog row itself.

Reading order: `tables.py` (the read model) → `projection.py` (how it is kept) → `search.py`
→ `reads.py` (the three answers) → `api.py` → `cache.py` + `invalidation.py` → `app.py`.
"""

__version__ = "0.1.0"
