"""The safety nets in routes.yaml: an upstream's concurrency cap, outlier ejection and retry
budget; a route's retry and fallback. Loaded from YAML (problems carry their line) and
compiled into what the data plane reads."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.table.compile import Failures, compile_table
from proxy.table.loader import TableInvalid, load_text
from proxy.table.model import DEFAULT_FAILURES, Fallback, Outlier
from tests.proxy.tables import HEADER, marks

PAY = """\
  - name: pay
    match: {path: /pay}
    to: payment
"""


def problems(text: str) -> list[tuple[int | None, str, str]]:
    """(line, field, reason) of every problem loading `text`, in the order reported."""
    with pytest.raises(TableInvalid) as caught:
        load_text(text)
    return [(p.line, p.where(), p.message) for p in caught.value.problems]


def with_payment(lines: str) -> str:
    """HEADER with `lines` (indented for the payment upstream) added to the payment upstream."""
    return HEADER.replace(":8002\n", ":8002\n" + lines)


# --- fallback ----------------------------------------------------------------------------------


def test_fallback_names_an_upstream_in_short() -> None:
    short = load_text(HEADER + PAY + "    fallback: monolith\n")
    long = load_text(HEADER + PAY + "    fallback: {to: monolith}\n")
    assert short == long
    (route,) = short.routes
    assert route.fallback == Fallback(to="monolith")
    assert route.fallback.on == DEFAULT_FAILURES
    assert route.fallback.methods is None
    assert route.upstream_names() == ("payment",)  # the fallback takes no traffic of its own


def test_fallback_is_off_unless_set() -> None:
    (route,) = load_text(HEADER + PAY).routes
    assert (route.retry, route.fallback) == (None, None)


def test_a_route_may_fall_back_to_its_own_upstream() -> None:
    # Flipping a route back to the monolith must not need its fallback edited first; the
    # data plane never tries the upstream that failed twice (see test_plan).
    table = load_text(
        HEADER + PAY.replace("to: payment", "to: monolith") + "    fallback: monolith\n"
    )
    (compiled,) = compile_table(table).routes
    assert compiled.fallback is not None
    assert compiled.fallback.upstream is compiled.upstream


def test_an_unknown_fallback_is_reported_even_when_the_route_has_another_problem() -> None:
    text = HEADER + PAY + "    timeout: soon  # @timeout\n    fallback: ghost  # @ghost\n"
    at = marks(text)
    assert {(line, where) for line, where, _ in problems(text)} == {
        (at["timeout"], "routes[0].timeout"),
        (at["ghost"], "routes[0].fallback.to"),
    }


ONE_PROBLEM = [
    pytest.param(
        HEADER + PAY + "    fallback: ghost  # @here\n",
        "routes[0].fallback.to",
        "unknown upstream 'ghost'",
        id="unknown-fallback-short",
    ),
    pytest.param(
        HEADER + PAY + "    fallback:\n      to: ghost  # @here\n      on: [timeout]\n",
        "routes[0].fallback.to",
        "unknown upstream 'ghost'",
        id="unknown-fallback-long",
    ),
    pytest.param(
        HEADER + PAY + "    fallback:\n      to: monolith\n      on: [timeout, 200]  # @here\n",
        "routes[0].fallback.on",
        "200 is not a 5xx status",
        id="fallback-on-non-5xx",
    ),
    pytest.param(
        HEADER + PAY + "    fallback: {to: monolith, methods: [GET, TRACE]}  # @here\n",
        "routes[0].fallback.methods",
        "TRACE is never proxied",
        id="fallback-unsafe-method",
    ),
    pytest.param(
        HEADER + PAY + "    fallback: {on: [timeout]}  # @here\n",
        "routes[0].fallback.to",
        "missing field 'to'",
        id="fallback-without-to",
    ),
    pytest.param(
        HEADER + PAY + "    retry:\n      on: [reset, bogus]  # @here\n",
        "routes[0].retry.on",
        "'bogus' is not one of connect-failure, gateway-error, reset, timeout or a 5xx status",
        id="retry-on-unknown-name",
    ),
    pytest.param(
        HEADER + PAY + "    retry:\n      on: [reset, 404]  # @here\n",
        "routes[0].retry.on",
        "404 is not a 5xx status",
        id="retry-on-non-5xx",
    ),
    pytest.param(
        HEADER + PAY + "    retry:\n      on: [timeout, timeout]  # @here\n",
        "routes[0].retry.on",
        "a failure is listed twice",
        id="retry-on-twice",
    ),
    pytest.param(
        HEADER + PAY + "    retry:\n      on: []  # @here\n",
        "routes[0].retry.on",
        "name at least one failure",
        id="retry-on-empty",
    ),
    pytest.param(
        HEADER + PAY + "    retry:\n      attempts: 0  # @here\n",
        "routes[0].retry.attempts",
        "greater than or equal to 1",
        id="retry-zero-attempts",
    ),
    pytest.param(
        HEADER + PAY + "    retry:  # @here\n      backoff: 1s\n      max_backoff: 100ms\n",
        "routes[0].retry",
        "max_backoff is shorter than backoff",
        id="retry-backoff-bounds",
    ),
    pytest.param(
        HEADER + PAY + "    retry: {tries: 3}  # @here\n",
        "routes[0].retry.tries",
        "unknown field 'tries'",
        id="retry-unknown-field",
    ),
    pytest.param(
        with_payment("    outlier: {base_ejection: 60s, max_ejection: 30s}  # @here\n") + PAY,
        "upstreams.payment.outlier",
        "max_ejection is shorter than base_ejection",
        id="max-ejection-below-base",
    ),
    pytest.param(
        with_payment("    outlier:\n      probes: 0  # @here\n") + PAY,
        "upstreams.payment.outlier.probes",
        "greater than or equal to 1",
        id="zero-probes",
    ),
    pytest.param(
        with_payment("    outlier:\n      failure_ratio: 1.5  # @here\n") + PAY,
        "upstreams.payment.outlier.failure_ratio",
        "less than or equal to 1",
        id="ratio-over-one",
    ),
    pytest.param(
        with_payment("    max_requests: 0  # @here\n") + PAY,
        "upstreams.payment.max_requests",
        "greater than or equal to 1",
        id="zero-max-requests",
    ),
    pytest.param(
        with_payment("    retry_budget: 2  # @here\n") + PAY,
        "upstreams.payment.retry_budget",
        "less than or equal to 1",
        id="retry-budget-over-one",
    ),
    pytest.param(
        with_payment("    queue_timeout: soon  # @here\n") + PAY,
        "upstreams.payment.queue_timeout",
        "'soon' is not a duration",
        id="bad-queue-timeout",
    ),
]


@pytest.mark.parametrize(("text", "field", "reason"), ONE_PROBLEM)
def test_each_problem_has_its_line_field_and_reason(text: str, field: str, reason: str) -> None:
    ((line, where, message),) = problems(text)
    assert (line, where) == (marks(text)["here"], field)
    assert reason in message


# --- outlier -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "setting",
    [
        pytest.param("on", id="on"),
        pytest.param("true", id="true"),
        pytest.param("{}", id="empty-block"),
    ],
)
def test_outlier_on_takes_envoys_defaults(setting: str) -> None:
    table = load_text(with_payment(f"    outlier: {setting}\n") + PAY)
    outlier = table.upstreams["payment"].outlier
    assert outlier == Outlier()
    assert outlier is not None
    assert (
        outlier.consecutive_failures,
        outlier.base_ejection,
        outlier.max_ejection,
        outlier.probes,
    ) == (5, 30.0, 300.0, 3)
    assert outlier.failure_ratio is None  # the ratio rule is opt-in
    assert table.upstreams["monolith"].outlier is None


@pytest.mark.parametrize(
    "lines",
    [
        pytest.param("    outlier: off\n", id="off"),
        pytest.param("    outlier: false\n", id="false"),
        pytest.param("", id="absent"),
    ],
)
def test_outlier_off_or_absent_never_ejects(lines: str) -> None:
    table = load_text(with_payment(lines) + PAY)
    assert table.upstreams["payment"].outlier is None
    assert compile_table(table).upstreams["payment"].outlier is None


def test_outlier_settings_override_the_defaults_one_by_one() -> None:
    table = load_text(
        with_payment(
            "    outlier:\n      consecutive_failures: 2\n      base_ejection: 5s\n"
            "      failure_ratio: 0.85\n      window: 30s\n"
        )
        + PAY
    )
    assert table.upstreams["payment"].outlier == Outlier(
        consecutive_failures=2, base_ejection=5.0, failure_ratio=0.85, window=30.0
    )


# --- compile -----------------------------------------------------------------------------------


def compiled_route(lines: str) -> Any:
    (compiled,) = compile_table(load_text(HEADER + PAY + lines)).routes
    return compiled


@pytest.mark.parametrize(
    ("on", "failures"),
    [
        pytest.param(
            None,
            Failures(
                frozenset({"connect-failure", "reset", "timeout"}), frozenset({502, 503, 504})
            ),
            id="default",
        ),
        pytest.param(
            "[gateway-error]", Failures(frozenset(), frozenset({502, 503, 504})), id="gateway-error"
        ),
        pytest.param(
            "[reset, gateway-error, 500]",
            Failures(frozenset({"reset"}), frozenset({500, 502, 503, 504})),
            id="mixed",
        ),
        pytest.param(
            "[connect-failure, 503]",
            Failures(frozenset({"connect-failure"}), frozenset({503})),
            id="one-status",
        ),
    ],
)
def test_failure_lists_compile_to_kinds_and_statuses(on: str | None, failures: Failures) -> None:
    listed = "" if on is None else f", on: {on}"
    compiled = compiled_route(
        f"    retry: {{attempts: 2{listed}}}\n    fallback: {{to: monolith{listed}}}\n"
    )
    assert compiled.retry.on == failures
    assert compiled.fallback.on == failures


def test_retry_defaults_compile() -> None:
    retry = compiled_route("    retry: {}\n").retry
    assert (retry.attempts, retry.per_try_timeout, retry.backoff, retry.max_backoff) == (
        2,
        None,
        0.025,
        0.25,
    )


def test_retry_settings_compile() -> None:
    retry = compiled_route(
        "    retry: {attempts: 4, per_try_timeout: 800ms, backoff: 50ms, max_backoff: 1s}\n"
    ).retry
    assert (retry.attempts, retry.per_try_timeout, retry.backoff, retry.max_backoff) == (
        4,
        0.8,
        0.05,
        1.0,
    )


@pytest.mark.parametrize(
    ("methods", "compiled"),
    [
        pytest.param("[GET]", frozenset({"GET", "HEAD"}), id="get-implies-head"),
        pytest.param("[get, post]", frozenset({"GET", "HEAD", "POST"}), id="upper-cased"),
        pytest.param("[POST]", frozenset({"POST"}), id="post-only"),
        pytest.param("[HEAD]", frozenset({"HEAD"}), id="head-only"),
        pytest.param(None, None, id="every-method"),
    ],
)
def test_fallback_methods_compile(methods: str | None, compiled: frozenset[str] | None) -> None:
    spec = "{to: monolith}" if methods is None else f"{{to: monolith, methods: {methods}}}"
    fallback = compiled_route(f"    fallback: {spec}\n").fallback
    assert fallback.methods == compiled


def test_the_fallback_compiles_to_the_tables_upstream() -> None:
    snapshot = compile_table(load_text(HEADER + PAY + "    fallback: monolith\n"))
    (compiled,) = snapshot.routes
    assert compiled.fallback.upstream is snapshot.upstreams["monolith"]
    assert compiled.upstream is snapshot.upstreams["payment"]


@pytest.mark.parametrize(
    ("lines", "max_requests"),
    [
        pytest.param("", 256, id="default-max-connections"),
        pytest.param("    max_connections: 64\n", 64, id="max-connections"),
        pytest.param("    max_connections: 64\n    max_requests: 16\n", 16, id="own-limit"),
    ],
)
def test_max_requests_defaults_to_max_connections(lines: str, max_requests: int) -> None:
    payment = compile_table(load_text(with_payment(lines) + PAY)).upstreams["payment"]
    assert payment.max_requests == max_requests


def test_upstream_safety_defaults_compile() -> None:
    payment = compile_table(load_text(HEADER + PAY)).upstreams["payment"]
    assert (
        payment.max_pending,
        payment.queue_timeout,
        payment.idempotent_writes,
        payment.outlier,
        payment.retry_budget,
    ) == (128, 1.0, False, None, 0.2)


def test_upstream_safety_settings_compile() -> None:
    payment = compile_table(
        load_text(
            with_payment(
                "    max_pending: 0\n    queue_timeout: 250ms\n    idempotent_writes: true\n"
                "    retry_budget: 0.5\n    outlier: {probes: 1}\n"
            )
            + PAY
        )
    ).upstreams["payment"]
    assert (
        payment.max_pending,
        payment.queue_timeout,
        payment.idempotent_writes,
        payment.retry_budget,
    ) == (0, 0.25, True, 0.5)
    assert payment.outlier == Outlier(probes=1)
