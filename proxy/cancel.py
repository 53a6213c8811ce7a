"""Stopping background tasks within a bound (pure asyncio, no I/O of its own).

Rule: a stop cancels a task, and cancels it again while it runs on, for at most `seconds`.
redis-py waits with asyncio.wait_for, which on Python 3.11 can swallow a cancellation that
lands as its inner wait ends: one cancel is not enough, and an unbounded wait for the task
would hold the worker's exit for good (Envoy's drain has a deadline for the same reason).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


async def cancel_within(
    tasks: Iterable[asyncio.Task[None]], seconds: float, tries: int = 2
) -> set[asyncio.Task[None]]:
    """Cancel `tasks`, again each `seconds / tries` while some run on; the ones still running
    at the end (left behind: the caller says so)."""
    pending = set(tasks)
    for _ in range(tries):
        if not pending:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=seconds / tries)
    return pending
