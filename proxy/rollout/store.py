"""Where rollouts live, beside the route table they move, and the lease that lets one driver at a
time advance them.

    file store: var/{routes}-rollouts/      Redis store: {prefix}rollouts:…
      {route}.json   one rollout (the last)   state      hash: route → rollout JSON
      .lease.json    holder, expires          revision   hash: route → its revision
      .lock          flock for every write    lease      holder, expiring (PX)

Rules:
- One rollout per route: the running one, or the last one (a new start replaces a finished one,
  never a running one).
- Every write is a compare-and-set on the rollout's revision (a Lua script in Redis; an
  exclusive flock in the file store) through `update`, which reads, applies a pure change and
  writes, again on a conflict: a pause typed while the driver commits a step loses neither.
- A write may name a lease `holder`: it lands only while that holder has the lease, so a driver
  that lost its lease (stalled longer than the lease) cannot write over its successor's state
  (a fencing check, as leader-election clients make).
- The lease (Kubernetes' leader election, Redis' SET NX PX): one record with the holder and an
  expiry, taken when free or expired, renewed by its holder, released when it stops. A holder
  that dies leaves it to expire: another replica takes over within the lease (5 s by default)
  and continues from the recorded state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from proxy.rollout.model import Rollout
from proxy.store.base import DEFAULT_PREFIX, StoreError

if TYPE_CHECKING:
    import redis

Change = Callable[[Rollout | None], Rollout | None]
RETRIES = 20  # compare-and-set attempts before a write gives up (each one re-reads)


class RolloutConflict(StoreError):
    """A rollout changed under a write `RETRIES` times, or the writer lost its lease."""

    status = 409
    kind = "rollout-conflict"


class LeaseLost(RolloutConflict):
    kind = "lease-lost"


class RolloutStore(Protocol):
    def get(self, route: str) -> Rollout | None: ...
    def all(self) -> list[Rollout]: ...
    def update(self, route: str, change: Change, holder: str | None = None) -> Rollout | None:
        """Apply `change` to the route's rollout (None: there is none) and write what it
        returns (None: nothing to write) if nobody wrote meanwhile, else try again; `holder`:
        only while it holds the lease. Returns what is stored then."""
        ...

    def acquire(self, holder: str, ttl: float) -> bool:
        """Take or renew the drivers' lease for `ttl` seconds; False while another holds it."""
        ...

    def release(self, holder: str) -> None: ...
    def holder(self) -> str | None: ...
    def close(self) -> None: ...


def _decode(text: str | bytes) -> Rollout | None:
    try:
        return Rollout.from_stored(json.loads(text))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # a hand edit or another version's record: not one this driver can run


def _encode(rollout: Rollout, revision: int) -> str:
    data = rollout.stored()
    data["revision"] = revision
    return json.dumps(data)


def open_rollouts(store: str, routes: Path | None, prefix: str = DEFAULT_PREFIX) -> RolloutStore:
    """The rollouts of the route store `store` ("file" with `routes`, or a redis:// URL)."""
    if store == "file":
        if routes is None:
            raise StoreError("the file store needs a routes file (--routes FILE)")
        from proxy.store.file import FileStore

        history = FileStore(routes).dir
        return FileRollouts(history.parent / f"{Path(routes).stem}-rollouts")
    return RedisRollouts(store, prefix)


