"""RouteTable → Snapshot: the immutable, precompiled form the data plane serves (pure).

A request reads the current snapshot once and keeps it to the end, even if a new one lands
mid-flight (YARP's config model); nothing here is mutated after compile(), so the hot path takes
no lock. Matching cost does not grow with the number of routes: exact paths are a dict, prefixes
a trie over path segments, walked once per request (O(path depth)).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

from proxy.shadow.compare import Rules
from proxy.table.access import AccessRule, JwtIssuer, RateLimit
from proxy.table.model import Fallback, Outlier, Retry, Route, RouteTable, Static, WebSocket
from proxy.table.model import Upstream as UpstreamSpec
from proxy.table.validate import methods_taken, override_always, specificity

StickyKind = Literal["header", "cookie", "client-ip"]


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    url: str
    scheme: str
    host: str
    port: int
    timeout: float
    connect_timeout: float
    max_connections: int
    max_requests: int
    max_pending: int
    queue_timeout: float
    idempotent_writes: bool
    outlier: Outlier | None
    retry_budget: float


@dataclass(frozen=True, slots=True)
class Failures:
    """Which failures a retry or a fallback reacts to: kinds (connect-failure, reset, timeout)
    and response statuses (`gateway-error` is 502, 503 and 504)."""

    kinds: frozenset[str]
    statuses: frozenset[int]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    on: Failures
    per_try_timeout: float | None
    backoff: float
    max_backoff: float


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    upstream: Upstream
    on: Failures
    methods: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class Split:
    """Weights over upstreams (in name order); which one a key goes to is dataplane/split.py's
    weighted rendezvous hash."""

    upstreams: tuple[Upstream, ...]
    weights: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class OverridePolicy:
    header: bytes | None  # lower-case
    cookie: bytes | None
    always: Upstream | None
    never: Upstream


@dataclass(frozen=True, slots=True)
class ShadowPolicy:
    upstream: Upstream
    sample: float
    methods: frozenset[str]
    max_body: int
    noise: float
    rules: Rules


@dataclass(frozen=True, slots=True)
class StaticPolicy:
    """Files the proxy serves itself (dataplane/static.py): `root` is absolute and resolved
    (symlinks followed), `prefix` is the route's path, stripped to find a file."""

    root: str
    prefix: str
    max_age: int
    immutable: re.Pattern[str]
    index: bool


@dataclass(frozen=True, slots=True)
class TunnelPolicy:
    """Upgrade requests (WebSocket) on the route become tunnels to its upstream: closed after
    `idle_timeout` seconds with no bytes either way, at most `max_connections` open per worker."""

    idle_timeout: float
    max_connections: int


# The name a static route's requests carry in metrics and the access log, where an upstream's
# name would be.
STATIC = Upstream(
    name="static",
    url="static:",
    scheme="static",
    host="",
    port=0,
    timeout=0.0,
    connect_timeout=0.0,
    max_connections=1,
    max_requests=1,
    max_pending=0,
    queue_timeout=0.0,
    idempotent_writes=False,
    outlier=None,
    retry_budget=0.0,
)


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    path: str
    exact: bool
    methods: frozenset[str] | None
    host: bytes | None
    headers: tuple[tuple[bytes, bytes], ...]
    upstream: Upstream | None  # `to`
    split: Split | None
    timeout: float | None
    max_body: int
    external: bool
    internal: bool
    retry: RetryPolicy | None = None
    fallback: FallbackPolicy | None = None
    # Who stays on one upstream: the declared key (header, cookie or client address) or, when
    # the request has none, the proxy's own cookie. Routes with a split are always keyed.
    sticky: tuple[StickyKind, bytes] | None = None
    keyed: bool = False
    salt: bytes = b""
    pin: float = 0.0  # read-your-writes window after a write by a key (0: off)
    override: OverridePolicy | None = None
    shadow: ShadowPolicy | None = None
    rules: Rules | None = None  # how answers are compared (shadow, contract replays)
    static: StaticPolicy | None = None  # files served by the proxy (no upstream)
    access: AccessPolicy | None = None  # who may call it (None: anyone)
    rate_limit: RatePolicy | None = None
    forward_credentials: bool = False
    # The caller must be identified: the route has access rules or limits by consumer.
    identify: bool = False
    guarded: bool = False  # access rules or a rate limit: the data plane's guard step runs
    websocket: TunnelPolicy | None = None  # Upgrade requests are tunnelled (None: forwarded)


@dataclass(frozen=True, slots=True)
class Rule:
    """One way into a route (table/access.py): empty `consumers` and `groups` admit any
    identified consumer; `methods` None admits every method."""

    consumers: frozenset[str]
    groups: frozenset[str]
    methods: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class RatePolicy:
    rate: str
    burst: str | None
    by: str  # "consumer" (else the client address) or "client"
    strategy: str


