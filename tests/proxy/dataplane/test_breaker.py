"""The per-upstream guard: outlier ejection with probes, the concurrency cap with its bounded
queue and per-client share, and the retry budget. Time is passed in to the ejection rules;
waiting for a slot runs on a real event loop with short queue timeouts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from proxy.dataplane.breaker import (
    BUDGET_CAP,
    BUDGET_RESERVE,
    CLOSED,
    EJECTED,
    PROBING,
    Guard,
    Guards,
    Saturated,
)
from proxy.table.compile import Upstream, compile_table
from proxy.table.model import RouteTable

T0 = 10_000.0  # a monotonic clock reading


def upstream(name: str = "payment", url: str = "http://127.0.0.1:8002", **spec: Any) -> Upstream:
    table = RouteTable.model_validate({"upstreams": {name: {"url": url, **spec}}, "default": name})
    return compile_table(table).upstreams[name]


def guard(**spec: Any) -> Guard:
    return Guard(upstream(**spec))


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coroutine)


def eject(g: Guard, now: float) -> None:
    """Fail requests in a row until the guard ejects its upstream."""
    for _ in range(10_000):
        if g.record(True, now, False):
            return
    raise AssertionError("never ejected")


def ejected_for(g: Guard, now: float) -> float:
    assert g.state == EJECTED
    return g.blocked_for(now)


def reprobe(g: Guard, now: float, *, ok: bool) -> None:
    """Let the first probe through at `now` (the ejection is over) and answer it."""
    assert g.blocked_for(now) == 0.0
    assert g.state == PROBING
    g.record(not ok, now, True)


# --- outlier ejection --------------------------------------------------------------------------


def test_consecutive_gateway_failures_eject_the_upstream() -> None:
    g = guard(outlier={"consecutive_failures": 3})
    assert g.record(True, T0, False) is False
    assert g.record(True, T0, False) is False
    assert (g.state, g.blocked_for(T0)) == (CLOSED, 0.0)
    assert g.record(True, T0, False) is True
    assert g.state == EJECTED
    assert g.blocked_for(T0) == pytest.approx(30.0)


def test_a_success_resets_the_count_of_failures_in_a_row() -> None:
    g = guard(outlier={"consecutive_failures": 3})
    for failed in (True, True, False, True, True):
        assert g.record(failed, T0, False) is False
    assert g.state == CLOSED
    assert g.record(True, T0, False) is True


def test_without_outlier_rules_nothing_ever_ejects() -> None:
    g = guard()
    assert g.upstream.outlier is None
    assert not any(g.record(True, T0 + i, False) for i in range(1_000))
    assert (g.state, g.blocked_for(T0 + 1_000)) == (CLOSED, 0.0)


def test_the_ejection_lasts_base_ejection_counting_down() -> None:
    g = guard(outlier={"base_ejection": "20s"})
    eject(g, T0)
    assert ejected_for(g, T0) == pytest.approx(20.0)
    assert ejected_for(g, T0 + 5) == pytest.approx(15.0)
    assert ejected_for(g, T0 + 19.5) == pytest.approx(0.5)
    assert g.blocked_for(T0 + 20) == 0.0  # over: the first probe goes


def test_the_admin_view_shows_how_long_an_upstream_stays_ejected() -> None:
    guards = Guards()
    g = guards.get(upstream(outlier="on"))
    eject(g, T0)
    state = guards.states(T0 + 10)["payment"]
    assert state["state"] == EJECTED
    assert state["ejected_for_s"] == pytest.approx(20.0)
    assert state["ejections_in_a_row"] == 1


def test_answers_to_requests_sent_before_the_ejection_do_not_extend_it() -> None:
    g = guard(outlier={"consecutive_failures": 2})
    eject(g, T0)
    until = g.ejected_until
    assert g.record(True, T0 + 1, False) is False
    assert g.record(True, T0 + 2, False) is False
    assert (g.state, g.ejected_until) == (EJECTED, until)


@pytest.mark.parametrize(
    ("outlier", "durations"),
    [
        pytest.param({"base_ejection": "10s"}, [10, 20, 30, 40], id="base-times-n"),
        pytest.param(
            {"base_ejection": "10s", "max_ejection": "25s"}, [10, 20, 25, 25], id="capped"
        ),
        pytest.param(
            {"base_ejection": "30s", "max_ejection": "30s"}, [30, 30, 30], id="cap-equals-base"
        ),
    ],
)
def test_each_ejection_in_a_row_lasts_longer(
    outlier: dict[str, Any], durations: list[float]
) -> None:
    g = guard(outlier=outlier)
    eject(g, T0)
    now, seen = T0, []
    for _ in durations:
        seen.append(g.ejected_until - now)
        now = g.ejected_until
        reprobe(g, now, ok=False)  # the probe fails: ejected again
    assert seen == pytest.approx(durations)


@pytest.mark.parametrize(
    ("healthy_for", "next_duration"),
    [
        pytest.param(1.0, 20.0, id="soon-after-closing-grows"),
        pytest.param(26.0, 10.0, id="healthy-longer-than-max-ejection-starts-again"),
    ],
)
def test_a_long_healthy_spell_forgets_earlier_ejections(
    healthy_for: float, next_duration: float
) -> None:
    g = guard(outlier={"base_ejection": "10s", "max_ejection": "25s", "probes": 1})
    eject(g, T0)
    closed = T0 + 10
    reprobe(g, closed, ok=True)
    assert g.state == CLOSED
    eject(g, closed + healthy_for)
    assert g.ejected_until - (closed + healthy_for) == pytest.approx(next_duration)


def test_after_the_ejection_exactly_probes_requests_go_through() -> None:
    g = guard(outlier={"base_ejection": "10s", "probes": 3})
    eject(g, T0)
    over = T0 + 10
    let_through = [g.blocked_for(over + i * 0.1) == 0.0 for i in range(6)]
    assert let_through == [True, True, True, False, False, False]
    assert g.state == PROBING
    assert g.blocked_for(over + 1) > 0  # the others wait for the probes' verdict


def test_all_probes_succeeding_closes_the_circuit() -> None:
    g = guard(outlier={"base_ejection": "10s", "probes": 2})
    eject(g, T0)
    over = T0 + 10
    assert g.blocked_for(over) == g.blocked_for(over) == 0.0
    g.record(False, over + 0.1, True)
    assert g.state == PROBING
    assert g.blocked_for(over + 0.2) > 0  # one verdict is still out
    g.record(False, over + 0.2, True)
    assert g.state == CLOSED
    assert all(g.blocked_for(over + 1) == 0.0 for _ in range(10))


def test_one_probe_failing_ejects_again_for_longer() -> None:
    g = guard(outlier={"base_ejection": "10s", "probes": 3})
    eject(g, T0)
    over = T0 + 10
    for _ in range(3):
        assert g.blocked_for(over) == 0.0
    g.record(False, over + 0.1, True)
    assert g.record(True, over + 0.2, True) is True
    assert g.state == EJECTED
    assert ejected_for(g, over + 0.2) == pytest.approx(20.0)
    # The last probe's late answer changes nothing.
    assert g.record(False, over + 0.3, True) is False
    assert g.state == EJECTED


def test_each_probing_round_is_numbered_so_a_late_probe_can_be_told_apart() -> None:
    """The data plane notes the round a probe went out in; an answer arriving after the next
    ejection ended (a new round) must not count there (app.py checks the number)."""
    g = guard(outlier={"base_ejection": "10s", "probes": 1})
    eject(g, T0)
    assert g.blocked_for(T0 + 10) == 0.0
    first = g.rounds
    assert g.record(True, T0 + 10.1, True) is True  # the probe failed: ejected for 20 s
    assert g.blocked_for(T0 + 31) == 0.0
    assert g.rounds == first + 1


@pytest.mark.parametrize(
    ("answers", "ejected_at"),
    [
        pytest.param([(False, 0), (True, 1), (False, 2), (True, 3)], 3, id="ratio-reached"),
        pytest.param([(True, 0), (True, 1), (True, 2)], None, id="below-min-requests"),
        pytest.param(
            [(False, 0), (False, 1), (True, 2), (False, 3), (False, 4), (True, 5)],
            None,
            id="ratio-not-reached",
        ),
        pytest.param(
            [(True, 0), (True, 1), (True, 2), (False, 12), (False, 13), (True, 14)],
            None,
            id="old-window-forgotten",
        ),
        pytest.param(
            [(True, 0), (True, 1), (True, 2), (False, 5), (False, 6), (True, 7)],
            3,
            id="same-window-counts",
        ),
    ],
)
def test_a_failure_ratio_over_a_window_ejects(
    answers: list[tuple[bool, float]], ejected_at: int | None
) -> None:
    g = guard(
        outlier={
            "consecutive_failures": 1_000,
            "failure_ratio": 0.5,
            "min_requests": 4,
            "window": "10s",
        }
    )
    ejected = [g.record(failed, T0 + at, False) for failed, at in answers]
    expected = [False] * len(answers)
    if ejected_at is not None:
        expected[ejected_at] = True
    assert ejected == expected


def test_each_state_change_is_told_to_the_callback() -> None:
    seen: list[tuple[str, int]] = []

    def notify(name: str, code: int) -> None:
        seen.append((name, code))

    g = Guard(upstream(outlier={"base_ejection": "10s", "probes": 1}), notify)
    eject(g, T0)
    assert seen == [("payment", 1)]
    reprobe(g, T0 + 10, ok=False)
    assert seen == [("payment", 1), ("payment", 2), ("payment", 1)]
    reprobe(g, T0 + 30, ok=True)
    assert seen[3:] == [("payment", 2), ("payment", 0)]


# --- concurrency -------------------------------------------------------------------------------


async def waiting(g: Guard, holder: str, share: float = 1.0) -> asyncio.Task[None]:
    """A request of `holder` waiting in the guard's queue."""
    task = asyncio.create_task(g.acquire(holder, share))
    await asyncio.sleep(0)
    assert not task.done()
    return task


