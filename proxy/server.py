"""`strangler serve`: binds the listeners, then runs one or several workers on them.

Listeners: external (mobile apps), internal (services), admin (health, readiness, metrics; never
a proxied path). All three are served by one uvicorn server per worker on uvloop, its protocol
the proxy's own HTTP/1.1 engine (h1server.py; uvicorn's protocol it replaced is gone); no
proxy headers, no Server or Date header of its own: the
upstream's pass through. uvicorn's server keeps the lifecycle (lifespan, sockets, workers,
graceful shutdown), and the worker tells the listeners apart by the local port a request
arrived on. Sockets are bound once,
before the workers start, so `--workers N` processes share each port and port 0 works.

TLS is per listener (tls.py): the external and internal listeners each serve their own context
when given a certificate, the admin listener is always plain HTTP. uvicorn gives one `ssl` to
every socket, so ProxyServer creates the socket servers itself, and each worker of `--workers N`
runs a ProxyServer too (WorkerProcess). Each worker reloads its certificates in a task of its
own. The TLS files are loaded once before anything is bound: a missing or bad one stops `serve`
with its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess, multiprocess

from proxy.dataplane.app import DataPlane
from proxy.errors import ResponseAborted, problem_body, problem_headers
from proxy.h1server import H1Connection
from proxy.runtime import Runtime, initial_table
from proxy.settings import ProxySettings, parse_listen, plain
from proxy.store.pins import PIN_DIR_ENV
from proxy.tls import ListenerTLS, reload_certificates, server_context, tls_files
from proxy.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from proxy.rollout.control import Rollouts
    from proxy.store.base import RouteStore

log = logging.getLogger("strangler")
BACKLOG = 2048  # uvicorn's default backlog


@dataclass(frozen=True)
class Listener:
    role: str
    host: str
    port: int
    sock: socket.socket
    tls: bool = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bind(role: str, address: tuple[str, int], *, tls: bool = False) -> Listener:
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"cannot listen on {host}:{port} ({role}): {exc.strerror}"
        ) from None
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return Listener(role, host, sock.getsockname()[1], sock, tls)


def bind_all(settings: ProxySettings) -> list[Listener]:
    listeners: list[Listener] = []
    secured = tls_files(settings)
    for role, value in (
        ("external", settings.listen),
        ("internal", settings.internal_listen),
        ("admin", settings.admin_listen),
    ):
        address = parse_listen(value)
        if address is None:
            continue
        # The worker tells listeners apart by local port: two roles on one port would mix up
        # the admin endpoints and the proxied paths.
        taken = next(
            (other for other in listeners if address[1] and other.port == address[1]), None
        )
        if taken is not None:
            for listener in listeners:
                listener.sock.close()
            raise OSError(f"the {role} and {taken.role} listeners cannot share port {address[1]}")
        listeners.append(bind(role, address, tls=role in secured))
    return listeners


def _rollouts(store: RouteStore, settings: ProxySettings) -> Rollouts:
    """The rollouts of the served route store (admin/rollout.py's operations)."""
    from proxy.rollout.control import Rollouts
    from proxy.rollout.store import open_rollouts

    return Rollouts(store, open_rollouts(settings.store, settings.routes, settings.store_prefix))


def _admin_app_path(path: str) -> bool:
    """Paths of the admin listener that the admin app answers: its API and the dashboard (`/`
    redirects there); the rest (/healthz, /readyz, /metrics) is answered here without it."""
    return path.startswith(("/api/", "/dashboard/")) or path in ("/", "/dashboard")


class Router:
    """The worker's ASGI app: the data plane on the external and internal ports, the admin
    endpoints on the admin port. Picklable until startup (it crosses to worker processes)."""

    def __init__(self, settings: ProxySettings, roles: dict[int, str]) -> None:
        self.settings = settings
        self.roles = roles
        self.runtime: Runtime | None = None
        self.planes: dict[str, DataPlane] = {}
        self.admin_api: ASGIApp | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "roles": self.roles}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"], state["roles"])  # type: ignore[misc]

    async def startup(self) -> None:
        H1Connection.limits = plain(self.settings)  # read per request: plain attributes
        logging.getLogger("uvicorn.error").addFilter(QuietAborts())
        self.runtime = Runtime(self.settings, initial_table(self.settings))
        self.planes = {role: DataPlane(self.runtime, role) for role in ("external", "internal")}
        if self.settings.routes is not None or self.settings.store != "file":
            from proxy.admin.app import create_admin_app
            from proxy.store import open_store
            from proxy.store.consumers import open_consumer_store

            settings = self.settings
            store = open_store(settings.store, settings.routes, settings.store_prefix)
            self.admin_api = create_admin_app(
                store,
                settings.admin_token,
                self.runtime,
                consumers=lambda: open_consumer_store(settings),
                rollouts=lambda: _rollouts(store, settings),
            )
        await self.runtime.start()

    def app_for(self, port: int | None) -> ASGIApp | None:
        """The application a connection to local `port` is served by (the engine asks once per
        connection, not per request); None before the worker has started."""
        if not self.planes:
            return None
        role = self.roles.get(port, "external") if port is not None else "external"
        return self.planes.get(role) or self.admin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            role = (
                self.roles.get(scope["server"][1], "external")
                if scope.get("server")
                else "external"
            )
            plane = self.planes.get(role)
            if plane is not None:
                await plane(scope, receive, send)
            else:
                await self.admin(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.runtime is not None:
                    await self.runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        assert runtime is not None
        path = scope["path"]
        if self.admin_api is not None and _admin_app_path(path):
            await self.admin_api(scope, receive, send)
            return
        if scope["method"] not in {"GET", "HEAD"}:
            status, body, ctype = 405, problem_body(405, "method-not-allowed", "read-only"), None
        elif path == "/healthz":
            status, body, ctype = 200, b'{"status":"ok"}', b"application/json"
        elif path == "/readyz":
            snapshot = runtime.snapshot
            body = json.dumps(
                {
                    "status": "ready",
                    "table_version": snapshot.version,
                    "routes": len(snapshot.routes),
                }
            ).encode()
            status, ctype = 200, b"application/json"
        elif path == "/metrics":
            status, body = 200, runtime.metrics.render()
            ctype = b"text/plain; version=0.0.4; charset=utf-8"
        else:
            status, body, ctype = (
                404,
                problem_body(404, "not-found", f"no admin endpoint {path}"),
                None,
            )
        headers = (
            problem_headers(body)
            if ctype is None
            else [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class ProxyServer(uvicorn.Server):
    """uvicorn's server with TLS per listener role, and a clean exit.

    - startup: uvicorn's own (the application's lifespan, then one asyncio server per socket),
      except that each socket gets its role's TLS context, or none, and a task that reloads the
      certificates when their files change; shutdown ends that task.
    - uvicorn re-raises a caught SIGTERM or SIGINT once its graceful shutdown is done, so the
      process would die by the signal (exit -15); a proxy that drained cleanly exits 0, as nginx
      does. (With --workers, uvicorn's supervisor already exits 0.)
    """

    _reloader: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        router = self.config.app
        if sockets is None or not isinstance(router, Router):
            await super().startup(sockets)
            return
        try:  # serve() loaded them already; they may have gone since (a worker restarted)
            secured = {
                role: ListenerTLS(files) for role, files in tls_files(router.settings).items()
            }
        except ValueError as exc:
            log.error("%s", exc)
            sys.exit(STARTUP_FAILURE)
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config, state, lifespan = self.config, self.server_state, self.lifespan

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state=lifespan.state, _loop=_loop
            )

        loop = asyncio.get_running_loop()
        self.servers = []
        for sock in sockets:
            listener = secured.get(router.roles.get(sock.getsockname()[1], ""))
            tls: dict[str, Any] = {}
            if listener is not None:  # a handshake is timed like a request head (slowloris)
                tls = {
                    "ssl": listener.context,
                    "ssl_handshake_timeout": router.settings.header_timeout,
                }
            # Each connection is handed the loop: looking it up is a getpid() system call.
            server = await loop.create_server(
                partial(create_protocol, loop), sock=sock, backlog=config.backlog, **tls
            )
            self.servers.append(server)
        if secured:
            self._reloader = asyncio.create_task(
                reload_certificates(secured.values(), router.settings.tls_reload_interval)
            )
        self.started = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            await asyncio.gather(self._reloader, return_exceptions=True)
            self._reloader = None
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


class WorkerProcess(multiprocess.Process):
    """A `--workers` process that runs a ProxyServer (uvicorn's runs a plain uvicorn.Server)."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = ProxyServer(config=self.config)
        return self._server


class ProxyMultiprocess(Multiprocess):
    """uvicorn's supervisor, whose workers are WorkerProcesses. It makes a worker at start, when
    one dies, and on SIGHUP or SIGTTIN, always as `Process` of its module and always from run()
    in the main thread: while run() runs, that name is WorkerProcess."""

    def run(self) -> None:
        with _worker_class(WorkerProcess):
            super().run()


@contextlib.contextmanager
def _worker_class(replacement: type[multiprocess.Process]) -> Iterator[None]:
    original = multiprocess.Process
    multiprocess.Process = replacement  # type: ignore[misc]
    try:
        yield
    finally:
        multiprocess.Process = original  # type: ignore[misc]


class QuietAborts(logging.Filter):
    """An upstream failing mid-response is raised to uvicorn on purpose (the client connection
    must close, see errors.ResponseAborted); log it as one warning, not a crash traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ResponseAborted):
            record.msg, record.args = (
                "response aborted mid-way (%s): client connection closed",
                (exc.kind,),
            )
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def uvicorn_config(settings: ProxySettings, listeners: list[Listener]) -> uvicorn.Config:
    roles = {listener.port: listener.role for listener in listeners}
    return uvicorn.Config(
        Router(settings, roles),
        loop="uvloop",
        http=H1Connection,
        ws="none",
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        date_header=False,
        access_log=False,
        log_level="warning",
        timeout_keep_alive=settings.keepalive_timeout,  # type: ignore[arg-type]
        timeout_graceful_shutdown=int(settings.graceful_timeout),
        workers=settings.workers,
    )


def serve(settings: ProxySettings, announce: Any = print) -> None:
    """Validate the table, bind, announce the addresses, and serve until SIGTERM/SIGINT."""
    snapshot = initial_table(settings)  # refuse a bad table before binding anything
    admin = parse_listen(settings.admin_listen)
    if admin is not None and not settings.admin_token and not _loopback(admin[0]):
        raise ValueError(
            f"the admin listener {settings.admin_listen} is not loopback: set STRANGLER_ADMIN_TOKEN"
        )
    for files in tls_files(settings).values():
        server_context(files)  # refuse an unreadable certificate or key before binding anything
    listeners = bind_all(settings)
    if not any(listener.role == "external" for listener in listeners):
        raise ValueError("the external listener cannot be off")
    made_metrics_dir = made_pin_dir = None
    if settings.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        made_metrics_dir = tempfile.mkdtemp(prefix="strangler-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made_metrics_dir
    if settings.workers > 1 and settings.store == "file":
        # The workers tell each other of read-your-writes pins through sockets here.
        made_pin_dir = tempfile.mkdtemp(prefix="strangler-pins-")
        os.environ[PIN_DIR_ENV] = made_pin_dir
    config = uvicorn_config(settings, listeners)
    source = settings.routes or settings.default_upstream
    if settings.store != "file":
        from proxy.store.redis import describe

        source = describe(settings.store)
    announce(
        "strangler serving "
        + ", ".join(f"{listener.role} on {listener.url}" for listener in listeners)
        + f" (table version {snapshot.version} from {source}, {len(snapshot.routes)} routes,"
        f" {settings.workers} worker{'s' if settings.workers > 1 else ''})",
    )
    sockets = [listener.sock for listener in listeners]
    server = ProxyServer(config)
    try:
        if settings.workers > 1:
            ProxyMultiprocess(config, sockets=sockets).run()
        else:
            server.run(sockets=sockets)
    finally:
        if made_metrics_dir is not None:  # the workers' metric files die with the proxy
            shutil.rmtree(made_metrics_dir, ignore_errors=True)
        if made_pin_dir is not None:
            os.environ.pop(PIN_DIR_ENV, None)
            shutil.rmtree(made_pin_dir, ignore_errors=True)
