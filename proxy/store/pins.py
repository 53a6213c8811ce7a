"""How a read-your-writes pin reaches every worker of every replica (the board itself is
proxy/dataplane/pins.py).

A worker that forwards a write on a pinned route puts the pin on its own board at once and
publishes it *before* the write's answer goes back to the client, so by the time the client can
send its next request, every worker has been told:

- Redis store (replicas share it): one round trip sets `{prefix}pin:{route}:{key}` with the
  pin's expiry (PXAT) and publishes it on `{prefix}pins`. Every worker subscribes; one that
  (re)subscribes loads the live pin keys first, so a replica that starts, or loses its
  subscription, mid-window still honours them. While Redis is down, publishing is skipped for a
  second at a time (a write is never slowed by more than the publish timeout) and the local
  pin still holds on the worker that took the write.
- File store with several workers: each worker binds a Unix datagram socket in a directory the
  server makes before starting them, and sends a pin to every sibling. Datagrams are applied in
  the receiving socket's callback, before any request task that arrived in the same loop turn.
- One worker: the board alone.

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

from proxy.dataplane.pins import Pins

log = logging.getLogger("strangler")
PIN_DIR_ENV = "STRANGLER_PIN_DIR"
PUBLISH_TIMEOUT = 0.25
QUIET_AFTER_FAILURE = 1.0


def encode(route: str, key: bytes, upstream: str, until: float) -> bytes:
    return f"{route}\t{key.hex()}\t{upstream}\t{until:.3f}".encode()


def decode(message: bytes) -> tuple[str, bytes, str, float] | None:
    try:
        route, key, upstream, until = message.decode().split("\t")
        return route, bytes.fromhex(key), upstream, float(until)
    except (ValueError, UnicodeDecodeError):
        return None


class PinWire:
    """The board alone (one worker): nothing to tell anyone."""

    def __init__(self, pins: Pins) -> None:
        self.pins = pins

    def apply(self, message: bytes) -> None:
        pin = decode(message)
        if pin is not None:
            route, key, upstream, until = pin
            self.pins.put(route, key, upstream, until, time.time())

    async def start(self) -> None:
        return None

    async def publish(self, route: str, key: bytes, upstream: str, until: float) -> None:
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
        self.transport: asyncio.DatagramTransport | None = None

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

    async def publish(self, route: str, key: bytes, upstream: str, until: float) -> None:
        if self.sock is None:
            return
        message = encode(route, key, upstream, until)
        for name in os.listdir(self.directory):
            if not name.endswith(".sock") or name == self.path.name:
                continue
            try:
                self.sock.sendto(message, str(self.directory / name))
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    (self.directory / name).unlink()  # a worker that has gone
            except OSError as exc:  # its buffer is full: that sibling misses this pin
                log.warning("read-your-writes pin not delivered to a sibling worker: %s", exc)

    async def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class RedisWire(PinWire):
    """Every worker of every replica, through the route store's Redis."""

    def __init__(self, pins: Pins, url: str, prefix: str) -> None:
        super().__init__(pins)
        self.url, self.prefix = url, prefix
        self.channel = prefix + "pins"
        self.client: Any = None
        self.task: asyncio.Task[None] | None = None
        self.quiet_until = 0.0
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        self.task = asyncio.create_task(self._follow())

    async def publish(self, route: str, key: bytes, upstream: str, until: float) -> None:
        now = time.monotonic()
        if self.client is None or now < self.quiet_until:
            return
        message = encode(route, key, upstream, until)
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                pipe = self.client.pipeline(transaction=False)
                pipe.set(
                    f"{self.prefix}pin:{route}:{key.hex()}",
                    message,
                    pxat=int(until * 1000),
                )
                pipe.publish(self.channel, message)
                await pipe.execute()
        except Exception as exc:  # a write is never failed for its pin
            if self.quiet_until < now:
                log.warning("read-your-writes pin not shared (%s); retrying in 1s", exc)
            self.quiet_until = now + QUIET_AFTER_FAILURE

    async def _follow(self) -> None:
        from redis.exceptions import RedisError

        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                await self._load_live()
                self.subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        self.apply(message["data"])
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                log.debug("pin subscription lost (%s); resubscribing", exc)
                await asyncio.sleep(QUIET_AFTER_FAILURE)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _load_live(self) -> None:
        """The pins set before this worker (re)subscribed and still live."""
        async for name in self.client.scan_iter(match=f"{self.prefix}pin:*", count=1000):
            value = await self.client.get(name)
            if value is not None:
                self.apply(value)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.client is not None:
            await self.client.aclose()


def open_wire(pins: Pins, store: str, prefix: str) -> PinWire:
    if store != "file":
        return RedisWire(pins, store, prefix)
    directory = os.environ.get(PIN_DIR_ENV)
    if directory:
        return SiblingWire(pins, Path(directory))
    return PinWire(pins)
