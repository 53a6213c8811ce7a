"""The rollout driver: in every replica, one task that, while it holds the rollouts' lease, moves
each running rollout on by one move per tick (transitions.next_move): the pre-rollout webhooks,
a step committed, an analysis, the promotion, a rollback.

Rules:
- One driver at a time (store.py's lease, taken while a rollout runs and renewed while a tick
  runs, however long its webhooks and gates take); every state it writes is fenced by the
  lease. A replica that dies leaves the lease to expire, and another one continues from the
  recorded state: the step, and when it started (the bake goes on from there). A driver that
  stops, or has nothing left to drive, releases the lease; an idle one only reads.
- Each step is a new route-table version committed through the cutover gates
  (table/gates.commit_through_gates), by author `rollout`, its reason naming the rollout and
  the step: `rollout payments step 2/5: 5% to payment (why it was started)`.
- A rollback puts the route back as the version the rollout started on had it, and is never
  refused by a gate: it is committed through them and, if one refuses, again with force, the
  gates' answers recorded in the rollout's history.
- The evidence comes through `Evidence` (evidence.py): what the proxies measured per arm since
  a time, the shadow's counts, and the gates. `SinkEvidence` reads them where the proxies put
  them (the shadow sink); tests give their own.
- Route stores are synchronous: their calls (and the gates, asked over HTTP) run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from proxy.rollout.analysis import Analysis, analyse
from proxy.rollout.evidence import Evidence, SinkEvidence, shadow_counts, shadow_window
from proxy.rollout.model import AUTHOR, FINAL, Rollout, original_shares, served_now, step_action
from proxy.rollout.store import LeaseLost, RolloutStore
from proxy.rollout.transitions import (
    analysed,
    drifted,
    failed,
    next_move,
    noted,
    remarked,
    rolled_back,
    rolling_back,
    stepped,
    waiting,
)
from proxy.rollout.webhooks import HookAnswer, Webhooks
from proxy.store.base import StoreError, Version, VersionConflict
from proxy.table.loader import TableInvalid

if TYPE_CHECKING:
    from proxy.store.base import RouteStore
    from proxy.table.model import RouteTable

__all__ = ["Evidence", "RolloutDriver", "SinkEvidence"]

log = logging.getLogger("strangler")

TICK = 1.0  # seconds between two moves of a rollout
# Kubernetes' leader election renews its lease every 2 s of a 15 s lease; a rollout's moves are
# quick, so 5 s renewed every tick: a dead driver's rollouts wait at most 5 s.
LEASE = 5.0
RELEASE_WAIT = 0.5  # seconds a stopping driver waits to release its lease


# Called with each version a rollout commits and its route, to keep the evidence it was
# decided on beside it (the ledger's, store/ledger.record_evidence); its failure is only logged.
# Keeps a version's evidence for the ledger: the version, its route, the gates' answers to it.
Recorder = Callable[[int, str, list[Any]], Awaitable[Any]]


class RolloutDriver:
    """Drives every running rollout of `routes` recorded in `rollouts` while `holder` (this
    replica's id) holds the lease."""

    def __init__(
        self,
        routes: RouteStore,
        rollouts: RolloutStore,
        evidence: Evidence,
        holder: str,
        tick: float = TICK,
        lease: float = LEASE,
        webhooks: Webhooks | None = None,
        clock: Callable[[], float] = time.time,
        record: Recorder | None = None,
    ) -> None:
        self.routes = routes
        self.rollouts = rollouts
        self.evidence = evidence
        self.holder = holder
        self.tick = tick
        self.lease = lease
        self.webhooks = webhooks or Webhooks()
        self.clock = clock
        self.record = record
        self.leading = False
        self._tables: dict[int, RouteTable] = {}

    # --- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Tick until cancelled; the lease is released on the way out."""
        try:
            down = False
            while True:
                try:
                    await self.tick_once()
                    if down:
                        log.warning("rollouts: the store answers again")
                    down = False
                except StoreError as exc:  # the store is down: said once, tried every tick
                    if not down:
                        log.warning("rollouts: the store does not answer: %s", exc)
                    down = True
                except Exception:  # a bug: logged, and the next tick tries again
                    log.exception("the rollout driver's tick failed")
                await asyncio.sleep(self.tick)
        finally:
            await self._let_go()
            await self.webhooks.close()

    def close(self) -> None:
        """Close the stores' connections (after `run` has ended)."""
        self.rollouts.close()
        close = getattr(self.routes, "close", None)  # the Redis store's; the file store has none
        if close is not None:
            close()

    async def tick_once(self) -> None:
        """One move of every running rollout, if this driver holds (or takes) the lease. With
        nothing running it only reads (and lets go of a lease it held)."""
        running = [r for r in await asyncio.to_thread(self.rollouts.all) if r.state not in FINAL]
        if not running:
            await self._let_go()
            return
        if not await self._hold():
            return
        renewing = asyncio.create_task(self._renew())
        try:
            for rollout in running:
                if not self.leading:
                    return
                try:
                    await self._advance(rollout)
                except LeaseLost:
                    self.leading = False
                    log.warning("rollouts: lost the lease to another replica")
                except StoreError as exc:
                    log.warning("rollout of %s: %s; trying again", rollout.route, exc)
        finally:
            renewing.cancel()
            await asyncio.wait([renewing])  # never swallows this task's own cancellation

    async def _let_go(self) -> None:
        """Release the lease (not waiting long for a store that does not answer: the lease
        then expires by itself)."""
        if self.leading:
            self.leading = False
            with contextlib.suppress(StoreError, TimeoutError):
                async with asyncio.timeout(RELEASE_WAIT):
                    await asyncio.to_thread(self.rollouts.release, self.holder)

    async def _hold(self) -> bool:
        try:
            held = await asyncio.to_thread(self.rollouts.acquire, self.holder, self.lease)
        except StoreError as exc:
            if self.leading:
                log.warning("rollouts: cannot renew the lease: %s", exc)
            held = False
        if held and not self.leading:
            log.info("rollouts: %s drives the rollouts", self.holder)
        self.leading = held
        return held

    async def _renew(self) -> None:
        """Renew the lease while a long tick runs (webhooks and gates may take seconds)."""
        while True:
            await asyncio.sleep(self.lease / 3)
            await self._hold()

    # --- one move -------------------------------------------------------------------------------
    async def _advance(self, r: Rollout) -> None:
        current = await asyncio.to_thread(self.routes.current)
        now = self.clock()
        move = next_move(r, now, served_now(current.table, r.route))
        moves: dict[str, Callable[[Rollout, Version], Awaitable[None]]] = {
            "drift": self._drift,
            "adopt": self._adopt,
            "rollback": self._rollback,
            "start": self._start,
            "step": self._step,
            "promote": self._promote,
            "analyse": self._analyse_final,
            "check": self._analyse_during,
        }
        action = moves.get(move)
        if action is not None:
            await action(r, current)

    async def _save(
        self, seen: Rollout, change: Callable[[Rollout], Rollout | None], fact: bool = False
    ) -> Rollout | None:
        """Write `change(state)` fenced by the lease. A decision (not `fact`) is dropped when
        the rollout changed since it was read (a pause, an abort): the next tick decides
        again. A fact (a version committed) is recorded whatever happened meanwhile."""

        def apply(fresh: Rollout | None) -> Rollout | None:
            if fresh is None or (not fact and fresh.revision != seen.revision):
                return None
            changed = change(fresh)
            return None if changed is None else replace(changed, driver=self.holder)

        return await asyncio.to_thread(self.rollouts.update, seen.route, apply, self.holder)

    async def _drift(self, r: Rollout, current: Version) -> None:
        shares = served_now(current.table, r.route)
        version = current.info.version
        changed = await self._save(r, lambda x: drifted(x, self.clock(), shares, version))
        if changed is not None:
            log.warning("rollout of %s: %s", r.route, changed.message)

    async def _adopt(self, r: Rollout, current: Version) -> None:
        """The route already has the step being committed: a driver committed it and stopped
        before recording it. Recorded now, from that version (its bake starts now)."""
        weight = 100 if r.promote else r.steps[r.step]
        baseline = shadow_counts(await self._shadow_total(r, current.table))
        version = current.info.version
        log.info("rollout of %s: version %s already has %s%%", r.route, version, weight)
        done = await self._save(r, lambda x: stepped(x, weight, version, self.clock(), baseline))
        if done is not None and done.state == "succeeded":
            await self._notify("post-rollout", done)

    async def _refusals(self, kind: str, r: Rollout) -> list[HookAnswer]:
        """The webhooks of `kind` that refuse (each was asked, in order)."""
        return [answer for answer in await self.webhooks.call(kind, r) if not answer.ok]

    async def _wait(self, r: Rollout, why: str, state: str | None = None) -> None:
        """`r` waits (a webhook refused): recorded, and logged, when the reason changes."""
        changed = await self._save(r, lambda x: waiting(x, self.clock(), why, state))
        if changed is not None and changed.message == why:
            log.info("rollout of %s: %s", r.route, why)

    async def _notify(self, kind: str, r: Rollout) -> None:
        """Notices (post-rollout, rollback): their answers go into the history."""
        answers = await self.webhooks.call(kind, r)
        if answers:
            message = "; ".join(a.describe() for a in answers)
            if any(not a.ok for a in answers):
                log.warning("rollout of %s: %s", r.route, message)
            await self._save(r, lambda x: remarked(x, self.clock(), kind, message), fact=True)

    async def _start(self, r: Rollout, current: Version) -> None:
        refused = await self._refusals("pre-rollout", r)
        if refused:
            why = f"not started: {refused[0].describe()}; the route was not changed"
            done = await self._save(r, lambda x: failed(x, self.clock(), why))
            if done is not None:
                await self._notify("post-rollout", done)
            return
        message = f"driven by {self.holder}"
        await self._save(
            r, lambda x: noted(x, self.clock(), "driving", message, state="progressing")
        )

    async def _step(self, r: Rollout, current: Version) -> None:
        refused = await self._refusals("rollout", r)
        if refused:
            await self._wait(r, f"{r.label()} waits: {refused[0].describe()}")
            return
        await self._commit(r, current, r.steps[r.step])

    async def _promote(self, r: Rollout, current: Version) -> None:
        for kind in ("rollout", "confirm-promotion"):
            refused = await self._refusals(kind, r)
            if refused:
                await self._wait(
                    r, f"promotion waits: {refused[0].describe()}", "waiting-promotion"
                )
                return
        if r.promote:
            r = replace(r, step=len(r.steps) - 1)
        await self._commit(r, current, 100)

    async def _commit(self, r: Rollout, current: Version, weight: int) -> None:
        """Commit step `r.step` at `weight` % through the gates; a refusal rolls back (or fails
        a rollout that has moved nothing yet). A rollout paused, aborted or otherwise changed
        while its webhooks were asked is not moved: the next tick decides again."""
        from proxy.table.edit import flip
        from proxy.table.gates import GateClosed, commit_through_gates

        fresh = await asyncio.to_thread(self.rollouts.get, r.route)
        if fresh is None or fresh.revision != r.revision:
            return

        what = f"{r.label()}: {weight}% to {r.to}"
        asked: list[Any] = []
        try:
            text = flip(current.text, r.route, **step_action(r.source, r.to, weight))
            committed = await asyncio.to_thread(
                commit_through_gates,
                self.routes,
                text,
                before=current.table,
                author=AUTHOR,
                reason=f"rollout {r.route} {what} ({r.reason})",
                expected_version=current.info.version,
                asked=asked,
            )
        except VersionConflict:
            return  # another change landed: the next tick looks again (and sees any drift)
        except (GateClosed, TableInvalid, KeyError) as exc:
            await self._refused(r, _refusal(what, exc))
            return
        except StoreError as exc:
            if exc.status >= 500:
                raise  # the store is down: the next tick tries again
            await self._refused(r, _refusal(what, exc))
            return
        baseline = shadow_counts(await self._shadow_total(r, committed.table))
        version = committed.info.version
        await self._recorded(version, r.route, asked)
        done = await self._save(
            r, lambda x: stepped(x, weight, version, self.clock(), baseline), fact=True
        )
        log.info("rollout of %s: %s (version %s)", r.route, what, version)
        if done is not None and done.state == "succeeded":
            await self._notify("post-rollout", done)

    async def _recorded(self, version: int, route: str, gates: list[Any] | None = None) -> None:
        if self.record is None:
            return
        try:
            await self.record(version, route, gates or [])
        except Exception:  # the ledger's evidence is a record: the rollout goes on without it
            log.warning(
                "rollout of %s: version %s's evidence not kept", route, version, exc_info=True
            )

    async def _refused(self, r: Rollout, why: str) -> None:
        if r.served == original_shares(r):  # nothing moved yet: there is nothing to roll back
            done = await self._save(r, lambda x: failed(x, self.clock(), why))
            if done is not None:
                await self._notify("post-rollout", done)
            return
        marked = await self._save(r, lambda x: rolling_back(x, self.clock(), why))
        if marked is not None:
            await self._rollback(marked, await asyncio.to_thread(self.routes.current))

    async def _rollback(self, r: Rollout, current: Version) -> None:
        """Put the route back as it was when the rollout started, past any gate."""
        verb = "aborted" if r.end == "aborted" else "rolled back"
        served = served_now(current.table, r.route)
        version: int | None = None
        if served is None:
            message = f"{verb}: {r.message}; the route is no longer in the table"
        elif served == original_shares(r):
            message = f"{verb}: {r.message} (the route already was as before)"
        else:
            at = f" at {r.label()}" if r.end == "aborted" else ""
            reason = f"rollout {r.route} {verb}{at}: {r.message} ({r.reason})"
            try:
                version, overridden = await self._restore(r, current, reason)
            except VersionConflict:
                return  # another change landed first: the next tick rolls back from it
            except (TableInvalid, KeyError) as exc:
                await self._stuck(r, served, exc)
                return
            await self._recorded(version, r.route)
            message = f"{verb}: {r.message}{overridden}"
        log.warning("rollout of %s %s", r.route, message)
        ended = await self._save(
            r, lambda x: rolled_back(x, self.clock(), version, message), fact=True
        )
        if ended is not None:
            await self._notify("rollback", ended)
            await self._notify("post-rollout", ended)

    async def _stuck(self, r: Rollout, served: dict[str, int], exc: Exception) -> None:
        """The route cannot be put back as it was (the table changed under it: an upstream it
        had is gone): the rollout ends failed, saying so, rather than try for ever."""
        why = _refusal("putting it back", exc)
        shares = ", ".join(f"{name} {weight}%" for name, weight in served.items())
        message = f"{r.message}; {why}: it still serves {shares}; move it by hand"
        log.error("rollout of %s: %s", r.route, message)
        done = await self._save(r, lambda x: failed(x, self.clock(), message), fact=True)
        if done is not None:
            await self._notify("rollback", done)
            await self._notify("post-rollout", done)

    async def _restore(self, r: Rollout, current: Version, reason: str) -> tuple[int, str]:
        """Commit the route as it was; a gate that refuses is overridden (and said so)."""
        from proxy.table.edit import flip
        from proxy.table.gates import GateClosed, commit_through_gates

        text = flip(current.text, r.route, **r.original)

        def commit(force: bool) -> Version:
            return commit_through_gates(
                self.routes,
                text,
                before=current.table,
                author=AUTHOR,
                reason=reason,
                expected_version=current.info.version,
                force=force,
            )

        try:
            return (await asyncio.to_thread(commit, False)).info.version, ""
        except GateClosed as exc:
            said = "; ".join(a.describe() for a in exc.answers)
            done = await asyncio.to_thread(commit, True)
            return done.info.version, f" (gates overridden: {said})"

    # --- analyses -------------------------------------------------------------------------------
    async def _analyse_final(self, r: Rollout, current: Version) -> None:
        await self._judge(r, current, final=True)

    async def _analyse_during(self, r: Rollout, current: Version) -> None:
        await self._judge(r, current, final=False)

    async def _judge(self, r: Rollout, current: Version, final: bool) -> None:
        try:
            analysis, shadow = await self.analysis(r, current)
        except StoreError as exc:  # the sink is down: the analysis waits for it
            await self._wait(r, f"no evidence: {exc}; the analysis waits")
            return
        counts = shadow_counts(shadow) if shadow is not None else None
        judged = await self._save(r, lambda x: analysed(x, analysis, self.clock(), final, counts))
        if judged is not None and judged.state == "rolling-back":
            log.warning("rollout of %s: %s", r.route, judged.message)
            await self._rollback(judged, await asyncio.to_thread(self.routes.current))

    async def analysis(
        self, r: Rollout, current: Version
    ) -> tuple[Analysis, dict[str, Any] | None]:
        """The analysis of `r`'s step now, and the shadow's counts so far (None: not shadowed)."""
        rules = r.plan.analysis
        since = (r.step_started or self.clock()) + rules.settle
        arms = await self.evidence.arms(r.route, since)
        shadow = await self._shadow_total(r, current.table)
        window = shadow_window(shadow, r.shadow_baseline) if shadow is not None else None
        before = await self._table(r.start_version, current)
        answers = await asyncio.to_thread(self.evidence.gates, before, current.table)
        mine = [a for a in answers if getattr(a, "upstream", r.to) == r.to]
        return analyse(rules, arms, r.source, r.to, window, mine), shadow

    async def _shadow_total(self, r: Rollout, table: RouteTable) -> dict[str, Any] | None:
        """The shadow's counts if the route is shadowed (an empty count when none yet)."""
        route = next((x for x in table.routes if x.name == r.route), None)
        if route is None or route.shadow is None:
            return None
        try:
            return await self.evidence.shadow(r.route) or {"compared": 0, "differed": 0}
        except StoreError:
            return {"compared": 0, "differed": 0}

    async def _table(self, number: int, current: Version) -> RouteTable:
        """Version `number`'s table (the rollout's start), kept once read."""
        if number not in self._tables:
            try:
                self._tables[number] = (await asyncio.to_thread(self.routes.get, number)).table
            except StoreError:
                return current.table
        return self._tables[number]


def _refusal(what: str, exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"{what} refused: the route is no longer in the table"
    if isinstance(exc, TableInvalid):
        return f"{what} refused: the table would be invalid: {exc.describe()}"
    return f"{what} refused: {exc}"
