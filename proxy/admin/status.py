"""Per-route status for the admin API: what each route does now and the traffic it had lately.

state   legacy   every request goes to the default upstream (the monolith)
        moved    every request goes to another upstream
        canary   a weighted split that still sends some traffic to the default upstream
        split    a weighted split between upstreams other than the default
        static   the proxy serves the route's files itself, from a directory

Each upstream's health: closed (serving), ejected (outlier ejection: out of the path) or probing
(a few requests decide whether it is back); with several workers, the worst worker's state.
"""

from __future__ import annotations

from typing import Any

from proxy.dataplane.breaker import STATE_CODES
from proxy.observability import TrafficWindow
from proxy.table.compile import STATIC, CompiledRoute, Snapshot, Upstream


def _weights(route: CompiledRoute, default: Upstream) -> list[tuple[Upstream, float]]:
    if route.static is not None:
        return [(STATIC, 100.0)]
    if route.split is None:
        return [(route.upstream or default, 100.0)]
    split = route.split
    return [(u, float(w)) for u, w in zip(split.upstreams, split.weights, strict=True)]


def _state(route: CompiledRoute, weights: list[tuple[Upstream, float]], default: Upstream) -> str:
    """Where the route is in the migration: legacy → shadow (legacy, copies to a service) →
    canary (a split that includes the default) → moved; `split` between other upstreams;
    `static` when the proxy serves it."""
    if route.static is not None:
        return "static"
    live = [u.name for u, w in weights if w > 0]
    if len(live) == 1:
        if live[0] != default.name:
            return "moved"
        return "shadow" if route.shadow is not None else "legacy"
    return "canary" if default.name in live else "split"


STATES = tuple(sorted(STATE_CODES, key=STATE_CODES.__getitem__))  # by the gauge's codes


def _policy(route: CompiledRoute) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if route.static is not None:
        out["static"] = {
            "root": route.static.root,
            "max_age_s": route.static.max_age,
            "immutable": route.static.immutable.pattern,
            "index": route.static.index,
        }
    if route.retry is not None:
        out["retry"] = {
            "attempts": route.retry.attempts,
            "per_try_timeout_s": route.retry.per_try_timeout,
        }
    if route.fallback is not None:
        out["fallback"] = {
            "to": route.fallback.upstream.name,
            "methods": sorted(route.fallback.methods) if route.fallback.methods else None,
        }
    if route.shadow is not None:
        out["shadow"] = {"to": route.shadow.upstream.name, "sample": route.shadow.sample}
    if route.sticky is not None:
        kind, name = route.sticky
        out["sticky"] = f"{kind}:{name.decode()}" if name else kind
    if route.keyed and route.pin:
        out["pin_s"] = route.pin
    return out


def upstream_health(
    snapshot: Snapshot,
    merged: dict[str, tuple[int, float]],
    local: dict[str, dict[str, object]],
) -> list[dict[str, Any]]:
    """Each upstream of the table: its outlier state over every worker (`merged`, from the
    metrics) and this worker's queue (`local`, from its guards)."""
    out = []
    for name, upstream in snapshot.upstreams.items():
        code, ejections = merged.get(name, (0, 0.0))
        here = local.get(name, {})
        out.append(
            {
                "name": name,
                "url": upstream.url,
                "state": STATES[code] if 0 <= code < len(STATES) else "closed",
                "outlier_detection": upstream.outlier is not None,
                "ejections": int(ejections),
                "ejected_for_s": here.get("ejected_for_s", 0.0),
                "active": here.get("active", 0),
                "waiting": here.get("waiting", 0),
                "max_requests": upstream.max_requests,
            }
        )
    return out


def route_status(
    snapshot: Snapshot,
    traffic: TrafficWindow,
    upstreams: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    window, recent = traffic.recent()

    def usage(route: str, upstreams: list[str]) -> dict[str, Any]:
        per = {}
        total = errors = spent = 0.0
        for name in upstreams:
            requests, failed, mean = recent.get((route, name), (0.0, 0.0, 0.0))
            per[name] = {
                "requests": int(requests),
                "errors_5xx": int(failed),
                "mean_ms": round(mean * 1000, 3),
            }
            total, errors, spent = total + requests, errors + failed, spent + mean * requests
        return {
            "window_seconds": round(window, 1),
            "requests": int(total),
            "errors_5xx": int(errors),
            "error_rate": round(errors / total, 4) if total else 0.0,
            "mean_ms": round(spent / total * 1000, 3) if total else 0.0,
            "by_upstream": per,
        }

    routes = []
    for route in snapshot.routes:
        weights = _weights(route, snapshot.default)
        names = [u.name for u, _ in weights]
        seen = {name for (r, name) in recent if r == route.name}
        routes.append(
            {
                "name": route.name,
                "path": route.path,
                "prefix": not route.exact,
                "methods": sorted(route.methods) if route.methods else None,
                "state": _state(route, weights, snapshot.default),
                "upstreams": [
                    {"name": u.name, "url": u.url, "weight": weight} for u, weight in weights
                ],
                "expose": "both"
                if route.external and route.internal
                else ("external" if route.external else "internal"),
                "traffic": usage(route.name, [*names, *sorted(seen - set(names))]),
                **_policy(route),
            }
        )
    default = snapshot.default
    return {
        "served_version": snapshot.version,
        "default": {
            "upstream": {"name": default.name, "url": default.url},
            "traffic": usage("default", [default.name]),
        },
        "routes": routes,
        "upstreams": upstreams or [],
    }
