"""The request path's pure middle: what to do with a request (`resolve`), and what to do after
a try failed (`next_step`). No I/O; tested without sockets.

resolve: target → readings → route (or the default) → listener exposure → the request's key
→ upstream (an override, else a live read-your-writes pin, else its `to` or its split; see
split.py and pins.py) → limits, safety nets and whether a copy is shadowed → a Plan.

Which route, when a path can be read several ways (normalize.py; the route its canonical key
reaches is the answer for every plain path):
- a strict reading (escaped slashes kept, decoded twice) that reaches another route: 400;
- then every route a reading reaches (the key's, the lenient and case-folded readings') that is
  protected on this listener (not exposed on it, or behind access rules; "no route" too when
  the table has a default `access`) is a candidate: none → the key's route; one protection → its
  route (the key's first), so the request is refused as that route would refuse it (404 on a
  listener it is not exposed on, its access rules otherwise); routes protected differently →
  400, no one protection covers the request.
A request is never let through by a reading less protected than another: the bytes forwarded are
the client's, and the backend may read them either way.

next_step, after a try failed before any response byte reached the client:
- **stale**: a request sent on a *reused* connection that closed before any response byte (the
  keep-alive race: the upstream closed an idle connection as we wrote) is re-sent once on a new
  connection, if it may be repeated. Always on; no budget spent (it is the pool's fault).
- **retry**: the route's retry policy, on the same upstream, if it may be repeated.
- **fallback**: the route's fallback upstream, once, if it may be repeated there.
- otherwise give up: the failure becomes the answer.

May a request be repeated? A request that never reached the upstream (refused, connect timeout,
no free slot, ejected) may, whatever its method: nothing was sent. Else its body must be buffered,
or streamed but not yet started (an upload whose `Expect: 100-continue` the upstream never
answered: none of it has left the client; nginx's rule without request buffering, a request
goes to the next server only until its body has started being sent), and its method idempotent
(RFC 9110 §9.2.2: GET, HEAD, OPTIONS, PUT, DELETE); a POST or PATCH only with an
Idempotency-Key, re-sent to the same upstream, and that upstream declares `idempotent_writes`
(another upstream would not know the key).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.dataplane.match import find_folded_route, find_route, folded
from proxy.dataplane.normalize import AmbiguousPath, fold, plain_key, read_path
from proxy.dataplane.pins import Pins, digest
from proxy.dataplane.split import (
    KEY_COOKIE,
    cookie_value,
    key_cookie,
    new_key,
    overridden,
    sticky_key,
    weighted,
)
from proxy.errors import ProxyError
from proxy.table.compile import (
    STATIC,
    AccessPolicy,
    CompiledRoute,
    Failures,
    FallbackPolicy,
    RatePolicy,
    RetryPolicy,
    ShadowPolicy,
    Snapshot,
    Upstream,
)

Headers = Sequence[tuple[bytes, bytes]]
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})  # RFC 9110 §9.2.1; anything else is a write
# How the upstream was chosen (the access log's "choice").
BY_DEFAULT, BY_TO, BY_SPLIT, BY_OVERRIDE, BY_PIN = "default", "to", "split", "override", "pin"
BY_STATIC = "static"  # a static route: the proxy serves the file itself
# Failures that happen before anything was sent.
UNREACHED = frozenset({"connect-failure", "ejected", "saturated"})
STALE, RETRY, FALLBACK, GIVE_UP = "stale", "retry", "fallback", ""


@dataclass(slots=True)
class Plan:
    """What the data plane does with one request; `upstream` changes on a fallback."""

    version: int  # of the route table the request is served from
    route: CompiledRoute | None
    route_name: str
    upstream: Upstream
    method: str
    keyed: bool  # carries an Idempotency-Key
    max_body: int
    read_timeout: float
    retry: RetryPolicy | None
    fallback: FallbackPolicy | None
    choice: str = BY_DEFAULT
    key: bytes | None = None  # digest of the request's sticky key (pins are kept by it)
    set_cookie: bytes | None = None  # the key cookie a keyless client is given
    shadow: ShadowPolicy | None = None  # a copy goes to this shadow after the answer


def _arm(
    snapshot: Snapshot,
    route: CompiledRoute,
    headers: Headers,
    client: str,
    https: bool,
    pins: Pins,
    plan: Plan,
) -> Upstream:
    """The upstream for a request on `route` (module header's order), noting in `plan` how it
    was chosen and the request's key."""
    if route.static is not None:
        plan.choice = BY_STATIC
        return STATIC
    key: bytes | None = None
    if route.keyed:
        key = sticky_key(route, headers, client)
        if key is None:
            key = new_key()
            plan.set_cookie = key_cookie(key, https)
    elif route.pin and pins.has(route.name):
        # A route rolled back from a cookie-keyed split to `to:` keeps no key of its own, but
        # its users' pins must hold: their cookie still names them. (A route that never had a
        # pin costs nothing here.)
        key = cookie_value(headers, KEY_COOKIE) or None
    if route.override is not None and (forced := overridden(route.override, headers)):
        plan.choice = BY_OVERRIDE
        if key is not None and route.pin:
            plan.key = digest(key)
        return forced
    if route.upstream is not None:
        chosen, plan.choice = route.upstream, BY_TO
    else:
        assert route.split is not None  # the model guarantees exactly one action
        assert key is not None  # splits are always keyed
        chosen, plan.choice = weighted(route.split, key, route.salt), BY_SPLIT
    if key is not None and route.pin:
        plan.key = digest(key)
        if pins and (pinned := _pinned(snapshot, pins, route, plan.key, chosen)) is not None:
            plan.choice = BY_PIN
            return pinned
    return chosen


def _pinned(
    snapshot: Snapshot, pins: Pins, route: CompiledRoute, key: bytes, chosen: Upstream
) -> Upstream | None:
    """The upstream a live pin sends `key` to instead of `chosen`, if any (a pin to an upstream
    gone from the table is ignored)."""
    name = pins.get(route.name, key, time.monotonic())
    if name is None or name == chosen.name:
        return None
    return snapshot.upstreams.get(name)


def _shadow(route: CompiledRoute, plan: Plan) -> ShadowPolicy | None:
    """The route's shadow, if this request is sampled for a copy: a safe method, an answer
    not already from the shadow's upstream, and the sample's draw."""
    shadow = route.shadow
    if (
        shadow is None
        or plan.method not in shadow.methods
        or shadow.upstream is plan.upstream
        or (shadow.sample < 1.0 and random.random() >= shadow.sample)  # noqa: S311 - sampling
    ):
        return None
    return shadow


def _route(
    snapshot: Snapshot, external: bool, raw_path: bytes, method: str, host: bytes, headers: Headers
) -> CompiledRoute | None:
    """The route a request takes (module rules), None for the default; ProxyError 400."""
    paths = snapshot.paths
    key = plain_key(raw_path, paths.case_insensitive)
    if key is None:
        return _read_route(snapshot, external, raw_path, method, host, headers)
    route = find_route(snapshot, key, method, host, headers)  # a plain path: one reading
    if not snapshot.protected or paths.case_insensitive:
        return route
    lowered = key.lower()  # a plain path is ASCII
    if lowered == key and not folded(snapshot).mixed:
        return route
    other = find_folded_route(snapshot, lowered, method, host, headers)
    return settle(snapshot, external, route, (other,))


def _read_route(
    snapshot: Snapshot, external: bool, raw_path: bytes, method: str, host: bytes, headers: Headers
) -> CompiledRoute | None:
    """`_route` for a path that is not plain: every reading (normalize.read_path)."""
    paths = snapshot.paths
    try:
        readings = read_path(
            raw_path,
            case_insensitive=paths.case_insensitive,
            refuse_escaped_slashes=paths.escaped_slashes == "refuse",
        )
    except AmbiguousPath as exc:
        raise ProxyError(400, "bad-target", str(exc)) from None
    route = find_route(snapshot, readings.key, method, host, headers)
    for reading in readings.strict:
        if find_route(snapshot, reading, method, host, headers) is not route:
            raise ProxyError(400, "bad-target", "the path's escapes can be read as another route")
    if not (snapshot.protected or snapshot.access is not None):
        return route
    others = [find_route(snapshot, reading, method, host, headers) for reading in readings.lenient]
    if snapshot.protected and not paths.case_insensitive:
        mixed = folded(snapshot).mixed
        for reading in dict.fromkeys(readings.all()):
            lowered = fold(reading)
            if lowered != reading or mixed:
                others.append(find_folded_route(snapshot, lowered, method, host, headers))
    return settle(snapshot, external, route, others)


# (exposed on this listener, access rules, rate limit): a rate limit protects too (a login
# route's limit must not be escaped by spelling /LOGIN).
Guard = tuple[bool, AccessPolicy | None, RatePolicy | None]


def _guard(snapshot: Snapshot, route: CompiledRoute | None, external: bool) -> Guard | None:
    """What `route` (None: the default) holds back on this listener; None for nothing."""
    if route is None:
        return None if snapshot.access is None else (True, snapshot.access, None)
    if not (route.external if external else route.internal):
        return (False, None, None)  # refused whatever its access rules
    if route.access is None and route.rate_limit is None:
        return None
    return (True, route.access, route.rate_limit)


def settle(
    snapshot: Snapshot,
    external: bool,
    route: CompiledRoute | None,
    others: Sequence[CompiledRoute | None],
) -> CompiledRoute | None:
    """The route of a request whose key reaches `route` and whose other readings reach
    `others` (module rules): the protected one among them, else `route`; protected ones that
    hold back different things → 400."""
    guard = _guard(snapshot, route, external)
    chosen = route
    for other in others:
        if other is route or other is chosen:
            continue
        other_guard = _guard(snapshot, other, external)
        if other_guard is None or other_guard == guard:
            continue
        if guard is not None:
            raise ProxyError(
                400, "bad-target", "the path can be read as routes protected differently"
            )
        chosen, guard = other, other_guard
    return chosen


def resolve(
    snapshot: Snapshot,
    *,
    external: bool,
    role: str,
    method: str,
    raw_path: bytes,
    host: bytes,
    headers: Headers,
    client: str,
    content_length: int | None,
    pins: Pins | None = None,
    https: bool = False,
    keyed: bool | None = None,
) -> Plan:
    """The plan for one request, or a ProxyError (400 ambiguous target, 404 not exposed on
    this listener, 413 a declared body over the route's limit). `keyed`: whether the request
    carries an Idempotency-Key, when the caller has read its fields already."""
    route = _route(snapshot, external, raw_path, method, host, headers)
    if route is None:
        upstream = snapshot.default
        plan = Plan(
            snapshot.version,
            None,
            "default",
            upstream,
            method,
            False,
            snapshot.max_body,
            upstream.timeout,
            None,
            None,
        )
    else:
        if not (route.external if external else route.internal):
            raise ProxyError(404, "not-found", f"no route for this path on the {role} listener")
        plan = Plan(
            snapshot.version,
            route,
            route.name,
            snapshot.default,
            method,
            False,
            route.max_body,
            0.0,
            route.retry,
            route.fallback,
        )
        kept = pins if pins is not None else _NO_PINS  # not `or`: Pins.__bool__ is a call
        upstream = _arm(snapshot, route, headers, client, https, kept, plan)
        plan.upstream = upstream
        plan.read_timeout = route.timeout or upstream.timeout
        if route.shadow is not None:
            plan.shadow = _shadow(route, plan)
    if content_length is not None and content_length > plan.max_body:
        raise ProxyError(
            413,
            "body-too-large",
            f"the body is {content_length} bytes; this route takes {plan.max_body}",
            close=True,
        )
    if method not in IDEMPOTENT:  # a keyed write may be re-sent after a stale connection
        if keyed is None:  # not known already (prepare_request's RequestFacts.keyed)
            keyed = any(name == b"idempotency-key" for name, _ in headers)
        plan.keyed = keyed
    return plan


_NO_PINS = Pins(limit=1)


@dataclass(slots=True)
class Tries:
    """What one request has tried so far."""

    replayable: bool  # the body is buffered (or there is none), or a stream not yet started
    tries: int = 1  # on the plan's first upstream
    stale_used: bool = False
    fallen_back: bool = False
    sent: bool = False  # an earlier try may have reached an upstream


def _listed(failures: Failures, failure: str | int) -> bool:
    if isinstance(failure, int):
        return failure in failures.statuses
    kind = "connect-failure" if failure in UNREACHED else failure
    return kind in failures.kinds


def may_repeat(plan: Plan, target: Upstream, failure: str | int, tries: Tries) -> bool:
    """Whether the request may be sent (again) to `target` after `failure` (module rules).
    "Never reached" counts only while no earlier try may have: a keyed POST that reached the
    service, then found it refusing on the re-send, must not fall back to the monolith."""
    if failure in UNREACHED and not tries.sent:
        return True
    if not tries.replayable:
        return False
    if plan.method in IDEMPOTENT:
        return True
    return plan.keyed and target is plan.upstream and target.idempotent_writes


def next_step(plan: Plan, failure: str | int, tries: Tries, *, reused: bool, budget: bool) -> str:
    """STALE, RETRY, FALLBACK or GIVE_UP after a try of `plan.upstream` failed with `failure`
    (a kind or a response status). `budget`: the upstream's retry budget has a retry left.
    Remembers in `tries` whether this try may have reached the upstream."""
    if failure not in UNREACHED:
        tries.sent = True
    upstream = plan.upstream
    if (
        failure == "reset"
        and reused
        and not tries.stale_used
        and may_repeat(plan, upstream, failure, tries)
    ):
        return STALE
    retry = plan.retry
    if (
        retry is not None
        and budget
        and not tries.fallen_back
        and failure not in {"ejected", "saturated"}  # the same upstream would refuse again
        and tries.tries < retry.attempts
        and _listed(retry.on, failure)
        and may_repeat(plan, upstream, failure, tries)
    ):
        return RETRY
    fallback = plan.fallback
    if (
        fallback is not None
        and not tries.fallen_back
        and fallback.upstream is not upstream
        and _listed(fallback.on, failure)
        and (fallback.methods is None or plan.method in fallback.methods)
        and may_repeat(plan, fallback.upstream, failure, tries)
    ):
        return FALLBACK
    return GIVE_UP


def reacts_to(plan: Plan, status: int) -> bool:
    """Whether a response status may make this request retry or fall back (cheap pre-check
    before the response is held back from the client)."""
    retry, fallback = plan.retry, plan.fallback
    return (retry is not None and status in retry.on.statuses) or (
        fallback is not None and status in fallback.on.statuses
    )
