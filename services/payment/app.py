"""The payment service's application factory: `create_app(settings)` builds it all, nothing at
import. Start-up runs the migrations (unless `migrate_on_start` is off), refuses to start when a
monolith id has reached the service's id range (`ids.py`), and starts the outbox relay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from services.payment import __version__
from services.payment.api import api_router
from services.payment.api.deps import Services
from services.payment.auth import AuthCache, Authenticator
from services.payment.db import make_engine, make_session_factory, read_only, upgrade
from services.payment.errors import install_error_handlers, problem
from services.payment.events import InProcessBus, Publisher, RedisPublisher, redis_client
from services.payment.idempotency import IdempotencyStore
from services.payment.ids import IdAllocator, check_no_legacy_ids_in_range
from services.payment.legacy import LegacyClient
from services.payment.models import OutboxEvent
from services.payment.relay import OutboxRelay
from services.payment.settings import Settings

log = logging.getLogger("services.payment")


def make_publisher(settings: Settings) -> Publisher:
    """Redis Streams when a Redis URL is set, else the in-process bus."""
    if settings.redis_url:
        return RedisPublisher(
            redis_client(settings.redis_url), settings.events_stream, settings.events_maxlen
        )
    return InProcessBus()


def make_relay(engine: Engine, publisher: Publisher, settings: Settings) -> OutboxRelay:
    """The outbox relay as the settings configure it (in the app, or `relay` on its own)."""
    return OutboxRelay(
        engine,
        publisher,
        batch_size=settings.relay_batch_size,
        interval=settings.relay_interval_seconds,
    )


def create_app(
    settings: Settings | None = None, *, legacy_transport: httpx.BaseTransport | None = None
) -> FastAPI:
    """Build the app. `legacy_transport` replaces the HTTP transport to the monolith (tests that
    need failures a real monolith cannot produce on demand)."""
    settings = settings or Settings()
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    legacy = LegacyClient(
        settings.legacy_url,
        connect_timeout=settings.legacy_connect_timeout_seconds,
        timeout=settings.legacy_timeout_seconds,
        max_connections=settings.legacy_max_connections,
        transport=legacy_transport,
    )
    publisher = make_publisher(settings)
    relay = make_relay(engine, publisher, settings)
    services = Services(
        settings=settings,
        engine=engine,
        sessions=sessions,
        readers=make_session_factory(read_only(engine)),
        ids=IdAllocator(engine, settings.id_block_size),
        legacy=legacy,
        auth=Authenticator(
            legacy, AuthCache(settings.auth_cache_seconds, settings.auth_cache_size)
        ),
        idempotency=IdempotencyStore(
            sessions,
            ttl=settings.idempotency_ttl_seconds,
            wait=settings.idempotency_wait_seconds,
            lock_seconds=settings.idempotency_lock_seconds,
        ),
        events_committed=relay.notify,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await asyncio.to_thread(upgrade, engine)
        await asyncio.to_thread(check_no_legacy_ids_in_range, engine)
        stop = asyncio.Event()
        task = asyncio.create_task(relay.run(stop)) if settings.relay_enabled else None
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=5)
            await publisher.close()
            legacy.close()
            engine.dispose()

    app = FastAPI(
        title="Payment Service",
        version=__version__,
        description="Payments, extracted from the Legacy Shop API: the same contract.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.services = services
    app.state.relay = relay
    app.state.publisher = publisher
    install_error_handlers(app)
    app.include_router(api_router())

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up (no dependency checked)."""
        return {"status": "ok", "version": __version__}

    @app.get("/cutover", tags=["health"], response_model=None)
    def cutover(request: Request) -> Any:
        """Whether the data allows moving payment traffic here: 200 when the backfill is done,
        follow is alive within its lag budget and two fresh reconciles found drift 0; else 503
        with the reasons. The route table's `gate:` for this service points here."""
        from services.payment.sync import SyncError, cutover_check

        try:
            check = cutover_check(read_only(engine))
        except (SQLAlchemyError, SyncError):  # unreachable, or not migrated
            return problem(
                503, "service-unavailable", "The database is unreachable", request.url.path
            )
        return JSONResponse(check.body(), status_code=200 if check.ready else 503)

    @app.get("/readyz", tags=["health"], response_model=None)
    def readyz(request: Request) -> Any:
        """The database answers; also how many events wait for the relay."""
        try:
            with read_only(engine).connect() as conn:
                conn.execute(text("SELECT 1 FROM payments WHERE 1 = 0"))
                pending = conn.scalar(
                    select(func.count()).where(OutboxEvent.published_at.is_(None))
                )
        except SQLAlchemyError:
            return problem(
                503, "service-unavailable", "The database is unreachable", request.url.path
            )
        return JSONResponse(
            {
                "status": "ready",
                "version": __version__,
                "database": engine.dialect.name,
                "events": "redis" if settings.redis_url else "memory",
                "outbox_pending": pending or 0,
            }
        )

    return app
