"""Problem details (RFC 9457), the same types, titles and shapes as the monolith's answers.

Clients key on `type`; the service keeps the monolith's URIs so that an answer from either is
the same to them, and adds kinds only for what the monolith never says (idempotency keys, the
monolith being unreachable).

    ApiError(status, kind, detail, **extra)  raised by handlers and by `legacy.py`
      -> problem+json via `install_error_handlers` (or `problem_response`, for stored answers)
    HTTPException (404 route, 405)           -> problem+json with the matching type
    RequestValidationError                   -> 400 malformed-json or 422 validation-failed
    anything else                            -> 500 internal-error (logged; never bad input)
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_BASE = "https://problems.legacy-shop.example/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

log = logging.getLogger("services.payment")

TITLES: dict[str, str] = {
    "bad-request": "Bad request",
    "malformed-json": "Request body is not valid JSON",
    "validation-failed": "Request parameters are invalid",
    "unauthorized": "Authentication required",
    "forbidden": "Not allowed",
    "not-found": "Resource not found",
    "method-not-allowed": "Method not allowed",
    "not-acceptable": "Not acceptable",
    "conflict": "Conflict",
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
    # The service's own kinds.
    "idempotency-key-invalid": "Idempotency key is invalid",
    "idempotency-key-reused": "Idempotency key was used for another request",
    "idempotency-key-in-progress": "A request with this idempotency key is in progress",
    "legacy-unavailable": "The shop backend is unavailable",
    "legacy-bad-response": "The shop backend answered unexpectedly",
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

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        if kind not in TITLES:
            raise ValueError(f"unknown problem kind {kind!r}")
        self.status = status
        self.kind = kind
        self.detail = detail
        self.extra = extra
        self.headers: dict[str, str] = dict(headers or {})


def unauthorized(detail: str) -> ApiError:
    """The monolith's 401, challenge included."""
    return ApiError(
        401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="legacy-shop"'}
    )


def problem_body(
    status: int, kind: str, detail: str, instance: str | None = None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + kind,
        "title": TITLES[kind],
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return body


def render_json(content: Any) -> bytes:
    """JSON bytes as Starlette's JSONResponse renders them (so stored answers replay the same)."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def problem(
    status: int,
    kind: str,
    detail: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = problem_body(status, kind, detail, instance, **extra)
    return Response(
        render_json(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def error_response(exc: ApiError, instance: str) -> Response:
    return problem(
        exc.status, exc.kind, exc.detail, instance, headers=exc.headers or None, **exc.extra
    )


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {
            "location": ".".join(str(part) for part in err.get("loc", ())),
            "message": str(err.get("msg", "")),
            "code": str(err.get("type", "")),
        }
        for err in exc.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc, request.url.path)

    async def on_http_error(request: Request, exc: Exception) -> Response:
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

    async def on_validation_error(request: Request, exc: Exception) -> Response:
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
        return JSONResponse(
            problem_body(500, "internal-error", "The request could not be completed"),
            status_code=500,
            media_type=PROBLEM_MEDIA_TYPE,
        )

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