def test_up_to_max_requests_go_at_once_then_requests_wait() -> None:
    async def main() -> None:
        g = guard(max_requests=2)
        await g.acquire("10.0.0.1", 1.0)
        await g.acquire("10.0.0.2", 1.0)
        assert g.active == 2
        third = await waiting(g, "10.0.0.3")
        assert (g.active, len(g.waiters)) == (2, 1)
        g.release("10.0.0.1")
        await third
        assert (g.active, len(g.waiters)) == (2, 0)  # the slot was handed over
        g.release("10.0.0.2")
        g.release("10.0.0.3")
        assert (g.active, g.per_client) == (0, {})

    run(main())


def test_max_requests_defaults_to_max_connections() -> None:
    async def main() -> None:
        g = guard(max_connections=3, max_pending=0)
        for i in range(3):
            await g.acquire(f"10.0.0.{i}", 1.0)
        with pytest.raises(Saturated):
            await g.acquire("10.0.0.9", 1.0)

    run(main())


def test_a_freed_slot_goes_to_the_first_waiter() -> None:
    async def main() -> None:
        g = guard(max_requests=1)
        await g.acquire("a", 1.0)
        first = await waiting(g, "b")
        second = await waiting(g, "c")
        g.release("a")
        await asyncio.sleep(0)
        assert first.done()
        assert not second.done()
        assert (g.active, len(g.waiters)) == (1, 1)
        g.release("b")
        await second
        assert (g.active, len(g.waiters)) == (1, 0)
        g.release("c")
        assert g.active == 0

    run(main())