# --- file -------------------------------------------------------------------------------------
class FileRollouts:
    """A JSON file per route in a directory beside the route history."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self._lease = self.dir / ".lease.json"

    def _path(self, route: str) -> Path:
        return self.dir / f"{route}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(self.dir / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        except OSError as exc:
            raise StoreError(f"the rollouts directory {self.dir} failed: {exc}") from None

    def _read(self, route: str) -> Rollout | None:
        try:
            return _decode(self._path(route).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def get(self, route: str) -> Rollout | None:
        try:
            return self._read(route)
        except OSError as exc:
            raise StoreError(f"cannot read the rollout of {route!r}: {exc}") from None

    def all(self) -> list[Rollout]:
        found = []
        try:
            paths = sorted(self.dir.glob("*.json"))
        except OSError as exc:
            raise StoreError(f"cannot read {self.dir}: {exc}") from None
        for path in paths:
            if path.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):
                rollout = _decode(path.read_text(encoding="utf-8"))
                if rollout is not None:
                    found.append(rollout)
        return found

    def _lease_record(self) -> dict[str, Any]:
        try:
            data = json.loads(self._lease.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _held_by(self, holder: str) -> bool:
        record = self._lease_record()
        return record.get("holder") == holder and float(record.get("expires", 0)) > time.time()

    def update(self, route: str, change: Change, holder: str | None = None) -> Rollout | None:
        from proxy.store.file import atomic_write

        with self._locked():
            if holder is not None and not self._held_by(holder):
                raise LeaseLost(f"{holder} no longer holds the rollouts' lease")
            current = self._read(route)
            changed = change(current)
            if changed is None:
                return current
            revision = (current.revision if current else 0) + 1
            atomic_write(self._path(route), _encode(changed, revision))
            return self._read(route)

    def acquire(self, holder: str, ttl: float) -> bool:
        from proxy.store.file import atomic_write

        with self._locked():
            record = self._lease_record()
            now = time.time()
            if record.get("holder") not in (None, holder) and float(record["expires"]) > now:
                return False
            atomic_write(self._lease, json.dumps({"holder": holder, "expires": now + ttl}))
            return True

    def release(self, holder: str) -> None:
        with self._locked():
            if self._lease_record().get("holder") == holder:
                self._lease.unlink(missing_ok=True)

    def holder(self) -> str | None:
        record = self._lease_record()
        if float(record.get("expires", 0)) <= time.time():
            return None
        return str(record.get("holder")) if record.get("holder") else None

    def close(self) -> None:
        return None


# --- Redis ------------------------------------------------------------------------------------
# KEYS: state hash, revision hash, lease. ARGV: route, expected revision, JSON, holder ("": no
# lease needed). Returns -1 when written, -2 when the holder has no lease, else the revision
# found (a conflict).
_WRITE = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[4] then
  return -2
end
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if current ~= tonumber(ARGV[2]) then
  return current
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], current + 1)
return -1
"""
# KEYS: lease. ARGV: holder, ttl in ms. Takes a free lease or renews one's own.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisRollouts:
    """The rollouts in the Redis the replicas share for their routes."""

    def __init__(
        self, url: str, prefix: str = DEFAULT_PREFIX, *, client: redis.Redis | None = None
    ) -> None:
        from proxy.store.redis import redis_client

        self.url = url
        self.prefix = prefix
        self._client = client or redis_client(url)
        self._state = prefix + "rollouts:state"
        self._revision = prefix + "rollouts:revision"
        self._lease = prefix + "rollouts:lease"
        self._write = self._client.register_script(_WRITE)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._release = self._client.register_script(_RELEASE)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import redis as redis_module

        from proxy.store.redis import StoreUnavailable, describe

        try:
            return fn(*args, **kwargs)
        except (redis_module.ConnectionError, redis_module.TimeoutError, OSError) as exc:
            raise StoreUnavailable(
                f"the rollouts at {describe(self.url)} are unreachable ({what}): {exc}"
            ) from None
        except redis_module.RedisError as exc:
            raise StoreError(
                f"the rollouts at {describe(self.url)} failed ({what}): {exc}"
            ) from None

    def _read(self, route: str) -> tuple[Rollout | None, int]:
        pipe = self._client.pipeline(transaction=True)
        pipe.hget(self._state, route)
        pipe.hget(self._revision, route)
        text, revision = self._call(f"read the rollout of {route!r}", pipe.execute)
        return (_decode(text) if text is not None else None), int(revision or 0)

    def get(self, route: str) -> Rollout | None:
        return self._read(route)[0]

    def all(self) -> list[Rollout]:
        raw = self._call("read the rollouts", self._client.hgetall, self._state)
        found = (_decode(text) for _, text in sorted(raw.items()))
        return [rollout for rollout in found if rollout is not None]

    def update(self, route: str, change: Change, holder: str | None = None) -> Rollout | None:
        for _ in range(RETRIES):
            current, revision = self._read(route)
            changed = change(current)
            if changed is None:
                return current
            keys = [self._state, self._revision, self._lease]
            args = [route, revision, _encode(changed, revision + 1), holder or ""]
            answer = int(self._call(f"write the rollout of {route!r}", self._write, keys, args))
            if answer == -1:
                return self.get(route)
            if answer == -2:
                raise LeaseLost(f"{holder} no longer holds the rollouts' lease")
        raise RolloutConflict(f"the rollout of {route!r} kept changing; try again")

    def acquire(self, holder: str, ttl: float) -> bool:
        answer = self._call(
            "take the lease", self._acquire, [self._lease], [holder, max(int(ttl * 1000), 1)]
        )
        return bool(int(answer))

    def release(self, holder: str) -> None:
        self._call("release the lease", self._release, [self._lease], [holder])

    def holder(self) -> str | None:
        held = self._call("read the lease", self._client.get, self._lease)
        return None if held is None else held.decode()

    def close(self) -> None:
        self._client.close()
