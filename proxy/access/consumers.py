"""Consumers: who calls through the proxy (a mobile app, an internal service, a partner), the
groups they belong to, and the credentials that prove who they are. Pure: no I/O.

A consumer has a name (the rule of upstream names: [a-z0-9][a-z0-9._-]{0,63}), groups (route
access names groups or consumers) and any of three kinds of credentials, like Kong's consumers
with their key-auth, jwt and mtls-auth credentials:

- API keys: "sk_" + 256 random bits (secrets.token_urlsafe(32)). Only the key's SHA-256 is kept:
  a key has full entropy, so a fast hash is enough (GitHub's and PyPI's token storage; a slow
  password hash would only cost every request). A key is listed by its id ("k_" + 8 hex) and a
  hint (its first 6 characters after "sk_"); the key itself is shown once, when it is made.
- mTLS subjects: a client certificate's subject as an RFC 4514 string, compared normalised:
  attribute types by their short name (known OIDs and long names too), values with RFC 4518's
  caseIgnoreMatch preparation (NFKC, case folded, insignificant spaces removed), the attributes
  of a multi-valued RDN sorted. The order of the RDNs is kept: most specific first, as RFC 4514
  (and cryptography's Name.rfc4514_string()) writes them.
- JWT: (issuer, subject) pairs, compared exactly (RFC 7519 §7.2: a StringOrURI is compared as
  is, without case folding).

A subject or an (issuer, subject) pair names one consumer: giving it to a second one is refused.

Rotation, as with Kong's several key-auth credentials per consumer or AWS IAM's two access keys:
`RotateKey` adds a key, and the consumer's other keys expire after a grace (24 h by default, 0:
at once), so the apps that still hold an old key keep working until they update; keys that have
expired are dropped at the next rotation. Revocation removes a consumer with every credential it
has, or one key.

The document (every consumer, a schema number, a version counted up by each change) is what the
stores keep; `apply` turns a document and an operation into the next document and its audit
entry (who, when, why, what; never a key nor its hash). `Registry` is the data plane's read-only
index of one document: built in O(consumers), each lookup one dict access.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeAlias

from proxy.store.base import StoreError

SCHEMA = 1  # the document's format; a newer one is refused rather than half read
# The rule of upstream and route names (proxy.table.fields.NAME; a test keeps the two the same).
# Not imported: the CLI's local path would load the table model and pydantic for one pattern.
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
RESERVED = frozenset({"history"})  # GET /api/v1/consumers/history is the audit log
KEY_PREFIX = "sk_"
HINT_LENGTH = 6
MAX_PRESENTED = 256  # a presented "key" longer than this is not hashed, just refused
DEFAULT_GRACE = 86_400.0  # a rotation's old keys keep working for a day
MAX_GRACE = 90 * 86_400.0
MAX_LIVE_KEYS = 10  # a rotation loop must not grow the document without end
MAX_ITEMS = 100  # groups, subjects or JWT pairs of one consumer
MAX_TEXT = 1_024  # one subject, issuer or JWT subject
MAX_DESCRIPTION = 500
MAX_REASON = 500


class ConsumerRefused(StoreError):
    """An operation the document cannot take (the admin API's 422 unless a subclass says)."""

    status = 422
    kind = "invalid-consumer"


class UnknownConsumer(ConsumerRefused):
    status = 404
    kind = "unknown-consumer"

    def __init__(self, name: str) -> None:
        super().__init__(f"there is no consumer {name!r}")
        self.name = name


class UnknownKey(ConsumerRefused):
    status = 404
    kind = "unknown-key"

    def __init__(self, name: str, key_id: str) -> None:
        super().__init__(f"consumer {name!r} has no key {key_id!r}")


class DuplicateConsumer(ConsumerRefused):
    status = 409
    kind = "duplicate-consumer"

    def __init__(self, name: str) -> None:
        super().__init__(f"there is already a consumer {name!r}")


class CredentialTaken(ConsumerRefused):
    """A subject or JWT pair that already names another consumer."""

    status = 409
    kind = "credential-taken"


class DocumentInvalid(StoreError):
    """The stored document does not load here (hand-edited, or written by a newer version)."""

    status = 500
    kind = "consumers-invalid"


# --- the document ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    id: str
    sha256: str
    created: float
    expires: float | None = None
    hint: str = ""

    def live(self, now: float) -> bool:
        return self.expires is None or now < self.expires

    def public(self, now: float) -> dict[str, Any]:
        """What listings show: never the hash."""
        return {
            "id": self.id,
            "hint": self.hint,
            "created": self.created,
            "expires": self.expires,
            "live": self.live(now),
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Consumer:
    name: str
    groups: tuple[str, ...] = ()
    keys: tuple[Key, ...] = ()
    subjects: tuple[str, ...] = ()
    jwt: tuple[tuple[str, str], ...] = ()
    description: str = ""
    created: float = 0.0

    def public(self, now: float) -> dict[str, Any]:
        """The consumer as listings show it: keys by id and hint, never a hash."""
        return {
            "name": self.name,
            "description": self.description,
            "created": self.created,
            "groups": list(self.groups),
            "keys": [key.public(now) for key in self.keys],
            "subjects": list(self.subjects),
            "jwt": [{"issuer": issuer, "subject": subject} for issuer, subject in self.jwt],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "created": self.created,
            "groups": list(self.groups),
            "keys": [key.to_json() for key in self.keys],
            "subjects": list(self.subjects),
            "jwt": [{"issuer": issuer, "subject": subject} for issuer, subject in self.jwt],
        }


@dataclass(frozen=True)
class ConsumerDocument:
    """Every consumer (sorted by name) at one version; version 0 is the empty store."""

    version: int = 0
    consumers: tuple[Consumer, ...] = ()

    def get(self, name: str) -> Consumer | None:
        for consumer in self.consumers:
            if consumer.name == name:
                return consumer
        return None

    def public(self, now: float) -> dict[str, Any]:
        return {"version": self.version, "consumers": [c.public(now) for c in self.consumers]}

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": self.version,
            "consumers": [c.to_json() for c in self.consumers],
        }

    @classmethod
    def from_json(cls, data: Any) -> ConsumerDocument:
        """The document `to_json` wrote; DocumentInvalid says what is wrong with anything else."""
        try:
            return _document(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise DocumentInvalid(f"the consumers document is invalid: {exc}") from None


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} is not a string")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{what} is not a number")
    return float(value)


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{what} is not a list")
    return value


