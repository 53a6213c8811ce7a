"""How the real proxy answers when the upstream fails: refused, silent, malformed, cut mid-body.
Before the response starts the client gets a problem+json 502/504 with its request id; after it
started, the client connection is closed so a truncated body can never look complete. Never a
500, never a hang."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.functional.proxy_support import (
    Conn,
    Handler,
    ProxyProcess,
    Recorder,
    Table,
    build,
    get,
    never,
    problem,
    recorder,
    reply,
    running,
    send,
    trickle,
    wait_until,
)

ROUTE_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def main() -> Iterator[Recorder]:
    with recorder() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def dead_port() -> Iterator[int]:
    """A port bound but not listening: connecting is refused, and no one else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def proxy(
    main: Recorder, dead_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    table = Table(
        tmp_path_factory.mktemp("errors") / "routes.yaml",
        {"main": main.url, "dead": f"http://127.0.0.1:{dead_port}"},
        [
            {"name": "dead", "match": {"path": "/dead"}, "to": "dead"},
            {"name": "slow", "match": {"path": "/slow"}, "to": "main", "timeout": "1s"},
        ],
    )
    # A request stuck by a bug must not hold the teardown for the default 30 s.
    with running(["--routes", str(table.write())], {"STRANGLER_GRACEFUL_TIMEOUT": "3"}) as proxy:
        yield proxy


@pytest.fixture
def upstream(main: Recorder) -> Recorder:
    main.reset()
    return main


def request_id_of(found: dict[str, object], answer_id: bytes | None) -> None:
    assert found.get("request_id") == "err-req-1", found
    assert answer_id == b"err-req-1"


def test_a_refused_upstream_is_502(proxy: ProxyProcess) -> None:
    answer = send(proxy.external, "GET", "/dead/x", [("X-Request-ID", "err-req-1")])
    found = problem(answer, 502, "upstream-unreachable")
    request_id_of(found, answer.value("x-request-id"))


def test_a_silent_upstream_is_504_after_the_route_timeout(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = never()
    started = time.monotonic()
    answer = send(proxy.external, "GET", "/slow/x", [("X-Request-ID", "err-req-1")])
    elapsed = time.monotonic() - started
    found = problem(answer, 504, "upstream-timeout")
    request_id_of(found, answer.value("x-request-id"))
    assert ROUTE_TIMEOUT * 0.9 <= elapsed < ROUTE_TIMEOUT + 2
    assert len(upstream.seen) == 1


def test_a_slow_answer_within_the_route_timeout_is_served(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = reply(delay=ROUTE_TIMEOUT / 2)
    assert get(proxy.external, "/slow/x").body == b"ok"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"garbage\r\n\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n", id="bad-status"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nNo-Colon-Here\r\nContent-Length: 0\r\n\r\n", id="bad-line"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            id="length-and-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
            id="two-lengths",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(300)) + b"\r\n",
            id="too-many-headers",
        ),
    ],
)
def test_a_malformed_upstream_answer_is_502(
    proxy: ProxyProcess, upstream: Recorder, raw: bytes
) -> None:
    upstream.handler = reply(raw, close=True)
    answer = send(proxy.external, "POST", "/malformed", [("X-Request-ID", "err-req-1")], b"{}")
    found = problem(answer, 502, "bad-upstream-response")
    request_id_of(found, answer.value("x-request-id"))


def test_an_upstream_closing_without_an_answer_is_502(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = reply(b"", close=True)
    answer = send(proxy.external, "POST", "/hangup", [("X-Request-ID", "err-req-1")], b"{}")
    found = problem(answer, 502, "upstream-disconnected")
    request_id_of(found, answer.value("x-request-id"))
    assert len(upstream.seen) == 1


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("GET"),
        pytest.param("DELETE"),
        pytest.param("PUT"),
        pytest.param("PATCH"),
    ],
)
def test_a_request_is_sent_upstream_once_even_when_it_fails(
    proxy: ProxyProcess, upstream: Recorder, method: str
) -> None:
    upstream.handler = reply(b"", close=True)
    body = b"{}" if method in ("PUT", "PATCH") else b""
    answer = send(proxy.external, method, "/hangup", body=body)
    problem(answer, 502, "upstream-disconnected")
    assert len(upstream.seen) == 1, [seen.request_line for seen in upstream.seen]


