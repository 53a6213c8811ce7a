"""Which upstream a route sends a request to (pure): an override, its `to`, or its split.

Keys. A route with `sticky` (header:NAME, cookie:NAME or client-ip) or a split is keyed: the
request's key is the declared one or, when it has none, the proxy's own cookie (`strangler_key`);
a request with neither gets a new random key, and the answer sets that cookie whichever arm
answers it (a cookie set by one arm only drifts users between arms: Flagger issue #1532).

Splits. A keyed request goes to the upstream with the lowest `-ln(u) / weight`, u a uniform
draw from BLAKE2b(salt, key, upstream name): weighted rendezvous hashing (Thaler and Ravishankar;
Schindelhauer and Schomaker's weighted form). Each upstream's share is its weight, and the
choice is monotone: raising an upstream's weight only moves users *to* it, lowering one only
moves users *off* it, on splits of any width (fixed bucket ranges in name order move users back
and forth on a three-way split). One user's score per upstream never depends on the other
upstreams, so adding an upstream at weight 0 moves nobody. The route's `salt` changes every
score, so the canary users of one route are not always those of every route.

Overrides (ingress-nginx's canary-by-header, then canary-by-cookie): the value `always` sends
the request to the override's `always` arm, `never` to its `never` arm, before any weight.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Sequence

from proxy.table.compile import CompiledRoute, OverridePolicy, Split, Upstream

Headers = Sequence[tuple[bytes, bytes]]
KEY_COOKIE = b"strangler_key"
KEY_COOKIE_AGE = 365 * 24 * 3600
_TWO_64 = float(1 << 64)


def cookie_value(headers: Headers, name: bytes) -> bytes | None:
    for header, value in headers:
        if header != b"cookie":
            continue
        for pair in value.split(b";"):
            key, sep, found = pair.strip().partition(b"=")
            if sep and key == name:
                return found.strip(b'"')
    return None


def header_value(headers: Headers, name: bytes) -> bytes | None:
    for header, value in headers:
        if header == name:
            return value
    return None


def sticky_key(route: CompiledRoute, headers: Headers, client: str | None) -> bytes | None:
    """The request's key on a keyed route: the declared one, else the proxy's cookie (an
    empty value is no key)."""
    sticky = route.sticky
    if sticky is not None:
        kind, name = sticky
        if kind == "client-ip":
            found = client.encode() if client else None
        elif kind == "cookie":
            found = cookie_value(headers, name)
        else:
            found = header_value(headers, name)
        if found:
            return found
    return cookie_value(headers, KEY_COOKIE) or None


def new_key() -> bytes:
    return secrets.token_urlsafe(16).encode()


def key_cookie(key: bytes, secure: bool) -> bytes:
    """The Set-Cookie value that keeps a newly keyed client on its arm."""
    flags = b"; Secure" if secure else b""
    return b"%s=%s; Path=/; Max-Age=%d; HttpOnly; SameSite=Lax%s" % (
        KEY_COOKIE,
        key,
        KEY_COOKIE_AGE,
        flags,
    )


def overridden(override: OverridePolicy, headers: Headers) -> Upstream | None:
    """The arm an override forces (header first, then cookie: a header with another value
    defers to the cookie, as in ingress-nginx), or None."""
    if override.header is not None:
        forced = _forced(override, header_value(headers, override.header))
        if forced is not None:
            return forced
    if override.cookie is not None:
        return _forced(override, cookie_value(headers, override.cookie))
    return None


def _forced(override: OverridePolicy, value: bytes | None) -> Upstream | None:
    """The arm `value` forces; any other value (or none) defers to the next source."""
    if value is None:
        return None
    value = value.strip().lower()
    if value == b"always":
        return override.always
    if value == b"never":
        return override.never
    return None


def _score(material: bytes, upstream: Upstream, weight: int) -> float:
    digest = hashlib.blake2b(material, digest_size=8, key=upstream.name.encode()).digest()
    draw = (int.from_bytes(digest, "big") + 0.5) / _TWO_64  # in (0, 1)
    return -math.log(draw) / weight


def weighted(split: Split, key: bytes, salt: bytes = b"") -> Upstream:
    """The upstream a key goes to on a split (weighted rendezvous: see the module header)."""
    material = salt + b"\x00" + key if salt else key
    best, best_score = split.upstreams[0], math.inf
    for upstream, weight in zip(split.upstreams, split.weights, strict=True):
        if weight and (score := _score(material, upstream, weight)) < best_score:
            best, best_score = upstream, score
    return best


def choose(route: CompiledRoute, headers: Headers, client: str | None) -> Upstream:
    """The upstream by the route's override and weights alone (no pins); a keyless request on
    a split gets a random key, as a new client does."""
    if route.override is not None and (forced := overridden(route.override, headers)):
        return forced
    if route.upstream is not None:
        return route.upstream
    split = route.split
    assert split is not None  # the model guarantees exactly one action
    return weighted(split, sticky_key(route, headers, client) or new_key(), route.salt)
