"""The request path → the readings routes are matched on (pure).

The bytes forwarded upstream are always the client's own: reading a path only decides which
route a request takes and which route's protection (listener exposure, access rules) applies.
A backend may read one path several ways, so a path is read the way the most lenient backend
would (the canonical key) and, where it matters, the other ways too; plan.py routes every
reading and decides (see its `settle`).

The canonical key (`match_key`; nginx's `merge_slashes`, Envoy's `normalize_path`):
- decoded once (RFC 3986 §6.2.2.2); a malformed escape is refused;
- '\\', %5C and %2F separate segments, as '/' does (Windows backends and the WHATWG URL parser
  read '\\' as '/'; a backend that decodes before it routes reads %2F as '/');
- in each segment `;params` are cut (`/admin;x=1` is /admin: Tomcat's and Jetty's path
  parameters, and their `/..;/` reading as `..`), then trailing dots and spaces are stripped
  (`/admin.` and `/admin%20` are /admin: Win32 path normalisation, which IIS serves by);
  a segment of nothing but dots and spaces other than `.` and `..` is refused;
- dot segments are removed (RFC 3986 §5.2.4; '..' above the root is refused, as nginx does);
  empty segments are dropped, so is a trailing '/';
- case-folded when the table says its backends fold case (`paths: {case_insensitive: true}`).
Always refused (400): NUL and other control characters (a tab too, rather than stripped), raw
or escaped, or escaped twice; a malformed escape; a target that does not start with '/'
(absolute, authority or asterisk form).

The other readings (`Readings`), routed besides the key:
- strict, which must take the key's route or the request is refused (400):
  - escaped slashes kept: %2F, %5C and a raw '\\' stay inside their segment, as a backend that
    splits the path before it decodes reads them (Express on Node's raw `req.url`).
    `paths: {escaped_slashes: check}` (the default) allows an escaped slash wherever both
    readings take one route, so a payment id such as `ab%2Fcd` can be read through the proxy
    while `/x%2F..%2Fadmin` is refused; `refuse` refuses every %2F and %5C (also escaped
    twice) as Envoy's `path_with_escaped_slashes_action: REJECT_REQUEST` does. `check` is the
    default because a refusal breaks real identifiers and the check already refuses every
    escaped slash that could change the route (Envoy's own default, KEEP_UNCHANGED, checks
    nothing).
  - decoded twice, when the path holds an escaped '%' (`%252F`, `%2561dmin`): a backend that
    decodes again (IIS's double-decoding flaw, CVE-2001-0333; frameworks that unquote a path
    they already got decoded) must not reach another route. Escapes left malformed after the
    first decoding stay as written.
- lenient, the path as written (decoded once but nothing cut, stripped or resolved: a backend
  that takes `/admin/../public` or `/admin/public.` as a path under /admin); and, when the
  table is case-sensitive but protects something, each reading case-folded (a backend that
  folds case, including Java's `equalsIgnoreCase` reading the Kelvin sign as 'k'). A lenient
  reading that reaches a protected route the key does not makes the request that route's
  (refused as it would be); readings protected differently are refused (400).

A plain path (no escape, '\\', ';', blank, control or non-ASCII byte, dot or empty segment,
segment ending in '.') has one reading and takes a fast path (`plain_key`): one regular
expression, no decoding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

# Anything but a plain path: an escape, '\\', ';', a control, blank or non-ASCII byte, a dot
# or empty segment, a segment ending in '.'. A path without any takes the fast path.
_NOT_PLAIN = re.compile(rb"[%\\;\x00-\x20\x7f-\xff]|\.(?:/|$)|/[/.]").search
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPED_SLASH = re.compile(rb"%(2[fF]|5[cC])")
_DOUBLE_ESCAPE = re.compile(rb"%25[0-9a-fA-F]{2}").search
_SEPARATORS = re.compile(rb"/|\\|%2[fF]|%5[cC]").split
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]").search


class AmbiguousPath(ValueError):
    """The path cannot be matched safely; the message says why (for the 400 answer)."""


@dataclass(frozen=True, slots=True)
class Readings:
    """How a path may be read: the canonical key, the readings that must take its route
    (strict) and those whose protected route wins over it (lenient); see the module rules."""

    key: str
    strict: tuple[str, ...] = ()
    lenient: tuple[str, ...] = ()

    def all(self) -> tuple[str, ...]:
        return (self.key, *self.strict, *self.lenient)


# Java's equalsIgnoreCase and .NET's invariant culture compare char by char with simple case
# mappings, under which the dotless i (U+0131) and the dotted capital I (U+0130) are `i`;
# Unicode's full folding keeps the first and turns the second into `i` + U+0307.
_DOTTED_I = str.maketrans({"\u0131": "i", "\u0130": "i"})


def fold(text: str) -> str:
    """`text` case-folded as a case-insensitive backend may: ASCII lower-cased, else the
    UTF-8 text case-folded (Unicode's full folding, and the Turkish i's simple mappings)."""
    if text.isascii():
        return text.lower()
    try:
        decoded = text.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        decoded = text
    return decoded.translate(_DOTTED_I).casefold()


def plain_key(raw_path: bytes, case_insensitive: bool = False) -> str | None:
    """The key of a plain path (nothing to decode, cut, strip or resolve), else None."""
    if _NOT_PLAIN(raw_path) is not None or raw_path[:1] != b"/":
        return None
    key = raw_path.decode("latin-1")
    if key[-1] == "/" and len(key) > 1:
        key = key[:-1]
    return key.lower() if case_insensitive else key


def match_key(raw_path: bytes, *, case_insensitive: bool = False) -> str:
    """The canonical key (module rules); raises AmbiguousPath for what must be refused."""
    key = plain_key(raw_path, case_insensitive)
    if key is not None:
        return key
    return read_path(raw_path, case_insensitive=case_insensitive).key


def read_path(
    raw_path: bytes, *, case_insensitive: bool = False, refuse_escaped_slashes: bool = False
) -> Readings:
    """Every reading of `raw_path` (module rules); raises AmbiguousPath for what must be
    refused whatever the routes."""
    if not raw_path.startswith(b"/"):
        raise AmbiguousPath("the request target must be a path starting with '/'")
    twice = _DOUBLE_ESCAPE(raw_path) is not None
    once = _checked_unquote(raw_path) if raw_path.find(b"%") >= 0 else raw_path
    if refuse_escaped_slashes and (
        _ESCAPED_SLASH.search(raw_path) or (twice and _ESCAPED_SLASH.search(once))
    ):
        raise AmbiguousPath("the path encodes a slash (%2F or %5C), which this table refuses")
    key = _canonical(_SEPARATORS(raw_path))
    kept = _keep_escaped_slashes(raw_path)
    strict: list[str] = []
    if kept is not raw_path or raw_path.find(b"\\") >= 0:
        strict.append(_canonical(kept.split(b"/")))
    if twice:
        strict.append(_canonical(_SEPARATORS(once)))
    literal = _literal(kept)
    lenient = [] if literal == key or literal in strict else [literal]
    if case_insensitive:
        return Readings(fold(key), _folded(strict), _folded(lenient))
    return Readings(key, tuple(strict), tuple(lenient))


def _folded(readings: list[str]) -> tuple[str, ...]:
    return tuple(fold(reading) for reading in readings)


def _checked_unquote(raw: bytes) -> bytes:
    index = raw.find(b"%")
    while index != -1:
        pair = raw[index + 1 : index + 3]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise AmbiguousPath("the path has a malformed percent-escape")
        index = raw.find(b"%", index + 3)
    return unquote_to_bytes(raw)


def _keep_escaped_slashes(raw: bytes) -> bytes:
    """`raw` with %2F and %5C escaped once more, so one decoding leaves them as written (`raw`
    itself when it has none)."""
    if _ESCAPED_SLASH.search(raw) is None:
        return raw
    for escape in (b"%2F", b"%2f", b"%5C", b"%5c"):
        raw = raw.replace(escape, b"%25" + escape[1:])
    return raw


def _decode(piece: bytes) -> bytes:
    decoded = unquote_to_bytes(piece) if piece.find(b"%") >= 0 else piece
    if _CONTROL(decoded) is not None:
        raise AmbiguousPath("the path holds a control character (such as NUL)")
    return decoded


def _canonical(pieces: list[bytes]) -> str:
    """The module's canonical reading of a path split into `pieces` (not yet decoded)."""
    segments: list[bytes] = []
    for piece in pieces:
        segment = _decode(piece).partition(b";")[0]
        if segment == b"..":
            if not segments:
                raise AmbiguousPath("the path climbs above the root with '..'")
            segments.pop()
            continue
        stripped = segment.rstrip(b". ")
        if stripped:
            segments.append(stripped)
        elif segment not in (b"", b"."):
            raise AmbiguousPath("a path segment is nothing but dots and spaces")
    return "/" + b"/".join(segments).decode("latin-1")


def _literal(kept: bytes) -> str:
    """The path decoded once and nothing else (`kept`: its escaped slashes escaped again, so
    they stay as written); empty segments dropped."""
    decoded = _decode(kept)
    return "/" + b"/".join(s for s in decoded.split(b"/") if s).decode("latin-1")
