"""The installed dependencies are the tested ones, and the internals the proxy relies on are there.

The proxy subclasses uvicorn's httptools protocol (its parser callbacks, hooks, per-connection
and per-request attributes), stops aiohttp's silent retry with a private session flag, counts
the connections aiohttp opens through a private connector method, probes an upstream connection
through aiohttp's response handler and keeps uvicorn's server from re-raising a caught signal.
None of that is public API: each name is checked here on real objects, so an upgrade that renames
or drops one fails here, naming it and the installed version, instead of misbehaving under
traffic. pyproject.toml caps uvicorn and aiohttp at the minor versions these checks passed on;
constraints.txt pins every package, and in CI the installed versions must be exactly those pins.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import signal
import tomllib
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import httptools
import pytest
import uvicorn
from aiohttp.client_proto import ResponseHandler
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from proxy.dataplane.headers import headers_sendable
from tests.conftest import IN_CI

try:  # uvicorn's internals the proxy imports: gone ones fail the collection with this message
    from uvicorn import _types as uvicorn_types
    from uvicorn.protocols.http import httptools_impl
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
    from uvicorn.server import ServerState
    from uvicorn.supervisors import Multiprocess
except ImportError as exc:  # pragma: no cover - only with an untested uvicorn
    raise ImportError(
        f"uvicorn {metadata.version('uvicorn')} moved or dropped an internal the proxy imports "
        f"({exc}): adapt the proxy, or keep the version pinned in constraints.txt"
    ) from exc

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONSTRAINTS = ROOT / "constraints.txt"
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])
WAIT = 5.0  # seconds for anything on the loopback to happen


def changed(package: str, name: str, detail: str) -> str:
    """The failure message: what changed, in which installed version, and what to do."""
    return (
        f"{package} {metadata.version(package)}: {name} {detail}. The proxy relies on it: adapt "
        f"the proxy to this version, or keep {package} at the version pinned in constraints.txt "
        "(and within its bounds in pyproject.toml)."
    )


def parameters(package: str, owner: Any, name: str) -> list[str]:
    """The parameter names of `owner.name` (without self), failing clearly if it is gone."""
    assert callable(getattr(owner, name, None)), changed(package, name, "is not a method any more")
    return [p for p in inspect.signature(getattr(owner, name)).parameters if p != "self"]


# --- what pyproject.toml declares and constraints.txt pins -----------------------------------


def declared() -> list[Requirement]:
    """Every requirement of the project and its extras, self-references left out."""
    project = PYPROJECT["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts += extra
    return [r for r in map(Requirement, texts) if canonicalize_name(r.name) != PROJECT]


def pins() -> dict[str, Version]:
    """constraints.txt as {canonical name: version}, for the pins whose marker applies here."""
    found: dict[str, Version] = {}
    for number, raw in enumerate(CONSTRAINTS.read_text().splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert [s.operator for s in specifiers] == ["=="], (
            f"constraints.txt:{number}: {line!r} is not an exact pin (name==version)"
        )
        name = canonicalize_name(requirement.name)
        assert name not in found, f"constraints.txt:{number}: {name} is pinned twice"
        if requirement.marker is None or requirement.marker.evaluate():
            found[name] = Version(specifiers[0].version)
    return found


def test_constraints_pin_exact_versions_but_not_the_project() -> None:
    pinned = pins()
    assert len(pinned) > 20, "constraints.txt pins (nearly) nothing: run make lock"
    assert PROJECT not in pinned, "constraints.txt pins the project itself: drop that line"


def test_every_declared_dependency_is_pinned_within_its_bounds() -> None:
    """A bound changed in pyproject.toml without `make lock` would install outside the lock."""
    pinned = pins()
    problems = []
    for requirement in declared():
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name not in pinned:
            problems.append(f"{requirement} is declared but not pinned in constraints.txt")
        elif not requirement.specifier.contains(pinned[name], prereleases=True):
            problems.append(f"{requirement} is declared but constraints.txt pins {pinned[name]}")
    assert problems == [], "run make lock, then make lint test:\n" + "\n".join(problems)


@pytest.mark.parametrize("package", ["uvicorn", "aiohttp"])
def test_the_internals_users_are_capped_and_installed_within_bounds(package: str) -> None:
    (requirement,) = [r for r in declared() if canonicalize_name(r.name) == package]
    assert any(s.operator in {"<", "<=", "==", "~="} for s in requirement.specifier), (
        f"pyproject.toml: {requirement} needs an upper bound: the proxy uses its internals"
    )
    installed = metadata.version(package)
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{package} {installed} is installed, outside pyproject.toml's {requirement}: reinstall "
        "(pip install -c constraints.txt -e '.[dev]'), or check this version's internals and "
        "move the bound"
    )


def required_here() -> dict[str, str]:
    """Every distribution the project with all its extras needs on this interpreter (markers
    evaluated here), with the installed version; '' for one that is not installed."""
    environment: dict[str, str] = dict(default_environment())
    project = PYPROJECT["project"]
    todo = [Requirement(text) for text in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        todo += [Requirement(text) for text in extra]
    found: dict[str, str] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if name == PROJECT or key in done:
            continue
        done.add(key)
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            found[name] = ""
            continue
        found[name] = distribution.version
        for text in distribution.requires or []:
            sub = Requirement(text)
            extras = requirement.extras or {""}
            if sub.marker is None or any(
                sub.marker.evaluate({**environment, "extra": extra}) for extra in extras
            ):
                todo.append(sub)
    return found


def test_the_installed_versions_are_the_pinned_ones() -> None:
    """In CI every package the project needs is installed at its constraints.txt pin."""
    if not IN_CI:
        pytest.skip(
            "only checked in CI (CI=true): a developer's venv may hold other versions on purpose; "
            "pip install -c constraints.txt -e '.[dev]' puts back the pinned ones"
        )
    pinned = pins()
    problems = []
    for name, version in sorted(required_here().items()):
        if not version:
            problems.append(f"{name} is needed but not installed")
        elif name not in pinned:
            problems.append(f"{name} {version} is installed but not pinned in constraints.txt")
        elif Version(version) != pinned[name]:
            problems.append(f"{name} {version} is installed, constraints.txt pins {pinned[name]}")
    assert problems == [], (
        "the venv is not what constraints.txt says (a new dependency needs make lock; a drifted "
        "venv needs pip install -c constraints.txt -e '.[dev]'):\n" + "\n".join(problems)
    )


# --- uvicorn: the httptools protocol the proxy subclasses ------------------------------------

# Methods the proxy overrides, calls or adds (httptools calls the chunk callbacks when they
# exist): the parameters uvicorn's own take.
PROTOCOL_METHODS = {
    "connection_made": ["transport"],
    "data_received": ["data"],
    "on_message_begin": [],
    "on_url": ["url"],
    "on_header": ["name", "value"],
    "on_headers_complete": [],
    "on_body": ["body"],
    "on_response_complete": [],
    "_start_asgi_task": ["cycle", "app"],
    "_unset_keepalive_if_required": [],
}


@pytest.mark.parametrize(("method", "expected"), PROTOCOL_METHODS.items())
def test_uvicorn_protocol_methods_keep_their_signatures(method: str, expected: list[str]) -> None:
    found = parameters("uvicorn", HttpToolsProtocol, method)
    assert found == expected, changed(
        "uvicorn", f"HttpToolsProtocol.{method}", f"takes {found}, not {expected}"
    )


def test_uvicorn_private_types_the_proxy_imports() -> None:
    assert hasattr(uvicorn_types, "ASGI3Application"), changed(
        "uvicorn", "uvicorn._types.ASGI3Application", "is gone"
    )


class _Recording(HttpToolsProtocol):
    """uvicorn's protocol as the proxy extends it: which of its hooks uvicorn calls, when."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started: list[RequestResponseCycle] = []
        self.completed = 0
        self.chunk_callbacks: list[str] = []

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self.started.append(cycle)
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        self.completed += 1
        super().on_response_complete()

    def on_chunk_header(self) -> None:
        self.chunk_callbacks.append("header")

    def on_chunk_complete(self) -> None:
        self.chunk_callbacks.append("complete")


