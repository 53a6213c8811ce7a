"""What the real proxy refuses, and how: request-head limits, body limits, slow clients, malformed
and dangerous requests, load shedding. Each refusal is a problem+json answer, never a 500 or a
hang, and a refused request never reaches the upstream (raw-socket clients)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

import pytest

from tests.functional.proxy_support import (
    Conn,
    ProxyProcess,
    Recorder,
    Response,
    Table,
    build,
    exchange,
    get,
    problem,
    recorder,
    reply,
    running,
    send,
    wait_until,
)

HEADER_TIMEOUT = 1.0
BODY_IDLE_TIMEOUT = 1.0
SMALL = 1024  # the `small` route's max_body


@pytest.fixture(scope="module")
def main() -> Iterator[Recorder]:
    with recorder() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def proxy(main: Recorder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    table = Table(
        tmp_path_factory.mktemp("limits") / "routes.yaml",
        {"main": main.url},
        [{"name": "small", "match": {"path": "/small"}, "to": "main", "max_body": "1KiB"}],
    )
    env = {
        "STRANGLER_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "STRANGLER_BODY_IDLE_TIMEOUT": str(BODY_IDLE_TIMEOUT),
    }
    with running(["--routes", str(table.write())], env) as proxy:
        yield proxy


@pytest.fixture
def upstream(main: Recorder) -> Recorder:
    main.reset()
    return main


def refused_and_closed(port: int, raw: bytes, status: int, kind: str) -> dict[str, object]:
    """Send `raw`; the answer is the problem for `status` and the proxy closes the connection."""
    with Conn(port) as conn:
        conn.sendall(raw)
        answer = conn.read_response()
        found = problem(answer, status, kind)
        assert answer.value("connection") == b"close", answer.head
        assert conn.closed_by_peer()
    return found


# --- the request head -----------------------------------------------------------------------------
def test_too_many_header_fields_is_431(proxy: ProxyProcess, upstream: Recorder) -> None:
    headers = [(f"X-Field-{i}", "v") for i in range(150)]
    refused_and_closed(proxy.external, build("GET", "/", headers), 431, "headers-too-large")
    assert upstream.seen == []


def test_too_large_header_fields_are_431(proxy: ProxyProcess, upstream: Recorder) -> None:
    raw = build("GET", "/", [("X-Big", "v" * 40_000)])
    refused_and_closed(proxy.external, raw, 431, "headers-too-large")
    assert upstream.seen == []


def test_a_too_long_request_target_is_414(proxy: ProxyProcess, upstream: Recorder) -> None:
    raw = build("GET", "/" + "a" * 9_000)
    refused_and_closed(proxy.external, raw, 414, "uri-too-long")
    assert upstream.seen == []


def test_a_head_just_under_the_limits_is_forwarded(proxy: ProxyProcess, upstream: Recorder) -> None:
    headers = [(f"X-Field-{i}", "v" * 100) for i in range(90)]
    answer = send(proxy.external, "GET", "/" + "a" * 8_000, headers)
    assert answer.status == 200
    assert len(upstream.only().values("x-field-89")) == 1


def test_a_slow_request_head_is_408_and_closed(proxy: ProxyProcess, upstream: Recorder) -> None:
    started = time.monotonic()
    found = refused_and_closed(
        proxy.external, b"GET / HTTP/1.1\r\nHost: proxy.test\r\nX-Slow: ", 408, "request-timeout"
    )
    assert HEADER_TIMEOUT * 0.8 <= time.monotonic() - started < HEADER_TIMEOUT + 2, found
    assert upstream.seen == []


def test_a_trickled_request_head_is_cut_on_the_head_clock(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """Slowloris: one byte every 200 ms; each byte must not reset the clock."""
    head = b"GET / HTTP/1.1\r\nHost: proxy.test\r\nX-Slow: " + b"a" * 100
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", proxy.external), timeout=0.2) as sock:
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            received += chunk
            if not chunk or b"\r\n\r\n" in received:
                break
    elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert elapsed < HEADER_TIMEOUT + 2
    assert upstream.seen == []


def test_a_silent_connection_is_closed_on_the_head_clock(proxy: ProxyProcess) -> None:
    started = time.monotonic()
    with Conn(proxy.external) as conn:
        data = conn.read_until_closed()
    assert time.monotonic() - started < HEADER_TIMEOUT + 2
    assert data.startswith(b"HTTP/1.1 408 "), data


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        pytest.param(
            b"GET http://evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "bad-target",
            id="absolute-form",
        ),
        pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "bad-target", id="asterisk-form"),
        pytest.param(b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", "bad-request", id="nul-in-target"),
        pytest.param(b"GET / HTTP/1.1\r\nHost a\r\n\r\n", "bad-request", id="header-without-colon"),
        pytest.param(
            b"GET / HTTP/1.1\r\nX Y: 1\r\nHost: a\r\n\r\n", "bad-request", id="space-in-name"
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            "bad-request",
            id="length-and-chunked",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "bad-request",
            id="conflicting-lengths",
        ),
    ],
)
def test_malformed_or_non_origin_requests_are_400_and_closed(
    proxy: ProxyProcess, upstream: Recorder, raw: bytes, kind: str
) -> None:
    refused_and_closed(proxy.external, raw, 400, kind)
    assert upstream.seen == []


# --- refused by the data plane --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "status", "kind"),
    [
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, "bad-host", id="missing-host"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad-host", id="two-hosts"
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "bad-host", id="bad-host"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: me@evil\r\n\r\n", 400, "bad-host", id="host-userinfo"
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost: evil/x\r\n\r\n", 400, "bad-host", id="host-path"),
        pytest.param(b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400, "bad-host", id="host-empty"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xe9\r\n\r\n",
            400,
            "bad-header",
            id="latin1-value",
        ),
        pytest.param(b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", 405, "method-not-allowed", id="trace"),
        pytest.param(
            b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n",
            405,
            "method-not-allowed",
            id="connect-origin-form",
        ),
        # An escaped slash is read both ways (decoded and kept); here the two readings take
        # different routes (/small and the default).
        pytest.param(
            b"GET /small%2Fb HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad-target", id="encoded-slash"
        ),
        pytest.param(
            b"GET /x%5C..%5Csmall HTTP/1.1\r\nHost: a\r\n\r\n",
            400,
            "bad-target",
            id="encoded-backslash",
        ),
        pytest.param(b"GET /a%00 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad-target", id="encoded-nul"),
        pytest.param(
            b"GET /%2e%2e/etc HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad-target", id="encoded-dots"
        ),
        pytest.param(
            b"GET /../etc HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad-target", id="above-root"
        ),
        pytest.param(
            b"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad-target", id="broken-escape"
        ),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: a\r\nVia: 1.0 lb, 1.1 strangler\r\n\r\n",
            508,
            "loop-detected",
            id="via-loop",
        ),
    ],
)
def test_requests_the_data_plane_refuses(
    proxy: ProxyProcess, upstream: Recorder, raw: bytes, status: int, kind: str
) -> None:
    answer = exchange(proxy.external, raw)
    problem(answer, status, kind)
    assert upstream.seen == []
    # A refusal that read the whole request leaves the connection usable; no other request
    # is disturbed either.
    assert get(proxy.external, "/after").status == 200


def test_connect_in_authority_form_is_405(proxy: ProxyProcess, upstream: Recorder) -> None:
    raw = b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"
    answer = exchange(proxy.external, raw)
    assert upstream.seen == []
    problem(answer, 405, "method-not-allowed")


def test_an_unknown_transfer_coding_is_refused(proxy: ProxyProcess, upstream: Recorder) -> None:
    raw = build("POST", "/upload", [("Transfer-Encoding", "gzip, chunked")])
    answer = exchange(proxy.external, raw + b"3\r\nabc\r\n0\r\n\r\n")
    assert upstream.seen == []
    assert answer.status in (400, 501)


# --- bodies ---------------------------------------------------------------------------------------
def test_a_content_length_over_max_body_is_413_before_the_upstream_is_contacted(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    connections_before = upstream.connections
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/small/upload", [("Content-Length", str(SMALL + 1))]))
        answer = conn.read_response()  # answered before a body byte was sent
        problem(answer, 413, "body-too-large")
        assert answer.value("connection") == b"close"
        assert conn.closed_by_peer()
    assert upstream.seen == []
    assert upstream.connections == connections_before


def test_a_body_at_max_body_is_forwarded(proxy: ProxyProcess, upstream: Recorder) -> None:
    body = b"x" * SMALL
    assert send(proxy.external, "POST", "/small/upload", body=body).status == 200
    assert upstream.only().body == body


def test_a_chunked_body_over_max_body_is_413(proxy: ProxyProcess, upstream: Recorder) -> None:
    chunk = b"x" * 512
    raw = build("POST", "/small/upload", [("Transfer-Encoding", "chunked")])
    raw += b"".join(b"200\r\n" + chunk + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
    with Conn(proxy.external) as conn:
        conn.sendall(raw)
        answer = conn.read_response()
        problem(answer, 413, "body-too-large")
        assert conn.closed_by_peer()
    # The upstream may have seen the head and the first bytes, never a whole request.
    wait_until(lambda: all(seen.body_size <= SMALL for seen in upstream.seen), what="upstream")
    assert not [seen for seen in upstream.seen if seen.complete and seen.body], upstream.seen


def test_a_stalled_request_body_is_408_and_closed(proxy: ProxyProcess, upstream: Recorder) -> None:
    started = time.monotonic()
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/upload", [("Content-Length", "100")]) + b"x" * 10)
        answer = conn.read_response()
        problem(answer, 408, "request-timeout")
        assert conn.closed_by_peer()
    assert BODY_IDLE_TIMEOUT * 0.8 <= time.monotonic() - started < BODY_IDLE_TIMEOUT + 3
    wait_until(lambda: all(not seen.complete for seen in upstream.seen), what="the upstream cut")


# --- request ids on refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GET /small%2Fb HTTP/1.1\r\n", id="bad-target"),
        pytest.param(b"GET / HTTP/1.1\r\nVia: 1.1 strangler\r\n", id="loop"),
        pytest.param(b"TRACE / HTTP/1.1\r\n", id="trace"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: b\r\n", id="two-hosts"),
    ],
)
def test_a_refusal_carries_the_clients_request_id(
    proxy: ProxyProcess, upstream: Recorder, raw: bytes
) -> None:
    answer = exchange(proxy.external, raw + b"Host: a\r\nX-Request-ID: client-id-7\r\n\r\n")
    assert answer.status >= 400
    assert problem(answer, answer.status).get("request_id") == "client-id-7"
    assert answer.value("x-request-id") == b"client-id-7"
    assert upstream.seen == []


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n", id="absolute-form"),
        pytest.param(b"GET /" + b"a" * 9_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", id="414"),
        pytest.param(build("GET", "/", [("X-Big", "v" * 40_000)]), id="431"),
    ],
)
def test_a_protocol_level_refusal_carries_a_request_id(proxy: ProxyProcess, raw: bytes) -> None:
    answer = exchange(proxy.external, raw)
    assert answer.status >= 400
    request_id = problem(answer, answer.status).get("request_id")
    assert request_id
    assert answer.value("x-request-id") == str(request_id).encode()


# --- load shedding --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def limited(main: Recorder) -> Iterator[ProxyProcess]:
    with running(["--default-upstream", main.url], {"STRANGLER_MAX_IN_FLIGHT": "1"}) as proxy:
        yield proxy


def shed_one(limited: ProxyProcess, main: Recorder) -> Response:
    """One request held upstream for 1.5 s while a second one arrives; the second's answer."""
    main.reset(reply(delay=1.5))
    with Conn(limited.external) as first:
        first.sendall(build("GET", "/slow-1"))
        wait_until(lambda: len(main.seen) == 1, what="the first request upstream")
        shed = send(limited.external, "GET", "/second", [("X-Request-ID", "client-id-9")])
        assert first.read_response().status == 200
    main.reset()
    return shed


