"""Upgrade (WebSocket) tunnels, on routes that allow them (`websocket:` in routes.yaml).

An HTTP/1.1 request with `Connection: upgrade` and an `Upgrade` field, on such a route, goes to
the route's upstream over a connection of its own (never a pooled one): its head as the data
plane prepared it (the proxy's fields, the client's names as spelled) plus the two upgrade
fields, which are hop-by-hop and otherwise removed. Then:

- the upstream answers 101: the client gets that head as sent, and from there the proxy copies
  bytes both ways, unparsed, until either side closes (nginx's `proxy_pass` with the Upgrade
  headers set, Envoy's `upgrade_configs`). Reading from one side pauses while the other side's
  write buffer is above its high-water mark, so a slow reader holds a bounded amount.
- it answers anything else (a 400, 401, 426...): that answer, bounded to MAX_DECLINE_BODY,
  goes to the client as a plain answer and the connection closes.
- no connection or no head within the route's timeout: a 502 or 504 problem, as for any
  request.

A tunnel with no bytes either way for the route's `idle_timeout` is closed (checked by the
engine's once-a-second sweep, no timer per tunnel); the route's `max_connections` caps the
tunnels open on it per worker (503 beyond, `Retry-After: 1`). A graceful stop closes the
tunnels: clients reconnect, to another replica. Metrics: `strangler_tunnels_open{route}` and
`strangler_tunnels_total{route,upstream,result}`; the access log has one line per tunnel
when it ends, status 101, its bytes each way and its duration.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import httptools

from proxy.dataplane.forward import Outcome
from proxy.dataplane.h1client import authority, dial, upstream_tls
from proxy.dataplane.headers import field_lines, prepare_response
from proxy.errors import ProxyError
from proxy.types import Scope, Send

if TYPE_CHECKING:
    from proxy.dataplane.plan import Plan
    from proxy.observability import Metrics
    from proxy.table.compile import TunnelPolicy, Upstream

MAX_DECLINE_BODY = 65_536  # a declining answer's body, at most (a problem page, not a stream)
MAX_HEAD = 65_536
WRITE_HIGH = 65_536


class Tunnel:
    """Both ends of an upgraded connection: bytes in from one go out on the other."""

    __slots__ = (
        "bytes_down",
        "bytes_up",
        "client",
        "done",
        "idle_timeout",
        "last",
        "loop",
        "reason",
        "upstream",
    )

    def __init__(self, upstream: UpstreamSide, idle_timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.upstream = upstream
        self.client: asyncio.Transport | None = None  # set by the engine when it attaches
        self.idle_timeout = idle_timeout
        self.last = self.loop.time()
        self.bytes_up = self.bytes_down = 0  # client → upstream, upstream → client
        self.done: asyncio.Future[str] = self.loop.create_future()
        self.reason = ""
        upstream.tunnel = self

    def attach(self, client: asyncio.Transport, head: bytes, early: bytes) -> None:
        """The engine's side: the client gets the 101 head, then the bytes flow."""
        self.client = client
        client.write(head)
        if early:
            self.from_client(early)
        leftover, self.upstream.leftover = self.upstream.leftover, b""
        if leftover:
            self.from_upstream(leftover)
        self.upstream.transport.resume_reading()

    def from_client(self, data: bytes) -> None:
        self.last = self.loop.time()
        self.bytes_up += len(data)
        self.upstream.transport.write(data)

    def from_upstream(self, data: bytes) -> None:
        self.last = self.loop.time()
        self.bytes_down += len(data)
        if self.client is not None:
            self.client.write(data)

    # Flow control: a side whose write buffer is full stops the other side's reads.
    def client_full(self, full: bool) -> None:
        _reading(self.upstream.transport, not full)

    def upstream_full(self, full: bool) -> None:
        if self.client is not None:
            _reading(self.client, not full)

    def idle(self, now: float) -> bool:
        return now - self.last > self.idle_timeout

    def close(self, reason: str) -> None:
        """Either side closed, the tunnel idled out or the proxy stops: both ends close."""
        if self.done.done():
            return
        self.reason = reason
        self.done.set_result(reason)
        self.upstream.transport.close()
        if self.client is not None:
            self.client.close()