# Above the proxy's 64 KiB buffer: streamed, so the head is on its way before the cut.
HEAD_CL = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
HEAD_SMALL_CL = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
HEAD_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param((HEAD_CL, b"x" * 100), id="content-length"),
        pytest.param((HEAD_CHUNKED, b"64\r\n" + b"x" * 100 + b"\r\n"), id="chunked"),
        pytest.param(
            (HEAD_CHUNKED, b"5\r\nhello\r\n", b"ZZ\r\nxx\r\n"),
            id="bad-chunk-size",
        ),
        pytest.param((HEAD_CL, b"x" * 100, b""), id="reset-after-gap"),
    ],
)
def test_a_body_cut_mid_way_closes_the_client_connection(
    proxy: ProxyProcess, upstream: Recorder, parts: tuple[bytes, ...]
) -> None:
    upstream.handler = trickle(*parts)
    with Conn(proxy.external, timeout=3) as conn:
        conn.sendall(build("GET", "/cut"))
        try:
            answer = conn.read_response()
        except TimeoutError:
            pytest.fail("the proxy neither finished nor closed the response within 3 s")
        assert answer.status == 200  # the head had already been sent on
        assert not answer.complete, answer  # never a clean, short answer
        assert conn.closed_by_peer()


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param((HEAD_SMALL_CL, b"x" * 100), id="cut"),
        pytest.param((HEAD_SMALL_CL, b"x" * 100, b""), id="reset-after-gap"),
    ],
)
def test_a_small_answer_cut_short_is_a_clean_502(
    proxy: ProxyProcess, upstream: Recorder, parts: tuple[bytes, ...]
) -> None:
    """Small answers are read whole before the client sees a byte, so a cut one is refused
    cleanly rather than started and aborted."""
    upstream.handler = trickle(*parts)
    with Conn(proxy.external, timeout=5) as conn:
        conn.sendall(build("GET", "/cut"))
        answer = conn.read_response()
    problem(answer, 502, "upstream-body-incomplete")


def _stall(length: int) -> Handler:
    async def stall(seen, reader, writer):  # type: ignore[no-untyped-def]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length + b"x" * 100)
        await writer.drain()
        await reader.read()  # until the proxy gives up on us
        return False

    return stall


def test_a_body_stalled_mid_way_closes_the_client_connection(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = _stall(1_000_000)  # streamed: the head is sent on at once
    started = time.monotonic()
    with Conn(proxy.external) as conn:
        conn.sendall(build("GET", "/slow/stall"))
        answer = conn.read_response()
        assert answer.status == 200
        assert not answer.complete
        assert answer.body == b"x" * 100
    assert time.monotonic() - started < ROUTE_TIMEOUT + 3


def test_a_small_answer_that_stalls_is_a_clean_504(proxy: ProxyProcess, upstream: Recorder) -> None:
    upstream.handler = _stall(1_000)  # buffered: nothing reached the client yet
    started = time.monotonic()
    with Conn(proxy.external) as conn:
        conn.sendall(build("GET", "/slow/stall"))
        problem(conn.read_response(), 504, "upstream-timeout")
    assert time.monotonic() - started < ROUTE_TIMEOUT + 3


def test_a_client_leaving_mid_upload_cuts_the_upstream_request(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """The upstream must see a cut connection, never a short request that looks complete (the
    rest of it would be read as the next request on a reused connection). A body larger than
    the request buffer (64 KiB) streams, so the upstream has seen its start."""
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/upload", [("Content-Length", "200000")]) + b"x" * 80_000)
        wait_until(lambda: len(upstream.seen) == 1, what="the upload upstream")
    wait_until(lambda: not upstream.seen[0].complete, 5, "the upstream connection cut")
    assert upstream.seen[0].body_size < 200_000
    upstream.reset()
    assert send(proxy.external, "POST", "/next", body=b"abc").status == 200
    assert upstream.only().body == b"abc"


def test_a_small_upload_the_client_abandons_never_reaches_the_upstream(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """A body within the request buffer is read whole before an upstream connection is taken:
    a client that leaves half-way costs the upstream nothing."""
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/upload", [("Content-Length", "40000")]) + b"x" * 20_000)
        time.sleep(0.3)
    assert send(proxy.external, "POST", "/next", body=b"abc").status == 200
    assert [seen.target for seen in upstream.seen] == [b"/next"]


def test_an_early_upstream_answer_keeps_the_client_connection_in_sync(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """The upstream answers 413 before reading a 2 MiB body made of request heads; the rest of
    that body must be discarded, never parsed as further requests."""

    async def refuse_unread(seen, reader, writer):  # type: ignore[no-untyped-def]
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        return False

    upstream.handler = refuse_unread
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    body = smuggled * (2 * 1024 * 1024 // len(smuggled))
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/upload", [("Content-Length", str(len(body)))]))
        conn.sendall(body[:100_000])
        answer = conn.read_response()
        assert answer.status == 413
        assert answer.body == b"big"
        try:
            conn.sendall(body[100_000:] + build("GET", "/next"))
            follow_up: int | None = conn.read_response().status
        except (ConnectionError, OSError):
            follow_up = None  # closing the connection is fine too
    assert follow_up in (None, 413)
    assert b"/smuggled" not in b" ".join(seen.target for seen in upstream.seen)


def test_the_proxy_keeps_serving_after_upstream_failures(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    assert get(proxy.external, "/fine").body == b"ok"
    assert proxy.proc is not None
    assert proxy.proc.poll() is None
