"""Durations ("250ms", "2s", "1m") and sizes ("512KiB", "10MB") as they appear in routes.yaml."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string with a unit: ms, s, m or h."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '2s' or '250ms'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        found = _DURATION.match(str(value))
        if not found:
            raise ValueError(f"{value!r} is not a duration (use e.g. '2s', '250ms', '1m')")
        seconds = float(found.group(1)) * _DURATION_UNITS[found.group(2)]
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("a duration is a finite number greater than zero")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from an integer or a string with a unit: B, KB, KiB, MB, MiB, GB or GiB."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '1MiB'")
    if isinstance(value, int):
        size = value
    else:
        found = _SIZE.match(str(value))
        if not found:
            raise ValueError(f"{value!r} is not a size (use e.g. '512KiB', '10MB', '1GiB')")
        size = int(found.group(1)) * _SIZE_UNITS[found.group(2)]
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size
