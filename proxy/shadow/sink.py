"""Where the proxy's workers and the `strangler` commands meet: each worker's shadow tallies, and
the recordings a command armed and the workers fill. "file" for one host (a directory beside
the route history), or the Redis the replicas already share for their routes.

    file: {state_dir}/shadow/                   redis: {prefix}...
      tallies/{worker}.json   one worker's        shadow:tally:{worker}  the same JSON, expiring
                              latest snapshot                            7 days after its last put
      resets.json             clear generations   shadow:resets          hash: route or * → gen
      recordings/{rid}.json   an armed recording  record:armed           hash: rid → spec JSON
      recordings/{rid}.jsonl  its lines           record:{rid}           list, expiring an hour
      recordings/{rid}.n      how many it holds                          after the recording ends
      stats/{worker}.json     one worker's arm   stats:{worker}         hash: a field per bucket
                              statistics                                 (rewritten while it
                                                                         fills), expiring
      evidence/{version}.json what a transition  evidence               hash: version → JSON
                              was decided on

Rules:
- A snapshot replaces the worker's previous one whole; every worker writes only its own. A
  worker that stopped leaves its last snapshot (its comparisons were real) until it is cleared.
- A clear bumps a generation (per route, or `*` for all). Each snapshot says which generations
  its worker had seen; a reader skips a route's numbers counted before its clear, and `put_tallies`
  returns the routes the worker must start counting again. A clear is never undone by a worker
  that had not heard of it yet.
- A recording keeps at most `count` lines, whoever writes them: a Lua script in Redis, an
  exclusive flock on the directory for the file sink (several processes of one host append).
  Lines for a recording that was disarmed are dropped.
- Recordings end at `until` (wall clock); their lines are deleted an hour later if no command
  collected them (Redis expiry; the file sink sweeps when the next recording is armed).
- Arm statistics (dataplane/armstats.py) are a worker's document replaced whole once a second,
  live only while it is: STATS_TTL seconds after its last put it expires (Redis) or is no
  longer read (the file sink, by the file's time; the next reader deletes it), so a stopped
  worker's numbers leave the windows (a window is of recent traffic, unlike the tallies).
- Evidence (the ledger's: the arms, shadow and gates a transition was decided on) is one
  document per route-table version, the last KEEP_EVIDENCE versions kept.
- Failures are SinkError; an unreachable Redis or an unwritable directory is SinkUnavailable, so
  a worker can log the outage once and keep serving.
- The file sink's files hold production traffic: every file it writes is mode 0600 (a file found
  looser is narrowed when written, if this user owns it), and the directories it creates 0700
  (a parent above {state_dir}/shadow keeps the default mode). `write_private` writes any other
  such file, e.g. a corpus.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote

from proxy.store.base import DEFAULT_PREFIX, StoreError

if TYPE_CHECKING:
    from redis.asyncio import Redis

T = TypeVar("T")

TALLY_TTL = 7 * 86_400  # a stopped worker's numbers stay for a week of reports
STATS_TTL = 30  # seconds a worker's arm statistics outlive its last put
KEEP_EVIDENCE = 1_000  # versions whose evidence is kept
KEEP_AFTER = 3_600  # a recording's lines outlive its end by an hour, for a slow collector
ALL = "*"  # the generation every clear bumps
_RID = re.compile(r"^[0-9a-f]{16}$")
PRIVATE = 0o600  # the sink's files and a corpus: production traffic, for this user only
PRIVATE_DIR = 0o700


def _open_private(path: Path, flags: int) -> int:
    """A descriptor on `path`, created 0600; a file that was looser is narrowed (when this user
    owns it: another's file is left as it is, readable by whom it already was)."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE)
    try:
        if os.fstat(fd).st_mode & 0o077:
            with contextlib.suppress(PermissionError):
                os.fchmod(fd, PRIVATE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: Path, text: str, *, durable: bool = True) -> None:
    """Write `text` to `path` atomically (a temporary name, fsynced unless not `durable`,
    renamed), mode 0600."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = _open_private(temporary, os.O_WRONLY | os.O_TRUNC)
    with open(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)


class SinkError(StoreError):
    """A shadow sink operation failed."""

    kind = "shadow-sink-error"


class SinkUnavailable(SinkError):
    """The sink cannot be reached (Redis down, directory unwritable): nothing was changed."""

    status = 503
    kind = "shadow-sink-unavailable"


@dataclass(frozen=True)
class Recording:
    """An armed recording: up to `count` pairs of `route` (of these methods; none = any) until
    `until`, a wall-clock time."""

    id: str
    route: str
    count: int
    methods: tuple[str, ...]
    until: float

    def as_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Recording | None:
        """The recording `as_json` wrote; None for anything else (a hand edit, another
        version's spec), which no worker captures for."""
        try:
            data = json.loads(text)
            return cls(
                str(data["id"]),
                str(data["route"]),
                int(data["count"]),
                tuple(str(m) for m in data["methods"]),
                float(data["until"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


class Sink(Protocol):
    async def put_tallies(self, worker: str, tallies: dict[str, dict[str, Any]]) -> frozenset[str]:
        """Replace `worker`'s snapshot (route → Tally.to_dict()). Returns the routes cleared
        since this sink's previous put: the caller starts their tallies again (they were left
        out of this snapshot)."""
        ...

    async def tallies(self) -> list[dict[str, dict[str, Any]]]:
        """Every worker's latest snapshot, without the numbers a clear removed."""
        ...

    async def clear_tallies(self, route: str | None = None) -> None:
        """Forget every worker's numbers for `route` (all routes: None)."""
        ...

    async def arm(
        self, route: str, count: int, methods: tuple[str, ...], seconds: float
    ) -> Recording: ...

    async def armed(self) -> list[Recording]:
        """The recordings not ended and not yet full."""
        ...

    async def add_records(self, rid: str, lines: list[str]) -> int:
        """Keep `lines` while the recording has room; returns how many it holds now (at most
        its count; 0 when it is not armed, and the lines are dropped)."""
        ...

    async def records(self, rid: str) -> list[str]: ...

    async def disarm(self, rid: str) -> None:
        """Stop the recording and delete its lines."""
        ...

    async def put_stats(self, worker: str, doc: dict[str, Any]) -> None:
        """Replace `worker`'s arm statistics (ArmStats.doc()); they expire STATS_TTL seconds
        after the last put."""
        ...

    async def stats(self) -> list[dict[str, Any]]:
        """Every live worker's arm statistics, each with its `worker`."""
        ...

    async def put_evidence(self, version: int, doc: dict[str, Any]) -> None:
        """Keep the evidence of route-table version `version` (replacing any it had); only the
        last KEEP_EVIDENCE versions' are kept."""
        ...

    async def evidence(self) -> dict[int, dict[str, Any]]:
        """Version → its evidence, for the versions that have one."""
        ...

    async def close(self) -> None: ...


def open_sink(store: str, prefix: str, state_dir: Path) -> Sink:
    """The file sink under `state_dir`/shadow ("file"), or the Redis sink at a redis:// URL."""
    if store == "file":
        return FileSink(Path(state_dir) / "shadow")
    return RedisSink(store, prefix)


_worker: tuple[int, str] | None = None


def worker_id() -> str:
    """host:pid:start-time, unique to this process (computed again in a forked child)."""
    global _worker
    pid = os.getpid()
    if _worker is None or _worker[0] != pid:
        _worker = (pid, f"{socket.gethostname()}:{pid}:{int(time.time())}")
    return _worker[1]


def _new_id() -> str:
    return secrets.token_hex(8)


def _check_arm(count: int, methods: tuple[str, ...], seconds: float) -> None:
    if count < 1:
        raise SinkError("a recording keeps at least one pair")
    if not seconds > 0:
        raise SinkError("a recording lasts more than zero seconds")
    if any(not m or m != m.upper() for m in methods):
        raise SinkError(f"methods are upper-case names: {methods!r}")


def _current(text: str | bytes, generations: dict[str, int]) -> dict[str, dict[str, Any]]:
    """A stored snapshot's tallies, less the routes counted before a clear its worker had not
    seen (and nothing from a snapshot that is not one)."""
    try:
        snapshot = json.loads(text)
        seen, tallies = snapshot.get("seen") or {}, snapshot["tallies"]
        if seen.get(ALL, 0) < generations.get(ALL, 0):
            return {}
        return {r: t for r, t in tallies.items() if seen.get(r, 0) >= generations.get(r, 0)}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


class _Generations:
    """A worker's view of the clear generations, from one put to the next."""

    def __init__(self) -> None:
        self.known: dict[str, int] | None = None

    def cleared(self, now: dict[str, int], routes: dict[str, Any]) -> frozenset[str]:
        known, self.known = self.known, dict(now)
        if known is None:  # the first put: whatever was cleared before this worker counted
            return frozenset()
        if now.get(ALL, 0) > known.get(ALL, 0):
            return frozenset(routes)
        return frozenset(r for r in routes if now.get(r, 0) > known.get(r, 0))


def _snapshot(
    worker: str, tallies: dict[str, dict[str, Any]], seen: dict[str, int], dropped: frozenset[str]
) -> str:
    kept = {route: tally for route, tally in tallies.items() if route not in dropped}
    return json.dumps({"worker": worker, "at": time.time(), "seen": seen, "tallies": kept})


def _check_evidence(version: int, doc: dict[str, Any]) -> str:
    """The evidence as stored (JSON), once `version` and `doc` are checked."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SinkError(f"evidence is kept for a version number (1 or more), not {version!r}")
    if not isinstance(doc, dict):
        raise SinkError("evidence is a JSON object")
    try:
        return json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SinkError(f"evidence must be JSON: {exc}") from None


Encoded = dict[str, tuple[bool, str]]  # bucket key → (closed when encoded, its JSON)


def _encode_buckets(buckets: dict[str, Any], known: Encoded | None) -> Encoded:
    """Each bucket of a statistics document as JSON; one `known` to have been encoded closed (a
    newer bucket existed then: it never changes again) is not encoded again."""
    newest = max((int(k) for k in buckets), default=0)
    out: Encoded = {}
    for key, bucket in buckets.items():
        seen = known.get(key) if known is not None else None
        out[key] = seen if seen is not None and seen[0] else (int(key) < newest, json.dumps(bucket))
    return out


def _object(text: str | bytes) -> dict[str, Any] | None:
    """The JSON object `text` holds; None for anything else (a hand edit, a half-written file
    of another version)."""
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


# --- file -----------------------------------------------------------------------------------
class FileSink:
    """The sink in a directory of one host; every call's file I/O runs in a thread."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self._tallies = self.dir / "tallies"
        self._recordings = self.dir / "recordings"
        self._resets = self.dir / "resets.json"
        self._stats = self.dir / "stats"
        self._evidence = self.dir / "evidence"
        self._generations = _Generations()
        self._encoded: dict[str, Encoded] = {}  # worker → its buckets as last written

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except OSError as exc:
            raise SinkUnavailable(
                f"the shadow directory {self.dir} failed ({what}): {exc}"
            ) from None

    def _mkdir(self, directory: Path) -> None:
        """`directory` (the sink's own or one in it), and the sink's own, created 0700 if
        missing."""
        try:
            directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        except FileNotFoundError:
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            self.dir.mkdir(mode=PRIVATE_DIR, exist_ok=True)
            directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._mkdir(self._recordings)
        lock = _open_private(self.dir / ".lock", os.O_WRONLY | os.O_APPEND)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            os.close(lock)

    def _read_generations(self) -> dict[str, int]:
        try:
            return {str(k): int(v) for k, v in json.loads(self._resets.read_bytes()).items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, AttributeError):
            return {}  # written atomically: only a hand edit can break it

    # --- tallies ----------------------------------------------------------------------------
    async def put_tallies(self, worker: str, tallies: dict[str, dict[str, Any]]) -> frozenset[str]:
        def put() -> frozenset[str]:
            seen = self._read_generations()
            dropped = self._generations.cleared(seen, tallies)
            self._mkdir(self._tallies)
            path = self._tallies / f"{quote(worker, safe='')}.json"
            write_private(path, _snapshot(worker, tallies, seen, dropped))
            return dropped

        return await self._run("write the tallies", put)

    async def tallies(self) -> list[dict[str, dict[str, Any]]]:
        def read() -> list[dict[str, dict[str, Any]]]:
            generations = self._read_generations()
            snapshots = []
            for path in sorted(self._tallies.glob("*.json")):
                try:
                    snapshots.append(_current(path.read_bytes(), generations))
                except FileNotFoundError:
                    continue  # removed by a clear meanwhile
            return snapshots

        return await self._run("read the tallies", read)

    async def clear_tallies(self, route: str | None = None) -> None:
        def clear() -> None:
            with self._locked():
                generations = self._read_generations()
                key = ALL if route is None else route
                generations[key] = generations.get(key, 0) + 1
                write_private(self._resets, json.dumps(generations))
                if route is None:
                    for path in self._tallies.glob("*.json"):
                        path.unlink(missing_ok=True)

        await self._run("clear the tallies", clear)

    # --- recordings -------------------------------------------------------------------------
    def _spec(self, rid: str) -> Recording | None:
        if not _RID.match(rid):
            return None
        try:
            found = Recording.from_json((self._recordings / f"{rid}.json").read_text())
        except FileNotFoundError:
            return None
        return found if found is not None and found.id == rid else None

    def _held(self, rid: str) -> int:
        try:
            return int((self._recordings / f"{rid}.n").read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _delete(self, rid: str) -> None:
        for suffix in (".json", ".jsonl", ".n"):
            (self._recordings / f"{rid}{suffix}").unlink(missing_ok=True)

    async def arm(
        self, route: str, count: int, methods: tuple[str, ...], seconds: float
    ) -> Recording:
        _check_arm(count, methods, seconds)
        recording = Recording(_new_id(), route, count, methods, time.time() + seconds)

        def arm() -> None:
            with self._locked():
                for path in self._recordings.glob("*.json"):
                    old = self._spec(path.stem)
                    if old is not None and old.until + KEEP_AFTER < time.time():
                        self._delete(old.id)
                write_private(self._recordings / f"{recording.id}.json", recording.as_json())

        await self._run("arm a recording", arm)
        return recording

    async def armed(self) -> list[Recording]:
        def armed() -> list[Recording]:
            now = time.time()
            found = []
            for path in sorted(self._recordings.glob("*.json")):
                spec = self._spec(path.stem)
                if spec is not None and spec.until > now and self._held(spec.id) < spec.count:
                    found.append(spec)
            return found

        return await self._run("read the recordings", armed)

    async def add_records(self, rid: str, lines: list[str]) -> int:
        if any("\n" in line for line in lines):
            raise SinkError("a record is one line of JSON")

        def add() -> int:
            with self._locked():
                spec = self._spec(rid)
                if spec is None:
                    return 0
                held = self._held(rid)
                taken = lines[: max(spec.count - held, 0)]
                if taken:
                    path = self._recordings / f"{rid}.jsonl"
                    append = _open_private(path, os.O_WRONLY | os.O_APPEND)
                    with open(append, "a", encoding="utf-8") as out:
                        out.write("".join(line + "\n" for line in taken))
                    held += len(taken)
                    path = self._recordings / f"{rid}.n"
                    with open(_open_private(path, os.O_WRONLY | os.O_TRUNC), "w") as out:
                        out.write(str(held))
                return held

        return await self._run("add records", add)

    async def records(self, rid: str) -> list[str]:
        def read() -> list[str]:
            with self._locked():
                spec = self._spec(rid)
                if spec is None:
                    return []
                try:
                    text = (self._recordings / f"{rid}.jsonl").read_text(encoding="utf-8")
                except FileNotFoundError:
                    return []
                return text.splitlines()[: spec.count]

        return await self._run("read records", read)

    async def disarm(self, rid: str) -> None:
        def disarm() -> None:
            if _RID.match(rid):
                with self._locked():
                    self._delete(rid)

        await self._run("disarm a recording", disarm)

    # --- arm statistics and evidence ----------------------------------------------------------
    async def put_stats(self, worker: str, doc: dict[str, Any]) -> None:
        meta = {k: v for k, v in doc.items() if k != "buckets"}
        meta.update(worker=worker, at=time.time())
        buckets: dict[str, Any] = doc.get("buckets") or {}

        def put() -> None:  # off the event loop; its closed buckets were encoded before
            encoded = _encode_buckets(buckets, self._encoded.get(worker))
            self._encoded[worker] = encoded
            inner = ", ".join(f"{json.dumps(k)}: {text}" for k, (_, text) in encoded.items())
            self._mkdir(self._stats)
            path = self._stats / f"{quote(worker, safe='')}.json"
            # Recent traffic, not a record: no fsync (a lost file is the next second's put).
            write_private(
                path, json.dumps(meta)[:-1] + f', "buckets": {{{inner}}}}}', durable=False
            )

        await self._run("write the arm statistics", put)

    async def stats(self) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            docs = []
            oldest = time.time() - STATS_TTL
            for path in sorted(self._stats.glob("*.json")):
                try:
                    if path.stat().st_mtime < oldest:
                        path.unlink(missing_ok=True)  # its worker stopped
                        continue
                    doc = _object(path.read_bytes())
                except FileNotFoundError:
                    continue
                if doc is not None:
                    docs.append(doc)
            return docs

        return await self._run("read the arm statistics", read)

    async def put_evidence(self, version: int, doc: dict[str, Any]) -> None:
        text = _check_evidence(version, doc)

        def put() -> None:
            self._mkdir(self._evidence)
            write_private(self._evidence / f"{version}.json", text)
            kept = sorted(self._versions(), reverse=True)
            for old in kept[KEEP_EVIDENCE:]:
                (self._evidence / f"{old}.json").unlink(missing_ok=True)

        await self._run("write evidence", put)

    def _versions(self) -> list[int]:
        return [int(p.stem) for p in self._evidence.glob("*.json") if p.stem.isdigit()]

    async def evidence(self) -> dict[int, dict[str, Any]]:
        def read() -> dict[int, dict[str, Any]]:
            found = {}
            for version in sorted(self._versions()):
                try:
                    doc = _object((self._evidence / f"{version}.json").read_bytes())
                except FileNotFoundError:
                    continue
                if doc is not None:
                    found[version] = doc
            return found

        return await self._run("read evidence", read)

    async def close(self) -> None:
        return None


# --- Redis ----------------------------------------------------------------------------------
# KEYS: the armed hash, the recording's list. ARGV: rid, then the lines. Returns how many lines
# the list holds, or -1 when the recording is not armed (its lines are dropped).
_ADD = f"""
local spec = redis.call('HGET', KEYS[1], ARGV[1])
if not spec then
  return -1
end
local recording = cjson.decode(spec)
local count = tonumber(recording['count'])
local held = redis.call('LLEN', KEYS[2])
for i = 2, #ARGV do
  if held >= count then
    break
  end
  redis.call('RPUSH', KEYS[2], ARGV[i])
  held = held + 1
end
if held > 0 then
  redis.call('EXPIREAT', KEYS[2], string.format('%d', math.ceil(recording['until']) + {KEEP_AFTER}))
end
return held
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


class RedisSink:
    """The sink in the Redis the replicas share (redis-py's asyncio client)."""

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, *, client: Redis | None = None):
        self.url = url
        self.prefix = prefix
        if client is None:
            from redis.asyncio import Redis

            client = Redis.from_url(
                url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
            )
        self._client = client
        self._add = client.register_script(_ADD)
        self._armed = prefix + "record:armed"
        self._resets = prefix + "shadow:resets"
        self._evidence = prefix + "evidence"
        self._generations = _Generations()
        self._written: dict[str, Encoded] = {}  # worker → the buckets its hash holds

    def _tally_key(self, worker: str) -> str:
        return f"{self.prefix}shadow:tally:{worker}"

    def _stats_key(self, worker: str) -> str:
        return f"{self.prefix}stats:{worker}"

    def _list(self, rid: str) -> str:
        return f"{self.prefix}record:{rid}"

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        from redis.exceptions import ConnectionError, RedisError, TimeoutError

        from proxy.store.redis import describe

        try:
            return await call()
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise SinkUnavailable(
                f"the shadow sink at {describe(self.url)} is unreachable ({what}): {exc}"
            ) from None
        except RedisError as exc:
            raise SinkError(
                f"the shadow sink at {describe(self.url)} failed ({what}): {exc}"
            ) from None

    async def _read_generations(self) -> dict[str, int]:
        raw = await self._client.hgetall(self._resets)
        return {_text(k): int(v) for k, v in raw.items()}

    # --- tallies ----------------------------------------------------------------------------
    async def put_tallies(self, worker: str, tallies: dict[str, dict[str, Any]]) -> frozenset[str]:
        async def put() -> frozenset[str]:
            seen = await self._read_generations()
            dropped = self._generations.cleared(seen, tallies)
            snapshot = _snapshot(worker, tallies, seen, dropped)
            await self._client.set(self._tally_key(worker), snapshot, ex=TALLY_TTL)
            return dropped

        return await self._call("write the tallies", put)

    async def _tally_keys(self) -> list[bytes]:
        match = _glob_escape(self._tally_key("")) + "*"
        return [key async for key in self._client.scan_iter(match=match, count=1000)]

    async def tallies(self) -> list[dict[str, dict[str, Any]]]:
        async def read() -> list[dict[str, dict[str, Any]]]:
            generations = await self._read_generations()
            keys = sorted(await self._tally_keys())
            values = await self._client.mget(keys) if keys else []
            snapshots = []
            for value in values:
                if value is not None:  # None: expired or cleared meanwhile
                    snapshots.append(_current(value, generations))
            return snapshots

        return await self._call("read the tallies", read)

    async def clear_tallies(self, route: str | None = None) -> None:
        async def clear() -> None:
            await self._client.hincrby(self._resets, ALL if route is None else route, 1)
            if route is None:
                keys = await self._tally_keys()
                if keys:
                    await self._client.delete(*keys)

        await self._call("clear the tallies", clear)

    # --- recordings -------------------------------------------------------------------------
    async def arm(
        self, route: str, count: int, methods: tuple[str, ...], seconds: float
    ) -> Recording:
        _check_arm(count, methods, seconds)
        recording = Recording(_new_id(), route, count, methods, time.time() + seconds)

        async def arm() -> None:
            ended = [
                spec.id for spec in await self._specs() if spec.until + KEEP_AFTER < time.time()
            ]
            async with self._client.pipeline(transaction=True) as pipe:
                if ended:
                    pipe.hdel(self._armed, *ended)
                pipe.hset(self._armed, recording.id, recording.as_json())
                await pipe.execute()

        await self._call("arm a recording", arm)
        return recording

    async def _specs(self) -> list[Recording]:
        raw = await self._client.hgetall(self._armed)
        specs = (Recording.from_json(value) for value in raw.values())
        return sorted((spec for spec in specs if spec is not None), key=lambda r: r.id)

    async def armed(self) -> list[Recording]:
        async def armed() -> list[Recording]:
            now = time.time()
            live = [spec for spec in await self._specs() if spec.until > now]
            if not live:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for spec in live:
                    pipe.llen(self._list(spec.id))
                held = await pipe.execute()
            return [spec for spec, n in zip(live, held, strict=True) if int(n) < spec.count]

        return await self._call("read the recordings", armed)

    async def add_records(self, rid: str, lines: list[str]) -> int:
        if any("\n" in line for line in lines):
            raise SinkError("a record is one line of JSON")

        async def add() -> int:
            held = await self._add(keys=[self._armed, self._list(rid)], args=[rid, *lines])
            return max(int(held), 0)

        return await self._call("add records", add)

    async def records(self, rid: str) -> list[str]:
        async def read() -> list[str]:
            raw = await self._client.lrange(self._list(rid), 0, -1)
            return [_text(line) for line in raw]

        return await self._call("read records", read)

    async def disarm(self, rid: str) -> None:
        async def disarm() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hdel(self._armed, rid)
                pipe.delete(self._list(rid))
                await pipe.execute()

        await self._call("disarm a recording", disarm)

    # --- arm statistics and evidence ----------------------------------------------------------
    async def put_stats(self, worker: str, doc: dict[str, Any]) -> None:
        """One hash per worker: `meta` and a field per bucket. A bucket written closed (a newer
        one existed then) never changes again and is not written again, so a put costs the
        filling bucket, not the worker's fifteen minutes. The first put, and the next one after
        the hash was found not to hold what was written (Redis lost it), replaces it whole."""
        buckets: dict[str, Any] = doc.get("buckets") or {}
        meta = {k: v for k, v in doc.items() if k != "buckets"}
        meta.update(worker=worker, at=time.time())
        written = self._written.get(worker)
        encoded = _encode_buckets(buckets, written)
        fields: dict[str | bytes | bytearray | memoryview | int | float, str]
        fields = {"meta": json.dumps(meta)}
        for k, (_, text) in encoded.items():
            if written is None or not written.get(k, (False, ""))[0]:
                fields[f"b:{k}"] = text
        gone = [f"b:{k}" for k in written or () if k not in buckets]
        key = self._stats_key(worker)

        async def put() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                if written is None:
                    pipe.delete(key)
                elif gone:
                    pipe.hdel(key, *gone)
                pipe.hset(key, mapping=fields)
                pipe.expire(key, STATS_TTL)
                pipe.hlen(key)
                held = (await pipe.execute())[-1]
            if int(held) == len(buckets) + 1:
                self._written[worker] = encoded
            else:
                self._written.pop(worker, None)

        try:
            await self._call("write the arm statistics", put)
        except SinkError:
            self._written.pop(worker, None)  # what the hash holds is not known
            raise

    async def stats(self) -> list[dict[str, Any]]:
        async def read() -> list[dict[str, Any]]:
            match = _glob_escape(self._stats_key("")) + "*"
            keys = sorted([key async for key in self._client.scan_iter(match=match, count=1000)])
            if not keys:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                hashes = await pipe.execute()
            return [doc for doc in map(_stats_doc, hashes) if doc is not None]

        return await self._call("read the arm statistics", read)

    async def put_evidence(self, version: int, doc: dict[str, Any]) -> None:
        text = _check_evidence(version, doc)

        async def put() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(self._evidence, str(version), text)
                pipe.hlen(self._evidence)
                held = (await pipe.execute())[-1]
            if int(held) > KEEP_EVIDENCE:
                versions = sorted(int(v) for v in await self._client.hkeys(self._evidence))
                await self._client.hdel(
                    self._evidence, *(str(v) for v in versions[: len(versions) - KEEP_EVIDENCE])
                )

        await self._call("write evidence", put)

    async def evidence(self) -> dict[int, dict[str, Any]]:
        async def read() -> dict[int, dict[str, Any]]:
            found = {}
            for version, text in (await self._client.hgetall(self._evidence)).items():
                doc = _object(text)
                if doc is not None and _text(version).isdigit():
                    found[int(version)] = doc
            return dict(sorted(found.items()))

        return await self._call("read evidence", read)

    async def close(self) -> None:
        await self._client.aclose()


def _stats_doc(fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    """A worker's statistics document from its hash (None without its `meta`)."""
    meta = _object(fields.get(b"meta", b""))
    if meta is None:
        return None
    buckets = {}
    for name, value in fields.items():
        if name.startswith(b"b:") and (bucket := _object(value)) is not None:
            buckets[name[2:].decode()] = bucket
    return {**meta, "buckets": buckets}