class _Served:
    """A real uvicorn protocol serving one loopback connection. The app answers POST /first
    once released; GET /second reads its request, then waits to be told the client is gone."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.protocols: list[_Recording] = []
        self.state = ServerState()
        self.scopes: dict[str, Any] = {}
        self.received: dict[str, list[Any]] = {"/first": [], "/second": []}

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        self.scopes[path] = scope
        self.received[path].append(await receive())
        if path == "/second":
            self.received[path].append(await receive())
            return
        await self.release.wait()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    def factory(self, loop: asyncio.AbstractEventLoop) -> Callable[[], _Recording]:
        config = uvicorn.Config(
            self.app, http="httptools", interface="asgi3", lifespan="off", log_config=None
        )

        def make() -> _Recording:
            protocol = _Recording(config, self.state, {}, _loop=loop)
            self.protocols.append(protocol)
            return protocol

        return make


def attribute(owner: Any, name: str, where: str) -> Any:
    assert hasattr(owner, name), changed("uvicorn", f"{where}.{name}", "is gone")
    return getattr(owner, name)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def look_at_a_pipelining_connection() -> None:
    loop = asyncio.get_running_loop()
    served = _Served()
    server = await loop.create_server(served.factory(loop), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
            b"GET /second?q=1 HTTP/1.1\r\nHost: b\r\nX-Two: 2\r\n\r\n"
        )
        await writer.drain()
        await until(lambda: bool(served.protocols and served.protocols[0].pipeline), "a pipeline")
        await until(lambda: bool(served.received["/first"]), "the first request's body")
        protocol = served.protocols[0]
        where = "HttpToolsProtocol"

        # per connection
        assert attribute(protocol, "loop", where) is loop, changed(
            "uvicorn", f"{where}.loop", "is not the event loop"
        )
        connections = attribute(protocol, "connections", where)
        not_the_set = changed(
            "uvicorn", f"{where}.connections", "is not the server's set of open connections"
        )
        assert connections is served.state.connections, not_the_set
        assert protocol in connections, not_the_set
        transport = attribute(protocol, "transport", where)
        for name in ("is_closing", "write", "close"):
            assert callable(getattr(transport, name, None)), changed(
                "uvicorn", f"{where}.transport", "is not the connection's transport"
            )
        flow = attribute(protocol, "flow", where)
        assert callable(getattr(flow, "pause_reading", None)), changed(
            "uvicorn", f"{where}.flow.pause_reading", "is gone"
        )
        parser = attribute(protocol, "parser", where)
        assert isinstance(parser, httptools.HttpRequestParser), changed(
            "uvicorn", f"{where}.parser", "is not an httptools request parser"
        )
        assert protocol.logger.name == "uvicorn.error", changed(
            "uvicorn", f"{where}.logger", "is not the 'uvicorn.error' logger the proxy filters"
        )

        # the request head last parsed (the pipelined second one)
        assert attribute(protocol, "url", where) == b"/second?q=1", changed(
            "uvicorn", f"{where}.url", "is not the raw target of the request being read"
        )
        assert attribute(protocol, "headers", where) == [(b"host", b"b"), (b"x-two", b"2")], (
            changed("uvicorn", f"{where}.headers", "is not the list of lower-cased header fields")
        )
        assert parser.get_method() == b"GET"

        # the cycles: the first one runs, the second waits in the pipeline
        first, second = protocol.started[0], attribute(protocol, "cycle", where)
        assert isinstance(second, RequestResponseCycle), changed(
            "uvicorn", f"{where}.cycle", "is not the RequestResponseCycle of the last head parsed"
        )
        assert protocol.started == [first], changed(
            "uvicorn", f"{where}._start_asgi_task", "is not how a request's application starts"
        )
        pipeline = attribute(protocol, "pipeline", where)
        assert isinstance(pipeline, deque), changed("uvicorn", f"{where}.pipeline", "is no deque")
        assert [queued for queued, _ in pipeline] == [second], changed(
            "uvicorn", f"{where}.pipeline", "does not queue (cycle, app), newest first"
        )
        assert "header" in protocol.chunk_callbacks, changed(
            "httptools", "on_chunk_header", "is not called for a chunked body"
        )
        assert "complete" in protocol.chunk_callbacks, changed(
            "httptools", "on_chunk_complete", "is not called for a chunked body"
        )
        cycle_of = "RequestResponseCycle"
        assert attribute(first, "scope", cycle_of) is served.scopes["/first"], changed(
            "uvicorn", f"{cycle_of}.scope", "is not the scope the application got"
        )
        assert served.received["/first"] == [
            {"type": "http.request", "body": b"hello", "more_body": False}
        ], changed("uvicorn", f"{where}.on_body", "did not pass the chunked body on")
        assert attribute(first, "more_body", cycle_of) is False
        assert attribute(first, "keep_alive", cycle_of) is True
        assert attribute(first, "response_started", cycle_of) is False
        assert attribute(first, "response_complete", cycle_of) is False
        assert attribute(first, "disconnected", cycle_of) is False
        assert isinstance(attribute(first, "message_event", cycle_of), asyncio.Event)
        assert attribute(second, "more_body", cycle_of) is False

        # the first answer starts the second request
        served.release.set()
        answer = b""
        while not answer.endswith(b"\r\n\r\nok"):
            chunk = await asyncio.wait_for(reader.read(65536), WAIT)
            assert chunk, "the connection closed before the first answer"
            answer += chunk
        await until(lambda: bool(served.received["/second"]), "the second request to start")
        assert first.response_started is True
        assert first.response_complete is True, changed(
            "uvicorn", f"{cycle_of}.response_complete", "is not set once answered"
        )
        assert protocol.completed == 1, changed(
            "uvicorn", f"{where}.on_response_complete", "is not called when an answer completes"
        )
        assert protocol.started == [first, second], changed(
            "uvicorn", f"{where}._start_asgi_task", "does not start a pipelined request"
        )
        assert not pipeline

        # a request's application told the client is gone, as the proxy does on a bad body
        second.disconnected = True
        second.message_event.set()
        await until(lambda: len(served.received["/second"]) == 2, "the second receive()")
        assert served.received["/second"][1] == {"type": "http.disconnect"}, changed(
            "uvicorn",
            f"{cycle_of}.disconnected + message_event",
            "no longer make the application's receive() say the client is gone",
        )
        protocol._unset_keepalive_if_required()
    finally:
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()


def test_uvicorn_protocol_internals_on_a_real_connection() -> None:
    asyncio.run(look_at_a_pipelining_connection())


def test_uvicorn_refuses_the_headers_the_proxy_expects_it_to() -> None:
    """The proxy checks response headers before uvicorn does (uvicorn's own check comes after
    the response counts as started, too late for a 502): the two must agree on every byte."""
    for name in ("HEADER_RE", "HEADER_VALUE_RE"):
        assert isinstance(getattr(httptools_impl, name, None), re.Pattern), changed(
            "uvicorn", f"uvicorn.protocols.http.httptools_impl.{name}", "is gone"
        )
    for byte in range(256):
        name, value = b"x-" + bytes([byte]), b"v" + bytes([byte])
        uvicorn_writes_name = httptools_impl.HEADER_RE.search(name) is None
        uvicorn_writes_value = httptools_impl.HEADER_VALUE_RE.search(value) is None
        assert headers_sendable([(name, b"v")]) is uvicorn_writes_name, changed(
            "uvicorn", "HEADER_RE", f"judges the header name byte {byte:#04x} differently"
        )
        assert headers_sendable([(b"x", value)]) is uvicorn_writes_value, changed(
            "uvicorn", "HEADER_VALUE_RE", f"judges the header value byte {byte:#04x} differently"
        )


def test_httptools_hands_back_what_a_callback_raised() -> None:
    """The proxy refuses a request by raising from a parser callback and finds its exception
    again on the HttpParserError that feed_data raises; an Upgrade stops the parser."""

    class Refusal(Exception):
        pass

    class Refusing:
        def on_url(self, url: bytes) -> None:
            raise Refusal

    parser = httptools.HttpRequestParser(Refusing())
    with pytest.raises(httptools.HttpParserError) as raised:
        parser.feed_data(b"GET /x HTTP/1.1\r\n")
    cause = raised.value.__cause__ or raised.value.__context__
    assert isinstance(cause, Refusal), changed(
        "httptools", "HttpParserError.__cause__/__context__", "is not the callback's exception"
    )

    upgrading = httptools.HttpRequestParser(object())
    with pytest.raises(httptools.HttpParserUpgrade):
        upgrading.feed_data(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
        )
    assert upgrading.should_upgrade() is True


# --- uvicorn: the server and the supervisor ---------------------------------------------------


async def _app(scope: Any, receive: Any, send: Any) -> None:
    pass  # pragma: no cover - never served


def test_uvicorn_server_keeps_its_captured_signals_in_a_list() -> None:
    """The proxy's Server clears `_captured_signals` after `handle_exit`, so uvicorn does not
    re-raise SIGTERM when its graceful shutdown is done (the proxy exits 0, as nginx does)."""
    assert parameters("uvicorn", uvicorn.Server, "handle_exit") == ["sig", "frame"], changed(
        "uvicorn", "Server.handle_exit", "does not take (sig, frame) any more"
    )
    server = uvicorn.Server(uvicorn.Config(_app, log_config=None))
    captured = getattr(server, "_captured_signals", None)
    assert captured == [], changed(
        "uvicorn", "Server._captured_signals", "is not an empty list on a new server"
    )
    server.handle_exit(signal.SIGTERM, None)
    assert server._captured_signals == [signal.SIGTERM], changed(
        "uvicorn", "Server._captured_signals", "does not record the signal handle_exit got"
    )
    assert server.should_exit is True
    source = inspect.getsource(uvicorn.Server.capture_signals)
    assert "self._captured_signals" in source, changed(
        "uvicorn",
        "Server.capture_signals",
        "no longer re-raises from self._captured_signals (clearing it may not be needed now)",
    )


def test_uvicorn_multiprocess_takes_the_config_and_the_sockets() -> None:
    assert parameters("uvicorn", Multiprocess, "__init__") == ["config", "sockets"], changed(
        "uvicorn", "supervisors.Multiprocess", "does not take (config, sockets) any more"
    )
    assert parameters("uvicorn", Multiprocess, "run") == []


def test_uvicorn_announces_the_address_it_listens_on() -> None:
    """proxy.procs reads the bound address of a child it starts from this line."""
    assert "Uvicorn running on " in inspect.getsource(uvicorn.server), changed(
        "uvicorn", "the 'Uvicorn running on' start-up line", "is gone"
    )


# --- aiohttp ----------------------------------------------------------------------------------


class _Upstream:
    """A loopback HTTP/1.1 server that answers the first request on a connection, closes the
    connection at the second without answering, and counts the requests it saw. GET /stall gets
    a head and part of the body, then nothing until `cut` closes it."""

    def __init__(self) -> None:
        self.requests = 0
        self.stalled: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                if head.startswith(b"GET /stall "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello")
                    self.stalled.append(writer)
                    return
                if served == 1:
                    break
                served += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    def cut(self) -> None:
        for writer in self.stalled:
            writer.transport.abort()


@pytest.fixture
def upstream() -> Iterator[tuple[asyncio.AbstractEventLoop, _Upstream, str]]:
    loop = asyncio.new_event_loop()
    upstream = _Upstream()
    server = loop.run_until_complete(asyncio.start_server(upstream.handle, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    try:
        yield loop, upstream, f"http://127.0.0.1:{port}"
    finally:
        upstream.cut()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


class _Counting(aiohttp.TCPConnector):
    """The proxy's connector: `_create_connection` runs once per connection opened."""

    opened = 0

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.opened += 1
        return await super()._create_connection(*args, **kwargs)


