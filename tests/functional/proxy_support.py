"""What the proxy's functional tests run: the real `strangler serve` as a child process, a raw
recorder upstream, and a raw-socket HTTP/1.1 client.

- `ProxyProcess` starts `strangler serve` on 127.0.0.1 with port 0 for every listener and reads
  the addresses from its one "strangler serving ..." line on stderr (proxy.procs.Child only knows
  uvicorn's line), then polls the admin listener's /healthz until it answers.
- `Recorder` is an asyncio server in a thread of its own: it keeps the exact bytes of every
  request it receives and answers with whatever the test chose (canned raw bytes, a slow answer,
  no answer, a cut body, a generated download, a counted upload). Nothing is buffered beyond one
  request unless the test asks, so gigabyte bodies pass through it.
- `send` / `exchange` write raw request bytes and parse one raw response, so tests see header
  case, duplicates, order and framing exactly; every call has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from proxy.procs import Child

STRANGLER = str(Path(sys.executable).parent / "strangler")
_ANNOUNCE = re.compile(r"strangler serving (.*)")
_LISTENER = re.compile(r"(external|internal|admin) on https?://([\d.]+):(\d+)")
MiB = 1 << 20
CLIENT_TIMEOUT = 10.0


# --- the raw client -------------------------------------------------------------------------------
@dataclass
class Response:
    status: int
    reason: bytes
    head: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool = True  # False: the connection closed before the framing said the body ended
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)  # of a chunked body

    def values(self, name: str) -> list[bytes]:
        wanted = name.lower().encode()
        return [v for n, v in self.headers if n.lower() == wanted]

    def value(self, name: str) -> bytes | None:
        found = self.values(name)
        assert len(found) <= 1, f"{name} appears {len(found)} times: {found}"
        return found[0] if found else None

    def names(self) -> list[bytes]:
        return [n.lower() for n, _ in self.headers]

    def json(self) -> object:
        return json.loads(self.body)


class Conn:
    """One client connection; reads responses with a deadline, never blocking for ever."""

    def __init__(self, port: int, timeout: float = CLIENT_TIMEOUT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(MiB)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_until_closed(self) -> bytes:
        """Everything until the proxy closes the connection (raises on timeout)."""
        while self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data

    def closed_by_peer(self) -> bool:
        """True when the peer has closed (EOF or reset) with nothing more to read."""
        try:
            return not self._fill()
        except ConnectionResetError:
            return True

    def read_response(self, *, head_request: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a response head: {self.buffer[:200]!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        _version, status, *reason = lines[0].split(b" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip()))
        response = Response(int(status), reason[0] if reason else b"", head, headers, b"")
        lowered = {n.lower(): v for n, v in headers}
        if head_request or response.status in (204, 304) or 100 <= response.status < 200:
            return response
        if b"chunked" in lowered.get(b"transfer-encoding", b"").lower():
            response.body, response.complete = self._read_chunked(response.trailers)
        elif b"content-length" in lowered:
            response.body, response.complete = self._read_exactly(int(lowered[b"content-length"]))
        else:
            response.body = self.read_until_closed()
        return response

    def _read_exactly(self, size: int) -> tuple[bytes, bool]:
        while len(self.buffer) < size:
            try:
                if not self._fill():
                    break
            except ConnectionResetError:
                break
        if len(self.buffer) < size:
            data, self.buffer = self.buffer, b""
            return data, False
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data, True

    def _line(self) -> bytes | None:
        """The next CRLF-ended line, None if the connection closes first."""
        while b"\r\n" not in self.buffer:
            if not self._fill():
                return None
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _read_chunked(self, trailers: list[tuple[bytes, bytes]]) -> tuple[bytes, bool]:
        """The body; the trailer section's fields are added to `trailers`."""
        body = b""
        try:
            while True:
                line = self._line()
                if line is None:
                    return body, False
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while line := self._line():
                        name, _, value = line.partition(b":")
                        trailers.append((name, value.strip()))
                    return body, line is not None
                data, whole = self._read_exactly(size + 2)
                body += data[:size]
                if not whole:
                    return body, False
        except ConnectionResetError:
            return body, False


