"""The `strangler` command line: one entry point for the data plane, the control plane and the
demo. Each command says what it did in plain words; failures exit non-zero with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from proxy import __version__

if TYPE_CHECKING:
    from proxy.table.model import RouteTable

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


routes_app = typer.Typer(no_args_is_help=True, help="Check and read route tables.")
app.add_typer(routes_app, name="routes")


def _load_or_exit(path: Path) -> RouteTable:
    from proxy.table.loader import TableInvalid, load_file

    try:
        return load_file(path)
    except TableInvalid as exc:
        for line in exc.describe().splitlines():
            typer.echo(line, err=True)
        raise typer.Exit(1) from None


@routes_app.command("validate")
def routes_validate(
    file: Annotated[Path, typer.Argument(help="routes.yaml to check")],
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Check a route table: exit 0 if it can be served, else 1 with one line per problem."""
    from proxy.table.loader import TableInvalid, load_file

    try:
        table = load_file(file)
    except TableInvalid as exc:
        if json_output:
            problems = [
                {"line": p.line, "field": p.where(), "message": p.message}
                for p in sorted(exc.problems, key=lambda p: p.line or 0)
            ]
            typer.echo(json.dumps({"valid": False, "problems": problems}))
        else:
            for line in exc.describe().splitlines():
                typer.echo(line, err=True)
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

    snapshot = compile_table(_load_or_exit(file))
    if json_output:
        typer.echo(json.dumps(rows(snapshot), indent=2))
    else:
        typer.echo(describe(snapshot))


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
    no_access_log: Annotated[bool, typer.Option("--no-access-log")] = False,
) -> None:
    """Run the proxy. Every option also reads STRANGLER_<OPTION> (see the README)."""
    from pydantic import ValidationError

    from proxy.server import serve as run
    from proxy.settings import ProxySettings
    from proxy.table.loader import TableInvalid

    given: dict[str, object] = {
        "routes": routes,
        "default_upstream": default_upstream,
        "listen": listen,
        "internal_listen": internal_listen,
        "admin_listen": admin_listen,
        "workers": workers,
        "trusted_hops": trusted_hop,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    if no_access_log:
        overrides["access_log"] = False
    try:
        settings = ProxySettings(**overrides)  # type: ignore[arg-type]
        if settings.routes is None and not settings.default_upstream:
            raise typer.BadParameter("give --routes FILE or --default-upstream URL")
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
    except OSError as exc:
        typer.echo(f"strangler serve: {exc}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
