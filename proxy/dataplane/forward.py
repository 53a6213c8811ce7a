"""Forwarding one request to one upstream over aiohttp, streaming both ways.

Settings follow the verified traps of aiohttp 3.14 (see the project's forwarding notes):
no cookie jar (one user's Set-Cookie would reach others), no automatic headers, no redirects,
no environment proxies, no decompression, the client's target bytes sent as they came
(`URL.build(..., encoded=True)`), response headers from `raw_headers`, and a request body
generator that *raises* when the client goes away (returning would let aiohttp reuse a
half-written connection). This is the only module that sees aiohttp's exceptions; it turns them
into TryFailed (no response head: the data plane decides whether to try again, see plan.py),
ProxyError (the client's body) or UpstreamAborted (after the response started).

Request bodies up to a bound are read whole first (`read_body`), so a slow upload holds no
upstream connection and a retry can send the same bytes again; larger bodies stream once.
aiohttp's own silent re-send is switched off: every repeat is the data plane's decision.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from yarl import URL

from proxy.dataplane.headers import headers_sendable, prepare_response, prepare_trailers
from proxy.errors import ClientTooSlow, ProxyError, UpstreamAborted
from proxy.table.compile import Upstream
from proxy.types import CHECKED, Receive, Scope, Send

log = logging.getLogger("strangler")
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# Upstream answers may carry more and longer headers than aiohttp's defaults (8190 B, 128 lines);
# the proxy's own request limits are nginx's large_client_header_buffers scale, so match them.
MAX_FIELD_SIZE = 16_384
MAX_HEADERS = 256
# Below uvicorn's default keep-alive (5 s), so the proxy drops an idle connection before the
# upstream does (the stale keep-alive race).
KEEPALIVE_SECONDS = 4.0
# Answers up to this size (by Content-Length) are read whole before the client is written to.
BUFFER_BYTES = 65_536
# While a response body stalls, how often the upstream connection is checked for life.
LIVENESS_PROBE_SECONDS = 1.0
# What one streamed answer may hold in memory while its client reads slowly or not at all
# (measured: 2.3 MB per stalled client before these, about 230 KiB after; nginx holds its
# proxy_buffers, 8 of 4k or 8k, and spills the rest to disk). aiohttp pauses the upstream
# socket once more than twice READ_BUFSIZE waits unread (its default, 256 KiB, let 768,000
# bytes pile up); the upstream socket's receive buffer bounds what one read returns (uvloop
# reads up to 256,000 bytes at once); the client side's write buffer is capped by the engine
# (h1server.py's WRITE_BUFFER_HIGH).
# A 64 KiB receive buffer keeps a big download's speed (32 KiB made 10 MiB answers 2.5-4 times
# slower on loopback).
READ_BUFSIZE = 16_384
UPSTREAM_RCVBUF = 65_536
_NOTHING_MORE = {"type": "http.response.body", "body": b"", "more_body": True}


class Deadline:
    """`asyncio.timeout(seconds)` on a loop the caller knows: asyncio's own looks the running
    loop up three times, and on Python 3.11 each lookup is a getpid() system call (its fork
    check), three for every body chunk read or sent. Raises TimeoutError when the time is up,
    and lets any other cancellation through, as asyncio.timeout does."""

    __slots__ = ("cancelling", "fired", "handle", "loop", "seconds", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self.loop, self.seconds, self.fired = loop, seconds, False

    async def __aenter__(self) -> None:
        task = asyncio.current_task(self.loop)  # given the loop: no lookup
        assert task is not None
        self.task, self.cancelling = task, task.cancelling()
        self.handle = self.loop.call_later(self.seconds, self._fire)

    def _fire(self) -> None:
        self.fired = True
        self.task.cancel()

    async def __aexit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.handle.cancel()
        expired = self.fired and self.task.uncancel() <= self.cancelling  # always uncancelled
        if expired and kind is not None and issubclass(kind, asyncio.CancelledError):
            raise TimeoutError


def within(seconds: float, loop: asyncio.AbstractEventLoop | None) -> Deadline | asyncio.Timeout:
    """A timeout for one await: a Deadline on the worker's loop, asyncio's own without one."""
    return asyncio.timeout(seconds) if loop is None else Deadline(loop, seconds)


def _upstream_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UPSTREAM_RCVBUF)
    return sock


class ClientGone(Exception):
    """The client disconnected while its body was being read or sent upstream."""


class BodyTooLarge(Exception):
    pass


class BodyIdle(Exception):
    pass


class TryFailed(Exception):
    """One try got no response head. `kind`: connect-failure (nothing was sent), reset, timeout
    or bad-response; `error` is the answer if nothing else is tried; `reused`: the try ran on a
    pooled connection (the stale keep-alive race is possible)."""

    def __init__(self, kind: str, error: ProxyError, reused: bool) -> None:
        super().__init__(kind)
        self.kind, self.error, self.reused = kind, error, reused


@dataclass(slots=True)
class Outcome:
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    error: str = ""
    started: bool = False
    tries: int = 0
    fallback_from: str = ""
    fallback_reason: str = ""
    consumer: str = ""  # the identified caller (access/gate.py), for the access log
    fields: list[tuple[bytes, bytes]] | None = None  # more response fields (RateLimit-*)


Body = bytes | Callable[[], AsyncIterator[bytes]] | None


class StreamedBody:
    """A request body past the buffer, streamed as it arrives (read_body's result): a call
    starts it, once, with the bytes read so far first. Until its first piece is taken nothing
    more has been read from the client, and none of it has gone anywhere: a try that failed
    before that (a pooled connection that closed while `Expect: 100-continue` waited for the
    upstream's 100) may send it again (`replayable`, plan.may_repeat)."""

    __slots__ = ("_rest", "started")

    def __init__(self, rest: Callable[[StreamedBody], AsyncIterator[bytes]]) -> None:
        self._rest = rest
        self.started = False  # set by the stream's first step, not when a sender is handed it

    def __call__(self) -> AsyncIterator[bytes]:
        if self.started:
            # plan.may_repeat never repeats a request whose streamed body was read.
            raise RuntimeError("a streamed request body can be sent once")
        return self._rest(self)


def replayable(body: Body) -> bool:
    """Whether `body` can be sent again: buffered (or none), or a stream not yet started."""
    return not callable(body) or (isinstance(body, StreamedBody) and not body.started)


@dataclass(slots=True)
class Capture:
    """A copy of an answer as the client got it, kept for a shadow comparison or a recording
    (up to `limit` body bytes; a longer body is dropped and marked truncated)."""

    limit: int
    status: int = 0
    headers: tuple[tuple[bytes, bytes], ...] = ()
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    truncated: bool = False

    def add(self, chunk: bytes) -> None:
        if self.truncated or not chunk:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.truncated = True
            self.parts.clear()
            return
        self.parts.append(chunk)

    def body(self) -> bytes:
        return b"".join(self.parts)


async def read_body(
    receive: Receive,
    *,
    buffer: int,
    max_body: int,
    content_length: int | None,
    body_idle: float,
    outcome: Outcome,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Body:
    """Read a request body before any upstream connection is taken (nginx's
    proxy_request_buffering): up to `buffer` bytes whole, so a slow upload holds no upstream
    connection and a retry can send it again. A larger body streams: the result is then a
    factory of the stream (the bytes read so far first), which can be started only once.
    `loop`: the worker's, for the idle timeouts (see Deadline). `buffer` -1: nothing is read
    before the stream starts (the client's `100 Continue` waits for the upstream's)."""
    chunks: list[bytes] = []
    idle = (body_idle, loop)
    try:
        while buffer >= 0:
            chunk, more = await _next_chunk(receive, idle, max_body, content_length, outcome)
            if chunk:
                chunks.append(chunk)
            if not more:
                return b"".join(chunks)
            if outcome.bytes_in > buffer:
                break
    except BodyIdle:
        raise _stalled() from None
    except BodyTooLarge:
        raise _too_large() from None
    prefix = b"".join(chunks)
    return StreamedBody(
        lambda owner: _stream_rest(receive, prefix, max_body, content_length, idle, outcome, owner)
    )


Idle = tuple[float, "asyncio.AbstractEventLoop | None"]  # the body idle timeout, on this loop


async def _next_chunk(
    receive: Receive,
    idle: Idle,
    max_body: int,
    content_length: int | None,
    outcome: Outcome,
) -> tuple[bytes, bool]:
    """The next piece of the request body and whether more follows. Raises BodyIdle, ClientGone
    (gone, or the body ended short of its Content-Length) or BodyTooLarge."""
    try:
        async with within(*idle):
            message = await receive()
    except TimeoutError:
        raise BodyIdle from None
    if message["type"] == "http.disconnect":
        raise ClientGone
    chunk = message.get("body", b"")
    assert isinstance(chunk, bytes)
    outcome.bytes_in += len(chunk)
    if outcome.bytes_in > max_body:
        raise BodyTooLarge
    more = bool(message.get("more_body", False))
    if not more and content_length is not None and outcome.bytes_in != content_length:
        raise ClientGone
    return chunk, more


async def _stream_rest(
    receive: Receive,
    prefix: bytes,
    max_body: int,
    content_length: int | None,
    idle: Idle,
    outcome: Outcome,
    owner: StreamedBody,
) -> AsyncIterator[bytes]:
    """The body past the buffer, as it arrives. It *raises* when the client goes or the body
    ends short: returning would let aiohttp reuse a half-written connection."""
    owner.started = True
    yield prefix
    while True:
        chunk, more = await _next_chunk(receive, idle, max_body, content_length, outcome)
        if chunk:
            yield chunk
        if not more:
            return


def _too_large() -> ProxyError:
    return ProxyError(
        413, "body-too-large", "the request body exceeds this route's limit", close=True
    )


def _stalled() -> ProxyError:
    return ProxyError(408, "request-timeout", "the request body stalled", close=True)


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, kind):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


# Set when the try running in this task opened a new connection: aiohttp opens it in the
# caller's task, so the flag is the try's own, whatever other requests do meanwhile.
_OPENED: contextvars.ContextVar[bool] = contextvars.ContextVar("strangler_opened", default=False)


class _Connector(aiohttp.TCPConnector):
    """Marks the tries that open a new connection: a try that failed without opening one ran
    on a pooled (reused) connection."""

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        _OPENED.set(True)
        return await super()._create_connection(*args, **kwargs)


def upstream_url(upstream: Upstream, path: bytes, query: bytes) -> URL:
    """The request's target on `upstream`, its bytes exactly as the client sent them."""
    return URL.build(
        scheme=upstream.scheme,
        host=upstream.host,
        port=upstream.port,
        path=path.decode("ascii"),
        query_string=query.decode("ascii"),
        encoded=True,
    )


def client_session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,
        max_field_size=MAX_FIELD_SIZE,
        max_headers=MAX_HEADERS,
        read_bufsize=READ_BUFSIZE,
    )
    # aiohttp silently re-sends an idempotent request once when the connection drops before
    # the answer (even on a fresh connection, and whatever the route says): the data plane
    # decides every repeat itself. The only switch is this private flag; a test guards it.
    session._retry_connection = False
    return session


class Pool:
    """One upstream's session and how many requests are using it right now; a second session
    that never reuses a connection, for the re-send after a stale keep-alive connection."""

    __slots__ = ("active", "fresh", "retired", "session")

    def __init__(self, connector: _Connector) -> None:
        self.session = client_session(connector)
        self.fresh: aiohttp.ClientSession | None = None
        self.active = 0
        self.retired = False

    def fresh_session(self) -> aiohttp.ClientSession:
        if self.fresh is None:
            self.fresh = client_session(
                aiohttp.TCPConnector(force_close=True, limit=0, socket_factory=_upstream_socket)
            )
        return self.fresh

    async def close(self) -> None:
        await self.session.close()
        if self.fresh is not None:
            await self.fresh.close()


class Answered(Protocol):
    """What `answer_client` needs of an upstream's answer, from either client."""

    @property
    def status(self) -> int: ...
    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]: ...
    @property
    def reason(self) -> bytes | str | None: ...
    def release(self) -> None: ...


