"""Request and response header rules: what goes upstream, what comes back."""

from __future__ import annotations

import re

import pytest

from proxy.dataplane.headers import (
    BadHeaders,
    RequestFacts,
    prepare_request,
    prepare_response,
    prepare_trailers,
    transfer_coding_problem,
)

HOST = (b"host", b"shop.example")
PEER = "203.0.113.7"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
HEX32 = re.compile(r"[0-9a-f]{32}")


def prepare(
    *headers: tuple[bytes, bytes],
    trusted: bool = False,
    scheme: str = "https",
    http_version: str = "1.1",
) -> RequestFacts:
    return prepare_request(
        headers,
        client=PEER,
        scheme=scheme,
        trusted=trusted,
        via=b"strangler",
        http_version=http_version,
    )


def values(facts: RequestFacts, name: str) -> list[str]:
    return [value.decode() for header, value in facts.headers if header.decode() == name]


def names(facts: RequestFacts) -> list[str]:
    return [header.decode() for header, _ in facts.headers]


def decoded(facts: RequestFacts) -> list[tuple[str, str]]:
    """The fields sent upstream (bytes, as written), decoded for reading."""
    return [(name.decode(), value.decode()) for name, value in facts.headers]


@pytest.mark.parametrize(
    "name",
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"proxy-authenticate",
        b"proxy-authorization",
    ],
)
def test_hop_by_hop_fields_are_not_forwarded(name: bytes) -> None:
    value = b"chunked" if name == b"transfer-encoding" else b"keep-alive"
    facts = prepare(HOST, (name, value), (b"x-kept", b"1"))
    assert name.decode() not in names(facts)
    assert values(facts, "x-kept") == ["1"]


@pytest.mark.parametrize(
    "codings",
    [[b"gzip, chunked"], [b"gzip", b"chunked"], [b"deflate,chunked"], [b"x-custom, chunked"]],
)
def test_a_coding_before_chunked_is_not_implemented(codings: list[bytes]) -> None:
    with pytest.raises(BadHeaders) as refused:
        prepare(HOST, *[(b"transfer-encoding", coding) for coding in codings])
    assert (refused.value.status, refused.value.kind) == (501, "transfer-coding-not-implemented")


@pytest.mark.parametrize(
    "codings",
    [
        pytest.param([b"gzip"], id="gzip"),
        pytest.param([b"identity"], id="identity"),
        pytest.param([b"chunked, gzip"], id="chunked-not-final"),
        pytest.param([b"chunked", b"gzip"], id="chunked-not-final-fields"),
        pytest.param([b"chunked, chunked"], id="chunked-twice"),
        pytest.param([b"chunked", b"chunked"], id="chunked-twice-fields"),
        pytest.param([b""], id="empty"),
        pytest.param([b" , "], id="only-commas"),
    ],
)
def test_chunked_not_once_and_final_is_400(codings: list[bytes]) -> None:
    """RFC 9112 §6.3: without chunked as the final coding the body length is unknown."""
    with pytest.raises(BadHeaders) as refused:
        prepare(HOST, *[(b"transfer-encoding", coding) for coding in codings])
    assert (refused.value.status, refused.value.kind) == (400, "bad-request")


@pytest.mark.parametrize(
    "codings",
    [[], [b"chunked"], [b"Chunked"], [b" chunked "], [b", chunked"], [b"chunked,"]],
)
def test_plain_chunked_is_accepted(codings: list[bytes]) -> None:
    """Empty list elements are ignored (RFC 9110 §5.6.1)."""
    assert transfer_coding_problem(codings) is None


def test_every_field_named_in_connection_is_not_forwarded() -> None:
    facts = prepare(
        HOST,
        (b"connection", b"keep-alive, X-Secret"),
        (b"x-secret", b"1"),
        (b"connection", b" x-other ,,"),
        (b"x-other", b"2"),
        (b"x-kept", b"3"),
    )
    assert names(facts)[:2] == ["host", "x-kept"]
    assert not {"connection", "x-secret", "x-other"} & set(names(facts))


def test_connection_cannot_remove_content_length() -> None:
    facts = prepare(HOST, (b"connection", b"content-length"), (b"content-length", b"5"))
    assert facts.content_length == 5


