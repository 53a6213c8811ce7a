"""The proxy's own HTTP/1.1 server side: one asyncio Protocol per client
connection on uvloop, llhttp (httptools) parsing the requests, the application called through
ASGI's three arguments (scope, receive, send) without uvicorn's request cycle. It keeps every
limit of uvicorn's protocol, which it replaced, and adds what that one could not say:

Heads
- A request head that is too slow (408, slowloris: a sweep once a second, one timer per worker,
  never one per request), a target that is too long (414), too many or too large header fields
  (431, counted as they arrive, so an oversized head in one read is refused too), a target that
  is not origin-form (400), CONNECT (405), a transfer coding that cannot be framed (400) or
  forwarded (501, RFC 9112 §6.1), an Upgrade with a body (400) are each a problem+json answer
  that closes the connection: the rest of a refused request is never read.
- Header names keep the case the client sent: `scope["headers"]` is lower-cased as ASGI
  requires, and `scope["extensions"]["strangler.names"]` lists the names as sent, in the same
  order, for the data plane to forward them so (nginx and HAProxy keep the case too).
- An HTTP/1.0 request without Host is served (RFC 9112 §3.2 asks Host of HTTP/1.1 only).

Bodies
- Content-Length and chunked requests; a request's trailer fields are discarded, never merged
  into the header fields (RFC 9110 §6.5.1: an `Authorization` trailer must not authenticate),
  and count against the header limit (431). They are not forwarded either: an upstream that
  merges trailers into its headers (uvicorn does) would be handed fields the proxy strips or
  checks (X-Consumer-Id, a route's API key), past its checks (nginx drops them too).
- `Expect: 100-continue` (HTTP/1.1 only): `100 Continue` is written when the application first
  reads the body, so a request refused on its head (401, 413 by its Content-Length) never has
  its body sent (RFC 9110 §10.1.1). The field is taken off the headers; the scope says it came
  (`strangler.continue`), so the data plane can ask the upstream and read the body only once
  the upstream has said 100 (end to end).
- Flow control both ways: reading pauses while more than READ_HIGH_WATER body bytes wait for
  the application, and resumes when it reads; send() waits while the client's write buffer is
  above its high-water mark, so a slow reader holds a bounded amount.
- A malformed body (a bad chunk size) is answered 400 if the answer has not started; the
  application then sees the client as gone and the scope says what it was answered
  (`strangler.refused`). After the start, the connection is closed (a truncated answer never
  looks complete).

Answers
- The status line carries the application's reason phrase (`"reason"` in the start message:
  the upstream's own), else the standard one.
- Framing is the engine's: a Content-Length answer is sent as is (a body longer or shorter
  than it closes the connection), an answer without one is chunked to an HTTP/1.1 client and
  delimited by the close to an HTTP/1.0 one; HEAD, 1xx, 204 and 304 answers carry no body.
- Trailer fields: the engine offers ASGI's `http.response.trailers`; a chunked answer started
  with `"trailers": True` ends with the fields of the `http.response.trailers` message in its
  trailer section (RFC 9112 §7.1.2), after the last chunk. An answer framed otherwise (a
  length, an HTTP/1.0 client) has nowhere to carry them: they are dropped.
  Header values with CR, LF or NUL are refused (the application answers 502 before that),
  unless the start message says they were checked (`strangler.checked`: the data plane's
  upstream parser refuses them, so they are not scanned twice).
- The head is written with the first body bytes (one write for a whole answer); an empty
  body message with more to come flushes it, so a streamed answer's head is never held.

Connections
- Pipelined requests are answered in order, one at a time; the next one's head is parsed when
  it arrives but its application starts only once the previous answer is complete, and
  reading pauses meanwhile (at most `max_pipelined` wait). A refusal never overtakes the
  answers to earlier requests: it is written after them, then the connection closes
  (RFC 9112 §9.3.2).
- Keep-alive: HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection:
  keep-alive`. An idle connection closes after `keepalive_timeout` (the same sweep).
- An Upgrade request offers the application `strangler.upgrade`: on a route that allows
  tunnels, the data plane (dataplane/tunnel.py) makes the connection one end of a tunnel once
  the upstream has switched protocols; the bytes the client sent after its head go first.
  Otherwise it is answered as a plain request and the connection closes after the answer
  (nothing after the head is read). A tunnel idle too long closes (the same sweep).
- Graceful stop: `shutdown()` closes idle connections at once and the others after their
  current answer; the server waits for the running requests (uvicorn's Server drives it).
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
import urllib.parse
from collections import deque
from collections.abc import Iterable, MutableMapping
from functools import partial
from typing import Any, ClassVar, cast

import httptools

from proxy.dataplane.headers import (
    ALLOW,
    field_lines,
    request_id_of,
    transfer_coding_problem,
)
from proxy.dataplane.tunnel import Tunnel
from proxy.errors import ResponseAborted, problem_body, problem_headers
from proxy.settings import ProxySettings
from proxy.tls import connection_tls
from proxy.types import ANSWER, BODY, CHECKED, CONTINUE, TRAILERS, ASGIApp

log = logging.getLogger("strangler")

READ_HIGH_WATER = 65_536  # request body bytes held for the application before reading pauses
LINGER_SECONDS = 5.0  # nginx's lingering_timeout
# A streamed answer waits for the client to drain this much before the next upstream read
# (uvloop's own low-water mark is 16 bytes): what a slow reader holds stays bounded.
WRITE_BUFFER_HIGH = 16_384
_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in http.HTTPStatus
}
_BODILESS = frozenset({204, 304})
_REASON_LINES: dict[tuple[int, bytes], bytes] = {}  # (status, reason) → its status line
_REASON_LINES_KEPT = 1024  # beyond this many pairs, a line is made per answer
_CLOSE_FIELD = b"connection: close\r\n"
_KEEP_FIELD = b"connection: keep-alive\r\n"
_CHUNKED_FIELD = b"transfer-encoding: chunked\r\n"
_DISCONNECT = {"type": "http.disconnect"}
# `b"x" in data` raises and clears a TypeError inside CPython 3.11 (bytes.__contains__ first
# tries its argument as an integer): ~2,000 instructions a test, so the hot path uses find(),
# partition() and compiled patterns instead.
_UNSAFE_VALUE = re.compile(rb"[\r\n\x00]").search
_OFFERED: dict[str, Any] = {}  # an extension the engine offers (nothing to configure)
_ASGI = {"version": "3.0", "spec_version": "2.3"}  # the same for every scope: shared


def _reason_line(status: int, reason: bytes) -> bytes:
    line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    if len(_REASON_LINES) < _REASON_LINES_KEPT:
        _REASON_LINES[status, reason] = line
    return line


class Refused(Exception):
    """A request the engine answers itself, with a problem+json, and closes on."""

    def __init__(
        self, status: int, kind: str, detail: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail
        self.headers = headers or []


class StopReading(Exception):
    """Too many pipelined requests: answer the accepted ones, then close."""


class _Sweeper:
    """Once a second: refuses request heads older than the header timeout (408) and closes
    keep-alive connections idle longer than the keep-alive timeout. One timer per worker."""

    INTERVAL = 1.0

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        self.loop, self.connections, self.running = loop, connections, False

    def watch(self) -> None:
        if not self.running:
            self.running = True
            self.loop.call_later(self.INTERVAL, self._sweep)

    def _sweep(self) -> None:
        if not self.connections:
            self.running = False
            return
        now = self.loop.time()
        for connection in list(self.connections):
            if isinstance(connection, H1Connection):
                connection.check_clock(now)
        self.loop.call_later(self.INTERVAL, self._sweep)


class Exchange:
    """One request and its answer: the ASGI receive() and send() of the application."""

    __slots__ = (
        "all_given",
        "body",
        "chunked",
        "complete",
        "connection",
        "continue_expected",
        "gone",
        "head_only",
        "keep_alive",
        "more_body",
        "pending_head",
        "remaining",
        "scope",
        "started",
        "trailers",
        "until_close",
        "waiter",
    )

    def __init__(
        self, connection: H1Connection, scope: dict[str, Any], keep_alive: bool, expect: bool
    ) -> None:
        self.connection = connection
        self.scope = scope
        self.body = bytearray()
        self.more_body = True
        self.all_given = False
        self.waiter: asyncio.Future[None] | None = None
        self.continue_expected = expect
        self.keep_alive = keep_alive
        self.head_only = scope["method"] == "HEAD"
        self.started = self.complete = self.gone = False
        self.pending_head: bytes | None = None
        self.chunked = self.until_close = False
        self.remaining = 0  # body bytes still due under a Content-Length
        self.trailers = False  # a chunked answer's end waits for its trailer fields

    # --- the request body ---------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > READ_HIGH_WATER:
            self.connection.pause_reading()
        self.wake()

    def end(self) -> None:
        self.more_body = False
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> dict[str, Any]:
        connection = self.connection
        if self.continue_expected:
            self.continue_expected = False
            if not self.started and self.more_body and not connection.closing:
                connection.transport.write(_CONTINUE)
        while not (self.gone or self.complete):
            if not self.all_given and (self.body or not self.more_body):
                more = self.more_body
                return {"type": "http.request", "body": self._give(), "more_body": more}
            connection.resume_reading()
            self.waiter = connection.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return _DISCONNECT

    def take_body(self, limit: int) -> bytes | None:
        """The whole body at once when it has all arrived, none of it was given and it is at
        most `limit` bytes (see H1Connection.take_body); else None."""
        if self.more_body or self.all_given or self.gone or len(self.body) > limit:
            return None
        self.continue_expected = False  # the body is here: no `100 Continue` is due
        return self._give()

    def _give(self) -> bytes:
        """The body bytes buffered so far, handed to the application; once the body has ended,
        it has all been given (receive() then waits for the end)."""
        body = bytes(self.body)
        self.body.clear()
        self.all_given = not self.more_body
        self.connection.resume_reading()
        return body

    # --- the answer ---------------------------------------------------------------------------
    async def send(self, message: MutableMapping[str, Any]) -> None:
        connection = self.connection
        if connection.write_paused and not self.gone:
            await connection.drain()
        if self.gone:
            return  # the client left: what the application still sends goes nowhere
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("the answer has started already")
            self.pending_head = self._head(
                message["status"],
                message.get("headers", ()),
                message.get("reason"),
                CHECKED not in message,
                bool(message.get("trailers")),
            )
            self.started = True
            self.continue_expected = False
        elif kind == "http.response.body":
            if not self.started or self.complete:
                raise RuntimeError("a body message outside an answer")
            self._body(message.get("body", b""), message.get("more_body", False))
        elif kind == "http.response.trailers":
            if not self.started:
                raise RuntimeError("trailer fields before the answer")
            if self.trailers and not self.complete:
                self._trailers(message.get("headers", ()))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def write_whole(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        reason: bytes,
        body: bytes,
        checked: bool,
        framed: bool = False,
    ) -> bool:
        """A whole answer in one call (see H1Connection.write_whole)."""
        if self.connection.write_paused or self.gone or self.started:
            return False
        length = len(body) if framed else None
        self.pending_head = self._head(status, headers, reason, not checked, False, length)
        self.started = True
        self.continue_expected = False
        self._body(body, False)
        return True

    def _head(
        self,
        status: int,
        headers: Iterable[tuple[bytes, bytes]],
        reason: bytes | None,
        scan: bool,
        trailers: bool,
        framed: int | None = None,
    ) -> bytes:
        """The status line and fields, with the engine's framing (see the module rules).
        `framed`: the length of a whole answer whose fields hold its one Content-Length and
        no Transfer-Encoding or Connection (the data plane's word: they are written as they
        are, not searched)."""
        if reason:  # the upstream's: a few pairs recur, made once each
            line = _REASON_LINES.get((status, reason)) or _reason_line(status, reason)
        else:
            line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
        parts = [line]
        length: int | None = framed
        chunked = close = False
        if framed is not None:
            parts.append(field_lines(cast("list[tuple[bytes, bytes]]", headers)))  # write_whole's
            headers = ()
        for name, value in headers:
            if scan and _UNSAFE_VALUE(value) is not None:
                raise RuntimeError("a response header value with CR, LF or NUL")
            size = len(name)
            if size == 14 and name.lower() == b"content-length":
                length = int(value)
            elif size == 17 and name.lower() == b"transfer-encoding":
                chunked = value.lower() == b"chunked"
                if not chunked:
                    raise RuntimeError("a transfer coding the engine does not frame")
                continue  # the engine's own field below
            elif size == 10 and name.lower() == b"connection":
                if value.lower().find(b"close") >= 0:
                    close = True
                continue  # the engine says it below
            parts += (name, b": ", value, _CRLF)
        if close or (self.continue_expected and self.more_body):
            # Refused before `100 Continue`: the client may or may not send the body now, so
            # what follows on the connection cannot be framed (RFC 9110 §10.1.1).
            self.keep_alive = False
        if self.head_only or status in _BODILESS or status < 200:
            self.head_only = True
        elif length is not None and not chunked:
            self.remaining = length
        elif self.scope["http_version"] == "1.1":
            self.chunked = True
            self.trailers = trailers
            parts.append(_CHUNKED_FIELD)
        else:
            self.until_close, self.keep_alive = True, False  # an HTTP/1.0 client, no length
        if not self.keep_alive:
            parts.append(_CLOSE_FIELD)
        elif self.scope["http_version"] == "1.0":
            parts.append(_KEEP_FIELD)
        parts.append(_CRLF)
        return b"".join(parts)

    def _trailers(self, fields: Any) -> None:
        """The last chunk and the trailer section (RFC 9112 §7.1.2), then the answer is done."""
        if self.connection.closing:
            return
        pieces = [b"0\r\n"]
        for name, value in fields:
            if _UNSAFE_VALUE(value) is not None:
                raise RuntimeError("a trailer field value with CR, LF or NUL")
            pieces += (name, b": ", value, _CRLF)
        pieces.append(_CRLF)
        self.connection.transport.writelines(pieces)
        self.complete = True
        self.wake()
        self.connection.answered(self)

    def _body(self, body: bytes, more: bool) -> None:
        if self.connection.closing:
            return
        head, self.pending_head = self.pending_head, None
        # One write (writev) of the pieces, none of them copied into another.
        pieces: list[bytes] = [] if head is None else [head]
        if self.head_only:
            pass
        elif self.chunked:
            if body:
                pieces += (b"%x\r\n" % len(body), body, _CRLF)
            if not more and self.trailers:
                more = True  # the last chunk goes with the trailer section (_trailers)
            elif not more:
                pieces.append(_LAST_CHUNK)
        elif body:
            pieces.append(body)
            if not self.until_close:
                self.remaining -= len(body)
                if self.remaining < 0:
                    self.connection.abort_answer(self, head, b"")
                    return
        if not more and self.remaining:  # only an answer with a length has bytes still due
            self.connection.abort_answer(self, head, body)
            return
        if len(pieces) == 1:
            self.connection.transport.write(pieces[0])
        elif pieces:
            self.connection.transport.writelines(pieces)
        if not more:
            self.complete = True
            self.wake()
            self.connection.answered(self)


class H1Connection(asyncio.Protocol):
    """One client connection. uvicorn's Server makes one per accepted socket (the
    `http_protocol_class` contract: config, server_state, app_state) and drives shutdown."""

    limits: ClassVar[ProxySettings]
    _sweepers: ClassVar[dict[int, _Sweeper]] = {}

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app: ASGIApp = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.connections: set[Any] = server_state.connections
        self.tasks: set[asyncio.Task[None]] = server_state.tasks
        self.app_state = app_state
        # The class's limits, read per request from the instance: an attribute of the class
        # read through an instance takes CPython 3.11's generic (unspecialised) lookup.
        self.bounds = self.limits
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"
        self.tls: dict[str, Any] | None = None
        self.closing = False
        self.tunnel: Tunnel | None = None  # an upgraded connection's tunnel
        self._write_whole = self.write_whole  # one bound method for every request's scope
        self._take_body = self.take_body
        self.early = b""  # bytes after an Upgrade head, for its tunnel
        self.client_eof = False
        self.linger_until = 0.0  # a closing connection's deadline for the client's FIN
        self.pending_at_deadline = 1 << 62  # bytes left to write at its last deadline
        self.read_paused = self.write_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.running: Exchange | None = None  # the exchange whose application runs
        # One task per connection runs the application for each request in turn (_serve): a
        # task per request costs ~2 % of a small request's CPU (its creation, registration and
        # end); the worker waits on `waiting` while the connection is idle.
        self.worker: asyncio.Task[None] | None = None
        self.ready: Exchange | None = None  # started while the worker still ran the last one
        self.waiting: asyncio.Future[Exchange | None] | None = None
        self.queue: deque[Exchange] = deque()  # pipelined, parsed, waiting for their turn
        self.parsing: Exchange | None = None  # the exchange whose request is being parsed
        self.stopped = False  # nothing more is read (a refusal, the pipelining limit)
        self.deferred: bytes | None = None  # a refusal written after the earlier answers
        self.head_since: float | None = None  # when the head being read began
        self.idle_since: float | None = None  # when the connection last became idle
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._names: list[bytes] = []
        self._codings: tuple[bytes, ...] = ()  # the head's Transfer-Encoding values (rare)
        self._head_bytes = 0
        self._raw_head = 0  # bytes received while a head is open
        self._raw_trailer = 0
        self._chunk_head = False
        self._in_body = False
        self._expect = False

    # --- the connection -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)  # type: ignore[attr-defined]
        self.server = _address(transport.get_extra_info("sockname"))
        self.client = _address(transport.get_extra_info("peername"))
        pick = getattr(self.app, "app_for", None)  # the Router: its listener's app, once
        if pick is not None:
            self.app = pick(self.server[1] if self.server else None) or self.app
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
            self.tls = {"tls": connection_tls(transport)}
        self.head_since = self.loop.time()  # a connection that never sends a head is timed too
        sweeper = self._sweepers.get(id(self.loop))
        if sweeper is None or sweeper.loop is not self.loop:
            sweeper = self._sweepers[id(self.loop)] = _Sweeper(self.loop, self.connections)
        sweeper.watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        self.closing = True
        if self.tunnel is not None:
            self.tunnel.close("client")
        for exchange in (self.running, *self.queue, self.parsing):
            if exchange is not None and not exchange.complete:
                exchange.gone = True
                exchange.wake()
        self.queue.clear()
        self._wake_writer()
        self._release_worker(None)

    def eof_received(self) -> bool | None:
        """The client has sent all it will. The requests it sent whole are still answered
        (a half-closed client reads on), then the connection closes; a request cut short is
        dropped, and if it is the one being answered, its client is gone."""
        self.client_eof = True
        self.head_since = None  # a head cut short is no slow head: no 408 for it
        self.stopped = True
        parsing = self.parsing
        if parsing is not None and not parsing.complete:
            if parsing is self.running:
                self.closing = True
                return None  # its body can never be whole: the transport closes itself
            if parsing in self.queue:
                self.queue.remove(parsing)  # it never runs
            self.parsing = None
        if self.closing or (self.running is None and not self.queue):
            self.closing = True
            return None
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.client_full(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.client_full(False)
        self._wake_writer()

    def _wake_writer(self) -> None:
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def drain(self) -> None:
        if self.drained is None:
            self.drained = self.loop.create_future()
        await asyncio.shield(self.drained)

    def pause_reading(self) -> None:
        if not self.read_paused and not self.closing:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and not self.stopped and not self.queue and not self.closing:
            self.read_paused = False
            self.transport.resume_reading()

    def close(self, linger: bool = True) -> None:
        """Close after what is written. While the client may still be sending (the rest of
        a refused request, a body after an early answer), its bytes are read and dropped for
        up to LINGER_SECONDS after a FIN: a close with unread bytes would reset the
        connection and could destroy the answer before the client reads it (nginx's
        lingering_close). Whatever the way, a connection still open LINGER_SECONDS later is
        seen to by the sweep (_closing_overdue)."""
        if self.closing:
            return
        self.closing = True
        self.linger_until = self.loop.time() + LINGER_SECONDS
        transport = self.transport
        unread = self.parsing is not None or self.stopped or self._raw_head
        if not (linger and unread) or self.client_eof or not transport.can_write_eof():
            transport.close()  # at a message boundary: nothing of the client's is lost
            return
        transport.write_eof()
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()

    def shutdown(self) -> None:
        """A graceful stop: idle connections close now (a head begun gets no answer: nothing
        to linger for), busy ones after their answer."""
        running = self.running
        if self.tunnel is not None:
            self.tunnel.close("shutdown")  # its client reconnects, to another replica
        elif running is None or running.complete:
            self.close(linger=False)
        else:
            running.keep_alive = False
            self.queue.clear()

    def _closing_overdue(self, now: float) -> None:
        """A closing connection past its deadline: closed if all is written; while its client
        still takes what is left to write, given the send timeout again; else aborted (it
        reads nothing: it must not hold the connection for ever)."""
        pending = self.transport.get_write_buffer_size()
        if not pending:
            self.transport.close()
        elif pending < self.pending_at_deadline:
            self.pending_at_deadline = pending
            self.linger_until = now + self.limits.send_timeout
        else:
            self.transport.abort()

    def check_clock(self, now: float) -> None:
        """The sweep: a head too slow is refused, a connection idle too long closed."""
        limits = self.limits
        if self.tunnel is not None:
            if self.tunnel.idle(now):
                self.tunnel.close("idle")
        elif self.closing:
            if now > self.linger_until:
                self._closing_overdue(now)
        elif self.head_since is not None and now - self.head_since > limits.header_timeout:
            self._refuse(Refused(408, "request-timeout", "the request head took too long"))
        elif self.idle_since is not None and now - self.idle_since > limits.keepalive_timeout:
            self.close()

    # --- reading ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self.stopped or self.closing:
            return  # lingering, or past a refusal: dropped
        if self.head_since is not None:
            self._raw_head += len(data)
        if self._chunk_head:
            self._raw_trailer += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # An Upgrade request (bodiless, see on_headers_complete): the parser stops there.
            # What follows is the new protocol's, kept for a tunnel (dataplane/tunnel.py);
            # without one the request goes on as a plain one and nothing more is read.
            self.stopped = True
            self.early = data[upgrade.args[0] :]
            self.pause_reading()
            return
        except httptools.HttpParserError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, StopReading):
                self._stop_after_answers()
            elif isinstance(cause, Refused):
                self._refuse(cause)
            else:
                self._refuse(Refused(400, "bad-request", "the request is not valid HTTP/1.1"))
            return
        # llhttp grows an unfinished field without bound before on_header runs: a head (or
        # trailer section) still open after this many raw bytes is refused.
        limit = self.bounds.max_uri_bytes + self.bounds.max_header_bytes + 1024
        if self.head_since is not None and self._raw_head > limit:
            self._refuse(Refused(431, "headers-too-large", "the request head is too large"))
        elif self._chunk_head and self._raw_trailer > limit:
            self._refuse(Refused(431, "headers-too-large", "the trailer section is too large"))

    def on_message_begin(self) -> None:
        self.idle_since = None
        self._url = b""
        self._headers = []
        self._names = []
        self._codings = ()
        self._head_bytes = 0
        self._in_body = self._chunk_head = self._expect = False
        if self.head_since is None:
            self.head_since = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.bounds.max_uri_bytes:
            raise Refused(
                414, "uri-too-long", f"the request target exceeds {self.bounds.max_uri_bytes} bytes"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._head_bytes + len(name) + len(value) + 4
        self._head_bytes = size
        if self._in_body or size > self.bounds.max_header_bytes:
            self._unusual_field(size)  # a trailer field (discarded), or too many bytes
            return
        lower = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing blanks (RFC 9110 §5.5)
        if lower == b"expect" and value.lower() == b"100-continue":
            self._expect = True
            return  # the engine's to answer, not the upstream's
        if lower == b"transfer-encoding":
            self._codings += (value,)
        self._headers.append((lower, value))
        self._names.append(name)  # their count is checked once the head is complete

    def _unusual_field(self, size: int) -> None:
        """A trailer field is discarded, never a header field (RFC 9110 §6.5.1); fields over
        the size limit, in the head or the trailer section, are refused."""
        limit = self.bounds.max_header_bytes
        if size > limit:
            where = "trailer" if self._in_body else "header"
            raise Refused(431, "headers-too-large", f"the {where} fields exceed {limit} bytes")

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.head_since = None
        self._raw_head = 0
        if len(self._headers) > self.bounds.max_headers:
            raise Refused(
                431, "headers-too-large", f"more than {self.bounds.max_headers} header fields"
            )
        method = parser.get_method()
        if method == b"CONNECT":
            raise Refused(405, "method-not-allowed", "CONNECT is not proxied", [(b"allow", ALLOW)])
        url = self._url
        if not url.startswith(b"/"):
            raise Refused(400, "bad-target", "only origin-form request targets are proxied")
        headers = self._headers
        codings = self._codings
        if codings and (problem := transfer_coding_problem(codings)) is not None:
            raise Refused(problem.status, problem.kind, str(problem))
        if len(self.queue) >= self.bounds.max_pipelined:
            raise StopReading
        upgrade = parser.should_upgrade()
        if upgrade and any(n in (b"content-length", b"transfer-encoding") for n, _ in headers):
            # llhttp hands what follows an Upgrade head to the new protocol: a body would be
            # parsed as a request of its own (smuggling).
            raise Refused(400, "bad-request", "an Upgrade request with a body is not proxied")
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise Refused(400, "bad-request", f"HTTP/{version} is not served")
        exchange = Exchange(
            self,
            self._scope(method, url, version),
            # An HTTP/1.0 message with Transfer-Encoding closes its connection: a 1.0 hop
            # before the proxy may have framed it otherwise (RFC 9112 §6.1).
            keep_alive=parser.should_keep_alive()
            and not upgrade
            and not (codings and version == "1.0"),
            expect=self._expect and version == "1.1",
        )
        if upgrade:
            exchange.scope["extensions"]["strangler.upgrade"] = partial(self._attach, exchange)
        if exchange.continue_expected:  # the data plane may let the upstream decide on the 100
            exchange.scope["extensions"][CONTINUE] = _OFFERED
        self.parsing = exchange
        self._in_body = True
        self._head_bytes = 0  # from here on, the trailer section's size
        if self.running is None:
            self._start(exchange)
        else:
            self.queue.append(exchange)
            self.pause_reading()

    def write_whole(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        reason: bytes,
        body: bytes,
        checked: bool,
        framed: bool = False,
    ) -> bool:
        """`strangler.answer`: the running request's whole answer in one call (the data plane's
        buffered answers), the work of its start and body messages without them. False when
        it must go through send(): the client's buffer is full (send() waits for it to
        drain), the client has gone, or the answer has started. A method of the connection,
        not of the exchange: the scope holding it makes no cycle that outlives the request.
        `checked`: no value holds CR, LF or NUL; `framed`: the fields hold one Content-Length,
        the body's, and no Transfer-Encoding or Connection (they are not searched)."""
        running = self.running
        return running is not None and running.write_whole(
            status, headers, reason, body, checked, framed
        )

    def take_body(self, limit: int) -> bytes | None:
        """`strangler.body`: the running request's whole body, when all of it has arrived, none
        was read with receive() and it is at most `limit` bytes: the data plane reads a small
        body so, without a receive() message or a timer for it. None: read it with receive().
        A method of the connection, as write_whole is."""
        running = self.running
        return None if running is None else running.take_body(limit)

    def _scope(self, method: bytes, url: bytes, version: str) -> dict[str, Any]:
        path, _, query = url.partition(b"?")
        if query.find(b"#") >= 0:
            query = query.partition(b"#")[0]
        text = path.decode("latin-1")
        extensions: dict[str, Any] = {
            "strangler.names": self._names,
            TRAILERS: _OFFERED,
            ANSWER: self._write_whole,
            BODY: self._take_body,
        }
        if self.tls is not None:
            extensions.update(self.tls)
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": version,
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,
            "method": method.decode("ascii"),
            "root_path": "",
            "path": urllib.parse.unquote(text) if "%" in text else text,
            "raw_path": path,
            "query_string": query,
            "headers": self._headers,
            "extensions": extensions,
        }
        if self.app_state:  # ASGI's lifespan state, a copy per request (none: no key)
            scope["state"] = self.app_state.copy()
        return scope

    def on_chunk_header(self) -> None:
        self._chunk_head = True
        self._raw_trailer = 0

    def on_chunk_complete(self) -> None:
        self._chunk_head = False

    def on_body(self, body: bytes) -> None:
        self._chunk_head = False
        exchange = self.parsing
        if exchange is not None and not exchange.complete and not exchange.gone:
            exchange.feed(body)

    def on_message_complete(self) -> None:
        self._chunk_head = False
        exchange, self.parsing = self.parsing, None
        if exchange is not None:
            exchange.end()

    # --- running the application ---------------------------------------------------------------
    def _start(self, exchange: Exchange) -> None:
        self.running = exchange
        if self.worker is None:
            task = self.worker = self.loop.create_task(self._serve(exchange))
            self.tasks.add(task)  # uvicorn's graceful stop waits for it
            task.add_done_callback(self._worker_ended)
        elif not self._release_worker(exchange):
            self.ready = exchange  # the worker takes it when the last one's application returns

    def _release_worker(self, exchange: Exchange | None) -> bool:
        """Hand the idle worker its next exchange (None: the connection is gone, it ends)."""
        waiting, self.waiting = self.waiting, None
        if waiting is None or waiting.done():
            return False
        waiting.set_result(exchange)
        return True

    async def _serve(self, exchange: Exchange | None) -> None:
        """The connection's worker: the application runs for each exchange in turn, until the
        connection closes (a failure is handled here, in the loop: a coroutine more per
        request costs ~1k instructions)."""
        while exchange is not None:
            try:
                await self.app(exchange.scope, exchange.receive, exchange.send)
            except asyncio.CancelledError:
                self._unfinished(exchange)
                raise
            except ResponseAborted as exc:
                log.warning("response aborted mid-way (%s): client connection closed", exc.kind)
                self._unfinished(exchange)
            except Exception:
                log.exception("the application failed on a request")
                if not (exchange.started or exchange.gone):
                    await self._internal_error(exchange)
                self._unfinished(exchange)
            else:
                if not (exchange.started or exchange.gone):
                    log.error("the application returned without answering")
                    await self._internal_error(exchange)
                self._unfinished(exchange)
            exchange, self.ready = self.ready, None
            if exchange is None and not self.closing:
                self.waiting = self.loop.create_future()
                exchange = await self.waiting

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.worker is task:
            self.worker = None
        if self.ready is not None:  # cancelled (a forced stop) with a request still to run
            self.ready = None
            self.close()

    def _unfinished(self, exchange: Exchange) -> None:
        """An answer the application left unfinished cannot be finished: the connection
        closes (a cut answer never looks whole)."""
        if not exchange.complete:
            exchange.gone = True
            self.close()

    async def _internal_error(self, exchange: Exchange) -> None:
        body = problem_body(500, "internal-error", "the proxy failed on this request")
        exchange.keep_alive = False
        await exchange.send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": problem_headers(body, close=True),
            }
        )
        await exchange.send({"type": "http.response.body", "body": body})

    def answered(self, exchange: Exchange) -> None:
        """An answer is complete: close, or go on with the next pipelined request."""
        if not exchange.keep_alive or self.closing:
            self.close()
            return
        # An answer before the body's end (an early refusal): the rest is read and dropped by
        # the parser (on_body), as the next message's framing depends on it.
        self.running = None
        if self.queue:
            self._start(self.queue.popleft())
            self.resume_reading()
        elif self.deferred is not None:
            self.transport.write(self.deferred)
            self.close()
        elif self.client_eof:
            self.close()  # a half-closed client has had every answer it asked for
        else:
            # Idle from now (a body still arriving after an early answer is timed too, so a
            # stalled one cannot hold the connection).
            self.idle_since = self.loop.time()
            self.resume_reading()

    def abort_answer(self, exchange: Exchange, head: bytes | None, data: bytes) -> None:
        """A body that does not match its Content-Length: what fits is written, then the
        connection closes (the client sees a cut answer, never a wrong one)."""
        if head is not None:
            self.transport.write(head)
        if data:
            self.transport.write(data)
        exchange.complete = exchange.gone = True
        log.warning("an answer's body did not match its Content-Length: connection closed")
        self.close()

    def _attach(self, exchange: Exchange, tunnel: Tunnel, head: bytes) -> None:
        """The `strangler.upgrade` extension: the upstream switched protocols, so this
        connection becomes one end of `tunnel`; `head` is the 101 answer for the client."""
        if self.closing:
            tunnel.close("client")
            return
        exchange.started = exchange.complete = True
        self.running = None
        self.tunnel = tunnel
        early, self.early = self.early, b""
        tunnel.attach(self.transport, head, early)
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    # --- refusals -----------------------------------------------------------------------------
    def _stop_after_answers(self) -> None:
        """Read no more; answer what was accepted, then close (the pipelining limit)."""
        self.stopped = True
        self.pause_reading()
        last = self.queue[-1] if self.queue else self.running
        if last is None or last.complete:
            self.close()
        else:
            last.keep_alive = False

    def _refuse(self, refused: Refused) -> None:
        if self.closing or self.deferred is not None:
            return
        self.head_since = None
        request_id = request_id_of(self._headers)
        answer = refusal(refused, request_id)
        exchange = self.parsing
        if exchange is not None and not exchange.complete and exchange.more_body:
            # The malformed part is in the body of the last request parsed.
            self.parsing = None
            if exchange is not self.running:
                self.queue.remove(exchange)  # queued: it never runs; refused after the others
            elif exchange.started:
                self.close()  # its answer cannot be finished
                return
            else:
                # Answered here: the application's receive() says the client is gone, what it
                # still sends is not written, and the scope says what the client was told.
                exchange.gone = True
                exchange.wake()
                exchange.scope["extensions"]["strangler.refused"] = {
                    "status": refused.status,
                    "kind": refused.kind,
                    "request_id": request_id,
                }
                self.running = None
        self.stopped = True
        self.pause_reading()
        running = self.running
        if (running is not None and not running.complete) or self.queue:
            self.deferred = answer  # written once the earlier answers are complete, in order
            return
        self.transport.write(answer)
        self.close()


def _address(value: Any) -> tuple[str, int] | None:
    return (str(value[0]), int(value[1])) if isinstance(value, tuple) else None


def refusal(refused: Refused, request_id: str) -> bytes:
    """The refusal's bytes: a problem+json answer that closes the connection."""
    body = problem_body(refused.status, refused.kind, refused.detail, request_id)
    fields = problem_headers(body, request_id=request_id, close=True) + refused.headers
    head = [_STATUS_LINES[refused.status]]
    head += [name + b": " + value + _CRLF for name, value in fields]
    return b"".join(head) + _CRLF + body
