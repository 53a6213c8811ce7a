"""The request path's pure middle: what to do with a request (resolve), and what to do after a
try failed (next_step: stale re-send, retry, fallback or give up)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from proxy.dataplane.plan import (
    FALLBACK,
    GIVE_UP,
    RETRY,
    STALE,
    Plan,
    Tries,
    may_repeat,
    next_step,
    reacts_to,
    resolve,
)
from proxy.errors import ProxyError
from proxy.table.compile import Snapshot, compile_table
from proxy.table.model import RouteTable

SNAPSHOT = compile_table(
    RouteTable.model_validate(
        {
            "version": 42,
            "max_body": "10KB",
            "upstreams": {
                "monolith": {"url": "http://127.0.0.1:8001", "timeout": "30s"},
                "payment": {"url": "http://127.0.0.1:8002", "timeout": "2s"},
                "orders": {"url": "http://127.0.0.1:8003", "idempotent_writes": True},
            },
            "default": "monolith",
            "routes": [
                # Retry (3 tries in all) and fallback on the default failures.
                {
                    "name": "pay",
                    "match": {"path": "/pay"},
                    "to": "payment",
                    "retry": {"attempts": 3},
                    "fallback": "monolith",
                },
                # The same, to an upstream that honours Idempotency-Key.
                {
                    "name": "orders",
                    "match": {"path": "/orders"},
                    "to": "orders",
                    "retry": {"attempts": 3},
                    "fallback": "monolith",
                },
                # No safety net but the stale re-send (which is always on).
                {
                    "name": "bare",
                    "match": {"path": "/bare"},
                    "to": "payment",
                    "timeout": "1500ms",
                    "max_body": "1KiB",
                },
                {
                    "name": "retry-only",
                    "match": {"path": "/retry-only"},
                    "to": "payment",
                    "retry": {"on": ["connect-failure", 503]},
                },
                {
                    "name": "fallback-only",
                    "match": {"path": "/fallback-only"},
                    "to": "payment",
                    "fallback": {
                        "to": "monolith",
                        "on": ["connect-failure", "timeout", 502],
                        "methods": ["GET"],
                    },
                },
                # A split whose only live bucket is the fallback upstream itself.
                {
                    "name": "all-monolith",
                    "match": {"path": "/all-monolith"},
                    "split": {"monolith": 100, "payment": 0},
                    "fallback": "monolith",
                },
                {
                    "name": "inside",
                    "match": {"path": "/inside"},
                    "to": "payment",
                    "expose": "internal",
                },
                {
                    "name": "outside",
                    "match": {"path": "/outside"},
                    "to": "payment",
                    "expose": "external",
                },
            ],
        }
    )
)
KEY = (b"idempotency-key", b"order-7f3a")


def plan(
    path: str = "/pay",
    method: str = "GET",
    *,
    key: bool = False,
    external: bool = True,
    content_length: int | None = None,
    raw_path: bytes | None = None,
) -> Plan:
    return resolve(
        SNAPSHOT,
        external=external,
        role="external" if external else "internal",
        method=method,
        raw_path=raw_path if raw_path is not None else path.encode(),
        host=b"shop.example",
        headers=[(b"accept", b"*/*"), *([KEY] if key else [])],
        client="10.0.0.1",
        content_length=content_length,
    )


# --- resolve ---------------------------------------------------------------------------------


def test_a_request_no_route_matches_goes_to_the_default_upstream() -> None:
    found = plan("/catalog/items/3")
    assert found.route is None
    assert found.route_name == "default"
    assert found.upstream is SNAPSHOT.upstreams["monolith"]
    assert found.version == 42
    assert found.max_body == 10_000  # the table's cap
    assert found.read_timeout == 30.0  # the default upstream's
    assert (found.retry, found.fallback, found.keyed) == (None, None, False)


def test_a_matched_route_brings_its_upstream_and_safety_nets() -> None:
    found = plan("/pay/123", "POST")
    assert found.route is not None
    assert found.route_name == "pay"
    assert found.upstream is SNAPSHOT.upstreams["payment"]
    assert found.method == "POST"
    assert found.retry is not None
    assert found.retry.attempts == 3
    assert found.fallback is not None
    assert found.fallback.upstream is SNAPSHOT.upstreams["monolith"]


def test_a_split_route_takes_the_upstream_of_its_bucket() -> None:
    assert plan("/all-monolith").upstream is SNAPSHOT.upstreams["monolith"]


@pytest.mark.parametrize(
    ("path", "external", "route_name"),
    [
        pytest.param("/inside", False, "inside", id="internal-route-on-internal-listener"),
        pytest.param("/outside", True, "outside", id="external-route-on-external-listener"),
        pytest.param("/pay", True, "pay", id="both-on-external"),
        pytest.param("/pay", False, "pay", id="both-on-internal"),
        pytest.param("/elsewhere", False, "default", id="default-on-internal"),
    ],
)
def test_a_route_is_served_on_the_listeners_it_is_exposed_on(
    path: str, external: bool, route_name: str
) -> None:
    assert plan(path, external=external).route_name == route_name


@pytest.mark.parametrize(
    ("path", "external"),
    [
        pytest.param("/inside", True, id="internal-route-on-external-listener"),
        pytest.param("/outside", False, id="external-route-on-internal-listener"),
    ],
)
def test_a_route_not_exposed_on_the_listener_is_404(path: str, external: bool) -> None:
    with pytest.raises(ProxyError) as caught:
        plan(path, external=external)
    assert (caught.value.status, caught.value.kind) == (404, "not-found")
    assert ("external" if external else "internal") in caught.value.detail


@pytest.mark.parametrize(
    "raw_path",
    [
        pytest.param(b"/pay/x%2f..%2f..%2fadmin", id="encoded-slash-out-of-a-route"),
        pytest.param(b"/pay/%zz", id="broken-escape"),
        pytest.param(b"/../pay", id="above-root"),
        pytest.param(b"/pay%00", id="nul"),
        pytest.param(b"pay", id="not-a-path"),
    ],
)
def test_an_ambiguous_target_is_400(raw_path: bytes) -> None:
    with pytest.raises(ProxyError) as caught:
        plan(raw_path=raw_path)
    assert (caught.value.status, caught.value.kind) == (400, "bad-target")


# --- path spellings: the protection a path has cannot be bypassed by spelling it differently --


def guarded(**fields: Any) -> Snapshot:
    """/admin and /Reports (declared with capitals) on the internal listener only, /staff behind
    access rules, /admin/health carved out of /admin on both listeners, plain payments and
    public routes, and `fields` (paths, access)."""
    return compile_table(
        RouteTable.model_validate(
            {
                "upstreams": {
                    "monolith": {"url": "http://127.0.0.1:8001"},
                    "payment": {"url": "http://127.0.0.1:8002"},
                },
                "default": "monolith",
                "routes": [
                    {
                        "name": "admin",
                        "match": {"path": "/admin"},
                        "to": "monolith",
                        "expose": "internal",
                    },
                    {"name": "health", "match": {"path": "/admin/health"}, "to": "monolith"},
                    {
                        "name": "staff",
                        "match": {"path": "/staff"},
                        "to": "monolith",
                        "access": {"groups": ["staff"]},
                    },
                    {
                        "name": "reports",
                        "match": {"path": "/Reports"},
                        "to": "monolith",
                        "expose": "internal",
                    },
                    {"name": "payments", "match": {"path": "/api/v1/payments"}, "to": "payment"},
                    {
                        "name": "public",
                        "match": {"path": "/public"},
                        "to": "payment",
                        "access": "public",
                    },
                ],
                **fields,
            }
        )
    )


GUARDED = guarded()
REFUSING = guarded(paths={"escaped_slashes": "refuse"})
FOLDING = guarded(paths={"case_insensitive": True})
DEFAULT_ACCESS = guarded(access={"groups": ["staff"]})


def taken(snapshot: Snapshot, raw_path: bytes, *, external: bool = True) -> str:
    """The route a request takes ("default" for none), or "400"/"404" when it is refused."""
    try:
        found = resolve(
            snapshot,
            external=external,
            role="external" if external else "internal",
            method="GET",
            raw_path=raw_path,
            host=b"shop.example",
            headers=[],
            client="10.0.0.1",
            content_length=None,
        )
    except ProxyError as exc:
        refused = exc
    else:
        return found.route_name
    assert refused.kind == ("bad-target" if refused.status == 400 else "not-found")
    return str(refused.status)


# Spellings a lenient backend reads as /admin or below, with what the proxy does with them on
# the external listener (always a refusal: 404 as /admin itself, 400 where the escapes read as
# another route) and on the internal one (where /admin is served; a case variant protects
# nothing there and goes to the default upstream as before).
ADMIN = [
    pytest.param(b"/admin", "404", "admin", id="plain"),
    pytest.param(b"/ADMIN/flip", "404", "default", id="upper-case"),
    pytest.param(b"/Admin", "404", "default", id="capitalised"),
    pytest.param(b"/aDmIn/flip", "404", "default", id="mixed-case"),
    pytest.param(b"/%41DMIN", "404", "default", id="escaped-upper-case-letter"),
    pytest.param(b"/admin./", "404", "admin", id="trailing-dot-and-slash"),
    pytest.param(b"/admin.", "404", "admin", id="trailing-dot"),
    pytest.param(b"/admin%2e", "404", "admin", id="escaped-trailing-dot"),
    pytest.param(b"/admin%20", "404", "admin", id="trailing-space"),
    pytest.param(b"/admin%20./flip", "404", "admin", id="trailing-space-and-dot"),
    pytest.param(b"/admin;x=1", "404", "admin", id="path-parameter"),
    pytest.param(b"/admin;jsessionid=1/flip", "404", "admin", id="path-parameter-mid-path"),
    pytest.param(b"/./admin", "404", "admin", id="dot-segment"),
    pytest.param(b"/x/../admin", "404", "admin", id="dot-dot"),
    pytest.param(b"/x/..;/admin", "404", "admin", id="tomcat-dot-dot-semicolon"),
    pytest.param(b"/x/%2e%2e/admin", "404", "admin", id="escaped-dot-dot"),
    pytest.param(b"//admin", "404", "admin", id="double-slash"),
    pytest.param(b"/ADMIN;x=1/./flip.", "404", "default", id="everything-at-once"),
    pytest.param(b"/admin%2Fflip", "400", "400", id="escaped-slash"),
    pytest.param(b"/admin%2fflip", "400", "400", id="escaped-slash-lower"),
    pytest.param(b"/admin%2F", "400", "400", id="escaped-trailing-slash"),
    pytest.param(b"/admin%5Cflip", "400", "400", id="escaped-backslash"),
    pytest.param(b"/admin\\flip", "400", "400", id="backslash"),
    pytest.param(b"/x%2F..%2Fadmin", "400", "400", id="escaped-slash-traversal"),
    pytest.param(b"/x\\..\\admin", "400", "400", id="backslash-traversal"),
    pytest.param(b"/admin%09", "400", "400", id="trailing-tab"),
    pytest.param(b"/admin%252Fflip", "400", "400", id="double-escaped-slash"),
    pytest.param(b"/%2561dmin", "400", "400", id="double-escaped-letter"),
    pytest.param(b"/x%252F..%252Fadmin", "400", "400", id="double-escaped-traversal"),
    pytest.param(b"/ADMIN%2Fflip", "404", "default", id="upper-case-and-escaped-slash"),
    pytest.param(
        b"/api/v1/payments/ab%2F..%2F..%2F..%2F..%2Fadmin", "400", "400", id="out-of-payments"
    ),
    pytest.param(b"/staff/../admin", "400", "staff", id="two-protected-readings"),
    # Java's equalsIgnoreCase and .NET read the Turkish dotless i and dotted capital I as `i`.
    pytest.param(b"/adm%C4%B1n", "404", "default", id="dotless-i"),
    pytest.param(b"/adm%C4%B0n", "404", "default", id="dotted-capital-i"),
]


@pytest.mark.parametrize(("raw_path", "external", "internal"), ADMIN)
def test_no_spelling_reaches_an_internal_route_from_the_external_listener(
    raw_path: bytes, external: str, internal: str
) -> None:
    assert taken(GUARDED, raw_path) == external


@pytest.mark.parametrize(("raw_path", "external", "internal"), ADMIN)
def test_on_the_internal_listener_the_same_spellings_are_served(
    raw_path: bytes, external: str, internal: str
) -> None:
    assert taken(GUARDED, raw_path, external=False) == internal


@pytest.mark.parametrize(
    ("raw_path", "route"),
    [
        pytest.param(b"/staff/list", "staff", id="plain"),
        pytest.param(b"/STAFF/list", "staff", id="upper-case"),
        pytest.param(b"/Staff", "staff", id="capitalised"),
        pytest.param(b"/staff;x=1", "staff", id="path-parameter"),
        pytest.param(b"/staff./list", "staff", id="trailing-dot"),
        pytest.param(b"/staff%20", "staff", id="trailing-space"),
        pytest.param(b"/x/../staff", "staff", id="dot-dot"),
        pytest.param(b"//staff", "staff", id="double-slash"),
        pytest.param(b"/staff/list/..%2F..%2Fpublic", "400", id="escaped-slash-out"),
        pytest.param(b"/staff%2Flist", "400", id="escaped-slash"),
        pytest.param(b"/st%2561ff", "400", id="double-escaped-letter"),
        pytest.param(b"/staff/../public", "staff", id="dot-dot-out-of-it"),
        pytest.param(b"/staff/x/..;/../public", "staff", id="tomcat-dot-dot-out-of-it"),
    ],
)
def test_a_route_with_access_rules_is_taken_by_every_spelling(raw_path: bytes, route: str) -> None:
    """The route's access rules then decide (they run on plan.route)."""
    assert taken(GUARDED, raw_path) == route


