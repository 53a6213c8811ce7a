"""`strangler sync status`: what every job of a sync last did, read from the service database,
with each job's health (its current problem and the time since its last success) and the
cutover gate's verdict."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection, Engine

from datasync.engines import database_now, reading
from datasync.errors import SchemaMissing
from datasync.incremental import lag_behind
from datasync.spec import Spec
from datasync.state import (
    JOB_BACKFILL,
    JOB_FOLLOW,
    JOB_TO_LEGACY,
    ONCE,
    STOPPED,
    Checkpoint,
    jobs,
    lag_percentiles,
    load_checkpoint,
    processed_count,
    reconciles,
    utcnow,
)

LAG_WINDOW = timedelta(hours=1)
# Follow counts as alive when its last poll ended within max(3 poll intervals, 10 s).
ALIVE_INTERVALS, ALIVE_MIN_SECONDS = 3, 10.0


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def health(cp: Checkpoint, now: datetime | None = None) -> dict[str, Any]:
    """A job's health: its current problem (None while healthy) and its last success."""
    now = now or utcnow()
    last = cp.last_success_at
    return {
        "ok": cp.problem is None,
        "problem": cp.problem,
        "problem_since": _iso(cp.problem_since),
        "last_success_at": _iso(last),
        "since_success_seconds": None if last is None else round((now - last).total_seconds(), 1),
    }


def _backfill(cp: Checkpoint | None) -> dict[str, Any] | None:
    if cp is None:
        return None
    total = cp.rows_total or 0
    return {
        "status": cp.status,
        "checkpoint_id": cp.position_id,
        "upper_id": cp.upper_id,
        "rows_done": cp.rows_done,
        "rows_total": cp.rows_total,
        "percent": round(100.0 * cp.rows_done / total, 1) if total else 100.0,
        "rows_written": cp.rows_written,
        "rows_per_second": cp.rows_per_second,
        "started_at": _iso(cp.started_at),
        "finished_at": _iso(cp.finished_at),
        "last_run": _iso(cp.updated_at),
        "health": health(cp),
    }


def _follow(
    spec: Spec, cp: Checkpoint | None, lag: dict[str, float] | None
) -> dict[str, Any] | None:
    if cp is None:
        return None
    return {
        "status": cp.status,
        "high_water": None
        if spec.changed is None
        else {spec.changed: _iso(cp.position_at), spec.key: cp.position_id},
        "caught_up": _iso(cp.source_at),
        "lag_seconds": cp.lag_seconds,
        "lag_last_hour": lag,
        "rows_per_second": cp.rows_per_second,
        "rows_read": cp.rows_done,
        "rows_written": cp.rows_written,
        "last_run": _iso(cp.updated_at),
        "health": health(cp),
    }


def _to_legacy(cp: Checkpoint | None, processed: int) -> dict[str, Any] | None:
    if cp is None:
        return None
    return {
        "status": cp.status,
        "position": cp.position_ref,
        "processed": processed,
        "applied": cp.rows_written,
        "lag_seconds": cp.lag_seconds,
        "last_run": _iso(cp.updated_at),
        "health": health(cp),
    }


def _live_lag(spec: Spec, legacy: Engine, follow: Checkpoint) -> float | None:
    """How far follow is behind the legacy's commits right now (`incremental.py`'s definition,
    from the legacy time its last poll caught up to)."""
    caught_up = follow.source_at or follow.position_at
    if caught_up is None:
        return None
    with legacy.connect() as conn:
        now = database_now(conn)
        if spec.refreshed:  # nothing to ask the table: as old as the last pass's start
            return max(0.0, (now - caught_up).total_seconds())
        return lag_behind(spec, conn, caught_up, now)


def _last_reconcile(spec: Spec, conn: Any) -> Any:
    query = (
        select(reconciles)
        .where(reconciles.c.sync_name == spec.name)
        .order_by(reconciles.c.id.desc())
        .limit(1)
    )
    return conn.execute(query).mappings().first()


