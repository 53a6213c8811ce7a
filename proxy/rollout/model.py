"""A rollout's durable state: what it moves where, in which steps, where it is, and what
happened to it (transitions.py changes it; store.py keeps it). Pure: no I/O.

Fields the rest relies on:
- `step` is the index of the step being baked (baking) or to be committed next (progressing,
  waiting-promotion); `weight` is the new upstream's share as served now; `served` the shares
  the rollout last put in place, which the route must still have (anything else is somebody's
  manual change).
- `original` is the route's action in the version the rollout started on: where every
  rollback puts it back.
- The bake clock is `due` (when the step's analysis is due) and `next_check` (the next analysis
  during the bake); they are wall-clock times, so a restart of every replica continues from
  them.
- `revision` is the store's: each write bumps it (compare-and-set).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.store.base import StoreError, UnknownRoute
from proxy.table.rollout import RolloutPlan

if TYPE_CHECKING:
    from proxy.table.model import Route, RouteTable

ACTIVE = frozenset(
    {"pending", "progressing", "baking", "paused", "waiting-promotion", "rolling-back"}
)
FINAL = frozenset({"rolled-back", "succeeded", "aborted", "failed"})
MAX_HISTORY = 200  # events kept per rollout (the first one, the start, always)
AUTHOR = "rollout"  # the author of every version a rollout commits


class RolloutRefused(StoreError):
    """A rollout operation that cannot be done as asked; nothing changed."""

    status = 409
    kind = "rollout-refused"


class RolloutInvalid(RolloutRefused):
    status = 422
    kind = "invalid-rollout"


class UnknownRollout(RolloutRefused):
    status = 404
    kind = "unknown-rollout"

    def __init__(self, route: str) -> None:
        super().__init__(f"no rollout of route {route!r}")
        self.route = route


@dataclass(frozen=True)
class Event:
    time: float
    event: str
    step: int
    weight: int
    message: str = ""
    version: int | None = None
    analysis: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "event": self.event,
            "step": self.step,
            "weight": self.weight,
            "version": self.version,
            "analysis": self.analysis,
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        return cls(
            float(data["time"]),
            str(data["event"]),
            int(data["step"]),
            int(data["weight"]),
            str(data.get("message") or ""),
            None if data.get("version") is None else int(data["version"]),
            data.get("analysis"),
        )


@dataclass(frozen=True)
class Rollout:
    route: str
    to: str
    source: str  # the upstream it moves from ("from" in JSON)
    plan: RolloutPlan
    reason: str
    author: str
    started: float
    start_version: int
    original: dict[str, Any]  # the route's action before: {"to": NAME} or {"split": {...}}
    served: dict[str, int]
    state: str = "pending"
    step: int = 0
    weight: int = 0
    step_started: float | None = None
    due: float | None = None
    next_check: float | None = None
    updated: float = 0.0
    driver: str | None = None
    failures: int = 0
    quiet_bakes: int = 0
    paused_at: float | None = None
    paused_from: str | None = None
    promote: bool = False
    end: str | None = None
    message: str = ""
    shadow_baseline: dict[str, int] | None = None
    last_analysis: dict[str, Any] | None = None
    history: tuple[Event, ...] = field(default_factory=tuple)
    revision: int = 0

    @property
    def steps(self) -> tuple[int, ...]:
        return self.plan.steps

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def label(self, step: int | None = None) -> str:
        """`step 2/5`, for reasons and messages."""
        index = self.step if step is None else step
        return f"step {index + 1}/{len(self.steps)}"

    def as_dict(self) -> dict[str, Any]:
        """The admin API's and the CLI's JSON (webhook URLs by their origin only)."""
        return {
            "route": self.route,
            "to": self.to,
            "from": self.source,
            "state": self.state,
            "step": self.step,
            "steps": list(self.steps),
            "weight": self.weight,
            "bake_seconds": self.plan.bake,
            "step_started": self.step_started,
            "due": self.due,
            "started": self.started,
            "updated": self.updated,
            "driver": self.driver,
            "reason": self.reason,
            "author": self.author,
            "message": self.message,
            "start_version": self.start_version,
            "original": self.original,
            "failures": self.failures,
            "quiet_bakes": self.quiet_bakes,
            "paused_at": self.paused_at,
            "promote_requested": self.promote,
            "analysis": self.plan.analysis.model_dump(),
            "webhooks": [hook.public() for hook in self.plan.webhooks],
            "history": [event.as_dict() for event in self.history],
            "last_analysis": self.last_analysis,
            "revision": self.revision,
        }

    def stored(self) -> dict[str, Any]:
        """Everything, for the rollout store (webhook URLs whole)."""
        return {
            **self.as_dict(),
            "plan": self.plan.model_dump(mode="json"),
            "served": self.served,
            "next_check": self.next_check,
            "paused_from": self.paused_from,
            "end": self.end,
            "shadow_baseline": self.shadow_baseline,
        }

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> Rollout:
        def number(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        return cls(
            route=str(data["route"]),
            to=str(data["to"]),
            source=str(data["from"]),
            plan=RolloutPlan.model_validate(data["plan"]),
            reason=str(data["reason"]),
            author=str(data["author"]),
            started=float(data["started"]),
            start_version=int(data["start_version"]),
            original=dict(data["original"]),
            served={str(k): int(v) for k, v in data["served"].items()},
            state=str(data["state"]),
            step=int(data["step"]),
            weight=int(data["weight"]),
            step_started=number("step_started"),
            due=number("due"),
            next_check=number("next_check"),
            updated=float(data.get("updated") or 0.0),
            driver=data.get("driver"),
            failures=int(data.get("failures") or 0),
            quiet_bakes=int(data.get("quiet_bakes") or 0),
            paused_at=number("paused_at"),
            paused_from=data.get("paused_from"),
            promote=bool(data.get("promote_requested")),
            end=data.get("end"),
            message=str(data.get("message") or ""),
            shadow_baseline=data.get("shadow_baseline"),
            last_analysis=data.get("last_analysis"),
            history=tuple(Event.from_dict(e) for e in data.get("history") or ()),
            revision=int(data.get("revision") or 0),
        )


# --- shares -----------------------------------------------------------------------------------
def shares_of(route: Route, default: str) -> dict[str, int]:
    """A route's upstreams with a share of its traffic (weight 0 left out)."""
    if route.split is not None:
        return {name: weight for name, weight in route.split.items() if weight > 0}
    return {route.to or default: 100}


