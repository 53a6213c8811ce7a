"""`python -m legacy_monolith [--host H] [--port P] [--database-url URL] [--redis-url URL]` serves
the monolith; `python -m legacy_monolith seed [--database-url URL] [--payments N] [--reset]` fills
a database. Every flag falls back to its `LEGACY_*` environment variable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from legacy_monolith.settings import Settings


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _server_flags(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS keeps a subcommand's unset flag from hiding the same flag given before it.
    quiet = argparse.SUPPRESS
    parser.add_argument("--host", default=quiet, help="listen address (LEGACY_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=quiet, help="listen port (LEGACY_PORT, 8001)")
    parser.add_argument("--redis-url", default=quiet, help="catalog cache (LEGACY_REDIS_URL)")
    parser.add_argument("--workers", type=_count, default=quiet, help="worker processes (1)")


def _database_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url", default=argparse.SUPPRESS, help="SQLAlchemy URL (LEGACY_DATABASE_URL)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m legacy_monolith", description="The legacy shop backend."
    )
    _server_flags(parser)
    _database_flag(parser)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the API (the default)")
    _server_flags(serve)
    _database_flag(serve)
    seed = sub.add_parser("seed", help="fill the database with a demo shop")
    _database_flag(seed)
    seed.add_argument("--payments", type=_count, default=500, help="payments to make (500)")
    seed.add_argument("--users", type=_count, default=250, help="customers to make (250)")
    seed.add_argument("--reset", action="store_true", help="drop every table first")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        key: value
        for key in ("host", "port", "database_url", "redis_url")
        if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


def _serve(settings: Settings, workers: int) -> None:
    import os

    import uvicorn

    if workers > 1 and not settings.redis_url and settings.cache_enabled:
        print(
            "legacy_monolith: several workers and no --redis-url: catalog caching is off "
            "(per-worker caches would miss each other's invalidations)",
            file=sys.stderr,
        )
        settings = settings.model_copy(update={"cache_enabled": False})
    if workers > 1:
        # uvicorn's workers import the factory by name; settings travel through the environment.
        for key, value in settings.model_dump().items():
            if value is not None:
                os.environ[f"LEGACY_{key.upper()}"] = str(value)
        uvicorn.run(
            "legacy_monolith.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=workers,
        )
        return
    from legacy_monolith.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


def _seed(settings: Settings, args: argparse.Namespace) -> int:
    from legacy_monolith.db import make_engine
    from legacy_monolith.seed import DEMO_PASSWORD, DEMO_USER, STAFF_USER, AlreadySeeded, seed

    def progress(done: int, total: int) -> None:
        if total >= 10_000:
            print(f"\r  payments {done:,}/{total:,}", end="", file=sys.stderr, flush=True)

    engine = make_engine(settings.database_url)
    try:
        report = seed(
            engine,
            payments=args.payments,
            users=args.users,
            reset=args.reset,
            password_iterations=settings.password_iterations,
            progress=progress,
        )
    except AlreadySeeded as exc:
        print(f"seed: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if args.payments >= 10_000:
        print(file=sys.stderr)
    print(
        f"seeded {settings.database_url}: {report.categories} categories, {report.products} "
        f"products, {report.users} users, {report.orders} orders, {report.payments} payments "
        f"in {report.seconds:.1f}s"
    )
    print(f"log in as {DEMO_USER} (or {STAFF_USER}, staff) with password {DEMO_PASSWORD!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = _settings(args)
    if args.command == "seed":
        return _seed(settings, args)
    _serve(settings, getattr(args, "workers", 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
