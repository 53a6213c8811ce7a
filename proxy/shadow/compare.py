"""Compare a primary's answer with a candidate's (pure, bounded).

The names are Diffy's: the primary is the code that answers the client (the monolith), the
candidate the new service that got a copy of the request; a second primary answer to the same
request (Diffy's secondary) shows which fields differ anyway, and `differing_fields` gives
them for noise learning (report.py). As in GitHub's Scientist, the comparison runs after the
primary answered and never changes what the client got.

Rules:
- **Status** is always compared. **Headers** only when `Rules.headers` lists them, by value
  (the fields of one name joined with ", ", a missing one is `<absent>`): Date, Server and
  the like differ between any two servers. Authorization, Proxy-Authorization, Cookie and
  Set-Cookie carry credentials (RFC 9110 §11.6.2 and §11.7.2, RFC 6265) and are never
  compared nor shown, even when listed.
- **JSON bodies** (either content type names json or either body starts with `{` or `[`, and
  both parse as RFC 8259 JSON: no NaN or Infinity) are compared field by field, like Diffy:
  objects key by key (a key on one side only differs from `<absent>`), arrays by index (extra
  elements differ from `<absent>`), numbers within `tolerance` (pytest.approx's `abs`; 10
  equals 10.0, a bool is no number), anything else by type and value. Fields are named by
  normalised JSONPath (RFC 9535): `$.a.b`, `$["not an identifier"]`, and `[*]` for every
  element of an array, so `$.items[*].amount` is one field however many items differ. Each
  field is listed once per comparison, with its first example.
- **Other bodies** are equal when byte-identical; a difference is the field `body`, shown as
  each body's SHA-256 prefix and size. A truncated body (cut at the capture limit) is not
  compared at all: only status and headers are, and `Verdict.compared_body` is False.
- **Patterns** (`ignore`, `unordered`, `secret`) are JSONPath: `$`, `.key`, `["key"]`, `[*]`
  and `.*` (any one key); a pattern covers a path it equals and everything under it.
  `ignore` drops fields (`$` ignores the body, JSON or not). Arrays covered by `unordered`
  are compared as multisets of canonical JSON (sorted keys, ignored fields dropped, integral
  numbers as integers, nested arrays sorted; no tolerance): a difference is the array itself,
  its examples the elements found on one side only. A field covered by `secret` shows
  `<redacted>` on both sides, and any value shown (a difference's, whatever its shape on either
  side, or an unordered array's element) shows `"<redacted>"` for every part of it a `secret`
  pattern covers: `$.card` null on one side shows `{"number": "<redacted>"}` on the other
  when `$.card.number` is secret. `$` also hides the SHA-256 of a non-JSON body, and any
  `secret` pattern the SHA-256 of a JSON body (either could be brute-forced from a short
  secret).
- **Examples** are JSON text, cut to EXAMPLE_CHARS with a trailing "…" (a large value is
  written only that far); control characters are escaped, so a report printed on a terminal
  cannot carry escape sequences.
- **Content codings**: `compare` takes bodies as they are; `decoded(answer, limit)`, called on
  both answers first, undoes Content-Encoding gzip, x-gzip and deflate (zlib, or raw deflate
  as some servers send it), each coding of a list in turn, "identity" ignored, and drops
  Content-Encoding and Content-Length (which described the encoded body). So two gzip
  bodies differing only in their gzip header (its mtime) are equal, and JSON inside is
  compared by field. Decompression stops one byte past `limit`: a body that would decode to
  more than `limit` bytes, one in another coding (br, zstd) or a corrupt stream becomes an
  empty truncated body (status and headers compared, not the body). An answer naming no
  coding, or truncated already, is returned as it is.
- **Bounds**: at most MAX_NODES JSON values visited and MAX_DEPTH levels of nesting per
  comparison; past them the comparison stops and `compared_body` is False (the differences
  found so far are still listed). Byte-identical bodies are equal without a walk, whatever
  their size. At most MAX_DIFFERENCES fields are listed; a further one stops the comparison
  and adds the field "…" ("more differences not listed"). A key longer than EXAMPLE_CHARS is
  cut in a field's name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _encode_str
from typing import cast

EXAMPLE_CHARS = 200
MAX_NODES = 10_000
MAX_DEPTH = 100
MAX_DIFFERENCES = 100
ABSENT = "<absent>"
REDACTED = "<redacted>"
MORE = "…"
MORE_TEXT = "more differences not listed"
SENSITIVE = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
# Content codings `decoded` undoes, as zlib formats tried in turn: 47 is gzip or zlib by its
# header; -15 raw deflate, which some servers send as "deflate" (RFC 9110 §8.4.1.2 means zlib).
_CODINGS = {"gzip": (47,), "x-gzip": (47,), "deflate": (47, -15)}
_ENCODED_HEADERS = frozenset({b"content-encoding", b"content-length"})
_PIECE = 64 << 10  # bytes decompressed at a time

Segment = str | int  # an object key, or _ITEM (any element of an array)
Path = tuple[Segment, ...]
Live = tuple[Path, ...]  # what is left of the patterns matching a path so far; () covers it
_ITEM = 0
_ANY_KEY = 1  # only in patterns: `.*`
_TOKEN = re.compile(r'\.(\*)|\.([^.\[\]"\s*]+)|\[(\*)\]|\[("(?:[^"\\]|\\.)*")\]')
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STARTS_JSON = re.compile(rb"\s*[\[{]")
# C0 controls, DEL and C1 controls, escaped as JSON does (\u001b).
_CONTROLS = {c: f"\\u{c:04x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
_NUMBERS = (int, float)  # json.loads makes exactly these (a bool is no number)
_LITERALS = {None: "null", True: "true", False: "false"}
_MISSING = object()  # a key or element on one side only
_NOT_JSON = object()


@dataclass(frozen=True, slots=True)
class _Compiled:
    headers: tuple[tuple[str, bytes], ...]
    ignore: tuple[Path, ...]
    unordered: tuple[Path, ...]
    secret: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class Rules:
    headers: tuple[str, ...] = ()  # header names whose values are compared
    ignore: tuple[str, ...] = ()  # patterns never compared
    unordered: tuple[str, ...] = ()  # patterns of arrays compared as multisets
    tolerance: float = 0.0  # |a - b| <= tolerance is equal
    secret: tuple[str, ...] = ()  # patterns whose values are never shown
    _compiled: _Compiled = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for pattern in (*self.ignore, *self.unordered, *self.secret):
            problem = Rules.check_path(pattern)
            if problem is not None:
                raise ValueError(f"{pattern!r}: {problem}")
        if not self.tolerance >= 0:
            raise ValueError("tolerance is a number >= 0")
        names = dict.fromkeys(n.lower() for n in self.headers if n.lower() not in SENSITIVE)
        compiled = _Compiled(
            headers=tuple((name, name.encode("latin-1")) for name in names),
            ignore=tuple(_parse(p) for p in self.ignore),
            unordered=tuple(_parse(p) for p in self.unordered),
            secret=tuple(_parse(p) for p in self.secret),
        )
        object.__setattr__(self, "_compiled", compiled)

    @staticmethod
    def check_path(pattern: str) -> str | None:
        """Why `pattern` is not a path pattern, or None."""
        try:
            _parse(pattern)
        except ValueError as error:
            return str(error)
        return None


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]  # lower-case names, as on the wire
    body: bytes
    truncated: bool = False  # the body was cut at the capture limit


@dataclass(frozen=True, slots=True)
class Difference:
    field: str  # "status", "header:<name>", a JSON path, "body" or "…"
    primary: str  # shown value: JSON text, "<absent>" or "<redacted>", at most EXAMPLE_CHARS
    candidate: str


@dataclass(frozen=True, slots=True)
class Verdict:
    differences: tuple[Difference, ...]
    compared_body: bool  # False: a body was truncated, or too large or deep to compare fully


def compare(primary: Answer, candidate: Answer, rules: Rules) -> Verdict:
    """The differences between two answers to one request."""
    found = _Found()
    try:
        _heads(primary, candidate, rules._compiled, found)
        if primary.truncated or candidate.truncated:
            return found.verdict(compared_body=False)
        _bodies(primary, candidate, rules, found)
    except _Stop as stop:
        return found.verdict(stop.complete)
    return found.verdict(compared_body=True)


def differing_fields(first: Answer, second: Answer, rules: Rules) -> frozenset[str]:
    """The fields two answers differ in (two primary answers: the noise)."""
    return frozenset(d.field for d in compare(first, second, rules).differences)


def decoded(answer: Answer, limit: int) -> Answer:
    """`answer` with its content coding undone (see the module header), its body at most
    `limit` bytes; unchanged when it names no coding or is truncated already."""
    if limit < 0:
        raise ValueError("limit is a number of bytes >= 0")
    if answer.truncated:
        return answer
    codings = [
        coding
        for name, value in answer.headers
        if name.lower() == b"content-encoding"
        for coding in (c.strip().lower() for c in value.decode("latin-1").split(","))
        if coding not in {"", "identity"}
    ]
    if not codings:
        return answer
    headers = tuple((n, v) for n, v in answer.headers if n.lower() not in _ENCODED_HEADERS)
    body = answer.body
    try:
        for coding in reversed(codings):  # listed in the order they were applied
            body = _inflate(body, _CODINGS[coding], limit)
    except (KeyError, _Undecodable):  # an unknown coding, a corrupt stream, over the limit
        return Answer(answer.status, headers, b"", truncated=True)
    return Answer(answer.status, headers, body)


def printable(text: str) -> str:
    """`text` with control characters escaped (safe to print on a terminal)."""
    return text.translate(_CONTROLS)


@functools.lru_cache(maxsize=4096)
def render_path(path: Path) -> str:
    """A path as text: `$.items[*].amount`, `$["not an identifier"]`."""
    parts = ["$"]
    for segment in path:
        if isinstance(segment, int):
            parts.append("[*]")
        elif _IDENTIFIER.fullmatch(segment) and len(segment) <= EXAMPLE_CHARS:
            parts.append("." + segment)
        else:
            key = segment if len(segment) <= EXAMPLE_CHARS else segment[: EXAMPLE_CHARS - 1] + "…"
            parts.append("[" + printable(_encode_str(key)) + "]")
    return "".join(parts)


def _parse(pattern: str) -> Path:
    if not pattern.startswith("$"):
        raise ValueError("a path starts with '$'")
    segments: list[Segment] = []
    at = 1
    while at < len(pattern):
        token = _TOKEN.match(pattern, at)
        if token is None:
            if re.match(r"\[\s*-?\d", pattern[at:]):
                raise ValueError("array elements are written [*]: a field covers all of them")
            raise ValueError(f'{pattern[at:]!r} is not .key, .*, ["key"] or [*]')
        any_key, key, item, quoted = token.groups()
        if any_key:
            segments.append(_ANY_KEY)
        elif key is not None:
            segments.append(key)
        elif item:
            segments.append(_ITEM)
        else:
            try:
                segments.append(str(json.loads(quoted)))
            except ValueError:
                raise ValueError(f"{quoted} is not a JSON string") from None
        at = token.end()
    return tuple(segments)


def parse_pattern(pattern: str) -> Path:
    """A pattern's segments: keys (str), and the ints ITEM (`[*]`) and ANY_KEY (`.*`).
    ValueError says why a pattern is not one (recording.py reads secrets with this too)."""
    return _parse(pattern)


def takes_key(segment: Segment, key: str) -> bool:
    """Whether a pattern segment covers the object key `key`."""
    return (isinstance(segment, str) and segment == key) or segment == _ANY_KEY


def takes_item(segment: Segment) -> bool:
    """Whether a pattern segment covers every element of an array."""
    return not isinstance(segment, str) and segment == _ITEM


def _covers(pattern: Path, path: Path) -> bool:
    """`pattern` equals `path` or a prefix of it."""
    if len(pattern) > len(path):
        return False
    return all(
        (p == s and type(p) is type(s)) or (p == _ANY_KEY and isinstance(s, str))
        for p, s in zip(pattern, path, strict=False)
    )


class _Stop(Exception):
    def __init__(self, complete: bool) -> None:
        self.complete = complete


class _Found:
    """The differences so far: one per field, at most MAX_DIFFERENCES."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: dict[str, Difference] = {}

    def add(self, name: str, primary: str, candidate: str) -> None:
        if len(self.items) == MAX_DIFFERENCES:
            self.items[MORE] = Difference(MORE, MORE_TEXT, "")
            raise _Stop(complete=True)
        self.items[name] = Difference(name, _cut(primary), _cut(candidate))

    def verdict(self, compared_body: bool) -> Verdict:
        return Verdict(tuple(self.items.values()), compared_body)


