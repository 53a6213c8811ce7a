"""JWT credentials: which tokens the proxy accepts, from which issuers and keys, and how the
keys of a JWKS URL (served here by a real HTTP server on 127.0.0.1) follow rotations and
outages."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from proxy.access import CredentialRefused
from proxy.access.jwt import IssuerSpec, JwtVerifier, Verified, bearer_token, key_file_problem
from tests.support import free_port

ISS = "https://id.example.com/"
NOW = 1_800_000_000.0  # the clock of the tests that pass now=
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_NEXT = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
SECRET = secrets.token_urlsafe(48).encode()


def pem(private: Any) -> bytes:
    return bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def jwk(private: Any, kid: str, **extra: str) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        found = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        found = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        found = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**found, "kid": kid, **extra}


def claims(now: float = NOW, **changes: Any) -> dict[str, Any]:
    """A token's claims, valid at `now`; a change to None drops that claim."""
    made = {"iss": ISS, "sub": "alice", "aud": "api", "iat": now - 10, "exp": now + 600}
    made.update(changes)
    return {name: value for name, value in made.items() if value is not None}


def sign(key: Any, alg: str, payload: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def segment(data: dict[str, Any]) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")


def hs256_by_hand(secret: bytes, payload: dict[str, Any]) -> str:
    """An HS256 token signed with any bytes (PyJWT refuses a PEM key as an HMAC secret)."""
    signing_input = segment({"alg": "HS256", "typ": "JWT"}) + b"." + segment(payload)
    mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()


def ready(*specs: IssuerSpec) -> JwtVerifier:
    verifier = JwtVerifier(specs)
    asyncio.run(verifier.start())
    return verifier


def rs256_issuer(tmp_path: Path, **options: Any) -> IssuerSpec:
    key_file = tmp_path / "rsa.pem"
    key_file.write_bytes(pem(RSA_KEY))
    settings: dict[str, Any] = {"audiences": ("api",), "algorithms": ("RS256",), **options}
    return IssuerSpec(ISS, key_file=key_file, **settings)


def hs256_issuer(tmp_path: Path, issuer: str = ISS, **options: Any) -> IssuerSpec:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")  # the file's bytes, stripped
    return IssuerSpec(issuer, ("api",), ("HS256",), secret_file=secret_file, **options)


# --- which tokens are accepted --------------------------------------------------------------------
def test_hs256_rs256_es256_tokens_name_their_subject(tmp_path: Path) -> None:
    (tmp_path / "ec.pem").write_bytes(pem(EC_KEY))
    verifier = ready(
        hs256_issuer(tmp_path, issuer="https://hs.example/"),
        rs256_issuer(tmp_path),
        IssuerSpec("https://es.example/", ("api",), ("ES256",), key_file=tmp_path / "ec.pem"),
    )
    hs = sign(SECRET, "HS256", claims(iss="https://hs.example/", sub="hal"))
    rs = sign(RSA_KEY, "RS256", claims(sub="rosa"))
    es = sign(EC_KEY, "ES256", claims(iss="https://es.example/", sub="esther"))

    assert verifier.verify(hs, now=NOW) == Verified(
        "https://hs.example/", "hal", claims(iss="https://hs.example/", sub="hal"), NOW + 600
    )
    assert verifier.verify(rs, now=NOW).subject == "rosa"
    assert verifier.verify(es, now=NOW).issuer == "https://es.example/"
    assert verifier.verify(es, now=NOW).subject == "esther"
    assert sorted(verifier.issuers()) == sorted(["https://hs.example/", ISS, "https://es.example/"])


def test_jwks_file_keys_by_kid_and_algorithm(tmp_path: Path) -> None:
    """A JWKS file: keys chosen by kid; a key for encryption or of an algorithm the issuer
    does not allow is never used; each key verifies its own algorithm only."""
    (tmp_path / "jwks.json").write_text(
        json.dumps(
            {
                "keys": [
                    jwk(RSA_KEY, "sig", use="sig", alg="RS256"),
                    jwk(RSA_NEXT, "enc", use="enc"),
                    jwk(EC_KEY, "ec"),
                    jwk(ED_KEY, "ed"),
                ]
            }
        )
    )
    verifier = ready(
        IssuerSpec(ISS, (), ("RS256", "RS384", "EdDSA"), key_file=tmp_path / "jwks.json")
    )
    assert verifier.verify(sign(RSA_KEY, "RS256", claims(), "sig"), now=NOW).subject == "alice"
    assert verifier.verify(sign(ED_KEY, "EdDSA", claims(sub="ed"), "ed"), now=NOW).subject == "ed"
    for refused, why in [
        (sign(RSA_NEXT, "RS256", claims(), "enc"), "key id is unknown"),
        (sign(EC_KEY, "ES256", claims(), "ec"), "algorithm is not allowed"),
        (sign(RSA_KEY, "RS256", claims(), "nobody"), "key id is unknown"),
        (sign(RSA_KEY, "RS384", claims(), "sig"), "no key of the token's issuer verifies"),
        (sign(RSA_NEXT, "RS256", claims(), "sig"), "signature does not verify"),
    ]:
        with pytest.raises(CredentialRefused, match=why):
            verifier.verify(refused, now=NOW)


def test_a_certificate_file_gives_its_public_key(tmp_path: Path) -> None:
    """The signing certificate some identity providers publish (Auth0's /pem) will do."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "id.example.com")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(RSA_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(days=1))
        .not_valid_after(datetime.now(UTC) + timedelta(days=1))
        .sign(RSA_KEY, hashes.SHA256())
    )
    (tmp_path / "signing.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    verifier = ready(IssuerSpec(ISS, ("api",), ("RS256",), key_file=tmp_path / "signing.crt"))
    assert verifier.verify(sign(RSA_KEY, "RS256", claims()), now=NOW).subject == "alice"


def test_a_private_key_file_is_refused(tmp_path: Path) -> None:
    private = RSA_KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "private.pem").write_bytes(private)
    spec = IssuerSpec(ISS, (), ("RS256",), key_file=tmp_path / "private.pem")
    assert "neither a PEM public key nor a JWK set" in (key_file_problem(spec) or "")
    assert key_file_problem(rs256_issuer(tmp_path)) is None
    with pytest.raises(CredentialRefused, match="not available"):
        ready(spec).verify(sign(RSA_KEY, "RS256", claims()), now=NOW)


def test_file_keys_serve_before_start_and_a_missing_file_is_read_again_at_start(
    tmp_path: Path,
) -> None:
    assert JwtVerifier([rs256_issuer(tmp_path)]).verify(sign(RSA_KEY, "RS256", claims()), now=NOW)
    spec = IssuerSpec(ISS, ("api",), ("RS256",), key_file=tmp_path / "later.pem")
    verifier = JwtVerifier([spec])
    with pytest.raises(CredentialRefused, match="not available"):
        verifier.verify(sign(RSA_KEY, "RS256", claims()), now=NOW)
    (tmp_path / "later.pem").write_bytes(pem(RSA_KEY))
    asyncio.run(verifier.start())
    assert verifier.verify(sign(RSA_KEY, "RS256", claims()), now=NOW).subject == "alice"


def test_a_custom_subject_claim(tmp_path: Path) -> None:
    verifier = ready(rs256_issuer(tmp_path, subject_claim="client_id"))
    token = sign(RSA_KEY, "RS256", claims(sub=None, client_id="billing"))
    assert verifier.verify(token, now=NOW).subject == "billing"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        pytest.param({"exp": NOW - 31}, "expired", id="expired"),
        pytest.param({"nbf": NOW + 31}, "not valid yet", id="not-yet-valid"),
        pytest.param({"iat": NOW + 31}, "issued in the future", id="issued-later"),
        pytest.param({"aud": "billing"}, "audience", id="wrong-audience"),
        pytest.param({"aud": None}, "audience", id="no-audience"),
        pytest.param({"iss": "https://evil.example/"}, "issuer is not trusted", id="wrong-iss"),
        pytest.param({"iss": None}, "issuer is not trusted", id="no-iss"),
        pytest.param({"exp": None}, "no exp", id="no-exp"),
        pytest.param({"exp": "tomorrow"}, "exp is not a NumericDate", id="exp-not-a-date"),
        pytest.param({"exp": 10**400}, "exp is not a NumericDate", id="exp-beyond-floats"),
        pytest.param({"nbf": True}, "nbf is not a NumericDate", id="nbf-not-a-date"),
        pytest.param({"sub": None}, "sub is missing", id="no-subject"),
        pytest.param({"sub": 42}, "sub is missing or not a string", id="subject-not-a-string"),
    ],
)
def test_claims_that_refuse_a_token(tmp_path: Path, changes: dict[str, Any], why: str) -> None:
    verifier = ready(rs256_issuer(tmp_path))
    with pytest.raises(CredentialRefused, match=why):
        verifier.verify(sign(RSA_KEY, "RS256", claims(**changes)), now=NOW)


def test_any_of_the_issuers_audiences_will_do(tmp_path: Path) -> None:
    verifier = ready(rs256_issuer(tmp_path, audiences=("api", "admin")))
    assert verifier.verify(sign(RSA_KEY, "RS256", claims(aud=["other", "admin"])), now=NOW)
    unchecked = ready(rs256_issuer(tmp_path, audiences=()))
    assert unchecked.verify(sign(RSA_KEY, "RS256", claims(aud="anything")), now=NOW)


@pytest.mark.parametrize(
    ("changes", "now", "accepted"),
    [
        pytest.param({"exp": NOW}, NOW + 29.999, True, id="exp-inside-leeway"),
        pytest.param({"exp": NOW}, NOW + 30, False, id="exp-at-leeway"),
        pytest.param({"nbf": NOW}, NOW - 30, True, id="nbf-at-leeway"),
        pytest.param({"nbf": NOW}, NOW - 30.001, False, id="nbf-past-leeway"),
        pytest.param({"iat": NOW}, NOW - 30, True, id="iat-at-leeway"),
        pytest.param({"iat": NOW}, NOW - 30.001, False, id="iat-past-leeway"),
    ],
)
def test_leeway_at_its_edge(
    tmp_path: Path, changes: dict[str, Any], now: float, accepted: bool
) -> None:
    verifier = ready(rs256_issuer(tmp_path, leeway=30.0))
    token = sign(RSA_KEY, "RS256", claims(now=NOW - 100, **changes))
    if accepted:
        assert verifier.verify(token, now=now).subject == "alice"
    else:
        with pytest.raises(CredentialRefused):
            verifier.verify(token, now=now)


# --- forged tokens --------------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_refused(tmp_path: Path, alg: str) -> None:
    verifier = ready(rs256_issuer(tmp_path))
    unsigned = (segment({"alg": alg, "typ": "JWT"}) + b"." + segment(claims()) + b".").decode()
    with pytest.raises(CredentialRefused, match="algorithm is not allowed"):
        verifier.verify(unsigned, now=NOW)


def test_algorithm_confusion_is_refused(tmp_path: Path) -> None:
    """An HS256 token 'signed' with the issuer's public RSA key as HMAC secret."""
    verifier = ready(rs256_issuer(tmp_path))
    for secret in (pem(RSA_KEY), pem(RSA_KEY).strip()):
        with pytest.raises(CredentialRefused, match="algorithm is not allowed"):
            verifier.verify(hs256_by_hand(secret, claims()), now=NOW)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"algorithms": ("none",)}, id="none"),
        pytest.param({"algorithms": ()}, id="no-algorithm"),
        pytest.param({"algorithms": ("RS256", "HS256")}, id="hmac-beside-a-public-key"),
        pytest.param({"algorithms": ("HS256",)}, id="hmac-with-a-public-key"),
        pytest.param({"key_file": None}, id="no-key"),
        pytest.param({"jwks_url": "https://id.example/jwks"}, id="two-key-sources"),
        pytest.param({"key_file": None, "jwks_url": "file:///etc/jwks"}, id="not-http"),
        pytest.param({"leeway": -1.0}, id="negative-leeway"),
    ],
)
def test_unsafe_issuer_settings_are_refused(spec: dict[str, Any]) -> None:
    settings: dict[str, Any] = {
        "issuer": ISS,
        "audiences": ("api",),
        "algorithms": ("RS256",),
        "key_file": Path("rsa.pem"),
        **spec,
    }
    with pytest.raises(ValueError, match="JWT issuer"):
        IssuerSpec(**settings)


