"""Who may call what, as the route table declares it (pure: no I/O).

    credentials:                       # how callers prove who they are (table-wide)
      api_key_header: X-API-Key        # a consumer's key (`strangler consumers add`)
      jwt:                             # tokens from identity providers one trusts
        - issuer: https://idp.partner.example
          audience: [strangler]
          jwks_url: https://idp.partner.example/.well-known/jwks.json
          algorithms: [RS256]
    access: {groups: [staff]}          # the default of routes without their own (optional)
    paths: {case_insensitive: true}    # how protecting decisions read a path
    routes:
      - name: partner-orders
        match: {path: /api/v1/orders}
        to: orders
        access:                        # any rule that matches lets the caller in
          - {groups: [partners], methods: [GET]}
          - {consumers: [back-office]}
        rate_limit: {rate: 100/minute, burst: 20/second, by: consumer}
      - name: health
        match: {path: /health}
        to: monolith
        access: public                 # opts out of the table's default

Rules, as Kong's key-auth + acl and Envoy's RBAC have them: a rule names consumers and/or groups
(neither: any identified consumer) and optionally the methods it allows; a caller matching no
rule is refused (401 without a credential, 403 with one). Consumers are identified by an API key
(the `api_key_header`), a bearer JWT from a declared issuer (its `iss` and subject claim), or, on
the internal listener, a verified client certificate's subject (Istio's service identities).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from proxy.table.fields import NAME, TOKEN, Duration, Strict

# One limit in the `limits` library's notation: "100/minute", "5 per second", "1000/2 hours".
RATE = re.compile(
    r"^\s*[1-9][0-9]{0,8}\s*(?:/|per)\s*(?:[1-9][0-9]{0,5}\s*)?"
    r"(?:second|minute|hour|day|month|year)s?\s*$",
    re.IGNORECASE,
)
# RFC 8725 §3.1: an allowlist of algorithms per key; `none` is never one of them.
JWT_ALGORITHMS = frozenset(
    {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"}
)


def _rules(value: object) -> object:
    """`public` is no rules (anyone may call); a single object is a list of one (`access:
    {groups: [a]}`); an empty list would refuse everyone, which no one means."""
    if value == "public":
        return ()
    if isinstance(value, list) and not value:
        raise ValueError("list at least one rule, or say `public`")
    return [value] if isinstance(value, dict) else value


class AccessRule(Strict):
    """One way in: the consumers and groups it admits (neither: any identified consumer), and
    the methods they may use (all when absent)."""

    consumers: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    methods: tuple[str, ...] | None = None

    @field_validator("consumers", "groups")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not NAME.match(name):
                raise ValueError(f"{name!r}: a name is 1-64 of a-z, 0-9, '.', '_', '-'")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("list at least one method, or leave `methods` out for all")
        upper = tuple(method.upper() for method in value)
        for method in upper:
            if not TOKEN.match(method):
                raise ValueError(f"{method!r} is not a method")
        return upper


# Rules, or `public` (no rules: anyone; on a route, it opts out of the table's default).
Access = Annotated[tuple[AccessRule, ...], BeforeValidator(_rules)]


class RateLimit(Strict):
    """Requests per consumer (or client address) on one route, shared by every replica."""

    rate: str = Field(description="one limit, e.g. 100/minute")
    burst: str | None = Field(None, description="a second, shorter limit, e.g. 20/second")
    by: Literal["consumer", "client"] = Field(
        "consumer", description="consumer: the identified caller, else its address"
    )
    strategy: Literal["sliding-window", "moving-window", "fixed-window"] = "sliding-window"

    @field_validator("rate", "burst")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None and not RATE.match(value):
            raise ValueError(f"{value!r} is not one limit such as 100/minute or 5 per second")
        return value

    @model_validator(mode="after")
    def _limits(self) -> RateLimit:
        """The limiter's own rules too (a burst shorter than the rate, windows it knows):
        only tables with a rate limit pay for importing it."""
        from proxy.access.ratelimit import RateSpec

        RateSpec(rate=self.rate, burst=self.burst, strategy=self.strategy, by=self.by)
        return self


class JwtIssuer(Strict):
    """An identity provider whose tokens identify consumers (by `iss` and the subject claim)."""

    issuer: str = Field(min_length=1)
    audience: Annotated[
        tuple[str, ...], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)
    ] = ()
    algorithms: tuple[str, ...] = ("RS256",)
    jwks_url: str | None = None
    key_file: str | None = Field(None, description="a PEM public key or a JWKS file")
    secret_file: str | None = Field(None, description="an HMAC secret (HS256/384/512)")
    leeway: Duration = Field(30.0, ge=0, le=600)
    refresh: Duration = Field(300.0, ge=10, le=86_400)
    subject_claim: str = Field("sub", min_length=1)

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one algorithm")
        for algorithm in value:
            if algorithm not in JWT_ALGORITHMS:
                raise ValueError(f"{algorithm!r} is not one of {', '.join(sorted(JWT_ALGORITHMS))}")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("jwks_url is an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> JwtIssuer:
        sources = [s for s in (self.jwks_url, self.key_file, self.secret_file) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of jwks_url, key_file and secret_file")
        hmac = {a for a in self.algorithms if a.startswith("HS")}
        if self.secret_file is not None and hmac != set(self.algorithms):
            raise ValueError("a secret_file signs HS256/384/512 only")
        if self.secret_file is None and hmac:
            # RFC 8725 §2.1: an HMAC algorithm on a public key is the algorithm confusion attack.
            raise ValueError("HS algorithms need a secret_file, never a public key")
        return self


class Credentials(Strict):
    api_key_header: str = Field("X-API-Key", description="the header carrying a consumer's key")
    jwt: tuple[JwtIssuer, ...] = ()

    @field_validator("api_key_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not TOKEN.match(value) or value.lower() in {"authorization", "cookie", "host"}:
            raise ValueError(f"{value!r} cannot carry API keys")
        return value

    @field_validator("jwt")
    @classmethod
    def _issuers(cls, value: tuple[JwtIssuer, ...]) -> tuple[JwtIssuer, ...]:
        seen = [issuer.issuer for issuer in value]
        if len(seen) != len(set(seen)):
            raise ValueError("each issuer is declared once")
        return value


class Paths(Strict):
    """How the decisions that protect something (exposure, access) read a request's path."""

    case_insensitive: bool = Field(
        False, description="the backends fold case: /ADMIN is /admin to them"
    )
    escaped_slashes: Literal["check", "refuse"] = Field(
        "check",
        description="check: %2F allowed where it routes as '/' would; refuse: always 400",
    )
