"""Cutover gates: an upstream may name a URL (`gate:`) that the control plane asks before a
change sends that upstream more traffic than it had. A 2xx answer lets the change through;
anything else (or no answer) refuses it, with the gate's reasons. Moving traffic *away* from an
upstream is never gated, so a rollback always works.

This is how the route table refuses to move the payments route to the payment service while its
data is not ready: the service's `GET /cutover` answers 503 until the backfill is done, follow
is alive with its lag in budget, and two fresh reconciles found zero drift (Flagger's
pre-rollout webhooks are the precedent: a check outside the proxy decides).
"""

from __future__ import annotations

from typing import Any

from proxy.store.base import RouteStore, StoreError, Version
from proxy.table.model import RouteTable

GATE_TIMEOUT = 5.0
# The default upstream's key among the routes: not a route name (those start alphanumeric), so a
# route named "default" cannot hide a change of the default.
DEFAULT = "(default)"


class GateClosed(StoreError):
    """A gate refused the change (or could not be asked): nothing was committed."""

    status = 409
    kind = "gate-closed"


def _shares(table: RouteTable) -> dict[str, dict[str, float]]:
    """Per route (and DEFAULT), each upstream's share of its traffic in percent."""
    out: dict[str, dict[str, float]] = {DEFAULT: {table.default: 100.0}}
    for route in table.routes:
        if route.split is not None:
            out[route.name] = {name: float(weight) for name, weight in route.split.items()}
        else:
            out[route.name] = {route.to or table.default: 100.0}
    return out


def traffic_gains(before: RouteTable, after: RouteTable) -> dict[str, list[str]]:
    """Upstream → the routes on which `after` gives it a larger share than `before` did (a
    route new in `after` took its traffic from `before`'s default upstream, and a route gone
    from `after` gives its traffic to `after`'s default upstream)."""
    old, new = _shares(before), _shares(after)
    # An upstream whose URL changed is a new destination: all its traffic counts as gained.
    moved = {
        name
        for name, spec in after.upstreams.items()
        if name in before.upstreams and before.upstreams[name].url != spec.url
    }
    gains: dict[str, list[str]] = {}
    for route in [*new, *(name for name in old if name not in new)]:
        previous = old.get(route, {before.default: 100.0})
        shares = new.get(route, {after.default: 100.0})
        for upstream, share in shares.items():
            if share > 0 and (upstream in moved or share > previous.get(upstream, 0.0)):
                gains.setdefault(upstream, []).append(route)
    return gains


def _gates_for(upstream: str, before: RouteTable, after: RouteTable) -> list[str]:
    """The gates guarding `upstream`'s destination: its own in either table, and that of any
    upstream of `before` at the same URL (a gate cannot be dodged by a new name or a moved
    URL for the same service)."""
    gates: list[str] = []
    spec = after.upstreams.get(upstream)
    url = spec.url if spec is not None else None
    for table in (before, after):
        for name, candidate in table.upstreams.items():
            if (name == upstream or (url is not None and candidate.url == url)) and (
                candidate.gate is not None and candidate.gate not in gates
            ):
                gates.append(candidate.gate)
    return gates


def _reasons(answer: Any) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text.strip()[:500] or f"HTTP {answer.status_code}"
    if isinstance(body, dict):
        reasons = body.get("reasons") or body.get("detail") or body.get("title")
        if isinstance(reasons, list):
            return "; ".join(str(r) for r in reasons)[:1000]
        if reasons:
            return str(reasons)[:1000]
    return f"HTTP {answer.status_code}"


def check_gates(before: RouteTable, after: RouteTable) -> list[str]:
    """Ask the gate of every upstream that `after` sends more traffic; raise GateClosed when
    one refuses. The gate `before` names is asked too when `after` changes or drops it (a
    change cannot remove the gate it would be refused by). Returns the gates that were asked
    and opened (for the record)."""
    import httpx

    opened = []
    for upstream, routes in sorted(traffic_gains(before, after).items()):
        gates = _gates_for(upstream, before, after)
        if not gates:
            continue
        where = f"upstream {upstream!r} (routes {', '.join(routes)})"
        for gate in gates:
            try:
                answer = httpx.get(gate, timeout=GATE_TIMEOUT, follow_redirects=False)
            except httpx.HTTPError as exc:
                raise GateClosed(
                    f"the gate of {where} at {gate} did not answer ({exc}); nothing changed"
                ) from None
            if not 200 <= answer.status_code < 300:
                raise GateClosed(
                    f"the gate of {where} is closed ({answer.status_code}): {_reasons(answer)}; "
                    "nothing changed"
                )
        opened.append(upstream)
    return opened


def commit_through_gates(
    store: RouteStore,
    text: str,
    *,
    before: RouteTable,
    author: str,
    reason: str,
    expected_version: int,
    force: bool = False,
) -> Version:
    """Commit `text` on top of `before` once the gates it concerns opened (asked on the table
    the store parses, so it is parsed once); `force` skips them and says so in the reason."""

    def gated(table: RouteTable) -> None:
        check_gates(before, table)

    return store.commit(
        text,
        author=author,
        reason=f"{reason} [gates overridden]" if force else reason,
        expected_version=expected_version,
        check=None if force else gated,
    )