async def two_gets(url: str, retry: bool | None) -> tuple[str, int]:
    """Two GETs on one kept-alive connection; the second is dropped by the upstream. The
    outcome of the second, and how many connections were opened."""
    connector = _Counting(limit=1)
    session = aiohttp.ClientSession(connector=connector)
    try:
        if retry is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # aiohttp warns in debug mode on unknown names
                session._retry_connection = retry
        async with session.get(url + "/one") as first:
            assert await first.read() == b"ok"
        try:
            async with session.get(url + "/two") as second:
                await second.read()
        except aiohttp.ServerDisconnectedError:
            return "disconnected", connector.opened
        return "answered", connector.opened
    finally:
        await session.close()


def test_aiohttp_retry_flag_stops_the_silent_resend(
    upstream: tuple[asyncio.AbstractEventLoop, _Upstream, str],
) -> None:
    """The proxy sets `ClientSession._retry_connection = False`: an upstream that drops a
    kept-alive connection must not get a client's request a second time."""
    loop, server, url = upstream
    assert "_retry_connection" in aiohttp.ClientSession.ATTRS, changed(
        "aiohttp", "ClientSession._retry_connection", "is not in ClientSession.ATTRS"
    )
    assert "self._retry_connection" in inspect.getsource(aiohttp.ClientSession._request), changed(
        "aiohttp", "ClientSession._retry_connection", "is no longer read by ClientSession._request"
    )

    async def default_flag() -> Any:
        session = aiohttp.ClientSession()
        try:
            return getattr(session, "_retry_connection", "missing")
        finally:
            await session.close()

    assert loop.run_until_complete(default_flag()) is True, changed(
        "aiohttp", "ClientSession._retry_connection", "is not True on a new session"
    )
    outcome, opened = loop.run_until_complete(two_gets(url, retry=False))
    assert (outcome, server.requests) == ("disconnected", 2), changed(
        "aiohttp",
        "ClientSession._retry_connection = False",
        f"does not stop the resend ({outcome}, the upstream saw {server.requests} requests)",
    )
    assert opened == 1, changed(
        "aiohttp",
        "TCPConnector._create_connection",
        f"ran {opened} times for one connection (the proxy counts connections opened with it)",
    )
    server.requests = 0
    outcome, opened = loop.run_until_complete(two_gets(url, retry=None))
    assert (outcome, server.requests, opened) == ("answered", 3, 2), (
        f"aiohttp {metadata.version('aiohttp')} no longer resends a request dropped on a reused "
        f"connection ({outcome}, {server.requests} requests, {opened} connections): the proxy's "
        "ClientSession._retry_connection = False may be obsolete; check and adapt the proxy"
    )