def test_a_newcomer_does_not_jump_the_queue() -> None:
    async def main() -> None:
        g = guard(max_requests=1, queue_timeout="50ms")
        await g.acquire("a", 1.0)
        queued = await waiting(g, "b")
        g.release("a")  # the slot is b's, even before b runs again
        with pytest.raises(Saturated, match="queue-timeout"):
            await g.acquire("c", 1.0)
        await queued
        g.release("b")
        assert (g.active, len(g.waiters)) == (0, 0)

    run(main())


@pytest.mark.parametrize("max_pending", [pytest.param(0, id="no-queue"), pytest.param(2, id="two")])
def test_a_full_queue_refuses_at_once(max_pending: int) -> None:
    async def main() -> None:
        g = guard(max_requests=1, max_pending=max_pending, queue_timeout="10s")
        await g.acquire("a", 1.0)
        queued = [await waiting(g, f"q{i}") for i in range(max_pending)]
        started = time.monotonic()
        with pytest.raises(Saturated) as caught:
            await g.acquire("late", 1.0)
        assert caught.value.reason == "queue-full"
        assert time.monotonic() - started < 0.5
        assert (g.active, len(g.waiters)) == (1, max_pending)
        assert "late" not in g.per_client
        holders = ["a"] + [f"q{i}" for i in range(max_pending)]
        for holder, task in zip(holders, queued, strict=False):
            g.release(holder)
            await task
        g.release(holders[-1])
        assert (g.active, g.per_client) == (0, {})

    run(main())


