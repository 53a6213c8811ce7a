"""Request framing as attack tools probe it: trailer fields, malformed chunked bodies, transfer
codings, a malformed request pipelined behind valid ones, Content-Length spellings, HTTP/1.0
without Host, and the Allow field of 405 answers (raw clients, a raw recorder upstream)."""

from __future__ import annotations

import json
import time

import pytest

from tests.functional.proxy_support import (
    Conn,
    ProxyProcess,
    Recorder,
    build,
    exchange,
    get,
    problem,
    reply,
    wait_until,
)

ALLOW = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
CHUNKED = [("Transfer-Encoding", "chunked")]
# Between two sends: the request is by then in the data plane's hands, reading its body.
PAUSE = 0.3


def refused_and_closed(conn: Conn, status: int, kind: str) -> dict[str, object]:
    """The next answer on `conn` is the problem for `status`, and the proxy then closes."""
    answer = conn.read_response()
    found = problem(answer, status, kind)
    assert answer.value("connection") == b"close", answer.head
    assert conn.closed_by_peer()
    return found


def never_whole(upstream: Recorder) -> None:
    """The upstream may have seen the head of a refused request, never all of it."""
    wait_until(lambda: all(not seen.complete for seen in upstream.seen), what="the upstream cut")


def access_log(proxy: ProxyProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in list(proxy.stdout) if line.startswith("{")]


def logged_targets(proxy: ProxyProcess, marker: str) -> list[object]:
    """Targets of the access-log lines so far, once the line for a new request to `marker` is
    in (lines are written as requests end; the caller's requests ended before it)."""
    assert get(proxy.external, marker).status == 200
    wait_until(
        lambda: any(line["target"] == marker for line in access_log(proxy)), what="the log line"
    )
    return [line["target"] for line in access_log(proxy)]


# --- trailer fields -------------------------------------------------------------------------------
@pytest.mark.parametrize("split", [False, True], ids=["one-read", "trailer-later"])
def test_trailer_fields_never_reach_the_upstream_as_headers(
    proxy: ProxyProcess, upstream: Recorder, split: bool
) -> None:
    head = build("POST", "/trailer", CHUNKED) + b"5\r\nhello\r\n"
    trailer = b"0\r\nAuthorization: Bearer x\r\nX-Trailer: 1\r\n\r\n"
    with Conn(proxy.external) as conn:
        if split:
            conn.sendall(head)
            time.sleep(PAUSE)
            conn.sendall(trailer)
        else:
            conn.sendall(head + trailer)  # one send: the trailer arrives with the head
        assert conn.read_response().status == 200
    seen = upstream.only()
    assert seen.body == b"hello"
    assert seen.values("authorization") == []
    assert seen.values("x-trailer") == []
    assert b"bearer x" not in seen.raw.lower()


@pytest.mark.parametrize(
    "trailer",
    [
        pytest.param(
            b"".join(b"X-T-%d: %s\r\n" % (i, b"v" * 1000) for i in range(40)), id="fields"
        ),
        pytest.param(b"X-Big: " + b"v" * 60_000, id="one-unending-field"),
    ],
)
def test_a_trailer_section_over_the_header_limit_is_431(
    proxy: ProxyProcess, upstream: Recorder, trailer: bytes
) -> None:
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/trailer", CHUNKED) + b"3\r\nabc\r\n0\r\n")
        time.sleep(PAUSE)
        conn.sendall(trailer)
        refused_and_closed(conn, 431, "headers-too-large")
    never_whole(upstream)


# --- malformed bodies and transfer codings --------------------------------------------------------
def test_a_malformed_chunk_size_is_400(proxy: ProxyProcess, upstream: Recorder) -> None:
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/upload", CHUNKED) + b"zz\r\n")
        refused_and_closed(conn, 400, "bad-request")
    never_whole(upstream)


def test_a_malformed_chunk_mid_body_is_400(proxy: ProxyProcess, upstream: Recorder) -> None:
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/upload", CHUNKED) + b"5\r\nhello\r\n")
        time.sleep(PAUSE)
        conn.sendall(b"3\r\nabcXX\r\n")  # chunk data longer than its size
        refused_and_closed(conn, 400, "bad-request")
    never_whole(upstream)


def test_a_malformed_body_is_logged_as_answered(proxy: ProxyProcess, upstream: Recorder) -> None:
    target = "/logged/bad-chunk"
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", target, CHUNKED) + b"5\r\nhello\r\n")
        time.sleep(PAUSE)
        conn.sendall(b"zz\r\n")
        answered = refused_and_closed(conn, 400, "bad-request")

    def lines() -> list[dict[str, object]]:
        return [line for line in access_log(proxy) if line["target"] == target]

    wait_until(lambda: bool(lines()), what="the log line")
    (line,) = lines()
    assert (line["status"], line["error"]) == (400, "bad-request")
    assert line["request_id"] == answered["request_id"]


