"""`strangler sync …` (also `python -m services.payment.sync …`): move the payment data.

    backfill    copy the monolith's payments into the service's database (resumable)
    follow      keep copying the monolith's changes until cutover (poll by high-water mark)
    to-legacy   after cutover, apply the service's payment events to the monolith's table
    reconcile   compare both databases by key; exit 3 when drift exceeds --max-drift
    status      what each job last did: positions, lag, processed events, last reconcile
    migrate     create or upgrade the service's schema (its Alembic migrations)

Every command takes `--legacy-db URL --service-db URL` (environment: STRANGLER_LEGACY_DB or
LEGACY_DATABASE_URL, STRANGLER_SERVICE_DB or PAYMENT_DATABASE_URL; defaults: the monolith's and
the service's own defaults) and `--json`. Failures exit 1 with one line saying why, never a
traceback; reconcile exits 3 when the drift is over the threshold.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy.engine import Engine

from services.payment.settings import Settings as PaymentSettings
from services.payment.sync import render
from services.payment.sync.cli_support import (
    Source,
    emit_json,
    engines,
    errors_as_exit,
    fail,
    legacy_if_reachable,
    open_subscriber,
    service_engine,
    stdout,
    stop_on_signals,
)

# The monolith's default (legacy_monolith/settings.py, which the service never imports).
DEFAULT_LEGACY_DB = "sqlite:///./var/legacy.db"
DEFAULT_SERVICE_DB = str(PaymentSettings.model_fields["database_url"].default)
DEFAULT_STREAM = str(PaymentSettings.model_fields["events_stream"].default)
EXIT_DRIFT = 3

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Move the payment data: backfill, follow, to-legacy, reconcile, status.",
)

LegacyDb = Annotated[
    str,
    typer.Option(
        "--legacy-db",
        envvar=["STRANGLER_LEGACY_DB", "LEGACY_DATABASE_URL"],
        help="The monolith's database (read; written only by to-legacy).",
    ),
]
ServiceDb = Annotated[
    str,
    typer.Option(
        "--service-db",
        envvar=["STRANGLER_SERVICE_DB", "PAYMENT_DATABASE_URL"],
        help="The payment service's database (where the sync keeps its state).",
    ),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
Migrate = Annotated[
    bool, typer.Option("--migrate", help="Create or upgrade the service's schema first.")
]


@app.command()
def migrate(service_db: ServiceDb = DEFAULT_SERVICE_DB, json_output: JsonOutput = False) -> None:
    """Create or upgrade the service's schema (the payment tables and the sync's state)."""
    from services.payment.db import current_revision, upgrade
    from services.payment.sync.engines import make_engine_for_service

    with errors_as_exit():
        engine = make_engine_for_service(service_db)
        upgrade(engine)
        revision = current_revision(engine)
        engine.dispose()
    if json_output:
        emit_json({"revision": revision})
    else:
        typer.echo(f"service schema at revision {revision}")


@app.command()
def backfill(
    legacy_db: LegacyDb = DEFAULT_LEGACY_DB,
    service_db: ServiceDb = DEFAULT_SERVICE_DB,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per batch.")] = 1_000,
    restart: Annotated[
        bool, typer.Option("--restart", help="Copy everything again, ignoring the checkpoint.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    json_output: JsonOutput = False,
    migrate: Migrate = False,
) -> None:
    """Copy the monolith's payments into the service, resuming after the last checkpoint."""
    from services.payment.sync.backfill import backfill as run
    from services.payment.sync.progress import BarProgress, NoProgress, Progress

    with errors_as_exit():
        legacy, service = engines(legacy_db, service_db, migrate)
        bar: Progress = NoProgress() if quiet or json_output else BarProgress("backfill")
        result = run(legacy, service, batch_size=batch_size, restart=restart, progress=bar)
    if json_output:
        emit_json(result.as_dict())
    else:
        typer.echo(render.backfill_summary(result))


