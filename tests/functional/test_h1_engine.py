"""The proxy's own HTTP/1.1 server side (`strangler serve`), seen from both ends: a
raw client in front of the real proxy and a raw recorder upstream behind it.

- Spelling: request header names reach the upstream as the client spelled them
  (`X-Custom-Thing`, `Content-Type`, `Accept`), answer header names reach the client as the
  upstream spelled them, and each name stays with its own value, in order, when fields around
  it are dropped; the upstream's reason phrase (`200 Fine Thanks`, `404 Nope`) reaches the
  client, and the proxy's own answers carry the standard one (`502 Bad Gateway`).
- HTTP/1.0 clients: a request without Host is served; its answer is never chunked (a chunked
  upstream answer arrives with a length or ends at the close), and the connection closes after
  it unless the request asked `Connection: keep-alive`, in which case the next request on the
  connection is served (after an answer with a length); a chunked HTTP/1.0 request closes its
  connection (RFC 9112 §6.1), so nothing glued behind it is served.
- Pipelining: requests written in one send are answered in order (the first one the slowest),
  each with its own body; a malformed request behind a valid one gets its 400 problem after the
  valid one's answer, then the connection closes.
- Answers: a chunked answer arrives byte-exact; HEAD, 204 and 304 answers carry no body (the
  next answer on the connection is read right); two requests in turn share one connection; a
  client that half-closes after its request still gets the answer.
- Request bodies: a Content-Length body and a chunked body reach the upstream byte-exact; trailer
  fields never reach the upstream, as header fields or trailers; a malformed chunk size is a 400
  problem and the connection closes; framing two parsers could read differently
  (Transfer-Encoding beside Content-Length, chunked twice or not last, whitespace before the
  colon) is a 400, `gzip, chunked` a 501, and none reaches the upstream; `Connection:
  content-length` does not strip the framing.
- `Expect: 100-continue`: the client gets `100 Continue` before it sends the body, then the
  answer; on a small or chunked body the upstream never sees `Expect`; a declared body over the
  route's `max_body` is a 413 without a 100, and a body sent anyway is never served as a
  request; a body sent at once gets no 100 after the answer; an HTTP/1.0 client gets no 100. An
  upload declared above the request buffer goes end to end: the upstream is asked, the client's
  100 follows the upstream's, an upstream's refusal on the head reaches the client without a
  100 and not one body byte reaches the upstream, and an upstream that never says 100 gets the
  body after a second.
- Trailers: an answer's trailer fields reach an HTTP/1.1 client as trailers, in the upstream's
  case and order, minus those no trailer may carry; an HTTP/1.0 client gets the body without
  them; a malformed trailer section ends the answer whole without it.
- Limits: a target over the limit is a 414, header fields over the limit a 431 (also when a
  200 KiB head arrives in one send), a head too slow a 408 and the close, an absolute-form target
  a 400, CONNECT a 405; nothing refused reaches the upstream.
- Timers: an idle keep-alive connection is closed after the keep-alive timeout, silently; an
  answer slower than the header and keep-alive timeouts, or a body paused longer, is not cut.
- Stopping: a slow answer in flight at SIGTERM still completes, an idle connection is closed,
  and the proxy exits 0.
- Flow control: a 16 MiB chunked upload that an upstream reads for longer than the route's
  `timeout` (never silent that long) reaches it whole and gets its answer; one that a hung
  upstream never reads gets the 504 when the timeout ends the try, the rest of it is read and
  dropped (never left paused), and the connection serves the next request.

On uvicorn's protocol, the engine this one replaced, the spelling, reason-phrase, HTTP/1.0,
HTTP/1.0 `Expect` and half-close tests failed: what this engine added.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import cast

import pytest

from tests.functional.proxy_support import (
    Conn,
    Handler,
    MiB,
    ProxyProcess,
    Reader,
    Recorder,
    Response,
    Seen,
    Table,
    Writer,
    build,
    exchange,
    get,
    problem,
    read_body,
    recorder,
    reply,
    running,
    send,
    wait_until,
)

ENGINE = ["--no-access-log"]
KiB = 1 << 10
CHUNKED = [("Transfer-Encoding", "chunked")]
SMALL = 1024  # the `small` route's max_body
HEADER_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 1.0


def pattern(size: int, seed: int) -> bytes:
    """`size` reproducible bytes of every value, CR and LF included."""
    return random.Random(seed).randbytes(size)


def chunked(body: bytes, size: int) -> bytes:
    """`body` in chunked framing, in chunks of `size`, then the last chunk."""
    pieces = [body[at : at + size] for at in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def closed_port() -> int:
    """A port of 127.0.0.1 nothing listens on (bound, then let go)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def echo_target(slow: bytes = b"", delay: float = 0.0) -> Handler:
    """Answer 200 with the request target as the body (after `delay` for the target `slow`)."""

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        body = seen.target
        if body == slow:
            await asyncio.sleep(delay)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        return True

    return handle


def by_method(**handlers: Handler) -> Handler:
    """Answer each request with the handler named after its method (`default` for the rest)."""

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        method = seen.request_line.split(b" ", 1)[0].decode()
        return await handlers.get(method, handlers["default"])(seen, reader, writer)

    return handle


def refused_and_closed(conn: Conn, status: int, kind: str) -> dict[str, object]:
    """The next answer on `conn` is the problem for `status`, then the proxy closes."""
    answer = conn.read_response()
    found = problem(answer, status, kind)
    assert conn.closed_by_peer(), "the connection stays open after a refusal"
    return found


# --- the proxies ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def main() -> Iterator[Recorder]:
    with recorder() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def slow() -> Iterator[Recorder]:
    """An upstream with a small receive buffer (64 KiB, inherited by the connections it
    accepts), for an upstream that reads slowly to slow the proxy down."""
    with recorder() as upstream:
        upstream.server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        yield upstream


