"""The consumer stores and the follower every proxy worker runs: changes kept with their audit
entry (never a key nor a hash), concurrent writers that lose no change, the file store in a
temporary directory and the Redis store on a real Redis; a change reaches a follower of either
store, a broken file leaves the last good registry in place, and a follower that cannot read the
store when it starts refuses every credential until it can."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from proxy.access.consumers import (
    Add,
    DocumentInvalid,
    DuplicateConsumer,
    Registry,
    Revoke,
    RotateKey,
    UnknownConsumer,
    Update,
)
from proxy.settings import ProxySettings
from proxy.store.base import VersionConflict
from proxy.store.consumers import (
    ConsumerFollower,
    ConsumerStore,
    FileConsumerStore,
    RedisConsumerStore,
    open_consumer_store,
)
from proxy.store.redis import StoreUnavailable
from tests.support import free_port, redis_process, wait_until

T = TypeVar("T")
WRITERS = 8


def at_once(count: int, work: Callable[[int], T]) -> list[T | BaseException]:
    """Run `work(0..count-1)` in threads released together; each result or exception."""
    gate = threading.Barrier(count)
    results: list[T | BaseException] = [RuntimeError("did not run")] * count

    def run(i: int) -> None:
        gate.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def lifecycle(store: ConsumerStore) -> list[str]:
    """Add, rotate, update and revoke through `store`; every secret and hash it made."""
    added = store.apply(Add("mobile-ios", groups=("mobile",)), author="ana", reason="launch")
    rotated = store.apply(RotateKey("mobile-ios", grace=60), author="bo", reason="release 2.1")
    store.apply(Update("mobile-ios", groups=("mobile", "beta")), author="ana", reason="beta")
    old_key = added.document.consumers[0].keys[0].id
    store.apply(Revoke("mobile-ios", old_key), author="bo", reason="leaked in a log")
    hashes = [k.sha256 for c in rotated.document.consumers for k in c.keys]
    return [str(added.key), str(rotated.key), *hashes]


def check_lifecycle(store: ConsumerStore, secrets: list[str], listing: str) -> None:
    history = store.history()
    assert [(e.version, e.author, e.action, e.reason) for e in history] == [
        (4, "bo", "revoke-key", "leaked in a log"),
        (3, "ana", "update", "beta"),
        (2, "bo", "rotate-key", "release 2.1"),
        (1, "ana", "add", "launch"),
    ]
    assert [e.consumer for e in history] == ["mobile-ios"] * 4
    assert history[0].key_id == history[3].key_id  # the first key, revoked
    assert [e.version for e in store.history(limit=2)] == [4, 3]
    document = store.current()
    assert document.version == 4
    registry = Registry(document)
    assert registry.by_key(secrets[0], time.time()) is None  # revoked
    consumer = registry.by_key(secrets[1], time.time())
    assert consumer is not None
    assert consumer.groups == ("beta", "mobile")
    said = listing + json.dumps([e.as_dict() for e in history])
    assert [s for s in secrets if s in said] == []


# --- the file store -------------------------------------------------------------------------
def test_the_file_store_keeps_the_document_and_its_audit_log_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "var" / "consumers.json"
    secrets = lifecycle(FileConsumerStore(path))
    reopened = FileConsumerStore(path)  # what another process (the CLI, the proxy) reads
    listing = json.dumps(reopened.current().public(time.time()))
    check_lifecycle(reopened, secrets, listing)
    audit = path.with_name("consumers-audit.jsonl")
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["action"] for line in lines] == ["add", "rotate-key", "update", "revoke-key"]
    assert set(lines[0]) == {
        "version",
        "author",
        "time",
        "reason",
        "action",
        "consumer",
        "key_id",
        "detail",
    }
    assert [s for s in secrets if s in audit.read_text()] == []
    assert secrets[0] not in path.read_text()  # the document holds hashes only


def test_an_empty_file_store_has_no_consumers_and_no_history(tmp_path: Path) -> None:
    store = FileConsumerStore(tmp_path / "consumers.json")
    assert store.current().version == 0
    assert store.current().consumers == ()
    assert store.history() == []


def test_refusals_change_nothing(tmp_path: Path) -> None:
    path = tmp_path / "consumers.json"
    store = FileConsumerStore(path)
    store.apply(Add("partner"), author="ana", reason="contract signed")
    before = path.read_text()
    with pytest.raises(DuplicateConsumer):
        store.apply(Add("partner"), author="ana", reason="again")
    with pytest.raises(UnknownConsumer):
        store.apply(Revoke("nobody"), author="ana", reason="typo")
    with pytest.raises(VersionConflict):
        store.apply(Add("other"), author="ana", reason="stale", expected_version=0)
    assert path.read_text() == before
    assert len(store.history()) == 1


def test_concurrent_writers_to_the_file_store_lose_no_change(tmp_path: Path) -> None:
    path = tmp_path / "consumers.json"
    results = at_once(
        WRITERS,
        lambda i: FileConsumerStore(path).apply(Add(f"app-{i}"), author=f"w{i}", reason="go"),
    )
    assert not [r for r in results if isinstance(r, BaseException)]
    store = FileConsumerStore(path)
    assert {c.name for c in store.current().consumers} == {f"app-{i}" for i in range(WRITERS)}
    assert store.current().version == WRITERS
    assert sorted(e.version for e in store.history()) == list(range(1, WRITERS + 1))


def test_an_audit_line_whose_change_never_landed_is_left_out(tmp_path: Path) -> None:
    """A crash between the audit line and the document: the next change takes its version."""
    path = tmp_path / "consumers.json"
    store = FileConsumerStore(path)
    store.apply(Add("a"), author="ana", reason="first")
    with open(path.with_name("consumers-audit.jsonl"), "a") as audit:
        audit.write(
            json.dumps(
                {
                    "version": 2,
                    "author": "x",
                    "time": 1.0,
                    "reason": "lost",
                    "action": "add",
                    "consumer": "ghost",
                }
            )
            + "\n"
        )
        audit.write('{"version": 3, "torn')
    assert [e.reason for e in store.history()] == ["first"]
    store.apply(Add("b"), author="ana", reason="second")
    assert [(e.version, e.reason) for e in store.history()] == [(2, "second"), (1, "first")]


def test_a_document_that_does_not_load_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "consumers.json"
    path.write_text("{not json")
    store = FileConsumerStore(path)
    with pytest.raises(DocumentInvalid):
        store.current()
    with pytest.raises(DocumentInvalid):
        store.apply(Add("a"), author="ana", reason="x")
    assert path.read_text() == "{not json"


def test_the_settings_choose_the_store(tmp_path: Path) -> None:
    file = open_consumer_store(ProxySettings(consumers=tmp_path / "c.json"))
    assert isinstance(file, FileConsumerStore)
    assert file.path == tmp_path / "c.json"
    shared = open_consumer_store(
        ProxySettings(store="redis://127.0.0.1:1/0", consumers_prefix="x:")
    )
    assert isinstance(shared, RedisConsumerStore)
    assert (shared.prefix, shared.channel) == ("x:", "x:changed")
    shared.close()


# --- the Redis store ------------------------------------------------------------------------
@pytest.fixture
def redis_stores(redis_url: str, redis_prefix: str) -> Iterator[Callable[[], RedisConsumerStore]]:
    """Opens stores on the test's own prefix (one client each, like one process each)."""
    opened: list[RedisConsumerStore] = []

    def make() -> RedisConsumerStore:
        store = RedisConsumerStore(redis_url, redis_prefix)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.mark.redis
