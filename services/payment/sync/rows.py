"""Payment rows as the sync compares them: the shared columns, normalised, hashed (pure).

Both databases hold the same fifteen columns; the service adds `origin` and `row_version`, which
are bookkeeping and never compared. Normalisation is what keeps comparisons free of false
positives across SQLite, PostgreSQL and Oracle (data-diff's lesson):

- timestamps: aware UTC at microsecond precision (`TIMESTAMP(6)`, the common precision of all
  three), ISO 8601; a naive value (SQLite) is taken as UTC, as `UTCDateTime` stores it;
- decimals: two places, half-even (the columns are `Numeric(12, 2)`);
- strings: compared byte for byte (binary collation); `''` equals `NULL`, since Oracle stores an
  empty string as NULL;
- integers: their decimal text.

A row hash is the first 8 bytes of BLAKE2b over the length-prefixed normalised fields (so no
field boundary is ambiguous), as an unsigned int; chunks compare by count and the *sum* of hashes
(never XOR: a duplicated pair would cancel out).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from services.payment.sync.legacy_schema import legacy_payments

FIELDS: tuple[str, ...] = tuple(column.name for column in legacy_payments.columns)
CENT = Decimal("0.01")

Normalised = tuple[str | None, ...]


def normalise_value(value: Any) -> str | None:
    """One column value as comparable text (see the module docstring for the rules)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(value, Decimal | float):
        return str(Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_EVEN))
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return text if text != "" else None


def normalise(row: Mapping[Any, Any]) -> Normalised:
    return tuple(normalise_value(row[name]) for name in FIELDS)


def row_hash(normalised: Normalised) -> int:
    encoded = "".join("-" if v is None else f"{len(v)}:{v}" for v in normalised)
    return int.from_bytes(hashlib.blake2b(encoded.encode(), digest_size=8).digest(), "big")


def differing_fields(
    left: Normalised, right: Normalised
) -> dict[str, tuple[str | None, str | None]]:
    """Field name → (left value, right value) for every field that differs."""
    return {name: (a, b) for name, a, b in zip(FIELDS, left, right, strict=True) if a != b}


def payment_values(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The shared columns of `row` (a legacy row, a service row or an event payload's row)."""
    return {name: row[name] for name in FIELDS}
