"""The `strangler` command tree: the data plane, the control plane and the demo. Each command
says what it did in plain words; failures exit non-zero with the reason.

Run by proxy/cli.py's `main` (the `strangler` entry point). Building the tree imports typer and
the commands' signatures only: each command imports what it runs (the table's model, the store,
the servers, the sync engine) when it runs, so a `routes rollback --admin` typed in a hurry
loads none of them. tests/proxy/test_cli_imports.py keeps it so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from proxy import __version__
from proxy.access.cli import consumers_app
from proxy.cli_options import AdminUrl, Author, JsonFlag, RoutesFile, StorePrefix, StoreUrl
from proxy.rollout.cli import rollout_app
from proxy.shadow.cli import contract_app, record_command, shadow_app
from proxy.store.base import DEFAULT_PREFIX

if TYPE_CHECKING:
    from proxy.control import ControlPlane, Outcome
    from proxy.store.base import InvalidTable, RouteStore, StoreError
    from proxy.table.model import RouteTable

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Move a live monolith to services one endpoint at a time, behind one stable URL.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"strangler {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """strangler: the strangler-fig migration toolkit."""


@app.command()
def demo(
    workdir: Annotated[
        Path, typer.Option(help="Where the demo keeps its databases (replaced at start).")
    ] = Path("var/demo"),
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Leave the servers up after the tour.")
    ] = False,
) -> None:
    """Run the migration journey on embedded defaults (SQLite, no Redis) and narrate it."""
    from proxy.demo import run_demo

    run_demo(workdir, keep_running=keep_running)


@app.command(
    "sync",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def sync(ctx: typer.Context) -> None:
    """Move a declared table's data: backfill, follow, to-legacy, reconcile, status (--help)."""
    # Handed over whole, and imported only when used: the proxy's commands stay quick to start
    # and the proxy does not depend on the sync engine's code.
    from datasync.cli import app as sync_app

    sync_app(ctx.args, prog_name="strangler sync")


routes_app = typer.Typer(no_args_is_help=True, help="Check and read route tables.")
app.add_typer(routes_app, name="routes")
app.add_typer(shadow_app, name="shadow", help="What shadowed services answered differently.")
app.command("record")(record_command)
app.add_typer(contract_app, name="contract", help="Replay a recorded corpus against a service.")
app.add_typer(consumers_app, name="consumers")
app.add_typer(rollout_app, name="rollout")


def _fail(
    message: str,
    code: int = 1,
    *,
    json_output: bool = False,
    kind: str = "error",
    details: list[Any] | None = None,
    lines: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    say: bool = True,
    command: str = "routes",
) -> typer.Exit:
    """A routes command's failure: `lines` then `strangler routes: MESSAGE` (`command` instead
    of `routes`; unless not `say`) on stderr; with --json, also one object on stdout,
    `{"ok": false, "error": {kind, message, details}}` (plus `extra`); the exit to raise."""
    for line in lines or []:
        typer.echo(line, err=True)
    if say:
        typer.echo(f"strangler {command}: {message}", err=True)
    if json_output:
        error = {"kind": kind, "message": message, "details": details or []}
        typer.echo(json.dumps({**(extra or {}), "ok": False, "error": error}))
    return typer.Exit(code)


REFUSED_INVALID = "refused: the table is invalid; nothing changed"


def _invalid(
    exc: InvalidTable, json_output: bool, message: str = REFUSED_INVALID, say: bool = True
) -> typer.Exit:
    """The failure of an invalid table: its problems, one line each."""
    return _fail(
        message,
        json_output=json_output,
        kind=exc.kind,
        details=exc.details(),
        lines=exc.lines,
        say=say,
    )


def _failed(
    exc: StoreError,
    json_output: bool,
    extra: dict[str, Any] | None = None,
    command: str = "routes",
    invalid: str = REFUSED_INVALID,
) -> typer.Exit:
    """The failure a refusal of the control plane, a store or the admin API means, whichever
    door it came through: its message, kind and particulars (an invalid table's problems as
    `invalid` says, a closed gate's answers)."""
    from proxy.admin.client import AdminRefused
    from proxy.store.base import InvalidTable

    if isinstance(exc, InvalidTable):
        return _invalid(exc, json_output, invalid)
    return _fail(
        str(exc),
        json_output=json_output,
        kind=exc.kind,
        details=exc.details(),
        lines=exc.problems if isinstance(exc, AdminRefused) else [],
        extra=extra,
        command=command,
    )


