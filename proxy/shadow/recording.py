"""Record real request/answer pairs of one route, for contract replays (`strangler record`).

A command arms a recording in the sink (route, count, methods, until). Each worker's Recorder
learns of it on its next tick; the data plane asks `wants(route, method)` (one dict lookup) and,
after the answer was sent, hands the exchange to `offer`, which only keeps it in memory, as it
is: no parsing nor redaction on the request's task. The next tick turns every kept exchange
into its redacted corpus line in one worker thread (`asyncio.to_thread`, one call per tick),
then sends the lines to the sink, which keeps at most `count` of them whoever sends them; a
worker stops capturing once the sink says the recording is full, or it ended. A sink that fails
is logged once per outage: the proxy keeps serving, and the lines of that tick are kept for the
next one (up to the recording's count).

A worker holds at most `count` exchanges per recording, and at most MAX_BUFFERED (64 MiB) of
request and answer bodies in all, until a tick sent them: past it `wants` says no and `offer`
drops the exchange, and the next tick logs how many were dropped (once per tick).

The corpus is JSON Lines, written mode 0600 (it holds production traffic). The first line
says what it is:

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
  §11.7.2, RFC 6265), and the common API-key and CSRF headers X-API-Key, X-Auth-Token,
  X-CSRF-Token, X-XSRF-Token: a replay supplies its own test identity (`--header`);
- the headers `offer`'s `drop` names (lower-case): the data plane passes the route's sticky key
  header and its override header, which may carry a user's identity or key;
- what the proxy adds per hop: X-Forwarded-*, X-Real-IP, Forwarded, Via, and the trace context
  (traceparent, tracestate: a replay must not join a production trace). X-Request-ID is kept;
- JSON body fields covered by a `secret` pattern (the route's `compare.secret`), whose values
  become "<redacted>" (a cut JSON answer cannot be searched: its whole body is "<redacted>").
  Patterns are compare.py's, read by its parser: `$`, `.key`, `["key"]`, `[*]`, `.*`; a
  pattern covers the field it names and everything under it.
"""

from __future__ import annotations

import asyncio
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

from proxy.shadow.compare import REDACTED, Rules, parse_pattern, takes_item, takes_key
from proxy.shadow.exchange import Exchange, Fields
from proxy.shadow.sink import Recording, Sink, SinkError, write_private

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
        b"x-api-key",
        b"x-auth-token",
        b"x-csrf-token",
        b"x-xsrf-token",
    }
)
MAX_BUFFERED = 64 * 1024 * 1024  # bytes of bodies a worker holds for recordings between ticks


class CorpusError(ValueError):
    """A corpus file that cannot be replayed; the message names the file and line."""


# --- redaction ------------------------------------------------------------------------------
Pattern = tuple[str | int, ...]  # compare.py's parsed pattern


@lru_cache(maxsize=256)
def _patterns(secret: tuple[str, ...]) -> tuple[Pattern, ...]:
    """The patterns, read by compare.py's own parser (both accept the same syntax)."""
    parsed = []
    for text in secret:
        try:
            parsed.append(parse_pattern(text))
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
    return tuple(parsed)


def _redact(value: Any, patterns: tuple[Pattern, ...]) -> tuple[Any, bool]:
    """`value` with every field a pattern covers replaced; and whether any was."""
    if () in patterns:
        return REDACTED, True
    if isinstance(value, dict):
        changed = False
        out = {}
        for key, child in value.items():
            rest = tuple(p[1:] for p in patterns if takes_key(p[0], key))
            out[key], hit = _redact(child, rest) if rest else (child, False)
            changed |= hit
        return out, changed
    if isinstance(value, list):
        rest = tuple(p[1:] for p in patterns if takes_item(p[0]))
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


def _kept(fields: Fields, drop: frozenset[bytes]) -> list[list[str]]:
    return [
        [name.decode("latin-1"), value.decode("latin-1")]
        for name, value in fields
        if name not in NEVER_KEPT and name not in drop and not name.startswith(b"x-forwarded-")
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
    exchange: Exchange,
    secret: tuple[str, ...] = (),
    rules: Rules | None = None,
    *,
    drop: tuple[str, ...] = (),
) -> str:
    """One exchange as a corpus line, redacted, without the headers `drop` names (besides
    NEVER_KEPT); with the route's compare rules, so a replay compares as the shadow does."""
    dropped = frozenset(name.lower().encode("latin-1") for name in drop)
    target = exchange.target.decode("latin-1")
    if not target.startswith("/"):  # absolute-form: the path and query are what a replay sends
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    entry: dict[str, Any] = {
        "method": exchange.method,
        "target": target,
        "headers": _kept(exchange.headers, dropped),
    }
    _body(entry, "body", redact_body(exchange.body, secret))
    entry["status"] = exchange.status
    entry["response_headers"] = _kept(exchange.response_headers, dropped)
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
    """Write a corpus (header line, then `lines`) to `path`, atomically, mode 0600."""
    header = {"corpus": VERSION, "route": route, "recorded_at": _when(time.time())}
    header["count"] = len(lines)
    write_private(Path(path), "".join(line + "\n" for line in [json.dumps(header), *lines]))


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
class _Kept:
    """An offered exchange, as it is, until a tick turns it into its corpus line."""

    __slots__ = ("drop", "exchange", "failed", "line", "rules", "secret", "size")

    def __init__(
        self,
        exchange: Exchange,
        secret: tuple[str, ...],
        rules: Rules | None,
        drop: tuple[str, ...],
    ) -> None:
        self.exchange: Exchange | None = exchange
        self.secret = secret
        self.rules = rules
        self.drop = drop
        self.size = len(exchange.body) + len(exchange.response_body)
        self.line: str | None = None
        self.failed = False


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n} bytes"