def build(
    method: str,
    target: str | bytes,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host: str | None = "proxy.test",
) -> bytes:
    """A raw request; adds Host (unless host=None) and Content-Length when there is a body."""
    lines = [method.encode() + b" " + (target if isinstance(target, bytes) else target.encode())]
    lines[0] += b" HTTP/1.1"
    if host is not None:
        lines.append(b"Host: " + host.encode())
    lines += [f"{name}: {value}".encode() for name, value in headers or []]
    framed = {name.lower() for name, _ in headers or []} & {"content-length", "transfer-encoding"}
    if body and not framed:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def exchange(
    port: int, raw: bytes, *, timeout: float = CLIENT_TIMEOUT, head: bool = False
) -> Response:
    """Send raw request bytes on a new connection and read one response."""
    with Conn(port, timeout) as conn:
        conn.sendall(raw)
        return conn.read_response(head_request=head)


def send(
    port: int,
    method: str,
    target: str | bytes,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host: str | None = "proxy.test",
    timeout: float = CLIENT_TIMEOUT,
) -> Response:
    return exchange(
        port,
        build(method, target, headers, body, host=host),
        timeout=timeout,
        head=method == "HEAD",
    )


def get(port: int, target: str, **kwargs: object) -> Response:
    return send(port, "GET", target, **kwargs)  # type: ignore[arg-type]


def download_size(
    port: int, target: str, *, timeout: float = 60.0, pause: float = 0.0
) -> tuple[int, int]:
    """GET `target` and count its body without keeping it: (status, body bytes). With `pause`,
    stop reading for that long first (a slow mobile client; the proxy must not buffer)."""
    with Conn(port, timeout) as conn:
        conn.sendall(build("GET", target))
        if pause:
            time.sleep(pause)
        while b"\r\n\r\n" not in conn.buffer:
            if not conn._fill():
                raise ConnectionError("closed before a response head")
        head, rest = conn.buffer.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        received = len(rest)
        buffer = bytearray(MiB)
        while received < length:
            got = conn.sock.recv_into(buffer)
            if not got:
                break
            received += got
        return status, received


def upload(port: int, target: str, size: int, *, timeout: float = 60.0) -> Response:
    """POST `size` zero bytes with a Content-Length, generated as they are sent."""
    block = bytes(MiB)
    with Conn(port, timeout) as conn:
        conn.sendall(build("POST", target, [("Content-Length", str(size))]))
        left = size
        while left:
            piece = block if left >= MiB else block[:left]
            conn.sendall(piece)
            left -= len(piece)
        return conn.read_response()


# --- the recorder upstream ------------------------------------------------------------------------
@dataclass
class Seen:
    """One request as the upstream received it."""

    head: bytes
    raw: bytes = b""  # head + body framing, exactly as received
    body: bytes = b""  # the body without chunked framing
    body_size: int = 0
    complete: bool = True

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def target(self) -> bytes:
        return self.request_line.split(b" ")[1]

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        out = []
        for line in self.head.rstrip(b"\r\n").split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            out.append((name, value.strip()))
        return out

    def values(self, name: str) -> list[bytes]:
        wanted = name.lower().encode()
        return [v for n, v in self.headers if n.lower() == wanted]

    def value(self, name: str) -> bytes | None:
        found = self.values(name)
        assert len(found) <= 1, f"{name} appears {len(found)} times upstream: {found}"
        return found[0] if found else None

    def names(self) -> list[bytes]:
        return [n.lower() for n, _ in self.headers]

    @property
    def chunked(self) -> bool:
        return any(b"chunked" in v.lower() for v in self.values("transfer-encoding"))

    @property
    def content_length(self) -> int | None:
        found = self.values("content-length")
        return int(found[0]) if found else None


Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


