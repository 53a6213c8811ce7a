"""A rollout's transitions, and the driver's next move. Pure: every function takes the time it
may need and returns a new Rollout; the driver (driver.py) does the I/O between them.

States (Flagger's and Argo Rollouts' phases, in the words the CLI prints):

    pending ──► progressing ──► baking ──► progressing ──► … ──► succeeded (at 100 %)
      │              │  ▲          │ ▲
      │              ▼  │          │ └─ quiet: bakes again (up to quiet_limit)
      │     waiting-promotion      └─── failed analyses ≥ threshold ──► rolling-back ──► rolled-back
      └─► failed (pre-rollout refused, the first step refused)
    any active state ◄──► paused (pause / resume; a manual change of the route pauses)
    abort: rolling-back ──► aborted

- `step` is the index of the step being baked (baking) or to be committed next (progressing,
  waiting-promotion); `weight` is the new upstream's share as served now; `served` the shares
  the rollout last put in place, which the route must still have: anything else is somebody's
  manual change, and the rollout pauses rather than fight it (Flagger and Argo Rollouts leave
  a rollout a human took over alone). Resuming it puts its step back (`served` is emptied:
  nothing is expected of the route until the step is committed again).
- The bake clock is `due` (when the step's analysis is due); a pause stops it: resuming moves
  `step_started`, `due` and `next_check` on by the time paused, so a step bakes its full time
  however often it is paused, and a restart of every replica continues from the recorded times.
- A rollback always ends where the route was before the rollout (`original`, from the version
  the rollout started on); an abort is a rollback on request and ends `aborted`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from proxy.rollout.model import (
    FINAL,
    MAX_HISTORY,
    Event,
    Rollout,
    RolloutRefused,
    original_shares,
    original_weight,
    step_shares,
)

if TYPE_CHECKING:
    from proxy.rollout.analysis import Analysis


# --- transitions ------------------------------------------------------------------------------
def noted(
    r: Rollout,
    now: float,
    event: str,
    message: str,
    *,
    version: int | None = None,
    analysis: dict[str, Any] | None = None,
    **changes: Any,
) -> Rollout:
    """`r` with `changes`, its message and an event in its history."""
    entry = Event(now, event, changes.get("step", r.step), changes.get("weight", r.weight))
    entry = replace(entry, message=message, version=version, analysis=analysis)
    history = (*r.history, entry)
    if len(history) > MAX_HISTORY:
        history = (history[0], *history[-(MAX_HISTORY - 1) :])
    return replace(r, **changes, message=message, updated=now, history=history)


def remarked(r: Rollout, now: float, event: str, message: str) -> Rollout:
    """`r` with an event in its history that leaves its message (what it is at) as it was:
    a notice's answer after a rollback must not hide why it rolled back."""
    return replace(noted(r, now, event, message), message=r.message)


def waiting(r: Rollout, now: float, message: str, state: str | None = None) -> Rollout | None:
    """`r` waiting for something (a webhook, a store): a new event only when the reason for
    waiting changes; None when nothing changed (nothing to write)."""
    target = state or r.state
    if r.message == message and r.state == target:
        return None
    return noted(r, now, "waiting", message, state=target)


def stepped(
    r: Rollout, weight: int, version: int, now: float, baseline: dict[str, int] | None
) -> Rollout:
    """Step `r.step` (the new upstream at `weight` %) committed as `version`: its bake starts;
    at 100 % the rollout has succeeded. The facts are recorded whatever happened to `r`
    meanwhile (paused, aborted): the state keeps what a person asked for."""
    rules = r.plan.analysis
    label = r.label()
    shares = step_shares(r.source, r.to, weight)
    if weight >= 100 and r.state not in {"rolling-back", *FINAL}:
        message = f"{label}: 100% to {r.to}: the route has moved"
        return noted(
            r,
            now,
            "succeeded",
            message,
            version=version,
            state="succeeded",
            promote=False,
            step=len(r.steps) - 1,
            weight=weight,
            served=shares,
        )
    changes: dict[str, Any] = {
        "weight": weight,
        "served": shares,
        "step_started": now,
        "due": now + r.plan.bake,
        "next_check": now + rules.interval if rules.interval else None,
        "failures": 0,
        "quiet_bakes": 0,
        "shadow_baseline": baseline,
    }
    if r.state == "paused":
        changes["paused_from"] = "baking"
        changes["paused_at"] = now
    elif r.state not in {"rolling-back", *FINAL}:
        changes["state"] = "baking"
    message = f"{label}: {weight}% to {r.to}, baking {r.plan.bake:g}s"
    return noted(r, now, "step", message, version=version, **changes)


def rolling_back(r: Rollout, now: float, why: str, end: str = "rolled-back") -> Rollout:
    """`r` to be rolled back (ending `end`): the driver puts the route back as it was."""
    event = "aborting" if end == "aborted" else "rolling-back"
    return noted(r, now, event, why, state="rolling-back", end=end, promote=False)


def rolled_back(r: Rollout, now: float, version: int | None, message: str) -> Rollout:
    end = r.end or "rolled-back"
    return noted(
        r,
        now,
        end,
        message,
        version=version,
        state=end,
        weight=original_weight(r),
        served=original_shares(r),
        paused_at=None,
        paused_from=None,
    )


def failed(r: Rollout, now: float, message: str) -> Rollout:
    return noted(r, now, "failed", message, state="failed", promote=False)


