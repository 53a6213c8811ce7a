"""Which arm `resolve` picks and what it tells the client: the request's key and the key cookie
(`strangler_key`), overrides (X-Canary / canary=always|never) and shadow sampling. Pins are in
test_pins.py, the split's hash in test_split_properties.py."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from proxy.dataplane.pins import digest
from proxy.dataplane.plan import Plan, resolve
from proxy.dataplane.split import weighted
from proxy.table.compile import CompiledRoute, Snapshot
from tests.proxy.tables import make_snapshot

Headers = Sequence[tuple[bytes, bytes]]
OVERRIDE = {"header": "X-Canary", "cookie": "canary"}


def _route(name: str, **action: Any) -> dict[str, Any]:
    return {"name": name, "match": {"path": f"/{name}"}, **action}


SNAPSHOT = make_snapshot(
    [
        # Keys and cookies.
        _route("keyed", split={"monolith": 50, "payment": 50}, sticky="header:X-User-Id"),
        _route("unkeyed-split", split={"monolith": 50, "payment": 50}),
        _route("to-sticky", to="monolith", sticky="header:X-User-Id"),
        _route("to-plain", to="payment"),
        _route("by-cookie", split={"monolith": 50, "payment": 50}, sticky="cookie:uid"),
        # Overrides over weights that say the opposite.
        _route("all-monolith", split={"monolith": 100, "payment": 0}, override=OVERRIDE),
        _route("all-payment", split={"monolith": 0, "payment": 100}, override=OVERRIDE),
        _route("prepared", to="monolith", shadow={"to": "payment"}, override=OVERRIDE),
        _route("moved", to="payment", override=OVERRIDE),
        _route(
            "three-way",
            split={"monolith": 100, "payment": 0, "catalog": 0},
            override={**OVERRIDE, "always": "catalog"},
        ),
        # Shadows.
        _route("shadowed", to="monolith", shadow={"to": "payment"}),
        _route("shadow-moved", to="payment", shadow={"to": "payment"}),
        _route(
            "shadow-split",
            split={"monolith": 50, "payment": 50},
            shadow={"to": "payment", "methods": ["GET"]},
        ),
        _route("sampled", to="monolith", shadow={"to": "payment", "sample": 0.3}),
    ]
)
ROUTES = {compiled.name: compiled for compiled in SNAPSHOT.routes}
COOKIE = re.compile(
    rb"strangler_key=([A-Za-z0-9_-]{16,}); Path=/; Max-Age=(\d+); HttpOnly; SameSite=Lax(; Secure)?"
)
YEAR = 365 * 24 * 3600


def arm(
    path: str,
    headers: Headers = (),
    *,
    method: str = "GET",
    https: bool = False,
    snapshot: Snapshot = SNAPSHOT,
) -> Plan:
    return resolve(
        snapshot,
        external=True,
        role="external",
        method=method,
        raw_path=path.encode(),
        host=b"shop.example",
        headers=[(b"accept", b"*/*"), *headers],
        client="10.0.0.1",
        content_length=None,
        https=https,
    )


def given_key(plan: Plan) -> bytes:
    """The key in the cookie `plan` sets, checking the cookie's attributes on the way."""
    assert plan.set_cookie is not None
    found = COOKIE.fullmatch(plan.set_cookie)
    assert found is not None, plan.set_cookie
    return found.group(1)


def key_cookie(key: bytes) -> tuple[bytes, bytes]:
    return (b"cookie", b"theme=dark; strangler_key=" + key)


def by_weights(route: CompiledRoute, key: bytes) -> str:
    assert route.split is not None
    return weighted(route.split, key, route.salt).name


USERS = [f"user-{i}".encode() for i in range(200)]


# --- keys and the key cookie -----------------------------------------------------------------


