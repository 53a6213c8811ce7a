"""Whole-table checks: upstream URLs, references by name, duplicate and shadowed routes."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.table.compile import compile_table
from proxy.table.model import RouteTable
from proxy.table.validate import Problem, check_upstream_url, validate
from tests.proxy.tables import UPSTREAMS, route, routed


def problems_of(routes: list[dict[str, Any]], **fields: Any) -> list[tuple[str, str]]:
    table = RouteTable.model_validate(
        {"upstreams": UPSTREAMS, "default": "monolith", "routes": routes, **fields}
    )
    return [(p.where(), p.message) for p in validate(table)]


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://127.0.0.1:8001", id="loopback-with-port"),
        pytest.param("https://payments.internal", id="https-name"),
        pytest.param("http://payments.internal/", id="trailing-slash"),
        pytest.param("http://[::1]:8002", id="ipv6"),
        pytest.param("HTTP://monolith:8001", id="scheme-case"),
        pytest.param("http://10.0.0.7:8080", id="private-address"),
    ],
)
def test_good_upstream_urls(url: str) -> None:
    assert check_upstream_url(url) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("ftp://files.internal", "only http:// and https://", id="ftp"),
        pytest.param("unix:///run/app.sock", "only http:// and https://", id="unix-socket"),
        pytest.param("127.0.0.1:8001", "only http:// and https://", id="no-scheme"),
        pytest.param("http://", "names no host", id="no-host"),
        pytest.param("http://user:secret@monolith", "credentials", id="credentials"),
        pytest.param("http://token@monolith", "credentials", id="user-only"),
        pytest.param("http://monolith/api", "no path, query or fragment", id="path"),
        pytest.param("http://monolith?debug=1", "no path, query or fragment", id="query"),
        pytest.param("http://monolith#x", "no path, query or fragment", id="fragment"),
        pytest.param("http://monolith:0", "port 0", id="port-zero"),
        pytest.param("http://monolith:99999", "not a URL", id="port-out-of-range"),
        pytest.param("http://[::1", "not a URL", id="broken-ipv6"),
        pytest.param("http://169.254.169.254", "link-local", id="aws-metadata"),
        pytest.param("http://169.254.10.1:80", "link-local", id="ipv4-link-local"),
        pytest.param("http://[fe80::1]", "link-local", id="ipv6-link-local"),
        pytest.param("http://100.100.100.200", "metadata", id="alibaba-metadata"),
        pytest.param("http://[fd00:ec2::254]", "metadata", id="aws-ipv6-metadata"),
        pytest.param("http://metadata.google.internal", "metadata", id="gcp-metadata-name"),
        pytest.param("http://Metadata.Google.Internal", "metadata", id="metadata-name-case"),
        pytest.param("http://instance-data", "metadata", id="ec2-instance-data"),
        pytest.param("http://0.0.0.0:8001", "cannot be connected to", id="unspecified"),
        pytest.param("http://224.0.0.1", "cannot be connected to", id="multicast"),
    ],
)
def test_bad_upstream_urls(url: str, reason: str) -> None:
    why = check_upstream_url(url)
    assert why is not None
    assert reason in why


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://metadata.google.internal.", id="metadata-name-trailing-dot"),
        pytest.param("http://2852039166", id="ipv4-as-decimal-integer"),
        pytest.param("http://169.254.43518", id="ipv4-short-form"),
        pytest.param("http://[::ffff:169.254.169.254]", id="ipv4-mapped-ipv6"),
    ],
)
def test_other_spellings_of_metadata_addresses_are_refused(url: str) -> None:
    # getaddrinfo() resolves every one of these to 169.254.169.254 (or the GCP server).
    assert check_upstream_url(url) is not None


def test_unknown_default_and_references() -> None:
    routes = [
        route("one", "/one", to="ghost"),
        {"name": "two", "match": {"path": "/two"}, "split": {"monolith": 50, "phantom": 50}},
    ]
    assert problems_of(routes, default="nowhere") == [
        ("default", "unknown upstream 'nowhere'"),
        ("routes[0].to", "unknown upstream 'ghost'"),
        ("routes[1].split.phantom", "unknown upstream 'phantom'"),
    ]


def test_duplicate_route_names() -> None:
    routes = [route("pay", "/a"), route("pay", "/b"), route("pay", "/c")]
    assert problems_of(routes) == [
        ("routes[1].name", "route name 'pay' is also used by routes[0]"),
        ("routes[2].name", "route name 'pay' is also used by routes[0]"),
    ]


def test_problem_where_names_the_field() -> None:
    assert str(Problem(("routes", 2, "match", "path"), "bad")) == "routes[2].match.path: bad"
    assert str(Problem((), "YAML: broken")) == "YAML: broken"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param({"path": "/pay"}, {"path": "/pay"}, id="same-prefix"),
        pytest.param({"path": "/pay"}, {"path": "/pay/"}, id="trailing-slash"),
        pytest.param(
            {"path": "/pay", "exact": True}, {"path": "/pay", "exact": True}, id="same-exact"
        ),
        pytest.param(
            {"path": "/pay", "methods": ["GET", "POST"]},
            {"path": "/pay", "methods": ["post", "GET"]},
            id="same-methods-any-order",
        ),
        pytest.param(
            {"path": "/pay", "host": "Shop.Example", "headers": {"X-Canary": "1"}},
            {"path": "/pay", "host": "shop.example", "headers": {"x-canary": "1"}},
            id="same-host-and-header-any-case",
        ),
    ],
)
def test_identical_match_duplicates(first: dict[str, Any], second: dict[str, Any]) -> None:
    routes = [
        {"name": "first", "match": first, "to": "monolith"},
        {"name": "second", "match": second, "to": "payment"},
    ]
    assert problems_of(routes) == [
        (
            "routes[1].match",
            "route 'second' duplicates route 'first' (routes[0]) and never matches",
        )
    ]


@pytest.mark.parametrize(
    ("routes", "requests"),
    [
        pytest.param(
            [route("broad", "/pay"), route("gets", "/pay", methods=["GET"])],
            {"GET": "gets", "HEAD": "gets", "POST": "broad"},
            id="more-conditions-listed-second",
        ),
        pytest.param(
            [
                route("both", "/pay", methods=["GET", "POST"]),
                route("gets", "/pay", methods=["GET"]),
            ],
            {"GET": "gets", "POST": "both"},
            id="fewer-methods-listed-second",
        ),
        pytest.param(
            [route("broad", "/pay"), route("hosted", "/pay", host="shop.example")],
            {"GET": "hosted"},
            id="host-condition-listed-second",
        ),
    ],
)
def test_a_more_specific_route_is_never_shadowed(
    routes: list[dict[str, Any]], requests: dict[str, str]
) -> None:
    """Within one path the more specific route is tried first, whatever the file order: the
    validator reports nothing and every route takes some request."""
    assert problems_of(routes) == []
    snapshot = compile_table(
        RouteTable.model_validate({"upstreams": UPSTREAMS, "default": "monolith", "routes": routes})
    )
    for method, name in requests.items():
        assert routed(snapshot, "/pay", method) == name, method


def test_exact_and_prefix_on_one_path_do_not_shadow_each_other() -> None:
    routes = [route("prefix", "/pay"), route("exact", "/pay", exact=True)]
    assert problems_of(routes) == []


def test_routes_on_different_paths_do_not_shadow_each_other() -> None:
    routes = [route("short", "/pay"), route("long", "/pay/refunds")]
    assert problems_of(routes) == []


def test_each_route_is_reported_once() -> None:
    routes = [route("a", "/pay"), route("b", "/pay"), route("c", "/pay")]
    assert [where for where, _ in problems_of(routes)] == ["routes[1].match", "routes[2].match"]


def test_a_head_route_after_a_get_route_is_reported() -> None:
    routes = [route("gets", "/pay", methods=["GET"]), route("heads", "/pay", methods=["HEAD"])]
    snapshot = compile_table(
        RouteTable.model_validate({"upstreams": UPSTREAMS, "default": "monolith", "routes": routes})
    )
    assert routed(snapshot, "/pay", "HEAD") == "gets"  # `heads` can never match
    assert [where for where, _ in problems_of(routes)] == ["routes[1].match"]


def test_a_host_with_port_after_the_same_host_without_is_reported() -> None:
    routes = [
        route("any-port", "/pay", host="shop.example"),
        route("port-8443", "/pay", host="shop.example:8443"),
    ]
    snapshot = compile_table(
        RouteTable.model_validate({"upstreams": UPSTREAMS, "default": "monolith", "routes": routes})
    )
    assert routed(snapshot, "/pay", host=b"shop.example:8443") == "any-port"
    assert [where for where, _ in problems_of(routes)] == ["routes[1].match"]
