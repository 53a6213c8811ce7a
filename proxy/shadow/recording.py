"""Record real request/answer pairs of one route, for contract replays (`strangler record`).

A command arms a recording in the sink (route, count, methods, until). Each worker's Recorder
learns of it on its next tick; the data plane asks `wants(route, method)` (one dict lookup) and,
after the answer was sent, hands the exchange to `offer`, which redacts it into one corpus line
kept in memory. The next tick sends the lines to the sink, which keeps at most `count` of them
whoever sends them; a worker stops capturing once the sink says the recording is full, or it
ended. A sink that fails is logged once per outage: the proxy keeps serving, and the lines of
that tick are kept for the next one (up to the recording's count).

The corpus is JSON Lines. The first line says what it is:

    {"corpus": 1, "route": "orders", "recorded_at": "2025-01-31T12:00:00.000Z", "count": 2}

and each further line is one pair, as the client sent and got it:

    {"method": "GET", "target": "/api/v1/orders?page=2", "headers": [["accept", "*/*"], ...],
     "body": "", "status": 200, "response_headers": [["content-type", "application/json"]],
     "response_body": "{...}", "truncated": false, "upstream": "monolith",
     "at": "2025-01-31T11:59:58.120Z"}

Header names are lower-case, values as sent (latin-1). A body is text when it is UTF-8;
otherwise `body` is null and `body_b64` holds it (`response_body_b64` likewise). `truncated`:
the answer was longer than the capture limit and its body is cut. `secret` (when the route
has secret patterns) lists them: a replay does not compare those fields, it has no value for
them. `compare` (when the route declares compare rules) holds its headers, ignore, unordered
and tolerance, so a replay compares as the route's shadow does.

Never kept, in requests or answers:
- credentials: Authorization, Proxy-Authorization, Cookie, Set-Cookie (RFC 9110 §11.6.2 and
  §11.7.2, RFC 6265): a replay supplies its own test identity (`--header`);
- what the proxy adds per hop: X-Forwarded-*, X-Real-IP, Forwarded, Via, and the trace context
  (traceparent, tracestate: a replay must not join a production trace). X-Request-ID is kept;
- JSON body fields covered by a `secret` pattern (the route's `compare.secret`), whose values
  become "<redacted>" (a cut JSON answer cannot be searched: its whole body is "<redacted>").
  Patterns are compare.py's: `$`, `.key`, `["key"]`, `[*]`, `.*`; a pattern covers the field
  it names and everything under it. compare.py keeps its parser private, so this module reads
  the same syntax with its own few lines, after Rules.check_path accepted each pattern.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxy.shadow.compare import REDACTED, Rules
from proxy.shadow.exchange import Exchange, Fields
from proxy.shadow.sink import Recording, Sink, SinkError
from proxy.store.file import atomic_write

log = logging.getLogger("strangler")
VERSION = 1
NEVER_KEPT = frozenset(
    {
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"set-cookie",
        b"forwarded",
        b"via",
        b"x-real-ip",
        b"traceparent",
        b"tracestate",
    }
)
_ANY_KEY = object()  # `.*`: any one key of an object
_ITEM = object()  # `[*]`: any element of an array
_SEGMENT = re.compile(r'\.(\*)|\.([^.\[\]"\s*]+)|\[(\*)\]|\[("(?:[^"\\]|\\.)*")\]')


class CorpusError(ValueError):
    """A corpus file that cannot be replayed; the message names the file and line."""


# --- redaction ------------------------------------------------------------------------------
Pattern = tuple[object, ...]


@lru_cache(maxsize=256)
def _patterns(secret: tuple[str, ...]) -> tuple[Pattern, ...]:
    """The patterns, checked by compare.py's own rules (so both accept the same syntax)."""
    parsed = []
    for text in secret:
        if (problem := Rules.check_path(text)) is not None:
            raise ValueError(f"{text!r}: {problem}")
        segments: list[object] = []
        for found in _SEGMENT.finditer(text, 1):
            any_key, key, item, quoted = found.groups()
            if any_key:
                segments.append(_ANY_KEY)
            elif key is not None:
                segments.append(key)
            elif item:
                segments.append(_ITEM)
            else:
                segments.append(str(json.loads(quoted)))
        parsed.append(tuple(segments))
    return tuple(parsed)


