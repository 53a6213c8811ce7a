"""The RouteStore interface every store implements (file: the embedded default; Redis: shared
by replicas), and what they return."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:  # annotations only: the CLI reads DEFAULT_PREFIX and the errors without pydantic
    from proxy.table.model import RouteTable

DEFAULT_PREFIX = "strangler:routes:"  # the Redis store's key prefix


class StoreError(Exception):
    """A store operation failed; `status` and `kind` become the admin API's problem."""

    status = 500
    kind = "store-error"


class VersionConflict(StoreError):
    """The commit was based on a version that is no longer current (optimistic concurrency)."""

    status = 409
    kind = "version-conflict"

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"based on version {expected}, but version {current} is current")
        self.expected = expected
        self.current = current


class UnknownVersion(StoreError):
    status = 404
    kind = "unknown-version"

    def __init__(self, version: int) -> None:
        super().__init__(f"there is no version {version}")
        self.version = version


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
