"""Comparing a primary's answer with a candidate's: which fields differ, how they are named
and shown, and what is never compared or shown."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxy.shadow.compare import (
    EXAMPLE_CHARS,
    MAX_DIFFERENCES,
    Answer,
    Difference,
    Rules,
    compare,
    differing_fields,
)

JSON = ((b"content-type", b"application/json"),)


def answer(
    body: Any = None,
    status: int = 200,
    headers: tuple[tuple[bytes, bytes], ...] = JSON,
    truncated: bool = False,
) -> Answer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Answer(status, headers, raw, truncated)


def fields(primary: Answer, candidate: Answer, rules: Rules | None = None) -> list[str]:
    return [d.field for d in compare(primary, candidate, rules or Rules()).differences]


def only(primary: Answer, candidate: Answer, rules: Rules | None = None) -> Difference:
    (difference,) = compare(primary, candidate, rules or Rules()).differences
    return difference


def test_identical_answers_do_not_differ() -> None:
    body = {"id": 7, "items": [{"amount": 1.5}], "note": None}
    verdict = compare(answer(body), answer(body), Rules())
    assert verdict.differences == ()
    assert verdict.compared_body


def test_a_status_difference_is_reported() -> None:
    assert only(answer({}, status=200), answer({}, status=500)) == Difference(
        "status", "200", "500"
    )


def test_listed_headers_are_compared_by_value_and_others_are_not() -> None:
    rules = Rules(headers=("Cache-Control",))
    primary = answer({}, headers=(*JSON, (b"cache-control", b"no-store"), (b"date", b"Mon")))
    candidate = answer({}, headers=(*JSON, (b"date", b"Tue")))
    assert only(primary, candidate, rules) == Difference(
        "header:cache-control", "no-store", "<absent>"
    )


def test_repeated_header_fields_are_compared_joined() -> None:
    rules = Rules(headers=("vary",))
    split = answer({}, headers=((b"vary", b"accept"), (b"vary", b"origin")))
    joined = answer({}, headers=((b"vary", b"accept, origin"),))
    assert fields(split, joined, rules) == []


def test_a_json_field_difference_is_named_by_its_normalised_path() -> None:
    primary = answer({"items": [{"amount": 10}, {"amount": 20}]})
    candidate = answer({"items": [{"amount": 10}, {"amount": 21}]})
    assert only(primary, candidate) == Difference("$.items[*].amount", "20", "21")


def test_one_field_differing_in_many_elements_is_listed_once() -> None:
    primary = answer({"items": [{"amount": i} for i in range(50)]})
    candidate = answer({"items": [{"amount": -i - 1} for i in range(50)]})
    assert only(primary, candidate) == Difference("$.items[*].amount", "0", "-1")


def test_keys_that_are_not_identifiers_are_quoted_in_paths() -> None:
    assert fields(answer({"we ird": {"a-b": 1}}), answer({"we ird": {"a-b": 2}})) == [
        '$["we ird"]["a-b"]'
    ]


def test_a_reordered_array_differs_unless_its_path_is_unordered() -> None:
    primary, candidate = answer({"tags": ["a", "b", "c"]}), answer({"tags": ["c", "a", "b"]})
    assert fields(primary, candidate) == ["$.tags[*]"]
    assert fields(primary, candidate, Rules(unordered=("$.tags",))) == []


def test_an_unordered_array_shows_the_elements_found_on_one_side_only() -> None:
    primary = answer({"tags": ["a", "b", "b"]})
    candidate = answer({"tags": ["b", "c", "a"]})
    assert only(primary, candidate, Rules(unordered=("$.tags",))) == Difference(
        "$.tags", '["b"]', '["c"]'
    )


def test_unordered_elements_compare_without_their_ignored_fields() -> None:
    rules = Rules(unordered=("$.items",), ignore=("$.items[*].seen_at",))
    primary = answer({"items": [{"id": 1, "seen_at": 5}, {"id": 2, "seen_at": 6}]})
    candidate = answer({"items": [{"id": 2, "seen_at": 9}, {"id": 1, "seen_at": 8}]})
    assert fields(primary, candidate, rules) == []


def test_numbers_are_equal_within_the_tolerance() -> None:
    rules = Rules(tolerance=0.01)
    assert fields(answer({"total": 10.0}), answer({"total": 10.005}), rules) == []
    assert fields(answer({"total": 10.0}), answer({"total": 10.02}), rules) == ["$.total"]


def test_an_integer_equals_the_same_float_but_not_a_bool() -> None:
    assert fields(answer({"n": 10}), answer({"n": 10.0})) == []
    assert fields(answer({"ok": 1}), answer({"ok": True})) == ["$.ok"]


def test_a_key_on_one_side_only_differs_from_absent() -> None:
    primary, candidate = answer({"a": 1}), answer({"a": 1, "b": [2]})
    assert only(primary, candidate) == Difference("$.b", "<absent>", "[2]")


def test_extra_array_elements_differ_from_absent() -> None:
    assert only(answer([1, 2]), answer([1, 2, 3])) == Difference("$[*]", "<absent>", "3")


def test_a_type_mismatch_is_a_difference_at_that_path() -> None:
    primary, candidate = answer({"price": "9.99"}), answer({"price": 9.99})
    assert only(primary, candidate) == Difference("$.price", '"9.99"', "9.99")


def test_ignore_drops_a_path_and_everything_under_it() -> None:
    primary = answer({"meta": {"trace": "a", "took": 3}, "items": [{"at": 1, "id": 1}]})
    candidate = answer({"meta": {"trace": "b"}, "items": [{"at": 2, "id": 1}]})
    rules = Rules(ignore=("$.meta", "$.items[*].at"))
    assert fields(primary, candidate, rules) == []


def test_ignore_with_a_wildcard_key() -> None:
    primary = answer({"a": {"etag": 1}, "b": {"etag": 2, "v": 1}})
    candidate = answer({"a": {"etag": 3}, "b": {"etag": 4, "v": 2}})
    assert fields(primary, candidate, Rules(ignore=("$.*.etag",))) == ["$.b.v"]


def test_secret_values_are_redacted_on_both_sides() -> None:
    primary, candidate = answer({"card": {"number": "4111"}}), answer({"card": {"number": "4242"}})
    assert only(primary, candidate, Rules(secret=("$.card",))) == Difference(
        "$.card.number", "<redacted>", "<redacted>"
    )


def test_secret_fields_inside_unordered_elements_are_redacted() -> None:
    rules = Rules(unordered=("$.cards",), secret=("$.cards[*].number",))
    primary = answer({"cards": [{"number": "4111", "brand": "visa"}]})
    candidate = answer({"cards": [{"number": "4242", "brand": "visa"}]})
    difference = only(primary, candidate, rules)
    assert "4111" not in difference.primary
    assert "4242" not in difference.candidate
    assert "<redacted>" in difference.primary


def test_credential_headers_are_never_compared_or_shown() -> None:
    rules = Rules(headers=("authorization", "Set-Cookie", "etag"))
    primary = answer({}, headers=((b"authorization", b"Bearer one"), (b"set-cookie", b"s=1")))
    candidate = answer({}, headers=((b"authorization", b"Bearer two"), (b"set-cookie", b"s=2")))
    assert fields(primary, candidate, rules) == []


def test_non_json_bodies_are_compared_by_hash() -> None:
    text = ((b"content-type", b"text/html"),)
    primary = answer(b"<p>hello</p>", headers=text)
    assert fields(primary, answer(b"<p>hello</p>", headers=text)) == []
    difference = only(primary, answer(b"<p>hellO</p>!", headers=text))
    assert difference.field == "body"
    assert difference.primary.startswith("sha256:")
    assert difference.primary.endswith("(12 bytes)")
    assert difference.candidate.endswith("(13 bytes)")


def test_a_body_that_only_one_side_parses_as_json_is_compared_by_hash() -> None:
    assert fields(answer({"a": 1}), answer(b"{oops")) == ["body"]


def test_a_truncated_body_is_not_compared() -> None:
    primary = answer({"a": 1}, truncated=True)
    verdict = compare(primary, answer({"a": 2}, status=404), Rules())
    assert not verdict.compared_body
    assert [d.field for d in verdict.differences] == ["status"]


def test_example_values_are_cut_to_the_example_size() -> None:
    difference = only(answer({"text": "x" * 1000}), answer({"text": "y" * 1000}))
    assert len(difference.primary) == EXAMPLE_CHARS
    assert difference.primary.endswith("…")


def test_control_characters_are_escaped_in_examples() -> None:
    difference = only(answer({"s": "\x1b[31mred"}), answer({"s": "\x9b31mred"}))
    assert "\x1b" not in difference.primary
    assert "\x9b" not in difference.candidate


def test_differences_are_bounded_and_the_rest_is_announced() -> None:
    primary = answer({f"k{i}": i for i in range(300)})
    verdict = compare(primary, answer({}), Rules())
    assert len(verdict.differences) == MAX_DIFFERENCES + 1
    assert verdict.differences[-1].field == "…"


def test_a_body_too_large_to_walk_is_not_compared_in_full() -> None:
    primary, candidate = answer([*range(20_000), 1]), answer([*range(20_000), 2])
    verdict = compare(primary, candidate, Rules())
    assert not verdict.compared_body
    assert verdict.differences == ()


def test_byte_identical_bodies_are_equal_whatever_their_size() -> None:
    body = answer(list(range(20_000)))
    assert compare(body, body, Rules()) == compare(answer([]), answer([]), Rules())


def test_differing_fields_of_two_primary_answers_are_the_noise() -> None:
    first = answer({"id": 1, "updated_at": "2024-01-01T00:00:00Z"})
    second = answer({"id": 1, "updated_at": "2024-01-01T00:00:01Z"})
    assert differing_fields(first, second, Rules()) == {"$.updated_at"}


@pytest.mark.parametrize(
    ("pattern", "valid"),
    [
        ("$", True),
        ("$.items[*].amount", True),
        ('$["we ird"].*', True),
        ("$.created-at", True),
        ("items", False),
        ("$.items[0]", False),
        ("$..amount", False),
        ('$["unterminated]', False),
    ],
)
def test_path_patterns_are_checked(pattern: str, valid: bool) -> None:
    assert (Rules.check_path(pattern) is None) is valid


def test_rules_refuse_an_invalid_pattern() -> None:
    with pytest.raises(ValueError, match="items"):
        Rules(ignore=("items",))