def test_the_redis_store_keeps_the_document_and_its_audit_log(
    redis_stores: Callable[[], RedisConsumerStore], redis_url: str, redis_prefix: str
) -> None:
    secrets = lifecycle(redis_stores())
    reader = redis_stores()
    check_lifecycle(reader, secrets, json.dumps(reader.current().public(time.time())))
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert raw.hget(redis_prefix + "doc", "version") == "4"
        lines = [str(line) for line in raw.lrange(redis_prefix + "audit", 0, -1)]
        document = str(raw.hget(redis_prefix + "doc", "json"))
    finally:
        raw.close()
    assert [json.loads(line)["version"] for line in lines] == [4, 3, 2, 1]  # newest first
    assert [s for s in secrets if s in "".join(lines)] == []
    assert secrets[0] not in document


@pytest.mark.redis
def test_each_redis_commit_is_published(
    redis_stores: Callable[[], RedisConsumerStore], redis_url: str, redis_prefix: str
) -> None:
    raw = redis.Redis.from_url(redis_url)
    pubsub = raw.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(redis_prefix + "changed")
        wait_until(lambda: pubsub.get_message(timeout=0.1) is None, what="the subscription")
        redis_stores().apply(Add("a"), author="ana", reason="x")
        message = None
        deadline = time.monotonic() + 10
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
        assert message is not None
        assert message["data"] == b"1"
    finally:
        pubsub.close()
        raw.close()


