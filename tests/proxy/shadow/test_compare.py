"""Comparing a primary's answer with a candidate's: which fields differ, how they are named
and shown, and what is never compared or shown."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from typing import Any

import pytest

from proxy.shadow.compare import (
    EXAMPLE_CHARS,
    MAX_DIFFERENCES,
    Answer,
    Difference,
    Rules,
    Verdict,
    compare,
    decoded,
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


# --- secrets inside a value shown at a parent path -----------------------------------------
CARD = Rules(secret=("$.card.number", "$.items[*].card_last4"))


def shown(verdict: Verdict) -> str:
    return " ".join(f"{d.primary} {d.candidate}" for d in verdict.differences)


def test_secrets_inside_a_value_shown_at_a_parent_path_are_redacted() -> None:
    primary = answer(
        {
            "card": {"number": "4111111111111111"},
            "items": [{"id": 1, "card_last4": "4242"}, {"id": 2, "card_last4": "9999"}],
        }
    )
    candidate = answer({"card": None, "items": [{"id": 1, "card_last4": "4242"}]})
    verdict = compare(primary, candidate, CARD)
    assert verdict.differences == (
        Difference("$.card", '{"number": "<redacted>"}', "null"),
        Difference("$.items[*]", '{"id": 2, "card_last4": "<redacted>"}', "<absent>"),
    )
    assert "4111" not in shown(verdict)
    assert "9999" not in shown(verdict)


@pytest.mark.parametrize(
    ("primary", "candidate", "expected"),
    [
        pytest.param(
            {"card": {"number": "4111", "brand": "visa"}},
            {},
            Difference("$.card", '{"number": "<redacted>", "brand": "visa"}', "<absent>"),
            id="key on one side only",
        ),
        pytest.param(
            {},
            {"card": {"number": "4111"}},
            Difference("$.card", "<absent>", '{"number": "<redacted>"}'),
            id="key on the candidate only",
        ),
        pytest.param(
            {"card": {"number": "4111"}},
            {"card": "n/a"},
            Difference("$.card", '{"number": "<redacted>"}', '"n/a"'),
            id="object to string",
        ),
        pytest.param(
            {"card": [1]},
            {"card": {"number": "4111", "cvc": {"number": 5}}},
            Difference("$.card", "[1]", '{"number": "<redacted>", "cvc": {"number": 5}}'),
            id="array to object",
        ),
        pytest.param(
            {"items": {"card_last4": "4242"}},
            {"items": [{"card_last4": "4242", "id": 1}]},
            Difference(
                "$.items", '{"card_last4": "4242"}', '[{"card_last4": "<redacted>", "id": 1}]'
            ),
            id="object to array: only the array's elements are covered",
        ),
        pytest.param(
            {"card": {"number": "4111"}},
            {"card": {}},
            Difference("$.card.number", "<redacted>", "<redacted>"),
            id="the secret itself",
        ),
    ],
)
def test_secrets_are_redacted_whatever_the_shape_on_each_side(
    primary: Any, candidate: Any, expected: Difference
) -> None:
    assert only(answer(primary), answer(candidate), CARD) == expected


def test_secrets_inside_nested_arrays_are_redacted() -> None:
    rules = Rules(secret=("$.rows[*][*].pin",))
    primary = answer({"rows": [[{"pin": "1234", "x": 1}], [{"pin": "5678"}, 7]]})
    candidate = answer({"rows": [[{"pin": "1234", "x": 1}]]})
    assert only(primary, candidate, rules) == Difference(
        "$.rows[*]", '[{"pin": "<redacted>"}, 7]', "<absent>"
    )
    assert only(primary, answer({"rows": None}), rules) == Difference(
        "$.rows",
        '[[{"pin": "<redacted>", "x": 1}], [{"pin": "<redacted>"}, 7]]',
        "null",
    )


def test_secrets_under_a_wildcard_key_are_redacted_at_the_root() -> None:
    rules = Rules(secret=("$.*.token",))
    primary = answer({"a": {"token": "t-1", "n": 1}})
    assert only(primary, answer([]), rules) == Difference(
        "$", '{"a": {"token": "<redacted>", "n": 1}}', "[]"
    )


def test_secrets_in_an_unordered_array_shown_under_a_parent_are_redacted() -> None:
    rules = Rules(unordered=("$.wallet.cards",), secret=("$.wallet.cards[*].number",))
    primary = answer({"wallet": {"cards": [{"number": "4111", "brand": "visa"}]}})
    assert only(primary, answer({}), rules) == Difference(
        "$.wallet", '{"cards": [{"number": "<redacted>", "brand": "visa"}]}', "<absent>"
    )


def test_secret_elements_of_an_unordered_array_are_redacted_in_its_examples() -> None:
    rules = Rules(unordered=("$.cards",), secret=("$.cards[*].numbers",))
    primary = answer({"cards": [{"numbers": ["4111", "4242"], "brand": "visa"}]})
    candidate = answer({"cards": [{"numbers": ["5555"], "brand": "visa"}]})
    assert only(primary, candidate, rules) == Difference(
        "$.cards",
        '[{"brand":"visa","numbers":"<redacted>"}]',
        '[{"brand":"visa","numbers":"<redacted>"}]',
    )


def test_without_secrets_a_value_is_shown_as_json_dumps_writes_it() -> None:
    value = {"a": [1, 2.5, True, None, 'é\n"q"'], "b": {}, "c": [], "d": 1e16, "e": -0.0}
    assert only(answer({"v": value}), answer({}), CARD) == Difference(
        "$.v", json.dumps(value, ensure_ascii=False), "<absent>"
    )


def test_a_large_value_is_shown_cut_without_being_written_whole() -> None:
    big = {f"key{i}": [i, {"card_last4": "x" * 1000}] for i in range(50_000)}
    difference = only(answer({"v": big}), answer({}))
    assert len(difference.primary) == EXAMPLE_CHARS
    assert difference.primary.startswith('{"key0": [0, {"card_last4": "xxx')
    assert difference.primary.endswith("…")


def test_the_hash_of_a_json_body_is_hidden_when_it_may_hold_secrets() -> None:
    text = ((b"content-type", b"text/html"),)
    primary, candidate = answer({"card": {"number": "4111"}}), answer(b"<p>oops", headers=text)
    difference = only(primary, candidate, CARD)
    assert (difference.field, difference.primary) == ("body", "<redacted>")
    assert difference.candidate.startswith("sha256:")
    assert only(primary, candidate).primary.startswith("sha256:")  # no secret patterns


# --- content codings ------------------------------------------------------------------------
LIMIT = 1 << 20


def encoded(body: Any, coding: bytes, **options: Any) -> Answer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    if coding == b"gzip":
        data = gzip.compress(raw, mtime=options.get("mtime", 0))
    elif coding == b"deflate":
        data = zlib.compress(raw, wbits=options.get("wbits", 15))
    else:
        data = raw
    headers = (*JSON, (b"content-encoding", coding), (b"content-length", b"%d" % len(data)))
    return Answer(200, headers, data)


def test_gzip_bodies_differing_only_in_their_mtime_are_equal() -> None:
    body = {"id": 7, "items": [1, 2]}
    primary, candidate = encoded(body, b"gzip", mtime=1), encoded(body, b"gzip", mtime=2)
    assert primary.body != candidate.body
    assert fields(primary, candidate) == ["body"]  # as received
    verdict = compare(decoded(primary, LIMIT), decoded(candidate, LIMIT), Rules())
    assert verdict.differences == ()
    assert verdict.compared_body


def test_a_json_difference_inside_gzip_is_found_by_field() -> None:
    primary = decoded(encoded({"id": 7, "total": 10}, b"gzip", mtime=1), LIMIT)
    candidate = decoded(encoded({"id": 7, "total": 11}, b"gzip", mtime=2), LIMIT)
    assert only(primary, candidate) == Difference("$.total", "10", "11")


def test_decoding_drops_the_encoding_headers_and_keeps_the_rest() -> None:
    answer_ = decoded(encoded({"a": 1}, b"gzip"), LIMIT)
    assert answer_ == Answer(200, JSON, b'{"a": 1}')


@pytest.mark.parametrize("wbits", [15, -15], ids=["zlib", "raw deflate"])
def test_deflate_is_decoded_as_zlib_or_raw(wbits: int) -> None:
    answer_ = decoded(encoded({"a": 1}, b"deflate", wbits=wbits), LIMIT)
    assert (answer_.body, answer_.truncated) == (b'{"a": 1}', False)


@pytest.mark.parametrize(
    ("values", "steps"),
    [
        ((b"gzip, deflate",), (31, 15)),
        ((b"gzip", b"deflate"), (31, 15)),  # two fields, one list
        ((b"identity, X-GZIP",), (31,)),
        ((b"GZip ,, identity",), (31,)),
        ((b"deflate, gzip",), (-15, 31)),
    ],
)
def test_a_list_of_codings_is_undone_in_reverse_order(
    values: tuple[bytes, ...], steps: tuple[int, ...]
) -> None:
    data = b'{"a": 1}'
    for wbits in steps:
        data = zlib.compress(data, wbits=wbits)
    headers = tuple((b"content-encoding", v) for v in values)
    assert decoded(Answer(200, headers, data), LIMIT) == Answer(200, (), b'{"a": 1}')


def test_concatenated_gzip_members_are_one_body() -> None:
    data = gzip.compress(b'{"a": ') + gzip.compress(b"1}")
    answer_ = decoded(Answer(200, ((b"content-encoding", b"gzip"),), data), LIMIT)
    assert answer_.body == b'{"a": 1}'


def test_a_body_of_exactly_the_limit_is_decoded_and_one_more_byte_is_not() -> None:
    body = bytes(range(256)) * 1000
    assert decoded(encoded(body, b"gzip"), len(body)).body == body
    assert decoded(encoded(body, b"gzip"), len(body) - 1) == Answer(200, JSON, b"", True)


def test_a_decompression_bomb_is_given_up_at_the_limit() -> None:
    pack = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    bomb = b"".join([*(pack.compress(zeros) for _ in range(64)), pack.flush()])
    assert len(bomb) < LIMIT // 4  # 64 MiB of zeros
    tracemalloc.start()
    try:
        answer_ = decoded(Answer(200, ((b"content-encoding", b"gzip"),), bomb), LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert answer_ == Answer(200, (), b"", truncated=True)
    assert peak < LIMIT + LIMIT // 2  # the limit and one piece, never the 64 MiB


@pytest.mark.parametrize(
    ("coding", "data"),
    [
        (b"br", b"\x0b\x02\x80{}\x03"),
        (b"zstd", b"(\xb5/\xfd"),
        (b"gzip, br", gzip.compress(b"{}")),
        (b"gzip", b"not gzip at all"),
        (b"gzip", gzip.compress(b'{"a": 1}')[:-5]),  # cut short
        (b"gzip", gzip.compress(b'{"a": 1}') + b"garbage"),
        (b"deflate", zlib.compress(b'{"a": 1}', wbits=-15) + b"garbage"),
    ],
)
def test_an_unknown_coding_or_a_corrupt_stream_is_not_compared(coding: bytes, data: bytes) -> None:
    primary = decoded(Answer(500, ((b"content-encoding", coding), (b"etag", b"1")), data), LIMIT)
    assert primary == Answer(500, ((b"etag", b"1"),), b"", truncated=True)
    verdict = compare(primary, decoded(encoded({}, b"gzip"), LIMIT), Rules(headers=("etag",)))
    assert not verdict.compared_body
    assert [d.field for d in verdict.differences] == ["status", "header:etag"]


def test_an_answer_without_a_coding_or_truncated_is_returned_unchanged() -> None:
    plain = answer({"a": 1})
    identity = Answer(200, ((b"content-encoding", b"identity"),), b"{}")
    cut = Answer(200, ((b"content-encoding", b"gzip"),), b"\x1f\x8b", truncated=True)
    for unchanged in (plain, identity, cut):
        assert decoded(unchanged, LIMIT) is unchanged


def test_an_empty_body_naming_a_coding_is_empty() -> None:
    """A HEAD or 304 answer carries the coding of a body it does not send."""
    head = Answer(304, ((b"content-encoding", b"gzip"), (b"etag", b"1")), b"")
    assert decoded(head, LIMIT) == Answer(304, ((b"etag", b"1"),), b"")


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        decoded(answer({}), -1)
