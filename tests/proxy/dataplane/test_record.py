"""The access-log line: valid JSON whatever the client sent, with the safety nets' fields."""

from __future__ import annotations

import json
import re
import time

import pytest

from proxy.dataplane.forward import Outcome
from proxy.dataplane.record import access_line


def line(scope: dict[str, object], outcome: Outcome) -> dict[str, object]:
    text = access_line(
        scope, "internal", "10.0.0.7", "rid-1", "pay", "monolith", outcome, 0.0123, 9
    )
    assert "\n" not in text
    parsed: dict[str, object] = json.loads(text)
    return parsed


def test_a_fallback_is_recorded_with_its_origin_and_reason() -> None:
    outcome = Outcome(status=201, bytes_in=12, bytes_out=40, tries=2)
    outcome.fallback_from, outcome.fallback_reason = "payment", "connect-failure"
    record = line({"method": "POST", "raw_path": b"/pay", "query_string": b"a=1"}, outcome)
    assert record["fallback"] == {"from": "payment", "reason": "connect-failure"}
    assert (record["tries"], record["status"], record["upstream"]) == (2, 201, "monolith")
    assert (record["target"], record["listener"], record["table_version"]) == (
        "/pay?a=1",
        "internal",
        9,
    )
    assert record["duration_ms"] == 12.3
    assert record["error"] is None


def test_control_characters_from_the_client_cannot_forge_a_line() -> None:
    outcome = Outcome(status=400, error="bad-target")
    scope = {"method": "GET", "raw_path": b'/x"\n{"forged":1}\x1b', "query_string": b""}
    record = line(scope, outcome)
    assert record["target"] == '/x"\n{"forged":1}\x1b'
    assert record["fallback"] is None
    assert record["error"] == "bad-target"


def test_durations_and_times_keep_their_digits() -> None:
    """Durations print as milliseconds with three decimals and times as seconds with six,
    from whole microseconds: short, long and round values alike."""
    outcome = Outcome(status=200)
    scope = {"method": "GET", "raw_path": b"/", "query_string": b""}
    for seconds, shown in (
        (0.0, "0.000"),
        (0.000005, "0.005"),
        (0.0009994, "0.999"),
        (0.001, "1.000"),
        (1.5, "1500.000"),
        (123.456789, "123456.789"),
    ):
        text = access_line(scope, "external", "10.0.0.7", "r", "-", "-", outcome, seconds, 1)
        assert f'"duration_ms":{shown},' in text
    before = time.time()
    stamp = json.loads(access_line(scope, "external", "c", "r", "-", "-", outcome, 0.0, 1))["ts"]
    assert before - 1 <= stamp <= time.time() + 1
    assert re.search(r'"ts":\d{10}\.\d{6},', text)


def test_numbers_print_whole_and_the_timestamp_keeps_its_zeros(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sizes, tries and table versions print as plain integers, small or large, and the
    timestamp's microseconds keep their leading zeros."""
    scope = {"method": "GET", "raw_path": b"/", "query_string": b""}
    for number in (0, 7, 99, 999, 1000, 1001, 65_536, 10**12):
        outcome = Outcome(status=200, bytes_in=number, bytes_out=number, tries=number)
        record = line(scope, outcome)
        assert (record["bytes_in"], record["bytes_out"], record["tries"]) == (number,) * 3
        text = access_line(scope, "external", "c", "r", "-", "-", outcome, 0.0, number)
        assert f'"table_version":{number},' in text
    for seconds, micros in ((1_765_000_000, 5), (1_765_000_001, 40_000), (1_765_000_002, 999_999)):
        nanos = (seconds * 1_000_000 + micros) * 1000 + 999
        monkeypatch.setattr(time, "time_ns", lambda nanos=nanos: nanos)
        text = access_line(scope, "external", "c", "r", "-", "-", Outcome(), 0.0, 1)
        assert f'"ts":{seconds}.{micros:06d},' in text