def _redact(value: Any, patterns: tuple[Pattern, ...]) -> tuple[Any, bool]:
    """`value` with every field a pattern covers replaced; and whether any was."""
    if () in patterns:
        return REDACTED, True
    if isinstance(value, dict):
        changed = False
        out = {}
        for key, child in value.items():
            rest = tuple(p[1:] for p in patterns if p[0] == key or p[0] is _ANY_KEY)
            out[key], hit = _redact(child, rest) if rest else (child, False)
            changed |= hit
        return out, changed
    if isinstance(value, list):
        rest = tuple(p[1:] for p in patterns if p[0] is _ITEM)
        if not rest:
            return value, False
        pairs = [_redact(child, rest) for child in value]
        return [child for child, _ in pairs], any(hit for _, hit in pairs)
    return value, False


def redact_body(body: bytes, secret: tuple[str, ...]) -> bytes:
    """`body` with the JSON fields `secret` covers as "<redacted>" (other bodies unchanged; a
    pattern `$` hides any body)."""
    patterns = _patterns(secret)
    if not patterns or not body:
        return body
    if () in patterns:
        return json.dumps(REDACTED).encode()
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return body
    redacted, changed = _redact(document, patterns)
    return json.dumps(redacted, ensure_ascii=False).encode() if changed else body


def _kept(fields: Fields) -> list[list[str]]:
    return [
        [name.decode("latin-1"), value.decode("latin-1")]
        for name, value in fields
        if name not in NEVER_KEPT and not name.startswith(b"x-forwarded-")
    ]


def _body(entry: dict[str, Any], key: str, body: bytes) -> None:
    try:
        entry[key] = body.decode("utf-8")
    except UnicodeDecodeError:
        entry[key] = None
        entry[f"{key}_b64"] = base64.b64encode(body).decode("ascii")


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def corpus_line(
    exchange: Exchange, secret: tuple[str, ...] = (), rules: Rules | None = None
) -> str:
    """One exchange as a corpus line, redacted; with the route's compare rules, so a replay
    compares as the shadow does."""
    target = exchange.target.decode("latin-1")
    if not target.startswith("/"):  # absolute-form: the path and query are what a replay sends
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    entry: dict[str, Any] = {
        "method": exchange.method,
        "target": target,
        "headers": _kept(exchange.headers),
    }
    _body(entry, "body", redact_body(exchange.body, secret))
    entry["status"] = exchange.status
    entry["response_headers"] = _kept(exchange.response_headers)
    body = exchange.response_body
    _body(entry, "response_body", body if exchange.truncated else redact_body(body, secret))
    if exchange.truncated and _patterns(secret):
        entry["response_body"] = REDACTED  # a cut JSON body cannot be parsed to find its fields
        entry.pop("response_body_b64", None)
    entry.update(truncated=exchange.truncated, upstream=exchange.upstream, at=_when(exchange.at))
    if secret:
        entry["secret"] = list(secret)
    if rules is not None:
        entry["compare"] = {
            "headers": list(rules.headers),
            "ignore": list(rules.ignore),
            "unordered": list(rules.unordered),
            "tolerance": rules.tolerance,
        }
    return json.dumps(entry, ensure_ascii=False)


def body_of(entry: dict[str, Any], key: str) -> bytes:
    """A corpus entry's `body` or `response_body` as bytes."""
    encoded = entry.get(f"{key}_b64")
    if encoded is not None:
        return base64.b64decode(encoded)
    return str(entry.get(key) or "").encode("utf-8")


# --- the corpus file ------------------------------------------------------------------------
def write_corpus(path: Path, route: str, lines: list[str]) -> None:
    """Write a corpus (header line, then `lines`) to `path`, atomically."""
    header = {"corpus": VERSION, "route": route, "recorded_at": _when(time.time())}
    header["count"] = len(lines)
    atomic_write(Path(path), "".join(line + "\n" for line in [json.dumps(header), *lines]))


_ENTRY: dict[str, tuple[type, str]] = {
    "method": (str, "text"),
    "target": (str, "text"),
    "headers": (list, "a list"),
    "status": (int, "an integer"),
    "response_headers": (list, "a list"),
    "truncated": (bool, "true or false"),
}


