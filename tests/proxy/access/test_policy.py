"""Access decisions (pure): which rules admit a caller and a method, the 401 and 403 that refuse
one (with the challenge naming how to present a credential), and what the upstream is told
about the caller."""

from __future__ import annotations

import pytest

from proxy.access.policy import Identity, admits, authorize, challenge, upstream_fields
from proxy.errors import ProxyError
from proxy.table.compile import AccessPolicy, CredentialPolicy, Rule

CREDENTIALS = CredentialPolicy(b"x-api-key", ())
PARTNER_HEADER = CredentialPolicy(b"x-partner-key", (), "X-Partner-Key")


def rule(
    consumers: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
    methods: tuple[str, ...] | None = None,
) -> Rule:
    return Rule(
        frozenset(consumers), frozenset(groups), None if methods is None else frozenset(methods)
    )


def policy(*rules: Rule) -> AccessPolicy:
    return AccessPolicy(rules)


def caller(
    consumer: str = "mobile-ios",
    groups: tuple[str, ...] = (),
    via: str = "key",
    field: bytes | None = b"x-api-key",
) -> Identity:
    return Identity(consumer, frozenset(groups), via, field)


# --- admits ---------------------------------------------------------------------------------
def test_a_rule_naming_consumers_admits_those_consumers_only() -> None:
    access = policy(rule(consumers=("back-office", "mobile-ios")))
    assert admits(access, caller("back-office"), "GET")
    assert admits(access, caller("mobile-ios"), "DELETE")
    assert not admits(access, caller("partner-acme"), "GET")


def test_a_rule_naming_groups_admits_any_member_of_one_of_them() -> None:
    access = policy(rule(groups=("partners", "staff")))
    assert admits(access, caller("acme", groups=("partners",)), "GET")
    assert admits(access, caller("ana", groups=("readers", "staff")), "GET")
    assert not admits(access, caller("bob", groups=("readers",)), "GET")
    assert not admits(access, caller("carol"), "GET")  # in no group at all


def test_a_rule_naming_consumers_and_groups_admits_either() -> None:
    access = policy(rule(consumers=("back-office",), groups=("partners",)))
    assert admits(access, caller("back-office"), "GET")
    assert admits(access, caller("acme", groups=("partners",)), "GET")
    assert not admits(access, caller("mobile-ios", groups=("apps",)), "GET")


def test_a_rule_naming_neither_admits_any_identified_consumer() -> None:
    access = policy(rule())
    assert admits(access, caller("anyone"), "GET")
    assert admits(access, caller("someone-else", groups=("x",), via="mtls", field=None), "PUT")


def test_methods_limit_what_a_rule_allows() -> None:
    access = policy(rule(groups=("partners",), methods=("GET", "HEAD")))
    partner = caller("acme", groups=("partners",))
    assert admits(access, partner, "GET")
    assert admits(access, partner, "HEAD")
    assert not admits(access, partner, "POST")
    assert not admits(access, partner, "DELETE")


def test_methods_limit_a_rule_that_names_neither_consumers_nor_groups() -> None:
    access = policy(rule(methods=("GET",)))
    assert admits(access, caller(), "GET")
    assert not admits(access, caller(), "POST")


def test_any_rule_that_matches_lets_the_caller_in() -> None:
    access = policy(
        rule(groups=("partners",), methods=("GET",)),
        rule(consumers=("back-office",)),
    )
    partner = caller("acme", groups=("partners",))
    assert admits(access, partner, "GET")
    assert not admits(access, partner, "POST")  # the second rule is not the partner's
    assert admits(access, caller("back-office"), "POST")  # the second rule, every method
    assert not admits(access, caller("mobile-ios"), "GET")


def test_a_rule_that_does_not_match_does_not_stop_a_later_one() -> None:
    access = policy(rule(consumers=("acme",), methods=("GET",)), rule(groups=("writers",)))
    assert admits(access, caller("acme", groups=("writers",)), "POST")


def test_no_rules_admit_nobody() -> None:
    assert not admits(policy(), caller(groups=("staff",)), "GET")


# --- authorize ------------------------------------------------------------------------------
def refusal(
    access: AccessPolicy,
    identity: Identity | None,
    method: str = "GET",
    credentials: CredentialPolicy = CREDENTIALS,
) -> ProxyError:
    with pytest.raises(ProxyError) as caught:
        authorize(access, identity, method, credentials)
    return caught.value


def header(error: ProxyError, name: bytes) -> bytes | None:
    return next((value for field, value in error.headers if field == name), None)


def test_an_admitted_caller_is_let_through() -> None:
    authorize(policy(rule(groups=("staff",))), caller(groups=("staff",)), "GET", CREDENTIALS)