def _document(data: Any) -> ConsumerDocument:
    if not isinstance(data, Mapping):
        raise TypeError("not a JSON object")
    schema = data.get("schema")
    if not isinstance(schema, int) or schema < 1:
        raise ValueError("no schema number")
    if schema > SCHEMA:
        raise ValueError(f"schema {schema} is newer than this proxy's ({SCHEMA}): upgrade it")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError("no version number")
    consumers = tuple(_consumer(item) for item in _list(data.get("consumers"), "consumers"))
    names = [c.name for c in consumers]
    if len(set(names)) != len(names):
        raise ValueError("a consumer name appears twice")
    return ConsumerDocument(version, tuple(sorted(consumers, key=lambda c: c.name)))


def _named(value: Any, what: str) -> str:
    """A name the data plane writes into X-Consumer-Id/-Groups and the access log as it is: a
    document written by hand or straight into Redis is held to the CLI's rule (fail closed)."""
    text = _text(value, what)
    if not NAME.match(text):
        raise ValueError(f"{what} {text!r} is not 1-64 of a-z, 0-9, '.', '_', '-'")
    return text


def _consumer(item: Any) -> Consumer:
    if not isinstance(item, Mapping):
        raise TypeError("a consumer is not a JSON object")
    name = _named(item["name"], "a consumer's name")
    keys = tuple(
        Key(
            _text(k["id"], "a key id"),
            _text(k["sha256"], "a key hash"),
            _number(k["created"], "a key's creation time"),
            None if k.get("expires") is None else _number(k["expires"], "a key's expiry"),
            _text(k.get("hint", ""), "a key hint"),
        )
        for k in _list(item.get("keys", []), f"{name}'s keys")
    )
    return Consumer(
        name=name,
        groups=tuple(_named(g, "a group") for g in _list(item.get("groups", []), "groups")),
        keys=keys,
        subjects=tuple(_text(s, "a subject") for s in _list(item.get("subjects", []), "subjects")),
        jwt=tuple(
            (_text(p["issuer"], "an issuer"), _text(p["subject"], "a JWT subject"))
            for p in _list(item.get("jwt", []), "jwt")
        ),
        description=_text(item.get("description", ""), "a description"),
        created=_number(item.get("created", 0.0), "a creation time"),
    )