def test_aiohttp_response_connection_tells_a_closed_upstream(
    upstream: tuple[asyncio.AbstractEventLoop, _Upstream, str],
) -> None:
    """The proxy probes a stalled answer with `response.connection.protocol.is_connected()`."""
    loop, server, url = upstream
    assert parameters("aiohttp", ResponseHandler, "is_connected") == []

    async def probe() -> None:
        async with aiohttp.ClientSession() as session, session.get(url + "/stall") as response:
            connection = response.connection
            assert connection is not None, changed(
                "aiohttp", "ClientResponse.connection", "is None while the body is unread"
            )
            protocol = connection.protocol
            assert protocol is not None, changed("aiohttp", "Connection.protocol", "is None")
            assert protocol.is_connected() is True, changed(
                "aiohttp", "ResponseHandler.is_connected()", "is False on an open connection"
            )
            server.cut()
            await until(lambda: not protocol.is_connected(), "is_connected() to turn False")

    loop.run_until_complete(probe())


def test_uvicorn_internals_the_per_listener_tls_server_uses() -> None:
    """proxy/server.py starts one server per socket with its listener's TLS context (uvicorn's
    startup gives every socket the same one), and makes --workers run that server by replacing
    the name `Process` in uvicorn's supervisor module while it runs."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import multiprocess

    assert STARTUP_FAILURE == 3, changed("uvicorn", "config.STARTUP_FAILURE", "changed")
    process = attribute(multiprocess, "Process", "supervisors.multiprocess")
    assert isinstance(inspect.getattr_static(process, "server"), property), changed(
        "uvicorn", "multiprocess.Process.server", "is not a property"
    )
    assert "self.config" in inspect.getsource(process.__init__)
    assert "self._server" in inspect.getsource(process), changed(
        "uvicorn", "multiprocess.Process._server", "is gone"
    )
    assert "Process(" in inspect.getsource(multiprocess.Multiprocess), changed(
        "uvicorn", "Multiprocess", "no longer makes its workers by the module's name `Process`"
    )
    assert parameters("uvicorn", uvicorn.Server, "startup") == ["sockets"]
    source = inspect.getsource(uvicorn.Server)
    for name in ("self.lifespan", "self.servers", "self.server_state", "self.started"):
        assert name in source, changed("uvicorn", f"Server.{name[5:]}", "is gone")
    config = uvicorn.Config(app=None)  # type: ignore[arg-type]
    attribute(config, "backlog", "Config")
    assert hasattr(uvicorn.Config, "http_protocol_class") or "http_protocol_class" in (
        inspect.getsource(uvicorn.Config.load)
    ), changed("uvicorn", "Config.http_protocol_class", "is gone")
