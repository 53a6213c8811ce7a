"""The admin API's rollouts: start one, follow it, pause, resume, promote or abort it.

    GET  /api/v1/rollouts                    every rollout (the running and the last of each
                                             route)
    GET  /api/v1/rollouts/{route}            one (404 unknown-rollout)
    POST /api/v1/rollouts                    start {route, reason, to?, steps?, bake?,
                                             webhooks?, any threshold?, author?}: 201
    POST /api/v1/rollouts/{route}/pause      {reason, author?}
    POST /api/v1/rollouts/{route}/resume     {reason, author?}
    POST /api/v1/rollouts/{route}/promote    {reason, author?}: 100 % at the driver's next tick
    POST /api/v1/rollouts/{route}/abort      {reason, author?}: the route back as it was

The start's fields override the route's `rollout:` block (table/rollout.py); unknown fields
are refused, never ignored. Writes need the admin token (`check_writer`). Refusals are the
rollout operations' errors (rollout/model.py), answered as problem+json by the admin app: 404
unknown route or rollout, 409 a rollout already running or one that cannot do what was asked,
422 an invalid plan, 503 a store that cannot be reached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from proxy.rollout.control import Rollouts

Reason = Annotated[str, Field(min_length=1, max_length=500)]
AuthorIn = Annotated[str | None, Field(min_length=1, max_length=200)]


class WebhookIn(BaseModel):
    kind: str
    url: str
    timeout: float | str | None = None
    model_config = ConfigDict(extra="forbid")


class StartIn(BaseModel):
    route: str = Field(min_length=1, max_length=64)
    reason: Reason
    author: AuthorIn = None
    to: str | None = None
    steps: list[int] | None = None
    bake: float | str | None = Field(None, description="Seconds, or '2m', '30s'.")
    webhooks: list[WebhookIn] | None = None
    max_error_rate_delta: float | None = None
    max_p95_ratio: float | None = None
    max_p99_ratio: float | None = None
    max_shadow_mismatch: float | None = None
    min_requests: int | None = None
    threshold: int | None = None
    quiet_limit: int | None = None
    interval: float | str | None = None
    settle: float | str | None = None
    latency_floor: float | str | None = None
    model_config = ConfigDict(extra="forbid")

    def overrides(self) -> dict[str, Any]:
        """What this start puts over the route's `rollout:` block."""
        given = self.model_dump(exclude={"route", "reason", "author"}, exclude_none=True)
        if self.webhooks is not None:
            given["webhooks"] = [h.model_dump(exclude_none=True) for h in self.webhooks]
        return given


class ActionIn(BaseModel):
    reason: Reason
    author: AuthorIn = None
    model_config = ConfigDict(extra="forbid")


def rollout_router(
    rollouts_factory: Callable[[], Rollouts],
    check_writer: Callable[..., str],
    check_reader: Callable[..., None] | None = None,
) -> APIRouter:
    """The rollout endpoints over the operations `rollouts_factory` makes (called once, at the
    first request); `check_writer` is the admin app's dependency that checks a write's bearer
    token and answers its author, `check_reader` one every request passes (none: reads are
    open, as the route table's are)."""
    router = APIRouter(
        prefix="/api/v1/rollouts",
        tags=["rollouts"],
        dependencies=[Depends(check_reader)] if check_reader is not None else [],
    )
    writer_of = Depends(check_writer)
    opened: list[Rollouts] = []

    def operations() -> Rollouts:
        if not opened:
            opened.append(rollouts_factory())
        return opened[0]

    @router.get("")
    def listing() -> list[dict[str, Any]]:
        return [rollout.as_dict() for rollout in operations().all()]

    @router.get("/{route}")
    def one(route: str) -> dict[str, Any]:
        return operations().get(route).as_dict()

    @router.post("", status_code=201)
    def start(body: StartIn, writer: str = writer_of) -> JSONResponse:
        """Start a rollout; a proxy's driver moves the route from its next tick."""
        started = operations().start(
            body.route, body.overrides(), reason=body.reason, author=body.author or writer
        )
        return JSONResponse(started.as_dict(), status_code=201)

    @router.post("/{route}/pause")
    def pause(route: str, body: ActionIn, writer: str = writer_of) -> dict[str, Any]:
        """Stop the rollout's clock: no step and no analysis until resumed."""
        return operations().pause(route, reason=body.reason, author=body.author or writer).as_dict()

    @router.post("/{route}/resume")
    def resume(route: str, body: ActionIn, writer: str = writer_of) -> dict[str, Any]:
        """Start the clock again where it stopped (after a manual change: the step again)."""
        done = operations().resume(route, reason=body.reason, author=body.author or writer)
        return done.as_dict()

    @router.post("/{route}/promote")
    def promote(route: str, body: ActionIn, writer: str = writer_of) -> dict[str, Any]:
        """100 % at the driver's next tick, once the confirm-promotion webhooks agree."""
        done = operations().promote(route, reason=body.reason, author=body.author or writer)
        return done.as_dict()

    @router.post("/{route}/abort")
    def abort(route: str, body: ActionIn, writer: str = writer_of) -> dict[str, Any]:
        """Put the route back as it was before the rollout (by the driver's next tick)."""
        return operations().abort(route, reason=body.reason, author=body.author or writer).as_dict()

    return router
