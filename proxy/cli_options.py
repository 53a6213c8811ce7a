"""The options every `strangler` command that works on the route table spells the same way:
where the table is (`--routes`, `--store`, `--store-prefix`, or a running proxy's `--admin`),
who asks (`--author`) and how it answers (`--json`). Declared once, for the routes, ledger and
rollout commands alike; typer and the standard library only, so building the command tree stays
quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RoutesFile = Annotated[
    Path,
    typer.Option(
        "--routes",
        envvar="STRANGLER_ROUTES",
        help="The served routes.yaml (its history and rollouts are kept under var/ beside it).",
    ),
]
StoreUrl = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="STRANGLER_STORE",
        help="'file' (routes.yaml and its history) or the replicas' shared redis:// store.",
    ),
]
StorePrefix = Annotated[
    str,
    typer.Option(
        "--store-prefix", "--prefix", envvar="STRANGLER_STORE_PREFIX", help="Redis key prefix."
    ),
]
AdminUrl = Annotated[
    str | None,
    typer.Option(
        "--admin",
        envvar="STRANGLER_ADMIN",
        help="A running proxy's admin API (token from STRANGLER_ADMIN_TOKEN) instead of "
        "--routes/--store.",
    ),
]
Author = Annotated[
    str | None, typer.Option("--author", envvar="STRANGLER_AUTHOR", help="Who [default: $USER].")
]
JsonFlag = Annotated[
    bool, typer.Option("--json", help="Machine-readable output (failures too: ok false).")
]