# --- credentials -----------------------------------------------------------------------------
def digest(presented: str) -> str:
    return hashlib.sha256(presented.encode()).hexdigest()


def new_key(now: float, taken: Iterable[str] = ()) -> tuple[Key, str]:
    """A new key (kept) and its plaintext (shown once); its id differs from those `taken`."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    used = set(taken)
    key_id = "k_" + secrets.token_hex(4)
    while key_id in used:
        key_id = "k_" + secrets.token_hex(4)
    hint = secret[: len(KEY_PREFIX) + HINT_LENGTH]
    return Key(key_id, digest(secret), now, None, hint), secret


# RFC 4514 §3's short names, and the long names and OIDs that mean them.
_TYPES = {
    "CN": ("commonname", "2.5.4.3"),
    "L": ("localityname", "2.5.4.7"),
    "ST": ("stateorprovincename", "2.5.4.8"),
    "O": ("organizationname", "2.5.4.10"),
    "OU": ("organizationalunitname", "2.5.4.11"),
    "C": ("countryname", "2.5.4.6"),
    "STREET": ("streetaddress", "2.5.4.9"),
    "DC": ("domaincomponent", "0.9.2342.19200300.100.1.25"),
    "UID": ("userid", "0.9.2342.19200300.100.1.1"),
    "SERIALNUMBER": ("serialnumber", "2.5.4.5"),
    "EMAILADDRESS": ("emailaddress", "1.2.840.113549.1.9.1"),
}
_TYPE_NAMES = {
    alias: short for short, aliases in _TYPES.items() for alias in (short.lower(), *aliases)
}
_KEYWORD = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|\d+(?:\.\d+)+)$")
_HEX = re.compile(r"^[0-9A-Fa-f]{2}$")
_HEXSTRING = re.compile(r"^#(?:[0-9a-f]{2})+$")
_SPECIAL = ' "#+,;<=>\\'


def _split_dn(text: str) -> list[list[tuple[str, bytes, bool]]]:
    """RDNs of attributes (type, value bytes, whether the value is a #hexstring) from an RFC 4514
    string; ValueError when it is not one."""
    rdns: list[list[tuple[str, bytes, bool]]] = []
    attributes: list[tuple[str, bytes, bool]] = []
    kind: str | None = None
    buffer = bytearray()
    hexform = False
    i = 0
    while i <= len(text):
        char = text[i] if i < len(text) else ","  # the end closes the last RDN
        if kind is None:
            if char == "=":
                kind, buffer, hexform = buffer.decode().strip(), bytearray(), False
            elif char in ",+":
                raise ValueError("an attribute has no '='")
            else:
                buffer += char.encode()
        elif char == "\\" and i < len(text):
            pair = text[i + 1 : i + 3]
            if _HEX.match(pair):
                buffer.append(int(pair, 16))
                i += 2
            elif pair[:1] and pair[0] in _SPECIAL:
                buffer += pair[0].encode()
                i += 1
            else:
                raise ValueError("a '\\' escapes nothing")
        elif char in ",+":
            attributes.append((kind, bytes(buffer).strip(), hexform))
            kind, buffer = None, bytearray()
            if char == ",":
                rdns.append(attributes)
                attributes = []
        else:
            if char == "#" and not buffer.strip():
                hexform = True  # an unescaped '#' first: the value's BER encoding in hex
            buffer += char.encode()
        i += 1
    return rdns


def _escape(value: str) -> str:
    return "".join("\\" + c if c in _SPECIAL else c for c in value)


def normalise_subject(text: str) -> str:
    """The form subjects are compared in (see the module's docstring); ValueError when `text`
    is not an RFC 4514 distinguished name."""
    if not text.strip():
        raise ValueError("an empty subject")
    rdns = []
    for attributes in _split_dn(text):
        parts = []
        for kind, raw, hexform in attributes:
            if not _KEYWORD.match(kind):
                raise ValueError(f"{kind!r} is not an attribute type")
            name = _TYPE_NAMES.get(kind.lower(), kind.upper())
            if hexform:
                value = raw.decode("ascii", "replace").lower()
                if not _HEXSTRING.match(value):
                    raise ValueError(f"{kind}'s #value is not hex")
            else:
                try:
                    decoded = raw.decode()
                except UnicodeDecodeError:
                    raise ValueError("a value is not UTF-8") from None
                if not decoded.strip():
                    raise ValueError(f"{kind} has no value")
                value = _escape(" ".join(unicodedata.normalize("NFKC", decoded).casefold().split()))
            parts.append(f"{name}={value}")
        rdns.append("+".join(sorted(parts)))
    return ",".join(rdns)


# --- operations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Add:
    """A new consumer, with a first API key unless not `key`."""

    name: str
    groups: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    jwt: tuple[tuple[str, str], ...] = ()
    description: str = ""
    key: bool = True


@dataclass(frozen=True)
class RotateKey:
    """A new key; the consumer's other keys expire `grace` seconds from now (0: at once)."""

    name: str
    grace: float = DEFAULT_GRACE


@dataclass(frozen=True)
class Revoke:
    """The consumer with every credential it has, or its key `key_id` only."""

    name: str
    key_id: str | None = None


@dataclass(frozen=True)
class Update:
    """Replace the fields given (None: kept)."""

    name: str
    groups: tuple[str, ...] | None = None
    subjects: tuple[str, ...] | None = None
    jwt: tuple[tuple[str, str], ...] | None = None
    description: str | None = None


Operation: TypeAlias = Add | RotateKey | Revoke | Update


@dataclass(frozen=True)
class AuditEntry:
    """One change: who, when, why, what. Never a key nor its hash."""

    version: int
    author: str
    time: float
    reason: str
    action: str  # add, rotate-key, revoke, revoke-key, update
    consumer: str
    key_id: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEntry:
        fields = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**fields)


@dataclass(frozen=True)
class Result:
    """A committed change: the new document, its audit entry, and the plaintext of the key it
    made, if any (to show once; it is kept nowhere)."""

    document: ConsumerDocument
    entry: AuditEntry
    key: str | None = field(default=None, repr=False)

    def as_dict(self, now: float) -> dict[str, Any]:
        """The answer of the admin API and of the CLI's --json (the one place the key is)."""
        consumer = self.document.get(self.entry.consumer)
        made = None
        if self.key is not None and consumer is not None:
            key = next(k for k in consumer.keys if k.id == self.entry.key_id)
            made = {"id": key.id, "secret": self.key, "hint": key.hint, "expires": key.expires}
        return {
            "version": self.document.version,
            "entry": self.entry.as_dict(),
            "consumer": None if consumer is None else consumer.public(now),
            "key": made,
        }


@dataclass(frozen=True)
class _Change:
    consumers: tuple[Consumer, ...]
    action: str
    consumer: str
    key_id: str | None = None
    detail: str = ""
    secret: str | None = None


def apply(
    document: ConsumerDocument, operation: Operation, *, author: str, reason: str, now: float
) -> Result:
    """`operation` on `document`: the next version and its audit entry, or ConsumerRefused."""
    reason = reason.strip()
    if not reason:
        raise ConsumerRefused("a reason is required: it is kept in the audit log")
    if len(reason) > MAX_REASON:
        raise ConsumerRefused(f"the reason is longer than {MAX_REASON} characters")
    if isinstance(operation, Add):
        change = _add(document, operation, now)
    elif isinstance(operation, RotateKey):
        change = _rotate(document, operation, now)
    elif isinstance(operation, Revoke):
        change = _revoke(document, operation)
    else:
        change = _update(document, operation)
    version = document.version + 1
    entry = AuditEntry(
        version,
        author.strip() or "unknown",
        round(now, 3),
        reason,
        change.action,
        change.consumer,
        change.key_id,
        change.detail,
    )
    consumers = tuple(sorted(change.consumers, key=lambda c: c.name))
    return Result(ConsumerDocument(version, consumers), entry, change.secret)


def _existing(document: ConsumerDocument, name: str) -> Consumer:
    found = document.get(name)
    if found is None:
        raise UnknownConsumer(name)
    return found


def _others(document: ConsumerDocument, name: str) -> tuple[Consumer, ...]:
    return tuple(c for c in document.consumers if c.name != name)


def _name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ConsumerRefused(
            f"{name!r} is not a consumer name: 1 to 64 of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or a digit"
        )
    if name in RESERVED:
        raise ConsumerRefused(f"{name!r} is reserved (an admin API path)")
    return name


def _many(values: Iterable[Any], what: str) -> list[Any]:
    found = list(dict.fromkeys(values))  # in order, without repeats
    if len(found) > MAX_ITEMS:
        raise ConsumerRefused(f"at most {MAX_ITEMS} {what} per consumer")
    return found


def _groups(groups: Iterable[str]) -> tuple[str, ...]:
    found = _many(groups, "groups")
    for group in found:
        if not NAME.fullmatch(group):
            raise ConsumerRefused(f"{group!r} is not a group name (the rule of consumer names)")
    return tuple(sorted(found))


def _plain(value: str, what: str) -> str:
    if not value or len(value) > MAX_TEXT or not value.isprintable():
        raise ConsumerRefused(f"{what} must be 1 to {MAX_TEXT} printable characters: {value!r}")
    return value


def _subjects(subjects: Iterable[str]) -> tuple[str, ...]:
    kept: dict[str, str] = {}
    for subject in _many(subjects, "subjects"):
        try:
            normal = normalise_subject(_plain(subject, "a subject"))
        except ValueError as exc:
            raise ConsumerRefused(f"{subject!r} is not an RFC 4514 subject: {exc}") from None
        kept.setdefault(normal, subject)
    return tuple(kept.values())


def _pairs(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (_plain(issuer, "a JWT issuer"), _plain(subject, "a JWT subject"))
        for issuer, subject in _many(pairs, "JWT pairs")
    )


def _description(text: str) -> str:
    if len(text) > MAX_DESCRIPTION or not text.isprintable():
        raise ConsumerRefused(
            f"a description is at most {MAX_DESCRIPTION} printable characters (no line breaks)"
        )
    return text


def _normal(subject: str) -> str | None:
    try:
        return normalise_subject(subject)
    except ValueError:
        return None  # a hand edit the store would refuse: it matches nothing


def _check_unique(others: Iterable[Consumer], consumer: Consumer) -> None:
    """A subject or JWT pair of `consumer` that another consumer has: CredentialTaken."""
    subjects = {_normal(s) for s in consumer.subjects} - {None}
    pairs = set(consumer.jwt)
    for other in others:
        for subject in other.subjects:
            if _normal(subject) in subjects:
                raise CredentialTaken(f"subject {subject!r} already names {other.name!r}")
        for pair in other.jwt:
            if pair in pairs:
                raise CredentialTaken(
                    f"JWT issuer {pair[0]!r} and subject {pair[1]!r} already name {other.name!r}"
                )


def _add(document: ConsumerDocument, op: Add, now: float) -> _Change:
    name = _name(op.name)
    if document.get(name) is not None:
        raise DuplicateConsumer(name)
    consumer = Consumer(
        name=name,
        groups=_groups(op.groups),
        subjects=_subjects(op.subjects),
        jwt=_pairs(op.jwt),
        description=_description(op.description),
        created=round(now, 3),
    )
    _check_unique(document.consumers, consumer)
    key_id, secret = None, None
    if op.key:
        key, secret = new_key(round(now, 3))
        consumer, key_id = replace(consumer, keys=(key,)), key.id
    detail = f"groups: {', '.join(consumer.groups) or 'none'}; " + ("a key" if op.key else "no key")
    return _Change((*document.consumers, consumer), "add", name, key_id, detail, secret)


def parse_grace(value: object) -> float:
    """Seconds from a number or a duration ("24h", "30m", "90s", "0"); ValueError otherwise."""
    from proxy.table.units import parse_duration

    if isinstance(value, str) and value.strip() in {"0", "0s", "0ms", "0m", "0h"}:
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    seconds = parse_duration(value)
    if seconds > MAX_GRACE:
        raise ValueError(f"a grace is at most {MAX_GRACE / 86_400:g} days")
    return seconds


def _rotate(document: ConsumerDocument, op: RotateKey, now: float) -> _Change:
    consumer = _existing(document, op.name)
    if not (math.isfinite(op.grace) and 0 <= op.grace <= MAX_GRACE):
        raise ConsumerRefused(f"a grace is 0 to {MAX_GRACE:g} seconds")
    now = round(now, 3)
    until = now + op.grace
    kept = []
    for key in consumer.keys:
        if op.grace == 0 or not key.live(now):
            continue  # revoked at once, or already dead
        kept.append(
            key if key.expires is not None and key.expires <= until else replace(key, expires=until)
        )
    if len(kept) >= MAX_LIVE_KEYS:
        raise ConsumerRefused(
            f"{op.name!r} has {len(kept)} live keys: revoke some (or rotate with a shorter grace)"
        )
    key, secret = new_key(now, (k.id for k in consumer.keys))
    others = _others(document, consumer.name)
    updated = replace(consumer, keys=(*kept, key))
    ending = ", ".join(k.id for k in kept) or "none"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))
    detail = f"old keys ({ending}) expire at {when} (grace {op.grace:g}s)"
    return _Change((*others, updated), "rotate-key", consumer.name, key.id, detail, secret)


