"""The request path → the key routes are matched on (pure).

The bytes forwarded upstream are always the client's own; normalising only decides which route a
request takes, so two spellings of one resource cannot take different routes (or slip past a
route's policy). What stays ambiguous is refused with 400: encoded '/', '\\' and '.', NUL,
broken escapes, and '..' above the root (RFC 3986 §5.2.4 removes dot segments; nginx refuses
the rest the same way).
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

_AMBIGUOUS = (b"%2f", b"%5c", b"%2e", b"%00")
_HEX = frozenset(b"0123456789abcdefABCDEF")


class AmbiguousPath(ValueError):
    """The path cannot be matched safely; the message says why (for the 400 answer)."""


def _check_escapes(raw: bytes) -> None:
    lowered = raw.lower()
    for bad in _AMBIGUOUS:
        if bad in lowered:
            raise AmbiguousPath(f"the path encodes {bad.decode().upper()}, which is ambiguous")
    index = raw.find(b"%")
    while index != -1:
        pair = raw[index + 1 : index + 3]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise AmbiguousPath("the path has a malformed percent-escape")
        index = raw.find(b"%", index + 3)


def match_key(raw_path: bytes) -> str:
    """The normalised path for matching; raises AmbiguousPath for what must be refused."""
    if not raw_path.startswith(b"/"):
        raise AmbiguousPath("the request target must be a path starting with '/'")
    if b"\\" in raw_path:
        raise AmbiguousPath("the path contains a backslash")
    if b"%" not in raw_path and b"/." not in raw_path and b"//" not in raw_path:
        key = raw_path.decode("latin-1")  # the common case: nothing to normalise
        return key.rstrip("/") or "/" if key.endswith("/") else key
    if b"%" in raw_path:
        _check_escapes(raw_path)
        raw_path = unquote_to_bytes(raw_path)
    segments: list[bytes] = []
    for segment in raw_path.split(b"/"):
        if segment in (b"", b"."):
            continue
        if segment == b"..":
            if not segments:
                raise AmbiguousPath("the path climbs above the root with '..'")
            segments.pop()
            continue
        segments.append(segment)
    return "/" + b"/".join(segments).decode("latin-1")
