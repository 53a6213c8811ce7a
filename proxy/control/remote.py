"""The control plane of a running proxy, through its admin API (`--admin URL`): every operation
is one request (two for a `set` that names no version: the current one is read first), and the
API's problem+json refusals are rebuilt into the store's error tree, so the CLI says the same
thing whichever door a command took. A refusal with no class of its own (a bad token, no answer,
an answer that is not the admin API's) stays the client's AdminRefused, in the same tree.

Light: the standard library's HTTP client and no table model (a rollback is typed in a hurry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.admin.client import AdminClient, AdminRefused
from proxy.control import Diff, Outcome, StoredTable
from proxy.store.base import (
    GateRefused,
    InvalidChange,
    InvalidTable,
    StoreError,
    StoreUnavailable,
    UnknownRoute,
    UnknownVersion,
    VersionConflict,
    VersionInfo,
)

YAML = {"Content-Type": "application/yaml"}


def _int(body: dict[str, Any], *keys: str) -> bool:
    return all(isinstance(body.get(key), int) for key in keys)


# A problem's kind → its exception, when the problem carries what the exception holds.
REBUILD: dict[str, Callable[[AdminRefused], StoreError | None]] = {
    "invalid-table": lambda e: InvalidTable(list(e.body.get("problems") or [])),
    "gate-closed": lambda e: GateRefused(str(e), list(e.body.get("gates") or [])),
    "version-conflict": lambda e: (
        VersionConflict(e.body["expected"], e.body["current"])
        if _int(e.body, "expected", "current")
        else None
    ),
    "unknown-version": lambda e: (
        UnknownVersion(e.body["version"]) if _int(e.body, "version") else None
    ),
    "unknown-route": lambda e: (
        UnknownRoute(str(e.body.get("route")), e.body["version"])
        if _int(e.body, "version")
        else None
    ),
    "store-unavailable": lambda e: StoreUnavailable(str(e)),
    # the control plane's own refusal, not a request the API's schema refused (`errors`)
    "validation-failed": lambda e: None if e.body.get("errors") else InvalidChange(str(e)),
}


def rebuilt(exc: AdminRefused) -> StoreError:
    """The exception the admin API's problem stands for (`exc` itself when none fits)."""
    rebuild = REBUILD.get(exc.kind)
    found = rebuild(exc) if rebuild is not None else None
    return exc if found is None else found


class RemoteControl:
    def __init__(self, client: AdminClient) -> None:
        self.client = client

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return self.client.call(method, path, **kwargs)
        except AdminRefused as exc:
            raise rebuilt(exc) from None

    def _write(self, method: str, path: str, author: str, **kwargs: Any) -> Outcome:
        """A write's outcome; a dry run a gate would refuse (409 with the preview) is one too."""
        headers = {**kwargs.pop("headers", {}), "X-Author": author}
        try:
            answer = self.client.call(method, path, headers=headers, **kwargs)
        except AdminRefused as exc:
            if exc.body.get("dry_run"):
                return Outcome.from_dict(exc.body)
            raise rebuilt(exc) from None
        return Outcome.from_dict(answer)

    # --- reading ----------------------------------------------------------------------------
    def get(self, version: int | None = None) -> StoredTable:
        path = "/api/v1/routes" if version is None else f"/api/v1/routes/versions/{version}"
        return StoredTable.from_dict(self._call("GET", path))

    def history(self, limit: int = 50) -> list[VersionInfo]:
        found = self._call("GET", "/api/v1/routes/history", params={"limit": limit})
        return [
            VersionInfo(i["version"], i["author"], i["time"], i["reason"], i["sha256"])
            for i in found
        ]

    def diff(self, base: int, target: int | None = None) -> Diff:
        params = {"from": base} if target is None else {"from": base, "to": target}
        found = self._call("GET", "/api/v1/routes/diff", params=params)
        return Diff(int(found["from"]), list(found["changes"]), int(found["to"]))

    def diff_text(self, text: str, *, author: str) -> Diff:
        found = self._call(
            "POST",
            "/api/v1/routes/diff",
            content=text.encode(),
            headers={**YAML, "X-Author": author},
        )
        preview = Outcome.from_dict(found)
        return Diff(int(found["from"]), preview.changes, preview=preview)

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
        if expect is None:
            expect = self.get().info.version
        params: dict[str, Any] = (
            {"reason": reason, "force": "true"} if force else {"reason": reason}
        )
        return self._write(
            "PUT",
            "/api/v1/routes/dry-run" if dry_run else "/api/v1/routes",
            author,
            params=params,
            content=text.encode(),
            headers={**YAML, "If-Match": f'"{expect}"'},
        )

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
        body = {
            "route": route,
            "to": to,
            "split": split,
            "sticky": sticky,
            "reason": reason,
            "force": force,
        }
        path = "/api/v1/routes/flip/dry-run" if dry_run else "/api/v1/routes/flip"
        return self._write("POST", path, author, json=body)

    def rollback(
        self,
        version: int,
        *,
        author: str,
        reason: str,
        force: bool = False,
        dry_run: bool = False,
    ) -> Outcome:
        body = {"version": version, "reason": reason, "force": force}
        path = "/api/v1/routes/rollback/dry-run" if dry_run else "/api/v1/routes/rollback"
        return self._write("POST", path, author, json=body)
