"""`python -m services.payment [--host H] [--port P] [--database-url URL] [--redis-url URL]
[--legacy-url URL]` serves the payment service; `python -m services.payment migrate` brings its
database to the latest schema; `python -m services.payment relay` runs the outbox relay alone
(for deployments that turn the in-app relay off). Every flag falls back to its `PAYMENT_*`
environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from services.payment.settings import Settings


def _flags(parser: argparse.ArgumentParser, serve: bool) -> None:
    # SUPPRESS keeps a subcommand's unset flag from hiding the same flag given before it.
    quiet = argparse.SUPPRESS
    if serve:
        parser.add_argument("--host", default=quiet, help="listen address (PAYMENT_HOST)")
        parser.add_argument("--port", type=int, default=quiet, help="listen port (PAYMENT_PORT)")
        parser.add_argument("--legacy-url", default=quiet, help="the monolith (PAYMENT_LEGACY_URL)")
    parser.add_argument(
        "--database-url", default=quiet, help="SQLAlchemy URL (PAYMENT_DATABASE_URL)"
    )
    parser.add_argument("--redis-url", default=quiet, help="event stream (PAYMENT_REDIS_URL)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.payment", description="The payment service."
    )
    _flags(parser, serve=True)
    sub = parser.add_subparsers(dest="command")
    _flags(sub.add_parser("serve", help="serve the API (the default)"), serve=True)
    _flags(sub.add_parser("migrate", help="migrate the database to the latest schema"), False)
    _flags(sub.add_parser("relay", help="publish outbox events to Redis (no API)"), False)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    keys = ("host", "port", "database_url", "redis_url", "legacy_url")
    overrides: dict[str, Any] = {
        key: value for key in keys if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


def _migrate(settings: Settings) -> int:
    from services.payment.db import current_revision, make_engine, upgrade

    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        print(f"migrated {engine.url.render_as_string()} to {current_revision(engine)}")
    finally:
        engine.dispose()
    return 0


def _relay(settings: Settings) -> int:
    from services.payment.app import make_publisher, make_relay
    from services.payment.db import make_engine

    if not settings.redis_url:
        print("relay: --redis-url (PAYMENT_REDIS_URL) is required", file=sys.stderr)
        return 2
    engine = make_engine(settings.database_url)
    publisher = make_publisher(settings)
    relay = make_relay(engine, publisher, settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"relaying outbox events to {settings.events_stream}", flush=True)
        try:
            await relay.run(stop)
        finally:
            await publisher.close()

    try:
        asyncio.run(main())
    finally:
        engine.dispose()
    print(f"relay stopped after publishing {relay.published} events", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = _parser().parse_args(argv)
    settings = _settings(args)
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "relay":
        return _relay(settings)
    import uvicorn

    from services.payment.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
