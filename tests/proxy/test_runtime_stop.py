"""A worker's stop is bounded step by step (runtime.STOP_STEP_SECONDS): a client that hangs on
close (a Redis coming back) is logged and left behind, a task that swallows its cancellation is
cancelled again, and the rest still stops: the process exits within its
graceful timeout instead of being killed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

from proxy import runtime as runtime_module
from proxy.runtime import Runtime
from proxy.settings import ProxySettings
from proxy.table.compile import compile_table
from proxy.table.loader import load_file

TABLE = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
default: monolith
routes: []
"""


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    (tmp_path / "routes.yaml").write_text(TABLE)
    settings = ProxySettings(routes=tmp_path / "routes.yaml", state_dir=tmp_path / "var")
    return Runtime(settings, compile_table(load_file(tmp_path / "routes.yaml")))


def test_a_hanging_step_and_a_stubborn_task_do_not_hold_the_stop(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime_module, "STOP_STEP_SECONDS", 0.2)
    closed: list[str] = []

    async def hangs() -> None:
        await asyncio.sleep(3600)

    async def forwarder_close() -> None:
        closed.append("pools")

    async def stubborn() -> None:
        # The first cancellation is swallowed, as Python 3.11's wait_for may do when its inner
        # task has just ended.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)  # ended by the loop's own cancel at exit

    monkeypatch.setattr(runtime.limiter, "stop", hangs)
    monkeypatch.setattr(runtime.forwarder, "close", forwarder_close)

    async def scenario() -> tuple[float, bool]:
        loop = asyncio.get_running_loop()
        task = loop.create_task(stubborn())
        runtime._tasks.append(task)
        await asyncio.sleep(0)
        began = loop.time()
        await runtime.stop()
        return loop.time() - began, task.done()

    with caplog.at_level(logging.WARNING, logger="strangler"):
        took, ended = asyncio.run(scenario())
    assert took < 2.0  # bounded steps of 0.2 s, not an hour
    assert ended  # cancelled again after it swallowed the first one
    assert closed == ["pools"]  # the steps after the hanging one still ran
    assert "the rate limiter took over" in caplog.text
    assert "did not end once cancelled" not in caplog.text
