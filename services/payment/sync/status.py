"""`strangler sync status`: what every sync job last did, read from the service database."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from services.payment.db import utcnow
from services.payment.sync.engines import database_now, reading
from services.payment.sync.legacy_schema import legacy_payments
from services.payment.sync.state import (
    JOB_BACKFILL,
    JOB_FOLLOW,
    JOB_TO_LEGACY,
    ONCE,
    STOPPED,
    Checkpoint,
    lag_percentiles,
    load_checkpoint,
    processed_count,
    reconciles,
)

LAG_WINDOW = timedelta(hours=1)
# Follow counts as alive when its last poll ended within max(3 poll intervals, 10 s).
ALIVE_INTERVALS, ALIVE_MIN_SECONDS = 3, 10.0
DEFAULT_RECONCILE_MAX_AGE = 15 * 60.0  # reconciles older than this do not open the gate


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


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
    }


def _follow(cp: Checkpoint | None, lag: dict[str, float] | None) -> dict[str, Any] | None:
    if cp is None:
        return None
    return {
        "status": cp.status,
        "high_water": {"updated_at": _iso(cp.position_at), "id": cp.position_id},
        "source_newest": _iso(cp.source_at),
        "lag_seconds": cp.lag_seconds,
        "lag_last_hour": lag,
        "rows_per_second": cp.rows_per_second,
        "rows_read": cp.rows_done,
        "rows_written": cp.rows_written,
        "last_run": _iso(cp.updated_at),
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
    }


def _live_lag(legacy: Engine, follow: Checkpoint) -> float | None:
    with legacy.connect() as conn:
        now = database_now(conn)
        newest = conn.scalar(
            select(func.max(legacy_payments.c.updated_at)).where(
                legacy_payments.c.updated_at <= now
            )
        )
    if newest is None or follow.position_at is None:
        return None
    return max(0.0, float((newest - follow.position_at).total_seconds()))


def gather_status(
    service: Engine,
    legacy: Engine | None = None,
    *,
    reconcile_max_age: float = DEFAULT_RECONCILE_MAX_AGE,
) -> dict[str, Any]:
    """Every job's state as one JSON-ready dict (`--json`); with the legacy engine, the follow
    part also says how far behind the legacy's newest change it is right now. The cutover part
    lists each gate condition and, for every unmet one, why (`cutover_check`)."""
    with reading(service) as conn:
        backfill = load_checkpoint(conn, JOB_BACKFILL)
        follow = load_checkpoint(conn, JOB_FOLLOW)
        to_legacy = load_checkpoint(conn, JOB_TO_LEGACY)
        lag = lag_percentiles(conn, JOB_FOLLOW, utcnow() - LAG_WINDOW)
        processed = processed_count(conn)
        last = (
            conn.execute(select(reconciles).order_by(reconciles.c.id.desc()).limit(1))
            .mappings()
            .first()
        )
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
    following = _follow(follow, lag)
    if following is not None and legacy is not None and follow is not None:
        following["live_lag_seconds"] = _live_lag(legacy, follow)
    gate = cutover_check(service, reconcile_max_age=reconcile_max_age)
    return {
        "cutover": {
            "ready": gate.ready,
            "reasons": list(gate.reasons),
            "checks": list(gate.checks),
        },
        "backfill": _backfill(backfill),
        "follow": following,
        "to_legacy": _to_legacy(to_legacy, processed),
        "reconcile": reconcile,
    }


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
        hw = f["high_water"]
        lag = f["lag_seconds"]
        pct = f["lag_last_hour"]
        live = f.get("live_lag_seconds")
        now_behind = "" if live is None else f", behind the legacy now {live:.2f}s"
        spread = f", p50 {pct['p50']:.2f}s p99 {pct['p99']:.2f}s (last hour)" if pct else ""
        lines.append(
            (
                "follow",
                f"{f['status']}: high-water ({hw['updated_at']}, id {hw['id']}), lag "
                f"{'-' if lag is None else f'{lag:.2f}s'}{spread}{now_behind}, "
                f"{f['rows_per_second'] or 0:.1f} rows/s, last run {f['last_run']}",
            )
        )
    t = status["to_legacy"]
    lines.append(
        (
            "to-legacy",
            "never run"
            if t is None
            else f"{t['status']}: position {t['position']}, {t['processed']:,} events processed, "
            f"{t['applied']:,} applied, last run {t['last_run']}",
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


def follow_deadline(interval: float | None) -> float:
    """Seconds since its last poll within which a follower counts as alive."""
    return max(ALIVE_INTERVALS * (interval or 0.0), ALIVE_MIN_SECONDS)


def cutover_check(
    service: Engine,
    *,
    max_lag_seconds: float = 5.0,
    confirmations: int = 2,
    reconcile_max_age: float = DEFAULT_RECONCILE_MAX_AGE,
    now: datetime | None = None,
) -> CutoverCheck:
    """The gate DATA-SYNC.md asks the route table to respect ("drift 0, confirmed twice"), on
    live data only:

    - backfill: it has finished;
    - follow alive: its last poll ended within max(3 x its poll interval, 10 s) and it was not
      stopped (a `--once` poll counts only while that recent);
    - lag: follow's lag is within `max_lag_seconds`;
    - reconciles: the last `confirmations` reconciles found drift 0, finished after the backfill
      did, and the older of them finished within `reconcile_max_age` seconds.
    """
    now = now or utcnow()
    with reading(service) as conn:
        backfill = load_checkpoint(conn, JOB_BACKFILL)
        follow = load_checkpoint(conn, JOB_FOLLOW)
        recent = list(
            conn.execute(
                select(reconciles.c.drift, reconciles.c.finished_at)
                .order_by(reconciles.c.id.desc())
                .limit(confirmations)
            ).all()
        )
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
    if follow is None or follow.lag_seconds is None:
        lag_problem: str | None = "follow has not run, so its lag is unknown"
    elif follow.lag_seconds > max_lag_seconds:
        lag_problem = f"follow lag {follow.lag_seconds:.1f}s is over {max_lag_seconds:.1f}s"
    else:
        lag_problem = None
    check("lag", lag_problem, f"follow lag within {max_lag_seconds:.1f}s")
    check(
        "reconciles",
        _reconciles_unmet(recent, confirmations, backfill, now, reconcile_max_age),
        f"the last {confirmations} reconciles found drift 0 within {reconcile_max_age:g}s",
    )
    reasons = tuple(str(c["detail"]) for c in checks if not c["ok"])
    return CutoverCheck(not reasons, reasons, tuple(checks))


def _follow_dead(follow: Checkpoint | None, now: datetime) -> str | None:
    """Why follow does not count as alive, or None when it does."""
    if follow is None or follow.updated_at is None:
        return "follow has not run"
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
