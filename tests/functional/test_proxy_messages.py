"""What the real proxy must pass through unchanged: request targets (odd bytes, dot segments
matched normalised but sent as written), bodies both ways (chunked, gzip, HEAD, 304, 1xx),
redirects, Expect, pipelining and concurrent requests (raw recorder upstreams, raw clients)."""

from __future__ import annotations

import gzip
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.functional.proxy_support import (
    Conn,
    ProxyProcess,
    Reader,
    Recorder,
    Seen,
    Writer,
    build,
    exchange,
    get,
    read_body,
    reply,
    send,
)


# --- bodies ---------------------------------------------------------------------------------------
def test_the_request_body_arrives_byte_exact(proxy: ProxyProcess, upstream: Recorder) -> None:
    body = bytes(range(256)) * 40
    send(proxy.external, "POST", "/body", [("Content-Type", "application/x-odd")], body)
    seen = upstream.only()
    assert seen.body == body
    assert seen.content_length == len(body)
    assert seen.value("content-type") == b"application/x-odd"


def test_a_chunked_request_body_arrives_whole(proxy: ProxyProcess, upstream: Recorder) -> None:
    chunked = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    raw = build("POST", "/chunked", [("Transfer-Encoding", "chunked")]) + chunked
    assert exchange(proxy.external, raw).status == 200
    seen = upstream.only()
    assert seen.body == b"hello, world"


# --- request targets ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"/a%2Cb/%41?x=%20&y=1;z&x=2", id="escapes-and-odd-query"),
        pytest.param(b"/x?%", id="lone-percent-in-query"),
        pytest.param(b"/a/./b/../c/.", id="dot-segments"),
        pytest.param(b"//double//slash/", id="double-slashes"),
        pytest.param(b"/lower%3a%7e/UPPER%3A%7E", id="escape-case"),
        pytest.param(b"/p%252e", id="double-encoded"),
        pytest.param(b"/q?a=1&a=2&b=&=c&&", id="repeated-and-empty-params"),
        pytest.param(b"/braces/{id}/|pipe|/^caret", id="unescaped-specials"),
        pytest.param(b"/~user/a+b/!$&'()*,;=:@", id="sub-delims"),
    ],
)
def test_the_request_target_is_forwarded_byte_exact(
    proxy: ProxyProcess, upstream: Recorder, target: bytes
) -> None:
    answer = exchange(proxy.external, build("GET", target))
    assert answer.status == 200, answer.body
    assert upstream.only().request_line == b"GET " + target + b" HTTP/1.1"


@pytest.mark.parametrize(
    ("target", "route"),
    [
        pytest.param(b"/x/../other/y", "other", id="dotdot-into-a-route"),
        pytest.param(b"/other/../elsewhere", "main", id="dotdot-out-of-a-route"),
        pytest.param(b"/./other//y/.", "other", id="dot-and-empty-segments"),
        pytest.param(b"/%6Fther/y", "other", id="encoded-letter"),
    ],
)
def test_paths_are_matched_normalised_but_forwarded_as_sent(
    proxy: ProxyProcess,
    upstream: Recorder,
    upstreams: tuple[Recorder, Recorder],
    target: bytes,
    route: str,
) -> None:
    main, other = upstreams
    answer = exchange(proxy.external, build("GET", target))
    assert answer.status == 200, answer.body
    chosen, unused = (other, main) if route == "other" else (main, other)
    assert chosen.only().target == target
    assert unused.seen == []


def test_redirects_are_passed_back_not_followed(proxy: ProxyProcess, upstream: Recorder) -> None:
    upstream.handler = reply(
        b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n"
    )
    answer = get(proxy.external, "/moved")
    assert answer.status == 302
    assert answer.value("location") == b"/elsewhere"
    assert [seen.target for seen in upstream.seen] == [b"/moved"]


def test_a_gzip_body_passes_through_untouched(proxy: ProxyProcess, upstream: Recorder) -> None:
    compressed = gzip.compress(b'{"items": []}' * 500, mtime=0)
    upstream.handler = reply(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        b"Vary: Accept-Encoding\r\nContent-Length: %d\r\n\r\n%s" % (len(compressed), compressed)
    )
    answer = send(proxy.external, "GET", "/zipped", [("Accept-Encoding", "gzip")])
    assert answer.body == compressed
    assert answer.value("content-encoding") == b"gzip"
    assert answer.value("content-length") == str(len(compressed)).encode()
    assert upstream.only().values("accept-encoding") == [b"gzip"]


def test_a_chunked_response_arrives_whole(proxy: ProxyProcess, upstream: Recorder) -> None:
    upstream.handler = reply(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    answer = get(proxy.external, "/chunks")
    assert answer.status == 200
    assert answer.complete
    assert answer.body == b"abcdefg"


def test_head_and_304_answers_have_no_body(proxy: ProxyProcess, upstream: Recorder) -> None:
    upstream.handler = reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    head = send(proxy.external, "HEAD", "/head")
    assert head.status == 200
    assert head.value("content-length") == b"1000"
    upstream.handler = reply(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n')
    not_modified = send(proxy.external, "GET", "/etag", [("If-None-Match", '"v1"')])
    assert not_modified.status == 304
    assert not_modified.value("etag") == b'"v1"'
    # The connection is still usable afterwards: nothing was left half-read.
    upstream.handler = reply()
    assert get(proxy.external, "/after").body == b"ok"


def test_an_early_hints_answer_is_followed_by_the_final_one(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = reply(
        b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    answer = get(proxy.external, "/hints")
    assert answer.status == 200
    assert answer.body == b"ok"


# --- connections ----------------------------------------------------------------------------------
async def echo(seen: Seen, reader: Reader, writer: Writer) -> bool:
    """Answer the request's target and body, so each answer names its request."""
    await read_body(seen, reader)
    body = seen.target + b" " + seen.body
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    return True


def test_expect_100_continue_is_answered_by_the_proxy(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    with Conn(proxy.external) as conn:
        conn.sendall(
            build("POST", "/expect", [("Expect", "100-continue"), ("Content-Length", "5")])
        )
        interim = conn.read_response()
        assert interim.status == 100
        conn.sendall(b"hello")
        assert conn.read_response().status == 200
    seen = upstream.only()
    assert seen.body == b"hello"
    assert seen.values("expect") == []


def test_pipelined_requests_are_answered_in_order(proxy: ProxyProcess, upstream: Recorder) -> None:
    upstream.handler = echo
    with Conn(proxy.external) as conn:
        conn.sendall(
            build("GET", "/p1") + build("POST", "/p2", body=b"two") + build("GET", "/p3?x=3")
        )
        answers = [conn.read_response().body for _ in range(3)]
    assert answers == [b"/p1 ", b"/p2 two", b"/p3?x=3 "]


def test_concurrent_requests_each_get_their_own_answer(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    upstream.handler = echo

    def one(index: int) -> bytes:
        return send(proxy.external, "POST", f"/c/{index}", body=b"%d" % index).body

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(160)))
    assert answers == [b"/c/%d %d" % (i, i) for i in range(160)]
