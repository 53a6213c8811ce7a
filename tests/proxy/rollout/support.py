"""What the rollout tests share: route tables with a `rollout:` block, evidence the test sets,
and a clock the test moves (the driver's moves are judged by it, so no test sleeps for a bake)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.dataplane.armstats import ArmSummary
from proxy.rollout.driver import RolloutDriver
from proxy.rollout.model import FINAL, Rollout
from proxy.rollout.store import RolloutStore

MONOLITH = "http://127.0.0.1:8001"
PAYMENT = "http://127.0.0.1:8002"


def routes_yaml(
    action: str = "to: monolith",
    rollout: str | None = None,
    *,
    gate: str | None = None,
    monolith_gate: str | None = None,
    shadow: bool = False,
    extra: str = "",
) -> str:
    """A table over monolith and payment whose `payments` route has `action` (YAML) and, if
    given, a `rollout:` block (flow YAML)."""
    payment = f'{{url: "{PAYMENT}"' + (f', gate: "{gate}"}}' if gate else "}")
    monolith = f'{{url: "{MONOLITH}"' + (f', gate: "{monolith_gate}"}}' if monolith_gate else "}")
    lines = [
        "version: 1",
        "upstreams:",
        f"  monolith: {monolith}",
        f"  payment: {payment}",
        '  catalog: {url: "http://127.0.0.1:8003"}',
        "default: monolith",
        "routes:",
        "  - name: payments",
        "    match: {path: /api/v1/payments}",
        f"    {action}",
    ]
    if shadow:
        lines.append("    shadow: {to: payment}")
    if rollout is not None:
        lines.append(f"    rollout: {rollout}")
    return "\n".join(lines) + "\n" + extra


def write_routes(directory: Path, text: str) -> Path:
    path = directory / "routes.yaml"
    path.write_text(text)
    return path


def arm(requests: int, errors: int = 0, p95: float = 0.01, p99: float = 0.02) -> ArmSummary:
    return ArmSummary(
        requests, errors, p95 / 2, p95 if requests else None, p99 if requests else None
    )


HEALTHY = {"monolith": arm(100), "payment": arm(100)}


@dataclass(frozen=True)
class Answer:
    """A gate's answer as the analysis reads it."""

    upstream: str
    open: bool
    reasons: str = ""

    def describe(self) -> str:
        return f"gate of {self.upstream}: {'open' if self.open else 'closed: ' + self.reasons}"

    def as_dict(self) -> dict[str, Any]:
        return {"upstream": self.upstream, "open": self.open, "reasons": self.reasons}


@dataclass
class FakeEvidence:
    """Evidence the test sets: arms per route, shadow counts, gate answers; it keeps the
    windows it was asked for."""

    arms_of: dict[str, ArmSummary] = field(default_factory=lambda: dict(HEALTHY))
    shadow_counts: dict[str, Any] | None = None
    answers: list[Answer] = field(default_factory=list)
    asked_since: list[float] = field(default_factory=list)

    async def arms(self, route: str, since: float) -> Mapping[str, ArmSummary]:
        self.asked_since.append(since)
        return dict(self.arms_of)

    async def shadow(self, route: str) -> dict[str, Any] | None:
        return self.shadow_counts

    def gates(self, before: object, after: object) -> Sequence[Answer]:
        return list(self.answers)


class Clock:
    """The time the driver sees; the test moves it."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def drive(
    driver: RolloutDriver,
    store: RolloutStore,
    route: str,
    *,
    until: frozenset[str] | set[str] = FINAL,
    clock: Clock | None = None,
    step: float = 10.0,
    ticks: int = 200,
) -> Rollout:
    """Tick `driver` (moving `clock` on by `step` each tick) until the rollout of `route` is in
    one of `until`; fails after `ticks` ticks."""
    for _ in range(ticks):
        await driver.tick_once()
        found = store.get(route)
        assert found is not None
        if found.state in until:
            return found
        if clock is not None:
            clock.advance(step)
    found = store.get(route)
    raise AssertionError(f"still {found.state if found else None} after {ticks} ticks: {found}")


class DriverThread:
    """A driver's `run` in a thread of its own, with its own event loop, until stopped (as a
    replica runs it)."""

    def __init__(
        self, driver: RolloutDriver, cleanup: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        import asyncio
        import threading

        self.driver = driver
        self.cleanup = cleanup  # run in the driver's loop once it stopped (a sink's client)
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rollout-driver", daemon=True)

    def _run(self) -> None:
        import asyncio

        async def main() -> None:
            self.task = asyncio.create_task(self.driver.run())
            self.started.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            if self.cleanup is not None:
                await self.cleanup()

        self.loop.run_until_complete(main())
        self.loop.close()

    def start(self) -> DriverThread:
        self.thread.start()
        self.started.wait(10)
        return self

    def stop(self) -> None:
        """Cancel the driver (it lets go of its lease) and wait for its thread."""
        if self.task is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(15)
        assert not self.thread.is_alive(), "the driver did not stop"


@contextlib.contextmanager
def driving(
    driver: RolloutDriver, cleanup: Callable[[], Awaitable[None]] | None = None
) -> Iterator[DriverThread]:
    running = DriverThread(driver, cleanup).start()
    try:
        yield running
    finally:
        running.stop()
