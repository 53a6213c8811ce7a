"""A rollout step's analysis: does the new upstream do as well as the legacy one did, on the same
traffic, in the same window? Pure: numbers in, a verdict out (no I/O, no clock).

Checks, each with its threshold (table/rollout.py's Thresholds, defaults in brackets):
- `requests`: each arm served at least `min_requests` [20] in the window. Fewer is a *quiet*
  step: it neither passes nor fails on the other arm checks, which are left out (a 1 % step at
  night must not pass on three requests, Flagger's "no values found").
- `error_rate_delta`: new minus legacy 5xx rate, at most `max_error_rate_delta` [0.01]. A
  difference, not a ratio: a legacy arm at 0 % makes every ratio infinite.
- `p95_ratio`, `p99_ratio`: new over legacy latency, at most `max_p95_ratio` [1.5] and
  `max_p99_ratio` [2.0]; each side counts as at least `latency_floor` [25 ms].
- `shadow_mismatch`: on a shadowed route, the share of the step's compared copies whose answer
  differed (noise left out), at most `max_shadow_mismatch` [0.01]; judged once the step has
  `min_requests` comparisons (fewer are reported, not judged).
- `gate`: the new upstream's cutover gate is open (it carries the data sync's lag and drift);
  a closed gate fails whatever the traffic says.

`passed`: every check passed. `quiet`: too few requests, and no other check failed (a closed
gate or a shadow over its threshold fails even a quiet step).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from proxy.table.rollout import Thresholds


class ArmSummaryLike(Protocol):
    """What the analysis reads of one arm (dataplane/armstats.py's ArmSummary)."""

    @property
    def requests(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def error_rate(self) -> float: ...
    @property
    def p95(self) -> float | None: ...
    @property
    def p99(self) -> float | None: ...


class GateAnswerLike(Protocol):
    """What the analysis reads of a gate's answer (table/gates.py's GateAnswer)."""

    @property
    def open(self) -> bool: ...
    def describe(self) -> str: ...
    def as_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Check:
    name: str
    value: float | None
    threshold: float | None
    passed: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "threshold": self.threshold,
            "passed": self.passed,
            "message": self.message,
        }


@dataclass(frozen=True)
class Analysis:
    passed: bool
    quiet: bool
    checks: list[Check]
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    shadow: dict[str, Any] | None = None
    gates: list[dict[str, Any]] = field(default_factory=list)

    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def why(self) -> str:
        """The failed checks in a line, as a rollback's reason says them."""
        return "; ".join(check.message for check in self.failed()) or "every check passed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "quiet": self.quiet,
            "checks": [check.as_dict() for check in self.checks],
            "arms": self.arms,
            "shadow": self.shadow,
            "gates": self.gates,
        }


def _arm_dict(arm: ArmSummaryLike | None) -> dict[str, Any]:
    if arm is None:
        return {"requests": 0, "errors": 0, "error_rate": 0.0, "p95": None, "p99": None}
    return {
        "requests": arm.requests,
        "errors": arm.errors,
        "error_rate": round(arm.error_rate, 6),
        "p95": arm.p95,
        "p99": arm.p99,
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _requests(rules: Thresholds, legacy: str, new: str, counts: dict[str, int]) -> Check:
    fewest = min(counts.values())
    if fewest >= rules.min_requests:
        message = f"{counts[new]} requests on {new}, {counts[legacy]} on {legacy}"
        return Check("requests", fewest, rules.min_requests, True, message)
    message = (
        f"too little traffic: {counts[new]} requests on {new}, {counts[legacy]} on {legacy} "
        f"(each arm needs {rules.min_requests})"
    )
    return Check("requests", fewest, rules.min_requests, False, message)


def _error_rate(
    rules: Thresholds, legacy: str, new: str, old: ArmSummaryLike, fresh: ArmSummaryLike
) -> Check:
    delta = round(fresh.error_rate - old.error_rate, 6)
    passed = delta <= rules.max_error_rate_delta
    message = (
        f"error rate {fresh.error_rate:.2%} on {new} vs {old.error_rate:.2%} on {legacy}: "
        f"{delta * 100:+.2f} points (at most {rules.max_error_rate_delta * 100:.2f})"
    )
    return Check("error_rate_delta", delta, rules.max_error_rate_delta, passed, message)


def _latency(
    rules: Thresholds,
    which: str,
    limit: float,
    legacy: str,
    new: str,
    old: float | None,
    fresh: float | None,
) -> Check:
    name = f"{which}_ratio"
    if old is None or fresh is None:
        return Check(name, None, limit, True, f"{which}: no latencies to compare")
    floor = rules.latency_floor
    ratio = round(max(fresh, floor) / max(old, floor, 1e-9), 4)
    passed = ratio <= limit
    message = (
        f"{which} {_ms(fresh)} on {new} vs {_ms(old)} on {legacy}: {ratio:.2f} times "
        f"(at most {limit:g})"
    )
    return Check(name, ratio, limit, passed, message)


def _shadow(rules: Thresholds, shadow: Mapping[str, Any]) -> Check:
    compared = int(shadow.get("compared", 0))
    differed = int(shadow.get("differed", 0))
    limit = rules.max_shadow_mismatch
    if compared < rules.min_requests:
        message = (
            f"shadow: {compared} copies compared in this step, {differed} differed "
            f"(judged from {rules.min_requests})"
        )
        return Check("shadow_mismatch", None, limit, True, message)
    rate = round(differed / compared, 6)
    passed = rate <= limit
    message = f"shadow: {differed} of {compared} copies differed ({rate:.2%}, at most {limit:.2%})"
    return Check("shadow_mismatch", rate, limit, passed, message)


def _gate(new: str, gates: Sequence[GateAnswerLike]) -> Check:
    closed = [answer for answer in gates if not answer.open]
    if closed:
        return Check("gate", 0, None, False, closed[0].describe())
    if not gates:
        return Check("gate", None, None, True, f"{new} has no cutover gate")
    return Check("gate", 1, None, True, "; ".join(answer.describe() for answer in gates))


def analyse(
    rules: Thresholds,
    arms: Mapping[str, ArmSummaryLike],
    legacy: str,
    new: str,
    shadow: Mapping[str, Any] | None,
    gates: Sequence[GateAnswerLike],
) -> Analysis:
    """The step's analysis from what the proxies measured on both arms in its window, the
    shadow's comparisons in it (None: the route is not shadowed) and the gates' answers."""
    old, fresh = arms.get(legacy), arms.get(new)
    counts = {legacy: old.requests if old else 0, new: fresh.requests if fresh else 0}
    checks = [_requests(rules, legacy, new, counts)]
    quiet = not checks[0].passed
    if not quiet and old is not None and fresh is not None:
        checks.append(_error_rate(rules, legacy, new, old, fresh))
        checks.append(_latency(rules, "p95", rules.max_p95_ratio, legacy, new, old.p95, fresh.p95))
        checks.append(_latency(rules, "p99", rules.max_p99_ratio, legacy, new, old.p99, fresh.p99))
    if shadow is not None:
        checks.append(_shadow(rules, shadow))
    checks.append(_gate(new, gates))
    others_failed = any(not check.passed for check in checks[1:])
    return Analysis(
        passed=all(check.passed for check in checks),
        quiet=quiet and not others_failed,
        checks=checks,
        arms={legacy: _arm_dict(old), new: _arm_dict(fresh)},
        shadow=dict(shadow) if shadow is not None else None,
        gates=[answer.as_dict() for answer in gates],
    )