def test_transfer_encoding_means_chunked() -> None:
    facts = prepare(HOST, (b"transfer-encoding", b"chunked"))
    assert facts.chunked is True
    assert "transfer-encoding" not in names(facts)
    assert prepare(HOST).chunked is False


def test_content_length_is_not_forwarded_with_transfer_encoding() -> None:
    facts = prepare(HOST, (b"transfer-encoding", b"chunked"), (b"content-length", b"3"))
    assert "content-length" not in names(facts)


def test_names_with_underscores_are_dropped_and_counted() -> None:
    facts = prepare(HOST, (b"x_user", b"admin"), (b"x-user", b"alice"), (b"x_forwarded_for", b"1"))
    assert facts.dropped == 2
    assert values(facts, "x-user") == ["alice"]
    assert "x_user" not in names(facts)
    assert "x_forwarded_for" not in names(facts)


@pytest.mark.parametrize(
    "host",
    [b"shop.example", b"Shop.Example", b"shop.example:8080", b"127.0.0.1:8000", b"[::1]:8080"],
)
def test_one_valid_host(host: bytes) -> None:
    facts = prepare((b"host", host))
    assert facts.host == host
    assert values(facts, "host") == [host.decode()]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param([], "a Host header is required", id="missing"),
        pytest.param([HOST, HOST], "exactly one Host", id="twice"),
        pytest.param([HOST, (b"host", b"evil.example")], "exactly one Host", id="two-hosts"),
        pytest.param([(b"host", b"")], "not a valid host", id="empty"),
        pytest.param([(b"host", b"shop example")], "not a valid host", id="space"),
        pytest.param([(b"host", b"shop.example/x")], "not a valid host", id="slash"),
        pytest.param([(b"host", b"user@shop.example")], "not a valid host", id="at-sign"),
        pytest.param([(b"host", b"shop.example:80:80")], "not a valid host", id="two-ports"),
        pytest.param([(b"host", b"caf\xc3\xa9.example")], "not a valid host", id="non-ascii"),
    ],
)
def test_bad_host(headers: list[tuple[bytes, bytes]], reason: str) -> None:
    with pytest.raises(BadHeaders, match=reason) as caught:
        prepare(*headers)
    assert caught.value.kind == "bad-host"


def test_content_length_is_read() -> None:
    facts = prepare(HOST, (b"content-length", b"42"))
    assert facts.content_length == 42
    assert values(facts, "content-length") == ["42"]
    assert prepare(HOST).content_length is None


@pytest.mark.parametrize(
    ("length", "number"), [(b"010", 10), (b"0", 0), (b"000", 0), (b"0042", 42), (b"7", 7)]
)
def test_content_length_is_forwarded_as_the_number_read(length: bytes, number: int) -> None:
    facts = prepare(HOST, (b"x-before", b"1"), (b"content-length", length), (b"x-after", b"2"))
    assert facts.content_length == number
    assert decoded(facts)[:4] == [
        ("host", "shop.example"),
        ("x-before", "1"),
        ("content-length", str(number)),  # in its place
        ("x-after", "2"),
    ]


def test_an_http10_request_needs_no_host() -> None:
    facts = prepare((b"accept", b"*/*"), http_version="1.0")
    assert facts.host == b""
    assert "host" not in names(facts)
    assert values(facts, "x-forwarded-host") == []  # nothing to forward; the upstream's own Host


def test_an_http10_request_without_host_keeps_a_trusted_hops_forwarded_host() -> None:
    facts = prepare((b"x-forwarded-host", b"shop.example"), http_version="1.0", trusted=True)
    assert values(facts, "x-forwarded-host") == ["shop.example"]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param([HOST, HOST], "exactly one Host", id="twice"),
        pytest.param([(b"host", b"")], "not a valid host", id="empty"),
        pytest.param([(b"host", b"a b")], "not a valid host", id="space"),
    ],
)
def test_an_http10_host_that_is_sent_is_checked(
    headers: list[tuple[bytes, bytes]], reason: str
) -> None:
    with pytest.raises(BadHeaders, match=reason):
        prepare(*headers, http_version="1.0")


def test_an_http10_request_with_host_forwards_it() -> None:
    facts = prepare(HOST, http_version="1.0")
    assert facts.host == b"shop.example"
    assert values(facts, "x-forwarded-host") == ["shop.example"]


