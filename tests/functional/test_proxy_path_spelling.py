"""Exposure cannot be bypassed by spelling a path differently: /admin is served on the internal
listener only, and the upstream behind the proxy is as lenient as legacy backends are (it folds
case, cuts `;params`, strips trailing dots and blanks, reads '\\' as '/' and decodes twice, and
serves anything it reads as /admin as the secret). Every spelling of /admin sent to the external
listener, byte for byte over a raw socket, is refused (404 or 400) and never reaches the
upstream; on the internal listener the spellings the proxy reads as /admin reach it. A plain
route still serves a payment id holding an escaped slash, forwarded exactly as sent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from urllib.parse import unquote_to_bytes

import pytest
import uvicorn

from proxy.types import Receive, Scope, Send
from tests.functional.proxy_support import (
    ProxyProcess,
    Response,
    Table,
    build,
    exchange,
    problem,
    running,
)

SECRET = b"SECRET: the admin console"


def lenient_reading(raw_path: bytes) -> str:
    """The path as the most lenient backend reads it."""
    text = unquote_to_bytes(unquote_to_bytes(raw_path)).decode("latin-1")
    segments: list[str] = []
    for segment in text.replace("\\", "/").lower().split("/"):
        segment = segment.split(";", 1)[0]
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segment = segment.rstrip(". \t")
        if segment:
            segments.append(segment)
    return "/" + "/".join(segments)


class Lenient:
    """An ASGI upstream that serves /admin (as `lenient_reading` reads a path) as the secret
    and anything else as an echo of the raw path it was sent; it keeps every raw path."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        raw = scope["raw_path"]
        self.seen.append(raw)
        path = lenient_reading(raw)
        body = SECRET if path == "/admin" or path.startswith("/admin/") else b"echo " + raw
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def lenient() -> Iterator[tuple[Lenient, str]]:
    app = Lenient()
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="lenient", daemon=True)
    thread.start()
    try:
        started = threading.Event()
        for _ in range(1500):
            if server.started or not thread.is_alive():
                break
            started.wait(0.01)
        assert server.started, "the lenient upstream did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def proxy(
    lenient: tuple[Lenient, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    _, url = lenient
    table = Table(
        tmp_path_factory.mktemp("spelling") / "routes.yaml",
        {"legacy": url},
        [
            {"name": "admin", "match": {"path": "/admin"}, "to": "legacy", "expose": "internal"},
            {"name": "payments", "match": {"path": "/api/v1/payments"}, "to": "legacy"},
        ],
        default="legacy",
    )
    with running(["--routes", str(table.write())]) as proxy:
        yield proxy


@pytest.fixture
def upstream(lenient: tuple[Lenient, str]) -> Lenient:
    app, _ = lenient
    app.seen.clear()
    return app


def fetch(port: int, target: bytes) -> Response:
    return exchange(port, build("GET", target))


# Spellings the proxy reads as /admin (served on the internal listener only).
READ_AS_ADMIN = [
    pytest.param(b"/ADMIN/flip", id="upper-case"),
    pytest.param(b"/Admin", id="capitalised"),
    pytest.param(b"/%41dmin", id="escaped-capital"),
    pytest.param(b"/admin./", id="trailing-dot-and-slash"),
    pytest.param(b"/admin.", id="trailing-dot"),
    pytest.param(b"/admin%2e", id="escaped-trailing-dot"),
    pytest.param(b"/admin%20", id="trailing-space"),
    pytest.param(b"/admin;x=1", id="path-parameter"),
    pytest.param(b"/admin;x=1/flip", id="path-parameter-mid-path"),
    pytest.param(b"/./admin", id="dot-segment"),
    pytest.param(b"/x/../admin", id="dot-dot"),
    pytest.param(b"/x/..;/admin", id="dot-dot-semicolon"),
    pytest.param(b"//admin", id="double-slash"),
    pytest.param(b"/ADMIN;x=1/./flip.", id="mixed"),
]
# Spellings whose escapes read as another route (or that are refused whatever the routes):
# 400 on every listener.
AMBIGUOUS = [
    pytest.param(b"/admin%2Fflip", id="escaped-slash"),
    pytest.param(b"/admin%2fflip", id="escaped-slash-lower"),
    pytest.param(b"/admin%5Cflip", id="escaped-backslash"),
    pytest.param(b"/admin\\flip", id="backslash"),
    pytest.param(b"/x%2F..%2Fadmin", id="escaped-slash-traversal"),
    pytest.param(b"/admin%09", id="trailing-tab"),
    pytest.param(b"/admin%252Fflip", id="double-escaped-slash"),
    pytest.param(b"/%2561dmin", id="double-escaped-letter"),
    pytest.param(b"/api/v1/payments/ab%2F..%2F..%2F..%2F..%2Fadmin", id="out-of-payments"),
]


@pytest.mark.parametrize("target", [*READ_AS_ADMIN, *AMBIGUOUS])
def test_the_upstream_is_lenient_enough_to_serve_every_spelling(target: bytes) -> None:
    """The premise: every spelling is /admin to the upstream (so a bypass would show)."""
    assert lenient_reading(target) in ("/admin", "/admin/flip")


@pytest.mark.parametrize("target", [b"/admin", b"/admin/flip", *READ_AS_ADMIN, *AMBIGUOUS])
def test_no_spelling_reaches_admin_from_the_external_listener(
    proxy: ProxyProcess, upstream: Lenient, target: bytes
) -> None:
    answer = fetch(proxy.external, target)
    assert answer.status in (400, 404), (target, answer.status, answer.body)
    problem(answer, answer.status, "bad-target" if answer.status == 400 else "not-found")
    assert SECRET not in answer.body
    assert upstream.seen == []


@pytest.mark.parametrize("target", READ_AS_ADMIN)
def test_the_same_spellings_reach_admin_on_the_internal_listener(
    proxy: ProxyProcess, upstream: Lenient, target: bytes
) -> None:
    answer = fetch(proxy.internal, target)
    assert (answer.status, answer.body) == (200, SECRET), target
    assert upstream.seen == [target]  # forwarded exactly as sent


@pytest.mark.parametrize("target", AMBIGUOUS)
def test_an_ambiguous_spelling_is_400_on_the_internal_listener_too(
    proxy: ProxyProcess, upstream: Lenient, target: bytes
) -> None:
    problem(fetch(proxy.internal, target), 400, "bad-target")
    assert upstream.seen == []


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"/api/v1/payments/ab%2Fcd", id="escaped-slash"),
        pytest.param(b"/api/v1/payments/ab%2fcd/refunds", id="escaped-slash-lower-and-below"),
        pytest.param(b"/api/v1/payments/ab%5Ccd", id="escaped-backslash"),
        pytest.param(b"/api/v1/payments/ab%252Fcd", id="double-escaped-slash"),
    ],
)
def test_a_payment_id_with_an_escaped_slash_is_served_as_sent(
    proxy: ProxyProcess, upstream: Lenient, target: bytes
) -> None:
    answer = fetch(proxy.external, target)
    assert (answer.status, answer.body) == (200, b"echo " + target)
    assert upstream.seen == [target]


def test_a_plain_path_is_served_on_the_external_listener(
    proxy: ProxyProcess, upstream: Lenient
) -> None:
    answer = fetch(proxy.external, b"/catalog/items/3")
    assert (answer.status, answer.body) == (200, b"echo /catalog/items/3")
