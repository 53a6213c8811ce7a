"""Helpers for tests that run real processes on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from fastapi import FastAPI

from tests.conftest import IN_CI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll `check` until it is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class RedisProcess:
    """A redis-server of the test's own, which the test may stop and start (outages).

    With `persist` it keeps its data across a stop (kill -9) and start, as a production Redis
    with an append-only file does: `--appendonly yes --appendfsync always` in a folder of its
    own (`workdir`, removed by `cleanup`), so every write acknowledged before the kill is there
    after it. Without, a restart comes back empty (streams and consumer groups gone).
    """

    def __init__(self, binary: str, *, persist: bool = False) -> None:
        self.binary = binary
        self.port = free_port()
        self.persist = persist
        self.workdir = tempfile.mkdtemp(prefix="strangler-redis-") if persist else None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if self.workdir is not None:
            storage = ["--appendonly", "yes", "--appendfsync", "always", "--dir", self.workdir]
        else:
            storage = ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *storage],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_answers(self.port), what=f"redis-server on {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self, down_for: float = 0.0) -> None:
        """Kill the server, stay down `down_for` seconds, start it again on the same port."""
        self.stop()
        time.sleep(down_for)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def redis_process(*, persist: bool = False) -> Iterator[RedisProcess]:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (the outage tests run their own)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    server = RedisProcess(binary, persist=persist)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` served by uvicorn on 127.0.0.1, port 0, in a thread (lifespan included); yields
    its URL once it listens."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        started = threading.Event()
        for _ in range(1500):
            if server.started or not thread.is_alive():
                break
            started.wait(0.01)
        if not server.started:
            raise RuntimeError("the server did not start")
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