def step_shares(source: str, to: str, weight: int) -> dict[str, int]:
    return {to: 100} if weight >= 100 else {source: 100 - weight, to: weight}


def step_action(source: str, to: str, weight: int) -> dict[str, Any]:
    """What `flip` gets for a step: `to` at 100 %, else a split in the route's order."""
    return {"to": to} if weight >= 100 else {"split": {source: 100 - weight, to: weight}}


def served_now(table: RouteTable, name: str) -> dict[str, int] | None:
    """The shares `table` gives route `name` (None: no such route)."""
    for route in table.routes:
        if route.name == name:
            return None if route.static is not None else shares_of(route, table.default)
    return None


def original_shares(r: Rollout) -> dict[str, int]:
    """The shares the route had before the rollout: what a rollback puts back."""
    if "split" in r.original:
        return {k: int(v) for k, v in r.original["split"].items() if int(v) > 0}
    return {str(r.original["to"]): 100}


def original_weight(r: Rollout) -> int:
    return original_shares(r).get(r.to, 0)


# --- starting ---------------------------------------------------------------------------------
def begin(
    table: RouteTable,
    version: int,
    route_name: str,
    plan: RolloutPlan,
    reason: str,
    author: str,
    now: float,
) -> Rollout:
    """A pending rollout of `route_name` as `table` (version `version`) serves it; refused when
    the route cannot be moved to `plan.to` from where it is."""
    route = next((r for r in table.routes if r.name == route_name), None)
    if route is None:
        raise UnknownRoute(route_name, version)
    if route.static is not None:
        raise RolloutInvalid(f"route {route_name!r} is static: it has no upstream to move")
    to = plan.to
    if to is None:
        raise RolloutInvalid(f"say where route {route_name!r} goes: --to UPSTREAM (or rollout.to)")
    if to not in table.upstreams:
        raise RolloutInvalid(f"version {version} has no upstream {to!r}")
    shares = shares_of(route, table.default)
    others = [name for name in shares if name != to]
    if not others:
        raise RolloutInvalid(f"route {route_name!r} already sends everything to {to!r}")
    if len(others) > 1:
        raise RolloutInvalid(
            f"route {route_name!r} splits over {', '.join(sorted(shares))}: a rollout moves a "
            "route from one upstream to another (flip it to two first)"
        )
    current = shares.get(to, 0)
    steps = tuple(weight for weight in plan.steps if weight > current)
    plan = plan.model_copy(update={"steps": steps})
    original = {"to": route.to} if route.split is None else {"split": dict(route.split)}
    start = Event(now, "started", 0, current, f"{reason} ({author})", version)
    return Rollout(
        route=route_name,
        to=to,
        source=others[0],
        plan=plan,
        reason=reason,
        author=author,
        started=now,
        start_version=version,
        original=original,
        served=shares,
        weight=current,
        updated=now,
        message=f"waiting for a proxy to drive it (steps {', '.join(map(str, steps))} %)",
        history=(start,),
    )
