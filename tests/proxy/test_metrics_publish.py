"""Request counts on the hot path: `Metrics.observe` counts in plain integers and `publish` hands
them to prometheus_client. What /metrics shows must be what prometheus_client's own
`inc()` and `observe()` of each request would have shown, bucket edges included."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.observability import LATENCY_BUCKETS, Metrics

# On a bucket's edge (Prometheus' `le` is "at most"), between edges, above the last one, zero.
SECONDS = [0.001, 0.0010001, 0.0025, 0.003, 0.0, 29.99, 30.0, 31.0, 0.25, 0.25, 7.0]


def reference(observed: list[tuple[str, str, int, float]]) -> dict[str, float]:
    """The same requests through prometheus_client's own path: its samples by name and labels."""
    registry = CollectorRegistry()
    requests = Counter("strangler_requests", "", ("route", "upstream", "code"), registry=registry)
    latency = Histogram(
        "strangler_request_duration_seconds",
        "",
        ("route", "upstream"),
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    for route, upstream, status, seconds in observed:
        requests.labels(route, upstream, str(status)).inc()
        latency.labels(route, upstream).observe(seconds)
    return samples(registry)


def samples(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for family in registry.collect():
        if family.name not in ("strangler_requests", "strangler_request_duration_seconds"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = round(sample.value, 9)
    return out


def test_published_counts_are_what_prometheus_client_would_have_counted() -> None:
    observed = [("payments", "monolith", 200, s) for s in SECONDS]
    observed += [("payments", "payment", 503, 0.02), ("default", "monolith", 404, 0.004)]
    metrics = Metrics()
    for request in observed:
        metrics.observe(*request)
    metrics.publish()
    assert samples(metrics.registry) == reference(observed)


def test_counts_are_published_when_read_and_add_up_over_publishes() -> None:
    metrics = Metrics()
    metrics.observe("payments", "monolith", 200, 0.01)
    # Read without an explicit publish: render and totals publish what is pending first.
    assert b'strangler_requests_total{code="200",route="payments",upstream="monolith"} 1.0' in (
        metrics.render()
    )
    metrics.observe("payments", "monolith", 200, 0.03)
    metrics.observe("payments", "monolith", 502, 0.5)
    requests, errors, seconds = metrics.totals()["payments", "monolith"]
    assert (requests, errors, round(seconds, 6)) == (3, 1, 0.54)
    metrics.publish()  # nothing pending: nothing changes
    assert metrics.totals()["payments", "monolith"][0] == 3
    assert b"strangler_requests_total" in generate_latest(metrics.registry)


def test_a_failed_publish_keeps_what_it_had_not_written(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics()
    metrics.observe("first", "monolith", 200, 0.01)
    metrics.observe("second", "monolith", 200, 0.01)
    metrics.observe("second", "monolith", 200, 0.02)
    original, calls = Metrics._write, []

    def failing_once(self: Metrics, key: tuple[str, str, int], cell: list[object]) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise OSError("no space left for the metrics file")
        original(self, key, cell)

    monkeypatch.setattr(Metrics, "_write", failing_once)
    with pytest.raises(OSError, match="no space"):
        metrics.publish()
    metrics.observe("second", "monolith", 200, 0.03)  # counted meanwhile: added to the kept
    monkeypatch.setattr(Metrics, "_write", original)
    totals = metrics.totals()
    assert "first" not in {route for route, _ in totals}  # the cell being written is lost
    assert totals["second", "monolith"][0] == 3
