"""Per-arm statistics (pure): counts and errors per route and upstream in 5 s wall-clock
buckets, merged over every worker's document for a window; percentiles interpolated within the
histogram's buckets; fifteen minutes kept; a document that does not read is skipped."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from proxy.dataplane.armstats import (
    BOUNDS,
    BUCKET,
    KEEP,
    ArmStats,
    ArmSummary,
    arms_window,
    quantile,
    routes_window,
)

T0 = 1_000_000.0  # a bucket start (divisible by BUCKET)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def shared(stats: ArmStats) -> dict[str, Any]:
    """The document as another worker reads it: through JSON."""
    return dict(json.loads(json.dumps(stats.doc())))


def test_requests_and_errors_per_arm() -> None:
    stats = ArmStats(Clock())
    for status in (200, 201, 404, 499):
        stats.observe("payments", "monolith", status, 0.01)
    for status in (500, 502, 503, 504, 200):
        stats.observe("payments", "payment", status, 0.01)
    stats.observe("catalog", "monolith", 200, 0.01)
    routes = routes_window([shared(stats)], T0)
    assert {
        r: {u: (s.requests, s.errors) for u, s in arms.items()} for r, arms in routes.items()
    } == {
        "catalog": {"monolith": (1, 0)},
        "payments": {"monolith": (4, 0), "payment": (5, 4)},  # a 4xx or a 499 is no error
    }
    assert routes["payments"]["payment"].error_rate == pytest.approx(0.8)
    assert arms_window([shared(stats)], "payments", T0).keys() == {"monolith", "payment"}
    assert arms_window([shared(stats)], "nope", T0) == {}


def test_workers_documents_add_up() -> None:
    one, two = ArmStats(Clock()), ArmStats(Clock())
    for _ in range(3):
        one.observe("payments", "payment", 200, 0.02)
    two.observe("payments", "payment", 502, 0.02)
    two.observe("payments", "monolith", 200, 0.02)
    arms = arms_window([shared(one), shared(two)], "payments", T0)
    assert (arms["payment"].requests, arms["payment"].errors) == (4, 1)
    assert arms["monolith"].requests == 1


def test_a_window_takes_the_buckets_that_start_in_it() -> None:
    clock = Clock()
    stats = ArmStats(clock)
    for offset in (0, 5, 10, 14.9):  # buckets T0, T0+5, T0+10, T0+10
        clock.now = T0 + offset
        stats.observe("r", "u", 200, 0.01)
    docs = [shared(stats)]
    assert arms_window(docs, "r", T0)["u"].requests == 4
    assert arms_window(docs, "r", T0 + 5)["u"].requests == 3
    assert arms_window(docs, "r", T0 + 1)["u"].requests == 3  # T0's bucket starts before
    assert arms_window(docs, "r", T0, T0 + 10)["u"].requests == 2  # until is excluded
    assert arms_window(docs, "r", T0 + 15) == {}


def test_summary_of_an_arm_without_requests() -> None:
    empty = ArmSummary(0, 0, None, None, None)
    assert empty.error_rate == 0.0
    assert empty.as_dict() == {
        "requests": 0,
        "errors": 0,
        "error_rate": 0.0,
        "p50": None,
        "p95": None,
        "p99": None,
    }


def test_bounds_are_log_spaced_from_a_millisecond_to_a_minute() -> None:
    assert BOUNDS[0] == 0.001
    assert BOUNDS[-1] == 60.0
    assert len(BOUNDS) == 30
    ratios = [b / a for a, b in itertools.pairwise(BOUNDS)]
    assert all(1.4 < r < 1.5 for r in ratios)


def test_percentiles_interpolate_within_the_bucket_as_histogram_quantile() -> None:
    stats = ArmStats(Clock())
    for _ in range(100):
        stats.observe("r", "u", 200, 0.010)  # all in (0.00974, 0.0142]
    arm = arms_window([shared(stats)], "r", T0)["u"]
    lower, upper = 0.00974, 0.0142
    assert arm.p50 == pytest.approx(lower + (upper - lower) * 0.5, abs=1e-6)
    assert arm.p95 == pytest.approx(lower + (upper - lower) * 0.95, abs=1e-6)
    assert arm.p99 == pytest.approx(lower + (upper - lower) * 0.99, abs=1e-6)


def test_a_slow_tail_shows_in_p99_not_in_p50() -> None:
    stats = ArmStats(Clock())
    for _ in range(97):
        stats.observe("r", "u", 200, 0.005)
    for _ in range(3):
        stats.observe("r", "u", 200, 2.0)
    arm = arms_window([shared(stats)], "r", T0)["u"]
    assert arm.p50 is not None
    assert arm.p99 is not None
    assert 0.00456 < arm.p50 <= 0.00667
    assert 1.97 < arm.p99 <= 2.88


def test_latency_beyond_the_last_bound_is_reported_as_the_last_bound() -> None:
    stats = ArmStats(Clock())
    stats.observe("r", "u", 504, 300.0)
    assert arms_window([shared(stats)], "r", T0)["u"].p50 == 60.0
    assert quantile(0.5, [0] * (len(BOUNDS) + 1)) is None


def test_the_first_bucket_starts_at_zero() -> None:
    histogram = [0] * (len(BOUNDS) + 1)
    histogram[0] = 10
    assert quantile(0.5, histogram) == pytest.approx(0.0005)


def test_fifteen_minutes_of_buckets_are_kept() -> None:
    clock = Clock()
    stats = ArmStats(clock)
    for step in range(400):  # 2,000 s of traffic, a request every bucket
        clock.now = T0 + step * BUCKET
        stats.observe("r", "u", 200, 0.01)
    doc = stats.doc()
    assert len(doc["buckets"]) == KEEP // BUCKET + 1
    oldest = min(int(k) for k in doc["buckets"]) * BUCKET
    assert oldest == clock.now - KEEP
    assert arms_window([doc], "r", 0)["u"].requests == KEEP // BUCKET + 1


def test_an_idle_worker_shares_no_aged_buckets() -> None:
    clock = Clock()
    stats = ArmStats(clock)
    stats.observe("r", "u", 200, 0.01)
    clock.now += KEEP + BUCKET
    assert stats.doc()["buckets"] == {}


def test_a_clock_that_goes_back_counts_in_the_newest_bucket() -> None:
    clock = Clock(T0 + 10)
    stats = ArmStats(clock)
    stats.observe("r", "u", 200, 0.01)
    clock.now = T0  # NTP stepped the clock back
    stats.observe("r", "u", 200, 0.01)
    assert list(stats.doc()["buckets"]) == [str(int((T0 + 10) // BUCKET))]
    assert arms_window([stats.doc()], "r", T0 + 10)["u"].requests == 2


def test_later_requests_never_change_a_closed_bucket() -> None:
    clock = Clock()
    stats = ArmStats(clock)
    stats.observe("r", "u", 200, 0.01)
    clock.now += BUCKET
    closed = str(int(T0 // BUCKET))
    before = shared(stats)["buckets"][closed]
    stats.observe("r", "u", 500, 0.01)
    stats.observe("r", "other", 200, 0.01)
    assert (
        shared(stats)["buckets"][closed]
        == before
        == {
            "arms": {"r": {"u": [1, 0, {"7": 1}]}},
            "paths": {},
        }
    )


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param({"v": 2, "bucket": 5, "buckets": {"200000": {}}}, id="another-version"),
        pytest.param({"v": 1, "bucket": "x", "buckets": {}}, id="bad-bucket-size"),
        pytest.param({"v": 1, "bucket": 5, "buckets": []}, id="buckets-not-a-map"),
        pytest.param({"v": 1, "bucket": 5, "buckets": {"k": {}}}, id="bad-key"),
        pytest.param(
            {"v": 1, "bucket": 5, "buckets": {"200000": {"arms": {"r": {"u": "x"}}}}},
            id="bad-cell",
        ),
        pytest.param(
            {"v": 1, "bucket": 5, "buckets": {"200000": {"arms": {"r": {"u": [1, 0, {"99": 1}]}}}}},
            id="bound-out-of-range",
        ),
        pytest.param({"v": 1, "bucket": 5, "buckets": {"200000": {"arms": []}}}, id="bad-arms"),
    ],
)
def test_a_document_that_does_not_read_adds_nothing(doc: dict[str, Any]) -> None:
    stats = ArmStats(Clock())
    stats.observe("r", "u", 200, 0.01)
    arms = arms_window([doc, shared(stats)], "r", 0)
    assert arms["u"].requests == 1