def _load_or_exit(path: Path, json_output: bool = False) -> RouteTable:
    from proxy.store.base import InvalidTable
    from proxy.table.loader import TableInvalid, load_file

    try:
        return load_file(path)
    except TableInvalid as exc:
        invalid = InvalidTable.of(exc)
        raise _invalid(invalid, json_output, f"{path}: the table is invalid", say=False) from None


@routes_app.command("validate")
def routes_validate(
    file: Annotated[Path, typer.Argument(help="routes.yaml to check")],
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check a route table: exit 0 if it can be served, else 1 with one line per problem."""
    from proxy.store.base import InvalidTable
    from proxy.table.loader import TableInvalid, load_file

    try:
        table = load_file(file)
    except TableInvalid as exc:
        for line in exc.describe().splitlines():
            typer.echo(line, err=True)
        if json_output:
            problems = InvalidTable.of(exc).problems
            error = {"kind": "invalid-table", "message": f"{file}: invalid", "details": problems}
            typer.echo(
                json.dumps({"valid": False, "problems": problems, "ok": False, "error": error})
            )
        raise typer.Exit(1) from None
    if json_output:
        typer.echo(
            json.dumps({"valid": True, "version": table.version, "routes": len(table.routes)})
        )
    else:
        routes, upstreams = len(table.routes), len(table.upstreams)
        typer.echo(
            f"{file}: valid (version {table.version}, {routes} route{'s' * (routes != 1)}, "
            f"{upstreams} upstream{'s' * (upstreams != 1)})"
        )


@routes_app.command("show")
def routes_show(
    file: Annotated[Path, typer.Argument(help="routes.yaml to show")],
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show what goes where, in the order the proxy tries the routes."""
    from proxy.table.compile import compile_table
    from proxy.table.show import describe, rows

    snapshot = compile_table(_load_or_exit(file, json_output))
    if json_output:
        typer.echo(json.dumps(rows(snapshot), indent=2))
    else:
        typer.echo(describe(snapshot))


Reason = Annotated[str, typer.Option("--reason", help="Why: kept in the history.")]
ForceFlag = Annotated[
    bool,
    typer.Option("--force", help="Commit even if a cutover gate is closed (kept in the reason)."),
]
DryRunFlag = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Say what would be committed (version, changes, the gates' answers); commit "
        "nothing. Exit 1 if it would be refused.",
    ),
]


def _store(routes: Path, store: str, prefix: str) -> RouteStore:
    from proxy.store import open_store

    return open_store(store, routes, prefix)


def _report(outcome: Outcome, json_output: bool) -> None:
    """Print a committed version and what changed (whichever door it took), or what a dry run
    would commit; a dry run a gate would refuse fails (exit 1)."""
    result = outcome.as_dict()
    if outcome.dry_run:
        if not json_output:
            _print_preview(outcome)
        if outcome.refusal is not None:
            raise _fail(
                outcome.refusal,
                json_output=json_output,
                kind="gate-closed",
                details=outcome.gates,
                extra=result,
            )
        if json_output:
            typer.echo(json.dumps(result))
        return
    if json_output:
        typer.echo(json.dumps({k: v for k, v in result.items() if k not in {"text", "table"}}))
        return
    typer.echo(f"version {outcome.version} committed ({outcome.author}: {outcome.reason})")
    _print_changes(outcome.changes, "  (no change to the table)")


def _print_preview(outcome: Outcome) -> None:
    would = "would be committed" if outcome.would_commit else "would be refused"
    typer.echo(f"dry run: version {outcome.version} {would} ({outcome.author}: {outcome.reason})")
    _print_changes(outcome.changes, "  (no change to the table)")
    _print_gates(outcome.gates)
    typer.echo("nothing committed")


def _print_gates(gates: list[dict[str, Any]]) -> None:
    """What each cutover gate asked answered (as the store and the API give them)."""
    if not gates:
        typer.echo("gates: none to ask")
        return
    typer.echo("gates:")
    for gate in gates:
        where = f"upstream {gate['upstream']!r} (routes {', '.join(gate['routes'])})"
        if gate["status"] is None:
            said = f"did not answer ({gate['reasons']})"
        elif gate["open"]:
            said = f"open ({gate['status']})"
        else:
            said = f"closed ({gate['status']}): {gate['reasons']}"
        typer.echo(f"  {where} at {gate['gate']}: {said}")


