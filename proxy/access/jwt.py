"""JWT credentials: a bearer token (RFC 6750) checked against the issuers the proxy trusts, as
Kong's jwt plugin and Envoy's jwt_authn filter do.

Which issuer: the token's header and its *unverified* `iss` are read first, only to pick the
issuer; the token is then verified with that issuer's keys and algorithms alone. An `iss` no
issuer names exactly is refused (RFC 8725 §3.8: validate the issuer; Kong's `key_claim_name`
lookup, Envoy's `issuer` match).

Algorithms (RFC 8725 §2.1, §3.1): each issuer allows a fixed list, set beside its keys, never
taken from the token; `none` is never allowed. Every key is bound to the algorithms of its own
type (RSA: RS256 RS384 RS512 PS256; EC P-256: ES256, P-384: ES384; Ed25519: EdDSA; a secret:
HS256 HS384 HS512), narrowed to its JWK `alg` when it has one, so a public key is never used as
an HMAC secret (the algorithm confusion attack); an issuer's keys are either HMAC secrets or
public keys, never both. Keys below RFC 7518's sizes (an HMAC secret shorter than its hash, an
RSA key under 2,048 bits) are not used.

Claims (RFC 7519 §4.1): `exp` is required and, like `nbf` and `iat` when present, must be a
NumericDate; the token is refused once `now >= exp + leeway`, before `nbf - leeway`, and when
issued after `now + leeway`. `aud` (a string or a list) must contain one of the issuer's
audiences, if it has any. The subject claim (`sub` unless the issuer says otherwise) must be a
non-empty string: it names the caller.

Keys come from a PEM public key (or certificate) file, a JWKS file, an HMAC secret file (its
bytes, stripped), or a JWKS URL. Files are read when the verifier is made: one that gives no
usable key is logged as an error and its issuer's tokens are refused (start reads it again;
`key_file_problem` lets the table's loader refuse it first). A JWKS URL is fetched once at
start (at most 5 s; an issuer whose JWKS does not answer is logged and its tokens are refused
until it does), then every `refresh` seconds by one background task, as Envoy's jwt_authn
caches remote JWKS. A token naming a key id the issuer does not have (or an issuer still
without keys) asks for an early refresh, at most once per 10 s per issuer, so random key ids
cannot make the proxy hammer the identity provider; that token itself is refused. A failed
fetch keeps the last good keys (one warning per outage, one info line when the JWKS answers
again) and is tried again after at most 30 s. Only http(s) URLs; a body over 1 MB is refused;
keys whose `use` is not `sig`, or whose algorithm the issuer does not allow, are skipped.

Verified tokens are cached by their text (up to 10,000, least recently used first out), so a
client repeating its token costs one dict lookup; every hit still checks `exp`, `nbf` and `iat`
with the leeway, and an issuer's cached tokens are forgotten when its keys change (a key
removed from the JWKS stops its tokens at the next refresh).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from yarl import URL

from proxy.access import CredentialRefused

log = logging.getLogger("strangler")

HMAC = ("HS256", "HS384", "HS512")
RSA = ("RS256", "RS384", "RS512", "PS256")
CURVES = {"P-256": "ES256", "P-384": "ES384"}  # JWK `crv` → the one algorithm of that curve
ALGORITHMS = frozenset((*HMAC, *RSA, *CURVES.values(), "EdDSA"))
CACHE_SIZE = 10_000
REFETCH_INTERVAL = 10.0  # seconds between two early refreshes of one issuer
RETRY_AFTER_FAILURE = 30.0  # a failed JWKS fetch is tried again after at most this
FETCH_TIMEOUT = 5.0
MAX_JWKS_BYTES = 1 << 20
MAX_TOKEN = 16 * 1024  # characters; a bigger credential is no JWT this proxy accepts


class UntrustedIssuer(CredentialRefused):
    """A token of an issuer the table does not declare: not a credential of this proxy (the
    monolith's own session tokens are JWTs too), so it identifies no one rather than failing."""


@dataclass(frozen=True)
class IssuerSpec:
    """One trusted issuer: its exact `iss`, its audiences, its algorithms and one key source."""

    issuer: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    jwks_url: str | None = None
    key_file: Path | None = None
    secret_file: Path | None = None
    leeway: float = 30.0
    refresh: float = 300.0
    subject_claim: str = "sub"

    def __post_init__(self) -> None:
        object.__setattr__(self, "audiences", tuple(self.audiences))
        object.__setattr__(self, "algorithms", tuple(self.algorithms))
        problem = _spec_problem(self)
        if problem:
            raise ValueError(f"JWT issuer {self.issuer!r}: {problem}")


def _spec_problem(spec: IssuerSpec) -> str | None:
    sources = [s for s in (spec.jwks_url, spec.key_file, spec.secret_file) if s is not None]
    unknown = sorted(set(spec.algorithms) - ALGORITHMS)
    hmac = [a for a in spec.algorithms if a in HMAC]
    if not spec.issuer:
        return "the issuer is empty"
    if not spec.algorithms or unknown:
        return f"algorithms must be some of {', '.join(sorted(ALGORITHMS))} (not {unknown})"
    if len(sources) != 1:
        return "exactly one of jwks_url, key_file and secret_file is needed"
    if spec.secret_file is not None and len(hmac) != len(spec.algorithms):
        return "a secret_file verifies HS256, HS384 or HS512 only"
    if spec.secret_file is None and hmac:
        return f"{', '.join(hmac)} need a secret_file (a public key is no HMAC secret)"
    if spec.jwks_url is not None and not _web_url(spec.jwks_url):
        return f"jwks_url must be an http(s) URL, not {spec.jwks_url!r}"
    if not (math.isfinite(spec.leeway) and spec.leeway >= 0):
        return "leeway must be a number of seconds, 0 or more"
    if not (math.isfinite(spec.refresh) and spec.refresh > 0):
        return "refresh must be a positive number of seconds"
    if not spec.subject_claim:
        return "subject_claim is empty"
    return None


def _web_url(text: str) -> bool:
    try:
        url = URL(text)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.host)


