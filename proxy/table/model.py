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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from proxy.table.units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token (method, header name)
# Kestrel's default MaxRequestBodySize (YARP's host): 30,000,000 bytes. nginx's 1m breaks uploads
# a monolith already accepts, Traefik's default is unlimited.
DEFAULT_MAX_BODY = 30_000_000
# A route's own read timeout defaults to nginx's proxy_read_timeout (60s).
DEFAULT_TIMEOUT = 60.0
# nginx's proxy_connect_timeout default is 60s; Envoy's connect_timeout 5s: a dead upstream
# should fail fast, so Envoy's.
DEFAULT_CONNECT_TIMEOUT = 5.0
UNSAFE_METHODS = frozenset({"CONNECT", "TRACE"})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Upstream(Strict):
    url: str = Field(description="http:// or https:// base URL (no path, query or credentials)")
    timeout: Duration = Field(DEFAULT_TIMEOUT, description="time to wait between bytes")
    connect_timeout: Duration = DEFAULT_CONNECT_TIMEOUT
    max_connections: int = Field(256, ge=1, le=100_000)
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
        return value.rstrip("/") or "/"

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
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


class Route(Strict):
    name: str
    match: Match
    to: str | None = None
    split: dict[str, int] | None = None
    sticky: str | None = Field(
        None, description="header:NAME, cookie:NAME or client-ip: who stays on one upstream"
    )
    timeout: Duration | None = None
    max_body: Size | None = None
    expose: Expose = "both"

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
        if (self.to is None) == (self.split is None):
            raise ValueError("a route has exactly one of `to` and `split`")
        if self.sticky is not None and self.split is None:
            raise ValueError("sticky applies to a split only")
        return self

    def upstream_names(self) -> tuple[str, ...]:
        return (self.to,) if self.to is not None else tuple(self.split or ())


class RouteTable(Strict):
    version: int = Field(0, ge=0)
    upstreams: dict[str, Upstream]
    default: str
    routes: tuple[Route, ...] = ()
    max_body: Size = Field(DEFAULT_MAX_BODY, description="body cap of routes that set none")

    @field_validator("upstreams")
    @classmethod
    def _upstream_names(cls, value: dict[str, Upstream]) -> dict[str, Upstream]:
        if not value:
            raise ValueError("name at least one upstream")
        for name in value:
            if not NAME.match(name):
                raise ValueError(f"upstream name {name!r}: 1-64 of a-z, 0-9, '.', '_', '-'")
        return value