def _check_entry(entry: object) -> str | None:
    """Why `entry` is not a pair, or None."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    for key, (kind, name) in _ENTRY.items():
        if key not in entry:
            return f"no {key!r}"
        if not isinstance(entry[key], kind) or (kind is int and isinstance(entry[key], bool)):
            return f"{key!r} is not {name}"
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", entry["method"]):
        return f"{entry['method']!r} is not an HTTP method"
    if not entry["target"].startswith("/"):
        return f"target {entry['target']!r} is not a path"
    if not 100 <= entry["status"] <= 599:
        return f"status {entry['status']} is not an HTTP status"
    for key in ("headers", "response_headers"):
        if not all(
            isinstance(h, list) and len(h) == 2 and all(isinstance(p, str) for p in h)
            for h in entry[key]
        ):
            return f"{key!r} is not a list of [name, value] pairs"
    for key in ("body", "response_body"):
        encoded = entry.get(f"{key}_b64")
        if encoded is not None:
            try:
                base64.b64decode(encoded, validate=True)
            except (ValueError, TypeError):
                return f"'{key}_b64' is not base64"
        elif not isinstance(entry.get(key), str | None):
            return f"{key!r} is not text"
    return None


def read_corpus(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The corpus's header and its pairs; CorpusError names the line of the first problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CorpusError(f"{path}: cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CorpusError(f"{path}: not UTF-8 text, so not a corpus") from None
    header: dict[str, Any] | None = None
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise CorpusError(f"{path} line {number}: not JSON ({exc})") from None
        if header is None:
            if not isinstance(value, dict) or "corpus" not in value:
                raise CorpusError(
                    f"{path} line {number}: not a corpus header (made by `strangler record`)"
                )
            if value["corpus"] != VERSION:
                raise CorpusError(
                    f"{path} line {number}: corpus version {value['corpus']!r} is not "
                    f"supported (this strangler reads version {VERSION})"
                )
            if not isinstance(value.get("route"), str):
                raise CorpusError(f"{path} line {number}: the header names no route")
            header = value
        elif (problem := _check_entry(value)) is not None:
            raise CorpusError(f"{path} line {number}: {problem}")
        else:
            entries.append(value)
    if header is None:
        raise CorpusError(f"{path}: empty, not a corpus")
    return header, entries


# --- the worker's side ----------------------------------------------------------------------
class _Capture:
    __slots__ = ("buffer", "held", "recording")

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.buffer: list[str] = []
        self.held = 0  # lines the sink held at the last flush

    def room(self) -> int:
        return self.recording.count - self.held - len(self.buffer)

    def takes(self, method: str) -> bool:
        methods = self.recording.methods
        return (not methods or method in methods) and self.room() > 0


class Recorder:
    """One per worker: captures exchanges of armed recordings and sends them to the sink."""

    def __init__(self, sink: Sink, worker: str) -> None:
        self.sink = sink
        self.worker = worker
        self._captures: dict[str, _Capture] = {}  # recording id → capture
        self._routes: dict[str, tuple[_Capture, ...]] = {}  # route → captures with room
        self._down = False

    def wants(self, route: str, method: str) -> bool:
        """Whether an exchange of `route` with `method` would be kept (no I/O)."""
        captures = self._routes.get(route)
        return captures is not None and any(c.takes(method) for c in captures)

    def offer(
        self, exchange: Exchange, secret: tuple[str, ...] = (), rules: Rules | None = None
    ) -> None:
        """Keep the exchange, redacted, for every recording of its route that has room."""
        captures = [c for c in self._routes.get(exchange.route, ()) if c.takes(exchange.method)]
        if not captures:
            return
        line = corpus_line(exchange, secret, rules)
        for capture in captures:
            capture.buffer.append(line)
        if any(capture.room() <= 0 for capture in captures):
            self._index()  # no more room this tick: wants() says no until the next

    def _index(self) -> None:
        now = time.time()
        routes: dict[str, list[_Capture]] = {}
        for capture in self._captures.values():
            if capture.room() > 0 and capture.recording.until > now:
                routes.setdefault(capture.recording.route, []).append(capture)
        self._routes = {route: tuple(found) for route, found in routes.items()}

    async def tick(self) -> None:
        """Send the kept lines, then learn which recordings are armed. Never raises a sink
        failure: it is logged once per outage and the lines wait for the next tick."""
        try:
            for rid, capture in self._captures.items():
                if capture.buffer:
                    lines, capture.buffer = capture.buffer, []
                    try:
                        capture.held = await self.sink.add_records(rid, lines)
                    except SinkError:
                        room = capture.recording.count - capture.held
                        capture.buffer = (lines + capture.buffer)[: max(room, 0)]
                        raise
            armed = await self.sink.armed()
        except SinkError as exc:
            if not self._down:
                self._down = True
                log.warning("recording: the shadow sink failed (%s); retrying every tick", exc)
            self._index()
            return
        if self._down:
            self._down = False
            log.warning("recording: the shadow sink answers again")
        self._captures = {r.id: self._captures.get(r.id) or _Capture(r) for r in armed}
        self._index()
