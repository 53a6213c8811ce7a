"""Follow by full refresh: a legacy table without a change column (a lookup table the monolith
never stamps, like a shop's categories) cannot be polled by a high-water mark, so each pass
compares it whole. Reads the legacy database only.

Kafka Connect's JDBC source calls this `bulk` mode and Airbyte "full refresh"; both reload the
table into the target. This pass reloads nothing it does not have to:
- The legacy table is read in key order, one page at a time (keyset on the key, never OFFSET,
  which rescans what it skips), and each page goes through the same upsert as backfill and
  follow (`apply.py`): a row already equal is never rewritten, so a pass over an unchanged table
  writes nothing, emits no event and does not call the `project` hook.
- Hard deletes are seen, unlike with polling: service keys inside a page's key range (from just
  after the previous page's last key up to this page's last) that the legacy page does not hold
  are deleted, and after the last page every service key beyond the legacy's last one
  (`apply.delete_from_service`: a deletion event each, the `project` hook told). Each page's
  upserts and deletes commit together, so a crash mid-pass leaves a table partly refreshed,
  every row of it a copy the legacy held during the pass, and the next pass completes it.
- Lag: a pass reflects the legacy as of its start, so `caught_up` is the legacy clock when the
  pass began and a finished pass's lag is its own length. Between passes the live lag grows
  (`status.py`: the legacy clock minus `caught_up`), up to one interval plus a pass: this is
  why the declaration wants the gate's `max_lag` above the interval.
- The lease, the checkpoint, health and metrics are follow's (`incremental.py`): `sync follow`
  runs passes instead of polls, and `sync status` shows them as the follower's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.engine import Connection, Engine

from datasync.apply import ApplyCounts, apply_to_service, delete_from_service, in_transaction
from datasync.engines import check_legacy_schema, database_now
from datasync.lease import JobLease
from datasync.spec import Spec


def legacy_page(spec: Spec, after: int | None, limit: int) -> Select[Any]:
    """Legacy rows with keys after `after`, in key order."""
    key = spec.legacy().c[spec.key]
    query = spec.legacy_select().order_by(key).limit(limit)
    return query if after is None else query.where(key > after)


def service_keys(spec: Spec, after: int | None, upto: int | None) -> Select[Any]:
    """Service keys in (after, upto]; `upto` None: every key after `after`."""
    key = spec.service().c[spec.service_name(spec.key)]
    query = select(key).order_by(key)
    if after is not None:
        query = query.where(key > after)
    return query if upto is None else query.where(key <= upto)


def gone(
    conn: Connection, spec: Spec, rows: Sequence[Any], after: int | None, last: bool
) -> list[int]:
    """Service keys in the page's range that the legacy page does not hold; the last page's
    range runs to the end (the legacy has nothing beyond its last row)."""
    upto = None if last or not rows else int(rows[-1][spec.key])
    present = {int(row[spec.key]) for row in rows}
    found = conn.execute(service_keys(spec, after, upto)).scalars()
    return [int(key) for key in found if int(key) not in present]


def refresh_page(
    spec: Spec,
    service: Engine,
    rows: Sequence[Any],
    after: int | None,
    *,
    last: bool,
    emit_events: bool,
) -> ApplyCounts:
    """Upsert one legacy page and delete what vanished in its range, in one transaction."""

    def write(conn: Connection) -> ApplyCounts:
        counts = apply_to_service(spec, conn, rows, emit_events=emit_events)
        vanished = gone(conn, spec, rows, after, last)
        counts.deleted = delete_from_service(spec, conn, vanished, emit_events=emit_events)
        return counts

    return in_transaction(service, write)


def refresh_pass(
    spec: Spec,
    legacy: Engine,
    service: Engine,
    lease: JobLease,
    *,
    page_size: int,
    emit_events: bool,
    check: bool,
) -> tuple[datetime, float, int, int, ApplyCounts]:
    """One pass over the whole table: (legacy clock at its start, its seconds, rows read, pages,
    what it did)."""
    started = time.perf_counter()
    with legacy.connect() as conn:
        if check:
            check_legacy_schema(spec, conn)
        began = database_now(conn)
    counts, rows_read, pages, after = ApplyCounts(), 0, 0, None
    while True:
        lease.renew()
        with legacy.connect() as conn:
            rows = list(conn.execute(legacy_page(spec, after, page_size)).mappings())
        last = len(rows) < page_size
        counts.add(refresh_page(spec, service, rows, after, last=last, emit_events=emit_events))
        pages += 1
        rows_read += len(rows)
        if last:
            break
        after = int(rows[-1][spec.key])
    return began, time.perf_counter() - started, rows_read, pages, counts