@pytest.mark.redis
def test_concurrent_writers_to_the_redis_store_lose_no_change(
    redis_stores: Callable[[], RedisConsumerStore],
) -> None:
    stores = [redis_stores() for _ in range(WRITERS)]
    stores[0].apply(Add("shared"), author="ana", reason="first")
    results = at_once(
        WRITERS,
        lambda i: stores[i].apply(
            Add(f"app-{i}") if i % 2 else RotateKey("shared", grace=3600),
            author=f"w{i}",
            reason="go",
        ),
    )
    assert not [r for r in results if isinstance(r, BaseException)]
    document = stores[0].current()
    assert document.version == WRITERS + 1
    names = {c.name for c in document.consumers}
    assert names == {"shared", *(f"app-{i}" for i in range(1, WRITERS, 2))}
    shared = document.get("shared")
    assert shared is not None
    assert len(shared.keys) == 1 + WRITERS // 2  # every rotation's key is there
    assert sorted(e.version for e in stores[0].history()) == list(range(1, WRITERS + 2))


@pytest.mark.redis
def test_a_stale_redis_write_is_a_conflict_and_a_refusal_changes_nothing(
    redis_stores: Callable[[], RedisConsumerStore],
) -> None:
    store = redis_stores()
    store.apply(Add("a"), author="ana", reason="x")
    with pytest.raises(VersionConflict):
        store.apply(Add("b"), author="ana", reason="y", expected_version=0)
    with pytest.raises(DuplicateConsumer):
        store.apply(Add("a"), author="ana", reason="z")
    assert store.current().version == 1
    assert len(store.history()) == 1


def test_an_unreachable_redis_store_says_so() -> None:
    store = RedisConsumerStore(f"redis://127.0.0.1:{free_port()}/0", "x:")
    try:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.current()
        with pytest.raises(StoreUnavailable, match="may have landed"):
            store.apply(Add("a"), author="ana", reason="x")
    finally:
        store.close()


