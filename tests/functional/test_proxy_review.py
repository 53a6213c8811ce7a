"""Regressions for what a review of the data plane found: request smuggling through Upgrade,
streams outliving their client, bodiless answers with Content-Length, upstream headers uvicorn
refuses, unbounded header values, listeners sharing a port, leaks of upstream addresses, and a
table that validates but cannot compile."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.proxy_support import (
    Conn,
    ProxyProcess,
    Reader,
    Recorder,
    Seen,
    Writer,
    build,
    get,
    problem,
    read_body,
    recorder,
    reply,
    running,
    wait_until,
)


@pytest.fixture(scope="module")
def main() -> Iterator[Recorder]:
    with recorder() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def proxy(main: Recorder) -> Iterator[ProxyProcess]:
    with running(["--default-upstream", main.url]) as proxy:
        yield proxy


@pytest.fixture
def upstream(main: Recorder) -> Recorder:
    main.reset()
    return main


def test_an_upgrade_request_with_a_body_is_refused_not_smuggled(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\nX-Note: this was the POST body\r\n\r\n"
    head = build(
        "POST",
        "/early",
        [("Connection", "Upgrade"), ("Upgrade", "h2c"), ("Content-Length", str(len(smuggled)))],
    )
    with Conn(proxy.external) as conn:
        conn.sendall(head)
        time.sleep(0.3)
        with contextlib.suppress(OSError):  # already closed: fine
            conn.sendall(smuggled)
        problem(conn.read_response(), 400, "bad-request")
    time.sleep(0.3)
    assert [s.target for s in upstream.seen] == []


def test_a_bodiless_upgrade_request_is_answered_then_the_connection_closes(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    with Conn(proxy.external) as conn:
        conn.sendall(build("GET", "/up", [("Connection", "Upgrade"), ("Upgrade", "h2c")]))
        answer = conn.read_response()
        assert answer.status == 200
        assert conn.closed_by_peer()
    seen = upstream.only()
    assert seen.value("upgrade") is None


def test_a_stream_stops_when_its_client_leaves(main: Recorder) -> None:
    stopped = asyncio.Event()

    async def endless(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(600):
                writer.write(b"10000\r\n" + bytes(65536) + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, OSError):
            pass
        stopped.set()
        return False

    main.reset(endless)
    with running(["--default-upstream", main.url]) as proxy:
        with Conn(proxy.external) as conn:
            conn.sendall(build("GET", "/stream"))
            conn._fill()  # the head and a first chunk
        started = time.monotonic()
        wait_until(stopped.is_set, 10, "the upstream stream cut after the client left")
        assert time.monotonic() - started < 5
    main.reset()


@pytest.mark.parametrize("status", [204, 304])
def test_a_bodiless_answer_with_content_length_keeps_the_connection(
    proxy: ProxyProcess, upstream: Recorder, status: int
) -> None:
    upstream.reset(reply(b'HTTP/1.1 %d X\r\nContent-Length: 1000\r\nETag: "e"\r\n\r\n' % status))
    with Conn(proxy.external) as conn:
        conn.sendall(build("GET", "/first") + build("GET", "/second"))
        first = conn.read_response(head_request=True)
        assert first.status == status
        assert first.value("etag") == b'"e"'
        upstream.reset()
        assert conn.read_response().status in {status, 200}


def test_an_upstream_header_uvicorn_refuses_is_a_502(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.reset(reply(b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\nContent-Length: 2\r\n\r\nok"))
    problem(get(proxy.external, "/bad-header"), 502, "bad-upstream-response")


def test_an_endless_header_value_is_refused_with_bounded_memory(proxy: ProxyProcess) -> None:
    baseline = proxy.peak_rss()
    with Conn(proxy.external, timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: ")
        try:
            for _ in range(200):  # 12.8 MiB without a line end
                conn.sendall(b"a" * 65536)
        except OSError:
            pass  # refused and closed part-way: expected
        problem(conn.read_response(), 431, "headers-too-large")
    assert proxy.peak_rss() - baseline < 32 * 1024 * 1024


def test_a_502_does_not_tell_clients_the_upstream_address() -> None:
    with running(["--default-upstream", "http://127.0.0.1:9"]) as proxy:
        body = problem(get(proxy.external, "/"), 502, "upstream-unreachable")
    assert "127.0.0.1" not in str(body)
    assert ":9" not in str(body)


def test_two_listeners_on_one_port_are_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "strangler"),
            "serve",
            "--default-upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:18950",
            "--internal-listen",
            "off",
            "--admin-listen",
            "127.0.0.2:18950",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "cannot share port 18950" in done.stderr


def test_a_header_condition_that_cannot_be_matched_is_refused_by_validation(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        'upstreams:\n  a: {url: "http://127.0.0.1:9"}\ndefault: a\nroutes:\n'
        '  - name: euro\n    match: {path: /x, headers: {x-a: "€"}}\n    to: a\n'
    )
    done = subprocess.run(
        [str(Path(sys.executable).parent / "strangler"), "routes", "validate", str(routes)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "printable ASCII" in done.stderr


def test_sticky_client_ip_behind_a_trusted_hop_uses_the_forwarded_client(tmp_path: Path) -> None:
    with recorder() as a, recorder() as b:
        routes = tmp_path / "routes.yaml"
        routes.write_text(
            f'upstreams:\n  a: {{url: "{a.url}"}}\n  b: {{url: "{b.url}"}}\ndefault: a\n'
            "routes:\n  - name: all\n    match: {path: /}\n    split: {a: 50, b: 50}\n"
            "    sticky: client-ip\n"
        )
        with running(["--routes", str(routes), "--trusted-hop", "127.0.0.0/8"]) as proxy:
            for n in range(40):
                forwarded = [("X-Forwarded-For", f"203.0.113.{n}")]
                assert get(proxy.external, f"/u{n}", headers=forwarded).status == 200
                again = get(proxy.external, f"/u{n}", headers=forwarded)
                assert again.status == 200
        assert a.seen
        assert b.seen  # 40 clients behind one balancer: spread over both upstreams
        for n in range(40):  # and each one stayed on its upstream
            target = f"/u{n}".encode()
            assert sum(s.target == target for s in a.seen) in {0, 2}
