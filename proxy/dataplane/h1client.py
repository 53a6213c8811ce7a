"""Forwarding one request to one upstream over the proxy's own HTTP/1.1 client (`h1`).

One asyncio Protocol per upstream connection, httptools (llhttp) parsing the answers, a
keep-alive pool per upstream; no aiohttp on the request path. It keeps the forwarder's contract
(forward.py's `Forwarding`: `open`, `buffered`, a `reader` for `answer_client`, the same
TryFailed kinds and problem answers), so the data plane's retries, fallbacks and ejection work
unchanged on either client.

Rules, with their precedents:
- **The request as the client sent it.** `METHOD target HTTP/1.1`, the target's bytes as they
  came (origin-form, RFC 9112 §3.2.1), the prepared headers in order; nothing added but the
  framing: Content-Length when the length is known, else chunked (RFC 9112 §7.1), never both
  (§6.1). POST, PUT and PATCH without a body say `Content-Length: 0` (RFC 9110 §8.6: a user
  agent should). No cookies, redirects, decompression or environment proxies: none exists.
- **Expect.** A streamed body the data plane lets the upstream decide on goes with `Expect:
  100-continue`, and only after the upstream's `100 Continue` (or an early 2xx head: an echo
  reads on), or after EXPECT_WAIT without either (RFC 9110 §10.1.1); a refusal first (300 or
  more) means none of it is sent, and the connection is not reused (what the upstream reads
  next is unknown). The wait has a future of its own, never the upload's flow control.
- **Answers.** Interim 1xx answers are skipped (a 100 releases a waiting body);
  HEAD, 204 and 304 answers have no body (RFC 9110 §6.4.1), whatever their fields say; a body
  with neither length nor chunking ends when the upstream closes (RFC 9112 §6.3 (8)); a
  malformed head or chunk, or a Content-Length beside Transfer-Encoding, is a bad response
  (llhttp, strict). A chunked answer's trailer fields are kept apart (`Answer.trailers`) and
  passed on as trailers (headers.prepare_trailers), never as header fields; a malformed trailer
  section ends the answer without them and closes the connection.
- **Reuse.** A connection goes back to the pool only when its answer was read whole, both
  sides kept it alive (RFC 9112 §9.3, HTTP/1.0 closes by default), and the request was sent
  whole. The pool hands out the most recently used connection first (nginx's keepalive
  cache), drops idle ones after KEEPALIVE_SECONDS (below uvicorn's 5 s, so the proxy closes
  first: the stale keep-alive race) and never hands out one the upstream has closed.
- **An early answer wins.** An upstream that answers before it has read the whole body (a 413,
  a 401) gets no more of it: sending stops, so no reset destroys the answer on its way, and the
  connection is not reused (nginx does the same). Nor is one whose streamed upload was refused
  (300 or more) just after its last byte went: the answer may have been on its way before it.
- **Timeouts.** `connect` covers the wait for a pool slot and the connect; the read timeout
  runs from the request's last byte to the head and between two reads of the answer (nginx's
  proxy_read_timeout), and bounds each wait for room to send more of an upload
  (proxy_send_timeout); a try's `head_timeout` bounds the wait for the head.
- **Flow control.** A connection stops reading once READ_HIGH_WATER body bytes wait unread
  (a slow client holds that much of a download, not all of it), and a streamed request body
  waits while the upstream's write buffer is full.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Iterable

import httptools

from proxy.dataplane.forward import (
    BUFFER_BYTES,
    LIVENESS_PROBE_SECONDS,
    UPSTREAM_RCVBUF,
    Body,
    BodyIdle,
    BodyTooLarge,
    ClientGone,
    ReadSome,
    TryFailed,
    _stalled,
    _too_large,
)
from proxy.dataplane.headers import field_lines
from proxy.errors import ProxyError, UpstreamAborted
from proxy.table.compile import Upstream
from proxy.types import Scope

log = logging.getLogger("strangler")
KEEPALIVE_SECONDS = 4.0
READ_HIGH_WATER = 32_768  # unread body bytes before the connection stops reading
READ_BYTES = 262_144  # the read buffer: at most this much is read at once (the socket holds less)
MAX_HEAD_BYTES = 65_536  # an upstream's answer head (nginx: proxy_buffer_size, larger here)
MAX_HEADERS = 256
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
EXPECT_WAIT = 1.0  # seconds a body waits for the upstream's `100 Continue` before it goes anyway
_EXPECT_FIELD = b"expect: 100-continue\r\n"
_CRLF = b"\r\n"


def _unreachable() -> ProxyError:
    return ProxyError(502, "upstream-unreachable", "the upstream is unreachable")


def _connect_timeout() -> ProxyError:
    return ProxyError(504, "upstream-connect-timeout", "the upstream did not accept in time")


def _timed_out() -> ProxyError:
    return ProxyError(504, "upstream-timeout", "the upstream did not answer in time")


def _disconnected() -> ProxyError:
    return ProxyError(502, "upstream-disconnected", "the upstream closed without answering")


def _malformed() -> ProxyError:
    return ProxyError(502, "bad-upstream-response", "the upstream's answer is malformed")


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _persistent(parser: httptools.HttpResponseParser, answer: Answer) -> bool:
    """Whether a bodiless answer keeps its connection (RFC 9112 §9.3): llhttp's own answer takes
    a HEAD answer without a length for a body read to the close."""
    tokens = b",".join(v for n, v in answer.raw_headers if n.lower() == b"connection").lower()
    words = {word.strip() for word in tokens.split(b",")}
    if parser.get_http_version() == "1.0":
        return b"keep-alive" in words
    return b"close" not in words


@functools.cache
def _system_tls() -> ssl.SSLContext:
    """The system's trust store, loaded once per process."""
    return ssl.create_default_context()


