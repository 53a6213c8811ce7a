"""Sync fixtures: a pair of real databases per test (a seeded monolith database and a migrated
service database), on SQLite and on PostgreSQL (tests/conftest.py: required in CI), and helpers
that read both sides row for row."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import Engine, make_url

from datasync.engines import make_legacy_engine
from datasync.rows import Normalised, normalise
from legacy_monolith.db import make_engine as make_monolith_engine
from legacy_monolith.models import Payment as LegacyPayment
from legacy_monolith.seed import seed
from services.payment.db import alembic_config
from services.payment.db import make_engine as make_service_engine
from services.payment.models import Payment as ServicePayment
from services.payment.sync import spec

FAST_HASH = 1_000  # PBKDF2 rounds for seeded users; production strength is not under test here
SEEDED_PAYMENTS = 60


@dataclass
class Pair:
    """Both databases of one test: URLs and engines (`legacy` reads, `writer` is to-legacy's)."""

    backend: str
    legacy_url: str
    service_url: str
    legacy: Engine
    writer: Engine
    service: Engine

    def legacy_rows(self) -> dict[int, Normalised]:
        return rows_of(self.legacy, LegacyPayment.__table__)

    def service_rows(self) -> dict[int, Normalised]:
        return rows_of(self.service, ServicePayment.__table__)

    def service_row(self, payment_id: int) -> dict[str, Any]:
        table = ServicePayment.__table__
        with self.service.connect() as conn:
            row = conn.execute(select(table).where(table.c.id == payment_id)).mappings().one()
        return dict(row)

    def legacy_row(self, payment_id: int) -> dict[str, Any] | None:
        table = LegacyPayment.__table__
        with self.legacy.connect() as conn:
            row = conn.execute(select(table).where(table.c.id == payment_id)).mappings().first()
        return dict(row) if row is not None else None

    def insert_legacy(self, **values: Any) -> int:
        """A payment written straight into the monolith's table, shaped like the API's."""
        table = LegacyPayment.__table__
        with self.legacy.connect() as conn:
            order_id, user_id = conn.execute(
                select(LegacyPayment.order_id, LegacyPayment.user_id).limit(1)
            ).one()
        now = datetime.now(UTC)
        row: dict[str, Any] = {
            "order_id": order_id,
            "user_id": user_id,
            "amount": Decimal("19.99"),
            "currency": "EUR",
            "method": "card",
            "status": "captured",
            "card_brand": "visa",
            "card_last4": "4242",
            "provider_ref": "psp_" + secrets.token_hex(8),
            "failure_code": None,
            "refunded_amount": Decimal("0.00"),
            "refund_reason": None,
            "created_at": now,
            "updated_at": now,
        }
        row.update(values)
        with self.writer.begin() as conn:
            return int(conn.execute(insert(table).values(row).returning(table.c.id)).scalar_one())


def rows_of(engine: Engine, table: Any) -> dict[int, Normalised]:
    with engine.connect() as conn:
        return {
            int(row["id"]): normalise(spec(), row)
            for row in conn.execute(select(table).order_by(table.c.id)).mappings()
        }


def seed_legacy(url: str, payments: int = SEEDED_PAYMENTS) -> None:
    engine = make_monolith_engine(url)
    try:
        seed(
            engine,
            payments=payments,
            users=4,
            products_per_category=3,
            password_iterations=FAST_HASH,
        )
    finally:
        engine.dispose()


def migrate(engine: Engine) -> None:
    """`db.upgrade(engine)`, minus putting the URL into Alembic's config: configparser reads
    the `%` of a URL-encoded option (`options=-csearch_path%3D...`) as interpolation."""
    from alembic import command

    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def make_pair(backend: str, legacy_url: str, service_url: str, prepared: bool = False) -> Pair:
    """Engines on both databases, seeding and migrating them first unless `prepared`."""
    service = make_service_engine(service_url)
    if not prepared:
        seed_legacy(legacy_url)
        migrate(service)
    return Pair(
        backend,
        legacy_url,
        service_url,
        make_legacy_engine(legacy_url),
        make_legacy_engine(legacy_url, writer=True),
        service,
    )


@pytest.fixture(scope="session")
def sqlite_templates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A seeded legacy file and a migrated service file, copied by each SQLite test."""
    folder = tmp_path_factory.mktemp("templates")
    legacy, service = folder / "legacy.db", folder / "service.db"
    seed_legacy(f"sqlite:///{legacy}")
    engine = make_service_engine(f"sqlite:///{service}")
    migrate(engine)
    engine.dispose()  # the last connection out checkpoints the WAL into the file
    return legacy, service


def _sqlite_pair(templates: tuple[Path, Path], folder: Path) -> Pair:
    legacy, service = folder / "legacy.db", folder / "service.db"
    shutil.copyfile(templates[0], legacy)
    shutil.copyfile(templates[1], service)
    return make_pair("sqlite", f"sqlite:///{legacy}", f"sqlite:///{service}", prepared=True)


@pytest.fixture(scope="session")
def postgres_database(postgres_databases: Callable[[], str]) -> str:
    """One PostgreSQL database for the sync's tests; each test gets schemas of its own in it
    (creating a schema takes milliseconds, a database a second under load)."""
    return postgres_databases()


def _schema_url(database_url: str, name: str) -> str:
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
    finally:
        engine.dispose()
    return (
        make_url(database_url)
        .update_query_dict({"options": f"-csearch_path={name}"})
        .render_as_string(hide_password=False)
    )


def _drop_schemas(database_url: str, names: list[str]) -> None:
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    finally:
        engine.dispose()


def _postgres_pair(request: pytest.FixtureRequest) -> Pair:
    database: str = request.getfixturevalue("postgres_database")
    tag = secrets.token_hex(4)
    names = [f"legacy_{tag}", f"service_{tag}"]
    request.addfinalizer(lambda: _drop_schemas(database, names))
    return make_pair("postgres", _schema_url(database, names[0]), _schema_url(database, names[1]))


def _dispose(pair: Pair) -> None:
    for engine in (pair.legacy, pair.writer, pair.service):
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    """A seeded monolith database and a migrated, empty service database on one backend."""
    if request.param == "postgres":
        made = _postgres_pair(request)
    else:
        made = _sqlite_pair(request.getfixturevalue("sqlite_templates"), tmp_path)
    yield made
    _dispose(made)


@pytest.fixture
def sqlite_pair(sqlite_templates: tuple[Path, Path], tmp_path: Path) -> Iterator[Pair]:
    """The same on SQLite only, for tests whose subject is not the dialect."""
    made = _sqlite_pair(sqlite_templates, tmp_path)
    yield made
    _dispose(made)
