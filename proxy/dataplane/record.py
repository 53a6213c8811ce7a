"""The record step's access-log line (pure): one JSON object per request, built by hand.

json.dumps of a whole dict per request is a measurable share of the hot path; here only the
target and the method, the two fields a client controls, go through the JSON string encoder
(which escapes control characters, so a client cannot forge log lines). Every other field is a
number or a name the proxy validated. `choice` says how the upstream was chosen: default, to,
split, override or pin (a read-your-writes pin overrode the weights); `consumer` who called, when
the route identified the caller (access/gate.py).
"""

from __future__ import annotations

import time
from json.encoder import encode_basestring_ascii as _json_str

from proxy.dataplane.forward import Outcome
from proxy.types import Scope


def access_line(
    scope: Scope,
    listener: str,
    client: str,
    request_id: str,
    route: str,
    upstream: str,
    outcome: Outcome,
    elapsed: float,
    version: int,
    choice: str = "-",
) -> str:
    """The access-log record of one request, as one JSON line (no newline)."""
    query = scope["query_string"]
    target = scope["raw_path"].decode("latin-1")
    if query:
        target += "?" + query.decode("latin-1")
    error = f'"{outcome.error}"' if outcome.error else "null"
    consumer = f'"{outcome.consumer}"' if outcome.consumer else "null"  # a validated name
    fallback = (
        f'{{"from":"{outcome.fallback_from}","reason":"{outcome.fallback_reason}"}}'
        if outcome.fallback_from
        else "null"
    )
    # Whole microseconds printed as integers, the point put in by slicing: a float's format
    # costs a third more, and a `%` format (a template parsed per call) twice a str() and two
    # slices.
    now = str(time.time_ns() // 1000)  # microseconds since 1970: always more than 6 digits
    ts = now[:-6] + "." + now[-6:]
    took = _milliseconds(int(elapsed * 1_000_000 + 0.5))
    return (
        f'{{"ts":{ts},"request_id":"{request_id}","listener":"{listener}",'
        f'"client":"{client}","method":{_json_str(scope["method"])},'
        f'"target":{_json_str(target)},"route":"{route}","upstream":"{upstream}",'
        f'"status":{outcome.status},"bytes_in":{outcome.bytes_in},'
        f'"bytes_out":{outcome.bytes_out},"duration_ms":{took},'
        f'"table_version":{version},"choice":"{choice}","tries":{outcome.tries},'
        f'"fallback":{fallback},"consumer":{consumer},"error":{error}}}'
    )


def _milliseconds(micros: int) -> str:
    """`micros` microseconds as milliseconds with three decimals (1234 → "1.234")."""
    digits = str(micros)
    if len(digits) > 3:
        return digits[:-3] + "." + digits[-3:]
    return "0." + digits.zfill(3)
