"""The data plane's timeout for one await on a known loop (forward.Deadline): what
asyncio.timeout does, without looking the loop up (a getpid() system call each on 3.11)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import uvloop

from proxy.dataplane.forward import Deadline, within

T = TypeVar("T")

LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(uvloop.new_event_loop, id="uvloop"),
]


MakeLoop = Callable[[], asyncio.AbstractEventLoop]


def run(make_loop: MakeLoop, body: Callable[[asyncio.AbstractEventLoop], Awaitable[T]]) -> T:
    loop = make_loop()
    try:
        return loop.run_until_complete(body(loop))
    finally:
        loop.close()


@pytest.mark.parametrize("make_loop", LOOPS)
def test_a_wait_past_the_deadline_raises_timeout_and_leaves_the_task_uncancelled(
    make_loop: MakeLoop,
) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> tuple[bool, int, str]:
        task = asyncio.current_task()
        assert task is not None
        try:
            async with Deadline(loop, 0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            timed_out = True
        else:
            timed_out = False
        await asyncio.sleep(0.01)  # the task goes on: nothing cancels it later
        return timed_out, task.cancelling(), "after"

    assert run(make_loop, body) == (True, 0, "after")


@pytest.mark.parametrize("make_loop", LOOPS)
def test_a_wait_within_the_deadline_is_never_cut_later(make_loop: MakeLoop) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> str:
        async with Deadline(loop, 0.05):
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.1)  # past the deadline: its timer is gone
        return "done"

    assert run(make_loop, body) == "done"


@pytest.mark.parametrize("make_loop", LOOPS)
def test_a_cancellation_from_outside_stays_a_cancellation(make_loop: MakeLoop) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> str:
        async def waits() -> None:
            async with Deadline(loop, 5):
                await asyncio.sleep(5)

        task = loop.create_task(waits())
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "not cancelled"

    assert run(make_loop, body) == "cancelled"


@pytest.mark.parametrize("make_loop", LOOPS)
def test_an_outer_timeout_that_ends_first_is_the_outer_ones(make_loop: MakeLoop) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> str:
        try:
            async with asyncio.timeout(0.05):
                try:
                    async with Deadline(loop, 5):
                        await asyncio.sleep(5)
                except TimeoutError:
                    return "inner"
        except TimeoutError:
            return "outer"
        return "none"

    assert run(make_loop, body) == "outer"


def test_without_a_loop_asyncio_timeout_is_used() -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> tuple[bool, bool]:
        return isinstance(within(1.0, None), asyncio.Timeout), isinstance(
            within(1.0, loop), Deadline
        )

    assert run(asyncio.new_event_loop, body) == (True, True)