def test_over_the_concurrency_limit_is_503_with_retry_after(
    limited: ProxyProcess, main: Recorder
) -> None:
    shed = shed_one(limited, main)
    problem(shed, 503, "overloaded")
    assert shed.value("retry-after") == b"1"
    assert get(limited.external, "/third").status == 200
    assert [seen.target for seen in main.seen] == [b"/third"]


def test_a_shed_request_carries_its_request_id(limited: ProxyProcess, main: Recorder) -> None:
    shed = shed_one(limited, main)
    assert problem(shed, 503, "overloaded").get("request_id") == "client-id-9"


def test_one_client_over_its_own_limit_is_503(main: Recorder) -> None:
    env = {"STRANGLER_MAX_IN_FLIGHT_PER_CLIENT": "1"}
    with running(["--default-upstream", main.url], env) as proxy:
        main.reset(reply(delay=1.5))
        try:
            with Conn(proxy.external) as first:
                first.sendall(build("GET", "/slow-1"))
                wait_until(lambda: len(main.seen) == 1, what="the first request upstream")
                shed = send(proxy.external, "GET", "/second")
                assert first.read_response().status == 200
        finally:
            main.reset()
        assert problem(shed, 503, "overloaded")["detail"] == (
            "too many concurrent requests from this client"
        )
        assert get(proxy.external, "/third").status == 200


