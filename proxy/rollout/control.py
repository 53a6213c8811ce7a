"""The rollout operations: start, pause, resume, promote, abort, and reading them. One
implementation, called by `strangler rollout` on a local store and by the admin API (which the
CLI calls with --admin).

Operations change the rollout's recorded state only; the route itself is moved by the driver
that holds the lease in a running proxy (driver.py), as Argo Rollouts' `abort` and `promote`
set a field the controller acts on. So every version a rollout commits has one writer, the
driver, and an abort typed while a step is being committed cannot be overtaken by it: the
driver finishes the rollback from the recorded state on its next tick.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from proxy.rollout.model import Rollout, RolloutInvalid, RolloutRefused, UnknownRollout, begin
from proxy.rollout.transitions import abort_requested, paused, promotion_requested, resumed

if TYPE_CHECKING:
    from proxy.rollout.store import RolloutStore
    from proxy.store.base import RouteStore


def _invalid(exc: Exception) -> RolloutInvalid:
    """A pydantic ValidationError of the plan as one line per problem."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return RolloutInvalid(str(exc))
    lines = []
    for error in errors():
        where = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{where}: {message}" if where else message)
    return RolloutInvalid("the rollout is invalid: " + "; ".join(lines))


class Rollouts:
    """Rollouts of the routes in `routes`, recorded in `store` (at the times `clock` says)."""

    def __init__(
        self, routes: RouteStore, store: RolloutStore, clock: Callable[[], float] = time.time
    ) -> None:
        self.routes = routes
        self.store = store
        self.clock = clock

    def start(
        self,
        route: str,
        overrides: dict[str, Any],
        *,
        reason: str,
        author: str,
    ) -> Rollout:
        """A new rollout of `route`: its `rollout:` block with `overrides` over it (`to`,
        `steps`, `bake`, `webhooks`, thresholds by name); refused while another one runs."""
        from pydantic import ValidationError

        from proxy.table.rollout import resolve_plan

        if not reason.strip():
            raise RolloutInvalid("give a reason: it goes into every version the rollout commits")
        current = self.routes.current()
        block = next((r.rollout for r in current.table.routes if r.name == route), None)
        try:
            plan = resolve_plan(block, overrides)
        except ValidationError as exc:
            raise _invalid(exc) from None
        version = current.info.version
        fresh = begin(current.table, version, route, plan, reason, author, self.clock())

        def create(existing: Rollout | None) -> Rollout:
            if existing is not None and existing.active:
                raise RolloutRefused(
                    f"route {route!r} is already being rolled out to {existing.to!r} "
                    f"({existing.state}, {existing.weight}%): abort it first"
                )
            return fresh

        stored = self.store.update(route, create)
        assert stored is not None
        return stored

    def get(self, route: str) -> Rollout:
        found = self.store.get(route)
        if found is None:
            raise UnknownRollout(route)
        return found

    def all(self) -> list[Rollout]:
        return self.store.all()

    def _change(self, route: str, change: Callable[[Rollout], Rollout]) -> Rollout:
        def apply(existing: Rollout | None) -> Rollout | None:
            if existing is None:
                raise UnknownRollout(route)
            changed = change(existing)
            return None if changed is existing else changed

        stored = self.store.update(route, apply)
        assert stored is not None
        return stored

    def pause(self, route: str, *, reason: str, author: str) -> Rollout:
        """Stop the clock: no step, no analysis until resumed."""
        return self._change(route, lambda r: paused(r, self.clock(), f"{reason} ({author})"))

    def resume(self, route: str, *, reason: str, author: str) -> Rollout:
        """Start the clock again where it stopped."""
        return self._change(route, lambda r: resumed(r, self.clock(), f"{reason} ({author})"))

    def promote(self, route: str, *, reason: str, author: str) -> Rollout:
        """Go to 100 % at the driver's next tick, once the confirm-promotion webhooks agree."""
        return self._change(
            route, lambda r: promotion_requested(r, self.clock(), f"{reason} ({author})")
        )

    def abort(self, route: str, *, reason: str, author: str) -> Rollout:
        """Put the route back as it was before the rollout; it ends `aborted`."""
        return self._change(
            route, lambda r: abort_requested(r, self.clock(), f"{reason} ({author})")
        )