def gather_status(
    spec: Spec,
    service: Engine,
    legacy: Engine | None = None,
    *,
    reconcile_max_age: float | None = None,
) -> dict[str, Any]:
    """Every job's state as one JSON-ready dict (`--json`); with the legacy engine, the follow
    part also says how far behind the legacy's commits it is right now. The cutover part lists
    each gate condition and, for every unmet one, why (`cutover_check`)."""
    gate = cutover_check(spec, service, reconcile_max_age=reconcile_max_age)
    with reading(service) as conn:
        if not inspect(conn).has_table(jobs.name):  # read-only: nothing has run, say so
            return _never_run(spec, gate)
        backfill = load_checkpoint(conn, spec.name, JOB_BACKFILL)
        follow = load_checkpoint(conn, spec.name, JOB_FOLLOW)
        to_legacy = load_checkpoint(conn, spec.name, JOB_TO_LEGACY)
        lag = lag_percentiles(conn, spec.name, JOB_FOLLOW, utcnow() - LAG_WINDOW)
        processed = processed_count(conn, spec.name)
        last = _last_reconcile(spec, conn)
        sagas = _sagas(spec, conn)
    reconcile = None
    if last is not None:
        reconcile = {
            "finished_at": _iso(last["finished_at"]),
            "passed": bool(last["passed"]),
            "drift": last["drift"],
            "max_drift": last["max_drift"],
            "missing": last["missing"],
            "extra": last["extra"],
            "differing": last["differing"],
            "rows_compared": last["rows_compared"],
            "report": json.loads(last["report"]),
        }
    following = _follow(spec, follow, lag)
    if following is not None and legacy is not None and follow is not None:
        following["live_lag_seconds"] = _live_lag(spec, legacy, follow)
    return {
        "sync": spec.name,
        "cutover": _cutover(gate),
        "backfill": _backfill(backfill),
        "follow": following,
        "to_legacy": _to_legacy(to_legacy, processed),
        "reconcile": reconcile,
        "compensate": sagas,
    }


def _cutover(gate: CutoverCheck) -> dict[str, Any]:
    return gate.body()


def _never_run(spec: Spec, gate: CutoverCheck) -> dict[str, Any]:
    return {
        "sync": spec.name,
        "cutover": _cutover(gate),
        "backfill": None,
        "follow": None,
        "to_legacy": None,
        "reconcile": None,
        "compensate": None,
    }


def _sagas(spec: Spec, conn: Connection) -> dict[str, Any] | None:
    """The compensation sagas (`compensate.py`), when the declaration has any rule."""
    if not spec.compensations:
        return None
    from datasync.compensate import saga_summary

    return saga_summary(spec, conn)


def saga_line(sagas: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sagas["counts"].items() if n)
    oldest = sagas["oldest_open_seconds"]
    waiting = "" if oldest is None else f", oldest open {oldest:.0f}s"
    failed = sagas["failures"]
    last = (
        ""
        if not failed
        else (
            f"; last failure: {failed[0]['rule']} row {failed[0]['row_key']} "
            f"({failed[0]['outcome']}: {failed[0]['last_error'] or failed[0]['http_status']})"
        )
    )
    orphaned = sagas.get("orphaned", 0)
    gone = f"; {orphaned} of rules no longer declared" if orphaned else ""
    return f"{sagas['open']} open{waiting} ({counts or 'none yet'}){last}{gone}"


def health_note(job: dict[str, Any]) -> str:
    """ ", PROBLEM since …: …" while failing, else ", last success Ns ago" (or nothing)."""
    h = job.get("health") or {}
    ago = h.get("since_success_seconds")
    last = "" if ago is None else f"last success {ago:.0f}s ago"
    if h.get("problem"):
        return f", PROBLEM since {h['problem_since']}: {h['problem']}" + (
            f" ({last})" if last else ""
        )
    return f", {last}" if last else ""


