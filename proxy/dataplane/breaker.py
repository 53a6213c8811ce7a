"""What each worker knows about each upstream's health and load: the per-upstream guard.

Three rules, each with its precedent:
- **Concurrency cap** (Envoy's circuit breakers `max_requests` / `max_pending_requests`,
  HAProxy's `maxconn` + `timeout queue`): at most `max_requests` requests to an upstream at
  once; over it a request waits for a slot, at most `max_pending` of them and for at most
  `queue_timeout`. Otherwise it is refused at once (a fast 503, or the fallback): a saturated
  monolith gets no pile of requests that would all time out. One client may hold at most a
  share of the slots (nginx's `limit_conn` per upstream), so one address cannot starve others.
- **Outlier ejection** (Envoy's outlier detection; see table.model.Outlier for the numbers):
  gateway failures in a row (or a failure ratio over a window) eject the upstream for a time
  that grows with each ejection; then a few probe requests decide whether it is back.
- **Retry budget** (Envoy's retry_budget, Finagle's RetryBudget): every request deposits
  `retry_budget` of a retry, every retry withdraws one, so retries stay near that share of the
  traffic and never multiply an outage. A small reserve lets a quiet upstream retry at all.

State is per worker and per upstream (name and URL), kept across table versions while the
upstream stays. Nothing here does I/O; waiting for a slot is the only await.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Iterable

from proxy.table.compile import Upstream

CLOSED, EJECTED, PROBING = "closed", "ejected", "probing"
STATE_CODES = {CLOSED: 0, EJECTED: 1, PROBING: 2}
# Retries a quiet upstream may make before its requests have paid for any (Envoy's
# min_retry_concurrency is 3), and the most a long healthy spell can save up.
BUDGET_RESERVE = 3.0
BUDGET_CAP = 50.0


def drop_one(counts: dict[str, int], key: str) -> None:
    """One fewer for `key` in a per-client count; a client at zero leaves the dict."""
    left = counts.get(key, 1) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class Saturated(Exception):
    """No slot came free in time: the request never reached the upstream."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Guard:
    """One upstream's concurrency, ejection and retry-budget state in this worker."""

    __slots__ = (
        "active",
        "budget",
        "closed_at",
        "ejected_until",
        "ejections",
        "failures",
        "notify",
        "per_client",
        "probe_ok",
        "probing",
        "rounds",
        "state",
        "upstream",
        "waiters",
        "window",
    )

    def __init__(
        self, upstream: Upstream, notify: Callable[[str, int], None] | None = None
    ) -> None:
        self.upstream = upstream
        self.notify = notify  # told of each state change (the state gauge)
        self.active = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.per_client: dict[str, int] = {}
        self.state = CLOSED
        self.failures = 0  # gateway failures in a row
        self.ejections = 0  # in a row: the next ejection lasts longer
        self.ejected_until = 0.0
        self.closed_at = 0.0
        self.probing = 0  # probe requests in flight
        self.probe_ok = 0
        self.rounds = 0  # probing rounds so far: a probe's answer counts only in its own round
        self.window = [0.0, 0, 0]  # start, requests, failures (the ratio rule)
        self.budget = BUDGET_RESERVE

    # --- ejection ----------------------------------------------------------------------------
    def blocked_for(self, now: float) -> float:
        """0 when a request may go to the upstream now; else the seconds until it may."""
        if self.state == CLOSED:
            return 0.0
        outlier = self.upstream.outlier
        if outlier is None:  # switched off while ejected: back in the path at once
            self._set(CLOSED)
            return 0.0
        if self.state == EJECTED:
            if now < self.ejected_until:
                return self.ejected_until - now
            self._set(PROBING)
        if self.probing + self.probe_ok >= outlier.probes:
            return 1.0  # the probes are out: the others wait for their verdict
        self.probing += 1
        return 0.0

    def unprobe(self) -> None:
        """A probe ended without a verdict (the client left, or no slot was free)."""
        self.probing = max(0, self.probing - 1)

    def record(self, failed: bool, now: float, probe: bool) -> bool:
        """Count one answer (`failed`: a gateway failure). Returns True when it ejected."""
        outlier = self.upstream.outlier
        if outlier is None:
            return False
        if probe and self.state == PROBING:
            self.unprobe()
            if failed:
                return self._eject(now)
            self.probe_ok += 1
            if self.probe_ok >= outlier.probes:
                self._set(CLOSED)
                self.failures, self.closed_at = 0, now
            return False
        if self.state != CLOSED:
            return False  # an answer to a request sent before the ejection
        if outlier.failure_ratio is not None and self._ratio_exceeded(failed, now):
            return self._eject(now)
        if not failed:
            self.failures = 0
            return False
        self.failures += 1
        return self.failures >= outlier.consecutive_failures and self._eject(now)

    def _ratio_exceeded(self, failed: bool, now: float) -> bool:
        outlier = self.upstream.outlier
        assert outlier is not None
        assert outlier.failure_ratio is not None
        window = self.window
        if now - window[0] >= outlier.window:
            window[0], window[1], window[2] = now, 0, 0
        window[1] += 1
        window[2] += failed
        return window[1] >= outlier.min_requests and window[2] / window[1] >= outlier.failure_ratio

    def _eject(self, now: float) -> bool:
        outlier = self.upstream.outlier
        assert outlier is not None
        if self.state == CLOSED and now - self.closed_at > outlier.max_ejection:
            self.ejections = 0  # healthy for long enough: start again from the base time
        self.ejections += 1
        seconds = min(outlier.base_ejection * self.ejections, outlier.max_ejection)
        self._set(EJECTED)
        self.ejected_until = now + seconds
        self.failures = 0
        self.window = [now, 0, 0]
        return True

    def _set(self, state: str) -> None:
        self.state, self.probing, self.probe_ok = state, 0, 0
        if state == PROBING:
            self.rounds += 1
        if self.notify is not None:
            self.notify(self.upstream.name, STATE_CODES[state])

    # --- concurrency -------------------------------------------------------------------------
    async def acquire(self, holder: str, share: float) -> None:
        """Take a slot for `holder` (a client address), waiting a bounded time. Raises
        Saturated when none comes free or the client already holds `share` of the slots (a
        share of 1 leaves the client to the queue like everyone else)."""
        if not self.take(holder, share):
            await self.queue(holder)

    def take(self, holder: str, share: float) -> bool:
        """acquire()'s common case without a coroutine: True when a slot was free; False when
        the caller must `await queue(holder)`. Raises Saturated("client-share")."""
        held = self.per_client.get(holder, 0)
        if share < 1 and held >= max(1, int(self.upstream.max_requests * share)):
            raise Saturated("client-share")
        self.per_client[holder] = held + 1  # counted while it waits: queueing cannot beat it
        if self.active < self.upstream.max_requests and not self.waiters:
            self.active += 1
            return True
        return False

    async def queue(self, holder: str) -> None:
        try:
            await self._wait()
        except BaseException:
            self._forget(holder)
            raise

    async def _wait(self) -> None:
        if len(self.waiters) >= self.upstream.max_pending:
            raise Saturated("queue-full")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout(self.upstream.queue_timeout):
                await waiter  # release_slot() hands its slot over: `active` already counts us
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release_slot()  # the slot came just as we gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):  # release_slot() may have dropped it
                    self.waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise Saturated("queue-timeout") from None
            raise

    def release(self, holder: str) -> None:
        self._forget(holder)
        self.release_slot()

    def _forget(self, holder: str) -> None:
        drop_one(self.per_client, holder)

    def release_slot(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the first waiter still waiting
                return
        self.active -= 1

    # --- retry budget ------------------------------------------------------------------------
    def deposit(self) -> None:
        self.budget = min(BUDGET_CAP, self.budget + self.upstream.retry_budget)

    def withdraw(self) -> bool:
        if self.budget < 1.0:
            return False
        self.budget -= 1.0
        return True


class Guards:
    """The worker's guards, one per upstream (name and URL) of the served table."""

    def __init__(self, notify: Callable[[str, int], None] | None = None) -> None:
        self._guards: dict[tuple[str, str], Guard] = {}
        self._notify = notify

    def get(self, upstream: Upstream) -> Guard:
        key = (upstream.name, upstream.url)
        guard = self._guards.get(key)
        if guard is None:
            guard = self._guards[key] = Guard(upstream, self._notify)
        elif guard.upstream is not upstream:
            guard.upstream = upstream  # same upstream in a new table version: keep its state
        return guard

    def keep_only(self, upstreams: Iterable[Upstream]) -> None:
        """Forget upstreams a new table dropped (requests in flight keep their guard)."""
        keep = {(u.name, u.url) for u in upstreams}
        for key in [k for k in self._guards if k not in keep]:
            del self._guards[key]

    def states(self, now: float | None = None) -> dict[str, dict[str, object]]:
        """Each upstream's state in this worker, for the admin API."""
        now = time.monotonic() if now is None else now
        out: dict[str, dict[str, object]] = {}
        for (name, _), guard in self._guards.items():
            out[name] = {
                "state": guard.state,
                "ejected_for_s": round(max(0.0, guard.ejected_until - now), 3)
                if guard.state == EJECTED
                else 0.0,
                "ejections_in_a_row": guard.ejections,
                "active": guard.active,
                "waiting": len(guard.waiters),
            }
        return out