async def _pieces(seen: Seen, reader: Reader) -> AsyncIterator[tuple[bytes, bytes]]:
    """(raw framing bytes, body bytes) pieces of a request body, read as they come."""
    if seen.chunked:
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:
                trailer = line
                while True:
                    end = await reader.readuntil(b"\r\n")
                    trailer += end
                    if end == b"\r\n":
                        break
                yield trailer, b""
                return
            yield line, b""
            left = size
            while left:
                data = await reader.read(min(left, MiB))
                if not data:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(data)
                yield data, data
            yield await reader.readexactly(2), b""
    else:
        left = seen.content_length or 0
        while left:
            data = await reader.read(min(left, MiB))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            yield data, data


async def read_body(seen: Seen, reader: Reader, *, keep: bool = True) -> None:
    """Read the body of `seen`; keep its bytes (or only count them)."""
    raw, body = [seen.head], []
    seen.raw = seen.head
    try:
        async for framing, data in _pieces(seen, reader):
            seen.body_size += len(data)
            if keep:
                raw.append(framing)
                body.append(data)
    except (asyncio.IncompleteReadError, ConnectionError):
        seen.complete = False
        raise
    finally:
        if keep:
            seen.raw, seen.body = b"".join(raw), b"".join(body)


Handler = Callable[[Seen, Reader, Writer], Awaitable[bool]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def reply(raw: bytes = OK, *, delay: float = 0.0, close: bool = False) -> Handler:
    """Read the whole request, wait `delay`, answer `raw`; close afterwards if asked."""

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        if delay:
            await asyncio.sleep(delay)
        writer.write(raw)
        await writer.drain()
        return not close

    return handle


def trickle(*parts: bytes, gap: float = 0.1, then_close: bool = True) -> Handler:
    """Read the request, then write `parts` one by one with `gap` seconds between them (so the
    proxy has sent the head on before the rest arrives); close afterwards unless told not to."""

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        for index, part in enumerate(parts):
            if index:
                await asyncio.sleep(gap)
            writer.write(part)
            await writer.drain()
        return not then_close

    return handle


def never() -> Handler:
    """Read the request and never answer; wait until the proxy gives up and closes."""

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        await reader.read()
        return False

    return handle


def download(size: int, *, chunk: int = MiB) -> Handler:
    """Answer `size` zero bytes with a Content-Length, generated as they are written."""
    block = bytes(chunk)

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % size
        )
        left = size
        while left:
            piece = block if left >= chunk else block[:left]
            writer.write(piece)
            left -= len(piece)
            await writer.drain()
        return True

    return handle


def sink(*, pause: float = 0.0) -> Handler:
    """Count the request body without keeping it; answer the count. With `pause`, wait that
    long before reading the body (a slow upstream; the proxy must not buffer)."""

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        if pause:
            await asyncio.sleep(pause)
        await read_body(seen, reader, keep=False)
        answer = str(seen.body_size).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()
        return True

    return handle


_T = TypeVar("_T")