def _revoke(document: ConsumerDocument, op: Revoke) -> _Change:
    consumer = _existing(document, op.name)
    others = _others(document, consumer.name)
    if op.key_id is None:
        ids = ", ".join(k.id for k in consumer.keys) or "none"
        detail = (
            f"removed with its keys ({ids}), {len(consumer.subjects)} subjects and "
            f"{len(consumer.jwt)} JWT pairs"
        )
        return _Change(others, "revoke", consumer.name, None, detail)
    kept = tuple(k for k in consumer.keys if k.id != op.key_id)
    if len(kept) == len(consumer.keys):
        raise UnknownKey(consumer.name, op.key_id)
    updated = replace(consumer, keys=kept)
    detail = f"{len(kept)} keys left"
    return _Change((*others, updated), "revoke-key", consumer.name, op.key_id, detail)


def _update(document: ConsumerDocument, op: Update) -> _Change:
    consumer = _existing(document, op.name)
    changes: dict[str, Any] = {}
    if op.groups is not None:
        changes["groups"] = _groups(op.groups)
    if op.subjects is not None:
        changes["subjects"] = _subjects(op.subjects)
    if op.jwt is not None:
        changes["jwt"] = _pairs(op.jwt)
    if op.description is not None:
        changes["description"] = _description(op.description)
    if not changes:
        raise ConsumerRefused("nothing to update: give groups, subjects, jwt or a description")
    updated = replace(consumer, **changes)
    others = _others(document, consumer.name)
    _check_unique(others, updated)
    said = [
        f"{field_name}: {_shown(getattr(consumer, field_name))} → {_shown(value)}"
        for field_name, value in changes.items()
        if getattr(consumer, field_name) != value
    ]
    detail = "; ".join(said) or "no change"
    return _Change((*others, updated), "update", consumer.name, None, detail)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        items = ["=".join(v) if isinstance(v, tuple) else str(v) for v in value]
        return "[" + ", ".join(items) + "]"
    return repr(value)


