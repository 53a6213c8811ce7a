"""The proxy's own error answers: RFC 9457 problem bodies and their headers."""

from __future__ import annotations

import json
from email.utils import parsedate_to_datetime

import pytest

from proxy.errors import ProxyError, UpstreamAborted, problem_body, problem_headers


@pytest.mark.parametrize(
    ("status", "kind", "title"),
    [
        pytest.param(400, "bad-host", "Bad request", id="400"),
        pytest.param(405, "method-not-allowed", "Method not allowed", id="405"),
        pytest.param(408, "request-timeout", "Request timeout", id="408"),
        pytest.param(413, "body-too-large", "Content too large", id="413"),
        pytest.param(414, "uri-too-long", "URI too long", id="414"),
        pytest.param(431, "headers-too-large", "Request header fields too large", id="431"),
        pytest.param(502, "upstream-unreachable", "Bad gateway", id="502"),
        pytest.param(503, "overloaded", "Service unavailable", id="503"),
        pytest.param(504, "upstream-timeout", "Gateway timeout", id="504"),
        pytest.param(508, "loop-detected", "Loop detected", id="508"),
        pytest.param(599, "odd", "Error", id="unknown-status"),
    ],
)
def test_problem_body_fields(status: int, kind: str, title: str) -> None:
    body = json.loads(problem_body(status, kind, "what happened", "req-1"))
    assert body == {
        "type": f"urn:strangler:problem:{kind}",
        "title": title,
        "status": status,
        "detail": "what happened",
        "request_id": "req-1",
    }


def test_problem_body_without_a_request_id() -> None:
    assert "request_id" not in json.loads(problem_body(400, "bad-target", "no"))


def test_problem_body_is_json_whatever_the_detail() -> None:
    detail = 'the path "/caf\u00e9\\x" \n is odd'
    assert json.loads(problem_body(400, "bad-target", detail))["detail"] == detail


def test_problem_headers() -> None:
    body = problem_body(503, "overloaded", "too busy", "req-1")
    headers = dict(problem_headers(body, request_id="req-1", close=True, retry_after=2))
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"content-length"] == str(len(body)).encode()
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"x-request-id"] == b"req-1"
    assert headers[b"retry-after"] == b"2"
    assert headers[b"connection"] == b"close"
    assert parsedate_to_datetime(headers[b"date"].decode()).tzinfo is not None


def test_problem_headers_leave_out_what_was_not_asked_for() -> None:
    body = problem_body(400, "bad-host", "no host")
    headers = problem_headers(body)
    assert [name for name, _ in headers] == [
        b"content-type",
        b"content-length",
        b"date",
        b"cache-control",
    ]
    assert dict(headers)[b"content-length"] == str(len(body)).encode()


def test_proxy_error_carries_status_kind_and_options() -> None:
    error = ProxyError(503, "overloaded", "too busy", close=True, retry_after=1)
    assert (error.status, error.kind, error.detail, error.close, error.retry_after) == (
        503,
        "overloaded",
        "too busy",
        True,
        1,
    )
    assert str(error) == "too busy"
    plain = ProxyError(400, "bad-target", "no")
    assert (plain.close, plain.retry_after) == (False, 0)


def test_upstream_aborted_carries_its_kind() -> None:
    assert UpstreamAborted("upstream-disconnected").kind == "upstream-disconnected"
