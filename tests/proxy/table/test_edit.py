"""Edits of routes.yaml text keep what an engineer wrote: comments, quotes, order, style."""

from __future__ import annotations

import pytest

from proxy.table.edit import flip, set_version
from proxy.table.loader import load_text

TABLE = """\
# Payments move first; ask the payments team before touching this.
version: 3
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}  # the legacy system
  payment: {url: "http://127.0.0.1:8002"}
default: monolith
routes:
  - name: payments   # owned by the payments team
    match: {path: /api/v1/payments}
    to: monolith
    max_body: 64KiB
"""


def test_set_version_changes_only_the_version_line() -> None:
    edited = set_version(TABLE, 4)
    assert edited == TABLE.replace("version: 3", "version: 4")


def test_set_version_adds_the_key_when_missing() -> None:
    edited = set_version(TABLE.replace("version: 3\n", ""), 1)
    assert load_text(edited).version == 1
    assert edited.startswith("# Payments") or "version: 1" in edited.splitlines()[0]


def test_flip_to_a_split_keeps_comments_quotes_and_field_order() -> None:
    edited = flip(TABLE, "payments", split={"monolith": 90, "payment": 10})
    assert edited == TABLE.replace("    to: monolith\n", "    split: {monolith: 90, payment: 10}\n")
    table = load_text(edited)
    assert table.routes[0].split == {"monolith": 90, "payment": 10}


def test_flip_back_to_one_upstream_drops_the_split_and_keeps_sticky() -> None:
    # A route flipped back and forth keeps its key: the next split is sticky from its first
    # request, and users return to the arm they had.
    split = flip(TABLE, "payments", split={"monolith": 50, "payment": 50})
    split = split.replace(
        "    max_body: 64KiB\n", "    sticky: header:X-User-Id\n    max_body: 64KiB\n"
    )
    back = flip(split, "payments", to="payment")
    route = load_text(back).routes[0]
    assert (route.to, route.split, route.sticky) == ("payment", None, "header:x-user-id")
    assert "# owned by the payments team" in back


def test_flip_with_sticky_sets_or_replaces_the_key() -> None:
    first = flip(TABLE, "payments", split={"monolith": 99, "payment": 1}, sticky="cookie:uid")
    assert load_text(first).routes[0].sticky == "cookie:uid"
    second = flip(first, "payments", split={"monolith": 90, "payment": 10})
    assert load_text(second).routes[0].sticky == "cookie:uid"  # kept
    third = flip(second, "payments", to="payment", sticky="header:Authorization")
    assert load_text(third).routes[0].sticky == "header:authorization"
    assert third.count("sticky:") == 1


def test_flip_of_an_unknown_route_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        flip(TABLE, "orders", to="payment")


def test_flip_needs_exactly_one_action() -> None:
    with pytest.raises(ValueError, match="one upstream or"):
        flip(TABLE, "payments")
