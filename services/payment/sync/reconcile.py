"""Reconcile: compare the payments of both databases by key and report the drift.

1. Walk the key space in chunks: a chunk ends where either side has `chunk_rows` more keys
   (so no side reads more than that), and the last chunk is open-ended (service payments count
   down from 4e15, above every legacy id). The chunk size adapts to take ~0.5 s
   (pt-table-checksum's `--chunk-time`).
2. Read both sides' rows of the chunk, normalise and hash them in Python (`rows.py`), leave out
   rows changed within the settle window on either side, compare count + sum of hashes, bisect
   differing chunks down to rows (`diff.py`).
3. Wait out the settle window and re-read every mismatched key on both sides; report only what
   still differs (GoldenGate Veridata, DMS revalidation). A row changed in the meantime is "in
   flight", not drift.
4. Check a business invariant the row comparison cannot see (`invariants.py`): a payment live
   in either database on an order cancelled in the monolith is reported as
   `cancelled_order_with_live_payment` and counted in the drift (found again after the settle
   wait before it is reported).
5. Record the result in `sync_reconciles` (the status command and the cutover gate read it).

Read-only on both databases. Hard deletes in the monolith show up here as rows extra in the
service (polling cannot see them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Table, insert, select
from sqlalchemy.engine import Connection, Engine

from services.payment.db import utcnow
from services.payment.sync.apply import IN_LIST_MAX, service_payments
from services.payment.sync.diff import (
    Findings,
    HashedRow,
    compare_chunk,
    compare_rows,
    young_ids,
)
from services.payment.sync.engines import check_service_schema, database_now, reading
from services.payment.sync.invariants import CATEGORY, LiveOnCancelled, live_on_cancelled
from services.payment.sync.legacy_schema import check_legacy_schema, legacy_payments
from services.payment.sync.progress import NoProgress, Progress
from services.payment.sync.rows import FIELDS, normalise, row_hash
from services.payment.sync.state import JOB_FOLLOW, load_checkpoint, reconciles

DEFAULT_SETTLE = 5.0  # at least the follow's safety delay + poll interval, with room
CHUNK_TARGET_SECONDS = 0.5  # pt-table-checksum's default --chunk-time
CHUNK_MIN, CHUNK_START, CHUNK_MAX = 1_000, 10_000, 200_000
REPORT_ROWS_KEPT = 1_000  # findings stored per run in sync_reconciles.report


@dataclass
class Report:
    """A reconcile run's verdict and findings (`as_dict()` is the `--json` shape)."""

    started_at: datetime
    finished_at: datetime
    settle_seconds: float
    max_drift: int
    rows_legacy: int = 0
    rows_service: int = 0
    chunks: int = 0
    bisections: int = 0
    skipped_young: int = 0
    in_flight: int = 0
    findings: Findings = field(default_factory=Findings)
    cancelled_live: list[LiveOnCancelled] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def drift(self) -> int:
        found = self.findings
        rows = len(found.missing) + len(found.extra) + len(found.differing)
        return rows + len(self.cancelled_live)

    @property
    def passed(self) -> bool:
        return self.drift <= self.max_drift

    def as_dict(self, limit: int | None = None) -> dict[str, Any]:
        found = self.findings
        differing = [
            {"id": key, "fields": {name: {"legacy": a, "service": b} for name, (a, b) in f.items()}}
            for key, f in sorted(found.differing.items())
        ]
        return {
            "passed": self.passed,
            "drift": self.drift,
            "max_drift": self.max_drift,
            "missing": sorted(found.missing)[:limit],
            "extra": sorted(found.extra)[:limit],
            "differing": differing[:limit],
            CATEGORY: [item.as_dict() for item in self.cancelled_live][:limit],
            "counts": {
                "missing": len(found.missing),
                "extra": len(found.extra),
                "differing": len(found.differing),
                CATEGORY: len(self.cancelled_live),
            },
            "rows_legacy": self.rows_legacy,
            "rows_service": self.rows_service,
            "chunks": self.chunks,
            "bisections": self.bisections,
            "skipped_young": self.skipped_young,
            "in_flight": self.in_flight,
            "settle_seconds": self.settle_seconds,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "seconds": round(self.seconds, 3),
        }


def range_query(table: Table, low: int | None, high: int | None) -> Select[Any]:
    """The compared columns of one key range [low, high), in key order."""
    query = select(*(table.c[name] for name in FIELDS))
    if low is not None:
        query = query.where(table.c.id >= low)
    if high is not None:
        query = query.where(table.c.id < high)
    return query.order_by(table.c.id)


def boundary_query(table: Table, low: int | None, rows: int) -> Select[Any]:
    """The key `rows` places after `low` (the end of a chunk), if there is one."""
    query = select(table.c.id)
    if low is not None:
        query = query.where(table.c.id >= low)
    return query.order_by(table.c.id).offset(rows).limit(1)


def keys_query(table: Table, keys: Sequence[int]) -> Select[Any]:
    return select(*(table.c[name] for name in FIELDS)).where(table.c.id.in_(keys))


def hashed(rows: Iterable[Any]) -> list[HashedRow]:
    out = []
    for row in rows:
        values = normalise(row)
        out.append(HashedRow(int(row["id"]), row["updated_at"], values, row_hash(values)))
    return out


def _read(conn: Connection, query: Select[Any]) -> list[HashedRow]:
    return hashed(conn.execute(query).mappings())


