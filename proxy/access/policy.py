"""Access decisions (pure): may this caller use this method on this route, and what the
upstream is told about the caller.

- No credential and the route has access rules: 401 with `WWW-Authenticate` naming the ways to
  present one (RFC 9110 §11.6.1; RFC 6750 §3 for bearer tokens, with `error="invalid_token"`
  when the one given was refused). A credential the proxy cannot accept is a 401 too.
- An identified caller no rule admits: 403 (RFC 9110 §15.5.4), whatever the spelling of the path
  it came by (the route was found on the canonical path, dataplane/normalize.py).
- The upstream learns who called from `X-Consumer-Id` and `X-Consumer-Groups` (Kong's field
  names), set by the proxy only: a client's copies are dropped with the other identity fields
  (dataplane/headers.py), on every route. The credential the proxy checked is removed before
  forwarding unless the route says `forward_credentials` (Kong's `hide_credentials`, inverted:
  a service that never sees a partner's key cannot leak it).
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.errors import ProxyError
from proxy.table.compile import AccessPolicy, CredentialPolicy

REALM = 'realm="strangler"'


@dataclass(frozen=True, slots=True)
class Identity:
    """An identified caller: its consumer name and groups, how it proved it (`key`, `jwt` or
    `mtls`), and the request field that carried the credential (None for a certificate)."""

    consumer: str
    groups: frozenset[str]
    via: str
    field: bytes | None


def admits(access: AccessPolicy, identity: Identity, method: str) -> bool:
    """Whether one of the rules admits `identity` using `method`."""
    for rule in access.rules:
        if rule.methods is not None and method not in rule.methods:
            continue
        if not rule.consumers and not rule.groups:
            return True
        if identity.consumer in rule.consumers or not rule.groups.isdisjoint(identity.groups):
            return True
    return False


def challenge(credentials: CredentialPolicy, invalid_token: bool = False) -> bytes:
    """The WWW-Authenticate value: a bearer token (a JWT of a declared issuer, or an API key:
    both are accepted as bearer tokens) and the API key header."""
    header = credentials.api_key_name
    bearer = f"Bearer {REALM}" + (', error="invalid_token"' if invalid_token else "")
    return f'{bearer}, ApiKey {REALM}, header="{header}"'.encode()


def unauthenticated(credentials: CredentialPolicy, detail: str, *, invalid: bool) -> ProxyError:
    return ProxyError(
        401,
        "invalid-credential" if invalid else "credential-required",
        detail,
        headers=[(b"www-authenticate", challenge(credentials, invalid))],
    )


def authorize(
    access: AccessPolicy, identity: Identity | None, method: str, credentials: CredentialPolicy
) -> None:
    """Raise the 401 or 403 that refuses the caller, or return if a rule admits it."""
    if identity is None:
        raise unauthenticated(
            credentials,
            "this route needs a credential: an API key or a bearer token",
            invalid=False,
        )
    if not admits(access, identity, method):
        raise ProxyError(
            403, "forbidden", f"the consumer {identity.consumer} may not {method} this route"
        )


def upstream_fields(
    headers: list[tuple[bytes, bytes]], identity: Identity, *, forward_credentials: bool
) -> None:
    """Tell the upstream who called (and drop the credential it does not need), in place."""
    if identity.field is not None and not forward_credentials:
        name = identity.field
        headers[:] = [(n, v) for n, v in headers if n.lower() != name]
    headers.append((b"x-consumer-id", identity.consumer.encode()))
    if identity.groups:
        headers.append((b"x-consumer-groups", ", ".join(sorted(identity.groups)).encode()))
