"""uvicorn's httptools protocol with the limits it lacks, enforced while the head is parsed:
a request head that is too slow (408, slowloris), a target that is too long (414), too many or
too large header fields (431), a target that is not origin-form (absolute-form or '*': 400),
a transfer coding it cannot frame (400) or forward (501, RFC 9112 §6.1), and too many pipelined
requests queued on one connection (the connection closes after the accepted ones). Each answer
is a problem+json body and closes the connection: the rest of a refused request is never read.

Framing rules beyond the head:
- Trailer fields of a chunked request are discarded, never merged into the header fields
  (RFC 9110 §6.5.1); their size counts against the header limit (431).
- A request whose body framing is malformed (a bad chunk size) is answered 400 if its response
  has not started; the application then sees the client as gone. After the start, the
  connection is closed (a truncated answer never looks complete).
- A refusal never overtakes the answers to earlier pipelined requests: it is written once they
  are complete, in order, then the connection closes (RFC 9112 §9.3.2).

On a TLS connection every request's scope carries the ASGI TLS extension (see tls.py), computed
once when the connection is made (a plain connection pays one test of an attribute per request).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from proxy.dataplane.headers import ALLOW, request_id_of, transfer_coding_problem
from proxy.h1server import WRITE_BUFFER_HIGH, Refused, refusal
from proxy.h1server import StopReading as StopReading
from proxy.settings import ProxySettings
from proxy.tls import TLSExtension, connection_tls


class _Sweeper:
    """Once a second, refuses the request heads that have taken longer than the limit."""

    INTERVAL = 1.0
    _running: ClassVar[set[int]] = set()

    @classmethod
    def watch(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        if id(connections) in cls._running:
            return
        cls._running.add(id(connections))

        def sweep() -> None:
            if not connections:
                cls._running.discard(id(connections))
                return
            now = loop.time()
            for protocol in list(connections):
                if isinstance(protocol, HardenedProtocol):
                    protocol._head_too_slow(now)
            loop.call_later(cls.INTERVAL, sweep)

        loop.call_later(cls.INTERVAL, sweep)


class HardenedProtocol(HttpToolsProtocol):
    """Configured once per worker through `configure` (uvicorn instantiates the class itself)."""

    limits: ClassVar[ProxySettings]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._raw_head = 0  # bytes received while a head is open (see data_received)
        self._stopped = False
        self._in_body = False  # past the head: header fields now are trailer fields
        # From a chunk-size line until its data begins: after the last chunk's line, the trailer
        # section; httptools grows an unfinished trailer field as it does a header one.
        self._chunk_head = False
        self._raw_trailer = 0
        # The cycle whose application runs (uvicorn's `cycle` is the last one parsed).
        self._running: RequestResponseCycle | None = None
        # A refusal written once the earlier pipelined requests are answered.
        self._deferred: bytes | None = None
        # When the request head now being read began (None between requests). A sweep once a
        # second refuses heads older than the limit: one timer per worker instead of a timer
        # armed and cancelled for every request.
        self._head_since: float | None = None
        self._tls: TLSExtension | None = None  # the ASGI TLS extension, on TLS connections

    # --- the request head clock -----------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.scheme == "https":
            self._tls = connection_tls(transport)
        # A streamed answer waits for the client to drain this much before the next upstream
        # read (uvloop's own low-water mark is 16 bytes: a paused writer waited for the whole
        # buffer): what a slow reader holds stays bounded (see dataplane/forward.py).
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self._head_since = self.loop.time()  # a connection that never sends a head is timed too
        _Sweeper.watch(self.loop, self.connections)

    def _head_too_slow(self, now: float) -> None:
        if self._head_since is not None and now - self._head_since > self.limits.header_timeout:
            self._refuse(Refused(408, "request-timeout", "the request head took too long"))

    # --- parser callbacks -------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return  # past the pipelining limit: nothing more is read on this connection
        self._unset_keepalive_if_required()
        if self._head_since is not None:
            self._raw_head += len(data)  # reset by on_headers_complete if the head ends here
        if self._chunk_head:
            self._raw_trailer += len(data)  # reset when chunk data or the message's end comes
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An Upgrade request (no body, see on_headers_complete) was handed to the app, which
            # forwards it as a plain request; the parser stops at it, so anything after it on
            # this connection is not read: the connection closes after that answer.
            pass
        except httptools.HttpParserError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, StopReading):
                self._close_after_answers()
            elif isinstance(cause, Refused):
                self._refuse(cause)
            else:
                self._refuse(Refused(400, "bad-request", "the request is not valid HTTP/1.1"))
            return
        # httptools grows an unfinished header value without bound before on_header runs:
        # a head (or trailer section) still open after this many raw bytes is refused (memory
        # stays bounded).
        if self._head_since is not None and self._raw_head > self._raw_limit:
            self._refuse(Refused(431, "headers-too-large", "the request head is too large"))
        elif self._chunk_head and self._raw_trailer > self._raw_limit:
            self._refuse(Refused(431, "headers-too-large", "the trailer section is too large"))

    @property
    def _raw_limit(self) -> int:
        return self.limits.max_uri_bytes + self.limits.max_header_bytes + 1024

    def _close_after_answers(self) -> None:
        """Read no more; answer what was accepted, then close (the pipelining limit)."""
        self._stopped = True
        self.flow.pause_reading()
        last = self.pipeline[0][0] if self.pipeline else self.cycle
        if last is None or last.response_complete:
            self.transport.close()
        else:
            last.keep_alive = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": self._tls}  # type: ignore[dict-item]
        self._head_bytes = 0
        self._in_body = self._chunk_head = False
        if self._head_since is None:
            self._head_since = self.loop.time()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_uri_bytes:
            raise Refused(
                414, "uri-too-long", f"the request target exceeds {self.limits.max_uri_bytes} bytes"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.limits.max_header_bytes:
            raise Refused(
                431,
                "headers-too-large",
                f"the {'trailer' if self._in_body else 'header'} fields exceed "
                f"{self.limits.max_header_bytes} bytes",
            )
        if self._in_body:
            # A trailer field. uvicorn would append it to the list that is already the
            # request's header fields (scope["headers"]): an `Authorization` sent as a trailer
            # would reach the upstream as a header. Trailers are discarded (RFC 9110 §6.5.1).
            return
        super().on_header(name, value)
        if len(self.headers) > self.limits.max_headers:
            raise Refused(
                431, "headers-too-large", f"more than {self.limits.max_headers} header fields"
            )

    def on_headers_complete(self) -> None:
        self._head_since = None
        self._raw_head = 0
        if self.parser.get_method() == b"CONNECT":
            raise Refused(405, "method-not-allowed", "CONNECT is not proxied", [(b"allow", ALLOW)])
        if not self.url.startswith(b"/"):
            raise Refused(400, "bad-target", "only origin-form request targets are proxied")
        codings = [value for name, value in self.headers if name == b"transfer-encoding"]
        if codings and (problem := transfer_coding_problem(codings)) is not None:
            # Refused before the application starts: the parser itself rejects a final coding
            # other than chunked only after this callback, when the request is already handed on.
            raise Refused(problem.status, problem.kind, str(problem))
        if len(self.pipeline) >= self.limits.max_pipelined:
            raise StopReading
        upgrade = self.parser.should_upgrade()
        if upgrade and any(n in (b"content-length", b"transfer-encoding") for n, _ in self.headers):
            # httptools treats an Upgrade request as bodiless and hands what follows to the new
            # protocol: its body would be parsed as a request of its own (smuggling).
            raise Refused(400, "bad-request", "an Upgrade request with a body is not proxied")
        super().on_headers_complete()
        self._in_body = True
        self._head_bytes = 0  # from here on, the trailer section's size
        if upgrade:
            self.cycle.keep_alive = False

    def on_chunk_header(self) -> None:
        self._chunk_head = True
        self._raw_trailer = 0

    def on_body(self, body: bytes) -> None:
        self._chunk_head = False
        super().on_body(body)

    def on_chunk_complete(self) -> None:
        self._chunk_head = False

    # --- answers ----------------------------------------------------------------------------
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        last = not self.pipeline
        super().on_response_complete()  # starts the next pipelined request, if any
        if last and self._deferred is not None and not self.transport.is_closing():
            # Every request before the refused one is answered (and none asked to close).
            self.transport.write(self._deferred)
            self.transport.close()

    def _refuse(self, refused: Refused) -> None:
        if self.transport.is_closing() or self._deferred is not None:
            return
        request_id = request_id_of(self.headers or ())
        answer = refusal(refused, request_id)
        cycle: RequestResponseCycle | None = self.cycle
        if cycle is not None and not cycle.response_complete and cycle.more_body:
            # The malformed part is in the body of the last request parsed.
            if self.pipeline and self.pipeline[0][0] is cycle:
                # A queued pipelined request: it never runs; the refusal waits for the others.
                self.pipeline.popleft()
                previous = self.pipeline[0][0] if self.pipeline else self._running
                if previous is not None:
                    self.cycle = cycle = previous
            elif cycle.response_started:
                self.transport.close()  # its answer cannot be finished
                return
            else:
                # The request being answered: answered here. The application's receive() now
                # says the client is gone, and whatever it sends is not written; the scope says
                # what the client was answered instead.
                cycle.disconnected = True
                cycle.message_event.set()
                cycle.scope.setdefault("extensions", {})["strangler.refused"] = {
                    "status": refused.status,
                    "kind": refused.kind,
                    "request_id": request_id,
                }
                cycle = None
        if cycle is not None and not cycle.response_complete:
            # An earlier (pipelined) request is still being answered: a refusal written now
            # would arrive first, out of order. It is written after the last answer.
            self._deferred = answer
            self._stopped = True
            self._head_since = None
            self.flow.pause_reading()
            return
        self.transport.write(answer)
        self.transport.close()
