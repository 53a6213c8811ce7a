"""Read-your-writes pins: the board (pins.Pins) and what a pin does to `resolve`. After a user's
write the user's requests stay on the upstream that took it until the pin expires, whatever the
weights say meanwhile (a flip, a rollback)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.dataplane.pins import Pins, digest
from proxy.dataplane.plan import Plan, resolve
from proxy.dataplane.split import weighted
from proxy.table.compile import Snapshot, compile_table
from proxy.table.loader import load_text
from proxy.table.model import RouteTable
from tests.proxy.tables import HEADER, make_snapshot, make_table

Headers = Sequence[tuple[bytes, bytes]]
NOW = 1_700_000_000.0
KEY = digest(b"user-1")
OTHER = digest(b"user-2")

# --- the board -------------------------------------------------------------------------------


def test_a_live_pin_names_its_upstream() -> None:
    pins = Pins()
    assert pins.put("payments", KEY, "payment", NOW + 10, NOW)
    assert pins.get("payments", KEY, NOW + 9.9) == "payment"
    assert pins.get("payments", OTHER, NOW) is None
    assert pins.get("orders", KEY, NOW) is None  # a pin is per route


def test_an_expired_pin_is_ignored_and_removed() -> None:
    """A pin is over at its `until` (the window is the route's pin), and takes no more room."""
    pins = Pins()
    pins.put("payments", KEY, "payment", NOW + 10, NOW)
    assert pins.get("payments", KEY, NOW + 10) is None
    assert len(pins) == 0


def test_put_says_whether_the_pin_adds_anything() -> None:
    """put's answer decides whether the pin is sent to the other replicas: a pin to the same
    upstream that ends no later than the one held adds nothing; a longer one or one to another
    upstream (the user's latest write went there) does."""
    pins = Pins()
    assert pins.put("payments", KEY, "payment", NOW + 10, NOW) is True
    assert pins.put("payments", KEY, "payment", NOW + 10, NOW + 1) is False
    assert pins.put("payments", KEY, "payment", NOW + 5, NOW + 1) is False
    assert pins.get("payments", KEY, NOW + 9) == "payment"  # the shorter one changed nothing
    assert pins.put("payments", KEY, "payment", NOW + 12, NOW + 2) is True
    assert pins.get("payments", KEY, NOW + 11) == "payment"
    assert pins.put("payments", KEY, "monolith", NOW + 3, NOW + 2) is True
    assert pins.get("payments", KEY, NOW + 2.5) == "monolith"
    assert len(pins) == 1


def test_a_pin_already_over_adds_nothing() -> None:
    """A pin received late from another replica (or one of 0 s) holds nobody: it must not be
    passed on, nor push a live pin off a full board."""
    pins = Pins(limit=100)
    for i in range(100):
        pins.put("payments", digest(b"%d" % i), "payment", NOW + 10, NOW)
    assert pins.put("payments", KEY, "payment", NOW - 1, NOW) is False
    assert pins.live(NOW) == {"payments": 100}


def test_prune_removes_only_expired_pins() -> None:
    pins = Pins()
    pins.put("payments", KEY, "payment", NOW + 5, NOW)
    pins.put("payments", OTHER, "payment", NOW + 20, NOW)
    pins.put("orders", KEY, "monolith", NOW + 1, NOW)
    assert pins.prune(NOW + 5) == 2
    assert len(pins) == 1
    assert pins.get("payments", OTHER, NOW + 5) == "payment"
    assert pins.prune(NOW + 5) == 0


def test_live_counts_live_pins_per_route() -> None:
    """What the status page and metrics show: expired pins not yet pruned are not counted."""
    pins = Pins()
    pins.put("payments", KEY, "payment", NOW + 10, NOW)
    pins.put("payments", OTHER, "monolith", NOW + 30, NOW)
    pins.put("orders", KEY, "payment", NOW + 5, NOW)
    assert pins.live(NOW) == {"payments": 2, "orders": 1}
    assert pins.live(NOW + 10) == {"payments": 1}
    assert pins.live(NOW + 30) == {}
    assert len(pins) == 3  # counting prunes nothing


def test_a_full_board_drops_expired_pins_first() -> None:
    pins = Pins(limit=10)
    for i in range(5):
        pins.put("r", digest(b"old-%d" % i), "payment", NOW + 1, NOW)
    for i in range(5):
        pins.put("r", digest(b"live-%d" % i), "payment", NOW + 100, NOW)
    assert pins.put("r", KEY, "payment", NOW + 100, NOW + 50)
    assert pins.live(NOW + 50) == {"r": 6}
    assert len(pins) == 6


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    st.integers(1, 30),
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 1_000)), min_size=1, max_size=120),
)
def test_the_board_stays_within_its_limit_evicting_the_soonest_to_expire(
    limit: int, writes: list[tuple[int, int]]
) -> None:
    """However many users write, the board holds at most `limit` pins (memory is bounded on
    every replica); when it must drop live pins, it drops those closest to their end, and never
    the pin just written."""
    pins = Pins(limit=limit)
    held: dict[bytes, float] = {}
    for user, ttl in writes:
        key, until = digest(b"%d" % user), NOW + ttl
        before = dict(held)
        pins.put("r", key, "payment", until, NOW)
        held = {k: u for k, u in before.items() if pins.get("r", k, NOW) is not None}
        held[key] = max(until, before.get(key, until))
        assert len(pins) <= limit
        assert pins.get("r", key, NOW) == "payment"
        dropped = [u for k, u in before.items() if k not in held]
        kept = [u for k, u in held.items() if k != key]
        if dropped and kept:
            assert max(dropped) <= min(kept)


