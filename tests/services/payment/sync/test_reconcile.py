"""Reconcile: zero drift on an exact copy; an injected drift (one missing, one extra, one
differing field) is found with exactly those rows and fields; young rows are left out and
mismatches re-checked after the settle window; differing chunks are bisected down to rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from sqlalchemy import delete, insert, select, update

from datasync.diff import HashedRow, compare_chunk, summary
from datasync.rows import normalise, normalise_value, row_hash
from datasync.state import reconciles
from services.payment.models import Payment as ServicePayment
from services.payment.sync import backfill, reconcile, spec
from tests.services.payment.sync.conftest import SEEDED_PAYMENTS, Pair

EXTRA = 3_999_999_999_999_999
# The service's model stamps updated_at on every UPDATE; drift injected by hand keeps it.
KEEP = {"updated_at": ServicePayment.__table__.c.updated_at}


def inject_drift(pair: Pair) -> tuple[int, int, int]:
    """One row missing from the service, one extra in it, one with a field changed."""
    ids = sorted(pair.legacy_rows())
    missing, differing = ids[3], ids[-2]
    table = ServicePayment.__table__
    template = pair.service_row(ids[0])
    with pair.service.begin() as conn:
        conn.execute(delete(table).where(table.c.id == missing))
        conn.execute(update(table).where(table.c.id == differing).values(currency="USD", **KEEP))
        conn.execute(insert(table).values({**template, "id": EXTRA, "origin": "service"}))
    return missing, EXTRA, differing


def test_an_exact_copy_has_zero_drift(pair: Pair) -> None:
    backfill(pair.legacy, pair.service)
    report = reconcile(pair.legacy, pair.service, settle=0, chunk_rows=7)
    assert (report.drift, report.passed) == (0, True)
    assert report.rows_legacy == report.rows_service == SEEDED_PAYMENTS
    assert report.chunks == 9  # 60 rows in chunks of 7, the last one open-ended
    with pair.service.connect() as conn:
        recorded = conn.execute(select(reconciles.c.drift, reconciles.c.passed)).all()
    assert [tuple(r) for r in recorded] == [(0, True)]


def test_injected_drift_is_found_exactly(pair: Pair) -> None:
    backfill(pair.legacy, pair.service)
    missing, extra, differing = inject_drift(pair)

    report = reconcile(pair.legacy, pair.service, settle=0, chunk_rows=25)

    found = report.findings
    assert (found.missing, found.extra) == ([missing], [extra])
    assert found.differing == {differing: {"currency": ("EUR", "USD")}}
    assert (report.drift, report.passed) == (3, False)
    assert report.bisections > 0
    assert reconcile(pair.legacy, pair.service, settle=0, max_drift=3).passed
    shape = report.as_dict()
    assert shape["differing"] == [
        {"id": differing, "fields": {"currency": {"legacy": "EUR", "service": "USD"}}}
    ]
    assert (shape["missing"], shape["extra"]) == ([missing], [extra])


def test_young_rows_wait_and_mismatches_are_rechecked_after_the_settle_window(
    sqlite_pair: Pair,
) -> None:
    pair = sqlite_pair
    backfill(pair.legacy, pair.service)
    ids = sorted(pair.legacy_rows())
    young, healed, real = ids[0], ids[1], ids[2]
    table = ServicePayment.__table__
    now = datetime.now(UTC)
    with pair.service.begin() as conn:
        # Changed a moment ago (in flight): left out, whatever it holds.
        conn.execute(
            update(table).where(table.c.id == young).values(status="failed", updated_at=now)
        )
        conn.execute(update(table).where(table.c.id == healed).values(card_brand="amex", **KEEP))
        conn.execute(update(table).where(table.c.id == real).values(card_last4="9999", **KEEP))

    waited: list[float] = []

    def settle_and_heal(seconds: float) -> None:
        waited.append(seconds)  # meanwhile the sync repairs one of the two mismatches
        with pair.service.begin() as conn:
            original = pair.legacy_row(healed)
            assert original is not None
            conn.execute(
                update(table)
                .where(table.c.id == healed)
                .values(card_brand=original["card_brand"], **KEEP)
            )

    report = reconcile(
        pair.legacy, pair.service, settle=30, recheck_after=0.5, sleep=settle_and_heal
    )
    assert waited == [0.5]
    assert report.skipped_young == 1
    assert list(report.findings.differing) == [real]
    assert report.drift == 1


def hashed(key: int, status: str = "captured") -> HashedRow:
    values = normalise(
        spec(),
        {
            "id": key,
            "order_id": 1,
            "user_id": 1,
            "amount": Decimal("1.5"),
            "currency": "EUR",
            "method": "card",
            "status": status,
            "card_brand": "",
            "card_last4": None,
            "provider_ref": None,
            "failure_code": None,
            "refunded_amount": 0.0,
            "refund_reason": None,
            "created_at": datetime(2024, 1, 1, 12, tzinfo=UTC),
            "updated_at": datetime(2024, 1, 1, 12),
        },
    )
    return HashedRow(key, datetime(2024, 1, 1, tzinfo=UTC), values, row_hash(values))


def test_bisecting_a_large_chunk_finds_the_one_differing_row() -> None:
    legacy = [hashed(k) for k in range(1, 5001)]
    service = [*legacy[:2999], hashed(3000, "refunded"), *legacy[3000:]]
    result = compare_chunk(spec(), legacy, service, None)
    assert list(result.findings.differing) == [3000]
    assert result.findings.differing[3000] == {"status": ("captured", "refunded")}
    assert 10 <= result.bisections <= 30  # log2(5000 / 8) levels, two halves per level at most


def test_chunks_compare_by_count_and_sum_not_xor() -> None:
    a, b = hashed(1), hashed(2)
    # The same two hashes twice XOR to zero, as does nothing at all: a sum keeps them apart.
    assert summary([a, a]) != summary([b, b])
    assert a.digest ^ a.digest == b.digest ^ b.digest == 0


def test_normalisation_removes_representation_noise() -> None:
    row = hashed(1).values
    assert row[3] == "1.50"
    assert row[11] == "0.00"
    assert row[7] is None  # '' is NULL (Oracle stores it so)
    assert row[13] == row[14] == "2024-01-01T12:00:00.000000+00:00"  # naive SQLite value = UTC
    same_instant = datetime(2024, 1, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    assert normalise_value(same_instant, spec().field("updated_at")) == row[14]
    assert normalise_value(Decimal("1.499"), spec().field("amount")) == "1.50"
    assert normalise_value(0.1, spec().field("amount")) == "0.10"