ReadSome = Callable[[float, "asyncio.Future[None] | None"], Awaitable[bytes]]
# The engine's `strangler.answer`: (status, fields, reason, body, checked, framed) written at
# once as a whole answer; False when it cannot be (the client's buffer is full, the client has
# gone), and the answer goes through send() as usual. `framed`: the fields hold one
# Content-Length, the body's, and no Transfer-Encoding or Connection.
WriteWhole = Callable[[int, list[tuple[bytes, bytes]], bytes, bytes, bool, bool], bool]


class Forwarding(Protocol):
    """The upstream side of the data plane, as app.py uses it: this module's aiohttp
    Forwarder or the proxy's own HTTP/1.1 client (h1client.py). `enter` gives the upstream's
    pool, `open` a response whose head has arrived; the response types are each client's own."""

    # Its answer parser refuses every field `headers_sendable` would (llhttp, strict): the
    # check is not made again for each answer.
    strict: bool

    def enter(self, upstream: Upstream) -> Any: ...
    def leave(self, pool: Any) -> None: ...
    @property
    def open_sessions(self) -> int: ...
    def retire_unused(self, upstreams: Iterable[Upstream]) -> None: ...
    async def close(self) -> None: ...
    async def open(
        self,
        pool: Any,
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
    ) -> Any: ...
    async def buffered(self, response: Any, scope: Scope, read_timeout: float) -> bytes | None: ...
    def reader(self, response: Any) -> ReadSome: ...


