"""Riding out a dependency's restart: jittered backoff, transient-error classification, and a
job's health (one log line per problem, never a traceback).

Every long-running job (follow, to-legacy, compensate) wraps each pass in `Guard.run` (or
`AsyncGuard.run` in an event loop): a pass that fails on a transient error (a lost database or
Redis connection, a server restarting, a lock timeout) is retried after an exponentially
growing, fully jittered delay (AWS Architecture Blog, "Exponential Backoff And Jitter": sleep =
random(0, min(cap, base * 2^n))), never ends the job. A permanent error (a missing table, a bad
declaration: `SyncError` that is not `Transient`) still ends it, with one line saying why.

Logging follows the one-line-per-problem rule: the first failure of a streak (an outage) logs a
warning with the error's class and first line; every later failure of the same streak is counted
and becomes the current `problem`, not logged, even when its text differs: one restart shows
several symptoms in turn (Redis: "Connection closed by server", then "Connection refused", then
"LOADING"; PostgreSQL: "terminating connection due to administrator command", then "the database
system is shutting down", then "Connection refused"); a line per symptom would make one outage
read as several problems. The recovery logs once with how long the job was down, how
many attempts failed and the last problem seen.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from datasync.errors import DatabaseUnreachable, EventSourceError, SyncError

T = TypeVar("T")

BASE_DELAY = 0.1
MAX_DELAY = 10.0


class Transient(SyncError):
    """A failure that a retry may cure (wrapping the original error's first line)."""

    kind = "transient"


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may help: connection and server-side availability problems."""
    if isinstance(exc, Transient | DatabaseUnreachable | EventSourceError):
        return True
    if isinstance(exc, SyncError):
        return False
    if isinstance(exc, OperationalError | ConnectionError | TimeoutError | OSError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, SQLAlchemyError):
        # InterfaceError (connection closed under us), InternalError on a killed backend.
        return type(exc).__name__ in {"InterfaceError", "InternalError", "DisconnectionError"}
    module = type(exc).__module__
    # redis-py's ConnectionError/TimeoutError/BusyLoadingError subclass RedisError, not OSError.
    return module.startswith("redis") and type(exc).__name__ in {
        "ConnectionError",
        "TimeoutError",
        "BusyLoadingError",
        "ClusterDownError",
        "TryAgainError",
        "ReadOnlyError",
    }


def first_line(exc: BaseException) -> str:
    origin = getattr(exc, "orig", None)
    text = str(origin if origin is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class Backoff:
    """Full-jitter exponential backoff; `reset()` after a success."""

    base: float = BASE_DELAY
    cap: float = MAX_DELAY
    failures: int = 0
    rng: Callable[[], float] = random.random

    def next_delay(self) -> float:
        self.failures += 1
        ceiling = min(self.cap, self.base * 2**self.failures)
        return float(max(self.base, ceiling * self.rng()))

    def reset(self) -> None:
        self.failures = 0


@dataclass
class Health:
    """What a job's status and the gate show: when it last succeeded, its current problem."""

    job: str
    last_success: datetime | None = None
    problem: str | None = None  # "<ErrorClass>: first line" while failing, else None
    problem_since: datetime | None = None
    failures: int = 0  # consecutive failed attempts

    @property
    def healthy(self) -> bool:
        return self.problem is None

    def ok(self, log: logging.Logger) -> None:
        now = datetime.now(UTC)
        if self.problem is not None and self.problem_since is not None:
            down = (now - self.problem_since).total_seconds()
            log.warning(
                "%s: recovered after %.1fs and %d failed attempt(s) (%s)",
                self.job,
                down,
                self.failures,
                self.problem,
            )
        self.last_success = now
        self.problem, self.problem_since, self.failures = None, None, 0

    def failed(self, exc: BaseException, log: logging.Logger, retry_in: float) -> None:
        """Count a failed attempt: the first of an outage logs one line, the rest only update
        `problem` (the latest symptom) and `failures` (module header)."""
        problem = f"{type(exc).__name__}: {first_line(exc)}"
        if self.problem is None:
            self.problem_since = datetime.now(UTC)
            log.warning("%s: %s; retrying (backoff up to %.0fs)", self.job, problem, MAX_DELAY)
        self.problem = problem
        self.failures += 1
        del retry_in


class Guard:
    """Runs a job's passes: `guard.run(step)` returns the step's value, or None after a
    transient failure (logged per the module rules, backoff slept via `wait`)."""

    def __init__(
        self,
        job: str,
        log: logging.Logger,
        wait: Callable[[float], object] = time.sleep,
        backoff: Backoff | None = None,
    ) -> None:
        self.health = Health(job)
        self.log = log
        self.wait = wait
        self.backoff = backoff or Backoff()

    def run(self, step: Callable[[], T]) -> T | None:
        try:
            value = step()
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = self.backoff.next_delay()
            self.health.failed(exc, self.log, delay)
            self.wait(delay)
            return None
        self.backoff.reset()
        self.health.ok(self.log)
        return value


class AsyncGuard:
    """`Guard` for an event loop: `await guard.run(step)` awaits the step's coroutine and
    returns its value, or None after a transient failure (backoff slept with asyncio)."""

    def __init__(
        self,
        job: str,
        log: logging.Logger,
        backoff: Backoff | None = None,
        wait: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        self.health = Health(job)
        self.log = log
        self.backoff = backoff or Backoff()
        self.wait = wait or asyncio.sleep

    async def run(self, step: Callable[[], Awaitable[T]]) -> T | None:
        try:
            value = await step()
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = self.backoff.next_delay()
            self.health.failed(exc, self.log, delay)
            await self.wait(delay)
            return None
        self.backoff.reset()
        self.health.ok(self.log)
        return value
