"""The Redis store against a real Redis: versions with author, reason and checksum, seeding an
empty store once, compare-and-set commits, refused tables, and what an outage looks like."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from fastapi.testclient import TestClient

from proxy.admin.app import create_admin_app
from proxy.store.base import StoreError, UnknownVersion, Version, VersionConflict
from proxy.store.redis import RedisStore, StoreUnavailable
from proxy.table.edit import flip
from proxy.table.loader import TableInvalid
from tests.support import free_port, redis_process

pytestmark = pytest.mark.redis

T = TypeVar("T")
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Author": "ana"}
TABLE = """\
# shared by every replica
version: 4
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  payment: {url: "http://127.0.0.1:8002"}
default: monolith
routes:
  - name: payments
    match: {path: /api/v1/payments}
    to: monolith
"""


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(TABLE)
    return path


@pytest.fixture
def open_store(redis_url: str, redis_prefix: str) -> Iterator[Callable[..., RedisStore]]:
    """Opens stores on the test's own prefix (one client each, like one replica each)."""
    opened: list[RedisStore] = []

    def make(seed: Path | None = None) -> RedisStore:
        store = RedisStore(redis_url, redis_prefix, seed=seed)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., RedisStore], seed: Path) -> RedisStore:
    return open_store(seed)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def at_once(count: int, work: Callable[[int], T]) -> list[T | BaseException]:
    """Run `work(0..count-1)` in threads released together; each result or exception."""
    gate = threading.Barrier(count)
    results: list[T | BaseException] = [RuntimeError("did not run")] * count

    def run(index: int) -> None:
        gate.wait(timeout=10)
        try:
            results[index] = work(index)
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_an_empty_store_starts_from_its_routes_file(store: RedisStore, seed: Path) -> None:
    first = store.current()
    assert first.info.version == 4  # the file's own number, as the file store keeps it
    assert (first.info.author, first.info.reason) == ("store", "first version, from routes.yaml")
    assert first.text == TABLE
    assert first.info.sha256 == hashlib.sha256(TABLE.encode()).hexdigest()
    seed.write_text(TABLE.replace("to: monolith", "to: payment"))
    assert store.current().text == TABLE  # a seed is read only while the store is empty
    assert [info.version for info in store.history()] == [4]


def test_a_store_without_versions_or_seed_has_no_current_version(
    open_store: Callable[..., RedisStore],
) -> None:
    with pytest.raises(UnknownVersion):
        open_store().current()
    assert open_store().history() == []


def test_a_seed_that_cannot_be_read_is_a_clear_store_error(
    open_store: Callable[..., RedisStore], tmp_path: Path
) -> None:
    with pytest.raises(StoreError) as failed:
        open_store(tmp_path / "missing.yaml").current()
    assert "is empty and its seed" in str(failed.value)
    assert "missing.yaml cannot be read: No such file or directory" in str(failed.value)


def test_replicas_racing_to_seed_an_empty_store_make_one_version(
    open_store: Callable[..., RedisStore], seed: Path
) -> None:
    stores = [open_store(seed) for _ in range(8)]
    seen = at_once(len(stores), lambda i: stores[i].current())
    assert all(isinstance(v, Version) for v in seen), seen
    assert {(v.info.version, v.info.time) for v in seen if isinstance(v, Version)} == {
        (4, stores[0].current().info.time)
    }
    assert [info.version for info in stores[0].history()] == [4]


def test_a_commit_is_a_new_version_with_author_reason_and_checksum(
    store: RedisStore, raw: redis.Redis, redis_prefix: str
) -> None:
    before = store.current()
    listener = raw.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    listener.subscribe(redis_prefix + "changes")
    try:
        text = flip(before.text, "payments", to="payment")
        committed = store.commit(text, author="ana", reason="cut over", expected_version=4)
        message = listener.get_message(timeout=5)
        while message is None:  # the subscription's confirmation can come first
            message = listener.get_message(timeout=5)
    finally:
        listener.close()
    assert message["data"] == b"5"  # replicas learn of it at once
    assert committed.info.version == 5
    assert (committed.info.author, committed.info.reason) == ("ana", "cut over")
    assert "version: 5" in committed.text
    assert "# shared by every replica" in committed.text  # comments survive
    assert committed.info.sha256 == hashlib.sha256(committed.text.encode()).hexdigest()
    current = store.current()
    assert current.info == committed.info
    assert current.text == committed.text
    assert current.table.routes[0].to == "payment"
    assert store.get(4).text == TABLE  # earlier versions are never rewritten
    history = store.history()
    assert [(i.version, i.author, i.reason) for i in history] == [
        (5, "ana", "cut over"),
        (4, "store", "first version, from routes.yaml"),
    ]
    assert [i.version for i in store.history(limit=1)] == [5]
    with pytest.raises(UnknownVersion):
        store.get(6)


