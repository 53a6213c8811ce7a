"""The client to the monolith only reads, forwards the caller's token as sent, keeps no cookies,
follows no redirects, and turns every failure into a problem at one boundary. Failures a real
monolith cannot produce on demand come from a transport at the seam."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from services.payment.errors import ApiError
from services.payment.legacy import LegacyClient

ORDER = {
    "id": 5,
    "user_id": 2,
    "status": "pending_payment",
    "total": "10.00",
    "currency": "EUR",
    "payment": None,
    "lines": [],
}


def client(handler: Callable[[httpx.Request], httpx.Response]) -> LegacyClient:
    return LegacyClient("http://monolith.test", transport=httpx.MockTransport(handler))


def test_the_token_is_forwarded_as_sent_and_cookies_are_never_replayed() -> None:
    seen: list[httpx.Request] = []

    def monolith(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200, json={"id": 2, "role": "customer"}, headers={"Set-Cookie": "sid=alice; Path=/"}
        )

    legacy = client(monolith)
    assert legacy.whoami("tok én").id == 2  # type: ignore[union-attr]
    legacy.whoami("bob-token")
    assert seen[0].headers.raw[-1] == (b"Authorization", "Bearer tok én".encode("latin-1"))
    assert "cookie" not in seen[1].headers
    assert seen[1].headers["authorization"] == "Bearer bob-token"
    legacy.close()


@pytest.mark.parametrize(
    ("answer", "status", "kind"),
    [
        (httpx.Response(302, headers={"Location": "/login"}), 502, "legacy-bad-response"),
        (httpx.Response(500, text="boom"), 502, "legacy-bad-response"),
        (httpx.Response(200, text="<html>"), 502, "legacy-bad-response"),
        (httpx.Response(200, json={"id": "x"}), 502, "legacy-bad-response"),
    ],
    ids=["redirect-not-followed", "server-error", "not-json", "wrong-shape"],
)
def test_unexpected_answers_are_502(answer: httpx.Response, status: int, kind: str) -> None:
    legacy = client(lambda request: answer)
    with pytest.raises(ApiError) as caught:
        legacy.order("t", 5)
    assert (caught.value.status, caught.value.kind) == (status, kind)


def test_a_timeout_is_a_503_with_retry_after() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    with pytest.raises(ApiError) as caught:
        client(slow).order("t", 5)
    assert (caught.value.status, caught.value.kind) == (503, "legacy-unavailable")
    assert caught.value.headers == {"Retry-After": "1"}


def test_missing_orders_and_refused_tokens() -> None:
    def monolith(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/9"):
            return httpx.Response(404, json={"type": "x"})
        if request.headers["authorization"] == "Bearer expired":
            return httpx.Response(401, json={"type": "x"})
        return httpx.Response(200, json=ORDER)

    legacy = client(monolith)
    assert legacy.order("t", 9) is None
    assert legacy.order("t", 5).total == 10  # type: ignore[union-attr]
    with pytest.raises(ApiError) as caught:
        legacy.order("expired", 5)
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"] == 'Bearer realm="legacy-shop"'
    assert legacy.whoami("expired") is None
