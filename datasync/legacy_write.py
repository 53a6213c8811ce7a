"""Writing service rows into the legacy table (after cutover): an upsert by key, guarded so
that an older copy never overwrites a newer row.

The guard is the row's declared change column (the legacy table has no version column and none
may be added): the write happens only when the legacy row is absent or its change column is not
later than `newest_allowed` (the event's change time plus the clock skew allowed between the
service and the monolith, `to_legacy.py`; the event's own change time when not given). It is
part of the statement itself, so a monolith write racing the consumer (an order cancel voiding
a payment) is never lost:

- PostgreSQL, SQLite: `INSERT ... ON CONFLICT (key) DO UPDATE SET ... WHERE t.changed <=
  :newest_allowed` (SQLite since 3.24);
- Oracle: `MERGE INTO t USING (SELECT :key AS key, ... FROM dual) s ON (t.key = s.key)
  WHEN MATCHED THEN UPDATE SET ... WHERE t.changed <= :newest_allowed WHEN NOT MATCHED THEN
  INSERT ...` (SQLAlchemy has no MERGE construct, so `GuardedMerge` compiles one from the
  declaration: every identifier is a declared column, every value a bind parameter).

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

from datasync.spec import Spec


class GuardedMerge(Executable, ClauseElement):
    """Oracle's guarded upsert of one legacy row (see the module docstring)."""

    inherit_cache = False
    is_dml = True

    def __init__(self, spec: Spec, values: Mapping[str, Any], newest_allowed: datetime) -> None:
        self.spec = spec
        self.values = dict(values)
        self.newest_allowed = newest_allowed


@compiles(GuardedMerge, "oracle")
def _compile_merge(element: GuardedMerge, compiler: SQLCompiler, **kw: Any) -> str:
    spec = element.spec
    table = spec.legacy()
    names = spec.names
    binds = {
        name: compiler.process(
            bindparam(f"m_{name}", element.values[name], type_=table.c[name].type), **kw
        )
        for name in names
    }
    guard = compiler.process(
        bindparam(
            "m_newest_allowed", element.newest_allowed, type_=table.c[spec.change_column].type
        ),
        **kw,
    )
    source = ", ".join(f"{binds[name]} AS {name}" for name in names)
    assignments = ", ".join(f"t.{name} = s.{name}" for name in names if name != spec.key)
    inserted = ", ".join(f"s.{name}" for name in names)
    # Identifiers are the declared columns; every value is a bind parameter.
    clauses = (
        f"MERGE INTO {table.name} t",
        f"USING (SELECT {source} FROM dual) s ON (t.{spec.key} = s.{spec.key})",  # noqa: S608
        f"WHEN MATCHED THEN UPDATE SET {assignments}",
        f"WHERE t.{spec.changed} <= {guard}",
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)})",
        f"VALUES ({inserted})",
    )
    return " ".join(clauses)


@compiles(GuardedMerge)
def _compile_merge_elsewhere(element: GuardedMerge, compiler: SQLCompiler, **kw: Any) -> str:
    raise NotImplementedError("GuardedMerge is Oracle's; other dialects use INSERT ON CONFLICT")


def guarded_upsert(
    spec: Spec,
    dialect_name: str,
    values: Mapping[str, Any],
    newest_allowed: datetime | None = None,
) -> Executable:
    """The statement that writes `values` (every declared field) unless the legacy row's change
    column is later than `newest_allowed` (default: the values' own change time)."""
    table = spec.legacy()
    row = {name: values[name] for name in spec.names}
    limit = row[spec.change_column] if newest_allowed is None else newest_allowed
    changed = table.c[spec.change_column]
    guard = changed <= literal(limit, changed.type)
    updated = [name for name in spec.names if name != spec.key]
    if dialect_name == "oracle":
        return GuardedMerge(spec, row, limit)
    if dialect_name == "postgresql":
        pg = pg_insert(table).values(row)
        return pg.on_conflict_do_update(
            index_elements=[table.c[spec.key]],
            set_={name: pg.excluded[name] for name in updated},
            where=guard,
        )
    if dialect_name == "sqlite":
        lite = sqlite_insert(table).values(row)
        return lite.on_conflict_do_update(
            index_elements=[table.c[spec.key]],
            set_={name: lite.excluded[name] for name in updated},
            where=guard,
        )
    raise NotImplementedError(f"no guarded upsert for the {dialect_name} dialect")
