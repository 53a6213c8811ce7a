"""Service payment ids: descending from 4e15, in blocks, never twice, never into legacy ids."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from legacy_monolith.app import create_app as create_legacy_app
from legacy_monolith.db import make_engine as make_legacy_engine
from legacy_monolith.models import Order
from legacy_monolith.models import Payment as LegacyPayment
from legacy_monolith.seed import STAFF_USER, seed
from legacy_monolith.settings import Settings as LegacySettings
from services.payment.db import make_engine, upgrade, utcnow
from services.payment.ids import (
    SERVICE_ID_FLOOR,
    SERVICE_ID_START,
    IdAllocator,
    IdRangeError,
    check_legacy_id,
    check_no_legacy_ids_in_range,
    is_service_id,
)
from services.payment.models import IdBlock, Payment
from services.payment.sync import apply_to_service
from tests.services.payment.conftest import FAST_HASH, Shop, serving

START = SERVICE_ID_START


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_ids_count_down_from_the_start_in_blocks(engine: Engine) -> None:
    first, second = IdAllocator(engine, block_size=3), IdAllocator(engine, block_size=3)
    assert [first.next_id() for _ in range(2)] == [START, START - 1]
    assert second.next_id() == START - 3  # the next block: one process never waits on another
    assert [first.next_id() for _ in range(2)] == [START - 2, START - 6]
    with engine.connect() as conn:
        assert conn.scalar(select(IdBlock.next_id)) == START - 9
    assert START < 2**53  # exact in every JSON client
    assert is_service_id(START - 6)
    assert not is_service_id(41)


def test_no_id_is_handed_out_twice_by_concurrent_threads(engine: Engine) -> None:
    allocators = [IdAllocator(engine, block_size=5) for _ in range(3)]

    def take(index: int) -> list[int]:
        return [allocators[index % 3].next_id() for _ in range(60)]

    with ThreadPoolExecutor(6) as pool:
        ids = [i for batch in pool.map(take, range(6)) for i in batch]
    assert len(ids) == len(set(ids)) == 360
    assert min(ids) >= START - 360 - 3 * 5  # at most one partly used block per allocator


PROCESS = """
import sys
from services.payment.db import make_engine
from services.payment.ids import IdAllocator
allocator = IdAllocator(make_engine(sys.argv[1]), block_size=7)
print(" ".join(str(allocator.next_id()) for _ in range(150)))
"""


def test_no_id_is_handed_out_twice_by_concurrent_processes(
    engine: Engine, database_url: str
) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS, database_url], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    ids = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        ids += [int(i) for i in out.split()]
    assert len(ids) == len(set(ids)) == 450
    assert all(is_service_id(i) for i in ids)


def test_a_block_below_the_floor_is_refused(engine: Engine) -> None:
    IdAllocator(engine, block_size=1).next_id()
    with engine.begin() as conn:
        conn.execute(update(IdBlock).values(next_id=SERVICE_ID_FLOOR + 5))
    allocator = IdAllocator(engine, block_size=10)
    with pytest.raises(IdRangeError, match="below the floor"):
        allocator.next_id()
    assert IdAllocator(engine, block_size=6).next_id() == SERVICE_ID_FLOOR + 5  # still fits


def legacy_payment(engine: Engine, payment_id: int) -> None:
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(Payment).values(
                id=payment_id,
                order_id=1,
                user_id=1,
                amount=Decimal("1.00"),
                currency="EUR",
                method="wallet",
                status="captured",
                refunded_amount=Decimal("0.00"),
                created_at=now,
                updated_at=now,
                origin="legacy",
                row_version=1,
            )
        )


def test_a_legacy_id_in_the_service_range_stops_the_service(engine: Engine) -> None:
    legacy_payment(engine, 2_999_999_999_999_999)  # the highest id the monolith may reach
    check_no_legacy_ids_in_range(engine)
    allocator = IdAllocator(engine, block_size=10)
    service_id = allocator.next_id()
    legacy_payment(engine, service_id)  # a service payment copied back: fine
    check_no_legacy_ids_in_range(engine)
    legacy_payment(engine, SERVICE_ID_FLOOR + 1)  # the monolith reached the floor
    with pytest.raises(IdRangeError, match="collide"):
        check_no_legacy_ids_in_range(engine)
    with pytest.raises(IdRangeError):
        check_legacy_id(SERVICE_ID_FLOOR)
    check_legacy_id(SERVICE_ID_FLOOR - 1)


def test_only_ids_inside_the_service_range_are_refused_from_the_monolith() -> None:
    for inside in (SERVICE_ID_FLOOR, SERVICE_ID_FLOOR + 1, START - 1, START):
        with pytest.raises(IdRangeError, match="collide"):
            check_legacy_id(inside)
    for outside in (1, SERVICE_ID_FLOOR - 1, START + 1, START + 10**9, 2**53 - 1):
        check_legacy_id(outside)  # ordinary monolith ids, and its ids after SQLite's jump


def test_monolith_ids_above_the_service_range_do_not_stop_the_service(engine: Engine) -> None:
    legacy_payment(engine, START + 1)  # the monolith's own payment after SQLite's jump
    legacy_payment(engine, START + 2)
    check_no_legacy_ids_in_range(engine)  # no block taken yet
    allocator = IdAllocator(engine, block_size=10)
    assert allocator.next_id() == START
    legacy_payment(engine, START)  # ... copied back by the sync: fine
    check_no_legacy_ids_in_range(engine)
    legacy_payment(engine, START - 9)  # allocated: the lowest id of this very block
    check_no_legacy_ids_in_range(engine)
    legacy_payment(engine, START - 10)  # never handed out: only the monolith put it there
    with pytest.raises(IdRangeError, match="collide"):
        check_no_legacy_ids_in_range(engine)


def test_the_monolith_on_sqlite_jumps_above_a_synced_service_payment(
    engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The real monolith on SQLite: once the to-legacy sync has put a service payment (id 4e15)
    in its table, its next own payment is 4e15 + 1; that id is not a collision, the sync copies
    it into the service, and the service still starts and hands out its own ids."""
    legacy_url = f"sqlite:///{tmp_path_factory.mktemp('jump') / 'legacy.db'}"
    legacy = make_legacy_engine(legacy_url)
    try:
        seed(legacy, payments=2, users=2, products_per_category=2, password_iterations=FAST_HASH)
        with legacy.begin() as conn:  # what the to-legacy sync writes for a service payment
            order = conn.execute(select(Order.id, Order.user_id).limit(1)).one()
            now = utcnow()
            conn.execute(
                insert(LegacyPayment).values(
                    id=START,
                    order_id=order.id,
                    user_id=order.user_id,
                    amount=Decimal("1.00"),
                    currency="EUR",
                    method="wallet",
                    status="voided",
                    refunded_amount=Decimal("0.00"),
                    created_at=now,
                    updated_at=now,
                )
            )
        settings = LegacySettings(
            database_url=legacy_url,
            cache_prefix=f"legacy-jump:{secrets.token_hex(4)}:",
            password_iterations=FAST_HASH,
        )
        with (
            serving(create_legacy_app(settings)) as monolith,
            httpx.Client(base_url=monolith.url, timeout=30) as http,
        ):
            shop = Shop(monolith.url, http)
            shop.staff = shop.login(STAFF_USER)
            alice = shop.customer()
            order_id = shop.order(alice)["id"]
            paid = http.post(
                "/api/v1/payments",
                json={"order_id": order_id, "method": "wallet"},
                headers=alice.headers,
            )
        assert paid.status_code == 201, paid.text
        new_id = paid.json()["id"]
        assert new_id == START + 1  # SQLite: max(id) + 1, above the service's descending range
        check_legacy_id(new_id)
        with legacy.connect() as conn:
            rows = (
                conn.execute(select(LegacyPayment.__table__).where(LegacyPayment.id == new_id))
                .mappings()
                .all()
            )
    finally:
        legacy.dispose()

    IdAllocator(engine, block_size=1).next_id()  # the service has handed out START already
    with engine.begin() as conn:
        assert apply_to_service(conn, rows).inserted == 1  # the sync's follow: no collision
    check_no_legacy_ids_in_range(engine)  # and the service still starts
    assert IdAllocator(engine, block_size=1).next_id() == START - 1
