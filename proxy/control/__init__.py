"""One control plane behind every door: the CLI on a local store, the CLI on a running proxy's
admin API and the admin API itself change the route table through the same operations, which
answer the same results and fail with the same errors.

    get(version=None)                 a version's text and table (default: the current one)
    history(limit)                    the versions, newest first
    diff(base, target=None)           what changed between two versions (default: to the current)
    diff_text(text, author)           what replacing the current table with `text` would change
                                      and what the cutover gates answer; nothing is committed
    set(text, expect=None)            replace the table (based on version `expect`)
    flip(route, to= | split=)         send one route elsewhere (comments in the table are kept)
    rollback(version)                 serve an earlier version's table again, as a new version

A write takes its author and reason, `force` (commit even if a cutover gate is closed; the reason
says so) and `dry_run` (the same write, stopped just before the commit: the version it would get,
its changes, the gates' answers and, when a gate would refuse it, why). It answers an Outcome.
Refusals are the store's one error tree (proxy/store/base.py): the admin API answers them as
problem+json, the CLI with its messages, and the remote door rebuilds them from the admin API's
problems, so a command fails alike whichever door it took.

`LocalControl` (control/local.py) runs the operations on a RouteStore; `RemoteControl`
(control/remote.py) asks a running proxy's admin API, which runs LocalControl on its store.
This module and the remote door import no table model, store or HTTP package: a rollback through
a replica's admin API is typed in a hurry (tests/proxy/test_cli_imports.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from proxy.store.base import DEFAULT_PREFIX, VersionInfo

__all__ = ["ControlPlane", "Diff", "Outcome", "StoredTable", "open_control"]


@dataclass(frozen=True)
class Outcome:
    """What a write did or, `dry_run`, would do: the version it made (would make), who and why,
    each change from the table it replaced (`{kind, name, action, fields}`), what the cutover
    gates answered, and `refusal`: why a gate refuses it (a dry run only; a write a gate refuses
    raises GateRefused). A committed version also has its time and checksum, and its text and
    table when the door gives them."""

    version: int
    author: str
    reason: str
    changes: list[dict[str, Any]]
    gates: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False
    refusal: str | None = None
    time: float | None = None
    sha256: str | None = None
    text: str | None = None
    table: dict[str, Any] | None = None

    @property
    def would_commit(self) -> bool:
        return self.refusal is None

    def as_dict(self) -> dict[str, Any]:
        """As the admin API answers it and `--json` prints it."""
        if self.dry_run:
            return {
                "dry_run": True,
                "committed": False,
                "would_commit": self.would_commit,
                "version": self.version,
                "author": self.author,
                "reason": self.reason,
                "changes": self.changes,
                "gates": self.gates,
                "refusal": self.refusal,
            }
        out: dict[str, Any] = {
            "version": self.version,
            "author": self.author,
            "time": self.time,
            "reason": self.reason,
            "sha256": self.sha256,
        }
        if self.text is not None:
            out["text"] = self.text
        if self.table is not None:
            out["table"] = self.table
        return {**out, "changes": self.changes, "gates": self.gates}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        """An outcome as the admin API answered it."""
        return cls(
            version=int(data["version"]),
            author=str(data.get("author", "")),
            reason=str(data.get("reason", "")),
            changes=list(data.get("changes") or []),
            gates=list(data.get("gates") or []),
            dry_run=bool(data.get("dry_run")),
            refusal=data.get("refusal"),
            time=data.get("time"),
            sha256=data.get("sha256"),
            text=data.get("text"),
            table=data.get("table"),
        )


@dataclass(frozen=True)
class StoredTable:
    """One version: who made it, when and why, its text (as `set` takes it back) and its table
    (as JSON, defaults left out)."""

    info: VersionInfo
    text: str
    table: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {**self.info.as_dict(), "text": self.text, "table": self.table}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredTable:
        info = VersionInfo(
            int(data["version"]),
            str(data["author"]),
            float(data["time"]),
            str(data["reason"]),
            str(data["sha256"]),
        )
        return cls(info, str(data["text"]), dict(data.get("table") or {}))


@dataclass(frozen=True)
class Diff:
    """What changed from version `base`: to version `target`, or to a table's text, when
    `preview` says what committing that text would do (its version, changes and the gates'
    answers)."""

    base: int
    changes: list[dict[str, Any]]
    target: int | None = None
    preview: Outcome | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.preview is None:
            return {"from": self.base, "to": self.target, "changes": self.changes}
        return {"from": self.base, "valid": True, **self.preview.as_dict()}


class ControlPlane(Protocol):
    """The operations on the route table; see the module's docstring."""

    def get(self, version: int | None = None) -> StoredTable: ...

    def history(self, limit: int = 50) -> list[VersionInfo]: ...

    def diff(self, base: int, target: int | None = None) -> Diff: ...

    def diff_text(self, text: str, *, author: str) -> Diff: ...

    def set(
        self,
        text: str,
        *,
        author: str,
        reason: str,
        expect: int | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> Outcome: ...

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
    ) -> Outcome: ...

    def rollback(
        self,
        version: int,
        *,
        author: str,
        reason: str,
        force: bool = False,
        dry_run: bool = False,
    ) -> Outcome: ...


def open_control(
    admin: str | None = None,
    *,
    store: str = "file",
    routes: Path | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> ControlPlane:
    """The control plane of the running proxy at `admin` (its admin API, token from
    STRANGLER_ADMIN_TOKEN), else of the store: 'file' (`routes` and its history) or the
    replicas' shared redis:// store (seeded from `routes` when empty)."""
    if admin:
        from proxy.admin.client import AdminClient
        from proxy.control.remote import RemoteControl

        return RemoteControl(AdminClient(admin, "cli"))
    from proxy.control.evidence import evidence_recorder, state_dir_of
    from proxy.control.local import LocalControl
    from proxy.store import open_store

    state_dir = None if routes is None else state_dir_of(routes)
    return LocalControl(
        open_store(store, routes, prefix), on_commit=evidence_recorder(store, prefix, state_dir)
    )
