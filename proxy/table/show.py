"""A readable view of a compiled table: what goes where, in the order routes are tried (pure)."""

from __future__ import annotations

from typing import Any

from proxy.table.compile import CompiledRoute, Snapshot


def _action(route: CompiledRoute) -> str:
    if route.static is not None:
        static = route.static
        return f"static {static.root} max-age {static.max_age}s" + (
            " index" if static.index else ""
        )
    if route.upstream is not None:
        text = route.upstream.name
    else:
        assert route.split is not None
        text = ", ".join(
            f"{upstream.name} {weight}%"
            for upstream, weight in zip(route.split.upstreams, route.split.weights, strict=True)
        )
    if route.sticky:
        kind, name = route.sticky
        text += f" sticky {kind}" + (f":{name.decode()}" if name else "")
    if route.override is not None:
        text += " override " + "/".join(
            f"{what}:{name.decode()}"
            for what, name in (("header", route.override.header), ("cookie", route.override.cookie))
            if name
        )
    return text


def _nets(route: CompiledRoute) -> str:
    parts = []
    if route.retry is not None:
        parts.append(f"retry x{route.retry.attempts}")
    if route.fallback is not None:
        methods = route.fallback.methods
        only = f" ({','.join(sorted(methods))})" if methods else ""
        parts.append(f"fallback {route.fallback.upstream.name}{only}")
    if route.shadow is not None:
        parts.append(f"shadow {route.shadow.upstream.name} {route.shadow.sample:.0%}")
    if route.keyed and route.pin:
        parts.append(f"pin {route.pin:g}s")
    if route.websocket is not None:
        tunnel = route.websocket
        parts.append(f"websocket idle {tunnel.idle_timeout:g}s max {tunnel.max_connections}")
    return ", ".join(parts) or "-"


def _match(route: CompiledRoute) -> str:
    text = route.path + ("" if route.exact else "/**" if route.path != "/" else "**")
    if route.methods:
        text = ",".join(sorted(route.methods)) + " " + text
    if route.host:
        text += f" host={route.host.decode()}"
    for name, value in route.headers:
        text += f" {name.decode()}={value.decode()}"
    return text


def trial_order(snapshot: Snapshot) -> list[CompiledRoute]:
    """Routes in the order a request tries them: exact paths, then deeper prefixes first, then
    the more specific route on one path (the order `snapshot.routes` already has)."""
    rank = {id(route): i for i, route in enumerate(snapshot.routes)}
    return sorted(
        snapshot.routes,
        key=lambda r: (not r.exact, -len([s for s in r.path.split("/") if s]), rank[id(r)]),
    )


def rows(snapshot: Snapshot) -> list[dict[str, Any]]:
    out = [
        {
            "route": route.name,
            "match": _match(route),
            "to": _action(route),
            "expose": "both"
            if route.external and route.internal
            else "external"
            if route.external
            else "internal",
            "max_body": route.max_body,
            "safety": _nets(route),
        }
        for route in trial_order(snapshot)
    ]
    out.append(
        {
            "route": "(default)",
            "match": "anything else",
            "to": snapshot.default.name,
            "expose": "both",
            "max_body": snapshot.max_body,
            "safety": "-",
        }
    )
    return out


def describe(snapshot: Snapshot) -> str:
    table = rows(snapshot)
    header = {
        "route": "ROUTE",
        "match": "MATCH",
        "to": "GOES TO",
        "expose": "EXPOSED",
        "safety": "SAFETY NETS",
    }
    widths = {k: max(len(header[k]), *(len(str(r[k])) for r in table)) for k in header}
    lines = [f"route table version {snapshot.version}"]
    for row in [header, *table]:
        lines.append("  ".join(str(row[k]).ljust(widths[k]) for k in header).rstrip())
    lines.append("")
    lines.append("upstreams:")
    for upstream in snapshot.upstreams.values():
        lines.append(
            f"  {upstream.name:<12} {upstream.url}  timeout {upstream.timeout:g}s, "
            f"connect {upstream.connect_timeout:g}s, {upstream.max_connections} connections"
            + (", outlier ejection" if upstream.outlier is not None else "")
            + (", idempotent writes" if upstream.idempotent_writes else "")
        )
    return "\n".join(lines)
