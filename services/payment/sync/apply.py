"""Applying legacy rows to the service's `payments` table: the idempotent upsert of backfill and
follow, portable to SQLite, PostgreSQL and Oracle.

Strategy (one statement shape for every dialect, no MERGE needed on this side): read the rows
of the batch that already exist (by id range for a backfill batch, by `IN` lists of at most 500
ids otherwise: Oracle caps an `IN` list at 1,000), then decide per row in Python:

- absent in the service        → INSERT (origin 'legacy', row_version 1), one executemany;
- equal after normalisation    → nothing: an unchanged row is never rewritten, which is also what
                                 makes the echo of a to-legacy write a no-op (loop prevention);
- service row has origin 'service' and an `updated_at` at or after the legacy copy's
                               → kept: the service wrote it and the legacy copy is older (an echo
                                 of an earlier service version, or stale). Before cutover the
                                 monolith is the only writer, so this only happens after it;
- otherwise                    → UPDATE every shared column, origin 'legacy', row_version + 1,
                                 guarded by the row_version just read: a service write racing
                                 this batch wins. Each guarded UPDATE runs on its own and its row
                                 count is checked (a batched executemany reports no reliable
                                 count): a row the guard did not match counts as kept, gets no
                                 event, and is listed in `ApplyCounts.raced` so follow holds its
                                 high-water mark before it and the next poll compares it again.

With `emit_events`, every row written also gets an `outbox` row in the same transaction
(`payment.voided` when the monolith voided it, `payment.synced` otherwise, payload origin
'legacy'), as `events.py` specifies for changes that came from the monolith: other consumers
hear of them, and the to-legacy consumer skips them as echoes. Follow emits; backfill does not
(a bulk copy is not a stream of changes).

Ids never collide on INSERT with the service's own payments: those count down from 4e15, legacy
ids count up. Two sync runs inserting the same id at once would: the caller retries the batch.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.engine import Connection

from services.payment.db import utcnow
from services.payment.events import SYNCED, VOIDED
from services.payment.ids import IdRangeError, check_legacy_id
from services.payment.models import ORIGIN_LEGACY, ORIGIN_SERVICE, OutboxEvent, Payment
from services.payment.schemas import PaymentOut
from services.payment.sync.errors import SyncError
from services.payment.sync.rows import FIELDS, normalise, payment_values

service_payments = cast(Table, Payment.__table__)
outbox = cast(Table, OutboxEvent.__table__)
IN_LIST_MAX = 500


class IdSpaceCollision(SyncError):
    """A monolith-assigned id reached the service's id range (`ids.py`): refuse to copy it."""

    kind = "id-space-collision"


