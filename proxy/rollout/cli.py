"""`strangler rollout`: move a route to another upstream step by step, on evidence.

    strangler rollout start ROUTE --to UPSTREAM [--steps 1,5,25,50,100] [--bake 2m]
                                  [--max-error-rate-delta 0.01] [--max-p95-ratio 1.5] ...
                                  [--webhook KIND=URL]... --reason WHY
    strangler rollout status [ROUTE] [--watch]
    strangler rollout pause | resume | promote | abort ROUTE --reason WHY [--wait]

The route's `rollout:` block in the table gives the defaults; the flags override it. Every
command works on the route store (`--routes FILE`, or the replicas' `--store redis://…` with
`--prefix`), where the rollouts are recorded beside the table, or through a running proxy's
admin API (`--admin URL`, token from STRANGLER_ADMIN_TOKEN or `--token`). Both doors run the
same operation (rollout/control.py). The commands record what is asked; the proxies' driver
moves the route (`--wait` waits until it has).

Exit codes: 0 done, 1 refused (no such route or rollout, one already running, a store or an
API that says no), 2 usage. With --json, one object on stdout (a failure is
{"ok": false, "error": {kind, message, details}}); `status --watch --json` prints one object
per change.

Like proxy/commands.py, this module imports typer and the standard library only: a command
imports the store, the admin client and the rollout model when it runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from proxy.cli_options import AdminUrl, Author, JsonFlag, RoutesFile, StorePrefix, StoreUrl
from proxy.store.base import DEFAULT_PREFIX

if TYPE_CHECKING:
    from proxy.admin.client import AdminClient
    from proxy.rollout.control import Rollouts

rollout_app = typer.Typer(
    no_args_is_help=True,
    help="Move a route to another upstream step by step, on evidence (rollback on failure).",
)

API = "/api/v1/rollouts"
FINAL = ("rolled-back", "succeeded", "aborted", "failed")  # rollout/model.py's, kept light
WATCH_EVERY = 1.0  # seconds between two looks of `status --watch` and `--wait`
WAIT_FOR = 30.0  # how long `--wait` waits for the driver

Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="STRANGLER_ADMIN_TOKEN",
        show_envvar=True,
        help="The admin API's token (prefer the environment variable to the flag).",
    ),
]
Reason = Annotated[str, typer.Option("--reason", help="Why: kept in the rollout and its versions.")]
WaitFlag = Annotated[
    bool, typer.Option("--wait", help="Wait (up to 30s) until a proxy's driver has acted.")
]


@dataclass(frozen=True)
class _Where:
    """The store or the admin API a command works on, and how it answers."""

    routes: Path
    store: str
    prefix: str
    admin: str | None
    token: str | None
    json_output: bool

    def run(
        self,
        local: Callable[[Rollouts], Any],
        remote: Callable[[AdminClient], Any],
        author: str | None = None,
    ) -> Any:
        """`local(operations)` or `remote(admin API)`; a refusal exits 1 with its reason."""
        from proxy.admin.client import AdminClient, AdminRefused
        from proxy.commands import _author, _failed
        from proxy.store.base import StoreError

        try:
            if self.admin:
                return remote(AdminClient(self.admin, _author(author), self.token))
            from proxy.rollout.control import Rollouts
            from proxy.rollout.store import open_rollouts
            from proxy.store import open_store

            store = open_rollouts(self.store, self.routes, self.prefix)
            try:
                return local(Rollouts(open_store(self.store, self.routes, self.prefix), store))
            finally:
                store.close()
        except (AdminRefused, StoreError) as exc:
            raise _failed(exc, self.json_output, command="rollout") from None

    def usage(self, message: str) -> typer.Exit:
        from proxy.commands import _fail

        return _fail(message, 2, json_output=self.json_output, kind="usage", command="rollout")

    def one(self, route: str) -> dict[str, Any]:
        found: dict[str, Any] = self.run(
            lambda ops: ops.get(route).as_dict(), lambda api: api.call("GET", _path(route))
        )
        return found

    def every(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.run(
            lambda ops: [r.as_dict() for r in ops.all()], lambda api: api.call("GET", API)
        )
        return found


def _path(route: str, *rest: str) -> str:
    from urllib.parse import quote

    return "/".join([API, quote(route, safe=""), *rest])


# --- output -----------------------------------------------------------------------------------
def _clock(at: float | None) -> str:
    return "-" if at is None else time.strftime("%H:%M:%S", time.localtime(at))


def _span(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def describe(rollout: dict[str, Any], now: float, events: int = 3) -> list[str]:
    """A rollout as `status` prints it: a headline, its last analysis, its last events."""
    steps = rollout["steps"]
    index = min(int(rollout["step"]), len(steps) - 1)
    where = f"step {index + 1}/{len(steps)}"
    head = (
        f"{rollout['route']}: {rollout['from']} → {rollout['to']}, {rollout['state']}, "
        f"{rollout['weight']}% to {rollout['to']} ({where} of {', '.join(map(str, steps))} %)"
    )
    lines = [head]
    if rollout["state"] == "baking" and rollout.get("step_started") and rollout.get("due"):
        baked = now - float(rollout["step_started"])
        total = float(rollout["due"]) - float(rollout["step_started"])
        lines.append(f"  baking {_span(baked)} of {_span(total)}")
    if rollout.get("message"):
        lines.append(f"  {rollout['message']}")
    analysis = rollout.get("last_analysis")
    if analysis:
        verdict = "passed" if analysis["passed"] else "quiet" if analysis.get("quiet") else "failed"
        lines.append(f"  last analysis at {_clock(analysis.get('time'))}: {verdict}")
        for check in analysis["checks"]:
            mark = "ok  " if check["passed"] else "FAIL"
            lines.append(f"    {mark} {check['name']}: {check['message']}")
    lines.append(
        f"  started {_clock(rollout['started'])} by {rollout['author']}: {rollout['reason']}"
        + (f"; driven by {rollout['driver']}" if rollout.get("driver") else "")
    )
    for event in rollout["history"][-events:]:
        version = f" (version {event['version']})" if event.get("version") else ""
        lines.append(f"    {_clock(event['time'])} {event['event']}{version}: {event['message']}")
    return lines


def _print(rollout: dict[str, Any], json_output: bool) -> None:
    if json_output:
        typer.echo(json.dumps(rollout))
    else:
        typer.echo("\n".join(describe(rollout, time.time())))


# --- commands ---------------------------------------------------------------------------------
def _steps(where: _Where, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise where.usage(
            f"--steps wants weights in percent, e.g. 1,5,25,50,100, not {value!r}"
        ) from None


def _webhooks(where: _Where, values: list[str]) -> list[dict[str, str]] | None:
    if not values:
        return None
    hooks = []
    for value in values:
        kind, sep, url = value.partition("=")
        if not sep or not kind or not url:
            raise where.usage(f"--webhook wants KIND=URL, not {value!r}")
        hooks.append({"kind": kind, "url": url})
    return hooks


@rollout_app.command("start")
def rollout_start(
    route: Annotated[str, typer.Argument(help="The route to move.")],
    reason: Reason,
    to: Annotated[
        str | None,
        typer.Option("--to", help="The upstream it moves to (default: the route's rollout.to)."),
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option("--steps", help="Its share at each step, in percent [1,5,25,50,100]."),
    ] = None,
    bake: Annotated[
        str | None,
        typer.Option("--bake", help="How long each step serves before it is judged [2m]."),
    ] = None,
    max_error_rate_delta: Annotated[
        float | None, typer.Option(help="New minus legacy 5xx rate, at most [0.01].")
    ] = None,
    max_p95_ratio: Annotated[
        float | None, typer.Option(help="New over legacy p95 latency, at most [1.5].")
    ] = None,
    max_p99_ratio: Annotated[
        float | None, typer.Option(help="New over legacy p99 latency, at most [2.0].")
    ] = None,
    max_shadow_mismatch: Annotated[
        float | None, typer.Option(help="Share of shadow copies that differ, at most [0.01].")
    ] = None,
    min_requests: Annotated[
        int | None, typer.Option(help="Requests per arm and step; fewer is a quiet step [20].")
    ] = None,
    threshold: Annotated[
        int | None, typer.Option(help="Failed analyses of a step before the rollback [1].")
    ] = None,
    quiet_limit: Annotated[
        int | None, typer.Option(help="Extra bakes a quiet step gets before it fails [3].")
    ] = None,
    interval: Annotated[
        str | None, typer.Option(help="Analyses during a bake, to fail fast; 0: off [10s].")
    ] = None,
    settle: Annotated[
        str | None, typer.Option(help="Left out of each step's window at its start [5s].")
    ] = None,
    latency_floor: Annotated[
        str | None, typer.Option(help="Latencies under it count as it in the ratios [25ms].")
    ] = None,
    webhook: Annotated[
        list[str] | None,
        typer.Option(
            "--webhook",
            help="KIND=URL (pre-rollout, rollout, confirm-promotion, post-rollout, rollback); "
            "replaces the route's webhooks (repeat).",
        ),
    ] = None,
    author: Author = None,
    routes: RoutesFile = Path("routes.yaml"),
    store: StoreUrl = "file",
    prefix: StorePrefix = DEFAULT_PREFIX,
    admin: AdminUrl = None,
    token: Token = None,
    json_output: JsonFlag = False,
) -> None:
    """Start moving ROUTE to another upstream, step by step; each step's analysis decides."""
    from proxy.commands import _author

    where = _Where(routes, store, prefix, admin, token, json_output)
    overrides: dict[str, Any] = {
        "to": to,
        "steps": _steps(where, steps),
        "bake": bake,
        "webhooks": _webhooks(where, webhook or []),
        "max_error_rate_delta": max_error_rate_delta,
        "max_p95_ratio": max_p95_ratio,
        "max_p99_ratio": max_p99_ratio,
        "max_shadow_mismatch": max_shadow_mismatch,
        "min_requests": min_requests,
        "threshold": threshold,
        "quiet_limit": quiet_limit,
        "interval": interval,
        "settle": settle,
        "latency_floor": latency_floor,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    who = _author(author)
    started: dict[str, Any] = where.run(
        lambda ops: ops.start(route, given, reason=reason, author=who).as_dict(),
        lambda api: api.call("POST", API, json={"route": route, "reason": reason, **given}),
        author,
    )
    if json_output:
        typer.echo(json.dumps(started))
        return
    typer.echo(
        f"rollout of {route} to {started['to']} started: steps "
        f"{', '.join(map(str, started['steps']))} %, {started['bake_seconds']:g}s each"
    )
    typer.echo(f"  follow it: strangler rollout status {route} --watch")


@rollout_app.command("status")
def rollout_status(
    route: Annotated[str | None, typer.Argument(help="One route only.")] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Print each change until the rollout ends.")
    ] = False,
    routes: RoutesFile = Path("routes.yaml"),
    store: StoreUrl = "file",
    prefix: StorePrefix = DEFAULT_PREFIX,
    admin: AdminUrl = None,
    token: Token = None,
    json_output: JsonFlag = False,
) -> None:
    """Where each rollout is: its state, step, weight, last analysis and events."""
    where = _Where(routes, store, prefix, admin, token, json_output)
    if watch:
        if route is None:
            raise where.usage("--watch follows one rollout: name its route")
        _watch(where, route)
        return
    if route is not None:
        _print(where.one(route), json_output)
        return
    found = where.every()
    if json_output:
        typer.echo(json.dumps(found))
        return
    if not found:
        typer.echo("no rollouts")
    for rollout in found:
        typer.echo("\n".join(describe(rollout, time.time(), events=1)))


