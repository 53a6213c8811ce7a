"""Access log (one JSON line per request) and Prometheus metrics, labelled by route and upstream
(never by raw path: label cardinality stays bounded by the table).

The access log is buffered and flushed at most every 0.5 s or 64 KiB: one write per request would
cost a system call on the hot path. json.dumps escapes control characters, so a client cannot
forge log lines.

Requests and their latency are counted in plain integers on the hot path (one dict lookup, three
additions: `Metrics.observe`) and published to prometheus_client's values when they are read
(`render`, `totals`) and once a second (`publish`: with several workers, another worker's
/metrics reads the files this one writes). prometheus_client's own path takes a lock per value
and walks the bucket list: ~4 % of a proxied request's instructions. The exposition is the same
(Envoy's stats sink flushes its counters on an interval likewise).
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import time
from bisect import bisect_left
from typing import IO, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as prometheus_multiprocess

FLUSH_SECONDS = 0.5
FLUSH_BYTES = 65_536
# Envoy's and Linkerd's latency buckets cluster under a second; these do the same in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class AccessLog:
    def __init__(self, stream: IO[bytes] | None, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.enabled = enabled
        # Lines are kept as they come and encoded together at the flush: one encode and one
        # copy for 0.5 s of lines, not an encode, a concatenation and a copy per line.
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def write_line(self, line: str) -> None:
        """Append one ready-made JSON line (the data plane builds its own: json.dumps of a
        whole dict per request is a measurable share of the hot path)."""
        if not self.enabled:
            return
        self._lines.append(line)
        self._size += len(line) + 1
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            lines, self._lines, self._size = self._lines, [], 0
            lines.append("")  # the last line's newline
            data = "\n".join(lines).encode()
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):  # a closed or broken log pipe must not stop traffic
                pass


class Metrics:
    """The proxy's metrics. With several workers, prometheus_client's multiprocess mode is on
    (PROMETHEUS_MULTIPROC_DIR, set by the server before the workers start) and `render` merges
    every worker's values."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        labels = ("route", "upstream")
        self.requests = Counter(
            "strangler_requests",
            "Requests answered, by route, upstream and status code.",
            (*labels, "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "strangler_request_duration_seconds",
            "Time from request head to the end of the response.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "strangler_upstream_errors",
            "Upstream failures, by kind (unreachable, timeout, disconnected, ...).",
            (*labels, "kind"),
            registry=self.registry,
        )
        self.retries = Counter(
            "strangler_retries",
            "Requests sent again to the same upstream, by step (stale: a reused connection that "
            "closed; retry: the route's policy) and the failure that caused it.",
            (*labels, "step", "reason"),
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "strangler_fallbacks",
            "Requests served by a route's fallback upstream instead of the chosen one.",
            (*labels, "to", "reason"),
            registry=self.registry,
        )
        self.ejections = Counter(
            "strangler_upstream_ejections",
            "Times an upstream was taken out of the path by outlier ejection (per worker).",
            ("upstream",),
            registry=self.registry,
        )
        self.upstream_state = Gauge(
            "strangler_upstream_state",
            "Outlier state of an upstream: 0 closed (serving), 1 ejected, 2 probing; with "
            "several workers, the worst worker's.",
            ("upstream",),
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.in_flight = Gauge(
            "strangler_requests_in_flight",
            "Requests being proxied now.",
            ("listener",),
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        # Single process: read the data plane's own counters when scraped instead of taking
        # the gauge's lock twice per request. Several workers: each writes its value through.
        self.in_flight_sources: dict[str, Any] = {}
        self.shadow = Counter(
            "strangler_shadow",
            "Shadow copies, by outcome: match, differ (the answers differ; noise fields "
            "learned later still count here, `strangler shadow report` leaves them out), "
            "failed (the shadow did not answer) or dropped (the queue was full).",
            ("route", "shadow", "outcome"),
            registry=self.registry,
        )
        self.pins = Counter(
            "strangler_pins",
            "Read-your-writes pins set: a write by a sticky key keeps that key on this upstream "
            "for the route's pin window.",
            labels,
            registry=self.registry,
        )
        self.pinned = Counter(
            "strangler_pinned",
            "Requests a pin sent to another upstream than the weights would have.",
            labels,
            registry=self.registry,
        )
        self.overrides = Counter(
            "strangler_overrides",
            "Requests an override header or cookie sent to a forced arm.",
            labels,
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "strangler_rate_limited",
            "Requests refused (429) by their route's rate limit.",
            ("route",),
            registry=self.registry,
        )
        self.rate_limit_local = Counter(
            "strangler_rate_limit_local",
            "Rate-limit decisions a worker took alone, at its share of the limit, because the "
            "shared Redis did not answer in time.",
            ("route",),
            registry=self.registry,
        )
        self.access_refused = Counter(
            "strangler_access_refused",
            "Requests refused before reaching an upstream, by route and status: 401 (no or a "
            "bad credential), 403 (not allowed), 429 (rate limit), 503 (credentials cannot be "
            "checked).",
            ("route", "status"),
            registry=self.registry,
        )
        self.tunnels_open = Gauge(
            "strangler_tunnels_open",
            "Upgrade (WebSocket) tunnels open now, by route.",
            ("route",),
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.tunnels = Counter(
            "strangler_tunnels",
            "Upgrade (WebSocket) requests on tunnel routes, by result: tunnelled (the upstream "
            "switched protocols), declined (it answered otherwise), over-limit (the route's "
            "max_connections, 503), failed (no upstream connection or answer).",
            ("route", "upstream", "result"),
            registry=self.registry,
        )
        self.table_version = Gauge(
            "strangler_route_table_version",
            "Version of the route table being served.",
            registry=self.registry,
            multiprocess_mode="max",
        )
        self._children: dict[tuple[str, ...], Any] = {}
        self._pending: dict[tuple[str, str, int], list[Any]] = {}  # [count, sum, *buckets]

    def shadowed(self, route: str, shadow: str, outcome: str) -> None:
        self.shadow.labels(route, shadow, outcome).inc()

    def observe(self, route: str, upstream: str, status: int, seconds: float) -> None:
        """One answered request: counted here, published by `publish`."""
        key = (route, upstream, status)
        cell = self._pending.get(key)
        if cell is None:
            cell = self._pending[key] = [0, 0.0] + [0] * (len(LATENCY_BUCKETS) + 1)
        cell[0] += 1
        cell[1] += seconds
        cell[2 + bisect_left(LATENCY_BUCKETS, seconds)] += 1  # Prometheus' `le`: at most

    def publish(self) -> None:
        """The requests counted since the last call, into prometheus_client's values (the
        histogram's by its buckets: its observe() takes one value at a time). A failure (a
        metrics file that cannot grow) keeps the cells not yet written for the next call."""
        pending, self._pending = self._pending, {}
        cells = iter(pending.items())
        try:
            for key, cell in cells:
                self._write(key, cell)
        except BaseException:
            for key, cell in cells:  # what was not reached yet: counted again later
                self._merge(key, cell)
            raise

    def _merge(self, key: tuple[str, str, int], cell: list[Any]) -> None:
        mine = self._pending.get(key)
        if mine is None:
            self._pending[key] = cell
        else:
            for at, value in enumerate(cell):
                mine[at] += value

    def _write(self, key: tuple[str, str, int], cell: list[Any]) -> None:
        route, upstream, status = key
        labels = (route, upstream, str(status))
        pair = self._children.get(labels)
        if pair is None:
            pair = (self.requests.labels(*labels), self.latency.labels(route, upstream))
            self._children[labels] = pair
        pair[0].inc(cell[0])
        latency = pair[1]
        latency._sum.inc(cell[1])
        for value, count in zip(latency._buckets, cell[2:], strict=True):
            if count:
                value.inc(count)

    def ejected(self, upstream: str) -> None:
        self.ejections.labels(upstream).inc()

    def upstream_changed(self, upstream: str, state: int) -> None:
        self.upstream_state.labels(upstream).set(state)

    def upstream_states(self) -> dict[str, tuple[int, float]]:
        """upstream -> (state code, ejections), over every worker (the worst state)."""
        out: dict[str, list[float]] = {}
        for family in self._registry().collect():
            if family.name == "strangler_upstream_state":
                for sample in family.samples:
                    row = out.setdefault(sample.labels["upstream"], [0.0, 0.0])
                    row[0] = max(row[0], sample.value)
            elif family.name == "strangler_upstream_ejections":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        out.setdefault(sample.labels["upstream"], [0.0, 0.0])[1] += sample.value
        return {name: (int(row[0]), row[1]) for name, row in out.items()}

    def _registry(self) -> CollectorRegistry:
        if not self.multiprocess:
            return self.registry
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry

    def totals(self) -> dict[tuple[str, str], tuple[float, float, float]]:
        """(route, upstream) -> (requests, 5xx answers, seconds spent), over every worker."""
        out: dict[tuple[str, str], list[float]] = {}
        self.publish()
        for family in self._registry().collect():
            if family.name == "strangler_requests":
                for sample in family.samples:
                    if not sample.name.endswith("_total"):
                        continue
                    row = out.setdefault(
                        (sample.labels["route"], sample.labels["upstream"]), [0.0, 0.0, 0.0]
                    )
                    row[0] += sample.value
                    if sample.labels["code"].startswith("5"):
                        row[1] += sample.value
            elif family.name == "strangler_request_duration_seconds":
                for sample in family.samples:
                    if sample.name.endswith("_sum"):
                        key = (sample.labels["route"], sample.labels["upstream"])
                        out.setdefault(key, [0.0, 0.0, 0.0])[2] += sample.value
        return {key: (row[0], row[1], row[2]) for key, row in out.items()}

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        self.publish()
        if not self.multiprocess:
            for listener, read in self.in_flight_sources.items():
                self.in_flight.labels(listener).set(read())
        text: bytes = generate_latest(self._registry())
        return text


class TrafficWindow:
    """Recent traffic per route and upstream: totals sampled every `step` seconds, so the
    difference between the newest and the oldest sample is the last `span` seconds' traffic."""

    def __init__(self, metrics: Metrics, span: float = 300.0, step: float = 10.0) -> None:
        self.metrics = metrics
        self.step = step
        self.samples: collections.deque[
            tuple[float, dict[tuple[str, str], tuple[float, float, float]]]
        ] = collections.deque(maxlen=max(2, int(span / step) + 1))

    def sample(self) -> None:
        self.samples.append((time.monotonic(), self.metrics.totals()))

    def recent(self) -> tuple[float, dict[tuple[str, str], tuple[float, float, float]]]:
        """(seconds covered, (route, upstream) -> (requests, 5xx, mean seconds)) since the
        oldest sample, counting everything up to now."""
        now, latest = time.monotonic(), self.metrics.totals()
        since, oldest = self.samples[0] if self.samples else (now, {})
        out = {}
        for key, (requests, errors, seconds) in latest.items():
            before = oldest.get(key, (0.0, 0.0, 0.0))
            count = requests - before[0]
            if count > 0:
                spent = seconds - before[2]
                out[key] = (count, errors - before[1], spent / count)
        return now - since, out
