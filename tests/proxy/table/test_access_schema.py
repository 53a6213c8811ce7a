"""Who may call what, as routes.yaml declares it: credentials, access rules, rate limits and how
protecting decisions read paths; every mistake refused at load with its field and line, and
what the data plane compiles from a valid table."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.table.compile import AccessPolicy, CredentialPolicy, PathPolicy, Rule, compile_table
from proxy.table.loader import TableInvalid, load_file, load_text
from proxy.table.model import RouteTable
from tests.proxy.tables import marks

# Routes follow from line 5.
HEAD = """\
upstreams:
  monolith: {url: 'http://127.0.0.1:8001'}
  orders: {url: 'http://127.0.0.1:8002'}
default: monolith
"""


def with_route(fields: str, path: str = "/api/v1/orders") -> str:
    """HEAD and one route to `orders` with the extra `fields` (indented YAML lines)."""
    return (
        HEAD + f"routes:\n  - name: orders\n    match: {{path: {path}}}\n    to: orders\n" + fields
    )


def issuer(fields: str) -> str:
    """HEAD and one JWT issuer with `fields` (indented for the issuer's mapping)."""
    return HEAD + "credentials:\n  jwt:\n    - issuer: https://idp.partner.example\n" + fields


def problems(text: str, base: Path | None = None) -> list[tuple[int | None, str, str]]:
    """(line, field, reason) of every problem loading `text`."""
    with pytest.raises(TableInvalid) as caught:
        load_text(text, base=base)
    return [(p.line, p.where(), p.message) for p in caught.value.problems]


def one_problem(text: str, base: Path | None = None) -> tuple[int | None, str, str]:
    found = problems(text, base)
    assert len(found) == 1, found
    return found[0]


# --- access ---------------------------------------------------------------------------------
def test_access_is_one_rule_or_a_list_of_rules() -> None:
    one = load_text(with_route("    access: {groups: [partners], methods: [GET]}\n"))
    many = load_text(
        with_route(
            "    access:\n      - {groups: [partners], methods: [GET]}\n"
            "      - {consumers: [back-office]}\n"
        )
    )
    first, rules = one.routes[0].access, many.routes[0].access
    assert isinstance(first, tuple)
    assert isinstance(rules, tuple)
    assert len(first) == 1
    assert len(rules) == 2
    assert rules[0] == first[0]
    assert rules[1].consumers == ("back-office",)


def test_a_route_may_be_public_whatever_the_table_says() -> None:
    table = load_text(
        HEAD + "access: {groups: [staff]}\nroutes:\n  - name: health\n"
        "    match: {path: /health}\n    to: monolith\n    access: public\n"
    )
    assert table.routes[0].access == ()  # no rules: anyone
    assert compile_table(table).routes[0].access is None


def test_public_as_the_table_default_is_no_default() -> None:
    snapshot = compile_table(load_text(HEAD + "access: public\n"))
    assert snapshot.access is None


def test_an_empty_list_of_rules_is_refused_rather_than_refusing_everyone() -> None:
    text = with_route("    access: []  # @here\n")
    assert one_problem(text) == (
        marks(text)["here"],
        "routes[0].access",
        "list at least one rule, or say `public`",
    )


@pytest.mark.parametrize(
    ("rule", "name"),
    [
        pytest.param("{consumers: [Back-Office]}", "'Back-Office'", id="consumer-case"),
        pytest.param("{consumers: [back office]}", "'back office'", id="consumer-space"),
        pytest.param("{groups: [-partners]}", "'-partners'", id="group-leading-dash"),
        pytest.param("{groups: ['" + "g" * 65 + "']}", "'" + "g" * 65 + "'", id="group-too-long"),
    ],
)
def test_consumer_and_group_names_follow_the_name_rule(rule: str, name: str) -> None:
    text = with_route(f"    access: {rule}  # @here\n")
    found = problems(text)
    assert any(
        line == marks(text)["here"] and where.startswith("routes[0].access") and name in message
        for line, where, message in found
    ), found


def test_a_bad_rule_is_reported_at_its_own_field_and_line() -> None:
    text = with_route(
        "    access:\n      - {groups: [partners]}\n      - {groups: [no way]}  # @here\n"
    )
    assert problems(text) == [
        (
            marks(text)["here"],
            "routes[0].access[1].groups",
            "'no way': a name is 1-64 of a-z, 0-9, '.', '_', '-'",
        )
    ]


def test_an_empty_list_of_methods_is_refused() -> None:
    text = with_route("    access: {groups: [partners], methods: []}  # @here\n")
    found = problems(text)
    assert any(
        line == marks(text)["here"] and "methods" in where and "at least one method" in message
        for line, where, message in found
    ), found


def test_methods_are_upper_cased_and_get_includes_head() -> None:
    table = load_text(with_route("    access: {groups: [partners], methods: [get, Post]}\n"))
    rules = table.routes[0].access
    assert isinstance(rules, tuple)
    assert rules[0].methods == ("GET", "POST")
    compiled = compile_table(table).routes[0].access
    assert compiled is not None
    assert compiled.rules[0].methods == frozenset({"GET", "HEAD", "POST"})


def test_a_method_that_is_no_token_is_refused() -> None:
    found = problems(with_route("    access: {methods: ['GE T']}\n"))
    assert any("is not a method" in message for _, _, message in found), found


# --- rate_limit -----------------------------------------------------------------------------
def test_a_rate_limit_is_read_with_its_defaults() -> None:
    table = load_text(with_route("    rate_limit: {rate: 100 per minute, burst: 20/second}\n"))
    limit = table.routes[0].rate_limit
    assert limit is not None
    assert (limit.rate, limit.burst, limit.by, limit.strategy) == (
        "100 per minute",
        "20/second",
        "consumer",
        "sliding-window",
    )


@pytest.mark.parametrize(
    ("limit", "field", "reason"),
    [
        pytest.param("{rate: lots}", "routes[0].rate_limit.rate", "not one limit", id="garbage"),
        pytest.param(
            "{rate: 100/minute, burst: 10 per fortnight}",
            "routes[0].rate_limit.burst",
            "not one limit",
            id="burst-garbage",
        ),
        pytest.param(
            "{rate: 10/second, burst: 100/minute}",
            "routes[0].rate_limit",
            "must be a shorter window",
            id="burst-longer-than-rate",
        ),
        pytest.param(
            "{rate: 10/minute, burst: 5/minute}",
            "routes[0].rate_limit",
            "must be a shorter window",
            id="burst-as-long-as-rate",
        ),
        pytest.param(
            "{rate: 10/2 years}", "routes[0].rate_limit", "at most a year", id="over-a-year"
        ),
        pytest.param(
            "{rate: 10/minute, strategy: token-bucket}",
            "routes[0].rate_limit.strategy",
            "sliding-window",
            id="unknown-strategy",
        ),
        pytest.param(
            "{rate: 10/minute, by: ip}", "routes[0].rate_limit.by", "consumer", id="unknown-by"
        ),
    ],
)
def test_a_rate_limit_that_cannot_be_enforced_is_refused(
    limit: str, field: str, reason: str
) -> None:
    text = with_route(f"    rate_limit: {limit}  # @here\n")
    line, where, message = one_problem(text)
    assert (line, where) == (marks(text)["here"], field)
    assert reason in message


# --- credentials ----------------------------------------------------------------------------
def test_an_audience_may_be_one_string() -> None:
    table = load_text(issuer("      audience: strangler\n      jwks_url: https://idp/jwks\n"))
    assert table.credentials.jwt[0].audience == ("strangler",)


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        pytest.param(
            "      jwks_url: https://idp/jwks\n      key_file: k.pem\n",
            "credentials.jwt[0]",
            "exactly one of jwks_url, key_file and secret_file",
            id="two-sources",
        ),
        pytest.param(
            "      audience: [strangler]\n",
            "credentials.jwt[0]",
            "exactly one of jwks_url, key_file and secret_file",
            id="no-source",
        ),
        pytest.param(
            "      key_file: k.pem\n      algorithms: [HS256]\n",
            "credentials.jwt[0]",
            "never a public key",
            id="hmac-on-a-public-key",
        ),
        pytest.param(
            "      secret_file: s\n      algorithms: [RS256]\n",
            "credentials.jwt[0]",
            "HS256/384/512 only",
            id="secret-with-rs256",
        ),
        pytest.param(
            "      secret_file: s\n      algorithms: [HS256, RS256]\n",
            "credentials.jwt[0]",
            "HS256/384/512 only",
            id="secret-with-mixed",
        ),
        pytest.param(
            "      jwks_url: https://idp/jwks\n      algorithms: [XS512]  # @here\n",
            "credentials.jwt[0].algorithms",
            "'XS512' is not one of",
            id="unknown-algorithm",
        ),
        pytest.param(
            "      jwks_url: https://idp/jwks\n      algorithms: [none]  # @here\n",
            "credentials.jwt[0].algorithms",
            "'none' is not one of",
            id="alg-none",
        ),
        pytest.param(
            "      jwks_url: https://idp/jwks\n      algorithms: []  # @here\n",
            "credentials.jwt[0].algorithms",
            "at least one algorithm",
            id="no-algorithm",
        ),
        pytest.param(
            "      jwks_url: file:///etc/jwks.json  # @here\n",
            "credentials.jwt[0].jwks_url",
            "http:// or https://",
            id="jwks-url-not-http",
        ),
    ],
)
def test_an_issuer_that_could_be_misused_is_refused(fields: str, field: str, reason: str) -> None:
    text = issuer(fields)
    line, where, message = one_problem(text)
    expected = marks(text).get("here", 7)  # the issuer's own line, else the field's
    assert (line, where) == (expected, field)
    assert reason in message


