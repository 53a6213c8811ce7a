"""Properties of weighted splits (split.weighted, weighted rendezvous hashing) that a migration
relies on, over random weight vectors of 2-4 upstreams and 5,000 fixed users:

- monotone: a weight change moves a user from i to j only if j gained weight or i lost some, so
  a canary that only grows never sends a user back to the monolith;
- shares: each upstream gets about its weight, weight 0 nobody, weight 100 everybody;
- an upstream added at weight 0 moves nobody; a route's `salt` picks other canary users at the
  same shares;
- replicas agree: the same user gets the same upstream from any freshly compiled table, in any
  process.

Reproducible: derandomized, no example database; each property runs a bounded number of
examples (every example hashes 5,000 users once or twice).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.dataplane.split import weighted
from proxy.table.compile import CompiledRoute, compile_table
from proxy.table.loader import load_text
from tests.proxy.tables import make_snapshot

N = 5_000
KEYS = [f"user-{i}".encode() for i in range(N)]
NAMES = ("catalog", "monolith", "orders", "payment", "payment-v2")
UPSTREAMS = {name: {"url": f"http://127.0.0.1:{8001 + i}"} for i, name in enumerate(NAMES)}
# Binomial sd of a share at 50 % with n = 5,000 is sqrt(0.25 / 5000) = 0.71 pt: 3 pt is over
# 4 sd, so the share checks do not fail by chance, and still catch a biased hash.
TOLERANCE = 3.0
PROPERTY = settings(max_examples=15, deadline=None, derandomize=True, database=None)

Weights = dict[str, int]


def split_route(weights: Weights, salt: str | None = None) -> CompiledRoute:
    """A split route compiled from a valid table, as the data plane gets it."""
    spec: dict[str, Any] = {"name": "s", "match": {"path": "/s"}, "split": weights}
    if salt is not None:
        spec["salt"] = salt
    (compiled,) = make_snapshot([spec], upstreams=UPSTREAMS).routes
    return compiled


def assigned(weights: Weights, salt: str | None = None, keys: list[bytes] = KEYS) -> list[str]:
    """The upstream each user is sent to."""
    compiled = split_route(weights, salt)
    assert compiled.split is not None
    return [weighted(compiled.split, key, compiled.salt).name for key in keys]


def shares(chosen: list[str]) -> dict[str, float]:
    return {name: count / len(chosen) * 100 for name, count in Counter(chosen).items()}


@st.composite
def weight_vector(draw: st.DrawFn, n: int) -> list[int]:
    """n weights in 0-100 summing to 100 (zeros included): n - 1 cuts of 0..100."""
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1)))
    bounds = [0, *cuts, 100]
    return [high - low for low, high in pairwise(bounds)]


@st.composite
def split_weights(draw: st.DrawFn, min_size: int = 2, max_size: int = 4) -> Weights:
    n = draw(st.integers(min_size, max_size))
    names = draw(st.lists(st.sampled_from(NAMES), min_size=n, max_size=n, unique=True))
    return dict(zip(names, draw(weight_vector(n)), strict=True))


@st.composite
def reweighting(draw: st.DrawFn) -> tuple[Weights, Weights]:
    """Any change of weights over the same upstreams."""
    before = draw(split_weights())
    after = dict(zip(before, draw(weight_vector(len(before))), strict=True))
    return before, after


@st.composite
def one_raised(draw: st.DrawFn) -> tuple[Weights, Weights, str]:
    """One upstream's weight raised, the others' lowered (or kept) to pay for it."""
    before = draw(split_weights())
    raised = draw(st.sampled_from(sorted(before)))
    after = dict(before)
    for name, weight in before.items():
        if name != raised:
            taken = draw(st.integers(0, weight))
            after[name] -= taken
            after[raised] += taken
    return before, after, raised


def moves(before: list[str], after: list[str]) -> Counter[tuple[str, str]]:
    return Counter((old, new) for old, new in zip(before, after, strict=True) if old != new)


# --- monotonicity ----------------------------------------------------------------------------


@PROPERTY
@given(reweighting())
@example(
    ({"monolith": 50, "payment": 30, "catalog": 20}, {"monolith": 20, "payment": 30, "catalog": 50})
)
def test_a_user_moves_only_toward_a_gain_or_away_from_a_loss(
    change: tuple[Weights, Weights],
) -> None:
    """Any weight change w -> w' moves a user from i to j only if w'[j] > w[j] or w'[i] < w[i]:
    an upstream nobody touched neither steals users from another untouched one nor sends
    users back where they came from (what makes a flip predictable)."""
    before, after = change
    moved = moves(assigned(before), assigned(after))
    unjustified = {
        (old, new): count
        for (old, new), count in moved.items()
        if not (after[new] > before[new] or after[old] < before[old])
    }
    assert unjustified == {}, (before, after)


@PROPERTY
@given(one_raised())
@example(({"monolith": 90, "payment": 10}, {"monolith": 80, "payment": 20}, "payment"))
@example(
    (
        {"monolith": 50, "payment": 30, "payment-v2": 20},
        {"monolith": 50, "payment": 20, "payment-v2": 30},
        "payment-v2",
    )
)
def test_raising_one_weight_moves_users_to_it_and_never_off_it(
    change: tuple[Weights, Weights, str],
) -> None:
    """Raising one upstream's weight (taking it from the others): it loses none of its users,
    it gains about the weight it gained, and a user of an upstream whose weight did not change
    either stays or moves to the raised one. (On a two-way split every move goes to it.)"""
    before, after, raised = change
    old, new = assigned(before), assigned(after)
    assert all(b == raised for a, b in zip(old, new, strict=True) if a == raised)
    kept = {name for name in before if name != raised and after[name] == before[name]}
    assert all(b in {a, raised} for a, b in zip(old, new, strict=True) if a in kept)
    gained = sum(a != b == raised for a, b in zip(old, new, strict=True)) / N * 100
    assert abs(gained - (after[raised] - before[raised])) <= TOLERANCE, (before, after)


@PROPERTY
@given(one_raised())
@example(({"monolith": 90, "payment": 10}, {"monolith": 95, "payment": 5}, "monolith"))
def test_lowering_one_weight_moves_users_off_it_and_never_onto_it(
    change: tuple[Weights, Weights, str],
) -> None:
    """The mirror image (a rollback step): lowering one upstream's weight (giving it to the
    others) sends nobody new to it, it loses about the weight it lost, and an upstream whose
    weight did not change only takes users from the lowered one."""
    low, high, lowered = change  # read backwards: `lowered` goes from its `high` weight to `low`
    old, new = assigned(high), assigned(low)
    assert all(a == lowered for a, b in zip(old, new, strict=True) if b == lowered)
    kept = {name for name in high if name != lowered and low[name] == high[name]}
    assert all(a in {b, lowered} for a, b in zip(old, new, strict=True) if b in kept)
    lost = sum(b != a == lowered for a, b in zip(old, new, strict=True)) / N * 100
    assert abs(lost - (high[lowered] - low[lowered])) <= TOLERANCE, (high, low)


@pytest.mark.parametrize("fixed", [0, 10, 25], ids=lambda fixed: f"payment-v2-at-{fixed}")
def test_a_canary_that_only_grows_never_sends_a_user_back(fixed: int) -> None:
    """The canary sequence 1 -> 5 -> 25 -> 50 -> 100 % (all the monolith had) for payment on a
    three-way split with payment-v2 held fixed: a user on the canary stays on it at every later
    step, nobody ever returns to the monolith, and each step's share is its weight."""
    steps = [1, 5, 25, 50, 100 - fixed]
    plans = [{"monolith": 100 - fixed - p, "payment": p, "payment-v2": fixed} for p in steps]
    arms = [assigned(weights) for weights in plans]
    for weights, chosen in zip(plans, arms, strict=True):
        share = shares(chosen)
        assert abs(share.get("payment", 0.0) - weights["payment"]) <= TOLERANCE, weights
    for step, (old, new) in enumerate(pairwise(arms)):
        back = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a == "payment" != b]
        assert back == [], f"step {steps[step]} -> {steps[step + 1]}: {len(back)} users left"
        returned = [
            i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b == "monolith"
        ]
        assert returned == [], f"step {steps[step]} -> {steps[step + 1]}"
    assert "monolith" not in arms[-1]


