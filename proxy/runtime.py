"""What one worker holds while it serves: the current snapshot (swapped in one assignment), the
forwarder, metrics, the access log, and the watcher that reloads routes.yaml.

A new table is loaded, validated and compiled off to the side; only a table that passes is
swapped in. Requests read `runtime.snapshot` once, so one in flight finishes on the snapshot it
started with. An invalid file is refused with its problems logged; the running table stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from pathlib import Path

from proxy.dataplane.forward import Forwarder
from proxy.observability import AccessLog, Metrics
from proxy.settings import ProxySettings
from proxy.table.compile import Snapshot, compile_table
from proxy.table.loader import TableInvalid, load_file, single_upstream

log = logging.getLogger("strangler")


def initial_table(settings: ProxySettings) -> Snapshot:
    if settings.routes is not None:
        return compile_table(load_file(settings.routes))
    if settings.default_upstream:
        return compile_table(single_upstream(settings.default_upstream))
    raise TableInvalid("strangler serve", [])


class Runtime:
    def __init__(self, settings: ProxySettings, snapshot: Snapshot) -> None:
        self.settings = settings
        self.snapshot = snapshot
        self.forwarder = Forwarder()
        self.metrics = Metrics()
        self.access_log = AccessLog(None, enabled=settings.access_log)
        self.in_flight = 0
        self.per_client: dict[str, int] = {}
        self._trusted = [ipaddress.ip_network(c, strict=False) for c in settings.trusted_hops]
        self._trusted_cache: dict[str, bool] = {}
        self._watch: asyncio.Task[None] | None = None
        self.metrics.table_version.set(snapshot.version)

    def trusted(self, client: str) -> bool:
        if not self._trusted:
            return False
        known = self._trusted_cache.get(client)
        if known is None:
            try:
                address = ipaddress.ip_address(client)
                known = any(address in net for net in self._trusted)
            except ValueError:
                known = False
            if len(self._trusted_cache) < 65_536:
                self._trusted_cache[client] = known
        return known

    def origin(self, forwarded_for: str) -> str:
        """The right-most address of a trusted hop's X-Forwarded-For that is not itself a
        trusted hop: the client (addresses further left could be forged by it)."""
        for hop in reversed(forwarded_for.split(",")):
            address = hop.strip()
            if address and not self.trusted(address):
                return address
        return forwarded_for.split(",", 1)[0].strip()

    def swap(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.metrics.table_version.set(snapshot.version)

    def reload(self, path: Path) -> bool:
        """Load `path`; swap it in if valid. Returns whether the served table changed."""
        try:
            table = load_file(path)
        except TableInvalid as exc:
            log.error(
                "route table refused, still serving version %s:\n%s",
                self.snapshot.version,
                exc.describe(),
            )
            return False
        self.swap(compile_table(table))
        log.info(
            "route table version %s loaded from %s (%d routes)",
            table.version,
            path,
            len(table.routes),
        )
        return True

    async def start(self) -> None:
        if self.settings.routes is not None:
            self._watch = asyncio.create_task(self._watch_file(self.settings.routes))

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.forwarder.close()
        self.access_log.flush()

    async def _watch_file(self, path: Path) -> None:
        def stamp() -> tuple[int, int, int] | None:
            try:
                st = os.stat(path)
            except OSError:
                return None
            return (st.st_mtime_ns, st.st_size, st.st_ino)

        last = stamp()
        while True:
            await asyncio.sleep(self.settings.watch_interval)
            current = stamp()
            if current is not None and current != last:
                last = current
                try:
                    self.reload(path)
                except Exception:  # the watcher must outlive any one bad file
                    log.exception(
                        "route table reload failed, still serving version %s", self.snapshot.version
                    )
