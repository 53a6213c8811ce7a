"""Rows as the sync compares them: the declared fields, normalised per declared type, hashed
(pure).

Both databases hold the declared fields (the service may spell them differently; every read
labels them with their legacy names, `spec.service_select`); the service's origin and version
columns are bookkeeping and never compared. Normalisation is what keeps comparisons free of
false positives across SQLite, PostgreSQL and Oracle (data-diff's lesson):

- timestamp: aware UTC at microsecond precision (`TIMESTAMP(6)`, the common precision of all
  three), ISO 8601; a naive value (SQLite) is taken as UTC, as `UTCDateTime` stores it;
- decimal: quantized to the field's declared scale, half-even;
- bigint, integer: their decimal text;
- string, text: compared byte for byte (binary collation); `''` equals `NULL`, since Oracle
  stores an empty string as NULL;
- boolean: "true" or "false" (Oracle 19c has no boolean and answers 1 or 0);
- date: ISO 8601.

A row hash is the first 8 bytes of BLAKE2b over the length-prefixed normalised fields (so no
field boundary is ambiguous), as an unsigned int; chunks compare by count and the *sum* of
hashes (never XOR: a duplicated pair would cancel out).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from datasync.spec import Field, Spec

Normalised = tuple[str | None, ...]
INTEGER_TYPES = ("bigint", "integer")
STRING_TYPES = ("string", "text")


def _timestamp(value: Any) -> str:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return str(aware.astimezone(UTC).isoformat(timespec="microseconds"))


def _decimal(value: Any, scale: int | None) -> str:
    # Wide enough for NUMBER(38, s) (the default context's 28 digits raise on 1e26 and above).
    with localcontext(prec=80):
        number = Decimal(str(value))
        if scale is None:
            return str(number.normalize())
        return str(number.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_EVEN))


def _boolean(value: Any) -> str:
    if isinstance(value, str):
        return "true" if value.strip().lower() in ("true", "1", "t", "yes", "y") else "false"
    return "true" if value else "false"


def _by_value(value: Any) -> str | None:
    """A value normalised by its Python type (no declared field at hand)."""
    if isinstance(value, bool):
        return _boolean(value)
    if isinstance(value, datetime):
        return _timestamp(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal | float):
        return _decimal(value, None)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return text if text != "" else None


def normalise_value(value: Any, field: Field | None = None) -> str | None:
    """One column value as comparable text (see the module docstring for the rules)."""
    if value is None:
        return None
    kind = field.type if field is not None else None
    if kind == "timestamp":
        return _timestamp(value)
    if kind == "decimal":
        return _decimal(value, field.scale if field is not None else None)
    if kind in INTEGER_TYPES:
        return str(int(value))
    if kind == "boolean":
        return _boolean(value)
    if kind == "date":
        return value.isoformat() if isinstance(value, date) else str(value)
    if kind in STRING_TYPES:
        text = str(value)
        return text if text != "" else None
    return _by_value(value)


def normalise(spec: Spec, row: Mapping[Any, Any]) -> Normalised:
    """A row (legacy names) as its normalised fields, in declaration order."""
    return tuple(normalise_value(row[f.name], f) for f in spec.fields)


def row_hash(normalised: Normalised) -> int:
    encoded = "".join("-" if v is None else f"{len(v)}:{v}" for v in normalised)
    return int.from_bytes(hashlib.blake2b(encoded.encode(), digest_size=8).digest(), "big")


def differing_fields(
    spec: Spec, left: Normalised, right: Normalised
) -> dict[str, tuple[str | None, str | None]]:
    """Field name → (left value, right value) for every field that differs."""
    return {name: (a, b) for name, a, b in zip(spec.names, left, right, strict=True) if a != b}


def row_values(spec: Spec, row: Mapping[Any, Any]) -> dict[str, Any]:
    """The declared fields of `row` (legacy names), as a plain dict."""
    return {name: row[name] for name in spec.names}


def service_values(spec: Spec, row: Mapping[Any, Any]) -> dict[str, Any]:
    """The declared fields of `row` (legacy names), keyed by their SERVICE names (for writes)."""
    return {f.service: row[f.name] for f in spec.fields}
