"""Where consumers and their credentials are kept (beside the route table, in the same kind of
store), and how every proxy worker follows them.

    file store    var/consumers.json          the current document (proxy.access.consumers)
                  var/consumers-audit.jsonl   one line per change: version, author, time,
                                              reason, action, consumer, key id, detail
    Redis store   {prefix}doc                 hash: version, json (the document)
                  {prefix}audit               the audit entries, newest first, the last 10,000
                  {prefix}changed             pub/sub channel: each new version's number

Neither keeps a key: the document holds SHA-256 hashes, the audit log not even those.

Every change is one `apply(operation, author=, reason=)`: read the document, apply the pure
operation, write the next version with its audit entry. The file store holds an exclusive lock
(flock) beside the document meanwhile, appends the audit line (fsynced) and then renames the new
document into place, as FileStore does; a crash between the two leaves an audit line for a
version that never landed, which `history` leaves out. The Redis store commits with optimistic
concurrency (WATCH the document, MULTI/EXEC the new one, the audit entry and the PUBLISH): of
two writers, the one whose document changed under it applies its operation again to the new
document, so no change is lost and a refusal (a name added meanwhile) is still a refusal.
`expected_version` makes a write fail instead (409) when the document moved on.

ConsumerFollower is what each proxy worker runs: it loads the document when it starts (waiting
at most START_WAIT; a store it cannot read leaves the registry empty: every credential refused,
fail closed) and then follows it: the file store by a stat of the file every 0.2 s, the Redis
store by its channel, and by a poll of the version every `store_poll_interval` because a
subscription can be lost without notice (as the route store's follower in proxy/runtime.py).
A revocation reaches every replica within the poll interval, usually at once. While the store
cannot be read the last registry stays, and `fresh_at` (the monotonic time of the last
successful read or check) tells the data plane how old it is: after `credentials_grace` it
refuses every credential. A store that answers with an older version is followed too: keeping a
newer registry would keep a credential that a later revocation in the reset store removes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from proxy.access.consumers import (
    AuditEntry,
    ConsumerDocument,
    DocumentInvalid,
    Operation,
    Registry,
    Result,
    apply,
)
from proxy.cancel import cancel_within
from proxy.store.base import StoreError, VersionConflict

if TYPE_CHECKING:
    import redis

    from proxy.settings import ProxySettings

log = logging.getLogger("strangler")
AUDIT_LIMIT = 10_000  # audit entries the Redis store keeps
COMMIT_ATTEMPTS = 50  # a Redis commit re-applied this often under contention, then a conflict
FILE_INTERVAL = 0.2  # seconds between two stats of the consumers file
START_WAIT = 2.0  # seconds a starting worker waits for the store
_UNSEEN = object()  # no file stamp is this one


class Contended(StoreError):
    """Other writers kept committing first: this change was not made."""

    status = 409
    kind = "version-conflict"


class ConsumerStore(Protocol):
    def current(self) -> ConsumerDocument: ...
    def history(self, limit: int = 50) -> list[AuditEntry]: ...
    def apply(
        self,
        operation: Operation,
        *,
        author: str,
        reason: str,
        expected_version: int | None = None,
    ) -> Result: ...
    def close(self) -> None: ...


def _check_expected(expected: int | None, document: ConsumerDocument) -> None:
    if expected is not None and expected != document.version:
        raise VersionConflict(expected, document.version)


def parse_document(text: str | bytes, where: str) -> ConsumerDocument:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DocumentInvalid(f"{where} is not JSON: {exc}") from None
    try:
        return ConsumerDocument.from_json(data)
    except DocumentInvalid as exc:
        raise DocumentInvalid(f"{where}: {exc}") from None


def _dumps(document: ConsumerDocument) -> str:
    return json.dumps(document.to_json(), indent=1, ensure_ascii=False) + "\n"


def _entry_line(entry: AuditEntry) -> str:
    return json.dumps(entry.as_dict(), ensure_ascii=False)


# --- the file store --------------------------------------------------------------------------
def read_document(path: Path) -> ConsumerDocument:
    """The document in `path`; the empty one when there is no file yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ConsumerDocument()
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    return parse_document(text, str(path))


