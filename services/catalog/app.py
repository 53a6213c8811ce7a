"""The catalog service's application factory: `create_app(settings)` builds it all, nothing at
import. Start-up creates the read model's missing tables (unless `migrate_on_start` is off).
With Redis configured it also starts, beside the API, this replica's cache invalidation consumer
(`invalidation.py`) and the engine's outbox relay (`datasync.relay`: catalog_outbox → the
stream; one replica publishes at a time, the others stand by on its lease); both stop with the
app. Without Redis neither runs, and each cache hit is checked against the read model's version
(`cache.py`).

`GET /cutover` is the route table's gate for the catalog: the read model is fed by two syncs
(`sync/products.yaml`, `sync/categories.yaml`, loaded once here), so it is 200 only when both
declarations' cutover gates pass (`datasync.status.cutover_check`), else 503 with every unmet
condition, each reason prefixed by its sync's name."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from datasync.errors import SyncError
from datasync.spec import Spec
from datasync.status import cutover_check
from services.catalog import __version__
from services.catalog.api import Catalog, router
from services.catalog.cache import AnswerCache
from services.catalog.db import make_engine, migrate, writing
from services.catalog.errors import install_error_handlers, problem
from services.catalog.settings import Settings
from services.catalog.sync import load_declarations
from services.catalog.tables import category_view

if TYPE_CHECKING:
    from datasync.relay import Relay

# A relay pass in flight may finish (a publish is bounded by the relay's Redis timeout, 2 s,
# plus a connect), so it releases its lease and its connections before the engine is disposed;
# a read blocked on the stream is cancelled (what it read unacked is delivered again).
STOP_SECONDS = 5.0


Job = tuple[str, Coroutine[Any, Any, None]]
INVALIDATION = "invalidation"


def _background(
    catalog: Catalog, settings: Settings, products: Spec, stop: asyncio.Event
) -> list[Job]:
    """The coroutines that run beside the API when Redis is configured, by name."""
    if not settings.redis_url:
        return []
    from datasync.relay import Relay, RelaySettings
    from services.catalog.invalidation import Invalidator, subscriber

    # The products declaration names catalog_outbox and the stream (categories shares both).
    spec = with_stream(products, settings.events_stream)
    if spec.events is None or spec.events.stream is None:
        raise ValueError(f"{products.name} declares no event stream")
    source = subscriber(settings.redis_url, spec.events.stream, settings.instance)
    jobs: list[Job] = [(INVALIDATION, Invalidator(source, catalog.cache).run(stop))]
    if settings.relay_enabled:
        options = RelaySettings(
            interval=settings.relay_interval_seconds,
            batch_size=settings.relay_batch_size,
            maxlen=settings.events_maxlen,
        )
        relay = Relay(spec, writing(catalog.engine), settings.redis_url, settings=options)
        jobs.append(("relay", _relaying(relay, stop)))
    return jobs


def with_stream(spec: Spec, stream: str | None) -> Spec:
    """The declaration with its events on `stream` instead (None: as declared)."""
    if stream is None or spec.events is None:
        return spec
    return replace(spec, events=replace(spec.events, stream=stream))


async def _relaying(relay: Relay, stop: asyncio.Event) -> None:
    await relay.serve(stop)


async def _stopped(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the stream reader at once; let the others finish (up to STOP_SECONDS)."""
    for task in tasks:
        if task.get_name() == INVALIDATION:
            task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=STOP_SECONDS)
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def gates(declarations: tuple[Spec, ...], engine: Engine) -> dict[str, Any]:
    """Every declaration's cutover gate, and theirs together: ready only when all are; the
    reasons and checks of all, each named by its sync (raises what the gate raises)."""
    syncs: dict[str, Any] = {}
    for spec in declarations:
        syncs[spec.name] = cutover_check(spec, engine).body()
    lags = [sync["lag_seconds"] for sync in syncs.values() if sync["lag_seconds"] is not None]
    drifts = [sync["drift"] for sync in syncs.values() if sync["drift"] is not None]
    return {
        "ready": all(sync["ready"] for sync in syncs.values()),
        "reasons": [f"{name}: {r}" for name, sync in syncs.items() for r in sync["reasons"]],
        "checks": [
            {"sync": name, **check} for name, sync in syncs.items() for check in sync["checks"]
        ],
        "lag_seconds": max(lags, default=None),  # the worst sync's
        "drift": sum(drifts) if drifts else None,
        "syncs": syncs,
    }


def cache_mode(cache: AnswerCache) -> str:
    if not cache.enabled:
        return "off"
    return "events" if cache.listening else "versioned"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    declarations = load_declarations()
    products = next(spec for spec in declarations if spec.legacy_table == "products")
    engine = make_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    cache = AnswerCache(settings.cache_ttl, settings.cache_max_entries)
    catalog = Catalog(engine, cache)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await asyncio.to_thread(migrate, engine)
        stop = asyncio.Event()
        jobs = _background(catalog, settings, products, stop)
        tasks = [asyncio.create_task(job, name=name) for name, job in jobs]
        try:
            yield
        finally:
            stop.set()
            await _stopped(tasks)
            engine.dispose()

    app = FastAPI(
        title="Catalog Service",
        version=__version__,
        description="Catalog reads, extracted from the Legacy Shop API: the same contract.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.catalog = catalog
    install_error_handlers(app)
    app.include_router(router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up (no dependency checked)."""
        return {"status": "ok", "version": __version__}

    @app.get("/cutover", tags=["health"], response_model=None)
    def cutover(request: Request) -> Any:
        """Whether the data allows moving catalog reads here: 200 when, for products and for
        categories alike, the backfill is done, follow is alive within its lag budget and two
        fresh reconciles found drift 0; else 503 with the reasons. The route table's `gate:`
        for this service points here."""
        try:
            body = gates(declarations, engine)
        except (SQLAlchemyError, SyncError):  # unreachable, or not migrated
            return problem(
                503, "service-unavailable", "The database is unreachable", request.url.path
            )
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/readyz", tags=["health"], response_model=None)
    def readyz(request: Request) -> Any:
        """The read model answers; the answer cache's state: `cache` "on" while its events are
        connected (a hit costs no query), else "off"; `cache_mode` "events", "versioned" (each
        hit checks the read model's version: one primary-key SELECT) or "off" (TTL 0)."""
        try:
            with engine.begin() as conn:
                conn.execute(select(category_view.c.id).limit(1))
        except SQLAlchemyError:
            return problem(
                503, "service-unavailable", "The database is unreachable", request.url.path
            )
        return JSONResponse(
            {
                "status": "ready",
                "version": __version__,
                "database": engine.dialect.name,
                "cache": "on" if cache.listening else "off",
                "cache_mode": cache_mode(cache),
            }
        )

    return app
