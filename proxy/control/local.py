"""The control plane on a route store (the CLI's `--routes`/`--store`, and the admin API on the
proxy's own store): each write is one commit through the cutover gates
(table/gates.commit_through_gates) on top of the version it read, so a concurrent change makes it
fail with VersionConflict rather than undo the other; the pure core's refusals are said in the
store's error tree (an invalid table: InvalidTable with every problem and its line; a closed
gate: GateRefused with every gate's answer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from proxy.control import Diff, Outcome, StoredTable
from proxy.store.base import (
    GateRefused,
    InvalidChange,
    InvalidTable,
    RouteStore,
    UnknownRoute,
    Version,
    VersionInfo,
)
from proxy.table.diff import diff_tables
from proxy.table.edit import flip
from proxy.table.gates import GateAnswer, GateClosed, Preview, commit_through_gates
from proxy.table.loader import TableInvalid
from proxy.table.model import RouteTable

log = logging.getLogger("strangler")


class LocalControl:
    """The control plane on `store`. `on_commit`, when given, is told of every committed write
    (the proxy records the evidence it was made on); a failure there never fails the write."""

    def __init__(
        self, store: RouteStore, on_commit: Callable[[Outcome], None] | None = None
    ) -> None:
        self.store = store
        self.on_commit = on_commit

    # --- reading ----------------------------------------------------------------------------
    def get(self, version: int | None = None) -> StoredTable:
        found = self.store.current() if version is None else self.store.get(version)
        return stored(found)

    def history(self, limit: int = 50) -> list[VersionInfo]:
        return self.store.history(limit)

    def diff(self, base: int, target: int | None = None) -> Diff:
        before = self.store.get(base)
        after = self.store.current() if target is None else self.store.get(target)
        return Diff(base, _changes(before.table, after.table), after.info.version)

    def diff_text(self, text: str, *, author: str) -> Diff:
        """`set(text)`'s dry run, reporting what the gates answer instead of refusing."""
        current = self.store.current()
        preview = self._commit(current, text, author, "diff", dry_run=True)
        return Diff(current.info.version, preview.changes, preview=preview)

    # --- writing ----------------------------------------------------------------------------
    def set(
        self,
        text: str,
        *,
        author: str,
        reason: str,
        expect: int | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> Outcome:
        current = self.store.current()
        return self._commit(current, text, author, reason, force, dry_run, expect)

    def flip(
        self,
        route: str,
        *,
        author: str,
        reason: str,
        to: str | None = None,
        split: dict[str, int] | None = None,
        sticky: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> Outcome:
        if (to is None) == (split is None):
            raise InvalidChange("give exactly one of `to` and `split`")
        current = self.store.current()
        try:
            text = flip(current.text, route, to=to, split=split, sticky=sticky)
        except KeyError:
            raise UnknownRoute(route, current.info.version) from None
        return self._commit(current, text, author, reason, force, dry_run)

    def rollback(
        self,
        version: int,
        *,
        author: str,
        reason: str,
        force: bool = False,
        dry_run: bool = False,
    ) -> Outcome:
        old = self.store.get(version)
        current = self.store.current()
        reason = f"rollback to version {version}: {reason}"
        return self._commit(current, old.text, author, reason, force, dry_run)

    def _commit(
        self,
        current: Version,
        text: str,
        author: str,
        reason: str,
        force: bool = False,
        dry_run: bool = False,
        expect: int | None = None,
    ) -> Outcome:
        """Commit `text` on top of `current` (or version `expect`), or say what would be."""
        asked: list[GateAnswer] = []
        try:
            after = commit_through_gates(
                self.store,
                text,
                before=current.table,
                author=author,
                reason=reason,
                expected_version=current.info.version if expect is None else expect,
                force=force,
                dry_run=dry_run,
                asked=asked,
            )
        except TableInvalid as exc:
            raise InvalidTable.of(exc, named=False) from None
        except GateClosed as exc:
            raise GateRefused(str(exc), [a.as_dict() for a in exc.answers]) from None
        if isinstance(after, Preview):
            return _preview(after, current.table)
        info = after.info
        outcome = Outcome(
            info.version,
            info.author,
            info.reason,
            _changes(current.table, after.table),
            [a.as_dict() for a in asked],
            time=info.time,
            sha256=info.sha256,
            text=after.text,
            table=_json(after.table),
        )
        if self.on_commit is not None:
            try:
                self.on_commit(outcome)
            except Exception:  # committed already: the evidence is lost, not the write
                log.warning("evidence of version %s not recorded", info.version, exc_info=True)
        return outcome


def stored(version: Version) -> StoredTable:
    """A stored version as the control plane gives it."""
    return StoredTable(version.info, version.text, _json(version.table))


def _preview(preview: Preview, before: RouteTable) -> Outcome:
    return Outcome(
        preview.version,
        preview.author,
        preview.reason,
        _changes(before, preview.table),
        [a.as_dict() for a in preview.gates],
        dry_run=True,
        refusal=preview.refusal,
    )


def _changes(before: RouteTable, after: RouteTable) -> list[dict[str, Any]]:
    return [c.as_dict() for c in diff_tables(before, after)]


def _json(table: RouteTable) -> dict[str, Any]:
    return table.model_dump(mode="json", exclude_defaults=True)
