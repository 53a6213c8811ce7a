"""Files a static route serves itself, from its root directory. The pure rules first (tested
without sockets), then `serve`, in four named steps:

    locate   the request path → a file inside root, or 404
    choose   precompressed sibling, conditional request, range → what to send
    head     the response fields
    stream   the bytes, read off the event loop in 64 KiB pieces

Rules, with their precedents:
- Path safety (nginx's `root` + `try_files $uri =404`): the route was chosen on every reading
  of the path (normalize.py); here the path is decoded once and '\\', NUL, any '.', '..' or
  empty segment is refused (400), a dotfile is never served (404), the
  resolved path (`os.path.realpath`, symlinks followed) must stay inside root (else 404), and a
  directory is 404 (no listing, nginx's `autoindex off`) unless `index: true` and it holds an
  index.html.
- Validators: a strong ETag `"<size hex>-<mtime_ns hex>"` (nginx's `etag on` shape, with
  nanoseconds), `Last-Modified` from the mtime.
- Conditional requests, RFC 9110 §13.2.2's order: If-Match (412), else If-Unmodified-Since
  (412); If-None-Match (weak comparison, 304 on GET/HEAD), else If-Modified-Since (304).
- Ranges, RFC 9110 §14: one `bytes=` range (first-last, open-ended, suffix) → 206 with
  Content-Range; none satisfiable → 416 with `Content-Range: bytes */size`; a malformed Range or
  another unit is ignored (§14.2); several ranges → the whole file, 200 (nginx answers a
  multi-range request whole when it cannot build multipart/byteranges; so does this proxy).
  If-Range (§13.1.5): a strong ETag or a date equal to Last-Modified, else the whole file.
- Precompressed siblings (nginx's `gzip_static on`, `brotli_static`): `FILE.br` / `FILE.gz`
  when Accept-Encoding accepts the coding (q-values; q=0 refuses it; `*` covers the rest),
  br before gzip at equal q, with its own ETag (suffix `-br` / `-gz`) and `Vary:
  Accept-Encoding` whenever a sibling exists. Never with a Range: a range request gets the
  identity file (byte offsets of a compressed file mean nothing to the client).
- Caching: `Cache-Control: public, max-age=N`, plus `immutable` (RFC 8246) for names matching
  the route's fingerprint pattern.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import unquote_to_bytes

from proxy.dataplane.forward import ClientGone, Outcome
from proxy.errors import ClientTooSlow, ProxyError, ResponseAborted
from proxy.table.compile import StaticPolicy
from proxy.types import Receive, Send

Headers = Sequence[tuple[bytes, bytes]]
CHUNK = 64 * 1024
METHODS = frozenset({"GET", "HEAD"})
ALLOW = b"GET, HEAD"
# Codings tried, in the order preferred at equal q (brotli is the smaller).
CODINGS = (("br", ".br"), ("gzip", ".gz"))
ETAG_SUFFIX = {"br": "-br", "gzip": "-gz"}
INDEX = "index.html"


# --- locate (pure but for the file system) -------------------------------------------------
def path_parts(raw_path: bytes, prefix: str) -> tuple[list[str], bool]:
    """The segments under the route's prefix (decoded once) and whether the path ends in '/'.
    Raises ProxyError 400 for '.', '..' or empty segments, 404 for a dotfile or NUL."""
    decoded = unquote_to_bytes(raw_path)
    if b"\x00" in decoded or b"\\" in decoded:
        raise ProxyError(400, "bad-target", "the path has a NUL or a backslash")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise ProxyError(404, "not-found", "no such file") from None
    segments = text.split("/")[1:]
    skip = len([s for s in prefix.split("/") if s])
    if segments[:skip] != [s for s in prefix.split("/") if s]:
        raise ProxyError(400, "bad-target", "the path does not spell the route's prefix plainly")
    rest = segments[skip:]
    directory = bool(rest) and rest[-1] == ""
    if directory:
        rest = rest[:-1]
    for segment in rest:
        if segment in ("", ".", ".."):
            raise ProxyError(400, "bad-target", "the path has an empty, '.' or '..' segment")
        if segment.startswith("."):
            raise ProxyError(404, "not-found", "no such file")
    return rest, directory or not rest


@dataclass(frozen=True, slots=True)
class Found:
    """A file to serve: its real path, size, mtime (ns) and the precompressed siblings."""

    path: str
    size: int
    mtime_ns: int
    siblings: tuple[tuple[str, str, int, int], ...] = ()  # (coding, path, size, mtime_ns)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def _inside(root: str, real: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _regular(root: str, candidate: str) -> tuple[str, os.stat_result] | None:
    """`candidate`'s real path and stat when it is a regular file inside root, else None."""
    real = os.path.realpath(candidate)
    if not _inside(root, real):
        return None
    relative = os.path.relpath(real, root)
    if any(part.startswith(".") for part in relative.split(os.sep) if part != "."):
        return None  # a symlink to a dotfile inside root is a dotfile too
    try:
        info = os.stat(real)
    except (OSError, ValueError):
        return None
    return (real, info) if stat.S_ISREG(info.st_mode) else None


