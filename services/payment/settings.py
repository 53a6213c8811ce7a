"""Service settings: flags of `python -m services.payment` or `PAYMENT_*` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service reads from its environment. Nothing is read at import time."""

    model_config = SettingsConfigDict(env_prefix="PAYMENT_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8002, ge=0, le=65535)
    database_url: str = "sqlite:///./var/payment.db"
    # Redis for the event stream; without it events go to in-process subscribers only.
    redis_url: str | None = None
    # The monolith, for who the caller is and what the order is (never its database).
    legacy_url: str = "http://127.0.0.1:8001"
    # Connect fails fast (a dead monolith is a 503 at once); a read may take a busy monolith's
    # worst case. The proxy's own default upstream timeout (routes.yaml) is 2 s for this service.
    legacy_connect_timeout_seconds: float = Field(default=1.0, gt=0)
    legacy_timeout_seconds: float = Field(default=5.0, gt=0)
    legacy_max_connections: int = Field(default=100, ge=1)
    # A bearer token the monolith accepted is trusted this long (logouts take effect after it).
    auth_cache_seconds: float = Field(default=30.0, ge=0)
    auth_cache_size: int = Field(default=10_000, ge=1)
    # Idempotency keys: kept 24 h as Stripe does; a second request with a key still running waits
    # this long for the first before answering 409; a claim older than the lock time is taken
    # to belong to a request that died (longer than any request's own timeouts).
    idempotency_ttl_seconds: float = Field(default=24 * 3600.0, gt=0)
    idempotency_wait_seconds: float = Field(default=2.0, ge=0)
    idempotency_lock_seconds: float = Field(default=60.0, gt=0)
    # Service payment ids are taken from the database this many at a time per process.
    id_block_size: int = Field(default=100, ge=1, le=100_000)
    # Events: Redis Stream key and its approximate cap (XADD MAXLEN ~), relay cadence.
    events_stream: str = "payment:events"
    events_maxlen: int = Field(default=100_000, ge=1)
    relay_enabled: bool = True
    relay_interval_seconds: float = Field(default=0.2, gt=0)
    relay_batch_size: int = Field(default=200, ge=1)
    # Run the Alembic migrations when the app starts (off when deploys run `migrate` first).
    migrate_on_start: bool = True
