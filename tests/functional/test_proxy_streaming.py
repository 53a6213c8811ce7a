"""Large bodies stream through the real proxy both ways without being held in memory: 1 GiB down
and 1 GiB up (generated and counted at the ends, never stored), with the proxy's peak RSS
(VmHWM) growing by less than 100 MiB, also when one side stops reading for a while."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.functional.proxy_support import (
    OK,
    Conn,
    MiB,
    ProxyProcess,
    Reader,
    Recorder,
    Seen,
    Table,
    Writer,
    build,
    download,
    download_size,
    get,
    read_body,
    recorder,
    running,
    sink,
    upload,
)

GiB = 1 << 30
RSS_BUDGET = 100 * MiB
TIME_BUDGET = 20.0


@pytest.fixture(scope="module")
def main() -> Iterator[Recorder]:
    with recorder() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def proxy(main: Recorder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    table = Table(
        tmp_path_factory.mktemp("streaming") / "routes.yaml", {"main": main.url}, max_body="2GiB"
    )
    with running(["--routes", str(table.write()), "--no-access-log"]) as proxy:
        assert get(proxy.external, "/warm-up").status == 200  # pools, buffers, lazy imports
        yield proxy


@pytest.fixture
def baseline(proxy: ProxyProcess) -> int:
    return proxy.peak_rss()


def test_a_1_gib_download_streams(proxy: ProxyProcess, main: Recorder, baseline: int) -> None:
    main.reset(download(GiB))
    started = time.monotonic()
    assert download_size(proxy.external, "/big.bin") == (200, GiB)
    assert time.monotonic() - started < TIME_BUDGET
    assert proxy.peak_rss() - baseline < RSS_BUDGET


def test_a_1_gib_upload_streams(proxy: ProxyProcess, main: Recorder, baseline: int) -> None:
    main.reset(sink())
    started = time.monotonic()
    answer = upload(proxy.external, "/upload", GiB)
    assert answer.status == 200
    assert answer.body == str(GiB).encode()
    assert main.only().content_length == GiB  # the client's framing, not re-chunked
    assert time.monotonic() - started < TIME_BUDGET
    assert proxy.peak_rss() - baseline < RSS_BUDGET


def test_a_client_that_stops_reading_is_not_buffered_for(
    proxy: ProxyProcess, main: Recorder, baseline: int
) -> None:
    main.reset(download(256 * MiB))
    assert download_size(proxy.external, "/big.bin", pause=2.0) == (200, 256 * MiB)
    assert proxy.peak_rss() - baseline < RSS_BUDGET


def test_an_upstream_that_stops_reading_is_not_buffered_for(
    proxy: ProxyProcess, main: Recorder, baseline: int
) -> None:
    main.reset(sink(pause=2.0))
    answer = upload(proxy.external, "/upload", 256 * MiB)
    assert answer.body == str(256 * MiB).encode()
    assert proxy.peak_rss() - baseline < RSS_BUDGET


def test_a_client_that_stops_reading_frees_its_upstream_connection(tmp_path: Path) -> None:
    """With one upstream connection, a client that stops reading a large answer must not
    starve everyone else: after the send timeout its answer is aborted and the connection
    goes back to the pool."""
    block = bytes(MiB)

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        if seen.target.startswith(b"/big"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (512 * MiB))
            for _ in range(512):
                writer.write(block)
                await writer.drain()
            return True
        writer.write(OK)
        await writer.drain()
        return True

    with recorder() as upstream:
        upstream.handler = handle
        routes = tmp_path / "routes.yaml"
        routes.write_text(
            f'upstreams:\n  main: {{url: "{upstream.url}", max_connections: 1}}\ndefault: main\n'
        )
        # One client address here plays both clients: let it hold the whole pool.
        env = {"STRANGLER_SEND_TIMEOUT": "1", "STRANGLER_UPSTREAM_SHARE_PER_CLIENT": "1"}
        with (
            running(["--routes", str(routes), "--no-access-log"], env) as proxy,
            Conn(proxy.external, timeout=30) as stalled,
        ):
            stalled.sendall(build("GET", "/big"))  # and never read the answer
            time.sleep(0.5)  # the big answer holds the only upstream connection now
            started = time.monotonic()
            answer = get(proxy.external, "/small", timeout=15)
            assert answer.status == 200
            assert time.monotonic() - started < 8
            received = stalled.read_until_closed()  # what the socket buffers held, then EOF
            assert len(received) < 512 * MiB