def status_lines(status: dict[str, Any]) -> list[tuple[str, str]]:
    """(job, one-line summary) for the human-readable table."""
    lines: list[tuple[str, str]] = []
    b = status["backfill"]
    lines.append(
        (
            "backfill",
            "never run"
            if b is None
            else f"{b['status']}: {b['rows_done']:,}/{b['rows_total'] or 0:,} rows "
            f"({b['percent']}%), checkpoint id {b['checkpoint_id']} of {b['upper_id']}, "
            f"last run {b['last_run']}",
        )
    )
    f = status["follow"]
    if f is None:
        lines.append(("follow", "never run"))
    else:
        if f["high_water"] is None:  # a refreshed table: passes, no mark
            position = f"last pass from {f['caught_up']}"
        else:
            (changed, at), (key, position) = f["high_water"].items()
            position = f"high-water ({changed} {at}, {key} {position})"
        lag = f["lag_seconds"]
        pct = f["lag_last_hour"]
        live = f.get("live_lag_seconds")
        now_behind = "" if live is None else f", behind the legacy now {live:.2f}s"
        spread = f", p50 {pct['p50']:.2f}s p99 {pct['p99']:.2f}s (last hour)" if pct else ""
        lines.append(
            (
                "follow",
                f"{f['status']}: {position}, lag "
                f"{'-' if lag is None else f'{lag:.2f}s'}{spread}{now_behind}, "
                f"{f['rows_per_second'] or 0:.1f} rows/s, last run {f['last_run']}"
                f"{health_note(f)}",
            )
        )
    t = status["to_legacy"]
    lines.append(
        (
            "to-legacy",
            "never run"
            if t is None
            else f"{t['status']}: position {t['position']}, {t['processed']:,} events processed, "
            f"{t['applied']:,} applied, last run {t['last_run']}{health_note(t)}",
        )
    )
    r = status["reconcile"]
    lines.append(
        (
            "reconcile",
            "never run"
            if r is None
            else f"{'passed' if r['passed'] else 'FAILED'}: drift {r['drift']} (max "
            f"{r['max_drift']}; missing {r['missing']}, extra {r['extra']}, differing "
            f"{r['differing']}) over {r['rows_compared']:,} rows at {r['finished_at']}",
        )
    )
    sagas = status.get("compensate")
    if sagas is not None:
        lines.append(("compensate", saga_line(sagas)))
    gate = status["cutover"]
    lines.append(("cutover gate", "ready" if gate["ready"] else "NOT READY"))
    for check in gate.get("checks", []):
        mark = "ok" if check["ok"] else "UNMET"
        label = str(check["name"]).split("_", 1)[0]  # no wider than "cutover gate"
        lines.append((f"  {label}", f"{mark}: {check['detail']}"))
    return lines


@dataclass(frozen=True)
class CutoverCheck:
    """Whether the data allows moving payment writes to the service, and why not: `reasons`
    says, for every unmet condition, what is wrong; `checks` lists every condition."""

    ready: bool
    reasons: tuple[str, ...]
    checks: tuple[dict[str, Any], ...] = ()
    lag_seconds: float | None = None  # follow's lag now (None: unknown)
    drift: int | None = None  # rows the last reconcile found different (None: none ran)

    def body(self) -> dict[str, Any]:
        """The gate's answer as the services serve it (`GET /cutover`); the route table's
        control plane keeps the lag and the drift as the evidence of the change it allowed."""
        return {
            "ready": self.ready,
            "reasons": list(self.reasons),
            "checks": list(self.checks),
            "lag_seconds": self.lag_seconds,
            "drift": self.drift,
        }


def _gate_state(
    spec: Spec, service: Engine, confirmations: int
) -> tuple[Checkpoint | None, Checkpoint | None, list[Any]]:
    """The backfill's and follow's checkpoints and the last reconciles (none of them before the
    engine's tables exist: the gate is read-only and creates nothing). A service database
    without the declared table is not migrated at all: `SchemaMissing`."""
    with reading(service) as conn:
        if not inspect(conn).has_table(jobs.name):
            if not inspect(conn).has_table(spec.service_table):
                raise SchemaMissing(f"the service database lacks {spec.service_table}")
            return None, None, []
        backfill = load_checkpoint(conn, spec.name, JOB_BACKFILL)
        follow = load_checkpoint(conn, spec.name, JOB_FOLLOW)
        recent = list(
            conn.execute(
                select(reconciles.c.drift, reconciles.c.finished_at)
                .where(reconciles.c.sync_name == spec.name)
                .order_by(reconciles.c.id.desc())
                .limit(confirmations)
            ).all()
        )
    return backfill, follow, recent


def follow_deadline(interval: float | None) -> float:
    """Seconds since its last poll within which a follower counts as alive."""
    return max(ALIVE_INTERVALS * (interval or 0.0), ALIVE_MIN_SECONDS)


