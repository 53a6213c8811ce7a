"""The proxy's own HTTP/1.1 upstream client (`strangler serve --upstream-client h1`), seen from
both ends: a raw client in front of the real proxy and a raw recorder upstream behind it, which
counts the connections it accepts and keeps every request's bytes. Each test gets a recorder of
its own (a new table version), so its connection pool starts empty.

- Requests: sequential requests share one upstream connection; the request line, Host and
  header values reach the upstream byte for byte; an HTTP/1.0 request without Host still goes
  upstream with one. A small body goes with its Content-Length, a small chunked upload with a
  Content-Length, a large chunked upload streams chunked, a large upload keeps its length, a
  body-less write says `Content-Length: 0`. An upstream that answers 413 to a large upload
  before reading it gets its answer to the client.
- Answers: HEAD, 204 and 304 answers carry no body whatever their Content-Length says, and the
  next answer on that connection is read right; interim 1xx answers are skipped; a body
  without a length or chunking ends when the upstream closes; a large answer written at once
  with its head, and downloads of several MiB (chunked or with a length), arrive byte-exact.
- Malformed answers (Content-Length beside chunked, conflicting lengths, a bad status line, an
  unasked 101, a head over 64 KiB or over 256 fields) are a 502 `bad-upstream-response`, while
  a 60 KiB head is served; a malformed chunk after the head cuts the client's answer off.
- Connections: an HTTP/1.0 or `Connection: close` answer is not reused; bytes the upstream
  sends on an idle connection make the proxy drop it; the proxy closes an idle connection on
  its own; `max_connections` bounds the connections opened; a pooled connection the upstream
  closed (after its answer, while idle, or on the next request) never costs a GET its answer.
- Uploads that overlap their answer: one streamed more slowly than the upstream's `timeout`
  (read as it comes) gets its answer, not a 504; a 200 head sent before the body was read still
  gets all of the body; a 413 sent by an upstream that then reads nothing more frees the pool
  slot (`max_connections: 1`); an unasked answer glued behind the answer changes nothing of it.
- Trailer fields (a `Content-Length` among them) never become header fields and leave the
  chunked body whole; a HEAD answer without a length keeps its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.functional.proxy_support import (
    CLIENT_TIMEOUT,
    OK,
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
    sink,
    trickle,
    wait_until,
)

H1 = ["--upstream-client", "h1", "--no-access-log"]
KiB = 1 << 10
CHUNKED = [("Transfer-Encoding", "chunked")]
TOO_LARGE_BODY = b'{"error":"payload too large"}'
TOO_LARGE = (
    b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(TOO_LARGE_BODY), TOO_LARGE_BODY)
)


def pattern(size: int, seed: int) -> bytes:
    """`size` reproducible bytes of every value, CR and LF included."""
    return random.Random(seed).randbytes(size)


def chunked(body: bytes, sizes: list[int]) -> bytes:
    """`body` in chunked framing, its chunks sized by `sizes` in turn, then the last chunk."""
    out, at, turn = [], 0, 0
    while at < len(body):
        piece = body[at : at + sizes[turn % len(sizes)]]
        out.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        at += len(piece)
        turn += 1
    return b"".join(out) + b"0\r\n\r\n"


class Tracker:
    """Wraps a handler: the proxy's port of the upstream connection each request came on, and
    whether the proxy has closed that connection since."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.ports: list[int] = []
        self._readers: dict[int, Reader] = {}

    async def __call__(self, seen: Seen, reader: Reader, writer: Writer) -> bool:
        port = writer.get_extra_info("peername")[1]
        self.ports.append(port)
        self._readers[port] = reader
        return await self.handler(seen, reader, writer)

    def closed(self, port: int) -> bool:
        return self._readers[port].at_eof()


def by_method(**handlers: Handler) -> Handler:
    """Answer each request with the handler named after its method (`default` for the rest)."""

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        method = seen.request_line.split(b" ", 1)[0].decode()
        return await handlers.get(method, handlers["default"])(seen, reader, writer)

    return handle


def per_connection(*handlers: Handler) -> Handler:
    """The n-th request on an upstream connection gets the n-th handler (the last for the rest)."""
    served: dict[Writer, int] = {}

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        number = served.get(writer, 0)
        served[writer] = number + 1
        return await handlers[min(number, len(handlers) - 1)](seen, reader, writer)

    return handle


def ok_twice(port: int) -> tuple[Response, Response]:
    """Two GETs on one client connection, each read whole."""
    with Conn(port) as conn:
        conn.sendall(build("GET", "/first"))
        first = conn.read_response()
        conn.sendall(build("GET", "/second"))
        return first, conn.read_response()


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Table:
    path = tmp_path_factory.mktemp("h1") / "routes.yaml"
    return Table(path, {"main": "http://127.0.0.1:9"})  # replaced by each test's upstream


