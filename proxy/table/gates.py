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

from dataclasses import dataclass, field
from typing import Any, Literal, overload

from proxy.store.base import RouteStore, StoreError, Version
from proxy.table.model import RouteTable

GATE_TIMEOUT = 5.0
# The default upstream's key among the routes: not a route name (those start alphanumeric), so a
# route named "default" cannot hide a change of the default.
DEFAULT = "(default)"


class GateClosed(StoreError):
    """A gate refused the change (or could not be asked): nothing was committed. `answers`:
    every gate asked and what it said; `table`: the table that was refused."""

    status = 409
    kind = "gate-closed"

    def __init__(
        self, message: str, answers: list[GateAnswer] | None = None, table: RouteTable | None = None
    ) -> None:
        super().__init__(message)
        self.answers = answers or []
        self.table = table


@dataclass(frozen=True)
class GateAnswer:
    """What one gate said about a change: `status` None when it did not answer."""

    upstream: str
    routes: tuple[str, ...]
    gate: str
    open: bool
    status: int | None
    reasons: str
    # What a data gate says of its sync (datasync's `GET /cutover`), kept as a change's evidence.
    lag_seconds: float | None = None
    drift: int | None = None

    def where(self) -> str:
        return f"upstream {self.upstream!r} (routes {', '.join(self.routes)})"

    def refusal(self) -> str:
        """Why it refuses, as the refusal says it."""
        if self.status is None:
            return (
                f"the gate of {self.where()} at {self.gate} did not answer ({self.reasons}); "
                "nothing changed"
            )
        return (
            f"the gate of {self.where()} is closed ({self.status}): {self.reasons}; nothing changed"
        )

    def describe(self) -> str:
        if self.status is None:
            said = f"did not answer ({self.reasons})"
        elif self.open:
            said = f"open ({self.status})"
        else:
            said = f"closed ({self.status}): {self.reasons}"
        return f"gate of {self.where()} at {self.gate}: {said}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "routes": list(self.routes),
            "gate": self.gate,
            "open": self.open,
            "status": self.status,
            "reasons": self.reasons,
            "lag_seconds": self.lag_seconds,
            "drift": self.drift,
        }


@dataclass(frozen=True)
class Preview:
    """What a dry run would commit: the version it would get, its table, the gates' answers
    (none asked when forced), and `refusal`, the reason a gate refuses it (None: it would be
    committed)."""

    version: int
    author: str
    reason: str
    table: RouteTable
    gates: list[GateAnswer] = field(default_factory=list)
    refusal: str | None = None

    def as_dict(self, before: RouteTable) -> dict[str, Any]:
        """As the CLI and the admin API give it: the changes are from `before`."""
        from proxy.table.diff import diff_tables

        return {
            "dry_run": True,
            "committed": False,
            "would_commit": self.refusal is None,
            "version": self.version,
            "author": self.author,
            "reason": self.reason,
            "changes": [c.as_dict() for c in diff_tables(before, self.table)],
            "gates": [a.as_dict() for a in self.gates],
            "refusal": self.refusal,
        }


class _StopBeforeCommit(Exception):
    """Raised by a dry run's check once the store would write `table`: nothing is written."""

    def __init__(self, table: RouteTable) -> None:
        super().__init__("dry run")
        self.table = table


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


def _data_state(answer: Any) -> tuple[float | None, int | None]:
    """The sync lag and drift a data gate reports (`lag_seconds`, `drift`), when it does."""
    try:
        body = answer.json()
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    lag, drift = body.get("lag_seconds"), body.get("drift")
    number = (int, float)
    return (
        float(lag) if isinstance(lag, number) and not isinstance(lag, bool) else None,
        int(drift) if isinstance(drift, int) and not isinstance(drift, bool) else None,
    )


def ask_gates(before: RouteTable, after: RouteTable) -> list[GateAnswer]:
    """Ask the gate of every upstream that `after` sends more traffic (and the gate `before`
    names when `after` changes or drops it: a change cannot remove the gate it would be
    refused by); what each said, a non-2xx answer or none being a refusal. httpx is imported
    only when a gate is there to ask: most flips have none, and a rollback is timed from the
    command's start."""
    answers = []
    for upstream, routes in sorted(traffic_gains(before, after).items()):
        for gate in _gates_for(upstream, before, after):
            import httpx

            try:
                answer = httpx.get(gate, timeout=GATE_TIMEOUT, follow_redirects=False)
            except httpx.HTTPError as exc:
                answers.append(GateAnswer(upstream, tuple(routes), gate, False, None, str(exc)))
                continue
            is_open = 200 <= answer.status_code < 300
            lag, drift = _data_state(answer)
            answers.append(
                GateAnswer(
                    upstream,
                    tuple(routes),
                    gate,
                    is_open,
                    answer.status_code,
                    "" if is_open else _reasons(answer),
                    lag,
                    drift,
                )
            )
    return answers