def _print_changes(changes: list[dict[str, Any]], when_none: str) -> None:
    """One line per changed route or upstream (changes as the store and the API give them)."""
    from proxy.table.diff import Change

    for change in changes:
        fields = {k: (f["old"], f["new"]) for k, f in change["fields"].items()}
        typer.echo(
            f"  {Change(change['kind'], change['name'], change['action'], fields).describe()}"
        )
    if not changes:
        typer.echo(when_none)


def _author(author: str | None) -> str:
    import getpass

    if author:
        return author
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _control(routes: Path, store: str, prefix: str, admin: str | None) -> ControlPlane:
    """The control plane a routes command works on: the running proxy's at --admin, else the
    store's (--store, --routes)."""
    from proxy.control import open_control

    return open_control(admin, store=store, routes=routes, prefix=prefix)


def _run(action: Callable[[], T], json_output: bool, invalid: str = REFUSED_INVALID) -> T:
    """`action`'s answer; a refusal exits 1 with its reason, the same whichever door it came
    through."""
    from proxy.store.base import StoreError

    try:
        return action()
    except StoreError as exc:
        raise _failed(exc, json_output, invalid=invalid) from None


def _read_table_file(file: Path, json_output: bool, invalid: str = REFUSED_INVALID) -> str:
    """FILE's text once it loads as a table (its problems name FILE and its lines)."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(
            f"cannot read {file}: {exc.strerror}", json_output=json_output, kind="unreadable-file"
        ) from None
    from proxy.store.base import InvalidTable
    from proxy.table.loader import TableInvalid, load_text

    try:
        load_text(text, str(file), Path(file).parent)
    except TableInvalid as exc:
        raise _invalid(InvalidTable.of(exc), json_output, invalid) from None
    return text


@routes_app.command("set")
def routes_set(
    file: Annotated[Path, typer.Argument(help="The new table.")],
    reason: Reason,
    routes: RoutesFile = Path("routes.yaml"),
    store: StoreUrl = "file",
    store_prefix: StorePrefix = DEFAULT_PREFIX,
    author: Author = None,
    expect: Annotated[int | None, typer.Option(help="Fail unless this version is current.")] = None,
    admin: AdminUrl = None,
    force: ForceFlag = False,
    dry_run: DryRunFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Replace the served table with FILE, as a new version."""
    text = _read_table_file(file, json_output)
    control, who = _control(routes, store, store_prefix, admin), _author(author)
    outcome = _run(
        lambda: control.set(
            text, author=who, reason=reason, expect=expect, force=force, dry_run=dry_run
        ),
        json_output,
    )
    _report(outcome, json_output)


def _parse_split(value: str, json_output: bool = False) -> dict[str, int]:
    weights = {}
    for part in value.split(","):
        name, sep, weight = part.partition("=")
        if not sep or not weight.strip().isdigit():
            raise _fail(
                f"--split wants NAME=WEIGHT,NAME=WEIGHT, not {value!r}",
                2,
                json_output=json_output,
                kind="usage",
            )
        weights[name.strip()] = int(weight)
    return weights


