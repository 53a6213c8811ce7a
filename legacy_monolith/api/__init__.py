"""HTTP API of the monolith, as the mobile apps call it (`/api/v1`)."""

from fastapi import APIRouter

from legacy_monolith.api.routes import auth, cart, catalog, orders, payments, users


def api_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1")
    for module in (auth, users, catalog, cart, orders, payments):
        router.include_router(module.router)
    return router