@pytest.mark.parametrize(
    ("raw_path", "route"),
    [
        pytest.param(b"/admin/health", "health", id="plain"),
        pytest.param(b"/admin/health/x", "health", id="below"),
        pytest.param(b"/admin//health/", "health", id="empty-segments"),
        pytest.param(b"/admin/health.", "404", id="trailing-dot-read-as-written-is-admin"),
        pytest.param(b"/admin/health;x", "404", id="parameter-read-as-written-is-admin"),
        pytest.param(b"/admin/x/../health", "404", id="dot-dot-read-as-written-is-admin"),
        pytest.param(b"/admin/HEALTH", "404", id="case-variant-is-admin"),
    ],
)
def test_a_route_carved_out_of_a_protected_one(raw_path: bytes, route: str) -> None:
    """A spelling of /admin/health that a backend may read as another path under /admin is
    /admin's: a backend taking it as written serves it as /admin's."""
    assert taken(GUARDED, raw_path) == route


@pytest.mark.parametrize(
    ("raw_path", "route"),
    [
        pytest.param(b"/api/v1/payments/ab%2Fcd", "payments", id="id-with-escaped-slash"),
        pytest.param(b"/api/v1/payments/ab%2fcd", "payments", id="id-with-escaped-slash-lower"),
        pytest.param(b"/api/v1/payments/ab%5Ccd", "payments", id="id-with-escaped-backslash"),
        pytest.param(b"/api/v1/payments/ab%252Fcd", "payments", id="id-with-double-escape"),
        pytest.param(b"/api/v1/payments/ab%2F..%2Fcd", "payments", id="escaped-dots-inside"),
        pytest.param(b"/api/v1/payments;jsessionid=1", "payments", id="path-parameter"),
        pytest.param(b"/api/v1/payments/7.", "payments", id="trailing-dot"),
        pytest.param(b"/api/v1/%70ayments/7", "payments", id="escaped-letter"),
        pytest.param(b"/API/v1/payments", "default", id="case-variant-routes-as-before"),
        pytest.param(b"/api/v1/x/../payments/7", "payments", id="dot-dot"),
        pytest.param(b"/api%2Fv1/payments/7", "400", id="escaped-slash-in-the-route-path"),
        pytest.param(b"/api/v1/payments/ab%2F..%2F..%2Forders", "400", id="escaped-climb-out"),
        pytest.param(b"/a%2Fb", "default", id="no-route-either-way"),
        pytest.param(b"/public/x", "public", id="public"),
    ],
)
def test_unprotected_routes_route_as_before(raw_path: bytes, route: str) -> None:
    assert taken(GUARDED, raw_path) == route