def test_a_queue_timeout_refuses_and_leaves_the_counts_right() -> None:
    async def main() -> None:
        g = guard(max_requests=1, queue_timeout="20ms")
        await g.acquire("a", 1.0)
        with pytest.raises(Saturated) as caught:
            await g.acquire("b", 1.0)
        assert caught.value.reason == "queue-timeout"
        assert (g.active, len(g.waiters), g.per_client) == (1, 0, {"a": 1})
        g.release("a")
        assert g.active == 0
        await g.acquire("c", 1.0)  # at once: nobody is left in the queue
        assert (g.active, g.per_client) == (1, {"c": 1})

    run(main())


def test_a_waiter_cancelled_while_waiting_leaves_the_counts_right() -> None:
    async def main() -> None:
        g = guard(max_requests=1)
        await g.acquire("a", 1.0)
        queued = await waiting(g, "b")
        queued.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert (g.active, len(g.waiters), g.per_client) == (1, 0, {"a": 1})
        g.release("a")
        assert (g.active, g.per_client) == (0, {})

    run(main())


def test_a_waiter_cancelled_just_before_a_slot_frees_leaves_the_counts_right() -> None:
    async def main() -> None:
        g = guard(max_requests=1)
        await g.acquire("a", 1.0)
        queued = await waiting(g, "b")
        queued.cancel()  # the client went away...
        g.release("a")  # ...and a slot frees before the cancelled request runs again
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert (g.active, len(g.waiters), g.per_client) == (0, 0, {})

    run(main())


def test_a_queue_timeout_just_before_a_slot_frees_refuses_and_leaves_the_counts_right() -> None:
    async def main() -> None:
        g = guard(max_requests=1, queue_timeout="10ms")
        await g.acquire("a", 1.0)
        queued = await waiting(g, "b")
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, g.release, "a")  # due just after b's queue timeout
        loop.call_soon(time.sleep, 0.05)  # a busy loop: both fall due in the same turn
        with pytest.raises(Saturated) as caught:
            await queued
        assert caught.value.reason == "queue-timeout"
        assert (g.active, len(g.waiters), g.per_client) == (0, 0, {})

    run(main())


def test_a_client_may_hold_only_its_share_of_the_slots() -> None:
    async def main() -> None:
        g = guard(max_requests=4)
        await g.acquire("greedy", 0.5)
        await g.acquire("greedy", 0.5)
        with pytest.raises(Saturated) as caught:
            await g.acquire("greedy", 0.5)  # refused at once, though two slots are free
        assert caught.value.reason == "client-share"
        await g.acquire("other", 0.5)  # other clients are not affected
        assert (g.active, g.per_client) == (3, {"greedy": 2, "other": 1})
        g.release("greedy")
        await g.acquire("greedy", 0.5)  # back under its share
        assert g.per_client["greedy"] == 2

    run(main())


def test_a_small_share_still_leaves_a_client_one_slot() -> None:
    async def main() -> None:
        g = guard(max_requests=4)
        await g.acquire("a", 0.1)
        with pytest.raises(Saturated, match="client-share"):
            await g.acquire("a", 0.1)

    run(main())


def test_a_share_of_one_leaves_the_client_to_the_queue() -> None:
    async def main() -> None:
        g = guard(max_requests=4, max_pending=0)
        for _ in range(4):
            await g.acquire("a", 1.0)
        with pytest.raises(Saturated) as caught:
            await g.acquire("a", 1.0)
        assert caught.value.reason == "queue-full"
        assert g.per_client == {"a": 4}

    run(main())


