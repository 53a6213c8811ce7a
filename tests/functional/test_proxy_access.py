"""Who may call what, through a real proxy: API keys, bearer JWTs, access rules per route and
the table's default, identity fields the upstream can trust, rate limits, revocation.

One proxy for the module (file route store, file consumer store in a temporary folder), raw
recorder upstreams that show exactly what reached them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from proxy.access.consumers import Add, Revoke, RotateKey
from proxy.store.consumers import FileConsumerStore
from tests.functional.proxy_support import (
    ProxyProcess,
    Recorder,
    counter,
    problem,
    recorder,
    running,
    send,
)
from tests.support import wait_until

SECRET = "a-shared-secret-of-the-partner-idp-32b"  # a test's own HMAC secret
ISSUER = "https://idp.partner.test"
HOST = "proxy.test"

TABLE = """\
version: 1
upstreams:
  main: {{url: "{main}"}}
default: main
credentials:
  jwt:
    - issuer: {issuer}
      audience: strangler
      algorithms: [HS256]
      secret_file: idp.secret
access: {{groups: [staff]}}
routes:
  - name: partners
    match: {{path: /partner}}
    to: main
    access:
      - {{groups: [partners], methods: [GET]}}
      - {{consumers: [back-office]}}
  - name: limited
    match: {{path: /limited}}
    to: main
    access: public
    rate_limit: {{rate: 3/minute, by: consumer}}
  - name: forwarded
    match: {{path: /forwarded}}
    to: main
    access: {{groups: [partners]}}
    forward_credentials: true
  - name: open
    match: {{path: /open}}
    to: main
    access: public
"""


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ProxyProcess, Recorder, Path]]:
    folder = tmp_path_factory.mktemp("access")
    (folder / "idp.secret").write_text(SECRET)
    consumers = folder / "consumers.json"
    with recorder() as main:
        routes = folder / "routes.yaml"
        routes.write_text(TABLE.format(main=main.url, issuer=ISSUER))
        args = ["--routes", str(routes), "--consumers", str(consumers)]
        with running(args) as proxy:
            yield proxy, main, consumers


@pytest.fixture
def proxy(world: tuple[ProxyProcess, Recorder, Path]) -> ProxyProcess:
    return world[0]


@pytest.fixture
def upstream(world: tuple[ProxyProcess, Recorder, Path]) -> Recorder:
    world[1].reset()
    return world[1]


@pytest.fixture
def store(world: tuple[ProxyProcess, Recorder, Path]) -> FileConsumerStore:
    return FileConsumerStore(world[2])


_names = iter(range(1_000_000))


def _consumer(
    store: FileConsumerStore, *groups: str, name: str = "", **extra: object
) -> tuple[str, str]:
    """A new consumer in `groups`: its name and key."""
    name = name or f"c{next(_names)}-{groups[0] if groups else 'none'}"
    result = store.apply(
        Add(name, groups=groups, **extra),  # type: ignore[arg-type]
        author="test",
        reason="a caller of the test",
    )
    return name, result.key or ""


def _known(proxy: ProxyProcess, key: str) -> None:
    """Wait until the proxy's consumer follower has the key (it polls the file every 0.2 s)."""
    wait_until(
        lambda: (
            send(proxy.external, "GET", "/open/ping", [("X-API-Key", key)]).status == 200
            and send(proxy.external, "GET", "/limited/known", [("X-API-Key", key)]).status != 401
        ),
        what="the proxy to know the new key",
    )


