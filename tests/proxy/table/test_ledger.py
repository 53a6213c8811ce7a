"""The migration ledger from a table's history (pure): each state, transitions, retired routes,
a rollback, a growing canary, versions whose table does not load; the evidence of each
transition (arms, shadow, gates) and the ledger as a terminal shows it."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest

from proxy.dataplane.armstats import ArmStats
from proxy.table.gates import GateAnswer
from proxy.table.ledger import (
    Entry,
    State,
    build_ledger,
    evidence_for,
    evidence_line,
    ledger_lines,
    state_of,
)
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


# --- evidence and the text ---------------------------------------------------------------------
T0 = 1_000_000.0


def arm_docs(*arms: tuple[str, str, int, float, int]) -> list[dict[str, Any]]:
    """One worker's statistics document: (route, upstream, status, seconds, times) at T0."""
    stats = ArmStats(lambda: T0)
    for route_name, upstream, status, seconds, times in arms:
        for _ in range(times):
            stats.observe(route_name, upstream, status, seconds)
    return [stats.doc()]


GATE_OPEN = GateAnswer("payment", ("payments",), "http://svc/cutover", True, 200, "")


def test_evidence_of_a_canary_step() -> None:
    docs = arm_docs(
        ("payments", "monolith", 200, 0.010, 998),
        ("payments", "monolith", 500, 0.010, 2),
        ("payments", "payment", 200, 0.011, 99),
        ("payments", "payment", 503, 0.011, 1),
        ("catalog", "monolith", 500, 0.010, 50),  # another route's arms are not this one's
    )
    other_route = GateAnswer("catalog", ("catalog",), "http://cat/cutover", False, 503, "lag")
    shadow = {"route": "payments", "compared": 240, "mismatched": 0, "mismatch_rate": 0.0}
    found = evidence_for("payments", docs, shadow, [GATE_OPEN, other_route], 60, T0 + 30)
    assert found["window"] == 60
    assert found["at"] == T0 + 30
    assert set(found["arms"]) == {"monolith", "payment"}
    assert (found["arms"]["payment"]["requests"], found["arms"]["payment"]["errors"]) == (100, 1)
    assert found["arms"]["monolith"]["error_rate"] == pytest.approx(0.002)
    assert found["shadow"] == {"compared": 240, "differed": 0, "rate": 0.0}
    assert found["gates"] == [GATE_OPEN.as_dict()]  # only those about the route
    assert (found["lag_seconds"], found["drift"]) == (None, None)
    json.dumps(found)  # kept as JSON


def test_evidence_takes_lag_and_drift_from_gates_that_carry_them() -> None:
    said = [
        {**GATE_OPEN.as_dict(), "lag_seconds": 0.4, "drift": 0},
        {**GATE_OPEN.as_dict(), "gate": "http://other/cutover", "lag_seconds": 1.5},
    ]
    found = evidence_for("payments", [], None, said, 60, T0)
    assert (found["lag_seconds"], found["drift"]) == (1.5, 0)
    assert (found["arms"], found["shadow"]) == ({}, None)


def test_evidence_covers_the_window_before_it_only() -> None:
    docs = arm_docs(("payments", "payment", 200, 0.01, 5))
    assert evidence_for("payments", docs, None, [], 60, T0 + 120)["arms"] == {}
    assert evidence_for("payments", docs, None, [], 60, T0)["arms"] == {}  # counted after it
    assert evidence_for("payments", docs, None, [], 60, T0 + 1)["arms"]["payment"]["requests"] == 5


def canary_history() -> list[Entry]:
    return [
        entry(1, make_table([payments()]), "first"),
        entry(2, make_table([payments(split={"monolith": 90, "payment": 10})]), "canary"),
        entry(3, make_table([payments()]), "rollback to version 1: errors", "ops"),
    ]


def test_the_ledger_attaches_each_versions_evidence() -> None:
    evidence = {
        2: {"routes": {"payments": {"window": 60, "arms": {}}}},
        3: {"routes": {"catalog": {"window": 60}}},  # not this route's
        9: "not a document",
    }
    ledger = replace(build_ledger(canary_history()), evidence=evidence)  # type: ignore[arg-type]
    steps = ledger.as_dict()["routes"][0]["transitions"]
    assert [s["evidence"] for s in steps] == [None, {"window": 60, "arms": {}}, None]
    assert ledger.only("payments").as_dict() == ledger.as_dict()
    plain = build_ledger(canary_history()).as_dict()
    assert "evidence" not in plain["routes"][0]["transitions"][0]  # not read: not there
    assert "legacy_paths" not in plain