def test_queued_requests_that_get_a_slot_count_toward_the_clients_share() -> None:
    async def main() -> None:
        g = guard(max_requests=4, queue_timeout="20ms")
        for _ in range(4):
            await g.acquire("busy", 1.0)
        queued = [await waiting(g, "greedy", 0.5) for _ in range(2)]
        g.release("busy")
        g.release("busy")
        await asyncio.gather(*queued)
        # greedy now holds 2 of 4 slots, its whole share.
        assert g.per_client == {"busy": 2, "greedy": 2}
        with pytest.raises(Saturated) as caught:
            await g.acquire("greedy", 0.5)
        assert caught.value.reason == "client-share"

    run(main())


def test_a_client_cannot_exceed_its_share_by_queueing() -> None:
    async def main() -> None:
        g = guard(max_requests=2, queue_timeout="1s")
        await g.acquire("busy", 1.0)
        await g.acquire("busy", 1.0)
        # greedy may hold 1 of the 2 slots; it sends two requests while both are taken.
        first = asyncio.create_task(g.acquire("greedy", 0.5))
        second = asyncio.create_task(g.acquire("greedy", 0.5))
        await asyncio.sleep(0)
        g.release("busy")
        g.release("busy")
        results = await asyncio.gather(first, second, return_exceptions=True)
        granted = [r for r in results if r is None]
        refused = [r for r in results if isinstance(r, Saturated)]
        assert len(granted) == 1, results
        assert [r.reason for r in refused] == ["client-share"]

    run(main())


# --- retry budget ------------------------------------------------------------------------------


def withdrawals(g: Guard) -> int:
    """How many retries the budget allows right now (spending them)."""
    count = 0
    while g.withdraw():
        count += 1
    return count


def test_a_quiet_upstream_may_retry_a_few_times() -> None:
    g = guard(retry_budget=0)
    assert g.budget == BUDGET_RESERVE == 3.0
    assert withdrawals(g) == 3
    assert g.withdraw() is False


def test_each_request_pays_for_a_share_of_a_retry() -> None:
    g = guard(retry_budget=0.25)
    withdrawals(g)
    for _ in range(3):
        g.deposit()
    assert g.withdraw() is False  # 0.75 of a retry: not enough
    g.deposit()
    assert g.withdraw() is True
    assert g.withdraw() is False


def test_the_budget_saved_up_is_capped() -> None:
    g = guard(retry_budget=1)
    for _ in range(1_000):
        g.deposit()
    assert g.budget == BUDGET_CAP
    assert withdrawals(g) == int(BUDGET_CAP)


# --- guards across table versions --------------------------------------------------------------


def test_an_upstream_keeps_its_state_across_table_versions() -> None:
    guards = Guards()
    g = guards.get(upstream(outlier="on"))
    eject(g, T0)
    again = guards.get(upstream(outlier="on", timeout="5s"))  # a new version, same name and URL
    assert again is g
    assert again.state == EJECTED
    assert again.upstream.timeout == 5.0
    moved = guards.get(upstream(url="http://127.0.0.1:9002", outlier="on"))
    assert moved is not g
    assert moved.state == CLOSED


def test_switching_outlier_ejection_off_brings_an_ejected_upstream_back() -> None:
    guards = Guards()
    g = guards.get(upstream(outlier={"base_ejection": "10s"}))
    eject(g, T0)
    guards.get(upstream(outlier="off"))  # the operator turns ejection off in a new version
    assert g.upstream.outlier is None
    for i in range(5):  # from the end of the ejection at the latest, every request goes
        now = T0 + 10 + i
        assert g.blocked_for(now) == 0.0, (i, g.state)
        g.record(False, now, g.state == PROBING)


def test_guards_of_dropped_upstreams_are_forgotten() -> None:
    guards = Guards()
    kept, dropped = upstream("payment"), upstream("catalog", "http://127.0.0.1:8003")
    g = guards.get(kept)
    guards.get(dropped)
    guards.keep_only([kept])
    assert set(guards.states(T0)) == {"payment"}
    assert guards.get(kept) is g