def _token(subject: str, **claims: object) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "sub": subject, "aud": "strangler", "exp": now + 300, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def test_no_credential_on_a_guarded_route_is_401_with_a_challenge(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    answer = send(proxy.external, "GET", "/partner/orders")
    data = problem(answer, 401, "credential-required")
    assert "credential" in str(data["detail"])
    challenge = answer.value("www-authenticate") or b""
    assert challenge.startswith(b'Bearer realm="strangler"')
    assert b'header="X-API-Key"' in challenge
    assert upstream.seen == []  # nothing reached the upstream


def test_a_key_of_an_admitted_group_is_served_and_the_upstream_learns_who_called(
    proxy: ProxyProcess, upstream: Recorder, store: FileConsumerStore
) -> None:
    name, key = _consumer(store, "partners")
    _known(proxy, key)
    upstream.reset()
    answer = send(
        proxy.external,
        "GET",
        "/partner/orders",
        [("X-API-Key", key), ("X-Consumer-Id", "root"), ("X-Consumer-Groups", "staff")],
    )
    assert answer.status == 200, answer.body
    seen = upstream.only()
    assert seen.values("x-consumer-id") == [name.encode()]
    assert seen.values("x-consumer-groups") == [b"partners"]
    assert seen.value("x-api-key") is None  # the key the proxy checked is not forwarded


def test_unknown_key_is_401_invalid_credential(proxy: ProxyProcess, upstream: Recorder) -> None:
    answer = send(proxy.external, "GET", "/partner/x", [("X-API-Key", "sk_not-a-key-at-all")])
    problem(answer, 401, "invalid-credential")
    assert b'error="invalid_token"' in (answer.value("www-authenticate") or b"")
    assert upstream.seen == []


def test_a_caller_no_rule_admits_is_403_and_rules_limit_methods(
    proxy: ProxyProcess, upstream: Recorder, store: FileConsumerStore
) -> None:
    _, outsider = _consumer(store, "mobile")
    _, partner = _consumer(store, "partners")
    back_office, office_key = _consumer(store, "ops", name="back-office")
    _known(proxy, office_key)
    problem(send(proxy.external, "GET", "/partner/a", [("X-API-Key", outsider)]), 403, "forbidden")
    # The partners' rule admits GET only; the back office's rule every method.
    answer = send(proxy.external, "POST", "/partner/a", [("X-API-Key", partner)], b"{}")
    problem(answer, 403, "forbidden")
    upstream.reset()
    answer = send(proxy.external, "POST", "/partner/a", [("X-API-Key", office_key)], b"{}")
    assert answer.status == 200
    assert upstream.only().values("x-consumer-id") == [back_office.encode()]


def test_an_api_key_is_also_accepted_as_a_bearer_token(
    proxy: ProxyProcess, upstream: Recorder, store: FileConsumerStore
) -> None:
    name, key = _consumer(store, "partners")
    _known(proxy, key)
    upstream.reset()
    answer = send(proxy.external, "GET", "/partner/b", [("Authorization", f"Bearer {key}")])
    assert answer.status == 200
    seen = upstream.only()
    assert seen.values("x-consumer-id") == [name.encode()]
    assert seen.value("authorization") is None


def test_a_jwt_of_the_declared_issuer_identifies_its_consumer(
    proxy: ProxyProcess, upstream: Recorder, store: FileConsumerStore
) -> None:
    name, key = _consumer(store, "partners", jwt=((ISSUER, "acme-gateway"),))
    _known(proxy, key)
    upstream.reset()
    bearer = [("Authorization", f"Bearer {_token('acme-gateway')}")]
    assert send(proxy.external, "GET", "/partner/c", bearer).status == 200
    assert upstream.only().values("x-consumer-id") == [name.encode()]


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"nbf": int(time.time()) + 3600}, "not valid yet"),
        ({"aud": "someone-else"}, "audience"),
        ({"sub": "nobody-known"}, "not a consumer"),
    ],
)
def test_refused_tokens_are_401_saying_why(
    proxy: ProxyProcess, upstream: Recorder, claims: dict[str, object], why: str
) -> None:
    token = _token(str(claims.pop("sub", "acme-gateway")), **claims)
    answer = send(proxy.external, "GET", "/partner/d", [("Authorization", f"Bearer {token}")])
    data = problem(answer, 401, "invalid-credential")
    assert why in str(data["detail"])
    assert upstream.seen == []


def test_an_unsigned_token_is_refused(proxy: ProxyProcess, upstream: Recorder) -> None:
    header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = {"iss": ISSUER, "sub": "acme-gateway", "aud": "strangler", "exp": 2**31}
    body = jwt.utils.base64url_encode(json.dumps(claims).encode())
    token = (header + b"." + body + b".").decode()
    answer = send(proxy.external, "GET", "/partner/e", [("Authorization", f"Bearer {token}")])
    problem(answer, 401, "invalid-credential")
    assert upstream.seen == []


def test_public_routes_pass_credentials_they_do_not_check_but_never_identity_fields(
    proxy: ProxyProcess, upstream: Recorder
) -> None:
    # The monolith's own session token (a JWT of an issuer the table does not declare) and a
    # client's claimed identity: the first passes untouched, the second never.
    session = jwt.encode({"iss": "legacy-shop", "sub": "alice"}, "x" * 32, algorithm="HS256")
    headers = [
        ("Authorization", f"Bearer {session}"),
        ("X-Consumer-Id", "admin"),
        ("X-Consumer-Groups", "staff"),
        ("X-Credential-Identifier", "k_1"),
        ("X-Forwarded-Client-Cert", 'By=spiffe://shop/admin;Subject="CN=admin"'),
        ("X-SSL-Client-S-DN", "CN=admin"),
        ("X-Remote-User", "admin"),
    ]
    assert send(proxy.external, "GET", "/open/profile", headers).status == 200
    seen = upstream.only()
    assert seen.values("authorization") == [f"Bearer {session}".encode()]
    for name in (
        "x-consumer-id",
        "x-consumer-groups",
        "x-credential-identifier",
        "x-forwarded-client-cert",
        "x-ssl-client-s-dn",
        "x-remote-user",
    ):
        assert seen.value(name) is None, name