class Forwarder:
    """One aiohttp session per upstream (each with its own connection pool), per worker.

    When a new table drops an upstream, its session is retired: closed at once if idle, else
    when the last request using it ends (a slow download outlives the table that started it).
    """

    strict = False  # aiohttp's parser lets through fields uvicorn and the engine refuse

    def __init__(self) -> None:
        self._pools: dict[tuple[str, int], Pool] = {}
        self._retired: set[Pool] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._timeouts: dict[tuple[float, float], aiohttp.ClientTimeout] = {}

    def pool(self, upstream: Upstream) -> Pool:
        key = (upstream.url, upstream.max_connections)
        pool = self._pools.get(key)
        if pool is None:
            connector = _Connector(
                limit=upstream.max_connections,
                limit_per_host=0,
                keepalive_timeout=KEEPALIVE_SECONDS,
                force_close=False,
                socket_factory=_upstream_socket,
            )
            pool = self._pools[key] = Pool(connector)
        return pool

    def enter(self, upstream: Upstream) -> Pool:
        """The upstream's pool, counted as in use until `leave`."""
        pool = self.pool(upstream)
        pool.active += 1  # a retired upstream's pool is closed when this reaches 0
        return pool

    def leave(self, pool: Pool) -> None:
        pool.active -= 1
        if pool.retired and pool.active == 0:
            self._close(pool)

    @property
    def open_sessions(self) -> int:
        """Sessions not closed yet: current upstreams' and retired ones still in use."""
        return len(self._pools) + len(self._retired)

    def retire_unused(self, upstreams: Iterable[Upstream]) -> None:
        """Retire the sessions of upstreams the new table no longer has."""
        keep = {(u.url, u.max_connections) for u in upstreams}
        for key in [k for k in self._pools if k not in keep]:
            pool = self._pools.pop(key)
            pool.retired = True
            self._retired.add(pool)
            if pool.active == 0:
                self._close(pool)

    def _close(self, pool: Pool) -> None:
        self._retired.discard(pool)
        try:
            task = asyncio.get_running_loop().create_task(pool.close())
        except RuntimeError:  # no loop (a table swapped outside the server): nothing is open
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def timeout(self, connect: float, read: float) -> aiohttp.ClientTimeout:
        key = (connect, read)
        timeout = self._timeouts.get(key)
        if timeout is None:
            # `total` would also cut long downloads; `connect` includes waiting for a pool slot.
            timeout = aiohttp.ClientTimeout(
                total=None, connect=connect + read, sock_connect=connect, sock_read=read
            )
            self._timeouts[key] = timeout
        return timeout

    async def close(self) -> None:
        pools = [*self._pools.values(), *self._retired]
        self._pools, self._retired = {}, set()
        for pool in pools:
            await pool.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

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
    ) -> aiohttp.ClientResponse:
        """Send the request and wait for the response head. Raises TryFailed (the upstream
        failed), ClientGone or a ProxyError about the client's body. `expect` is not passed on
        here: the body is sent at once (the client gets its 100 from the proxy); aiohttp
        finds the framing fields itself."""
        url = upstream_url(upstream, scope["raw_path"], scope["query_string"])
        session = pool.fresh_session() if fresh else pool.session
        _OPENED.set(False)
        try:
            request = session.request(
                scope["method"],
                url,
                # aiohttp writes str fields, values as UTF-8: prepare_request refused any other
                headers=[(n.decode("ascii"), v.decode("utf-8")) for n, v in headers],
                data=body() if callable(body) else body,
                skip_auto_headers=SKIP_AUTO_HEADERS,
                allow_redirects=False,
                timeout=self.timeout(upstream.connect_timeout, read_timeout),
            )
            if head_timeout is None:
                return await request
            async with asyncio.timeout(head_timeout):
                return await request
        except Exception as exc:
            raise _failed(exc, reused=not fresh and not _OPENED.get()) from exc

    async def buffered(
        self, response: aiohttp.ClientResponse, scope: Scope, read_timeout: float
    ) -> bytes | None:
        """A small answer's whole body, or None when the answer is to be streamed. Small answers
        are read whole before the client is written to, so the upstream connection goes back to
        the pool first and a slow client holds none (nginx's proxy_buffering, in memory). A body
        cut off here has reached no client: it is a failed try (TryFailed `reset`, or `timeout`
        when it stalled), which the route's retry or fallback may still answer."""
        if scope["method"] == "HEAD" or response.status in (204, 304):
            return b""
        length = response.content_length
        if length is None or length > BUFFER_BYTES:
            return None
        try:
            return await _read_body(response, read_timeout)
        except ProxyError as error:
            response.close()  # half a body: the connection cannot be reused
            raise TryFailed("timeout" if error.status == 504 else "reset", error, False) from None

    @staticmethod
    def reader(response: aiohttp.ClientResponse) -> ReadSome:
        """How `answer_client` reads an aiohttp answer's body: its read errors become
        UpstreamAborted."""

        async def read_some(read_timeout: float, gone: asyncio.Future[None] | None) -> bytes:
            try:
                return await _read_some(response, response.content, read_timeout, gone)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UpstreamAborted(_body_failure(exc)) from exc

        return read_some