# --- pins in resolve -------------------------------------------------------------------------


def _route(name: str, **action: Any) -> dict[str, Any]:
    return {"name": name, "match": {"path": f"/{name}"}, **action}


SPLIT = {"monolith": 50, "payment": 50}
STICKY = "header:X-User-Id"
UNPINNED = {"unpinned", "unpinned-override"}


def _pin_off(table: RouteTable, names: set[str]) -> RouteTable:
    """`table` with the pin window of the routes `names` at 0 (what `pin: off` means), set
    past the model (the loader's own `pin: off` is tested below)."""
    routes = tuple(
        r.model_copy(update={"pin": 0.0}) if r.name in names else r for r in table.routes
    )
    return table.model_copy(update={"routes": routes})


SNAPSHOT = compile_table(
    _pin_off(
        make_table(
            [
                _route("payments", split=SPLIT, sticky=STICKY),
                _route("invoices", split=SPLIT, sticky=STICKY),
                _route("all-monolith", split={"monolith": 100, "payment": 0}, sticky=STICKY),
                _route("cookie-keyed", split={"monolith": 100, "payment": 0}),
                _route("unpinned", split={"monolith": 100, "payment": 0}, sticky=STICKY),
                _route(
                    "overridden",
                    split={"monolith": 100, "payment": 0},
                    sticky=STICKY,
                    override={"header": "X-Canary"},
                ),
                _route(
                    "unpinned-override",
                    split={"monolith": 100, "payment": 0},
                    sticky=STICKY,
                    override={"header": "X-Canary"},
                ),
            ]
        ),
        UNPINNED,
    )
)
USERS = [f"user-{i}".encode() for i in range(200)]


def arm(
    path: str,
    user: bytes | None,
    pins: Pins,
    headers: Headers = (),
    *,
    snapshot: Snapshot = SNAPSHOT,
) -> Plan:
    return resolve(
        snapshot,
        external=True,
        role="external",
        method="GET",
        raw_path=path.encode(),
        host=b"shop.example",
        headers=[*([(b"x-user-id", user)] if user is not None else []), *headers],
        client="10.0.0.1",
        content_length=None,
        pins=pins,
    )


def pinned(route: str, users: list[bytes], upstream: str, ttl: float = 60.0) -> Pins:
    pins = Pins()
    for user in users:
        # Put as of a while ago, so a negative ttl makes a pin that expired since.
        now = time.monotonic()
        pins.put(route, digest(user), upstream, now + ttl, now + min(ttl, 0.0) - 1.0)
    return pins


def test_a_live_pin_beats_the_weights() -> None:
    """A user who just wrote to payment reads from payment, even if the weights put them on the
    monolith (the monolith may not have the write yet)."""
    plan = arm("/all-monolith", b"user-1", pinned("all-monolith", [b"user-1"], "payment"))
    assert (plan.upstream.name, plan.choice) == ("payment", "pin")


def test_every_pinned_user_goes_to_the_pinned_upstream() -> None:
    """Each user pinned against their arm on a 50/50 split is served by the pinned one; the
    rest of the split is untouched."""
    route = next(r for r in SNAPSHOT.routes if r.name == "payments")
    assert route.split is not None
    home = {user: weighted(route.split, user, route.salt).name for user in USERS}
    pins = Pins()
    for user in USERS[:100]:
        away = "payment" if home[user] == "monolith" else "monolith"
        pins.put("payments", digest(user), away, time.monotonic() + 60, time.monotonic())
    for user in USERS:
        plan = arm("/payments", user, pins)
        if user in USERS[:100]:
            assert plan.upstream.name != home[user]
            assert plan.choice == "pin"
        else:
            assert plan.upstream.name == home[user]
            assert plan.choice == "split"


def test_a_pin_to_the_arm_the_weights_chose_is_not_counted_as_a_pin() -> None:
    """The access log's choice says `pin` only when the pin changed the answer."""
    plan = arm("/all-monolith", b"user-1", pinned("all-monolith", [b"user-1"], "monolith"))
    assert (plan.upstream.name, plan.choice) == ("monolith", "split")


