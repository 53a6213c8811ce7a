"""How a read-your-writes pin reaches every worker of every replica (the board itself is
proxy/dataplane/pins.py).

A worker that forwards a write on a pinned route puts the pin on its own board at once and
publishes it *before* the write's answer goes back to the client:

- Redis store (replicas share it): one round trip sets `{prefix}pin:{route}:{key}` with the
  pin's time to live (PX) and publishes it on `{prefix}pins`. Each worker subscribes to that
  channel on a connection of its own, read by a protocol that puts each pin on the board in the
  socket's own callback (RESP parsed there, no task between), so a pin is applied before any
  request read in the same loop turn or after it, however busy the worker is with a new table.
  On every (re)subscription it loads the live pin keys, so a replica that starts, or loses its
  subscription, mid-window still honours them. While Redis is down, publishing is skipped for
  a second at a time (a write is never slowed by more than the publish timeout) and the pin
  still holds on the worker that took the write.
- File store with several workers: each worker binds a Unix datagram socket in a directory the
  server makes before starting them, and sends a pin to every sibling. Datagrams are applied in
  the receiving socket's callback, before any request task that arrived in the same loop turn.
- One worker: the board alone.

A pin travels as a time to live, never as a clock time: machines whose clocks disagree still
keep it for its whole window. A message that does not parse, or whose time to live is not a
finite number of seconds within a day, is ignored. Publishing happens before the write's
answer leaves (Redis writes it to every subscriber as it answers the publish), so it is in the
subscriber's socket before the client can send its next request, and its callback runs no later
than the one that reads that request. (It used to ride on the route-table follower's
subscription, read by that task: at a flip, while the task fetched and compiled the new table,
pins waited behind it, and users read from the arm that did not take their write.)

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
from typing import Any, cast

from proxy.dataplane.pins import MAX_TTL, Pins

log = logging.getLogger("strangler")
PIN_DIR_ENV = "STRANGLER_PIN_DIR"
PUBLISH_TIMEOUT = 0.25
QUIET_AFTER_FAILURE = 1.0
FEED_NAME = "strangler-pins"  # the pins subscription's connection name


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


class RespError(ValueError):
    """The pins connection received something that is not RESP: it is dropped and remade."""


def _line(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    end = buffer.find(b"\r\n", start)
    return None if end == -1 else (bytes(buffer[start:end]), end + 2)


def parse_resp(buffer: bytearray, start: int = 0) -> tuple[Any, int] | None:
    """One RESP2 value at `start` and where the next begins, or None while it is incomplete.
    Errors come back as RespError instances (a refused AUTH or SUBSCRIBE is the caller's)."""
    head = _line(buffer, start + 1) if len(buffer) > start else None
    if head is None:
        return None
    text, position = head
    kind = bytes(buffer[start : start + 1])
    if kind in (b"+", b":"):
        return text, position
    if kind == b"-":
        return RespError(text.decode(errors="replace")), position
    try:
        size = int(text)
    except ValueError:
        raise RespError(f"a RESP length {text!r}") from None
    if kind == b"$":
        if size < 0:
            return None, position
        if len(buffer) < position + size + 2:
            return None
        return bytes(buffer[position : position + size]), position + size + 2
    if kind == b"*":
        items: list[Any] = []
        for _ in range(max(size, 0)):
            found = parse_resp(buffer, position)
            if found is None:
                return None
            item, position = found
            items.append(item)
        return items, position
    raise RespError(f"a RESP type {kind!r}")


def command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class PinFeed(asyncio.Protocol):
    """The pins channel, applied in the socket's callback: a pin is on the board before any
    request task that was read in the same loop turn takes its first step."""

    def __init__(self, wire: RedisWire, hello: bytes) -> None:
        self.wire = wire
        self.hello = hello
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they write all the same.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.hello)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        position = 0
        try:
            while (found := parse_resp(self.buffer, position)) is not None:
                value, position = found
                self._take(value)
        except RespError as exc:
            self._fail(exc)
        del self.buffer[:position]

    def _take(self, value: Any) -> None:
        """A pushed message goes on the board; the subscription's confirmation is noted; a
        refusal (AUTH, SUBSCRIBE) ends the connection."""
        if isinstance(value, RespError):
            raise value
        if not isinstance(value, list) or len(value) != 3:
            return  # +OK to AUTH
        if value[0] == b"message" and isinstance(value[2], bytes):
            self.wire.apply(value[2])
        elif value[0] == b"subscribe" and not self.subscribed.done():
            self.subscribed.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(exc or ConnectionError("closed"))
        if not self.closed.done():
            self.closed.set_result(None)


class RedisWire(PinWire):
    """Every worker of every replica, through the route store's Redis. Publishing has its own
    client; receiving, a connection of its own read by PinFeed (module header), which loads the
    live pins after each (re)subscription; `ready` is set after the first load."""

    def __init__(self, pins: Pins, url: str, prefix: str) -> None:
        super().__init__(pins)
        self.url, self.prefix = url, prefix
        self.channel = prefix + "pins"
        self.client: Any = None
        self.quiet_until = 0.0
        self.ready = asyncio.Event()
        self._feed: asyncio.Task[None] | None = None
        self._protocol: PinFeed | None = None

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        self._feed = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        """Subscribe, load the live pins, wait for the connection to end; again, forever."""
        from proxy.store.redis import describe

        down = False
        while True:
            try:
                protocol = await self._subscribe()
                await self.load_live(self.client)
                self.ready.set()
                if down:
                    log.warning("read-your-writes pins from %s followed again", describe(self.url))
                    down = False
                await protocol.closed
                raise ConnectionError("the pins connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not down:
                    log.warning(
                        "read-your-writes pins from %s not followed (%s); retrying",
                        describe(self.url),
                        exc,
                    )
                    down = True
                self.ready.set()  # never hold a starting worker back: the table is served
                await asyncio.sleep(QUIET_AFTER_FAILURE)

    async def _subscribe(self) -> PinFeed:
        from redis.asyncio.connection import SSLConnection, parse_url

        options = parse_url(self.url)
        hello = b""
        if options.get("password") is not None:
            user = options.get("username")
            secret = str(options["password"]).encode()
            hello += command(b"AUTH", *([str(user).encode()] if user else []), secret)
        hello += command(b"CLIENT", b"SETNAME", FEED_NAME.encode())  # told apart in CLIENT LIST
        hello += command(b"SUBSCRIBE", self.channel.encode())
        loop = asyncio.get_running_loop()

        def make() -> PinFeed:
            return PinFeed(self, hello)

        async with asyncio.timeout(2):
            if "path" in options:
                _, protocol = await loop.create_unix_connection(make, options["path"])
            else:
                tls = options.get("connection_class") is SSLConnection
                _, protocol = await loop.create_connection(
                    make, options.get("host", "localhost"), options.get("port", 6379), ssl=tls
                )
            self._protocol = protocol
            await protocol.subscribed
        return protocol

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
        if self._feed is not None:
            self._feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
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
