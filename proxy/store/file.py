"""The embedded route store: routes.yaml plus an append-only history of immutable versions.

    routes.yaml                       the current version, as served (the proxy watches it)
    var/routes-history/v000007.yaml   every version's exact text, never rewritten
    var/routes-history/log.jsonl      one line per version: number, author, time, reason, sha256

Writers take an exclusive lock (flock) on the history directory; every file is written to a
temporary name, fsynced and renamed, so a reader (or the proxy's watcher) never sees half a
file. A hand edit of routes.yaml is not lost: the next store operation records it as a version
of its own ("edited by hand") when it is valid.

The proxy follows routes.yaml itself (`FileStore.watch`): it checks the file's modification
time, size and inode every watch interval (as nginx's `open_file_cache_valid` re-checks a file,
no inotify: it works on every file system, mounted volumes included) and serves what it holds
once it loads, whatever its version number: the file is the operator's word. A file that does
not load is refused with its problems and the served table stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path

from proxy.store.base import Check, UnknownVersion, Version, VersionConflict, VersionInfo
from proxy.table.edit import set_version, stamp_and_load
from proxy.table.loader import TableInvalid, load_file, load_text

log = logging.getLogger("strangler")


def atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class FileStore:
    def __init__(self, routes: Path, history: Path | None = None) -> None:
        self.routes = Path(routes)
        self.dir = history or self.routes.parent / "var" / f"{self.routes.stem}-history"
        self.log = self.dir / "log.jsonl"

    # --- reading ----------------------------------------------------------------------------
    def _infos(self) -> list[VersionInfo]:
        if not self.log.exists():
            return []
        infos = []
        for line in self.log.read_text(encoding="utf-8").splitlines():
            try:
                infos.append(VersionInfo(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a torn last line from a crash mid-append: the version never landed
        return infos

    def _read(self, info: VersionInfo) -> Version:
        text = (self.dir / f"v{info.version:06d}.yaml").read_text(encoding="utf-8")
        return Version(info, text, load_text(text, f"version {info.version}", self.routes.parent))

    def current(self) -> Version:
        with self._locked():
            return self._read(self._sync())

    def get(self, version: int) -> Version:
        found = self._info(version)
        if found is None:  # routes.yaml may be a version nothing recorded yet (or a hand edit)
            with self._locked():
                self._sync()
            found = self._info(version)
        if found is None:
            raise UnknownVersion(version)
        return self._read(found)

    def _info(self, version: int) -> VersionInfo | None:
        return next((info for info in self._infos() if info.version == version), None)

    def history(self, limit: int = 50) -> list[VersionInfo]:
        with self._locked():
            self._sync()
        return list(reversed(self._infos()))[:limit]

    # --- writing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _record(self, text: str, version: int, author: str, reason: str) -> VersionInfo:
        info = VersionInfo(version, author, round(time.time(), 3), reason, _sha(text))
        atomic_write(self.dir / f"v{version:06d}.yaml", text)
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(info.as_dict()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return info

    def _sync(self) -> VersionInfo:
        """The current version, first recording routes.yaml as one if it was edited by hand
        (or as the first version of a store that has none). Call with the lock held."""
        infos = self._infos()
        try:
            on_disk = self.routes.read_text(encoding="utf-8")
        except FileNotFoundError:
            on_disk = None
        if infos and (on_disk is None or _sha(on_disk) == infos[-1].sha256):
            return infos[-1]
        if on_disk is None:
            raise UnknownVersion(0)
        try:
            table = load_text(on_disk, str(self.routes), self.routes.parent)
        except TableInvalid:
            if infos:
                return infos[-1]  # the proxy refuses it too; the last good version stays
            raise
        if not infos:
            version = table.version or 1
            text = on_disk if table.version else set_version(on_disk, version)
            info = self._record(text, version, "store", f"first version, from {self.routes.name}")
            if text != on_disk:
                atomic_write(self.routes, text)
            return info
        version = infos[-1].version + 1
        text = set_version(on_disk, version)
        info = self._record(text, version, "file", f"{self.routes.name} edited by hand")
        atomic_write(self.routes, text)
        return info

    def commit(
        self,
        text: str,
        *,
        author: str,
        reason: str,
        expected_version: int,
        check: Check | None = None,
    ) -> Version:
        """Store `text` as the next version if `expected_version` is still current (else
        VersionConflict), it is a valid table (else TableInvalid) and `check` accepts it; then
        serve it."""
        with self._locked():
            current = self._sync()
            if expected_version != current.version:
                raise VersionConflict(expected_version, current.version)
            version = current.version + 1
            text, table = stamp_and_load(text, version, str(self.routes))
            if check is not None:
                check(table)
            info = self._record(text, version, author, reason)
            atomic_write(self.routes, text)
            return Version(info, text, table)

    def watch(
        self, served: Callable[[], int], every: float, last_good: Path | None = None
    ) -> FileWatch:
        """Follow routes.yaml for a proxy serving version `served()` (`last_good`: the file is
        its own)."""
        return FileWatch(self.routes, served, every)


Stamp = tuple[int, int, int]  # modification time (ns), size, inode


class FileWatch:
    """`changes()` yields the table routes.yaml holds each time its stamp changed and it loads;
    `ready` at once (there is no feed to subscribe to)."""

    def __init__(self, routes: Path, served: Callable[[], int], every: float) -> None:
        self.routes, self.served, self.every = routes, served, every
        self.source = str(routes)
        self.ready = asyncio.Event()
        self.ready.set()
        self._last = self._stamp()  # changes from now on: made once the served table is read

    def _stamp(self) -> Stamp | None:
        try:
            st = os.stat(self.routes)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def changes(self) -> AsyncGenerator[Version, None]:
        while True:
            await asyncio.sleep(self.every)
            stamp = self._stamp()
            if stamp is None or stamp == self._last:
                continue
            self._last = stamp
            try:
                version = await asyncio.to_thread(self._load, stamp)
            except TableInvalid as exc:
                log.error(
                    "route table refused, still serving version %s:\n%s",
                    self.served(),
                    exc.describe(),
                )
            except Exception:  # the watcher must outlive any one bad file
                log.exception("route table reload failed, still serving version %s", self.served())
            else:
                yield version

    def _load(self, stamp: Stamp) -> Version:
        """What routes.yaml holds, as a version of its own (not recorded in the history: the
        next store operation does that)."""
        try:
            text = self.routes.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            load_file(self.routes)  # raises TableInvalid saying why, as at the proxy's start
            raise
        table = load_text(text, str(self.routes), self.routes.parent)
        info = VersionInfo(
            table.version, "file", stamp[0] / 1e9, f"{self.routes.name} as written", _sha(text)
        )
        return Version(info, text, table)