@app.command()
def follow(
    legacy_db: LegacyDb = DEFAULT_LEGACY_DB,
    service_db: ServiceDb = DEFAULT_SERVICE_DB,
    once: Annotated[bool, typer.Option("--once", help="One poll, then exit.")] = False,
    interval: Annotated[float, typer.Option(min=0.01, help="Seconds between polls.")] = 1.0,
    lookback: Annotated[
        float, typer.Option(min=0, help="Seconds re-read behind the high-water mark.")
    ] = 30.0,
    safety_delay: Annotated[
        float, typer.Option(min=0, help="Read nothing newer than the legacy clock minus this.")
    ] = 1.0,
    page_size: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per page.")] = 1_000,
    emit_events: Annotated[
        bool, typer.Option(help="Write an outbox event for each row the sync changes.")
    ] = True,
    metrics_port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Serve Prometheus /metrics here.")
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address of the metrics server.")] = (
        "127.0.0.1"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    json_output: JsonOutput = False,
    migrate: Migrate = False,
) -> None:
    """Copy the monolith's changes as they happen (until cutover); --once for one poll."""
    from services.payment.sync.incremental import FollowResult, follow_once
    from services.payment.sync.incremental import follow as run
    from services.payment.sync.metrics import SyncMetrics

    options: dict[str, Any] = {
        "lookback": lookback,
        "safety_delay": safety_delay,
        "page_size": page_size,
        "emit_events": emit_events,
    }

    def show(result: FollowResult) -> None:
        if json_output:
            emit_json(result.as_dict())
        elif not quiet and (once or result.counts.written):
            typer.echo(render.follow_summary(result))

    with errors_as_exit():
        legacy, service = engines(legacy_db, service_db, migrate)
        metrics = SyncMetrics()
        if metrics_port is not None:
            port = metrics.serve(metrics_port, metrics_host)
            if not quiet and not json_output:
                typer.echo(f"metrics on http://{metrics_host}:{port}/metrics")
        if once:
            show(follow_once(legacy, service, metrics=metrics, **options))
            return
        stop = threading.Event()
        if not quiet and not json_output:
            typer.echo(
                f"following {legacy.url.render_as_string()} every {interval}s (Ctrl-C stops)"
            )
        with stop_on_signals(stop.set):
            run(
                legacy,
                service,
                interval=interval,
                stop=stop,
                on_poll=show,
                metrics=metrics,
                **options,
            )


