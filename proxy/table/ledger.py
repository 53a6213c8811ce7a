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

Evidence: what a transition was decided on, recorded when it was committed (Flagger and Argo
Rollouts keep each analysis run beside the rollout step it judged), one document per version:

    {"routes": {ROUTE: {"window": s, "at": epoch,
                        "arms": {UPSTREAM: ArmSummary.as_dict()},     # over the window before
                        "shadow": {"compared", "differed", "rate"} | null,
                        "gates": [GateAnswer.as_dict()],               # those about the route
                        "lag_seconds": x | null, "drift": n | null}}}  # as the gates said them

The ledger attaches each route's evidence to the transition of that version (null for one
that has none), and what the default upstream still serves, per path template, over the last
minutes (dataplane/templates.py); `ledger_lines` renders it all for a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from proxy.dataplane.armstats import arms_window

if TYPE_CHECKING:
    from proxy.table.model import Route, RouteTable

EVIDENCE_WINDOW = 60  # seconds of traffic before a transition its evidence covers (Flagger: 1m)
LEGACY_WINDOW = 900  # seconds of traffic "what the monolith still serves" covers
LEGACY_LINES = 20  # templates `ledger_lines` lists
TIMES = "\u00d7"  # the multiplication sign of a latency ratio (p95 TIMES 1.10)

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

    def as_dict(self, evidence: Mapping[int, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """With `evidence` (version → its document), each transition has its `evidence`."""
        since = self.since
        transitions = [t.as_dict() for t in self.transitions]
        if evidence is not None:
            for step in transitions:
                step["evidence"] = route_evidence(evidence.get(step["version"]), self.name)
        return {
            "name": self.name,
            "state": self.state.as_dict(),
            "since": {
                "version": since.version,
                "time": since.time,
                "author": since.author,
                "reason": since.reason,
            },
            "transitions": transitions,
        }


def route_evidence(doc: Mapping[str, Any] | None, route: str) -> dict[str, Any] | None:
    """`route`'s evidence in a version's document (module header), None when it has none."""
    try:
        found = doc["routes"][route] if doc is not None else None
    except (KeyError, TypeError):
        return None
    return dict(found) if isinstance(found, Mapping) else None


@dataclass(frozen=True)
class Ledger:
    """Every route that ever existed (the newest table's routes in its order, then the retired
    ones in the order they were retired), and the versions whose tables do not load."""

    routes: tuple[RouteLedger, ...]
    unreadable: tuple[Entry, ...] = ()
    first: int | None = None
    last: int | None = None
    # version → its evidence document (module header); None: not read, no `evidence` fields
    evidence: Mapping[int, Mapping[str, Any]] | None = field(default=None, compare=False)
    # (template, requests) the default upstream served over the last `legacy_window` seconds
    legacy_paths: tuple[tuple[str, int], ...] | None = None
    legacy_window: float = LEGACY_WINDOW

    def route(self, name: str) -> RouteLedger | None:
        return next((r for r in self.routes if r.name == name), None)

    def only(self, name: str) -> Ledger:
        """The same ledger narrowed to one route (none if it never existed)."""
        return replace(self, routes=tuple(r for r in self.routes if r.name == name))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "versions": {"first": self.first, "last": self.last},
            "routes": [r.as_dict(self.evidence) for r in self.routes],
            "unreadable": [e.as_dict() for e in self.unreadable],
        }
        if self.legacy_paths is not None:
            out["legacy_window"] = self.legacy_window
            out["legacy_paths"] = [
                {"template": name, "requests": count} for name, count in self.legacy_paths
            ]
        return out


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


# --- evidence ---------------------------------------------------------------------------------
def evidence_for(
    route: str,
    docs: Iterable[Mapping[str, Any]],
    shadow_summary: Mapping[str, Any] | None,
    gate_answers: Sequence[Any],
    window: float,
    now: float,
) -> dict[str, Any]:
    """`route`'s evidence at `now` (module header): its arms over the `window` seconds before,
    from the workers' statistics documents (dataplane/armstats.py); its shadow report
    (shadow/report.py `summarise`, or {compared, differed, rate}), if it has one; the gates'
    answers about it (GateAnswer or its dict), with the follow lag and the drift those answers
    carry (`lag_seconds`, `drift`: the largest of them; null when none does)."""
    arms = arms_window(docs, route, now - window, now)
    gates = [_answer(a) for a in gate_answers]
    gates = [g for g in gates if route in (g.get("routes") or (route,))]
    shadow = None
    if shadow_summary is not None:  # summarise()'s names, or the {compared, differed, rate} kept
        said = shadow_summary
        shadow = {
            "compared": int(said.get("compared", 0)),
            "differed": int(said.get("differed", said.get("mismatched", 0))),
            "rate": float(said.get("rate", said.get("mismatch_rate", 0.0))),
        }
    return {
        "window": window,
        "at": round(now, 3),
        "arms": {upstream: summary.as_dict() for upstream, summary in arms.items()},
        "shadow": shadow,
        "gates": gates,
        "lag_seconds": _largest(gates, "lag_seconds"),
        "drift": _largest(gates, "drift"),
    }


def _answer(answer: Any) -> dict[str, Any]:
    return dict(answer) if isinstance(answer, Mapping) else dict(answer.as_dict())


def _largest(gates: list[dict[str, Any]], name: str) -> Any:
    values = [
        g[name]
        for g in gates
        if isinstance(g.get(name), int | float) and not isinstance(g.get(name), bool)
    ]
    return max(values) if values else None


# --- text -------------------------------------------------------------------------------------
def ledger_lines(found: Mapping[str, Any]) -> list[str]:
    """The ledger (`Ledger.as_dict()`, or `GET /api/v1/ledger`'s answer) for a terminal: one
    block per route, each transition with its evidence on the line below it, then what the
    monolith still serves."""
    from proxy.shadow.compare import printable

    versions = found["versions"]
    if versions["first"] is None:
        return ["no versions yet"]
    lines = [f"versions {versions['first']} to {versions['last']}"]
    for entry in found["unreadable"]:
        lines.append(
            f"version {entry['version']} ({_when(entry['time'])}, {entry['author']}: "
            f"{entry['reason']}): its table does not load here, left out: {entry['problem']}"
        )
    rows = found["routes"]
    name_width = max((len(r["name"]) for r in rows), default=0)
    state_width = max((len(r["state"]["label"]) for r in rows), default=0)
    moves = [_move(t) for r in rows for t in r["transitions"]]
    move_width = min(max((len(m) for m in moves), default=0), 56)
    for row in rows:
        since = row["since"]
        lines.append(
            f"{row['name']:<{name_width}}  {row['state']['label']:<{state_width}}  "
            f"since version {since['version']} ({_when(since['time'])})"
        )
        for step in row["transitions"]:
            lines.append(
                f"  {_when(step['time'])}  v{step['version']:<4} {_move(step):<{move_width}}  "
                f"{step['author']}: {step['reason']}"
            )
            if step.get("evidence"):
                lines.append("      " + evidence_line(step["evidence"], _candidates(step)))
    if found.get("legacy_paths") is not None:
        lines.extend(_legacy_lines(found["legacy_paths"], found.get("legacy_window"), printable))
    return lines


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _move(step: Mapping[str, Any]) -> str:
    before = "(added)" if step["from"] is None else step["from"]["label"]
    return f"{before} → {step['to']['label']}"


def _candidates(step: Mapping[str, Any]) -> list[str]:
    """The upstreams a transition judged, as against the default's (legacy) arm: the ones it
    sends traffic to, or, back to legacy, the ones it took the traffic from."""
    for state in (step["to"], step["from"]):
        if state is not None and state["upstreams"] and state["state"] != SHADOWED:
            return list(state["upstreams"])
    return []


def _percent(rate: float) -> str:
    share = rate * 100
    return f"{share:.2f}%" if 0 < share < 0.1 else f"{share:.1f}%"


def _latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def evidence_line(evidence: Mapping[str, Any], candidates: Sequence[str] = ()) -> str:
    """One line: `evidence (60 s): errors 0.2% vs 0.1% legacy · p95 TIMES 1.10 · shadow 0.0% of
    240 · lag 0.4 s · drift 0` (TIMES: the multiplication sign; each candidate's errors and p95
    against the busiest other arm, the default's; every arm's own numbers when there is nothing
    to compare)."""
    arms: Mapping[str, Mapping[str, Any]] = evidence.get("arms") or {}
    parts = _arm_parts(arms, candidates)
    shadow = evidence.get("shadow")
    if shadow:
        parts.append(f"shadow {_percent(shadow.get('rate', 0.0))} of {shadow.get('compared', 0)}")
    gates = evidence.get("gates") or []
    if gates:
        closed = sum(1 for g in gates if not g.get("open"))
        parts.append(f"gates closed {closed} of {len(gates)}" if closed else "gates open")
    if evidence.get("lag_seconds") is not None:
        parts.append(f"lag {evidence['lag_seconds']:.1f} s")
    if evidence.get("drift") is not None:
        parts.append(f"drift {evidence['drift']}")
    window = evidence.get("window")
    head = f"evidence ({window:g} s)" if isinstance(window, int | float) else "evidence"
    return f"{head}: " + " · ".join(parts)


def _arm_parts(arms: Mapping[str, Mapping[str, Any]], candidates: Sequence[str]) -> list[str]:
    if not any(arm.get("requests") for arm in arms.values()):
        return ["no requests in the window"]
    judged = [name for name in candidates if name in arms]
    others = sorted(
        (name for name in arms if name not in judged),
        key=lambda name: -int(arms[name].get("requests") or 0),
    )
    base = arms[others[0]] if others and arms[others[0]].get("requests") else None
    if not judged or base is None:
        return [
            f"{name} {arm.get('requests', 0)} requests, errors "
            f"{_percent(arm.get('error_rate', 0.0))}, p95 {_latency(arm.get('p95'))}"
            for name, arm in sorted(arms.items())
        ]
    parts = []
    for name in judged:
        arm = arms[name]
        label = f"{name}: " if len(judged) > 1 else ""
        if not arm.get("requests"):
            parts.append(f"{label}no requests")
            continue
        text = (
            f"{label}errors {_percent(arm.get('error_rate', 0.0))} vs "
            f"{_percent(base.get('error_rate', 0.0))} legacy"
        )
        p95, legacy_p95 = arm.get("p95"), base.get("p95")
        if p95 is not None and legacy_p95:
            text += f" · p95 {TIMES}{p95 / legacy_p95:.2f}"
        parts.append(text)
    return parts


def _legacy_lines(
    paths: Sequence[Mapping[str, Any]], window: float | None, printable: Any
) -> list[str]:
    minutes = (window or LEGACY_WINDOW) / 60
    lines = ["", f"What the monolith still serves (last {minutes:g} min)"]
    if not paths:
        return [*lines, "  no requests reached it"]
    shown = paths[:LEGACY_LINES]
    width = max(len(f"{p['requests']:,}") for p in shown)
    lines.extend(f"  {p['requests']:>{width},}  {printable(str(p['template']))}" for p in shown)
    rest = paths[LEGACY_LINES:]
    if rest:
        more = sum(int(p["requests"]) for p in rest)
        lines.append(f"  … and {len(rest)} more templates ({more:,} requests)")
    return lines
