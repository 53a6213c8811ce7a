"""routes.yaml as typed data. Pure: no I/O.

Every request goes to `default` unless a route sends it elsewhere. A route matches on a path
(a prefix at a segment boundary, or `exact`), and optionally methods, host and header values; it
has exactly one action, `to` (one upstream) or `split` (weights over upstreams, summing to 100),
like Envoy's `oneof` route action. Routes refer to upstreams by name.

    version: 3
    upstreams:
      monolith: {url: "http://127.0.0.1:8001"}
      payment:  {url: "http://127.0.0.1:8002", timeout: 2s}
    default: monolith
    routes:
      - name: payments
        match: {path: /api/v1/payments, methods: [GET, POST]}
        split: {monolith: 90, payment: 10}
        sticky: header:X-User-Id
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from proxy.table.access import Access, Credentials, Paths, RateLimit
from proxy.table.fields import NAME, TOKEN, Duration, Size, Strict
from proxy.table.rollout import RolloutPlan
from proxy.table.units import parse_duration

# Kestrel's default MaxRequestBodySize (YARP's host): 30,000,000 bytes. nginx's 1m breaks uploads
# a monolith already accepts, Traefik's default is unlimited.
DEFAULT_MAX_BODY = 30_000_000
# A route's own read timeout defaults to nginx's proxy_read_timeout (60s).
DEFAULT_TIMEOUT = 60.0
# nginx's proxy_connect_timeout default is 60s; Envoy's connect_timeout 5s: a dead upstream
# should fail fast, so Envoy's.
DEFAULT_CONNECT_TIMEOUT = 5.0
UNSAFE_METHODS = frozenset({"CONNECT", "TRACE"})
# RFC 9110 §9.2.1: the methods a client expects to change nothing. Only these may be shadowed.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Read-your-writes pins last at least the sync's lag budget (the payment sync's gate allows a
# follow lag of 5s); twice that by default.
DEFAULT_PIN = 10.0
ZERO_DURATIONS = frozenset({"0", "0s", "0ms", "0m", "0h"})
# What a retry or a fallback may react to. `connect-failure`: the request never reached the
# upstream (refused, connect timeout, no free connection in time, ejected); `reset`: the
# connection closed before any response byte; `timeout`: no response head in time;
# `gateway-error`: 502, 503 or 504 (Envoy's retry_on names; nginx's proxy_next_upstream
# `error timeout http_502 http_503 http_504`). A number names one status (500-599).
FAILURE_NAMES = frozenset({"connect-failure", "reset", "timeout", "gateway-error"})
DEFAULT_FAILURES: tuple[str | int, ...] = ("connect-failure", "reset", "timeout", "gateway-error")
# A WebSocket tunnel with no bytes either way for this long is closed: nginx's proxy_read_timeout
# is 60s (too short for a quiet socket with no pings), Envoy's stream idle_timeout 5m: Envoy's.
DEFAULT_TUNNEL_IDLE = 300.0
MAX_TUNNEL_IDLE = 86_400.0
DEFAULT_TUNNELS = 1000
MAX_TUNNELS = 1_000_000


def _on_off(value: object) -> object:
    """`outlier: on` switches a block on with its defaults, `off` switches it off (YAML reads
    both as booleans)."""
    if value is True or value == "on":
        return {}
    return None if value is False or value == "off" else value


def _failures(value: tuple[str | int, ...]) -> tuple[str | int, ...]:
    if not value:
        raise ValueError("name at least one failure (connect-failure, reset, timeout, ...)")
    for item in value:
        if isinstance(item, int):
            if not 500 <= item <= 599:
                raise ValueError(f"{item} is not a 5xx status")
        elif item not in FAILURE_NAMES:
            raise ValueError(
                f"{item!r} is not one of {', '.join(sorted(FAILURE_NAMES))} or a 5xx status"
            )
    if len(set(value)) != len(value):
        raise ValueError("a failure is listed twice")
    return value


FailureList = Annotated[tuple[str | int, ...], AfterValidator(_failures)]


def _check_methods(value: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not value:
        raise ValueError("methods: leave it out to match every method")
    upper = tuple(m.upper() for m in value)
    for method in upper:
        if not TOKEN.match(method):
            raise ValueError(f"{method!r} is not an HTTP method")
        if method in UNSAFE_METHODS:
            raise ValueError(f"{method} is never proxied")
    if len(set(upper)) != len(upper):
        raise ValueError("a method is listed twice")
    return tuple(sorted(upper))


class Outlier(Strict):
    """Outlier ejection (a circuit breaker per upstream and worker), Envoy's outlier detection:
    `consecutive_failures` gateway failures in a row (Envoy's consecutive_gateway_failure, 5)
    eject the upstream for `base_ejection` (Envoy's base_ejection_time, 30s) times the number
    of ejections so far, at most `max_ejection` (Envoy's max_ejection_time, 300s). Then
    `probes` requests are let through; all must succeed to close it again, one failure ejects
    it again. Optionally a failure ratio over a window ejects too (Envoy's
    failure_percentage_threshold 85 % with failure_percentage_request_volume 50, over its
    10s interval). Only gateway failures count (connect failures, resets, timeouts, 502/503/504):
    a 500 from one buggy endpoint must not take a whole monolith out of the path."""

    consecutive_failures: int = Field(5, ge=1, le=10_000)
    base_ejection: Duration = 30.0
    max_ejection: Duration = 300.0
    probes: int = Field(3, ge=1, le=100)
    failure_ratio: float | None = Field(None, gt=0, le=1)
    window: Duration = 10.0
    min_requests: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> Outlier:
        if self.max_ejection < self.base_ejection:
            raise ValueError("max_ejection is shorter than base_ejection")
        return self


class Upstream(Strict):
    url: str = Field(description="http:// or https:// base URL (no path, query or credentials)")
    timeout: Duration = Field(DEFAULT_TIMEOUT, description="time to wait between bytes")
    connect_timeout: Duration = DEFAULT_CONNECT_TIMEOUT
    max_connections: int = Field(256, ge=1, le=100_000)
    # Concurrency cap per worker (Envoy's circuit-breaker max_requests): requests over it wait
    # for a slot, at most `max_pending` of them (Envoy's max_pending_requests) and at most
    # `queue_timeout` (HAProxy's `timeout queue`); the rest get a fast 503. Defaults to
    # max_connections, so no request ever waits inside the connection pool.
    max_requests: int | None = Field(None, ge=1, le=100_000)
    max_pending: int = Field(128, ge=0, le=100_000)
    queue_timeout: Duration = 1.0
    # The upstream honours Idempotency-Key: a POST or PATCH carrying one may be re-sent.
    idempotent_writes: bool = False
    # Off unless set (as in Envoy): ejecting the only upstream of a route with no fallback turns
    # a blip into an outage of base_ejection; `outlier: on` takes Envoy's numbers.
    outlier: Annotated[Outlier | None, BeforeValidator(_on_off)] = None
    # Retries (of every route) to this upstream are at most this share of its requests, plus a
    # small reserve (Envoy's retry_budget budget_percent 20 %; Finagle's RetryBudget).
    retry_budget: float = Field(0.2, ge=0, le=1)
    gate: str | None = Field(
        None,
        description="a URL the control plane asks before a change sends this upstream more "
        "traffic: a 2xx answer lets the change through (e.g. the service's data cutover gate)",
    )


class Match(Strict):
    path: str = Field(description="a path prefix ending at a segment boundary, or exact")
    exact: bool = False
    methods: tuple[str, ...] | None = None
    host: str | None = None
    headers: dict[str, str] | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("a path starts with '/'")
        if any(c in value for c in "?#%\\") or any(ord(c) < 0x21 or ord(c) > 0x7E for c in value):
            raise ValueError("a path is plain ASCII without '?', '#', '%' or '\\'")
        segments = value.split("/")
        if "." in segments or ".." in segments or "//" in value:
            raise ValueError("a path has no empty, '.' or '..' segments")
        if ";" in value or any(s.endswith(".") for s in segments):
            # Requests are routed with `;params` cut and trailing dots stripped
            # (dataplane/normalize.py): such a route could never be reached.
            raise ValueError("a path has no ';' and no segment ending in '.'")
        return value.rstrip("/") or "/"

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _check_methods(value)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^[a-z0-9.-]+(:\d{1,5})?$|^\[[0-9a-f:.]+\](:\d{1,5})?$", value.lower()):
            raise ValueError(f"{value!r} is not a host[:port]")
        return value.lower()

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        for name, expected in value.items():
            if not TOKEN.match(name):
                raise ValueError(f"{name!r} is not a header name")
            if not re.fullmatch(r"[\x20-\x7e]*", expected):
                raise ValueError(f"the value for {name!r} must be printable ASCII")
        return {name.lower(): v for name, v in value.items()}


Expose = Literal["external", "internal", "both"]


class Retry(Strict):
    """Re-send a failed request to the same upstream (Envoy's retry policy). Only a request that
    may be repeated is re-sent: an idempotent method (RFC 9110 §9.2.2), or a POST/PATCH with an
    Idempotency-Key to an upstream with `idempotent_writes`, whose body was buffered; a request
    that never reached the upstream (connect-failure) may be re-sent whatever its method."""

    attempts: int = Field(2, ge=1, le=10, description="tries in all (Envoy's num_retries 1 + 1)")
    on: FailureList = DEFAULT_FAILURES
    per_try_timeout: Duration | None = Field(None, description="time to the response head")
    # Envoy's base_interval (25ms) and max_interval (10 times base); full jitter.
    backoff: Duration = 0.025
    max_backoff: Duration = 0.25

    @model_validator(mode="after")
    def _bounds(self) -> Retry:
        if self.max_backoff < self.backoff:
            raise ValueError("max_backoff is shorter than backoff")
        return self


class Fallback(Strict):
    """Serve a request from another upstream (the monolith) when the chosen one fails before
    the first response byte, or is ejected. Same repeat rule as retries; a request that never
    reached the chosen upstream may fall back whatever its method (nothing was sent).

    A fallback naming the upstream that failed does nothing (it is never tried twice), so a
    route may keep `fallback: monolith` while it is flipped back to the monolith: an emergency
    flip never has to edit the fallback first."""

    to: str
    on: FailureList = DEFAULT_FAILURES
    methods: tuple[str, ...] | None = Field(
        None, description="only these methods fall back (default: every one that may)"
    )

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return _check_methods(value)


class Shadow(Strict):
    """A sampled copy of a safe request, sent to `to` after the primary answer was sent (Envoy's
    request_mirror_policies, Traefik's mirroring), then compared with it (Diffy). `noise` is the
    share of compared requests also sent to the primary a second time, to learn which fields
    differ between two primary answers (timestamps, request ids) and not report them."""

    to: str
    sample: float = Field(1.0, gt=0, le=1, description="share of matching requests copied")
    methods: tuple[str, ...] = ("GET", "HEAD")
    max_body: Size = Field(
        1 << 20, ge=0, le=64 << 20, description="larger answers: status and headers compared"
    )
    noise: float = Field(0.1, ge=0, le=1)

    @field_validator("methods")
    @classmethod
    def _safe(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        checked = _check_methods(value) or ()
        unsafe = [m for m in checked if m not in SAFE_METHODS]
        if unsafe:
            raise ValueError(
                f"a shadow never carries a write: {', '.join(unsafe)} is not a safe method "
                "(GET, HEAD, OPTIONS; RFC 9110 §9.2.1)"
            )
        return checked


class Compare(Strict):
    """How a shadow's (or a contract replay's) answer is compared with the primary's: status
    always, these headers, and bodies (JSON field by field, other bodies by hash). Paths are
    JSON paths: `$.updated_at`, `$.items[*].id`, `$.meta.*`."""

    headers: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    unordered: tuple[str, ...] = Field((), description="arrays compared without order")
    tolerance: float = Field(0.0, ge=0, description="numbers this close are equal")
    secret: tuple[str, ...] = Field((), description="fields never kept in example pairs")

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not TOKEN.match(name):
                raise ValueError(f"{name!r} is not a header name")
        return tuple(name.lower() for name in value)

    @field_validator("ignore", "unordered", "secret")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from proxy.shadow.compare import Rules

        for path in value:
            if (why := Rules.check_path(path)) is not None:
                raise ValueError(f"{path!r}: {why}")
        return value


class Override(Strict):
    """Force a user onto one arm whatever the weights (ingress-nginx's canary-by-header and
    canary-by-cookie, checked in that order): the value `always` sends the request to `always`
    (default: the route's one upstream other than the table's default, or its shadow's), `never`
    to `never` (default: the table's default upstream). Other values change nothing."""

    header: str | None = None
    cookie: str | None = None
    always: str | None = None
    never: str | None = None

    @model_validator(mode="after")
    def _named(self) -> Override:
        if self.header is None and self.cookie is None:
            raise ValueError("name a header, a cookie or both")
        if self.header is not None and not TOKEN.match(self.header):
            raise ValueError(f"{self.header!r} is not a header name")
        if self.cookie is not None and not TOKEN.match(self.cookie):
            raise ValueError(f"{self.cookie!r} is not a cookie name")
        return self


# A fingerprinted file name (`app.3f2a9c1d.js`, webpack's and Rails' shape): its bytes never
# change under that name, so it may be cached `immutable` (RFC 8246).
DEFAULT_IMMUTABLE = r"\.[0-9a-f]{8,}\.[A-Za-z0-9]+$"
# nginx sends no Cache-Control for static files; an hour is a safe default for files whose
# name does not change with their content.
DEFAULT_MAX_AGE = 3600.0


class Static(Strict):
    """Files served by the proxy itself from a directory (nginx's `root` with `try_files $uri
    =404`), instead of an upstream. `root` is relative to the routes file's directory."""

    root: str = Field(min_length=1)
    max_age: Duration = DEFAULT_MAX_AGE
    immutable: str = Field(
        DEFAULT_IMMUTABLE, description="a regex on the file name: such names are immutable"
    )
    index: bool = Field(False, description="a directory serves its index.html (never a listing)")

    @field_validator("immutable")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
        return value


class WebSocket(Strict):
    """HTTP/1.1 Upgrade tunnels (WebSocket, RFC 6455) through the proxy to the route's upstream.
    `websocket: true` takes the defaults. A tunnel with no bytes either way for `idle_timeout`
    is closed; at most `max_connections` tunnels are open on the route per worker, a further
    Upgrade gets a 503. Off (absent or `false`): an Upgrade is forwarded as a plain request."""

    idle_timeout: Duration = Field(
        DEFAULT_TUNNEL_IDLE, description="no bytes either way this long: the tunnel is closed"
    )
    max_connections: int = Field(
        DEFAULT_TUNNELS, description="open tunnels on the route per worker; more get a 503"
    )

    @field_validator("idle_timeout")
    @classmethod
    def _idle(cls, value: float) -> float:
        if value > MAX_TUNNEL_IDLE:
            raise ValueError(f"idle_timeout is {value:g}s, more than 24h (86400s)")
        return value

    @field_validator("max_connections", mode="before")
    @classmethod
    def _cap(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"max_connections is a whole number of tunnels, not {value!r}")
        if not 1 <= value <= MAX_TUNNELS:
            raise ValueError(f"max_connections is {value}, not within 1-{MAX_TUNNELS}")
        return value


def _pin(value: object) -> object:
    """`pin: off` (or false, or 0) switches read-your-writes pins off; `pin: 30s` sets the
    window."""
    if value is False or value == "off" or value == 0 or str(value).strip() in ZERO_DURATIONS:
        return 0.0
    if value is True or value == "on":
        return DEFAULT_PIN
    return parse_duration(value)


def _fallback_shorthand(value: object) -> object:
    """`fallback: monolith` is `fallback: {to: monolith}`."""
    return {"to": value} if isinstance(value, str) else value


class Route(Strict):
    name: str
    match: Match
    to: str | None = None
    split: dict[str, int] | None = None
    static: Static | None = None
    sticky: str | None = Field(
        None, description="header:NAME, cookie:NAME or client-ip: who stays on one upstream"
    )
    timeout: Duration | None = None
    max_body: Size | None = None
    expose: Expose = "both"
    retry: Retry | None = None
    fallback: Annotated[Fallback | None, BeforeValidator(_fallback_shorthand)] = None
    shadow: Shadow | None = None
    compare: Compare | None = None
    override: Override | None = None
    # After a write by a sticky key, that key's requests stay on the arm that took it this long
    # (0 = off): longer than the data sync's lag, so a user always sees their own writes.
    pin: Annotated[float, BeforeValidator(_pin)] = Field(DEFAULT_PIN, ge=0, le=86_400)
    salt: str | None = Field(
        None,
        max_length=64,
        description="mixed into the sticky hash: this route's canary users differ from others'",
    )
    # Who may call it (table/access.py): rules, or `public` to opt out of the table's default.
    access: Access | None = None
    rate_limit: RateLimit | None = None
    # The credential the proxy checked (API key, bearer JWT) goes upstream only if this is set.
    forward_credentials: bool = False
    # How `strangler rollout start` moves it to another upstream on evidence (table/rollout.py).
    rollout: RolloutPlan | None = None
    # Upgrade requests become tunnels to the upstream (`websocket: true`, or its limits).
    websocket: Annotated[WebSocket | None, BeforeValidator(_on_off)] = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError("a name is 1-64 of a-z, 0-9, '.', '_', '-' and starts alphanumeric")
        return value

    @field_validator("split")
    @classmethod
    def _split(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is None:
            return None
        if len(value) < 2:
            raise ValueError("a split names at least two upstreams (use `to` for one)")
        for upstream, weight in value.items():
            if not 0 <= weight <= 100:
                raise ValueError(f"weight of {upstream!r} is {weight}, not within 0-100")
        total = sum(value.values())
        if total != 100:
            raise ValueError(f"weights sum to {total}, not 100")
        return value

    @field_validator("sticky")
    @classmethod
    def _sticky(cls, value: str | None) -> str | None:
        if value is None or value == "client-ip":
            return value
        kind, _, name = value.partition(":")
        if kind not in {"header", "cookie"} or not TOKEN.match(name or " "):
            raise ValueError("sticky is header:NAME, cookie:NAME or client-ip")
        return f"{kind}:{name.lower() if kind == 'header' else name}"

    @model_validator(mode="after")
    def _one_action(self) -> Route:
        if self.static is not None:
            return self  # what a static route may not have is reported field by field (validate)
        if (self.to is None) == (self.split is None):
            raise ValueError("a route has exactly one of `to` and `split` (or is `static`)")
        return self

    def upstream_names(self) -> tuple[str, ...]:
        """The upstreams the route sends traffic to (its fallback is not one of them)."""
        return (self.to,) if self.to is not None else tuple(self.split or ())


# What a static route cannot have: every one of these is about an upstream.
STATIC_EXCLUDES = (
    "to",
    "split",
    "shadow",
    "sticky",
    "override",
    "retry",
    "fallback",
    "websocket",
)


class RouteTable(Strict):
    version: int = Field(0, ge=0)
    upstreams: dict[str, Upstream]
    default: str
    routes: tuple[Route, ...] = ()
    max_body: Size = Field(DEFAULT_MAX_BODY, description="body cap of routes that set none")
    credentials: Credentials = Credentials()
    access: Access | None = Field(None, description="for routes without their own, and the rest")
    paths: Paths = Paths()

    @field_validator("upstreams")
    @classmethod
    def _upstream_names(cls, value: dict[str, Upstream]) -> dict[str, Upstream]:
        if not value:
            raise ValueError("name at least one upstream")
        for name in value:
            if not NAME.match(name):
                raise ValueError(f"upstream name {name!r}: 1-64 of a-z, 0-9, '.', '_', '-'")
        return value
