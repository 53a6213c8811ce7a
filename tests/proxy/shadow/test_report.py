"""Shadow results per route: counting, noise learned from two primary answers, merging across
workers, the JSON form and the terminal report."""

from __future__ import annotations

import json

import pytest

from proxy.shadow.compare import EXAMPLE_CHARS, Difference, Verdict
from proxy.shadow.report import (
    EXAMPLES,
    MAX_FIELDS,
    MAX_SIGNATURES,
    MIN_NOISE_HITS,
    OTHER_FIELDS,
    Tally,
    render,
    summarise,
)


def verdict(*fields: str, compared_body: bool = True) -> Verdict:
    return Verdict(tuple(Difference(f, f"p-{f}", f"c-{f}") for f in fields), compared_body)


def tally_of(*verdicts: Verdict) -> Tally:
    tally = Tally()
    for v in verdicts:
        tally.add(v)
    return tally


def add_noise(tally: Tally, hits: int, samples: int, name: str) -> None:
    """`samples` requests answered twice by the primary, the first `hits` differing in `name`."""
    for i in range(samples):
        tally.add_noise(frozenset({name}) if i < hits else frozenset())


def field_counts(summary: dict[str, object]) -> dict[str, int]:
    entries = summary["fields"]
    assert isinstance(entries, list)
    return {entry["field"]: entry["count"] for entry in entries}


def test_a_summary_counts_mismatched_requests_and_fields() -> None:
    tally = tally_of(verdict(), verdict("status"), verdict("status", "$.a"), verdict())
    summary = summarise("payments", tally)
    assert summary["compared"] == 4
    assert summary["mismatched"] == 2
    assert summary["mismatch_rate"] == 0.5
    assert field_counts(summary) == {"status": 2, "$.a": 1}
    assert [e["field"] for e in summary["fields"]] == ["status", "$.a"]  # most frequent first
    assert summary["fields"][0]["examples"][0] == {"primary": "p-status", "candidate": "c-status"}


def test_nothing_compared_is_a_zero_rate() -> None:
    summary = summarise("payments", Tally())
    assert summary["mismatch_rate"] == 0.0
    assert summary["fields"] == []


def test_failures_drops_and_truncated_bodies_are_counted() -> None:
    tally = tally_of(verdict(compared_body=False))
    tally.add_failure("timeout")
    tally.add_failure("timeout")
    tally.add_failure("connect-failure")
    tally.add_dropped(3)
    summary = summarise("payments", tally)
    assert summary["failed"] == {"connect-failure": 1, "timeout": 2}
    assert summary["dropped"] == 3
    assert summary["skipped_truncated"] == 1


def test_examples_keep_the_first_ones_seen() -> None:
    tally = Tally()
    for i in range(5):
        tally.add(Verdict((Difference("$.a", str(i), "x"),), True))
    assert [p for p, _ in tally.examples["$.a"]] == ["0", "1", "2"]
    assert len(tally.examples["$.a"]) == EXAMPLES


def test_a_field_learned_as_noise_leaves_the_fields_and_the_mismatch_count() -> None:
    tally = tally_of(
        verdict("$.updated_at"), verdict("$.updated_at", "$.total"), verdict("$.updated_at")
    )
    assert summarise("r", tally)["mismatched"] == 3
    add_noise(tally, MIN_NOISE_HITS, 4, "$.updated_at")
    summary = summarise("r", tally)
    assert field_counts(summary) == {"$.total": 1}
    assert summary["mismatched"] == 1  # only the request that also differed in $.total
    assert summary["noise"] == [{"field": "$.updated_at", "count": MIN_NOISE_HITS}]
    assert summary["noise_samples"] == 4


def test_a_field_differing_far_more_than_between_primaries_is_no_noise() -> None:
    tally = tally_of(*[verdict("$.total")] * 10)
    add_noise(tally, 3, 30, "$.total")
    # 100 % of candidate answers differ, 10 % of primary pairs: a regression, not noise.
    summary = summarise("r", tally)
    assert field_counts(summary) == {"$.total": 10}
    assert summary["noise"] == []


def test_a_field_differing_between_primaries_half_the_time_is_always_noise() -> None:
    tally = tally_of(*[verdict("$.request_id")] * 10)
    add_noise(tally, MIN_NOISE_HITS, 2 * MIN_NOISE_HITS, "$.request_id")
    assert summarise("r", tally)["mismatched"] == 0


def test_one_coincidental_difference_between_primaries_is_no_noise() -> None:
    """A user's edit between the two requests to the primary: 1 of 100 noise samples differs in
    $.x, as do 10 of 1,000 candidate answers. 1 % >= half of 1 %, but one hit proves nothing:
    the 10 differences are reported."""
    tally = tally_of(*[verdict("$.x")] * 10, *[verdict()] * 990)
    add_noise(tally, 1, 100, "$.x")
    summary = summarise("r", tally)
    assert summary["noise"] == []
    assert summary["mismatched"] == 10
    assert field_counts(summary) == {"$.x": 10}