def test_of_concurrent_commits_on_one_version_exactly_one_wins(
    open_store: Callable[..., RedisStore], seed: Path
) -> None:
    writers = [open_store(seed) for _ in range(8)]
    base = writers[0].current()
    outcomes = at_once(
        len(writers),
        lambda i: writers[i].commit(
            flip(base.text, "payments", split={"monolith": 100 - i, "payment": i}),
            author=f"w{i}",
            reason=f"writer {i}",
            expected_version=4,
        ),
    )
    won = [o for o in outcomes if isinstance(o, Version)]
    lost = [o for o in outcomes if isinstance(o, VersionConflict)]
    assert len(won) == 1, outcomes
    assert len(lost) == len(writers) - 1, outcomes
    assert {(c.expected, c.current) for c in lost} == {(4, 5)}
    current = writers[0].current()
    assert current.info == won[0].info
    assert current.text == won[0].text
    assert [i.version for i in writers[0].history()] == [5, 4]


INVALID = [
    pytest.param(
        TABLE.replace("to: monolith", "to: nowhere"),
        [(10, "routes[0].to: unknown upstream 'nowhere'")],
        id="unknown-upstream",
    ),
    pytest.param(
        TABLE.replace("to: monolith", "split: {monolith: 90, payment: 20}"),
        [(10, "routes[0].split: weights sum to 110, not 100")],
        id="weights-90-plus-20",
    ),
    pytest.param(
        TABLE.replace("{path: /api/v1/payments}", "{path: /api/v1/payments"),
        [(10, "YAML: while parsing a flow mapping")],
        id="broken-yaml",
    ),
    pytest.param(
        TABLE.replace('8002"}', '8002", timeout: 5 parsecs}'),
        [(5, "upstreams.payment.timeout: '5 parsecs' is not a duration")],
        id="bad-duration",
    ),
    pytest.param(
        # Without a version line: the line is the one the author wrote, not the stored text's.
        TABLE.replace("version: 4\n", "").replace("to: monolith", "to: nowhere"),
        [(9, "routes[0].to: unknown upstream 'nowhere'")],
        id="lines-of-the-text-as-given",
    ),
]


@pytest.mark.parametrize(("text", "problems"), INVALID)
def test_an_invalid_table_is_refused_with_line_and_reason(
    store: RedisStore,
    raw: redis.Redis,
    redis_prefix: str,
    text: str,
    problems: list[tuple[int, str]],
) -> None:
    store.current()
    with pytest.raises(TableInvalid) as refused:
        store.commit(text, author="ana", reason="oops", expected_version=4)
    found = [(p.line, str(p)) for p in refused.value.problems]
    assert len(found) == len(problems), refused.value.describe()
    for (line, message), (want_line, want) in zip(found, problems, strict=True):
        assert line == want_line, refused.value.describe()
        assert message.startswith(want), refused.value.describe()
    assert store.current().text == TABLE
    assert [i.version for i in store.history()] == [4]
    assert not raw.exists(f"{redis_prefix}v:5")


def test_an_unreachable_redis_is_store_unavailable_with_a_clear_message() -> None:
    port = free_port()  # nothing listens there
    store = RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0", "unused:")
    try:
        operations: list[Callable[[], object]] = [
            store.current,
            store.history,
            lambda: store.get(1),
            lambda: store.commit(TABLE, author="ana", reason="x", expected_version=4),
        ]
        for operation in operations:
            with pytest.raises(StoreUnavailable) as down:
                operation()
            message = str(down.value)
            assert f"the route store at redis://127.0.0.1:{port}/0 is unreachable" in message
            assert "nothing was changed" in message
            assert "hunter2" not in message  # the URL's password never reaches a message
            assert (down.value.status, down.value.kind) == (503, "store-unavailable")
    finally:
        store.close()


def test_the_admin_api_answers_503_while_redis_is_down_and_recovers(seed: Path) -> None:
    with redis_process() as server:
        store = RedisStore(server.url, "admin:", seed=seed)
        try:
            with TestClient(create_admin_app(store, TOKEN)) as client:
                assert client.get("/api/v1/routes").json()["version"] == 4
                server.stop()
                flip_body = {"route": "payments", "to": "payment", "reason": "cut over"}
                for answer in (
                    client.get("/api/v1/routes"),
                    client.get("/api/v1/routes/history"),
                    client.post("/api/v1/routes/flip", json=flip_body, headers=AUTH),
                ):
                    assert answer.status_code == 503, answer.text
                    assert answer.headers["content-type"] == "application/problem+json"
                    assert answer.headers["retry-after"].isdigit()
                    problem = answer.json()
                    assert problem["type"] == "urn:strangler:problem:store-unavailable"
                    assert problem["status"] == 503
                    assert f"{server.url} is unreachable" in problem["detail"]
                server.start()  # an empty Redis again: the first read seeds it
                assert client.get("/api/v1/routes").json()["version"] == 4
                flipped = client.post("/api/v1/routes/flip", json=flip_body, headers=AUTH)
                assert flipped.status_code == 200, flipped.text
                assert flipped.json()["version"] == 5
        finally:
            store.close()