@pytest.fixture(scope="module")
def proxy(
    main: Recorder, slow: Recorder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    table = Table(
        tmp_path_factory.mktemp("engine") / "routes.yaml",
        {"main": main.url, "slow": slow.url, "down": f"http://127.0.0.1:{closed_port()}"},
        [
            {"name": "small", "match": {"path": "/small"}, "to": "main", "max_body": "1KiB"},
            {"name": "down", "match": {"path": "/down"}, "to": "down"},
            {"name": "slow", "match": {"path": "/slow"}, "to": "slow", "timeout": "2s"},
        ],
    )
    with running(["--routes", str(table.write()), *ENGINE]) as proxy:
        yield proxy


@pytest.fixture
def upstream(main: Recorder) -> Recorder:
    main.reset()
    return main


# --- header name case -----------------------------------------------------------------------------
def test_header_names_keep_their_case_both_ways(proxy: ProxyProcess, upstream: Recorder) -> None:
    upstream.handler = reply(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Answer-Case: b\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    fields = [("X-Custom-Thing", "a"), ("Content-Type", "text/plain"), ("Accept", "*/*")]
    answer = send(proxy.external, "POST", "/case", fields, b"{}")
    assert answer.status == 200, answer.head
    assert (b"X-Answer-Case", b"b") in answer.headers, answer.head
    seen = upstream.only()
    for name, value in fields:
        assert (name.encode(), value.encode()) in seen.headers, seen.head


def test_names_stay_with_their_values_when_fields_around_them_are_dropped(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """The proxy drops hop-by-hop fields, the fields `Connection` names, names with `_` and
    the client's X-Forwarded-*, and replaces X-Request-ID and traceparent: every field left
    keeps its own spelling and value, in order, duplicates included (a name shifted onto
    another field's value would send, say, a cookie as a credential)."""
    upstream.handler = reply(
        b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=3\r\n"
        b"Set-Cookie: a=1\r\nSET-COOKIE: b=2\r\nX-Answer-Case: b\r\nContent-Length: 2\r\n\r\nok"
    )
    fields = [
        ("Connection", "X-Drop-Me, Keep-Alive"),
        ("X-Drop-Me", "1"),
        ("Keep-Alive", "timeout=5"),
        ("X_Under", "2"),
        ("X-After-Drop", "z"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("TE", "trailers"),
        ("X-Request-ID", "client-7"),
        ("Cookie", "c=d"),
        ("x-lower", "l"),
        ("X-MiXeD", "m"),
        ("X-Dup", "1"),
        ("x-dup", "2"),
        ("AUTHORIZATION", "Basic eA=="),
    ]
    answer = send(proxy.external, "GET", "/names", fields)
    assert answer.status == 200, answer.head
    kept = [(n, v) for n, v in answer.headers if n.lower() in (b"set-cookie", b"x-answer-case")]
    assert kept == [(b"Set-Cookie", b"a=1"), (b"SET-COOKIE", b"b=2"), (b"X-Answer-Case", b"b")]
    assert answer.values("x-hop") == [], answer.head
    seen = upstream.only()
    forwarded = {"X-After-Drop", "Cookie", "x-lower", "X-MiXeD", "X-Dup", "x-dup", "AUTHORIZATION"}
    wanted = [(n.encode(), v.encode()) for n, v in fields if n in forwarded]
    assert [(n, v) for n, v in seen.headers if n.decode() in forwarded] == wanted, seen.head
    for dropped in ("x-drop-me", "keep-alive", "x_under", "te"):
        assert seen.values(dropped) == [], seen.head
    assert seen.values("x-forwarded-for") == [b"127.0.0.1"], seen.head


# --- reason phrases -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status_line", "status", "reason"),
    [
        pytest.param(b"HTTP/1.1 200 Fine Thanks", 200, b"Fine Thanks", id="200"),
        pytest.param(b"HTTP/1.1 404 Nope", 404, b"Nope", id="404"),
    ],
)
def test_the_upstreams_reason_phrase_reaches_the_client(
    proxy: ProxyProcess, upstream: Recorder, status_line: bytes, status: int, reason: bytes
) -> None:
    upstream.handler = reply(status_line + b"\r\nContent-Length: 2\r\n\r\nok")
    answer = get(proxy.external, "/reason")
    assert (answer.status, answer.reason, answer.body) == (status, reason, b"ok"), answer.head


def test_the_proxys_own_answer_has_the_standard_reason(proxy: ProxyProcess) -> None:
    answer = get(proxy.external, "/down")
    problem(answer, 502)
    assert answer.reason == b"Bad Gateway", answer.head


# --- HTTP/1.0 clients -----------------------------------------------------------------------------
CHUNKED_HELLO = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)


def test_an_http10_request_without_host_gets_an_unchunked_answer_then_the_close(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """An HTTP/1.0 client does not know chunked framing (RFC 9112 §7.1): the upstream's chunked
    answer reaches it with a length or delimited by the close."""
    upstream.handler = reply(CHUNKED_HELLO)
    with Conn(proxy.external) as conn:
        conn.sendall(b"GET /old-client HTTP/1.0\r\nUser-Agent: legacy\r\n\r\n")
        answer = conn.read_response()
        assert answer.head.startswith(b"HTTP/1."), answer.head
        assert answer.status == 200, answer.head
        assert answer.values("transfer-encoding") == [], answer.head
        assert (answer.complete, answer.body) == (True, b"hello world")
        assert answer.value("content-length") in (None, b"11"), answer.head
        assert conn.closed_by_peer()
    assert upstream.only().target == b"/old-client"


def test_an_http10_keep_alive_request_over_a_chunked_answer_is_never_chunked(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """The length of a chunked upstream answer is unknown when its head comes: the proxy gives
    the HTTP/1.0 client a length, or ends the answer by closing. Either way what the client
    reads is the whole body, and a connection kept open is one whose answer had a length."""
    upstream.handler = by_method(GET=reply(CHUNKED_HELLO), default=echo_target())
    with Conn(proxy.external) as conn:
        conn.sendall(b"GET /first HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = conn.read_response()
        assert first.head.startswith(b"HTTP/1."), first.head
        assert first.values("transfer-encoding") == [], first.head
        assert (first.status, first.complete, first.body) == (200, True, b"hello world")
        if first.value("content-length") is None:
            assert conn.closed_by_peer()  # the close ended the body: nothing may follow
            return
        assert first.value("content-length") == b"11", first.head
        conn.sendall(b"POST /second HTTP/1.0\r\nContent-Length: 1\r\n\r\nx")
        second = conn.read_response()
        assert (second.status, second.body) == (200, b"/second"), second.head


def test_an_http10_keep_alive_request_keeps_its_connection(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = echo_target()
    with Conn(proxy.external) as conn:
        conn.sendall(b"GET /first HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = conn.read_response()
        assert first.head.startswith(b"HTTP/1."), first.head
        assert (first.status, first.body) == (200, b"/first"), first.head
        assert first.value("content-length") == b"6", first.head
        assert first.values("transfer-encoding") == [], first.head
        conn.sendall(b"GET /second HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        second = conn.read_response()
        assert (second.status, second.body) == (200, b"/second"), second.head
    assert [seen.target for seen in upstream.seen] == [b"/first", b"/second"]


# --- pipelining -----------------------------------------------------------------------------------
def test_pipelined_requests_are_answered_in_order(proxy: ProxyProcess, upstream: Recorder) -> None:
    """The first answer is the slowest (0.3 s): answers written as they came would overtake it."""
    upstream.handler = echo_target(b"/p1", 0.3)
    with Conn(proxy.external) as conn:
        conn.sendall(b"".join(build("GET", f"/p{i}") for i in (1, 2, 3)))
        answers = [conn.read_response() for _ in range(3)]
    assert [(a.status, a.body) for a in answers] == [(200, b"/p1"), (200, b"/p2"), (200, b"/p3")]


def test_pipelined_requests_with_bodies_each_get_their_own(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """A body with a length, a chunked one larger than what the proxy holds for a request
    waiting its turn (64 KiB), a GET and a small body, in one send: each body reaches the
    upstream with its own request, whole."""
    upstream.handler = echo_target(b"/a", 0.2)
    large = pattern(100 * KiB, 5)
    raw = (
        build("POST", "/a", body=b"AAAAA")
        + build("POST", "/b", CHUNKED)
        + chunked(large, 7000)
        + build("GET", "/c")
        + build("PUT", "/d", body=b"DD")
    )
    with Conn(proxy.external) as conn:
        conn.sendall(raw)
        answers = [conn.read_response() for _ in range(4)]
    assert [(a.status, a.body) for a in answers] == [
        (200, b"/a"),
        (200, b"/b"),
        (200, b"/c"),
        (200, b"/d"),
    ]
    assert [(seen.target, seen.body) for seen in upstream.seen] == [
        (b"/a", b"AAAAA"),
        (b"/b", large),
        (b"/c", b""),
        (b"/d", b"DD"),
    ]


def test_a_malformed_request_behind_a_valid_one_is_refused_after_its_answer(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = echo_target()
    malformed = b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"
    with Conn(proxy.external) as conn:
        conn.sendall(build("GET", "/valid") + malformed)
        answer = conn.read_response()
        assert (answer.status, answer.body) == (200, b"/valid"), answer.head
        refused_and_closed(conn, 400, "bad-request")
    assert [seen.target for seen in upstream.seen] == [b"/valid"]


# --- framing of answers ---------------------------------------------------------------------------
def chunked_answer(body: bytes) -> Handler:
    """Answer `body` chunked, in chunks of several sizes written apart."""

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        at, sizes, turn = 0, [1, 17, 4096, 65_539], 0
        while at < len(body):
            piece = body[at : at + sizes[turn % len(sizes)]]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            at, turn = at + len(piece), turn + 1
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    return handle


def get_then_another(proxy: ProxyProcess, target: str) -> tuple[Response, Response]:
    """GET `target`, then a POST to /after on the same connection: both answers (the second
    one shows the first was framed right)."""
    with Conn(proxy.external) as conn:
        conn.sendall(build("GET", target))
        answer = conn.read_response()
        conn.sendall(build("POST", "/after", body=b"x"))
        return answer, conn.read_response()


def test_a_chunked_answer_arrives_byte_exact_and_the_connection_is_kept(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    body = pattern(300 * KiB + 7, 1)
    upstream.handler = by_method(GET=chunked_answer(body), default=reply())
    answer, after = get_then_another(proxy, "/chunked")
    assert (answer.status, answer.complete) == (200, True), answer.head
    assert answer.value("content-length") in (None, b"%d" % len(body)), answer.head
    assert answer.body == body
    assert (after.status, after.body) == (200, b"ok"), after.head


# --- trailer fields of answers --------------------------------------------------------------------
TRAILER_SECTION = (
    b"0\r\nX-Checksum: sha256=abc\r\nServer-Timing: db;dur=53\r\nSet-Cookie: session=stolen\r\n"
    b"Content-Type: text/evil\r\nLocation: /elsewhere\r\nAuthorization: Bearer x\r\n"
    b"If-Match: *\r\nConnection: close\r\n\r\n"
)
PASSED_TRAILERS = [(b"X-Checksum", b"sha256=abc"), (b"Server-Timing", b"db;dur=53")]


def answer_with_trailers(body: bytes, section: bytes = TRAILER_SECTION) -> Handler:
    """Answer `body` in two chunks, then `section` (the last chunk and the trailer fields)."""

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        half = len(body) // 2
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        )
        for piece in (body[:half], body[half:]):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(section)
        await writer.drain()
        return True

    return handle


@pytest.mark.parametrize(
    "size", [pytest.param(10, id="small"), pytest.param(300 * KiB, id="large")]
)
def test_an_answers_trailer_fields_reach_the_client_as_trailers(
    proxy: ProxyProcess, upstream: Recorder, size: int
) -> None:
    """In the upstream's case and order, after the body; never as header fields. Fields a
    trailer must not carry (RFC 9110 §6.5.1: a cookie, a content type, a redirect, credentials,
    a condition, hop-by-hop) are dropped: a client that merges trailers into the header fields
    must not be told them there. The connection goes on with the next request."""
    body = pattern(size, 4)
    upstream.handler = by_method(GET=answer_with_trailers(body), default=reply())
    answer, after = get_then_another(proxy, "/trailers")
    assert (answer.status, answer.complete, answer.body) == (200, True, body), answer.head
    assert answer.trailers == PASSED_TRAILERS, answer.trailers
    assert not {b"x-checksum", b"server-timing", b"set-cookie"} & set(answer.names()), answer.head
    assert (after.status, after.body) == (200, b"ok"), after.head


def test_an_http10_client_gets_the_body_of_an_answer_with_trailers_without_them(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """An answer that is not chunked (to an HTTP/1.0 client) has nowhere to carry trailer
    fields: they are dropped, never written as header fields or body bytes."""
    upstream.handler = answer_with_trailers(b"hello world")
    with Conn(proxy.external) as conn:
        conn.sendall(b"GET /old-client HTTP/1.0\r\n\r\n")
        answer = conn.read_response()
        assert conn.closed_by_peer()
    assert (answer.status, answer.complete, answer.body) == (200, True, b"hello world")
    assert b"sha256" not in answer.head + answer.body, answer.head


def test_a_malformed_trailer_section_ends_the_answer_whole_without_it(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """Every chunk arrived: the client gets the whole body and a well-formed end, no field of
    the broken section (`X-Good` came before the malformed line)."""
    section = b"0\r\nX-Good: 1\r\nno colon here\r\n\r\n"
    upstream.handler = by_method(GET=answer_with_trailers(b"hello world", section), default=reply())
    answer, after = get_then_another(proxy, "/broken-trailers")
    assert (answer.status, answer.complete, answer.body) == (200, True, b"hello world")
    assert answer.trailers == [], answer.trailers
    assert (after.status, after.body) == (200, b"ok"), after.head


@pytest.mark.parametrize(
    ("method", "status", "head"),
    [
        pytest.param(
            "HEAD",
            200,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n",
            id="head",
        ),
        pytest.param(
            "GET",
            304,
            b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1000\r\n\r\n',
            id="304",
        ),
        pytest.param("GET", 204, b"HTTP/1.1 204 No Content\r\n\r\n", id="204"),
        pytest.param(
            "HEAD",
            200,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
            id="head-chunked",
        ),
    ],
)
def test_a_bodiless_answer_has_no_body_and_the_next_answer_is_read_right(
    proxy: ProxyProcess, upstream: Recorder, method: str, status: int, head: bytes
) -> None:
    """Any byte the proxy wrote after the bodiless answer's head (a body, a last chunk) would be
    read as the start of the next answer."""
    upstream.handler = by_method(**{method: reply(head)}, default=reply())
    with Conn(proxy.external) as conn:
        conn.sendall(build(method, "/doc"))
        first = conn.read_response(head_request=True)
        conn.sendall(build("POST", "/after", body=b"x"))
        second = conn.read_response()
    assert first.status == status, (first.head, [s.head for s in upstream.seen])
    if method == "HEAD" and b"Content-Length" in head:
        assert first.value("content-length") == b"1000", first.head
    assert (second.status, second.body) == (200, b"ok"), (second.head, second.body[:200])
    assert [seen.target for seen in upstream.seen] == [b"/doc", b"/after"]


def test_two_requests_in_turn_share_one_client_connection(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = echo_target()
    with Conn(proxy.external) as conn:
        for target in (b"/one", b"/two"):
            conn.sendall(build("GET", target))
            answer = conn.read_response()
            assert (answer.status, answer.body) == (200, target), answer.head


# --- request bodies -------------------------------------------------------------------------------
def test_a_content_length_body_reaches_the_upstream_byte_exact(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    body = pattern(20 * KiB + 3, 2)
    answer = send(proxy.external, "POST", "/upload", body=body)
    assert answer.status == 200, answer.head
    seen = upstream.only()
    assert seen.body == body
    assert seen.value("content-length") == b"%d" % len(body)


@pytest.mark.parametrize("size", [pytest.param(5 * KiB, id="small"), pytest.param(MiB, id="large")])
def test_a_chunked_body_reaches_the_upstream_byte_exact(
    proxy: ProxyProcess, upstream: Recorder, size: int
) -> None:
    body = pattern(size, 3)
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/upload", CHUNKED) + chunked(body, 1000))
        answer = conn.read_response()
    assert answer.status == 200, answer.head
    seen = upstream.only()
    assert (seen.complete, seen.body) == (True, body)


def test_trailer_fields_of_a_request_never_reach_the_upstream(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """Neither as header fields nor as trailers: an upstream that merges trailers into its
    headers (uvicorn does) would be handed an identity the proxy never checked."""
    trailer = b"0\r\nAuthorization: Bearer x\r\nX-Consumer-Id: admin\r\nX-Trailer: y\r\n\r\n"
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/trailer", CHUNKED) + b"5\r\nhello\r\n" + trailer)
        answer = conn.read_response()
    assert answer.status == 200, answer.head
    seen = upstream.only()
    assert seen.body == b"hello"
    assert seen.values("authorization") == [], seen.head
    assert seen.values("x-trailer") == [], seen.head
    for sent in (b"bearer x", b"x-consumer-id", b"x-trailer"):
        assert sent not in seen.raw.lower(), seen.raw[-200:]


def test_a_malformed_chunk_size_is_400_and_closes(proxy: ProxyProcess, upstream: Recorder) -> None:
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/upload", CHUNKED) + b"zz\r\n")
        refused_and_closed(conn, 400, "bad-request")
    wait_until(lambda: all(not seen.complete for seen in upstream.seen), what="the upstream cut")


@pytest.mark.parametrize(
    ("fields", "status", "kind"),
    [
        pytest.param(
            [("Content-Length", "16"), ("Transfer-Encoding", "chunked")],
            400,
            "bad-request",
            id="length-and-chunked",
        ),
        pytest.param(
            [("Transfer-Encoding", "chunked"), ("Content-Length", "16")],
            400,
            "bad-request",
            id="chunked-and-length",
        ),
        pytest.param(
            [("Transfer-Encoding", "gzip, chunked")],
            501,
            "transfer-coding-not-implemented",
            id="gzip-chunked",
        ),
        pytest.param(
            [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
            400,
            "bad-request",
            id="chunked-twice",
        ),
        pytest.param(
            [("Transfer-Encoding", "chunked, identity")],
            400,
            "bad-request",
            id="chunked-not-last",
        ),
        pytest.param(
            # RFC 9112 §5.1: whitespace before the colon is refused, never read as another field.
            [("Transfer-Encoding ", "chunked")],
            400,
            "bad-request",
            id="space-before-colon",
        ),
    ],
)
def test_framing_the_proxy_cannot_forward_is_refused_before_the_upstream(
    proxy: ProxyProcess, upstream: Recorder, fields: list[tuple[str, str]], status: int, kind: str
) -> None:
    """Smuggling: a request the proxy and the upstream could frame differently never goes on.
    The body is the chunked body, followed by what would be a request of its own."""
    body = b"5\r\nhello\r\n0\r\n\r\n" + build("GET", "/smuggled")
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/upload", fields) + body)
        refused_and_closed(conn, status, kind)
    assert upstream.seen == []


def test_connection_content_length_does_not_strip_the_framing(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = echo_target()
    first = build("POST", "/first", [("Connection", "content-length"), ("Content-Length", "5")])
    with Conn(proxy.external) as conn:
        conn.sendall(first + b"hello" + build("GET", "/next"))
        answers = [conn.read_response() for _ in range(2)]
    assert [(a.status, a.body) for a in answers] == [(200, b"/first"), (200, b"/next")]
    assert [seen.target for seen in upstream.seen] == [b"/first", b"/next"]
    assert upstream.seen[0].value("content-length") == b"5"
    assert upstream.seen[0].body == b"hello"


def test_a_chunked_http10_request_closes_its_connection(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding is treated as if its framing
    were faulty, and the connection closes after it (an HTTP/1.0 hop before the proxy may have
    framed it otherwise): even with `Connection: keep-alive`, the request glued behind it is
    never served. The chunked request itself may be refused (400) or served."""
    upstream.handler = echo_target()
    raw = (
        b"POST /chunked-old HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n"
        b"\r\n5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    )
    with Conn(proxy.external, timeout=5) as conn:  # bounds the wait for a close
        conn.sendall(raw)
        answer = conn.read_response()
        assert answer.status in (200, 400), answer.head
        try:
            rest, closed = conn.read_until_closed(), True
        except TimeoutError:
            rest, closed = conn.buffer, False
    assert b"/next" not in [seen.target for seen in upstream.seen], (answer.head, rest[:200])
    assert closed, f"kept open after {answer.head!r}"


# --- Expect: 100-continue -------------------------------------------------------------------------
def test_expect_100_continue_is_answered_before_the_body_is_sent(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    fields = [("Expect", "100-continue"), ("Content-Length", "5")]
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/expecting", fields))
        interim = conn.read_response()
        assert interim.head.startswith(b"HTTP/1.1 100 Continue"), interim.head
        conn.sendall(b"hello")
        answer = conn.read_response()
    assert (answer.status, answer.body) == (200, b"ok"), answer.head
    seen = upstream.only()
    assert seen.body == b"hello"
    assert seen.values("expect") == [], seen.head


def test_expect_100_continue_over_max_body_is_413_without_a_100(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """A client may send the body anyway once refused (curl does after a second): a body that
    reads as a request must then not be served as one (RFC 9110 §10.1.1: the server closes,
    or reads the body and discards it)."""
    upstream.handler = echo_target()
    fields = [("Expect", "100-continue"), ("Content-Length", str(SMALL + 1))]
    smuggled = build("GET", "/smuggled")
    body = smuggled + b"x" * (SMALL + 1 - len(smuggled))
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/small/upload", fields))
        answer = conn.read_response()  # the first answer; no body byte was sent
        problem(answer, 413, "body-too-large")
        try:
            conn.sendall(body + build("GET", "/next"))
            rest = conn.read_until_closed()
        except OSError:
            rest = b""
    assert b"/smuggled" not in rest
    assert [seen.target for seen in upstream.seen] in ([], [b"/next"])


def test_expect_100_continue_with_the_body_at_once_is_answered_once(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """A client that does not wait sends the body with the head, and the next request behind
    it: a 100 may come before the final answer (RFC 9110 §10.1.1), never after it, where it
    would be taken for the next request's answer."""
    upstream.handler = echo_target()
    fields = [("Expect", "100-continue"), ("Content-Length", "5")]
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/expecting", fields, b"hello") + build("GET", "/next"))
        answer = conn.read_response()
        if answer.status == 100:
            answer = conn.read_response()
        after = conn.read_response()
    assert (answer.status, answer.body) == (200, b"/expecting"), answer.head
    assert (after.status, after.body) == (200, b"/next"), after.head
    assert upstream.seen[0].body == b"hello"


def test_expect_100_continue_from_an_http10_client_is_ignored(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored; an
    HTTP/1.0 client does not know interim answers."""
    upstream.handler = echo_target()
    raw = b"POST /old-upload HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"
    with Conn(proxy.external) as conn:
        conn.sendall(raw)
        answer = conn.read_response()
    assert (answer.status, answer.body) == (200, b"/old-upload"), answer.head
    assert upstream.only().body == b"hello"


LARGE = 100 * KiB  # above the request buffer (64 KiB): the upstream decides on the 100


async def says_100_then_counts(seen: Seen, reader: Reader, writer: Writer) -> bool:
    """An upstream that answers `Expect: 100-continue` with a 100, then reads the body and
    answers how many bytes it read."""
    if seen.values("expect"):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    await read_body(seen, reader)
    count = b"%d" % len(seen.body)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(count), count))
    await writer.drain()
    return True


async def refuses_on_the_head(seen: Seen, reader: Reader, writer: Writer) -> bool:
    """An upstream that refuses on the head alone (an expired token), reading no body byte."""
    body = b'{"detail": "token expired"}'
    writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    try:  # whatever the proxy sends after the answer, for a while: counted as body bytes
        while data := await asyncio.wait_for(reader.read(MiB), 0.5):
            seen.body_size += len(data)
    except TimeoutError:
        pass
    return False


def test_expect_100_continue_on_a_large_upload_goes_end_to_end(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """A body declared too large to read first: the upstream is asked (`Expect:
    100-continue`), and the client's 100 comes once the upstream has said 100; the body then
    streams whole."""
    upstream.handler = says_100_then_counts
    body = pattern(LARGE, 5)
    with Conn(proxy.external) as conn:
        conn.sendall(
            build("POST", "/upload", [("Expect", "100-continue"), ("Content-Length", str(LARGE))])
        )
        interim = conn.read_response()
        assert interim.head.startswith(b"HTTP/1.1 100 Continue"), interim.head
        conn.sendall(body)
        answer = conn.read_response()
    assert (answer.status, answer.body) == (200, b"%d" % LARGE), answer.head
    seen = upstream.only()
    assert seen.values("expect") == [b"100-continue"], seen.head
    assert seen.body == body


def test_expect_100_continue_on_a_chunked_upload_is_the_proxys_to_answer(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """A body of unknown length is read before the upstream is asked anything (up to the
    request buffer): the proxy says 100 itself, and the upstream never sees Expect."""
    upstream.handler = says_100_then_counts
    body = pattern(LARGE, 7)
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/upload", [("Expect", "100-continue"), *CHUNKED]))
        interim = conn.read_response()
        assert interim.head.startswith(b"HTTP/1.1 100 Continue"), interim.head
        conn.sendall(chunked(body, 8000))
        answer = conn.read_response()
    assert (answer.status, answer.body) == (200, b"%d" % LARGE), answer.head
    seen = upstream.only()
    assert seen.values("expect") == [], seen.head
    assert seen.body == body


def test_an_upstream_refusing_a_large_upload_on_its_head_is_sent_none_of_it(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """The client gets the upstream's 401 and no 100, so it never sends the 100 KiB (a mobile
    app on a slow network is spared the upload); the connection closes after the answer, as
    what the client sends next is unknown (RFC 9110 §10.1.1)."""
    upstream.handler = refuses_on_the_head
    fields = [("Expect", "100-continue"), ("Content-Length", str(LARGE))]
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/upload", fields))
        answer = conn.read_response()
        with contextlib.suppress(OSError):  # a client that sends it anyway (curl, after 1 s)
            conn.sendall(pattern(LARGE, 8))
        assert conn.closed_by_peer()
    assert (answer.status, answer.body) == (401, b'{"detail": "token expired"}'), answer.head
    seen = upstream.only()
    assert seen.values("expect") == [b"100-continue"], seen.head
    assert seen.body_size == 0  # not one body byte


def test_an_upstream_that_never_says_100_gets_the_body_after_a_second(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """An upstream that ignores Expect waits for the body: after a second without a 100 or an
    answer, the proxy sends it anyway (RFC 9110 §10.1.1; curl waits as long), so the upload
    is not stuck."""
    upstream.handler = echo_target()
    body = pattern(LARGE, 6)
    fields = [("Expect", "100-continue"), ("Content-Length", str(LARGE))]
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/upload", fields))
        interim = conn.read_response()
        assert interim.head.startswith(b"HTTP/1.1 100 Continue"), interim.head
        conn.sendall(body)
        answer = conn.read_response()
    assert (answer.status, answer.body) == (200, b"/upload"), answer.head
    seen = upstream.only()
    assert seen.values("expect") == [b"100-continue"], seen.head
    assert seen.body == body


async def answers_at_once_then_counts(seen: Seen, reader: Reader, writer: Writer) -> bool:
    """An upstream that answers 200 on the head (no 100), then reads the body and ends its
    chunked answer with how many bytes it read (an echo, an upload's progress)."""
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    await writer.drain()
    await read_body(seen, reader)
    count = b"%d" % len(seen.body)
    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(count), count))
    await writer.drain()
    return True


def test_an_upstream_answering_2xx_before_any_100_still_gets_the_body(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """An early 2xx is no refusal (RFC 9110 §10.1.1): the body goes, whole."""
    upstream.handler = answers_at_once_then_counts
    body = pattern(LARGE, 9)
    fields = [("Expect", "100-continue"), ("Content-Length", str(LARGE))]
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/upload", fields))
        time.sleep(0.3)  # a client that waits a moment for the 100, then sends anyway
        conn.sendall(body)
        answer = conn.read_response()
        if answer.status == 100:
            answer = conn.read_response()
    assert (answer.status, answer.body) == (200, b"%d" % LARGE), answer.head
    assert upstream.only().body == body


# --- limits ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "status", "kind"),
    [
        pytest.param(build("GET", "/" + "a" * 9_000), 414, "uri-too-long", id="414"),
        pytest.param(
            build("GET", "/", [("X-Big", "v" * 40_000)]), 431, "headers-too-large", id="431"
        ),
        pytest.param(
            build("GET", "/", [(f"X-Field-{i}", "v") for i in range(150)]),
            431,
            "headers-too-large",
            id="too-many-fields",
        ),
        pytest.param(
            b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n",
            400,
            "bad-target",
            id="absolute-form",
        ),
    ],
)
def test_a_head_over_the_limits_is_refused_and_closed(
    proxy: ProxyProcess, upstream: Recorder, raw: bytes, status: int, kind: str
) -> None:
    with Conn(proxy.external) as conn:
        conn.sendall(raw)
        refused_and_closed(conn, status, kind)
    assert upstream.seen == []


def test_connect_is_405(proxy: ProxyProcess, upstream: Recorder) -> None:
    raw = b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"
    answer = exchange(proxy.external, raw)
    problem(answer, 405, "method-not-allowed")
    assert answer.value("allow") is not None, answer.head
    assert upstream.seen == []


def test_a_200_kib_head_in_one_send_is_431_and_never_served(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    raw = build("GET", "/huge", [("X-Huge", "v" * (200 * KiB))])
    with Conn(proxy.external) as conn:
        conn.sendall(raw)
        answer = conn.read_response()
    problem(answer, 431, "headers-too-large")
    assert upstream.seen == []


# --- timers ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def timers(main: Recorder) -> Iterator[ProxyProcess]:
    """A proxy whose header and keep-alive timeouts are 1 s (the body idle timeout stays 60 s)."""
    env = {
        "STRANGLER_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "STRANGLER_KEEPALIVE_TIMEOUT": str(KEEPALIVE_TIMEOUT),
    }
    with running(["--default-upstream", main.url, *ENGINE], env) as proxy:
        yield proxy


def test_a_slow_request_head_is_408_and_closed(timers: ProxyProcess, upstream: Recorder) -> None:
    with Conn(timers.external) as conn:
        conn.sendall(b"GET /slow-head HTTP/1.1\r\nHost: proxy.test\r\nX-Slow: ")
        refused_and_closed(conn, 408, "request-timeout")
    assert upstream.seen == []


def test_an_idle_keep_alive_connection_is_closed_silently(
    timers: ProxyProcess, upstream: Recorder
) -> None:
    """After the keep-alive timeout the proxy closes an idle connection without writing
    anything (no 408: no request has begun): a client sending its next request at that moment
    must not take an unasked answer for its own."""
    with Conn(timers.external) as conn:
        conn.sendall(build("GET", "/once"))
        assert conn.read_response().status == 200
        assert conn.read_until_closed() == b""  # the client's timeout (10 s) bounds the wait


def test_a_slow_answer_outlasts_the_keep_alive_and_header_timeouts(
    timers: ProxyProcess, upstream: Recorder
) -> None:
    """A connection waiting for its answer is neither idle nor reading a head: an upstream
    that takes 2.5 s (both timeouts are 1 s) still gets its answer through, and the
    connection serves the next request."""
    upstream.handler = echo_target(b"/slow-answer", 2.5)
    with Conn(timers.external) as conn:
        conn.sendall(build("GET", "/slow-answer"))
        answer = conn.read_response()
        conn.sendall(build("GET", "/next"))
        after = conn.read_response()
    assert (answer.status, answer.body) == (200, b"/slow-answer"), answer.head
    assert (after.status, after.body) == (200, b"/next"), after.head


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_body_paused_past_the_keep_alive_and_header_timeouts_arrives_whole(
    timers: ProxyProcess, upstream: Recorder, framing: str
) -> None:
    """The client stops for 2.5 s in the middle of its body (within the body idle timeout,
    60 s): neither the head clock nor the idle clock cuts it."""
    upstream.handler = echo_target()
    if framing == "length":
        head, first, rest = build("POST", "/paused", [("Content-Length", "10")]), b"hello", b"world"
    else:
        head, first, rest = (
            build("POST", "/paused", CHUNKED),
            b"5\r\nhello\r\n",
            b"5\r\nworld\r\n0\r\n\r\n",
        )
    with Conn(timers.external) as conn:
        conn.sendall(head + first)
        time.sleep(2.5)  # the client's pause: past both timeouts, then the sweep has run
        conn.sendall(rest)
        answer = conn.read_response()
    assert (answer.status, answer.body) == (200, b"/paused"), answer.head
    assert upstream.only().body == b"helloworld"


def test_a_half_closed_client_gets_its_answer(proxy: ProxyProcess, upstream: Recorder) -> None:
    """A client that shuts its sending side once the request is out (`nc -N`, some scripts)
    still gets the answer, then the close."""
    upstream.handler = echo_target()
    with Conn(proxy.external) as conn:
        conn.sendall(build("GET", "/half"))
        conn.sock.shutdown(socket.SHUT_WR)
        answer = conn.read_response()
        assert (answer.status, answer.body) == (200, b"/half"), answer.head
        assert conn.closed_by_peer()


def test_a_half_closed_client_gets_every_pipelined_answer(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """Three requests written at once, then the sending side shut: all three are answered, in
    order (the first one the slowest), then the close."""
    upstream.handler = echo_target(slow=b"/half/1", delay=0.3)
    with Conn(proxy.external) as conn:
        conn.sendall(b"".join(build("GET", f"/half/{n}") for n in (1, 2, 3)))
        conn.sock.shutdown(socket.SHUT_WR)
        bodies = [conn.read_response().body for _ in range(3)]
        assert bodies == [b"/half/1", b"/half/2", b"/half/3"]
        assert conn.closed_by_peer()


# --- graceful stop --------------------------------------------------------------------------------
def test_sigterm_lets_a_slow_answer_finish_then_exits_0(main: Recorder) -> None:
    """SIGTERM while one answer is upstream (1.5 s), another connection is idle and a third
    has sent half a head: the idle one and the begun one are closed, the slow answer arrives
    whole, then the proxy exits 0 on its own."""
    main.reset(reply(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone", delay=1.5))
    proxy = ProxyProcess(["--default-upstream", main.url, *ENGINE]).start()
    try:
        with (
            Conn(proxy.external) as idle,
            Conn(proxy.external) as begun,
            Conn(proxy.external) as conn,
        ):
            idle.sendall(build("GET", "/before"))
            assert idle.read_response().status == 200
            begun.sendall(b"GET /half-a-head HTTP/1.1\r\nHost: x\r\n")
            conn.sendall(build("GET", "/slow-report"))
            wait_until(lambda: len(main.seen) == 2, what="the request upstream")
            assert proxy.proc is not None
            proxy.proc.send_signal(signal.SIGTERM)
            answer = conn.read_response()
            assert idle.closed_by_peer()
            assert begun.closed_by_peer()  # a head begun gets no answer, nothing lingers
        assert (answer.status, answer.complete, answer.body) == (200, True, b"done"), answer.head
        code = proxy.wait(timeout=15)
    finally:
        proxy.stop()
    assert code == 0, "".join(proxy.stderr[-30:])
    assert "Traceback" not in "".join(proxy.stderr), "".join(proxy.stderr)


# --- a slow upstream reading an upload ------------------------------------------------------------
SLOW_READ = 64 * KiB  # what the slow upstream reads at a time, every SLOW_GAP seconds
SLOW_GAP = 0.01


class SlowReader:
    """A StreamReader that hands out at most SLOW_READ bytes per read, after a pause."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        # asyncio buffers up to twice its limit (1 MiB in the recorder) before it stops reading
        # the socket: with a limit this small, the upstream's reading paces the proxy.
        setattr(reader, "_limit", SLOW_READ)  # noqa: B010 - StreamReader has no public setter

    async def read(self, n: int = -1) -> bytes:
        await asyncio.sleep(SLOW_GAP)
        return await self.reader.read(min(n, SLOW_READ) if n > 0 else SLOW_READ)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        return await self.reader.readuntil(separator)

    async def readexactly(self, n: int) -> bytes:
        return await self.reader.readexactly(n)


async def slow_sink(seen: Seen, reader: Reader, writer: Writer) -> bool:
    """Read the body slowly (kept, to compare), then answer at once with its size."""
    await read_body(seen, cast(Reader, SlowReader(reader)))
    answer = b"%d" % seen.body_size
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
    await writer.drain()
    return True


def test_a_chunked_upload_read_slower_than_the_route_timeout_arrives_whole(
    proxy: ProxyProcess, slow: Recorder
) -> None:
    """16 MiB that the upstream reads 64 KiB every 10 ms: near 3 s, past the `slow` route's
    timeout (2 s), though the upstream is never silent that long. The client's sends run in a
    thread of their own: the proxy holds the client back while the upstream is behind and goes
    on when it catches up; nothing is lost, nothing is stuck. (Not 4 MiB: Linux's socket
    buffers, up to 4 MB a side, would take in nearly all of it before the proxy had to wait;
    and the timeout runs from the request's last byte handed to the kernel, so the buffered
    tail, read at this pace in about 0.6 s, must stay well inside it.)"""
    size = 16 * MiB
    body = pattern(size, 4)
    slow.reset(slow_sink)
    failed: list[BaseException] = []

    def send_body(sock: socket.socket) -> None:
        try:
            sock.sendall(chunked(body, 64 * KiB))
        except OSError as exc:
            failed.append(exc)

    with Conn(proxy.external, timeout=30) as conn:
        conn.sendall(build("POST", "/slow/upload", CHUNKED))
        sending = threading.Thread(target=send_body, args=(conn.sock,))
        sending.start()
        answer = conn.read_response()
        sending.join(timeout=30)
    assert failed == []
    assert (answer.status, answer.body) == (200, b"%d" % size), (answer.head, answer.body[:300])
    seen = slow.only()
    assert (seen.complete, seen.body_size) == (True, size)
    assert seen.body == body


async def reads_nothing(seen: Seen, reader: Reader, writer: Writer) -> bool:
    """Take the head, then neither read the body nor answer (a hung upstream)."""
    await asyncio.sleep(30)
    return False


def test_an_upload_paused_behind_a_hung_upstream_gets_its_504_and_is_not_left_paused(
    proxy: ProxyProcess, slow: Recorder, upstream: Recorder
) -> None:
    """The proxy stops reading the client while the upstream takes nothing (flow control);
    when the route's timeout (2 s) ends the try, the client gets the 504 problem, the rest of
    its upload is read and dropped (never left paused), and the connection serves the next
    request."""
    slow.reset(reads_nothing)
    sent: list[BaseException | None] = []

    def send_body(sock: socket.socket) -> None:
        try:
            sock.sendall(chunked(pattern(16 * MiB, 5), 64 * KiB))
            sent.append(None)
        except OSError as exc:  # the proxy closed the connection mid-upload: allowed
            sent.append(exc)

    with Conn(proxy.external, timeout=30) as conn:
        conn.sendall(build("POST", "/slow/hung", CHUNKED))
        sending = threading.Thread(target=send_body, args=(conn.sock,), daemon=True)
        sending.start()
        answer = conn.read_response()
        problem(answer, 504, "upstream-timeout")
        sending.join(timeout=30)
        assert sent == [None], "the client's upload is stuck behind a paused connection"
        conn.sendall(build("GET", "/small/after"))
        after = conn.read_response()
        assert after.status == 200, after.head
