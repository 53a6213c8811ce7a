"""Proxy settings: `strangler serve` flags or STRANGLER_* environment variables.

Every default limit names its precedent.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from types import SimpleNamespace
from typing import Literal, cast

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def parse_listen(value: str) -> tuple[str, int] | None:
    """'HOST:PORT', ':PORT' (every interface) or 'off' → (host, port) or None."""
    if value.strip().lower() in {"", "off", "none"}:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - ':8080' means every interface
    return host, int(port)


class ProxySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STRANGLER_", extra="ignore")

    routes: Path | None = Field(None, description="routes.yaml to serve and watch")
    default_upstream: str | None = Field(
        None, description="with no routes file: send everything to this URL"
    )
    listen: str = ":8080"
    internal_listen: str = ":8081"
    admin_listen: str = "127.0.0.1:9090"
    # Bearer token for the admin API's writes; without one the API is read-only, and the admin
    # listener must be on a loopback address.
    admin_token: str | None = Field(None, repr=False)
    workers: int = Field(1, ge=1, le=256)
    # Peers whose X-Forwarded-* headers are kept and extended (a load balancer in front).
    trusted_hops: list[str] = Field(default_factory=list)
    via_name: str = Field("strangler", pattern=r"^[a-z0-9._-]{1,64}$")
    access_log: bool = True
    watch_interval: float = Field(1.0, gt=0, description="seconds between routes.yaml checks")
    # Where versions live: "file" (routes.yaml and its history beside it) or a redis:// URL that
    # every replica shares (an empty Redis store is seeded from `routes`).
    store: str = Field("file", pattern=r"^(file|rediss?://.+|unix://.+)$")
    store_prefix: str = Field("strangler:routes:", min_length=1, max_length=200)
    # With a Redis store: seconds between checks of the current version (heals a subscription
    # that was lost without notice); the pub/sub notification itself arrives at once.
    store_poll_interval: float = Field(1.0, gt=0, le=60)
    # With a Redis store: the last table this replica served, to start from when Redis is down.
    store_cache: Path = Path("var/routes-last-known-good.yaml")
    # Where a replica keeps its local state with the file store: shadow reports and recordings
    # (shadow/), shared by its workers and read by `strangler shadow report` and `record`.
    state_dir: Path = Path("var")
    # Who may call what (proxy/access/). Consumers and their credentials live beside the
    # route table: with the file store in this JSON file (its audit log beside it), with a
    # Redis store under `consumers_prefix`.
    consumers: Path = Path("var/consumers.json")
    consumers_prefix: str = Field("strangler:consumers:", min_length=1, max_length=200)
    # Fail closed: while the consumer store cannot be read, keys this replica already knows keep
    # working this long after its last successful read; then every credential is refused (503).
    credentials_grace: float = Field(300.0, gt=0, le=86_400)
    # Rate limits shared by replicas: a redis:// URL (by default the route store's Redis, if
    # any). Without one, or while it is down, each worker enforces its share of each limit.
    rate_limit_store: str | None = Field(None, pattern=r"^(rediss?://.+|unix://.+)$")
    # TLS on the external listener (PEM files, reloaded when they change: new handshakes use
    # the new certificate, open connections keep theirs), and on the internal one, which may
    # also require client certificates signed by `internal_client_ca` (mTLS identities).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    internal_tls_cert: Path | None = None
    internal_tls_key: Path | None = None
    internal_client_ca: Path | None = None
    tls_reload_interval: float = Field(1.0, gt=0, le=3600)
    # Which listeners' responses carry the route-table version that served them.
    version_header: Literal["internal", "all", "off"] = "internal"

    # Limits (see the README's table). nginx: large_client_header_buffers 4 8k.
    max_uri_bytes: int = Field(8_192, ge=256)
    max_header_bytes: int = Field(32_768, ge=1_024)
    # Envoy's max_headers_count default.
    max_headers: int = Field(100, ge=8)
    # Apache mod_reqtimeout's header=20 (nginx client_header_timeout is 60s, slow for slowloris).
    header_timeout: float = Field(20.0, gt=0)
    # nginx client_body_timeout: 60s between two body reads.
    body_idle_timeout: float = Field(60.0, gt=0)
    # nginx send_timeout: a client that reads nothing this long loses its (streamed) answer,
    # and the upstream connection it held is freed.
    send_timeout: float = Field(60.0, gt=0)
    # nginx keepalive_timeout 75s (mobile clients reuse connections across screens).
    keepalive_timeout: float = Field(75.0, gt=0)
    # Envoy's circuit-breaker default: 1,024 concurrent requests (per worker here).
    max_in_flight: int = Field(1_024, ge=1)
    # One client address may hold at most this many at once (nginx limit_conn, set by hand).
    max_in_flight_per_client: int = Field(256, ge=1)
    # Request bodies up to this size are read whole before an upstream connection is taken
    # (nginx's proxy_request_buffering): a slow upload holds no upstream connection, and a
    # retry or a fallback can send the body again. Larger bodies stream and are never re-sent.
    request_buffer: int = Field(65_536, ge=0, le=64 * 1024 * 1024)
    # One client address may hold at most this share of an upstream's request slots (its
    # max_requests), so one client's slow downloads cannot take every connection to the
    # monolith (nginx's limit_conn, per upstream).
    upstream_share_per_client: float = Field(0.5, gt=0, le=1)
    # HTTP/1.1 pipelined requests queued on one connection before it is refused.
    max_pipelined: int = Field(16, ge=1)
    # The upstream side of the data plane: "h1", the proxy's own HTTP/1.1 client
    # (dataplane/h1client.py), or "aiohttp", the client it replaces, kept selectable until
    # the new one has served as long.
    upstream_client: Literal["h1", "aiohttp"] = "h1"
    # Kubernetes' default termination grace period.
    graceful_timeout: float = Field(30.0, gt=0)

    @field_validator("listen", "internal_listen", "admin_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("trusted_hops")
    @classmethod
    def _trusted(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> ProxySettings:
        for cert, key, name in (
            (self.tls_cert, self.tls_key, "tls"),
            (self.internal_tls_cert, self.internal_tls_key, "internal_tls"),
        ):
            if (cert is None) != (key is None):
                raise ValueError(f"{name}_cert and {name}_key go together")
        if self.internal_client_ca is not None and self.internal_tls_cert is None:
            raise ValueError("internal_client_ca needs internal_tls_cert and internal_tls_key")
        return self


def plain(settings: ProxySettings) -> ProxySettings:
    """The same values as plain attributes, for the request path to read. A pydantic model's
    every attribute read goes through its `__getattr__` hook, which the interpreter cannot
    specialise: ~400 instructions a read, a dozen reads a request; a namespace's is a dict
    lookup. Read-only, as the settings are once the worker runs."""
    values = {name: getattr(settings, name) for name in type(settings).model_fields}
    return cast(ProxySettings, SimpleNamespace(**values))
