"""What every `sync` command shares: loading the declarations, opening and checking both
databases (offering the service's migrations), turning errors into one line and exit 1, JSON
output, clean stops on SIGINT/SIGTERM, and opening the to-legacy event source."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from datasync.errors import EventSourceError, SchemaMissing, SyncError
from datasync.retry import first_line
from datasync.spec import Spec

EXIT_ERROR = 1


class Source(StrEnum):
    auto = "auto"
    redis = "redis"
    outbox = "outbox"


def stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_ERROR)


def log_lines() -> None:
    """The jobs' warnings on stderr, one line each with its time and job (`retry.py` logs a
    problem once when it starts and once when it ends)."""
    logging.basicConfig(
        level=logging.INFO if os.environ.get("STRANGLER_SYNC_VERBOSE") else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@contextmanager
def errors_as_exit() -> Iterator[None]:
    """One line and exit 1 for every error the user can act on; never a traceback. An invalid
    declaration is the one error of several lines: one per problem, each with its line."""
    try:
        yield
    except typer.Exit:  # a command's own exit (`fail`), already said
        raise
    except SyncError as exc:
        lines = exc.detail.splitlines() if exc.detail else [exc.kind]
        if exc.kind == "invalid-declaration":
            for line in lines[:-1]:
                typer.echo(f"error: {line}", err=True)
            fail(lines[-1])
        fail(lines[0])
    except SQLAlchemyError as exc:
        origin = getattr(exc, "orig", None)
        reason = str(origin if origin is not None else exc).strip().splitlines()[0]
        fail(f"database error ({exc.__class__.__name__}): {reason}")
    except KeyboardInterrupt:
        fail("interrupted; run the command again to resume from the last checkpoint")
    except OSError as exc:  # a port in use, a directory that cannot be written
        fail(f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        # Still one line (STRANGLER_DEBUG=1 shows the traceback): a bug, or a hook's error.
        if os.environ.get("STRANGLER_DEBUG"):
            raise
        fail(f"unexpected {type(exc).__name__}: {first_line(exc)} (STRANGLER_DEBUG=1 for details)")


# Where the project's packages are installed: the declarations shipped with its services
# (`services/catalog/sync/products.yaml`) are found by that path from any directory.
PACKAGES = Path(__file__).resolve().parent.parent


def declaration_path(path: Path) -> Path:
    """`path` as given, else (relative and not found here) among the installed packages."""
    if path.exists() or path.is_absolute():
        return path
    shipped = PACKAGES / path
    return shipped if shipped.is_file() else path


def load_spec(path: Path) -> Spec:
    """The declaration at `path` (a `DeclarationError` names every problem): a relative path
    not found in the working directory is looked up among the installed packages."""
    from datasync.declaration import load

    path = declaration_path(path)
    if not path.exists():
        raise SyncError(f"no sync declaration at {path}")
    return load(path)


def migrate_hook(spec: Spec) -> Callable[[Engine], str | None] | None:
    """The service's own schema migration (`hooks.migrate`, returning its revision): the sync
    creates only its own tables, never a service's."""
    return spec.hooks.get("migrate")


def migrate_service(spec: Spec, engine: Engine) -> str | None:
    """Create or upgrade the service's schema (its hook) and the engine's state tables."""
    from datasync.state import ensure_schema

    hook = migrate_hook(spec)
    revision = hook(engine) if hook is not None else None
    ensure_schema(engine)
    return revision


def default_service_db(spec: Spec) -> str:
    """The declared `service.database`, else `var/<sync name, singular>.db`."""
    from datasync.invariants import singular

    return spec.service_database or f"sqlite:///./var/{singular(spec.name)}.db"


def service_engine(spec: Spec, url: str | None, migrate: bool) -> Engine:
    from datasync.engines import check_reachable, check_service_schema, make_service_engine

    engine = make_service_engine(url or default_service_db(spec))
    if migrate:
        migrate_service(spec, engine)  # creates or upgrades; a no-op when current
        return engine
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and not Path(database).exists():
        raise SchemaMissing(
            f"the service database {engine.url} does not exist yet: create it with "
            f"`strangler sync migrate --service-db {engine.url}` or pass --migrate"
        )
    check_reachable(engine, "service")
    try:
        check_service_schema(spec, engine)
    except SchemaMissing:
        if not (sys.stdin.isatty() and confirm_migrate()):
            raise
        migrate_service(spec, engine)
    return engine


def confirm_migrate() -> bool:
    return typer.confirm("The service's schema is missing or old. Run its migrations now?")


def engines(
    spec: Spec, legacy_db: str, service_db: str | None, migrate: bool, writer: bool = False
) -> tuple[Engine, Engine]:
    from datasync.engines import check_reachable, make_legacy_engine

    legacy = make_legacy_engine(legacy_db, writer=writer)
    check_reachable(legacy, "legacy")
    return legacy, service_engine(spec, service_db, migrate)


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, default=str))


@contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM end the loop after the current poll (a clean stop, not a crash)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda _n, _f: stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def open_subscriber(
    spec: Spec,
    source: Source,
    service: Engine,
    redis_url: str | None,
    stream: str,
    group: str,
    consumer: str,
    block_ms: int,
    claim_idle_ms: int,
) -> Any:
    """The to-legacy event source: the declared outbox table, or the declared Redis Stream
    (`stream.StreamSubscriber`, which reconnects by itself)."""
    if source is Source.outbox:
        from datasync.sources import OutboxSubscriber

        return OutboxSubscriber(spec, service)
    if redis_url is None:
        raise EventSourceError("--source redis needs --redis-url (or STRANGLER_REDIS_URL)")
    from datasync.stream import StreamSubscriber

    key_field = spec.events.key_field if spec.events is not None else "aggregate_id"
    return StreamSubscriber(
        redis_url,
        stream,
        group,
        consumer,
        key_field=key_field,
        claim_idle_ms=claim_idle_ms,
    )


def legacy_if_reachable(url: str) -> Engine | None:
    """The legacy engine for status's live lag; status still answers when it is down."""
    from datasync.engines import check_reachable, make_legacy_engine

    try:
        engine = make_legacy_engine(url)
        check_reachable(engine, "legacy")
    except SyncError:
        return None
    return engine