def _watch(where: _Where, route: str) -> None:
    """Print the rollout at each change until it ends (one JSON line each with --json)."""
    seen: tuple[Any, ...] | None = None
    try:
        while True:
            rollout = where.one(route)
            mark = (rollout["revision"], rollout["updated"])
            if mark != seen:
                seen = mark
                _print(rollout, where.json_output)
                if not where.json_output:
                    typer.echo("")
            if rollout["state"] in FINAL:
                return
            time.sleep(WATCH_EVERY)
    except KeyboardInterrupt:
        return


def _act(
    action: str,
    route: str,
    reason: str,
    author: str | None,
    wait: bool,
    where: _Where,
) -> None:
    from proxy.commands import _author

    who = _author(author)

    def local(ops: Rollouts) -> dict[str, Any]:
        operation = getattr(ops, action)
        done: dict[str, Any] = operation(route, reason=reason, author=who).as_dict()
        return done

    def remote(api: AdminClient) -> dict[str, Any]:
        done: dict[str, Any] = api.call("POST", _path(route, action), json={"reason": reason})
        return done

    result: dict[str, Any] = where.run(local, remote, author)
    if wait:
        result = _wait_for_driver(where, route, result)
    _print(result, where.json_output)


def _wait_for_driver(where: _Where, route: str, asked: dict[str, Any]) -> dict[str, Any]:
    """The rollout once a driver has taken the request (an abort or a promotion ends it)."""
    deadline = time.monotonic() + WAIT_FOR
    rollout = asked
    while rollout["state"] not in FINAL and time.monotonic() < deadline:
        time.sleep(WATCH_EVERY / 4)
        rollout = where.one(route)
    if rollout["state"] not in FINAL:
        from proxy.commands import _fail

        raise _fail(
            f"no proxy acted on it within {WAIT_FOR:g}s (is one serving with this store?); "
            "it stays asked for, and `strangler routes flip` moves the route by hand",
            json_output=where.json_output,
            kind="not-driven",
            command="rollout",
            extra={"rollout": rollout},
        )
    return rollout