@pytest.fixture(scope="module")
def proxy(table: Table) -> Iterator[ProxyProcess]:
    with running(["--routes", str(table.write()), *H1]) as proxy:
        yield proxy


@pytest.fixture
def upstream(proxy: ProxyProcess, table: Table) -> Iterator[Recorder]:
    """A recorder of its own per test, served as a new table version: a new upstream URL is a
    new connection pool, so every test starts with no upstream connection."""
    with recorder() as up:
        table.upstreams = {"main": up.url}
        table.version += 1
        table.write()
        wait_until(
            lambda: proxy.readyz()["table_version"] == table.version,
            what=f"version {table.version} served",
        )
        yield up


# --- keep-alive and the request line --------------------------------------------------------------
def test_sequential_requests_share_one_upstream_connection_and_keep_their_targets(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    requests = [
        ("GET", b"/a/../b?x=%20&y"),
        ("POST", b"/orders/%7E1;v=2?q=a+b&r=%2F"),
        ("GET", b"/c//d/./e"),
        ("DELETE", b"/items/%E2%82%AC?force"),
        ("GET", b"/last?" + b"k=" + b"v" * 2000),
    ]
    with Conn(proxy.external) as conn:
        for method, target in requests:
            body = b"{}" if method == "POST" else b""
            conn.sendall(build(method, target, body=body))
            answer = conn.read_response()
            assert (answer.status, answer.body) == (200, b"ok"), answer.head
    assert upstream.connections == 1
    assert [seen.request_line for seen in upstream.seen] == [
        method.encode() + b" " + target + b" HTTP/1.1" for method, target in requests
    ]
    assert upstream.seen[1].body == b"{}"


def test_host_and_header_values_reach_the_upstream_byte_for_byte(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    note = 'café ☕ "quoted"; a=b, c'
    answer = send(proxy.external, "GET", "/h", [("X-Note", note)], host="Shop.Example:8443")
    assert answer.status == 200
    seen = upstream.only()
    assert seen.values("host") == [b"Shop.Example:8443"]
    assert seen.values("x-note") == [note.encode()]


def test_a_request_without_host_reaches_the_upstream_with_one(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """HTTP/1.0 allows a request without Host; upstream the proxy speaks HTTP/1.1, where Host
    is required (RFC 9112 §3.2, servers answer 400 without it): it sends the upstream's own
    host:port, as the aiohttp client does."""
    with Conn(proxy.external) as conn:
        conn.sendall(b"GET /old-client HTTP/1.0\r\nUser-Agent: legacy\r\n\r\n")
        answer = conn.read_response()
    assert (answer.status, answer.body) == (200, b"ok")
    seen = upstream.only()
    assert seen.request_line == b"GET /old-client HTTP/1.1"
    assert seen.values("host") == [f"127.0.0.1:{upstream.port}".encode()], seen.head


# --- bodiless answers -----------------------------------------------------------------------------
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
    ],
)
def test_a_bodiless_answer_then_a_get_on_the_same_upstream_connection(
    proxy: ProxyProcess, upstream: Recorder, method: str, status: int, head: bytes
) -> None:
    full = pattern(1000, 2)
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + full
    upstream.handler = per_connection(reply(head), reply(whole))
    with Conn(proxy.external) as conn:
        conn.sendall(build(method, "/doc", [("If-None-Match", '"v1"')] if status == 304 else []))
        first = conn.read_response(head_request=method == "HEAD")
        conn.sendall(build("GET", "/doc"))
        second = conn.read_response()
    assert first.status == status, first.head
    assert first.body == b""
    if method == "HEAD":
        assert first.value("content-length") == b"1000"
    assert (second.status, second.body) == (200, full)
    assert upstream.connections == 1


# --- interim answers ------------------------------------------------------------------------------
HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
FINAL = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize("apart", [False, True], ids=["one-write", "apart"])
def test_interim_answers_are_skipped_for_the_final_one(
    proxy: ProxyProcess, upstream: Recorder, apart: bool
) -> None:
    parts = (HINTS, CONTINUE, FINAL) if apart else (HINTS + CONTINUE + FINAL,)
    upstream.handler = per_connection(trickle(*parts, then_close=False), reply())
    with Conn(proxy.external) as conn:
        conn.sendall(build("GET", "/hinted"))
        answer = conn.read_response()
        conn.sendall(build("GET", "/after"))
        after = conn.read_response()
    assert (answer.status, answer.body) == (200, b"hello"), answer.head
    assert answer.values("link") == []  # the 103's fields are not the final answer's
    assert (after.status, after.body) == (200, b"ok")
    assert upstream.connections == 1


# --- close-delimited answers ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "fields"),
    [
        pytest.param(5, b"", id="small"),
        pytest.param(300 * KiB, b"", id="large"),
        # RFC 9112 §6.3 (4): a coding other than chunked leaves the length to the close.
        pytest.param(5, b"Transfer-Encoding: gzip\r\n", id="not-chunked-coding"),
    ],
)
def test_a_body_delimited_by_close_arrives_whole(
    proxy: ProxyProcess, upstream: Recorder, size: int, fields: bytes
) -> None:
    body = pattern(size, 4)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n" + fields + b"\r\n"
    third = len(body) // 3
    upstream.handler = trickle(head, body[:third], body[third : 2 * third], body[2 * third :])
    first, second = ok_twice(proxy.external)
    assert (first.status, first.complete, first.body) == (200, True, body)
    assert (second.status, second.complete, second.body) == (200, True, body)
    assert upstream.connections == 2


