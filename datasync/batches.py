"""Keys in bounded lists: Oracle refuses an `IN` list of more than 1,000 expressions (ORA-01795),
so every statement that names keys takes them `IN_LIST_MAX` at a time (the engine's one rule,
with headroom under Oracle's limit)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

IN_LIST_MAX = 500


def chunks(items: Sequence[T], size: int = IN_LIST_MAX) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
