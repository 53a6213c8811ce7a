"""The `strangler` command line."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command()
def demo() -> None:
    """Run the demo."""


def main() -> None:
    app()
