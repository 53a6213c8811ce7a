"""The admin API: read and change the served route table over HTTP.

    GET  /api/v1/routes                   current table (text, parsed, version info); ETag
    GET  /api/v1/routes/status            per route: state, upstreams, recent traffic
    GET  /api/v1/routes/history           versions, newest first
    GET  /api/v1/routes/versions/{n}      one version
    GET  /api/v1/routes/diff?from=&to=    what changed between two versions
    POST /api/v1/routes/diff              a YAML table: what would change from the current one,
                                          and what the cutover gates answer (nothing committed)
    PUT  /api/v1/routes                   replace the table (If-Match: "N" required)
    POST /api/v1/routes/flip              {route, to | split, reason}
    POST /api/v1/routes/rollback          {version, reason}
    GET  /api/v1/ledger?route=            per route: its state, since when, its transitions

Writes need `Authorization: Bearer <token>` (compared in constant time) and a reason; a write
based on a stale version is 409, an invalid table 422 listing every problem with its line, a
closed gate 409 with every gate's answer (`gates`). Each write has a dry run on a path of its own
(`PUT /api/v1/routes/dry-run`, `POST .../flip/dry-run`, `.../rollback/dry-run`: a proxy without
them answers 404 rather than committing): the same write, stopped before the commit, answering
the version it would get, its changes and the gates' answers (409 when a gate would refuse it).
POST /api/v1/routes/diff needs the token too: it makes the proxy ask the gate URLs it is sent.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy.admin.status import route_status, upstream_health
from proxy.errors import PROBLEM_TYPE
from proxy.shadow.report import Tally, merge_snapshots, summarise
from proxy.store.base import RouteStore, StoreError, Version
from proxy.store.ledger import ledger_of
from proxy.table.diff import diff_tables
from proxy.table.edit import flip
from proxy.table.gates import GateClosed, Preview, commit_through_gates
from proxy.table.loader import TableInvalid

if TYPE_CHECKING:
    from proxy.runtime import Runtime
    from proxy.store.consumers import ConsumerStore


class AdminError(Exception):
    def __init__(self, status: int, kind: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.extra = status, kind, detail, extra


def _problem(status: int, kind: str, detail: str, **extra: Any) -> JSONResponse:
    body = {
        "type": PROBLEM_TYPE + kind,
        "title": kind.replace("-", " "),
        "status": status,
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


YamlBody = Annotated[str, Body(media_type="application/yaml")]
Reason = Annotated[str, Query(min_length=1, max_length=500)]
Force = Annotated[bool, Query(description="Commit even if a cutover gate is closed.")]


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


def _problem_lines(exc: TableInvalid) -> list[dict[str, Any]]:
    return [
        {"line": p.line, "field": p.where(), "message": p.message}
        for p in sorted(exc.problems, key=lambda p: p.line or 0)
    ]


def _check_token(token: str, authorization: str | None) -> None:
    """The bearer token given must be the admin token (constant-time compare)."""
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise AdminError(401, "unauthorized", "a valid bearer token is required")


def _writer(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    author: Annotated[str | None, Header(alias="X-Author")] = None,
) -> str:
    """The author of a write, once its bearer token checked out."""
    token: str | None = request.app.state.token
    if token is None:
        raise AdminError(403, "writes-disabled", "no admin token is configured: read only")
    _check_token(token, authorization)
    return author or "admin-api"


Writer = Annotated[str, Depends(_writer)]


def _user_data_reader(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> None:
    """Reads that show users' data (shadow example pairs) need the token when one is set; a
    proxy without one keeps its admin listener on loopback."""
    token: str | None = request.app.state.token
    if token is not None:
        _check_token(token, authorization)


UserDataReader = Annotated[None, Depends(_user_data_reader)]


def _version(version: Version) -> dict[str, Any]:
    return {
        **version.info.as_dict(),
        "text": version.text,
        "table": version.table.model_dump(mode="json", exclude_defaults=True),
    }


def create_admin_app(
    store: RouteStore,
    token: str | None,
    runtime: Runtime | None = None,
    consumers: Callable[[], ConsumerStore] | None = None,
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

    def commit(
        text: str,
        author: str,
        reason: str,
        expected: int,
        force: bool = False,
        dry_run: bool = False,
        refuse: bool = True,
    ) -> dict[str, Any]:
        """Commit `text` (or, `dry_run`, say what would be committed: a gate's refusal is a
        409 unless not `refuse`)."""
        before = store.current()
        try:
            after = commit_through_gates(
                store,
                text,
                before=before.table,
                author=author,
                reason=reason,
                expected_version=expected,
                force=force,
                dry_run=dry_run,
            )
        except TableInvalid as exc:
            raise AdminError(
                422,
                "invalid-table",
                "the table is invalid; nothing changed",
                problems=_problem_lines(exc),
            ) from None
        except GateClosed as exc:
            raise AdminError(
                409, "gate-closed", str(exc), gates=[a.as_dict() for a in exc.answers]
            ) from None
        if isinstance(after, Preview):
            report = after.as_dict(before.table)
            if after.refusal is not None and refuse:
                raise AdminError(409, "gate-closed", after.refusal, **report)
            return report
        changes = diff_tables(before.table, after.table)
        return {**_version(after), "changes": [c.as_dict() for c in changes]}

    @app.exception_handler(AdminError)
    async def on_admin_error(_: Request, exc: AdminError) -> JSONResponse:
        return _problem(exc.status, exc.kind, exc.detail, **exc.extra)

    @app.exception_handler(StoreError)
    async def on_store_error(_: Request, exc: StoreError) -> JSONResponse:
        response = _problem(exc.status, exc.kind, str(exc))
        if exc.status == 503:
            response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(TableInvalid)
    async def on_stored_table_invalid(_: Request, exc: TableInvalid) -> JSONResponse:
        # A stored version this proxy cannot load (written by a newer control plane?); a
        # table sent by the client is caught in commit() and answered 422.
        return _problem(
            500,
            "stored-table-invalid",
            "a stored version does not load here",
            problems=_problem_lines(exc),
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _problem(
            exc.status_code,
            "not-found" if exc.status_code == 404 else "bad-request",
            str(exc.detail),
        )

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem(
            422,
            "validation-failed",
            "the request is invalid",
            errors=[
                {"location": ".".join(map(str, e["loc"])), "message": e["msg"]}
                for e in exc.errors()
            ],
        )

    @app.get("/api/v1/routes")
    def current() -> JSONResponse:
        version = store.current()
        return JSONResponse(_version(version), headers={"ETag": f'"{version.info.version}"'})

    @app.get("/api/v1/routes/status")
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

    @app.get("/api/v1/shadow")
    async def shadow_report(
        _: UserDataReader,
        route: Annotated[str | None, Query(description="One route only.")] = None,
        top: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> list[dict[str, Any]]:
        """Per shadowed route, every worker and replica together: copies compared, the share
        that differed (noise fields left out), the top differing fields with an example pair
        each, the noise fields, failed and dropped copies (`strangler shadow report`). The
        examples are users' data: with a token set, reading them needs it."""
        if runtime is None:
            raise AdminError(404, "not-found", "shadow reports are only served by a running proxy")
        merged = merge_snapshots(await runtime.sink.tallies())
        names = [route] if route is not None else sorted(merged)
        return [summarise(name, merged.get(name) or Tally(), top) for name in names]

    @app.delete("/api/v1/shadow", status_code=204)
    async def shadow_reset(
        author: Writer,
        route: Annotated[str | None, Query(description="One route only.")] = None,
    ) -> Response:
        """Start the shadow numbers again (after a fix in the service), for one route or all."""
        if runtime is None:
            raise AdminError(404, "not-found", "shadow reports are only served by a running proxy")
        await runtime.sink.clear_tallies(route)
        return Response(status_code=204)

    @app.get("/api/v1/routes/history")
    def history(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        return [info.as_dict() for info in store.history(limit)]

    @app.get("/api/v1/ledger")
    def ledger(
        route: Annotated[str | None, Query(description="One route only.")] = None,
    ) -> dict[str, Any]:
        """The migration ledger, from the table's history (`strangler ledger`): per route that
        ever existed, its state (legacy, shadowed, canary N %, moved, static, retired), since
        which version, and each version that changed it (who, when, why); the versions whose
        table no longer loads are listed apart."""
        found = ledger_of(store)
        if route is not None:
            if found.route(route) is None:
                raise AdminError(404, "unknown-route", f"no route {route!r} in the history")
            found = found.only(route)
        return found.as_dict()

    @app.get("/api/v1/routes/versions/{number}")
    def one(number: int) -> dict[str, Any]:
        return _version(store.get(number))

    @app.get("/api/v1/routes/diff")
    def diff(
        from_: Annotated[int, Query(alias="from", ge=1)],
        to: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        before = store.get(from_)
        after = store.current() if to is None else store.get(to)
        return {
            "from": from_,
            "to": after.info.version,
            "changes": [c.as_dict() for c in diff_tables(before.table, after.table)],
        }

    @app.post("/api/v1/routes/diff")
    def diff_with(
        author: Writer, text: Annotated[str, Body(media_type="application/yaml")]
    ) -> dict[str, Any]:
        """What replacing the current table with this one would change, and what the gates
        answer: `PUT /api/v1/routes/dry-run` answered whatever the gates say (an invalid
        table is a 422). Nothing is committed."""
        current = store.current()
        report = commit(text, author, "diff", current.info.version, dry_run=True, refuse=False)
        return {"from": current.info.version, "valid": True, **report}

    def replace(
        author: str, text: str, reason: str, if_match: str | None, force: bool, dry_run: bool
    ) -> dict[str, Any]:
        if not if_match or not if_match.strip('"').isdigit():
            raise AdminError(
                428,
                "precondition-required",
                'If-Match: "N" names the version this change is based on',
            )
        return commit(text, author, reason, int(if_match.strip('"')), force, dry_run)

    def flip_route(author: str, body: FlipIn, dry_run: bool) -> dict[str, Any]:
        if (body.to is None) == (body.split is None):
            raise AdminError(422, "validation-failed", "give exactly one of `to` and `split`")
        current = store.current()
        try:
            text = flip(current.text, body.route, to=body.to, split=body.split, sticky=body.sticky)
        except KeyError:
            raise AdminError(404, "unknown-route", f"no route {body.route!r}") from None
        return commit(text, author, body.reason, current.info.version, body.force, dry_run)

    def rollback(author: str, body: RollbackIn, dry_run: bool) -> dict[str, Any]:
        old = store.get(body.version)
        current = store.current()
        reason = f"rollback to version {body.version}: {body.reason}"
        return commit(old.text, author, reason, current.info.version, body.force, dry_run)

    # Each write, and its dry run on a path of its own: a proxy that has no dry run answers
    # 404 there instead of committing (a flag it did not know would be ignored).

    @app.put("/api/v1/routes")
    def put_table(
        author: Writer,
        text: YamlBody,
        reason: Reason,
        if_match: Annotated[str | None, Header()] = None,
        force: Force = False,
    ) -> dict[str, Any]:
        return replace(author, text, reason, if_match, force, False)

    @app.put("/api/v1/routes/dry-run")
    def put_table_dry_run(
        author: Writer,
        text: YamlBody,
        reason: Reason,
        if_match: Annotated[str | None, Header()] = None,
        force: Force = False,
    ) -> dict[str, Any]:
        """What the same PUT would commit, and what the gates answer: nothing committed."""
        return replace(author, text, reason, if_match, force, True)

    @app.post("/api/v1/routes/flip")
    def flip_write(author: Writer, body: FlipIn) -> dict[str, Any]:
        return flip_route(author, body, False)

    @app.post("/api/v1/routes/flip/dry-run")
    def flip_dry_run(author: Writer, body: FlipIn) -> dict[str, Any]:
        """What the same flip would commit: nothing committed."""
        return flip_route(author, body, True)

    @app.post("/api/v1/routes/rollback")
    def rollback_write(author: Writer, body: RollbackIn) -> dict[str, Any]:
        return rollback(author, body, False)

    @app.post("/api/v1/routes/rollback/dry-run")
    def rollback_dry_run(author: Writer, body: RollbackIn) -> dict[str, Any]:
        """What the same rollback would commit: nothing committed."""
        return rollback(author, body, True)

    if consumers is not None:
        from proxy.admin.consumers import consumers_router

        app.include_router(consumers_router(consumers, _writer, _user_data_reader))
    return app
