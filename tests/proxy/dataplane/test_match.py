"""Which route a request takes: exact paths, then the deepest prefix at a segment boundary;
within one path the most specific route; no match → None (the default upstream)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest

from proxy.dataplane.match import find_folded_route, folded, host_name
from tests.proxy.tables import make_snapshot, route, routed

PAYMENTS = make_snapshot(
    [
        route("everything", "/"),
        route("api", "/api", to="catalog"),
        route("pay", "/api/v1/pay", to="catalog"),
        route("payments", "/api/v1/payments", to="payment"),
        route("payments-exact", "/api/v1/payments", to="payment", exact=True),
        route("refunds", "/api/v1/payments/refunds", to="payment"),
        route("health", "/healthz", exact=True),
    ]
)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        pytest.param("/api/v1/payments", "payments-exact", id="exact-beats-prefix"),
        pytest.param("/api/v1/payments/12", "payments", id="prefix-below"),
        pytest.param("/api/v1/payments/12/capture", "payments", id="prefix-two-below"),
        pytest.param("/api/v1/payments/refunds", "refunds", id="deepest-prefix-itself"),
        pytest.param("/api/v1/payments/refunds/7", "refunds", id="deepest-prefix-wins"),
        pytest.param("/api/v1/pay", "pay", id="short-prefix-itself"),
        pytest.param("/api/v1/pay/1", "pay", id="short-prefix-below"),
        pytest.param("/api/v1/paym", "api", id="not-a-segment-boundary"),
        pytest.param("/api/v1/paymentsx", "api", id="longer-last-segment"),
        pytest.param("/api/v1", "api", id="between-prefixes"),
        pytest.param("/api", "api", id="prefix-itself"),
        pytest.param("/apis", "everything", id="longer-first-segment"),
        pytest.param("/healthz", "health", id="exact"),
        pytest.param("/healthz/deep", "everything", id="exact-is-not-a-prefix"),
        pytest.param("/", "everything", id="root"),
        pytest.param("/static/img/a.svg", "everything", id="root-prefix-catches-the-rest"),
    ],
)
def test_paths(path: str, name: str) -> None:
    assert routed(PAYMENTS, path) == name


def test_payments_prefix_is_not_taken_by_pay() -> None:
    snapshot = make_snapshot([route("pay", "/api/v1/pay", to="catalog")])
    assert routed(snapshot, "/api/v1/payments") is None
    assert routed(snapshot, "/api/v1/payments/12") is None


def test_payments_prefix_matches_itself_and_below() -> None:
    snapshot = make_snapshot([route("payments", "/api/v1/payments", to="payment")])
    assert routed(snapshot, "/api/v1/payments") == "payments"
    assert routed(snapshot, "/api/v1/payments/12") == "payments"
    assert routed(snapshot, "/api/v1") is None


def test_no_match_means_the_default_upstream() -> None:
    snapshot = make_snapshot([route("payments", "/api/v1/payments", exact=True)])
    assert routed(snapshot, "/api/v1/payments/12") is None
    assert routed(snapshot, "/") is None
    assert routed(make_snapshot([]), "/anything") is None


@pytest.mark.parametrize(
    ("method", "name"),
    [
        pytest.param("GET", "reads", id="get"),
        pytest.param("HEAD", "reads", id="head-follows-get"),
        pytest.param("POST", "writes", id="post"),
        pytest.param("DELETE", "anything", id="other-method-falls-through"),
        pytest.param("get", "anything", id="method-is-case-sensitive"),
    ],
)
def test_methods(method: str, name: str) -> None:
    snapshot = make_snapshot(
        [
            route("anything", "/orders"),
            route("reads", "/orders", methods=["GET"]),
            route("writes", "/orders", methods=["POST"]),
        ]
    )
    assert routed(snapshot, "/orders/1", method) == name


def test_head_only_follows_get() -> None:
    snapshot = make_snapshot([route("writes", "/orders", methods=["POST"])])
    assert routed(snapshot, "/orders", "HEAD") is None


@pytest.mark.parametrize(
    ("condition", "host", "taken"),
    [
        pytest.param("shop.example", b"shop.example", True, id="same-host"),
        pytest.param("shop.example", b"shop.example:8080", True, id="request-has-port"),
        pytest.param("shop.example", b"SHOP.Example", True, id="request-host-case"),
        pytest.param("shop.example", b"Shop.Example:443", True, id="case-and-port"),
        pytest.param("shop.example", b"api.shop.example", False, id="subdomain"),
        pytest.param("shop.example", b"shop.example.evil", False, id="suffix"),
        pytest.param("shop.example:8443", b"shop.example:8443", True, id="same-port"),
        # Host names only: the port a client writes says nothing of the listener it reached,
        # and a route on one listener must not be escaped by another spelling of its host.
        pytest.param("shop.example:8443", b"shop.example:8080", True, id="other-port"),
        pytest.param("shop.example:8443", b"shop.example", True, id="request-without-port"),
        pytest.param("shop.example", b"shop.example.", True, id="fully-qualified"),
        pytest.param("shop.example", b"SHOP.example.:80", True, id="fully-qualified-with-port"),
        pytest.param("shop.example", b"shop.example..", False, id="two-trailing-dots"),
        pytest.param("[::1]", b"[::1]:8080", True, id="ipv6-request-has-port"),
        pytest.param("[::1]:8080", b"[::1]:8080", True, id="ipv6-same-port"),
        pytest.param("[::1]", b"[::2]", False, id="other-ipv6"),
        pytest.param("shop.example:8443", b"SHOP.example:8443", True, id="port-and-case"),
    ],
)
def test_host_condition(condition: str, host: bytes, taken: bool) -> None:
    snapshot = make_snapshot([route("hosted", "/", host=condition)])
    assert (routed(snapshot, "/x", host=host) == "hosted") is taken


@pytest.mark.parametrize(
    ("host", "name"),
    [
        pytest.param(b"shop.example:8080", b"shop.example", id="port-dropped"),
        pytest.param(b"shop.example", b"shop.example", id="no-port"),
        pytest.param(b"[::1]:8080", b"[::1]", id="ipv6-port-dropped"),
        pytest.param(b"[::1]", b"[::1]", id="ipv6"),
    ],
)
def test_host_name(host: bytes, name: bytes) -> None:
    assert host_name(host) == name


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        pytest.param([(b"x-canary", b"yes")], "canary", id="matching-header"),
        pytest.param([(b"x-other", b"1"), (b"x-canary", b"yes")], "canary", id="among-others"),
        pytest.param([(b"x-canary", b"no"), (b"x-canary", b"yes")], "canary", id="any-repeat"),
        pytest.param([(b"x-canary", b"no")], "plain", id="other-value"),
        pytest.param([(b"x-canary", b"YES")], "plain", id="value-is-case-sensitive"),
        pytest.param([], "plain", id="absent"),
    ],
)
def test_header_condition(headers: list[tuple[bytes, bytes]], name: str) -> None:
    snapshot = make_snapshot(
        [route("plain", "/shop"), route("canary", "/shop", headers={"X-Canary": "yes"})]
    )
    assert routed(snapshot, "/shop", headers=tuple(headers)) == name


def test_every_header_condition_must_hold() -> None:
    snapshot = make_snapshot([route("both", "/", headers={"x-a": "1", "x-b": "2"})])
    assert routed(snapshot, "/", headers=((b"x-a", b"1"), (b"x-b", b"2"))) == "both"
    assert routed(snapshot, "/", headers=((b"x-a", b"1"),)) is None


def test_an_exact_route_whose_conditions_fail_falls_back_to_prefixes() -> None:
    snapshot = make_snapshot(
        [route("prefix", "/pay"), route("exact-posts", "/pay", exact=True, methods=["POST"])]
    )
    assert routed(snapshot, "/pay", "POST") == "exact-posts"
    assert routed(snapshot, "/pay", "GET") == "prefix"


def test_a_deep_prefix_whose_conditions_fail_falls_back_to_a_shallower_one() -> None:
    snapshot = make_snapshot(
        [route("shallow", "/api"), route("deep-canary", "/api/v1", headers={"x-canary": "1"})]
    )
    assert routed(snapshot, "/api/v1/x", headers=((b"x-canary", b"1"),)) == "deep-canary"
    assert routed(snapshot, "/api/v1/x") == "shallow"


def generated(count: int) -> tuple[list[dict[str, Any]], dict[tuple[str, str], str | None]]:
    """`count` routes under 37 team prefixes, every fifth an exact health check of the route
    before it and every fifth a POST-only one; and the route each request must take."""
    routes: list[dict[str, Any]] = []
    expect: dict[tuple[str, str], str | None] = {}
    upstreams = ("monolith", "payment", "catalog")
    for i in range(count):
        if i % 5 == 4:
            base = f"/team{(i - 1) % 37}/svc{i - 1}"
            routes.append(route(f"e{i}", f"{base}/health", upstreams[i % 3], exact=True))
            expect[("GET", f"{base}/health")] = f"e{i}"
            expect[("GET", f"{base}/health/deeper")] = f"p{i - 1}"
            continue
        base = f"/team{i % 37}/svc{i}"
        methods = ["POST"] if i % 5 == 1 else None
        routes.append(route(f"p{i}", base, upstreams[i % 3], methods=methods))
        expect[("POST", base)] = f"p{i}"
        expect[("GET", f"{base}/orders/{i}")] = None if methods else f"p{i}"
        expect[("POST", f"{base}x")] = None
        expect[("POST", f"/team{(i + 1) % 37}/svc{i}")] = None
        if i % 5 != 3:
            expect[("GET", f"{base}/health")] = None if methods else f"p{i}"
    return routes, expect


@pytest.mark.parametrize(
    "count",
    [
        pytest.param(10, id="10-routes"),
        pytest.param(1_000, id="1000-routes"),
        pytest.param(10_000, id="10000-routes"),
    ],
)
def test_matching_stays_correct_with_many_routes(count: int) -> None:
    routes, expect = generated(count)
    assert len(routes) == count
    snapshot = make_snapshot(routes)
    wrong = {
        (method, path): (routed(snapshot, path, method), name)
        for (method, path), name in expect.items()
        if routed(snapshot, path, method) != name
    }
    assert wrong == {}


# --- the folded index: case-folded readings against the routes' folded paths -----------------
CASED = make_snapshot(
    [
        route("admin", "/admin"),
        route("reports", "/Reports"),
        route("exact", "/Exact/Path", exact=True),
        route("posts", "/admin/Posts", methods=["POST"]),
    ]
)


def folded_name(snapshot: Any, key: str, method: str = "GET") -> str | None:
    found = find_folded_route(snapshot, key, method, b"shop.example", ())
    return found.name if found is not None else None


@pytest.mark.parametrize(
    ("key", "method", "name"),
    [
        pytest.param("/admin/x", "GET", "admin", id="lower-case-route"),
        pytest.param("/reports/q1", "GET", "reports", id="route-declared-with-capitals"),
        pytest.param("/exact/path", "GET", "exact", id="exact-route"),
        pytest.param("/exact/path/x", "GET", None, id="exact-is-not-a-prefix"),
        pytest.param("/admin/posts", "POST", "posts", id="conditions-still-apply"),
        pytest.param("/admin/posts", "GET", "admin", id="conditions-fail-to-the-prefix"),
        pytest.param("/elsewhere", "GET", None, id="no-route"),
    ],
)
def test_a_folded_key_matches_the_routes_folded_paths(
    key: str, method: str, name: str | None
) -> None:
    assert folded_name(CASED, key, method) == name
    assert routed(CASED, "/reports/q1") is None  # the plain matcher stays case-sensitive


def test_the_folded_index_knows_whether_route_paths_have_capitals() -> None:
    assert folded(CASED).mixed
    assert not folded(PAYMENTS).mixed


def test_the_folded_index_is_built_once_per_snapshot_and_not_kept_alive_by_it() -> None:
    snapshot = make_snapshot([route("admin", "/Admin")])
    assert folded(snapshot) is folded(snapshot)
    other = make_snapshot([route("admin", "/Admin")])
    assert folded(other) is not folded(snapshot)
    gone = weakref.ref(snapshot)
    del snapshot
    gc.collect()
    assert gone() is None


def test_a_case_insensitive_snapshot_is_its_own_folded_index() -> None:
    snapshot = make_snapshot([route("reports", "/Reports")], paths={"case_insensitive": True})
    assert folded(snapshot).trie is snapshot.trie
    assert folded_name(snapshot, "/reports") == "reports"
