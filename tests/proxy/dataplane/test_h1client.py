"""The h1 upstream client's request heads and framing: what the upstream reads is what the client
sent, plus exactly one framing field when one is needed (RFC 9112 §6.1, §7.1)."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterator

import pytest
import trustme

from proxy.dataplane.forward import TryFailed
from proxy.dataplane.h1client import Forwarder, Pool, _framing, _request_head
from proxy.table.compile import Upstream
from tests.proxy.dataplane.test_h1client_fuzz import BASE, run

UP = b"10.0.0.7:8000"
HOST = [(b"host", b"shop.example")]


async def _stream() -> AsyncIterator[bytes]:
    yield b"x"


def test_the_head_keeps_the_target_bytes_and_the_header_order() -> None:
    head = _request_head(
        b"GET",
        b"/a/../b?x=%20&y",
        [(b"host", b"shop.example"), (b"x-dup", b"1"), (b"accept", b"*/*"), (b"x-dup", b"2")],
        b"",
    )
    assert head == (
        b"GET /a/../b?x=%20&y HTTP/1.1\r\n"
        b"host: shop.example\r\nx-dup: 1\r\naccept: */*\r\nx-dup: 2\r\n\r\n"
    )


def test_header_values_go_out_byte_for_byte() -> None:
    head = _request_head(b"GET", b"/", [(b"x-name", "café".encode())], b"")
    assert b"x-name: caf\xc3\xa9\r\n" in head


def test_a_client_length_is_kept_and_none_is_added() -> None:
    assert _framing(b"POST", [(b"host", b"h"), (b"content-length", b"3")], b"abc", UP) == (
        b"",
        False,
    )
    assert _framing(b"POST", [(b"Host", b"h"), (b"Content-Length", b"3")], b"abc", UP) == (
        b"",
        False,
    )


def test_framing_the_caller_already_knows_gives_what_a_search_of_the_headers_gives() -> None:
    """The data plane passes (has Host, has Content-Length) from prepare_request instead of
    having the headers searched again: each combination frames as the search would."""
    for headers in ([], HOST, [(b"Content-Length", b"4")], [*HOST, (b"Content-Length", b"4")]):
        names = {name.lower() for name, _ in headers}
        known = (b"host" in names, b"content-length" in names)
        for method, body in (
            (b"GET", None),
            (b"POST", None),
            (b"POST", b"abcd"),
            (b"POST", _stream),
        ):
            assert _framing(method, headers, body, UP, known=known) == _framing(
                method, headers, body, UP
            )


def test_a_buffered_chunked_upload_is_sent_with_its_length() -> None:
    assert _framing(b"POST", HOST, b"abcd", UP) == (b"content-length: 4\r\n", False)


def test_writes_without_a_body_say_length_zero_and_reads_say_nothing() -> None:
    for method in (b"POST", b"PUT", b"PATCH"):
        assert _framing(method, HOST, None, UP) == (b"content-length: 0\r\n", False)
    for method in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        assert _framing(method, HOST, None, UP) == (b"", False)


def test_a_streamed_body_is_chunked_unless_its_length_is_known() -> None:
    assert _framing(b"POST", HOST, _stream, UP) == (b"transfer-encoding: chunked\r\n", True)
    assert _framing(b"POST", [*HOST, (b"content-length", b"100000")], _stream, UP) == (b"", False)


def test_a_request_without_host_names_the_upstream() -> None:
    assert _framing(b"GET", [(b"user-agent", b"legacy")], None, UP) == (
        b"host: 10.0.0.7:8000\r\n",
        False,
    )


def test_a_short_wait_after_long_ones_on_the_same_connection_ends_at_its_own_deadline() -> None:
    """A connection times its answers' waits with one timer kept from request to request
    (Connection.watch): after requests timed by a 30 s read timeout, a request on the same kept
    connection with a 0.3 s one still fails as a timeout at its own deadline, not 30 s on."""

    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    if b" /silent " in head:
                        await reader.read()  # never answers; ends when the proxy closes
                        return
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        upstream = dataclasses.replace(BASE, url=f"http://127.0.0.1:{port}", port=port)
        forwarder = Forwarder()
        pool = forwarder.enter(upstream)
        loop = asyncio.get_running_loop()
        try:
            for _ in range(3):
                scope = {"method": "GET", "raw_path": b"/fast", "query_string": b""}
                answer = await forwarder.open(pool, upstream, scope, HOST, None, read_timeout=30)
                assert await forwarder.buffered(answer, scope, 30) == b"ok"
            scope = {"method": "GET", "raw_path": b"/silent", "query_string": b""}
            started = loop.time()
            with pytest.raises(TryFailed) as failed:
                await forwarder.open(pool, upstream, scope, HOST, None, read_timeout=0.3)
            waited = loop.time() - started
            assert failed.value.kind == "timeout"
            assert failed.value.reused  # the kept connection, whose timer was armed for 30 s
            assert 0.25 <= waited < 5
        finally:
            forwarder.leave(pool)
            await forwarder.close()
            server.close()
            await server.wait_closed()

    run(main())


def test_answers_read_through_the_shared_buffer_stay_apart_over_tls_and_in_parallel() -> None:
    """Every upstream read lands in the forwarder's one buffer (Connection.get_buffer): answers
    read in turn on several connections, over TLS too, each keep their own bytes, a 200 KiB
    body arrives whole, and the connections are kept for the next request."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                name = head.split(b" ")[1].strip(b"/")
                body = name * (200_000 // len(name)) if name.startswith(b"big") else name
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    forwarder = Forwarder(tls=client_tls)  # the test CA's, instead of the system's

    async def fetch(pool: Pool, upstream: Upstream, name: str) -> bytes:
        scope = {"method": "GET", "raw_path": f"/{name}".encode(), "query_string": b""}
        answer = await forwarder.open(pool, upstream, scope, HOST, None, read_timeout=10)
        whole = await forwarder.buffered(answer, scope, 10)
        if whole is None:  # too large to buffer: read as a stream
            parts = []
            while chunk := await answer.read_some(10, None):
                parts.append(chunk)
            answer.release()
            whole = b"".join(parts)
        return whole

    async def main() -> None:
        servers = []
        try:
            for scheme, tls in (("http", None), ("https", server_tls)):
                server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
                servers.append(server)
                port = server.sockets[0].getsockname()[1]
                upstream = dataclasses.replace(
                    BASE, url=f"{scheme}://127.0.0.1:{port}", scheme=scheme, port=port
                )
                pool = forwarder.enter(upstream)

                try:
                    for _ in range(2):  # the second round on the kept connections
                        names = [f"{scheme}{i}" for i in range(8)] + [f"big{scheme}"]
                        got = await asyncio.gather(*(fetch(pool, upstream, n) for n in names))
                        assert got[:8] == [name.encode() for name in names[:8]]
                        big = names[8].encode()
                        assert got[8] == big * (200_000 // len(big))
                    assert len(pool.idle) == len(pool.open) == 9
                finally:
                    forwarder.leave(pool)
        finally:
            await forwarder.close()
            for server in servers:
                server.close()
                await server.wait_closed()

    run(main())