@pytest.mark.parametrize(
    ("raw_path", "route"),
    [
        pytest.param(b"/api/v1/payments/ab%2Fcd", "400", id="escaped-slash"),
        pytest.param(b"/api/v1/payments/ab%5ccd", "400", id="escaped-backslash"),
        pytest.param(b"/api/v1/payments/ab%252Fcd", "400", id="double-escaped-slash"),
        pytest.param(b"/api/v1/payments/ab%41cd", "payments", id="other-escapes-read"),
        pytest.param(b"/api/v1/payments/ab\\cd", "payments", id="raw-backslash-checked"),
    ],
)
def test_escaped_slashes_refused_when_the_table_says_so(raw_path: bytes, route: str) -> None:
    assert taken(REFUSING, raw_path) == route


@pytest.mark.parametrize(
    ("raw_path", "external", "route"),
    [
        pytest.param(b"/ADMIN/flip", True, "404", id="upper-case-external"),
        pytest.param(b"/ADMIN/flip", False, "admin", id="upper-case-internal"),
        pytest.param(b"/reports", True, "404", id="route-path-with-capitals"),
        pytest.param(b"/REPORTS", False, "reports", id="route-path-with-capitals-internal"),
        pytest.param(b"/API/V1/Payments/AB%2Fcd", True, "payments", id="payments"),
        pytest.param(b"/ADMIN%2Fflip", True, "400", id="escaped-slash"),
        pytest.param(b"/St%41ff;x", True, "staff", id="staff"),
    ],
)
def test_a_case_insensitive_table_matches_every_case(
    raw_path: bytes, external: bool, route: str
) -> None:
    assert taken(FOLDING, raw_path, external=external) == route


