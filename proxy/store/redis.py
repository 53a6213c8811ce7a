"""The shared route store: every replica reads the same versions from one Redis.

    {prefix}current       the served version's number
    {prefix}v:{N}         one version, never rewritten: hash of text, table (the validated table
                          as JSON), author, time, reason, sha256
    {prefix}changes       pub/sub channel: the number of each new version, published on commit

A commit is one Lua script, so it is atomic on the server: it checks that the current version is
still the one the change was based on (compare-and-set), writes the new version, moves the
pointer and publishes the number. Of two writers based on the same version exactly one wins;
the other gets a VersionConflict. Tables are validated before the script runs, so Redis never
holds a table a replica would refuse.

Replicas follow the store (`RedisStore.watch`): they learn of a new version by the channel and,
because a subscription can be lost without notice (a failover, a `CLIENT KILL`, a NAT dropping an
idle connection), by polling the pointer every poll interval too. A replica only ever moves
forward: a store that reports an older version than the one served (its data was lost and it was
seeded again) is refused, said once, and given the served version back from the replica's
last-known-good file, so the fleet and the next commits continue from the newest version any
replica serves (etcd's and Consul's watches are the precedent: a follower resumes from the index
it has, never from an older one). Each replica keeps the last version it served on disk
(last-known-good) and starts from it when Redis is down.

While Redis is down, reads and writes raise StoreUnavailable: the admin API answers 503 and the
data plane keeps serving the last good table.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.store.base import (
    DEFAULT_PREFIX,
    Check,
    StoreError,
    StoreMisconfigured,
    StoreUnavailable,
    UnknownVersion,
    Version,
    VersionConflict,
    VersionInfo,
)
from proxy.table.edit import stamp_and_load
from proxy.table.loader import load_text
from proxy.table.model import RouteTable
from proxy.table.validate import validate

if TYPE_CHECKING:
    import redis

    from proxy.store.redis_watch import RedisWatch

__all__ = [
    "RESTORE",
    "RedisStore",
    "StoreMisconfigured",
    "StoreUnavailable",
    "describe",
    "redis_client",
    "table_of",
]

# KEYS: current pointer, new version's hash, channel. ARGV: expected, new, text, author, time,
# reason, sha256. Returns the current version when it is not `expected` (a conflict), else -1.
_COMMIT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then
  return current
end
redis.call('HSET', KEYS[2], 'text', ARGV[3], 'author', ARGV[4], 'time', ARGV[5],
           'reason', ARGV[6], 'sha256', ARGV[7], 'table', ARGV[8])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', KEYS[3], ARGV[2])
return -1
"""


def table_of(compiled: str | bytes | None, text: str, version: int) -> RouteTable:
    """A stored version's table: from the JSON its committer validated (fast: a 1,000-route
    table loads in ~10 ms instead of ~400 ms of YAML parsing), re-checked; from the YAML text
    when there is no JSON or it does not load, so a bad one is reported with its lines."""
    if compiled is not None:
        try:
            table = RouteTable.model_validate_json(compiled)
        except ValueError:
            pass
        else:
            if not validate(table):
                return table
    return load_text(text, f"version {version}")


# A replica puts the version it serves back into a store that went behind it (lost its data).
# KEYS: current pointer, the version's hash, channel. ARGV: version, text, author, time, reason,
# sha256. Returns 1 when it restored, 0 when the store had caught up meanwhile.
RESTORE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'text', ARGV[2], 'author', ARGV[3], 'time', ARGV[4],
           'reason', ARGV[5], 'sha256', ARGV[6])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[3], ARGV[1])
