"""What a data plane is told to serve by the store it follows (`RouteStore.watch`): routes.yaml
rewritten, a commit announced on the Redis channel, one the channel never announced (found by
polling), a store that lost its data (refused, and given the served version back), a version
that does not load, a subscription killed under the watch."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from proxy.store.base import RouteStore, Version
from proxy.store.file import FileStore
from proxy.store.redis import RedisStore
from tests.support import redis_process

WAIT = 10.0  # seconds any one expected event may take before the test fails

TABLE = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  payment: {url: "http://127.0.0.1:8002"}
default: monolith
routes:
  - name: payments
    match: {path: /api/v1/payments}
    to: monolith
"""


def table(version: int, to: str = "monolith") -> str:
    return TABLE.replace("version: 1", f"version: {version}").replace("to: monolith", f"to: {to}")


class Follower:
    """The data plane's side of a watch: serves each version it yields (`served` moves to it)."""

    def __init__(
        self, store: RouteStore, served: int, every: float, last_good: Path | None
    ) -> None:
        self.served = served
        self.watch = store.watch(lambda: self.served, every, last_good)
        self.got: asyncio.Queue[Version] = asyncio.Queue()

    async def next(self) -> Version:
        return await asyncio.wait_for(self.got.get(), WAIT)

    async def serve(self) -> None:
        async with contextlib.aclosing(self.watch.changes()) as changes:
            async for version in changes:
                self.served = version.info.version
                await self.got.put(version)


@contextlib.asynccontextmanager
async def following(
    store: RouteStore, served: int, every: float, last_good: Path | None = None
) -> AsyncIterator[Follower]:
    follower = Follower(store, served, every, last_good)
    task = asyncio.create_task(follower.serve())
    try:
        yield follower
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    """How many records say `text`, once one does."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = sum(text in record.getMessage() for record in caplog.records)
        if found:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"nothing logged {text!r}")


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="strangler")


# --- the file store -------------------------------------------------------------------------------


def test_routes_yaml_rewritten_is_served_and_a_bad_rewrite_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(table(1))

    async def scenario() -> None:
        async with following(FileStore(routes), 1, every=0.02) as follower:
            assert follower.watch.ready.is_set()  # no feed to wait for
            routes.write_text(table(2, to="payment"))  # each rewrite has a size of its own
            version = await follower.next()
            assert (version.info.version, version.info.author) == (2, "file")
            assert version.table.routes[0].to == "payment"
            assert version.text == routes.read_text()

            routes.write_text(table(3, to="nowhere") + "# typo\n")
            await logged(caplog, "route table refused, still serving version 2")
            assert "unknown upstream 'nowhere'" in caplog.text
            # The file is the operator's word: a lower number is served too.
            routes.write_text(table(1, to="monolith") + "# back again\n")
            version = await follower.next()
            assert (version.info.version, version.table.routes[0].to) == (1, "monolith")
            assert follower.got.empty()

    asyncio.run(scenario())


# --- the Redis store ------------------------------------------------------------------------------


@pytest.fixture
def store(redis_url: str, redis_prefix: str) -> Iterator[RedisStore]:
    opened = RedisStore(redis_url, redis_prefix)
    opened.commit(table(1), author="t", reason="first", expected_version=0)
    yield opened
    opened.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def write_behind_the_channel(
    raw: redis.Redis, prefix: str, version: int, text: str, publish: bool = False
) -> None:
    """A version written as a replica's restore writes it (no compiled table), the pointer moved,
    and the channel told only if `publish`."""
    sha = hashlib.sha256(text.encode()).hexdigest()
    raw.hset(
        f"{prefix}v:{version}",
        mapping={"text": text, "author": "x", "time": "1", "reason": "y", "sha256": sha},
    )
    raw.set(prefix + "current", version)
    if publish:
        raw.publish(prefix + "changes", version)


@pytest.mark.redis
def test_a_commit_is_served_as_the_channel_announces_it(store: RedisStore) -> None:
    async def scenario() -> None:
        # Polling once a minute: only the channel can bring the commit in time.
        async with following(store, 1, every=60.0) as follower:
            await asyncio.wait_for(follower.watch.ready.wait(), WAIT)
            store.commit(table(2, "payment"), author="ana", reason="cut", expected_version=1)
            version = await follower.next()
            assert (version.info.version, version.info.author, version.info.reason) == (
                2,
                "ana",
                "cut",
            )
            assert version.table.routes[0].to == "payment"

    asyncio.run(scenario())


@pytest.mark.redis
def test_a_change_the_channel_never_announced_is_found_by_polling(
    store: RedisStore, raw: redis.Redis, redis_prefix: str
) -> None:
    async def scenario() -> None:
        async with following(store, 1, every=0.05) as follower:
            await asyncio.wait_for(follower.watch.ready.wait(), WAIT)
            write_behind_the_channel(raw, redis_prefix, 2, table(2, "payment"))
            version = await follower.next()
            assert (version.info.version, version.table.routes[0].to) == (2, "payment")

    asyncio.run(scenario())


@pytest.mark.redis
def test_an_older_version_is_refused_and_the_served_one_given_back(
    store: RedisStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store lost its data and was seeded again (version 1) while replicas serve 3."""
    last_good = tmp_path / "last-known-good.yaml"
    last_good.write_text(table(3, "payment"))

    async def scenario() -> None:
        async with following(store, 3, every=0.05, last_good=last_good) as follower:
            await logged(caplog, "says version 1, older than the served version 3")
            assert await logged(caplog, "and restoring it to the store") == 1
            assert store.current_number() == 3
            restored = store.get(3)
            assert (restored.info.author, restored.text) == ("replica", table(3, "payment"))
            store.commit(table(4), author="ana", reason="back", expected_version=3)
            assert (await follower.next()).info.version == 4

    asyncio.run(scenario())


@pytest.mark.redis
def test_a_version_that_does_not_load_is_refused_once_and_the_next_served(
    store: RedisStore, raw: redis.Redis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with following(store, 1, every=0.02) as follower:
            write_behind_the_channel(raw, redis_prefix, 2, table(2, "nowhere"), publish=True)
            await logged(caplog, "route table version 2 refused, still serving version 1")
            raw.set(redis_prefix + "current", 3)  # named, but not there (yet)
            await logged(caplog, "points at version 3 but it cannot be read")
            write_behind_the_channel(raw, redis_prefix, 3, table(3, "payment"))
            version = await follower.next()
            assert (version.info.version, version.table.routes[0].to) == (3, "payment")
        assert await logged(caplog, "route table version 2 refused") == 1  # polled, said once
        assert await logged(caplog, "points at version 3 but it cannot be read") == 1

    asyncio.run(scenario())


@pytest.mark.redis
def test_a_killed_subscription_is_taken_up_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with redis_process() as server:  # of its own: killing its subscriptions touches no one else
        store = RedisStore(server.url, "watch:")
        client = redis.Redis.from_url(server.url)
        try:
            store.commit(table(1), author="t", reason="first", expected_version=0)

            async def scenario() -> None:
                async with following(store, 1, every=0.05) as follower:
                    await asyncio.wait_for(follower.watch.ready.wait(), WAIT)
                    client.client_kill_filter(_type="pubsub")
                    await logged(caplog, "connection lost")
                    await logged(caplog, "reconnected; serving version 1")
                    store.commit(table(2, "payment"), author="a", reason="b", expected_version=1)
                    assert (await follower.next()).info.version == 2

            asyncio.run(scenario())
        finally:
            client.close()
            store.close()
