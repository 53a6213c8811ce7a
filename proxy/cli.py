"""The `strangler` command line: one entry point for the data plane, the control plane and the
demo. Each command says what it did in plain words; failures exit non-zero with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from proxy import __version__

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
        Path, typer.Option(help="Where the demo keeps its databases (wiped at start).")
    ] = Path("var/demo"),
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Leave the servers up after the tour.")
    ] = False,
) -> None:
    """Run the migration journey on embedded defaults (SQLite, no Redis) and narrate it."""
    from proxy.demo import run_demo

    run_demo(workdir, keep_running=keep_running)


def main() -> None:
    app()
