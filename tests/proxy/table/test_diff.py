"""diff_tables: what a reviewer of a route change reads."""

from __future__ import annotations

from proxy.table.diff import diff_tables
from proxy.table.model import RouteTable


def table(routes: list[dict[str, object]], **extra: object) -> RouteTable:
    return RouteTable.model_validate(
        {
            "upstreams": {
                "monolith": {"url": "http://127.0.0.1:1"},
                "payment": {"url": "http://127.0.0.1:2"},
            },
            "default": "monolith",
            "routes": routes,
            **extra,
        }
    )


PAY = {"name": "payments", "match": {"path": "/pay"}, "to": "monolith"}


def test_identical_tables_have_no_changes() -> None:
    assert diff_tables(table([PAY]), table([PAY])) == []


def test_a_flip_names_the_fields_with_old_and_new_values() -> None:
    flipped = {**PAY, "to": None, "split": {"monolith": 90, "payment": 10}}
    del flipped["to"]
    (change,) = diff_tables(table([PAY]), table([flipped]))
    assert (change.kind, change.name, change.action) == ("route", "payments", "changed")
    assert change.fields == {
        "split": (None, {"monolith": 90, "payment": 10}),
        "to": ("monolith", None),
    }
    assert change.describe() == (
        "changed route payments: split: - → {monolith: 90, payment: 10}; to: monolith → -"
    )


def test_nested_match_fields_are_named_by_path() -> None:
    narrowed = {**PAY, "match": {"path": "/pay", "methods": ["GET"]}}
    (change,) = diff_tables(table([PAY]), table([narrowed]))
    assert change.fields == {"match.methods": (None, ("GET",))}


def test_added_and_removed_routes_upstreams_and_default() -> None:
    orders = {"name": "orders", "match": {"path": "/orders"}, "to": "payment"}
    old = table([PAY])
    new = RouteTable.model_validate(
        {
            "upstreams": {
                "monolith": {"url": "http://127.0.0.1:1"},
                "orders": {"url": "http://127.0.0.1:3"},
            },
            "default": "orders",
            "routes": [{**orders, "to": "orders"}],
        }
    )
    found = {(c.kind, c.name, c.action) for c in diff_tables(old, new)}
    assert found == {
        ("route", "orders", "added"),
        ("route", "payments", "removed"),
        ("upstream", "orders", "added"),
        ("upstream", "payment", "removed"),
        ("table", "-", "changed"),
    }
    as_json = [c.as_dict() for c in diff_tables(old, new) if c.kind == "table"]
    assert as_json[0]["fields"]["default"] == {"old": "monolith", "new": "orders"}
