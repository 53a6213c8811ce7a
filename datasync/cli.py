"""`strangler sync …` (also `python -m datasync …`): move one declared table's data.

    backfill    copy the legacy table into the service's database (resumable)
    follow      keep copying the legacy's changes until cutover (poll by high-water mark)
    to-legacy   after cutover, apply the service's change events to the legacy table
    relay       publish the service's outbox table to its Redis Stream (in order, at least once)
    reconcile   compare both databases by key; exit 3 when drift exceeds --max-drift
    compensate  after cutover, run the declared compensations (sagas through the service's API)
    check       validate declarations (every problem with its line) and say what they move
    status      what each job last did: positions, lag, health, processed events, last reconcile
    migrate     create or upgrade the service's schema (its hook) and the sync's own tables

Every command takes `--sync FILE` (the declaration; repeatable for `status` and `reconcile`;
environment STRANGLER_SYNC; default: the payment declaration shipped with the project, found
relative to this package, not the working directory), `--legacy-db URL --service-db URL`
(environment: STRANGLER_LEGACY_DB or LEGACY_DATABASE_URL, STRANGLER_SERVICE_DB; defaults: the
monolith's default and the declaration's `service.database`, else
`sqlite:///./var/<sync name, singular>.db`) and `--json`. Failures exit 1
with one line saying why, never a traceback; reconcile exits 3 when the drift is over the
threshold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy.engine import Engine

from datasync import render
from datasync.cli_support import (
    Source,
    declaration_path,
    default_service_db,
    emit_json,
    engines,
    errors_as_exit,
    fail,
    legacy_if_reachable,
    load_spec,
    log_lines,
    migrate_service,
    open_subscriber,
    service_engine,
    stdout,
    stop_on_signals,
)
from datasync.errors import SyncError
from datasync.spec import Spec

# The monolith's default (legacy_monolith/settings.py, which the engine never imports).
DEFAULT_LEGACY_DB = "sqlite:///./var/legacy.db"
# The declaration the project ships, next to the service it moves data for.
DEFAULT_SYNC = (
    Path(__file__).resolve().parent.parent / "services" / "payment" / "sync" / ("payments.yaml")
)
EXIT_DRIFT = 3

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Move a declared table's data: backfill, follow, to-legacy, reconcile, status.",
)


@app.callback()
def _setup() -> None:
    """Move a declared table's data: backfill, follow, to-legacy, reconcile, status."""
    log_lines()