# --- the follower ---------------------------------------------------------------------------
class Followed:
    """A ConsumerFollower running on an event loop of its own, in a thread, as in a worker."""

    def __init__(self, settings: ProxySettings) -> None:
        self.seen: list[Registry] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.follower = ConsumerFollower(settings, self.seen.append, start_wait=1.0)

    def call(self, work: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(30)

    @property
    def registry(self) -> Registry:
        return self.follower.registry

    def finds(self, key: str) -> bool:
        return self.registry.by_key(key, time.time()) is not None


@contextlib.contextmanager
def following(settings: ProxySettings) -> Iterator[Followed]:
    followed = Followed(settings)
    followed.thread.start()
    try:
        followed.call(followed.follower.start())
        yield followed
    finally:
        followed.call(followed.follower.stop())
        followed.loop.call_soon_threadsafe(followed.loop.stop)
        followed.thread.join(10)
        followed.loop.close()


def test_a_change_to_the_file_store_reaches_a_follower(tmp_path: Path) -> None:
    path = tmp_path / "consumers.json"
    store = FileConsumerStore(path)
    first = store.apply(Add("mobile-ios"), author="ana", reason="x")
    with following(ProxySettings(consumers=path)) as followed:
        assert followed.finds(str(first.key))  # loaded when it started
        assert [r.version for r in followed.seen] == [1]
        rotated = store.apply(RotateKey("mobile-ios", grace=0), author="ana", reason="leak")
        wait_until(lambda: followed.finds(str(rotated.key)), what="the new key")
        assert not followed.finds(str(first.key))
        store.apply(Revoke("mobile-ios"), author="ana", reason="gone")
        wait_until(lambda: not followed.finds(str(rotated.key)), what="the revocation")
        assert followed.registry.version == 3
        assert not followed.follower.stale()


def test_a_follower_of_a_file_store_with_no_file_yet_starts_empty_and_fresh(
    tmp_path: Path,
) -> None:
    path = tmp_path / "consumers.json"
    with following(ProxySettings(consumers=path)) as followed:
        assert followed.registry.version == 0
        assert not followed.follower.stale()
        added = FileConsumerStore(path).apply(Add("a"), author="ana", reason="x")
        wait_until(lambda: followed.finds(str(added.key)), what="the first consumer")


def test_a_file_that_does_not_load_leaves_the_last_good_registry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "consumers.json"
    store = FileConsumerStore(path)
    added = store.apply(Add("mobile-ios"), author="ana", reason="x")
    caplog.set_level(logging.INFO, logger="strangler")
    with following(ProxySettings(consumers=path)) as followed:
        path.write_text('{"schema": 1, "version": 2, "consumers": [{"keys": ')
        wait_until(lambda: "cannot be read" in caplog.text, what="the warning")
        assert followed.finds(str(added.key))  # the last good registry stays
        assert followed.registry.version == 1
        seen_fresh = followed.follower.fresh_at
        time.sleep(0.6)  # several checks of the same bad file
        assert followed.follower.fresh_at == seen_fresh  # its age grows: the grace runs out
        assert followed.follower.stale(seen_fresh + 301)
        store.path.unlink()
        added_again = store.apply(Add("other"), author="ana", reason="repaired")
        wait_until(lambda: followed.finds(str(added_again.key)), what="the repaired file")
        wait_until(lambda: followed.follower.fresh_at > seen_fresh, what="fresh again")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warnings if "cannot be read" in w] == [warnings[0]]  # said once
    assert len([w for w in warnings if "readable again" in w]) == 1


@pytest.mark.redis
def test_a_change_to_the_redis_store_reaches_a_follower(
    redis_stores: Callable[[], RedisConsumerStore], redis_url: str, redis_prefix: str
) -> None:
    store = redis_stores()
    added = store.apply(Add("mobile-ios"), author="ana", reason="x")
    settings = ProxySettings(store=redis_url, consumers_prefix=redis_prefix)
    with following(settings) as followed:
        assert followed.finds(str(added.key))
        revoked = store.apply(Revoke("mobile-ios"), author="ana", reason="stolen phone")
        wait_until(lambda: not followed.finds(str(added.key)), what="the revocation")
        assert followed.registry.version == revoked.document.version
        assert not followed.follower.stale()


@pytest.mark.redis
def test_a_follower_that_cannot_read_redis_at_start_refuses_everything_until_it_can(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="strangler")
    with redis_process() as server:
        server.stop()
        settings = ProxySettings(store=server.url, store_poll_interval=0.2)
        with following(settings) as followed:
            assert followed.seen == []
            assert len(followed.registry) == 0
            assert followed.follower.stale()  # fail closed: no credential is accepted
            server.start()
            writer = RedisConsumerStore(server.url, settings.consumers_prefix)
            try:
                added = writer.apply(Add("mobile-ios"), author="ana", reason="x")
                wait_until(lambda: followed.finds(str(added.key)), what="the store, back")
                assert not followed.follower.stale()
                # a subscription lost without notice: the poll still brings each change
                raw = redis.Redis.from_url(server.url)
                try:
                    raw.client_kill_filter(_type="pubsub")
                finally:
                    raw.close()
                revoked = writer.apply(Revoke("mobile-ios"), author="ana", reason="y")
                wait_until(
                    lambda: followed.registry.version == revoked.document.version,
                    what="the revocation",
                )
            finally:
                writer.close()
    said = [
        "down" if "cannot be read" in r.getMessage() else "back"
        for r in caplog.records
        if r.levelno == logging.WARNING
        and ("cannot be read" in r.getMessage() or "readable again" in r.getMessage())
    ]
    assert "every credential is refused" in caplog.records[0].getMessage()
    assert said[:2] == ["down", "back"]
    assert all(a != b for a, b in itertools.pairwise(said))  # once per outage
