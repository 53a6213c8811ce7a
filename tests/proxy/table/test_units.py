"""Durations and sizes as routes.yaml spells them."""

from __future__ import annotations

import pytest

from proxy.table.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("250ms", 0.25, id="milliseconds"),
        pytest.param("2s", 2.0, id="seconds"),
        pytest.param("1.5s", 1.5, id="fractional-seconds"),
        pytest.param("1m", 60.0, id="minutes"),
        pytest.param("1h", 3600.0, id="hours"),
        pytest.param("30", 30.0, id="string-without-unit-is-seconds"),
        pytest.param(" 2s ", 2.0, id="surrounding-spaces"),
        pytest.param("5 s", 5.0, id="space-before-unit"),
        pytest.param(3, 3.0, id="int-seconds"),
        pytest.param(0.5, 0.5, id="float-seconds"),
    ],
)
def test_durations_are_read_as_seconds(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("soon", id="word"),
        pytest.param("2 days", id="unknown-unit"),
        pytest.param("2sec", id="spelled-unit"),
        pytest.param("1e3s", id="exponent"),
        pytest.param("1.s", id="dangling-point"),
        pytest.param("-1s", id="negative-string"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="null"),
        pytest.param([2], id="list"),
    ],
)
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(0, id="int-zero"),
        pytest.param(0.0, id="float-zero"),
        pytest.param("0s", id="zero-seconds"),
        pytest.param("0ms", id="zero-milliseconds"),
        pytest.param(-1, id="negative-int"),
        pytest.param(-0.5, id="negative-float"),
    ],
)
def test_zero_and_negative_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="greater than zero"):
        parse_duration(value)


def test_nan_duration_is_refused() -> None:
    # YAML's `.nan` reaches parse_duration as float("nan").
    with pytest.raises(ValueError, match="duration"):
        parse_duration(float("nan"))


@pytest.mark.parametrize(
    ("value", "size"),
    [
        pytest.param("512KiB", 512 * 1024, id="kibibytes"),
        pytest.param("10MB", 10_000_000, id="megabytes"),
        pytest.param("1MiB", 1024**2, id="mebibytes"),
        pytest.param("1GiB", 1024**3, id="gibibytes"),
        pytest.param("2GB", 2_000_000_000, id="gigabytes"),
        pytest.param("1KB", 1000, id="kilobytes"),
        pytest.param("100B", 100, id="bytes-unit"),
        pytest.param("42", 42, id="string-without-unit-is-bytes"),
        pytest.param(" 10 MB ", 10_000_000, id="spaces"),
        pytest.param(1024, 1024, id="int"),
        pytest.param(0, 0, id="zero-is-a-size"),
    ],
)
def test_sizes_are_read_as_bytes(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("1.5MiB", id="fractional"),
        pytest.param("10TB", id="unknown-unit"),
        pytest.param("ten", id="word"),
        pytest.param("-1", id="negative-string"),
        pytest.param("", id="empty"),
        pytest.param(1.5, id="float"),
        pytest.param(True, id="bool"),
    ],
)
def test_bad_sizes_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


def test_negative_int_size_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_size(-1)