def test_a_short_hmac_secret_is_never_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "short").write_bytes(b"0123456789")
    spec = IssuerSpec(ISS, (), ("HS256",), secret_file=tmp_path / "short")
    assert "no usable key" in (key_file_problem(spec) or "")
    verifier = ready(spec)
    assert "no usable key" in caplog.text
    with pytest.raises(CredentialRefused, match="not available"):
        verifier.verify(hs256_by_hand(b"0123456789", claims()), now=NOW)


def test_a_tampered_payload_is_refused(tmp_path: Path) -> None:
    verifier = ready(rs256_issuer(tmp_path))
    header, _, signature = sign(RSA_KEY, "RS256", claims()).split(".")
    forged = f"{header}.{segment(claims(sub='root')).decode()}.{signature}"
    with pytest.raises(CredentialRefused, match="signature does not verify"):
        verifier.verify(forged, now=NOW)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c", "e30.e30.e30.e30.e30", "x" * 20_000],
    ids=["empty", "one-part", "two-parts", "not-base64-json", "jwe-like", "huge"],
)
def test_what_is_no_jwt_is_refused(tmp_path: Path, token: str) -> None:
    verifier = ready(rs256_issuer(tmp_path))
    with pytest.raises(CredentialRefused):
        verifier.verify(token, now=NOW)


