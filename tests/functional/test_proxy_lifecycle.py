"""The real proxy's process life: a graceful SIGTERM that lets in-flight requests finish, and
several workers sharing the listeners with one merged /metrics."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.functional.proxy_support import (
    Conn,
    ProxyProcess,
    Recorder,
    build,
    counter,
    get,
    recorder,
    reply,
    wait_until,
)


@pytest.fixture(scope="module")
def main() -> Iterator[Recorder]:
    with recorder() as upstream:
        yield upstream


def sigterm_during_a_slow_request(main: Recorder) -> int:
    """SIGTERM while one slow request is upstream; that request's answer must be whole."""
    main.reset(reply(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone", delay=1.5))
    proxy = ProxyProcess(["--default-upstream", main.url]).start()
    try:
        with Conn(proxy.external) as conn:
            conn.sendall(build("GET", "/slow-report"))
            wait_until(lambda: len(main.seen) == 1, what="the request upstream")
            assert proxy.proc is not None
            proxy.proc.send_signal(signal.SIGTERM)
            answer = conn.read_response()
            assert answer.status == 200
            assert answer.complete
            assert answer.body == b"done"
        code = proxy.wait(timeout=15)
    finally:
        proxy.stop()
    assert "Traceback" not in "".join(proxy.stderr), "".join(proxy.stderr)
    return code


def test_sigterm_lets_the_request_in_flight_finish(main: Recorder) -> None:
    code = sigterm_during_a_slow_request(main)
    assert code in (0, -signal.SIGTERM)  # exits by itself; the code is the next test's business


def test_sigterm_during_a_request_exits_0(main: Recorder) -> None:
    code = sigterm_during_a_slow_request(main)
    assert code == 0


def test_sigterm_with_nothing_in_flight_exits_0_promptly(main: Recorder) -> None:
    main.reset()
    proxy = ProxyProcess(["--default-upstream", main.url]).start()
    assert get(proxy.external, "/once").status == 200
    started = time.monotonic()
    code = proxy.stop(timeout=15)
    assert time.monotonic() - started < 5
    assert code == 0


def test_sigterm_closes_idle_keep_alive_connections_and_exits_promptly(main: Recorder) -> None:
    """Clients that keep their connections open between requests (every mobile app) must not
    hold up a stop: each idle connection is closed at once, and the proxy exits 0."""
    main.reset()
    proxy = ProxyProcess(["--default-upstream", main.url]).start()
    conns = [Conn(proxy.external) for _ in range(3)]
    try:
        for round_ in range(2):  # a second request on each: the connections are kept
            for at, conn in enumerate(conns):
                conn.sendall(build("GET", f"/idle-{at}-{round_}"))
                assert conn.read_response().status == 200
        started = time.monotonic()
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        for conn in conns:
            assert conn.sock.recv(1) == b""  # closed by the proxy, no answer pending
        code = proxy.wait(timeout=15)
        assert time.monotonic() - started < 5
        assert code == 0
    finally:
        for conn in conns:
            conn.close()
        proxy.stop()


def test_two_workers_serve_and_metrics_merge_them(main: Recorder, tmp_path: Path) -> None:
    main.reset()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    proxy = ProxyProcess(["--default-upstream", main.url, "--workers", "2"], env).start()
    try:
        sent = 0

        def one(_: int) -> int:
            return get(proxy.external, "/spread").status

        # Each worker writes its own counter file once it has answered a request; go on
        # until both have (new connections are shared between the workers by the kernel).
        with ThreadPoolExecutor(4) as pool:
            deadline = time.monotonic() + 20
            while len(list(metrics_dir.glob("counter_*.db"))) < 2:
                assert time.monotonic() < deadline, "one worker served everything"
                assert list(pool.map(one, range(8))) == [200] * 8
                sent += 8
        assert len(main.seen) == sent
        # A request is counted just after its answer is sent: give the last one a moment.
        deadline = time.monotonic() + 5
        text = proxy.metrics()
        while counter(text, "strangler_request_duration_seconds_count") < sent:
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
            text = proxy.metrics()
        assert counter(text, "strangler_requests_total", route="default", code="200") == sent
        assert counter(text, "strangler_request_duration_seconds_count") == sent
        assert counter(text, "strangler_route_table_version") == 0
    finally:
        code = proxy.stop()
    assert code == 0
