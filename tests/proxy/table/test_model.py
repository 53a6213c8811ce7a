"""routes.yaml as typed data: the field rules one route or upstream can break on its own."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from proxy.table.model import DEFAULT_MAX_BODY, Match, Route, RouteTable, Upstream


def a_route(**fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "r", "match": {"path": "/x"}, "to": "monolith"}
    spec.update(fields)
    return spec


def test_the_documented_example_parses() -> None:
    table = RouteTable.model_validate(
        {
            "version": 3,
            "upstreams": {
                "monolith": {"url": "http://127.0.0.1:8001"},
                "payment": {"url": "http://127.0.0.1:8002", "timeout": "2s"},
            },
            "default": "monolith",
            "routes": [
                {
                    "name": "payments",
                    "match": {"path": "/api/v1/payments", "methods": ["GET", "POST"]},
                    "split": {"monolith": 90, "payment": 10},
                    "sticky": "header:X-User-Id",
                }
            ],
        }
    )
    assert table.version == 3
    assert table.upstreams["payment"].timeout == 2.0
    assert table.upstreams["monolith"].timeout == 60.0
    assert table.max_body == DEFAULT_MAX_BODY
    (payments,) = table.routes
    assert payments.match.methods == ("GET", "POST")
    assert payments.split == {"monolith": 90, "payment": 10}
    assert payments.sticky == "header:x-user-id"
    assert payments.upstream_names() == ("monolith", "payment")


def test_route_timeout_and_body_cap_are_parsed() -> None:
    route = Route.model_validate(a_route(timeout="250ms", max_body="1MiB"))
    assert route.timeout == 0.25
    assert route.max_body == 1024**2


def test_route_timeout_and_body_cap_default_to_unset() -> None:
    route = Route.model_validate(a_route())
    assert route.timeout is None
    assert route.max_body is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        pytest.param(
            {"split": {"monolith": 50, "payment": 50}}, "exactly one of", id="to-and-split"
        ),
        pytest.param({"to": None}, "exactly one of", id="neither-to-nor-split"),
        pytest.param(
            {"to": None, "split": {"monolith": 100}}, "at least two", id="split-of-one-upstream"
        ),
        pytest.param(
            {"to": None, "split": {"monolith": 90, "payment": 20}},
            "sum to 110",
            id="weights-over-100",
        ),
        pytest.param(
            {"to": None, "split": {"monolith": 50, "payment": 40}},
            "sum to 90",
            id="weights-under-100",
        ),
        pytest.param(
            {"to": None, "split": {"monolith": 110, "payment": -10}},
            "not within 0-100",
            id="weight-out-of-range",
        ),
        pytest.param({"sticky": "header x-user"}, "sticky is header:NAME", id="bad-sticky"),
        pytest.param({"pin": "soon"}, "duration", id="bad-pin-window"),
        pytest.param(
            {"shadow": {"to": "payment", "methods": ["DELETE"]}},
            "never carries a write",
            id="shadow-of-a-write",
        ),
        pytest.param(
            {"compare": {"ignore": ["updated_at"]}}, "'updated_at'", id="compare-path-without-$"
        ),
        pytest.param({"name": "Payments"}, "a name is", id="uppercase-name"),
        pytest.param({"name": "-payments"}, "a name is", id="name-starts-with-dash"),
        pytest.param({"name": ""}, "a name is", id="empty-name"),
        pytest.param({"timeout": "0s"}, "greater than zero", id="zero-timeout"),
        pytest.param({"timeout": "soon"}, "not a duration", id="bad-timeout"),
        pytest.param({"max_body": "1.5MiB"}, "not a size", id="bad-max-body"),
        pytest.param({"expose": "public"}, "expose", id="unknown-expose"),
        pytest.param({"colour": "blue"}, "colour", id="unknown-field"),
    ],
)
def test_route_field_rules(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        Route.model_validate(a_route(**fields))


@pytest.mark.parametrize(
    ("sticky", "stored"),
    [
        pytest.param("header:X-User-Id", "header:x-user-id", id="header-name-lower-cased"),
        pytest.param("cookie:SessionID", "cookie:SessionID", id="cookie-name-keeps-case"),
        pytest.param("client-ip", "client-ip", id="client-ip"),
    ],
)
def test_sticky_forms(sticky: str, stored: str) -> None:
    route = Route.model_validate(
        a_route(to=None, split={"monolith": 90, "payment": 10}, sticky=sticky)
    )
    assert route.sticky == stored


@pytest.mark.parametrize(
    "sticky",
    [
        pytest.param("header:", id="header-without-name"),
        pytest.param("cookie", id="cookie-without-name"),
        pytest.param("query:user", id="unknown-kind"),
        pytest.param("header:X User", id="header-name-with-space"),
        pytest.param("client_ip", id="misspelt-client-ip"),
    ],
)
def test_bad_sticky_is_refused(sticky: str) -> None:
    with pytest.raises(ValidationError, match="sticky is"):
        Route.model_validate(a_route(to=None, split={"monolith": 90, "payment": 10}, sticky=sticky))


@pytest.mark.parametrize(
    ("path", "stored"),
    [
        pytest.param("/api/v1/payments", "/api/v1/payments", id="plain"),
        pytest.param("/api/v1/payments/", "/api/v1/payments", id="trailing-slash-dropped"),
        pytest.param("/", "/", id="root"),
        pytest.param("/static/img/a.svg", "/static/img/a.svg", id="dot-inside-segment"),
    ],
)
def test_match_paths(path: str, stored: str) -> None:
    assert Match(path=path).path == stored


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("api/v1", id="relative"),
        pytest.param("", id="empty"),
        pytest.param("/a?b=1", id="query"),
        pytest.param("/a#top", id="fragment"),
        pytest.param("/a%2Fb", id="percent-escape"),
        pytest.param("/a\\b", id="backslash"),
        pytest.param("/a b", id="space"),
        pytest.param("/caf\u00e9", id="non-ascii"),
        pytest.param("/a//b", id="empty-segment"),
        pytest.param("/a/./b", id="dot-segment"),
        pytest.param("/a/../b", id="dot-dot-segment"),
    ],
)
def test_bad_match_paths_are_refused(path: str) -> None:
    with pytest.raises(ValidationError):
        Match(path=path)


def test_methods_are_upper_cased_and_sorted() -> None:
    assert Match(path="/x", methods=("post", "GET")).methods == ("GET", "POST")


@pytest.mark.parametrize(
    ("methods", "reason"),
    [
        pytest.param([], "leave it out", id="empty-list"),
        pytest.param(["GET", "get"], "listed twice", id="duplicate"),
        pytest.param(["CONNECT"], "never proxied", id="connect"),
        pytest.param(["trace"], "never proxied", id="trace"),
        pytest.param(["GE T"], "not an HTTP method", id="not-a-token"),
    ],
)
def test_bad_methods_are_refused(methods: list[str], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        Match(path="/x", methods=tuple(methods))


@pytest.mark.parametrize(
    ("host", "stored"),
    [
        pytest.param("Shop.Example", "shop.example", id="lower-cased"),
        pytest.param("shop.example:8443", "shop.example:8443", id="with-port"),
        pytest.param("[::1]:8080", "[::1]:8080", id="ipv6-with-port"),
    ],
)
def test_match_hosts(host: str, stored: str) -> None:
    assert Match(path="/x", host=host).host == stored


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("http://shop.example", id="url"),
        pytest.param("shop example", id="space"),
        pytest.param("shop.example/x", id="path"),
        pytest.param("shop.example:port", id="named-port"),
    ],
)
def test_bad_match_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValidationError, match="host"):
        Match(path="/x", host=host)


def test_header_condition_names_are_lower_cased() -> None:
    match = Match(path="/x", headers={"X-Canary": "Yes"})
    assert match.headers == {"x-canary": "Yes"}


def test_bad_header_condition_name_is_refused() -> None:
    with pytest.raises(ValidationError, match="not a header name"):
        Match(path="/x", headers={"X Canary": "yes"})


@pytest.mark.parametrize(
    ("upstreams", "reason"),
    [
        pytest.param({}, "at least one upstream", id="none"),
        pytest.param({"Payment": {"url": "http://p"}}, "upstream name", id="uppercase-name"),
        pytest.param({"p": {"url": "http://p", "colour": "red"}}, "colour", id="unknown-field"),
        pytest.param(
            {"p": {"url": "http://p", "max_connections": 0}}, "max_connections", id="no-connections"
        ),
        pytest.param(
            {"p": {"url": "http://p", "connect_timeout": "-1s"}},
            "connect_timeout",
            id="bad-connect-timeout",
        ),
    ],
)
def test_upstream_rules(upstreams: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        RouteTable.model_validate({"upstreams": upstreams, "default": "p"})


def test_upstream_defaults() -> None:
    upstream = Upstream(url="http://127.0.0.1:8001")
    assert (upstream.timeout, upstream.connect_timeout, upstream.max_connections) == (60, 5, 256)


def test_models_are_immutable() -> None:
    route = Route.model_validate(a_route())
    with pytest.raises(ValidationError):
        route.to = "payment"  # type: ignore[misc]
