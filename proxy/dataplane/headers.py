"""Request and response header rules (pure).

Both ways: hop-by-hop fields, and every field the `Connection` header names, are removed
(RFC 9110 §7.6.1). Everything else keeps its order, duplicates and bytes. On requests the proxy
then sets its own X-Forwarded-For/Proto/Host (a client's values are kept and extended only when
the peer is a trusted hop), Via, X-Request-ID (the client's if valid) and traceparent (the
client's trace continued with a new span, or a new trace). Header names with an underscore are
dropped, as nginx does by default (`underscores_in_headers off`): behind a CGI-style upstream
`X_User` and `X-User` would collide.

Framing: Content-Length goes upstream as the number it was read as (`010` is sent as `10`), so
the upstream can never read a spelling differently from the proxy. Transfer-Encoding must be
`chunked`, once and last: chunked not final is a 400 (RFC 9112 §6.3: the length cannot be
determined), another coding before it a 501 (RFC 9112 §6.1). Host is required in HTTP/1.1 only
(RFC 9112 §3.2); without one, aiohttp sends the upstream's own host:port.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from random import getrandbits

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",  # uvicorn answers 100-continue itself; forwarded, aiohttp would stall
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Client-supplied address headers an upstream might trust; only a trusted hop may send them.
SPOOFABLE = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"forwarded"}
)
# The proxy's own request fields: a client cannot send them. A real write marked as a shadow
# copy could skip the service's side effects; a client's X-Consumer-Id (the caller as the proxy
# tells an upstream, access/policy.py, with the names other gateways use) could claim to be
# anyone. Dropped on every route.
PROXY_OWN = frozenset(
    {
        b"strangler-shadow",
        b"x-consumer-id",
        b"x-consumer-groups",
        b"x-consumer-username",
        b"x-consumer-custom-id",
        b"x-credential-identifier",
        b"x-anonymous-consumer",
        b"x-authenticated-userid",
        b"x-authenticated-groups",
        b"x-authenticated-scope",
        # A client certificate as a TLS-terminating proxy reports it (Envoy's XFCC, nginx's
        # and HAProxy's conventions): services moved from behind one may trust these.
        b"x-forwarded-client-cert",
        b"x-client-cert",
        b"x-client-verify",
        b"x-ssl-client-cert",
        b"x-ssl-client-dn",
        b"x-ssl-client-s-dn",
        b"x-ssl-client-verify",
        b"ssl-client-cert",
        b"ssl-client-verify",
        b"x-remote-user",
        b"remote-user",
    }
)
# Most names are told apart from the hop-by-hop ones by their length alone (no lower()).
_HOP_LENGTHS = frozenset(len(name) for name in HOP_BY_HOP)
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})
# A client's `Connection: content-length` must not strip the framing: the upstream would read
# the body as the next request (nginx and Envoy ignore such options too).
FRAMING = frozenset({b"host", b"content-length"})
# What prepare_request does with a field, by its lower-case name (None: forwarded as it is).
_K_HOP, _K_HOST, _K_LENGTH, _K_OWN, _K_SPOOFABLE, _K_VIA, _K_ID, _K_TRACE, _K_KEYED = range(9)
_KINDS = {
    **dict.fromkeys(HOP_BY_HOP, _K_HOP),
    b"host": _K_HOST,
    b"content-length": _K_LENGTH,
    **dict.fromkeys(PROXY_OWN, _K_OWN),
    **dict.fromkeys(SPOOFABLE, _K_SPOOFABLE),
    b"via": _K_VIA,
    b"x-request-id": _K_ID,
    b"traceparent": _K_TRACE,
    b"idempotency-key": _K_KEYED,
}
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:@/+=-]{1,128}$")
_TRACEPARENT = re.compile(rb"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_HOST = re.compile(rb"^(?:[A-Za-z0-9._~!$&'()*+,;=-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?$")
# Host values that matched _HOST lately: a proxy sees a few names, and the regex costs ~5 % of
# the header work; bounded (cleared when full), so a client sending many names only misses.
_VALID_HOSTS: set[bytes] = set()
_VALID_HOSTS_KEPT = 256
# A request without Host is valid before HTTP/1.1 (RFC 9112 §3.2).
_HOST_OPTIONAL = frozenset({"0.9", "1.0"})
# The Allow field of the proxy's 405 answers (RFC 9110 §15.5.6): the standard methods it proxies
# (extension methods pass too; CONNECT and TRACE are refused).
ALLOW = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


class BadHeaders(ValueError):
    """The request's headers cannot be forwarded; `kind` and the message become the answer."""

    def __init__(self, kind: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass(slots=True)
class RequestFacts:
    """What the data plane needs to know about a request's headers, read in one pass."""

    host: bytes = b""
    content_length: int | None = None
    chunked: bool = False
    request_id: str = ""
    trace_id: str = ""
    # The X-Forwarded-For a trusted hop sent (empty otherwise), before the proxy's own entry.
    forwarded_for: str = ""
    https: bool = False  # the client's connection is TLS (here, or at a trusted hop)
    loop: bool = False
    keyed: bool = False  # an Idempotency-Key (a keyed write may be sent again, plan.py)
    dropped: int = 0
    # What goes upstream, as bytes (names as the client spelled them): the upstream client
    # writes them as they are, with no decoding and encoding again per field.
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def connection_tokens(headers: Sequence[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Field names that `Connection` headers list, beyond the standard hop-by-hop ones."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens - HOP_BY_HOP - FRAMING)


def transfer_coding_problem(values: Sequence[bytes]) -> BadHeaders | None:
    """Why the Transfer-Encoding field values cannot be framed or forwarded (None: no field, or
    plain chunked). Empty list elements are ignored (RFC 9110 §5.6.1), as the parser does."""
    if not values:
        return None
    codings = [c.strip().lower() for value in values for c in value.split(b",") if c.strip()]
    if codings == [b"chunked"]:
        return None
    if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        return BadHeaders("bad-request", "chunked must be the one and final transfer coding")
    return BadHeaders(
        "transfer-coding-not-implemented",
        "only Transfer-Encoding: chunked is supported",
        status=501,
    )


def request_id_of(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if valid, else a new one (for answers made before or without
    prepare_request, such as refusals)."""
    for name, value in headers:
        if name == b"x-request-id" and _REQUEST_ID.match(value):
            return value.decode("ascii")
    return new_request_id()


def new_request_id() -> str:
    # Identifiers, not secrets: the PRNG is enough, and os.urandom (secrets) is a system call
    # per request on the hot path. bytes.hex() costs two thirds of format(n, "032x").
    return getrandbits(128).to_bytes(16, "big").hex()


def prepare_request(
    headers: Sequence[tuple[bytes, bytes]],
    *,
    client: str,
    scheme: str,
    trusted: bool,
    via: bytes,
    http_version: str = "1.1",
    spelled: Sequence[bytes] | None = None,
) -> RequestFacts:
    """Headers to send upstream, plus the facts the data plane checks. Raises BadHeaders.
    `spelled`: the names as the client wrote them, in the order of `headers` (the engine's
    `strangler.names`); the fields forwarded keep that case."""
    facts = RequestFacts()
    out = facts.headers
    hosts = 0
    lengths: list[bytes] = []
    codings: list[bytes] = []
    named: frozenset[bytes] | tuple[()] = ()
    for name, _ in headers:  # a plain loop: a generator's frame costs more for a few fields
        if name == b"connection":
            named = connection_tokens(headers)
            break
    forwarded_for = b""
    trace: re.Match[bytes] | None = None
    for at, (name, value) in enumerate(headers):
        kind = _KINDS.get(name)  # one lookup: most fields are none of the special ones
        if kind is None:
            if named and name in named:
                continue
            if name.find(b"_") >= 0:
                facts.dropped += 1
                continue
        elif kind == _K_HOP:
            if name == b"transfer-encoding":
                codings.append(value)
            continue
        elif kind == _K_HOST:
            hosts += 1
            facts.host = value
        elif kind == _K_LENGTH:
            lengths.append(value)
            if len(lengths) > 1:
                continue  # identical duplicates are sent once (RFC 9112 §6.3); others refused
        elif kind == _K_OWN or (named and name in named):
            continue
        elif kind == _K_SPOOFABLE:
            if not trusted:
                continue
            if name == b"x-forwarded-for":
                if not value.isascii():
                    _check_utf8(name, value)
                forwarded_for = value if not forwarded_for else forwarded_for + b", " + value
                continue
        elif kind == _K_VIA:
            if via in {part.strip().split(b" ")[-1] for part in value.lower().split(b",")}:
                facts.loop = True
        elif kind == _K_ID:
            if _REQUEST_ID.match(value):
                facts.request_id = value.decode("ascii")
            continue
        elif kind == _K_KEYED:
            facts.keyed = True
        else:  # traceparent
            trace = _TRACEPARENT.match(value)
            continue
        if not value.isascii():
            _check_utf8(name, value)
        out.append((spelled[at] if spelled else name, value))
    if codings:
        # Forwarded re-chunked, a coding like gzip would be lost (RFC 9112 §6.1).
        problem = transfer_coding_problem(codings)
        if problem is not None:
            raise problem
        facts.chunked = True
    if hosts > 1 or (not hosts and http_version not in _HOST_OPTIONAL):
        raise BadHeaders(
            "bad-host",
            "exactly one Host header is required" if hosts else "a Host header is required",
        )
    if hosts and facts.host not in _VALID_HOSTS:
        if not facts.host or not _HOST.match(facts.host):
            raise BadHeaders("bad-host", "the Host header is not a valid host[:port]")
        if len(_VALID_HOSTS) >= _VALID_HOSTS_KEPT:
            _VALID_HOSTS.clear()
        _VALID_HOSTS.add(facts.host)
    if lengths:
        length = lengths[0]
        if not length.isdigit() or (len(lengths) > 1 and len(set(lengths)) > 1):
            raise BadHeaders("bad-content-length", "Content-Length is invalid or conflicting")
        if facts.chunked:
            # Transfer-Encoding overrides Content-Length, which must then go (RFC 9112 §6.1).
            out[:] = [(n, v) for n, v in out if n.lower() != b"content-length"]
        else:
            facts.content_length = int(length)
            if length[0] == 48 and len(length) > 1:  # leading zeros ("0"): send the number
                number = b"%d" % facts.content_length
                out[:] = [(n, number if n.lower() == b"content-length" else v) for n, v in out]
    # The new request ID, trace ID and span ID from one draw (see new_request_id).
    fresh = getrandbits(320).to_bytes(40, "big").hex()
    if not facts.request_id:
        facts.request_id = fresh[:32]
    if forwarded_for:
        facts.forwarded_for = forwarded_for.decode("latin-1")
    if trace is not None and trace.group(1) != b"0" * 32 and trace.group(2) != b"0" * 16:
        facts.trace_id = trace.group(1).decode()
        flags = "-" + trace.group(3).decode()
    else:
        facts.trace_id = fresh[32:64]
        flags = "-01"
    peer = client.encode()
    out.append((b"x-forwarded-for", forwarded_for + b", " + peer if forwarded_for else peer))
    proto = (
        next((v for n, v in out if n.lower() == b"x-forwarded-proto"), None) if trusted else None
    )
    if proto is None:
        out.append((b"x-forwarded-proto", scheme.encode()))
    # A chain of hops lists one scheme each, the client's first; an empty one says nothing.
    if proto:
        facts.https = proto.split(b",", 1)[0].strip().lower() == b"https"
    else:
        facts.https = scheme == "https"
    if hosts and (not trusted or not any(n.lower() == b"x-forwarded-host" for n, _ in out)):
        out.append((b"x-forwarded-host", facts.host))
    out.append((b"via", b"1.1 " + via))
    out.append((b"x-request-id", facts.request_id.encode()))
    out.append((b"traceparent", ("00-" + facts.trace_id + "-" + fresh[64:] + flags).encode()))
    return facts


_FIELD = b": ".join  # (name, value) → b"name: value"


def field_lines(fields: Sequence[tuple[bytes, bytes]]) -> bytes:
    """`fields` as a head's field lines, each `name: value` and CRLF (b"" for none): joined in
    C, with no Python loop over the fields (the upstream client's request heads, the engine's
    answers whose framing is known)."""
    return b"\r\n".join(map(_FIELD, fields)) + b"\r\n" if fields else b""


def _check_utf8(name: bytes, value: bytes) -> None:
    """A field value beyond ASCII must be UTF-8 (what the aiohttp client writes: a latin-1 byte
    would change on the wire)."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        raise BadHeaders(
            "bad-header", f"the {name.decode('ascii', 'replace')} header is not UTF-8"
        ) from None


# What uvicorn refuses to write (its own checks run after the response counts as started).
_BAD_NAME = re.compile(rb'[\x00-\x1f\x7f()<>@,;:\[\]={} \t\\"]')
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def headers_sendable(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether uvicorn will write these response headers (one regex pass over each kind)."""
    names = b"".join(n for n, _ in headers)
    values = b"\x09".join(v for _, v in headers)
    return not _BAD_NAME.search(names) and not _BAD_VALUE.search(values)


# Fields an answer's trailer section never passes on (RFC 9110 §6.5.1 lists what a trailer
# must not carry: framing, routing, request modifiers, authentication, response control and
# how to process the content): a client that merges trailers into the header fields, as some
# do, must not be told a cookie, a redirect or a length there. The rest pass, in the
# upstream's case and order (HAProxy passes trailers too; nginx drops them).
NEVER_TRAILERS = HOP_BY_HOP | {
    b"age",
    b"authorization",
    b"cache-control",
    b"content-encoding",
    b"content-length",
    b"content-range",
    b"content-type",
    b"cookie",
    b"date",
    b"expires",
    b"host",
    b"location",
    b"max-forwards",
    b"pragma",
    b"range",
    b"retry-after",
    b"set-cookie",
    b"vary",
    b"www-authenticate",
}


def prepare_trailers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An upstream answer's trailer fields for the client: those a trailer may carry
    (NEVER_TRAILERS, and no conditional `If-*`), in the upstream's case."""
    out = []
    for name, value in raw:
        lower = name.lower()
        if lower in NEVER_TRAILERS or lower.startswith(b"if-"):
            continue
        out.append((name, value))
    return out


def prepare_response(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream response headers for the client: names in the upstream's case (the engine
    writes them so; uvicorn lower-cases them), hop-by-hop removed."""
    named: frozenset[bytes] = frozenset()
    out = []
    for name, value in raw:
        if len(name) in _HOP_LENGTHS and (lower := name.lower()) in HOP_BY_HOP:
            # `keep-alive` and `close`, nearly every upstream's, name nothing to remove
            if lower == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                named |= connection_tokens([(lower, value)])
            continue
        out.append((name, value))
    if named:  # rare: `Connection: keep-alive` names nothing beyond the standard set
        out = [(n, v) for n, v in out if n.lower() not in named]
    return out
