"""Which upstream a route sends a request to without pins (split.choose): `to`, or the split's
weighted rendezvous hash of the request's key (a random key when it has none). Properties of the
hash over random weights are in test_split_properties.py; keys, cookies, overrides and pins
through `resolve` in test_plan_arms.py and test_pins.py."""

from __future__ import annotations

from collections import Counter

import pytest

from proxy.dataplane.split import choose, cookie_value
from proxy.table.compile import CompiledRoute, compile_table
from proxy.table.loader import load_text
from tests.proxy.tables import HEADER, make_snapshot, route

KEYS = [f"user-{i}".encode() for i in range(10_000)]


def split_route(weights: dict[str, int], sticky: str | None = "header:X-User-Id") -> CompiledRoute:
    spec: dict[str, object] = {"name": "s", "match": {"path": "/s"}, "split": weights}
    if sticky is not None:
        spec["sticky"] = sticky
    (compiled,) = make_snapshot([spec]).routes
    return compiled


def by_user(compiled: CompiledRoute, keys: list[bytes] = KEYS) -> list[str]:
    """The upstream each user (an X-User-Id) is sent to."""
    return [choose(compiled, [(b"x-user-id", key)], None).name for key in keys]


def test_a_to_route_always_takes_its_upstream() -> None:
    (compiled,) = make_snapshot([route("r", "/r", to="payment")]).routes
    assert {choose(compiled, [(b"x-user-id", key)], "10.0.0.1").name for key in KEYS[:100]} == {
        "payment"
    }


def test_the_same_key_always_gets_the_same_upstream() -> None:
    compiled = split_route({"monolith": 50, "payment": 50})
    first = by_user(compiled, KEYS[:500])
    for _ in range(3):
        assert by_user(compiled, KEYS[:500]) == first
    # ...and so does a freshly compiled table (another replica, or after a restart).
    assert by_user(split_route({"monolith": 50, "payment": 50}), KEYS[:500]) == first


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param({"monolith": 90, "payment": 10}, id="90-10"),
        pytest.param({"monolith": 99, "payment": 1}, id="99-1"),
        pytest.param({"monolith": 50, "payment": 30, "catalog": 20}, id="three-way"),
    ],
)
def test_distinct_keys_spread_as_weighted(weights: dict[str, int]) -> None:
    counts = Counter(by_user(split_route(weights)))
    for upstream, weight in weights.items():
        share = counts[upstream] / len(KEYS) * 100
        assert weight - 2 <= share <= weight + 2, (upstream, share)


def test_raising_a_weight_only_moves_keys_toward_that_upstream() -> None:
    before = by_user(split_route({"monolith": 90, "payment": 10}))
    after = by_user(split_route({"monolith": 80, "payment": 20}))
    moves = Counter((old, new) for old, new in zip(before, after, strict=True) if old != new)
    assert set(moves) == {("monolith", "payment")}
    assert 800 <= moves["monolith", "payment"] <= 1200  # about another 10 %


def test_a_zero_weight_upstream_gets_nothing() -> None:
    assert set(by_user(split_route({"monolith": 100, "payment": 0}))) == {"monolith"}
    assert set(by_user(split_route({"monolith": 0, "payment": 100}))) == {"payment"}


def test_yaml_order_of_the_split_does_not_change_the_outcome() -> None:
    def loaded(split: str) -> CompiledRoute:
        table = load_text(
            HEADER + f"  - name: s\n    match: {{path: /s}}\n    split: {split}\n"
            "    sticky: header:X-User-Id\n"
        )
        (compiled,) = compile_table(table).routes
        return compiled

    assert by_user(loaded("{monolith: 90, payment: 10}")) == by_user(
        loaded("{payment: 10, monolith: 90}")
    )


def test_cookie_sticky_key() -> None:
    compiled = split_route({"monolith": 50, "payment": 50}, sticky="cookie:uid")

    def chosen(*cookies: bytes) -> str:
        return choose(compiled, [(b"cookie", c) for c in cookies], None).name

    for key in KEYS[:200]:
        alone = chosen(b"uid=" + key)
        assert chosen(b"theme=dark; uid=" + key + b"; lang=en") == alone
        assert chosen(b"theme=dark", b"uid=" + key) == alone  # cookies split over lines
        assert chosen(b'uid="' + key + b'"') == alone  # a quoted value
        assert chosen(b"xuid=other; uid=" + key) == alone  # not a suffix match
    assert len({chosen(b"uid=" + key) for key in KEYS[:200]}) == 2


def test_header_sticky_key_ignores_other_headers() -> None:
    compiled = split_route({"monolith": 50, "payment": 50})
    for key in KEYS[:200]:
        alone = choose(compiled, [(b"x-user-id", key)], "10.0.0.1").name
        noisy = [(b"x-trace", b"1"), (b"x-user-id", key), (b"cookie", b"x-user-id=zz")]
        assert choose(compiled, noisy, "10.0.0.2").name == alone


def test_client_ip_sticky_key() -> None:
    compiled = split_route({"monolith": 90, "payment": 10}, sticky="client-ip")
    clients = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(10_000)]
    first = [choose(compiled, [(b"x-user-id", b"ignored")], c).name for c in clients]
    assert [choose(compiled, [], c).name for c in clients] == first
    assert 800 <= first.count("payment") <= 1200


@pytest.mark.parametrize(
    ("sticky", "headers"),
    [
        pytest.param(None, [(b"x-user-id", b"u1")], id="no-sticky-setting"),
        pytest.param("header:X-User-Id", [], id="header-missing"),
        pytest.param("cookie:uid", [(b"cookie", b"theme=dark")], id="cookie-missing"),
        pytest.param("client-ip", [], id="no-client-address"),
    ],
)
def test_without_a_key_each_request_draws_within_the_split(
    sticky: str | None, headers: list[tuple[bytes, bytes]]
) -> None:
    compiled = split_route({"monolith": 50, "payment": 30, "catalog": 20}, sticky=sticky)
    drawn = Counter(choose(compiled, headers, None).name for _ in range(2_000))
    # Random draws: both extremes are checked loosely enough never to fail by chance.
    assert set(drawn) == {"monolith", "payment", "catalog"}
    assert 800 <= drawn["monolith"] <= 1200

    only = split_route({"monolith": 0, "payment": 100}, sticky=sticky)
    assert {choose(only, headers, None).name for _ in range(200)} == {"payment"}


@pytest.mark.parametrize(
    ("cookies", "value"),
    [
        pytest.param([b"uid=42"], b"42", id="alone"),
        pytest.param([b"a=1; uid=42; b=2"], b"42", id="among-others"),
        pytest.param([b"a=1;uid=42"], b"42", id="no-space"),
        pytest.param([b"a=1", b"uid=42"], b"42", id="second-line"),
        pytest.param([b'uid="42"'], b"42", id="quoted"),
        pytest.param([b"uid=a=b"], b"a=b", id="equals-in-value"),
        pytest.param([b"UID=42"], None, id="name-is-case-sensitive"),
        pytest.param([b"uid"], None, id="no-value"),
        pytest.param([b"uid="], b"", id="empty-value"),
        pytest.param([b"myuid=42"], None, id="longer-name"),
        pytest.param([], None, id="no-cookie"),
    ],
)
def test_cookie_value(cookies: list[bytes], value: bytes | None) -> None:
    headers = [(b"x-uid", b"header-not-cookie")] + [(b"cookie", c) for c in cookies]
    assert cookie_value(headers, b"uid") == value
