"""routes.yaml → RouteTable: every problem reported at once, each with its YAML line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proxy.table.loader import TableInvalid, load_file, load_text, single_upstream
from tests.proxy.tables import HEADER, marks

PAY_TO_MONOLITH = """\
  - name: pay
    match: {path: /pay}
    to: monolith
"""


def problems(text: str) -> list[tuple[int | None, str, str]]:
    """(line, field, reason) of every problem loading `text`, in the order reported."""
    with pytest.raises(TableInvalid) as caught:
        load_text(text)
    return [(p.line, p.where(), p.message) for p in caught.value.problems]


ONE_PROBLEM = [
    pytest.param(
        HEADER + "  - name: pay\n    match: {path: /pay}\n    to: ghost  # @here\n",
        "routes[0].to",
        "unknown upstream 'ghost'",
        id="unknown-upstream-in-to",
    ),
    pytest.param(
        HEADER
        + "  - name: pay\n    match: {path: /pay}\n    split:\n      monolith: 90\n"
        + "      ghost: 10  # @here\n",
        "routes[0].split.ghost",
        "unknown upstream 'ghost'",
        id="unknown-upstream-in-split",
    ),
    pytest.param(
        HEADER.replace("default: monolith", "default: nowhere  # @here") + PAY_TO_MONOLITH,
        "default",
        "unknown upstream 'nowhere'",
        id="unknown-default",
    ),
    pytest.param(
        HEADER + "  - name: pay\n    match: {path: /pay}\n"
        "    split: {monolith: 50, payment: 40}  # @here\n",
        "routes[0].split",
        "weights sum to 90, not 100",
        id="weights-not-100",
    ),
    pytest.param(
        HEADER + PAY_TO_MONOLITH + "  - name: pay2\n    match: {path: /pay/}  # @here\n"
        "    to: payment\n",
        "routes[1].match",
        "route 'pay2' duplicates route 'pay' (routes[0]) and never matches",
        id="duplicate-route",
    ),
    pytest.param(
        HEADER + PAY_TO_MONOLITH + "  - name: pay  # @here\n    match: {path: /other}\n"
        "    to: payment\n",
        "routes[1].name",
        "route name 'pay' is also used by routes[0]",
        id="duplicate-route-name",
    ),
    pytest.param(
        HEADER + PAY_TO_MONOLITH + "    timeout: soon  # @here\n",
        "routes[0].timeout",
        "'soon' is not a duration",
        id="bad-route-timeout",
    ),
    pytest.param(
        HEADER + PAY_TO_MONOLITH + "    timeout: 0ms  # @here\n",
        "routes[0].timeout",
        "greater than zero",
        id="zero-route-timeout",
    ),
    pytest.param(
        HEADER.replace(":8002\n", ":8002\n    timeout: -2s  # @here\n") + PAY_TO_MONOLITH,
        "upstreams.payment.timeout",
        "'-2s' is not a duration",
        id="negative-upstream-timeout",
    ),
    pytest.param(
        HEADER + PAY_TO_MONOLITH + "    max_body: 1.5MiB  # @here\n",
        "routes[0].max_body",
        "is not a size",
        id="bad-route-max-body",
    ),
    pytest.param(
        "max_body: lots  # @here\n" + HEADER + PAY_TO_MONOLITH,
        "max_body",
        "is not a size",
        id="bad-table-max-body",
    ),
    pytest.param(
        HEADER.replace("http://127.0.0.1:8002", "ftp://127.0.0.1:8002  # @here") + PAY_TO_MONOLITH,
        "upstreams.payment.url",
        "only http:// and https://",
        id="url-scheme",
    ),
    pytest.param(
        HEADER.replace("http://127.0.0.1:8002", "http://169.254.169.254  # @here")
        + PAY_TO_MONOLITH,
        "upstreams.payment.url",
        "link-local",
        id="url-link-local",
    ),
    pytest.param(
        HEADER.replace("http://127.0.0.1:8002", "http://metadata.google.internal  # @here")
        + PAY_TO_MONOLITH,
        "upstreams.payment.url",
        "metadata",
        id="url-metadata-host",
    ),
    pytest.param(
        HEADER.replace("http://127.0.0.1:8002", "http://svc:pw@127.0.0.1:8002  # @here")
        + PAY_TO_MONOLITH,
        "upstreams.payment.url",
        "credentials",
        id="url-credentials",
    ),
    pytest.param(
        HEADER.replace("http://127.0.0.1:8002", "http://127.0.0.1:8002/api  # @here")
        + PAY_TO_MONOLITH,
        "upstreams.payment.url",
        "no path",
        id="url-path",
    ),
    pytest.param(
        HEADER + PAY_TO_MONOLITH + "    colour: blue  # @here\n",
        "routes[0].colour",
        "unknown field 'colour'",
        id="unknown-route-field",
    ),
    pytest.param(
        "versoin: 3  # @here\n" + HEADER.replace("version: 3\n", "") + PAY_TO_MONOLITH,
        "versoin",
        "unknown field 'versoin'",
        id="unknown-top-level-field",
    ),
    pytest.param(
        HEADER + "  - name: pay  # @here\n    to: monolith\n",
        "routes[0].match",
        "missing field 'match'",
        id="missing-match",
    ),
    pytest.param(
        HEADER + "  - name: pay  # @here\n    match: {path: /pay}\n    to: monolith\n"
        "    split: {monolith: 50, payment: 50}\n",
        "routes[0]",
        "exactly one of `to` and `split`",
        id="to-and-split",
    ),
    pytest.param(
        HEADER + "  - name: pay\n    match:\n      path: pay  # @here\n    to: monolith\n",
        "routes[0].match.path",
        "a path starts with '/'",
        id="relative-path",
    ),
    pytest.param(
        HEADER + "  - name: pay\n    match:\n      path: /pay\n"
        "      methods: [GET, CONNECT]  # @here\n    to: monolith\n",
        "routes[0].match.methods",
        "CONNECT is never proxied",
        id="connect-method",
    ),
    pytest.param(
        HEADER + "  - name: pay\n    match: {path: /pay}\n    to: monolith\n"
        "    shadow: {to: monolith, methods: [GET, POST]}  # @here\n",
        "routes[0].shadow.methods",
        "a shadow never carries a write: POST is not a safe method",
        id="shadow-of-a-write",
    ),
    pytest.param(
        HEADER + "  - name: pay\n    match: {path: /pay}\n    to: monolith\n"
        "    shadow: {to: nowhere}  # @here\n",
        "routes[0].shadow.to",
        "unknown upstream 'nowhere'",
        id="shadow-to-unknown-upstream",
    ),
    pytest.param(
        HEADER + "  - name: pay\n    match: {path: /pay}\n    to: monolith\n"
        "    override: {always: monolith}  # @here\n",
        "routes[0].override",
        "name a header, a cookie or both",
        id="override-without-header-or-cookie",
    ),
]


@pytest.mark.parametrize(("text", "field", "reason"), ONE_PROBLEM)
def test_each_problem_has_its_line_field_and_reason(text: str, field: str, reason: str) -> None:
    ((line, where, message),) = problems(text)
    assert (line, where) == (marks(text)["here"], field)
    assert reason in message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param(
            HEADER.replace("default: monolith", "default: monolith: payment  # @here"),
            "mapping values are not allowed here",
            id="broken-yaml",
        ),
        pytest.param(
            HEADER + "  - name: pay\n\tto: monolith  # @here\n",
            "found character '\\t'",
            id="tab-indent",
        ),
        pytest.param(
            HEADER + "default: payment  # @here\n",
            'found duplicate key "default"',
            id="duplicate-top-level-key",
        ),
        pytest.param(
            HEADER + PAY_TO_MONOLITH + "    to: payment  # @here\n",
            'found duplicate key "to"',
            id="duplicate-route-key",
        ),
        pytest.param(
            HEADER.replace("  payment:", "  monolith:  # @here"),
            'found duplicate key "monolith"',
            id="duplicate-upstream",
        ),
        pytest.param("- a  # @here\n- b\n", "the table is a YAML mapping", id="a-list"),
        pytest.param("# @here nothing but a comment\n", "the table is a YAML mapping", id="empty"),
    ],
)
def test_broken_yaml_gives_a_line(text: str, reason: str) -> None:
    ((line, where, message),) = problems(text)
    assert (line, where) == (marks(text)["here"], "")
    assert reason in message


MANY = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  payment: {url: "ftp://127.0.0.1:8002", timeout: 2s}  # @payment-url
  catalog: {url: "http://127.0.0.1:8003", timeout: never}  # @catalog-timeout
default: monolith
routes:
  - name: broken
    match: {path: /x, methods: [GET]}
    to: ghost  # @ghost
    timeout: soon  # @soon
  - name: split
    match: {path: /split}
    split:
      monolith: 50
      phantom: 50  # @phantom
  - name: a
    match: {path: /a}
    to: monolith
  - name: a  # @dup-name
    match: {path: /b}
    to: catalog
  - name: again
    match: {path: /a}  # @dup-route
    to: payment
  - name: Upper  # @upper
    match: {path: /upper}
    to: monolith
"""


