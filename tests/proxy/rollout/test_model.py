"""A rollout's state machine (model.py, transitions.py), without a store or a clock: where it
may start from, each transition, and the driver's next move in every state."""

from __future__ import annotations

import json

import pytest

from proxy.rollout.analysis import Analysis, analyse
from proxy.rollout.model import MAX_HISTORY, Rollout, RolloutInvalid, RolloutRefused, begin
from proxy.rollout.transitions import (
    abort_requested,
    analysed,
    drifted,
    next_move,
    noted,
    paused,
    promotion_requested,
    resumed,
    rolled_back,
    stepped,
)
from proxy.store.base import UnknownRoute
from proxy.table.loader import load_text
from proxy.table.model import RouteTable
from proxy.table.rollout import RolloutPlan, Thresholds
from tests.proxy.rollout.support import HEALTHY, arm, routes_yaml

T0 = 1_800_000_000.0
PLAN = RolloutPlan(to="payment", steps=(10, 50), bake=60.0, analysis=Thresholds(interval=10.0))


def table(action: str = "to: monolith") -> RouteTable:
    return load_text(routes_yaml(action))


def start(plan: RolloutPlan = PLAN, action: str = "to: monolith") -> Rollout:
    return begin(table(action), 3, "payments", plan, "canary", "ana", T0)


def verdict(passed: bool = True, quiet: bool = False) -> Analysis:
    if quiet:
        return analyse(
            PLAN.analysis, {"monolith": arm(1), "payment": arm(1)}, "monolith", "payment", None, []
        )
    arms = HEALTHY if passed else {"monolith": arm(100), "payment": arm(100, 50)}
    return analyse(PLAN.analysis, arms, "monolith", "payment", None, [])


def baking(step_weight: int = 10) -> Rollout:
    running = noted(start(), T0, "driving", "go", state="progressing")
    return stepped(running, step_weight, 4, T0 + 1, None)


def test_begin_records_where_the_route_was() -> None:
    r = start()
    assert (r.state, r.step, r.weight, r.source, r.to) == ("pending", 0, 0, "monolith", "payment")
    assert r.steps == (10, 50, 100)
    assert (r.original, r.served, r.start_version) == ({"to": "monolith"}, {"monolith": 100}, 3)
    (event,) = r.history
    assert (event.event, event.version, event.message) == ("started", 3, "canary (ana)")


def test_begin_from_a_split_skips_the_steps_already_served() -> None:
    r = start(action="split: {monolith: 80, payment: 20}")
    assert r.steps == (50, 100)
    assert (r.weight, r.served) == (20, {"monolith": 80, "payment": 20})
    assert r.original == {"split": {"monolith": 80, "payment": 20}}


@pytest.mark.parametrize(
    ("route", "plan", "action", "error", "said"),
    [
        pytest.param("orders", PLAN, "to: monolith", UnknownRoute, "no route 'orders'", id="route"),
        pytest.param(
            "payments", RolloutPlan(), "to: monolith", RolloutInvalid, "--to", id="no-target"
        ),
        pytest.param(
            "payments",
            RolloutPlan(to="nope"),
            "to: monolith",
            RolloutInvalid,
            "no upstream 'nope'",
            id="unknown-upstream",
        ),
        pytest.param(
            "payments",
            PLAN,
            "to: payment",
            RolloutInvalid,
            "already sends everything",
            id="already-there",
        ),
        pytest.param(
            "payments",
            PLAN,
            "split: {monolith: 50, payment: 25, catalog: 25}",
            RolloutInvalid,
            "from one upstream to another",
            id="three-way",
        ),
    ],
)
def test_begin_refuses_what_it_cannot_move(
    route: str, plan: RolloutPlan, action: str, error: type[Exception], said: str
) -> None:
    with pytest.raises(error, match=said):
        begin(table(action), 3, route, plan, "canary", "ana", T0)


def test_a_committed_step_starts_its_bake() -> None:
    r = baking()
    assert (r.state, r.step, r.weight) == ("baking", 0, 10)
    assert r.served == {"monolith": 90, "payment": 10}
    assert (r.step_started, r.due, r.next_check) == (T0 + 1, T0 + 61, T0 + 11)
    assert r.history[-1].version == 4
    assert r.history[-1].message == "step 1/3: 10% to payment, baking 60s"


