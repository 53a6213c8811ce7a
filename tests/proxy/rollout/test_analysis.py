"""A step's analysis: each check passing and failing on its threshold, quiet steps, the shadow
and the gate, from numbers alone."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.dataplane.armstats import ArmSummary
from proxy.rollout.analysis import Analysis, analyse
from proxy.table.rollout import Thresholds
from tests.proxy.rollout.support import Answer, arm

RULES = Thresholds()


def run(
    legacy: ArmSummary | None,
    new: ArmSummary | None,
    *,
    shadow: dict[str, Any] | None = None,
    gates: list[Answer] | None = None,
    rules: Thresholds = RULES,
) -> Analysis:
    arms = {name: a for name, a in (("monolith", legacy), ("payment", new)) if a is not None}
    return analyse(rules, arms, "monolith", "payment", shadow, gates or [])


def check(analysis: Analysis, name: str) -> dict[str, Any]:
    found = [c.as_dict() for c in analysis.checks if c.name == name]
    assert len(found) == 1, analysis.checks
    return found[0]


def test_equal_arms_pass_every_check() -> None:
    analysis = run(arm(200, 1), arm(100, 0))
    assert (analysis.passed, analysis.quiet) == (True, False)
    names = [c.name for c in analysis.checks]
    assert names == ["requests", "error_rate_delta", "p95_ratio", "p99_ratio", "gate"]
    assert analysis.why() == "every check passed"
    assert analysis.arms["payment"]["requests"] == 100
    assert analysis.as_dict()["checks"][0]["name"] == "requests"


@pytest.mark.parametrize(
    ("legacy_errors", "new_errors", "passed", "value"),
    [
        pytest.param(0, 1, True, 0.01, id="one-point-is-the-limit"),
        pytest.param(0, 2, False, 0.02, id="two-points-fail"),
        pytest.param(5, 6, True, 0.01, id="a-difference-not-a-ratio"),
        pytest.param(10, 0, True, -0.1, id="better-than-legacy"),
    ],
)
def test_error_rate_is_a_difference_of_points(
    legacy_errors: int, new_errors: int, passed: bool, value: float
) -> None:
    analysis = run(arm(100, legacy_errors), arm(100, new_errors))
    found = check(analysis, "error_rate_delta")
    assert (found["passed"], found["value"], found["threshold"]) == (passed, value, 0.01)
    assert analysis.passed is passed
    if not passed:
        assert "error rate 2.00% on payment vs 0.00% on monolith" in analysis.why()
        assert "(at most 1.00)" in analysis.why()


@pytest.mark.parametrize(
    ("which", "legacy", "new", "passed"),
    [
        pytest.param("p95", arm(100, p95=0.1), arm(100, p95=0.15), True, id="p95-at-1.5"),
        pytest.param("p95", arm(100, p95=0.1), arm(100, p95=0.16), False, id="p95-over"),
        pytest.param("p99", arm(100, p99=0.1), arm(100, p99=0.2), True, id="p99-at-2"),
        pytest.param("p99", arm(100, p99=0.1), arm(100, p99=0.21), False, id="p99-over"),
    ],
)
def test_latency_ratios_against_their_thresholds(
    which: str, legacy: ArmSummary, new: ArmSummary, passed: bool
) -> None:
    analysis = run(legacy, new)
    assert check(analysis, f"{which}_ratio")["passed"] is passed
    assert analysis.passed is passed


def test_latencies_under_the_floor_are_not_a_regression() -> None:
    """1 ms against 3 ms is three times, and nothing a user sees: both count as 25 ms."""
    analysis = run(arm(100, p95=0.001, p99=0.001), arm(100, p95=0.003, p99=0.004))
    assert check(analysis, "p95_ratio")["value"] == 1.0
    assert analysis.passed
    strict = Thresholds(latency_floor=0.0)
    assert not run(arm(100, p95=0.001), arm(100, p95=0.003), rules=strict).passed


@pytest.mark.parametrize(
    ("legacy", "new"),
    [
        pytest.param(arm(19), arm(500), id="legacy-short"),
        pytest.param(arm(500), arm(3, errors=3, p95=9.0), id="new-short-however-bad"),
        pytest.param(arm(500), None, id="new-absent"),
        pytest.param(None, None, id="no-traffic"),
    ],
)
def test_a_quiet_step_neither_passes_nor_fails(
    legacy: ArmSummary | None, new: ArmSummary | None
) -> None:
    analysis = run(legacy, new)
    assert (analysis.passed, analysis.quiet) == (False, True)
    assert [c.name for c in analysis.checks] == ["requests", "gate"]
    assert "too little traffic" in analysis.why()
    assert "(each arm needs 20)" in analysis.why()


def test_a_closed_gate_fails_even_a_quiet_step() -> None:
    closed = [Answer("payment", False, "lag 12s over 5s")]
    analysis = run(arm(3), arm(3), gates=closed)
    assert (analysis.passed, analysis.quiet) == (False, False)
    assert check(analysis, "gate")["message"] == "gate of payment: closed: lag 12s over 5s"
    assert analysis.gates == [{"upstream": "payment", "open": False, "reasons": "lag 12s over 5s"}]
    opened = run(arm(100), arm(100), gates=[Answer("payment", True)])
    assert opened.passed
    assert check(opened, "gate")["value"] == 1


@pytest.mark.parametrize(
    ("compared", "differed", "passed", "value"),
    [
        pytest.param(100, 1, True, 0.01, id="at-the-threshold"),
        pytest.param(100, 2, False, 0.02, id="over"),
        pytest.param(19, 19, True, None, id="too-few-to-judge"),
        pytest.param(0, 0, True, None, id="nothing-compared"),
    ],
)
def test_the_shadow_mismatch_of_a_shadowed_route(
    compared: int, differed: int, passed: bool, value: float | None
) -> None:
    shadow = {"compared": compared, "differed": differed}
    analysis = run(arm(100), arm(100), shadow=shadow)
    found = check(analysis, "shadow_mismatch")
    assert (found["passed"], found["value"]) == (passed, value)
    assert analysis.passed is passed
    assert analysis.shadow == shadow


def test_a_shadow_over_its_threshold_fails_a_quiet_step_too() -> None:
    analysis = run(arm(2), arm(2), shadow={"compared": 50, "differed": 10})
    assert (analysis.passed, analysis.quiet) == (False, False)
    assert "shadow: 10 of 50 copies differed (20.00%, at most 1.00%)" in analysis.why()