def check_gates(before: RouteTable, after: RouteTable) -> list[str]:
    """Ask the gates `after` concerns (ask_gates); raise GateClosed, with every answer, when
    one refuses. Returns the upstreams whose gates were asked and opened (for the record)."""
    answers = ask_gates(before, after)
    _refuse_if_closed(answers, after)
    return sorted({a.upstream for a in answers})


def _refuse_if_closed(answers: list[GateAnswer], table: RouteTable) -> None:
    refused = [a for a in answers if not a.open]
    if refused:
        raise GateClosed(refused[0].refusal(), answers, table)


@overload
def commit_through_gates(
    store: RouteStore,
    text: str,
    *,
    before: RouteTable,
    author: str,
    reason: str,
    expected_version: int,
    force: bool = ...,
    dry_run: Literal[False] = ...,
    asked: list[GateAnswer] | None = ...,
) -> Version: ...
@overload
def commit_through_gates(
    store: RouteStore,
    text: str,
    *,
    before: RouteTable,
    author: str,
    reason: str,
    expected_version: int,
    force: bool = ...,
    dry_run: Literal[True],
    asked: list[GateAnswer] | None = ...,
) -> Preview: ...
@overload
def commit_through_gates(
    store: RouteStore,
    text: str,
    *,
    before: RouteTable,
    author: str,
    reason: str,
    expected_version: int,
    force: bool = ...,
    dry_run: bool,
    asked: list[GateAnswer] | None = ...,
) -> Version | Preview: ...
def commit_through_gates(
    store: RouteStore,
    text: str,
    *,
    before: RouteTable,
    author: str,
    reason: str,
    expected_version: int,
    force: bool = False,
    dry_run: bool = False,
    asked: list[GateAnswer] | None = None,
) -> Version | Preview:
    """Commit `text` on top of `before` once the gates it concerns opened (asked on the table
    the store parses, so it is parsed once); `force` skips them and says so in the reason.
    `asked` receives what the gates answered a real commit (the evidence it was made on).

    `dry_run`: the same commit, stopped by its check just before the store writes (the table
    parsed and valid), after the same version check; the gates are then asked outside the
    store's lock (a rehearsal must never hold up a real rollback while a gate answers): what it
    would commit, as a Preview whose `refusal` says why a gate would refuse it (a real commit
    raises GateClosed)."""
    reason = f"{reason} [gates overridden]" if force else reason
    if dry_run:
        return _rehearse(store, text, before, author, reason, expected_version, force)
    answers: list[GateAnswer] = [] if asked is None else asked

    def gated(table: RouteTable) -> None:
        answers[:] = ask_gates(before, table)  # a retried check asks again
        _refuse_if_closed(answers, table)

    return store.commit(
        text,
        author=author,
        reason=reason,
        expected_version=expected_version,
        check=None if force else gated,
    )


def _rehearse(
    store: RouteStore,
    text: str,
    before: RouteTable,
    author: str,
    reason: str,
    expected_version: int,
    force: bool,
) -> Preview:
    """`commit_through_gates`'s dry run: the store's own commit, stopped by its check."""
    from proxy.store.base import VersionConflict

    current = store.current().info.version
    if current != expected_version:  # as the commit would refuse it (Redis checks it later)
        raise VersionConflict(expected_version, current)

    def stop(table: RouteTable) -> None:
        raise _StopBeforeCommit(table)

    try:
        store.commit(
            text, author=author, reason=reason, expected_version=expected_version, check=stop
        )
    except _StopBeforeCommit as stopped:
        table = stopped.table
    else:  # pragma: no cover - a store that skipped its check has committed
        raise RuntimeError("the store committed a dry run: it did not run the check")
    answers = [] if force else ask_gates(before, table)
    refused = [a for a in answers if not a.open]
    refusal = GateClosed(refused[0].refusal(), answers, table) if refused else None
    return Preview(
        expected_version + 1, author, reason, table, answers, str(refusal) if refusal else None
    )