@pytest.mark.parametrize(
    ("codings", "status", "kind"),
    [
        pytest.param(["gzip, chunked"], 501, "transfer-coding-not-implemented", id="gzip-chunked"),
        pytest.param(["gzip", "chunked"], 501, "transfer-coding-not-implemented", id="two-fields"),
        pytest.param(["gzip"], 400, "bad-request", id="chunked-not-final"),
        pytest.param(["identity"], 400, "bad-request", id="identity"),
    ],
)
def test_transfer_codings_other_than_chunked_are_refused_before_forwarding(
    proxy: ProxyProcess, upstream: Recorder, codings: list[str], status: int, kind: str
) -> None:
    target = f"/coding/{status}/{len(codings)}/{codings[0][:4]}"
    headers = [("Transfer-Encoding", coding) for coding in codings]
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", target, headers) + b"3\r\nabc\r\n0\r\n\r\n")
        refused_and_closed(conn, status, kind)
    assert upstream.seen == []
    # Refused before the data plane: no access-log line claims an answer for it.
    assert target not in logged_targets(proxy, f"/after{target}")


# --- pipelining -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tail", "status", "kind"),
    [
        pytest.param(b"\x00GARBAGE", 400, "bad-request", id="garbage"),
        pytest.param(
            b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad-target", id="target"
        ),
        pytest.param(
            build("GET", "/", [("X-Big", "v" * 40_000)]), 431, "headers-too-large", id="431"
        ),
        pytest.param(
            build("POST", "/bad", CHUNKED) + b"zz\r\n", 400, "bad-request", id="bad-chunk"
        ),
        pytest.param(
            build("POST", "/bad", [("Transfer-Encoding", "gzip, chunked")]) + b"0\r\n\r\n",
            501,
            "transfer-coding-not-implemented",
            id="coding",
        ),
    ],
)
@pytest.mark.parametrize("valid", [1, 2])
def test_valid_requests_before_a_malformed_one_are_answered_first(
    proxy: ProxyProcess, upstream: Recorder, tail: bytes, status: int, kind: str, valid: int
) -> None:
    """Everything arrives in one read; the valid requests are still being answered when the
    malformed one is parsed. Their answers come first, in order, then the refusal, then the
    connection closes."""
    upstream.handler = reply(delay=0.3)
    with Conn(proxy.external) as conn:
        conn.sendall(b"".join(build("GET", f"/valid/{i}") for i in range(valid)) + tail)
        for _ in range(valid):
            answer = conn.read_response()
            assert (answer.status, answer.body) == (200, b"ok")
        refused_and_closed(conn, status, kind)
    assert [seen.target for seen in upstream.seen] == [f"/valid/{i}".encode() for i in range(valid)]


def test_a_malformed_request_after_a_close_is_not_answered(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """After a request with `Connection: close` nothing more is processed (RFC 9112 §9.6)."""
    with Conn(proxy.external) as conn:
        conn.sendall(build("GET", "/last", [("Connection", "close")]) + b"\x00GARBAGE")
        assert conn.read_response().status == 200
        assert conn.read_until_closed() == b""
    assert [seen.target for seen in upstream.seen] == [b"/last"]


def test_the_connection_after_a_deferred_refusal_is_fresh(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    """A deferred refusal leaves nothing behind: the next connection is served normally."""
    upstream.handler = reply(delay=0.2)
    with Conn(proxy.external) as conn:
        conn.sendall(build("GET", "/one") + b"\x00")
        assert conn.read_response().status == 200
        refused_and_closed(conn, 400, "bad-request")
    upstream.handler = reply()
    started = time.monotonic()
    assert get(proxy.external, "/two").status == 200
    assert time.monotonic() - started < 2


# --- Content-Length -------------------------------------------------------------------------------
def test_content_length_goes_upstream_as_the_number(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    raw = build("POST", "/length", [("Content-Length", "010")], b"0123456789")
    assert exchange(proxy.external, raw).status == 200
    seen = upstream.only()
    assert seen.values("content-length") == [b"10"]
    assert seen.body == b"0123456789"


@pytest.mark.parametrize(
    "lengths",
    [pytest.param(["10, 10"], id="list"), pytest.param(["10", "10"], id="duplicate")],
)
def test_a_content_length_list_or_duplicate_is_400(
    proxy: ProxyProcess, upstream: Recorder, lengths: list[str]
) -> None:
    headers = [("Content-Length", length) for length in lengths]
    with Conn(proxy.external) as conn:
        conn.sendall(build("POST", "/length", headers, b"0123456789"))
        refused_and_closed(conn, 400, "bad-request")
    assert upstream.seen == []


# --- Host -----------------------------------------------------------------------------------------
def test_an_http10_request_without_host_is_served(proxy: ProxyProcess, upstream: Recorder) -> None:
    with Conn(proxy.external) as conn:
        conn.sendall(b"GET /old-client HTTP/1.0\r\nUser-Agent: legacy\r\n\r\n")
        answer = conn.read_response()
        assert (answer.status, answer.body) == (200, b"ok")
        assert conn.closed_by_peer()  # HTTP/1.0: no keep-alive
    seen = upstream.only()
    assert seen.target == b"/old-client"
    assert seen.value("host") == f"127.0.0.1:{upstream.port}".encode()
    assert seen.values("x-forwarded-host") == []


def test_an_http11_request_without_host_is_still_400(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    problem(exchange(proxy.external, b"GET / HTTP/1.1\r\n\r\n"), 400, "bad-host")
    assert upstream.seen == []


# --- 405 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", id="connect"
        ),
        pytest.param(b"TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", id="trace"),
    ],
)
def test_a_405_answer_carries_allow(proxy: ProxyProcess, upstream: Recorder, raw: bytes) -> None:
    answer = exchange(proxy.external, raw)
    problem(answer, 405, "method-not-allowed")
    assert answer.value("allow") == ALLOW
    assert upstream.seen == []