def cutover_check(
    spec: Spec,
    service: Engine,
    *,
    max_lag_seconds: float | None = None,
    confirmations: int | None = None,
    reconcile_max_age: float | None = None,
    now: datetime | None = None,
) -> CutoverCheck:
    """The gate the route table respects ("drift 0, confirmed twice"), on live data only, with
    the declared thresholds (`spec.Gate`) unless given:

    - backfill: it has finished;
    - follow alive: it has no current problem (`retry.py`: a database it cannot reach), its
      last poll ended within max(3 x its poll interval, 10 s) and it was not stopped (a `--once`
      poll counts only while that recent);
    - lag: follow's lag is within `max_lag_seconds`;
    - reconciles: the last `confirmations` reconciles found drift 0, finished after the backfill
      did, and the older of them finished within `reconcile_max_age` seconds.
    """
    gate = spec.gate
    max_lag_seconds = gate.max_lag if max_lag_seconds is None else max_lag_seconds
    confirmations = gate.confirmations if confirmations is None else confirmations
    max_age = gate.reconcile_max_age if reconcile_max_age is None else reconcile_max_age
    now = now or utcnow()
    backfill, follow, recent = _gate_state(spec, service, confirmations)
    checks: list[dict[str, Any]] = []

    def check(name: str, problem: str | None, detail: str) -> None:
        checks.append({"name": name, "ok": problem is None, "detail": problem or detail})

    backfilled = backfill is not None and backfill.status == "done"
    check(
        "backfill",
        None if backfilled else "the backfill has not finished",
        f"done at {_iso(backfill.finished_at) if backfill else None}",
    )
    check("follow_alive", _follow_dead(follow, now), "follow polled recently")
    lag = _gate_lag(spec, follow, now)
    if lag is None:
        lag_problem: str | None = "follow has not run, so its lag is unknown"
    elif lag > max_lag_seconds:
        lag_problem = f"follow lag {lag:.1f}s is over {max_lag_seconds:.1f}s"
    else:
        lag_problem = None
    check("lag", lag_problem, f"follow lag within {max_lag_seconds:.1f}s")
    check(
        "reconciles",
        _reconciles_unmet(recent, confirmations, backfill, now, max_age),
        f"the last {confirmations} reconciles found drift 0 within {max_age:g}s",
    )
    reasons = tuple(str(c["detail"]) for c in checks if not c["ok"])
    drift = int(recent[0].drift) if recent and recent[0].drift is not None else None
    return CutoverCheck(not reasons, reasons, tuple(checks), lag, drift)


def _gate_lag(spec: Spec, follow: Checkpoint | None, now: datetime) -> float | None:
    """Follow's lag as the gate judges it: the last poll's; for a refreshed table, the age of
    the last pass's start (what it shows is that old, however quick the pass was)."""
    if follow is None or follow.lag_seconds is None:
        return None
    if spec.refreshed and follow.source_at is not None:
        return max(follow.lag_seconds, (now - follow.source_at).total_seconds())
    return follow.lag_seconds


def _follow_dead(follow: Checkpoint | None, now: datetime) -> str | None:
    """Why follow does not count as alive, or None when it does."""
    if follow is None or follow.updated_at is None:
        return "follow has not run"
    if follow.problem is not None:
        return (
            f"follow has a problem since {_iso(follow.problem_since)} (last success "
            f"{_iso(follow.last_success_at)}): {follow.problem}"
        )
    if follow.status == STOPPED:
        return f"follow is stopped (since {_iso(follow.updated_at)}): start it again"
    limit = follow_deadline(follow.poll_interval)
    age = (now - follow.updated_at).total_seconds()
    if age > limit:
        kind = "a single follow poll (--once)" if follow.status == ONCE else "follow"
        return (
            f"{kind} last finished {age:.0f}s ago, over {limit:g}s: follow must be running "
            "(is it dead?)"
        )
    return None


def _reconciles_unmet(
    recent: list[Any],
    confirmations: int,
    backfill: Checkpoint | None,
    now: datetime,
    max_age: float,
) -> str | None:
    """Why the recent reconciles do not confirm drift 0 on fresh data, or None."""
    if len(recent) < confirmations:
        return f"{len(recent)} of the {confirmations} reconciles needed have run"
    if any(drift != 0 for drift, _at in recent):
        drifts = ", ".join(str(drift) for drift, _at in recent)
        return f"the last {confirmations} reconciles did not all find drift 0 (drift {drifts})"
    oldest = min(at for _drift, at in recent)
    done = backfill.finished_at if backfill is not None else None
    if done is not None and oldest < done:
        return (
            f"a reconcile among the last {confirmations} finished ({_iso(oldest)}) before the "
            f"backfill did ({_iso(done)}): reconcile again"
        )
    age = (now - oldest).total_seconds()
    if age > max_age:
        return (
            f"the last {confirmations} reconciles are stale (the older finished {age:.0f}s "
            f"ago, over {max_age:g}s): reconcile again"
        )
    return None
