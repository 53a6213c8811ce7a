"""Who is calling: the request's credential → an Identity (or None: anonymous).

One credential decides, in this order (the first one present is the one checked; a bad one is
a 401 even if another would have passed, as Kong's auth plugins do; a credential field sent
twice is a 400):
1. the API key field (`credentials.api_key_header`, X-API-Key by default), or an
   `Authorization: Bearer sk_...` carrying an API key;
2. an `Authorization: Bearer` JWT whose issuer the table declares (a bearer token of another
   kind, such as the monolith's own session token, is left alone and not a credential here);
3. on the internal listener, the verified client certificate's subject (mTLS; the handshake
   already refused a certificate the CA did not sign).

Keys are looked up in the consumers registry every replica follows (store/consumers.py). It
fails closed: before the registry was ever read every key is refused with 503 (it may be
valid: retry), and when the store has been unreadable longer than `credentials_grace` the last
registry read stops being trusted (503 again); within that grace the keys it knows keep working
and unknown ones are refused (401).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.access import CredentialRefused
from proxy.access.jwt import IssuerSpec, JwtVerifier, UntrustedIssuer, bearer_of
from proxy.access.policy import Identity, unauthenticated
from proxy.errors import ProxyError
from proxy.table.access import JwtIssuer
from proxy.table.compile import CredentialPolicy

if TYPE_CHECKING:
    from proxy.access.consumers import Consumer, Registry

log = logging.getLogger("strangler")
Headers = Sequence[tuple[bytes, bytes]]
KEY_PREFIX = "sk_"
AUTHORIZATION = b"authorization"


def _field(headers: Headers, wanted: bytes) -> str | None:
    """The one value of a credential field; two are refused (400): the proxy would check one
    and an upstream given both might read the other (RFC 9110 §5.3: such a field is a list
    only when its definition says so)."""
    found: bytes | None = None
    for name, value in headers:
        if name == wanted:
            if found is not None:
                raise ProxyError(
                    400, "bad-credential", f"the {wanted.decode()} field is sent more than once"
                )
            found = value
    return None if found is None else found.decode("latin-1").strip()


def _bearer(headers: Headers) -> str | None:
    value = _field(headers, AUTHORIZATION)
    return None if value is None else bearer_of(value)


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


def issuer_specs(issuers: tuple[JwtIssuer, ...]) -> list[IssuerSpec]:
    """The verifier's form of the table's issuers."""
    return [
        IssuerSpec(
            issuer=i.issuer,
            audiences=tuple(i.audience),
            algorithms=tuple(i.algorithms),
            jwks_url=i.jwks_url,
            key_file=Path(i.key_file) if i.key_file else None,
            secret_file=Path(i.secret_file) if i.secret_file else None,
            leeway=i.leeway,
            refresh=i.refresh,
            subject_claim=i.subject_claim,
        )
        for i in issuers
    ]


class Gate:
    """The worker's view of consumers and token issuers, and the identification step."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.registry: Registry | None = None
        self.fresh_at = 0.0  # monotonic time the registry was last read (0: never)
        self.fresh: Any = None  # a callable giving the follower's fresh_at, once following
        self._issuers: tuple[JwtIssuer, ...] = ()
        self.verifier: JwtVerifier | None = None
        self._wanted: JwtVerifier | None = None  # the verifier of the latest issuers
        self._tasks: set[asyncio.Task[None]] = set()

    # --- what the follower and the runtime call ------------------------------------------------
    def use(self, registry: Registry) -> None:
        self.registry = registry
        self.fresh_at = time.monotonic()

    def issuers(self, issuers: tuple[JwtIssuer, ...]) -> None:
        """Follow the table's issuers: a new verifier (its keys fetched in the background)
        when they changed; the old one stops."""
        if issuers == self._issuers:
            return
        self._issuers = issuers
        new = self._wanted = JwtVerifier(issuer_specs(issuers)) if issuers else None
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # compiling at start, before the loop: start() starts it
            self.verifier = new
            return
        self._spawn(self._replace(new))

    async def _replace(self, new: JwtVerifier | None) -> None:
        """The new issuers' keys are fetched before their verifier takes over; the old one
        serves until then. A change overtaken by a later one while it fetched never takes over."""
        if new is not None:
            try:
                await new.start()
            except BaseException:  # cancelled by stop(): its session must not leak
                await new.stop()
                raise
        if new is not self._wanted:
            if new is not None:
                await new.stop()
            return
        old, self.verifier = self.verifier, new
        if old is not None:
            await old.stop()

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        if self.verifier is not None:
            await self.verifier.start()

    async def stop(self) -> None:
        if self.verifier is not None:
            await self.verifier.stop()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- the request path -------------------------------------------------------------------
    def identify(
        self, headers: Headers, credentials: CredentialPolicy, subject: str | None
    ) -> Identity | None:
        """The caller's identity, None when it presented no credential; raises the 401/503
        ProxyError for one that cannot be accepted."""
        key = _field(headers, credentials.api_key_header)
        if key is not None:
            return self._by_key(key, credentials, credentials.api_key_header)
        token = _bearer(headers)
        if token is not None:
            if token.startswith(KEY_PREFIX):
                return self._by_key(token, credentials, AUTHORIZATION)
            if self.verifier is not None and _looks_like_jwt(token):
                identity = self._by_token(token, credentials)
                if identity is not None:
                    return identity
        if subject is not None:
            consumer = self._registry().by_subject(subject)
            if consumer is not None:
                return Identity(consumer.name, frozenset(consumer.groups), "mtls", None)
        return None

    def _registry(self) -> Registry:
        registry = self.registry
        fresh_at = self.fresh() if self.fresh is not None else self.fresh_at
        if registry is None or not fresh_at or time.monotonic() - fresh_at > self.grace:
            raise ProxyError(
                503,
                "credentials-unavailable",
                "the consumer store cannot be read: credentials cannot be checked now",
                retry_after=1,
            )
        return registry

    def _by_key(self, key: str, credentials: CredentialPolicy, field: bytes) -> Identity:
        consumer = self._registry().by_key(key, time.time())
        if consumer is None:
            raise unauthenticated(credentials, "the API key is unknown or revoked", invalid=True)
        return _identity(consumer, "key", field)

    def _by_token(self, token: str, credentials: CredentialPolicy) -> Identity | None:
        assert self.verifier is not None
        try:
            verified = self.verifier.verify(token)
        except UntrustedIssuer:
            return None  # not this proxy's credential (e.g. the monolith's session token)
        except CredentialRefused as exc:
            raise unauthenticated(
                credentials, f"the token is refused: {exc}", invalid=True
            ) from None
        consumer = self._registry().by_jwt(verified.issuer, verified.subject)
        if consumer is None:
            raise unauthenticated(
                credentials,
                f"the token's subject {verified.subject!r} is not a consumer",
                invalid=True,
            )
        return _identity(consumer, "jwt", AUTHORIZATION)


def _identity(consumer: Consumer, via: str, field: bytes) -> Identity:
    return Identity(consumer.name, frozenset(consumer.groups), via, field)