def test_a_pin_holds_across_a_rollback_to_to() -> None:
    """The very case pins exist for: the route is rolled back to `to: monolith` right after a
    user wrote to payment; their reads stay on payment until the data sync has caught up."""
    rolled_back = make_snapshot([_route("payments", to="monolith", sticky=STICKY)])
    pins = pinned("payments", [b"user-1"], "payment")
    plan = arm("/payments", b"user-1", pins, snapshot=rolled_back)
    assert (plan.upstream.name, plan.choice) == ("payment", "pin")
    assert arm("/payments", b"user-2", pins, snapshot=rolled_back).upstream.name == "monolith"


def test_a_pin_holds_across_a_rollback_of_a_split_keyed_by_the_cookie() -> None:
    """A split without `sticky` keys users by the strangler_key cookie; flipped back to
    `to: monolith` (a flip keeps the route's sticky, here none), a user who just wrote to
    payment should still read from payment."""
    cookie = (b"cookie", b"strangler_key=user-1")
    pins = pinned("cookie-keyed", [b"user-1"], "payment")
    assert arm("/cookie-keyed", None, pins, [cookie]).upstream.name == "payment"
    rolled_back = make_snapshot([_route("cookie-keyed", to="monolith")])
    plan = arm("/cookie-keyed", None, pins, [cookie], snapshot=rolled_back)
    assert (plan.upstream.name, plan.choice) == ("payment", "pin")


def test_a_pin_by_the_key_cookie_holds() -> None:
    """Users without a declared key are pinned by the proxy's cookie."""
    cookie = (b"cookie", b"strangler_key=k-1")
    plan = arm("/cookie-keyed", None, pinned("cookie-keyed", [b"k-1"], "payment"), [cookie])
    assert (plan.upstream.name, plan.choice, plan.key) == ("payment", "pin", digest(b"k-1"))


def test_an_expired_pin_is_ignored_and_dropped() -> None:
    pins = pinned("all-monolith", [b"user-1"], "payment", ttl=-1.0)
    assert len(pins) == 1
    plan = arm("/all-monolith", b"user-1", pins)
    assert (plan.upstream.name, plan.choice) == ("monolith", "split")
    assert len(pins) == 0


def test_a_pin_to_an_upstream_gone_from_the_table_is_ignored() -> None:
    """The pinned service was removed from the table: the request goes where the route says."""
    plan = arm("/all-monolith", b"user-1", pinned("all-monolith", [b"user-1"], "payment-old"))
    assert (plan.upstream.name, plan.choice) == ("monolith", "split")


@pytest.mark.parametrize("value", ["off", "false", "0"])
def test_a_route_can_switch_pins_off(value: str) -> None:
    """The documented way to opt a route out of read-your-writes pins."""
    table = load_text(
        HEADER + f"  - name: s\n    match: {{path: /s}}\n    to: payment\n    pin: {value}\n"
    )
    assert table.routes[0].pin == 0.0


def test_a_route_with_pin_off_ignores_pins() -> None:
    """`pin: off` (e.g. a route whose two arms share one database) follows the weights only."""
    plan = arm("/unpinned", b"user-1", pinned("unpinned", [b"user-1"], "payment"))
    assert (plan.upstream.name, plan.choice) == ("monolith", "split")
    assert plan.key is None  # nor will its writes pin anybody


def test_an_overridden_request_on_a_route_with_pin_off_pins_nobody() -> None:
    plan = arm("/unpinned-override", b"user-1", Pins(), [(b"x-canary", b"always")])
    assert plan.upstream.name == "payment"
    assert plan.key is None


def test_the_pins_of_one_route_do_not_move_another() -> None:
    """A write on /payments keeps the user's payment reads on the arm that took it, not their
    invoice reads."""
    route = next(r for r in SNAPSHOT.routes if r.name == "invoices")
    assert route.split is not None
    pins = Pins()
    for user in USERS:
        home = weighted(route.split, user, route.salt).name
        away = "payment" if home == "monolith" else "monolith"
        pins.put("payments", digest(user), away, time.monotonic() + 60, time.monotonic())
        plan = arm("/invoices", user, pins)
        assert (plan.upstream.name, plan.choice) == (home, "split")


def test_an_override_beats_a_pin() -> None:
    """A tester's explicit always/never wins over their own pin."""
    pins = pinned("overridden", [b"user-1"], "payment")
    plan = arm("/overridden", b"user-1", pins, [(b"x-canary", b"never")])
    assert (plan.upstream.name, plan.choice) == ("monolith", "override")
    assert arm("/overridden", b"user-1", pins).choice == "pin"


def test_a_request_without_pins_is_placed_by_the_weights() -> None:
    plan = arm("/all-monolith", b"user-1", Pins())
    assert (plan.upstream.name, plan.choice, plan.key) == ("monolith", "split", digest(b"user-1"))
