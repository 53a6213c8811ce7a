"""The migration ledger of a store: every version of its history read back (proxy/table/ledger.py
computes it). A version whose table no longer loads here is listed as such, not a failure."""

from __future__ import annotations

from proxy.store.base import RouteStore
from proxy.table.ledger import Entry, Ledger, build_ledger
from proxy.table.loader import TableInvalid

EVERY_VERSION = 1 << 40  # a `history()` limit no history reaches


def entries_of(store: RouteStore) -> list[Entry]:
    """Every version of `store`, oldest first, each with its table (or why it does not load)."""
    entries = []
    for info in reversed(store.history(EVERY_VERSION)):
        problem = None
        try:
            table = store.get(info.version).table
        except TableInvalid as exc:
            table, problem = None, "; ".join(exc.describe().splitlines())
        except OSError as exc:  # its text is gone from the file store's history
            table, problem = None, f"cannot read it: {exc.strerror or exc}"
        entries.append(Entry(info.version, info.author, info.time, info.reason, table, problem))
    return entries


def ledger_of(store: RouteStore) -> Ledger:
    return build_ledger(entries_of(store))
