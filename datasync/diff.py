"""Comparing one key range of rows from both databases (pure: no I/O).

A chunk compares by row count and the SUM of row hashes. When they differ, the range is
bisected at the median key of its rows, recursively, until a side has at most `LEAF_ROWS` rows;
there rows are matched by key. Rows younger than the settle cut-off on EITHER side are left out
of BOTH sides, so an in-flight change is not reported as drift.

The rows of a chunk are read once per side (the hashes are computed in Python, the only way that
is identical on SQLite, PostgreSQL and Oracle), so bisecting happens over the rows already in
memory: it costs CPU, not a second read.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from datasync.rows import Normalised, differing_fields
from datasync.spec import Spec

LEAF_ROWS = 8


@dataclass(frozen=True)
class HashedRow:
    key: int
    changed: datetime | None  # the change column's value (None: a refreshed table has none)
    values: Normalised
    digest: int


@dataclass
class Findings:
    """Keys in legacy only (missing), in the service only (extra), and differing rows' fields."""

    missing: list[int] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)
    differing: dict[int, dict[str, tuple[str | None, str | None]]] = field(default_factory=dict)

    @property
    def ids(self) -> set[int]:
        return {*self.missing, *self.extra, *self.differing}

    def add(self, other: Findings) -> None:
        self.missing.extend(other.missing)
        self.extra.extend(other.extra)
        self.differing.update(other.differing)


@dataclass
class ChunkResult:
    findings: Findings
    compared: int  # rows compared on the legacy side (after leaving out young ones)
    skipped_young: int
    bisections: int


def summary(rows: Sequence[HashedRow]) -> tuple[int, int]:
    return len(rows), sum(row.digest for row in rows)


def young_ids(rows: Iterable[HashedRow], window: tuple[datetime, datetime] | None) -> set[int]:
    """Keys of rows changed within the settle window `(since, until)`. A row stamped beyond
    `until` (later than the database's clock plus the window) is not in flight but skewed, and
    is compared like any other."""
    if window is None:
        return set()
    since, until = window
    return {row.key for row in rows if row.changed is not None and since <= row.changed <= until}


def compare_chunk(
    spec: Spec,
    legacy: Sequence[HashedRow],
    service: Sequence[HashedRow],
    window: tuple[datetime, datetime] | None,
) -> ChunkResult:
    """Compare one key range: both lists sorted by id."""
    young = young_ids((*legacy, *service), window)
    left = [row for row in legacy if row.key not in young]
    right = [row for row in service if row.key not in young]
    findings = Findings()
    counter = [0]
    _bisect(spec, left, right, findings, counter)
    return ChunkResult(findings, len(left), len(young), counter[0])


def _bisect(
    spec: Spec,
    left: Sequence[HashedRow],
    right: Sequence[HashedRow],
    out: Findings,
    counter: list[int],
) -> None:
    if summary(left) == summary(right):
        return
    if len(left) <= LEAF_ROWS and len(right) <= LEAF_ROWS:
        compare_rows(spec, left, right, out)
        return
    counter[0] += 1
    longer = left if len(left) >= len(right) else right
    middle = longer[len(longer) // 2].key
    left_ids = [row.key for row in left]
    right_ids = [row.key for row in right]
    i, j = bisect_left(left_ids, middle), bisect_left(right_ids, middle)
    _bisect(spec, left[:i], right[:j], out, counter)
    _bisect(spec, left[i:], right[j:], out, counter)


def compare_rows(
    spec: Spec, left: Sequence[HashedRow], right: Sequence[HashedRow], out: Findings
) -> None:
    """Match rows by key: a key on one side only is missing or extra; else compare fields."""
    theirs = {row.key: row for row in right}
    for row in left:
        other = theirs.pop(row.key, None)
        if other is None:
            out.missing.append(row.key)
        elif other.digest != row.digest or other.values != row.values:
            out.differing[row.key] = differing_fields(spec, row.values, other.values)
    out.extra.extend(theirs)
