"""What a committed change was decided on, kept beside it for the migration ledger: the arms'
numbers, the shadow's, the gates' answers (store/ledger.record_evidence). Every door records it
after the commit, never before: a change is not held up, and a failure here loses the evidence
only (as Flagger records its analysis beside a promotion, not in its way).

The proxy records it on its own loop (runtime.Runtime.record_commit); the CLI's local door
records it in the sink the proxies share: the Redis store's, or the state directory beside
routes.yaml (`var/`, where `strangler serve` keeps it by default; STRANGLER_STATE_DIR names
another).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.control import Outcome


def state_dir_of(routes: Path) -> Path:
    """Where the proxies serving `routes` keep their state, as the CLI finds it:
    STRANGLER_STATE_DIR (as `strangler serve` reads it), else `var/` beside routes.yaml (serve's
    default, run where its routes.yaml is)."""
    named = os.environ.get("STRANGLER_STATE_DIR")
    return Path(named) if named else routes.parent / "var"


def routes_of(outcome: Outcome) -> list[str]:
    """The routes a committed change changed (added, removed or moved)."""
    return sorted({c["name"] for c in outcome.changes if c.get("kind") == "route"})


def evidence_recorder(
    store: str, prefix: str, state_dir: Path | None
) -> Callable[[Outcome], None] | None:
    """The CLI's recorder, or None where it has no state directory to keep it in (a file store
    of no file)."""
    if store == "file" and state_dir is None:
        return None
    directory = state_dir or Path("var")

    def record(outcome: Outcome) -> None:
        routes = routes_of(outcome)
        if routes and (store != "file" or directory.is_dir()):  # the file store's history is there
            asyncio.run(_record(store, prefix, directory, outcome, routes))

    return record


async def _record(
    store: str, prefix: str, state_dir: Path, outcome: Outcome, routes: list[str]
) -> None:
    from proxy.shadow.sink import open_sink
    from proxy.store.ledger import record_evidence

    sink = open_sink(store, prefix, state_dir)
    try:
        await record_evidence(sink, outcome.version, routes, gates=outcome.gates)
    finally:
        await sink.close()
