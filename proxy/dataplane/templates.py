"""What the monolith still serves: the requests its default upstream answered, per path template
("GET /api/v1/orders/{id}"), so a team sees which endpoints are left to move and how busy each
is (the strangler fig's remaining trunk).

Rules:
- **A template** is the method and the path as the client sent it (never the query), each
  segment that looks like an identifier replaced by `{id}` (the path parameters of an OpenAPI
  document, or the `uri` tag Spring's and Micrometer's metrics use instead of the raw path):
    digits                                 /orders/123
    a UUID                                 /users/3f2b1c4e-8d5a-4c1e-9f7b-2a6d8e0c1b3f
    hex of 8 characters or more            /blobs/5f8d0a3c9e
    16 characters or more of a base64 or   /sessions/aGVsbG8gd29ybGQ9MTIz, /t/Zx8_k2LmQp-w4rTy
    base64url alphabet, with letters and
    digits, or with mixed case changing
    case at least every third character
  Other segments stay as they are (`v1`, `orders`, `my-long-article-title`); a template longer
  than MAX_LENGTH characters is cut there and marked with `…`.
- **Bounded** (Prometheus' advice against unbounded label values): a worker keeps at most
  MAX_TEMPLATES templates at once (those seen in its kept buckets); a new one beyond that counts
  as `METHOD {other}` (`* {other}` for a method outside METHODS, so that a client inventing
  methods makes one entry). A raw path's template is cached (CACHE paths; emptied when full).
- **Counted** in the arm statistics' buckets and document (armstats.py), merged over a window
  by `legacy_paths_window`: the busiest first.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any

from proxy.dataplane.armstats import buckets_in

ID = "{id}"
OTHER = "{other}"
MAX_TEMPLATES = 500
MAX_LENGTH = 200
CACHE = 4096
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]{8,}")
_TOKEN = re.compile(r"[A-Za-z0-9_\-+=]{16,}")


def _is_id(segment: str) -> bool:
    if not segment:
        return False
    if segment.isdigit():
        return segment.isascii()
    size = len(segment)
    if size < 8:
        return False
    if _UUID.fullmatch(segment) or _HEX.fullmatch(segment):
        return True
    if size < 16 or not _TOKEN.fullmatch(segment):
        return False
    if any(c.isdigit() for c in segment):
        return any(c.isalpha() for c in segment)
    letters = [c for c in segment if c.isalpha()]
    changes = sum(a.isupper() != b.isupper() for a, b in itertools.pairwise(letters))
    return changes * 3 >= len(letters)


def template_of(raw_path: bytes) -> str:
    """The path's template (module header), without the method."""
    path = "/".join(ID if _is_id(s) else s for s in raw_path.decode("latin-1").split("/"))
    return path if len(path) <= MAX_LENGTH else path[: MAX_LENGTH - 1] + "…"


class Templates:
    """One worker's templates: a bounded set, each with the last bucket that counted it."""

    __slots__ = ("_cache", "_seen", "limit")

    def __init__(self, limit: int = MAX_TEMPLATES) -> None:
        self.limit = limit
        self._cache: dict[bytes, str] = {}
        self._seen: dict[str, int] = {}  # "METHOD template" → the newest bucket it counted in

    def name(self, method: str, raw_path: bytes, bucket: int) -> str:
        """What the request counts as: its template, or `METHOD {other}` when the set is full."""
        path = self._cache.get(raw_path)
        if path is None:
            path = template_of(raw_path)
            if len(self._cache) >= CACHE:
                self._cache.clear()
            self._cache[raw_path] = path
        name = method + " " + path
        seen = self._seen
        if name in seen or len(seen) < self.limit:
            seen[name] = bucket
            return name
        return (method if method in METHODS else "*") + " " + OTHER

    def forget_before(self, bucket: int) -> None:
        """Templates not counted since `bucket` leave the set (their buckets are gone)."""
        for name in [n for n, last in self._seen.items() if last < bucket]:
            del self._seen[name]

    def __len__(self) -> int:
        return len(self._seen)


def legacy_paths_window(
    docs: Iterable[Mapping[str, Any]], since: float, until: float | None = None
) -> list[tuple[str, int]]:
    """(template, requests) the default upstream answered over [since, until), every document
    merged, the busiest first (ties by name)."""
    counts: dict[str, int] = {}
    for bucket in buckets_in(docs, since, until):
        paths = bucket.get("paths")
        if not isinstance(paths, dict):
            continue
        for name, count in paths.items():
            try:
                counts[str(name)] = counts.get(str(name), 0) + int(count)
            except (TypeError, ValueError):
                continue
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))