def test_each_issuer_is_declared_once() -> None:
    text = (
        HEAD + "credentials:\n  jwt:  # @here\n"
        "    - {issuer: 'https://idp.example', jwks_url: 'https://idp.example/a'}\n"
        "    - {issuer: 'https://idp.example', jwks_url: 'https://idp.example/b'}\n"
    )
    assert one_problem(text) == (
        marks(text)["here"],
        "credentials.jwt",
        "each issuer is declared once",
    )


@pytest.mark.parametrize("name", ["Authorization", "authorization", "Cookie", "Host", "X API Key"])
def test_a_header_that_cannot_carry_api_keys_is_refused(name: str) -> None:
    text = HEAD + f"credentials:\n  api_key_header: '{name}'  # @here\n"
    line, where, message = one_problem(text)
    assert (line, where) == (marks(text)["here"], "credentials.api_key_header")
    assert "cannot carry API keys" in message


def test_a_missing_key_file_is_named_relative_to_the_routes_file(tmp_path: Path) -> None:
    text = issuer("      key_file: keys/partner.pem  # @here\n")
    line, where, message = one_problem(text, base=tmp_path)
    assert (line, where) == (marks(text)["here"], "credentials.jwt[0].key_file")
    assert "'keys/partner.pem' is not a readable file" in message
    assert str(tmp_path.resolve() / "keys" / "partner.pem") in message


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_a_key_file_is_found_beside_the_routes_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    public = (
        ec_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "keys" / "partner.pem").write_bytes(public)
    routes = tmp_path / "routes.yaml"
    routes.write_text(issuer("      key_file: keys/partner.pem\n      algorithms: [ES256]\n"))
    table = load_file(routes)
    assert table.credentials.jwt[0].key_file == str((tmp_path / "keys" / "partner.pem").resolve())