def upstream_tls(
    upstream: Upstream, context: ssl.SSLContext | None = None
) -> ssl.SSLContext | None:
    """The TLS context for connections to `upstream`: None for http; `context`, else the
    system's trust store (verifying the upstream's name), for https."""
    if upstream.scheme != "https":
        return None
    return context if context is not None else _system_tls()


async def dial(
    loop: asyncio.AbstractEventLoop,
    protocol: asyncio.BaseProtocol,
    upstream: Upstream,
    tls: ssl.SSLContext | None,
) -> None:
    """Connect `protocol` to `upstream`, over TLS naming its host when `tls` is set (the
    pool's connections and the tunnels' both). Raises OSError."""
    await loop.create_connection(
        lambda: protocol,
        upstream.host,
        upstream.port,
        ssl=tls,
        server_hostname=upstream.host if tls else None,
    )


def authority(upstream: Upstream) -> bytes:
    """The Host a request to `upstream` names when the client sent none (RFC 9112 §3.2)."""
    default = (upstream.scheme == "https" and upstream.port == 443) or (
        upstream.scheme == "http" and upstream.port == 80
    )
    host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host.encode("idna").decode()
    return (host if default else f"{host}:{upstream.port}").encode("ascii")


class Answer:
    """One upstream answer: its head once `head_ready`, then its body as it arrives. The
    forwarder's `response` (forward.py's contract: `status`, `raw_headers`, `close`)."""

    __slots__ = (
        "bodiless",
        "chunks",
        "client_error",
        "conn",
        "content_length",
        "continued",
        "deadline",
        "done",
        "error",
        "failure",
        "go",
        "head_ready",
        "loop",
        "raw_headers",
        "reason",
        "status",
        "streamed",
        "trailers",
        "unread",
        "waiter",
    )

    def __init__(self, conn: Connection, bodiless: bool) -> None:
        self.conn: Connection | None = conn
        self.loop = conn.pool.loop
        self.bodiless = bodiless  # a HEAD request's answer
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []  # a chunked body's trailer section
        self.reason = b""  # the status line's reason phrase, passed on to the client
        self.content_length: int | None = None
        self.continued = True  # False: a body waits for the upstream's `100 Continue`
        self.head_ready = False
        self.chunks: deque[bytes] = deque()
        self.unread = 0
        self.done = False
        self.failure = ""  # a TryFailed kind before the head, an UpstreamAborted kind after
        self.error: ProxyError | None = None
        self.client_error: BaseException | None = None  # the request body's failure
        self.waiter: asyncio.Future[bool] | None = None
        self.deadline = 0.0  # when the wait in progress gives up (Connection.watch)
        self.streamed = False  # its request's body is streamed (sent while this is read)
        self.go: asyncio.Future[bool] | None = None  # a body waiting for the upstream's 100

    # --- fed by the connection ----------------------------------------------------------------
    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def let_go(self) -> None:
        """The wait for `100 Continue` is over (the 100, the answer, a failure came): its own
        future, never the upload's flow control (Connection.drained)."""
        self.continued = True
        go = self.go
        if go is not None and not go.done():
            go.set_result(True)

    def fail(self, kind: str, error: ProxyError) -> None:
        if self.done or self.failure:
            return
        self.failure, self.error = kind, error
        self.let_go()
        self.wake()

    # --- read by the data plane ---------------------------------------------------------------
    def wait(self, seconds: float) -> asyncio.Future[bool]:
        """A future the connection resolves with news (True), or its timer with False once
        `seconds` have passed without any. A future, not a coroutine: awaited directly, no frame
        is made and resumed for it. It stays `waiter` once done (wake and the timer skip it)."""
        loop = self.loop
        waiter: asyncio.Future[bool] = loop.create_future()
        self.waiter = waiter
        self.deadline = loop.time() + seconds
        conn = self.conn
        if conn is not None:
            conn.watch(self.deadline)  # its connection's timer: none made or cancelled per wait
        else:  # no connection to time it (rare): a timer of its own, left to fire harmlessly
            loop.call_later(seconds, _expire, waiter)
        return waiter

    async def head(self, seconds: float) -> None:
        """Wait for the head. Raises TryFailed, or the request body's own failure. The time runs
        from the request's last byte (aiohttp's and nginx's rule): a long upload being read is
        no silent upstream (the client's body timeout and the send timeout bound the upload)."""
        conn = self.conn
        assert conn is not None
        loop = self.loop
        deadline = None
        while not self.head_ready:
            if self.client_error is not None:
                raise self.client_error
            if self.failure:
                assert self.error is not None
                raise TryFailed(self.failure, self.error, conn.reused)
            if conn.sending:
                deadline = None
                await self.wait(LIVENESS_PROBE_SECONDS)  # the sender wakes it at its end
                continue
            if deadline is None:
                deadline = loop.time() + seconds
            left = deadline - loop.time()
            if left <= 0 or not await self.wait(left):
                raise TryFailed("timeout", _timed_out(), conn.reused)

    async def read_some(self, read_timeout: float, gone: asyncio.Future[None] | None) -> bytes:
        """The next body bytes, b"" at the end. Raises UpstreamAborted (cut off, stalled) or
        ClientGone (seen while waiting)."""
        waited = 0.0
        while not self.chunks:
            if self.done:
                return b""
            if self.failure:
                raise UpstreamAborted(self.failure)
            probe = min(LIVENESS_PROBE_SECONDS, read_timeout - waited)
            if not await self.wait(probe):
                waited += probe
                if gone is not None and gone.done():
                    raise ClientGone
                if waited >= read_timeout:
                    raise UpstreamAborted("upstream-timeout")
        chunk = self.chunks.popleft() if len(self.chunks) == 1 else self._take_all()
        self.unread -= len(chunk)
        conn = self.conn
        if conn is not None and conn.paused and self.unread < READ_HIGH_WATER:
            conn.resume()
        return chunk

    def _take_all(self) -> bytes:
        chunk = b"".join(self.chunks)
        self.chunks.clear()
        return chunk

    def close(self) -> None:
        """The answer is not wanted (or not wanted whole): its connection is not reused."""
        conn, self.conn = self.conn, None
        if conn is not None and conn.answer is self:
            conn.abandon()

    def release(self) -> None:
        """The data plane is done with the answer: an unfinished one closes its connection."""
        if not self.done:
            self.close()


