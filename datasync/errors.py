"""The data sync's one exception tree. The CLI turns each into one line and a non-zero exit, never a
traceback; SQLAlchemy's connection errors are translated in one place, `engines.py`.

    SyncError(kind, detail)
    ├── DatabaseUnreachable   a database cannot be connected to (URL, driver, network, auth)
    ├── SchemaMissing         a table the sync needs is not there (service: run the migrations)
    └── EventSourceError      the event stream cannot be read (Redis down, unknown stream)
"""

from __future__ import annotations


class SyncError(Exception):
    """Base of every error the sync reports to its user; `kind` is a stable machine-readable id."""

    kind = "sync-error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class DatabaseUnreachable(SyncError):
    kind = "database-unreachable"


class SchemaMissing(SyncError):
    kind = "schema-missing"


class EventSourceError(SyncError):
    kind = "event-source-unavailable"