@pytest.mark.parametrize(
    "lengths",
    [
        pytest.param([b"5", b"6"], id="conflicting"),
        pytest.param([b"abc"], id="word"),
        pytest.param([b"-1"], id="negative"),
        pytest.param([b"+5"], id="plus-sign"),
        pytest.param([b"5, 5"], id="list"),
        pytest.param([b""], id="empty"),
        pytest.param([b"0x10"], id="hex"),
        pytest.param([b"\xd9\xa3"], id="arabic-digit"),
    ],
)
def test_bad_content_length_is_refused(lengths: list[bytes]) -> None:
    with pytest.raises(BadHeaders) as caught:
        prepare(HOST, *[(b"content-length", length) for length in lengths])
    assert caught.value.kind == "bad-content-length"


def test_identical_content_lengths_are_forwarded_once() -> None:
    facts = prepare(HOST, (b"content-length", b"5"), (b"content-length", b"5"))
    assert facts.content_length == 5
    assert values(facts, "content-length") == ["5"]


def test_forwarded_headers_of_an_untrusted_peer_are_replaced() -> None:
    facts = prepare(
        HOST,
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"admin.internal"),
        (b"x-real-ip", b"10.0.0.1"),
        (b"forwarded", b"for=10.0.0.1"),
    )
    assert values(facts, "x-forwarded-for") == [PEER]
    assert values(facts, "x-forwarded-proto") == ["https"]
    assert values(facts, "x-forwarded-host") == ["shop.example"]
    assert values(facts, "x-real-ip") == []
    assert values(facts, "forwarded") == []


def test_forwarded_headers_of_a_trusted_hop_are_extended() -> None:
    facts = prepare(
        HOST,
        (b"x-forwarded-for", b"198.51.100.1"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-for", b"10.0.0.1, 10.0.0.2"),
        (b"x-forwarded-host", b"shop.example.com"),
        (b"x-real-ip", b"198.51.100.1"),
        (b"forwarded", b"for=198.51.100.1"),
        trusted=True,
    )
    assert values(facts, "x-forwarded-for") == [f"198.51.100.1, 10.0.0.1, 10.0.0.2, {PEER}"]
    assert values(facts, "x-forwarded-proto") == ["http"]
    assert values(facts, "x-forwarded-host") == ["shop.example.com"]
    assert values(facts, "x-real-ip") == ["198.51.100.1"]
    assert values(facts, "forwarded") == ["for=198.51.100.1"]


def test_a_trusted_hop_without_forwarded_headers_gets_ours() -> None:
    facts = prepare(HOST, trusted=True, scheme="http")
    assert values(facts, "x-forwarded-for") == [PEER]
    assert values(facts, "x-forwarded-proto") == ["http"]
    assert values(facts, "x-forwarded-host") == ["shop.example"]


def test_via_is_added_after_the_clients() -> None:
    facts = prepare(HOST, (b"via", b"1.1 cdn-edge"))
    assert values(facts, "via") == ["1.1 cdn-edge", "1.1 strangler"]
    assert facts.loop is False


@pytest.mark.parametrize(
    ("via", "loop"),
    [
        pytest.param([b"1.1 strangler"], True, id="ours"),
        pytest.param([b"1.1 STRANGLER"], True, id="ours-upper-case"),
        pytest.param([b"HTTP/1.1 strangler"], True, id="with-protocol-name"),
        pytest.param([b"1.0 fred, 1.1 Strangler"], True, id="last-of-a-list"),
        pytest.param([b"1.0 fred,1.1 strangler ,1.1 cdn"], True, id="middle-no-spaces"),
        pytest.param([b"1.1 cdn", b"1.1 strangler"], True, id="second-line"),
        pytest.param([b"1.1 strangler-2"], False, id="longer-name"),
        pytest.param([b"1.1 my-strangler"], False, id="name-suffix"),
        pytest.param([b"1.1 cdn, 1.1 edge"], False, id="others"),
        pytest.param([], False, id="none"),
    ],
)
def test_loop_detection(via: list[bytes], loop: bool) -> None:
    assert prepare(HOST, *[(b"via", v) for v in via]).loop is loop


@pytest.mark.parametrize(
    "request_id",
    [b"abc-123", b"01J9Z8-req", b"a.b:c@d/e+f=g_h", b"x" * 128],
    ids=["dashes", "ulid-like", "punctuation", "128-chars"],
)
def test_a_valid_request_id_is_kept(request_id: bytes) -> None:
    facts = prepare(HOST, (b"x-request-id", request_id))
    assert facts.request_id == request_id.decode()
    assert values(facts, "x-request-id") == [request_id.decode()]


@pytest.mark.parametrize(
    "request_id",
    [b"x" * 129, b"has space", b"semi;colon", b"", b"caf\xc3\xa9", b"a\x00b"],
    ids=["129-chars", "space", "semicolon", "empty", "non-ascii", "nul"],
)
def test_an_invalid_request_id_is_replaced(request_id: bytes) -> None:
    facts = prepare(HOST, (b"x-request-id", request_id))
    assert HEX32.fullmatch(facts.request_id)
    assert values(facts, "x-request-id") == [facts.request_id]


def test_a_missing_request_id_is_generated_fresh_each_time() -> None:
    first, second = prepare(HOST), prepare(HOST)
    assert HEX32.fullmatch(first.request_id)
    assert HEX32.fullmatch(second.request_id)
    assert first.request_id != second.request_id
    assert values(first, "x-request-id") == [first.request_id]


def traceparent(facts: RequestFacts) -> tuple[str, str, str]:
    (value,) = values(facts, "traceparent")
    found = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})", value)
    assert found is not None, value
    return found.group(1), found.group(2), found.group(3)