def test_a_declared_key_places_the_request_and_no_cookie_is_set() -> None:
    """A client that sends its sticky header is placed by it; it needs no cookie of ours."""
    for user in USERS:
        plan = arm("/keyed", [(b"x-user-id", user)])
        assert plan.set_cookie is None
        assert plan.upstream.name == by_weights(ROUTES["keyed"], user)
        assert plan.key == digest(user)
        assert plan.choice == "split"


def test_the_declared_key_wins_over_the_key_cookie() -> None:
    """A signed-in user who also has an old key cookie is placed by the declared key, so they
    land on the same arm on every device."""
    for user in USERS:
        plan = arm("/keyed", [(b"x-user-id", user), key_cookie(b"cookie-" + user)])
        assert plan.key == digest(user)
        assert plan.set_cookie is None


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_a_keyless_client_gets_a_key_cookie(https: bool) -> None:
    """Without its header, a client gets a year-long, HttpOnly, SameSite=Lax key cookie, Secure
    when it came over https (a Secure cookie would be dropped over plain http)."""
    plan = arm("/keyed", https=https)
    assert plan.set_cookie is not None
    found = COOKIE.fullmatch(plan.set_cookie)
    assert found is not None, plan.set_cookie
    assert int(found.group(2)) == YEAR
    assert (found.group(3) is not None) == https
    assert plan.key == digest(found.group(1))


def test_new_clients_get_distinct_keys() -> None:
    keys = {given_key(arm("/keyed")) for _ in range(200)}
    assert len(keys) == 200


def test_a_keyless_request_is_placed_by_the_key_it_is_given() -> None:
    """The first answer comes from the arm the new key hashes to, so the client's next request
    (with the cookie) lands on the arm that already answered it."""
    arms: Counter[str] = Counter()
    for _ in range(200):
        first = arm("/keyed")
        key = given_key(first)
        assert first.upstream.name == by_weights(ROUTES["keyed"], key)
        assert arm("/keyed", [key_cookie(key)]).upstream is first.upstream
        arms[first.upstream.name] += 1
    assert set(arms) == {"monolith", "payment"}  # the new keys do spread over the split


@pytest.mark.parametrize("path", ["/keyed", "/unkeyed-split", "/by-cookie"])
def test_a_client_with_the_key_cookie_keeps_its_arm_and_gets_no_new_cookie(path: str) -> None:
    """Once keyed, a client stays on its arm on every request and keeps its cookie (a new cookie
    on each answer would re-draw its arm)."""
    for user in USERS:
        plans = [arm(path, [key_cookie(user)]) for _ in range(3)]
        assert {plan.upstream.name for plan in plans} == {plans[0].upstream.name}
        assert all(plan.set_cookie is None for plan in plans)
        assert all(plan.key == digest(user) for plan in plans)


def test_a_declared_cookie_key_is_used_and_no_key_cookie_is_set() -> None:
    for user in USERS:
        plan = arm("/by-cookie", [(b"cookie", b"uid=" + user)])
        assert plan.set_cookie is None
        assert plan.upstream.name == by_weights(ROUTES["by-cookie"], user)


def test_a_split_without_sticky_gives_the_key_cookie() -> None:
    """A split with no declared key still keeps each client on one arm, by our cookie."""
    plan = arm("/unkeyed-split")
    key = given_key(plan)
    assert plan.upstream.name == by_weights(ROUTES["unkeyed-split"], key)


def test_a_to_route_with_sticky_gives_the_cookie_so_the_first_split_is_already_sticky() -> None:
    """Keys handed out while a route is still `to: monolith` place the clients as soon as the
    route is flipped to a split: nobody is re-drawn on the first canary request."""
    keys = [given_key(arm("/to-sticky")) for _ in range(200)]
    flipped = make_snapshot(
        [_route("to-sticky", split={"monolith": 50, "payment": 50}, sticky="header:X-User-Id")]
    )
    for key in keys:
        plans = [arm("/to-sticky", [key_cookie(key)], snapshot=flipped) for _ in range(2)]
        assert plans[0].upstream is plans[1].upstream
        assert [plan.set_cookie for plan in plans] == [None, None]
    first = Counter(
        arm("/to-sticky", [key_cookie(k)], snapshot=flipped).upstream.name for k in keys
    )
    assert set(first) == {"monolith", "payment"}