def _append_line(path: Path, line: str) -> None:
    """Append `line` durably, on a line of its own even after a torn last line (a crash
    mid-append), which would otherwise swallow it."""
    with open(path, "a+b") as handle:
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write(line.encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


class FileConsumerStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.audit = self.path.with_name(f"{self.path.stem}-audit.jsonl")
        self._lock = self.path.with_name(f".{self.path.name}.lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def current(self) -> ConsumerDocument:
        return read_document(self.path)  # renamed into place whole: no lock needed to read

    def history(self, limit: int = 50) -> list[AuditEntry]:
        """The audit log, newest first: one entry per version of the document."""
        current = self.current().version
        try:
            lines = self.audit.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        entries: list[AuditEntry] = []
        seen: set[int] = set()
        for line in reversed(lines):
            try:
                entry = AuditEntry.from_dict(json.loads(line))
            except (ValueError, TypeError, AttributeError):
                continue  # a torn last line from a crash mid-append
            # Leave out a line whose document never landed (a crash between the two writes):
            # past the current version, or followed by another line for the same version.
            if entry.version > current or entry.version in seen:
                continue
            seen.add(entry.version)
            entries.append(entry)
            if len(entries) >= limit:
                break
        return entries

    def apply(
        self,
        operation: Operation,
        *,
        author: str,
        reason: str,
        expected_version: int | None = None,
    ) -> Result:
        from proxy.store.file import atomic_write  # the table's loader: not for reads

        try:
            with self._locked():
                document = self.current()
                _check_expected(expected_version, document)
                result = apply(document, operation, author=author, reason=reason, now=time.time())
                _append_line(self.audit, _entry_line(result.entry))
                atomic_write(self.path, _dumps(result.document))
                return result
        except OSError as exc:
            raise StoreError(
                f"cannot write the consumers at {self.path}: {exc.strerror or exc}"
            ) from None

    def close(self) -> None:
        pass


# --- the Redis store -------------------------------------------------------------------------
@contextlib.contextmanager
def _redis_errors(url: str, what: str, commit: bool = False) -> Iterator[None]:
    """Redis's exceptions as the route store's: unreachable (503), refused (credentials), failed."""
    import redis as redis_module
    from redis.exceptions import AuthorizationError

    from proxy.store.redis import StoreMisconfigured, StoreUnavailable, describe

    where = describe(url)
    try:
        yield
    except (redis_module.AuthenticationError, AuthorizationError) as exc:
        raise StoreMisconfigured(
            f"the consumer store at {where} refused this client ({what}): {exc}"
        ) from None
    except redis_module.ResponseError as exc:
        if str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            raise StoreMisconfigured(
                f"the consumer store at {where} refused this client ({what}): {exc}"
            ) from None
        raise StoreError(f"the consumer store at {where} failed ({what}): {exc}") from None
    except (redis_module.ConnectionError, redis_module.TimeoutError, OSError) as exc:
        said = (
            "if the connection was lost after the commit was sent, it may have landed: check "
            "`strangler consumers history`"
            if commit
            else "nothing was changed"
        )
        raise StoreUnavailable(
            f"the consumer store at {where} is unreachable ({what}): {exc}; {said}"
        ) from None
    except redis_module.RedisError as exc:
        raise StoreError(f"the consumer store at {where} failed ({what}): {exc}") from None


class RedisConsumerStore:
    def __init__(
        self, url: str, prefix: str = "strangler:consumers:", *, client: redis.Redis | None = None
    ) -> None:
        from proxy.store.redis import redis_client

        self.url = url
        self.prefix = prefix
        self.doc = prefix + "doc"
        self.audit = prefix + "audit"
        self.channel = prefix + "changed"
        self._client = client or redis_client(url)

    def _parse(self, raw: bytes | str | None) -> ConsumerDocument:
        if raw is None:
            return ConsumerDocument()
        return parse_document(raw, f"{self.doc} in the consumer store")

    def current(self) -> ConsumerDocument:
        with _redis_errors(self.url, "read the consumers"):
            raw = self._client.hget(self.doc, "json")
        return self._parse(raw)

    def history(self, limit: int = 50) -> list[AuditEntry]:
        with _redis_errors(self.url, "read the audit log"):
            rows = self._client.lrange(self.audit, 0, max(limit, 1) - 1)
        entries = []
        for row in rows:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                entries.append(AuditEntry.from_dict(json.loads(row)))
        return entries

    def apply(
        self,
        operation: Operation,
        *,
        author: str,
        reason: str,
        expected_version: int | None = None,
    ) -> Result:
        from redis.exceptions import WatchError

        with _redis_errors(self.url, "commit", commit=True):
            for _ in range(COMMIT_ATTEMPTS):
                with self._client.pipeline() as pipe:
                    try:
                        pipe.watch(self.doc)  # type: ignore[no-untyped-call]
                        document = self._parse(pipe.hget(self.doc, "json"))
                        _check_expected(expected_version, document)
                        result = apply(
                            document, operation, author=author, reason=reason, now=time.time()
                        )
                        version = result.document.version
                        pipe.multi()
                        pipe.hset(
                            self.doc, mapping={"version": version, "json": _dumps(result.document)}
                        )
                        pipe.lpush(self.audit, _entry_line(result.entry))
                        pipe.ltrim(self.audit, 0, AUDIT_LIMIT - 1)
                        pipe.publish(self.channel, version)
                        pipe.execute()
                    except WatchError:
                        continue  # another writer committed first: apply it to theirs
                    return result
        from proxy.store.redis import describe

        raise Contended(
            f"the consumer store at {describe(self.url)} changed under each of "
            f"{COMMIT_ATTEMPTS} attempts; nothing was changed: try again"
        )

    def close(self) -> None:
        self._client.close()


def consumer_store(store: str, path: Path, prefix: str) -> ConsumerStore:
    """The file store at `path` ("file"), or the Redis store at a redis:// URL under `prefix`."""
    if store == "file":
        return FileConsumerStore(path)
    return RedisConsumerStore(store, prefix)


def open_consumer_store(settings: ProxySettings) -> ConsumerStore:
    """The consumer store beside the settings' route store."""
    return consumer_store(settings.store, settings.consumers, settings.consumers_prefix)


# --- the follower ----------------------------------------------------------------------------
def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is replaced (None: no file, the empty document)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


FOLLOWER_NAME = "strangler-consumers"
STOP_TRIES = 4  # cancellations a stop sends the follower, STOP_TRY_SECONDS apart
STOP_TRY_SECONDS = 0.5


class ConsumerFollower:
    """One worker's view of the consumer store: `on_change(registry)` with each new document,
    `registry` the current one, `fresh_at` when the store was last read or checked."""

    def __init__(
        self,
        settings: ProxySettings,
        on_change: Callable[[Registry], None],
        *,
        start_wait: float = START_WAIT,
    ) -> None:
        from proxy.store.redis import describe

        self.settings = settings
        self.on_change = on_change
        self.start_wait = start_wait
        self.registry = Registry.empty()
        self.fresh_at = -math.inf  # never read: every credential is refused
        self.where = (
            str(settings.consumers) if settings.store == "file" else describe(settings.store)
        )
        self._loaded = False
        self._down = False
        # The file's stamp at the last good read, and at the last read that failed.
        self._good: object = _UNSEEN
        self._bad: object = _UNSEEN
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None

    def stale(self, now: float | None = None) -> bool:
        """Whether the store has been unreadable longer than `credentials_grace` (or never read):
        then no credential may be accepted."""
        now = time.monotonic() if now is None else now
        return now - self.fresh_at > self.settings.credentials_grace

    async def start(self) -> None:
        """Load the current document (waiting at most `start_wait`), then follow the store."""
        if self.settings.store != "file":
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                self.settings.store,
                client_name=FOLLOWER_NAME,  # tells its subscription apart in CLIENT LIST
                socket_connect_timeout=2,
                socket_timeout=5,
                health_check_interval=30,
            )
        try:
            async with asyncio.timeout(self.start_wait):
                if self._client is None:
                    await self._check_file()
                else:
                    await self._catch_up()
        except TimeoutError:
            self._unreadable(f"no answer within {self.start_wait:g}s")
        except Exception as exc:
            self._unreadable(str(exc))
        follow = self._follow_file() if self._client is None else self._follow_redis()
        self._task = asyncio.create_task(follow)

    async def stop(self) -> None:
        """Stop following, within a few seconds whatever Redis does. The task is cancelled
        again while it runs on: redis-py waits with asyncio.wait_for, which on Python 3.11 can
        swallow a cancellation that lands as its inner wait ends (the follower then looped on,
        and a worker's stop hung after a Redis restart)."""
        task, self._task = self._task, None
        if task is not None and await cancel_within(
            [task], STOP_TRIES * STOP_TRY_SECONDS, STOP_TRIES
        ):
            log.warning("the consumer follower of %s did not stop; left behind", self.where)
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_TRY_SECONDS):
                    await client.aclose()

    # --- what every source does ---------------------------------------------------------------
    def _install(self, registry: Registry) -> None:
        before = self.registry.version
        self.registry = registry
        if self._loaded and registry.version < before:
            log.warning(
                "consumer store %s went back from version %s to %s (reset or restored?); "
                "following it",
                self.where,
                before,
                registry.version,
            )
        self._loaded = True
        self.on_change(registry)
        log.info(
            "consumers version %s loaded from %s (%d consumers)",
            registry.version,
            self.where,
            len(registry),
        )

    def _fresh(self) -> None:
        self.fresh_at = time.monotonic()
        if self._down:
            self._down = False
            log.warning(
                "consumer store %s readable again; consumers version %s",
                self.where,
                self.registry.version,
            )

    def _unreadable(self, why: str) -> None:
        if self._down:
            return
        self._down = True
        grace = self.settings.credentials_grace
        if self._loaded:
            log.warning(
                "consumer store %s cannot be read (%s); the credentials of consumers version %s "
                "stay accepted for %gs after the last good read, then every one is refused",
                self.where,
                why,
                self.registry.version,
                grace,
            )
        else:
            log.warning(
                "consumer store %s cannot be read (%s); every credential is refused until it is",
                self.where,
                why,
            )

    # --- the file store -------------------------------------------------------------------------
    async def _follow_file(self) -> None:
        while True:
            await asyncio.sleep(FILE_INTERVAL)
            try:
                await self._check_file()
            except Exception as exc:  # the follower must outlive any one bad file
                self._unreadable(str(exc))

    async def _check_file(self) -> None:
        path = self.settings.consumers
        try:
            stamp = _stamp(path)
        except OSError as exc:
            self._unreadable(f"{path}: {exc.strerror}")
            return
        if stamp == self._good:
            self._fresh()  # unchanged since a good read
            return
        if stamp == self._bad:
            return  # the file that did not load: it stays refused until it is replaced
        try:
            registry = await asyncio.to_thread(lambda: Registry(read_document(path)))
        except StoreError as exc:
            self._bad = stamp
            self._unreadable(str(exc))
            return
        self._good = stamp
        self._install(registry)
        self._fresh()

    # --- the Redis store ------------------------------------------------------------------------
    async def _follow_redis(self) -> None:
        from redis.exceptions import RedisError

        channel = self.settings.consumers_prefix + "changed"
        interval = self.settings.store_poll_interval
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                while True:
                    await self._catch_up()
                    await pubsub.get_message(timeout=interval)  # a change, or the next poll
            except (RedisError, OSError, StoreError) as exc:
                self._unreadable(str(exc) or exc.__class__.__name__)
                await asyncio.sleep(interval)
            except Exception as exc:  # the follower must outlive any one bad document
                self._unreadable(str(exc) or exc.__class__.__name__)
                log.debug("consumer follower failed", exc_info=True)
                await asyncio.sleep(interval)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _catch_up(self) -> None:
        """Read the version; the document too when it is not the one loaded."""
        doc = self.settings.consumers_prefix + "doc"
        raw = await self._client.hget(doc, "version")
        number = int(raw) if raw is not None else 0
        if not self._loaded or number != self.registry.version:
            text = await self._client.hget(doc, "json")
            where = f"{doc} in the consumer store"

            def build() -> Registry:
                return Registry(ConsumerDocument() if text is None else parse_document(text, where))

            self._install(await asyncio.to_thread(build))
        self._fresh()