@pytest.mark.parametrize(
    ("hits", "noise"), [(1, False), (MIN_NOISE_HITS - 1, False), (MIN_NOISE_HITS, True)]
)
def test_a_field_is_noise_from_min_noise_hits_on(hits: int, noise: bool) -> None:
    """Even a field differing in every noise sample needs MIN_NOISE_HITS of them."""
    tally = tally_of(*[verdict("$.at")] * 10)
    add_noise(tally, hits, hits, "$.at")
    summary = summarise("r", tally)
    assert (summary["noise"] != []) is noise
    assert summary["mismatched"] == (0 if noise else 10)


def test_noise_hits_add_up_across_merged_tallies() -> None:
    """Hits learned by different workers count together once merged."""
    workers = [tally_of(verdict("$.at")) for _ in range(MIN_NOISE_HITS)]
    for tally in workers:
        add_noise(tally, 1, 1, "$.at")
        assert summarise("r", tally)["mismatched"] == 1
    merged = Tally()
    for tally in workers:
        merged.merge(tally)
    assert summarise("r", merged)["mismatched"] == 0


def test_merging_tallies_equals_adding_everything_into_one() -> None:
    first = [verdict("status"), verdict("$.a", "$.b"), verdict()]
    second = [verdict("$.a", "$.b"), verdict("$.c", compared_body=False)]
    left, right = tally_of(*first), tally_of(*second)
    left.add_failure("timeout")
    right.add_failure("timeout")
    right.add_dropped()
    left.add_noise(frozenset({"$.c"}))
    right.add_noise(frozenset())
    left.merge(right)

    together = tally_of(*first, *second)
    together.add_failure("timeout")
    together.add_failure("timeout")
    together.add_dropped()
    together.add_noise(frozenset({"$.c"}))
    together.add_noise(frozenset())
    assert left == together
    assert summarise("r", left) == summarise("r", together)


def test_a_tally_round_trips_through_json() -> None:
    tally = tally_of(verdict("status", "$.a"), verdict("$.a"), verdict(compared_body=False))
    tally.add_failure("timeout")
    tally.add_dropped(2)
    tally.add_noise(frozenset({"$.a"}))
    assert Tally.from_dict(json.loads(json.dumps(tally.to_dict()))) == tally


def test_a_tally_from_partial_data_counts_missing_keys_as_zero() -> None:
    tally = Tally.from_dict({"compared": 3})
    assert tally.compared == 3
    assert tally.failed == {}
    assert summarise("r", tally)["mismatched"] == 0


def test_fields_past_the_bound_are_counted_together() -> None:
    tally = tally_of(*[verdict(f"$.f{i}") for i in range(MAX_FIELDS)])
    tally.add(verdict("$.late"))
    tally.add(verdict("$.later"))
    assert "$.late" not in tally.differed
    assert tally.differed[OTHER_FIELDS] == 2
    assert tally.examples[OTHER_FIELDS][0] == ("$.late: p-$.late", "c-$.late")
    assert summarise("r", tally)["mismatched"] == MAX_FIELDS + 2


def test_signatures_past_the_bound_still_count_as_mismatched() -> None:
    tally = tally_of(*[verdict("$.a", f"$.f{i % 50}", f"$.g{i // 50}") for i in range(250)])
    assert len(tally.signatures) == MAX_SIGNATURES
    assert summarise("r", tally)["mismatched"] == 250


def test_examples_in_a_summary_stay_bounded() -> None:
    long = "x" * (EXAMPLE_CHARS - 1) + "…"
    tally = tally_of(Verdict((Difference("$.text", long, long),), True))
    (entry,) = summarise("r", tally)["fields"]
    assert len(entry["examples"][0]["primary"]) == EXAMPLE_CHARS


def test_summary_lists_at_most_top_fields() -> None:
    tally = tally_of(*[verdict(f"$.f{i}") for i in range(20)])
    assert len(summarise("r", tally, top=5)["fields"]) == 5


def test_render_shows_the_numbers_an_example_and_the_noise() -> None:
    tally = tally_of(*[verdict()] * 6, verdict("$.total", "$.at"), verdict("$.at"))
    tally.add_failure("timeout")
    add_noise(tally, MIN_NOISE_HITS, MIN_NOISE_HITS, "$.at")
    text = render([summarise("payments", tally)])
    lines = text.splitlines()
    assert lines[0] == "payments: 8 compared, 12.5 % differ (1), 1 failed (timeout 1), 0 dropped"
    assert "$.total: 1 (12.5 %)" in text
    assert "p-$.total" in text
    assert "c-$.total" in text
    assert "noise (ignored): $.at" in text


def test_render_with_nothing_compared_says_so() -> None:
    assert render([]) == "no shadow comparisons yet"


def test_render_has_no_terminal_escapes() -> None:
    tally = tally_of(Verdict((Difference("$.s", "\x1b[31m", "\x9b2J"),), True))
    text = render([summarise("r\x1b", tally)])
    assert "\x1b" not in text
    assert "\x9b" not in text
