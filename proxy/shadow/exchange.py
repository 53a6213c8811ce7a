"""One primary request and its answer, as the data plane hands it off the hot path (to the
shadow dispatcher and to a recording). Plain data: bytes as they crossed the proxy."""

from __future__ import annotations

from dataclasses import dataclass

Fields = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Exchange:
    route: str
    upstream: str  # the upstream that answered (after any fallback)
    method: str
    target: bytes  # raw path and query, exactly as the client sent them
    headers: Fields  # the request headers as forwarded (lower-case names)
    body: bytes
    status: int
    response_headers: Fields  # the answer's headers as the client got them (lower-case names)
    response_body: bytes
    truncated: bool  # the answer's body was longer than the capture limit and is cut
    at: float  # wall-clock time the answer ended
