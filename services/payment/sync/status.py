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
    Checkpoint,
    lag_percentiles,
    load_checkpoint,
    processed_count,
    reconciles,
)

LAG_WINDOW = timedelta(hours=1)


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


def gather_status(service: Engine, legacy: Engine | None = None) -> dict[str, Any]:
    """Every job's state as one JSON-ready dict (`--json`); with the legacy engine, the follow
    part also says how far behind the legacy's newest change it is right now."""
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
    gate = cutover_check(service)
    return {
        "cutover": {"ready": gate.ready, "reasons": list(gate.reasons)},
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
    lines.append(
        ("cutover gate", "ready" if gate["ready"] else "not ready: " + "; ".join(gate["reasons"]))
    )
    return lines


@dataclass(frozen=True)
class CutoverCheck:
    """Whether the data allows moving payment writes to the service, and why not."""

    ready: bool
    reasons: tuple[str, ...]


def cutover_check(
    service: Engine, *, max_lag_seconds: float = 5.0, confirmations: int = 2
) -> CutoverCheck:
    """The gate DATA-SYNC.md asks the route table to respect: the backfill is done, the follow
    lag is within budget, and the last `confirmations` reconciles all found drift 0
    ("drift 0, confirmed twice")."""
    reasons: list[str] = []
    with reading(service) as conn:
        backfill = load_checkpoint(conn, JOB_BACKFILL)
        follow = load_checkpoint(conn, JOB_FOLLOW)
        recent = list(
            conn.execute(
                select(reconciles.c.drift).order_by(reconciles.c.id.desc()).limit(confirmations)
            ).scalars()
        )
    if backfill is None or backfill.status != "done":
        reasons.append("the backfill has not finished")
    if follow is None or follow.lag_seconds is None:
        reasons.append("follow has not run")
    elif follow.lag_seconds > max_lag_seconds:
        reasons.append(f"follow lag {follow.lag_seconds:.1f}s is over {max_lag_seconds:.1f}s")
    if len(recent) < confirmations or any(drift != 0 for drift in recent):
        reasons.append(f"the last {confirmations} reconciles did not all find drift 0")
    return CutoverCheck(not reasons, tuple(reasons))