def _cut(text: str) -> str:
    text = printable(text)
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _header(fields: tuple[tuple[bytes, bytes], ...], name: bytes) -> str:
    values = [value.decode("latin-1") for key, value in fields if key.lower() == name]
    return ", ".join(values) if values else ABSENT


def _heads(primary: Answer, candidate: Answer, rules: _Compiled, found: _Found) -> None:
    if primary.status != candidate.status:
        found.add("status", str(primary.status), str(candidate.status))
    for name, wire in rules.headers:
        ours, theirs = _header(primary.headers, wire), _header(candidate.headers, wire)
        if ours != theirs:
            found.add(f"header:{name}", ours, theirs)


def _looks_json(answer: Answer) -> bool:
    kind = _header(answer.headers, b"content-type")
    return "json" in kind.lower() or _STARTS_JSON.match(answer.body) is not None


def _reject(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")


def _load(body: bytes) -> object:
    try:
        return json.loads(body, parse_constant=_reject)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _digest(body: bytes) -> str:
    return f"sha256:{hashlib.sha256(body).hexdigest()[:12]} ({len(body)} bytes)"


def _bodies(primary: Answer, candidate: Answer, rules: Rules, found: _Found) -> None:
    compiled = rules._compiled
    if () in compiled.ignore or primary.body == candidate.body:
        return
    ours = theirs = _NOT_JSON
    if _looks_json(primary) or _looks_json(candidate):
        ours, theirs = _load(primary.body), _load(candidate.body)
        if ours is not _NOT_JSON and theirs is not _NOT_JSON:
            walk = _Walk(rules.tolerance, compiled.secret, found)
            walk.value((), ours, theirs, compiled.ignore, compiled.unordered)
            return
    if () in compiled.secret:
        found.add("body", REDACTED, REDACTED)
    else:  # the hash of a JSON body holding secrets could be brute-forced: it is not shown
        secret = bool(compiled.secret)
        found.add(
            "body",
            REDACTED if secret and ours is not _NOT_JSON else _digest(primary.body),
            REDACTED if secret and theirs is not _NOT_JSON else _digest(candidate.body),
        )


class _Undecodable(Exception):
    pass


def _inflate(data: bytes, formats: tuple[int, ...], limit: int) -> bytes:
    """`data` decompressed in the first of the zlib `formats` (wbits) it is valid in."""
    if not data:  # a HEAD or 304 answer names the coding of a body it does not carry
        return data
    for wbits in formats:
        try:
            return _streams(data, wbits, limit)
        except zlib.error:
            continue
    raise _Undecodable


def _streams(data: bytes, wbits: int, limit: int) -> bytes:
    """The complete streams of `data`, one after another (several gzip members concatenated
    are one body, RFC 1952 §2.2), never more than `limit` bytes of them. Fed and decompressed
    in pieces of at most _PIECE bytes: zlib copies the input it has not taken yet, and a body
    over the limit is given up holding no more than the limit and one piece."""
    view = memoryview(data)
    pieces: list[bytes] = []
    room = limit
    start = 0
    while start < len(view):
        if start and wbits < 0:  # raw deflate has no header: what follows its end is garbage
            raise zlib.error("data after the end of the stream")
        stream = zlib.decompressobj(wbits)
        at = start
        feed: bytes | memoryview = b""
        while not stream.eof:
            if not feed:
                feed = view[at : at + _PIECE]
                at += len(feed)
            piece = stream.decompress(feed, min(room + 1, _PIECE))
            if len(piece) > room:
                raise _Undecodable
            if not piece and len(stream.unconsumed_tail) == len(feed):
                raise zlib.error("the stream is cut short")  # nothing taken, nothing given
            pieces.append(piece)
            room -= len(piece)
            feed = stream.unconsumed_tail
        start = at - len(stream.unused_data)  # the input fed ends at `at`
    return b"".join(pieces)


def _close(a: float, b: float, tolerance: float) -> bool:
    if a == b:
        return True
    try:
        return tolerance > 0 and abs(a - b) <= tolerance
    except OverflowError:  # an integer too large for a float
        return False


class _Full(Exception):
    """An example has more than EXAMPLE_CHARS characters: the rest is not written."""


def _example(value: object, secrets: Live) -> str:
    """`value` as json.dumps writes it (ensure_ascii=False), every part that `secrets` (the
    secret patterns left at its path) reaches written "<redacted>". Writing stops just past
    EXAMPLE_CHARS, so a large value costs no more than a small one (_cut adds the "…")."""
    if value is _MISSING:
        return ABSENT
    parts: list[str] = []
    room = EXAMPLE_CHARS + 1

    def write(text: str) -> None:
        nonlocal room
        parts.append(text)
        room -= len(text)
        if room <= 0:
            raise _Full

    def walk(value: object, live: Live) -> None:
        if () in live:
            write(_encode_str(REDACTED))
        elif isinstance(value, dict):
            write("{")
            for i, (key, item) in enumerate(value.items()):
                write(", " if i else "")
                write(_encode_str(key[: EXAMPLE_CHARS + 1]) + ": ")
                walk(item, _advance(live, key) if live else live)
            write("}")
        elif isinstance(value, list):
            write("[")
            inner = _advance(live, _ITEM) if live else live
            for i, item in enumerate(value):
                write(", " if i else "")
                walk(item, inner)
            write("]")
        elif isinstance(value, str):
            write(_encode_str(value[: EXAMPLE_CHARS + 1]))
        elif value is None or isinstance(value, bool):
            write(_LITERALS[value])
        else:
            write(repr(value))  # an int or a float, as json.dumps writes them

    with contextlib.suppress(_Full):
        walk(value, secrets)
    return "".join(parts)


def _scalar(value: object) -> str:
    if isinstance(value, str):
        return _encode_str(value)
    if value is None or isinstance(value, bool):
        return _LITERALS[value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return repr(int(value))
    return repr(value)  # an int, or a float as json.dumps writes it


def _step(pattern: Segment, segment: Segment) -> bool:
    if pattern == _ANY_KEY:
        return isinstance(segment, str)
    return pattern == segment and type(pattern) is type(segment)


@functools.lru_cache(maxsize=4096)
def _advance(live: Live, segment: Segment) -> Live:
    """The patterns of `live` still matching one `segment` further down."""
    return tuple(p[1:] if p else p for p in live if not p or _step(p[0], segment))


class _Walk:
    """One JSON comparison: both documents walked together, within the node budget. The
    ignore and unordered patterns travel down as what is left of those matching so far."""

    __slots__ = ("found", "nodes", "secrets", "tolerance")

    def __init__(self, tolerance: float, secrets: tuple[Path, ...], found: _Found) -> None:
        self.tolerance = tolerance
        self.secrets = secrets
        self.found = found
        self.nodes = MAX_NODES

    def spend(self, path: Path) -> None:
        self.nodes -= 1
        if self.nodes < 0 or len(path) > MAX_DEPTH:
            raise _Stop(complete=False)

    def secret(self, path: Path) -> bool:
        return any(_covers(p, path) for p in self.secrets)

    def value(
        self, path: Path, ours: object, theirs: object, ignore: Live, unordered: Live
    ) -> None:
        self.nodes -= 1  # spend(), inlined: this runs once per JSON value
        if self.nodes < 0 or len(path) > MAX_DEPTH:
            raise _Stop(complete=False)
        if () in ignore:
            return
        kind, other = type(ours), type(theirs)
        if kind is dict and other is dict:
            self.mapping(
                path,
                cast(dict[str, object], ours),
                cast(dict[str, object], theirs),
                ignore,
                unordered,
            )
        elif kind is list and other is list:
            self.array(
                path, cast(list[object], ours), cast(list[object], theirs), ignore, unordered
            )
        elif kind in _NUMBERS and other in _NUMBERS:
            if not _close(cast(float, ours), cast(float, theirs), self.tolerance):
                self.differ(path, ours, theirs)
        elif kind is not other or ours != theirs:
            self.differ(path, ours, theirs)

    def mapping(
        self,
        path: Path,
        ours: dict[str, object],
        theirs: dict[str, object],
        ignore: Live,
        unordered: Live,
    ) -> None:
        for key in (*ours, *(k for k in theirs if k not in ours)):
            self.value(
                (*path, key),
                ours.get(key, _MISSING),
                theirs.get(key, _MISSING),
                _advance(ignore, key) if ignore else ignore,
                _advance(unordered, key) if unordered else unordered,
            )

    def array(
        self, path: Path, ours: list[object], theirs: list[object], ignore: Live, unordered: Live
    ) -> None:
        item = (*path, _ITEM)
        ignore = _advance(ignore, _ITEM) if ignore else ignore
        if () in unordered:
            self.multiset(item, ours, theirs, ignore)
            return
        unordered = _advance(unordered, _ITEM) if unordered else unordered
        for i in range(max(len(ours), len(theirs))):
            one = ours[i] if i < len(ours) else _MISSING
            other = theirs[i] if i < len(theirs) else _MISSING
            self.value(item, one, other, ignore, unordered)

    def differ(self, path: Path, ours: object, theirs: object) -> None:
        name = render_path(path)
        if name in self.found.items:
            return
        live: Live = self.secrets
        for segment in path:
            live = _advance(live, segment) if live else live
        if () in live:  # the field is a secret: not even whether it is absent is shown
            self.found.add(name, REDACTED, REDACTED)
        else:
            self.found.add(name, _example(ours, live), _example(theirs, live))

    def multiset(self, item: Path, ours: list[object], theirs: list[object], ignore: Live) -> None:
        """Arrays as multisets of canonical elements; `item` is the path of their elements."""
        if () in ignore:
            return
        left = [self.canonical(item, e, ignore) for e in ours]
        right = [self.canonical(item, e, ignore) for e in theirs]
        if sorted(left) == sorted(right):
            return
        path = item[:-1]
        name = render_path(path)
        if name in self.found.items:
            return
        if self.secret(path):
            self.found.add(name, REDACTED, REDACTED)
            return
        only_left, only_right = Counter(left) - Counter(right), Counter(right) - Counter(left)
        self.found.add(
            name,
            self.elements(item, zip(left, ours, strict=True), only_left, ignore),
            self.elements(item, zip(right, theirs, strict=True), only_right, ignore),
        )

    def elements(
        self, item: Path, elements: Iterable[tuple[str, object]], only: Counter[str], ignore: Live
    ) -> str:
        """The elements counted in `only`, as a JSON array, shown up to EXAMPLE_CHARS."""
        shown: list[str] = []
        length = 0
        for canonical, element in elements:
            if only[canonical] > 0 and length <= EXAMPLE_CHARS:
                only[canonical] -= 1
                shown.append(self.canonical(item, element, ignore, redact=True))
                length += len(shown[-1]) + 1
        return "[" + ",".join(shown) + "]"

    def canonical(self, path: Path, value: object, ignore: Live, redact: bool = False) -> str:
        """`value` as canonical JSON: sorted keys and arrays, ignored fields dropped (and with
        `redact`, secret ones shown as "<redacted>")."""
        if not redact:
            self.spend(path)
        elif self.secret(path):
            return _encode_str(REDACTED)
        if isinstance(value, dict):
            parts = []
            for key in sorted(value):
                live = _advance(ignore, key) if ignore else ignore
                if () not in live:
                    text = self.canonical((*path, key), value[key], live, redact)
                    parts.append(_encode_str(key) + ":" + text)
            return "{" + ",".join(parts) + "}"
        if isinstance(value, list):
            item = (*path, _ITEM)
            live = _advance(ignore, _ITEM) if ignore else ignore
            if () in live:
                return "[]"
            return (
                "[" + ",".join(sorted(self.canonical(item, e, live, redact) for e in value)) + "]"
            )
        return _scalar(value)