def locate(policy: StaticPolicy, parts: list[str], directory: bool) -> Found:
    """The file `parts` names under the policy's root (module rules), or ProxyError 404."""
    root = policy.root
    candidate = os.path.join(root, *parts)
    real = os.path.realpath(candidate)
    if not _inside(root, real):
        raise ProxyError(404, "not-found", "no such file")
    if os.path.isdir(real):
        if not policy.index:
            raise ProxyError(404, "not-found", "directories are not listed")
        candidate = os.path.join(real, INDEX)
    elif directory:
        raise ProxyError(404, "not-found", "no such directory")
    found = _regular(root, candidate)
    if found is None:
        raise ProxyError(404, "not-found", "no such file")
    path, info = found
    siblings = []
    for coding, suffix in CODINGS:
        sibling = _regular(root, path + suffix)
        if sibling is not None:
            siblings.append((coding, sibling[0], sibling[1].st_size, sibling[1].st_mtime_ns))
    return Found(path, info.st_size, info.st_mtime_ns, tuple(siblings))


# --- choose (pure) -------------------------------------------------------------------------
def etag_of(size: int, mtime_ns: int, suffix: str = "") -> str:
    return f'"{size:x}-{mtime_ns:x}{suffix}"'


def accepted(accept_encoding: str, codings: Sequence[str]) -> str | None:
    """The coding of `codings` the client prefers (highest q > 0; the earlier at equal q), or
    None. An explicit `q=0` refuses a coding even when `*` accepts everything."""
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        if not name:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[name] = q
    best, best_q = None, 0.0
    for coding in codings:
        named = weights.get(coding, weights.get("x-gzip") if coding == "gzip" else None)
        q = weights.get("*", 0.0) if named is None else named
        if q > best_q:
            best, best_q = coding, q
    return best


def _tags(header: str) -> list[str]:
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def _date(header: str) -> float | None:
    try:
        return parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def precondition(headers: dict[bytes, str], etag: str, mtime: int, method: str) -> int | None:
    """RFC 9110 §13.2.2: 412 or 304 when a precondition says so, None to answer normally.
    `mtime` is in whole seconds (an HTTP date's resolution)."""
    if_match = headers.get(b"if-match")
    if if_match is not None:
        tags = _tags(if_match)
        if "*" not in tags and etag not in tags:  # strong comparison
            return 412
    elif (since := headers.get(b"if-unmodified-since")) is not None:
        date = _date(since)
        if date is not None and mtime > date:
            return 412
    if_none_match = headers.get(b"if-none-match")
    if if_none_match is not None:
        bare = etag.removeprefix("W/")
        if any(tag == "*" or tag.removeprefix("W/") == bare for tag in _tags(if_none_match)):
            return 304 if method in METHODS else 412
        return None
    if (modified := headers.get(b"if-modified-since")) is not None and method in METHODS:
        date = _date(modified)
        if date is not None and mtime <= date:
            return 304
    return None


class Unsatisfiable(Exception):
    """No range of the request overlaps the file: 416."""


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The one range (first, last, inclusive) `header` asks of a `size`-byte file, or None to
    send it whole (no usable Range, or several ranges). Raises Unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    if "," in spec:
        return None  # several ranges: the whole file (module rules)
    first_text, dash, last_text = spec.strip().partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash or not (first_text or last_text):
        return None
    if not (first_text.isdigit() or not first_text) or not (last_text.isdigit() or not last_text):
        return None
    if not first_text:  # suffix: the last N bytes
        length = int(last_text)
        if length == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - length), size - 1
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # invalid: ignored (§14.1.1)
    if first >= size:
        raise Unsatisfiable
    return first, min(int(last_text) if last_text else size - 1, size - 1)


def range_applies(if_range: str | None, etag: str, mtime: int) -> bool:
    """RFC 9110 §13.1.5: a Range counts only if If-Range (when sent) still holds."""
    if if_range is None:
        return True
    if if_range.startswith('"') or if_range.startswith("W/"):
        return if_range == etag and not etag.startswith("W/")
    date = _date(if_range)
    return date is not None and int(date) == mtime


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    path: str  # the file the bytes come from
    offset: int
    length: int
    headers: list[tuple[bytes, bytes]]