def test_every_problem_is_reported_at_once() -> None:
    at = marks(MANY)
    assert {(line, where) for line, where, _ in problems(MANY)} == {
        (at["payment-url"], "upstreams.payment.url"),
        (at["catalog-timeout"], "upstreams.catalog.timeout"),
        # an unknown upstream in a route that also has a field error
        (at["ghost"], "routes[0].to"),
        (at["soon"], "routes[0].timeout"),
        (at["phantom"], "routes[1].split.phantom"),
        (at["dup-name"], "routes[3].name"),
        (at["dup-route"], "routes[4].match"),
        (at["upper"], "routes[5].name"),
    }


def test_described_problems_are_sorted_by_line_one_per_line() -> None:
    with pytest.raises(TableInvalid) as caught:
        load_text(MANY, "conf/routes.yaml")
    lines = caught.value.describe().splitlines()
    assert len(lines) == len(caught.value.problems) == 8
    numbers = []
    for text in lines:
        found = re.fullmatch(r"conf/routes\.yaml:(\d+): ([\w.\[\]-]+): (.+)", text)
        assert found is not None, text
        numbers.append(int(found.group(1)))
    assert numbers == sorted(numbers)
    assert str(caught.value) == caught.value.describe()


def test_an_invalid_split_still_reports_its_unknown_upstreams() -> None:
    text = (
        HEADER
        + "  - name: pay\n    match: {path: /pay}\n    split:  # @sum\n"
        + "      monolith: 50\n      ghost: 40  # @ghost\n"
        + "  - just-a-name  # @not-a-route\n"
    )
    at = marks(text)
    assert {(line, where) for line, where, _ in problems(text)} == {
        (at["sum"], "routes[0].split"),
        (at["ghost"], "routes[0].split.ghost"),
        (at["not-a-route"], "routes[1]"),
    }


