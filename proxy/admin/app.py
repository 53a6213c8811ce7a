"""The admin API: read and change the served route table over HTTP, and what a running proxy
reports. One FastAPI app assembled from one router per noun:

    admin/routes.py      /api/v1/routes…, /api/v1/ledger  the route table, through the control
                                                           plane (proxy/control/)
    admin/shadow.py      /api/v1/shadow                   what shadowed services answered
    admin/consumers.py   /api/v1/consumers…               who may call, with which credentials
    admin/stats.py       /api/v1/stats                    per-arm numbers over a window
    admin/rollout.py     /api/v1/rollouts…                automated rollouts and their analysis
    admin/dashboard.py   /dashboard (and / redirecting)   the page a person reads all of it on

and admin/problems.py, how every refusal is answered (application/problem+json) and who may
write (the bearer token). The admin app only runs on the admin listener, never on a data-plane
one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI

from proxy.admin.dashboard import dashboard_router
from proxy.admin.problems import install_handlers, user_data_reader, writer
from proxy.admin.routes import routes_router
from proxy.admin.shadow import shadow_router
from proxy.admin.stats import stats_router
from proxy.control.local import LocalControl
from proxy.store.base import RouteStore

if TYPE_CHECKING:
    from proxy.rollout.control import Rollouts
    from proxy.runtime import Runtime
    from proxy.store.consumers import ConsumerStore

# The consumers router's checks, under the names it was first given.
_writer, _user_data_reader = writer, user_data_reader


def create_admin_app(
    store: RouteStore,
    token: str | None,
    runtime: Runtime | None = None,
    consumers: Callable[[], ConsumerStore] | None = None,
    rollouts: Callable[[], Rollouts] | None = None,
) -> FastAPI:
    """The admin app over `store`. With no token, writes are refused (reads stay open: the
    listener is loopback by default). With the proxy's `runtime`, it also reports what this
    replica serves and the traffic each route had lately; with a `consumers` store, it manages
    consumers and their credentials too (admin/consumers.py)."""
    app = FastAPI(
        title="strangler admin",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.token = token
    install_handlers(app)
    control = LocalControl(store, on_commit=None if runtime is None else runtime.record_commit)
    app.include_router(routes_router(control, runtime))
    app.include_router(shadow_router(runtime))
    if runtime is not None:
        app.include_router(stats_router(runtime))
    app.include_router(dashboard_router())
    if consumers is not None:
        from proxy.admin.consumers import consumers_router

        app.include_router(consumers_router(consumers, writer, user_data_reader))
    if rollouts is not None:
        from proxy.admin.rollout import rollout_router

        app.include_router(rollout_router(rollouts, writer))
    return app
