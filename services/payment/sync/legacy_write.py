"""Writing service payments into the monolith's `payments` table (after cutover): an upsert by
primary key, guarded so that an older copy never overwrites a newer row.

The guard is the row's `updated_at` (the legacy table has no version column and none may be
added): the write happens only when the legacy row is absent or its `updated_at` is not later
than `newest_allowed` (the event's `updated_at` plus the clock skew allowed between the service
and the monolith, `to_legacy.py`; the event's own `updated_at` when not given). It is part of
the statement itself, so a monolith write racing the consumer (an order cancel voiding a
payment) is never lost:

- PostgreSQL, SQLite: `INSERT ... ON CONFLICT (id) DO UPDATE SET ... WHERE payments.updated_at
  <= :newest_allowed` (SQLite since 3.24);
- Oracle: `MERGE INTO payments t USING (SELECT :id AS id, ... FROM dual) s ON (t.id = s.id)
  WHEN MATCHED THEN UPDATE SET ... WHERE t.updated_at <= :newest_allowed WHEN NOT MATCHED THEN
  INSERT ...` (SQLAlchemy has no MERGE construct, so `GuardedMerge` compiles one).

The row count tells whether the row was written (0: the legacy row is newer).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, literal
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable

from services.payment.sync.legacy_schema import legacy_payments
from services.payment.sync.rows import FIELDS

UPDATED = tuple(name for name in FIELDS if name != "id")


class GuardedMerge(Executable, ClauseElement):
    """Oracle's guarded upsert of one payment row (see the module docstring)."""

    inherit_cache = False
    is_dml = True

    def __init__(self, values: Mapping[str, Any], newest_allowed: datetime) -> None:
        self.values = dict(values)
        self.newest_allowed = newest_allowed


@compiles(GuardedMerge, "oracle")
def _compile_merge(element: GuardedMerge, compiler: SQLCompiler, **kw: Any) -> str:
    table = legacy_payments
    binds = {
        name: compiler.process(
            bindparam(f"m_{name}", element.values[name], type_=table.c[name].type), **kw
        )
        for name in FIELDS
    }
    guard = compiler.process(
        bindparam("m_newest_allowed", element.newest_allowed, type_=table.c.updated_at.type),
        **kw,
    )
    source = ", ".join(f"{binds[name]} AS {name}" for name in FIELDS)
    assignments = ", ".join(f"t.{name} = s.{name}" for name in UPDATED)
    inserted = ", ".join(f"s.{name}" for name in FIELDS)
    # Identifiers are the declared columns; every value is a bind parameter.
    clauses = (
        f"MERGE INTO {table.name} t",
        f"USING (SELECT {source} FROM dual) s ON (t.id = s.id)",  # noqa: S608
        f"WHEN MATCHED THEN UPDATE SET {assignments}",
        f"WHERE t.updated_at <= {guard}",
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(FIELDS)})",
        f"VALUES ({inserted})",
    )
    return " ".join(clauses)


@compiles(GuardedMerge)
def _compile_merge_elsewhere(element: GuardedMerge, compiler: SQLCompiler, **kw: Any) -> str:
    raise NotImplementedError("GuardedMerge is Oracle's; other dialects use INSERT ON CONFLICT")


def guarded_upsert(
    dialect_name: str, values: Mapping[str, Any], newest_allowed: datetime | None = None
) -> Executable:
    """The statement that writes `values` (every shared column) unless the legacy row's
    `updated_at` is later than `newest_allowed` (default: the values' own `updated_at`)."""
    row = {name: values[name] for name in FIELDS}
    limit = row["updated_at"] if newest_allowed is None else newest_allowed
    guard = legacy_payments.c.updated_at <= literal(limit, legacy_payments.c.updated_at.type)
    if dialect_name == "oracle":
        return GuardedMerge(row, limit)
    if dialect_name == "postgresql":
        pg = pg_insert(legacy_payments).values(row)
        return pg.on_conflict_do_update(
            index_elements=[legacy_payments.c.id],
            set_={name: pg.excluded[name] for name in UPDATED},
            where=guard,
        )
    if dialect_name == "sqlite":
        lite = sqlite_insert(legacy_payments).values(row)
        return lite.on_conflict_do_update(
            index_elements=[legacy_payments.c.id],
            set_={name: lite.excluded[name] for name in UPDATED},
            where=guard,
        )
    raise NotImplementedError(f"no guarded upsert for the {dialect_name} dialect")
