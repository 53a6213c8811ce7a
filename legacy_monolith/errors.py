"""Problem details (RFC 9457) for every error the monolith answers.

Each error has a stable `type` URI that clients key on; `title` is fixed per type and `detail`
explains this occurrence. Bad input is a 4xx, never a 500.

    ApiError(status, kind, detail)       raised by handlers
      -> problem+json via `install_error_handlers`
    HTTPException (404 route, 405)       -> problem+json with the matching type
    RequestValidationError               -> 400 malformed-json or 422 validation-failed
    anything else                        -> 500 internal-error (logged; never bad input)
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_BASE = "https://problems.legacy-shop.example/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

log = logging.getLogger("legacy_monolith")

TITLES: dict[str, str] = {
    "bad-request": "Bad request",
    "malformed-json": "Request body is not valid JSON",
    "validation-failed": "Request parameters are invalid",
    "unauthorized": "Authentication required",
    "invalid-credentials": "Email or password is wrong",
    "forbidden": "Not allowed",
    "not-found": "Resource not found",
    "method-not-allowed": "Method not allowed",
    "not-acceptable": "Not acceptable",
    "conflict": "Conflict",
    "email-taken": "Email already registered",
    "cart-empty": "Cart is empty",
    "out-of-stock": "Not enough stock",
    "order-not-cancellable": "Order cannot be cancelled",
    "order-already-paid": "Order is already paid",
    "order-refunded": "Order is refunded",
    "order-cancelled": "Order is cancelled",
    "amount-mismatch": "Amount does not match the order total",
    "payment-declined": "Payment declined",
    "payment-not-capturable": "Payment cannot be captured",
    "payment-not-refundable": "Payment cannot be refunded",
    "refund-exceeds-balance": "Refund exceeds the captured amount",
    "unsupported-media-type": "Unsupported media type",
    "service-unavailable": "Service unavailable",
    "internal-error": "Internal server error",
}

_STATUS_KIND = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    415: "unsupported-media-type",
    422: "validation-failed",
}


class ApiError(Exception):
    """An error with its HTTP status and stable problem type; extra fields become members."""

    def __init__(self, status: int, kind: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        if kind not in TITLES:
            raise ValueError(f"unknown problem kind {kind!r}")
        self.status = status
        self.kind = kind
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = {}


def problem(
    status: int,
    kind: str,
    detail: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + kind,
        "title": TITLES[kind],
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for err in exc.errors():
        errors.append(
            {
                "location": ".".join(str(part) for part in err.get("loc", ())),
                "message": str(err.get("msg", "")),
                "code": str(err.get("type", "")),
            }
        )
    return errors


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return problem(
            exc.status,
            exc.kind,
            exc.detail,
            instance=request.url.path,
            headers=exc.headers or None,
            **exc.extra,
        )

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = _STATUS_KIND.get(exc.status_code, "bad-request")
        detail = exc.detail if isinstance(exc.detail, str) else TITLES[kind]
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No resource at {request.url.path}"
        return problem(
            exc.status_code,
            kind,
            detail,
            instance=request.url.path,
            headers=dict(exc.headers or {}),
        )

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = _validation_errors(exc)
        if any(e["code"] == "json_invalid" for e in errors):
            return problem(
                400,
                "malformed-json",
                "The body could not be parsed as JSON",
                instance=request.url.path,
            )
        return problem(
            422,
            "validation-failed",
            "; ".join(f"{e['location']}: {e['message']}" for e in errors),
            instance=request.url.path,
            errors=errors,
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal-error", "The request could not be completed")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
