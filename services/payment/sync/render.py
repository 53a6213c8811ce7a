"""What the CLI prints: one-line summaries and rich tables (pure functions of results)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from services.payment.sync.backfill import BackfillResult
from services.payment.sync.incremental import FollowResult
from services.payment.sync.invariants import CATEGORY
from services.payment.sync.reconcile import Report
from services.payment.sync.to_legacy import ToLegacyResult


def backfill_summary(result: BackfillResult) -> str:
    if result.status == "already-done":
        return (
            f"backfill already done up to id {result.upper_id} ({result.rows_total or 0:,} rows); "
            "pass --restart to copy everything again"
        )
    c = result.counts
    resumed = (
        f", resumed after id {result.resumed_after_id}"
        if result.resumed_after_id is not None
        else ""
    )
    return (
        f"backfill done: {result.rows:,} rows in {result.batches} batches, {result.seconds:.1f}s "
        f"({result.rows_per_second:,.0f} rows/s){resumed}: {c.inserted:,} inserted, "
        f"{c.updated:,} updated, {c.unchanged:,} unchanged, {c.kept_service:,} kept (service "
        f"newer); checkpoint id {result.last_id} of {result.upper_id}"
    )


def follow_summary(result: FollowResult) -> str:
    c = result.counts
    hw = result.high_water
    mark = "none" if hw is None else f"({hw[0].isoformat()}, id {hw[1]})"
    return (
        f"follow: read {result.rows_read:,}, {c.inserted:,} inserted, {c.updated:,} updated, "
        f"{c.unchanged:,} unchanged, {c.kept_service:,} kept; high-water {mark}; "
        f"lag {result.lag_seconds:.2f}s; {result.rows_per_second:,.1f} rows/s"
    )


def to_legacy_summary(result: ToLegacyResult) -> str:
    counts = ", ".join(f"{result.outcomes.get(k, 0):,} {k}" for k in sorted(result.outcomes))
    lag = "-" if result.lag_seconds is None else f"{result.lag_seconds:.2f}s"
    return f"to-legacy: {result.events:,} events ({counts or 'none'}); apply lag {lag}"


def reconcile_summary(report: Report) -> str:
    f = report.findings
    verdict = "passed" if report.passed else "FAILED"
    return (
        f"reconcile {verdict}: drift {report.drift} (max {report.max_drift}): "
        f"{len(f.missing)} missing, {len(f.extra)} extra, {len(f.differing)} differing, "
        f"{len(report.cancelled_live)} live payment(s) on a cancelled order; "
        f"{report.rows_legacy:,} legacy / {report.rows_service:,} service rows in "
        f"{report.chunks} chunks, {report.skipped_young} too young to compare, "
        f"{report.in_flight} in flight at re-check; {report.seconds:.1f}s"
    )


def reconcile_table(report: Report, limit: int) -> Table | None:
    """One line per finding (a differing row: one line per field), at most `limit` lines."""
    lines: list[tuple[str, str, str, str, str]] = []
    f = report.findings
    lines += [(str(key), "missing", "", "(present)", "(absent)") for key in sorted(f.missing)]
    lines += [(str(key), "extra", "", "(absent)", "(present)") for key in sorted(f.extra)]
    for key, fields in sorted(f.differing.items()):
        for name, (legacy, service) in fields.items():
            lines.append((str(key), "differing", name, _show(legacy), _show(service)))
    for item in report.cancelled_live:
        lines.append(
            (
                str(item.payment_id),
                CATEGORY,
                f"order {item.order_id} cancelled: refund",
                _show(item.legacy_status or "(absent)"),
                _show(item.service_status or "(absent)"),
            )
        )
    if not lines:
        return None
    table = Table(title="drift (in legacy, not service = missing; in service only = extra)")
    for heading in ("payment id", "kind", "field", "legacy", "service"):
        table.add_column(heading)
    for line in lines[:limit]:
        table.add_row(*line)
    if len(lines) > limit:
        table.caption = f"{len(lines) - limit} more lines: use --json for all"
    return table


def _show(value: Any) -> str:
    return "NULL" if value is None else str(value)
