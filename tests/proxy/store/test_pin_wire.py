"""How pins travel: the message format refuses what is not a pin, a pin keeps its whole window
whatever the clocks say, and the Redis wire delivers pins to a worker that was not listening
when they were set (a replica that starts mid-canary), with the time they have left."""

from __future__ import annotations

import asyncio
import math
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from proxy.dataplane.pins import Pins, digest
from proxy.store.pins import (
    PinWire,
    RedisWire,
    RespError,
    SiblingWire,
    decode,
    encode,
    parse_resp,
)

KEY = digest(b"user-1")


def test_a_pin_message_round_trips() -> None:
    assert decode(encode("payments", KEY, "payment", 10.0)) == ("payments", KEY, "payment", 10.0)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"payments\tnot-hex\tpayment\t10",
        b"payments\t00\tpayment",
        b"payments\t00\tpayment\t10\textra",
        b"payments\t00\tpayment\tnan",
        b"payments\t00\tpayment\tinf",
        b"payments\t00\tpayment\t-5",
        b"payments\t00\tpayment\t0",
        b"payments\t00\tpayment\t86401",  # more than a day: no route declares that
        b"\xff\xfe",
    ],
)
def test_anything_that_is_not_a_pin_is_ignored(message: bytes) -> None:
    """A malformed or hostile message on the channel must never pin anyone for ever."""
    assert decode(message) is None
    pins = Pins()
    PinWire(pins).apply(message)
    assert len(pins) == 0


def test_a_pin_arrives_as_a_time_to_live_so_clock_skew_cannot_shorten_it() -> None:
    """The message carries seconds left, not a wall-clock time: a replica whose clock runs 11s
    ahead of the writer's still keeps the pin for its whole window."""
    pins = Pins()
    PinWire(pins).apply(encode("payments", KEY, "payment", 10.0))
    now = time.monotonic()
    assert pins.get("payments", KEY, now + 9.5) == "payment"
    assert pins.get("payments", KEY, now + 10.5) is None


def test_the_board_refuses_a_pin_that_is_no_time_or_unbounded() -> None:
    pins = Pins()
    now = 1_000.0
    assert not pins.put("payments", KEY, "payment", math.nan, now)
    assert not pins.put("payments", KEY, "payment", math.inf, now)
    assert not pins.put("payments", KEY, "payment", now, now)
    assert not pins.put("payments", KEY, "payment", now + 86_400.5, now)
    assert pins.put("payments", KEY, "payment", now + 86_400, now)


def test_pruning_drops_what_expired_and_keeps_renewed_pins() -> None:
    pins = Pins()
    pins.put("payments", KEY, "payment", 110.0, 100.0)
    pins.put("payments", KEY, "payment", 130.0, 105.0)  # renewed by a later write
    pins.put("payments", digest(b"user-2"), "monolith", 112.0, 100.0)
    assert pins.has("payments")
    assert pins.prune(120.0) == 1  # user-2's; user-1's first entry was renewed
    assert pins.get("payments", KEY, 125.0) == "payment"
    assert pins.prune(131.0) == 1
    assert not pins.has("payments")
    assert len(pins) == 0


def test_the_redis_wire_delivers_live_pins_to_a_worker_that_subscribes_later(
    redis_url: str, redis_prefix: str
) -> None:
    async def scenario() -> None:
        import redis.asyncio as aioredis

        writer = RedisWire(Pins(), redis_url, redis_prefix)
        await writer.start()
        try:
            await writer.publish("payments", KEY, "payment", 5.0)
            await writer.publish("payments", digest(b"gone"), "payment", 0.05)
            await asyncio.sleep(0.2)  # the second one has expired in Redis
            late = RedisWire(Pins(), redis_url, redis_prefix)
            client = aioredis.Redis.from_url(redis_url)
            try:
                await late.load_live(client)
            finally:
                await client.aclose()
            now = time.monotonic()
            assert late.pins.get("payments", KEY, now) == "payment"
            assert late.pins.get("payments", digest(b"gone"), now) is None
            assert late.pins.get("payments", KEY, now + 5.5) is None  # the time it had left
        finally:
            await writer.stop()

    asyncio.run(scenario())


def test_a_redis_outage_costs_a_write_at_most_the_publish_timeout() -> None:
    """Publishing to a Redis that does not answer gives up quickly, then skips for a second:
    the write's answer is never held longer than that."""

    async def scenario() -> None:
        wire = RedisWire(Pins(), "redis://127.0.0.1:9", "t:")  # nothing listens on port 9
        await wire.start()
        try:
            started = time.monotonic()
            await wire.publish("payments", KEY, "payment", 10.0)
            first = time.monotonic() - started
            started = time.monotonic()
            await wire.publish("payments", KEY, "payment", 10.0)
            second = time.monotonic() - started
        finally:
            await wire.stop()
        assert first < 1.0
        assert second < 0.2  # skipped while Redis is known to be down

    asyncio.run(scenario())


