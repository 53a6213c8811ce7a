"""The `regions` lookup table (no change column) on both sides, its service outbox, and the
service's `region_view` that the declaration's `project` hook keeps: a label in upper case and
the number of regions sharing its rank (a count over other rows, as a read side's pre-calculated
counts are). Created with SQLAlchemy Core as each side would, never from the engine's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Identity,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Connection

from datasync.spec import Spec
from datasync.types import UTCDateTime

OutboxId = BigInteger().with_variant(Integer(), "sqlite")
legacy_md, service_md = MetaData(), MetaData()
regions = Table(
    "regions",
    legacy_md,
    Column("region_id", Integer, primary_key=True),
    Column("code", String(8), nullable=False),
    Column("label", String(60), nullable=False),
    Column("rank", Integer, nullable=False),
)
svc_regions = Table(
    "svc_regions",
    service_md,
    Column("region_id", Integer, primary_key=True),
    Column("code", String(8), nullable=False),
    Column("title", String(60), nullable=False),
    Column("rank", Integer, nullable=False),
)
region_view = Table(
    "region_view",
    service_md,
    Column("region_id", Integer, primary_key=True),
    Column("shout", String(60), nullable=False),
    Column("same_rank", Integer, nullable=False),
)
region_outbox = Table(
    "region_outbox",
    service_md,
    Column("id", OutboxId, Identity(), primary_key=True),
    Column("event_id", String(36), nullable=False),
    Column("aggregate_id", BigInteger, nullable=False),
    Column("event_type", String(40), nullable=False),
    Column("row_version", Integer, nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("published_at", UTCDateTime()),
)

CALLS: list[tuple[list[int], list[int]]] = []  # what the hook was told, in order
FAIL_ON: set[int] = set()  # keys whose projection raises (a broken view rolls the batch back)


class ProjectionFailed(Exception):
    pass


def project(spec: Spec, conn: Connection, changed: Sequence[int], deleted: Sequence[int]) -> None:
    """Keep `region_view` in step with `svc_regions`, in the engine's transaction."""
    CALLS.append((list(changed), list(deleted)))
    if FAIL_ON & set(changed):
        raise ProjectionFailed(sorted(FAIL_ON & set(changed)))
    touched = list(changed) + list(deleted)
    conn.execute(delete(region_view).where(region_view.c.region_id.in_(touched)))
    rows = conn.execute(select(svc_regions).where(svc_regions.c.region_id.in_(changed))).all()
    if rows:
        conn.execute(
            insert(region_view),
            [{"region_id": r.region_id, "shout": r.title.upper(), "same_rank": 0} for r in rows],
        )
    recount(conn)


def recount(conn: Connection) -> None:
    counts = dict(
        conn.execute(select(svc_regions.c.rank, func.count()).group_by(svc_regions.c.rank)).all()
    )
    for row in conn.execute(
        select(region_view.c.region_id, svc_regions.c.rank).join(
            svc_regions, svc_regions.c.region_id == region_view.c.region_id
        )
    ).all():
        conn.execute(
            region_view.update()
            .where(region_view.c.region_id == row.region_id)
            .values(same_rank=counts[row.rank])
        )


def expected_view(legacy: list[dict[str, Any]]) -> dict[int, tuple[str, int]]:
    """The view as it must be for these legacy rows (computed without the engine)."""
    ranks: dict[int, int] = {}
    for row in legacy:
        ranks[row["rank"]] = ranks.get(row["rank"], 0) + 1
    return {r["region_id"]: (r["label"].upper(), ranks[r["rank"]]) for r in legacy}