@pytest.mark.parametrize("flags", ["01", "00"], ids=["sampled", "not-sampled"])
def test_a_trace_is_continued_with_a_new_span(flags: str) -> None:
    facts = prepare(HOST, (b"traceparent", f"00-{TRACE_ID}-{SPAN_ID}-{flags}".encode()))
    trace, span, kept = traceparent(facts)
    assert (facts.trace_id, trace, kept) == (TRACE_ID, TRACE_ID, flags)
    assert span != SPAN_ID


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(f"00-{TRACE_ID.upper()}-{SPAN_ID}-01", id="upper-case"),
        pytest.param(f"00-{'0' * 32}-{SPAN_ID}-01", id="zero-trace-id"),
        pytest.param(f"ff-{TRACE_ID}-{SPAN_ID}-01", id="version-ff"),
        pytest.param(f"00-{TRACE_ID}-{SPAN_ID}", id="no-flags"),
        pytest.param(f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01", id="short-trace-id"),
        pytest.param("garbage", id="garbage"),
        pytest.param(f"00-{TRACE_ID}-{'0' * 16}-01", id="zero-parent-id"),
    ],
)
def test_an_invalid_traceparent_starts_a_new_trace(value: str) -> None:
    facts = prepare(HOST, (b"traceparent", value.encode()))
    trace, _, flags = traceparent(facts)
    assert trace == facts.trace_id != TRACE_ID
    assert (flags, HEX32.fullmatch(trace) is not None) == ("01", True)


def test_no_traceparent_starts_a_new_trace_each_time() -> None:
    first, second = prepare(HOST), prepare(HOST)
    assert traceparent(first)[0] == first.trace_id
    assert first.trace_id != second.trace_id


def test_a_value_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(BadHeaders, match="x-name header is not UTF-8") as caught:
        prepare(HOST, (b"x-name", b"caf\xe9"))
    assert caught.value.kind == "bad-header"


def test_a_trusted_forwarded_for_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(BadHeaders, match="x-forwarded-for header is not UTF-8"):
        prepare(HOST, (b"x-forwarded-for", b"10.0.0.1\xff"), trusted=True)


def test_a_utf8_value_is_kept() -> None:
    assert values(prepare(HOST, (b"x-name", "café".encode())), "x-name") == ["café"]


def test_other_headers_keep_their_order_and_duplicates() -> None:
    facts = prepare(
        (b"accept", b"application/json"),
        (b"cookie", b"a=1"),
        HOST,
        (b"x-dup", b"first"),
        (b"cookie", b"b=2"),
        (b"x-dup", b"second"),
        (b"authorization", b"Bearer t"),
        (b"x-request-id", b"req-1"),
        (b"traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01".encode()),
    )
    assert decoded(facts)[:7] == [
        ("accept", "application/json"),
        ("cookie", "a=1"),
        ("host", "shop.example"),
        ("x-dup", "first"),
        ("cookie", "b=2"),
        ("x-dup", "second"),
        ("authorization", "Bearer t"),
    ]
    assert names(facts)[7:] == [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "via",
        "x-request-id",
        "traceparent",
    ]


