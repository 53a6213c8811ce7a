"""Where rollouts are kept, on a file store and on a real Redis: compare-and-set writes that lose
nobody's change, writes fenced by the drivers' lease, and the lease itself (taken, renewed,
expired, released)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from proxy.rollout.model import Rollout, begin
from proxy.rollout.store import FileRollouts, LeaseLost, RedisRollouts, RolloutStore, open_rollouts
from proxy.rollout.transitions import noted
from proxy.table.loader import load_text
from proxy.table.rollout import RolloutPlan
from tests.proxy.rollout.support import routes_yaml
from tests.support import wait_until

T0 = 1_800_000_000.0


def a_rollout(route: str = "payments") -> Rollout:
    table = load_text(routes_yaml())
    return begin(table, 1, route, RolloutPlan(to="payment"), "canary", "ana", T0)


@pytest.fixture(params=["file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RolloutStore]:
    if request.param == "file":
        yield FileRollouts(tmp_path / "rollouts")
        return
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")
    opened = RedisRollouts(url, prefix)
    yield opened
    opened.close()


def test_a_rollout_is_created_read_and_listed(store: RolloutStore) -> None:
    assert store.get("payments") is None
    assert store.all() == []
    created = store.update("payments", lambda _: a_rollout())
    assert created is not None
    assert created.revision == 1
    assert store.get("payments") == created
    store.update("orders", lambda _: a_rollout("payments"))
    assert [r.revision for r in store.all()] == [1, 1]


def test_each_write_bumps_the_revision_and_none_writes_nothing(store: RolloutStore) -> None:
    store.update("payments", lambda _: a_rollout())
    second = store.update("payments", lambda r: noted(r, T0, "waiting", "x") if r else None)
    assert second is not None
    assert second.revision == 2
    same = store.update("payments", lambda r: None)
    assert same == second


@pytest.mark.redis
def test_a_write_that_raced_another_is_made_again_on_the_fresh_state(
    redis_url: str, redis_prefix: str
) -> None:
    """Two writers on one revision: neither change is lost (the store applies a change again to
    the state it would write over). The file store cannot race: it writes under its lock."""
    store = RedisRollouts(redis_url, redis_prefix)
    other = RedisRollouts(redis_url, redis_prefix)
    store.update("payments", lambda _: a_rollout())
    raced = threading.Event()

    def slow(current: Rollout | None) -> Rollout:
        assert current is not None
        if not raced.is_set():
            raced.set()
            other.update("payments", lambda r: noted(r, T0, "paused", "by bo") if r else None)
        return noted(current, T0 + 1, "waiting", "by the driver")

    written = store.update("payments", slow)
    store.close()
    other.close()
    assert written is not None
    assert [e.message for e in written.history[-2:]] == ["by bo", "by the driver"]
    assert written.revision == 3


def test_the_file_store_serialises_writers_with_its_lock(tmp_path: Path) -> None:
    store = FileRollouts(tmp_path / "rollouts")
    store.update("payments", lambda _: a_rollout())

    def add(i: int) -> None:
        store.update("payments", lambda r: noted(r, T0 + i, "waiting", f"{i}") if r else None)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = store.get("payments")
    assert final is not None
    assert final.revision == 9
    assert sorted(e.message for e in final.history[1:]) == [str(i) for i in range(8)]


def test_the_lease_is_held_by_one_and_renewed_by_it(store: RolloutStore) -> None:
    assert store.holder() is None
    assert store.acquire("a", 5.0)
    assert not store.acquire("b", 5.0)
    assert store.acquire("a", 5.0)  # a renewal
    assert store.holder() == "a"
    store.release("b")  # not b's to release
    assert store.holder() == "a"
    store.release("a")
    assert store.holder() is None
    assert store.acquire("b", 5.0)


def test_a_lease_its_holder_stops_renewing_passes_to_another(store: RolloutStore) -> None:
    assert store.acquire("a", 0.2)
    assert not store.acquire("b", 0.2)
    wait_until(lambda: store.acquire("b", 5.0), what="the lease to expire")
    assert store.holder() == "b"
    assert not store.acquire("a", 0.2)


def test_a_write_fenced_by_a_lease_lands_only_while_it_is_held(store: RolloutStore) -> None:
    store.update("payments", lambda _: a_rollout())
    assert store.acquire("a", 5.0)
    change = lambda r: noted(r, T0, "waiting", "by a") if r else None  # noqa: E731
    assert store.update("payments", change, holder="a") is not None
    with pytest.raises(LeaseLost):
        store.update("payments", change, holder="b")
    found = store.get("payments")
    assert found is not None
    assert found.history[-1].message == "by a"
    assert found.revision == 2


def test_records_that_do_not_read_are_left_out(tmp_path: Path) -> None:
    store = FileRollouts(tmp_path / "rollouts")
    store.update("payments", lambda _: a_rollout())
    (tmp_path / "rollouts" / "broken.json").write_text("{not json")
    (tmp_path / "rollouts" / "other.json").write_text('{"route": "other"}')
    assert [r.route for r in store.all()] == ["payments"]
    assert store.get("broken") is None


def test_the_file_store_keeps_them_beside_the_route_history(tmp_path: Path) -> None:
    opened = open_rollouts("file", tmp_path / "routes.yaml")
    assert isinstance(opened, FileRollouts)
    assert opened.dir == tmp_path / "var" / "routes-rollouts"


@pytest.mark.redis
def test_redis_keys_live_under_the_store_prefix(redis_url: str, redis_prefix: str) -> None:
    import redis

    store = open_rollouts(redis_url, None, redis_prefix)
    store.update("payments", lambda _: replace(a_rollout()))
    store.acquire("a", 5.0)
    client = redis.Redis.from_url(redis_url)
    keys = sorted(k.decode() for k in client.scan_iter(match=redis_prefix + "*"))
    client.close()
    store.close()
    assert keys == [
        f"{redis_prefix}rollouts:lease",
        f"{redis_prefix}rollouts:revision",
        f"{redis_prefix}rollouts:state",
    ]


def test_an_unreachable_redis_is_a_store_unavailable_error() -> None:
    from proxy.store.redis import StoreUnavailable
    from tests.support import free_port

    store = RedisRollouts(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreUnavailable, match="unreachable"):
        store.get("payments")
    with pytest.raises(StoreUnavailable):
        store.acquire("a", 5.0)
