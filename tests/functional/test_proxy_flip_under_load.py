"""Route changes while requests are in flight: a real proxy on the Redis store serves a route whose
split changes every 200 ms under concurrent clients, and a slow download outlives the removal of
its upstream. Every answer on the internal listener names the table version that served it
(Strangler-Route-Version), which is what lets these tests check each answer against its table."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from proxy.dataplane.forward import Forwarder, Outcome, answer_client
from proxy.store.redis import RedisStore
from proxy.table.compile import Upstream, compile_table
from proxy.table.loader import load_text
from proxy.types import Message
from tests.functional.proxy_support import (
    Conn,
    Handler,
    Reader,
    Recorder,
    Seen,
    Writer,
    build,
    echo,
    get,
    problem,
    read_body,
    recorder,
    route_version,
    running,
    store_args,
    table_text,
    wait_until,
)
from tests.support import free_port

FLIPS = 100  # versions committed while the clients run
FLIP_EVERY = 0.2  # seconds
CLIENTS = 6  # half keep their connection, half open one per request
PER_CLIENT = 20_000  # an upper bound, whatever the machine's speed
# The route's action cycles through these: shifting splits, weights of 0 and single upstreams.
ACTIONS: list[dict[str, object]] = [
    {"split": {"a": 100, "b": 0}},
    {"split": {"a": 70, "b": 30}},
    {"to": "b"},
    {"split": {"a": 0, "b": 100}},
    {"split": {"a": 30, "b": 70}},
    {"to": "a"},
    {"split": {"a": 50, "b": 50}},
]


def allowed(action: dict[str, object]) -> set[str]:
    """The upstreams a request may reach under `action` (never one with weight 0)."""
    split = action.get("split")
    if isinstance(split, dict):
        return {name for name, weight in split.items() if weight > 0}
    return {str(action["to"])}


def api_table(a: Recorder, b: Recorder, action: dict[str, object]) -> str:
    route = {"name": "api", "match": {"path": "/api"}, **action}
    return table_text({"a": a.url, "b": b.url}, [route], default="a")


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> Iterator[RedisStore]:
    store = RedisStore(redis_url, redis_prefix)
    yield store
    store.close()


class Clients:
    """Threads sending GET /api/... to one port until told to stop; every answer is kept as
    (version header, body), every failure (not a complete 200, a connection error) as text."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.answers: list[tuple[int | None, bytes]] = []
        self.failures: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(i, i % 2 == 0), name=f"client-{i}")
            for i in range(CLIENTS)
        ]

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _run(self, index: int, keep_alive: bool) -> None:
        conn: Conn | None = None
        for sent in range(PER_CLIENT):
            if self.stop.is_set():
                break
            try:
                if conn is None:
                    conn = Conn(self.port)
                conn.sendall(build("GET", f"/api/items/{index}-{sent}"))
                answer = conn.read_response()
            except OSError as exc:
                self.failures.append(f"client {index}: {exc.__class__.__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if answer.status != 200 or not answer.complete:
                self.failures.append(f"client {index}: {answer.status} {answer.body[:200]!r}")
            self.answers.append((route_version(answer), answer.body))
            if not keep_alive or answer.value("connection") == b"close":
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


@pytest.mark.redis
def test_a_route_flipped_every_200ms_under_load_never_fails_and_follows_each_version(
    store: RedisStore, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    with recorder() as a, recorder() as b:
        a.reset(echo("a"))
        b.reset(echo("b"))
        tables = {
            store.commit(
                api_table(a, b, ACTIONS[0]), author="t", reason="start", expected_version=0
            ).info.version: allowed(ACTIONS[0])
        }
        args = [*store_args(redis_url, redis_prefix, tmp_path / "lkg.yaml"), "--no-access-log"]
        with running(args) as proxy:
            version = 1
            with Clients(proxy.internal) as clients:
                start = time.monotonic()
                for flip in range(1, FLIPS + 1):
                    time.sleep(max(0.0, start + flip * FLIP_EVERY - time.monotonic()))
                    action = ACTIONS[flip % len(ACTIONS)]
                    committed = store.commit(
                        api_table(a, b, action),
                        author="t",
                        reason=f"flip {flip}",
                        expected_version=version,
                    )
                    version = committed.info.version
                    tables[version] = allowed(action)
            assert version == FLIPS + 1
            wait_until(lambda: proxy.readyz()["table_version"] == version, 3, "the last version")
            last = get(proxy.internal, "/api/last")
            assert last.status == 200
            assert route_version(last) == version
            assert last.body.decode() in tables[version]

    assert clients.failures == [], clients.failures[:10]
    answers = clients.answers
    assert answers, "no request was answered"
    unknown = {v for v, _ in answers if v not in tables}
    assert unknown == set(), f"answers name versions that were never committed: {unknown}"
    wrong = [(v, body) for v, body in answers if v is not None and body.decode() not in tables[v]]
    assert wrong == [], (
        f"{len(wrong)} of {len(answers)} answers came from an upstream their "
        f"version does not send to, e.g. {wrong[:5]}"
    )
    served = {v for v, _ in answers}
    assert len(served) > 1, f"every answer came from one version: {served}"
    assert {body for _, body in answers} == {b"a", b"b"}


def held_stream(
    chunks: list[bytes], halfway: threading.Event, release: asyncio.Event, gap: float = 0.1
) -> Handler:
    """A chunked download, one chunk every `gap` seconds; halfway through it sets `halfway`
    and waits for `release` (so the test decides when it ends). Keeps the connection."""

    async def handle(seen: Seen, reader: Reader, writer: Writer) -> bool:
        await read_body(seen, reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for index, chunk in enumerate(chunks):
            if index == len(chunks) // 2:
                halfway.set()
                await release.wait()
            await asyncio.sleep(gap)
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    return handle


@pytest.mark.redis
def test_a_slow_download_survives_the_removal_of_its_upstream(
    store: RedisStore, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    chunks = [bytes([65 + i]) * 1_000 for i in range(20)]  # 20 chunks, 100 ms apart: about 2 s
    halfway, download = threading.Event(), {}
    with recorder() as a, recorder() as b:
        release = asyncio.Event()
        a.reset(echo("a"))
        b.reset(held_stream(chunks, halfway, release))
        files: dict[str, object] = {"name": "files", "match": {"path": "/files"}, "to": "b"}
        first = table_text({"a": a.url, "b": b.url}, [files], default="a")
        store.commit(first, author="t", reason="files on b", expected_version=0)
        with running(store_args(redis_url, redis_prefix, tmp_path / "lkg.yaml")) as proxy:

            def fetch() -> None:
                with Conn(proxy.internal, timeout=30) as conn:
                    conn.sendall(build("GET", "/files/report.bin"))
                    download["answer"] = conn.read_response()

            worker = threading.Thread(target=fetch, name="download")
            worker.start()
            try:
                wait_until(halfway.is_set, 10, "the download to be half way")
                without_b = table_text({"a": a.url}, [{**files, "to": "a"}], default="a")
                store.commit(without_b, author="t", reason="b retired", expected_version=1)
                wait_until(lambda: proxy.readyz()["table_version"] == 2, 3, "version 2 served")
                moved = get(proxy.internal, "/files/other.bin")
                assert (moved.status, moved.body, route_version(moved)) == (200, b"a", 2)
                assert worker.is_alive()  # the upstream holds the first download open
            finally:
                b.loop.call_soon_threadsafe(release.set)
                worker.join(timeout=30)
            answer = download["answer"]
            assert answer.status == 200
            assert answer.complete
            assert answer.body == b"".join(chunks)
            assert route_version(answer) == 1  # it finished on the table it started with
            assert [s.target for s in b.seen] == [b"/files/report.bin"]
            # The retired upstream's connection is closed once its last request is done (not
            # kept alive for the pool's idle timeout).
            wait_until(lambda: not b._tasks, 3, "the proxy to close its connection to b")
            after = get(proxy.internal, "/files/report.bin")
            assert (after.status, after.body, route_version(after)) == (200, b"a", 2)


# --- the forwarder's sessions, unit level (a real aiohttp server) --------------------------------
async def _forward_once(
    forwarder: Forwarder,
    upstream: Upstream,
    path: str,
    sent: list[Message],
    first_body: asyncio.Event | None = None,
) -> Outcome:
    done = asyncio.Event()

    async def receive() -> Message:
        await done.wait()  # the client stays until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if first_body is not None and message["type"] == "http.response.body":
            first_body.set()

    scope = {"type": "http", "method": "GET", "raw_path": path.encode(), "query_string": b""}
    outcome = Outcome()
    pool = forwarder.enter(upstream)
    try:
        response = await forwarder.open(
            pool, upstream, scope, [(b"host", b"upstream.test")], None, read_timeout=10
        )
        await answer_client(
            response,
            forwarder.reader(response),
            receive,
            send,
            whole=await forwarder.buffered(response, scope, 10),
            streamed_body=False,
            read_timeout=10,
            send_timeout=10,
            outcome=outcome,
            extra_headers=None,
        )
    finally:
        forwarder.leave(pool)
        done.set()
    return outcome


async def closed_soon(session: ClientSession) -> bool:
    """Whether `session` is closed within a second (the forwarder closes it in a task)."""
    for _ in range(100):
        if session.closed:
            return True
        await asyncio.sleep(0.01)
    return session.closed


def test_the_forwarder_closes_a_retired_session_once_its_last_request_ends() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            await response.prepare(request)
            for index in range(10):
                if index == 5:
                    await release.wait()
                await response.write(bytes([48 + index]) * 100)
                await asyncio.sleep(0.02)
            await response.write_eof()
            return response

        async def fast(_: web.Request) -> web.Response:
            return web.Response(text="a")

        app = web.Application()
        app.router.add_get("/slow", slow)
        app.router.add_get("/fast", fast)
        runner = web.AppRunner(app)
        await runner.setup()
        ports = [free_port(), free_port()]
        for port in ports:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        table = table_text(
            {"a": f"http://127.0.0.1:{ports[0]}", "b": f"http://127.0.0.1:{ports[1]}"}, [], "a"
        )
        upstreams = compile_table(load_text(table)).upstreams
        a, b = upstreams["a"], upstreams["b"]
        forwarder = Forwarder()
        try:
            sent_a: list[Message] = []
            assert (await _forward_once(forwarder, a, "/fast", sent_a)).status == 200
            a_session = forwarder.pool(a).session
            assert forwarder.open_sessions == 1

            sent_b: list[Message] = []
            first_body = asyncio.Event()
            slow_task = asyncio.create_task(
                _forward_once(forwarder, b, "/slow", sent_b, first_body)
            )
            await asyncio.wait_for(first_body.wait(), 10)
            b_session = forwarder.pool(b).session
            assert forwarder.open_sessions == 2

            forwarder.retire_unused([a])  # a new table without b, while b's download runs
            assert forwarder.open_sessions == 2
            await asyncio.sleep(0.05)
            assert not b_session.closed  # in use: the download goes on
            release.set()
            outcome = await asyncio.wait_for(slow_task, 10)
            assert outcome.status == 200
            body = b"".join(m.get("body", b"") for m in sent_b if m["type"] == "http.response.body")
            assert body == b"".join(bytes([48 + i]) * 100 for i in range(10))
            assert forwarder.open_sessions == 1
            assert await closed_soon(b_session)  # closed once its last request ended
            assert not a_session.closed

            forwarder.retire_unused([])  # an idle session is closed at once
            assert forwarder.open_sessions == 0
            assert await closed_soon(a_session)
        finally:
            await forwarder.close()
            await runner.cleanup()

    asyncio.run(scenario())


# --- which answers carry the version header ------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "external", "internal"),
    [
        pytest.param(None, False, True, id="default-internal-only"),
        pytest.param("internal", False, True, id="internal"),
        pytest.param("all", True, True, id="all"),
        pytest.param("off", False, False, id="off"),
    ],
)
def test_the_route_version_header_by_listener(
    tmp_path: Path, setting: str | None, external: bool, internal: bool
) -> None:
    with recorder() as monolith:
        routes = tmp_path / "routes.yaml"
        down: dict[str, object] = {"name": "down", "match": {"path": "/down"}, "to": "gone"}
        upstreams = {"monolith": monolith.url, "gone": f"http://127.0.0.1:{free_port()}"}
        routes.write_text(
            table_text(upstreams, [down], default="monolith").replace("version: 1", "version: 7")
        )
        args = ["--routes", str(routes)] + (["--version-header", setting] if setting else [])
        with running(args) as proxy:
            for port, expected in ((proxy.external, external), (proxy.internal, internal)):
                answer = get(port, "/api/v1/orders")
                assert answer.status == 200
                assert route_version(answer) == (7 if expected else None), answer.head
                # the proxy's own problem answers say it too (an upstream that is down)
                failed = get(port, "/down/1")
                problem(failed, 502, "upstream-unreachable")
                assert route_version(failed) == (7 if expected else None), failed.head