def _make_lines(batch: list[_Kept]) -> list[str]:
    """Each exchange's corpus line (in a worker thread); the ones that cannot be made are marked
    failed, and their problems returned."""
    problems = []
    for kept in batch:
        assert kept.exchange is not None
        try:
            kept.line = corpus_line(kept.exchange, kept.secret, kept.rules, drop=kept.drop)
        except Exception as exc:  # a body that breaks redaction loses its pair, not the worker
            kept.failed = True
            problems.append(f"{type(exc).__name__}: {exc}")
        kept.exchange = None  # the line (or nothing) is what is kept from now on
    return problems


class _Capture:
    __slots__ = ("buffer", "held", "recording", "sending")

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.buffer: list[_Kept] = []
        self.held = 0  # lines the sink held at the last flush
        self.sending = 0  # lines on their way to the sink

    def room(self) -> int:
        return self.recording.count - self.held - self.sending - len(self.buffer)

    def takes(self, method: str) -> bool:
        methods = self.recording.methods
        return (not methods or method in methods) and self.room() > 0


class Recorder:
    """One per worker: captures exchanges of armed recordings and sends them to the sink."""

    def __init__(self, sink: Sink, worker: str, *, max_buffered: int = MAX_BUFFERED) -> None:
        self.sink = sink
        self.worker = worker
        self.max_buffered = max_buffered
        self._captures: dict[str, _Capture] = {}  # recording id → capture
        self._routes: dict[str, tuple[_Capture, ...]] = {}  # route → captures with room
        self._down = False
        self.buffered = 0  # bytes of bodies kept since the last tick sent them
        self._dropped = 0  # exchanges dropped past max_buffered since the last tick

    def wants(self, route: str, method: str) -> bool:
        """Whether an exchange of `route` with `method` would be kept (no I/O)."""
        captures = self._routes.get(route)
        return (
            captures is not None
            and self.buffered < self.max_buffered
            and any(c.takes(method) for c in captures)
        )

    def offer(
        self,
        exchange: Exchange,
        secret: tuple[str, ...] = (),
        rules: Rules | None = None,
        *,
        drop: tuple[str, ...] = (),
    ) -> None:
        """Keep the exchange as it is (the next tick redacts it, off the event loop) for every
        recording of its route that has room; `drop`: lower-case names of headers never kept,
        besides NEVER_KEPT. Past max_buffered bytes of bodies, it is dropped."""
        captures = [c for c in self._routes.get(exchange.route, ()) if c.takes(exchange.method)]
        if not captures:
            return
        kept = _Kept(exchange, secret, rules, drop)
        if self.buffered + kept.size > self.max_buffered:
            self._dropped += 1
            return
        self.buffered += kept.size
        for capture in captures:
            capture.buffer.append(kept)
        if any(capture.room() <= 0 for capture in captures):
            self._index()  # no more room this tick: wants() says no until the next

    def _index(self) -> None:
        now = time.time()
        routes: dict[str, list[_Capture]] = {}
        for capture in self._captures.values():
            if capture.room() > 0 and capture.recording.until > now:
                routes.setdefault(capture.recording.route, []).append(capture)
        self._routes = {route: tuple(found) for route, found in routes.items()}

    def _recount(self) -> None:
        """What the buffers hold now (an exchange kept for several recordings counts once)."""
        kept = {id(k): k for c in self._captures.values() for k in c.buffer}
        self.buffered = sum(k.size for k in kept.values())

    async def _build(self) -> None:
        """Every kept exchange not yet a line becomes one, in one worker thread."""
        batch = list(
            {
                id(k): k
                for c in self._captures.values()
                for k in c.buffer
                if k.line is None and not k.failed
            }.values()
        )
        if batch:
            problems = await asyncio.to_thread(_make_lines, batch)
            if problems:
                log.warning(
                    "recording: %d exchange(s) could not be made corpus lines and were dropped"
                    " (%s)",
                    len(problems),
                    problems[0],
                )
        for capture in self._captures.values():
            capture.buffer = [k for k in capture.buffer if not k.failed]

    async def tick(self) -> None:
        """Make the kept exchanges corpus lines (off the event loop), send them, then learn
        which recordings are armed. Never raises a sink failure: it is logged once per outage
        and the lines wait for the next tick."""
        if self._dropped:
            log.warning(
                "recording: %d exchange(s) dropped: this worker already held its limit of %s of "
                "bodies for recordings, not yet sent",
                self._dropped,
                _size(self.max_buffered),
            )
            self._dropped = 0
        try:
            await self._build()
            for rid, capture in list(self._captures.items()):
                # Offers made while the lines were built wait (unmade) for the next tick.
                ready = [k for k in capture.buffer if k.line is not None]
                if not ready:
                    continue
                capture.buffer = [k for k in capture.buffer if k.line is None]
                capture.sending = len(ready)
                try:
                    capture.held = await self.sink.add_records(
                        rid, [k.line for k in ready if k.line is not None]
                    )
                except SinkError:
                    room = capture.recording.count - capture.held
                    capture.buffer = (ready + capture.buffer)[: max(room, 0)]
                    raise
                finally:
                    capture.sending = 0
            armed = await self.sink.armed()
        except SinkError as exc:
            if not self._down:
                self._down = True
                log.warning("recording: the shadow sink failed (%s); retrying every tick", exc)
            self._recount()
            self._index()
            return
        if self._down:
            self._down = False
            log.warning("recording: the shadow sink answers again")
        self._captures = {r.id: self._captures.get(r.id) or _Capture(r) for r in armed}
        self._recount()
        self._index()