def test_the_last_step_is_success() -> None:
    r = stepped(baking(), 100, 7, T0 + 2, None)
    assert (r.state, r.weight, r.step, r.served) == ("succeeded", 100, 2, {"payment": 100})
    assert r.history[-1].event == "succeeded"


def test_a_passed_bake_moves_to_the_next_step_and_a_passed_check_does_not() -> None:
    r = baking()
    during = analysed(r, verdict(), T0 + 20, False, None)
    assert (during.state, during.step, during.next_check) == ("baking", 0, T0 + 30)
    assert during.last_analysis is not None
    assert during.last_analysis["final"] is False
    assert during.history == r.history  # checks that pass are not events
    after = analysed(r, verdict(), T0 + 61, True, None)
    assert (after.state, after.step) == ("progressing", 1)
    assert after.history[-1].event == "passed"
    assert after.history[-1].step == 0  # the step that passed


def test_a_quiet_bake_bakes_again_then_fails() -> None:
    r = baking()
    for round_ in range(1, 4):
        r = analysed(r, verdict(quiet=True), T0 + 61 * round_, True, None)
        assert (r.state, r.quiet_bakes, r.due) == ("baking", round_, T0 + 61 * round_ + 60)
        assert r.history[-1].event == "quiet"
    r = analysed(r, verdict(quiet=True), T0 + 300, True, None)
    assert (r.state, r.end) == ("rolling-back", "rolled-back")
    assert "too little traffic" in r.message


def test_a_quiet_check_during_the_bake_changes_nothing() -> None:
    r = analysed(baking(), verdict(quiet=True), T0 + 20, False, None)
    assert (r.state, r.quiet_bakes) == ("baking", 0)


def test_failures_under_the_threshold_start_the_window_again() -> None:
    plan = PLAN.model_copy(update={"analysis": Thresholds(threshold=2)})
    r = stepped(noted(start(plan), T0, "driving", "go", state="progressing"), 10, 4, T0, None)
    r = analysed(r, verdict(passed=False), T0 + 20, False, {"compared": 7, "differed": 1})
    assert (r.state, r.failures, r.step_started, r.due) == ("baking", 1, T0 + 20, T0 + 80)
    assert r.shadow_baseline == {"compared": 7, "differed": 1}
    assert "(1 of 2: the step's window starts again)" in r.message
    r = analysed(r, verdict(passed=False), T0 + 30, False, None)
    assert r.state == "rolling-back"
    assert r.message.startswith("step 1/3 (10% to payment) failed: error rate 50.00%")


def test_pause_stops_the_clock_and_resume_gives_the_time_back() -> None:
    r = paused(baking(), T0 + 11, "looking at a graph (bo)")
    assert (r.state, r.paused_from, r.paused_at) == ("paused", "baking", T0 + 11)
    assert next_move(r, T0 + 500, r.served) == "none"
    back = resumed(r, T0 + 111, "fine (bo)")
    assert back.state == "baking"
    assert (back.step_started, back.due, back.next_check) == (T0 + 101, T0 + 161, T0 + 111)
    with pytest.raises(RolloutRefused, match="not paused"):
        resumed(back, T0 + 112, "again")
    assert paused(r, T0 + 12, "twice") is r


def test_a_manual_change_pauses_and_resume_commits_the_step_again() -> None:
    r = baking()
    assert next_move(r, T0 + 2, {"monolith": 100}) == "drift"
    stopped = drifted(r, T0 + 2, {"monolith": 100}, 5)
    assert stopped.state == "paused"
    assert stopped.message.startswith(
        "version 5 set it to monolith 100% while the rollout served monolith 90%, payment 10%"
    )
    again = resumed(stopped, T0 + 3, "go on")
    assert (again.state, again.step) == ("progressing", 0)
    assert next_move(again, T0 + 3, {"monolith": 100}) == "step"
    gone = drifted(r, T0 + 2, None, 6)
    assert "version 6 removed the route" in gone.message