def choose(policy: StaticPolicy, found: Found, method: str, headers: dict[bytes, str]) -> Answer:
    """What to send for `found` (module rules): status, file, byte span and response fields.
    Raises ProxyError for a 412 and builds the 304 and 416 answers itself."""
    wants_range = b"range" in headers and method == "GET"
    coding = None
    if found.siblings and not wants_range:
        coding = accepted(headers.get(b"accept-encoding", ""), [c for c, *_ in found.siblings])
    path, size, mtime_ns, suffix = found.path, found.size, found.mtime_ns, ""
    for sibling in found.siblings:
        if sibling[0] == coding:
            _, path, size, mtime_ns = sibling
            suffix = ETAG_SUFFIX[coding]
    etag = etag_of(size, mtime_ns, suffix)
    mtime = found.mtime_ns // 1_000_000_000
    fields = validators(policy, found, etag, mtime)
    verdict = precondition(headers, etag, mtime, method)
    if verdict == 412:
        raise ProxyError(412, "precondition-failed", "a precondition of the request failed")
    if verdict == 304:
        return Answer(304, path, 0, 0, fields)
    fields.append((b"content-type", content_type(found.name)))
    if coding is not None:
        fields.append((b"content-encoding", coding.encode()))
    status, offset, length = 200, 0, size
    if wants_range and range_applies(headers.get(b"if-range"), etag, mtime):
        try:
            span = byte_range(headers[b"range"], size)
        except Unsatisfiable:
            fields.append((b"content-range", f"bytes */{size}".encode()))
            return Answer(416, path, 0, 0, fields)
        if span is not None:
            status, offset, length = 206, span[0], span[1] - span[0] + 1
            fields.append((b"content-range", f"bytes {span[0]}-{span[1]}/{size}".encode()))
    fields.append((b"content-length", str(length).encode()))
    return Answer(status, path, offset, length, fields)


def validators(
    policy: StaticPolicy, found: Found, etag: str, mtime: int
) -> list[tuple[bytes, bytes]]:
    """The fields every answer about `found` carries, 304 included (RFC 9110 §15.4.5)."""
    cache = f"public, max-age={policy.max_age}"
    if policy.immutable.search(found.name):
        cache += ", immutable"
    fields = [
        (b"etag", etag.encode()),
        (b"last-modified", formatdate(mtime, usegmt=True).encode()),
        (b"cache-control", cache.encode()),
        (b"accept-ranges", b"bytes"),
    ]
    if found.siblings:
        fields.append((b"vary", b"Accept-Encoding"))
    return fields


def content_type(name: str) -> bytes:
    kind, _ = mimetypes.guess_type(name, strict=False)
    kind = kind or "application/octet-stream"
    if kind.startswith("text/") or kind in {"application/javascript", "image/svg+xml"}:
        kind += "; charset=utf-8"
    return kind.encode()


# --- serve ---------------------------------------------------------------------------------
async def serve(
    policy: StaticPolicy,
    method: str,
    raw_path: bytes,
    headers: Headers,
    receive: Receive,
    send: Send,
    *,
    send_timeout: float,
    outcome: Outcome,
    extra_headers: list[tuple[bytes, bytes]] | None,
) -> None:
    """Answer one request on a static route (module steps); refusals raise ProxyError."""
    if method not in METHODS:
        raise ProxyError(
            405,
            "method-not-allowed",
            f"{method} is not allowed on static files",
            headers=[(b"allow", ALLOW)],
        )
    parts, directory = path_parts(raw_path, policy.prefix)
    loop = asyncio.get_running_loop()
    found = await loop.run_in_executor(None, locate, policy, parts, directory)
    fields = {name.lower(): value.decode("latin-1") for name, value in headers}
    answer = choose(policy, found, method, fields)
    response = [*answer.headers, (b"date", formatdate(usegmt=True).encode())]
    if extra_headers:
        response.extend(extra_headers)
    if answer.status == 416:
        response.append((b"content-length", b"0"))
    outcome.status = answer.status
    if method == "HEAD" or answer.status in (304, 416) or answer.length == 0:
        await send({"type": "http.response.start", "status": answer.status, "headers": response})
        outcome.started = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    fd = await loop.run_in_executor(None, os.open, answer.path, os.O_RDONLY)
    try:
        await send({"type": "http.response.start", "status": answer.status, "headers": response})
        outcome.started = True
        await _stream(fd, answer, receive, send, send_timeout, outcome)
    finally:
        os.close(fd)


async def _stream(
    fd: int, answer: Answer, receive: Receive, send: Send, send_timeout: float, outcome: Outcome
) -> None:
    """Send the answer's span in CHUNK pieces. uvicorn's send() waits for the client to drain
    before it writes: the next piece is read only once the client took the last one, so a slow
    client holds one piece of memory, never the file. A client that reads nothing for the send
    timeout loses the answer; a short read (the file shrank) closes the connection; a client
    that left stops the reads (uvicorn's send() returns quietly once it has gone)."""
    loop = asyncio.get_running_loop()
    offset, remaining = answer.offset, answer.length
    gone = asyncio.ensure_future(_disconnect(receive))
    try:
        while remaining:
            data = await loop.run_in_executor(None, os.pread, fd, min(CHUNK, remaining), offset)
            if not data:
                raise ResponseAborted("static-file-changed")  # it cannot be completed
            offset += len(data)
            remaining -= len(data)
            try:
                async with asyncio.timeout(send_timeout):
                    await send(
                        {"type": "http.response.body", "body": data, "more_body": bool(remaining)}
                    )
            except TimeoutError:
                raise ClientTooSlow("client-send-timeout") from None
            outcome.bytes_out += len(data)
            if remaining and gone.done():
                raise ClientGone
    finally:
        gone.cancel()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
