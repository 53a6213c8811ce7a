"""`strangler static export`: fill a static route's root from the monolith over HTTP, then
check it against the monolith's answers.

Which files: the paths given (`--path`), else every `image_url` a JSON listing names
(`--paths-from`, default the catalog's `/api/v1/products`, followed page by page through its
`page`/`pages` fields), kept when they lie under the route's prefix (`/static/`, the monolith's
StaticFiles mount). A file is written to a temporary name beside it and renamed (a proxy serving
the directory never sees half a file), with the monolith's Last-Modified as its mtime (so the
ETag and Last-Modified the proxy derives stay stable across exports of unchanged files).

Verify: for every exported file, GET it from the monolith again and compare the sha256 of the
bytes and the media type (Content-Type without parameters) with what the proxy will send; each
difference is one line, and the exit code is 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from proxy.dataplane.static import content_type

DEFAULT_LISTING = "/api/v1/products"
DEFAULT_PREFIX = "/static/"
TIMEOUT = 30.0
MAX_PAGES = 10_000


@dataclass
class Report:
    exported: list[str] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "exported": len(self.exported),
            "verified": len(self.verified),
            "errors": self.errors,
        }


def _get(base: str, path: str) -> tuple[int, dict[str, str], bytes]:
    url = base.rstrip("/") + path
    request = urllib.request.Request(url, headers={"Accept-Encoding": "identity"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            headers = {k.lower(): v for k, v in response.headers.items()}
            return response.status, headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _image_urls(document: object) -> list[str]:
    """Every string value of an `image_url` field, anywhere in a JSON document."""
    found: list[str] = []
    if isinstance(document, dict):
        for key, value in document.items():
            if key == "image_url" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_image_urls(value))
    elif isinstance(document, list):
        for item in document:
            found.extend(_image_urls(item))
    return found


def listed_paths(base: str, listing: str, report: Report) -> list[str]:
    """The image paths a paged JSON listing names (all its pages), in first-seen order."""
    paths: dict[str, None] = {}
    page = 1
    while page <= MAX_PAGES:
        separator = "&" if "?" in listing else "?"
        target = f"{listing}{separator}{urlencode({'page': page, 'per_page': 100})}"
        try:
            status, _, body = _get(base, target)
        except OSError as exc:
            report.errors.append(f"{target}: cannot fetch: {exc}")
            break
        if status != 200:
            report.errors.append(f"{target}: the monolith answered {status}")
            break
        try:
            document = json.loads(body)
        except ValueError:
            report.errors.append(f"{target}: not JSON")
            break
        for url in _image_urls(document):
            paths.setdefault(urlsplit(url).path, None)
        pages = document.get("pages") if isinstance(document, dict) else None
        if not isinstance(pages, int) or page >= pages:
            break
        page += 1
    return list(paths)


def relative_of(path: str, prefix: str) -> str | None:
    """`path` under `prefix` as a safe relative file name, or None (outside, '..', dotfile)."""
    if not path.startswith(prefix):
        return None
    parts = path[len(prefix) :].split("/")
    if not parts or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p for p in parts):
        return None
    return "/".join(parts)


def _write(target: Path, body: bytes, last_modified: str | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".export-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        if last_modified:
            try:
                stamp = parsedate_to_datetime(last_modified).timestamp()
                os.utime(temporary, (stamp, stamp))
            except (TypeError, ValueError, OverflowError):
                pass
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _fetched(base: str, path: str, report: Report) -> tuple[dict[str, str], bytes] | None:
    """The monolith's 200 answer for `path` (headers, body), or None with the error reported."""
    try:
        status, headers, body = _get(base, path)
    except OSError as exc:
        report.errors.append(f"{path}: cannot fetch: {exc}")
        return None
    if status != 200:
        report.errors.append(f"{path}: the monolith answered {status}")
        return None
    return headers, body


def export(base: str, into: Path, paths: list[str], prefix: str, report: Report) -> None:
    for path in paths:
        relative = relative_of(path, prefix)
        if relative is None:
            report.errors.append(f"{path}: not a plain file name under {prefix}")
            continue
        fetched = _fetched(base, path, report)
        if fetched is None:
            continue
        headers, body = fetched
        _write(into / relative, body, headers.get("last-modified"))
        report.exported.append(path)


def _media(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def verify(base: str, into: Path, paths: list[str], prefix: str, report: Report) -> None:
    for path in paths:
        relative = relative_of(path, prefix)
        if relative is None:
            continue
        local = into / relative
        try:
            ours = local.read_bytes()
        except OSError:
            report.errors.append(f"{path}: missing from {into}")
            continue
        fetched = _fetched(base, path, report)
        if fetched is None:
            continue
        headers, body = fetched
        theirs_sha, ours_sha = hashlib.sha256(body).hexdigest(), hashlib.sha256(ours).hexdigest()
        if theirs_sha != ours_sha:
            report.errors.append(
                f"{path}: bytes differ (monolith sha256 {theirs_sha[:12]}, file {ours_sha[:12]})"
            )
            continue
        theirs_type = _media(headers.get("content-type", ""))
        ours_type = _media(content_type(local.name).decode())
        if theirs_type != ours_type:
            report.errors.append(
                f"{path}: Content-Type differs (monolith {theirs_type}, proxy {ours_type})"
            )
            continue
        report.verified.append(path)


def run(
    base: str,
    into: Path,
    *,
    paths: list[str],
    listing: str | None,
    prefix: str,
    fetch: bool,
    check: bool,
) -> Report:
    report = Report()
    if not paths:
        paths = listed_paths(base, listing or DEFAULT_LISTING, report)
    if fetch:
        export(base, into, paths, prefix, report)
    if check:
        verify(base, into, paths, prefix, report)
    return report
