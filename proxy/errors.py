"""The proxy's one exception tree; each error carries its HTTP status and a stable problem type
(RFC 9457), rendered by `problem_response`. aiohttp's errors are translated in one place,
dataplane/forward.py.

    ProxyError(status, kind, detail)
    ├── 400 bad-request, bad-target, bad-host, bad-header, bad-content-length (also malformed
    │       chunked bodies and a Transfer-Encoding not ending in chunked, from the protocol)
    ├── 404 not-found                   a static route's missing file, dotfile or directory
    ├── 405 method-not-allowed          CONNECT, TRACE; a write to a static route (with Allow)
    ├── 412 precondition-failed         a static file's If-Match / If-Unmodified-Since
    ├── 408 request-timeout             body idle too long
    ├── 413 body-too-large              over the route's max_body (before connecting if known)
    ├── 414 uri-too-long / 431 headers-too-large (raised in the protocol, before the app)
    ├── 503 overloaded                  concurrency limit reached; Retry-After
    ├── 503 upstream-ejected            the upstream's circuit is open (outlier ejection)
    ├── 503 upstream-saturated          no free slot at the upstream in time; Retry-After
    ├── 501 transfer-coding-not-implemented   a coding other than chunked
    ├── 508 loop-detected               the request already passed this proxy (Via)
    ├── 502 upstream-unreachable, upstream-disconnected, bad-upstream-response
    └── 504 upstream-timeout, upstream-connect-timeout
    ResponseAborted: a response that started cannot be finished; the client connection is
    closed so a truncated answer can never look complete.
    ├── UpstreamAborted: the upstream failed mid-response
    └── ClientTooSlow: the client read nothing for the send timeout
"""

from __future__ import annotations

import json
from email.utils import formatdate

PROBLEM_TYPE = "urn:strangler:problem:"
TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    412: "Precondition failed",
    413: "Content too large",
    414: "URI too long",
    416: "Range not satisfiable",
    501: "Not implemented",
    429: "Too many requests",
    431: "Request header fields too large",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
    508: "Loop detected",
}


class ProxyError(Exception):
    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        close: bool = False,
        retry_after: int = 0,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.close = close
        self.retry_after = retry_after
        self.headers = headers or []


class ResponseAborted(Exception):
    """A response that started cannot be finished; raised to uvicorn so it closes the
    connection (a truncated body must never look complete)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class UpstreamAborted(ResponseAborted):
    """The upstream failed mid-response."""


class ClientTooSlow(ResponseAborted):
    """The client read nothing for the send timeout: its upstream connection is freed."""


def problem_body(status: int, kind: str, detail: str, request_id: str = "") -> bytes:
    body: dict[str, object] = {
        "type": PROBLEM_TYPE + kind,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if request_id:
        body["request_id"] = request_id
    return json.dumps(body).encode()


def problem_headers(
    body: bytes, *, request_id: str = "", close: bool = False, retry_after: int = 0
) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"date", formatdate(usegmt=True).encode()),
        (b"cache-control", b"no-store"),
    ]
    if request_id:
        headers.append((b"x-request-id", request_id.encode()))
    if retry_after:
        headers.append((b"retry-after", str(retry_after).encode()))
    if close:
        headers.append((b"connection", b"close"))
    return headers