# --- the data plane's index ------------------------------------------------------------------
class Registry:
    """Who presents what, for one document: lookups by key, certificate subject or JWT pair."""

    __slots__ = ("_jwt", "_keys", "_subjects", "consumers", "version")

    def __init__(self, document: ConsumerDocument) -> None:
        self.version = document.version
        self.consumers: dict[str, Consumer] = {c.name: c for c in document.consumers}
        self._keys: dict[str, tuple[Key, Consumer]] = {}
        self._subjects: dict[str, Consumer] = {}
        self._jwt: dict[tuple[str, str], Consumer] = {}
        for consumer in document.consumers:
            for key in consumer.keys:
                self._keys[key.sha256] = (key, consumer)
            for subject in consumer.subjects:
                normal = _normal(subject)
                if normal is not None:
                    self._subjects[normal] = consumer
            for pair in consumer.jwt:
                self._jwt[pair] = consumer

    @classmethod
    def empty(cls) -> Registry:
        return cls(ConsumerDocument())

    def __len__(self) -> int:
        return len(self.consumers)

    def by_key(self, presented: str, now: float) -> Consumer | None:
        """The consumer whose live key `presented` is (`now`: wall-clock seconds)."""
        if not presented.startswith(KEY_PREFIX) or len(presented) > MAX_PRESENTED:
            return None
        found = self._keys.get(digest(presented))
        if found is None or not found[0].live(now):
            return None
        return found[1]

    def by_subject(self, subject: str) -> Consumer | None:
        """The consumer of a client certificate's subject (an RFC 4514 string)."""
        try:
            return self._subjects.get(normalise_subject(subject))
        except ValueError:
            return None

    def by_jwt(self, issuer: str, subject: str) -> Consumer | None:
        return self._jwt.get((issuer, subject))
