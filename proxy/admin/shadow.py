"""The admin API's shadow report (`strangler shadow report` over HTTP):

    GET    /api/v1/shadow?route=&top=     per shadowed route, every worker and replica
                                          together: copies compared, the share that differed,
                                          the top differing fields with an example pair each
    DELETE /api/v1/shadow?route=          start the numbers again (token)

The examples are users' data: with a token set, reading them needs it. Only a running proxy has
them (404 otherwise).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from proxy.admin.problems import AdminError, UserDataReader, Writer
from proxy.shadow.report import Tally, merge_snapshots, summarise

if TYPE_CHECKING:
    from proxy.runtime import Runtime

Route = Annotated[str | None, Query(description="One route only.")]


def shadow_router(runtime: Runtime | None) -> APIRouter:
    router = APIRouter(tags=["shadow"])

    def running() -> Runtime:
        if runtime is None:
            raise AdminError(404, "not-found", "shadow reports are only served by a running proxy")
        return runtime

    @router.get("/api/v1/shadow")
    async def shadow_report(
        _: UserDataReader,
        route: Route = None,
        top: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> list[dict[str, Any]]:
        """Per shadowed route, every worker and replica together: copies compared, the share
        that differed (noise fields left out), the top differing fields with an example pair
        each, the noise fields, failed and dropped copies (`strangler shadow report`). The
        examples are users' data: with a token set, reading them needs it."""
        merged = merge_snapshots(await running().sink.tallies())
        names = [route] if route is not None else sorted(merged)
        return [summarise(name, merged.get(name) or Tally(), top) for name in names]

    @router.delete("/api/v1/shadow", status_code=204)
    async def shadow_reset(author: Writer, route: Route = None) -> Response:
        """Start the shadow numbers again (after a fix in the service), for one route or all."""
        await running().sink.clear_tallies(route)
        return Response(status_code=204)

    return router
