"""The readable view of a compiled table that `strangler routes show` prints."""

from __future__ import annotations

import pytest

from proxy.table.show import describe, rows
from tests.proxy.tables import make_snapshot, route

SPLIT = {
    "name": "payments",
    "match": {"path": "/api/v1/payments", "methods": ["GET", "POST"]},
    "split": {"payment": 10, "monolith": 90},
    "sticky": "header:X-User-Id",
}


def test_rows_say_what_goes_where() -> None:
    snapshot = make_snapshot(
        [
            SPLIT,
            {
                **route("health", "/healthz", to="payment", exact=True, host="Shop.Example"),
                "max_body": "1KiB",
                "expose": "internal",
            },
        ],
        max_body="1MB",
    )
    assert rows(snapshot) == [
        {
            "route": "health",
            "match": "/healthz host=shop.example",
            "to": "payment",
            "expose": "internal",
            "max_body": 1024,
            "safety": "-",
        },
        {
            "route": "payments",
            "match": "GET,HEAD,POST /api/v1/payments/**",
            "to": "monolith 90%, payment 10% sticky header:x-user-id",
            "expose": "both",
            "max_body": 1_000_000,
            "safety": "pin 10s",
        },
        {
            "route": "(default)",
            "match": "anything else",
            "to": "monolith",
            "expose": "both",
            "max_body": 1_000_000,
            "safety": "-",
        },
    ]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        pytest.param(route("r", "/"), "/**", id="root-prefix"),
        pytest.param(route("r", "/a", exact=True), "/a", id="exact"),
        pytest.param(
            route("r", "/a", headers={"X-Canary": "yes"}), "/a/** x-canary=yes", id="header"
        ),
        pytest.param(
            route("r", "/a", methods=["DELETE"], host="h.example:8443"),
            "DELETE /a/** host=h.example",
            id="method-and-host",
        ),
    ],
)
def test_match_column(spec: dict[str, object], match: str) -> None:
    assert rows(make_snapshot([spec]))[0]["match"] == match


@pytest.mark.parametrize(
    ("sticky", "shown"),
    [
        pytest.param(None, "monolith 50%, payment 50%", id="no-sticky"),
        pytest.param("cookie:SID", "monolith 50%, payment 50% sticky cookie:SID", id="cookie"),
        pytest.param("client-ip", "monolith 50%, payment 50% sticky client-ip", id="client-ip"),
    ],
)
def test_split_column(sticky: str | None, shown: str) -> None:
    spec = {"name": "s", "match": {"path": "/s"}, "split": {"monolith": 50, "payment": 50}}
    if sticky is not None:
        spec["sticky"] = sticky
    assert rows(make_snapshot([spec]))[0]["to"] == shown


def test_rows_are_in_the_order_the_proxy_tries_routes() -> None:
    snapshot = make_snapshot([route("everything", "/"), route("api", "/api", to="payment")])
    # A request for /api/x takes `api`: it must not be listed below the catch-all.
    assert [row["route"] for row in rows(snapshot)] == ["api", "everything", "(default)"]


def test_describe_prints_an_aligned_table_and_the_upstreams() -> None:
    snapshot = make_snapshot([SPLIT, route("catalog", "/api/v1/products", to="catalog")], version=3)
    title, header, *table, blank, heading, monolith, payment, catalog = describe(
        snapshot
    ).splitlines()
    assert title == "route table version 3"
    columns = {"route": "ROUTE", "match": "MATCH", "to": "GOES TO", "expose": "EXPOSED"}
    starts = {key: header.index(name) for key, name in columns.items()}
    assert len(table) == len(rows(snapshot)) == 3
    for line, row in zip(table, rows(snapshot), strict=True):
        for key, start in starts.items():
            assert line[start:].startswith(str(row[key])), (line, key)
            assert start == 0 or line[start - 2 : start] == "  ", (line, key)
    assert (blank, heading) == ("", "upstreams:")
    assert (
        monolith == "  monolith     http://127.0.0.1:8001  timeout 60s, connect 5s, 256 connections"
    )
    assert (
        payment == "  payment      http://127.0.0.1:8002  timeout 60s, connect 5s, 256 connections"
    )
    assert (
        catalog == "  catalog      http://127.0.0.1:8003  timeout 60s, connect 5s, 256 connections"
    )


def test_rows_name_each_routes_safety_nets() -> None:
    snapshot = make_snapshot(
        [
            {
                **route("payments", "/api/v1/payments", to="payment"),
                "retry": {"attempts": 3},
                "fallback": {"to": "monolith", "methods": ["GET"]},
            }
        ]
    )
    assert rows(snapshot)[0]["safety"] == "retry x3, fallback monolith (GET,HEAD)"
