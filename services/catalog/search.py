"""Product search (`q`): a case-insensitive substring of the name or the SKU, served by an index.

The contract is the monolith's: `lower(name) LIKE '%q%' OR lower(sku) LIKE '%q%'`, with `%`, `_`
and `\\` in `q` escaped (so they match themselves). A substring, not words: "hone" finds
"Phone", "-010" finds "PHON-010001". That is why this is a TRIGRAM index and not full-text
search (a tsvector, FTS5's default tokenizer, Oracle Text's CONTEXT): those match whole words
and stems, so "hone" would find nothing and "phones" would find "Phone": other results, other
totals. A trigram index matches any substring of 3 characters or more exactly.

- SQLite: the FTS5 table `catalog_search` with `tokenize='trigram'` (SQLite 3.34+), kept in
  step with the view by the projection. `q` is searched as ONE phrase (double-quoted, its own
  double quotes doubled), which FTS5 matches as consecutive trigrams: a substring of a column,
  case-folded. A `q` shorter than 3 characters has no trigram: it falls back to the monolith's
  LIKE over the view (a scan of the view, cheap at that length's low selectivity anyway).
- PostgreSQL: pg_trgm GIN indexes on `lower(name)` and `lower(sku)` (`tables.py`), queried
  with the monolith's own expression, `lower(col) LIKE :pattern ESCAPE '\\'`, which those
  indexes serve (a bitmap OR of both) for patterns of any length.
- Elsewhere (Oracle): the same LIKE, unindexed.

Case folding and non-ASCII text: the monolith lowers `q` with Python (Unicode) and the column
with its database's `lower()`; on SQLite that is ASCII only (and its LIKE folds ASCII only), so
there "É" in `q` finds only names spelled with "é". FTS5 folds Unicode case both ways, so the
catalog on SQLite finds "É" and "é" alike for a `q` of 3+ characters: more results than the
monolith for non-ASCII capitals, none fewer. ASCII text (every SKU, the shop's names) matches
exactly as the monolith's, which the parity tests hold. On PostgreSQL both sides run the same
`lower()`.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, or_, select

from services.catalog.tables import SEARCH_TABLE, product_view, search

TRIGRAM = 3  # the shortest `q` the trigram index can answer


def like_pattern(text: str) -> str:
    """The monolith's pattern: `q` lowered, LIKE's wildcards and escape escaped, in `%...%`."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def fts_phrase(text: str) -> str:
    """`q` as one FTS5 phrase: every character literal, double quotes doubled."""
    return '"' + text.replace('"', '""') + '"'


def like_condition(q: str) -> ColumnElement[bool]:
    pattern = like_pattern(q)
    return or_(
        func.lower(product_view.c.name).like(pattern, escape="\\"),
        func.lower(product_view.c.sku).like(pattern, escape="\\"),
    )


def uses_fts(dialect_name: str, q: str) -> bool:
    return dialect_name == "sqlite" and len(q) >= TRIGRAM


def search_condition(dialect_name: str, q: str) -> ColumnElement[bool]:
    """The WHERE condition selecting the view rows whose name or SKU contains `q`."""
    if not uses_fts(dialect_name, q):
        return like_condition(q)
    matches = select(search.c.rowid).where(search.c[SEARCH_TABLE].match(fts_phrase(q)))
    return product_view.c.id.in_(matches)
