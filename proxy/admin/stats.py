"""The admin API's arm statistics: what each route's upstreams did lately, every worker and
replica together, and what the monolith (the default upstream) still serves.

    GET /api/v1/stats?window=60&top=50
      {"window": 60, "now": EPOCH,
       "routes": {ROUTE: {UPSTREAM: {"requests", "errors", "error_rate", "p50", "p95", "p99"}}},
       "legacy_paths": [{"template": "GET /api/v1/orders/{id}", "requests": 123}, ...]}

`window` is in seconds, 1 to 900 (the fifteen minutes a worker keeps); latencies are seconds,
estimated from histograms (dataplane/armstats.py), null for an arm without requests in the
window. The numbers are the workers' documents in the shadow sink (each put once a second), this
worker's own taken fresh; a sink that cannot be read is a 503 problem, never a partial answer
a rollout could act on. Open like the other reads (no user data: route and path templates).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query

from proxy.dataplane.armstats import KEEP, fleet_stats, routes_window
from proxy.dataplane.templates import legacy_paths_window

if TYPE_CHECKING:
    from proxy.runtime import Runtime

Window = Annotated[int, Query(ge=1, le=KEEP, description="Seconds of recent traffic.")]
Top = Annotated[int, Query(ge=1, le=1000, description="Path templates listed, busiest first.")]


def stats_view(docs: list[dict[str, Any]], window: int, now: float, top: int) -> dict[str, Any]:
    """The endpoint's answer from the documents (pure)."""
    since = now - window
    routes = routes_window(docs, since)
    paths = legacy_paths_window(docs, since)[:top]
    return {
        "window": window,
        "now": round(now, 3),
        "routes": {
            route: {upstream: summary.as_dict() for upstream, summary in arms.items()}
            for route, arms in routes.items()
        },
        "legacy_paths": [{"template": name, "requests": count} for name, count in paths],
    }


def stats_router(runtime: Runtime) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/stats")
    async def stats(window: Window = 60, top: Top = 50) -> dict[str, Any]:
        """Per route and upstream over the last `window` seconds: requests, 5xx errors and
        their rate, p50/p95/p99 latency; and the default upstream's busiest path templates."""
        docs = await fleet_stats(runtime.sink, runtime.worker, runtime.arm_stats)
        return stats_view(docs, window, time.time(), top)

    return router