SyncFile = Annotated[
    Path,
    typer.Option(
        "--sync", envvar="STRANGLER_SYNC", help="The sync's declaration (YAML).", dir_okay=False
    ),
]
SyncFiles = Annotated[
    list[Path] | None,
    typer.Option(
        "--sync",
        envvar="STRANGLER_SYNC",
        help="A sync's declaration (YAML); repeat for several.",
        dir_okay=False,
    ),
]
LegacyDb = Annotated[
    str,
    typer.Option(
        "--legacy-db",
        envvar=["STRANGLER_LEGACY_DB", "LEGACY_DATABASE_URL"],
        help="The monolith's database (read; written only by to-legacy).",
    ),
]
ServiceDb = Annotated[
    str | None,
    typer.Option(
        "--service-db",
        envvar="STRANGLER_SERVICE_DB",
        help="The service's database (where the sync keeps its state; default: "
        "sqlite:///./var/<sync>.db).",
    ),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
Migrate = Annotated[
    bool, typer.Option("--migrate", help="Create or upgrade the service's schema first.")
]


def specs_of(paths: list[Path] | None) -> list[Spec]:
    return [load_spec(path) for path in (paths or [DEFAULT_SYNC])]


@app.command()
def migrate(
    sync: SyncFile = DEFAULT_SYNC,
    service_db: ServiceDb = None,
    json_output: JsonOutput = False,
) -> None:
    """Create or upgrade the service's schema (its migrations, when its declaration's hooks
    module has `migrate`) and the sync's own state tables."""
    from datasync.engines import make_service_engine

    with errors_as_exit():
        spec = load_spec(sync)
        engine = make_service_engine(service_db or default_service_db(spec))
        revision = migrate_service(spec, engine)
        engine.dispose()
    if json_output:
        emit_json({"revision": revision})
    else:
        typer.echo(f"service schema at revision {revision}; the sync's tables are in place")


@app.command()
def backfill(
    sync: SyncFile = DEFAULT_SYNC,
    legacy_db: LegacyDb = DEFAULT_LEGACY_DB,
    service_db: ServiceDb = None,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per batch.")] = 1_000,
    restart: Annotated[
        bool, typer.Option("--restart", help="Copy everything again, ignoring the checkpoint.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    json_output: JsonOutput = False,
    migrate: Migrate = False,
) -> None:
    """Copy the legacy table into the service, resuming after the last checkpoint."""
    from datasync.backfill import backfill as run
    from datasync.progress import BarProgress, NoProgress, Progress

    with errors_as_exit():
        spec = load_spec(sync)
        legacy, service = engines(spec, legacy_db, service_db, migrate)
        bar: Progress = NoProgress() if quiet or json_output else BarProgress("backfill")
        result = run(spec, legacy, service, batch_size=batch_size, restart=restart, progress=bar)
    if json_output:
        emit_json(result.as_dict())
    else:
        typer.echo(render.backfill_summary(spec, result))


@app.command()
def follow(
    sync: SyncFile = DEFAULT_SYNC,
    legacy_db: LegacyDb = DEFAULT_LEGACY_DB,
    service_db: ServiceDb = None,
    once: Annotated[bool, typer.Option("--once", help="One poll, then exit.")] = False,
    interval: Annotated[
        float | None, typer.Option(min=0.01, help="Seconds between polls (declared default).")
    ] = None,
    lookback: Annotated[
        float | None, typer.Option(min=0, help="Seconds re-read behind the high-water mark.")
    ] = None,
    safety_delay: Annotated[
        float | None,
        typer.Option(min=0, help="Read nothing newer than the legacy clock minus this."),
    ] = None,
    page_size: Annotated[
        int | None, typer.Option(min=1, max=100_000, help="Rows per page.")
    ] = None,
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
    """Copy the legacy's changes as they happen (until cutover); --once for one poll."""
    from datasync.incremental import FollowResult, follow_once
    from datasync.incremental import follow as run
    from datasync.metrics import SyncMetrics

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
            typer.echo(render.follow_summary(spec, result))

    with errors_as_exit(), contextlib.ExitStack() as stack:
        spec = load_spec(sync)
        legacy, service = engines(spec, legacy_db, service_db, migrate)
        stack.callback(service.dispose)
        stack.callback(legacy.dispose)
        metrics = SyncMetrics()
        if metrics_port is not None:
            port = metrics.serve(metrics_port, metrics_host)
            if not quiet and not json_output:
                typer.echo(f"metrics on http://{metrics_host}:{port}/metrics")
        if once:
            show(follow_once(spec, legacy, service, metrics=metrics, **options))
            return
        stop = threading.Event()
        every = spec.follow.interval if interval is None else interval
        if not quiet and not json_output:
            typer.echo(f"following {legacy.url.render_as_string()} every {every}s (Ctrl-C stops)")
        with stop_on_signals(stop.set):
            run(
                spec,
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
    sync: SyncFile = DEFAULT_SYNC,
    legacy_db: LegacyDb = DEFAULT_LEGACY_DB,
    service_db: ServiceDb = None,
    redis_url: Annotated[
        str | None,
        typer.Option(envvar="STRANGLER_REDIS_URL", help="The event stream's Redis."),
    ] = None,
    stream: Annotated[
        str | None,
        typer.Option(envvar="STRANGLER_STREAM", help="The events stream (declared default)."),
    ] = None,
    group: Annotated[str | None, typer.Option(help="Consumer group (declared default).")] = None,
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
    """After cutover: apply the service's change events to the legacy table."""
    from datasync.metrics import SyncMetrics
    from datasync.to_legacy import LegacyApplier, run_to_legacy

    chosen = source
    if chosen is Source.auto:
        chosen = Source.redis if redis_url else Source.outbox
    if chosen is Source.redis and not redis_url:
        fail("--source redis needs --redis-url (or STRANGLER_REDIS_URL)")
    name = consumer or f"{socket.gethostname()}-{os.getpid()}"

    async def main(spec: Spec, legacy: Engine, service: Engine, metrics: SyncMetrics) -> Any:
        events = spec.events
        subscriber = open_subscriber(
            spec,
            chosen,
            service,
            redis_url,
            stream or (events.stream if events and events.stream else f"{spec.name}:events"),
            group or (events.group if events else "to-legacy"),
            name,
            block_ms,
            claim_idle_ms,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            applier = LegacyApplier(
                spec, legacy, service, metrics=metrics, max_clock_skew=max_clock_skew
            )
            return await run_to_legacy(
                subscriber,
                applier,
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
        spec = load_spec(sync)
        legacy, service = engines(spec, legacy_db, service_db, migrate, writer=True)
        metrics = SyncMetrics()
        if metrics_port is not None:
            metrics.serve(metrics_port)
        if not once and not json_output:
            typer.echo(
                f"applying {spec.name} events from the {chosen.value} to the legacy table "
                "(Ctrl-C stops)"
            )
        result = asyncio.run(main(spec, legacy, service, metrics))
    if json_output:
        emit_json(result.as_dict())
    else:
        typer.echo(render.to_legacy_summary(result))


@app.command()
def relay(
    sync: SyncFile = DEFAULT_SYNC,
    service_db: ServiceDb = None,
    redis_url: Annotated[
        str | None,
        typer.Option(envvar="STRANGLER_REDIS_URL", help="The Redis the events stream is on."),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Publish what is pending, purge, then exit.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.01, help="Seconds between polls of the outbox while idle.")
    ] = 0.25,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000, help="Rows per publish.")] = 500,
    maxlen: Annotated[
        int, typer.Option(min=1, help="Cap the stream at about this many entries (MAXLEN ~).")
    ] = 100_000,
    retention: Annotated[
        float, typer.Option(min=0, help="Seconds published rows stay in the outbox.")
    ] = 86_400.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    json_output: JsonOutput = False,
    migrate: Migrate = False,
) -> None:
    """Publish the declared outbox table's committed rows to the declared Redis Stream in
    outbox order, marking them published (one relay per outbox table works; others wait)."""
    from datasync.relay import Relay, RelayResult, RelaySettings, Target, run_relay

    def show(result: RelayResult) -> None:
        if json_output:
            emit_json(result.as_dict())
        elif not quiet:
            typer.echo(result.summary())

    with errors_as_exit():
        spec = load_spec(sync)
        target = Target.of(spec)
        if not redis_url:
            raise SyncError("relay needs --redis-url (or STRANGLER_REDIS_URL)")
        settings = RelaySettings(
            interval=interval, batch_size=batch_size, maxlen=maxlen, retention=retention
        )
        service = service_engine(spec, service_db, migrate)
        try:
            if once:
                result = Relay(spec, service, redis_url, settings=settings).drain()
            else:
                if not quiet and not json_output:
                    typer.echo(
                        f"relaying {target.outbox} to the stream {target.stream} every "
                        f"{interval}s (Ctrl-C stops)"
                    )
                stop = threading.Event()
                with stop_on_signals(stop.set):
                    result = run_relay(spec, service, redis_url, stop=stop, settings=settings)
        finally:
            service.dispose()
    show(result)


@app.command()
def compensate(
    sync: SyncFile = DEFAULT_SYNC,
    legacy_db: LegacyDb = DEFAULT_LEGACY_DB,
    service_db: ServiceDb = None,
    service_url: Annotated[
        str,
        typer.Option(
            envvar="STRANGLER_SERVICE_URL",
            help="The service's base URL: compensations call its own API.",
        ),
    ] = "http://127.0.0.1:8002",
    service_token: Annotated[
        str | None,
        typer.Option(
            envvar="STRANGLER_SERVICE_TOKEN",
            help="A bearer token the service accepts for the declared calls (a staff token).",
        ),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="One pass (with a sweep), then exit.")] = (
        False
    ),
    interval: Annotated[float, typer.Option(min=0.01, help="Seconds between passes.")] = 1.0,
    sweep: Annotated[
        float, typer.Option(min=1, help="Seconds between full sweeps of the watched table.")
    ] = 300.0,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="First put failed sagas back to pending (fresh attempts and idempotency key).",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    json_output: JsonOutput = False,
    migrate: Migrate = False,
) -> None:
    """After cutover: run the declared compensations (e.g. void a payment whose order the
    legacy cancelled), each a saga recorded in the service's database."""
    from datasync.compensate import (
        CompensationResult,
        Options,
        compensate_once,
        run_compensation,
        service_client,
    )
    from datasync.compensate import retry_failed as retry_sagas

    if not service_token:
        fail(
            "compensate needs --service-token (or STRANGLER_SERVICE_TOKEN): the declared "
            "calls go through the service's own API"
        )

    def show(result: CompensationResult) -> None:
        if json_output:
            emit_json(result.as_dict())
        elif not quiet and (once or result.created or result.calls):
            typer.echo(render.compensation_summary(result))

    with errors_as_exit():
        spec = load_spec(sync)
        if not spec.compensations:
            fail(f"sync {spec.name} declares no compensation ({spec.source})")
        legacy, service = engines(spec, legacy_db, service_db, migrate)
        options = Options(sweep=sweep)
        if retry_failed:
            again = retry_sagas(spec, service)
            if not quiet and not json_output:
                typer.echo(f"compensate: {again} failed saga(s) pending again")
        with service_client(service_url, service_token) as client:
            if once:
                show(
                    compensate_once(
                        spec, legacy, service, client, options=options, force_sweep=True
                    )
                )
                return
            stop = threading.Event()
            if not quiet and not json_output:
                typer.echo(
                    f"compensating {spec.name} through {service_url} every {interval}s "
                    "(Ctrl-C stops)"
                )
            with stop_on_signals(stop.set):
                run_compensation(
                    spec,
                    legacy,
                    service,
                    client,
                    stop=stop,
                    interval=interval,
                    on_pass=show,
                    options=options,
                )


@app.command()
def check(sync: SyncFiles = None, json_output: JsonOutput = False) -> None:
    """Validate declarations without touching a database: every problem with its line, or
    what each sync will move."""
    from datasync.declaration import DeclarationError, load

    summaries: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in sync or [DEFAULT_SYNC]:
        try:
            summaries.append(render.declaration_summary(load(declaration_path(path))))
        except DeclarationError as exc:
            problems += exc.detail.splitlines()
        except SyncError as exc:
            problems.append(f"{path}: {exc.detail}")
    if problems:
        for line in problems:
            typer.echo(f"error: {line}", err=True)
        if json_output:
            emit_json({"valid": False, "problems": problems})
        raise typer.Exit(1)
    if json_output:
        emit_json({"valid": True, "syncs": summaries})
        return
    for summary in summaries:
        typer.echo(render.declaration_text(summary))


@app.command()
def reconcile(
    sync: SyncFiles = None,
    legacy_db: LegacyDb = DEFAULT_LEGACY_DB,
    service_db: ServiceDb = None,
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
    """Compare the declared table by key across both databases; report missing, extra and
    differing rows (one report per --sync)."""
    from datasync.reconcile import Report
    from datasync.reconcile import reconcile as run

    reports: list[tuple[Spec, Report]] = []
    with errors_as_exit():
        for spec in specs_of(sync):
            legacy, service = engines(spec, legacy_db, service_db, migrate)
            try:
                report = run(
                    spec,
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
            reports.append((spec, report))
    if json_output:
        if len(reports) == 1:
            emit_json(reports[0][1].as_dict())
        else:
            emit_json({spec.name: report.as_dict() for spec, report in reports})
    else:
        console = stdout()
        for spec, report in reports:
            table = render.reconcile_table(spec, report, limit)
            if table is not None:
                console.print(table)
            console.print(render.reconcile_summary(spec, report))
    if not all(report.passed for _spec, report in reports):
        raise typer.Exit(EXIT_DRIFT)


@app.command()
def status(
    sync: SyncFiles = None,
    service_db: ServiceDb = None,
    legacy_db: LegacyDb = DEFAULT_LEGACY_DB,
    reconcile_max_age: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="The cutover gate counts only reconciles finished within this many seconds "
            "(declared default).",
        ),
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """What each job last did: backfill checkpoint, follow high-water mark, lag and health,
    to-legacy position and processed events, last reconcile (read from the service database;
    one section per --sync)."""
    from datasync.status import gather_status, status_lines

    found: list[tuple[str, dict[str, Any]]] = []
    with errors_as_exit():
        for spec in specs_of(sync):
            service = service_engine(spec, service_db, migrate=False)
            legacy = legacy_if_reachable(legacy_db)
            try:
                data = gather_status(spec, service, legacy, reconcile_max_age=reconcile_max_age)
            finally:
                service.dispose()
                if legacy is not None:
                    legacy.dispose()
            found.append((service.url.render_as_string(), data))
    if json_output:
        if len(found) == 1:
            emit_json(found[0][1])
        else:
            emit_json({data["sync"]: data for _url, data in found})
        return
    for url, data in found:
        table = Table(title=f"sync {data['sync']} status ({url})")
        table.add_column("job")
        table.add_column("state")
        for job, line in status_lines(data):
            table.add_row(job, line)
        stdout().print(table)


def main() -> None:
    app(prog_name="python -m datasync")
