"""Consumers as pure data: adding one (a key made once, kept only as a hash), rotation with a
grace, revocation of a key or a whole consumer, certificate subjects compared normalised, JWT
pairs, the audit entry of each change, the document's round trip, and the data plane's Registry
lookups."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from proxy.access.consumers import (
    NAME,
    Add,
    ConsumerDocument,
    ConsumerRefused,
    CredentialTaken,
    DocumentInvalid,
    DuplicateConsumer,
    Operation,
    Registry,
    Result,
    Revoke,
    RotateKey,
    UnknownConsumer,
    UnknownKey,
    Update,
    apply,
    normalise_subject,
    parse_grace,
)
from proxy.table import fields

T0 = 1_700_000_000.0
HOUR = 3_600.0


def run(
    document: ConsumerDocument, operation: Operation, now: float = T0, reason: str = "why"
) -> Result:
    return apply(document, operation, author="ana", reason=reason, now=now)


def with_key(name: str = "mobile-ios", **fields: Any) -> tuple[ConsumerDocument, str]:
    result = run(ConsumerDocument(), Add(name, **fields))
    assert result.key is not None
    return result.document, result.key


def test_consumer_names_follow_the_upstream_name_rule() -> None:
    assert NAME.pattern == fields.NAME.pattern


def test_adding_a_consumer_makes_a_key_shown_once_and_kept_only_as_its_hash() -> None:
    result = run(ConsumerDocument(), Add("mobile-ios", groups=("mobile",), description="iOS"))
    secret = result.key
    assert secret is not None
    assert secret.startswith("sk_")
    assert len(secret) == 3 + 43
    (consumer,) = result.document.consumers
    (key,) = consumer.keys
    assert key.id.startswith("k_")
    assert len(key.id) == 10
    assert key.hint == secret[:9]
    assert key.expires is None
    stored = json.dumps(result.document.to_json())
    assert secret not in stored  # only the hash: a copy of the store lets nobody in
    assert key.sha256 in stored
    registry = Registry(result.document)
    assert registry.by_key(secret, T0) == consumer
    assert registry.by_key(secret[:-1] + ("A" if secret[-1] != "A" else "B"), T0) is None
    assert result.document.version == 1
    assert (result.entry.action, result.entry.consumer, result.entry.key_id) == (
        "add",
        "mobile-ios",
        key.id,
    )


def test_what_the_api_and_the_cli_answer_shows_the_key_once_and_never_its_hash() -> None:
    result = run(ConsumerDocument(), Add("mobile-ios"))
    answer = result.as_dict(T0)
    (key,) = result.document.consumers[0].keys
    assert answer["key"] == {"id": key.id, "secret": result.key, "hint": key.hint, "expires": None}
    assert key.sha256 not in json.dumps(answer)
    listing = json.dumps(result.document.public(T0))
    assert key.sha256 not in listing
    assert str(result.key) not in listing
    assert result.document.public(T0)["consumers"][0]["keys"] == [
        {"id": key.id, "hint": key.hint, "created": T0, "expires": None, "live": True}
    ]


def test_a_consumer_for_mtls_or_jwt_only_has_no_key() -> None:
    result = run(
        ConsumerDocument(),
        Add("orders", subjects=("CN=orders,O=shop",), jwt=(("https://idp/", "c1"),), key=False),
    )
    assert result.key is None
    assert result.document.consumers[0].keys == ()
    assert result.as_dict(T0)["key"] is None


def test_a_duplicate_name_is_refused() -> None:
    document, _ = with_key("mobile-ios")
    with pytest.raises(DuplicateConsumer) as refused:
        run(document, Add("mobile-ios"))
    assert refused.value.status == 409


@pytest.mark.parametrize(
    "name", ["Mobile", "-mobile", "mobile ios", "m" * 65, "", "mobile/ios", "mobile\n", "history"]
)
def test_a_name_out_of_the_rule_is_refused(name: str) -> None:
    with pytest.raises(ConsumerRefused) as refused:
        run(ConsumerDocument(), Add(name))
    assert refused.value.status == 422


@pytest.mark.parametrize(
    "operation",
    [
        Add("ok", groups=("Not A Group",)),
        Add("ok", subjects=("no equals sign",)),
        Add("ok", subjects=("CN=",)),
        Add("ok", jwt=(("", "sub"),)),
        Add("ok", description="x" * 501),
        Add("ok", description="line\nforged line"),
    ],
)
def test_invalid_fields_are_refused(operation: Add) -> None:
    with pytest.raises(ConsumerRefused) as refused:
        run(ConsumerDocument(), operation)
    assert refused.value.status == 422


def test_every_change_needs_a_reason() -> None:
    with pytest.raises(ConsumerRefused, match="reason"):
        run(ConsumerDocument(), Add("mobile-ios"), reason="  ")


def test_a_rotation_keeps_the_old_key_for_the_grace_then_only_the_new_one_works() -> None:
    document, old = with_key()
    rotated = run(document, RotateKey("mobile-ios", grace=HOUR), now=T0 + 10)
    new = rotated.key
    assert new is not None
    assert new != old
    registry = Registry(rotated.document)
    # during the grace, both work: apps that have not updated yet keep working
    assert registry.by_key(old, T0 + 10 + HOUR - 1) is not None
    assert registry.by_key(new, T0 + 10 + HOUR - 1) is not None
    # then the old one is refused
    assert registry.by_key(old, T0 + 10 + HOUR) is None
    assert registry.by_key(new, T0 + 10 + HOUR * 1000) is not None
    assert rotated.entry.action == "rotate-key"
    assert rotated.entry.key_id != rotated.key


def test_several_keys_are_live_during_rotations() -> None:
    document, first = with_key()
    second = run(document, RotateKey("mobile-ios", grace=HOUR), now=T0 + 1)
    third = run(second.document, RotateKey("mobile-ios", grace=2 * HOUR), now=T0 + 2)
    registry = Registry(third.document)
    for key in (first, second.key, third.key):
        assert key is not None
        assert registry.by_key(key, T0 + 3) is not None
    # a later rotation never lengthens an earlier one's grace
    assert registry.by_key(first, T0 + 1 + HOUR) is None
    assert registry.by_key(str(second.key), T0 + 1 + HOUR) is not None


def test_a_rotation_with_no_grace_revokes_the_old_keys_at_once() -> None:
    document, old = with_key()
    rotated = run(document, RotateKey("mobile-ios", grace=0), now=T0 + 5)
    assert Registry(rotated.document).by_key(old, T0 + 5) is None
    assert len(rotated.document.consumers[0].keys) == 1


def test_expired_keys_are_dropped_at_the_next_rotation() -> None:
    document, _ = with_key()
    first = run(document, RotateKey("mobile-ios", grace=HOUR), now=T0)
    later = run(first.document, RotateKey("mobile-ios", grace=HOUR), now=T0 + 2 * HOUR)
    ids = [k.id for k in later.document.consumers[0].keys]
    assert ids == [first.entry.key_id, later.entry.key_id]


def test_a_rotation_of_an_unknown_consumer_is_refused() -> None:
    with pytest.raises(UnknownConsumer) as refused:
        run(ConsumerDocument(), RotateKey("nobody"))
    assert refused.value.status == 404


def test_revoking_one_key_leaves_the_others() -> None:
    document, old = with_key()
    rotated = run(document, RotateKey("mobile-ios", grace=HOUR))
    old_id = rotated.document.consumers[0].keys[0].id
    revoked = run(rotated.document, Revoke("mobile-ios", old_id))
    registry = Registry(revoked.document)
    assert registry.by_key(old, T0) is None
    assert registry.by_key(str(rotated.key), T0) is not None
    assert (revoked.entry.action, revoked.entry.key_id) == ("revoke-key", old_id)
    with pytest.raises(UnknownKey):
        run(revoked.document, Revoke("mobile-ios", old_id))


def test_revoking_a_consumer_removes_every_credential_it_has() -> None:
    document, key = with_key(
        "partner", subjects=("CN=partner,O=acme",), jwt=(("https://idp.acme/", "p-1"),)
    )
    revoked = run(document, Revoke("partner"))
    registry = Registry(revoked.document)
    assert registry.by_key(key, T0) is None
    assert registry.by_subject("CN=partner,O=acme") is None
    assert registry.by_jwt("https://idp.acme/", "p-1") is None
    assert revoked.document.consumers == ()
    assert (revoked.entry.action, revoked.entry.key_id) == ("revoke", None)
    with pytest.raises(UnknownConsumer):
        run(revoked.document, Revoke("partner"))


@pytest.mark.parametrize(
    "presented",
    [
        "CN=orders,O=Shop Inc",
        "cn=ORDERS,o=shop inc",
        "CN=orders, O=Shop  Inc",
        "commonName=orders,organizationName=Shop Inc",
        "2.5.4.3=orders,2.5.4.10=Shop Inc",
        "CN=\\6Frders,O=Shop Inc",
    ],
)
def test_a_certificate_subject_matches_however_it_is_written(presented: str) -> None:
    result = run(ConsumerDocument(), Add("orders", subjects=("CN=orders,O=Shop Inc",), key=False))
    assert Registry(result.document).by_subject(presented) == result.document.consumers[0]


def test_the_subject_cryptography_writes_for_a_certificate_matches() -> None:
    """What the TLS listener hands over: x509.Name.rfc4514_string(), most specific first."""
    name = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Shop, Inc")]
            ),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "orders"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "backend"),
                ]
            ),
        ]
    )
    declared = "OU=Backend+CN=orders, O=Shop\\, Inc, C=fr"
    result = run(ConsumerDocument(), Add("orders", subjects=(declared,), key=False))
    registry = Registry(result.document)
    assert name.rfc4514_string() == "CN=orders+OU=backend,O=Shop\\, Inc,C=FR"
    assert registry.by_subject(name.rfc4514_string()) is not None
    assert registry.by_subject("CN=orders,OU=backend,O=Shop\\, Inc,C=DE") is None
    assert registry.by_subject("O=Shop\\, Inc,CN=orders+OU=backend,C=FR") is None  # RDN order


@pytest.mark.parametrize(
    ("subject", "why"),
    [
        ("", "empty"),
        ("garbage", "no '='"),
        ("CN=a,", "no '='"),
        ("=x", "not an attribute type"),
        ("CN=a\\", "escapes nothing"),
        ("CN=#zz", "not hex"),
    ],
)
def test_what_is_not_a_subject_matches_nobody(subject: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        normalise_subject(subject)
    result = run(ConsumerDocument(), Add("orders", subjects=("CN=a",), key=False))
    assert Registry(result.document).by_subject(subject) is None


def test_a_subject_or_a_jwt_pair_names_one_consumer_only() -> None:
    document = run(
        ConsumerDocument(),
        Add("orders", subjects=("CN=orders",), jwt=(("https://idp/", "svc"),), key=False),
    ).document
    with pytest.raises(CredentialTaken) as refused:
        run(document, Add("billing", subjects=("cn=ORDERS",), key=False))
    assert refused.value.status == 409
    with pytest.raises(CredentialTaken):
        run(document, Add("billing", jwt=(("https://idp/", "svc"),), key=False))
    billing = run(document, Add("billing", key=False)).document
    with pytest.raises(CredentialTaken):
        run(billing, Update("billing", subjects=("CN=orders",)))


def test_jwt_pairs_are_compared_exactly() -> None:
    document = run(ConsumerDocument(), Add("app", jwt=(("https://idp/", "Abc"),), key=False))
    registry = Registry(document.document)
    assert registry.by_jwt("https://idp/", "Abc") is not None
    assert registry.by_jwt("https://idp/", "abc") is None
    assert registry.by_jwt("https://idp", "Abc") is None


def test_an_update_replaces_the_fields_given_and_keeps_the_others() -> None:
    document, key = with_key(groups=("mobile",), description="iOS")
    updated = run(document, Update("mobile-ios", groups=("mobile", "beta")))
    consumer = updated.document.consumers[0]
    assert consumer.groups == ("beta", "mobile")
    assert consumer.description == "iOS"
    assert Registry(updated.document).by_key(key, T0) == consumer
    assert updated.entry.action == "update"
    assert "groups" in updated.entry.detail
    cleared = run(updated.document, Update("mobile-ios", groups=()))
    assert cleared.document.consumers[0].groups == ()
    with pytest.raises(ConsumerRefused, match="nothing to update"):
        run(document, Update("mobile-ios"))
    with pytest.raises(UnknownConsumer):
        run(document, Update("nobody", groups=("x",)))


def test_each_change_is_a_version_with_its_audit_entry_and_no_secret_in_it() -> None:
    document = ConsumerDocument()
    secrets = []
    entries = []
    for operation in (
        Add("a"),
        RotateKey("a", grace=HOUR),
        Update("a", groups=("g",)),
        Revoke("a"),
    ):
        result = apply(document, operation, author="ops", reason="because", now=T0)
        entries.append(result.entry)
        secrets += [result.key] if result.key else []
        secrets += [k.sha256 for c in result.document.consumers for k in c.keys]
        document = result.document
    assert [e.version for e in entries] == [1, 2, 3, 4]
    assert [e.action for e in entries] == ["add", "rotate-key", "update", "revoke"]
    assert {(e.author, e.reason, e.time) for e in entries} == {("ops", "because", T0)}
    said = json.dumps([e.as_dict() for e in entries])
    assert secrets
    assert not [s for s in secrets if s in said]


def test_the_document_round_trips_through_json() -> None:
    document, key = with_key(
        groups=("mobile",), subjects=("CN=x",), jwt=(("https://i/", "s"),), description="d"
    )
    document = run(document, RotateKey("mobile-ios", grace=HOUR)).document
    again = ConsumerDocument.from_json(json.loads(json.dumps(document.to_json())))
    assert again == document
    assert Registry(again).by_key(key, T0) is not None


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"version": 1, "consumers": []},
        {"schema": 2, "version": 1, "consumers": []},
        {"schema": 1, "version": -1, "consumers": []},
        {"schema": 1, "version": 1, "consumers": {}},
        {"schema": 1, "version": 1, "consumers": [{"keys": []}]},
        {"schema": 1, "version": 1, "consumers": [{"name": "a"}, {"name": "a"}]},
        {"schema": 1, "version": 1, "consumers": [{"name": "a", "keys": [{"id": "k"}]}]},
        # Written by hand or into Redis: names the data plane would send upstream as they are.
        {"schema": 1, "version": 1, "consumers": [{"name": 'a"b'}]},
        {"schema": 1, "version": 1, "consumers": [{"name": "a", "groups": ["x, admin"]}]},
    ],
)
def test_a_document_that_is_not_one_is_refused(data: Any) -> None:
    with pytest.raises(DocumentInvalid):
        ConsumerDocument.from_json(data)


def test_the_empty_registry_knows_nobody() -> None:
    registry = Registry.empty()
    assert (registry.version, len(registry)) == (0, 0)
    assert registry.by_key("sk_anything", T0) is None
    assert registry.by_subject("CN=x") is None
    assert registry.by_jwt("i", "s") is None


def test_what_is_not_a_key_is_not_looked_up() -> None:
    document, key = with_key()
    registry = Registry(document)
    assert registry.by_key(key.removeprefix("sk_"), T0) is None
    assert registry.by_key("sk_" + "A" * 10_000, T0) is None


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("24h", 86_400.0), ("30m", 1_800.0), ("90s", 90.0), ("0", 0.0), ("0s", 0.0), (0, 0.0)],
)
def test_a_grace_is_a_duration(given: object, seconds: float) -> None:
    assert parse_grace(given) == seconds


@pytest.mark.parametrize("given", ["soon", "-1h", "2200h", True])
def test_a_grace_that_is_not_one_is_refused(given: object) -> None:
    with pytest.raises(ValueError, match=r"duration|grace"):
        parse_grace(given)