@pytest.mark.parametrize(
    ("raw_path", "route"),
    [
        pytest.param(b"/reports", "404", id="lower-case-spelling"),
        pytest.param(b"/Reports", "404", id="as-declared"),
        pytest.param(b"/REPORTS/x", "404", id="upper-case"),
    ],
)
def test_a_route_declared_with_capitals_is_protected_in_every_case(
    raw_path: bytes, route: str
) -> None:
    assert taken(GUARDED, raw_path) == route


@pytest.mark.parametrize(
    ("raw_path", "route"),
    [
        pytest.param(b"/public/x", "public", id="public"),
        pytest.param(b"/elsewhere", "default", id="default"),
        pytest.param(b"/public/../elsewhere", "default", id="out-of-public"),
        pytest.param(b"/elsewhere/../public", "default", id="into-public-read-as-the-default"),
        pytest.param(b"/public;x", "default", id="parameter-read-as-the-default"),
        pytest.param(b"/Public", "default", id="case-variant-takes-the-default"),
        pytest.param(b"/staff/../admin", "400", id="two-protected-readings"),
        # /staff's own rules are the default's: one protection, the key's route.
        pytest.param(b"/staff;x", "staff", id="same-protection-either-way"),
        pytest.param(b"/elsewhere/../staff", "staff", id="same-protection-into-staff"),
        pytest.param(b"/staff/../elsewhere", "default", id="same-protection-out-of-staff"),
    ],
)
def test_the_default_access_protects_what_no_route_takes(raw_path: bytes, route: str) -> None:
    """With a default `access`, "no route" is protected too: a reading that reaches it wins
    over an open route's."""
    assert taken(DEFAULT_ACCESS, raw_path) == route