def answer_whole(
    response: Answered,
    whole: bytes,
    write_whole: WriteWhole,
    *,
    outcome: Outcome,
    extra_headers: list[tuple[bytes, bytes]] | None,
    capture: Capture | None = None,
    checked: bool = False,
) -> bool:
    """A whole answer (read by `buffered`) written by the engine's one call (`strangler.answer`,
    `write_whole`), with no coroutine and no ASGI message: True once written; False when the
    engine declines (the client's buffer is full, the client has gone), and `answer_client`
    sends it instead. Raises ProxyError for fields the client cannot be sent."""
    status = response.status
    headers = _fields(response, extra_headers, capture, checked)
    # A strict parser's answer with a length has one Content-Length and no Transfer-Encoding
    # (llhttp refuses both otherwise), prepare_response took Connection away, and `whole` is
    # that many bytes: the engine need not search the fields for its framing.
    framed = (
        checked
        and status not in (204, 304)
        and getattr(response, "content_length", None) == len(whole)
    )
    if not write_whole(status, headers, _reason(response), whole, checked, framed):
        return False
    response.release()
    outcome.status, outcome.bytes_out, outcome.started = status, len(whole), True
    if capture is not None:
        capture.add(whole)
    return True


async def answer_client(
    response: Answered,
    read_some: ReadSome,
    receive: Receive,
    send: Send,
    *,
    whole: bytes | None,
    streamed_body: bool,
    read_timeout: float,
    send_timeout: float,
    outcome: Outcome,
    extra_headers: list[tuple[bytes, bytes]] | None,
    capture: Capture | None = None,
    checked: bool = False,
    trailers: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Send the answer to the client: `whole` (read by `buffered`) at once, else streamed
    (see the module rules); `capture` keeps a copy. `read_some(read_timeout, gone)` gives the
    next body bytes (b"" at the end) or raises UpstreamAborted. `checked`: the answer's parser
    has refused what `headers_sendable` would (the forwarder's `strict`). `trailers`: the
    client's side takes ASGI's `http.response.trailers` (the engine does): a streamed answer
    ends with the upstream's trailer fields (prepare_trailers), if it sent any. `loop`: the
    worker's, for the send timeouts (see Deadline). A whole answer the engine can write in one
    call goes by `answer_whole` instead."""
    try:
        outcome.status = response.status
        if whole is not None:
            response.release()
            outcome.bytes_out = len(whole)
            headers = _fields(response, extra_headers, capture, checked)
            await _send_start(send, response, headers, checked, False)
            outcome.started = True
            if capture is not None:
                capture.add(whole)
            await send({"type": "http.response.body", "body": whole, "more_body": False})
            return
        await _start(send, response, extra_headers, capture, checked, trailers)
        outcome.started = True
        # uvicorn's send() returns quietly once the client has gone: watch for it, or a long
        # stream would hold its upstream connection to the end. (A streamed request body still
        # owns receive(): its end is watched by the body stream.)
        gone = None if streamed_body else asyncio.ensure_future(_disconnect(receive))
        try:
            while True:
                # uvicorn's send() waits for the client to drain before it writes, and an empty
                # body writes nothing: the next chunk is taken from the upstream only once the
                # client has taken the last one, so a stalled client holds none.
                try:
                    async with within(send_timeout, loop):
                        await send(_NOTHING_MORE)
                except TimeoutError:
                    raise ClientTooSlow("client-send-timeout") from None
                chunk = await read_some(read_timeout, gone)
                if not chunk:
                    break
                outcome.bytes_out += len(chunk)
                if capture is not None:
                    capture.add(chunk)
                try:
                    async with within(send_timeout, loop):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except TimeoutError:
                    raise ClientTooSlow("client-send-timeout") from None
                if gone is not None and gone.done():
                    raise ClientGone
        finally:
            if gone is not None:
                gone.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if trailers:
            fields = prepare_trailers(getattr(response, "trailers", ()))  # aiohttp keeps none
            await send({"type": "http.response.trailers", "headers": fields})
    finally:
        response.release()


async def _disconnect(receive: Receive) -> None:
    """Returns when the client has disconnected (for a request whose body is all read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _start(
    send: Send,
    response: Answered,
    extra: list[tuple[bytes, bytes]] | None,
    capture: Capture | None = None,
    checked: bool = False,
    trailers: bool = False,
) -> None:
    headers = _fields(response, extra, capture, checked)
    await _send_start(send, response, headers, checked, trailers)


def _fields(
    response: Answered,
    extra: list[tuple[bytes, bytes]] | None,
    capture: Capture | None,
    checked: bool,
) -> list[tuple[bytes, bytes]]:
    """The answer's fields for the client (the upstream's, then the proxy's own `extra`)."""
    headers = prepare_response(response.raw_headers)
    if not checked and not headers_sendable(headers):
        # uvicorn would refuse them after marking the response started: no 502 possible then.
        raise ProxyError(502, "bad-upstream-response", "the upstream sent an invalid header")
    if response.status in (204, 304):
        # No body follows; a forwarded Content-Length would make uvicorn wait for one.
        headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
    if capture is not None:  # compared and recorded by lower-case name
        capture.status = response.status
        capture.headers = tuple((n.lower(), v) for n, v in headers)
    if extra:
        headers.extend(extra)
    return headers


async def _send_start(
    send: Send,
    response: Answered,
    headers: list[tuple[bytes, bytes]],
    checked: bool,
    trailers: bool,
) -> None:
    start = {
        "type": "http.response.start",
        "status": response.status,
        "headers": headers,
        "reason": _reason(response),  # written by the engine (h1server.py)
        "trailers": trailers,
    }
    if checked:  # the answer's parser refused CR, LF and NUL; `extra` is the proxy's own
        start[CHECKED] = True
    await send(start)


def _reason(response: Answered) -> bytes:
    """The upstream's reason phrase (h1client keeps its bytes, aiohttp a str)."""
    reason = response.reason or b""
    return reason.encode("latin-1", "replace") if isinstance(reason, str) else reason


async def _read_body(response: aiohttp.ClientResponse, read_timeout: float) -> bytes:
    """A whole (small, Content-Length) body, before the response starts."""
    if response.content.is_eof():  # all of it has arrived already (the common case)
        return response.content.read_nowait(-1)
    chunks = []
    try:
        while chunk := await _read_some(response, response.content, read_timeout):
            chunks.append(chunk)
    except (UpstreamAborted, aiohttp.ClientError) as exc:
        kind = _body_failure(exc)
        if kind == "upstream-timeout":
            raise ProxyError(504, kind, "the upstream's answer stalled") from None
        raise ProxyError(502, kind, "the upstream's answer was cut off") from None
    return b"".join(chunks)


def _body_failure(exc: BaseException) -> str:
    """The problem kind of a failure while reading an answer's body (one mapping for the
    buffered and the streamed path)."""
    if isinstance(exc, UpstreamAborted):
        return exc.kind
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "upstream-body-incomplete"
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return "upstream-timeout"
    return "upstream-disconnected"


async def _read_some(
    response: aiohttp.ClientResponse,
    content: aiohttp.StreamReader,
    read_timeout: float,
    gone: asyncio.Future[None] | None = None,
) -> bytes:
    """The next body bytes, b"" at the end. aiohttp 3.14 neither fails nor ends the body when a
    malformed chunk arrives and the upstream then closes (it also drops its own read timer), so
    the wait is cut into probes: a closed upstream connection, or `read_timeout` without a byte,
    aborts the answer."""
    if content.is_eof():  # the rest has arrived already (most small answers): no waiting
        return await content.readany()
    waited = 0.0
    while True:
        probe = min(LIVENESS_PROBE_SECONDS, read_timeout - waited)
        try:
            async with asyncio.timeout(probe):
                return await content.readany()
        except TimeoutError:
            waited += probe
            if gone is not None and gone.done():
                raise ClientGone from None
            connection = response.connection
            if connection is None or connection.protocol is None:
                raise UpstreamAborted("upstream-body-incomplete") from None
            if not connection.protocol.is_connected():
                raise UpstreamAborted("upstream-body-incomplete") from None
            if waited >= read_timeout:
                raise UpstreamAborted("upstream-timeout") from None


def _failed(exc: Exception, *, reused: bool) -> Exception:
    """aiohttp's (or the body stream's) failure before any response byte: a TryFailed with its
    kind, or the client's own failure (gone, body too large, body stalled)."""
    if _cause(exc, ClientGone) is not None:
        return ClientGone()
    if _cause(exc, BodyTooLarge) is not None:
        return _too_large()
    if _cause(exc, BodyIdle) is not None:
        return _stalled()
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        error = ProxyError(504, "upstream-connect-timeout", "the upstream did not accept in time")
        return TryFailed("connect-failure", error, reused=False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # The cause (address, errno) is for the operator's log, not for clients.
        log.warning("upstream unreachable: %s", exc)
        error = ProxyError(502, "upstream-unreachable", "the upstream is unreachable")
        return TryFailed("connect-failure", error, reused=False)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        error = ProxyError(504, "upstream-timeout", "the upstream did not answer in time")
        return TryFailed("timeout", error, reused)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        error = ProxyError(502, "upstream-disconnected", "the upstream closed without answering")
        return TryFailed("reset", error, reused)
    if isinstance(exc, aiohttp.ClientResponseError):
        error = ProxyError(502, "bad-upstream-response", "the upstream's answer is malformed")
        return TryFailed("bad-response", error, reused)
    if isinstance(exc, aiohttp.ClientError):
        log.warning("upstream failed: %s", exc)
        error = ProxyError(502, "upstream-disconnected", "the upstream failed")
        return TryFailed("reset", error, reused)
    return exc