@dataclass(frozen=True, slots=True)
class Verified:
    """A verified token: who issued it, whom it names, all its claims (not to be modified:
    the same object answers every repetition of the token) and its `exp`."""

    issuer: str
    subject: str
    claims: dict[str, Any]
    expires: float | None


def bearer_of(value: str) -> str | None:
    """The token of an `Authorization` value `Bearer <token>`; None for another scheme or no
    token (RFC 6750 §2.1; the scheme is case-insensitive)."""
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def bearer_token(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The token of the request's (first) `Authorization: Bearer <token>` header; None when
    there is none or it uses another scheme."""
    for name, value in headers:
        if name.lower() == b"authorization":
            return bearer_of(value.decode("latin-1"))
    return None


# --- keys -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Keys:
    """An issuer's usable keys, each bound to one algorithm."""

    named: dict[str, tuple[jwt.PyJWK, ...]]  # by `kid`
    unnamed: tuple[jwt.PyJWK, ...]  # keys without a `kid` are tried for any token
    fingerprint: frozenset[str]  # tells a changed key set from a refetched one
    skipped: tuple[str, ...] = ()  # the keys not used, and why

    def for_token(self, kid: str | None, alg: str) -> list[jwt.PyJWK] | None:
        """The keys to try on a token, or None when its `kid` names no key here."""
        if kid is None:
            keys: Iterable[jwt.PyJWK] = (*self.unnamed, *chain.from_iterable(self.named.values()))
        elif kid in self.named or self.unnamed:
            keys = (*self.named.get(kid, ()), *self.unnamed)
        else:
            return None
        return [key for key in keys if key.algorithm_name == alg]


def _key_algorithms(jwk: Mapping[str, Any], allowed: Sequence[str]) -> list[str]:
    """The allowed algorithms a JWK may verify: its `alg`, else those of its type."""
    if "alg" in jwk:
        return [jwk["alg"]] if jwk["alg"] in allowed else []
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        family: Sequence[str] = RSA
    elif kty == "EC":
        family = [CURVES[crv]] if isinstance(crv, str) and crv in CURVES else []
    elif kty == "OKP":
        family = ["EdDSA"] if crv == "Ed25519" else []
    elif kty == "oct":
        family = HMAC
    else:
        family = []
    return [alg for alg in family if alg in allowed]


def _usable(jwk: Any, allowed: Sequence[str]) -> tuple[list[jwt.PyJWK], str]:
    """A JWK's keys, one per algorithm it may verify, or none and why."""
    if not isinstance(jwk, Mapping):
        return [], "not a JWK object"
    if jwk.get("use", "sig") != "sig":
        return [], f"use {jwk.get('use')!r}"
    if "key_ops" in jwk and "verify" not in (jwk["key_ops"] or ()):
        return [], "key_ops without verify"
    if "kid" in jwk and not isinstance(jwk["kid"], str):
        return [], "kid is not a string"
    algorithms = _key_algorithms(jwk, allowed)
    if not algorithms:
        return [], f"no allowed algorithm for kty {jwk.get('kty')!r}"
    keys = []
    for alg in algorithms:
        try:
            key = jwt.PyJWK(dict(jwk), algorithm=alg)
        except jwt.PyJWTError as exc:
            return [], str(exc)
        weak = key.Algorithm.check_key_length(key.key)
        if weak:
            return [], weak
        keys.append(key)
    return keys, ""


def _keyset(jwks: Any, allowed: Sequence[str], where: str) -> _Keys:
    """The usable keys of a JWKS document (or of one JWK); ValueError when it has none."""
    if isinstance(jwks, dict) and "kty" in jwks:
        jwks = {"keys": [jwks]}
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError(f"{where}: not a JWK set")
    named: dict[str, list[jwt.PyJWK]] = {}
    unnamed: list[jwt.PyJWK] = []
    prints, skipped = set(), []
    for jwk in jwks["keys"]:
        keys, why = _usable(jwk, allowed)
        if not keys:
            skipped.append(f"{jwk.get('kid', '?') if isinstance(jwk, dict) else '?'}: {why}")
            continue
        for key in keys:
            kid = key.key_id
            (named.setdefault(kid, []) if kid is not None else unnamed).append(key)
            prints.add(f"{key.algorithm_name} {json.dumps(jwk, sort_keys=True)}")
    if not prints:
        raise ValueError(f"{where}: no usable key ({'; '.join(skipped) or 'empty'})")
    named_keys = {kid: tuple(keys) for kid, keys in named.items()}
    return _Keys(named_keys, tuple(unnamed), frozenset(prints), tuple(skipped))


def _pem_jwk(data: bytes) -> dict[str, Any]:
    """The JWK of a PEM public key or certificate."""
    if b"-----BEGIN CERTIFICATE-----" in data:
        public: Any = x509.load_pem_x509_certificate(data).public_key()
    else:
        public = load_pem_public_key(data)
    if isinstance(public, rsa.RSAPublicKey):
        return RSAAlgorithm.to_jwk(public, as_dict=True)
    if isinstance(public, ec.EllipticCurvePublicKey):
        return ECAlgorithm.to_jwk(public, as_dict=True)
    if isinstance(public, ed25519.Ed25519PublicKey):
        return OKPAlgorithm.to_jwk(public, as_dict=True)
    raise ValueError(f"unsupported public key type {type(public).__name__}")


def _file_keys(spec: IssuerSpec) -> _Keys:
    """The keys of an issuer's key or secret file; ValueError when it gives none."""
    if spec.secret_file is not None:
        path, secret = spec.secret_file, spec.secret_file.read_bytes().strip()
        jwks: Any = {"kty": "oct", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode()}
    else:
        assert spec.key_file is not None
        path, data = spec.key_file, spec.key_file.read_bytes()
        try:
            jwks = json.loads(data) if data.lstrip().startswith(b"{") else _pem_jwk(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"{path}: neither a PEM public key nor a JWK set ({exc})") from exc
    return _keyset(jwks, spec.algorithms, str(path))


def key_file_problem(spec: IssuerSpec) -> str | None:
    """Why the issuer's key or secret file gives no usable key (None when it does, or when
    its keys come from a JWKS URL)."""
    if spec.jwks_url is not None:
        return None
    try:
        _file_keys(spec)
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


# --- claims ---------------------------------------------------------------------------------------
def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # an int beyond any date stays NaN
            number = float(value)
    if not math.isfinite(number):
        raise CredentialRefused(f"the token's {name} is not a NumericDate")
    return number


def _check_times(
    exp: float, nbf: float | None, iat: float | None, leeway: float, now: float
) -> None:
    if now >= exp + leeway:
        raise CredentialRefused("the token has expired")
    if nbf is not None and now < nbf - leeway:
        raise CredentialRefused("the token is not valid yet (nbf)")
    if iat is not None and iat > now + leeway:
        raise CredentialRefused("the token is issued in the future (iat)")


def _check_audience(aud: Any, audiences: tuple[str, ...]) -> None:
    named = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in audiences for a in named):
        raise CredentialRefused("the token is not meant for this audience")