@pytest.mark.parametrize(
    ("path", "content_length", "refused"),
    [
        pytest.param("/bare", 1024, False, id="route-cap-exactly"),
        pytest.param("/bare", 1025, True, id="route-cap-plus-one"),
        pytest.param("/elsewhere", 10_000, False, id="table-cap-exactly"),
        pytest.param("/elsewhere", 10_001, True, id="table-cap-plus-one"),
        pytest.param("/pay", 10_001, True, id="route-without-cap-takes-the-tables"),
        pytest.param("/bare", None, False, id="no-content-length"),
    ],
)
def test_a_declared_body_over_the_cap_is_413(
    path: str, content_length: int | None, refused: bool
) -> None:
    if not refused:
        plan(path, "POST", content_length=content_length)
        return
    with pytest.raises(ProxyError) as caught:
        plan(path, "POST", content_length=content_length)
    assert (caught.value.status, caught.value.kind) == (413, "body-too-large")
    assert caught.value.close  # the unread body makes the connection unusable


def test_an_unexposed_route_is_404_before_its_body_cap_is_looked_at() -> None:
    with pytest.raises(ProxyError) as caught:
        plan("/inside", "POST", content_length=10**9)
    assert caught.value.status == 404


@pytest.mark.parametrize(
    ("path", "read_timeout"),
    [
        pytest.param("/bare", 1.5, id="route-timeout"),
        pytest.param("/pay", 2.0, id="upstream-timeout"),
        pytest.param("/orders", 60.0, id="upstream-default-timeout"),
        pytest.param("/elsewhere", 30.0, id="default-upstream-timeout"),
    ],
)
def test_read_timeout_comes_from_the_route_else_the_upstream(
    path: str, read_timeout: float
) -> None:
    assert plan(path).read_timeout == read_timeout


@pytest.mark.parametrize(
    ("path", "method", "key", "keyed"),
    [
        pytest.param("/pay", "POST", True, True, id="post-with-key"),
        pytest.param("/pay", "PATCH", True, True, id="patch-with-key"),
        pytest.param("/pay", "POST", False, False, id="post-without-key"),
        pytest.param("/pay", "GET", True, False, id="get-with-key"),
        pytest.param("/pay", "PUT", True, False, id="put-with-key"),
        pytest.param("/retry-only", "POST", True, True, id="retry-only-route"),
        pytest.param("/fallback-only", "POST", True, True, id="fallback-only-route"),
        # A keyed write may be re-sent after a stale keep-alive connection on any route.
        pytest.param("/bare", "POST", True, True, id="route-without-safety-nets"),
        pytest.param("/elsewhere", "POST", True, True, id="default-route"),
    ],
)
def test_keyed_only_for_a_non_idempotent_method_with_a_key(
    path: str, method: str, key: bool, keyed: bool
) -> None:
    assert plan(path, method, key=key).keyed is keyed


# --- next_step -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    failure: str | int
    expected: str
    path: str = "/pay"
    method: str = "GET"
    key: bool = False
    streamed: bool = False
    reused: bool = False
    budget: bool = True
    tries: int = 1
    stale_used: bool = False
    after_fallback: bool = False


def case(name: str, expected: str, failure: str | int, **fields: Any) -> Any:
    return pytest.param(Case(failure, expected, **fields), id=name)


