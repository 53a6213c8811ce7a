"""Shared fixtures: real Redis and PostgreSQL (required in CI, skipped with a reason elsewhere),
a database of its own per test session, and servers on 127.0.0.1 with port 0."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REDIS_URL = os.environ.get("STRANGLER_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
POSTGRES_URL = os.environ.get(
    "STRANGLER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _unavailable(what: str, url: str, env: str, exc: BaseException) -> None:
    message = f"{what} is not reachable at {url} ({exc.__class__.__name__}: {exc}); set {env}"
    if IN_CI:
        pytest.fail(f"{message}. CI must run every test: .ci/run starts {what} itself.")
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis database number of the suite's own (11 unless STRANGLER_TEST_REDIS_URL says)."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
        client.close()
    except (redis.RedisError, OSError) as exc:
        _unavailable("Redis", REDIS_URL, "STRANGLER_TEST_REDIS_URL", exc)
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards."""
    import redis

    prefix = f"t:{secrets.token_hex(4)}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[Callable[[], str]]:
    """Makes PostgreSQL databases of the suite's own; all are dropped at the end of the session."""
    admin_url = make_url(POSTGRES_URL)
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver or network failure means "not reachable"
        _unavailable("PostgreSQL", POSTGRES_URL, "STRANGLER_TEST_POSTGRES_URL", exc)
    made: list[str] = []

    def make() -> str:
        name = f"strangler_test_{secrets.token_hex(5)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return admin_url.set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in made:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
