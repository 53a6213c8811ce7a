"""Applying legacy rows to the service's table: the idempotent upsert of backfill and follow,
portable to SQLite, PostgreSQL and Oracle.

Strategy (one statement shape for every dialect, no MERGE needed on this side): read the rows
of the batch that already exist (by key range for a backfill batch, by `IN` lists of at most
500 keys otherwise: Oracle caps an `IN` list at 1,000), then decide per row in Python:

- absent in the service        → INSERT (origin 'legacy', version 1, when declared), one
                                 executemany; a key at or above the declared `key_floor` is
                                 refused (`IdSpaceCollision`): it is in the service's own range;
- equal after normalisation    → nothing: an unchanged row is never rewritten, which is also
                                 what makes the echo of a to-legacy write a no-op (loop
                                 prevention);
- kept by the conflict rule    → nothing (`kept_service`), per the declared `conflict`:
    `newer-wins`   the service row has origin 'service' and a change column at or after the
                   legacy copy's (without an origin column: a change column strictly after);
    `service-wins` the service row has origin 'service', whatever the times;
    `legacy-wins`  never: the legacy copy overwrites whatever the service wrote;
- otherwise                    → UPDATE every declared field, origin 'legacy', version + 1,
                                 guarded by the version just read: a service write racing this
                                 batch wins. Each guarded UPDATE runs on its own and its row
                                 count is checked (a batched executemany reports no reliable
                                 count): a row the guard did not match counts as kept, gets no
                                 event, and is listed in `ApplyCounts.raced` so follow holds its
                                 high-water mark before it and the next poll compares it again.
                                 Without a version column the UPDATE is guarded by key only.

Origin and version columns are optional for a sync that only moves rows to the service; the
rules above then compare and upsert without them. A declared soft-delete column needs nothing
here: it is one more synced field.

With `emit_events` (and an outbox and `synced_type` declared), every row written also gets an
outbox row in the same transaction (the type mapped from a field's new value, e.g. status
voided → payment.voided, else `synced_type`; payload origin 'legacy'): other consumers hear of
the legacy's changes, and the to-legacy job skips them as echoes. Follow emits; backfill does
not (a bulk copy is not a stream of changes).

A declared `project` hook is then called in the same transaction with the keys written (and,
for a refreshed table, the keys deleted: `delete_from_service`): a read side's pre-calculated
views move with the rows they are computed from, or not at all (the denormalised read model of
CQRS, kept in the writer's transaction rather than by a second consumer that could lag or fail
alone). Backfill, follow and refresh all write through here, so every path keeps the views.

Two sync runs inserting the same key at once would collide: the caller retries the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import bindparam, delete, insert, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Update

from datasync.batches import chunks
from datasync.errors import SyncError
from datasync.outbox import deletion_row, outbox_row, outbox_table
from datasync.rows import normalise, normalise_value, service_values
from datasync.spec import LEGACY_WINS, ORIGIN_LEGACY, ORIGIN_SERVICE, SERVICE_WINS, Field, Spec

T = TypeVar("T")


class IdSpaceCollision(SyncError):
    """A legacy-assigned key reached the service's own key range (`key_floor`): refuse it."""

    kind = "id-space-collision"


@dataclass
class ApplyCounts:
    """What one or more batches did to the service's rows."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    kept_service: int = 0
    # (legacy change column, key) of rows whose guarded UPDATE matched nothing: a service write
    # committed between the read and the update. Counted in kept_service; re-read next poll.
    # For a refreshed table (no change column) the time is None.
    raced: list[tuple[datetime | None, int]] = field(default_factory=list)
    deleted: int = 0

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
        self.deleted += other.deleted
        self.raced.extend(other.raced)

    def as_dict(self) -> dict[str, int]:
        return {
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "kept_service": self.kept_service,
            "deleted": self.deleted,
        }


def bookkeeping(spec: Spec) -> tuple[str, ...]:
    """The service's origin and version columns, those declared."""
    return tuple(c for c in (spec.origin_column, spec.version_column) if c)