class LoopThread:
    """An event loop running in a thread of its own: a test's upstream server lives there."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Awaitable[_T]) -> _T:
        """Run `coro` on the loop; its result (within 30 s)."""

        async def run() -> _T:
            return await coro

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    def stop(self, server: asyncio.AbstractServer | None = None) -> None:
        """Close `server` (waiting for it), then the loop and its thread."""
        if server is not None:

            async def close() -> None:
                server.close()
                await server.wait_closed()

            self.call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class Recorder:
    """A raw HTTP/1.1 upstream on 127.0.0.1:0 in a thread with its own event loop."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.connections = 0
        self.handler: Handler = reply()
        self._tasks: set[asyncio.Task[None]] = set()
        self.thread = LoopThread("recorder")
        self.loop = self.thread.loop
        self.server = self.thread.call(
            asyncio.start_server(self._accept, "127.0.0.1", 0, limit=MiB)
        )
        self.port: int = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self, handler: Handler | None = None) -> None:
        self.seen = []
        self.connections = 0
        self.handler = handler or reply()

    def only(self) -> Seen:
        assert len(self.seen) == 1, f"the upstream saw {len(self.seen)} requests: {self.seen}"
        return self.seen[0]

    async def _accept(self, reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        self.seen.append(Seen(exc.partial, exc.partial, complete=False))
                    return
                seen = Seen(head)
                self.seen.append(seen)
                if not await self.handler(seen, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()

    def close(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.server.wait_closed()

        self.thread.call(shutdown())
        self.thread.stop()


@contextlib.contextmanager
def recorder() -> Iterator[Recorder]:
    upstream = Recorder()
    try:
        yield upstream
    finally:
        upstream.close()


# --- the proxy ------------------------------------------------------------------------------------
def wait_until(check: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _own_state_dir(args: list[str], env: dict[str, str]) -> list[str]:
    """A proxy keeps its state (shadow numbers, per-arm statistics, evidence) beside its
    routes.yaml, where the CLI looks for it, or in a directory of its own: never in the
    checkout's var/, which every other test's proxy would share."""
    if "--state-dir" in args or "STRANGLER_STATE_DIR" in env:
        return []
    if "--routes" in args:
        return ["--state-dir", str(Path(args[args.index("--routes") + 1]).parent / "var")]
    return ["--state-dir", tempfile.mkdtemp(prefix="strangler-state-")]


class ProxyProcess:
    """`strangler serve` on 127.0.0.1, every listener on port 0."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("STRANGLER_") and k != "PROMETHEUS_MULTIPROC_DIR"
        }
        # The whole suite can run on either upstream client: STRANGLER_TEST_UPSTREAM_CLIENT.
        chosen = os.environ.get("STRANGLER_TEST_UPSTREAM_CLIENT")
        if chosen:
            base["STRANGLER_UPSTREAM_CLIENT"] = chosen
        self.env = {**base, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.args = [
            STRANGLER,
            "serve",
            *args,
            *_own_state_dir(args, self.env),
            "--listen",
            "127.0.0.1:0",
            "--internal-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]
        self.ports: dict[str, int] = {}
        self.stderr: list[str] = []
        self.stdout: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._pumps: list[threading.Thread] = []
        self._ready = threading.Event()

    @property
    def external(self) -> int:
        return self.ports["external"]

    @property
    def internal(self) -> int:
        return self.ports["internal"]

    @property
    def admin(self) -> int:
        return self.ports["admin"]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _pump(self, stream: object, lines: list[str], announce: bool) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append(line)
            if announce and not self._ready.is_set() and (found := _ANNOUNCE.search(line)):
                for role, _host, port in _LISTENER.findall(found.group(1)):
                    self.ports[role] = int(port)
                self._ready.set()
        self._ready.set()

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        for stream, lines, announce in (
            (self.proc.stderr, self.stderr, True),
            (self.proc.stdout, self.stdout, False),
        ):
            pump = threading.Thread(
                target=self._pump, args=(stream, lines, announce), name="proxy-out", daemon=True
            )
            pump.start()
            self._pumps.append(pump)
        if not self._ready.wait(timeout) or "admin" not in self.ports:
            self.stop()
            raise AssertionError(f"the proxy did not start:\n{''.join(self.stderr[-30:])}")
        wait_until(self._healthy, timeout, "the proxy's /healthz")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the proxy exited:\n{''.join(self.stderr[-30:])}")
        try:
            return get(self.admin, "/healthz", timeout=1).status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.wait()
            log = "".join(self.stderr[-30:])
            raise AssertionError(f"the proxy did not stop within {timeout} s:\n{log}") from exc
        finally:
            for pump in self._pumps:
                pump.join(timeout=5)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        self.proc = None
        return code

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def peak_rss(self) -> int:
        """VmHWM of the proxy process, in bytes."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        assert found is not None
        return int(found.group(1)) * 1024

    def readyz(self) -> dict[str, object]:
        answer = get(self.admin, "/readyz")
        assert answer.status == 200
        data = answer.json()
        assert isinstance(data, dict)
        return data

    def metrics(self) -> str:
        answer = get(self.admin, "/metrics")
        assert answer.status == 200
        return answer.body.decode()


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str] | None = None) -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(args, env).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def counter(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        sample, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', sample))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


# --- route tables ---------------------------------------------------------------------------------
@dataclass
class Table:
    """A routes.yaml a test writes, rewrites and points the proxy at."""

    path: Path
    upstreams: dict[str, str]
    routes: list[dict[str, object]] = field(default_factory=list)
    default: str = "main"
    version: int = 1
    max_body: str | None = None

    def text(self) -> str:
        lines = [f"version: {self.version}", "upstreams:"]
        for name, url in self.upstreams.items():
            lines.append(f'  {name}: {{url: "{url}"}}')
        lines.append(f"default: {self.default}")
        if self.max_body:
            lines.append(f"max_body: {self.max_body}")
        if self.routes:
            lines.append("routes:")
            for route in self.routes:
                lines.append(f"  - {json.dumps(route)}")
        return "\n".join(lines) + "\n"

    def write(self) -> Path:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(self.text())
        temporary.replace(self.path)  # one rename: the watcher never sees half a file
        return self.path


def problem(answer: Response, status: int, kind: str | None = None) -> dict[str, object]:
    """Assert `answer` is the proxy's problem+json for `status` (with its request id)."""
    assert answer.status == status, (answer.status, answer.head, answer.body[:300])
    assert answer.value("content-type") == b"application/problem+json", answer.head
    data = answer.json()
    assert isinstance(data, dict)
    assert data["status"] == status
    assert str(data["type"]).startswith("urn:strangler:problem:")
    if kind is not None:
        assert data["type"] == f"urn:strangler:problem:{kind}", data
    return data


# --- the shared route store (Redis) ---------------------------------------------------------------
VERSION_HEADER = "strangler-route-version"


def echo(name: str) -> Handler:
    """Answer 200 with `name` as the body, so a client sees which upstream served it."""
    body = name.encode()
    return reply(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )


def route_version(answer: Response) -> int | None:
    """The route-table version an answer says served it (None without the header)."""
    value = answer.value(VERSION_HEADER)
    return int(value) if value is not None else None


def table_text(upstreams: dict[str, str], routes: list[dict[str, object]], default: str) -> str:
    """routes.yaml text (version 1; a store commit renumbers it)."""
    return Table(Path("routes.yaml"), upstreams, routes, default).text()


def store_args(url: str, prefix: str, cache: Path) -> list[str]:
    """`strangler serve` arguments for a replica of the Redis store at `url`."""
    return ["--store", url, "--store-prefix", prefix, "--store-cache", str(cache)]


def strangler_routes(
    *args: str, cwd: Path, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `strangler routes ARGS` in `cwd` as author "ops"; the caller checks the outcome."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STRANGLER_")}
    return subprocess.run(
        [STRANGLER, "routes", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env={**base, "STRANGLER_AUTHOR": "ops"},
    )


def subscribers(url: str) -> set[str]:
    """Ids of the clients of the Redis at `url` that hold a route-table subscription (the
    consumers' follower and the pins' feed name their own)."""
    import redis

    from proxy.store.consumers import FOLLOWER_NAME
    from proxy.store.pins import FEED_NAME

    client = redis.Redis.from_url(url)
    try:
        return {
            entry["id"]
            for entry in client.client_list(_type="pubsub")
            if entry.get("name") not in (FOLLOWER_NAME, FEED_NAME)
        }
    finally:
        client.close()


def logged(proxy: ProxyProcess, text: str) -> bool:
    """Whether the proxy has written `text` to its stderr (its log) so far."""
    return any(text in line for line in list(proxy.stderr))


@contextlib.contextmanager
def seeded_monolith(work: Path, *, payments: int, users: int) -> Iterator[Child]:
    """The legacy monolith as its operators run it: seeded into a SQLite file under `work`,
    then served on a free port of 127.0.0.1."""
    url = f"sqlite:///{work / 'shop.db'}"
    seed = ["seed", "--database-url", url, "--payments", str(payments), "--users", str(users)]
    seeded = subprocess.run(
        [sys.executable, "-m", "legacy_monolith", *seed],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert seeded.returncode == 0, seeded.stderr
    args = [sys.executable, "-m", "legacy_monolith", "--port", "0", "--database-url", url]
    with Child("monolith", args, cwd=str(work)) as child:
        yield child