def _reading(transport: asyncio.Transport, on: bool) -> None:
    if transport.is_closing():
        return
    if on:
        transport.resume_reading()
    else:
        transport.pause_reading()


class UpstreamSide(asyncio.Protocol):
    """The upstream connection: its answer head parsed (llhttp), then raw bytes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.body = bytearray()
        self.finished = False  # a declining answer read whole
        self.leftover = b""  # bytes after a 101 head, before the client is attached
        self.tunnel: Tunnel | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=WRITE_HIGH)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # tunnelled
            if self.tunnel is not None and self.tunnel.client is not None:
                self.tunnel.from_upstream(data)
            else:
                self.leftover += data
            return
        self.head_bytes += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.parser = None
            self.leftover = data[upgrade.args[0] :]
            self.transport.pause_reading()  # until the client is attached
            self._resolve()
        except httptools.HttpParserError:
            self._fail(ProxyError(502, "bad-upstream-response", "the upstream's answer is invalid"))
        else:
            if not self.head.done() and self.head_bytes > MAX_HEAD:
                self._fail(ProxyError(502, "bad-upstream-response", "the answer head is too large"))
            elif len(self.body) > MAX_DECLINE_BODY:
                self.finished = True
                self.transport.close()
                self._resolve()

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        if self.status == 101:
            return  # llhttp stops at the upgrade (HttpParserUpgrade above)
        if 100 <= self.status < 200:  # an interim answer: the final one follows
            self.headers, self.reason = [], b""

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.finished = True
            self._resolve()

    def _resolve(self) -> None:
        if not self.head.done():
            self.head.set_result(None)

    def _fail(self, error: ProxyError) -> None:
        self.transport.close()
        if not self.head.done():
            self.head.set_exception(error)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_full(True)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_full(False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tunnel is not None:
            self.tunnel.close("upstream")
        elif not self.head.done():
            if self.status >= 200:  # a declining answer delimited by the close
                self.finished = True
                self.head.set_result(None)
            else:
                error = "the upstream closed without answering"
                self.head.set_exception(ProxyError(502, "upstream-disconnected", error))


async def open_upgrade(
    upstream: Upstream,
    method: str,
    target: bytes,
    fields: Sequence[tuple[bytes, bytes]],
    upgrade: bytes,
    read_timeout: float,
    tls: ssl.SSLContext | None,
) -> UpstreamSide:
    """Send the upgrade request on a new connection; returns once its answer's head (and, for
    a declining answer, its body) has arrived. Raises ProxyError (502, 504)."""
    side = UpstreamSide()
    try:
        async with asyncio.timeout(upstream.connect_timeout):
            await dial(asyncio.get_running_loop(), side, upstream, tls)
    except TimeoutError:
        raise ProxyError(
            504, "upstream-connect-timeout", "the upstream did not accept in time"
        ) from None
    except OSError:
        raise ProxyError(502, "upstream-unreachable", "the upstream is unreachable") from None
    side.transport.write(_head(method, target, fields, upgrade, upstream))
    try:
        async with asyncio.timeout(read_timeout):
            await side.head
    except TimeoutError:
        side.transport.close()
        raise ProxyError(504, "upstream-timeout", "the upstream did not answer in time") from None
    return side


def _head(
    method: str,
    target: bytes,
    fields: Sequence[tuple[bytes, bytes]],
    upgrade: bytes,
    upstream: Upstream,
) -> bytes:
    has_host = any(len(name) == 4 and name.lower() == b"host" for name, _ in fields)
    host = b"" if has_host else b"host: " + authority(upstream) + b"\r\n"
    return b"".join(
        (
            method.encode("ascii"),
            b" ",
            target,
            b" HTTP/1.1\r\n",
            field_lines(fields),
            host,
            b"connection: upgrade\r\nupgrade: ",
            upgrade,
            b"\r\n\r\n",
        )
    )


def switching_head(side: UpstreamSide) -> bytes:
    """The 101 head for the client, as the upstream sent it (its Connection and Upgrade
    fields included: they are this hop's answer to the client's)."""
    reason = side.reason or b"Switching Protocols"
    return b"".join((b"HTTP/1.1 101 ", reason, b"\r\n", field_lines(side.headers), b"\r\n"))


# The engine's `strangler.upgrade` extension: make the client connection the tunnel's other end.
Attach = Callable[[Tunnel, bytes], None]


class Tunnels:
    """The tunnels open per route in this worker, and their metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.open: dict[str, int] = {}

    async def serve(
        self,
        plan: Plan,
        policy: TunnelPolicy,
        scope: Scope,
        fields: Sequence[tuple[bytes, bytes]],
        attach: Attach,
        send: Send,
        outcome: Outcome,
    ) -> None:
        """An Upgrade request on a tunnel route: tunnelled, declined, or refused (module
        rules). Returns when the tunnel has closed."""
        route, upstream = plan.route_name, plan.upstream
        count = self.metrics.tunnels
        if self.open.get(route, 0) >= policy.max_connections:
            count.labels(route, upstream.name, "over-limit").inc()
            raise ProxyError(
                503,
                "tunnel-limit",
                f"route {route} has its {policy.max_connections} tunnels open",
                retry_after=1,
            )
        outcome.tries = 1
        target = scope["raw_path"]
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        upgrade = next((v for n, v in scope["headers"] if n == b"upgrade"), b"")
        # The slot is taken before the upstream is asked: handshakes that arrive together
        # cannot all pass the cap while each waits for its 101.
        self.open[route] = self.open.get(route, 0) + 1
        try:
            try:
                tls, read_timeout = upstream_tls(upstream), plan.read_timeout
                side = await open_upgrade(
                    upstream, plan.method, target, fields, upgrade, read_timeout, tls
                )
            except ProxyError:
                count.labels(route, upstream.name, "failed").inc()
                raise
            if side.status != 101:
                count.labels(route, upstream.name, "declined").inc()
                await _declined(side, send, outcome)
                return
            count.labels(route, upstream.name, "tunnelled").inc()
            await self._run(route, Tunnel(side, policy.idle_timeout), attach, side, outcome)
        finally:
            self.open[route] -= 1

    async def _run(
        self, route: str, tunnel: Tunnel, attach: Attach, side: UpstreamSide, outcome: Outcome
    ) -> None:
        gauge = self.metrics.tunnels_open.labels(route)
        gauge.inc()
        try:
            attach(tunnel, switching_head(side))
            outcome.status, outcome.started = 101, True
            await asyncio.shield(tunnel.done)
        finally:
            tunnel.close("proxy")
            gauge.dec()
            outcome.bytes_in, outcome.bytes_out = tunnel.bytes_up, tunnel.bytes_down


async def _declined(side: UpstreamSide, send: Send, outcome: Outcome) -> None:
    """The upstream answered the upgrade with something else: that answer, as a plain one."""
    side.transport.close()
    if not side.finished:
        raise ProxyError(502, "bad-upstream-response", "the upstream's answer is too large")
    framing = (b"content-length", b"transfer-encoding")
    headers = [(n, v) for n, v in prepare_response(side.headers) if n.lower() not in framing]
    body = bytes(side.body)
    headers.append((b"content-length", b"%d" % len(body)))
    outcome.status = side.status
    await send(
        {
            "type": "http.response.start",
            "status": side.status,
            "headers": headers,
            "reason": side.reason,
        }
    )
    outcome.started = True
    outcome.bytes_out = len(body)
    await send({"type": "http.response.body", "body": body})
