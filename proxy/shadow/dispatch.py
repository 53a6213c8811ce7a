"""Shadow copies, off the hot path (Envoy's request mirroring; Diffy's comparison).

The data plane offers a copy once the primary answer has been sent to the client: a sampled,
safe request (GET, HEAD, OPTIONS: validation refuses a shadow of anything else) with its
buffered body and the primary's captured answer. The copy goes into a bounded queue (in copies
and in body bytes); when it is full the copy is dropped and counted, never waited for. A fixed
pool of tasks sends each copy to the shadow upstream over this dispatcher's own connection
pool (never the client's connection, never the primary's pool), reads its answer up to the
shadow's `max_body`, decodes both answers' gzip or deflate (bounded), and compares the two
(compare.py; large bodies in a thread). A slow or dead shadow costs its own tasks' time only:
the primary's answer has already gone. A client cannot send `Strangler-Shadow` itself (the
data plane drops it).

Noise (Diffy's idea without a second monolith): a `noise` share of the copies is also sent to
the primary's upstream a second time; the fields that differ between the primary's two answers
are noise (report.py decides, per field, by comparing rates).

The copy carries the request's headers as forwarded (identity included, so the service answers
as for that user) plus `Strangler-Shadow: 1`, so a service can tell copies from real traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp

from proxy.dataplane.forward import SKIP_AUTO_HEADERS, client_session, upstream_url
from proxy.observability import Metrics
from proxy.shadow.compare import Answer, Rules, compare, decoded, differing_fields
from proxy.shadow.exchange import Exchange
from proxy.shadow.report import Tally
from proxy.table.compile import ShadowPolicy, Upstream

log = logging.getLogger("strangler")
T = TypeVar("T")
MARKER = ("strangler-shadow", "1")
QUEUE_SIZE = 1_000  # copies waiting; more are dropped (Envoy mirrors fire and forget)
QUEUE_BYTES = 64 << 20  # and the bodies they hold, per worker process
WORKERS = 16  # copies in flight per worker process


# Comparing large JSON bodies takes milliseconds of pure Python (about 10 ms for 10,000
# values): past this size it runs in a thread, so the worker's loop keeps serving meanwhile.
INLINE_COMPARE = 16_384


async def _off_loop(
    fn: Callable[[Answer, Answer, Rules], T], a: Answer, b: Answer, rules: Rules, limit: int
) -> T:
    """`fn` on both answers with their content codings undone (bounded by `limit`), in a
    thread when the bodies are large."""

    def run() -> T:
        return fn(decoded(a, limit), decoded(b, limit), rules)

    if len(a.body) + len(b.body) <= INLINE_COMPARE and not (_coded(a) or _coded(b)):
        return run()
    return await asyncio.to_thread(run)  # a small gzip body may decode to a large one


def _coded(answer: Answer) -> bool:
    return any(name == b"content-encoding" for name, _ in answer.headers)


def _size(exchange: Exchange) -> int:
    return len(exchange.body) + len(exchange.response_body)


@dataclass(frozen=True, slots=True)
class Copy:
    exchange: Exchange
    policy: ShadowPolicy
    primary: Upstream


class Mirror:
    def __init__(
        self,
        metrics: Metrics,
        *,
        queue_size: int = QUEUE_SIZE,
        queue_bytes: int = QUEUE_BYTES,
        workers: int = WORKERS,
    ) -> None:
        self.metrics = metrics
        self.queue: asyncio.Queue[Copy] = asyncio.Queue(queue_size)
        self.queue_bytes = queue_bytes
        self.held = 0  # body bytes of the copies queued or in flight
        self.workers = workers
        self.tallies: dict[str, Tally] = {}
        self.session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def tally(self, route: str) -> Tally:
        found = self.tallies.get(route)
        if found is None:
            found = self.tallies[route] = Tally()
        return found

    def offer(self, exchange: Exchange, policy: ShadowPolicy, primary: Upstream) -> bool:
        """Queue a copy; False (and counted) when the queue is full, in copies or bytes."""
        size = _size(exchange)
        try:
            if self.held + size > self.queue_bytes:
                raise asyncio.QueueFull
            self.queue.put_nowait(Copy(exchange, policy, primary))
        except asyncio.QueueFull:
            self.tally(exchange.route).add_dropped()
            self.metrics.shadowed(exchange.route, policy.upstream.name, "dropped")
            return False
        self.held += size
        if not self._tasks:
            self._start()
        return True

    def _start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.workers, enable_cleanup_closed=True)
        self.session = client_session(connector)
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def _work(self) -> None:
        while True:
            copy = await self.queue.get()
            try:
                await self._one(copy)
            except Exception:  # one bad copy must not stop the pool
                log.exception("shadow copy of %s failed", copy.exchange.route)
            finally:
                self.held -= _size(copy.exchange)

    async def _one(self, copy: Copy) -> None:
        exchange, policy = copy.exchange, copy.policy
        primary = Answer(
            exchange.status,
            exchange.response_headers,
            exchange.response_body,
            exchange.truncated,
        )
        tally = self.tally(exchange.route)
        shadow = policy.upstream.name
        candidate = await self._send(policy.upstream, exchange, policy.max_body)
        if isinstance(candidate, str):
            tally.add_failure(candidate)
            self.metrics.shadowed(exchange.route, shadow, "failed")
        else:
            verdict = await _off_loop(compare, primary, candidate, policy.rules, policy.max_body)
            tally.add(verdict)
            self.metrics.shadowed(
                exchange.route, shadow, "differ" if verdict.differences else "match"
            )
        if policy.noise and random.random() < policy.noise:  # noqa: S311 - sampling
            again = await self._send(copy.primary, exchange, policy.max_body)
            if not isinstance(again, str):
                noise = await _off_loop(
                    differing_fields, primary, again, policy.rules, policy.max_body
                )
                tally.add_noise(noise)

    async def _send(self, upstream: Upstream, exchange: Exchange, limit: int) -> Answer | str:
        """The upstream's answer to a copy, or the kind of failure."""
        assert self.session is not None
        path, _, query = exchange.target.partition(b"?")
        url = upstream_url(upstream, path, query)
        # UTF-8 both ways, as the data plane decoded them.
        headers = [(n.decode(), v.decode()) for n, v in exchange.headers]
        headers.append(MARKER)
        timeout = aiohttp.ClientTimeout(
            total=upstream.timeout, sock_connect=upstream.connect_timeout
        )
        try:
            async with self.session.request(
                exchange.method,
                url,
                headers=headers,
                data=exchange.body or None,
                skip_auto_headers=SKIP_AUTO_HEADERS,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                chunks, size, truncated = [], 0, False
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        truncated = True
                        break
                    chunks.append(chunk)
                return Answer(
                    response.status,
                    tuple((n.lower(), v) for n, v in response.raw_headers),
                    b"" if truncated else b"".join(chunks),
                    truncated,
                )
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientConnectorError:
            return "connect-failure"
        except (aiohttp.ClientError, OSError):
            return "reset"