@dataclass(frozen=True, slots=True)
class CredentialPolicy:
    api_key_header: bytes  # lower-case
    issuers: tuple[JwtIssuer, ...]
    api_key_name: str = "X-API-Key"  # as declared, for the 401's challenge


@dataclass(frozen=True, slots=True)
class PathPolicy:
    case_insensitive: bool
    escaped_slashes: str  # "check" or "refuse"


class Node:
    """One path segment of the prefix trie: the routes ending here, and deeper segments."""

    __slots__ = ("children", "routes")

    def __init__(self) -> None:
        self.children: dict[str, Node] = {}
        self.routes: tuple[CompiledRoute, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    version: int
    upstreams: MappingProxyType[str, Upstream]
    default: Upstream
    routes: tuple[CompiledRoute, ...]
    exact: MappingProxyType[str, tuple[CompiledRoute, ...]]
    trie: Node
    max_body: int
    table: RouteTable = field(repr=False)
    access: AccessPolicy | None = None  # of requests no route takes
    credentials: CredentialPolicy = CredentialPolicy(b"x-api-key", ())
    paths: PathPolicy = PathPolicy(False, "check")
    # Some route is not served on one listener, has access rules or a rate limit: a request
    # whose path could be read as such a route's (another case, escape or spelling) is checked.
    protected: bool = False


def _upstream(name: str, spec: UpstreamSpec) -> Upstream:
    parts = urlsplit(spec.url)
    scheme = parts.scheme
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    return Upstream(
        name=name,
        url=spec.url.rstrip("/"),
        scheme=scheme,
        host=host,
        port=port,
        timeout=spec.timeout,
        connect_timeout=spec.connect_timeout,
        max_connections=spec.max_connections,
        max_requests=spec.max_requests or spec.max_connections,
        max_pending=spec.max_pending,
        queue_timeout=spec.queue_timeout,
        idempotent_writes=spec.idempotent_writes,
        outlier=spec.outlier,
        retry_budget=spec.retry_budget,
    )


def _failures(on: tuple[str | int, ...]) -> Failures:
    statuses = {item for item in on if isinstance(item, int)}
    if "gateway-error" in on:
        statuses |= {502, 503, 504}
    kinds = {item for item in on if isinstance(item, str) and item != "gateway-error"}
    return Failures(frozenset(kinds), frozenset(statuses))


def _methods(methods: tuple[str, ...] | None) -> frozenset[str] | None:
    return methods_taken(methods) if methods else None


def _retry(spec: Retry | None) -> RetryPolicy | None:
    if spec is None:
        return None
    return RetryPolicy(
        spec.attempts, _failures(spec.on), spec.per_try_timeout, spec.backoff, spec.max_backoff
    )


def _fallback(spec: Fallback | None, upstreams: dict[str, Upstream]) -> FallbackPolicy | None:
    if spec is None:
        return None
    return FallbackPolicy(upstreams[spec.to], _failures(spec.on), _methods(spec.methods))


def _split(route: Route, upstreams: dict[str, Upstream]) -> Split | None:
    if route.split is None:
        return None
    names = sorted(route.split)
    weights = tuple(route.split[n] for n in names)
    return Split(tuple(upstreams[n] for n in names), weights)


def _sticky(route: Route) -> tuple[StickyKind, bytes] | None:
    if route.sticky == "client-ip":
        return ("client-ip", b"")
    if route.sticky is None:
        return None
    kind, _, key = route.sticky.partition(":")
    return ("header" if kind == "header" else "cookie", key.encode("latin-1"))


def _rules(route: Route) -> Rules:
    spec = route.compare
    if spec is None:
        return Rules()
    return Rules(spec.headers, spec.ignore, spec.unordered, spec.tolerance, spec.secret)


def _shadow(route: Route, upstreams: dict[str, Upstream]) -> ShadowPolicy | None:
    spec = route.shadow
    if spec is None:
        return None
    return ShadowPolicy(
        upstreams[spec.to],
        spec.sample,
        methods_taken(spec.methods),
        spec.max_body,
        spec.noise,
        _rules(route),
    )


def _override(route: Route, upstreams: dict[str, Upstream], default: str) -> OverridePolicy | None:
    spec = route.override
    if spec is None:
        return None
    always = override_always(route, default)
    return OverridePolicy(
        spec.header.lower().encode("latin-1") if spec.header else None,
        spec.cookie.encode("latin-1") if spec.cookie else None,
        upstreams[always] if always is not None else None,
        upstreams[spec.never or default],
    )


def _static(spec: Static | None, path: str) -> StaticPolicy | None:
    if spec is None:
        return None
    return StaticPolicy(spec.root, path, int(spec.max_age), re.compile(spec.immutable), spec.index)


def _access(rules: tuple[AccessRule, ...] | None) -> AccessPolicy | None:
    """The compiled rules; None when anyone may call (no `access`, or `public`)."""
    if not rules:
        return None
    return AccessPolicy(
        tuple(
            Rule(frozenset(rule.consumers), frozenset(rule.groups), _methods(rule.methods))
            for rule in rules
        )
    )


def _route_access(route: Route, default: AccessPolicy | None) -> AccessPolicy | None:
    return default if route.access is None else _access(route.access)


def _rate(spec: RateLimit | None) -> RatePolicy | None:
    if spec is None:
        return None
    return RatePolicy(spec.rate, spec.burst, spec.by, spec.strategy)


def _tunnel(spec: WebSocket | None) -> TunnelPolicy | None:
    if spec is None:
        return None
    return TunnelPolicy(spec.idle_timeout, spec.max_connections)


def host_name(host: bytes) -> bytes:
    """`host` (lower-cased) without its port (`[v6]:port` aware) and without the one trailing
    dot of a fully qualified name (`admin.example.` is `admin.example` to every vhost server:
    a route's `host:` must not be escaped by spelling it so)."""
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end != -1 else host
    name = host.split(b":", 1)[0]
    return name[:-1] if name.endswith(b".") else name


def _path(path: str, paths: PathPolicy) -> str:
    return path.lower() if paths.case_insensitive else path


def compile_table(table: RouteTable) -> Snapshot:
    """Compile a validated table (see loader.load_text) into a Snapshot."""
    upstreams = {name: _upstream(name, spec) for name, spec in table.upstreams.items()}
    ranked = sorted(
        enumerate(table.routes),
        key=lambda item: (specificity(item[1]), -item[0]),
        reverse=True,
    )
    default_access = _access(table.access)
    paths = PathPolicy(table.paths.case_insensitive, table.paths.escaped_slashes)
    compiled: list[CompiledRoute] = []
    for _, route in ranked:
        m = route.match
        access = _route_access(route, default_access)
        rate = _rate(route.rate_limit)
        compiled.append(
            CompiledRoute(
                name=route.name,
                path=m.path,
                exact=m.exact,
                methods=_methods(m.methods),
                host=host_name(m.host.lower().encode("ascii")) if m.host else None,
                headers=tuple(
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in (m.headers or {}).items()
                ),
                upstream=upstreams[route.to] if route.to else None,
                split=_split(route, upstreams),
                timeout=route.timeout,
                max_body=route.max_body if route.max_body is not None else table.max_body,
                external=route.expose in {"external", "both"},
                internal=route.expose in {"internal", "both"},
                retry=_retry(route.retry),
                fallback=_fallback(route.fallback, upstreams),
                sticky=_sticky(route),
                keyed=route.sticky is not None or route.split is not None,
                salt=(route.salt or "").encode(),
                pin=route.pin,
                override=_override(route, upstreams, table.default),
                shadow=_shadow(route, upstreams),
                rules=_rules(route) if route.compare is not None else None,
                static=_static(route.static, m.path),
                access=access,
                rate_limit=rate,
                forward_credentials=route.forward_credentials,
                identify=access is not None or (rate is not None and rate.by == "consumer"),
                guarded=access is not None or rate is not None,
                websocket=_tunnel(route.websocket),
            )
        )
    exact: dict[str, list[CompiledRoute]] = {}
    root = Node()
    for entry in compiled:  # already in precedence order
        if entry.exact:
            exact.setdefault(_path(entry.path, paths), []).append(entry)
            continue
        node = root
        for segment in _path(entry.path, paths).split("/")[1:]:
            if segment:
                node = node.children.setdefault(segment, Node())
        node.routes = (*node.routes, entry)
    return Snapshot(
        version=table.version,
        upstreams=MappingProxyType(upstreams),
        default=upstreams[table.default],
        routes=tuple(compiled),
        exact=MappingProxyType({k: tuple(v) for k, v in exact.items()}),
        trie=root,
        max_body=table.max_body,
        table=table,
        access=default_access,
        credentials=CredentialPolicy(
            table.credentials.api_key_header.lower().encode("ascii"),
            table.credentials.jwt,
            table.credentials.api_key_header,
        ),
        paths=paths,
        protected=any(
            r.access is not None or r.rate_limit is not None or not (r.external and r.internal)
            for r in compiled
        ),
    )