NEXT_STEPS = [
    # Stale keep-alive connection: a reset on a reused connection is re-sent once, unbudgeted.
    case("stale-get-reset-on-reused", STALE, "reset", path="/bare", reused=True),
    case("stale-ignores-the-budget", STALE, "reset", path="/bare", reused=True, budget=False),
    case("stale-before-retry", STALE, "reset", reused=True),
    case("stale-only-once", GIVE_UP, "reset", path="/bare", reused=True, stale_used=True),
    case("stale-once-then-retry", RETRY, "reset", reused=True, stale_used=True),
    case("no-stale-on-a-new-connection", GIVE_UP, "reset", path="/bare"),
    case("no-stale-for-a-timeout", GIVE_UP, "timeout", path="/bare", reused=True),
    case("no-stale-for-a-status", GIVE_UP, 503, path="/bare", reused=True),
    case("no-stale-post", GIVE_UP, "reset", path="/bare", method="POST", reused=True),
    case(
        "no-stale-post-with-key-without-idempotent-writes",
        GIVE_UP,
        "reset",
        method="POST",
        key=True,
        reused=True,
    ),
    case(
        "stale-post-with-key-to-idempotent-writes",
        STALE,
        "reset",
        path="/orders",
        method="POST",
        key=True,
        reused=True,
    ),
    case("no-stale-streamed-body", GIVE_UP, "reset", path="/bare", reused=True, streamed=True),
    case("stale-put", STALE, "reset", path="/bare", method="PUT", reused=True),
    # Unreached: nothing was sent, so any method and even a streamed body may go again.
    case("unreached-post-retries", RETRY, "connect-failure", method="POST"),
    case("unreached-streamed-retries", RETRY, "connect-failure", method="POST", streamed=True),
    case("ejected-falls-back", FALLBACK, "ejected", method="POST"),
    case("saturated-falls-back", FALLBACK, "saturated", method="POST"),
    case("ejected-streamed-falls-back", FALLBACK, "ejected", method="PATCH", streamed=True),
    case("ejected-keyed-post-falls-back", FALLBACK, "ejected", method="POST", key=True),
    case(
        "unreached-keyed-post-falls-back",
        FALLBACK,
        "connect-failure",
        method="POST",
        key=True,
        tries=3,
    ),
    case("ejected-without-safety-nets", GIVE_UP, "ejected", path="/bare"),
    # Retry: the route's `on` list, its attempts, the budget, never after a fallback.
    case("retry-reset", RETRY, "reset"),
    case("retry-timeout", RETRY, "timeout"),
    case("retry-502", RETRY, 502),
    case("retry-503", RETRY, 503),
    case("retry-504", RETRY, 504),
    case("no-retry-for-500", GIVE_UP, 500),
    case("retry-second-try", RETRY, "timeout", tries=2),
    case("attempts-used-up-falls-back", FALLBACK, "timeout", tries=3),
    case("no-budget-falls-back", FALLBACK, "timeout", budget=False),
    case("no-budget-no-fallback", GIVE_UP, 503, path="/retry-only", budget=False),
    case("retry-on-listed-status", RETRY, 503, path="/retry-only"),
    case("retry-on-listed-kind", RETRY, "connect-failure", path="/retry-only"),
    case("retry-on-unlisted-status", GIVE_UP, 502, path="/retry-only"),
    case("retry-on-unlisted-kind", GIVE_UP, "timeout", path="/retry-only"),
    case("no-retry-when-ejected", GIVE_UP, "ejected", path="/retry-only"),
    case("no-retry-when-saturated", GIVE_UP, "saturated", path="/retry-only"),
    case("retry-only-attempts-default-2", GIVE_UP, 503, path="/retry-only", tries=2),
    case("no-retry-after-fallback", GIVE_UP, "timeout", after_fallback=True),
    case("no-retry-after-fallback-unreached", GIVE_UP, "connect-failure", after_fallback=True),
    case("retry-put", RETRY, 503, method="PUT"),
    case("retry-delete", RETRY, 503, method="DELETE"),
    case("retry-head", RETRY, "timeout", method="HEAD"),
    case("retry-options", RETRY, "timeout", method="OPTIONS"),
    case("no-retry-post", GIVE_UP, 503, method="POST"),
    case("no-retry-patch", GIVE_UP, "reset", method="PATCH"),
    case("no-retry-streamed-get", GIVE_UP, "timeout", streamed=True),
    case("retry-keyed-post-idempotent-writes", RETRY, 503, path="/orders", method="POST", key=True),
    case(
        "retry-keyed-patch-idempotent-writes",
        RETRY,
        "timeout",
        path="/orders",
        method="PATCH",
        key=True,
    ),
    case("no-retry-unkeyed-post-idempotent-writes", GIVE_UP, 503, path="/orders", method="POST"),
    case("no-retry-keyed-post-without-idempotent-writes", GIVE_UP, 503, method="POST", key=True),
    case(
        "no-retry-keyed-streamed-post",
        GIVE_UP,
        503,
        path="/orders",
        method="POST",
        key=True,
        streamed=True,
    ),
    # Fallback: its `on` list and methods, once, never to the upstream that failed; a keyed
    # POST that may have been sent stays with the upstream that knows its key.
    case("fallback-on-listed-kind", FALLBACK, "timeout", path="/fallback-only"),
    case("fallback-on-listed-status", FALLBACK, 502, path="/fallback-only"),
    case("fallback-on-listed-unreached", FALLBACK, "connect-failure", path="/fallback-only"),
    case("fallback-when-ejected", FALLBACK, "ejected", path="/fallback-only"),
    case("no-fallback-unlisted-status", GIVE_UP, 503, path="/fallback-only"),
    case("no-fallback-unlisted-kind", GIVE_UP, "reset", path="/fallback-only"),
    case("fallback-head-with-get", FALLBACK, "timeout", path="/fallback-only", method="HEAD"),
    case("no-fallback-unlisted-method", GIVE_UP, "timeout", path="/fallback-only", method="PUT"),
    case(
        "no-fallback-unlisted-method-unreached",
        GIVE_UP,
        "ejected",
        path="/fallback-only",
        method="POST",
    ),
    case("fallback-only-once", GIVE_UP, "timeout", path="/fallback-only", after_fallback=True),
    case("fallback-only-once-unreached", GIVE_UP, "ejected", after_fallback=True),
    case("never-fall-back-to-the-same-upstream", GIVE_UP, "timeout", path="/all-monolith"),
    case("never-fall-back-to-the-same-upstream-ejected", GIVE_UP, "ejected", path="/all-monolith"),
    case("no-fallback-post-reset", GIVE_UP, "reset", method="POST"),
    case("no-fallback-streamed-get-timeout", GIVE_UP, "timeout", streamed=True, tries=3),
    case(
        "no-fallback-keyed-post-reset",
        GIVE_UP,
        "reset",
        path="/orders",
        method="POST",
        key=True,
        tries=3,
    ),
    case(
        "no-fallback-keyed-post-timeout",
        GIVE_UP,
        "timeout",
        path="/orders",
        method="POST",
        key=True,
        tries=3,
    ),
    case(
        "no-fallback-keyed-post-status",
        GIVE_UP,
        503,
        path="/orders",
        method="POST",
        key=True,
        tries=3,
    ),
    case(
        "fallback-keyed-post-unreached",
        FALLBACK,
        "connect-failure",
        path="/orders",
        method="POST",
        key=True,
        tries=3,
    ),
    case(
        "fallback-keyed-post-saturated",
        FALLBACK,
        "saturated",
        path="/orders",
        method="POST",
        key=True,
    ),
    case("give-up-without-safety-nets", GIVE_UP, "timeout", path="/bare"),
    case("give-up-on-the-default-route", GIVE_UP, 502, path="/elsewhere"),
]


