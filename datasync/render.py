"""What the CLI prints: one-line summaries and rich tables (pure functions of results)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from datasync.backfill import BackfillResult
from datasync.compensate import CompensationResult
from datasync.incremental import FollowResult
from datasync.invariants import singular
from datasync.reconcile import Report
from datasync.spec import Spec
from datasync.to_legacy import ToLegacyResult


def backfill_summary(spec: Spec, result: BackfillResult) -> str:
    if result.status == "already-done":
        return (
            f"backfill already done up to {spec.key} {result.upper_id} "
            f"({result.rows_total or 0:,} rows); pass --restart to copy everything again"
        )
    c = result.counts
    resumed = (
        f", resumed after {spec.key} {result.resumed_after_id}"
        if result.resumed_after_id is not None
        else ""
    )
    return (
        f"backfill done: {result.rows:,} rows in {result.batches} batches, {result.seconds:.1f}s "
        f"({result.rows_per_second:,.0f} rows/s){resumed}: {c.inserted:,} inserted, "
        f"{c.updated:,} updated, {c.unchanged:,} unchanged, {c.kept_service:,} kept (service "
        f"newer); checkpoint {spec.key} {result.last_id} of {result.upper_id}"
    )


def follow_summary(spec: Spec, result: FollowResult) -> str:
    c = result.counts
    hw = result.high_water
    mark = "none" if hw is None else f"({hw[0].isoformat()}, {spec.key} {hw[1]})"
    if spec.refreshed:
        deleted = f", {c.deleted:,} deleted"
        mark = f"full refresh of {result.pages:,} page(s)"
    else:
        deleted, mark = "", f"high-water {mark}"
    return (
        f"follow: read {result.rows_read:,}, {c.inserted:,} inserted, {c.updated:,} updated, "
        f"{c.unchanged:,} unchanged, {c.kept_service:,} kept{deleted}; {mark}; "
        f"lag {result.lag_seconds:.2f}s; {result.rows_per_second:,.1f} rows/s"
    )


def to_legacy_summary(result: ToLegacyResult) -> str:
    counts = ", ".join(f"{result.outcomes.get(k, 0):,} {k}" for k in sorted(result.outcomes))
    lag = "-" if result.lag_seconds is None else f"{result.lag_seconds:.2f}s"
    return f"to-legacy: {result.events:,} events ({counts or 'none'}); apply lag {lag}"


def broken_rules(spec: Spec, report: Report) -> str:
    """ ", N live payment(s) on a cancelled order" per declared invariant."""
    row = singular(spec.legacy_table)
    parts = [
        f", {len([i for i in report.flagged if i.category == kind])} live {row}(s) on a "
        f"{rule.watch.value} {singular(rule.watch.table)}"
        for kind, rule in zip(report.categories, spec.compensations, strict=True)
    ]
    return "".join(parts)


def reconcile_summary(spec: Spec, report: Report) -> str:
    f = report.findings
    verdict = "passed" if report.passed else "FAILED"
    return (
        f"reconcile {verdict}: drift {report.drift} (max {report.max_drift}): "
        f"{len(f.missing)} missing, {len(f.extra)} extra, {len(f.differing)} differing"
        f"{broken_rules(spec, report)}; "
        f"{report.rows_legacy:,} legacy / {report.rows_service:,} service rows in "
        f"{report.chunks} chunks, {report.skipped_young} too young to compare, "
        f"{report.in_flight} in flight at re-check; {report.seconds:.1f}s"
    )


def reconcile_table(spec: Spec, report: Report, limit: int) -> Table | None:
    """One line per finding (a differing row: one line per field), at most `limit` lines."""
    lines: list[tuple[str, str, str, str, str]] = []
    f = report.findings
    lines += [(str(key), "missing", "", "(present)", "(absent)") for key in sorted(f.missing)]
    lines += [(str(key), "extra", "", "(absent)", "(present)") for key in sorted(f.extra)]
    for key, fields in sorted(f.differing.items()):
        for name, (legacy, service) in fields.items():
            lines.append((str(key), "differing", name, _show(legacy), _show(service)))
    watched = {
        kind: rule.watch for kind, rule in zip(report.categories, spec.compensations, strict=True)
    }
    for item in report.flagged:
        watch = watched[item.category]
        lines.append(
            (
                str(item.key),
                item.category,
                f"{singular(watch.table)} {item.watched_key} {watch.value}; compensation "
                f"{report.sagas.get((item.category, item.key), 'none')}",
                _show(item.legacy_state or "(absent)"),
                _show(item.service_state or "(absent)"),
            )
        )
    if not lines:
        return None
    table = Table(title="drift (in legacy, not service = missing; in service only = extra)")
    for heading in (
        f"{singular(spec.legacy_table)} {spec.key}",
        "kind",
        "field",
        "legacy",
        "service",
    ):
        table.add_column(heading)
    for line in lines[:limit]:
        table.add_row(*line)
    if len(lines) > limit:
        table.caption = f"{len(lines) - limit} more lines: use --json for all"
    return table


def _show(value: Any) -> str:
    return "NULL" if value is None else str(value)


def compensation_summary(result: CompensationResult) -> str:
    found = ", ".join(f"{n} by {source}" for source, n in result.found.items()) or "none"
    calls = ", ".join(f"{n} {outcome}" for outcome, n in result.outcomes.items()) or "none"
    swept = " (swept)" if result.swept else ""
    return f"compensate: sagas started {found}{swept}; calls {calls}"


def declaration_summary(spec: Spec) -> dict[str, Any]:
    """What a declaration moves, for `sync check` (JSON-ready)."""
    renamed = {f.name: f.service for f in spec.fields if f.service != f.name}
    return {
        "sync": spec.name,
        "source": str(spec.source) if spec.source else None,
        "legacy": f"{spec.legacy_table} (key {spec.key}, changed {spec.changed})"
        if spec.changed
        else f"{spec.legacy_table} (key {spec.key}, no change column: full refresh)",
        "service": spec.service_table,
        "refreshed": spec.refreshed,
        "fields": len(spec.fields),
        "renamed": renamed,
        "directions": sorted(spec.directions),
        "conflict": spec.conflict,
        "soft_delete": list(spec.soft_delete) if spec.soft_delete else None,
        "events": None
        if spec.events is None
        else {"stream": spec.events.stream, "outbox": spec.events.outbox},
        "compensate": [
            {
                "name": rule.name,
                "watch": f"{rule.watch.table}.{rule.watch.column} = {rule.watch.value}",
                "states": sorted(rule.actions),
            }
            for rule in spec.compensations
        ],
    }


def declaration_text(summary: dict[str, Any]) -> str:
    lines = [f"sync {summary['sync']} ({summary['source']}): valid"]
    lines.append(f"  legacy   {summary['legacy']}")
    renamed = ", ".join(f"{a} -> {b}" for a, b in summary["renamed"].items())
    lines.append(
        f"  service  {summary['service']}: {summary['fields']} fields"
        + (f" (renamed: {renamed})" if renamed else "")
    )
    lines.append(f"  moves    {', '.join(summary['directions'])}; conflicts: {summary['conflict']}")
    if summary["soft_delete"]:
        lines.append(f"  deletes  soft: {summary['soft_delete'][0]} = {summary['soft_delete'][1]}")
    elif summary["refreshed"]:
        lines.append("  deletes  each refresh deletes the rows the legacy no longer has")
    else:
        lines.append("  deletes  hard deletes are found by reconcile (rows extra in the service)")
    events = summary["events"]
    if events:
        lines.append(f"  events   stream {events['stream']}, outbox {events['outbox']}")
    for rule in summary["compensate"]:
        lines.append(
            f"  compensate {rule['name']}: when {rule['watch']}, for rows "
            f"{', '.join(rule['states'])}"
        )
    return "\n".join(lines)
