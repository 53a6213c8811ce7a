"""Prometheus metrics of the sync, on a registry of their own (several followers can live in one
test process), served by prometheus-client's HTTP server when `--metrics-port` is given.

Names follow the proxy's `strangler_` prefix; the labels are the sync's name and the job
(`follow`, `to_legacy`), never a row key, so cardinality stays fixed. `strangler_sync_up` is 1
while a job's last attempt succeeded and 0 while it is riding out a problem (`retry.py`);
`strangler_sync_last_success_timestamp_seconds` says since when an alert should count.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

LABELS = ["sync", "job"]


class SyncMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.lag_seconds = self._gauge(
            "strangler_sync_lag_seconds",
            "Seconds the job is behind the source's commits (0 when caught up).",
        )
        self.rows_per_second = self._gauge(
            "strangler_sync_rows_per_second", "Rows written per second over the last poll."
        )
        self.rows = Counter(
            "strangler_sync_rows",
            "Rows (or events) handled, by outcome.",
            [*LABELS, "outcome"],
            registry=self.registry,
        )
        self.high_water = self._gauge(
            "strangler_sync_high_water_timestamp_seconds",
            "Change column of the newest change applied (Unix time).",
        )
        self.last_run = self._gauge(
            "strangler_sync_last_run_timestamp_seconds",
            "When the job last finished a poll (Unix time).",
        )
        self.errors = Counter(
            "strangler_sync_errors",
            "Attempts that failed (the loop retries with a backoff).",
            LABELS,
            registry=self.registry,
        )
        self.up = self._gauge(
            "strangler_sync_up", "1 while the job's last attempt succeeded, else 0."
        )
        self.last_success = self._gauge(
            "strangler_sync_last_success_timestamp_seconds",
            "When the job last succeeded (Unix time).",
        )

    def _gauge(self, name: str, doc: str) -> Gauge:
        return Gauge(name, doc, LABELS, registry=self.registry)

    def count(self, sync: str, job: str, outcomes: dict[str, int]) -> None:
        for outcome, value in outcomes.items():
            if value:
                self.rows.labels(sync=sync, job=job, outcome=outcome).inc(value)

    def healthy(self, sync: str, job: str) -> None:
        self.up.labels(sync=sync, job=job).set(1)
        self.last_success.labels(sync=sync, job=job).set(time.time())

    def failing(self, sync: str, job: str) -> None:
        self.up.labels(sync=sync, job=job).set(0)
        self.errors.labels(sync=sync, job=job).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose /metrics on `host:port` (0: any free port) from a daemon thread; returns the
        port. The server lives as long as the process (the CLI's follower and consumer)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
