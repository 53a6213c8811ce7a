"""A real HTTP/1.1 upstream on 127.0.0.1 that fails on demand, for testing a proxy's retries,
fallback and circuit breaking.

`FaultyUpstream` is an asyncio raw-socket server in a thread with its own event loop, so proxies
running in the test process and proxies running as child processes can both use it:

    with FaultyUpstream() as up:
        up.script(["reset_before", "reset_before", "ok"])  # the next three requests, in order
        up.on("/fail", "503")  # then by path prefix (the longest prefix wins)
        ...
        assert up.count("POST", "/orders") == 1

Each request gets one behaviour, chosen when its head arrives: the next item of the script, else
`up.mode` when set, else the rule of the longest matching path prefix, else "ok". Behaviours:

- "ok" / "ok:SIZE": 200 with a JSON echo (upstream name, request number, method, path,
  connection, reused, body length); with SIZE the body is exactly SIZE bytes (the echo padded with
  spaces, still JSON, or SIZE "x" bytes when the echo does not fit).
- "500", "502", "503", "504", ... (any code 200-599): that status with a small JSON body.
- "reset_before": read the request, then reset the connection (SO_LINGER 0), no byte answered.
- "close_before": read the request, then close it (FIN), no byte answered.
- "reset_after[:SENT[:TOTAL[:PAUSE]]]": the head of a 200 with Content-Length TOTAL (1000), SENT
  body bytes (100), a PAUSE (0.1 s, so the head can travel on first), then a reset.
- "stall": read the request and never answer, until the client closes or the server stops;
  "stall:SECONDS": answer "ok" after that delay.
- "drop_reused" / "drop_reused:reset": on a connection that already served a request (the stale
  keep-alive race), read the request and close (FIN) or reset without answering; on a fresh
  connection answer "ok". A request with `Expect: 100-continue` is dropped at its head, with no
  100 and its body unread (a closing server says nothing), and recorded without a body.
- "slow_body[:SIZE[:RATE]]": 200 with a Content-Length body of SIZE bytes (256 KiB) written at
  RATE bytes per second (1 MiB/s).

A refused port is no per-request behaviour: `up.stop_listening()` / `up.start_listening()` close
and re-open the listener on the same port (kept bound meanwhile, so connecting is refused and no
one else can take it), and `refused_port()` gives a port where nothing listens.

Every request is recorded (`Request`) after its body was read; `count`, `requests`,
`wait_for_requests`, `reset_log` and `connections` let a test assert what reached the upstream.
Request bodies may use Content-Length or chunked framing; connections are kept alive unless the
client asks otherwise; `Expect: 100-continue` is honoured.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar

__all__ = [
    "BEHAVIOURS",
    "Behaviour",
    "FaultyUpstream",
    "Request",
    "faulty_upstream",
    "refused_port",
]

BEHAVIOURS = (
    "ok",
    "<status>",
    "reset_before",
    "close_before",
    "reset_after",
    "stall",
    "drop_reused",
    "slow_body",
)
HEAD_LIMIT = 1 << 20  # the longest request head (and chunk-size line) accepted
PIECE = 1 << 20  # the most body bytes read at once
_T = TypeVar("_T")


# --- behaviours -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Behaviour:
    """One parsed behaviour: its kind, its numeric arguments and the text it came from."""

    kind: str
    args: tuple[float, ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str | Behaviour) -> Behaviour:
        """Parse "kind[:arg[:arg...]]"; raise ValueError for anything unknown or out of range."""
        if isinstance(text, Behaviour):
            return text
        kind, *raw = text.strip().split(":")
        if kind == "drop_reused":
            if raw not in ([], ["reset"], ["close"]):
                raise ValueError(f"drop_reused takes no argument, ':close' or ':reset': {text!r}")
            return cls(kind, (1.0,) if raw == ["reset"] else (), text)
        if kind == "refuse":
            raise ValueError(
                "'refuse' is no per-request behaviour: use up.stop_listening() or refused_port()"
            )
        try:
            args = tuple(float(each) for each in raw)
        except ValueError:
            raise ValueError(f"behaviour arguments must be numbers: {text!r}") from None
        if any(each < 0 for each in args):
            raise ValueError(f"behaviour arguments must not be negative: {text!r}")
        most = {
            "ok": 1,
            "reset_before": 0,
            "close_before": 0,
            "reset_after": 3,
            "stall": 1,
            "slow_body": 2,
        }
        if kind.isdigit() and len(kind) == 3:
            if not 200 <= int(kind) <= 599 or raw:
                raise ValueError(f"a status behaviour is a bare code from 200 to 599: {text!r}")
            return cls("status", (float(kind),), text)
        if kind not in most:
            raise ValueError(f"unknown behaviour {text!r}; known: {', '.join(BEHAVIOURS)}")
        if len(args) > most[kind]:
            raise ValueError(f"{kind} takes at most {most[kind]} argument(s): {text!r}")
        if kind == "reset_after":
            sent, total = (*args, 100.0, 1000.0)[:2]
            if sent >= total:
                raise ValueError(f"reset_after must send less than its Content-Length: {text!r}")
        if kind == "slow_body" and len(args) == 2 and args[1] == 0:
            raise ValueError(f"slow_body needs a rate above 0: {text!r}")
        return cls(kind, args, text)

    def arg(self, index: int, default: float) -> float:
        return self.args[index] if len(self.args) > index else default


# --- what was received ----------------------------------------------------------------------------
@dataclass
class Request:
    """One request as the upstream received it (recorded once its body was read)."""

    number: int  # 1, 2, ... over the server's life (also in the "ok" echo as "n")
    method: str
    target: str  # as sent, query included
    version: str  # "HTTP/1.1"
    headers: list[tuple[bytes, bytes]]  # names as sent, values without surrounding whitespace
    body: bytes  # de-chunked; at most FaultyUpstream.keep_body bytes of it
    body_size: int  # every body byte received
    complete: bool  # the whole body arrived (False: the client went away mid-body)
    connection: int  # 1, 2, ... the connection's number over the server's life
    reused: bool  # the connection had served a request before this one
    behaviour: str  # the behaviour applied, as it was given ("malformed" for a 400)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    answered: bool = False  # a whole response was written for it
    received_at: float = field(default_factory=time.monotonic)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def values(self, name: str) -> list[bytes]:
        wanted = name.lower().encode()
        return [value for key, value in self.headers if key.lower() == wanted]

    def header(self, name: str) -> bytes | None:
        """The first value of header `name` (case-insensitive), or None."""
        found = self.values(name)
        return found[0] if found else None

    def matches(
        self,
        method: str | None = None,
        path: str | None = None,
        *,
        prefix: str | None = None,
        header: tuple[str, str | bytes] | None = None,
        behaviour: str | None = None,
    ) -> bool:
        if method is not None and self.method != method.upper():
            return False
        if path is not None and self.path != path:
            return False
        if prefix is not None and not self.path.startswith(prefix):
            return False
        if behaviour is not None and self.behaviour != behaviour:
            return False
        if header is not None:
            name, value = header
            wanted = value.encode() if isinstance(value, str) else value
            if wanted not in self.values(name):
                return False
        return True


class _BadRequest(Exception):
    pass


@dataclass
class _Head:
    method: str
    target: str
    version: str
    headers: list[tuple[bytes, bytes]]
    chunked: bool
    length: int
    keep_alive: bool
    expect_continue: bool

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


def _parse_head(head: bytes) -> _Head:
    lines = head[: -len(b"\r\n\r\n")].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[2].startswith(b"HTTP/1."):
        raise _BadRequest(f"bad request line {lines[0][:100]!r}")
    method, target, version = (part.decode("latin-1") for part in parts)
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise _BadRequest(f"bad header line {line[:100]!r}")
        headers.append((name, value.strip(b" \t")))

    def values(wanted: bytes) -> list[bytes]:
        return [v for n, v in headers if n.lower() == wanted]

    codings = [c.strip().lower() for v in values(b"transfer-encoding") for c in v.split(b",")]
    chunked = bool(codings) and codings[-1] == b"chunked"
    if codings and not chunked:
        raise _BadRequest("a Transfer-Encoding without chunked last")
    length = 0
    lengths = {each.strip() for v in values(b"content-length") for each in v.split(b",")}
    if lengths and not chunked:
        if len(lengths) != 1 or not next(iter(lengths)).isdigit():
            raise _BadRequest(f"bad Content-Length {sorted(lengths)}")
        length = int(next(iter(lengths)))
    tokens = {t.strip().lower() for v in values(b"connection") for t in v.split(b",")}
    keep_alive = b"keep-alive" in tokens if version == "HTTP/1.0" else b"close" not in tokens
    if codings and lengths:
        keep_alive = False  # both framings: answer, then close (RFC 9112 6.3)
    expect = [v.strip().lower() for v in values(b"expect")]
    return _Head(
        method,
        target,
        version,
        headers,
        chunked,
        length,
        keep_alive,
        b"100-continue" in expect and version != "HTTP/1.0" and (chunked or length > 0),
    )


# --- the server -----------------------------------------------------------------------------------
@dataclass
class _Connection:
    number: int
    writer: asyncio.StreamWriter
    served: int = 0
    idle: bool = True


Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


class FaultyUpstream:
    """A raw HTTP/1.1 upstream on 127.0.0.1:0 whose answers a test chooses per request.

    Start it with `with FaultyUpstream() as up:` (or `up = FaultyUpstream().start()` and
    `up.close()`); `up.url` and `up.port` stay the same for its whole life."""

    keep_body = 16 << 20  # body bytes kept per request (all are counted in body_size)

    def __init__(self, name: str = "faulty") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._mode: Behaviour | None = None
        self._rules: dict[str, Behaviour] = {}
        self._script: deque[Behaviour] = deque()
        self._log: list[Request] = []
        self._requests_seen = 0
        self._connections_seen = 0
        self._connections_logged = 0
        self._live: dict[int, _Connection] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._reserved: socket.socket | None = None  # bound, not listening (stop_listening)
        self._port: int | None = None
        self._stopping = False

    # --- life ---
    def start(self) -> FaultyUpstream:
        if self._loop is not None:
            raise RuntimeError("this FaultyUpstream was started already")
        self._loop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"faulty-upstream-{self.name}", daemon=True
        )
        self._thread.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = int(sock.getsockname()[1])
        try:
            self._server = self._call(self._listen(sock))
        except BaseException:
            sock.close()
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop listening, close every connection, stop the loop and join its thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or loop.is_closed():
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                self._call(self._shutdown())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

    def __enter__(self) -> FaultyUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the FaultyUpstream is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def stop_listening(self) -> None:
        """Close the listener (connecting is refused from now on) but keep the port bound, so
        nothing else takes it; connections already accepted keep being served."""
        self._call(self._stop_listening())

    def start_listening(self) -> None:
        """Listen on the same port again after stop_listening()."""
        self._call(self._start_listening())

    def close_idle_connections(self) -> int:
        """Close (FIN) every connection waiting for its next request, as an upstream whose
        keep-alive timeout expired does; return how many were closed."""
        return self._call(self._close_idle())

    # --- what to answer ---
    @property
    def mode(self) -> str | None:
        """The behaviour of every request the script does not cover (None: path rules, then ok)."""
        with self._lock:
            return self._mode.text if self._mode is not None else None

    @mode.setter
    def mode(self, behaviour: str | Behaviour | None) -> None:
        parsed = None if behaviour is None else Behaviour.parse(behaviour)
        with self._lock:
            self._mode = parsed

    def script(self, behaviours: Iterable[str | Behaviour]) -> None:
        """Replace the script: the next requests get these behaviours, one each, in order."""
        parsed = [Behaviour.parse(each) for each in behaviours]
        with self._lock:
            self._script = deque(parsed)

    def then(self, *behaviours: str | Behaviour) -> None:
        """Append behaviours to the script."""
        parsed = [Behaviour.parse(each) for each in behaviours]
        with self._lock:
            self._script.extend(parsed)

    @property
    def script_left(self) -> int:
        """How many script items no request has used yet."""
        with self._lock:
            return len(self._script)

    def on(self, prefix: str, behaviour: str | Behaviour | None) -> None:
        """Apply `behaviour` to paths starting with `prefix` (None removes the rule)."""
        parsed = None if behaviour is None else Behaviour.parse(behaviour)
        with self._lock:
            if parsed is None:
                self._rules.pop(prefix, None)
            else:
                self._rules[prefix] = parsed

    def reset(self) -> None:
        """Forget the script, the mode, the path rules and the log (listening is unchanged)."""
        with self._lock:
            self._script.clear()
            self._mode = None
            self._rules.clear()
        self.reset_log()

    def _choose(self, path: str) -> Behaviour:
        with self._lock:
            if self._script:
                return self._script.popleft()
            if self._mode is not None:
                return self._mode
            found = [prefix for prefix in self._rules if path.startswith(prefix)]
            if found:
                return self._rules[max(found, key=len)]
            return Behaviour("ok", (), "ok")

    # --- what was received ---
    @property
    def requests(self) -> list[Request]:
        """A copy of the log: every request received since the last reset_log()."""
        with self._lock:
            return list(self._log)

    @property
    def connections(self) -> int:
        """Connections accepted since the last reset_log()."""
        with self._lock:
            return self._connections_seen - self._connections_logged

    def count(
        self,
        method: str | None = None,
        path: str | None = None,
        *,
        prefix: str | None = None,
        header: tuple[str, str | bytes] | None = None,
        behaviour: str | None = None,
    ) -> int:
        """How many logged requests match: method, exact path (query excluded), path prefix,
        a header value (e.g. ("Idempotency-Key", "k1")), the behaviour text applied."""
        return len(self.matching(method, path, prefix=prefix, header=header, behaviour=behaviour))

    def matching(
        self,
        method: str | None = None,
        path: str | None = None,
        *,
        prefix: str | None = None,
        header: tuple[str, str | bytes] | None = None,
        behaviour: str | None = None,
    ) -> list[Request]:
        """The logged requests `count` counts."""
        return [
            each
            for each in self.requests
            if each.matches(method, path, prefix=prefix, header=header, behaviour=behaviour)
        ]

    def wait_for_requests(
        self,
        number: int,
        method: str | None = None,
        path: str | None = None,
        *,
        timeout: float = 5.0,
        **filters: Any,
    ) -> list[Request]:
        """Wait until at least `number` logged requests match (as `count`); return them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(method, path, **filters)
            if len(found) >= number:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} saw {len(found)} matching request(s), not {number}, within "
                    f"{timeout}s: {[(r.method, r.target, r.behaviour) for r in self.requests]}"
                )
            time.sleep(0.01)

    def reset_log(self) -> None:
        """Forget the requests logged so far and restart the connections count (request and
        connection numbers keep growing)."""
        with self._lock:
            self._log.clear()
            self._connections_logged = self._connections_seen

    # --- the loop's side ---
    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None or not self._loop.is_running():
            coro.close()
            raise RuntimeError("the FaultyUpstream is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _listen(self, sock: socket.socket) -> asyncio.Server:
        return await asyncio.start_server(self._serve, sock=sock, limit=HEAD_LIMIT, backlog=128)

    async def _stop_listening(self) -> None:
        if self._server is None:
            return
        self._server.close()  # closes the listening socket now; connections stay
        self._server = None
        reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            reserved.bind(("127.0.0.1", self.port))
        except OSError:
            reserved.close()
            raise
        self._reserved = reserved

    async def _start_listening(self) -> None:
        if self._server is not None:
            return
        sock, self._reserved = self._reserved, None
        assert sock is not None
        try:
            self._server = await self._listen(sock)
        except BaseException:
            sock.close()
            raise

    async def _close_idle(self) -> int:
        idle = [conn for conn in self._live.values() if conn.idle and conn.served]
        for conn in idle:
            conn.writer.close()
        return len(idle)

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._stopping = True
        for conn in list(self._live.values()):
            conn.writer.transport.abort()  # also one closed but still flushing its buffer
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the transports close their sockets
        if server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def _serve(self, reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self._connections_seen += 1
            conn = _Connection(self._connections_seen, writer)
        self._live[conn.number] = conn
        try:
            while await self._one_request(conn, reader, writer):
                conn.served += 1
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            self._live.pop(conn.number, None)
            if self._stopping:
                writer.transport.abort()  # even one still flushing its write buffer
            elif not writer.is_closing():
                writer.close()

    async def _one_request(self, conn: _Connection, reader: Reader, writer: Writer) -> bool:
        """Read and answer one request; False when the connection must close."""
        conn.idle = True
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        except asyncio.LimitOverrunError:
            writer.write(_response(431, b"", close=True))
            return False
        conn.idle = False
        head = head.lstrip(b"\r\n")  # stray CRLFs before a request line are allowed
        if not head:
            return True
        with self._lock:
            self._requests_seen += 1
            number = self._requests_seen
        try:
            parsed = _parse_head(head)
        except _BadRequest as exc:
            malformed = f"malformed: {exc}"
            reused = conn.served > 0
            self._record(
                Request(number, "", "", "", [], b"", 0, False, conn.number, reused, malformed)
            )
            writer.write(_response(400, b"", close=True))
            return False
        behaviour = self._choose(parsed.path)
        request = Request(
            number,
            parsed.method,
            parsed.target,
            parsed.version,
            parsed.headers,
            b"",
            0,
            False,
            conn.number,
            conn.served > 0,
            behaviour.text,
        )
        if parsed.expect_continue:
            if behaviour.kind == "drop_reused" and request.reused:
                self._record(request)  # dropped at the head: no 100, the body never read
                await self._act(behaviour, request, parsed, reader, writer)
                return False
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            await self._read_body(parsed, reader, request)
        except _BadRequest:
            self._record(request)
            writer.write(_response(400, b"", close=True))
            return False
        except (ConnectionError, asyncio.IncompleteReadError):
            self._record(request)
            return False
        self._record(request)
        keep = await self._act(behaviour, request, parsed, reader, writer)
        return keep and parsed.keep_alive

    def _record(self, request: Request) -> Request:
        with self._lock:
            self._log.append(request)
        return request

    async def _read_body(self, head: _Head, reader: Reader, request: Request) -> None:
        kept: list[bytes] = []

        def take(data: bytes) -> None:
            room = self.keep_body - request.body_size
            if room > 0:
                kept.append(data[:room])
            request.body_size += len(data)

        try:
            if head.chunked:
                while True:
                    line = await reader.readuntil(b"\r\n")
                    size_text = line[:-2].split(b";", 1)[0].strip()
                    try:
                        size = int(size_text, 16)
                    except ValueError:
                        raise _BadRequest(f"bad chunk size {line[:50]!r}") from None
                    if size == 0:
                        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                            name, _, value = line[:-2].partition(b":")
                            request.trailers.append((name, value.strip(b" \t")))
                        break
                    await self._read_exactly(reader, size, take)
                    if await reader.readexactly(2) != b"\r\n":
                        raise _BadRequest("a chunk without its CRLF")
            else:
                await self._read_exactly(reader, head.length, take)
            request.complete = True
        finally:
            request.body = b"".join(kept)

    @staticmethod
    async def _read_exactly(reader: Reader, size: int, take: Callable[[bytes], None]) -> None:
        left = size
        while left:
            data = await reader.read(min(left, PIECE))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            take(data)

    async def _act(
        self, behaviour: Behaviour, request: Request, head: _Head, reader: Reader, writer: Writer
    ) -> bool:
        """Apply `behaviour`; False when the connection must close afterwards."""
        kind = behaviour.kind
        args = behaviour.args
        close = not head.keep_alive
        bodiless = head.method == "HEAD"
        if kind == "stall":
            if not args:
                while await reader.read(PIECE):  # until the client closes (or we are cancelled)
                    pass
                return False
            await asyncio.sleep(args[0])
            kind, args = "ok", ()  # the delay is not a body size
        if kind == "drop_reused":
            if request.reused:
                if behaviour.args:
                    _reset(writer)
                else:
                    writer.close()
                return False
            kind, args = "ok", ()
        if kind == "reset_before":
            _reset(writer)
            return False
        if kind == "close_before":
            writer.close()
            return False
        if kind == "reset_after":
            sent, total = int(behaviour.arg(0, 100)), int(behaviour.arg(1, 1000))
            writer.write(_head(200, {"Content-Length": str(total), **self._stamp(request)}))
            writer.write(b"x" * sent)
            await _flushed(writer)
            await asyncio.sleep(behaviour.arg(2, 0.1))
            _reset(writer)
            return False
        if kind == "slow_body":
            size, rate = int(behaviour.arg(0, 256 << 10)), behaviour.arg(1, 1 << 20)
            extra = {"Content-Type": "application/octet-stream", **self._stamp(request)}
            writer.write(_head(200, {"Content-Length": str(size), **extra}, close=close))
            if bodiless:
                request.answered = True
            else:
                await _trickle(writer, size, rate, request)
            await writer.drain()
            return not close
        if kind == "ok":
            body = self._echo(request, 200)
            if args:
                body = _sized(body, int(args[0]))
            status = 200
        else:
            status = int(behaviour.args[0])
            body = self._echo(request, status)
        request.answered = True  # before the bytes leave, so a client never sees it False
        writer.write(_response(status, body, self._stamp(request), close=close, bodiless=bodiless))
        await writer.drain()
        return not close

    def _stamp(self, request: Request) -> dict[str, str]:
        return {"X-Upstream": self.name, "X-Upstream-Request": str(request.number)}

    def _echo(self, request: Request, status: int) -> bytes:
        echo: dict[str, object] = {
            "upstream": self.name,
            "n": request.number,
            "method": request.method,
            "path": request.path,
            "target": request.target,
            "connection": request.connection,
            "reused": request.reused,
            "body_length": request.body_size,
        }
        if status != 200:
            echo = {"status": status, "error": _reason(status).decode(), **echo}
        return json.dumps(echo, separators=(",", ":")).encode()


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def _head(status: int, headers: dict[str, str], *, close: bool = False) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, _reason(status))]
    lines += [f"{name}: {value}".encode() for name, value in headers.items()]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _response(
    status: int,
    body: bytes,
    extra: dict[str, str] | None = None,
    *,
    close: bool = False,
    bodiless: bool = False,
) -> bytes:
    """A whole response; no body after a HEAD, none at all for 204 and 304."""
    headers: dict[str, str] = {}
    if status in (204, 304):
        body = b""
    else:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    head = _head(status, {**headers, **(extra or {})}, close=close)
    return head if bodiless else head + body


