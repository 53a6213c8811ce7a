"""The migration ledger of a store: every version of its history read back (proxy/table/ledger.py
computes it). A version whose table no longer loads here is listed as such, not a failure.

Its evidence lives in the shadow sink beside the workers' numbers (shadow/sink.py): recorded
once per committed version by `record_evidence` (whoever commits: the admin API, the CLI, a
rollout), from the arm statistics and shadow tallies the workers put there and the gates'
answers; `read_ledger` attaches it, and what the default upstream served lately, to the ledger.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from proxy.store.base import RouteStore, VersionInfo
from proxy.table.ledger import (
    EVIDENCE_WINDOW,
    LEGACY_WINDOW,
    Entry,
    Ledger,
    build_ledger,
    evidence_for,
)
from proxy.table.loader import TableInvalid

if TYPE_CHECKING:
    from proxy.dataplane.armstats import ArmStats
    from proxy.shadow.sink import Sink
    from proxy.table.model import RouteTable

EVERY_VERSION = 1 << 40  # a `history()` limit no history reaches


# A version never changes: its table, once loaded, is kept by its checksum (and the store it
# came from, whose folder relative paths are read from), so a ledger read again (the
# dashboard's) loads only the versions it has not seen.
_TABLES: dict[tuple[str, str], RouteTable] = {}
TABLES_KEPT = 4096


def _table_of(store: RouteStore, info: VersionInfo) -> RouteTable:
    key = (repr(getattr(store, "routes", type(store).__name__)), info.sha256)
    table = _TABLES.get(key)
    if table is None:
        table = store.get(info.version).table
        if len(_TABLES) >= TABLES_KEPT:
            _TABLES.clear()
        _TABLES[key] = table
    return table


def entries_of(store: RouteStore) -> list[Entry]:
    """Every version of `store`, oldest first, each with its table (or why it does not load)."""
    entries = []
    for info in reversed(store.history(EVERY_VERSION)):
        problem = None
        try:
            table = _table_of(store, info)
        except TableInvalid as exc:
            table, problem = None, "; ".join(exc.describe().splitlines())
        except OSError as exc:  # its text is gone from the file store's history
            table, problem = None, f"cannot read it: {exc.strerror or exc}"
        entries.append(Entry(info.version, info.author, info.time, info.reason, table, problem))
    return entries


def ledger_of(
    store: RouteStore,
    evidence: Mapping[int, Mapping[str, Any]] | None = None,
    legacy_paths: Iterable[tuple[str, int]] | None = None,
    legacy_window: float = LEGACY_WINDOW,
) -> Ledger:
    """The ledger of `store`; with `evidence` (version → its document), each transition carries
    its own; with `legacy_paths`, what the default upstream served over `legacy_window`."""
    ledger = build_ledger(entries_of(store))
    if evidence is None and legacy_paths is None:
        return ledger
    return replace(
        ledger,
        evidence=evidence,
        legacy_paths=None if legacy_paths is None else tuple(legacy_paths),
        legacy_window=legacy_window,
    )


async def read_ledger(
    store: RouteStore,
    sink: Sink,
    *,
    worker: str | None = None,
    local: ArmStats | None = None,
    window: float = LEGACY_WINDOW,
    now: float | None = None,
) -> Ledger:
    """The ledger with its evidence and what the default upstream served over the last
    `window` seconds, every live worker's numbers together (a running worker passes its own
    `worker` id and `local` statistics, fresher than its last put)."""
    from proxy.dataplane.armstats import fleet_stats
    from proxy.dataplane.templates import legacy_paths_window

    now = time.time() if now is None else now
    evidence = await sink.evidence()
    docs = await fleet_stats(sink, worker, local)
    paths = legacy_paths_window(docs, now - window, now)
    return await asyncio.to_thread(ledger_of, store, evidence, paths, window)


async def record_evidence(
    sink: Sink,
    version: int,
    routes: Iterable[str],
    *,
    gates: Sequence[Any] = (),
    window: float = EVIDENCE_WINDOW,
    now: float | None = None,
    worker: str | None = None,
    local: ArmStats | None = None,
) -> dict[str, Any]:
    """Record, for committed `version`, the evidence of each route it changed: the arms over
    the `window` seconds before `now`, the route's shadow report, the gates' answers about it
    (table/gates.py GateAnswer, or their dicts). Returns the document kept."""
    from proxy.dataplane.armstats import fleet_stats
    from proxy.shadow.report import merge_snapshots, summarise

    now = time.time() if now is None else now
    docs = await fleet_stats(sink, worker, local)
    tallies = merge_snapshots(await sink.tallies())
    doc = {
        "routes": {
            route: evidence_for(
                route,
                docs,
                summarise(route, tallies[route]) if route in tallies else None,
                gates,
                window,
                now,
            )
            for route in routes
        }
    }
    await sink.put_evidence(version, doc)
    return doc
