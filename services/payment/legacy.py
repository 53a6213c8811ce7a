"""The monolith, reached over HTTP as a separate team would: who a bearer token belongs to and
what an order is. Never its database, never its code.

Rules: the caller's own `Authorization` is forwarded (the monolith decides what the caller may
see: a customer reads their own orders, staff every order); nothing else of the caller's request
is. One `httpx.Client` per app (thread-safe; the routes run in the threadpool), with timeouts,
no redirects, no environment proxies and no cookie jar (a shared jar would replay one user's
cookies onto another's requests). Failures become problems at this one boundary:

    connect error, timeout           -> 503 legacy-unavailable (Retry-After: 1)
    5xx, unexpected status, bad JSON -> 502 legacy-bad-response
    401 on a token it accepted before -> 401 unauthorized (the monolith's own answer)
"""

from __future__ import annotations

import logging
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from services.payment.errors import ApiError, unauthorized
from services.payment.schemas import LegacyOrder, LegacyUser

log = logging.getLogger("services.payment.legacy")
M = TypeVar("M", bound=BaseModel)
REFUSED_DETAIL = "The bearer token is invalid or expired"


def _no_cookies() -> CookieJar:
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


class LegacyClient:
    """Reads from the monolith's HTTP API with the caller's bearer token."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 1.0,
        timeout: float = 5.0,
        max_connections: int = 100,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            trust_env=False,
            cookies=_no_cookies(),
            transport=transport,
            headers={"User-Agent": "payment-service"},
        )

    def close(self) -> None:
        self._client.close()

    def _get(self, path: str, token: str) -> httpx.Response:
        # Latin-1 bytes: the token is forwarded exactly as the caller sent it.
        headers = [(b"Authorization", b"Bearer " + token.encode("latin-1", "replace"))]
        try:
            return self._client.get(path, headers=headers)
        except httpx.TimeoutException as exc:
            log.warning("monolith timed out on GET %s: %s", path, exc)
            raise ApiError(
                503,
                "legacy-unavailable",
                "The shop backend did not answer in time",
                headers={"Retry-After": "1"},
            ) from exc
        except httpx.HTTPError as exc:
            log.warning("monolith unreachable on GET %s: %s", path, exc)
            raise ApiError(
                503,
                "legacy-unavailable",
                "The shop backend could not be reached",
                headers={"Retry-After": "1"},
            ) from exc

    @staticmethod
    def _parse(answer: httpx.Response, model: type[M]) -> M:
        try:
            return model.model_validate_json(answer.content)
        except ValidationError as exc:
            raise _bad_response(answer) from exc

    def whoami(self, token: str) -> LegacyUser | None:
        """The user the token belongs to, or None when the monolith refuses the token."""
        answer = self._get("/api/v1/users/me", token)
        if answer.status_code == 401:
            return None
        if answer.status_code != 200:
            raise _bad_response(answer)
        return self._parse(answer, LegacyUser)

    def order(self, token: str, order_id: int) -> LegacyOrder | None:
        """The order as the caller may see it, or None when it is missing or someone else's."""
        answer = self._get(f"/api/v1/orders/{order_id}", token)
        if answer.status_code == 404:
            return None
        if answer.status_code == 401:
            raise unauthorized(REFUSED_DETAIL)
        if answer.status_code != 200:
            raise _bad_response(answer)
        return self._parse(answer, LegacyOrder)


def _bad_response(answer: httpx.Response) -> ApiError:
    log.warning(
        "monolith answered %s %s to GET %s",
        answer.status_code,
        answer.headers.get("content-type", "-"),
        answer.request.url.path,
    )
    return ApiError(
        502,
        "legacy-bad-response",
        f"The shop backend answered {answer.status_code} unexpectedly",
    )