# --- connections the upstream does not keep -------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "connections"),
    [
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 2, id="http10"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            2,
            id="connection-close",
        ),
        pytest.param(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
            1,
            id="http10-keep-alive",
        ),
    ],
)
def test_an_answer_that_ends_its_connection_is_not_reused(
    proxy: ProxyProcess, upstream: Recorder, answer: bytes, connections: int
) -> None:
    """The recorder keeps every connection open: only the proxy decides not to reuse it."""
    upstream.handler = reply(answer)
    first, second = ok_twice(proxy.external)
    assert (first.status, first.body) == (200, b"ok")
    assert (second.status, second.body) == (200, b"ok")
    assert upstream.connections == connections


def test_an_idle_upstream_connection_is_closed_by_the_proxy(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """Before the upstream's own keep-alive timeout would (uvicorn's 5 s): the proxy closes
    first, so it never sends a request on a connection the upstream is closing."""
    tracker = Tracker(reply())
    upstream.handler = tracker
    assert get(proxy.external, "/one").status == 200
    (port,) = tracker.ports
    wait_until(lambda: tracker.closed(port), timeout=15, what="the proxy to close it")
    assert get(proxy.external, "/two").body == b"ok"
    assert upstream.connections == 2


def test_max_connections_bounds_the_upstream_connections(tmp_path: Path) -> None:
    env = {"STRANGLER_UPSTREAM_SHARE_PER_CLIENT": "1"}  # one client address plays four clients
    answers: list[Response] = []

    def ask(port: int, number: int) -> None:
        answers.append(get(port, f"/concurrent/{number}"))

    with recorder() as upstream:
        upstream.handler = reply(delay=0.2)
        routes = tmp_path / "routes.yaml"
        routes.write_text(
            "upstreams:\n"
            f'  main: {{url: "{upstream.url}", max_connections: 1, max_requests: 4}}\n'
            "default: main\n"
        )
        with running(["--routes", str(routes), *H1], env) as proxy:
            threads = [threading.Thread(target=ask, args=(proxy.external, n)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert [(a.status, a.body) for a in answers] == [(200, b"ok")] * 4
        assert upstream.connections == 1
        assert len(upstream.seen) == 4


# --- malformed answers ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            id="length-and-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
            id="two-lengths",
        ),
        pytest.param(b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok", id="bad-status"),
        pytest.param(b"SPDY/3 200 OK\r\nContent-Length: 2\r\n\r\nok", id="not-http"),
        pytest.param(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket"
            b"\r\n\r\n",
            id="unasked-101",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * (70 * KiB) + b"\r\nContent-Length: 2\r\n\r\nok",
            id="70-KiB-head",
        ),
        pytest.param(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Big: "
            + b"v" * (70 * KiB)
            + b"\r\nContent-Length: 2\r\n\r\nok",
            id="70-KiB-head-after-a-100-in-the-same-read",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-F-%d: v\r\n" % i for i in range(300))
            + b"Content-Length: 2\r\n\r\nok",
            id="300-fields",
        ),
    ],
)
def test_a_malformed_answer_is_a_502(
    proxy: ProxyProcess, upstream: Recorder, answer: bytes
) -> None:
    upstream.handler = by_method(GET=reply(answer), default=reply())
    problem(get(proxy.external, "/malformed"), 502, "bad-upstream-response")
    # The connection that carried it is not reused.
    upstream.handler = reply()
    assert get(proxy.external, "/after").body == b"ok"
    assert upstream.connections == 2


def test_a_head_under_the_limit_is_not_refused_for_the_body_behind_it(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """A 60 KiB head, its last bytes arriving together with an 8 KiB body: the limit (64 KiB)
    is on the head, the body's bytes do not count."""
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * (60 * KiB) + b"\r\nContent-Length: 8192\r\n\r\n"
    body = pattern(8 * KiB, 10)
    upstream.handler = trickle(head[: 60 * KiB], head[60 * KiB :] + body, then_close=False)
    answer = get(proxy.external, "/large-head")
    assert answer.status == 200, (answer.head[:200], answer.body[:300])
    assert len(answer.value("x-big") or b"") == 60 * KiB
    assert answer.body == body


def test_a_large_answer_written_at_once_is_served(proxy: ProxyProcess, upstream: Recorder) -> None:
    """A small head and a 200 KiB body in one write, as most servers send a file: whatever
    the proxy reads at once, the body is not taken for part of the head."""
    body = pattern(200 * KiB, 15)
    upstream.handler = reply(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    statuses = []
    with Conn(proxy.external) as conn:
        for _ in range(5):
            conn.sendall(build("GET", "/file.bin"))
            answer = conn.read_response()
            statuses.append(answer.status)
            assert answer.status != 200 or answer.body == body
    assert statuses == [200] * 5


def test_a_malformed_chunk_after_the_head_cuts_the_answer_off(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = trickle(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"zz\r\nnot a chunk\r\n",
        then_close=False,
    )
    answer = get(proxy.external, "/cut")
    assert answer.status == 200
    assert not answer.complete  # never ended as if whole
    assert b"not a chunk" not in answer.body


# --- unsolicited bytes ----------------------------------------------------------------------------
EXTRA = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"


@pytest.mark.parametrize("glued", [False, True], ids=["while-idle", "after-the-answer"])
def test_bytes_sent_on_an_idle_connection_drop_it(
    proxy: ProxyProcess, upstream: Recorder, glued: bool
) -> None:
    """The bytes come after the answer (in the same write, or later on the idle connection);
    the next request, sent well before the idle connection would expire, is answered on a
    new connection, not with them."""
    written = threading.Event()

    async def answer_and_more(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        writer.write(OK + EXTRA if glued else OK)
        await writer.drain()
        if not glued:
            await asyncio.sleep(0.1)  # the answer has gone, the connection is idle
            writer.write(EXTRA)
            await writer.drain()
        written.set()
        return True

    upstream.handler = per_connection(answer_and_more, reply())
    assert get(proxy.external, "/first").body == b"ok"
    assert written.wait(CLIENT_TIMEOUT)
    time.sleep(0.5)  # for the proxy to read them: a pause, not a measure
    answer = get(proxy.external, "/second")
    assert (answer.status, answer.body) == (200, b"ok")
    assert upstream.connections == 2


# --- stale pooled connections ---------------------------------------------------------------------
async def answer_then_close_later(seen: Seen, reader: Reader, writer: Writer) -> bool:
    await reply()(seen, reader, writer)
    await asyncio.sleep(0.2)  # idle, kept alive; then the upstream closes it
    return False


async def drop(seen: Seen, reader: Reader, writer: Writer) -> bool:
    """Read the request, close without a byte of answer."""
    await read_body(seen, reader)
    return False


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(reply(close=True), id="closed-after-the-answer"),
        pytest.param(answer_then_close_later, id="closed-while-idle"),
        pytest.param(per_connection(reply(), drop), id="dropped-when-reused"),
    ],
)
def test_a_stale_pooled_connection_costs_a_get_nothing(
    proxy: ProxyProcess, upstream: Recorder, handler: Handler
) -> None:
    upstream.handler = handler
    first, second = ok_twice(proxy.external)
    assert (first.status, first.body) == (200, b"ok")
    assert (second.status, second.body) == (200, b"ok"), second.body[:300]
    assert upstream.connections == 2


def test_a_get_dropped_on_a_reused_connection_is_sent_again_on_a_new_one(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = per_connection(reply(), drop)
    first, second = ok_twice(proxy.external)
    assert [first.status, second.status] == [200, 200]
    assert [seen.target for seen in upstream.seen] == [b"/first", b"/second", b"/second"]
    assert upstream.connections == 2


# --- request bodies -------------------------------------------------------------------------------
def test_a_small_body_goes_upstream_with_its_length(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    body = pattern(1000, 8)
    assert send(proxy.external, "POST", "/small", body=body).status == 200
    seen = upstream.only()
    assert seen.values("content-length") == [b"1000"]
    assert not seen.chunked
    assert seen.body == body


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_a_write_without_a_body_says_content_length_0(
    proxy: ProxyProcess, upstream: Recorder, method: str
) -> None:
    assert send(proxy.external, method, "/empty").status == 200
    seen = upstream.only()
    assert seen.values("content-length") == [b"0"]
    assert seen.values("transfer-encoding") == []


def test_a_get_without_a_body_has_no_framing(proxy: ProxyProcess, upstream: Recorder) -> None:
    assert get(proxy.external, "/plain").status == 200
    seen = upstream.only()
    assert seen.values("content-length") == []
    assert seen.values("transfer-encoding") == []


def test_a_small_chunked_upload_goes_upstream_with_a_content_length(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    body = pattern(5000, 9)
    raw = build("POST", "/chunked", CHUNKED) + chunked(body, [1, 100, 4096])
    assert exchange(proxy.external, raw).status == 200
    seen = upstream.only()
    assert seen.values("content-length") == [b"5000"]
    assert seen.values("transfer-encoding") == []
    assert seen.body == body


def test_a_large_chunked_upload_streams_upstream_chunked(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    body = pattern(300 * KiB, 11)
    raw = build("POST", "/chunked", CHUNKED) + chunked(body, [10_000, 1, 65_536])
    answer = exchange(proxy.external, raw, timeout=30)
    assert (answer.status, answer.body) == (200, b"ok")
    seen = upstream.only()
    assert seen.chunked
    assert seen.values("content-length") == []
    assert seen.complete
    assert seen.body == body


def test_a_large_upload_with_a_length_keeps_it(proxy: ProxyProcess, upstream: Recorder) -> None:
    body = pattern(MiB + 7, 12)
    answer = send(proxy.external, "PUT", "/large", body=body, timeout=30)
    assert (answer.status, answer.body) == (200, b"ok")
    seen = upstream.only()
    assert seen.values("content-length") == [b"%d" % len(body)]
    assert not seen.chunked
    assert seen.body == body


# --- an early answer to an upload -----------------------------------------------------------------
async def refuse_early(seen: Seen, reader: Reader, writer: Writer) -> bool:
    """Answer 413 having read only the head, then read and drop whatever still comes until the
    proxy closes (a lingering close: no reset destroys the answer at this end)."""
    writer.write(TOO_LARGE)
    await writer.drain()
    while await reader.read(MiB):
        pass
    return False


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the proxy closes once it has answered: expected
        sock.sendall(data)


@pytest.mark.parametrize("whole", [True, False], ids=["body-sent-whole", "client-waits"])
def test_an_early_413_to_a_large_upload_reaches_the_client(
    proxy: ProxyProcess, upstream: Recorder, whole: bool
) -> None:
    """The upload is larger than the proxy's request buffer (64 KiB), so it streams; the
    upstream answers before reading any of it. With `client-waits`, the client sends a part
    and waits for the answer before sending more."""
    upstream.handler = by_method(POST=refuse_early, default=reply())
    size = 4 * MiB
    body = pattern(size, 13)
    with Conn(proxy.external, timeout=30) as conn:
        conn.sendall(build("POST", "/upload", [("Content-Length", str(size))]))
        sending = threading.Thread(
            target=_send_quietly, args=(conn.sock, body if whole else body[: 128 * KiB])
        )
        sending.start()
        answer = conn.read_response()
        sending.join(timeout=30)  # the proxy drops the rest of the body, or closes
        # That upstream connection is not reused: the next request, on another client
        # connection, is answered on a new one.
        after = get(proxy.external, "/after")
    assert (answer.status, answer.body) == (413, TOO_LARGE_BODY), answer.head
    assert answer.value("content-type") == b"application/json"
    assert (after.status, after.body) == (200, b"ok")
    assert upstream.connections == 2


# --- small answers, written whole -----------------------------------------------------------------
WHOLE = (
    b"HTTP/1.1 200 Fine\r\nX-Upstream-Case: Kept\r\ncontent-LENGTH: 5\r\nConnection: keep-alive\r\n"
    b"Keep-Alive: timeout=5\r\nCache-Control: no-store\r\n\r\nhello"
)


@pytest.mark.parametrize(
    ("method", "answer", "status", "body"),
    [
        pytest.param("GET", WHOLE, 200, b"hello", id="get"),
        pytest.param("HEAD", WHOLE.removesuffix(b"hello"), 200, b"", id="head"),
        pytest.param(
            "GET",
            b'HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: "v1"\r\n\r\n',
            304,
            b"",
            id="304-with-a-length",
        ),
    ],
)
def test_a_small_answer_keeps_its_fields_with_one_length_of_its_own(
    proxy: ProxyProcess, upstream: Recorder, method: str, answer: bytes, status: int, body: bytes
) -> None:
    """A small answer goes to the client written whole: the upstream's fields in their case and
    order, one Content-Length (the upstream's spelling, none for a 304), no hop-by-hop field of
    the upstream's, and the connection stays usable for the next request."""
    upstream.handler = by_method(**{method: reply(answer)}, default=reply())
    with Conn(proxy.external) as conn:
        conn.sendall(build(method, "/whole"))
        got = conn.read_response(head_request=method == "HEAD")
        conn.sendall(build("GET", "/after"))
        after = conn.read_response()
    assert (got.status, got.body) == (status, body)
    names = [name for name, _ in got.headers]
    if status == 304:
        assert got.values("content-length") == []
        assert got.values("etag") == [b'"v1"']
    else:
        assert got.head.startswith(b"HTTP/1.1 200 Fine\r\n")
        assert b"X-Upstream-Case" in names
        assert b"content-LENGTH" in names
        assert got.values("content-length") == [b"5"]
        assert names.index(b"X-Upstream-Case") < names.index(b"content-LENGTH")
        assert names.index(b"content-LENGTH") < names.index(b"Cache-Control")
    assert got.values("keep-alive") == []
    assert [v.lower() for v in got.values("connection")] in ([], [b"keep-alive"])
    # The same connection serves the next request (a GET: this answer again, or the default).
    assert (after.status, after.body) == ((status, body) if method == "GET" else (200, b"ok"))
    assert upstream.connections == 1


# --- downloads ------------------------------------------------------------------------------------
def chunked_download(body: bytes, sizes: list[int]) -> Handler:
    """Answer `body` chunked (chunks sized by `sizes` in turn, one with an extension), with a
    trailer field; the connection stays open."""

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n")
        at, turn = 0, 0
        while at < len(body):
            piece = body[at : at + sizes[turn % len(sizes)]]
            extension = b";name=value" if turn == 1 else b""
            writer.write(b"%x%s\r\n%s\r\n" % (len(piece), extension, piece))
            await writer.drain()
            at += len(piece)
            turn += 1
        writer.write(b"0\r\nX-Sum: 1\r\n\r\n")
        await writer.drain()
        return True

    return handle


def length_download(body: bytes) -> Handler:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        writer.write(head)
        for at in range(0, len(body), 300_001):
            writer.write(body[at : at + 300_001])
            await writer.drain()
        return True

    return handle


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda body: chunked_download(body, [1, 17, 4096, 65_539, 300_000, MiB])),
        pytest.param(length_download),
    ],
    ids=["chunked", "content-length"],
)
def test_a_streamed_download_arrives_byte_exact(
    proxy: ProxyProcess, upstream: Recorder, make: Callable[[bytes], Handler]
) -> None:
    body = pattern(6 * MiB + 3, 14)
    upstream.handler = per_connection(make(body), reply())
    with Conn(proxy.external, timeout=30) as conn:
        conn.sendall(build("GET", "/download.bin"))
        answer = conn.read_response()
        conn.sendall(build("GET", "/after"))
        after = conn.read_response()
    assert answer.status == 200
    assert answer.complete
    assert len(answer.body) == len(body)
    assert answer.body == body
    assert (after.status, after.body) == (200, b"ok")
    assert upstream.connections == 1  # the download's end was found: the connection was reused


# --- upstream fields of routes.yaml ---------------------------------------------------------------
@contextlib.contextmanager
def tuned(proxy: ProxyProcess, table: Table, fields: str) -> Iterator[Recorder]:
    """What the `upstream` fixture does, the upstream served with routes.yaml fields of its own
    (`timeout: 1s, max_connections: 1`): a recorder of its own as a new table version."""
    with recorder() as up:
        table.upstreams = {"main": up.url}
        table.version += 1
        plain = f'{{url: "{up.url}"}}'
        text = table.text()
        assert plain in text
        temporary = table.path.with_suffix(".tmp")
        temporary.write_text(text.replace(plain, f'{{url: "{up.url}", {fields}}}'))
        temporary.replace(table.path)
        wait_until(
            lambda: proxy.readyz()["table_version"] == table.version,
            what=f"version {table.version} served",
        )
        yield up


# --- a slow upload --------------------------------------------------------------------------------
def test_an_upload_slower_than_the_timeout_gets_the_upstreams_answer(
    proxy: ProxyProcess, table: Table
) -> None:
    """The upstream's `timeout` (1 s) is the time it may stay silent once it has the whole
    request (nginx's proxy_read_timeout, aiohttp's sock_read): an upload that takes the client
    3 s, which the upstream reads as it comes, is no silent upstream. It streams (400 KiB, over
    the proxy's 64 KiB buffer), so the upstream is contacted before its end."""
    size, pieces = 400 * KiB, 20
    body = pattern(size, 20)
    step = size // pieces
    with tuned(proxy, table, "timeout: 1s") as upstream:
        upstream.handler = sink()
        with Conn(proxy.external, timeout=30) as conn:
            conn.sendall(build("POST", "/upload", [("Content-Length", str(size))]))
            for at in range(0, size, step):
                try:
                    conn.sendall(body[at : at + step])
                except OSError:  # the proxy answered and closed: the answer says why
                    break
                time.sleep(0.15)
            answer = conn.read_response()
    assert (answer.status, answer.body) == (200, b"%d" % size), (answer.head, answer.body[:300])
    seen = upstream.only()
    assert (seen.complete, seen.body_size) == (True, size)


# --- trailer fields -------------------------------------------------------------------------------
TRAILED_BODY = b"hello, trailers"
TRAILED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
    b"Trailer: X-Trailer, Set-Cookie\r\n\r\n"
)
TRAILED_CHUNKS = b"5\r\nhello\r\n2\r\n, \r\n8\r\ntrailers\r\n"
TRAILER_FIELDS = b"X-Trailer: leaked\r\nSet-Cookie: from=trailer\r\n"


@pytest.mark.parametrize("apart", [False, True], ids=["one-write", "apart"])
@pytest.mark.parametrize(
    "trailer",
    [
        pytest.param(TRAILER_FIELDS, id="fields"),
        pytest.param(TRAILER_FIELDS + b"Content-Length: 2\r\n", id="content-length"),
    ],
)
def test_trailer_fields_never_become_header_fields(
    proxy: ProxyProcess, upstream: Recorder, trailer: bytes, apart: bool
) -> None:
    """RFC 9110 §6.5.1: a trailer field is no header field. Written at once with the head, they
    are parsed before the head goes on; apart, after it. Either way they come after the body, as
    trailers, without the Set-Cookie no trailer may carry (on the engine: uvicorn has no
    trailers to give). A `Content-Length` among them frames nothing (framing is no trailer's to
    give; llhttp refuses it): the chunked body still arrives whole, without the section."""
    last = b"0\r\n" + trailer + b"\r\n"
    parts = (
        (TRAILED_HEAD, TRAILED_CHUNKS, last) if apart else (TRAILED_HEAD + TRAILED_CHUNKS + last,)
    )
    upstream.handler = per_connection(trickle(*parts, then_close=False), reply())
    with Conn(proxy.external) as conn:
        conn.sendall(build("GET", "/trailed"))
        answer = conn.read_response()
        assert answer.status == 200, answer.head
        assert answer.values("x-trailer") == [], answer.head
        assert answer.values("set-cookie") == [], answer.head
        assert answer.value("content-length") in (None, b"%d" % len(TRAILED_BODY)), answer.head
        assert (answer.complete, answer.body) == (True, TRAILED_BODY)
        framed = b"content-length" in trailer.lower()
        if os.environ.get("STRANGLER_TEST_ENGINE", "h1") == "h1":
            assert answer.trailers == ([] if framed else [(b"X-Trailer", b"leaked")])
        conn.sendall(build("GET", "/after"))
        after = conn.read_response()
    # llhttp refuses a Content-Length among trailers: the proxy ends the answer there and does
    # not reuse that upstream connection, so the next GET meets the trailers again, on a new one.
    assert (after.status, after.complete) == (200, True)
    assert after.body == (TRAILED_BODY if framed else b"ok")
    assert upstream.connections == (2 if framed else 1)


# --- an answer that begins before the upload ends -------------------------------------------------
async def count_while_answering(seen: Seen, reader: Reader, writer: Writer) -> bool:
    """Send the 200 head at once, then read the upload as it comes (giving up after 2 s
    without a byte), then end the chunked body with how much was read: an upload's progress
    or an echo endpoint."""
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    await writer.drain()
    expected = seen.content_length or 0
    with contextlib.suppress(TimeoutError):
        while seen.body_size < expected:
            data = await asyncio.wait_for(reader.read(min(expected - seen.body_size, MiB)), 2)
            if not data:
                break
            seen.body_size += len(data)
    count = b"read %d of %d" % (seen.body_size, expected)
    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(count), count))
    await writer.drain()
    return False


def test_an_upload_answered_200_before_its_end_still_reaches_the_upstream_whole(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """Only a refusal (3xx and above) stops an upload early: a 2xx head sent before the
    upstream reads the body is the start of an answer that wants all of it."""
    size, step = 200_000, 10_000  # over the proxy's 64 KiB buffer: it streams
    body = pattern(size, 21)
    upstream.handler = count_while_answering
    with Conn(proxy.external, timeout=30) as conn:
        conn.sendall(build("POST", "/echo", [("Content-Length", str(size))]))
        for at in range(0, size, step):  # in pieces: the head arrives while the body flows
            conn.sendall(body[at : at + step])
            time.sleep(0.02)
        answer = conn.read_response()
    assert answer.status == 200, answer.head
    assert answer.body == b"read %d of %d" % (size, size)
    assert answer.complete


async def refuse_after_reading(seen: Seen, reader: Reader, writer: Writer) -> bool:
    """Read the whole upload, then refuse it as `refuse_early` does (413, the connection kept in
    its fields, whatever comes next on it dropped)."""
    await reader.readexactly(seen.content_length or 0)
    return await refuse_early(seen, reader, writer)


def test_a_refused_streamed_upload_never_leaves_its_connection_for_the_next_request(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """The proxy may have sent an upload's last byte before the refusal reached it, though the
    upstream answered first: it cannot tell, and what that upstream reads next is unknown. So
    the refused upload's connection is not reused, even when the upstream took the whole body
    before it refused (the case made certain here): the next request gets a new one."""
    upstream.handler = by_method(POST=refuse_after_reading, default=reply())
    size = 512 * KiB  # over the proxy's 64 KiB request buffer: streamed
    answer = send(proxy.external, "POST", "/upload", body=pattern(size, 17), timeout=30)
    after = get(proxy.external, "/after")
    assert (answer.status, answer.body) == (413, TOO_LARGE_BODY), answer.head
    assert (after.status, after.body) == (200, b"ok"), (after.head, after.body[:300])
    assert upstream.connections == 2


# --- an early refusal that does not read the upload -----------------------------------------------
async def refuse_and_stop_reading(seen: Seen, reader: Reader, writer: Writer) -> bool:
    """Read nothing of the body; once the proxy has filled every buffer between them (a
    pause, not a measure), answer 413 and keep the connection open, reading nothing more."""
    await asyncio.sleep(0.5)
    writer.write(TOO_LARGE)
    await writer.drain()
    await asyncio.sleep(3600)  # the recorder's close ends it
    return False


def test_an_early_refusal_the_upstream_does_not_read_past_frees_the_pool(
    proxy: ProxyProcess, table: Table
) -> None:
    """With a single upstream connection allowed, the refused upload's connection (its write
    buffer full, the upstream reading nothing) must be let go, or every later request waits
    for a slot that never frees."""
    size = 16 * MiB  # more than the kernel's buffers on both sides hold
    block = bytes(MiB)
    fields = "max_connections: 1, connect_timeout: 1s, timeout: 2s"
    with tuned(proxy, table, fields) as upstream:
        upstream.handler = by_method(POST=refuse_and_stop_reading, default=reply())
        with Conn(proxy.external, timeout=30) as conn:
            conn.sendall(build("POST", "/upload", [("Content-Length", str(size))]))
            sending = threading.Thread(target=_send_quietly, args=(conn.sock, block * 16))
            sending.start()
            answer = conn.read_response()
            sending.join(timeout=30)
        after = get(proxy.external, "/after")
        again = get(proxy.external, "/again")
    assert (answer.status, answer.body) == (413, TOO_LARGE_BODY), answer.head
    assert (after.status, after.body) == (200, b"ok"), (after.head, after.body[:300])
    assert (again.status, again.body) == (200, b"ok"), (again.head, again.body[:300])


# --- a HEAD answer without a length ---------------------------------------------------------------
def test_a_head_answer_without_a_length_keeps_its_connection(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """A HEAD answer has no body whatever its fields say (RFC 9110 §9.3.2), so without a length
    or chunking it does not run to the close: an HTTP/1.1 answer without `Connection: close`
    keeps its connection for the next request."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    upstream.handler = by_method(HEAD=reply(head), default=reply())
    answers = []
    with Conn(proxy.external) as conn:
        for method in ("HEAD", "GET", "HEAD", "GET"):
            conn.sendall(build(method, "/doc"))
            answers.append(conn.read_response(head_request=method == "HEAD"))
    assert [(a.status, a.body) for a in answers] == [(200, b""), (200, b"ok")] * 2
    assert answers[0].value("content-type") == b"text/plain"
    assert [seen.request_line.split(b" ")[0] for seen in upstream.seen] == [
        b"HEAD",
        b"GET",
        b"HEAD",
        b"GET",
    ]
    assert upstream.connections == 1


# --- bytes after an answer while the upload streams -----------------------------------------------
INJECTED = b"HTTP/1.1 500 Oops\r\nX-Injected: yes\r\nContent-Length: 0\r\n\r\n"


async def answer_and_more_while_uploading(seen: Seen, reader: Reader, writer: Writer) -> bool:
    """Answer 200 at once, an unasked second answer glued behind it, before reading the body;
    then read and drop the rest until the proxy closes."""
    writer.write(OK + INJECTED)
    await writer.drain()
    while await reader.read(MiB):
        pass
    return False


def test_bytes_after_an_answer_during_an_upload_do_not_change_it(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """The client sends part of a 400 KiB upload (more than the proxy's buffer: it streams)
    and waits for the answer: the upstream's answer is whole before the upload ends, and the
    bytes behind it (an unasked 500) are no part of it, nor of the next request's answer."""
    upstream.handler = by_method(POST=answer_and_more_while_uploading, default=reply())
    size = 400 * KiB
    body = pattern(size, 22)
    with Conn(proxy.external, timeout=30) as conn:
        conn.sendall(build("POST", "/upload", [("Content-Length", str(size))]))
        sending = threading.Thread(target=_send_quietly, args=(conn.sock, body[: 128 * KiB]))
        sending.start()
        answer = conn.read_response()
        sending.join(timeout=30)
    after = get(proxy.external, "/after")
    assert (answer.status, answer.body) == (200, b"ok"), answer.head
    assert answer.values("x-injected") == []
    assert answer.value("content-type") == b"text/plain"
    assert (after.status, after.body) == (200, b"ok")
    assert after.values("x-injected") == []
