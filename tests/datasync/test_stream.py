"""The engine's Redis Stream subscriber rides out restarts of a real Redis of its own: with an
append-only file it resumes its group's position (nothing lost, nothing delivered twice);
without one the group is made again and new entries still arrive; one warning per outage,
never an exception."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

import pytest
import redis

from datasync.events import Event
from datasync.stream import StreamSubscriber
from tests.restartable import RedisProcess, redis_process

STREAM = "payments:events"
GROUP = "to-legacy"


def publish(url: str, first: int, count: int) -> list[str]:
    """XADD `count` events with keys `first`..; returns their event ids."""
    client = redis.Redis.from_url(url)
    try:
        ids = []
        for key in range(first, first + count):
            event_id = f"e{key}"
            client.xadd(
                STREAM,
                {
                    "event_id": event_id,
                    "type": "payment.created",
                    "aggregate_id": str(key),
                    "row_version": "1",
                    "occurred_at": "2025-01-01T00:00:00Z",
                    "payload": json.dumps({"id": key}),
                },
            )
            ids.append(event_id)
        return ids
    finally:
        client.close()


async def read_until(
    subscriber: StreamSubscriber, got: list[Event], done: Callable[[], bool], within: float = 10
) -> None:
    """Read (and ack) until `done()`; fails the test after `within` seconds."""
    deadline = time.monotonic() + within
    while not done():
        assert time.monotonic() < deadline, f"only {len(got)} events read"
        batch = await subscriber.read(count=10, block_ms=200)
        got += batch
        await subscriber.ack(*batch)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "datasync.stream"]


def outage_lines(lines: list[str]) -> tuple[int, int]:
    return sum("retrying" in line for line in lines), sum("recovered" in line for line in lines)


async def restart_while_reading(
    server: RedisProcess, subscriber: StreamSubscriber, got: list[Event]
) -> None:
    """Kill Redis while the subscriber blocks on XREADGROUP; start it again 0.5 s later; read on
    until the subscriber is back, then stop reading as a job stops (a flag seen between reads)."""
    stop = asyncio.Event()
    reading = asyncio.ensure_future(read_until(subscriber, got, stop.is_set, within=60))
    await asyncio.sleep(0.1)
    await asyncio.to_thread(server.restart, 0.5)
    deadline, failed = time.monotonic() + 10, False
    while not (failed and subscriber.health.healthy):
        failed = failed or not subscriber.health.healthy
        assert time.monotonic() < deadline, "the subscriber never came back"
        assert not reading.done(), "the read loop ended"
        await asyncio.sleep(0.02)
    stop.set()
    await reading


def test_a_restart_with_persistence_resumes_the_group_position(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="datasync.stream")
    with redis_process(persist=True) as server:
        before = publish(server.url, 1, 5)

        async def run() -> list[Event]:
            subscriber = StreamSubscriber(server.url, STREAM, GROUP, "c1")
            got: list[Event] = []
            try:
                await read_until(subscriber, got, lambda: len(got) >= 5)
                await restart_while_reading(server, subscriber, got)
                after = await asyncio.to_thread(publish, server.url, 6, 5)
                assert after
                await read_until(subscriber, got, lambda: len(got) >= 10)
                assert await subscriber.read(count=10, block_ms=100) == []
                assert subscriber.resets == 0
            finally:
                await subscriber.close()
            return got

        got = asyncio.run(run())
    # Acked before the kill stays acked: each event exactly once, in order.
    assert [e.event_id for e in got] == [*before, *(f"e{k}" for k in range(6, 11))]
    assert [(e.key, e.version, e.payload) for e in got[:1]] == [(1, 1, {"id": 1})]
    assert all(e.message_id for e in got)
    assert outage_lines(warnings_of(caplog)) == (1, 1)
    assert len(warnings_of(caplog)) == 2


def test_a_restart_without_persistence_makes_the_group_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="datasync.stream")
    with redis_process() as server:
        publish(server.url, 1, 3)

        async def run() -> tuple[list[Event], int]:
            subscriber = StreamSubscriber(server.url, STREAM, GROUP, "c1")
            got: list[Event] = []
            try:
                await read_until(subscriber, got, lambda: len(got) >= 3)
                await restart_while_reading(server, subscriber, got)
                # Redis came back empty: the stream and its group are gone.
                await asyncio.to_thread(publish, server.url, 4, 3)
                await read_until(subscriber, got, lambda: len(got) >= 6)
                assert await subscriber.read(count=10, block_ms=100) == []
            finally:
                await subscriber.close()
            return got, subscriber.resets

        got, resets = asyncio.run(run())
    assert resets == 1
    assert [e.event_id for e in got] == [f"e{k}" for k in range(1, 7)]
    lines = warnings_of(caplog)
    assert outage_lines(lines) == (1, 1)
    assert sum("consumer group was gone" in line for line in lines) == 1
    assert len(lines) == 3


def test_an_ack_lost_in_an_outage_is_delivered_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="datasync.stream")
    with redis_process(persist=True) as server:
        publish(server.url, 1, 2)

        async def run() -> tuple[list[str], list[str]]:
            subscriber = StreamSubscriber(server.url, STREAM, GROUP, "c1")
            try:
                first = await subscriber.read(count=10, block_ms=100)
                await asyncio.to_thread(server.stop)
                await subscriber.ack(*first)  # swallowed: Redis is down
                assert not subscriber.health.healthy
                assert await subscriber.read(count=10, block_ms=100) == []
                await asyncio.to_thread(server.start)
                again: list[Event] = []
                await read_until(subscriber, again, lambda: len(again) >= 2)
            finally:
                await subscriber.close()
            return [e.event_id for e in first], [e.event_id for e in again]

        first, again = asyncio.run(run())
    assert first == again == ["e1", "e2"]
    assert outage_lines(warnings_of(caplog)) == (1, 1)


def test_the_key_field_is_the_declared_one() -> None:
    with redis_process() as server:
        client = redis.Redis.from_url(server.url)
        fields = {
            "event_id": "e1",
            "type": "payment.captured",
            "payment_id": "42",
            "row_version": "3",
            "payload": "{}",
        }
        client.xadd(STREAM, fields)  # type: ignore[arg-type]
        client.close()

        async def run() -> list[Event]:
            subscriber = StreamSubscriber(server.url, STREAM, GROUP, "c1", key_field="payment_id")
            try:
                return await subscriber.read(block_ms=100)
            finally:
                await subscriber.close()

        (event,) = asyncio.run(run())
    assert (event.key, event.version, event.type, event.occurred_at) == (
        42,
        3,
        "payment.captured",
        "",
    )


def test_an_entry_that_is_not_an_event_is_skipped_and_never_blocks_the_backlog(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A foreign writer's entry between two events: the events are delivered, the entry is
    acked undelivered with one warning, and a restarted consumer's backlog read does not stall
    on it (it used to fail every read of the backlog, and the group never moved again)."""
    with redis_process() as server:
        publish(server.url, 1, 1)
        client = redis.Redis.from_url(server.url)
        client.xadd(STREAM, {"hello": "world"})
        client.close()
        publish(server.url, 2, 1)

        async def first_reader() -> tuple[list[Event], int]:
            subscriber = StreamSubscriber(server.url, STREAM, GROUP, "c1", start="0")
            try:
                got: list[Event] = []
                while len(got) < 2:
                    got += await subscriber.read(count=1, block_ms=200)  # never acked: pending
                return got, subscriber.unreadable
            finally:
                await subscriber.close()

        async def restarted() -> list[Event]:
            subscriber = StreamSubscriber(server.url, STREAM, GROUP, "c1", start="0")
            try:
                got: list[Event] = []
                await read_until(subscriber, got, lambda: len(got) == 2)
                return got
            finally:
                await subscriber.close()

        got, unreadable = asyncio.run(first_reader())
        again = asyncio.run(restarted())
        pending = redis.Redis.from_url(server.url).xpending(STREAM, GROUP)["pending"]
    assert [e.event_id for e in got] == ["e1", "e2"]
    assert unreadable == 1
    assert [e.event_id for e in again] == ["e1", "e2"]  # its own backlog, the entry not in it
    assert pending == 0
    skipped = [line for line in warnings_of(caplog) if "skipped (acked)" in line]
    assert len(skipped) == 1
    assert "is not an event" in skipped[0]