return 1
"""


def redis_client(url: str, timeout: float = 2.0) -> redis.Redis:
    try:
        import redis as redis_module
    except ImportError as exc:  # pragma: no cover - the [redis] extra is part of [dev]
        raise StoreError("the Redis store needs: pip install 'strangler[redis]'") from exc
    return redis_module.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, health_check_interval=30
    )


def describe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisStore:
    def __init__(
        self,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        *,
        seed: Path | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.seed = seed
        self.channel = prefix + "changes"
        self._client = client or redis_client(url)
        self._commit = self._client.register_script(_COMMIT)

    def _key(self, version: int) -> str:
        return f"{self.prefix}v:{version}"

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        import redis as redis_module
        from redis.exceptions import AuthorizationError

        try:
            return fn(*args)
        except (redis_module.AuthenticationError, AuthorizationError) as exc:
            raise StoreMisconfigured(
                f"the route store at {describe(self.url)} refused this client ({what}): {exc}; "
                "check the credentials in the store URL"
            ) from None
        except redis_module.ResponseError as exc:
            if str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
                raise StoreMisconfigured(
                    f"the route store at {describe(self.url)} refused this client ({what}): "
                    f"{exc}; check the credentials in the store URL"
                ) from None
            where = describe(self.url)
            raise StoreError(f"the route store at {where} failed ({what}): {exc}") from None
        except (redis_module.ConnectionError, redis_module.TimeoutError, OSError) as exc:
            raise StoreUnavailable(
                f"the route store at {describe(self.url)} is unreachable ({what}): {exc}; "
                "nothing was changed, and the proxies keep serving their last good table"
            ) from None
        except redis_module.RedisError as exc:
            where = describe(self.url)
            raise StoreError(f"the route store at {where} failed ({what}): {exc}") from None

    # --- reading ----------------------------------------------------------------------------
    def current_number(self) -> int:
        value = self._call("read the current version", self._client.get, self.prefix + "current")
        return int(value) if value is not None else 0

    def _read(self, version: int) -> Version:
        fields = self._call(f"read version {version}", self._client.hgetall, self._key(version))
        if not fields:
            raise UnknownVersion(version)
        data = {k.decode(): v.decode() for k, v in fields.items()}
        info = VersionInfo(
            version, data["author"], float(data["time"]), data["reason"], data["sha256"]
        )
        return Version(info, data["text"], table_of(data.get("table"), data["text"], version))

    def current(self) -> Version:
        number = self.current_number()
        if number == 0:
            self._seed()
            number = self.current_number()
            if number == 0:
                raise UnknownVersion(0)
        return self._read(number)

    def get(self, version: int) -> Version:
        return self._read(version)

    def history(self, limit: int = 50) -> list[VersionInfo]:
        newest = self.current_number()
        numbers = list(range(newest, max(newest - limit, 0), -1))
        pipe = self._client.pipeline(transaction=False)
        for number in numbers:
            pipe.hmget(self._key(number), "author", "time", "reason", "sha256")
        rows = self._call("read the history", pipe.execute)
        infos = []
        for number, row in zip(numbers, rows, strict=True):
            if row[0] is None:
                continue
            author, at, reason, sha = (value.decode() for value in row)
            infos.append(VersionInfo(number, author, float(at), reason, sha))
        return infos

    # --- writing ----------------------------------------------------------------------------
    def _seed(self) -> None:
        """An empty store starts from the routes file it was given: its first version keeps the
        file's number, as the file store does (a replica that started from that file during an
        outage would refuse a lower number as older)."""
        if self.seed is None:
            return
        try:
            text = self.seed.read_text(encoding="utf-8")
        except OSError as exc:
            raise StoreError(
                f"the route store at {describe(self.url)} is empty and its seed {self.seed} "
                f"cannot be read: {exc.strerror}"
            ) from None
        first = load_text(text, str(self.seed)).version or 1
        with contextlib.suppress(VersionConflict):  # another replica seeded it first
            self._write(text, "store", f"first version, from {self.seed.name}", 0, first)

    def commit(
        self,
        text: str,
        *,
        author: str,
        reason: str,
        expected_version: int,
        check: Check | None = None,
    ) -> Version:
        """Store `text` as version expected+1 if `expected_version` is still current (else
        VersionConflict), it is a valid table (else TableInvalid) and `check` accepts it."""
        return self._write(text, author, reason, expected_version, expected_version + 1, check)

    def _write(
        self,
        text: str,
        author: str,
        reason: str,
        expected: int,
        version: int,
        check: Check | None = None,
    ) -> Version:
        text, table = stamp_and_load(text, version, "routes.yaml")
        if check is not None:
            check(table)
        at = round(time.time(), 3)
        sha = hashlib.sha256(text.encode()).hexdigest()
        keys = [self.prefix + "current", self._key(version), self.channel]
        args = [expected, version, text, author, at, reason, sha, table.model_dump_json()]
        try:
            current = int(self._call("commit", self._commit, keys, args))
        except StoreUnavailable as exc:
            raise StoreUnavailable(
                f"{exc} (if the connection was lost after the commit was sent, it may have "
                "landed: check `strangler routes history`)"
            ) from None
        if current != -1:
            raise VersionConflict(expected, current)
        return Version(VersionInfo(version, author, at, reason, sha), text, table)

    def watch(
        self, served: Callable[[], int], every: float, last_good: Path | None = None
    ) -> RedisWatch:
        """Follow the store for a replica serving version `served()`: its channel for speed, a
        poll of the pointer every `every` seconds for safety (RedisWatch)."""
        from proxy.store.redis_watch import RedisWatch

        return RedisWatch(self.url, self.prefix, served, every, last_good)

    def close(self) -> None:
        self._client.close()