def test_messages_name_the_routes_index_in_the_file() -> None:
    text = (
        HEADER
        + "  - name: broken\n    match: {path: /x}\n    to: monolith\n    timeout: soon\n"
        + PAY_TO_MONOLITH
        + "  - name: again\n    match: {path: /pay}\n    to: payment\n"
    )
    reported = {where: message for _, where, message in problems(text)}
    assert reported["routes[2].match"] == (
        "route 'again' duplicates route 'pay' (routes[1]) and never matches"
    )


def test_a_duplicate_name_is_reported_even_when_the_route_has_another_error() -> None:
    text = (
        HEADER
        + PAY_TO_MONOLITH
        + "  - name: pay  # @name\n    match: {path: /b}\n    to: monolith\n"
        + "    timeout: soon  # @timeout\n"
    )
    at = marks(text)
    assert {(line, where) for line, where, _ in problems(text)} == {
        (at["name"], "routes[1].name"),
        (at["timeout"], "routes[1].timeout"),
    }


def test_a_missing_top_level_field_is_reported() -> None:
    assert problems("upstreams:\n  monolith: {url: 'http://127.0.0.1:8001'}\n") == [
        (None, "default", "missing field 'default'")
    ]


VALID = """\
version: 7
max_body: 10MB
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  payment:  {url: "https://payments.internal", timeout: 2s, connect_timeout: 250ms}
default: monolith
routes:
  - name: payments
    match: {path: /api/v1/payments, methods: [GET, POST]}
    split: {monolith: 90, payment: 10}
    sticky: header:X-User-Id
  - name: refunds
    match: {path: /api/v1/payments/refunds, exact: true, host: Shop.Example}
    to: payment
    timeout: 1.5s
    max_body: 512KiB
    expose: internal
"""


def test_a_valid_table_loads() -> None:
    table = load_text(VALID)
    assert table.version == 7
    assert table.max_body == 10_000_000
    assert table.default == "monolith"
    assert table.upstreams["payment"].timeout == 2.0
    assert table.upstreams["payment"].connect_timeout == 0.25
    payments, refunds = table.routes
    assert payments.split == {"monolith": 90, "payment": 10}
    assert payments.sticky == "header:x-user-id"
    assert (refunds.match.exact, refunds.match.host) == (True, "shop.example")
    assert (refunds.timeout, refunds.max_body, refunds.expose) == (1.5, 512 * 1024, "internal")


def test_load_file_reads_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(VALID, encoding="utf-8")
    assert load_file(path) == load_text(VALID)


def test_load_file_names_the_file_in_problems(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    text = HEADER.replace("default: monolith", "default: nowhere") + PAY_TO_MONOLITH
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TableInvalid) as caught:
        load_file(path)
    assert caught.value.describe() == f"{path}:7: default: unknown upstream 'nowhere'"


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(TableInvalid, match="cannot read") as caught:
        load_file(path)
    assert caught.value.source == str(path)


def test_a_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_bytes(HEADER.encode() + b"# caf\xe9\n")
    with pytest.raises(TableInvalid, match="not UTF-8"):
        load_file(path)


def test_single_upstream_sends_everything_to_one_url() -> None:
    table = single_upstream("http://127.0.0.1:8001")
    assert table.routes == ()
    assert table.upstreams[table.default].url == "http://127.0.0.1:8001"


def test_single_upstream_checks_the_url() -> None:
    with pytest.raises(
        TableInvalid, match=r"^--upstream:\d+: upstreams\.default\.url: .*only http"
    ):
        single_upstream("ftp://127.0.0.1:8001")
