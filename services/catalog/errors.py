"""Problem details (RFC 9457) with the monolith's types, titles and shapes.

Clients key on `type`; an answer from the catalog must be the monolith's, byte for byte, so the
URIs, titles, member order and JSON spelling (Starlette's JSONResponse: no spaces, UTF-8) are
the monolith's.

    ApiError(status, kind, detail)   raised by handlers (a missing product: 404 not-found)
      -> problem+json via `install_error_handlers`
    HTTPException (404 route, 405)   -> problem+json with the matching type
    RequestValidationError           -> 422 validation-failed (every error listed)
    anything else                    -> 500 internal-error (logged; never bad input)
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_BASE = "https://problems.legacy-shop.example/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

log = logging.getLogger("services.catalog")

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
    """An error with its HTTP status and stable problem type."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        if kind not in TITLES:
            raise ValueError(f"unknown problem kind {kind!r}")
        self.status = status
        self.kind = kind
        self.detail = detail


def render_json(content: Any) -> bytes:
    """JSON bytes as Starlette's JSONResponse renders them."""
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
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + kind,
        "title": TITLES[kind],
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return Response(
        render_json(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
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
        return problem(exc.status, exc.kind, exc.detail, instance=request.url.path)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = _STATUS_KIND.get(exc.status_code, "bad-request")
        detail = exc.detail if isinstance(exc.detail, str) else TITLES[kind]
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"No resource at {request.url.path}"
        headers = dict(exc.headers or {})
        return problem(exc.status_code, kind, detail, request.url.path, headers)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = _validation_errors(exc)
        if any(e["code"] == "json_invalid" for e in errors):
            return problem(
                400, "malformed-json", "The body could not be parsed as JSON", request.url.path
            )
        detail = "; ".join(f"{e['location']}: {e['message']}" for e in errors)
        return problem(422, "validation-failed", detail, request.url.path, errors=errors)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal-error", "The request could not be completed")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(Exception, on_unexpected)