@pytest.mark.parametrize("c", NEXT_STEPS)
def test_next_step(c: Case) -> None:
    p = plan(c.path, c.method, key=c.key)
    tries = Tries(replayable=not c.streamed, tries=c.tries, stale_used=c.stale_used)
    if c.after_fallback:  # what the data plane does when it falls back
        assert p.fallback is not None
        p.upstream = p.fallback.upstream
        tries.fallen_back = True
    assert next_step(p, c.failure, tries, reused=c.reused, budget=c.budget) == c.expected


@pytest.mark.parametrize(
    ("path", "method", "key", "target", "replayable", "failure", "repeat"),
    [
        pytest.param("/pay", "GET", False, "payment", True, "reset", True, id="get"),
        pytest.param("/pay", "GET", False, "monolith", True, 503, True, id="get-elsewhere"),
        pytest.param("/pay", "GET", False, "payment", False, "reset", False, id="streamed-get"),
        pytest.param("/pay", "POST", False, "payment", True, 503, False, id="post"),
        pytest.param("/pay", "POST", True, "payment", True, 503, False, id="keyed-post-no-iw"),
        pytest.param("/orders", "POST", True, "orders", True, 503, True, id="keyed-post-iw"),
        pytest.param("/orders", "POST", True, "monolith", True, 503, False, id="keyed-elsewhere"),
        pytest.param("/orders", "POST", False, "orders", True, 503, False, id="unkeyed-post-iw"),
        pytest.param("/orders", "POST", True, "orders", False, 503, False, id="keyed-streamed"),
        pytest.param("/pay", "POST", False, "payment", False, "connect-failure", True, id="cf"),
        pytest.param("/pay", "PATCH", False, "monolith", False, "ejected", True, id="ejected"),
        pytest.param("/pay", "POST", False, "payment", False, "saturated", True, id="saturated"),
    ],
)
def test_may_repeat(
    path: str,
    method: str,
    key: bool,
    target: str,
    replayable: bool,
    failure: str | int,
    repeat: bool,
) -> None:
    p = plan(path, method, key=key)
    upstream = SNAPSHOT.upstreams[target]
    assert may_repeat(p, upstream, failure, Tries(replayable=replayable)) is repeat