def test_no_credential_is_a_401_with_a_challenge_naming_the_declared_header() -> None:
    error = refusal(policy(rule()), None, credentials=PARTNER_HEADER)
    assert (error.status, error.kind) == (401, "credential-required")
    value = header(error, b"www-authenticate")
    assert value is not None
    assert b'Bearer realm="strangler"' in value
    assert b'ApiKey realm="strangler", header="X-Partner-Key"' in value  # as declared
    assert b"invalid_token" not in value  # nothing was refused: no token was given


def test_no_credential_is_a_401_even_where_a_rule_would_admit_anyone() -> None:
    error = refusal(policy(rule()), None)
    assert error.status == 401


def test_an_identified_caller_no_rule_admits_is_a_403_without_a_challenge() -> None:
    access = policy(rule(groups=("staff",)))
    error = refusal(access, caller("acme", groups=("partners",)), "DELETE")
    assert (error.status, error.kind) == (403, "forbidden")
    assert header(error, b"www-authenticate") is None
    assert "acme" in error.detail
    assert "DELETE" in error.detail


def test_a_method_the_rules_do_not_allow_is_a_403() -> None:
    access = policy(rule(groups=("partners",), methods=("GET",)))
    assert refusal(access, caller(groups=("partners",)), "POST").status == 403


# --- challenge ------------------------------------------------------------------------------
def test_the_challenge_of_a_refused_token_says_invalid_token() -> None:
    value = challenge(CREDENTIALS, invalid_token=True)
    assert value == (
        b'Bearer realm="strangler", error="invalid_token", '
        b'ApiKey realm="strangler", header="X-API-Key"'
    )


def test_the_challenge_without_a_refused_token_names_both_ways_in() -> None:
    assert challenge(PARTNER_HEADER) == (
        b'Bearer realm="strangler", ApiKey realm="strangler", header="X-Partner-Key"'
    )


# --- upstream_fields ------------------------------------------------------------------------
def test_the_credential_header_is_removed_and_the_caller_named() -> None:
    headers = [(b"Accept", b"*/*"), (b"X-API-Key", b"sk_secret"), (b"X-Trace", b"1")]
    upstream_fields(headers, caller("acme", groups=("partners",)), forward_credentials=False)
    assert headers == [
        (b"Accept", b"*/*"),
        (b"X-Trace", b"1"),
        (b"x-consumer-id", b"acme"),
        (b"x-consumer-groups", b"partners"),
    ]


def test_the_credential_header_is_matched_whatever_its_case() -> None:
    headers = [(b"x-partner-key", b"sk_a"), (b"X-PARTNER-KEY", b"sk_b"), (b"Accept", b"*/*")]
    upstream_fields(headers, caller(field=b"x-partner-key"), forward_credentials=False)
    assert [name for name, _ in headers] == [b"Accept", b"x-consumer-id"]


def test_a_bearer_credential_removes_the_authorization_header() -> None:
    headers = [(b"Authorization", b"Bearer eyJ.x.y"), (b"X-API-Key", b"not-checked")]
    upstream_fields(headers, caller(via="jwt", field=b"authorization"), forward_credentials=False)
    assert (b"X-API-Key", b"not-checked") in headers  # not the credential that was checked
    assert all(name.lower() != b"authorization" for name, _ in headers)


def test_forward_credentials_keeps_the_credential() -> None:
    headers = [(b"X-API-Key", b"sk_secret")]
    upstream_fields(headers, caller(), forward_credentials=True)
    assert headers == [(b"X-API-Key", b"sk_secret"), (b"x-consumer-id", b"mobile-ios")]


def test_a_certificate_identity_removes_no_header() -> None:
    headers = [(b"Authorization", b"Bearer session"), (b"X-API-Key", b"x")]
    upstream_fields(headers, caller(via="mtls", field=None), forward_credentials=False)
    assert headers[:2] == [(b"Authorization", b"Bearer session"), (b"X-API-Key", b"x")]
    assert headers[2] == (b"x-consumer-id", b"mobile-ios")


def test_groups_are_sent_sorted_in_one_field() -> None:
    headers: list[tuple[bytes, bytes]] = []
    upstream_fields(
        headers, caller(groups=("staff", "admins", "partners")), forward_credentials=False
    )
    assert (b"x-consumer-groups", b"admins, partners, staff") in headers


def test_a_consumer_in_no_group_sends_no_groups_field() -> None:
    headers: list[tuple[bytes, bytes]] = []
    upstream_fields(headers, caller(groups=()), forward_credentials=False)
    assert headers == [(b"x-consumer-id", b"mobile-ios")]
