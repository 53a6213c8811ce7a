"""Which upstream a route sends a request to (pure): its `to`, or a bucket of its split.

Sticky splits hash a key (a header, a cookie or the client address) into one of 10,000 fixed
buckets with CRC-32, so one user stays on one upstream across requests, replicas and restarts;
without a key (or with no sticky setting) each request draws a bucket at random.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

from proxy.table.compile import BUCKETS, CompiledRoute, Split, Upstream

Headers = Sequence[tuple[bytes, bytes]]


def cookie_value(headers: Headers, name: bytes) -> bytes | None:
    for header, value in headers:
        if header != b"cookie":
            continue
        for pair in value.split(b";"):
            key, sep, found = pair.strip().partition(b"=")
            if sep and key == name:
                return found.strip(b'"')
    return None


def sticky_key(split: Split, headers: Headers, client: str | None) -> bytes | None:
    if split.sticky is None:
        return None
    kind, name = split.sticky
    if kind == "client-ip":
        return client.encode() if client else None
    if kind == "cookie":
        return cookie_value(headers, name)
    for header, value in headers:
        if header == name:
            return value
    return None


def bucket_of(key: bytes | None) -> int:
    if key is None:
        return random.randrange(BUCKETS)  # noqa: S311 - load spreading, not security
    return zlib.crc32(key) % BUCKETS


def choose(route: CompiledRoute, headers: Headers, client: str | None) -> Upstream:
    if route.upstream is not None:
        return route.upstream
    split = route.split
    assert split is not None  # the model guarantees exactly one action
    return split.pick(bucket_of(sticky_key(split, headers, client)))
