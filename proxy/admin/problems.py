"""How the admin API refuses, and who may write: every failure is an application/problem+json
(RFC 9457) answer with a stable `type`, never a bare 500 page, and writes need the admin token.

    AdminError(status, kind, detail)  a refusal of the API itself (a missing token or If-Match,
                                      a report only a running proxy serves)
    StoreError and its tree           the control plane's and the stores' refusals
                                      (proxy/store/base.py): their status, kind, message and
                                      `problem_fields()`; a 503 says when to retry
    TableInvalid                      a stored version this proxy cannot load: 500
    HTTP and validation errors        FastAPI's own, as problems too

Writes carry `Authorization: Bearer <token>` (compared in constant time, as Django's
constant_time_compare does); without a configured token the API is read only. Reads of
users' data (shadow example pairs, consumers) need the token too when one is set.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy.errors import PROBLEM_TYPE
from proxy.store.base import InvalidTable, StoreError
from proxy.table.loader import TableInvalid

RETRY_AFTER = "5"  # seconds a client is asked to wait after a 503 before it tries again


class AdminError(Exception):
    def __init__(self, status: int, kind: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.extra = status, kind, detail, extra


def problem(status: int, kind: str, detail: str, **extra: Any) -> JSONResponse:
    body = {
        "type": PROBLEM_TYPE + kind,
        "title": kind.replace("-", " "),
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def install_handlers(app: FastAPI) -> None:
    """Answer every refusal of `app` as a problem."""

    @app.exception_handler(AdminError)
    async def on_admin_error(_: Request, exc: AdminError) -> JSONResponse:
        return problem(exc.status, exc.kind, exc.detail, **exc.extra)

    @app.exception_handler(StoreError)
    async def on_store_error(_: Request, exc: StoreError) -> JSONResponse:
        response = problem(exc.status, exc.kind, str(exc), **exc.problem_fields())
        if exc.status == 503:
            response.headers["Retry-After"] = RETRY_AFTER
        return response

    @app.exception_handler(TableInvalid)
    async def on_stored_table_invalid(_: Request, exc: TableInvalid) -> JSONResponse:
        # A stored version this proxy cannot load (written by a newer control plane?); a
        # table sent by the client is refused by the control plane: InvalidTable, a 422.
        return problem(
            500,
            "stored-table-invalid",
            "a stored version does not load here",
            problems=InvalidTable.of(exc).problems,
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(
            exc.status_code,
            "not-found" if exc.status_code == 404 else "bad-request",
            str(exc.detail),
        )

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(
            422,
            "validation-failed",
            "the request is invalid",
            errors=[
                {"location": ".".join(map(str, e["loc"])), "message": e["msg"]}
                for e in exc.errors()
            ],
        )


def _check_token(token: str, authorization: str | None) -> None:
    """The bearer token given must be the admin token (constant-time compare)."""
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise AdminError(401, "unauthorized", "a valid bearer token is required")


def writer(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    author: Annotated[str | None, Header(alias="X-Author")] = None,
) -> str:
    """The author of a write, once its bearer token checked out."""
    token: str | None = request.app.state.token
    if token is None:
        raise AdminError(403, "writes-disabled", "no admin token is configured: read only")
    _check_token(token, authorization)
    return author or "admin-api"


Writer = Annotated[str, Depends(writer)]


def user_data_reader(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> None:
    """Reads that show users' data (shadow example pairs) need the token when one is set; a
    proxy without one keeps its admin listener on loopback."""
    token: str | None = request.app.state.token
    if token is not None:
        _check_token(token, authorization)


UserDataReader = Annotated[None, Depends(user_data_reader)]
