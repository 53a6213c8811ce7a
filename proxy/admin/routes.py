"""The admin API's route table: read it, change it through the control plane, and the migration
ledger its history tells.

    GET  /api/v1/routes                   current table (text, parsed, version info); ETag
    GET  /api/v1/routes/status            per route: state, upstreams, recent traffic
    GET  /api/v1/routes/history           versions, newest first
    GET  /api/v1/routes/versions/{n}      one version
    GET  /api/v1/routes/diff?from=&to=    what changed between two versions
    POST /api/v1/routes/diff              a YAML table: what would change from the current one,
                                          and what the cutover gates answer (nothing committed)
    PUT  /api/v1/routes                   replace the table (If-Match: "N" required)
    POST /api/v1/routes/flip              {route, to | split, sticky?, reason, force?}
    POST /api/v1/routes/rollback          {version, reason, force?}
    GET  /api/v1/ledger?route=            per route: its state, since when, its transitions

Every operation is the control plane's (proxy/control/, LocalControl on the proxy's store),
which the CLI runs too; its refusals are answered as problems (admin/problems.py): a write based
on a stale version is 409, an invalid table 422 listing every problem with its line, a closed
gate 409 with every gate's answer (`gates`), an unknown route or version 404. Writes need the
token, a reason and, to replace the table, `If-Match: "N"` (428 without: the HTTP precondition,
RFC 6585). Each write has a dry run on a path of its own (`PUT /api/v1/routes/dry-run`,
`POST .../flip/dry-run`, `.../rollback/dry-run`: a proxy without them answers 404 rather than
committing): the same write, stopped before the commit, answering the version it would get, its
changes and the gates' answers (409 with all of that when a gate would refuse it). POST
/api/v1/routes/diff needs the token too: it makes the proxy ask the gate URLs it is sent.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from proxy.admin.problems import AdminError, Writer
from proxy.admin.status import route_status, upstream_health
from proxy.control import Outcome
from proxy.control.local import LocalControl
from proxy.shadow.sink import SinkError
from proxy.store.base import StoreError
from proxy.store.ledger import ledger_of, read_ledger

if TYPE_CHECKING:
    from proxy.runtime import Runtime

YamlBody = Annotated[str, Body(media_type="application/yaml")]
Reason = Annotated[str, Query(min_length=1, max_length=500)]
Force = Annotated[bool, Query(description="Commit even if a cutover gate is closed.")]
IfMatch = Annotated[str | None, Header(description='"N": the version this change is based on.')]


class FlipIn(BaseModel):
    route: str
    to: str | None = None
    split: dict[str, int] | None = None
    sticky: str | None = Field(
        None, description="Set the route's sticky key (header:NAME, cookie:NAME, client-ip)."
    )
    reason: str = Field(min_length=1, max_length=500)
    force: bool = Field(False, description="Commit even if a cutover gate is closed.")
    # An unknown field is refused, never ignored: a flag this proxy does not know (a newer
    # client's) must not turn into a plain write.
    model_config = ConfigDict(extra="forbid")


class RollbackIn(BaseModel):
    version: int = Field(ge=1)
    reason: str = Field(min_length=1, max_length=500)
    force: bool = Field(False, description="Commit even if a cutover gate is closed.")
    model_config = ConfigDict(extra="forbid")


def _expected(if_match: str | None) -> int:
    if not if_match or not if_match.strip('"').isdigit():
        raise AdminError(
            428, "precondition-required", 'If-Match: "N" names the version this change is based on'
        )
    return int(if_match.strip('"'))


def _answer(outcome: Outcome) -> dict[str, Any]:
    """A write's answer; a dry run a gate would refuse is a 409 saying all the same."""
    report = outcome.as_dict()
    if outcome.refusal is not None:
        raise AdminError(409, "gate-closed", outcome.refusal, **report)
    return report