def _settle_default(service: Engine) -> float:
    with reading(service) as conn:
        follow = load_checkpoint(conn, JOB_FOLLOW)
    lag = follow.lag_seconds if follow is not None and follow.lag_seconds else 0.0
    return max(DEFAULT_SETTLE, 2 * lag)


def reconcile(
    legacy: Engine,
    service: Engine,
    *,
    settle: float | None = None,
    recheck_after: float | None = None,
    max_drift: int = 0,
    chunk_rows: int | None = None,
    record: bool = True,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Compare both databases' payments; see the module docstring. `settle=None` takes the
    larger of 5 s and twice the follow's last lag; the re-check waits `recheck_after`
    (default: the settle window)."""
    check_service_schema(service)
    settle = _settle_default(service) if settle is None else settle
    recheck_after = settle if recheck_after is None else recheck_after
    started, clock = utcnow(), time.perf_counter()
    progress = progress or NoProgress()
    with legacy.connect() as conn:
        check_legacy_schema(conn)
        window = _window(conn, settle)
    report = Report(started, started, settle, max_drift)
    candidates = Findings()
    size, low = chunk_rows or CHUNK_START, None
    progress.start(None, 0)
    try:
        with reading(legacy) as old, reading(service) as new:
            while True:
                began = time.perf_counter()
                ends = [
                    conn.scalar(boundary_query(table, low, size))
                    for conn, table in ((old, legacy_payments), (new, service_payments))
                ]
                present = [int(end) for end in ends if end is not None]
                high = min(present) if present else None
                left = _read(old, range_query(legacy_payments, low, high))
                right = _read(new, range_query(service_payments, low, high))
                chunk = compare_chunk(left, right, window)
                candidates.add(chunk.findings)
                report.chunks += 1
                report.rows_legacy += len(left)
                report.rows_service += len(right)
                report.bisections += chunk.bisections
                report.skipped_young += chunk.skipped_young
                progress.advance(len(left))
                old.commit()  # no transaction stays open across chunks
                new.commit()
                if high is None:
                    break
                low = high
                if chunk_rows is None:
                    size = _adapt(size, time.perf_counter() - began)
    finally:
        progress.stop()
    report.findings = _recheck(legacy, service, candidates, recheck_after, settle, sleep, report)
    report.cancelled_live = _invariant(legacy, service, recheck_after, sleep)
    report.finished_at = utcnow()
    report.seconds = time.perf_counter() - clock
    if record:
        record_report(service, report)
    return report


def _window(conn: Connection, settle: float) -> tuple[datetime, datetime] | None:
    """Rows changed between (legacy clock - settle) and (legacy clock + settle) are in flight."""
    if settle <= 0:
        return None
    now, span = database_now(conn), timedelta(seconds=settle)
    return now - span, now + span


def _adapt(size: int, seconds: float) -> int:
    if seconds <= 0:
        return min(CHUNK_MAX, size * 2)
    wanted = int(size * CHUNK_TARGET_SECONDS / seconds)
    return max(CHUNK_MIN, min(CHUNK_MAX, wanted, size * 2))


def _recheck(
    legacy: Engine,
    service: Engine,
    candidates: Findings,
    wait: float,
    settle: float,
    sleep: Callable[[float], None],
    report: Report,
) -> Findings:
    """Re-read every mismatched key after the settle window; keep what still differs."""
    keys = sorted(candidates.ids)
    if not keys:
        return candidates
    if wait > 0:
        sleep(wait)
    confirmed = Findings()
    with reading(legacy) as old, reading(service) as new:
        window = _window(old, settle)
        for start in range(0, len(keys), IN_LIST_MAX):
            chunk = keys[start : start + IN_LIST_MAX]
            left = sorted(_read(old, keys_query(legacy_payments, chunk)), key=lambda r: r.id)
            right = sorted(_read(new, keys_query(service_payments, chunk)), key=lambda r: r.id)
            if window is not None:
                young = young_ids((*left, *right), window)
                report.in_flight += len(young)
                left = [row for row in left if row.id not in young]
                right = [row for row in right if row.id not in young]
            compare_rows(left, right, confirmed)
    return confirmed


def _invariant(
    legacy: Engine, service: Engine, wait: float, sleep: Callable[[float], None]
) -> list[LiveOnCancelled]:
    """Payments live on a cancelled order; any found are looked for again after `wait` (the
    follow may not have copied the monolith's void yet) and only those found twice reported."""
    with reading(legacy) as old, reading(service) as new:
        found = live_on_cancelled(old, new)
    if not found or wait <= 0:
        return found
    sleep(wait)
    first = {item.payment_id for item in found}
    with reading(legacy) as old, reading(service) as new:
        return [item for item in live_on_cancelled(old, new) if item.payment_id in first]


def record_report(service: Engine, report: Report) -> None:
    with service.begin() as conn:
        conn.execute(
            insert(reconciles).values(
                started_at=report.started_at,
                finished_at=report.finished_at,
                settle_seconds=report.settle_seconds,
                rows_compared=report.rows_legacy,
                missing=len(report.findings.missing),
                extra=len(report.findings.extra),
                differing=len(report.findings.differing),
                drift=report.drift,
                max_drift=report.max_drift,
                passed=report.passed,
                report=json.dumps(report.as_dict(limit=REPORT_ROWS_KEPT)),
            )
        )
