"""Where a rollout's evidence comes from: what the proxies measured on each arm, the shadow's
comparisons, and the cutover gates (`Evidence`; the driver is given one, tests give their own).

`SinkEvidence` reads them where the proxies share them: every worker's per-arm statistics and
shadow tallies in the shadow sink (shadow/sink.py), and the gates asked over HTTP
(table/gates.py). Per-arm numbers come in buckets of a few seconds (dataplane/armstats.py): the
bucket holding a window's start counts whole, so a window is never empty for starting
mid-bucket (with the default settle of one bucket, it still starts after the step did).

A step's shadow comparisons are the counts now less those at the step's start (its baseline),
so the comparisons of earlier steps never dilute them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from proxy.rollout.analysis import ArmSummaryLike, GateAnswerLike

if TYPE_CHECKING:
    from proxy.shadow.sink import Sink
    from proxy.table.model import RouteTable


class Evidence(Protocol):
    async def arms(self, route: str, since: float) -> Mapping[str, ArmSummaryLike]:
        """Per upstream, what the proxies measured on `route` since `since`."""
        ...

    async def shadow(self, route: str) -> dict[str, Any] | None:
        """The shadow's counts on `route` so far, {compared, differed, rate} (None: none)."""
        ...

    def gates(self, before: RouteTable, after: RouteTable) -> Sequence[GateAnswerLike]:
        """What the cutover gates answer about going from `before` to `after`."""
        ...


class SinkEvidence:
    """Evidence from where the proxies share it (module header)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def arms(self, route: str, since: float) -> Mapping[str, ArmSummaryLike]:
        from proxy.dataplane.armstats import BUCKET, arms_window

        return arms_window(await self.sink.stats(), route, since - since % BUCKET)

    async def shadow(self, route: str) -> dict[str, Any] | None:
        from proxy.shadow.report import merge_snapshots, mismatched, noise_fields

        tally = merge_snapshots(await self.sink.tallies()).get(route)
        if tally is None:
            return None
        differed = mismatched(tally, noise_fields(tally))
        rate = round(differed / tally.compared, 6) if tally.compared else 0.0
        return {"compared": tally.compared, "differed": differed, "rate": rate}

    def gates(self, before: RouteTable, after: RouteTable) -> Sequence[GateAnswerLike]:
        from proxy.table.gates import ask_gates

        return ask_gates(before, after)


def shadow_window(total: dict[str, Any] | None, baseline: dict[str, int] | None) -> dict[str, Any]:
    """The shadow's counts since the step's baseline (a reset of the report meanwhile: all)."""
    compared = int((total or {}).get("compared", 0))
    differed = int((total or {}).get("differed", 0))
    base = baseline or {}
    if compared >= int(base.get("compared", 0)):
        compared -= int(base.get("compared", 0))
        differed = max(differed - int(base.get("differed", 0)), 0)
    rate = round(differed / compared, 6) if compared else 0.0
    return {"compared": compared, "differed": min(differed, compared), "rate": rate}


def shadow_counts(total: dict[str, Any] | None) -> dict[str, int]:
    """The shadow's counts as a step's baseline keeps them."""
    return {
        "compared": int((total or {}).get("compared", 0)),
        "differed": int((total or {}).get("differed", 0)),
    }
