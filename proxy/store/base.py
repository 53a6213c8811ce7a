"""The RouteStore interface every store implements (file: the embedded default; Redis: shared
by replicas), what they return, and the control plane's one error tree.

    StoreError                 500 store-error      a store operation failed
    ├── VersionConflict        409 version-conflict based on a version no longer current
    ├── UnknownVersion         404 unknown-version
    ├── UnknownRoute           404 unknown-route    a flip of a route the table does not have
    ├── InvalidTable           422 invalid-table    every problem with its line; nothing changed
    ├── InvalidChange          422 validation-failed a change that cannot be made (to and split)
    ├── GateRefused            409 gate-closed      a cutover gate refused; every gate's answer
    │   (table/gates.GateClosed says the same with the pure core's types)
    ├── StoreUnavailable       503 store-unavailable the shared store cannot be reached
    ├── StoreMisconfigured     500 store-misconfigured it refuses this client (credentials, ACL)
    └── AdminRefused           (admin/client.py) what else a remote admin API answered
                               (unauthorized, unreachable, ...), with its own status and kind

Each error carries its HTTP status and a stable problem type (RFC 9457): the admin API answers
`status`, `kind`, the message and `problem_fields()`; the CLI prints the message and, with
--json, `kind` and `details()`. The control plane's remote door (control/remote.py) rebuilds
these exceptions from the admin API's problems, so both doors fail alike.

Light on purpose: the CLI imports this module to build its commands (no pydantic, no asyncio).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:  # annotations only: the CLI reads DEFAULT_PREFIX and the errors without pydantic
    import asyncio
    from pathlib import Path

    from proxy.table.loader import TableInvalid
    from proxy.table.model import RouteTable

DEFAULT_PREFIX = "strangler:routes:"  # the Redis store's key prefix


class StoreError(Exception):
    """A store operation failed; `status` and `kind` become the admin API's problem."""

    status = 500
    kind = "store-error"

    def problem_fields(self) -> dict[str, Any]:
        """What the admin API's problem carries beside its detail (and the remote door reads
        back)."""
        return {}

    def details(self) -> list[Any]:
        """The particulars a `--json` failure lists: an invalid table's problems, the gates'
        answers."""
        return []


class VersionConflict(StoreError):
    """The commit was based on a version that is no longer current (optimistic concurrency)."""

    status = 409
    kind = "version-conflict"

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"based on version {expected}, but version {current} is current")
        self.expected = expected
        self.current = current

    def problem_fields(self) -> dict[str, Any]:
        return {"expected": self.expected, "current": self.current}


class UnknownVersion(StoreError):
    status = 404
    kind = "unknown-version"

    def __init__(self, version: int) -> None:
        super().__init__(f"there is no version {version}")
        self.version = version

    def problem_fields(self) -> dict[str, Any]:
        return {"version": self.version}


class UnknownRoute(StoreError):
    """A flip named a route the current version does not have."""

    status = 404
    kind = "unknown-route"

    def __init__(self, route: str, version: int) -> None:
        super().__init__(f"version {version} has no route {route!r}")
        self.route = route
        self.version = version

    def problem_fields(self) -> dict[str, Any]:
        return {"route": self.route, "version": self.version}


class InvalidTable(StoreError):
    """A table the control plane refuses: `problems`, each `{line, field, message}` by line,
    and `lines`, the same as the CLI prints them (`FILE:LINE: FIELD: REASON` when the file is
    known). Nothing was changed."""

    status = 422
    kind = "invalid-table"

    def __init__(
        self,
        problems: list[dict[str, Any]],
        lines: list[str] | None = None,
        message: str = "the table is invalid; nothing changed",
    ) -> None:
        super().__init__(message)
        self.problems = problems
        self.lines = (
            lines
            if lines is not None
            else [f"{p.get('line') or '-'}: {p.get('field')}: {p.get('message')}" for p in problems]
        )

    @classmethod
    def of(cls, exc: TableInvalid, *, named: bool = True) -> InvalidTable:
        """The loader's refusal (the pure core's TableInvalid); its lines name the file it
        read when `named` (a table the control plane made, by a flip or a rollback, is no file
        of anyone's: its lines are the same whichever door made it)."""
        problems = [
            {"line": p.line, "field": p.where(), "message": p.message}
            for p in sorted(exc.problems, key=lambda p: p.line or 0)
        ]
        return cls(problems, exc.describe().splitlines() if named else None)

    def problem_fields(self) -> dict[str, Any]:
        return {"problems": self.problems}

    def details(self) -> list[Any]:
        return list(self.problems)


class InvalidChange(StoreError):
    """A change that cannot be made as asked (a flip to one upstream and a split at once)."""

    status = 422
    kind = "validation-failed"


class GateRefused(StoreError):
    """A cutover gate refused the change (or could not be asked): nothing was committed.
    `gates`: every gate asked and what it said, as the admin API gives them."""

    status = 409
    kind = "gate-closed"

    def __init__(self, message: str, gates: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.gates = gates or []

    def problem_fields(self) -> dict[str, Any]:
        return {"gates": self.gates}

    def details(self) -> list[Any]:
        return list(self.gates)


class StoreUnavailable(StoreError):
    """The shared store cannot be reached: nothing was changed."""

    status = 503
    kind = "store-unavailable"


class StoreMisconfigured(StoreError):
    """The shared store answers but refuses this client (credentials, ACL): a configuration
    error, never waited out like an outage."""

    status = 500
    kind = "store-misconfigured"


@dataclass(frozen=True)
class VersionInfo:
    """One committed version: who, when, why (the table's text is kept beside it)."""

    version: int
    author: str
    time: float
    reason: str
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Version:
    info: VersionInfo
    text: str
    table: RouteTable


# Called with the parsed new table just before a commit writes it; raising refuses the commit.
Check: TypeAlias = Callable[["RouteTable"], None]


class Watch(Protocol):
    """A store followed by a data plane (`RouteStore.watch`): `changes()` yields each version
    to serve as it lands, for ever; a version that does not load is logged and skipped, and the
    watch outlives any outage of the store. `ready` is set once the store was read with its
    change feed in place; `source` names where versions come from, for the log."""

    source: str
    ready: asyncio.Event

    def changes(self) -> AsyncGenerator[Version, None]: ...


class RouteStore(Protocol):
    def current(self) -> Version: ...
    def get(self, version: int) -> Version: ...
    def history(self, limit: int = 50) -> list[VersionInfo]: ...
    def commit(
        self,
        text: str,
        *,
        author: str,
        reason: str,
        expected_version: int,
        check: Check | None = None,
    ) -> Version: ...
    def watch(
        self, served: Callable[[], int], every: float, last_good: Path | None = None
    ) -> Watch:
        """Follow the store for a data plane serving version `served()`, checking at least
        every `every` seconds; `last_good` is the file that holds the served version's text
        (a store that went behind it is given it back)."""
        ...