@routes_app.command("flip")
def routes_flip(
    route: Annotated[str, typer.Argument(help="The route's name.")],
    reason: Reason,
    to: Annotated[str | None, typer.Option("--to", help="Send it all to this upstream.")] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Or split it: monolith=90,payment=10.")
    ] = None,
    sticky: Annotated[
        str | None,
        typer.Option(
            "--sticky",
            help="Set who stays on one upstream: header:NAME, cookie:NAME or client-ip "
            "(the route's own sticky is kept otherwise).",
        ),
    ] = None,
    routes: RoutesFile = Path("routes.yaml"),
    store: StoreUrl = "file",
    store_prefix: StorePrefix = DEFAULT_PREFIX,
    author: Author = None,
    admin: AdminUrl = None,
    force: ForceFlag = False,
    dry_run: DryRunFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Send one route somewhere else (a new version; comments in routes.yaml are kept)."""
    if (to is None) == (split is None):
        raise _fail(
            "give exactly one of --to and --split", 2, json_output=json_output, kind="usage"
        )
    weights = _parse_split(split, json_output) if split else None
    control, who = _control(routes, store, store_prefix, admin), _author(author)
    outcome = _run(
        lambda: control.flip(
            route,
            author=who,
            reason=reason,
            to=to,
            split=weights,
            sticky=sticky,
            force=force,
            dry_run=dry_run,
        ),
        json_output,
    )
    _report(outcome, json_output)


@routes_app.command("rollback")
def routes_rollback(
    version: Annotated[int, typer.Argument(help="The version to serve again.")],
    reason: Reason,
    routes: RoutesFile = Path("routes.yaml"),
    store: StoreUrl = "file",
    store_prefix: StorePrefix = DEFAULT_PREFIX,
    author: Author = None,
    admin: AdminUrl = None,
    force: ForceFlag = False,
    dry_run: DryRunFlag = False,
    json_output: JsonFlag = False,
) -> None:
    """Serve an earlier version's table again, as a new version."""
    # Its plain remote form is called by proxy/cli.py's quick_rollback, without typer's parser:
    # keep the two in step (tests/proxy/test_cli_imports.py compares them). --dry-run is left
    # to typer. Through the admin API it is one request: the proxy checks and commits it.
    control, who = _control(routes, store, store_prefix, admin), _author(author)
    outcome = _run(
        lambda: control.rollback(version, author=who, reason=reason, force=force, dry_run=dry_run),
        json_output,
    )
    _report(outcome, json_output)


