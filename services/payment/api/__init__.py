"""HTTP API of the payment service: the monolith's `/api/v1/payments` contract, plus health."""

from fastapi import APIRouter

from services.payment.api import payments


def api_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1")
    router.include_router(payments.router)
    return router