def test_sibling_workers_tell_each_other_over_unix_datagrams(tmp_path: Path) -> None:
    """With the file store and several workers, a pin set by one worker process reaches the
    others: here a real second process publishes, this one receives; a sibling that has gone
    leaves a socket that is cleaned up instead of failing the publish."""
    child = textwrap.dedent(
        f"""
        import asyncio
        from pathlib import Path
        from proxy.dataplane.pins import Pins, digest
        from proxy.store.pins import SiblingWire

        async def main():
            wire = SiblingWire(Pins(), Path({str(tmp_path)!r}))
            await wire.start()
            await wire.publish("payments", digest(b"user-1"), "payment", 10.0)
            await wire.stop()

        asyncio.run(main())
        """
    )

    async def scenario() -> Pins:
        pins = Pins()
        wire = SiblingWire(pins, tmp_path)
        await wire.start()
        gone = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        gone.bind(str(tmp_path / "999999.sock"))
        gone.close()  # its file stays: a worker that died without cleaning up
        try:
            done = await asyncio.create_subprocess_exec(sys.executable, "-c", child)
            assert await done.wait() == 0
            for _ in range(100):
                if pins.get("payments", KEY, time.monotonic()):
                    break
                await asyncio.sleep(0.02)
        finally:
            await wire.stop()
        return pins

    pins = asyncio.run(scenario())
    assert pins.get("payments", KEY, time.monotonic()) == "payment"
    assert not (tmp_path / "999999.sock").exists()


def test_a_sibling_that_reads_nothing_costs_a_write_at_most_the_publish_timeout(
    tmp_path: Path,
) -> None:
    """A busy sibling's datagram queue fills after a few pins (net.unix.max_dgram_qlen): the
    publisher waits for it at most once (250 ms), then skips it for a second, so a stuck worker
    cannot slow every other worker's writes."""
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stuck.bind(str(tmp_path / "999998.sock"))  # bound, never read

    async def scenario() -> float:
        wire = SiblingWire(Pins(), tmp_path)
        await wire.start()
        try:
            started = time.monotonic()
            for n in range(60):
                await wire.publish("payments", digest(b"%d" % n), "payment", 10.0)
            return time.monotonic() - started
        finally:
            await wire.stop()

    try:
        took = asyncio.run(scenario())
    finally:
        stuck.close()
    assert took < 1.0, took


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"+OK\r\n", b"OK"),
        (b":1\r\n", b"1"),
        (b"$3\r\nabc\r\n", b"abc"),
        (b"$-1\r\n", None),
        (b"*3\r\n$7\r\nmessage\r\n$4\r\npins\r\n$2\r\nhi\r\n", [b"message", b"pins", b"hi"]),
    ],
)
def test_resp_values_are_read_whole(raw: bytes, value: object) -> None:
    assert parse_resp(bytearray(raw)) == (value, len(raw))
    for cut in range(len(raw)):  # any prefix is not a value yet
        assert parse_resp(bytearray(raw[:cut])) is None


def test_a_resp_error_or_garbage_is_said_so() -> None:
    found = parse_resp(bytearray(b"-NOAUTH Authentication required.\r\n"))
    assert found is not None
    assert isinstance(found[0], RespError)
    with pytest.raises(RespError):
        parse_resp(bytearray(b"?what\r\n"))


@pytest.mark.redis
def test_a_pin_is_on_the_board_before_a_request_read_in_the_same_loop_turn(
    redis_url: str, redis_prefix: str
) -> None:
    """Under uvloop, as the proxy runs: once the write's publish has returned, a request task
    created on the subscribing worker (as uvicorn creates one for a request it has just read)
    finds the pin at its first step, with no yield (the subscriber applies it in its socket's
    callback, and uvloop's transports are not asyncio's)."""
    import uvloop

    async def scenario() -> None:
        reader, writer = (
            RedisWire(Pins(), redis_url, redis_prefix),
            RedisWire(Pins(), redis_url, redis_prefix),
        )
        await reader.start()
        await writer.start()
        try:
            await asyncio.wait_for(reader.ready.wait(), 5)
            seen: list[str | None] = []
            key = digest(b"user-7")

            def request_arrives() -> None:  # what uvicorn does with a request it has read
                async def request() -> None:
                    seen.append(reader.pins.get("payments", key, time.monotonic()))

                asyncio.get_running_loop().create_task(request())

            await writer.publish("payments", key, "payment", 10.0)
            asyncio.get_running_loop().call_soon(request_arrives)
            await asyncio.sleep(0.05)
            assert seen == ["payment"]
        finally:
            await reader.stop()
            await writer.stop()

    uvloop.run(scenario())
