"""Who is calling: an API key (its header or a bearer `sk_` token), a bearer JWT of a declared
issuer, or a verified client certificate's subject, looked up in the consumers registry; the
first credential present decides; the registry fails closed (503) when it was never read or is
older than the grace; a change of issuers lets the old verifier serve until the new one has
its keys."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from proxy.access.consumers import Add, ConsumerDocument, Registry, apply
from proxy.access.gate import Gate
from proxy.access.policy import Identity
from proxy.errors import ProxyError
from proxy.table.access import JwtIssuer
from proxy.table.compile import CredentialPolicy

GRACE = 30.0
ISS = "https://idp.partner.example"
OTHER_ISS = "https://monolith.example"  # the monolith's own session tokens: not declared
SUBJECT = "CN=billing,OU=payments,O=Internal"
SECRET = secrets.token_urlsafe(48)
EC_KEY = ec.generate_private_key(ec.SECP256R1())

CREDENTIALS = CredentialPolicy(b"x-api-key", ())
PARTNER_HEADER = CredentialPolicy(b"x-partner-key", (), "X-Partner-Key")

Headers = list[tuple[bytes, bytes]]


class Consumers:
    """A registry made the way the stores make it: documents changed by `apply`."""

    def __init__(self, *adds: Add) -> None:
        document, self.keys = ConsumerDocument(), {}
        for add in adds:
            result = apply(document, add, author="ops", reason="set up", now=time.time())
            document = result.document
            if result.key is not None:
                self.keys[add.name] = result.key
        self.registry = Registry(document)


def consumers() -> Consumers:
    return Consumers(
        Add("mobile-ios", groups=("apps",)),
        Add("acme", groups=("partners", "beta"), jwt=((ISS, "acme-client"),), key=False),
        Add("billing", subjects=(SUBJECT,), key=False),
    )


@pytest.fixture
def known() -> Consumers:
    return consumers()


@pytest.fixture
def gate(known: Consumers) -> Gate:
    made = Gate(GRACE)
    made.use(known.registry)
    return made


def hs256_issuer(tmp_path: Path, issuer: str = ISS) -> JwtIssuer:
    path = tmp_path / f"secret-{secrets.token_hex(4)}"
    path.write_text(SECRET + "\n")
    return JwtIssuer(
        issuer=issuer, audience=("strangler",), algorithms=("HS256",), secret_file=str(path)
    )


def token(
    iss: str = ISS,
    sub: str = "acme-client",
    key: Any = SECRET,
    alg: str = "HS256",
    kid: str | None = None,
    **claims: Any,
) -> str:
    now = time.time()
    payload = {"iss": iss, "sub": sub, "aud": "strangler", "iat": now, "exp": now + 600, **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def bearer(value: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {value}".encode())


def identify(
    gate: Gate,
    headers: Headers,
    credentials: CredentialPolicy = CREDENTIALS,
    subject: str | None = None,
) -> Identity | None:
    return gate.identify(headers, credentials, subject)


def refused(
    gate: Gate,
    headers: Headers,
    credentials: CredentialPolicy = CREDENTIALS,
    subject: str | None = None,
) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        gate.identify(headers, credentials, subject)
    return caught.value


def challenge_of(error: ProxyError) -> bytes:
    return dict(error.headers)[b"www-authenticate"]


# --- API keys -------------------------------------------------------------------------------
def test_a_key_in_the_api_key_header_identifies_its_consumer(gate: Gate, known: Consumers) -> None:
    found = identify(gate, [(b"x-api-key", known.keys["mobile-ios"].encode())])
    assert found == Identity("mobile-ios", frozenset({"apps"}), "key", b"x-api-key")


def test_a_key_in_the_declared_header_identifies_its_consumer(gate: Gate, known: Consumers) -> None:
    key = known.keys["mobile-ios"].encode()
    found = identify(gate, [(b"x-partner-key", key)], PARTNER_HEADER)
    assert found is not None
    assert (found.consumer, found.field) == ("mobile-ios", b"x-partner-key")
    # X-API-Key is no credential where the table names another header
    assert identify(gate, [(b"x-api-key", key)], PARTNER_HEADER) is None


def test_a_key_as_a_bearer_token_identifies_its_consumer(gate: Gate, known: Consumers) -> None:
    found = identify(gate, [bearer(known.keys["mobile-ios"])])
    assert found == Identity("mobile-ios", frozenset({"apps"}), "key", b"authorization")


def test_an_unknown_key_is_a_401(gate: Gate) -> None:
    for headers in ([(b"x-api-key", b"sk_" + b"x" * 43)], [bearer("sk_" + "y" * 43)]):
        error = refused(gate, headers)
        assert (error.status, error.kind) == (401, "invalid-credential")
        assert b'header="X-API-Key"' in challenge_of(error)


def test_the_first_credential_present_decides(gate: Gate, known: Consumers) -> None:
    valid = known.keys["mobile-ios"]
    error = refused(gate, [bearer(valid), (b"x-api-key", b"sk_wrong")])
    assert error.status == 401  # the valid bearer key behind it does not rescue it
    # and a valid key is not overridden by a bad bearer token after it
    found = identify(gate, [(b"x-api-key", valid.encode()), bearer("sk_wrong")])
    assert found is not None
    assert found.consumer == "mobile-ios"


def test_a_key_decides_before_a_certificate(gate: Gate, known: Consumers) -> None:
    key = known.keys["mobile-ios"].encode()
    found = identify(gate, [(b"x-api-key", key)], subject=SUBJECT)
    assert found is not None
    assert (found.consumer, found.via) == ("mobile-ios", "key")
    with pytest.raises(ProxyError):  # a bad key is not rescued by the certificate
        identify(gate, [(b"x-api-key", b"sk_wrong")], subject=SUBJECT)


def test_no_credential_is_anonymous(gate: Gate) -> None:
    assert identify(gate, [(b"accept", b"*/*")]) is None
    assert identify(gate, [(b"authorization", b"Basic YWxhZGRpbjpvcGVuc2VzYW1l")]) is None


def test_a_bearer_token_of_another_kind_is_not_a_credential_here(gate: Gate) -> None:
    assert identify(gate, [bearer("opaque-session-token-4f2a")]) is None


# --- JWT ------------------------------------------------------------------------------------
@pytest.fixture
def jwt_gate(gate: Gate, tmp_path: Path) -> Gate:
    gate.issuers((hs256_issuer(tmp_path),))  # no running loop: installed at once
    assert gate.verifier is not None
    return gate


def test_a_token_of_a_declared_issuer_identifies_its_consumer(jwt_gate: Gate) -> None:
    found = identify(jwt_gate, [bearer(token())])
    assert found == Identity("acme", frozenset({"partners", "beta"}), "jwt", b"authorization")


def test_a_token_of_an_undeclared_issuer_is_anonymous(jwt_gate: Gate) -> None:
    assert identify(jwt_gate, [bearer(token(iss=OTHER_ISS, key="another" * 8))]) is None


def test_a_token_of_an_undeclared_issuer_leaves_the_certificate_to_decide(jwt_gate: Gate) -> None:
    found = identify(jwt_gate, [bearer(token(iss=OTHER_ISS))], subject=SUBJECT)
    assert found is not None
    assert (found.consumer, found.via, found.field) == ("billing", "mtls", None)


def test_a_token_without_declared_issuers_is_anonymous(gate: Gate) -> None:
    assert gate.verifier is None
    assert identify(gate, [bearer(token())]) is None


def test_an_expired_token_is_a_401_saying_invalid_token(jwt_gate: Gate) -> None:
    expired = token(iat=time.time() - 7200, exp=time.time() - 3600)
    error = refused(jwt_gate, [bearer(expired)])
    assert (error.status, error.kind) == (401, "invalid-credential")
    assert "expired" in error.detail
    assert b'error="invalid_token"' in challenge_of(error)


def test_a_token_with_a_bad_signature_is_a_401(jwt_gate: Gate) -> None:
    forged = token(key="not-the-issuers-secret-" * 3)
    assert refused(jwt_gate, [bearer(forged)]).status == 401


def test_a_token_whose_subject_is_no_consumer_is_a_401(jwt_gate: Gate) -> None:
    error = refused(jwt_gate, [bearer(token(sub="mallory"))])
    assert (error.status, error.kind) == (401, "invalid-credential")
    assert "mallory" in error.detail


def test_a_token_of_the_right_subject_but_another_issuer_names_nobody(
    gate: Gate, tmp_path: Path
) -> None:
    """acme's pair is (ISS, acme-client): a second declared issuer's acme-client is not acme."""
    gate.issuers((hs256_issuer(tmp_path), hs256_issuer(tmp_path, "https://idp.other.example")))
    assert refused(gate, [bearer(token(iss="https://idp.other.example"))]).status == 401


# --- certificates ---------------------------------------------------------------------------
def test_a_certificate_subject_identifies_its_consumer(gate: Gate) -> None:
    found = identify(gate, [], subject="cn=billing, ou=payments, o=internal")
    assert found == Identity("billing", frozenset(), "mtls", None)


def test_an_unknown_certificate_subject_is_anonymous(gate: Gate) -> None:
    assert identify(gate, [], subject="CN=somebody,O=Internal") is None


# --- the registry fails closed --------------------------------------------------------------
def test_before_the_registry_was_read_credentials_are_a_503() -> None:
    key = consumers().keys["mobile-ios"]
    gate = Gate(GRACE)
    for headers, subject in (
        ([(b"x-api-key", key.encode())], None),
        ([bearer(key)], None),
        ([], SUBJECT),
    ):
        error = refused(gate, headers, subject=subject)
        assert (error.status, error.kind) == (503, "credentials-unavailable")
        assert error.retry_after == 1
    assert identify(gate, []) is None  # no credential: anonymous, whatever the registry


def test_a_registry_older_than_the_grace_is_not_trusted(gate: Gate, known: Consumers) -> None:
    gate.fresh = lambda: time.monotonic() - GRACE - 1
    error = refused(gate, [(b"x-api-key", known.keys["mobile-ios"].encode())])
    assert (error.status, error.kind) == (503, "credentials-unavailable")
    assert refused(gate, [], subject=SUBJECT).status == 503


def test_a_registry_within_the_grace_keeps_serving(gate: Gate, known: Consumers) -> None:
    gate.fresh = lambda: time.monotonic() - GRACE / 2
    found = identify(gate, [(b"x-api-key", known.keys["mobile-ios"].encode())])
    assert found is not None
    assert found.consumer == "mobile-ios"
    assert refused(gate, [(b"x-api-key", b"sk_unknown")]).status == 401  # not 503


# --- issuers replaced while serving ---------------------------------------------------------
class HeldJwks:
    """A JWKS URL on 127.0.0.1 whose answers wait until `release` is set."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(keys)})
        self.release = asyncio.Event()
        self.asked = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _jwks(self, request: web.Request) -> web.Response:
        self.asked.set()
        await self.release.wait()
        return web.Response(text=self.body, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks", self._jwks)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/jwks"

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


@contextlib.asynccontextmanager
async def held_jwks() -> AsyncIterator[HeldJwks]:
    jwk = {**ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True), "kid": "k1"}
    server = HeldJwks(jwk)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def es256_issuer(url: str, issuer: str = "https://idp.next.example") -> JwtIssuer:
    return JwtIssuer(issuer=issuer, algorithms=("ES256",), jwks_url=url)


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10.0
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_new_issuers_take_over_only_once_their_keys_are_fetched(tmp_path: Path) -> None:
    known = Consumers(
        Add("acme", jwt=((ISS, "acme-client"),), key=False),
        Add("globex", jwt=(("https://idp.next.example", "globex-client"),), key=False),
    )
    gate = Gate(GRACE)
    gate.use(known.registry)
    gate.issuers((hs256_issuer(tmp_path),))
    old = gate.verifier
    old_token = token()
    new_token = token(iss="https://idp.next.example", sub="globex-client", key=EC_KEY, alg="ES256")

    def who(value: str) -> str | None:
        found = identify(gate, [bearer(value)])
        return None if found is None else found.consumer

    async def scenario() -> None:
        async with held_jwks() as server:
            try:
                gate.issuers((es256_issuer(server.url),))
                await asyncio.wait_for(server.asked.wait(), 10)
                # the new verifier is fetching its keys: the old one still serves
                assert gate.verifier is old
                assert who(old_token) == "acme"
                assert who(new_token) is None  # not yet a declared issuer's token

                server.release.set()
                await until(lambda: gate.verifier is not old, "the new verifier")
                assert who(new_token) == "globex"
                assert who(old_token) is None  # its issuer is no longer declared
            finally:
                await gate.stop()

    asyncio.run(scenario())


def test_the_last_issuers_win_when_changes_overlap(tmp_path: Path) -> None:
    known = Consumers(Add("acme", jwt=((ISS, "acme-client"),), key=False))
    gate = Gate(GRACE)
    gate.use(known.registry)
    latest = (hs256_issuer(tmp_path),)

    def who() -> str | None:
        found = identify(gate, [bearer(token())])
        return None if found is None else found.consumer

    async def scenario() -> None:
        async with held_jwks() as server:
            try:
                gate.issuers((es256_issuer(server.url),))  # its JWKS is slow to answer
                await asyncio.wait_for(server.asked.wait(), 10)
                gate.issuers(latest)  # corrected before the first had its keys
                await until(lambda: who() == "acme", "the latest issuers to serve")

                server.release.set()  # the first replacement ends now
                await until(lambda: not gate._tasks, "both replacements to finish")
                assert who() == "acme"
            finally:
                await gate.stop()

    asyncio.run(scenario())
