"""Reconcile: compare the declared table of both databases by key and report the drift.

1. Walk the key space in chunks: a chunk ends where either side has `chunk_rows` more keys
   (so no side reads more than that), and the last chunk is open-ended (a service's own keys,
   e.g. payments counting down from 4e15, lie above every legacy key). The chunk size adapts to
   take ~0.5 s (pt-table-checksum's `--chunk-time`).
2. Read both sides' rows of the chunk, normalise and hash them in Python (`rows.py`), leave out
   rows changed within the settle window on either side, compare count + sum of hashes, bisect
   differing chunks down to rows (`diff.py`).
3. Wait out the settle window and re-read every mismatched key on both sides; report only what
   still differs (GoldenGate Veridata, DMS revalidation). A row changed in the meantime is "in
   flight", not drift.
4. Check the business invariants the row comparison cannot see, one per declared compensation
   (`invariants.py`): a payment live in either database on an order cancelled in the monolith
   is reported as `cancelled_order_with_live_payment` and counted in the drift (found again
   after the settle wait before it is reported).
5. Record the result in `sync_reconcile_runs` (the status command and the cutover gate read
   it).

Read-only on both databases. Deletes: with a declared soft-delete column a deleted row is an
ordinary change, synced and compared like any other. Without one, a HARD delete in the legacy
table is invisible to follow's polling and shows up here as a row `extra` in the service: the
drift an operator must resolve (delete it in the service, or declare a soft delete).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, insert, select
from sqlalchemy.engine import Connection, Engine

from datasync.batches import chunks
from datasync.diff import Findings, HashedRow, compare_chunk, compare_rows, young_ids
from datasync.engines import check_legacy_schema, check_service_schema, database_now, reading
from datasync.invariants import LiveOnWatched, category, violations
from datasync.progress import NoProgress, Progress
from datasync.rows import normalise, row_hash
from datasync.spec import Spec
from datasync.state import JOB_FOLLOW, load_checkpoint, reconciles, utcnow

DEFAULT_SETTLE = 5.0  # at least the follow's safety delay + poll interval, with room
CHUNK_TARGET_SECONDS = 0.5  # pt-table-checksum's default --chunk-time
CHUNK_MIN, CHUNK_START, CHUNK_MAX = 1_000, 10_000, 200_000
REPORT_ROWS_KEPT = 1_000  # findings stored per run in sync_reconcile_runs.report


@dataclass
class Report:
    """A reconcile run's verdict and findings (`as_dict()` is the `--json` shape)."""

    started_at: datetime
    finished_at: datetime
    settle_seconds: float
    max_drift: int
    key_name: str = "id"  # the key's legacy name, in the JSON of differing rows
    categories: tuple[str, ...] = ()  # the declared invariants' categories
    rows_legacy: int = 0
    rows_service: int = 0
    chunks: int = 0
    bisections: int = 0
    skipped_young: int = 0
    in_flight: int = 0
    findings: Findings = field(default_factory=Findings)
    flagged: list[LiveOnWatched] = field(default_factory=list)  # broken invariants
    # (category, key) -> the compensation saga's state for a flagged row ("none": no saga yet)
    sagas: dict[tuple[str, int], str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def drift(self) -> int:
        found = self.findings
        rows = len(found.missing) + len(found.extra) + len(found.differing)
        return rows + len(self.flagged)

    @property
    def passed(self) -> bool:
        return self.drift <= self.max_drift

    def of(self, kind: str) -> list[LiveOnWatched]:
        return [item for item in self.flagged if item.category == kind]

    def as_dict(self, limit: int | None = None) -> dict[str, Any]:
        found = self.findings
        differing = [
            {
                self.key_name: key,
                "fields": {name: {"legacy": a, "service": b} for name, (a, b) in f.items()},
            }
            for key, f in sorted(found.differing.items())
        ]
        counts: dict[str, int] = {
            "missing": len(found.missing),
            "extra": len(found.extra),
            "differing": len(found.differing),
        }
        flagged: dict[str, Any] = {}
        for kind in self.categories:
            flagged[kind] = [
                {**item.as_dict(), "saga": self.sagas.get((kind, item.key), "none")}
                for item in self.of(kind)
            ][:limit]
            counts[kind] = len(self.of(kind))
        return {
            "passed": self.passed,
            "drift": self.drift,
            "max_drift": self.max_drift,
            "missing": sorted(found.missing)[:limit],
            "extra": sorted(found.extra)[:limit],
            "differing": differing[:limit],
            **flagged,
            "counts": counts,
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


class Side:
    """One database's side of the comparison: its table's key and the select of its fields
    (labelled with the legacy names)."""

    def __init__(self, spec: Spec, legacy: bool) -> None:
        table = spec.legacy() if legacy else spec.service()
        self.key = table.c[spec.key if legacy else spec.service_name(spec.key)]
        self.select = spec.legacy_select() if legacy else spec.service_select()

    def range_query(self, low: int | None, high: int | None) -> Select[Any]:
        """The compared columns of one key range [low, high), in key order."""
        query = self.select
        if low is not None:
            query = query.where(self.key >= low)
        if high is not None:
            query = query.where(self.key < high)
        return query.order_by(self.key)

    def boundary_query(self, low: int | None, rows: int) -> Select[Any]:
        """The key `rows` places after `low` (the end of a chunk), if there is one."""
        query = select(self.key)
        if low is not None:
            query = query.where(self.key >= low)
        return query.order_by(self.key).offset(rows).limit(1)

    def keys_query(self, keys: Sequence[int]) -> Select[Any]:
        return self.select.where(self.key.in_(keys))


def hashed(spec: Spec, rows: Iterable[Any]) -> list[HashedRow]:
    out = []
    for row in rows:
        values = normalise(spec, row)
        changed = row[spec.changed] if spec.changed else None
        out.append(HashedRow(int(row[spec.key]), changed, values, row_hash(values)))
    return out


def _read(spec: Spec, conn: Connection, query: Select[Any]) -> list[HashedRow]:
    return hashed(spec, conn.execute(query).mappings())


def _settle_default(spec: Spec, service: Engine) -> float:
    with reading(service) as conn:
        follow = load_checkpoint(conn, spec.name, JOB_FOLLOW)
    lag = follow.lag_seconds if follow is not None and follow.lag_seconds else 0.0
    if spec.refreshed:  # a legacy change reaches the service by the pass after next at worst
        return max(DEFAULT_SETTLE, spec.follow.interval + 2 * lag)
    return max(DEFAULT_SETTLE, 2 * lag)


def reconcile(
    spec: Spec,
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
    """Compare both databases' rows; see the module docstring. `settle=None` takes the larger
    of 5 s and twice the follow's last lag; the re-check waits `recheck_after` (default: the
    settle window)."""
    check_service_schema(spec, service)
    settle = _settle_default(spec, service) if settle is None else settle
    recheck_after = settle if recheck_after is None else recheck_after
    started, clock = utcnow(), time.perf_counter()
    progress = progress or NoProgress()
    with legacy.connect() as conn:
        check_legacy_schema(spec, conn)
        window = _window(conn, settle)
    kinds = tuple(category(spec, rule) for rule in spec.compensations)
    report = Report(started, started, settle, max_drift, spec.key, kinds)
    progress.start(None, 0)
    try:
        candidates = _walk(spec, legacy, service, window, chunk_rows, report, progress)
    finally:
        progress.stop()
    report.findings = _recheck(
        spec, legacy, service, candidates, recheck_after, settle, sleep, report
    )
    report.flagged = _invariants(spec, legacy, service, recheck_after, sleep)
    report.sagas = _sagas(spec, service, report.flagged)
    report.finished_at = utcnow()
    report.seconds = time.perf_counter() - clock
    if record:
        record_report(spec, service, report)
    return report


def _walk(
    spec: Spec,
    legacy: Engine,
    service: Engine,
    window: tuple[datetime, datetime] | None,
    chunk_rows: int | None,
    report: Report,
    progress: Progress,
) -> Findings:
    """Compare chunk after chunk over the whole key space (step 1 and 2)."""
    candidates = Findings()
    sides = (Side(spec, legacy=True), Side(spec, legacy=False))
    size, low = chunk_rows or CHUNK_START, None
    with reading(legacy) as old, reading(service) as new:
        while True:
            began = time.perf_counter()
            ends = [
                conn.scalar(side.boundary_query(low, size))
                for conn, side in zip((old, new), sides, strict=True)
            ]
            present = [int(end) for end in ends if end is not None]
            high = min(present) if present else None
            left = _read(spec, old, sides[0].range_query(low, high))
            right = _read(spec, new, sides[1].range_query(low, high))
            chunk = compare_chunk(spec, left, right, window)
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
                return candidates
            low = high
            if chunk_rows is None:
                size = _adapt(size, time.perf_counter() - began)


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
    spec: Spec,
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
    sides = (Side(spec, legacy=True), Side(spec, legacy=False))
    with reading(legacy) as old, reading(service) as new:
        window = _window(old, settle)
        for chunk in chunks(keys):
            left = sorted(_read(spec, old, sides[0].keys_query(chunk)), key=lambda r: r.key)
            right = sorted(_read(spec, new, sides[1].keys_query(chunk)), key=lambda r: r.key)
            if window is not None:
                young = young_ids((*left, *right), window)
                report.in_flight += len(young)
                left = [row for row in left if row.key not in young]
                right = [row for row in right if row.key not in young]
            compare_rows(spec, left, right, confirmed)
    return confirmed


def _invariants(
    spec: Spec, legacy: Engine, service: Engine, wait: float, sleep: Callable[[float], None]
) -> list[LiveOnWatched]:
    """Rows breaking a declared invariant; any found are looked for again after `wait` (the
    follow may not have copied the legacy's repair yet) and only those found twice reported."""
    if not spec.compensations:
        return []
    with reading(legacy) as old, reading(service) as new:
        found = violations(spec, old, new)
    if not found or wait <= 0:
        return found
    sleep(wait)
    first = {(item.category, item.key) for item in found}
    with reading(legacy) as old, reading(service) as new:
        return [item for item in violations(spec, old, new) if (item.category, item.key) in first]


def _sagas(spec: Spec, service: Engine, flagged: list[LiveOnWatched]) -> dict[tuple[str, int], str]:
    """The compensation saga of every flagged row, so the report says which are being repaired
    (`compensate.py`) and which no saga has picked up yet."""
    from datasync.compensate import saga_states

    found: dict[tuple[str, int], str] = {}
    if not flagged:
        return found
    with reading(service) as conn:
        for kind in {item.category for item in flagged}:
            keys = [item.key for item in flagged if item.category == kind]
            for key, (state, outcome) in saga_states(spec, kind, conn, keys).items():
                found[(kind, key)] = state if outcome is None else f"{state} ({outcome})"
    return found


def record_report(spec: Spec, service: Engine, report: Report) -> None:
    with service.begin() as conn:
        conn.execute(
            insert(reconciles).values(
                sync_name=spec.name,
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