# --- shares ----------------------------------------------------------------------------------


@PROPERTY
@given(split_weights())
@example({"monolith": 100, "payment": 0})
@example({"monolith": 0, "payment": 100})
@example({"catalog": 0, "monolith": 0, "payment": 100, "orders": 0})
@example({"monolith": 99, "payment": 1})
@example({"monolith": 34, "payment": 33, "payment-v2": 33})
def test_each_upstream_gets_its_weight_as_its_share(weights: Weights) -> None:
    """With 5,000 users each upstream's share is within 3 points of its weight (binomial sd at
    50 % and n = 5,000 is 0.7 pt, so 3 pt is over 4 sd); weight 0 gets nobody, weight 100
    everybody."""
    share = shares(assigned(weights))
    for name, weight in weights.items():
        if weight == 0:
            assert name not in share, weights
        elif weight == 100:
            assert share == {name: 100.0}
        else:
            assert abs(share.get(name, 0.0) - weight) <= TOLERANCE, (weights, share)


@PROPERTY
@given(split_weights(max_size=3), st.data())
def test_an_upstream_added_at_weight_zero_moves_nobody(
    weights: Weights, data: st.DataObject
) -> None:
    """Declaring a new upstream in the split before giving it traffic changes nobody's arm,
    wherever its name sorts among the others."""
    added = data.draw(st.sampled_from([name for name in NAMES if name not in weights]))
    assert assigned({**weights, added: 0}) == assigned(weights)