def test_the_tables_default_access_guards_requests_no_route_takes(
    proxy: ProxyProcess, upstream: Recorder, store: FileConsumerStore
) -> None:
    problem(send(proxy.external, "GET", "/anything/else"), 401, "credential-required")
    _, mobile = _consumer(store, "mobile")
    name, staff = _consumer(store, "staff")
    _known(proxy, staff)
    problem(send(proxy.external, "GET", "/anything", [("X-API-Key", mobile)]), 403, "forbidden")
    upstream.reset()
    assert send(proxy.external, "GET", "/anything", [("X-API-Key", staff)]).status == 200
    assert upstream.only().values("x-consumer-id") == [name.encode()]


def test_forward_credentials_keeps_the_key_for_the_upstream(
    proxy: ProxyProcess, upstream: Recorder, store: FileConsumerStore
) -> None:
    _, key = _consumer(store, "partners")
    _known(proxy, key)
    upstream.reset()
    assert send(proxy.external, "GET", "/forwarded/x", [("X-API-Key", key)]).status == 200
    assert upstream.only().values("x-api-key") == [key.encode()]


def test_a_rate_limit_admits_its_rate_per_consumer_then_429_with_when_to_retry(
    proxy: ProxyProcess, upstream: Recorder, store: FileConsumerStore
) -> None:
    _, first = _consumer(store, "partners")
    _, second = _consumer(store, "partners")
    _known(proxy, first)  # spends one of `first`'s three
    _known(proxy, second)
    answers = [send(proxy.external, "GET", "/limited/x", [("X-API-Key", first)]) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    assert answers[0].value("ratelimit-limit") == b"3"
    assert answers[1].value("ratelimit-remaining") == b"0"
    data = problem(answers[2], 429, "rate-limited")
    assert "3 requests" in str(data["detail"])
    assert int(answers[2].value("retry-after") or b"0") >= 1
    assert answers[2].value("ratelimit-remaining") == b"0"
    # Another consumer has a limit of its own.
    assert send(proxy.external, "GET", "/limited/x", [("X-API-Key", second)]).status == 200
    metrics = send(proxy.admin, "GET", "/metrics").body.decode()
    assert counter(metrics, "strangler_rate_limited_total", route="limited") >= 1
    assert counter(metrics, "strangler_access_refused_total", route="limited", status="429") >= 1


def test_a_revoked_key_is_refused_and_a_rotated_one_works_beside_the_old_one(
    proxy: ProxyProcess, upstream: Recorder, store: FileConsumerStore
) -> None:
    name, old = _consumer(store, "partners")
    _known(proxy, old)
    new = store.apply(RotateKey(name, grace=3600), author="test", reason="rotation").key or ""
    _known(proxy, new)
    for key in (old, new):  # both live during the rotation's grace
        assert send(proxy.external, "GET", "/partner/r", [("X-API-Key", key)]).status == 200
    store.apply(Revoke(name), author="test", reason="contract ended")
    wait_until(
        lambda: send(proxy.external, "GET", "/partner/r", [("X-API-Key", new)]).status == 401,
        timeout=5,
        what="the revocation to reach the proxy",
    )
    problem(send(proxy.external, "GET", "/partner/r", [("X-API-Key", old)]), 401)


def test_the_access_log_names_the_consumer(
    proxy: ProxyProcess, upstream: Recorder, store: FileConsumerStore
) -> None:
    name, key = _consumer(store, "partners")
    _known(proxy, key)
    send(proxy.external, "GET", "/partner/logged", [("X-API-Key", key)])
    wait_until(
        lambda: any(
            json.loads(line).get("consumer") == name
            for line in list(proxy.stdout)
            if line.startswith("{")
        ),
        what="an access-log line naming the consumer",
    )


def test_a_credential_field_sent_twice_is_400(
    proxy: ProxyProcess, upstream: Recorder, store: FileConsumerStore
) -> None:
    _, key = _consumer(store, "partners")
    _known(proxy, key)
    upstream.reset()
    twice = [("X-API-Key", key), ("X-API-Key", "sk_someone-else")]
    problem(send(proxy.external, "GET", "/partner/twice", twice), 400, "bad-credential")
    bearer = [("Authorization", f"Bearer {key}"), ("Authorization", "Bearer sk_other")]
    problem(send(proxy.external, "GET", "/partner/twice", bearer), 400, "bad-credential")
    assert upstream.seen == []


def test_a_consumer_named_like_an_address_has_a_limit_of_its_own(
    proxy: ProxyProcess, upstream: Recorder, store: FileConsumerStore
) -> None:
    """Anonymous callers are counted by address, consumers by name: a consumer named
    127.0.0.1 does not share the counter of the anonymous clients at 127.0.0.1."""
    name, key = _consumer(store, "partners", name="127.0.0.1")
    _known(proxy, key)  # one of its three
    for _ in range(3):  # the address's own three, and more
        send(proxy.external, "GET", "/limited/anonymous")
    assert send(proxy.external, "GET", "/limited/anonymous").status == 429
    statuses = [send(proxy.external, "GET", "/limited/n", [("X-API-Key", key)]).status]
    statuses.append(send(proxy.external, "GET", "/limited/n", [("X-API-Key", key)]).status)
    assert statuses == [200, 200], name
