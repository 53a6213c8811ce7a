"""Service settings: flags of `python -m services.catalog` or `CATALOG_*` environment variables."""

from __future__ import annotations

import socket

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the service reads from its environment. Nothing is read at import time."""

    model_config = SettingsConfigDict(env_prefix="CATALOG_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8003, ge=0, le=65535)
    database_url: str = "sqlite:///./var/catalog.db"
    # The engine's pool on a server database (not SQLite): connections kept open, and how many
    # more may open under a burst (each closed again when it comes back: on PostgreSQL a backend
    # forked and reaped per extra request); beyond both a request waits for a connection. Size
    # the pool to the requests a replica serves at once (`db.py`).
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    # Redis for the change events (`catalog:events`): while its consumer is connected a cache
    # hit costs no query; without it each hit first reads the read model's version (one
    # primary-key SELECT) and is served only if nothing was projected since (`cache.py`).
    redis_url: str | None = None
    # The events' Redis Stream; default: the declarations' (`sync/products.yaml`).
    events_stream: str | None = None
    # This replica's name: its consumer group is `catalog-cache:<instance>`, so every replica
    # hears every event. Give replicas stable names (a restarted one resumes its group).
    instance: str = Field(default_factory=socket.gethostname, min_length=1, max_length=100)
    # Seconds a cached answer may be served (0: no cache): the upper bound, after the events or
    # the version check (an event the relay has not published yet). Well under the 30 s clients
    # may reuse an answer anyway (Cache-Control max-age) and the monolith's own 60 s cache.
    cache_ttl: float = Field(default=5.0, ge=0)
    cache_max_entries: int = Field(default=10_000, ge=1)
    # The engine's outbox relay (catalog_outbox → the stream) in the app, one replica at a time
    # (a lease); off when `strangler sync relay` runs on its own. Its defaults are the engine's.
    relay_enabled: bool = True
    relay_interval_seconds: float = Field(default=0.25, gt=0)
    relay_batch_size: int = Field(default=500, ge=1)
    events_maxlen: int = Field(default=100_000, ge=1)
    # Create the read model's tables when the app starts (off when deploys run `migrate`).
    migrate_on_start: bool = True
