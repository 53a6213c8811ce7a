"""What the real proxy changes in headers on the way through, and what it leaves alone: hop-by-hop
fields both ways, X-Forwarded-* (replaced, or extended for a trusted hop), Via, X-Request-ID,
traceparent, underscore names, the client's Host, header order, duplicates and Set-Cookie lines
(raw recorder upstreams, raw-socket clients)."""

from __future__ import annotations

import re

import pytest

from tests.functional.proxy_support import (
    ProxyProcess,
    Recorder,
    get,
    reply,
    running,
    send,
)

HEX32 = re.compile(rb"^[0-9a-f]{32}$")
TRACEPARENT = re.compile(rb"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# What the proxy itself adds to every request; anything else upstream came from the client.
PROXY_ADDED = {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"via",
    b"x-request-id",
    b"traceparent",
}


# --- request headers ------------------------------------------------------------------------------
def test_the_upstream_client_adds_nothing_but_the_proxys_own_fields(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    answer = send(proxy.external, "GET", "/bare")
    assert answer.status == 200
    seen = upstream.only()
    assert set(seen.names()) == {b"host", *PROXY_ADDED}, seen.head
    for name in PROXY_ADDED:
        assert len(seen.values(name.decode())) == 1, name


def test_hop_by_hop_and_connection_named_request_fields_are_removed(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    headers = [
        ("Connection", "keep-alive, X-Secret, x-other"),
        ("Keep-Alive", "timeout=5"),
        ("X-Secret", "token"),
        ("X-Other", "o"),
        ("X-Kept", "1"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "h2c"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
        ("Authorization", "Bearer end-to-end"),
    ]
    assert send(proxy.external, "GET", "/hop", headers).status == 200
    seen = upstream.only()
    for name in (
        "connection",
        "keep-alive",
        "x-secret",
        "x-other",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
    ):
        assert seen.values(name) == [], (name, seen.head)
    assert seen.value("x-kept") == b"1"
    assert seen.value("authorization") == b"Bearer end-to-end"


def test_hop_by_hop_and_connection_named_response_fields_are_removed(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = reply(
        b"HTTP/1.1 200 OK\r\n"
        b"Connection: keep-alive, X-Internal-Token\r\n"
        b"Keep-Alive: timeout=5, max=100\r\n"
        b"X-Internal-Token: secret\r\n"
        b"Proxy-Authenticate: Basic realm=up\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: h2c\r\n"
        b"X-Kept: yes\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    answer = get(proxy.external, "/hop")
    assert answer.status == 200
    assert answer.body == b"ok"
    for name in ("keep-alive", "x-internal-token", "proxy-authenticate", "trailer", "upgrade"):
        assert answer.values(name) == [], (name, answer.head)
    assert answer.values("connection") in ([], [b"keep-alive"]), answer.head
    assert answer.value("x-kept") == b"yes"


def test_client_forwarding_headers_are_replaced_when_the_peer_is_not_trusted(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    headers = [
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Real-IP", "6.6.6.6"),
        ("Forwarded", "for=6.6.6.6;proto=https"),
    ]
    send(proxy.external, "GET", "/xff", headers, host="shop.example:8443")
    seen = upstream.only()
    assert seen.values("x-forwarded-for") == [b"127.0.0.1"]
    assert seen.values("x-forwarded-proto") == [b"http"]
    assert seen.values("x-forwarded-host") == [b"shop.example:8443"]
    assert seen.values("x-real-ip") == []
    assert seen.values("forwarded") == []


def test_via_is_added_after_the_clients_own(proxy: ProxyProcess, upstream: Recorder) -> None:
    send(proxy.external, "GET", "/via")
    assert upstream.only().values("via") == [b"1.1 strangler"]
    upstream.reset()
    send(proxy.external, "GET", "/via", [("Via", "1.0 corporate-cache")])
    assert b", ".join(upstream.only().values("via")) == b"1.0 corporate-cache, 1.1 strangler"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        pytest.param("req-123_abc.7", True, id="token-kept"),
        pytest.param("0f3c2a9e-5b7d-4f4e-9a51-0e8f7d6c5b4a", True, id="uuid-kept"),
        pytest.param("trace:42/abc+def=", True, id="punctuation-kept"),
        pytest.param("has spaces", False, id="space-replaced"),
        pytest.param("x" * 129, False, id="too-long-replaced"),
        pytest.param("<script>", False, id="markup-replaced"),
    ],
)
def test_request_id_is_kept_when_valid_and_generated_otherwise(
    proxy: ProxyProcess, upstream: Recorder, sent: str, kept: bool
) -> None:
    send(proxy.external, "GET", "/rid", [("X-Request-ID", sent)])
    (value,) = upstream.only().values("x-request-id")
    if kept:
        assert value == sent.encode()
    else:
        assert value != sent.encode()
        assert HEX32.match(value), value


def test_request_id_is_generated_when_absent(proxy: ProxyProcess, upstream: Recorder) -> None:
    send(proxy.external, "GET", "/rid")
    send(proxy.external, "GET", "/rid")
    first, second = (seen.value("x-request-id") for seen in upstream.seen)
    assert first is not None
    assert HEX32.match(first)
    assert first != second


def test_traceparent_is_continued_with_a_new_span(proxy: ProxyProcess, upstream: Recorder) -> None:
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    send(proxy.external, "GET", "/trace", [("traceparent", incoming)])
    value = upstream.only().value("traceparent")
    assert value is not None
    found = TRACEPARENT.match(value)
    assert found is not None, value
    assert found.group(1) == b"4bf92f3577b34da6a3ce929d0e0e4736"
    assert found.group(2) != b"00f067aa0ba902b7"
    assert found.group(3) == b"01"


@pytest.mark.parametrize(
    "incoming",
    [
        pytest.param(None, id="absent"),
        pytest.param("garbage", id="malformed"),
        pytest.param("00-00000000000000000000000000000000-00f067aa0ba902b7-01", id="zero-trace"),
    ],
)
def test_traceparent_starts_a_new_trace_otherwise(
    proxy: ProxyProcess, upstream: Recorder, incoming: str | None
) -> None:
    send(proxy.external, "GET", "/trace", [("traceparent", incoming)] if incoming else [])
    (value,) = upstream.only().values("traceparent")
    found = TRACEPARENT.match(value)
    assert found is not None, value
    assert found.group(1) != b"0" * 32


def test_header_names_with_underscores_are_dropped(proxy: ProxyProcess, upstream: Recorder) -> None:
    send(proxy.external, "GET", "/us", [("X_User", "admin"), ("X-User", "alice")])
    seen = upstream.only()
    assert seen.values("x-user") == [b"alice"]
    assert not [name for name in seen.names() if b"_" in name], seen.head


def test_the_clients_host_is_forwarded_as_sent(proxy: ProxyProcess, upstream: Recorder) -> None:
    send(proxy.external, "GET", "/host", host="Shop.Example.COM:8443")
    seen = upstream.only()
    assert seen.values("host") == [b"Shop.Example.COM:8443"]


def test_header_order_duplicates_and_bytes_of_the_request_are_kept(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    sent = [
        ("X-Dup", "1"),
        ("Cookie", 'c=3;d="q w";  e=5'),
        ("X-Dup", "2"),
        ("Accept", "application/json;q=0.9, */*;q=0.1"),
        ("X-Dup", "3"),
    ]
    send(proxy.external, "GET", "/order", sent)
    seen = upstream.only()
    client_fields = [(n.lower(), v) for n, v in seen.headers if n.lower() not in PROXY_ADDED]
    assert client_fields == [(b"host", b"proxy.test")] + [
        (n.lower().encode(), v.encode()) for n, v in sent
    ]


# --- response headers and bodies ------------------------------------------------------------------
def test_response_header_order_duplicates_and_set_cookie_lines_are_kept(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = reply(
        b"HTTP/1.1 200 OK\r\n"
        b"X-First: 1\r\n"
        b"Set-Cookie: a=1; Path=/; HttpOnly\r\n"
        b"X-Middle: m\r\n"
        b"set-cookie: b=2, c=3\r\n"
        b'SET-COOKIE: d="q w"; Expires=Wed, 21 Oct 2026 07:28:00 GMT\r\n'
        b"X-Dup: 1\r\n"
        b"x-dup: 2\r\n"
        b"Server: monolith/1.0\r\n"
        b"Date: Tue, 01 Dec 2026 10:00:00 GMT\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    answer = get(proxy.external, "/cookies")
    assert [(n.lower(), v) for n, v in answer.headers] == [
        (b"x-first", b"1"),
        (b"set-cookie", b"a=1; Path=/; HttpOnly"),
        (b"x-middle", b"m"),
        (b"set-cookie", b"b=2, c=3"),
        (b"set-cookie", b'd="q w"; Expires=Wed, 21 Oct 2026 07:28:00 GMT'),
        (b"x-dup", b"1"),
        (b"x-dup", b"2"),
        (b"server", b"monolith/1.0"),
        (b"date", b"Tue, 01 Dec 2026 10:00:00 GMT"),
        (b"content-length", b"2"),
    ]
    # No cookie jar: the next request (any client's) carries no Cookie the proxy remembered.
    upstream.reset()
    send(proxy.external, "GET", "/after-cookies")
    assert upstream.only().values("cookie") == []


def test_a_non_utf8_response_header_passes_byte_exact(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = reply(b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok")
    assert get(proxy.external, "/latin1").values("x-name") == [b"caf\xe9"]


# --- trusted hops ---------------------------------------------------------------------------------
def test_a_trusted_hops_forwarding_headers_are_kept_and_extended(
    upstreams: tuple[Recorder, Recorder],
) -> None:
    main, _ = upstreams
    main.reset()
    env = {"STRANGLER_TRUSTED_HOPS": '["127.0.0.0/8"]'}
    with running(["--default-upstream", main.url], env) as trusting:
        headers = [
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "shop.example"),
            ("X-Real-IP", "203.0.113.7"),
        ]
        assert send(trusting.external, "GET", "/trusted", headers).status == 200
    seen = main.only()
    assert b", ".join(seen.values("x-forwarded-for")) == b"203.0.113.7, 10.0.0.1, 127.0.0.1"
    assert seen.values("x-forwarded-proto") == [b"https"]
    assert seen.values("x-forwarded-host") == [b"shop.example"]
    assert seen.values("x-real-ip") == [b"203.0.113.7"]
