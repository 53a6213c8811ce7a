"""Monolith settings: flags of `python -m legacy_monolith` or `LEGACY_*` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the monolith reads from its environment. Nothing is read at import time."""

    model_config = SettingsConfigDict(env_prefix="LEGACY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535)
    database_url: str = "sqlite:///./var/legacy.db"
    redis_url: str | None = None
    # Key prefix for everything the monolith keeps in Redis (tests give each run its own).
    cache_prefix: str = "legacy:"
    # Off: every read goes to the database. `--workers N` without Redis turns it off, since each
    # worker's in-process cache would miss the other workers' invalidations.
    cache_enabled: bool = True
    # Catalog answers are cached this long; writes invalidate them sooner.
    cache_ttl_seconds: float = Field(default=60.0, gt=0)
    # After a Redis error, skip Redis for this long instead of paying a timeout per request.
    cache_retry_seconds: float = Field(default=5.0, ge=0)
    token_ttl_seconds: int = Field(default=30 * 24 * 3600, gt=0)
    create_schema: bool = True
    # PBKDF2 rounds for new password hashes (OWASP's 2023 floor for PBKDF2-HMAC-SHA256 is 600k;
    # this backend still runs the 2017 value it launched with: stored hashes carry their count).
    password_iterations: int = Field(default=120_000, ge=1)