def existing_rows(
    spec: Spec, conn: Connection, keys: Sequence[int], key_range: tuple[int, int] | None = None
) -> dict[int, Mapping[Any, Any]]:
    """The service rows with these keys (read by `key_range` when the keys fill one), with
    legacy names and the bookkeeping columns."""
    column = spec.service().c[spec.service_name(spec.key)]
    query = spec.service_select(*bookkeeping(spec))
    found: dict[int, Mapping[Any, Any]] = {}
    if key_range is not None:
        ranged = query.where(column >= key_range[0], column <= key_range[1])
        return {int(row[spec.key]): row for row in conn.execute(ranged).mappings()}
    for chunk in chunks(keys):
        for row in conn.execute(query.where(column.in_(chunk))).mappings():
            found[int(row[spec.key])] = row
    return found


def check_key(spec: Spec, key: int) -> None:
    """Refuse a legacy key inside the service's own key range (`key_floor` and up, up to
    `key_ceiling` when declared: keys above it are the legacy's own again)."""
    floor = spec.key_floor
    if floor is None or key < floor:
        return
    ceiling = spec.key_ceiling
    if ceiling is not None and key > ceiling:
        return
    reach = f", {ceiling:,}]" if ceiling is not None else ", ...)"
    raise IdSpaceCollision(
        f"the legacy database assigned {spec.legacy_table} key {key:,}, inside the service's "
        f"key range [{floor:,}{reach}: the key spaces would collide. Stop and move the "
        "service's range."
    )


def kept_by_rule(spec: Spec, mine: Mapping[Any, Any], row: Mapping[Any, Any]) -> bool:
    """Whether the declared conflict rule keeps the service's row (module docstring)."""
    if spec.conflict == LEGACY_WINS:
        return False
    if spec.origin_column is None:
        return bool(mine[spec.changed] > row[spec.changed])
    if mine[spec.origin_column] != ORIGIN_SERVICE:
        return False
    return spec.conflict == SERVICE_WINS or bool(mine[spec.changed] >= row[spec.changed])


def insert_values(spec: Spec, row: Mapping[Any, Any]) -> dict[str, Any]:
    values = service_values(spec, row)
    if spec.origin_column:
        values[spec.origin_column] = ORIGIN_LEGACY
    if spec.version_column:
        values[spec.version_column] = 1
    return values


def update_statement(spec: Spec) -> Update:
    """The guarded UPDATE of one row. Its bind parameters are positional (`p0`..`pn`, one per
    synced field) or fixed names no column can take (`b_key`, `b_ver`, `n_ver`): a synced field
    whose service column is itself called `version` (an ORM's optimistic-lock column) must not
    share its parameter with the sync's own version counter."""
    table = spec.service()
    values: dict[str, Any] = {
        f.service: bindparam(f"p{i}") for i, f in enumerate(updated_fields(spec))
    }
    key = table.c[spec.service_name(spec.key)]
    statement = update(table).where(key == bindparam("b_key"))
    if spec.origin_column:
        values[spec.origin_column] = ORIGIN_LEGACY
    if spec.version_column:
        values[spec.version_column] = bindparam("n_ver")
        statement = statement.where(table.c[spec.version_column] == bindparam("b_ver"))
    return statement.values(values)


def updated_fields(spec: Spec) -> list[Field]:
    """The fields an UPDATE sets, in declaration order (every one but the key)."""
    return [f for f in spec.fields if f.name != spec.key]


def update_params(spec: Spec, row: Mapping[Any, Any], version: int) -> dict[str, Any]:
    params = {f"p{i}": row[f.name] for i, f in enumerate(updated_fields(spec))}
    params["b_key"] = row[spec.key]
    if spec.version_column:
        params.update(b_ver=version, n_ver=version + 1)
    return params


def emits(spec: Spec) -> bool:
    return spec.events is not None and bool(spec.events.outbox and spec.events.synced_type)


def event_type(spec: Spec, row: Mapping[Any, Any], mine: Mapping[Any, Any] | None) -> str:
    """The type of the event about `row`: the one mapped from a field's value the row has just
    taken (not on an insert), else `synced_type`."""
    assert spec.events is not None
    assert spec.events.synced_type is not None
    if mine is not None:
        for name, value, kind in spec.events.types_by_value:
            field_ = spec.field(name)
            new = normalise_value(row[name], field_)
            if new == value and normalise_value(mine[name], field_) != value:
                return kind
    return spec.events.synced_type


