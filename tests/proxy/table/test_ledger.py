"""The migration ledger from a table's history (pure): each state, transitions, retired routes,
a rollback, a growing canary, versions whose table does not load."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.table.ledger import Entry, State, build_ledger, state_of
from proxy.table.model import RouteTable
from tests.proxy.tables import make_table, route

PAYMENTS = "/api/v1/payments"


def payments(**action: Any) -> dict[str, Any]:
    """The payments route with this action (`to` monolith unless given)."""
    spec = route("payments", PAYMENTS)
    if "split" in action or "static" in action:
        del spec["to"]
    return {**spec, **action}


def entry(version: int, table: RouteTable | None, reason: str = "", author: str = "ana") -> Entry:
    return Entry(version, author, 1_000.0 + version, reason or f"v{version}", table)


def only_state(spec: dict[str, Any], **fields: Any) -> State:
    table = make_table([spec], **fields)
    return state_of(table.routes[0], table.default)


@pytest.mark.parametrize(
    ("spec", "kind", "percent", "upstreams", "label"),
    [
        pytest.param(payments(), "legacy", None, (), "legacy", id="legacy"),
        pytest.param(
            payments(shadow={"to": "payment", "sample": 0.2}),
            "shadowed",
            None,
            ("payment",),
            "shadowed to payment",
            id="shadowed",
        ),
        pytest.param(
            payments(split={"monolith": 90, "payment": 10}),
            "canary",
            10,
            ("payment",),
            "canary 10% to payment",
            id="canary",
        ),
        pytest.param(
            payments(split={"monolith": 70, "payment": 20, "catalog": 10}),
            "canary",
            30,
            ("payment", "catalog"),
            "canary 30% to payment, catalog",
            id="canary-to-two",
        ),
        pytest.param(
            payments(to="payment"), "moved", None, ("payment",), "moved to payment", id="moved"
        ),
        pytest.param(
            payments(split={"payment": 50, "catalog": 50}),
            "moved",
            None,
            ("payment", "catalog"),
            "moved to payment, catalog",
            id="split-between-services-is-moved",
        ),
        pytest.param(
            payments(split={"monolith": 0, "payment": 100}),
            "moved",
            None,
            ("payment",),
            "moved to payment",
            id="split-with-the-default-at-0-is-moved",
        ),
        pytest.param(
            payments(split={"monolith": 100, "payment": 0}),
            "legacy",
            None,
            (),
            "legacy",
            id="split-with-the-service-at-0-is-legacy",
        ),
        pytest.param(
            payments(split={"monolith": 90, "payment": 10}, shadow={"to": "catalog"}),
            "canary",
            10,
            ("payment",),
            "canary 10% to payment",
            id="a-canary-keeping-its-shadow-is-a-canary",
        ),
        pytest.param(
            payments(to="payment", shadow={"to": "monolith"}),
            "moved",
            None,
            ("payment",),
            "moved to payment",
            id="moved-shadowing-the-monolith-is-moved",
        ),
        pytest.param(
            payments(static={"root": "files"}),
            "static",
            None,
            (),
            "static",
            id="static",
        ),
    ],
)
def test_each_state(
    spec: dict[str, Any], kind: str, percent: int | None, upstreams: tuple[str, ...], label: str
) -> None:
    state = only_state(spec)
    assert (state.kind, state.percent, state.upstreams, state.label()) == (
        kind,
        percent,
        upstreams,
        label,
    )
    assert state.as_dict() == {
        "state": kind,
        "percent": percent,
        "upstreams": list(upstreams),
        "label": label,
    }


def test_a_state_is_against_each_version_s_own_default() -> None:
    assert only_state(payments(to="payment"), default="payment") == State("legacy")
    assert only_state(payments(), default="payment") == State("moved", upstreams=("monolith",))
    shadow_of_default = payments(to="payment", shadow={"to": "payment"})
    assert only_state(shadow_of_default, default="payment") == State("legacy")


def test_transitions_with_who_when_and_why_and_since() -> None:
    ledger = build_ledger(
        [
            entry(1, make_table([payments()]), "first version", author="store"),
            entry(2, make_table([payments(shadow={"to": "payment"})]), "shadow reads"),
            # a change that is no transition: the sample only
            entry(3, make_table([payments(shadow={"to": "payment", "sample": 0.5})]), "more"),
            entry(4, make_table([payments(to="payment")]), "payment service live", "bo"),
        ]
    )
    assert (ledger.first, ledger.last, ledger.unreadable) == (1, 4, ())
    (one,) = ledger.routes
    assert one.name == "payments"
    assert [(t.version, t.author, t.reason) for t in one.transitions] == [
        (1, "store", "first version"),
        (2, "ana", "shadow reads"),
        (4, "bo", "payment service live"),
    ]
    assert [(t.before, t.after) for t in one.transitions] == [
        (None, State("legacy")),
        (State("legacy"), State("shadowed", upstreams=("payment",))),
        (State("shadowed", upstreams=("payment",)), State("moved", upstreams=("payment",))),
    ]
    assert one.state == State("moved", upstreams=("payment",))
    assert (one.since.version, one.since.time) == (4, 1_004.0)
    assert one.state_at(3) == State("shadowed", upstreams=("payment",))
    assert one.state_at(0) is None
    assert one.as_dict()["since"] == {
        "version": 4,
        "time": 1_004.0,
        "author": "bo",
        "reason": "payment service live",
    }
    steps = one.as_dict()["transitions"]
    assert steps[0]["from"] is None
    assert steps[1]["from"]["label"] == "legacy"
    assert steps[1]["to"]["label"] == "shadowed to payment"


def test_a_canary_growing_to_100_becomes_moved() -> None:
    tables = [make_table([payments()])]
    for share in (1, 10, 50, 100):
        split = {"monolith": 100 - share, "payment": share}
        tables.append(make_table([payments(split=split)]))
    ledger = build_ledger(entry(n, t, f"step {n}") for n, t in enumerate(tables, start=1))
    labels = [t.after.label() for t in ledger.routes[0].transitions]
    assert labels == [
        "legacy",
        "canary 1% to payment",
        "canary 10% to payment",
        "canary 50% to payment",
        "moved to payment",
    ]
    assert [t.after.percent for t in ledger.routes[0].transitions] == [None, 1, 10, 50, None]
    assert ledger.routes[0].state.kind == "moved"
    assert ledger.routes[0].since.version == 5


def test_a_rollback_is_a_transition_back() -> None:
    canary = make_table([payments(split={"monolith": 90, "payment": 10})])
    ledger = build_ledger(
        [
            entry(1, canary, "canary"),
            entry(2, make_table([payments(to="payment")]), "live"),
            entry(3, canary, "rollback to version 1: error rate up", "ops"),
        ]
    )
    (one,) = ledger.routes
    last = one.transitions[-1]
    assert (last.version, last.author) == (3, "ops")
    assert last.reason == "rollback to version 1: error rate up"
    assert (last.before, last.after) == (
        State("moved", upstreams=("payment",)),
        State("canary", 10, ("payment",)),
    )
    assert one.since.version == 3


def test_a_removed_route_is_retired_and_may_come_back() -> None:
    catalog = route("catalog", "/api/v1/products", to="catalog")
    ledger = build_ledger(
        [
            entry(1, make_table([payments(), catalog])),
            entry(2, make_table([catalog]), "payments gone"),
            entry(3, make_table([catalog]), "something else"),
        ]
    )
    assert [r.name for r in ledger.routes] == ["catalog", "payments"]  # retired ones last
    gone = ledger.route("payments")
    assert gone is not None
    assert gone.state == State("retired")
    assert (gone.since.version, gone.since.reason) == (2, "payments gone")
    assert gone.state_at(3) == State("retired")
    kept = ledger.route("catalog")
    assert kept is not None
    assert kept.state == State("moved", upstreams=("catalog",))

    back = build_ledger(
        [
            entry(1, make_table([payments()])),
            entry(2, make_table([])),
            entry(3, make_table([payments(to="payment")]), "back, moved"),
        ]
    )
    assert [t.after.label() for t in back.routes[0].transitions] == [
        "legacy",
        "retired",
        "moved to payment",
    ]


def test_routes_in_the_newest_table_s_order_and_a_route_added_later() -> None:
    first = route("first", "/a")
    second = route("second", "/b", to="payment")
    ledger = build_ledger(
        [entry(2, make_table([second, first])), entry(1, make_table([first]))]  # any order
    )
    assert [r.name for r in ledger.routes] == ["second", "first"]
    assert [t.version for t in ledger.routes[0].transitions] == [2]
    assert ledger.routes[0].transitions[0].before is None
    assert [r.name for r in ledger.only("first").routes] == ["first"]
    assert ledger.only("nope").routes == ()
    assert ledger.route("nope") is None


def test_a_version_that_does_not_load_is_listed_and_changes_nothing() -> None:
    broken = Entry(2, "bob", 1_002.0, "by hand", None, "version 2:7: routes[0].to: unknown")
    ledger = build_ledger(
        [
            entry(1, make_table([payments()])),
            broken,
            entry(3, make_table([payments(to="payment")]), "live"),
        ]
    )
    assert ledger.unreadable == (broken,)
    (one,) = ledger.routes
    assert [(t.version, t.after.kind) for t in one.transitions] == [(1, "legacy"), (3, "moved")]
    assert one.state_at(2) is None
    assert ledger.as_dict()["unreadable"] == [
        {
            "version": 2,
            "author": "bob",
            "time": 1_002.0,
            "reason": "by hand",
            "problem": "version 2:7: routes[0].to: unknown",
        }
    ]
    assert ledger.as_dict()["versions"] == {"first": 1, "last": 3}


def test_no_versions_no_routes() -> None:
    assert build_ledger([]).as_dict() == {
        "versions": {"first": None, "last": None},
        "routes": [],
        "unreadable": [],
    }
