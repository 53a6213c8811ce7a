"""The monolith's application factory: `create_app(settings)` builds it all, nothing at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from legacy_monolith import __version__
from legacy_monolith.api import api_router
from legacy_monolith.cache import make_cache
from legacy_monolith.db import create_schema, make_engine, make_session_factory
from legacy_monolith.errors import install_error_handlers, problem
from legacy_monolith.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = make_engine(settings.database_url)
    cache = make_cache(
        settings.redis_url,
        prefix=settings.cache_prefix,
        ttl_seconds=settings.cache_ttl_seconds,
        retry_seconds=settings.cache_retry_seconds,
        enabled=settings.cache_enabled,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.create_schema:
            create_schema(engine)
        yield
        cache.close()
        engine.dispose()

    app = FastAPI(
        title="Legacy Shop API",
        version=__version__,
        description="The mobile-commerce backend behind the shop's iOS and Android apps.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.cache = cache
    install_error_handlers(app)
    app.include_router(api_router())
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", tags=["health"], response_model=None)
    def healthz(request: Request) -> Any:
        try:
            with request.app.state.engine.connect() as conn:
                conn.execute(text("SELECT 1 FROM users WHERE 1 = 0"))
        except SQLAlchemyError:
            return problem(503, "service-unavailable", "The database is unreachable")
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "database": engine.dialect.name,
                "cache": ("redis" if settings.redis_url else "memory")
                if settings.cache_enabled
                else "off",
                "cache_available": cache.available,
            }
        )

    return app