def apply_to_service(
    spec: Spec,
    conn: Connection,
    rows: Sequence[Mapping[Any, Any]],
    key_range: tuple[int, int] | None = None,
    *,
    emit_events: bool = False,
) -> ApplyCounts:
    """Upsert legacy `rows` into the service's table (see the module docstring for the rule)."""
    counts = ApplyCounts()
    if not rows:
        return counts
    emit = emit_events and emits(spec)
    current = existing_rows(spec, conn, [int(r[spec.key]) for r in rows], key_range)
    inserts: list[dict[str, Any]] = []
    updates: list[tuple[Mapping[Any, Any], dict[str, Any], dict[str, Any] | None]] = []
    events: list[dict[str, Any]] = []
    for row in rows:
        mine = current.get(int(row[spec.key]))
        if mine is None:
            check_key(spec, int(row[spec.key]))
            inserts.append(insert_values(spec, row))
            if emit:
                events.append(outbox_row(spec, row, 1, event_type(spec, row, None)))
        elif normalise(spec, mine) == normalise(spec, row):
            counts.unchanged += 1
        elif kept_by_rule(spec, mine, row):
            counts.kept_service += 1
        else:
            version = int(mine[spec.version_column]) if spec.version_column else 0
            event = None
            if emit:
                event = outbox_row(spec, row, version + 1, event_type(spec, row, mine))
            updates.append((row, update_params(spec, row, version), event))
    written = [int(values[spec.service_name(spec.key)]) for values in inserts]
    if inserts:
        conn.execute(insert(spec.service()), inserts)
        counts.inserted = len(inserts)
    if updates:
        statement = update_statement(spec)
        for row, params, event in updates:
            # One statement per row: its row count says whether the version guard matched.
            if conn.execute(statement, params).rowcount == 1:
                counts.updated += 1
                written.append(int(row[spec.key]))
                if event is not None:
                    events.append(event)
            else:  # a service write committed since the read: it wins, compared again later
                counts.kept_service += 1
                changed = row[spec.changed] if spec.changed else None
                counts.raced.append((changed, int(row[spec.key])))
    record_events(spec, conn, events)
    project(spec, conn, written, ())
    return counts


def delete_from_service(
    spec: Spec, conn: Connection, keys: Sequence[int], *, emit_events: bool = False
) -> int:
    """Delete the service rows of `keys` (the legacy no longer has them: a refreshed table's
    hard deletes), with a deletion event each and the `project` hook told."""
    if not keys:
        return 0
    table = spec.service()
    column = table.c[spec.service_name(spec.key)]
    for chunk in chunks(keys):
        conn.execute(delete(table).where(column.in_(chunk)))
    if emit_events and emits(spec):
        record_events(spec, conn, [deletion_row(spec, key) for key in keys])
    project(spec, conn, (), keys)
    return len(keys)


def record_events(spec: Spec, conn: Connection, events: Sequence[Mapping[str, Any]]) -> None:
    if events:
        assert spec.events is not None
        assert spec.events.outbox is not None
        conn.execute(insert(outbox_table(spec.events.outbox)), list(events))


def project(spec: Spec, conn: Connection, changed: Sequence[int], deleted: Sequence[int]) -> None:
    """The declared `project` hook, in the batch's transaction (module docstring)."""
    hook = spec.hooks.get("project")
    if hook is not None and (changed or deleted):
        hook(spec, conn, list(changed), list(deleted))


def in_transaction(service: Engine, write: Callable[[Connection], T]) -> T:
    """`write` in one service transaction. A concurrent writer (a backfill, another job) that
    inserted one of its keys meanwhile fails the INSERT: the transaction is run once more, and
    its read of the existing rows then sees those keys."""
    try:
        with service.begin() as conn:
            return write(conn)
    except IntegrityError:
        with service.begin() as conn:
            return write(conn)
