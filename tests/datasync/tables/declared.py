"""Tables shaped after any declaration's field list (for a sync whose own tables are not the
subject of a test): the legacy table by legacy names, the service's by service names with its
origin and version columns, its outbox, and the legacy tables its compensations watch."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, insert, select

from datasync.spec import Spec
from datasync.types import UTCDateTime
from tests.datasync.tables.stock import Databases, outbox_table


def create_declared(dbs: Databases, spec: Spec) -> tuple[Table, Table]:
    """The legacy and the service table of `spec` (plus outbox and watched tables)."""
    legacy_md, service_md = MetaData(), MetaData()
    legacy = Table(
        spec.legacy_table,
        legacy_md,
        *(
            Column(f.name, f.sa_type(), primary_key=f.name == spec.key, nullable=f.nullable)
            for f in spec.fields
        ),
    )
    columns = [
        Column(f.service, f.sa_type(), primary_key=f.name == spec.key, nullable=f.nullable)
        for f in spec.fields
    ]
    if spec.origin_column:
        columns.append(Column(spec.origin_column, String(8), nullable=False))
    if spec.version_column:
        columns.append(Column(spec.version_column, Integer, nullable=False))
    service = Table(spec.service_table, service_md, *columns)
    if spec.events is not None and spec.events.outbox:
        outbox_table(service_md, spec.events.outbox)
    for rule in spec.compensations:
        watch = rule.watch
        Table(
            watch.table,
            legacy_md,
            Column(watch.key, BigInteger, primary_key=True),
            Column(watch.changed, UTCDateTime()),
            Column(watch.column, String(20)),
        )
    legacy_md.create_all(dbs.monolith)
    service_md.create_all(dbs.service)
    return legacy, service


def sample(spec: Spec, key: int, changed: datetime, **given: Any) -> dict[str, Any]:
    """A legacy row of `spec` (legacy names) with a value of each field's type; `given` wins."""
    row: dict[str, Any] = {}
    for f in spec.fields:
        if f.name == spec.key:
            value: Any = key
        elif f.type in ("bigint", "integer"):
            value = key * 10
        elif f.type == "decimal":
            value = Decimal(key) + Decimal(1).scaleb(-(f.scale or 0))
        elif f.type == "string":
            value = f"{f.name[0]}{key}"[: f.length or 255]
        elif f.type == "text":
            value = f"{f.name} {key}"
        elif f.type == "timestamp":
            value = changed
        elif f.type == "boolean":
            value = key % 2 == 0
        else:
            value = date(2024, 1, 1) + timedelta(days=key % 365)
        row[f.name] = value
    row.update(given)
    return row


def insert_rows(dbs: Databases, table: Table, rows: list[dict[str, Any]]) -> None:
    with dbs.monolith.begin() as conn:
        conn.execute(insert(table), rows)


def count(dbs: Databases, table: Table, service: bool = True) -> int:
    engine = dbs.service if service else dbs.monolith
    with engine.connect() as conn:
        return len(conn.execute(select(table)).all())


def hours_ago(hours: float) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)