def analysed(
    r: Rollout, analysis: Analysis, now: float, final: bool, shadow: dict[str, int] | None
) -> Rollout:
    """`r` after an analysis of its step: at the end of the bake (`final`) a pass moves on to
    the next step; during it only a failure counts. Quiet steps bake again up to quiet_limit;
    failures under `threshold` start the step's window again (`shadow`: the comparisons so far,
    the new window's baseline); at the threshold the rollout rolls back."""
    rules = r.plan.analysis
    record = {**analysis.as_dict(), "final": final, "time": now}
    base: dict[str, Any] = {"last_analysis": record}
    if r.plan.analysis.interval:
        base["next_check"] = now + rules.interval
    if analysis.passed:
        if not final:
            return replace(r, **base, updated=now)
        message = f"{r.label()} passed: {analysis.why()}"
        judged = noted(r, now, "passed", message, analysis=record, **base)
        return replace(judged, state="progressing", step=r.step + 1)
    if analysis.quiet:
        if not final:
            return replace(r, **base, updated=now)
        if r.quiet_bakes < rules.quiet_limit:
            message = f"{r.label()} quiet, baking again: {analysis.why()}"
            return noted(
                r,
                now,
                "quiet",
                message,
                analysis=record,
                quiet_bakes=r.quiet_bakes + 1,
                due=now + r.plan.bake,
                **base,
            )
    failures = r.failures + 1
    why = f"{r.label()} ({r.weight}% to {r.to}) failed: {analysis.why()}"
    if failures >= rules.threshold:
        failed_r = noted(r, now, "failed-analysis", why, analysis=record, failures=failures, **base)
        return rolling_back(failed_r, now, why)
    return noted(
        r,
        now,
        "failed-analysis",
        f"{why} ({failures} of {rules.threshold}: the step's window starts again)",
        analysis=record,
        failures=failures,
        quiet_bakes=0,
        step_started=now,
        due=now + r.plan.bake,
        shadow_baseline=shadow,
        **base,
    )


def paused(r: Rollout, now: float, why: str, again: str | None = None) -> Rollout:
    """`r` with its clock stopped; `again` is the state resume returns to (default: the one
    it had)."""
    if r.state == "paused":
        return r
    if not r.active or r.state == "rolling-back":
        raise RolloutRefused(f"the rollout of {r.route!r} is {r.state}: it cannot be paused")
    return noted(r, now, "paused", why, state="paused", paused_at=now, paused_from=again or r.state)


def resumed(r: Rollout, now: float, why: str) -> Rollout:
    """`r`'s clock running again from where it stopped."""
    if r.state != "paused":
        raise RolloutRefused(f"the rollout of {r.route!r} is {r.state}, not paused")
    gap = now - (r.paused_at or now)

    def later(at: float | None) -> float | None:
        return None if at is None else at + gap

    return noted(
        r,
        now,
        "resumed",
        why,
        state=r.paused_from or "progressing",
        paused_at=None,
        paused_from=None,
        step_started=later(r.step_started),
        due=later(r.due),
        next_check=later(r.next_check),
    )


def drifted(r: Rollout, now: float, shares: dict[str, int] | None, version: int) -> Rollout:
    """Somebody changed the route (version `version`) while `r` ran: paused; resuming commits
    its current step again."""
    what = "removed the route" if shares is None else f"set it to {_describe(shares)}"
    again = "pending" if r.state == "pending" else "progressing"
    message = (
        f"version {version} {what} while the rollout served {_describe(r.served)}: paused "
        "(resume to put its step back, abort to restore the route as it was)"
    )
    # Nothing is expected of the route any more: resuming commits the step as it is then.
    return replace(paused(r, now, message, again), served={})


def _describe(shares: dict[str, int]) -> str:
    return ", ".join(f"{name} {weight}%" for name, weight in shares.items())


def promotion_requested(r: Rollout, now: float, why: str) -> Rollout:
    if not r.active or r.state == "rolling-back":
        raise RolloutRefused(f"the rollout of {r.route!r} is {r.state}: it cannot be promoted")
    resumed_r = resumed(r, now, "resumed to promote") if r.state == "paused" else r
    return noted(resumed_r, now, "promote-requested", why, promote=True)


def abort_requested(r: Rollout, now: float, why: str) -> Rollout:
    if not r.active:
        raise RolloutRefused(f"the rollout of {r.route!r} is {r.state}: nothing to abort")
    if r.state == "rolling-back":
        return r
    if r.state == "pending" or (r.state == "paused" and r.paused_from == "pending"):
        return noted(r, now, "aborted", why, state="aborted", end="aborted")
    return rolling_back(r, now, why, end="aborted")


# --- what the driver does next ----------------------------------------------------------------
def next_move(r: Rollout, now: float, shares: dict[str, int] | None) -> str:
    """The driver's next move for `r`, given the shares the route is served with now (None: the
    route is gone): none, drift, adopt, rollback, start, step, promote, analyse, check."""
    if r.state in FINAL or r.state == "paused":
        return "none"
    if r.state == "rolling-back":
        return "rollback"
    if r.served and shares != r.served:
        return "adopt" if shares == _committing(r) else "drift"
    if r.state == "pending":
        return "start"
    if r.promote:
        return "promote"
    if r.state in {"progressing", "waiting-promotion"}:
        if r.state == "waiting-promotion" and _check_due(r, now):
            return "check"
        return "promote" if r.steps[r.step] >= 100 else "step"
    if r.due is not None and now >= r.due:
        return "analyse"
    return "check" if _check_due(r, now) else "none"


def _committing(r: Rollout) -> dict[str, int] | None:
    """The shares of the step `r` is about to commit (None: it is not committing one). A route
    found with them was committed by a driver that stopped before it could record it."""
    if r.promote:
        return step_shares(r.source, r.to, 100)
    if r.state in {"progressing", "waiting-promotion"}:
        return step_shares(r.source, r.to, r.steps[r.step])
    return None


def _check_due(r: Rollout, now: float) -> bool:
    return r.next_check is not None and now >= r.next_check and r.step_started is not None
