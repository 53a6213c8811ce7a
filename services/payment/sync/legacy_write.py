"""Writing service payments into the monolith's `payments` table (after cutover): an upsert by
primary key, guarded so that an older copy never overwrites a newer row.

The guard is the row's `updated_at` (the legacy table has no version column and none may be
added): the write happens only when the legacy row is absent or its `updated_at` is not newer
than the event's. It is part of the statement itself, so a monolith write racing the consumer
(an order cancel voiding a payment) is never lost:

- PostgreSQL, SQLite: `INSERT ... ON CONFLICT (id) DO UPDATE SET ... WHERE payments.updated_at
  <= excluded.updated_at` (SQLite since 3.24);
- Oracle: `MERGE INTO payments t USING (SELECT :id AS id, ... FROM dual) s ON (t.id = s.id)
  WHEN MATCHED THEN UPDATE SET ... WHERE t.updated_at <= s.updated_at WHEN NOT MATCHED THEN
  INSERT ...` (SQLAlchemy has no MERGE construct, so `GuardedMerge` compiles one).

The row count tells whether the row was written (0: the legacy row is newer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam
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

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)


@compiles(GuardedMerge, "oracle")
def _compile_merge(element: GuardedMerge, compiler: SQLCompiler, **kw: Any) -> str:
    table = legacy_payments
    binds = {
        name: compiler.process(
            bindparam(f"m_{name}", element.values[name], type_=table.c[name].type), **kw
        )
        for name in FIELDS
    }
    source = ", ".join(f"{binds[name]} AS {name}" for name in FIELDS)
    assignments = ", ".join(f"t.{name} = s.{name}" for name in UPDATED)
    inserted = ", ".join(f"s.{name}" for name in FIELDS)
    # Identifiers are the declared columns; every value is a bind parameter.
    clauses = (
        f"MERGE INTO {table.name} t",
        f"USING (SELECT {source} FROM dual) s ON (t.id = s.id)",  # noqa: S608
        f"WHEN MATCHED THEN UPDATE SET {assignments}",
        "WHERE t.updated_at <= s.updated_at",
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(FIELDS)})",
        f"VALUES ({inserted})",
    )
    return " ".join(clauses)


@compiles(GuardedMerge)
def _compile_merge_elsewhere(element: GuardedMerge, compiler: SQLCompiler, **kw: Any) -> str:
    raise NotImplementedError("GuardedMerge is Oracle's; other dialects use INSERT ON CONFLICT")


def guarded_upsert(dialect_name: str, values: Mapping[str, Any]) -> Executable:
    """The statement that writes `values` (every shared column) unless the legacy row is newer."""
    row = {name: values[name] for name in FIELDS}
    if dialect_name == "oracle":
        return GuardedMerge(row)
    if dialect_name == "postgresql":
        pg = pg_insert(legacy_payments).values(row)
        return pg.on_conflict_do_update(
            index_elements=[legacy_payments.c.id],
            set_={name: pg.excluded[name] for name in UPDATED},
            where=legacy_payments.c.updated_at <= pg.excluded.updated_at,
        )
    if dialect_name == "sqlite":
        lite = sqlite_insert(legacy_payments).values(row)
        return lite.on_conflict_do_update(
            index_elements=[legacy_payments.c.id],
            set_={name: lite.excluded[name] for name in UPDATED},
            where=legacy_payments.c.updated_at <= lite.excluded.updated_at,
        )
    raise NotImplementedError(f"no guarded upsert for the {dialect_name} dialect")