@pytest.mark.parametrize(
    ("path", "status", "reacts"),
    [
        pytest.param("/pay", 502, True, id="gateway-error-502"),
        pytest.param("/pay", 503, True, id="gateway-error-503"),
        pytest.param("/pay", 504, True, id="gateway-error-504"),
        pytest.param("/pay", 500, False, id="500-not-listed"),
        pytest.param("/pay", 200, False, id="success"),
        pytest.param("/pay", 404, False, id="client-error"),
        pytest.param("/retry-only", 503, True, id="retry-listed"),
        pytest.param("/retry-only", 502, False, id="retry-unlisted"),
        pytest.param("/fallback-only", 502, True, id="fallback-listed"),
        pytest.param("/fallback-only", 503, False, id="fallback-unlisted"),
        pytest.param("/bare", 503, False, id="no-safety-nets"),
        pytest.param("/elsewhere", 503, False, id="default-route"),
    ],
)
def test_reacts_to_the_statuses_a_retry_or_fallback_lists(
    path: str, status: int, reacts: bool
) -> None:
    assert reacts_to(plan(path), status) is reacts


def test_a_keyed_write_that_may_have_reached_its_upstream_never_falls_back() -> None:
    """The POST reached the service and the connection dropped; its re-send finds the service
    refusing. Falling back now would make the monolith take a payment the service may have
    taken too (a double charge): give up instead."""
    keyed = plan("/orders", "POST", key=True)
    assert keyed.upstream.idempotent_writes
    tries = Tries(replayable=True)
    assert next_step(keyed, "reset", tries, reused=False, budget=True) == RETRY
    # The same upstream may take it again (it honours the key) ...
    tries.tries += 1
    assert next_step(keyed, "connect-failure", tries, reused=False, budget=True) == RETRY
    # ... but once the tries are spent, or the upstream is ejected, nothing else may.
    tries.tries = 3
    assert next_step(keyed, "connect-failure", tries, reused=False, budget=True) == GIVE_UP
    assert next_step(keyed, "ejected", tries, reused=False, budget=True) == GIVE_UP


def test_a_write_that_never_reached_anything_may_still_fall_back() -> None:
    tries = Tries(replayable=True)
    post = plan("/orders", "POST")
    assert next_step(post, "connect-failure", tries, reused=False, budget=False) == FALLBACK
    assert not tries.sent


def test_a_rate_limited_route_is_taken_by_its_case_variants() -> None:
    """A login route's limit must not be escaped by spelling it /LOGIN to a backend that folds
    case: a rate limit protects as access rules do."""
    snapshot = compile_table(
        RouteTable.model_validate(
            {
                "upstreams": {"monolith": {"url": "http://127.0.0.1:8001"}},
                "default": "monolith",
                "routes": [
                    {
                        "name": "login",
                        "match": {"path": "/login"},
                        "to": "monolith",
                        "rate_limit": {"rate": "5/minute", "by": "client"},
                    }
                ],
            }
        )
    )
    assert snapshot.protected
    for raw_path in (b"/login", b"/LOGIN", b"/Login", b"/%4cogin", b"/login;x"):
        assert taken(snapshot, raw_path) == "login", raw_path


@pytest.mark.parametrize(
    "host", [b"admin.example", b"admin.example.", b"ADMIN.example.:80", b"admin.example:8443"]
)
def test_a_host_route_is_not_escaped_by_a_trailing_dot_or_a_port(host: bytes) -> None:
    snapshot = compile_table(
        RouteTable.model_validate(
            {
                "upstreams": {"monolith": {"url": "http://127.0.0.1:8001"}},
                "default": "monolith",
                "routes": [
                    {
                        "name": "ops",
                        "match": {"path": "/", "host": "admin.example:9000"},
                        "to": "monolith",
                        "expose": "internal",
                    }
                ],
            }
        )
    )
    with pytest.raises(ProxyError) as refused:
        resolve(
            snapshot,
            external=True,
            role="external",
            method="GET",
            raw_path=b"/flip",
            host=host,
            headers=[],
            client="10.0.0.1",
            content_length=None,
        )
    assert refused.value.status == 404