def test_a_private_key_as_a_key_file_is_refused(tmp_path: Path) -> None:
    private = ec_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "signing.pem").write_bytes(private)
    text = issuer("      key_file: signing.pem  # @here\n      algorithms: [ES256]\n")
    line, where, message = one_problem(text, base=tmp_path)
    assert (line, where) == (marks(text)["here"], "credentials.jwt[0].key_file")
    assert "neither a PEM public key nor a JWK set" in message


def test_a_secret_shorter_than_its_hash_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("short\n")
    text = issuer("      secret_file: secret  # @here\n      algorithms: [HS256]\n")
    line, where, message = one_problem(text, base=tmp_path)
    assert (line, where) == (marks(text)["here"], "credentials.jwt[0].secret_file")
    assert "no usable key" in message


def test_a_good_secret_file_loads(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text(secrets.token_urlsafe(48))
    table = load_text(
        issuer("      secret_file: secret\n      algorithms: [HS256]\n"), base=tmp_path
    )
    assert table.credentials.jwt[0].secret_file == str((tmp_path / "secret").resolve())


# --- paths ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["check", "refuse"])
def test_escaped_slashes_are_checked_or_refused(value: str) -> None:
    table = load_text(HEAD + f"paths: {{escaped_slashes: {value}}}\n")
    assert table.paths.escaped_slashes == value


def test_escaped_slashes_take_no_other_value() -> None:
    text = HEAD + "paths: {escaped_slashes: allow}  # @here\n"
    line, where, message = one_problem(text)
    assert (line, where) == (marks(text)["here"], "paths.escaped_slashes")
    assert "'check' or 'refuse'" in message


@pytest.mark.parametrize(
    "path", ["/api;v=1/orders", "/api/orders;jsessionid=1", "/api./orders", "/api/orders."]
)
def test_a_route_path_no_request_could_reach_is_refused(path: str) -> None:
    text = (
        HEAD
        + f"routes:\n  - name: orders\n    match: {{path: '{path}'}}  # @here\n    to: orders\n"
    )
    assert one_problem(text) == (
        marks(text)["here"],
        "routes[0].match.path",
        "a path has no ';' and no segment ending in '.'",
    )


# --- compile --------------------------------------------------------------------------------
PROTECTED = (
    HEAD
    + """\
credentials: {api_key_header: X-Partner-Key}
access: {groups: [staff]}
routes:
  - name: admin
    match: {path: /Admin/Users, exact: true}
    to: monolith
  - name: orders
    match: {path: /API/V1/Orders}
    to: orders
    access:
      - {groups: [partners], methods: [GET]}
      - {consumers: [back-office]}
    rate_limit: {rate: 100/minute, burst: 20/second}
  - name: health
    match: {path: /health}
    to: monolith
    access: public
  - name: search
    match: {path: /search}
    to: monolith
    access: public
    rate_limit: {rate: 10/second, by: client, strategy: fixed-window}
  - name: feed
    match: {path: /feed}
    to: monolith
    access: public
    rate_limit: {rate: 10/second}
"""
)


def test_a_route_without_access_inherits_the_tables() -> None:
    snapshot = compile_table(load_text(PROTECTED))
    staff = AccessPolicy((Rule(frozenset(), frozenset({"staff"}), None),))
    assert snapshot.access == staff  # also for requests no route takes
    admin = next(r for r in snapshot.routes if r.name == "admin")
    assert admin.access == staff


def test_a_routes_own_rules_replace_the_tables() -> None:
    snapshot = compile_table(load_text(PROTECTED))
    orders = next(r for r in snapshot.routes if r.name == "orders")
    assert orders.access == AccessPolicy(
        (
            Rule(frozenset(), frozenset({"partners"}), frozenset({"GET", "HEAD"})),
            Rule(frozenset({"back-office"}), frozenset(), None),
        )
    )


def test_a_public_route_has_no_access_rules() -> None:
    snapshot = compile_table(load_text(PROTECTED))
    health = next(r for r in snapshot.routes if r.name == "health")
    assert health.access is None
    assert (health.identify, health.guarded) == (False, False)


@pytest.mark.parametrize(
    ("name", "identify", "guarded"),
    [
        pytest.param("admin", True, True, id="access-only"),
        pytest.param("orders", True, True, id="access-and-rate"),
        pytest.param("health", False, False, id="public"),
        pytest.param("search", False, True, id="rate-by-client"),
        pytest.param("feed", True, True, id="rate-by-consumer"),
    ],
)
def test_which_routes_identify_the_caller_and_run_the_guard(
    name: str, identify: bool, guarded: bool
) -> None:
    snapshot = compile_table(load_text(PROTECTED))
    route = next(r for r in snapshot.routes if r.name == name)
    assert (route.identify, route.guarded) == (identify, guarded)


def test_rate_limits_compile_as_declared() -> None:
    snapshot = compile_table(load_text(PROTECTED))
    search = next(r for r in snapshot.routes if r.name == "search")
    assert search.rate_limit is not None
    assert (search.rate_limit.rate, search.rate_limit.by, search.rate_limit.strategy) == (
        "10/second",
        "client",
        "fixed-window",
    )


def test_the_api_key_header_is_matched_lower_case_and_named_as_declared() -> None:
    credentials = compile_table(load_text(PROTECTED)).credentials
    assert credentials == CredentialPolicy(b"x-partner-key", (), "X-Partner-Key")


def test_a_table_without_credentials_takes_x_api_key() -> None:
    credentials = compile_table(load_text(HEAD)).credentials
    assert (credentials.api_key_header, credentials.api_key_name) == (b"x-api-key", "X-API-Key")


def table_with(routes: str, top: str = "") -> RouteTable:
    return load_text(HEAD + top + "routes:\n" + routes)


OPEN_ROUTE = "  - name: open\n    match: {path: /open}\n    to: monolith\n"


def test_a_table_is_protected_when_a_route_has_access_rules_or_one_listener() -> None:
    assert not compile_table(table_with(OPEN_ROUTE)).protected
    assert compile_table(table_with(OPEN_ROUTE + "    access: {groups: [staff]}\n")).protected
    assert compile_table(table_with(OPEN_ROUTE, "access: {groups: [staff]}\n")).protected
    assert compile_table(table_with(OPEN_ROUTE + "    expose: internal\n")).protected


def test_a_table_default_every_route_opts_out_of_protects_nothing() -> None:
    table = table_with(OPEN_ROUTE + "    access: public\n", "access: {groups: [staff]}\n")
    snapshot = compile_table(table)
    assert snapshot.access is not None  # requests no route takes are still checked
    assert not snapshot.protected


def test_case_insensitive_paths_are_indexed_lower_case() -> None:
    snapshot = compile_table(
        load_text(PROTECTED.replace("routes:", "paths: {case_insensitive: true}\nroutes:"))
    )
    assert snapshot.paths == PathPolicy(True, "check")
    assert "/admin/users" in snapshot.exact
    assert "/Admin/Users" not in snapshot.exact
    assert "v1" in snapshot.trie.children["api"].children
    assert "API" not in snapshot.trie.children


def test_case_sensitive_paths_are_indexed_as_written() -> None:
    snapshot = compile_table(load_text(PROTECTED))
    assert snapshot.paths == PathPolicy(False, "check")
    assert "/Admin/Users" in snapshot.exact
    assert "API" in snapshot.trie.children