class Connection(asyncio.BufferedProtocol):
    """One upstream connection: writes requests, parses their answers (httptools). Its bytes are
    read into the forwarder's one read buffer (uvloop's BufferedProtocol) and parsed there:
    no bytes object is made of each read (a 64 KiB answer was copied twice before it reached
    the client; llhttp's body pieces are the one copy left)."""

    __slots__ = (
        "answer",
        "body_sent",
        "closed",
        "drained",
        "fed",
        "field_bytes",
        "head_bytes",
        "idle_since",
        "in_trailers",
        "keep",
        "parser",
        "paused",
        "pool",
        "reused",
        "sending",
        "timer",
        "timer_at",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.answer: Answer | None = None
        self.closed = False
        self.paused = False
        self.keep = True
        self.body_sent = True
        self.sending = False
        self.reused = False
        self.idle_since = 0.0
        self.head_bytes = 0  # the reads' bytes since the head began: a bound of its size
        self.fed = 0  # the bytes of the read being parsed
        self.field_bytes = 0
        self.in_trailers = False
        self.drained: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # the waiting answer's (watch)
        self.timer_at = 0.0

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UPSTREAM_RCVBUF)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not a TCP socket (a test's pipe): nothing to tune
                pass

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.pool.buffer

    def buffer_updated(self, nbytes: int) -> None:
        # Parsed at once: every callback copies what it keeps, so the buffer is free again
        # when this returns (one event loop reads into it, one read at a time).
        answer = self.answer
        if answer is None:  # bytes nobody asked for: the connection cannot be trusted again
            self.keep = False
            self.close()
            return
        if not answer.head_ready:
            self.fed = nbytes
            self.head_bytes += nbytes  # a bound of the head's size (on_headers_complete)
        try:
            self.parser.feed_data(self.pool.buffer[:nbytes])
        except httptools.HttpParserUpgrade:
            answer.fail("bad-response", _malformed())  # a 101 nobody asked for
            self.close()
            return
        except httptools.HttpParserError:
            self._malformed(answer)
            return
        # A head still unfinished after MAX_HEAD_BYTES (on_headers_complete measures a finished
        # one's fields exactly, whatever the reads' sizes).
        if self.head_bytes > MAX_HEAD_BYTES and not answer.head_ready and not answer.failure:
            answer.fail("bad-response", _malformed())
            self.close()
        # Too much of the body unread: no more is read until the client takes some (read_some
        # resumes). Judged once the read is parsed: an answer that ended in it stops nothing
        # (a 64 KiB answer in one read would stop and restart the reading, two epoll changes).
        elif answer.unread >= READ_HIGH_WATER and not answer.done and not self.paused:
            transport = self.transport
            if transport is not None and not self.closed:
                self.paused = True
                transport.pause_reading()

    def _malformed(self, answer: Answer) -> None:
        if self.in_trailers and answer.head_ready and not answer.done:
            # Every chunk has arrived; a malformed trailer section (none of it passed on;
            # llhttp refuses a Content-Length there) ends the answer, not its body: the
            # connection closes.
            self.keep = False
            answer.trailers = []
            self._complete(answer)
            return
        if answer.head_ready:
            answer.fail("upstream-body-incomplete", _malformed())
        else:
            answer.fail("bad-response", _malformed())
        self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        answer = self.answer
        if answer is None or answer.done:
            return
        if not answer.head_ready:
            answer.fail("reset", _disconnected())
        elif self._delimited_by_close(answer):
            answer.done = True
            answer.wake()
        else:
            answer.fail("upstream-body-incomplete", _disconnected())

    @staticmethod
    def _delimited_by_close(answer: Answer) -> bool:
        """No length and no final chunked coding: the body ends at the close (RFC 9112 §6.3)."""
        if answer.content_length is not None:
            return False
        codings = b",".join(v for n, v in answer.raw_headers if n.lower() == b"transfer-encoding")
        return codings.rsplit(b",", 1)[-1].strip().lower() != b"chunked"

    def pause_writing(self) -> None:
        if self.drained is None or self.drained.done():
            self.drained = self.pool.loop.create_future()

    def resume_writing(self) -> None:
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # --- timing the answer's waits --------------------------------------------------------------
    def watch(self, deadline: float) -> None:
        """Time the answer's wait until `deadline` with the connection's one timer, kept from
        request to request: it is re-armed only for a deadline sooner than the armed one, and a
        wait that ends first cancels nothing (a timer made and cancelled per request is ~4 %
        of a small request's CPU). When it fires, a wait whose deadline has passed ends; one
        with a later deadline has it armed again (a connection busy with requests for a
        timeout's length sees one timer, not one per request)."""
        timer = self.timer
        if timer is None or deadline < self.timer_at:
            if timer is not None:
                timer.cancel()
            self.timer = self.pool.loop.call_at(deadline, self._timer_fired)
            self.timer_at = deadline

    def _timer_fired(self) -> None:
        self.timer = None
        answer = self.answer
        if answer is None or answer.waiter is None or answer.waiter.done():
            return  # nothing waits: the next wait arms it again
        if self.pool.loop.time() >= answer.deadline:
            _expire(answer.waiter)
        else:
            self.watch(answer.deadline)

    # --- httptools callbacks ------------------------------------------------------------------
    # Each callback checks inline that its bytes belong to an answer (bytes beyond a finished
    # answer are not one): a helper's call per header is a measurable share of the head's cost.
    def on_status(self, reason: bytes) -> None:
        answer = self.answer
        if answer is None or answer.done:
            raise httptools.HttpParserError("bytes after the answer")
        answer.reason += reason  # llhttp may hand it over in pieces
        if len(answer.reason) > MAX_HEAD_BYTES:
            raise httptools.HttpParserError("too long a reason phrase")

    def on_header(self, name: bytes, value: bytes) -> None:
        # A head's field: only appended (its limits are checked once, in on_headers_complete;
        # buffer_updated bounds the bytes held meanwhile). A field after an answer (there is
        # none to append to) fails the feed: the connection closes (_malformed).
        if self.in_trailers:
            self._trailer(name, value)
            return
        headers = self.answer.raw_headers  # type: ignore[union-attr]
        headers.append((name, value))
        if len(name) == 14 and name.lower() == b"content-length":
            length = value.strip(b" \t")  # llhttp keeps trailing blanks (RFC 9110 §5.5)
            self.answer.content_length = int(length) if length.isdigit() else None  # type: ignore[union-attr]

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A trailer field: kept apart, passed on as a trailer (forward.py), never merged into
        the header fields (RFC 9110 §6.5.1); the head and trailers share MAX_HEAD_BYTES."""
        answer = self.answer
        if answer is None or answer.done:
            raise httptools.HttpParserError("bytes after the answer")
        self.field_bytes += len(name) + len(value) + 4
        if self.field_bytes > MAX_HEAD_BYTES:
            raise httptools.HttpParserError("too long header fields")
        answer.trailers.append((name, value.rstrip(b" \t")))
        if len(answer.trailers) > MAX_HEADERS:
            raise httptools.HttpParserError("too many trailer fields")

    def on_headers_complete(self) -> None:
        answer = self.answer
        if answer is None or answer.done:
            raise httptools.HttpParserError("bytes after the answer")
        headers = answer.raw_headers
        if len(headers) > MAX_HEADERS:
            raise httptools.HttpParserError("too many header fields")
        # The reads so far bound the head's size; only a large one is measured field by field
        # (a head that arrived in one read with its body is not too long for that).
        if self.head_bytes > MAX_HEAD_BYTES:
            size = 0
            for name, value in headers:  # a plain loop: a generator costs more
                size += len(name) + len(value) + 4
            self.field_bytes = size
            if size > MAX_HEAD_BYTES:
                raise httptools.HttpParserError("too long header fields")
        parser = self.parser
        status = parser.get_status_code()
        if 100 <= status < 200:  # interim: the final answer follows on this connection
            if status == 101:
                raise httptools.HttpParserError("an upgrade nobody asked for")
            if status == 100:
                answer.let_go()  # a body waiting for it goes (_send_body)
            answer.raw_headers = []
            answer.reason = b""
            answer.content_length = None
            return
        answer.status = status
        answer.head_ready = True
        bodiless = answer.bodiless or status in (204, 304)
        if not (_persistent(parser, answer) if bodiless else parser.should_keep_alive()):
            self.keep = False
        answer.let_go()  # a final answer ends a wait for 100 too (_continue decides)
        if self.sending and status >= 300:
            self.stop_sending()  # an early refusal: no more of the body (see _send_body)
        if answer.streamed and status >= 300:
            # A refused upload: the upstream may have answered before reading all of it, and
            # whether its answer crossed the body's end cannot be told from here (it may wait
            # in the socket while the last bytes go out): what it reads next is unknown.
            self.keep = False
        if bodiless:
            self._complete(answer)
            # llhttp would wait for the body the fields announce: the next answer on this
            # connection needs a parser that starts at a head.
            self.parser = httptools.HttpResponseParser(self)
            return
        answer.wake()

    def on_chunk_header(self) -> None:
        self.in_trailers = True  # until a body byte: the last chunk (size 0) has none

    def on_body(self, body: bytes) -> None:
        self.in_trailers = False
        answer = self.answer
        if answer is None or answer.done:  # a body after a HEAD answer: not to be trusted
            self.close()
            return
        answer.chunks.append(body)
        answer.unread += len(body)  # too much unread stops the reading (buffer_updated)
        answer.wake()

    def on_message_complete(self) -> None:
        answer = self.answer
        if answer is None or not answer.head_ready:
            if answer is not None:  # the next head began in this read at the earliest
                self.head_bytes, self.field_bytes = self.fed, 0
            return  # an interim answer ended
        if not answer.done:
            if not self.parser.should_keep_alive():
                # `Connection: close` in a trailer section: llhttp takes it so, and would
                # refuse the next answer's bytes as data after the close.
                self.keep = False
            self._complete(answer)

    def _complete(self, answer: Answer) -> None:
        """The answer is all here: it no longer needs its connection, which goes back to the
        pool (or closes) unless a request body is still being sent (`_send_body` decides)."""
        answer.done = True
        answer.conn = None
        answer.wake()
        if not self.sending:
            self.finish()

    def finish(self) -> None:
        self.answer = None
        if self.keep and self.body_sent and not self.closed:
            if self.paused:
                self.resume()
            self.pool.put_back(self)
        else:
            self.close()

    # --- used by the pool and the forwarder ---------------------------------------------------
    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def usable(self, now: float) -> bool:
        return (
            not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
            and now - self.idle_since < KEEPALIVE_SECONDS
        )

    def start(self, bodiless: bool) -> Answer:
        self.answer = answer = Answer(self, bodiless)
        self.head_bytes = self.field_bytes = 0
        self.in_trailers = False
        self.keep = True
        return answer

    def abandon(self) -> None:
        """The answer's reader left before its end: the connection cannot be reused."""
        self.answer = None
        self.close()

    def close(self) -> None:
        """Close now; with bytes still unsent (an upload the upstream stopped reading), abort,
        or the close would wait for them for ever."""
        self.keep = False
        transport = self.transport
        if transport is not None and not self.closed:
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()
        self.closed = True
        self.stop_sending()
        if self.answer is not None:
            self.answer.let_go()
        self.pool.forget(self)

    def stop_sending(self) -> None:
        """Wake a request body waiting for the upstream to read (it stops there)."""
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def drain(self, seconds: float) -> bool:
        """Wait while the upstream's write buffer is full; False after `seconds` without room
        (nginx's proxy_send_timeout)."""
        drained = self.drained
        if drained is None or drained.done():
            return True
        try:
            async with asyncio.timeout(seconds):
                await drained
        except TimeoutError:
            return False
        return True


class Pool:
    """One upstream's connections: idle ones (most recently used first), how many are open,
    and the tries waiting for a slot when `limit` are open."""

    __slots__ = (
        "active",
        "authority",
        "buffer",
        "idle",
        "limit",
        "loop",
        "open",
        "retired",
        "sweeping",
        "upstream",
        "waiting",
    )

    def __init__(self, upstream: Upstream, buffer: memoryview) -> None:
        # The worker's loop, looked up once: on Python 3.11 each asyncio.get_running_loop()
        # is a getpid() system call (its fork check), five a request before this.
        self.loop = asyncio.get_running_loop()
        # Where its connections' reads land (Connection.get_buffer): the forwarder's one.
        self.buffer = buffer
        self.upstream = upstream
        self.limit = upstream.max_connections
        self.authority = authority(upstream)
        self.idle: list[Connection] = []
        self.open: set[Connection] = set()
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.active = 0  # requests using this pool (a retired pool closes at 0)
        self.retired = False
        self.sweeping: asyncio.TimerHandle | None = None

    async def connection(
        self, ssl_context: ssl.SSLContext | None, connect_timeout: float, fresh: bool
    ) -> Connection:
        """A new connection within the connect timeout, or an idle one (`reused`) freed while
        this waited for a slot; the caller has taken an idle one already if there was one
        (Forwarder.open: the common case, with no coroutine, timer or wait)."""
        try:
            async with asyncio.timeout(connect_timeout):
                while self.limit and len(self.open) >= self.limit:
                    if fresh and self.idle:
                        self.idle[0].close()  # room for the new connection: drop the oldest
                        continue
                    await self._slot()
                    if not fresh and (conn := self.idle_one()) is not None:
                        return conn
                return await self._connect(ssl_context)
        except TimeoutError:
            raise TryFailed("connect-failure", _connect_timeout(), False) from None
        except OSError as exc:
            log.warning("upstream %s unreachable: %s", self.upstream.name, exc)
            raise TryFailed("connect-failure", _unreachable(), False) from None

    def idle_one(self) -> Connection | None:
        """The most recently used usable idle connection, if any (`reused`)."""
        now = self.loop.time()
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.usable(now):
                conn.reused = True
                return conn
            conn.close()
        return None

    async def _slot(self) -> None:
        waiter = self.loop.create_future()
        self.waiting.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake_one()  # woken, then timed out or cancelled: pass the turn on
            else:
                waiter.cancel()
            raise

    async def _connect(self, ssl_context: ssl.SSLContext | None) -> Connection:
        conn = Connection(self)
        self.open.add(conn)
        try:
            await dial(self.loop, conn, self.upstream, ssl_context)
        except BaseException:
            self.forget(conn)
            raise
        return conn

    def put_back(self, conn: Connection) -> None:
        if self.retired or conn.closed:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self.waiting:
            self._wake_one()
        if self.sweeping is None:
            self.sweeping = self.loop.call_later(KEEPALIVE_SECONDS, self._sweep)

    def forget(self, conn: Connection) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self._wake_one()
        if conn in self.idle:
            self.idle.remove(conn)

    def _wake_one(self) -> None:
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close the connections idle longer than KEEPALIVE_SECONDS."""
        self.sweeping = None
        now = self.loop.time()
        for conn in [c for c in self.idle if not c.usable(now)]:
            conn.close()
        if self.idle:
            oldest = min(c.idle_since for c in self.idle)
            delay = max(0.05, oldest + KEEPALIVE_SECONDS - now)
            self.sweeping = self.loop.call_later(delay, self._sweep)

    def close(self) -> None:
        if self.sweeping is not None:
            self.sweeping.cancel()
            self.sweeping = None
        for conn in list(self.idle):
            conn.close()


def _request_head(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], framing: bytes
) -> bytes:
    fields = field_lines(headers)
    return b"".join((method, b" ", target, b" HTTP/1.1\r\n", fields, framing, _CRLF))


def _framing(
    method: bytes,
    headers: list[tuple[bytes, bytes]],
    body: Body,
    authority: bytes,
    known: tuple[bool, bool] | None = None,
) -> tuple[bytes, bool]:
    """The fields the request needs beyond its headers, and whether its body is chunked: the
    framing, and a Host when the client sent none (an HTTP/1.0 client; RFC 9112 §3.2: a
    HTTP/1.1 request must have one), naming the upstream. `known`: (has Host, has
    Content-Length) as the caller already knows them, else the headers are searched."""
    if known is not None:
        has_host, has_length = known
    else:
        has_length = has_host = False
        for name, _ in headers:
            if len(name) == 14 and name.lower() == b"content-length":
                has_length = True
            elif len(name) == 4 and name.lower() == b"host":
                has_host = True
    framing, chunked = _length(method, body, has_length)
    return (framing if has_host else b"host: " + authority + _CRLF + framing), chunked


def _length(method: bytes, body: Body, has_length: bool) -> tuple[bytes, bool]:
    if callable(body):
        return (b"", False) if has_length else (b"transfer-encoding: chunked\r\n", True)
    if has_length:
        return b"", False
    if body:
        return b"content-length: %d\r\n" % len(body), False
    return (b"content-length: 0\r\n" if method in _BODY_METHODS else b""), False


def _refused(answer: Answer) -> bool:
    """The upstream answered before the body's end with a final refusal, or answered whole."""
    return answer.done or (answer.head_ready and answer.status >= 300)


async def _continue(conn: Connection, answer: Answer) -> bool:
    """Whether the body goes, for a request sent with `Expect: 100-continue`: the upstream said
    100, or answered 2xx early (an echo reads on), or said nothing for EXPECT_WAIT (RFC 9110
    §10.1.1: a client must not wait for ever; curl waits 1 s); not when it refused first (a
    final status of 300 or more, or its whole answer), failed, or closed."""
    if not (answer.continued or answer.head_ready or answer.failure or conn.closed):
        go = answer.go = answer.loop.create_future()
        handle = answer.loop.call_later(EXPECT_WAIT, _expire, go)
        try:
            await go
        finally:
            handle.cancel()
            answer.go = None
            answer.continued = True  # a 100 coming later changes nothing
    return not (_refused(answer) or answer.failure or conn.closed)


async def _send_body(
    conn: Connection,
    answer: Answer,
    stream: AsyncIterator[bytes],
    chunked: bool,
    send_timeout: float,
) -> None:
    """Stream the request body to the upstream, with flow control, until it ends, or until
    the upstream refuses it early (then no more is sent: a reset would destroy the refusal on
    its way; nginx does the same). An early 2xx head (an upload's progress, an echo) keeps
    the body flowing. The connection is not reused when its answer began before the body
    ended. A request that expects `100 Continue` (`answer.continued` False) sends nothing
    before it (`_continue`): its client's body is not even read."""
    transport = conn.transport
    assert transport is not None
    try:
        if not answer.continued and not await _continue(conn, answer):
            conn.keep = False  # the upstream answered without the body: the rest is unknown
            return
        async for chunk in stream:
            if _refused(answer) or conn.closed:
                conn.keep = False
                return
            if chunk:
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if not await conn.drain(send_timeout):
                kind = "upstream-timeout" if answer.head_ready else "timeout"
                answer.fail(kind, _timed_out())
                conn.close()
                return
        if _refused(answer) or conn.closed:
            conn.keep = False
            return
        if chunked:
            transport.write(b"0\r\n\r\n")
        conn.body_sent = True
        if answer.head_ready:
            conn.keep = False
    except (ClientGone, BodyTooLarge, BodyIdle) as exc:
        answer.client_error = (
            exc
            if isinstance(exc, ClientGone)
            else _too_large()
            if isinstance(exc, BodyTooLarge)
            else _stalled()
        )
        conn.close()
    finally:
        conn.sending = False
        answer.wake()  # the wait for the head counts from here
        if answer.done and conn.answer is answer:
            conn.finish()


class Forwarder:
    """One pool per upstream, per worker; retired pools close when their last request ends."""

    strict = True  # llhttp refuses control characters in values and non-token names

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._pools: dict[tuple[str, int], Pool] = {}
        self._retired: set[Pool] = set()
        self._senders: set[asyncio.Task[None]] = set()
        self._tls = tls  # for https upstreams; None: the system's trust store (upstream_tls)
        self._buffer = memoryview(bytearray(READ_BYTES))  # every upstream read lands here

    def pool(self, upstream: Upstream) -> Pool:
        key = (upstream.url, upstream.max_connections)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(upstream, self._buffer)
        return pool

    def enter(self, upstream: Upstream) -> Pool:
        pool = self.pool(upstream)
        pool.active += 1
        return pool

    def leave(self, pool: Pool) -> None:
        pool.active -= 1
        if pool.retired and pool.active == 0:
            self._retired.discard(pool)
            pool.close()

    @property
    def open_sessions(self) -> int:
        return len(self._pools) + len(self._retired)

    def retire_unused(self, upstreams: Iterable[Upstream]) -> None:
        keep = {(u.url, u.max_connections) for u in upstreams}
        for key in [k for k in self._pools if k not in keep]:
            pool = self._pools.pop(key)
            pool.retired = True
            if pool.active == 0:
                pool.close()
            else:
                self._retired.add(pool)

    async def close(self) -> None:
        pools = [*self._pools.values(), *self._retired]
        self._pools, self._retired = {}, set()
        for pool in pools:
            pool.retired = True  # a connection still answering closes when it ends
            pool.close()
        for task in list(self._senders):
            task.cancel()

    async def open(
        self,
        pool: Pool,
        upstream: Upstream,
        scope: Scope,
        headers: list[tuple[bytes, bytes]],
        body: Body,
        *,
        read_timeout: float,
        head_timeout: float | None = None,
        fresh: bool = False,
        expect: bool = False,
        framed: tuple[bool, bool] | None = None,
    ) -> Answer:
        """Send the request and wait for the answer's head. Raises TryFailed (the upstream
        failed), ClientGone or a ProxyError about the client's body. `expect`: a streamed body
        is sent with `Expect: 100-continue` and only after the upstream's 100 (_continue).
        `framed`: whether `headers` has a Host and a Content-Length, if known."""
        method = scope["method"].encode("ascii")
        target = scope["raw_path"]
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        framing, chunked = _framing(method, headers, body, pool.authority, known=framed)
        expect = expect and callable(body)
        if expect:
            framing += _EXPECT_FIELD
        head = _request_head(method, target, headers, framing)
        wait = read_timeout if head_timeout is None else min(read_timeout, head_timeout)
        loop = pool.loop
        deadline = loop.time() + (head_timeout or 0.0)
        # The usual case, a kept connection, takes no coroutine of its own (pool.connection).
        conn = None if fresh else pool.idle_one()
        if conn is None:
            conn = await self._connection(pool, upstream, fresh, head_timeout)
        answer = conn.start(method == b"HEAD")
        answer.continued = not expect
        if fresh:  # a re-send after a stale pooled connection: its connection is not kept
            conn.keep = False
        transport = conn.transport
        assert transport is not None
        if conn.closed or transport.is_closing():  # closed while it was being opened
            conn.close()
            raise TryFailed("reset", _disconnected(), conn.reused)
        if callable(body):
            conn.body_sent, conn.sending = False, True
            answer.streamed = True
            transport.write(head)
            task = loop.create_task(_send_body(conn, answer, body(), chunked, read_timeout))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        else:
            if body:
                transport.writelines((head, body))
            else:
                transport.write(head)
        if head_timeout is not None:
            wait = max(0.0, min(wait, deadline - loop.time()))
        try:
            if not (answer.head_ready or answer.failure or conn.sending):
                # The usual case: one wait on the answer's future, no coroutine of its own.
                until = loop.time() + wait
                if not await answer.wait(wait):
                    raise TryFailed("timeout", _timed_out(), conn.reused)
                wait = max(0.0, until - loop.time())
            if not answer.head_ready:
                await answer.head(wait)  # a failure, a streamed body, or an early wake
        except BaseException:
            answer.close()
            raise
        return answer

    async def _connection(
        self, pool: Pool, upstream: Upstream, fresh: bool, head_timeout: float | None
    ) -> Connection:
        timeout = upstream.connect_timeout
        if head_timeout is not None:
            timeout = min(timeout, head_timeout)
        try:
            conn = await pool.connection(upstream_tls(upstream, self._tls), timeout, fresh)
        except TryFailed as failed:
            shorter = head_timeout is not None and head_timeout <= upstream.connect_timeout
            if shorter and failed.error.kind == "upstream-connect-timeout":
                raise TryFailed("timeout", _timed_out(), False) from None
            raise
        return conn

    async def buffered(self, response: Answer, scope: Scope, read_timeout: float) -> bytes | None:
        """A small answer's whole body (see forward.py's `buffered`), or None to stream it."""
        if response.bodiless or response.status in (204, 304):
            return b""
        length = response.content_length
        if length is None or length > BUFFER_BYTES:
            return None
        if response.done and len(response.chunks) <= 1:
            whole = response.chunks.popleft() if response.chunks else b""
            response.unread = 0
            return whole
        parts = []
        try:
            while chunk := await response.read_some(read_timeout, None):
                parts.append(chunk)
        except UpstreamAborted as exc:
            response.close()
            if exc.kind == "upstream-timeout":
                raise TryFailed("timeout", _timed_out(), False) from None
            error = ProxyError(502, exc.kind, "the upstream's answer was cut off")
            raise TryFailed("reset", error, False) from None
        return b"".join(parts)

    @staticmethod
    def reader(response: Answer) -> ReadSome:
        """How `answer_client` (forward.py) reads this client's answer body."""
        return response.read_some