def _command(action: str, doc: str) -> None:
    """Register `rollout ACTION ROUTE --reason WHY` (pause, resume)."""

    def command(
        route: Annotated[str, typer.Argument(help="The route being rolled out.")],
        reason: Reason,
        author: Author = None,
        routes: RoutesFile = Path("routes.yaml"),
        store: StoreUrl = "file",
        prefix: StorePrefix = DEFAULT_PREFIX,
        admin: AdminUrl = None,
        token: Token = None,
        json_output: JsonFlag = False,
    ) -> None:
        where = _Where(routes, store, prefix, admin, token, json_output)
        _act(action, route, reason, author, False, where)

    command.__doc__ = doc
    rollout_app.command(action)(command)


def _ending(action: str, doc: str) -> None:
    """Register `rollout ACTION ROUTE --reason WHY [--wait]` (promote, abort)."""

    def command(
        route: Annotated[str, typer.Argument(help="The route being rolled out.")],
        reason: Reason,
        wait: WaitFlag = False,
        author: Author = None,
        routes: RoutesFile = Path("routes.yaml"),
        store: StoreUrl = "file",
        prefix: StorePrefix = DEFAULT_PREFIX,
        admin: AdminUrl = None,
        token: Token = None,
        json_output: JsonFlag = False,
    ) -> None:
        where = _Where(routes, store, prefix, admin, token, json_output)
        _act(action, route, reason, author, wait, where)

    command.__doc__ = doc
    rollout_app.command(action)(command)


_command("pause", "Stop the rollout's clock: no step and no analysis until resumed.")
_command("resume", "Start the rollout's clock again where it stopped.")
_ending("promote", "Go to 100 % now (once the confirm-promotion webhooks agree).")
_ending("abort", "Put the route back as it was before the rollout; it ends aborted.")
