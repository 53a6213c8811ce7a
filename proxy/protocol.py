"""uvicorn's httptools protocol with the limits it lacks, enforced while the head is parsed:
a request head that is too slow (408, slowloris), a target that is too long (414), too many or
too large header fields (431), a target that is not origin-form (absolute-form or '*': 400),
and too many pipelined requests queued on one connection (503). Each answer is a problem+json
body and closes the connection: the rest of a refused request is never read.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy.dataplane.headers import request_id_of
from proxy.errors import problem_body, problem_headers
from proxy.settings import ProxySettings

_REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


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


class StopReading(Exception):
    """Too many pipelined requests: answer the accepted ones, then close."""


class Refused(Exception):
    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail


class HardenedProtocol(HttpToolsProtocol):
    """Configured once per worker through `configure` (uvicorn instantiates the class itself)."""

    limits: ClassVar[ProxySettings]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._raw_head = 0  # bytes received while a head is open (see data_received)
        self._stopped = False
        # When the request head now being read began (None between requests). A sweep once a
        # second refuses heads older than the limit: one timer per worker instead of a timer
        # armed and cancelled for every request.
        self._head_since: float | None = None

    # --- the request head clock -----------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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
        # a head still open after this many raw bytes is refused (memory stays bounded).
        if self._head_since is not None and self._raw_head > self._raw_limit:
            self._refuse(Refused(431, "headers-too-large", "the request head is too large"))

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
        self._head_bytes = 0
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
                f"the header fields exceed {self.limits.max_header_bytes} bytes",
            )
        super().on_header(name, value)
        if len(self.headers) > self.limits.max_headers:
            raise Refused(
                431, "headers-too-large", f"more than {self.limits.max_headers} header fields"
            )

    def on_headers_complete(self) -> None:
        self._head_since = None
        self._raw_head = 0
        if self.parser.get_method() == b"CONNECT":
            raise Refused(405, "method-not-allowed", "CONNECT is not proxied")
        if not self.url.startswith(b"/"):
            raise Refused(400, "bad-target", "only origin-form request targets are proxied")
        if len(self.pipeline) >= self.limits.max_pipelined:
            raise StopReading
        upgrade = self.parser.should_upgrade()
        if upgrade and any(n in (b"content-length", b"transfer-encoding") for n, _ in self.headers):
            # httptools treats an Upgrade request as bodiless and hands what follows to the new
            # protocol: its body would be parsed as a request of its own (smuggling).
            raise Refused(400, "bad-request", "an Upgrade request with a body is not proxied")
        super().on_headers_complete()
        if upgrade:
            self.cycle.keep_alive = False

    def _refuse(self, refused: Refused) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # An earlier (pipelined) request is still being answered: a refusal written now
            # would arrive first, out of order. Close instead; HTTP/1.1 clients retry the
            # unanswered requests on a new connection (RFC 9112 §9.3.2).
            self.transport.close()
            return
        request_id = request_id_of(self.headers or ())
        body = problem_body(refused.status, refused.kind, refused.detail, request_id)
        head = [b"HTTP/1.1 %d %s\r\n" % (refused.status, _REASONS.get(refused.status, b""))]
        head += [
            name + b": " + value + b"\r\n"
            for name, value in problem_headers(body, request_id=request_id, close=True)
        ]
        self.transport.write(b"".join(head) + b"\r\n" + body)
        self.transport.close()