def _sized(echo: bytes, size: int) -> bytes:
    if len(echo) <= size:
        return echo + b" " * (size - len(echo))  # trailing whitespace: still valid JSON
    return b"x" * size


def _reset(writer: Writer) -> None:
    """Close with a RST: SO_LINGER 0 drops whatever the kernel has not sent yet."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _flushed(writer: Writer) -> None:
    """Wait until the transport has handed every byte to the kernel (a high-water mark of 0 makes
    drain() wait for an empty buffer)."""
    writer.transport.set_write_buffer_limits(high=0)
    await writer.drain()


async def _trickle(writer: Writer, size: int, rate: float, request: Request) -> None:
    """Write `size` bytes at about `rate` bytes per second, in 20 ms steps; mark `request`
    answered just before the last piece goes."""
    step = max(1, int(rate / 50))
    block = b"s" * step
    started = time.monotonic()
    sent = 0
    while sent < size:
        piece = min(step, size - sent)
        if sent + piece == size:
            request.answered = True
        writer.write(block[:piece])
        await writer.drain()
        sent += piece
        delay = started + sent / rate - time.monotonic()
        if delay > 0 and sent < size:
            await asyncio.sleep(delay)


@contextlib.contextmanager
def faulty_upstream(name: str = "faulty") -> Iterator[FaultyUpstream]:
    """`with faulty_upstream() as up:` — the same as `with FaultyUpstream(name) as up:`."""
    with FaultyUpstream(name) as upstream:
        yield upstream


# --- a refused port -------------------------------------------------------------------------------
_RESERVED: list[socket.socket] = []


def refused_port() -> int:
    """A port on 127.0.0.1 where nothing listens: bound (never listening) until the process
    exits, so connecting is refused and no other test can take it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _RESERVED.append(sock)
    return int(sock.getsockname()[1])


@atexit.register
def _release() -> None:
    while _RESERVED:
        _RESERVED.pop().close()