def test_too_many_pipelined_requests_close_the_connection_in_order(main: Recorder) -> None:
    """Requests queued beyond the limit are not read: the accepted ones are answered, in order,
    then the connection closes (clients retry the rest on a new one)."""
    with running(["--default-upstream", main.url], {"STRANGLER_MAX_PIPELINED": "2"}) as proxy:
        main.reset(reply(delay=0.2))
        try:
            with Conn(proxy.external, timeout=10) as conn:
                conn.sendall(b"".join(build("GET", f"/p{i}") for i in range(8)))
                received = conn.read_until_closed()
            seen = [s.target for s in main.seen]
        finally:
            main.reset()
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", received)]
    assert statuses, "the accepted requests are answered"
    assert set(statuses) == {200}  # no refusal overtakes them
    assert len(statuses) < 8
    assert seen == [f"/p{i}".encode() for i in range(len(statuses))]


def test_an_idle_keep_alive_connection_is_closed(main: Recorder) -> None:
    env = {"STRANGLER_KEEPALIVE_TIMEOUT": "1"}
    with (
        running(["--default-upstream", main.url], env) as proxy,
        Conn(proxy.external, timeout=5) as conn,
    ):
        conn.sendall(build("GET", "/once"))
        assert conn.read_response().status == 200
        started = time.monotonic()
        assert conn.closed_by_peer()
        assert 0.5 < time.monotonic() - started < 4
