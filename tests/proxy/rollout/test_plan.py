"""A route's `rollout:` block: what it takes, what it refuses (with its line, as every table
problem), and how a command's flags go over it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from proxy.table.loader import TableInvalid, load_text
from proxy.table.rollout import RolloutPlan, Thresholds, resolve_plan, shown_url
from tests.proxy.rollout.support import routes_yaml


def problems(text: str) -> list[str]:
    with pytest.raises(TableInvalid) as refused:
        load_text(text)
    return refused.value.describe().splitlines()


def test_a_route_without_a_block_has_none_and_the_defaults_are_documented() -> None:
    assert load_text(routes_yaml()).routes[0].rollout is None
    plan = RolloutPlan()
    assert plan.steps == (1, 5, 25, 50, 100)
    assert plan.bake == 120.0
    assert plan.analysis == Thresholds(
        max_error_rate_delta=0.01,
        max_p95_ratio=1.5,
        max_p99_ratio=2.0,
        max_shadow_mismatch=0.01,
        min_requests=20,
        threshold=1,
        quiet_limit=3,
        interval=10.0,
        settle=5.0,
        latency_floor=0.025,
    )


def test_a_block_is_read_with_durations_and_webhooks() -> None:
    block = (
        "{to: payment, steps: [5, 50], bake: 2m, analysis: {max_p95_ratio: 1.2, interval: off, "
        'settle: 0, latency_floor: 10ms}, webhooks: [{kind: pre-rollout, url: "http://ci.test/go", '
        "timeout: 2s}]}"
    )
    plan = load_text(routes_yaml(rollout=block)).routes[0].rollout
    assert plan is not None
    assert plan.to == "payment"
    assert plan.steps == (5, 50, 100)  # the route ends moved: 100 is added
    assert plan.bake == 120.0
    assert (plan.analysis.max_p95_ratio, plan.analysis.interval) == (1.2, 0.0)
    assert (plan.analysis.settle, plan.analysis.latency_floor) == (0.0, 0.01)
    (hook,) = plan.webhooks
    assert (hook.kind, hook.url, hook.timeout) == ("pre-rollout", "http://ci.test/go", 2.0)
    assert plan.hooks("pre-rollout") == [hook]
    assert plan.hooks("rollback") == []


@pytest.mark.parametrize(
    ("block", "said"),
    [
        pytest.param("{steps: [50, 10]}", "steps grow strictly", id="shrinking"),
        pytest.param("{steps: [5, 5]}", "steps grow strictly", id="repeated"),
        pytest.param("{steps: [0, 50]}", "step 0 is not a weight within 1-100", id="zero"),
        pytest.param("{steps: [101]}", "step 101 is not a weight within 1-100", id="over"),
        pytest.param("{steps: []}", "name at least one step", id="none"),
        pytest.param("{bake: soon}", "'soon' is not a duration", id="bake"),
        pytest.param("{to: nowhere}", "rollout.to: unknown upstream 'nowhere'", id="to"),
        pytest.param("{analysis: {threshold: 0}}", "threshold", id="threshold"),
        pytest.param("{analysis: {max_p95_ratio: 0.5}}", "max_p95_ratio", id="ratio-below-1"),
        pytest.param("{analysis: {colour: red}}", "unknown field 'colour'", id="unknown-field"),
        pytest.param(
            '{webhooks: [{kind: pre-rollout, url: "http://169.254.169.254/x"}]}',
            "never webhooks",
            id="metadata-address",
        ),
        pytest.param(
            '{webhooks: [{kind: pre-rollout, url: "http://metadata.google.internal/x"}]}',
            "never webhooks",
            id="metadata-name",
        ),
        pytest.param(
            '{webhooks: [{kind: rollout, url: "http://user:pw@ci.test/x"}]}',
            "credentials do not belong in a webhook URL",
            id="credentials",
        ),
        pytest.param(
            '{webhooks: [{kind: rollout, url: "ftp://ci.test/x"}]}',
            "a webhook is an http:// or https:// URL",
            id="scheme",
        ),
        pytest.param(
            '{webhooks: [{kind: deploy, url: "http://ci.test/x"}]}', "kind", id="unknown-kind"
        ),
    ],
)
def test_a_bad_block_is_refused_with_its_line(block: str, said: str) -> None:
    lines = problems(routes_yaml(rollout=block))
    assert any(said in line and "routes.yaml:" in line for line in lines), lines
    assert all("routes[0].rollout" in line for line in lines), lines


def test_a_static_route_takes_no_rollout(tmp_path: Any) -> None:
    (tmp_path / "files").mkdir()
    text = routes_yaml().replace(
        "    to: monolith\n", "    static: {root: files}\n    rollout: {to: payment}\n"
    )
    with pytest.raises(TableInvalid) as refused:
        load_text(text, base=tmp_path)
    assert "a static route serves files itself: it takes no `rollout`" in str(refused.value)


def test_flags_go_over_the_block_and_the_result_is_checked_whole() -> None:
    block = RolloutPlan(to="payment", steps=(10, 50), bake=60.0)
    plan = resolve_plan(
        block,
        {"steps": [20, 40], "bake": "30s", "max_error_rate_delta": 0.05, "to": None},
    )
    assert (plan.to, plan.steps, plan.bake) == ("payment", (20, 40, 100), 30.0)
    assert plan.analysis.max_error_rate_delta == 0.05
    assert plan.analysis.max_p95_ratio == 1.5  # untouched ones keep the block's
    assert resolve_plan(None, {"to": "catalog"}).steps == (1, 5, 25, 50, 100)
    nested = resolve_plan(block, {"analysis": {"min_requests": 5}})
    assert nested.analysis.min_requests == 5
    with pytest.raises(ValidationError, match="colour"):
        resolve_plan(block, {"colour": "red"})
    with pytest.raises(ValidationError, match="steps grow strictly"):
        resolve_plan(block, {"steps": [50, 20]})


def test_status_shows_a_webhook_by_its_origin_only() -> None:
    assert shown_url("https://hooks.chat.test/services/T0/B0/s3cret") == "https://hooks.chat.test/…"
    assert shown_url("http://ci.test:8080/") == "http://ci.test:8080"
    assert shown_url("http://ci.test?token=x") == "http://ci.test/…"
