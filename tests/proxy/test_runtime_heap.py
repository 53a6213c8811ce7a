"""The worker's heap after start and after a table change (runtime.settle_heap): what lives as
long as the worker is frozen out of the cyclic collector's full passes (the p99 pauses of a
large table), and what a table change leaves behind is still freed at the next change, so
memory does not grow with flips."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from proxy.runtime import GC_THRESHOLDS, settle_heap


class Node:
    """An object in a reference cycle: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_what_lives_at_a_settle_is_frozen_and_freed_at_the_next_one() -> None:
    old = Node()  # the table being served, say
    gone = weakref.ref(old)
    settle_heap()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == GC_THRESHOLDS
    del old  # a table change replaces it
    gc.collect()
    assert gone() is not None  # frozen: full collections do not walk it
    settle_heap()  # the change's own settle
    assert gone() is None


def test_a_cycle_made_after_a_settle_is_collected_as_usual() -> None:
    settle_heap()
    request = Node()  # something a request left behind
    gone = weakref.ref(request)
    del request
    gc.collect()
    assert gone() is None