def test_a_to_route_without_sticky_assigns_nothing() -> None:
    """A route that is simply moved needs no key: no cookie, no pin key."""
    plan = arm("/to-plain")
    assert plan.upstream.name == "payment"
    assert plan.set_cookie is None
    assert plan.key is None
    assert plan.choice == "to"


def test_a_request_on_no_route_assigns_nothing() -> None:
    plan = arm("/elsewhere")
    assert (plan.route_name, plan.set_cookie, plan.key, plan.choice) == (
        "default",
        None,
        None,
        "default",
    )


def test_a_keyless_client_forced_by_an_override_still_gets_the_key_cookie() -> None:
    """The cookie is set whichever arm answers (a cookie set by one arm only drifts users)."""
    plan = arm("/all-payment", [(b"x-canary", b"never")])
    assert plan.choice == "override"
    given_key(plan)


def test_an_empty_key_cookie_counts_as_no_key() -> None:
    """A declared sticky cookie that is empty is skipped; the proxy's own cookie should be too,
    or every client sending `strangler_key=` is one user."""
    plan = arm("/unkeyed-split", [(b"cookie", b"strangler_key=")])
    given_key(plan)


# --- overrides -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"always", b"ALWAYS", b"Always"])
def test_an_override_always_beats_the_weights(value: bytes) -> None:
    """A tester with X-Canary: always reaches the service even at weight 0 (value in any case)."""
    plan = arm("/all-monolith", [(b"x-canary", value)])
    assert plan.upstream.name == "payment"
    assert plan.choice == "override"


@pytest.mark.parametrize("value", [b"never", b"NEVER", b"Never"])
def test_an_override_never_beats_the_weights(value: bytes) -> None:
    """X-Canary: never keeps a user on the monolith even at weight 100 for the service."""
    plan = arm("/all-payment", [(b"x-canary", value)])
    assert plan.upstream.name == "monolith"
    assert plan.choice == "override"


@pytest.mark.parametrize(
    ("path", "cookie", "expected"),
    [
        pytest.param("/all-monolith", b"canary=always", "payment", id="always"),
        pytest.param("/all-payment", b"canary=Never", "monolith", id="never"),
        pytest.param("/all-monolith", b"a=1; canary=ALWAYS; b=2", "payment", id="among-others"),
    ],
)
def test_the_override_cookie_beats_the_weights(path: str, cookie: bytes, expected: str) -> None:
    """The same through the cookie, for a browser that cannot add headers."""
    plan = arm(path, [(b"cookie", cookie)])
    assert plan.upstream.name == expected
    assert plan.choice == "override"


@pytest.mark.parametrize(
    ("path", "header", "cookie", "expected"),
    [
        pytest.param("/all-payment", b"never", b"canary=always", "monolith", id="header-never"),
        pytest.param("/all-monolith", b"always", b"canary=never", "payment", id="header-always"),
    ],
)
def test_the_override_header_wins_over_the_cookie(
    path: str, header: bytes, cookie: bytes, expected: str
) -> None:
    """ingress-nginx's order: canary-by-header before canary-by-cookie."""
    plan = arm(path, [(b"x-canary", header), (b"cookie", cookie)])
    assert plan.upstream.name == expected


@pytest.mark.parametrize("value", [b"yes", b"true", b"1", b"", b"alwaysx", b"on", b"payment"])
def test_other_override_values_change_nothing(value: bytes) -> None:
    """Only always and never mean something; anything else leaves the weights in charge."""
    for path, weights_say in (("/all-monolith", "monolith"), ("/all-payment", "payment")):
        by_header = arm(path, [(b"x-canary", value)])
        by_cookie = arm(path, [(b"cookie", b"canary=" + value)])
        for plan in (by_header, by_cookie):
            assert plan.upstream.name == weights_say
            assert plan.choice == "split"