def test_response_names_keep_the_upstreams_case_and_values_are_untouched() -> None:
    assert prepare_response([(b"Content-Type", b"Text/HTML"), (b"ETag", b'W/"1"')]) == [
        (b"Content-Type", b"Text/HTML"),
        (b"ETag", b'W/"1"'),
    ]


@pytest.mark.parametrize(
    "name",
    [
        b"Connection",
        b"Keep-Alive",
        b"Proxy-Connection",
        b"Transfer-Encoding",
        b"TE",
        b"Trailer",
        b"Upgrade",
    ],
)
def test_hop_by_hop_response_fields_are_removed(name: bytes) -> None:
    assert prepare_response([(name, b"close"), (b"X-Kept", b"1")]) == [(b"X-Kept", b"1")]


def test_response_fields_named_in_connection_are_removed() -> None:
    raw = [(b"X-Internal", b"1"), (b"Connection", b"close, X-Internal"), (b"X-Kept", b"2")]
    assert prepare_response(raw) == [(b"X-Kept", b"2")]


def test_response_fields_named_in_every_connection_header_are_removed() -> None:
    raw = [(b"Connection", b"X-A"), (b"Connection", b"X-B"), (b"X-A", b"1"), (b"X-B", b"2")]
    assert prepare_response(raw) == []


def test_response_keeps_order_and_every_set_cookie() -> None:
    raw = [
        (b"Set-Cookie", b"a=1; Path=/"),
        (b"Content-Type", b"application/json"),
        (b"Set-Cookie", b"b=2; HttpOnly"),
        (b"set-cookie", b"a=3; Path=/api"),
    ]
    assert prepare_response(raw) == raw


@pytest.mark.parametrize(
    ("proto", "trusted", "https"),
    [
        pytest.param(b"https", True, True, id="tls-at-a-trusted-hop"),
        pytest.param(b"https, http", True, True, id="first-of-a-chain"),
        pytest.param(b"http", True, False, id="plain-at-a-trusted-hop"),
        pytest.param(b"https", False, False, id="claimed-by-an-untrusted-peer"),
    ],
)
def test_whether_the_client_uses_tls_follows_only_a_trusted_hop(
    proto: bytes, trusted: bool, https: bool
) -> None:
    """The key cookie is Secure when the client's connection is TLS, here or at a trusted hop
    (the first scheme of a chain is the client's); an untrusted peer cannot claim it."""
    facts = prepare(HOST, (b"x-forwarded-proto", proto), trusted=trusted, scheme="http")
    assert facts.https is https


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_an_empty_forwarded_proto_leaves_the_connections_own_scheme(scheme: str) -> None:
    facts = prepare(HOST, (b"x-forwarded-proto", b""), trusted=True, scheme=scheme)
    assert facts.https is (scheme == "https")


def test_a_client_cannot_send_the_shadow_marker() -> None:
    facts = prepare(HOST, (b"strangler-shadow", b"1"))
    assert values(facts, "strangler-shadow") == []


def test_trailer_fields_keep_the_upstreams_case_order_and_duplicates() -> None:
    raw = [(b"X-Checksum", b"sha256=1"), (b"Server-Timing", b"db;dur=5"), (b"x-checksum", b"2")]
    assert prepare_trailers(raw) == raw


@pytest.mark.parametrize(
    "name",
    [
        b"Content-Length",
        b"Transfer-Encoding",
        b"Trailer",
        b"Connection",
        b"Host",
        b"Set-Cookie",
        b"Cookie",
        b"Authorization",
        b"WWW-Authenticate",
        b"Proxy-Authenticate",
        b"Content-Type",
        b"Content-Encoding",
        b"Content-Range",
        b"Location",
        b"Cache-Control",
        b"Expires",
        b"Vary",
        b"Retry-After",
        b"If-None-Match",
        b"If-Modified-Since",
    ],
)
def test_fields_no_trailer_may_carry_are_dropped_from_trailers(name: bytes) -> None:
    """RFC 9110 §6.5.1: framing, routing, credentials, response control, content processing
    and conditions are never trailers (a client merging trailers into its headers would take
    them as the answer's)."""
    assert prepare_trailers([(name, b"x"), (b"X-Kept", b"1")]) == [(b"X-Kept", b"1")]
