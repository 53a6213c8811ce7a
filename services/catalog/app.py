"""The catalog service's application factory: `create_app(settings)` builds it all, nothing at
import. Start-up creates the read model's missing tables (unless `migrate_on_start` is off).
With Redis configured it also starts, beside the API, this replica's cache invalidation consumer
(`invalidation.py`) and the engine's outbox relay (`datasync.relay`: catalog_outbox → the
stream; one replica publishes at a time, the others stand by on its lease); both stop with the
app. Without Redis neither runs, and the cache stays off."""

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
from sqlalchemy.exc import SQLAlchemyError

from datasync.spec import Spec
from services.catalog import __version__
from services.catalog.api import Catalog, router
from services.catalog.cache import AnswerCache
from services.catalog.db import make_engine, migrate, writing
from services.catalog.errors import install_error_handlers, problem
from services.catalog.settings import Settings
from services.catalog.tables import category_view

if TYPE_CHECKING:
    from datasync.relay import Relay

# A relay pass in flight may finish; a read blocked on the stream is cancelled (what it read
# unacked is delivered again).
STOP_SECONDS = 2.0


Job = tuple[str, Coroutine[Any, Any, None]]
INVALIDATION = "invalidation"


def _background(catalog: Catalog, settings: Settings, stop: asyncio.Event) -> list[Job]:
    """The coroutines that run beside the API when Redis is configured, by name."""
    if not settings.redis_url:
        return []
    from datasync.declaration import load
    from datasync.relay import Relay, RelaySettings
    from services.catalog.invalidation import Invalidator, subscriber
    from services.catalog.sync import PRODUCTS_SYNC

    # The products declaration names catalog_outbox and the stream (categories shares both).
    spec = with_stream(load(PRODUCTS_SYNC), settings.events_stream)
    if spec.events is None or spec.events.stream is None:
        raise ValueError(f"{PRODUCTS_SYNC} declares no event stream")
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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = make_engine(settings.database_url)
    cache = AnswerCache(settings.cache_ttl, settings.cache_max_entries)
    catalog = Catalog(engine, cache)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await asyncio.to_thread(migrate, engine)
        stop = asyncio.Event()
        jobs = _background(catalog, settings, stop)
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

    @app.get("/readyz", tags=["health"], response_model=None)
    def readyz(request: Request) -> Any:
        """The read model answers; whether the answer cache is on (its events connected)."""
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
                "cache": "on" if cache.active else "off",
            }
        )

    return app