@settings(PROPERTY, max_examples=8)  # two routes' worth of hashing per example
@given(
    st.integers(10, 90),
    st.one_of(st.none(), st.text(min_size=1, max_size=64)),
    st.one_of(st.none(), st.text(min_size=1, max_size=64)),
)
@example(10, None, "payments-2024")
@example(50, "a", "b")
def test_a_salt_picks_other_canary_users_at_the_same_shares(
    canary: int, salt: str | None, other: str | None
) -> None:
    """Two routes with different salts both give the canary its weight, but to different users:
    their canary sets overlap about as much as two independent draws (the product of the
    shares), far from the whole set. So one set of users is not the guinea pig of every route."""
    if (salt or "") == (other or ""):
        other = (salt or "") + "-other"
    weights = {"monolith": 100 - canary, "payment": canary}
    first, second = assigned(weights, salt), assigned(weights, other)
    for chosen in (first, second):
        assert abs(shares(chosen).get("payment", 0.0) - canary) <= TOLERANCE
    both = sum(a == b == "payment" for a, b in zip(first, second, strict=True)) / N * 100
    assert abs(both - canary * canary / 100) <= TOLERANCE, (canary, salt, other, both)


def test_routes_without_a_salt_share_their_canary_users() -> None:
    """Why the salt exists: the hash does not involve the route, so two unsalted routes at the
    same weights put exactly the same users on the canary."""
    weights = {"monolith": 90, "payment": 10}
    spec = {"match": {"path": "/a"}, "split": weights}
    snapshot = make_snapshot(
        [{"name": "a", **spec}, {"name": "b", **spec, "match": {"path": "/b"}}],
        upstreams=UPSTREAMS,
    )
    first, second = snapshot.routes
    assert first.split is not None
    assert second.split is not None
    assert [weighted(first.split, key, first.salt) for key in KEYS[:1000]] == [
        weighted(second.split, key, second.salt) for key in KEYS[:1000]
    ]


# --- replicas --------------------------------------------------------------------------------

TABLE = """\
version: 7
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  payment: {url: "http://127.0.0.1:8002"}
  payment-v2: {url: "http://127.0.0.1:8003"}
default: monolith
routes:
  - name: payments
    match: {path: /api/v1/payments}
    split: {payment-v2: 10, monolith: 60, payment: 30}
    salt: spring
"""

_CHILD = """\
import json, sys
from proxy.dataplane.split import weighted
from proxy.table.compile import compile_table
from proxy.table.loader import load_text
(route,) = compile_table(load_text(sys.stdin.read())).routes
keys = [f"user-{i}".encode() for i in range(int(sys.argv[1]))]
print(json.dumps([weighted(route.split, key, route.salt).name for key in keys]))
"""


def _from_text(text: str, keys: list[bytes]) -> list[str]:
    (compiled,) = compile_table(load_text(text)).routes
    assert compiled.split is not None
    return [weighted(compiled.split, key, compiled.salt).name for key in keys]


def test_a_freshly_compiled_table_sends_each_user_to_the_same_upstream() -> None:
    """Another replica (or this one after a restart) compiles the same table itself, with the
    split written in another order: every user lands where they did."""
    reordered = TABLE.replace(
        "{payment-v2: 10, monolith: 60, payment: 30}", "{monolith: 60, payment: 30, payment-v2: 10}"
    )
    first = _from_text(TABLE, KEYS)
    assert _from_text(TABLE, KEYS) == first
    assert _from_text(reordered, KEYS) == first
    assert set(first) == {"monolith", "payment", "payment-v2"}


def test_another_process_sends_each_user_to_the_same_upstream() -> None:
    """Replicas are separate processes with their own string-hash seeds: the split must not
    depend on anything per process."""
    keys = 1_000
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(keys)],
        input=TABLE,
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == _from_text(TABLE, KEYS[:keys])
