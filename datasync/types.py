"""Column types the engine binds and reads with on every database."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import TIMESTAMP
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """`TIMESTAMP WITH TIME ZONE` that binds UTC and reads back an aware UTC value.

    SQLite keeps no zone and returns naive values (taken as UTC, as the monolith stores them);
    Oracle and PostgreSQL return aware ones. A naive value is refused on the way in: a time
    without a zone is a bug in the caller, not something to guess.
    """

    impl = TIMESTAMP(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
