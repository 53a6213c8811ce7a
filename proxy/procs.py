"""Child processes the CLI starts (the demo's monolith, later services and proxies).

A child is started as its operators start it, on 127.0.0.1 with port 0; the bound address is
read from uvicorn's "Uvicorn running on http://HOST:PORT" line, then the port is polled until it
accepts connections. Stopping sends SIGTERM, which uvicorn answers with a graceful shutdown.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from types import TracebackType

UVICORN_READY = re.compile(r"Uvicorn running on (http://[\w.\[\]:-]+:\d+)")
# `strangler serve` announces every listener on one line; the external one is the URL.
STRANGLER_READY = re.compile(r"strangler serving external on (http://[\w.\[\]:-]+:\d+)")
_LISTENER = re.compile(r"(\w+) on (http://[\w.\[\]:-]+:\d+)")


class ChildFailed(RuntimeError):
    """A child process exited or did not become ready; carries what it printed."""


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Child:
    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        ready: re.Pattern[str] = UVICORN_READY,
    ) -> None:
        self.name = name
        self.ready = ready
        self.listeners: dict[str, str] = {}
        self.args = args
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.url = ""
        self.output: deque[str] = deque(maxlen=500)  # the last lines, for error reports
        self._proc: subprocess.Popen[str] | None = None
        self._pump: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> Child:
        self._proc = subprocess.Popen(  # noqa: S603 - our own commands, never shell-parsed
            self.args,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()
        stdout = self._proc.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                self.output.append(line)
                found = self.ready.search(line)
                if found and not self.url:
                    self.listeners = dict(_LISTENER.findall(line))
                    self.url = found.group(1)
                    ready.set()
            ready.set()

        self._pump = threading.Thread(target=pump, name=f"{self.name}-output", daemon=True)
        self._pump.start()
        if not ready.wait(timeout) or not self.url:
            self.stop()
            raise ChildFailed(f"{self.name} did not start:\n{''.join(list(self.output)[-20:])}")
        port = int(self.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + timeout
        while not _accepts(port):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.stop()
                raise ChildFailed(f"{self.name} never accepted connections on {self.url}")
            time.sleep(0.02)
        return self

    def run_to_end(self, timeout: float = 300.0) -> tuple[int, str]:
        """Run a command that exits by itself (no server); return its exit code and output."""
        done = subprocess.run(  # noqa: S603 - our own commands, never shell-parsed
            self.args,
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        return done.returncode, done.stdout

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
        """Stop the child (SIGTERM: graceful) and return its exit code."""
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        if self._pump is not None:
            self._pump.join(timeout=5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None
        return code

    def __enter__(self) -> Child:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
