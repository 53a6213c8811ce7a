"""The failing upstream of the retry, fallback and circuit-breaker tests, checked on its own with
raw sockets and httpx: every behaviour, the order they are chosen in, keep-alive, request
framing, the log, refusing connections and a clean shutdown."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.functional.faulty_upstream import Behaviour, FaultyUpstream, refused_port
from tests.functional.proxy_support import Conn, Response, build


@pytest.fixture(scope="module")
def server() -> Iterator[FaultyUpstream]:
    with FaultyUpstream("a") as upstream:
        yield upstream


@pytest.fixture
def up(server: FaultyUpstream) -> FaultyUpstream:
    server.reset()
    return server


def ask(
    up: FaultyUpstream, method: str = "GET", target: str = "/x", body: bytes = b"", **kw: object
) -> Response:
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(build(method, target, body=body, **kw))  # type: ignore[arg-type]
        return conn.read_response(head_request=method == "HEAD")


def ended(sock: socket.socket) -> bytes | None:
    """What a read gets once the server dropped the connection: b"" (FIN), None (RST)."""
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return None


def echo(answer: Response) -> dict[str, object]:
    data = answer.json()
    assert isinstance(data, dict)
    return data


# --- ok, keep-alive and request framing -----------------------------------------------------------
def test_ok_echoes_the_request_on_a_kept_alive_connection(up: FaultyUpstream) -> None:
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(build("POST", "/orders?x=1", body=b"hello"))
        first = conn.read_response()
        conn.sendall(build("GET", "/orders/1"))
        second = conn.read_response()
    assert first.status == 200
    assert first.value("content-type") == b"application/json"
    one, two = echo(first), echo(second)
    assert one["method"] == "POST"
    assert one["path"] == "/orders"
    assert one["target"] == "/orders?x=1"
    assert one["body_length"] == 5
    assert one["reused"] is False
    assert two["reused"] is True
    assert two["connection"] == one["connection"]
    assert two["n"] == one["n"] + 1  # type: ignore[operator]
    assert one["upstream"] == "a"
    assert first.value("x-upstream") == b"a"
    assert up.connections == 1
    posted, got = up.requests
    assert (posted.method, posted.path, posted.body, posted.complete) == (
        "POST",
        "/orders",
        b"hello",
        True,
    )
    assert posted.header("host") == b"proxy.test"
    assert (b"Host", b"proxy.test") in posted.headers
    assert (posted.reused, got.reused) == (False, True)
    assert posted.answered
    assert got.answered
    assert posted.behaviour == "ok"


def test_a_chunked_body_with_trailers_is_read_whole(up: FaultyUpstream) -> None:
    raw = (
        b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Sum: 1\r\n\r\n"
    )
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(raw + build("GET", "/after"))  # pipelined behind the chunked one
        first = conn.read_response()
        second = conn.read_response()
    assert echo(first)["body_length"] == 11
    assert echo(second)["path"] == "/after"
    request = up.requests[0]
    assert request.body == b"hello world"
    assert request.trailers == [(b"X-Sum", b"1")]
    assert up.count(path="/after") == 1


def test_expect_100_continue_is_answered_before_the_body(up: FaultyUpstream) -> None:
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(build("PUT", "/e", [("Expect", "100-continue"), ("Content-Length", "3")]))
        interim = conn.read_response()
        conn.sendall(b"abc")
        final = conn.read_response()
    assert interim.status == 100
    assert final.status == 200
    assert up.requests[0].body == b"abc"


def test_a_client_asking_to_close_gets_connection_close(up: FaultyUpstream) -> None:
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(build("GET", "/bye", [("Connection", "close")]))
        answer = conn.read_response()
        assert answer.value("connection") == b"close"
        assert ended(conn.sock) == b""


def test_ok_with_a_size_and_head(up: FaultyUpstream) -> None:
    up.mode = "ok:500"
    sized = ask(up)
    assert len(sized.body) == 500
    assert echo(sized)["path"] == "/x"  # padded with spaces: still JSON
    up.mode = "ok:3"
    assert ask(up).body == b"xxx"
    up.mode = "ok"
    head = ask(up, "HEAD")
    assert head.body == b""
    assert int(head.value("content-length") or 0) > 0


def test_a_malformed_request_gets_400(up: FaultyUpstream) -> None:
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(b"GET /x HTTP/1.1\r\nNo colon\r\n\r\n")
        assert conn.read_response().status == 400
        assert ended(conn.sock) == b""
    assert up.requests[0].behaviour.startswith("malformed")


def test_httpx_keeps_one_connection_alive(up: FaultyUpstream) -> None:
    with httpx.Client(base_url=up.url, timeout=3) as client:
        answers = [client.post("/p", content=b"x" * n).json() for n in range(3)]
    assert [a["body_length"] for a in answers] == [0, 1, 2]
    assert [a["reused"] for a in answers] == [False, True, True]
    assert up.connections == 1


# --- status codes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_status_behaviour_answers_that_status_and_keeps_the_connection(
    up: FaultyUpstream, status: int
) -> None:
    up.mode = str(status)
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(build("GET", "/s"))
        first = conn.read_response()
        conn.sendall(build("GET", "/s"))
        second = conn.read_response()
    assert first.status == second.status == status
    assert echo(first)["status"] == status
    assert echo(second)["reused"] is True
    assert up.count(behaviour=str(status)) == 2
    assert not any(r.reused for r in up.requests[:1])


# --- failures before an answer --------------------------------------------------------------------
def test_reset_before_resets_after_reading_the_whole_request(up: FaultyUpstream) -> None:
    up.mode = "reset_before"
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(build("POST", "/pay", [("Idempotency-Key", "k1")], b"{}" * 1000))
        assert ended(conn.sock) in (None, b"")
    # On loopback the RST is what arrives: no byte, then ECONNRESET.
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(build("POST", "/pay", [("Idempotency-Key", "k2")]))
        with pytest.raises(ConnectionResetError):
            conn.sock.recv(100)
    assert up.count("POST", "/pay", header=("Idempotency-Key", "k1")) == 1
    first = up.requests[0]
    assert (first.complete, first.body_size, first.answered) == (True, 2000, False)


def test_close_before_closes_with_a_fin_and_no_byte(up: FaultyUpstream) -> None:
    up.mode = "close_before"
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(build("POST", "/c", body=b"abc"))
        assert ended(conn.sock) == b""
    assert up.requests[0].body == b"abc"


def test_reset_after_cuts_a_started_body(up: FaultyUpstream) -> None:
    up.mode = "reset_after:100:1000:0.05"
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(build("GET", "/cut"))
        answer = conn.read_response()
        assert answer.status == 200
        assert answer.value("content-length") == b"1000"
        assert not answer.complete
        assert 0 < len(answer.body) <= 100
        assert ended(conn.sock) in (None, b"")


def test_stall_never_answers_and_stall_seconds_answers_late(up: FaultyUpstream) -> None:
    up.mode = "stall"
    with Conn(up.port, timeout=0.3) as conn:
        conn.sendall(build("GET", "/slow"))
        with pytest.raises(TimeoutError):
            conn.sock.recv(100)
    up.wait_for_requests(1, path="/slow")
    up.mode = "stall:0.2"
    started = time.monotonic()
    assert ask(up, "GET", "/late").status == 200
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize(("variant", "drop"), [("drop_reused", b""), ("drop_reused:reset", None)])
def test_drop_reused_answers_a_fresh_connection_and_drops_a_reused_one(
    up: FaultyUpstream, variant: str, drop: bytes | None
) -> None:
    up.mode = variant
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(build("GET", "/first"))
        assert conn.read_response().status == 200
        conn.sendall(build("POST", "/second", body=b"{}"))
        assert ended(conn.sock) in (drop, b"")
    assert ask(up, "GET", "/fresh").status == 200  # a new connection is served
    first, second, fresh = up.requests
    assert (first.reused, first.answered) == (False, True)
    assert (second.reused, second.answered, second.body) == (True, False, b"{}")
    assert (fresh.reused, fresh.answered) == (False, True)


def test_drop_reused_drops_an_expect_request_at_its_head(up: FaultyUpstream) -> None:
    """The stale race as an upload asking `Expect: 100-continue` meets it: no 100, no body read."""
    up.mode = "drop_reused"
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(build("GET", "/first"))
        assert conn.read_response().status == 200
        conn.sendall(build("PUT", "/upload", [("Expect", "100-continue"), ("Content-Length", "3")]))
        assert ended(conn.sock) == b""  # a FIN, not a 100
    _first, dropped = up.requests
    assert (dropped.reused, dropped.answered, dropped.body_size, dropped.complete) == (
        True,
        False,
        0,
        False,
    )
    with Conn(up.port, timeout=3) as conn:  # a fresh connection says 100 and reads the body
        conn.sendall(build("PUT", "/again", [("Expect", "100-continue"), ("Content-Length", "3")]))
        assert conn.read_response().status == 100
        conn.sendall(b"abc")
        assert conn.read_response().status == 200
    assert up.requests[-1].body == b"abc"


def test_drop_reused_is_what_a_pooled_client_sees(up: FaultyUpstream) -> None:
    up.mode = "drop_reused"
    with httpx.Client(base_url=up.url, timeout=3) as client:
        assert client.get("/one").status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/two")
        assert client.get("/three").status_code == 200  # on a new connection
    assert up.connections == 2


def test_close_idle_connections_closes_kept_alive_ones(up: FaultyUpstream) -> None:
    with Conn(up.port, timeout=3) as conn:
        conn.sendall(build("GET", "/a"))
        conn.read_response()
        assert up.close_idle_connections() == 1
        assert ended(conn.sock) == b""


# --- slow bodies ----------------------------------------------------------------------------------
def test_slow_body_is_written_at_its_rate(up: FaultyUpstream) -> None:
    up.mode = "slow_body:65536:262144"  # 64 KiB at 256 KiB/s: about 0.25 s
    with socket.create_connection(("127.0.0.1", up.port), timeout=3) as sock:
        sock.sendall(build("GET", "/stream"))
        started = time.monotonic()
        received, reads = b"", 0
        while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < 65536:
            piece = sock.recv(65536)
            assert piece
            received += piece
            reads += 1
        elapsed = time.monotonic() - started
    head, body = received.split(b"\r\n\r\n", 1)
    assert b"Content-Length: 65536" in head
    assert len(body) == 65536
    assert 0.2 <= elapsed < 2
    assert reads > 5


# --- choosing a behaviour -------------------------------------------------------------------------
def test_the_script_comes_first_then_the_mode_then_the_path_rules(up: FaultyUpstream) -> None:
    up.on("/fail", "503")
    up.on("/fail/deeper", "502")
    assert ask(up, target="/fail/x").status == 503
    assert ask(up, target="/fail/deeper/x").status == 502  # the longest prefix wins
    assert ask(up, target="/other").status == 200
    up.script(["500", "504"])
    up.then("ok")
    assert up.script_left == 3
    assert [ask(up, target="/fail/x").status for _ in range(4)] == [500, 504, 200, 503]
    assert up.script_left == 0
    up.mode = "502"
    assert ask(up, target="/other").status == 502
    up.mode = None
    up.on("/fail", None)
    assert ask(up, target="/fail/x").status == 200


def test_a_script_of_resets_then_ok(up: FaultyUpstream) -> None:
    up.script(["reset_before", "close_before", "ok"])
    outcomes = []
    for _ in range(3):
        with Conn(up.port, timeout=3) as conn:
            conn.sendall(build("POST", "/retry", [("Idempotency-Key", "same")], b"{}"))
            try:
                outcomes.append(conn.read_response().status)
            except (ConnectionError, OSError):
                outcomes.append(0)
    assert outcomes == [0, 0, 200]
    assert up.count("POST", header=("Idempotency-Key", "same")) == 3
    assert [r.behaviour for r in up.requests] == ["reset_before", "close_before", "ok"]
    assert up.connections == 3


@pytest.mark.parametrize(
    "text", ["nope", "200:1", "99", "ok:x", "ok:1:2", "reset_after:5:5", "refuse", "stall:-1"]
)
def test_an_unknown_behaviour_is_refused_at_once(up: FaultyUpstream, text: str) -> None:
    with pytest.raises(ValueError, match=r"behaviour|argument|Content-Length|negative|'refuse'"):
        up.mode = text
    with pytest.raises(ValueError, match=r"behaviour|argument|Content-Length|negative|'refuse'"):
        up.script(["ok", text])
    assert up.script_left == 0


def test_behaviours_parse() -> None:
    assert Behaviour.parse("503") == Behaviour("status", (503.0,), "503")
    assert Behaviour.parse("drop_reused:reset").args == (1.0,)
    assert Behaviour.parse("slow_body:10:5").args == (10.0, 5.0)


# --- the log --------------------------------------------------------------------------------------
def test_count_filters_and_reset_log(up: FaultyUpstream) -> None:
    ask(up, "POST", "/pay", b"{}", host="h")
    ask(up, "POST", "/pay/2", b"{}")
    ask(up, "GET", "/pay")
    assert up.count() == 3
    assert up.count("POST") == 2
    assert up.count("post", "/pay") == 1
    assert up.count(prefix="/pay") == 3
    assert up.count(header=("host", "h")) == 1
    assert len(up.matching("GET")) == 1
    numbers = [r.number for r in up.requests]
    assert numbers == sorted(numbers)
    up.reset_log()
    assert (up.count(), up.connections, up.requests) == (0, 0, [])
    ask(up)
    assert up.requests[0].number == numbers[-1] + 1  # numbers keep growing
    with pytest.raises(AssertionError, match="saw 0 matching"):
        up.wait_for_requests(1, "DELETE", timeout=0.05)


# --- refusing connections and shutting down -------------------------------------------------------
def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_refused_port_refuses() -> None:
    port = refused_port()
    assert refused(port)
    assert refused_port() != port


def test_stop_and_start_listening_on_the_same_port(up: FaultyUpstream) -> None:
    port = up.port
    with Conn(port, timeout=3) as kept:
        kept.sendall(build("GET", "/before"))
        assert kept.read_response().status == 200
        up.stop_listening()
        try:
            during = up.listening
            assert refused(port)
            kept.sendall(build("GET", "/during"))  # an accepted connection is still served
            assert kept.read_response().status == 200
        finally:
            up.start_listening()
    assert (during, up.listening) == (False, True)
    assert up.port == port
    assert ask(up, "GET", "/after").status == 200


def test_close_ends_every_connection_and_the_thread() -> None:
    upstream = FaultyUpstream("short").start()
    upstream.mode = "stall"
    port = upstream.port
    with Conn(port, timeout=3) as stalled, Conn(port, timeout=3) as idle:
        stalled.sendall(build("GET", "/stuck"))
        upstream.wait_for_requests(1)
        started = time.monotonic()
        upstream.close()
        assert time.monotonic() - started < 2
        assert ended(stalled.sock) in (None, b"")
        assert ended(idle.sock) in (None, b"")
    assert refused(port)
    assert upstream._thread is not None
    assert not upstream._thread.is_alive()
    upstream.close()  # twice is fine