@dataclass(frozen=True, slots=True)
class _Cached:
    verified: Verified
    exp: float
    nbf: float | None
    iat: float | None
    leeway: float


def _checked(spec: IssuerSpec, claims: dict[str, Any], now: float) -> _Cached:
    """The verified token of a correctly signed one, if its claims allow it now."""
    exp = _numeric_date(claims, "exp")
    if exp is None:
        raise CredentialRefused("the token has no exp")
    nbf, iat = _numeric_date(claims, "nbf"), _numeric_date(claims, "iat")
    _check_times(exp, nbf, iat, spec.leeway, now)
    if spec.audiences:
        _check_audience(claims.get("aud"), spec.audiences)
    subject = claims.get(spec.subject_claim)
    if not isinstance(subject, str) or not subject:
        raise CredentialRefused(f"the token's {spec.subject_claim} is missing or not a string")
    return _Cached(Verified(spec.issuer, subject, claims, exp), exp, nbf, iat, spec.leeway)


# --- the verifier ---------------------------------------------------------------------------------
@dataclass(eq=False, slots=True)
class _Issuer:
    spec: IssuerSpec
    keys: _Keys | None = None
    due: float = 0.0  # monotonic time of the next scheduled JWKS fetch
    forced: float = -math.inf  # monotonic time of the last early refresh asked for
    failing: bool = False