@app.command("to-legacy")
def to_legacy(
    legacy_db: LegacyDb = DEFAULT_LEGACY_DB,
    service_db: ServiceDb = DEFAULT_SERVICE_DB,
    redis_url: Annotated[
        str | None,
        typer.Option(
            envvar=["STRANGLER_REDIS_URL", "PAYMENT_REDIS_URL"], help="The event stream's Redis."
        ),
    ] = None,
    stream: Annotated[
        str, typer.Option(envvar="PAYMENT_EVENTS_STREAM", help="The payment events stream.")
    ] = DEFAULT_STREAM,
    group: Annotated[str, typer.Option(help="Consumer group.")] = "to-legacy",
    consumer: Annotated[
        str | None, typer.Option(help="Consumer name in the group (default: host-pid).")
    ] = None,
    source: Annotated[
        Source,
        typer.Option(
            help="redis: the stream; outbox: the service's outbox table; auto: redis "
            "when --redis-url is given."
        ),
    ] = Source.auto,
    once: Annotated[bool, typer.Option("--once", help="Apply what is there, then exit.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Events per batch.")] = 100,
    block_ms: Annotated[int, typer.Option(min=1, help="Wait this long for new events.")] = 1000,
    claim_idle_ms: Annotated[
        int, typer.Option(min=1, help="Claim a dead consumer's events after this idle time.")
    ] = 30_000,
    metrics_port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Serve Prometheus /metrics here.")
    ] = None,
    max_clock_skew: Annotated[
        float,
        typer.Option(
            min=0,
            help="Seconds the service's and the monolith's clocks may differ: a legacy row "
            "counts as newer than an event only beyond this.",
        ),
    ] = 5.0,
    json_output: JsonOutput = False,
    migrate: Migrate = False,
) -> None:
    """After cutover: apply the service's payment events to the monolith's payments table."""
    from services.payment.sync.metrics import SyncMetrics
    from services.payment.sync.to_legacy import LegacyApplier, run_to_legacy

    chosen = source
    if chosen is Source.auto:
        chosen = Source.redis if redis_url else Source.outbox
    if chosen is Source.redis and not redis_url:
        fail("--source redis needs --redis-url (or STRANGLER_REDIS_URL)")
    name = consumer or f"{socket.gethostname()}-{os.getpid()}"

    async def main(legacy: Engine, service: Engine, metrics: SyncMetrics) -> Any:
        subscriber = await open_subscriber(
            chosen, service, redis_url, stream, group, name, block_ms, claim_idle_ms
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await run_to_legacy(
                subscriber,
                LegacyApplier(legacy, service, metrics=metrics, max_clock_skew=max_clock_skew),
                stop=stop,
                batch=batch_size,
                block_ms=block_ms,
                until_idle=once,
            )
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await subscriber.close()

    with errors_as_exit():
        legacy, service = engines(legacy_db, service_db, migrate, writer=True)
        metrics = SyncMetrics()
        if metrics_port is not None:
            metrics.serve(metrics_port)
        if not once and not json_output:
            typer.echo(
                f"applying payment events from the {chosen.value} to the monolith (Ctrl-C stops)"
            )
        result = asyncio.run(main(legacy, service, metrics))
    if json_output:
        emit_json(result.as_dict())
    else:
        typer.echo(render.to_legacy_summary(result))


@app.command()
def reconcile(
    legacy_db: LegacyDb = DEFAULT_LEGACY_DB,
    service_db: ServiceDb = DEFAULT_SERVICE_DB,
    max_drift: Annotated[int, typer.Option(min=0, help="Exit 3 when drift exceeds this.")] = 0,
    settle: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Leave out rows changed this recently (default: max(5 s, "
            "twice the follow lag)); mismatches are re-checked after it.",
        ),
    ] = None,
    recheck_after: Annotated[
        float | None, typer.Option(min=0, help="Seconds before the re-check (default: settle).")
    ] = None,
    chunk_rows: Annotated[
        int | None, typer.Option(min=1, help="Fixed rows per chunk (default: adaptive, ~0.5 s).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Lines of the drift table.")] = 50,
    json_output: JsonOutput = False,
    migrate: Migrate = False,
) -> None:
    """Compare payments by key across both databases; report missing, extra and differing rows."""
    from services.payment.sync.reconcile import reconcile as run

    with errors_as_exit():
        legacy, service = engines(legacy_db, service_db, migrate)
        try:
            report = run(
                legacy,
                service,
                settle=settle,
                recheck_after=recheck_after,
                max_drift=max_drift,
                chunk_rows=chunk_rows,
            )
        finally:
            legacy.dispose()
            service.dispose()
    if json_output:
        emit_json(report.as_dict())
    else:
        console = stdout()
        table = render.reconcile_table(report, limit)
        if table is not None:
            console.print(table)
        console.print(render.reconcile_summary(report))
    if not report.passed:
        raise typer.Exit(EXIT_DRIFT)


@app.command()
def status(
    service_db: ServiceDb = DEFAULT_SERVICE_DB,
    legacy_db: LegacyDb = DEFAULT_LEGACY_DB,
    reconcile_max_age: Annotated[
        float,
        typer.Option(
            min=0,
            help="The cutover gate counts only reconciles finished within this many seconds.",
        ),
    ] = 900.0,
    json_output: JsonOutput = False,
) -> None:
    """What each job last did: backfill checkpoint, follow high-water mark and lag, to-legacy
    position and processed events, last reconcile (read from the service database)."""
    from services.payment.sync.status import gather_status, status_lines

    with errors_as_exit():
        service = service_engine(service_db, migrate=False)
        legacy = legacy_if_reachable(legacy_db)
        try:
            data = gather_status(service, legacy, reconcile_max_age=reconcile_max_age)
        finally:
            service.dispose()
            if legacy is not None:
                legacy.dispose()
    if json_output:
        emit_json(data)
        return
    table = Table(title=f"sync status ({service.url.render_as_string()})")
    table.add_column("job")
    table.add_column("state")
    for job, line in status_lines(data):
        table.add_row(job, line)
    stdout().print(table)


def main() -> None:
    app(prog_name="python -m services.payment.sync")
