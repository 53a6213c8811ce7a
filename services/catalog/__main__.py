"""`python -m services.catalog [serve] [--host H] [--port P] [--database-url URL]
[--redis-url URL] [--instance NAME]` serves the catalog service; `python -m services.catalog
migrate` creates its read model's tables; `python -m services.catalog rebuild` re-projects every
view from the mirrors. Every flag falls back to its `CATALOG_*` environment variable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from services.catalog.settings import Settings


def _flags(parser: argparse.ArgumentParser, serve: bool) -> None:
    # SUPPRESS keeps a subcommand's unset flag from hiding the same flag given before it.
    quiet = argparse.SUPPRESS
    if serve:
        parser.add_argument("--host", default=quiet, help="listen address (CATALOG_HOST)")
        parser.add_argument("--port", type=int, default=quiet, help="listen port (CATALOG_PORT)")
        parser.add_argument("--redis-url", default=quiet, help="events (CATALOG_REDIS_URL)")
        parser.add_argument("--instance", default=quiet, help="replica name (CATALOG_INSTANCE)")
    parser.add_argument(
        "--database-url", default=quiet, help="SQLAlchemy URL (CATALOG_DATABASE_URL)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.catalog", description="The catalog service (read side)."
    )
    _flags(parser, serve=True)
    sub = parser.add_subparsers(dest="command")
    _flags(sub.add_parser("serve", help="serve the API (the default)"), serve=True)
    _flags(sub.add_parser("migrate", help="create the read model's missing tables"), False)
    _flags(sub.add_parser("rebuild", help="re-project every view from the mirrors"), False)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    keys = ("host", "port", "database_url", "redis_url", "instance")
    overrides: dict[str, Any] = {
        key: value for key in keys if (value := getattr(args, key, None)) is not None
    }
    return Settings(**overrides)


def _maintain(command: str, settings: Settings) -> int:
    from services.catalog.db import make_engine, migrate
    from services.catalog.projection import rebuild

    engine = make_engine(settings.database_url)
    where = engine.url.render_as_string()
    try:
        version = migrate(engine)
        if command == "migrate":
            print(f"migrated {where} to {version}")
        else:
            done = rebuild(engine)
            print(f"rebuilt {where}: {done.products} products, {done.categories} categories")
    finally:
        engine.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    settings = _settings(args)
    if args.command in ("migrate", "rebuild"):
        return _maintain(args.command, settings)
    import uvicorn

    from services.catalog.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