# --- the verified-token cache ---------------------------------------------------------------------
def test_a_repeated_token_is_answered_from_the_cache_until_it_expires(tmp_path: Path) -> None:
    verifier = ready(rs256_issuer(tmp_path, leeway=5.0))
    token = sign(RSA_KEY, "RS256", claims(nbf=NOW - 10, exp=NOW + 60))
    first = verifier.verify(token, now=NOW)
    assert verifier.verify(token, now=NOW + 30) is first
    with pytest.raises(CredentialRefused, match="expired"):
        verifier.verify(token, now=NOW + 65)
    with pytest.raises(CredentialRefused, match="expired"):
        verifier.verify(token, now=NOW + 65)  # not in the cache any more either
    with pytest.raises(CredentialRefused, match="not valid yet"):
        verifier.verify(token, now=NOW - 16)


# --- keys from a JWKS URL -------------------------------------------------------------------------
class JwksServer:
    """A JWKS endpoint on 127.0.0.1: what it serves, how it answers, how often it was asked."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.serve(*keys)
        self.status = 200
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    def serve(self, *keys: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(keys)}).encode()

    async def answer(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.status != 200:
            return web.Response(status=self.status, text="down for maintenance")
        return web.Response(body=self.body, content_type="application/json")

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/jwks", self.answer)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/jwks"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@contextlib.asynccontextmanager
async def serving(*keys: dict[str, Any]) -> AsyncIterator[JwksServer]:
    server = JwksServer(*keys)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def verifying(*specs: IssuerSpec) -> AsyncIterator[JwtVerifier]:
    verifier = JwtVerifier(specs)
    await verifier.start()
    try:
        yield verifier
    finally:
        await verifier.stop()


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10.0
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def accepts(verifier: JwtVerifier, token: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            verifier.verify(token)
        except CredentialRefused:
            return False
        return True

    return check


def live(**changes: Any) -> dict[str, Any]:
    """Claims valid now, each token different (a fresh one is never answered from the cache)."""
    return claims(now=time.time(), jti=secrets.token_hex(8), **changes)


def test_jwks_rotation_through_an_unknown_kid_refresh_rate_limited() -> None:
    async def scenario() -> None:
        async with serving(jwk(RSA_KEY, "old", use="sig")) as server:
            spec = IssuerSpec(ISS, ("api",), ("RS256",), jwks_url=server.url)
            async with verifying(spec) as verifier:
                assert server.hits == 1
                old = sign(RSA_KEY, "RS256", live(), "old")
                assert verifier.verify(old).subject == "alice"

                server.serve(jwk(RSA_NEXT, "new", use="sig"))  # the old key is retired
                new = sign(RSA_NEXT, "RS256", live(sub="bob"), "new")
                with pytest.raises(CredentialRefused, match="key id is unknown"):
                    verifier.verify(new)
                await until(accepts(verifier, new), "the new key to be fetched")
                assert verifier.verify(new).subject == "bob"
                assert server.hits == 2
                with pytest.raises(CredentialRefused, match="key id is unknown"):
                    verifier.verify(old)  # no longer answered from the cache

                for _ in range(50):  # random key ids cannot make it fetch again and again
                    with pytest.raises(CredentialRefused, match="key id is unknown"):
                        verifier.verify(sign(RSA_NEXT, "RS256", live(), secrets.token_hex(4)))
                await asyncio.sleep(0.3)
                assert server.hits == 2

    asyncio.run(scenario())


def test_jwks_outages_keep_the_last_good_keys(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="strangler")

    def said(level: int, text: str) -> int:
        return sum(r.levelno == level and text in r.getMessage() for r in caplog.records)

    async def scenario() -> None:
        async with serving(jwk(RSA_KEY, "k1")) as server:
            spec = IssuerSpec(ISS, ("api",), ("RS256",), jwks_url=server.url, refresh=0.05)
            async with verifying(spec) as verifier:
                assert verifier.verify(sign(RSA_KEY, "RS256", live(), "k1"))

                server.status = 503
                await until(lambda: server.hits >= 5, "refreshes answered 503")
                assert verifier.verify(sign(RSA_KEY, "RS256", live(), "k1")).subject == "alice"
                assert said(logging.WARNING, "JWKS of https://id.example.com/ failed") == 1

                server.status = 200
                await until(lambda: said(logging.INFO, "answers again") == 1, "a recovery")

                await server.stop()  # down altogether: connections refused
                await until(lambda: said(logging.WARNING, "failed") == 2, "a second outage")
                assert verifier.verify(sign(RSA_KEY, "RS256", live(), "k1")).subject == "alice"

    asyncio.run(scenario())


def test_an_unanswering_jwks_at_start_refuses_its_tokens_until_it_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="strangler")

    async def scenario() -> None:
        async with serving(jwk(RSA_KEY, "k1")) as server:
            server.status = 500
            closed = f"http://127.0.0.1:{free_port()}/jwks"
            async with verifying(
                IssuerSpec(ISS, ("api",), ("RS256",), jwks_url=server.url),
                IssuerSpec("https://gone.example/", (), ("RS256",), jwks_url=closed),
            ) as verifier:  # start() does not raise
                assert said_failed(caplog) == 2
                gone = sign(RSA_KEY, "RS256", live(iss="https://gone.example/"), "k1")
                with pytest.raises(CredentialRefused, match="not available"):
                    verifier.verify(gone)

                server.status = 200
                token = sign(RSA_KEY, "RS256", live(), "k1")
                with pytest.raises(CredentialRefused, match="not available"):
                    verifier.verify(token)  # refused, and the JWKS asked again at once
                await until(accepts(verifier, token), "the JWKS to answer")
                assert server.hits == 2

    asyncio.run(scenario())


def test_a_verifier_stopped_while_starting_stays_stopped() -> None:
    async def scenario() -> None:
        async with serving(jwk(RSA_KEY, "k1")) as server:
            spec = IssuerSpec(ISS, ("api",), ("RS256",), jwks_url=server.url, refresh=0.05)
            verifier = JwtVerifier([spec])
            starting = asyncio.create_task(verifier.start())
            await asyncio.sleep(0)
            await verifier.stop()
            await starting
            assert [t for t in asyncio.all_tasks() if t.get_name() == "jwks-refresh"] == []

    asyncio.run(scenario())


def said_failed(caplog: pytest.LogCaptureFixture) -> int:
    return sum("failed" in r.getMessage() for r in caplog.records)


def test_a_jwks_body_over_a_megabyte_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="strangler")

    async def scenario() -> None:
        padding = {"kty": "oct", "kid": "pad", "k": "A" * (1 << 20)}
        async with serving(jwk(RSA_KEY, "k1"), padding) as server:
            spec = IssuerSpec(ISS, ("api",), ("RS256",), jwks_url=server.url)
            async with verifying(spec) as verifier:
                assert "over 1048576 bytes" in caplog.text
                with pytest.raises(CredentialRefused, match="not available"):
                    verifier.verify(sign(RSA_KEY, "RS256", live(), "k1"))

    asyncio.run(scenario())


# --- the Authorization header ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "token"),
    [
        pytest.param([(b"authorization", b"Bearer abc.def.ghi")], "abc.def.ghi", id="bearer"),
        pytest.param([(b"Authorization", b"bearer  abc ")], "abc", id="any-case-spaces"),
        pytest.param([(b"host", b"x"), (b"AUTHORIZATION", b"BEARER t")], "t", id="upper"),
        pytest.param([(b"authorization", b"Basic dTpw")], None, id="basic"),
        pytest.param([(b"authorization", b"Bearer")], None, id="no-token"),
        pytest.param([(b"authorization", b"Bearer   ")], None, id="blank-token"),
        pytest.param([(b"x-authorization", b"Bearer t")], None, id="another-header"),
        pytest.param([], None, id="absent"),
    ],
)
def test_bearer_token(headers: list[tuple[bytes, bytes]], token: str | None) -> None:
    assert bearer_token(headers) == token