@dataclass
class ApplyCounts:
    """What one or more batches did to the service's rows."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_service: int = 0
    # (legacy updated_at, id) of rows whose guarded UPDATE matched nothing: a service write
    # committed between the read and the update. Counted in kept_service; re-read next poll.
    raced: list[tuple[datetime, int]] = field(default_factory=list)

    @property
    def written(self) -> int:
        return self.inserted + self.updated

    @property
    def seen(self) -> int:
        return self.inserted + self.updated + self.unchanged + self.kept_service

    def add(self, other: ApplyCounts) -> None:
        self.inserted += other.inserted
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.kept_service += other.kept_service
        self.raced.extend(other.raced)

    def as_dict(self) -> dict[str, int]:
        return {
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "kept_service": self.kept_service,
        }


def existing_rows(
    conn: Connection, ids: Sequence[int], id_range: tuple[int, int] | None = None
) -> dict[int, Mapping[Any, Any]]:
    """The service rows with these ids (read by `id_range` when the ids fill one)."""
    table = service_payments
    found: dict[int, Mapping[Any, Any]] = {}
    if id_range is not None:
        query = select(table).where(table.c.id >= id_range[0], table.c.id <= id_range[1])
        for row in conn.execute(query).mappings():
            found[row["id"]] = row
        return found
    for start in range(0, len(ids), IN_LIST_MAX):
        chunk = ids[start : start + IN_LIST_MAX]
        for row in conn.execute(select(table).where(table.c.id.in_(chunk))).mappings():
            found[row["id"]] = row
    return found


def insert_statement() -> Any:
    return insert(service_payments)


def update_statement() -> Any:
    table = service_payments
    values: dict[str, Any] = {name: bindparam(f"v_{name}") for name in FIELDS if name != "id"}
    values["origin"] = ORIGIN_LEGACY
    values["row_version"] = bindparam("v_row_version")
    return (
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.row_version == bindparam("b_version"))
        .values(values)
    )


def apply_to_service(
    conn: Connection,
    rows: Sequence[Mapping[Any, Any]],
    id_range: tuple[int, int] | None = None,
    *,
    emit_events: bool = False,
) -> ApplyCounts:
    """Upsert legacy `rows` into the service's payments (see the module docstring for the rule)."""
    counts = ApplyCounts()
    if not rows:
        return counts
    current = existing_rows(conn, [r["id"] for r in rows], id_range)
    inserts: list[dict[str, Any]] = []
    updates: list[tuple[Mapping[Any, Any], dict[str, Any], dict[str, Any] | None]] = []
    events: list[dict[str, Any]] = []
    for row in rows:
        mine = current.get(row["id"])
        if mine is None:
            try:
                check_legacy_id(int(row["id"]))
            except IdRangeError as exc:
                raise IdSpaceCollision(str(exc)) from None
            inserts.append({**payment_values(row), "origin": ORIGIN_LEGACY, "row_version": 1})
            if emit_events:
                events.append(outbox_row(row, 1, SYNCED))
        elif normalise(mine) == normalise(row):
            counts.unchanged += 1
        elif mine["origin"] == ORIGIN_SERVICE and mine["updated_at"] >= row["updated_at"]:
            counts.kept_service += 1
        else:
            values = {f"v_{name}": row[name] for name in FIELDS if name != "id"}
            version = int(mine["row_version"])
            params = {
                **values,
                "b_id": row["id"],
                "b_version": version,
                "v_row_version": version + 1,
            }
            event = None
            if emit_events:
                voided = row["status"] == "voided" and mine["status"] != "voided"
                event = outbox_row(row, version + 1, VOIDED if voided else SYNCED)
            updates.append((row, params, event))
    if inserts:
        conn.execute(insert_statement(), inserts)
        counts.inserted = len(inserts)
    if updates:
        statement = update_statement()
        for row, params, event in updates:
            # One statement per row: its row count says whether the version guard matched.
            if conn.execute(statement, params).rowcount == 1:
                counts.updated += 1
                if event is not None:
                    events.append(event)
            else:  # a service write committed since the read: it wins, compared again later
                counts.kept_service += 1
                counts.raced.append((row["updated_at"], int(row["id"])))
    if events:
        conn.execute(insert(outbox), events)
    return counts


def event_payload(row: Mapping[Any, Any], row_version: int, origin: str) -> dict[str, Any]:
    """`events.payment_payload` for a row given as a mapping: the API's JSON of the payment plus
    refund_reason, row_version and origin."""
    body = PaymentOut.model_validate(payment_values(row)).model_dump(mode="json")
    body["refund_reason"] = row["refund_reason"]
    body["row_version"] = row_version
    body["origin"] = origin
    return body


def outbox_row(row: Mapping[Any, Any], row_version: int, event_type: str) -> dict[str, Any]:
    payload = event_payload(row, row_version, ORIGIN_LEGACY)
    return {
        "event_id": str(uuid.uuid4()),
        "aggregate_id": int(row["id"]),
        "event_type": event_type,
        "row_version": row_version,
        "payload": json.dumps(payload, separators=(",", ":")),
        "created_at": utcnow(),
    }
