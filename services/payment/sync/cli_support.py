"""What every `sync` command shares: opening and checking both databases (offering the
service's migrations), turning errors into one line and exit 1, JSON output, clean stops on
SIGINT/SIGTERM, and opening the to-legacy event source."""

from __future__ import annotations

import json
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

from services.payment.sync.errors import EventSourceError, SchemaMissing, SyncError

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


@contextmanager
def errors_as_exit() -> Iterator[None]:
    """One line and exit 1 for every error the user can act on; never a traceback."""
    try:
        yield
    except SyncError as exc:
        fail(exc.detail)
    except SQLAlchemyError as exc:
        origin = getattr(exc, "orig", None)
        reason = str(origin if origin is not None else exc).strip().splitlines()[0]
        fail(f"database error ({exc.__class__.__name__}): {reason}")
    except KeyboardInterrupt:
        fail("interrupted; run the command again to resume from the last checkpoint")


def service_engine(url: str, migrate: bool) -> Engine:
    from services.payment.db import upgrade
    from services.payment.sync.engines import (
        check_reachable,
        check_service_schema,
        make_engine_for_service,
    )

    engine = make_engine_for_service(url)
    if migrate:
        upgrade(engine)  # creates or upgrades; a no-op at head
        return engine
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and not Path(database).exists():
        raise SchemaMissing(
            f"the service database {engine.url} does not exist yet: create it with "
            f"`python -m services.payment.sync migrate --service-db {engine.url}` or pass --migrate"
        )
    check_reachable(engine, "service")
    try:
        check_service_schema(engine)
    except SchemaMissing:
        if not (sys.stdin.isatty() and confirm_migrate()):
            raise
        upgrade(engine)
    return engine


def confirm_migrate() -> bool:
    return typer.confirm("The service's schema is missing or old. Run its migrations now?")


def engines(
    legacy_db: str, service_db: str, migrate: bool, writer: bool = False
) -> tuple[Engine, Engine]:
    from services.payment.sync.engines import check_reachable, make_legacy_engine

    legacy = make_legacy_engine(legacy_db, writer=writer)
    check_reachable(legacy, "legacy")
    return legacy, service_engine(service_db, migrate)


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


async def open_subscriber(
    source: Source,
    service: Engine,
    redis_url: str | None,
    stream: str,
    group: str,
    consumer: str,
    block_ms: int,
    claim_idle_ms: int,
) -> Any:
    if source is Source.outbox:
        from services.payment.sync.sources import OutboxSubscriber

        return OutboxSubscriber(service)
    from redis.exceptions import RedisError

    from services.payment.events import RedisSubscriber, redis_client

    assert redis_url is not None
    client = redis_client(redis_url, block_ms=block_ms)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise EventSourceError(f"cannot reach Redis at {redis_url}: {exc}") from None
    return RedisSubscriber(client, stream, group, consumer, claim_idle_ms=claim_idle_ms)


def legacy_if_reachable(url: str) -> Engine | None:
    """The legacy engine for status's live lag; status still answers when it is down."""
    from services.payment.sync.engines import check_reachable, make_legacy_engine

    try:
        engine = make_legacy_engine(url)
        check_reachable(engine, "legacy")
    except SyncError:
        return None
    return engine
