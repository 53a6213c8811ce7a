"""Upstreams over HTTPS, through the real `strangler serve`, with real TLS servers (`websockets`
over a trustme CA's certificates) as the upstreams.

- The proxy verifies an upstream's certificate against the system's trust store (here the test
  CA's, named by SSL_CERT_FILE as OpenSSL reads it) and its name (the upstream URL's host).
- A plain request goes over a pooled TLS connection; a WebSocket route tunnels over a TLS
  connection of its own, messages both ways.
- An upstream whose certificate the store does not trust is never sent the request: the client
  gets a 502 problem (`upstream-unreachable`), for a plain request and for a handshake.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import pytest
import trustme
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request, Response
from websockets.sync.client import connect

from tests.functional.proxy_support import (
    LoopThread,
    ProxyProcess,
    Table,
    get,
    problem,
    running,
)


class TlsUpstream:
    """A websockets server over TLS on 127.0.0.1 with a certificate of `ca`: a plain request is
    answered `hello over tls PATH`, a WebSocket echoes. Every request's path is kept."""

    def __init__(self, ca: trustme.CA) -> None:
        self.paths: list[str] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(self.context)
        self.thread = LoopThread("tls-up")
        self.server: Server = self.thread.call(self._start())
        self.port: int = self.server.sockets[0].getsockname()[1]

    async def _start(self) -> Server:
        return await serve(
            self._echo, "127.0.0.1", 0, ssl=self.context, process_request=self._plain
        )

    def _plain(self, connection: ServerConnection, request: Request) -> Response | None:
        self.paths.append(request.path)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None  # the handshake goes on
        return connection.respond(HTTPStatus.OK, f"hello over tls {request.path}\n")

    async def _echo(self, ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    def close(self) -> None:
        self.thread.stop(self.server)


@dataclass
class World:
    proxy: ProxyProcess
    trusted: TlsUpstream
    untrusted: TlsUpstream


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder: Path = tmp_path_factory.mktemp("https-upstream")
    ca, stranger = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    trusted, untrusted = TlsUpstream(ca), TlsUpstream(stranger)
    try:
        table = Table(
            folder / "routes.yaml",
            {
                "main": f"https://127.0.0.1:{trusted.port}",
                "stranger": f"https://127.0.0.1:{untrusted.port}",
            },
            routes=[
                {"name": "live", "match": {"path": "/live"}, "to": "main", "websocket": True},
                {"name": "stranger", "match": {"path": "/stranger"}, "to": "stranger"},
                {
                    "name": "stranger-live",
                    "match": {"path": "/stranger-live"},
                    "to": "stranger",
                    "websocket": True,
                },
            ],
        )
        env = {"SSL_CERT_FILE": str(folder / "ca.pem")}  # the trust store OpenSSL reads
        with running(["--routes", str(table.write())], env) as proxy:
            yield World(proxy, trusted, untrusted)
    finally:
        trusted.close()
        untrusted.close()


def test_a_request_goes_over_a_verified_tls_connection(w: World) -> None:
    for n in range(3):
        answer = get(w.proxy.external, f"/orders/{n}")
        assert (answer.status, answer.body) == (200, f"hello over tls /orders/{n}\n".encode())
    assert w.trusted.paths[-3:] == ["/orders/0", "/orders/1", "/orders/2"]


def test_a_websocket_route_tunnels_over_tls(w: World) -> None:
    with connect(f"ws://127.0.0.1:{w.proxy.external}/live/echo", open_timeout=10) as client:
        for message in ("hello", b"\x00\x01\xff" * 1000):
            client.send(message)
            assert client.recv(timeout=10) == message
    assert "/live/echo" in w.trusted.paths


def test_an_untrusted_upstream_is_sent_nothing_and_the_client_gets_a_502(w: World) -> None:
    problem(get(w.proxy.external, "/stranger/a"), 502, "upstream-unreachable")
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{w.proxy.external}/stranger-live/echo", open_timeout=10)
    assert refused.value.response.status_code == 502
    assert w.untrusted.paths == []  # the handshake failed before any request
