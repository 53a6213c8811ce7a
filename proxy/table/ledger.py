"""The migration ledger, as the route table's history tells it (pure: no I/O).

Given every version in order (number, author, time, reason and its parsed table), each route
that ever existed gets its state in each version and its transitions: the versions where that
state changed, with who changed it and why. A rollback is one more version (its reason says so).

state     legacy     all its traffic goes to the table's default upstream, nothing shadowed
          shadowed   all its traffic goes to the default, a copy of its reads to another upstream
          canary N%  a split: N % of its traffic goes to other upstreams than the default
          moved      all its traffic goes to other upstreams than the default (a split between
                     two of them too: the monolith serves none of it)
          static     the proxy serves its files itself (a `static` block)
          retired    no longer in the table, after having been in it

A state is computed against each version's own `default`. A split whose other arms weigh 0 is
legacy (or shadowed), one whose default arm weighs 0 (or has none) is moved. A shadow only
matters while all traffic goes to the default: a canary or a moved route keeping its shadow is
a canary or moved. A version whose table no longer loads changes no state: it is listed apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.table.model import Route, RouteTable

LEGACY, SHADOWED, CANARY, MOVED, STATIC, RETIRED = (
    "legacy",
    "shadowed",
    "canary",
    "moved",
    "static",
    "retired",
)


@dataclass(frozen=True)
class State:
    """Where a route is in the migration. `percent`: a canary's share not going to the default
    upstream; `upstreams`: where that share goes (a shadow's target for `shadowed`)."""

    kind: str
    percent: int | None = None
    upstreams: tuple[str, ...] = ()

    def label(self) -> str:
        """`legacy`, `shadowed to payment`, `canary 10% to payment`, `moved to payment`, ..."""
        head = f"{self.kind} {self.percent}%" if self.kind == CANARY else self.kind
        return f"{head} to {', '.join(self.upstreams)}" if self.upstreams else head

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.kind,
            "percent": self.percent,
            "upstreams": list(self.upstreams),
            "label": self.label(),
        }


def state_of(route: Route, default: str) -> State:
    """The state of `route` in a table whose default upstream is `default`."""
    if route.static is not None:
        return State(STATIC)
    weights = route.split if route.split is not None else {route.to or default: 100}
    elsewhere = {name: weight for name, weight in weights.items() if name != default}
    share = sum(elsewhere.values())
    arms = tuple(name for name, weight in elsewhere.items() if weight > 0)
    if share >= 100:
        return State(MOVED, upstreams=arms)
    if share > 0:
        return State(CANARY, share, arms)
    if route.shadow is not None and route.shadow.to != default:
        return State(SHADOWED, upstreams=(route.shadow.to,))
    return State(LEGACY)


@dataclass(frozen=True)
class Entry:
    """One version as the ledger reads it: its table, or None and why it does not load."""

    version: int
    author: str
    time: float
    reason: str
    table: RouteTable | None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "author": self.author,
            "time": self.time,
            "reason": self.reason,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Transition:
    """A version that changed a route's state; `before` is None where the route first appeared."""

    version: int
    time: float
    author: str
    reason: str
    before: State | None
    after: State

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "time": self.time,
            "author": self.author,
            "reason": self.reason,
            "from": None if self.before is None else self.before.as_dict(),
            "to": self.after.as_dict(),
        }


@dataclass(frozen=True)
class RouteLedger:
    """One route: its transitions, oldest first (never empty); the last one says since when it
    is in its current state."""

    name: str
    transitions: tuple[Transition, ...]
    states: dict[int, State] = field(default_factory=dict, compare=False, repr=False)

    @property
    def state(self) -> State:
        return self.transitions[-1].after

    @property
    def since(self) -> Transition:
        return self.transitions[-1]

    def state_at(self, version: int) -> State | None:
        """Its state in `version` (None before it existed or where that version's table does
        not load)."""
        return self.states.get(version)

    def as_dict(self) -> dict[str, Any]:
        since = self.since
        return {
            "name": self.name,
            "state": self.state.as_dict(),
            "since": {
                "version": since.version,
                "time": since.time,
                "author": since.author,
                "reason": since.reason,
            },
            "transitions": [t.as_dict() for t in self.transitions],
        }


@dataclass(frozen=True)
class Ledger:
    """Every route that ever existed (the newest table's routes in its order, then the retired
    ones in the order they were retired), and the versions whose tables do not load."""

    routes: tuple[RouteLedger, ...]
    unreadable: tuple[Entry, ...] = ()
    first: int | None = None
    last: int | None = None

    def route(self, name: str) -> RouteLedger | None:
        return next((r for r in self.routes if r.name == name), None)

    def only(self, name: str) -> Ledger:
        """The same ledger narrowed to one route (none if it never existed)."""
        return Ledger(
            tuple(r for r in self.routes if r.name == name), self.unreadable, self.first, self.last
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "versions": {"first": self.first, "last": self.last},
            "routes": [r.as_dict() for r in self.routes],
            "unreadable": [e.as_dict() for e in self.unreadable],
        }


def build_ledger(entries: Iterable[Entry]) -> Ledger:
    """The ledger of these versions (taken in version order, whatever order they come in)."""
    ordered = sorted(entries, key=lambda e: e.version)
    transitions: dict[str, list[Transition]] = {}
    states: dict[str, dict[int, State]] = {}
    current: dict[str, State] = {}  # every route seen so far: its latest state
    order: list[str] = []  # the newest readable table's routes
    retired_order: list[str] = []
    unreadable: list[Entry] = []
    for entry in ordered:
        if entry.table is None:
            unreadable.append(entry)
            continue
        default = entry.table.default
        now = {r.name: state_of(r, default) for r in entry.table.routes}
        for name in [*now, *(n for n in current if n not in now)]:
            after = now.get(name, State(RETIRED))
            before = current.get(name)
            states.setdefault(name, {})[entry.version] = after
            if after == before:
                continue
            transitions.setdefault(name, []).append(
                Transition(entry.version, entry.time, entry.author, entry.reason, before, after)
            )
            current[name] = after
            if after.kind == RETIRED:
                retired_order.append(name)
            elif name in retired_order:
                retired_order.remove(name)
        order = [r.name for r in entry.table.routes]
    names = order + [n for n in retired_order if n not in order]
    routes = tuple(RouteLedger(n, tuple(transitions[n]), states[n]) for n in names)
    return Ledger(
        routes,
        tuple(unreadable),
        ordered[0].version if ordered else None,
        ordered[-1].version if ordered else None,
    )