def test_the_ledger_with_what_the_monolith_serves() -> None:
    ledger = replace(
        build_ledger(canary_history()),
        legacy_paths=(("GET /api/v1/orders/{id}", 2),),
        legacy_window=600,
    )
    found = ledger.as_dict()
    assert found["legacy_window"] == 600
    assert found["legacy_paths"] == [{"template": "GET /api/v1/orders/{id}", "requests": 2}]


WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def test_ledger_lines_with_evidence_and_the_monolith() -> None:
    evidence = {
        2: {
            "routes": {
                "payments": {
                    "window": 60,
                    "arms": {
                        "monolith": {"requests": 1000, "error_rate": 0.001, "p95": 0.1},
                        "payment": {"requests": 500, "error_rate": 0.002, "p95": 0.11},
                    },
                    "shadow": {"compared": 240, "differed": 0, "rate": 0.0},
                    "gates": [GATE_OPEN.as_dict()],
                    "lag_seconds": 0.4,
                    "drift": 0,
                }
            }
        },
        3: {"routes": {"payments": {"window": 60, "arms": {}, "shadow": None, "gates": []}}},
    }
    paths = tuple((f"GET /api/v1/r{n}/{{id}}", 1000 - n) for n in range(25))
    ledger = replace(
        build_ledger(canary_history()),
        evidence=evidence,
        legacy_paths=paths,
        legacy_window=900,
    )
    lines = ledger_lines(ledger.as_dict())
    assert lines[0] == "versions 1 to 3"
    assert re.fullmatch(rf"payments  legacy  since version 3 \({WHEN}\)", lines[1])
    assert re.fullmatch(rf"  {WHEN}  v1    \(added\) → legacy\s+ana: first", lines[2])
    assert re.fullmatch(rf"  {WHEN}  v2    legacy → canary 10% to payment\s+ana: canary", lines[3])
    assert lines[4] == (
        "      evidence (60 s): errors 0.2% vs 0.1% legacy · p95 \u00d71.10 · shadow 0.0% of 240"
        " · gates open · lag 0.4 s · drift 0"
    )
    assert re.fullmatch(
        rf"  {WHEN}  v3    canary 10% to payment → legacy\s+ops: rollback.*", lines[5]
    )
    assert lines[6] == "      evidence (60 s): no requests in the window"
    assert lines[7:10] == [
        "",
        "What the monolith still serves (last 15 min)",
        "  1,000  GET /api/v1/r0/{id}",
    ]
    assert lines[-2] == "    981  GET /api/v1/r19/{id}"
    assert lines[-1] == "  … and 5 more templates (4,890 requests)"


def test_ledger_lines_as_the_ledger_printed_before() -> None:
    lines = ledger_lines(build_ledger(canary_history()).as_dict())
    assert len(lines) == 5  # no evidence lines, no monolith section when not read
    assert ledger_lines(build_ledger([]).as_dict()) == ["no versions yet"]
    broken = Entry(4, "ana", 1_004.0, "hand edit", None, "routes: not a list")
    lines = ledger_lines(build_ledger([*canary_history(), broken]).as_dict())
    assert re.fullmatch(
        rf"version 4 \({WHEN}, ana: hand edit\): its table does not load here, left out: "
        "routes: not a list",
        lines[1],
    )


@pytest.mark.parametrize(
    ("arms", "candidates", "text"),
    [
        pytest.param(
            {"payment": {"requests": 10, "error_rate": 0.0, "p95": 0.02}},
            ["payment"],
            "evidence (60 s): payment 10 requests, errors 0.0%, p95 20 ms",
            id="moved-nothing-to-compare",
        ),
        pytest.param(
            {
                "monolith": {"requests": 10, "error_rate": 0.0005, "p95": None},
                "payment": {"requests": 0, "error_rate": 0.0, "p95": None},
                "catalog": {"requests": 5, "error_rate": 0.2, "p95": 1.5},
            },
            ["payment", "catalog"],
            "evidence (60 s): payment: no requests · catalog: errors 20.0% vs 0.05% legacy",
            id="two-candidates",
        ),
        pytest.param(
            {"monolith": {"requests": 3, "error_rate": 0.0, "p95": 0.004}},
            [],
            "evidence (60 s): monolith 3 requests, errors 0.0%, p95 4 ms",
            id="shadowed",
        ),
    ],
)
def test_evidence_line(arms: dict[str, Any], candidates: list[str], text: str) -> None:
    assert evidence_line({"window": 60, "arms": arms}, candidates) == text
