"""Prometheus metrics of the sync, on a registry of its own (several followers can live in one
test process), served by prometheus-client's HTTP server when `--metrics-port` is given.

Names follow the proxy's `strangler_` prefix; the label is the job (`follow`, `to_legacy`),
never a payment id, so cardinality stays fixed.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class SyncMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.lag_seconds = Gauge(
            "strangler_sync_lag_seconds",
            "Seconds between the source's newest change and the newest change applied.",
            ["job"],
            registry=self.registry,
        )
        self.rows_per_second = Gauge(
            "strangler_sync_rows_per_second",
            "Rows written per second over the last poll.",
            ["job"],
            registry=self.registry,
        )
        self.rows = Counter(
            "strangler_sync_rows",
            "Rows (or events) handled, by outcome.",
            ["job", "outcome"],
            registry=self.registry,
        )
        self.high_water = Gauge(
            "strangler_sync_high_water_timestamp_seconds",
            "updated_at of the newest change applied (Unix time).",
            ["job"],
            registry=self.registry,
        )
        self.last_run = Gauge(
            "strangler_sync_last_run_timestamp_seconds",
            "When the job last finished a poll (Unix time).",
            ["job"],
            registry=self.registry,
        )
        self.errors = Counter(
            "strangler_sync_errors",
            "Polls that failed (the loop retries with a backoff).",
            ["job"],
            registry=self.registry,
        )

    def count(self, job: str, outcomes: dict[str, int]) -> None:
        for outcome, value in outcomes.items():
            if value:
                self.rows.labels(job=job, outcome=outcome).inc(value)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose /metrics on `host:port` (0: any free port) from a daemon thread; returns the
        port. The server lives as long as the process (the CLI's follower and consumer)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