@dataclass(eq=False)
class _Refresher:
    """The JWKS issuers' background refresh: one task, woken early by unknown key ids."""

    issuers: list[_Issuer]
    session: aiohttp.ClientSession
    wanted: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class JwtVerifier:
    def __init__(self, issuers: Sequence[IssuerSpec]) -> None:
        self._issuers: dict[str, _Issuer] = {}
        for spec in issuers:
            if spec.issuer in self._issuers:
                raise ValueError(f"JWT issuer {spec.issuer!r} is configured twice")
            self._issuers[spec.issuer] = _Issuer(spec)
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._jws = jwt.PyJWS(sorted(ALGORITHMS), {"enforce_minimum_key_length": True})
        self._refresher: _Refresher | None = None
        self._load_files()

    def issuers(self) -> list[str]:
        return list(self._issuers)

    # --- the request path -------------------------------------------------------------------------
    def verify(self, token: str, now: float | None = None) -> Verified:
        """The verified token, or CredentialRefused saying why not (see the module header)."""
        now = time.time() if now is None else now
        cached = self._cache.get(token)
        if cached is not None:
            try:
                _check_times(cached.exp, cached.nbf, cached.iat, cached.leeway, now)
            except CredentialRefused:
                del self._cache[token]
                raise
            self._cache.move_to_end(token)
            return cached.verified
        header, claims = self._unverified(token)
        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise UntrustedIssuer("the token's issuer is not trusted")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.spec.algorithms:
            raise CredentialRefused("the token's algorithm is not allowed for its issuer")
        self._check_signature(token, issuer, header.get("kid"), alg)
        entry = _checked(issuer.spec, claims, now)
        self._cache[token] = entry
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return entry.verified

    def _unverified(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The token's header and claims, before any check of its signature."""
        if len(token) > MAX_TOKEN:
            raise CredentialRefused("the token is too long")
        try:
            decoded = self._jws.decode_complete(token, options={"verify_signature": False})
            claims = json.loads(decoded["payload"])
        except (jwt.PyJWTError, ValueError, RecursionError) as exc:
            raise CredentialRefused("the credential is not a JWT") from exc
        if not isinstance(claims, dict):
            raise CredentialRefused("the credential is not a JWT")
        return decoded["header"], claims

    def _check_signature(self, token: str, issuer: _Issuer, kid: str | None, alg: str) -> None:
        if issuer.keys is None:
            self._want(issuer)
            raise CredentialRefused("the keys of the token's issuer are not available")
        keys = issuer.keys.for_token(kid, alg)
        if keys is None:
            self._want(issuer)
            raise CredentialRefused("the token's key id is unknown")
        if not keys:
            raise CredentialRefused("no key of the token's issuer verifies its algorithm")
        for key in keys:
            try:
                self._jws.decode_complete(token, key=key, algorithms=[alg])
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise CredentialRefused(f"the token cannot be verified ({exc})") from exc
            return
        raise CredentialRefused("the token's signature does not verify")

    def _want(self, issuer: _Issuer) -> None:
        """Ask for an early JWKS refresh of `issuer`, at most once per REFETCH_INTERVAL."""
        refresher, now = self._refresher, time.monotonic()
        if refresher is None or issuer.spec.jwks_url is None:
            return
        if now - issuer.forced < REFETCH_INTERVAL:
            return
        issuer.forced = now
        refresher.wanted.add(issuer.spec.issuer)
        refresher.wake.set()

    def _set_keys(self, issuer: _Issuer, keys: _Keys) -> None:
        """Use `keys` for `issuer`; its cached tokens go when they changed."""
        old, issuer.keys = issuer.keys, keys
        if old is not None and old.fingerprint == keys.fingerprint:
            return
        name = issuer.spec.issuer
        if keys.skipped:
            log.info("keys of %s not used: %s", name, "; ".join(keys.skipped))
        for token in [t for t, c in self._cache.items() if c.verified.issuer == name]:
            del self._cache[token]

    # --- the keys' life ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Read again the key files that gave no key, fetch every JWKS once (at most
        FETCH_TIMEOUT) and start refreshing. Never raises: what fails is logged."""
        if self._refresher is not None:
            return
        self._load_files()
        remote = [i for i in self._issuers.values() if i.spec.jwks_url is not None]
        if not remote:
            return
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
        refresher = _Refresher(remote, aiohttp.ClientSession(timeout=timeout))
        self._refresher = refresher
        await asyncio.gather(*(self._fetch(i, refresher.session) for i in remote))
        if self._refresher is refresher:  # not stopped meanwhile
            refresher.task = asyncio.create_task(self._refresh(refresher), name="jwks-refresh")

    def _load_files(self) -> None:
        """The keys of the file issuers that have none yet."""
        for issuer in self._issuers.values():
            if issuer.spec.jwks_url is not None or issuer.keys is not None:
                continue
            try:
                self._set_keys(issuer, _file_keys(issuer.spec))
            except (OSError, ValueError) as exc:
                log.error("keys of %s: %s; refusing its tokens", issuer.spec.issuer, exc)

    async def stop(self) -> None:
        refresher, self._refresher = self._refresher, None
        if refresher is None:
            return
        if refresher.task is not None:
            refresher.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher.task
        await refresher.session.close()

    async def _refresh(self, refresher: _Refresher) -> None:
        while True:
            due = min(i.due for i in refresher.issuers)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    await refresher.wake.wait()
            refresher.wake.clear()
            now, wanted = time.monotonic(), refresher.wanted
            refresher.wanted = set()
            batch = [i for i in refresher.issuers if i.due <= now or i.spec.issuer in wanted]
            await asyncio.gather(*(self._fetch(i, refresher.session) for i in batch))

    async def _fetch(self, issuer: _Issuer, session: aiohttp.ClientSession) -> None:
        """Fetch `issuer`'s JWKS and use its keys; a failure keeps the last good ones."""
        spec = issuer.spec
        assert spec.jwks_url is not None
        issuer.due = time.monotonic() + spec.refresh
        try:
            body = await _download(session, spec.jwks_url)
            keys = _keyset(json.loads(body), spec.algorithms, spec.jwks_url)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever the failure, the proxy keeps serving
            issuer.due = time.monotonic() + min(spec.refresh, RETRY_AFTER_FAILURE)
            if not issuer.failing:
                issuer.failing = True
                kept = "keeping its last good keys" if issuer.keys else "refusing its tokens"
                what = f"{type(exc).__name__}: {exc}"
                log.warning("JWKS of %s failed (%s): %s", spec.issuer, what, kept)
            return
        if issuer.failing:
            issuer.failing = False
            log.info("JWKS of %s answers again", spec.issuer)
        self._set_keys(issuer, keys)


async def _download(session: aiohttp.ClientSession, url: str) -> bytes:
    """The body of a 200 answer to GET `url`, refused over MAX_JWKS_BYTES."""
    async with session.get(url) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        if (response.content_length or 0) > MAX_JWKS_BYTES:
            raise ValueError(f"body over {MAX_JWKS_BYTES} bytes")
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError(f"body over {MAX_JWKS_BYTES} bytes")
        return bytes(body)