def test_an_ignored_override_header_leaves_the_cookie_in_charge() -> None:
    """A client whose app sends X-Canary: 1 for its own reasons still follows canary=always."""
    plan = arm("/all-monolith", [(b"x-canary", b"1"), (b"cookie", b"canary=always")])
    assert plan.upstream.name == "payment"


def test_always_defaults_to_the_routes_one_other_upstream() -> None:
    """On a monolith/payment split, `always` means the service."""
    assert arm("/all-monolith", [(b"x-canary", b"always")]).upstream.name == "payment"


def test_always_on_a_route_not_moved_yet_means_its_shadows_service() -> None:
    """Before the canary (to: monolith, shadowed to payment), testers reach the service by
    `always`, and `never` keeps them on the monolith."""
    assert arm("/prepared", [(b"x-canary", b"always")]).upstream.name == "payment"
    assert arm("/prepared", [(b"x-canary", b"never")]).upstream.name == "monolith"
    assert arm("/prepared").upstream.name == "monolith"


def test_never_on_a_moved_route_reaches_the_monolith() -> None:
    """After the move (to: payment), `never` lets a tester compare with the monolith."""
    plan = arm("/moved", [(b"x-canary", b"never")])
    assert (plan.upstream.name, plan.choice) == ("monolith", "override")
    assert arm("/moved", [(b"x-canary", b"always")]).upstream.name == "payment"


def test_an_override_names_its_always_arm_on_a_wider_split() -> None:
    plan = arm("/three-way", [(b"cookie", b"canary=always")])
    assert (plan.upstream.name, plan.choice) == ("catalog", "override")
    assert arm("/three-way", [(b"cookie", b"canary=never")]).upstream.name == "monolith"


def test_without_an_override_value_the_choice_is_the_routes() -> None:
    assert arm("/all-payment").choice == "split"
    assert arm("/prepared").choice == "to"


# --- shadows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_safe_request_is_shadowed_at_sample_one(method: str) -> None:
    """Every read on a fully sampled route gets a copy for the comparison."""
    for _ in range(50):
        plan = arm("/shadowed", method=method)
        assert plan.shadow is ROUTES["shadowed"].shadow
        assert plan.upstream.name == "monolith"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_a_method_the_shadow_does_not_take_is_never_shadowed(method: str) -> None:
    """A write must never be sent twice (and OPTIONS is not in the default GET, HEAD)."""
    for _ in range(50):
        assert arm("/shadowed", method=method).shadow is None


def test_an_answer_from_the_shadows_own_upstream_is_never_shadowed() -> None:
    """Once the route has moved to the shadow's service there is nothing to compare with."""
    plan = arm("/shadow-moved")
    assert plan.upstream.name == "payment"
    assert plan.shadow is None


def test_on_a_split_only_the_monolith_answers_are_shadowed() -> None:
    for user in USERS:
        plan = arm("/shadow-split", [key_cookie(user)])
        assert (plan.shadow is not None) == (plan.upstream.name == "monolith"), user


def test_a_tester_forced_onto_the_service_is_not_shadowed() -> None:
    """An override `always` already answers from the shadow's service."""
    plan = arm("/prepared", [(b"x-canary", b"always")])
    assert plan.upstream.name == "payment"
    assert plan.shadow is None
    assert arm("/prepared", [(b"x-canary", b"never")]).shadow is not None


def test_a_sample_copies_that_share_of_requests() -> None:
    """sample: 0.3 copies 30 % of the reads: over 4,000 requests 0.3 +- 0.05 (the binomial sd is
    0.007, so 0.05 is about 7 sd)."""
    shadowed = sum(arm("/sampled").shadow is not None for _ in range(4_000))
    assert 0.25 <= shadowed / 4_000 <= 0.35
