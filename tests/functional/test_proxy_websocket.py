"""WebSocket tunnels (`websocket:` on a route) through the real `strangler serve`, with a real
`websockets` server as the upstream (a thread with its own event loop), a raw recorder upstream
where the exact request bytes matter, and the `websockets` sync client or a raw socket in front.

- A tunnel carries text and binary messages both ways, byte-exact (one of ~500 KB); the upstream
  sees the request's path and query, the client's subprotocol (negotiated end to end) and its
  own header fields with their names as spelled; messages the upstream pushes unprompted arrive
  in order; bytes the client sent in the same write as its upgrade head reach the upstream.
- Either side's close reaches the other side as a normal close (1000), and the tunnel then
  counts no more in `strangler_tunnels_open`; the access log has one line for it, status 101.
- `idle_timeout`: a silent tunnel is closed by the proxy (both ends), an active one stays open.
- `max_connections`: beyond it, a handshake gets a 503 problem with `Retry-After: 1`
  (`over-limit`); once a tunnel closes, a new one is accepted. It also holds for handshakes
  that arrive together (a slot is taken before the upstream is asked).
- A route without `websocket:` forwards the Upgrade request as a plain GET, without the upgrade
  fields, and the client gets the upstream's plain answer, never a 101.
- An upstream that declines the upgrade (403 with a body, 426): the client gets that answer and
  the connection closes (`declined`); an upstream that is down: a 502 problem (`failed`).
- The route's `access:` applies to the handshake: no key is a 401, a key of an admitted group is
  tunnelled, and the upstream learns the consumer, not the key.
- Flow control: 8 MiB the upstream pushes while the client reads nothing for a second all
  arrive, exact, once it reads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import os
import random
import socket
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.http11 import Request
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from proxy.access.consumers import Add
from proxy.store.consumers import FileConsumerStore
from tests.functional.proxy_support import (
    Conn,
    LoopThread,
    MiB,
    ProxyProcess,
    Recorder,
    Response,
    Table,
    build,
    counter,
    problem,
    recorder,
    reply,
    running,
    wait_until,
)

SUBPROTOCOL = Subprotocol("chat.v2")
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample Sec-WebSocket-Key
ACCEPT = base64.b64encode(
    hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
).decode()
PUSHED = ["push 0", "push 1", "push 2"]
FLOOD = random.Random(11).randbytes(8 * MiB)  # what /flood pushes, 1 MiB per message
BIG = random.Random(5).randbytes(500_000)
DECLINE = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 15\r\n\r\n"
DECLINE += b"no sockets here"
UPGRADE_REQUIRED = (
    b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 12\r\n\r\nversion 13!\n"
)
_ids = itertools.count(1)


# --- the websockets upstream ----------------------------------------------------------------------
@dataclass
class Visit:
    """One connection as the websockets upstream saw it."""

    path: str  # with its query
    headers: list[tuple[str, str]]  # as received: names as spelled, in order
    subprotocol: str | None = None
    closed: str | None = None  # "ok" (a close handshake) or "error" (the connection dropped)

    def values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def _visit_id(path: str) -> str:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    return query.get("id", [""])[0]


class WsUpstream:
    """A websockets server on 127.0.0.1; what it does depends on the path's last segment:
    `push` sends PUSHED at 100 ms intervals, `bye` sends "bye" and closes, `flood` sends FLOOD,
    anything else echoes. Every connection (its `id` query parameter) is kept in `visits`."""

    def __init__(self) -> None:
        self.visits: dict[str, Visit] = {}
        self.thread = LoopThread("ws-up")
        self.server: Server = self.thread.call(self._start())
        self.port: int = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> Server:
        return await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            select_subprotocol=lambda _conn, offered: (
                SUBPROTOCOL if SUBPROTOCOL in offered else None
            ),
            max_size=None,
            ping_interval=None,
        )

    def _process_request(self, connection: ServerConnection, request: Request) -> None:
        headers: Headers = request.headers
        self.visits[_visit_id(request.path)] = Visit(request.path, list(headers.raw_items()))

    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        visit = self.visits[_visit_id(path)]
        visit.subprotocol = ws.subprotocol
        kind = urllib.parse.urlsplit(path).path.rsplit("/", 1)[-1]
        try:
            if kind == "push":
                for message in PUSHED:
                    await asyncio.sleep(0.1)
                    await ws.send(message)
            elif kind == "bye":
                await ws.send("bye")
                await ws.close(1000, "done")
            elif kind == "flood":
                for start in range(0, len(FLOOD), MiB):
                    await ws.send(FLOOD[start : start + MiB])
            while True:
                await ws.send(await ws.recv())
        except ConnectionClosedOK:
            visit.closed = "ok"
        except ConnectionClosedError:
            visit.closed = "error"

    def close(self) -> None:
        self.thread.stop(self.server)


# --- the proxy in front ---------------------------------------------------------------------------
@dataclass
class World:
    proxy: ProxyProcess
    ws: WsUpstream
    raw: Recorder
    consumers: Path
    dead_port: int
    opened: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("websocket")
    consumers = folder / "consumers.json"
    ws = WsUpstream()
    # Bound, never listening: a connection to it is refused, and no one else gets the port.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    try:
        with recorder() as raw:
            table = Table(
                folder / "routes.yaml",
                {"ws": ws.url, "raw": raw.url, "dead": f"http://127.0.0.1:{dead_port}"},
                [
                    {"name": "live", "match": {"path": "/live"}, "to": "ws", "websocket": True},
                    {
                        "name": "quiet",
                        "match": {"path": "/quiet"},
                        "to": "ws",
                        "websocket": {"idle_timeout": "1s"},
                    },
                    {
                        "name": "capped",
                        "match": {"path": "/capped"},
                        "to": "ws",
                        "websocket": {"max_connections": 2},
                    },
                    {"name": "plain", "match": {"path": "/plain"}, "to": "raw"},
                    {
                        "name": "declines",
                        "match": {"path": "/declines"},
                        "to": "raw",
                        "websocket": True,
                    },
                    {"name": "down", "match": {"path": "/down"}, "to": "dead", "websocket": True},
                    {
                        "name": "guarded",
                        "match": {"path": "/guarded"},
                        "to": "ws",
                        "websocket": True,
                        "access": {"groups": ["partners"]},
                    },
                ],
                default="raw",
            )
            args = ["--routes", str(table.write()), "--consumers", str(consumers)]
            with running(args) as proxy:
                yield World(proxy, ws, raw, consumers, dead_port)
    finally:
        dead.close()
        ws.close()


@pytest.fixture
def w(world: World) -> Iterator[World]:
    world.raw.reset()
    with world.opened:
        yield world


def open_ws(
    world: World,
    path: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    subprotocols: list[Subprotocol] | None = None,
) -> tuple[ClientConnection, str]:
    """A websockets client through the proxy to `path` (an `id` added): it and the id."""
    ident = str(next(_ids))
    sep = "&" if "?" in path else "?"
    client = world.opened.enter_context(
        connect(
            f"ws://127.0.0.1:{world.proxy.external}{path}{sep}id={ident}",
            additional_headers=headers,
            max_size=None,
            ping_interval=None,
            open_timeout=10,
            close_timeout=10,
            subprotocols=subprotocols,
        )
    )
    return client, ident


def handshake(
    path: str, headers: list[tuple[str, str]] | None = None, *, connection: str = "Upgrade"
) -> bytes:
    """A raw WebSocket handshake request."""
    fields = [
        ("Upgrade", "websocket"),
        ("Connection", connection),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ]
    return build("GET", path, fields + (headers or []))


def raw_handshake(port: int, path: str, headers: list[tuple[str, str]] | None = None) -> Response:
    with Conn(port) as conn:
        conn.sendall(handshake(path, headers))
        return conn.read_response()


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A client's frame: final, masked."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65_536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return head + mask + masked


class Frames:
    """Server frames read off a raw socket (after the 101 head)."""

    def __init__(self, sock: socket.socket, already: bytes = b"") -> None:
        self.sock = sock
        self.buffer = bytearray(already)

    def take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(MiB)
            if not chunk:
                raise ConnectionError(f"closed with {len(self.buffer)} of {size} bytes")
            self.buffer += chunk
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read(self) -> tuple[int, bytes]:
        first, second = self.take(2)
        assert first & 0x80, "a final frame"
        assert not second & 0x80, "a server's frame is not masked"
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(self.take(2), "big")
        elif size == 127:
            size = int.from_bytes(self.take(8), "big")
        return first & 0x0F, self.take(size)


def tunnels_open(world: World, route: str) -> float:
    return counter(world.proxy.metrics(), "strangler_tunnels_open", route=route)


def tunnels(world: World, route: str, result: str) -> float:
    return counter(world.proxy.metrics(), "strangler_tunnels_total", route=route, result=result)


def access_lines(world: World, ident: str) -> list[dict[str, object]]:
    """The access-log lines of the connection with that id."""
    found = []
    for line in list(world.proxy.stdout):
        if line.startswith("{") and f"id={ident}" in line:
            record = json.loads(line)
            if urllib.parse.urlsplit(str(record["target"])).query.endswith(f"id={ident}"):
                found.append(record)
    return found


# --- messages -------------------------------------------------------------------------------------
def test_text_and_binary_messages_echo_and_the_upstream_sees_the_clients_request(w: World) -> None:
    client, ident = open_ws(
        w,
        "/live/echo?room=blue",
        headers=[("X-User-Id", "7")],
        subprotocols=[SUBPROTOCOL],
    )
    assert client.subprotocol == SUBPROTOCOL
    messages: list[str | bytes] = ["hello", "héllo ✓", b"\x00\x01\xff", BIG, "after", b"end"]
    for message in messages:
        client.send(message)
    for message in messages:
        assert client.recv(timeout=10) == message
    visit = w.ws.visits[ident]
    assert visit.path == f"/live/echo?room=blue&id={ident}"
    assert visit.subprotocol == SUBPROTOCOL
    assert ("X-User-Id", "7") in visit.headers  # its name as the client spelled it
    assert visit.values("sec-websocket-protocol") == [SUBPROTOCOL]
    assert visit.values("x-forwarded-for") == ["127.0.0.1"]  # the proxy's fields go too


def test_messages_the_upstream_pushes_unprompted_arrive_in_order(w: World) -> None:
    client, _ = open_ws(w, "/live/push")
    assert [client.recv(timeout=10) for _ in PUSHED] == PUSHED
    client.send("still there?")
    assert client.recv(timeout=10) == "still there?"


def test_bytes_sent_with_the_upgrade_head_reach_the_upstream(w: World) -> None:
    ident = str(next(_ids))
    with Conn(w.proxy.external) as conn:
        conn.sendall(handshake(f"/live/echo?id={ident}") + frame(b"early bird"))
        answer = conn.read_response()
        assert answer.status == 101, answer.head
        assert answer.value("sec-websocket-accept") == ACCEPT.encode()
        assert (answer.value("upgrade") or b"").lower() == b"websocket"
        frames = Frames(conn.sock, conn.buffer)
        assert frames.read() == (0x1, b"early bird")
        conn.sendall(frame(b"second"))
        assert frames.read() == (0x1, b"second")
        conn.sendall(frame((1000).to_bytes(2, "big"), opcode=0x8))
        opcode, payload = frames.read()
        assert opcode == 0x8
        assert payload[:2] == (1000).to_bytes(2, "big")
    wait_until(lambda: w.ws.visits[ident].closed == "ok", what="the upstream's close")


# --- closing --------------------------------------------------------------------------------------
def test_a_client_close_reaches_the_upstream_and_the_tunnel_is_logged(w: World) -> None:
    tunnelled = tunnels(w, "live", "tunnelled")
    client, ident = open_ws(w, "/live/echo")
    assert tunnels(w, "live", "tunnelled") == tunnelled + 1
    client.send("one")
    assert client.recv(timeout=10) == "one"
    assert tunnels_open(w, "live") >= 1
    client.close()
    assert client.close_code == 1000  # the upstream's answer to the close came back
    wait_until(lambda: w.ws.visits[ident].closed == "ok", what="the upstream to see the close")
    wait_until(lambda: tunnels_open(w, "live") == 0, what="no tunnel open on the route")
    wait_until(lambda: bool(access_lines(w, ident)), what="the tunnel's access-log line")
    (line,) = access_lines(w, ident)
    assert line["status"] == 101
    assert line["route"] == "live"
    assert line["upstream"] == "ws"
    assert int(line["bytes_in"]) > 0  # type: ignore[call-overload]
    assert int(line["bytes_out"]) > 0  # type: ignore[call-overload]


def test_an_upstream_close_reaches_the_client(w: World) -> None:
    client, _ = open_ws(w, "/live/bye")
    assert client.recv(timeout=10) == "bye"
    with pytest.raises(ConnectionClosedOK) as closed:
        client.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "done")
    wait_until(lambda: tunnels_open(w, "live") == 0, what="no tunnel open on the route")


# --- limits ---------------------------------------------------------------------------------------
def test_a_silent_tunnel_idles_out_while_an_active_one_stays_open(w: World) -> None:
    silent, silent_id = open_ws(w, "/quiet/echo")
    active, _ = open_ws(w, "/quiet/echo")
    deadline = time.monotonic() + 2.5  # more than idle_timeout plus the once-a-second sweep
    tick = 0
    while time.monotonic() < deadline:
        active.send(f"tick {tick}")
        assert active.recv(timeout=10) == f"tick {tick}"
        tick += 1
        time.sleep(0.3)
    with pytest.raises(ConnectionClosed):
        silent.recv(timeout=10)  # generous: the proxy closes it within ~2 s
    wait_until(lambda: w.ws.visits[silent_id].closed is not None, what="the upstream end closed")
    active.send("still open")
    assert active.recv(timeout=10) == "still open"


def test_beyond_max_connections_a_handshake_is_503_until_a_tunnel_closes(w: World) -> None:
    wait_until(lambda: tunnels_open(w, "capped") == 0, what="no tunnel open on the route")
    first, _ = open_ws(w, "/capped/echo")
    second, _ = open_ws(w, "/capped/echo")
    refused = tunnels(w, "capped", "over-limit")
    answer = raw_handshake(w.proxy.external, "/capped/echo")
    problem(answer, 503, "tunnel-limit")
    assert answer.value("retry-after") == b"1"
    assert tunnels(w, "capped", "over-limit") == refused + 1
    second.send("two")
    assert second.recv(timeout=10) == "two"
    first.close()
    wait_until(lambda: tunnels_open(w, "capped") == 1, what="the closed tunnel to count no more")
    third, _ = open_ws(w, "/capped/echo")
    third.send("three")
    assert third.recv(timeout=10) == "three"


def test_max_connections_holds_for_handshakes_that_arrive_together(w: World) -> None:
    wait_until(lambda: tunnels_open(w, "capped") == 0, what="no tunnel open on the route")
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(Conn(w.proxy.external)) for _ in range(3)]
        for index, conn in enumerate(conns):
            conn.sendall(handshake(f"/capped/echo?id=together-{index}"))
        statuses = sorted(conn.read_response().status for conn in conns)
    wait_until(lambda: tunnels_open(w, "capped") == 0, what="the tunnels closed")
    assert statuses == [101, 101, 503]


# --- routes without tunnels, refusals -------------------------------------------------------------
def test_a_route_without_websocket_forwards_the_upgrade_as_a_plain_get(w: World) -> None:
    with Conn(w.proxy.external) as conn:
        conn.sendall(handshake("/plain/socket?x=1"))
        answer = conn.read_response()
        assert answer.status == 200, answer.head
        assert answer.body == b"ok"
        assert conn.closed_by_peer()  # nothing after an Upgrade head is read: it closes
    seen = w.raw.only()
    assert seen.request_line == b"GET /plain/socket?x=1 HTTP/1.1"
    assert seen.value("upgrade") is None
    assert all(b"upgrade" not in value.lower() for value in seen.values("connection"))


def test_an_upstream_that_declines_is_answered_as_it_said(w: World) -> None:
    before = tunnels(w, "declines", "declined")
    w.raw.reset(reply(DECLINE))
    with Conn(w.proxy.external) as conn:
        # Firefox's spelling: keep-alive beside upgrade.
        conn.sendall(handshake("/declines/socket", connection="keep-alive, Upgrade"))
        answer = conn.read_response()
        assert answer.status == 403, answer.head
        assert answer.body == b"no sockets here"
        assert conn.closed_by_peer()
    seen = w.raw.only()
    assert seen.value("upgrade") == b"websocket"  # the tunnel route asked it to switch
    assert seen.value("connection") == b"upgrade"
    assert seen.value("sec-websocket-key") == KEY.encode()
    w.raw.reset(reply(UPGRADE_REQUIRED))
    answer = raw_handshake(w.proxy.external, "/declines/socket")
    assert answer.status == 426, answer.head
    assert answer.body == b"version 13!\n"
    assert tunnels(w, "declines", "declined") == before + 2


def test_an_upstream_that_is_down_is_a_502(w: World) -> None:
    before = tunnels(w, "down", "failed")
    problem(raw_handshake(w.proxy.external, "/down/socket"), 502, "upstream-unreachable")
    assert tunnels(w, "down", "failed") == before + 1


def test_the_routes_access_applies_to_the_handshake(w: World) -> None:
    problem(raw_handshake(w.proxy.external, "/guarded/echo"), 401, "credential-required")
    assert not any(visit.path.startswith("/guarded") for visit in w.ws.visits.values())
    added = FileConsumerStore(w.consumers).apply(
        Add("ws-partner", groups=("partners",)), author="test", reason="a websocket caller"
    )
    key = added.key or ""
    wait_until(
        lambda: (
            raw_handshake(w.proxy.external, "/guarded/echo", [("X-API-Key", key)]).status == 101
        ),
        what="the proxy to know the new key",
    )
    client, ident = open_ws(w, "/guarded/echo", headers=[("X-API-Key", key)])
    client.send("partner")
    assert client.recv(timeout=10) == "partner"
    visit = w.ws.visits[ident]
    assert visit.values("x-consumer-id") == ["ws-partner"]
    assert visit.values("x-api-key") == []  # the key the proxy checked stays with the proxy


# --- flow control ---------------------------------------------------------------------------------
def test_a_client_that_reads_late_gets_everything_the_upstream_pushed(w: World) -> None:
    ident = str(next(_ids))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65_536)  # the proxy has to hold back
    sock.settimeout(30)
    sock.connect(("127.0.0.1", w.proxy.external))
    with sock:
        sock.sendall(handshake(f"/live/flood?id={ident}"))
        time.sleep(1.0)  # reading nothing, not even the 101
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "closed before the 101"
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 "), head
        frames = Frames(sock, rest)
        received = bytearray()
        while len(received) < len(FLOOD):
            opcode, payload = frames.read()
            assert opcode == 0x2
            received += payload
        assert received == FLOOD
        sock.sendall(frame(b"done"))
        assert frames.read() == (0x1, b"done")  # and the tunnel still works the other way
