"""HTTP API of the payment service: the monolith's `/api/v1/payments` contract, a payment's live
channel (a WebSocket of its own), plus health."""

from fastapi import APIRouter

from services.payment.api import live, payments


def api_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1")
    router.include_router(payments.router)
    router.include_router(live.router)
    return router