def test_a_step_committed_but_not_recorded_is_adopted_not_taken_for_a_manual_change() -> None:
    """A driver that died between its commit and its record: the next one finds the route with
    exactly the step being committed."""
    from dataclasses import replace

    r = analysed(baking(), verdict(), T0 + 61, True, None)  # step 2 (50 %) is next
    assert next_move(r, T0 + 62, {"monolith": 50, "payment": 50}) == "adopt"
    assert next_move(r, T0 + 62, {"monolith": 60, "payment": 40}) == "drift"
    promoting = replace(baking(), promote=True)
    assert next_move(promoting, T0 + 2, {"payment": 100}) == "adopt"
    assert next_move(baking(), T0 + 2, {"monolith": 50, "payment": 50}) == "drift"


def test_abort_rolls_back_unless_nothing_moved_yet() -> None:
    pending = abort_requested(start(), T0 + 1, "not today (bo)")
    assert (pending.state, pending.end) == ("aborted", "aborted")
    r = abort_requested(baking(), T0 + 5, "not today (bo)")
    assert (r.state, r.end) == ("rolling-back", "aborted")
    assert next_move(r, T0 + 5, r.served) == "rollback"
    assert abort_requested(r, T0 + 6, "again") is r
    done = rolled_back(r, T0 + 7, 9, "aborted: not today")
    assert (done.state, done.weight, done.served) == ("aborted", 0, {"monolith": 100})
    with pytest.raises(RolloutRefused, match="nothing to abort"):
        abort_requested(done, T0 + 8, "again")


def test_promote_goes_to_the_last_step_from_any_running_state() -> None:
    r = promotion_requested(paused(baking(), T0 + 5, "wait"), T0 + 6, "ship it (bo)")
    assert (r.state, r.promote) == ("baking", True)
    assert next_move(r, T0 + 6, r.served) == "promote"
    with pytest.raises(RolloutRefused, match="cannot be promoted"):
        promotion_requested(rolled_back(abort_requested(r, T0, "x"), T0, 1, "x"), T0, "x")


@pytest.mark.parametrize(
    ("state", "changes", "at", "move"),
    [
        pytest.param("pending", {}, 0, "start", id="pending"),
        pytest.param("progressing", {"step": 0}, 0, "step", id="progressing"),
        pytest.param("progressing", {"step": 2}, 0, "promote", id="progressing-to-100"),
        pytest.param("waiting-promotion", {"step": 2}, 5, "promote", id="waiting"),
        pytest.param("waiting-promotion", {"step": 2}, 11, "check", id="waiting-check-due"),
        pytest.param("baking", {}, 5, "none", id="baking"),
        pytest.param("baking", {}, 11, "check", id="check-due"),
        pytest.param("baking", {}, 61, "analyse", id="bake-done"),
        pytest.param("rolling-back", {}, 0, "rollback", id="rolling-back"),
        pytest.param("succeeded", {}, 0, "none", id="final"),
    ],
)
def test_the_drivers_next_move(state: str, changes: dict[str, int], at: float, move: str) -> None:
    from dataclasses import replace

    r = replace(baking(), state=state, step=changes.get("step", 0))
    assert next_move(r, T0 + at, r.served) == move


def test_a_rollout_survives_its_store_and_hides_webhook_secrets() -> None:
    plan = RolloutPlan.model_validate(
        {"to": "payment", "webhooks": [{"kind": "rollback", "url": "https://chat.test/T/s3cret"}]}
    )
    r = analysed(
        stepped(start(plan), 10, 4, T0 + 1, {"compared": 1, "differed": 0}),
        verdict(),
        T0 + 5,
        False,
        None,
    )
    again = Rollout.from_stored(json.loads(json.dumps(r.stored())))
    assert again == r
    shown = r.as_dict()
    assert shown["webhooks"] == [{"kind": "rollback", "url": "https://chat.test/…", "timeout": 5.0}]
    assert "s3cret" not in json.dumps(shown)
    assert shown["from"] == "monolith"
    assert shown["bake_seconds"] == 120.0


def test_the_history_keeps_the_start_and_the_latest_events() -> None:
    r = start()
    for i in range(MAX_HISTORY + 10):
        r = noted(r, T0 + i, "waiting", f"event {i}")
    assert len(r.history) == MAX_HISTORY
    assert r.history[0].event == "started"
    assert r.history[-1].message == f"event {MAX_HISTORY + 9}"