def routes_router(control: LocalControl, runtime: Runtime | None = None) -> APIRouter:
    """The route table's endpoints over `control`; with the proxy's `runtime`, what this
    replica serves too (/api/v1/routes/status)."""
    router = APIRouter(tags=["routes"])
    store = control.store

    @router.get("/api/v1/routes")
    def current() -> JSONResponse:
        found = control.get()
        return JSONResponse(found.as_dict(), headers={"ETag": f'"{found.info.version}"'})

    @router.get("/api/v1/routes/status")
    def status() -> dict[str, Any]:
        """Per route: its state (legacy, canary, moved, split), upstreams and weights, and the
        last five minutes' traffic; plus the version this replica serves and the store's."""
        if runtime is None:
            raise AdminError(404, "not-found", "route status is only served by a running proxy")
        snapshot = runtime.snapshot
        health = upstream_health(
            snapshot, runtime.metrics.upstream_states(), runtime.guards.states()
        )
        out = route_status(snapshot, runtime.traffic, health)
        try:
            out["store_version"] = store.current().info.version
        except StoreError as exc:
            out["store_version"], out["store_error"] = None, str(exc)
        out["in_sync"] = out["store_version"] == out["served_version"]
        return out

    @router.get("/api/v1/routes/history")
    def history(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        return [info.as_dict() for info in control.history(limit)]

    @router.get("/api/v1/ledger")
    async def ledger(
        route: Annotated[str | None, Query(description="One route only.")] = None,
    ) -> dict[str, Any]:
        """The migration ledger, from the table's history (`strangler ledger`): per route that
        ever existed, its state (legacy, shadowed, canary N %, moved, static, retired), since
        which version, and each version that changed it (who, when, why, and the evidence it
        was decided on); the versions whose table no longer loads are listed apart; and what
        the default upstream still serves (`legacy_paths`), ranked, every replica together."""
        found = None
        if runtime is not None:
            try:
                found = await read_ledger(
                    store, runtime.sink, worker=runtime.worker, local=runtime.arm_stats
                )
            except SinkError:  # the numbers are out of reach, not the history: it without them
                found = None
        if found is None:
            found = await asyncio.to_thread(ledger_of, store)
        if route is not None:
            if found.route(route) is None:
                raise AdminError(404, "unknown-route", f"no route {route!r} in the history")
            found = found.only(route)
        return found.as_dict()

    @router.get("/api/v1/routes/versions/{number}")
    def one(number: int) -> dict[str, Any]:
        return control.get(number).as_dict()

    @router.get("/api/v1/routes/diff")
    def diff(
        from_: Annotated[int, Query(alias="from", ge=1)],
        to: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        return control.diff(from_, to).as_dict()

    @router.post("/api/v1/routes/diff")
    def diff_with(author: Writer, text: YamlBody) -> dict[str, Any]:
        """What replacing the current table with this one would change, and what the gates
        answer: `PUT /api/v1/routes/dry-run` answered whatever the gates say (an invalid
        table is a 422). Nothing is committed."""
        return control.diff_text(text, author=author).as_dict()

    # Each write, and its dry run on a path of its own: a proxy that has no dry run answers
    # 404 there instead of committing (a flag it did not know would be ignored).

    def replace(
        author: str, text: str, reason: str, if_match: str | None, force: bool, dry_run: bool
    ) -> dict[str, Any]:
        expect = _expected(if_match)
        return _answer(
            control.set(
                text, author=author, reason=reason, expect=expect, force=force, dry_run=dry_run
            )
        )

    def flip(author: str, body: FlipIn, dry_run: bool) -> dict[str, Any]:
        return _answer(
            control.flip(
                body.route,
                author=author,
                reason=body.reason,
                to=body.to,
                split=body.split,
                sticky=body.sticky,
                force=body.force,
                dry_run=dry_run,
            )
        )

    def rollback(author: str, body: RollbackIn, dry_run: bool) -> dict[str, Any]:
        return _answer(
            control.rollback(
                body.version,
                author=author,
                reason=body.reason,
                force=body.force,
                dry_run=dry_run,
            )
        )

    @router.put("/api/v1/routes")
    def put_table(
        author: Writer,
        text: YamlBody,
        reason: Reason,
        if_match: IfMatch = None,
        force: Force = False,
    ) -> dict[str, Any]:
        return replace(author, text, reason, if_match, force, False)

    @router.put("/api/v1/routes/dry-run")
    def put_table_dry_run(
        author: Writer,
        text: YamlBody,
        reason: Reason,
        if_match: IfMatch = None,
        force: Force = False,
    ) -> dict[str, Any]:
        """What the same PUT would commit, and what the gates answer: nothing committed."""
        return replace(author, text, reason, if_match, force, True)

    @router.post("/api/v1/routes/flip")
    def flip_write(author: Writer, body: FlipIn) -> dict[str, Any]:
        return flip(author, body, False)

    @router.post("/api/v1/routes/flip/dry-run")
    def flip_dry_run(author: Writer, body: FlipIn) -> dict[str, Any]:
        """What the same flip would commit: nothing committed."""
        return flip(author, body, True)

    @router.post("/api/v1/routes/rollback")
    def rollback_write(author: Writer, body: RollbackIn) -> dict[str, Any]:
        return rollback(author, body, False)

    @router.post("/api/v1/routes/rollback/dry-run")
    def rollback_dry_run(author: Writer, body: RollbackIn) -> dict[str, Any]:
        """What the same rollback would commit: nothing committed."""
        return rollback(author, body, True)

    return router