@routes_app.command("get")
def routes_get(
    version: Annotated[
        int | None, typer.Argument(help="A version [default: the served one].")
    ] = None,
    routes: RoutesFile = Path("routes.yaml"),
    store: StoreUrl = "file",
    store_prefix: StorePrefix = DEFAULT_PREFIX,
    admin: AdminUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """Print a version's table as YAML, as `routes set` takes it back (--json: its version,
    author, time, reason, text and table)."""
    control = _control(routes, store, store_prefix, admin)
    found = _run(lambda: control.get(version), json_output)
    if json_output:
        typer.echo(json.dumps(found.as_dict()))
    else:
        typer.echo(found.text, nl=not found.text.endswith("\n"))


@routes_app.command("history")
def routes_history(
    routes: RoutesFile = Path("routes.yaml"),
    store: StoreUrl = "file",
    store_prefix: StorePrefix = DEFAULT_PREFIX,
    limit: Annotated[int, typer.Option(help="How many versions, newest first.")] = 20,
    admin: AdminUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """The versions of the served table: who changed it, when and why."""
    import time as clock

    control = _control(routes, store, store_prefix, admin)
    infos = _run(lambda: control.history(limit), json_output)
    if json_output:
        typer.echo(json.dumps([info.as_dict() for info in infos]))
        return
    for info in infos:
        when = clock.strftime("%Y-%m-%d %H:%M:%S", clock.localtime(info.time))
        typer.echo(f"{info.version:>5}  {when}  {info.author:<12} {info.reason}")


@app.command("ledger")
def ledger(
    route: Annotated[str | None, typer.Argument(help="One route only.")] = None,
    routes: RoutesFile = Path("routes.yaml"),
    store: StoreUrl = "file",
    store_prefix: StorePrefix = DEFAULT_PREFIX,
    admin: AdminUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """The migration ledger: per route, its state (legacy, shadowed, canary N%, moved, static,
    retired), since when, every version that changed it (who, why, and the evidence it was
    decided on), and what the monolith still serves, busiest first."""
    from proxy.admin.client import AdminClient, AdminRefused
    from proxy.store.base import StoreError

    try:
        if admin:
            params = {} if route is None else {"route": route}
            found: dict[str, Any] = AdminClient(admin, "cli").call(
                "GET", "/api/v1/ledger", params=params
            )
        else:
            built = _local_ledger(_store(routes, store, store_prefix), store, store_prefix, routes)
            if route is not None and built.route(route) is None:
                raise _fail(
                    f"no route {route!r} in the history",
                    json_output=json_output,
                    kind="unknown-route",
                    command="ledger",
                )
            found = (built if route is None else built.only(route)).as_dict()
    except (AdminRefused, StoreError) as exc:
        raise _failed(exc, json_output, command="ledger") from None
    if json_output:
        typer.echo(json.dumps(found))
        return
    _print_ledger(found)


def _print_ledger(found: dict[str, Any]) -> None:
    """The ledger as `GET /api/v1/ledger` gives it, one block per route."""
    from proxy.table.ledger import ledger_lines

    for line in ledger_lines(found):
        typer.echo(line)


def _local_ledger(route_store: RouteStore, store: str, prefix: str, routes: Path) -> Any:
    """The ledger of a store, with the evidence and the traffic numbers the proxies share
    (the Redis store's, or the state directory a proxy keeps beside routes.yaml) when any."""
    import asyncio

    from proxy.control.evidence import state_dir_of
    from proxy.store.ledger import ledger_of, read_ledger

    state_dir = state_dir_of(routes)
    if store == "file" and not state_dir.is_dir():
        return ledger_of(route_store)
    from proxy.shadow.sink import open_sink

    async def read() -> Any:
        sink = open_sink(store, prefix, state_dir)
        try:
            return await read_ledger(route_store, sink)
        finally:
            await sink.close()

    return asyncio.run(read())


def _fallback_text(fallback: dict[str, Any]) -> str:
    methods = fallback.get("methods")
    return str(fallback["to"]) + (f" ({','.join(methods)})" if methods else "")


@routes_app.command("status")
def routes_status(
    admin: Annotated[
        str,
        typer.Option("--admin", envvar="STRANGLER_ADMIN", help="A running proxy's admin API."),
    ],
    json_output: JsonFlag = False,
) -> None:
    """What a running proxy serves: each route's state, upstreams and recent traffic."""
    from proxy.admin.client import AdminClient, AdminRefused

    try:
        status = AdminClient(admin, "cli").call("GET", "/api/v1/routes/status")
    except AdminRefused as exc:
        raise _failed(exc, json_output) from None
    if json_output:
        typer.echo(json.dumps(status))
        return
    store = status["store_version"]
    typer.echo(
        f"serving version {status['served_version']}"
        + (
            f" (store: unreachable: {status.get('store_error')})"
            if store is None
            else ("" if status["in_sync"] else f" (store has version {store}: catching up)")
        )
    )
    rows = [*status["routes"], {"name": "default", "state": "-", **status["default"]}]
    for row in rows:
        traffic = row["traffic"]
        upstreams = row.get("upstreams") or [{**row.get("upstream", {}), "weight": 100.0}]
        spread = ", ".join(f"{u['name']} {u['weight']:g}%" for u in upstreams)
        typer.echo(
            f"  {row['name']:<20} {row['state']:<7} {spread:<32} "
            f"{traffic['requests']:>7} req  {traffic['errors_5xx']:>5} 5xx  "
            f"{traffic['mean_ms']:>8.1f} ms  (last {traffic['window_seconds']:.0f}s)"
            + (f"  fallback {_fallback_text(row['fallback'])}" if row.get("fallback") else "")
            + (f"  retry x{row['retry']['attempts']}" if row.get("retry") else "")
            + (f"  root {row['static']['root']}" if row.get("static") else "")
        )
    if status.get("upstreams"):
        typer.echo("upstreams:")
    for upstream in status.get("upstreams", []):
        state = upstream["state"]
        if state == "ejected" and upstream["ejected_for_s"]:
            state += f" ({upstream['ejected_for_s']:.0f}s left here)"
        typer.echo(
            f"  {upstream['name']:<20} {state:<24} {upstream['ejections']:>3} ejections  "
            f"{upstream['active']}/{upstream['max_requests']} busy, {upstream['waiting']} waiting"
            + ("" if upstream["outlier_detection"] else "  (outlier detection off)")
        )


def _diff_file(file: Path, control: ControlPlane, json_output: bool) -> None:
    """`routes diff --file NEW.yaml`: a dry run of `routes set NEW.yaml` that reports what the
    gates answer instead of failing on a closed one."""
    invalid = f"{file}: the table is invalid"
    text = _read_table_file(file, json_output, invalid)
    result = _run(
        lambda: control.diff_text(text, author=_author(None)), json_output, invalid
    ).as_dict()
    report = {
        "from": result["from"],
        "file": str(file),
        "valid": True,
        "changes": result["changes"],
        "gates": result["gates"],
        "would_commit": result["would_commit"],
        "refusal": result["refusal"],
    }
    if json_output:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"version {report['from']} → {file} (valid)")
    _print_changes(report["changes"], "  (the same table)")
    _print_gates(report["gates"])
    if report["refusal"] is None:
        typer.echo("a commit of it would go through")
    else:
        typer.echo(f"a commit of it would be refused: {report['refusal']}")


@routes_app.command("diff")
def routes_diff(
    old: Annotated[int | None, typer.Argument(help="A version.")] = None,
    new: Annotated[int | None, typer.Argument(help="Another [default: the current one].")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help="Instead: from the served table to this file, whether it is valid and what "
            "the cutover gates answer (nothing committed).",
        ),
    ] = None,
    routes: RoutesFile = Path("routes.yaml"),
    store: StoreUrl = "file",
    store_prefix: StorePrefix = DEFAULT_PREFIX,
    admin: AdminUrl = None,
    json_output: JsonFlag = False,
) -> None:
    """What changed between two versions, route by route (or what --file would change)."""
    control = _control(routes, store, store_prefix, admin)
    if file is not None:
        if old is not None:
            raise _fail(
                "give versions or --file, not both", 2, json_output=json_output, kind="usage"
            )
        _diff_file(file, control, json_output)
        return
    if old is None:
        raise _fail("give a version (or --file)", 2, json_output=json_output, kind="usage")
    found = _run(lambda: control.diff(old, new), json_output)
    if json_output:
        typer.echo(json.dumps(found.changes))
        return
    typer.echo(f"version {old} → {found.target}")
    _print_changes(found.changes, "  (the same table)")


@app.command()
def serve(
    routes: Annotated[Path | None, typer.Option(help="routes.yaml to serve (watched).")] = None,
    default_upstream: Annotated[
        str | None, typer.Option(help="No routes file: send everything to this URL.")
    ] = None,
    listen: Annotated[str | None, typer.Option(help="External listener [default :8080].")] = None,
    internal_listen: Annotated[
        str | None, typer.Option(help="Internal listener, or 'off' [default :8081].")
    ] = None,
    admin_listen: Annotated[
        str | None, typer.Option(help="Health and metrics [default 127.0.0.1:9090].")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes [default 1].")] = None,
    trusted_hop: Annotated[
        list[str] | None, typer.Option(help="CIDR whose X-Forwarded-* are kept (repeat).")
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(help="Route store: 'file' [default] or a redis:// URL shared by replicas."),
    ] = None,
    store_prefix: Annotated[str | None, typer.Option(help="Redis key prefix.")] = None,
    store_cache: Annotated[
        Path | None, typer.Option(help="Last-known-good table, used when Redis is down.")
    ] = None,
    version_header: Annotated[
        str | None,
        typer.Option(help="Strangler-Route-Version on: internal [default], all or off."),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(help="Shadow reports and recordings with the file store [default var]."),
    ] = None,
    consumers: Annotated[
        Path | None,
        typer.Option(help="Consumers and their keys with the file store [var/consumers.json]."),
    ] = None,
    rate_limit_store: Annotated[
        str | None,
        typer.Option(help="redis:// URL of the shared rate limits [default: the store's Redis]."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate chain: TLS on the external listener.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Its PEM private key.")] = None,
    internal_tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate chain: TLS on the internal listener.")
    ] = None,
    internal_tls_key: Annotated[Path | None, typer.Option(help="Its PEM private key.")] = None,
    internal_client_ca: Annotated[
        Path | None,
        typer.Option(help="Require client certificates signed by this CA (internal, mTLS)."),
    ] = None,
    upstream_client: Annotated[
        str | None,
        typer.Option(help="The upstream side: h1 (the proxy's own HTTP/1.1) or aiohttp."),
    ] = None,
    no_access_log: Annotated[bool, typer.Option("--no-access-log")] = False,
    engine: Annotated[str | None, typer.Option(hidden=True)] = None,
) -> None:
    """Run the proxy. Every option also reads STRANGLER_<OPTION> (see the README)."""
    from pydantic import ValidationError

    from proxy.server import serve as run
    from proxy.settings import ProxySettings
    from proxy.store.base import StoreError
    from proxy.table.loader import TableInvalid

    given: dict[str, object] = {
        "routes": routes,
        "default_upstream": default_upstream,
        "listen": listen,
        "internal_listen": internal_listen,
        "admin_listen": admin_listen,
        "workers": workers,
        "trusted_hops": trusted_hop,
        "store": store,
        "store_prefix": store_prefix,
        "store_cache": store_cache,
        "version_header": version_header,
        "state_dir": state_dir,
        "consumers": consumers,
        "rate_limit_store": rate_limit_store,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "internal_tls_cert": internal_tls_cert,
        "internal_tls_key": internal_tls_key,
        "internal_client_ca": internal_client_ca,
        "upstream_client": upstream_client,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    if no_access_log:
        overrides["access_log"] = False
    # `--engine asgi` (uvicorn's protocol) is gone; `--engine h1`, the only engine, still runs.
    if engine not in (None, "h1"):
        typer.echo(f"strangler serve: --engine {engine}: removed, h1 is the only engine", err=True)
        raise typer.Exit(2)
    if os.environ.get("STRANGLER_ENGINE", "h1") != "h1":
        typer.echo("strangler serve: STRANGLER_ENGINE is no longer read: one engine", err=True)
    try:
        settings = ProxySettings(**overrides)  # type: ignore[arg-type]
        if settings.routes is None and not settings.default_upstream and settings.store == "file":
            raise typer.BadParameter("give --routes FILE, --store redis://… or --default-upstream")
        run(settings, announce=lambda line: typer.echo(line, err=True))
    except ValidationError as exc:
        for error in exc.errors():
            typer.echo(
                f"strangler serve: {'.'.join(map(str, error['loc']))}: {error['msg']}", err=True
            )
        raise typer.Exit(2) from None
    except TableInvalid as exc:
        for line in exc.describe().splitlines():
            typer.echo(line, err=True)
        raise typer.Exit(1) from None
    except ValueError as exc:  # a setting that cannot be served (after pydantic's own errors)
        typer.echo(f"strangler serve: {exc}", err=True)
        raise typer.Exit(2) from None
    except (OSError, StoreError) as exc:
        typer.echo(f"strangler serve: {exc}", err=True)
        raise typer.Exit(1) from None


static_app = typer.Typer(no_args_is_help=True, help="Files the proxy serves itself.")
app.add_typer(static_app, name="static")


@static_app.command("export")
def static_export(
    source: Annotated[str, typer.Option("--from", help="The monolith's base URL.")],
    into: Annotated[Path, typer.Option("--to", help="The static route's root directory.")],
    paths_from: Annotated[
        str | None,
        typer.Option(
            "--paths-from",
            help="URL path of a paged JSON listing whose `image_url` fields name the files "
            "[default: /api/v1/products].",
        ),
    ] = None,
    path: Annotated[
        list[str] | None, typer.Option("--path", help="A file's URL path (repeatable).")
    ] = None,
    prefix: Annotated[
        str, typer.Option("--prefix", help="The route's path: stripped to name a file.")
    ] = "/static/",
    verify: Annotated[
        bool, typer.Option("--verify", help="Compare every file with the monolith's answer.")
    ] = False,
    fetch: Annotated[
        bool, typer.Option("--fetch/--no-fetch", help="--no-fetch: only verify what DIR holds.")
    ] = True,
    json_output: JsonFlag = False,
) -> None:
    """Fill a static route's directory from the monolith over HTTP (exit 1 on any error or
    mismatch, one line each)."""
    from proxy.static_export import run

    if path and paths_from:
        typer.echo("strangler static: give --path or --paths-from, not both", err=True)
        raise typer.Exit(2)
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    report = run(
        source,
        into,
        paths=list(path or []),
        listing=paths_from,
        prefix=prefix,
        fetch=fetch,
        check=verify,
    )
    if json_output:
        typer.echo(json.dumps(report.as_dict()))
    else:
        for line in report.errors:
            typer.echo(f"strangler static: {line}", err=True)
        typer.echo(
            f"{len(report.exported)} file{'s' * (len(report.exported) != 1)} exported to {into}"
            + (f", {len(report.verified)} verified" if verify else "")
            + (f", {len(report.errors)} problem{'s' * (len(report.errors) != 1)}")
        )
    if report.errors:
        raise typer.Exit(1)
