"""Follow's version guard losing to a service write: a service capture commits between follow's
read of the service row and its guarded UPDATE. The row must count as kept (not updated), get
no outbox event, and be compared again by the next poll whatever the look-back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from datasync import apply
from datasync.spec import Spec
from legacy_monolith.models import Payment as LegacyPayment
from services.payment import billing
from services.payment.db import make_session_factory, utcnow
from services.payment.models import OutboxEvent
from services.payment.sync import backfill, follow_once
from tests.services.payment.sync.conftest import Pair


def capture_in_service(pair: Pair, conn: Connection, payment_id: int) -> None:
    """The service's own capture of the payment (billing.capture: row_version + 1, an outbox
    event). On PostgreSQL a transaction of its own that commits while follow's is open; on
    SQLite follow holds the write lock (BEGIN IMMEDIATE), so the capture runs on follow's
    connection, in a savepoint, which is the same interleaving as seen by the UPDATE."""
    if pair.backend == "sqlite":
        with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
            billing.capture(session, payment_id, utcnow())
            session.commit()
        return
    sessions = make_session_factory(pair.service)
    with sessions() as session, session.begin():
        billing.capture(session, payment_id, utcnow())


def test_a_service_write_between_read_and_update_wins_and_is_looked_at_again(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = utcnow()
    raced = pair.insert_legacy(status="authorized", updated_at=now - timedelta(seconds=10))
    backfill(pair.legacy, pair.service)
    # The monolith changes the payment, and later another one (so the high-water mark would move
    # past the raced row's timestamp).
    with pair.writer.begin() as conn:
        conn.execute(
            LegacyPayment.__table__.update()
            .where(LegacyPayment.id == raced)
            .values(provider_ref="psp_changed_in_monolith", updated_at=now - timedelta(seconds=2))
        )
    later = pair.insert_legacy(updated_at=now - timedelta(seconds=1))

    original = apply.existing_rows
    fired: list[int] = []

    def read_then_race(
        spec: Spec, conn: Connection, ids: Sequence[int], id_range: tuple[int, int] | None = None
    ) -> dict[int, Mapping[Any, Any]]:
        found = original(spec, conn, ids, id_range)
        if raced in found and not fired:
            fired.append(raced)
            capture_in_service(pair, conn, raced)
        return found

    monkeypatch.setattr(apply, "existing_rows", read_then_race)
    first = follow_once(pair.legacy, pair.service, safety_delay=0)
    monkeypatch.setattr(apply, "existing_rows", original)

    assert fired == [raced]
    assert first.counts.updated == 0  # the guard matched nothing: nothing was updated
    assert first.counts.kept_service == 1
    assert first.counts.raced == [(pair.legacy_row(raced)["updated_at"], raced)]  # type: ignore[index]
    row = pair.service_row(raced)
    assert (row["status"], row["origin"], row["row_version"]) == ("captured", "service", 2)
    assert row["provider_ref"] != "psp_changed_in_monolith"
    with pair.service.connect() as conn:
        events = conn.execute(
            select(OutboxEvent.event_type, OutboxEvent.row_version, OutboxEvent.payload)
            .where(OutboxEvent.aggregate_id == raced)
            .order_by(OutboxEvent.id)
        ).all()
    # Only the service's own capture: no event claiming a version follow never wrote.
    assert [(kind, version) for kind, version, _p in events] == [("payment.captured", 2)]
    assert '"origin":"legacy"' not in events[0][2].replace(" ", "")
    assert pair.service_row(later)["provider_ref"] == pair.legacy_row(later)["provider_ref"]  # type: ignore[index]

    # The high-water mark was held before the raced row: the next poll compares it again even
    # with no look-back at all (the service's newer write is kept), then the mark moves on.
    second = follow_once(pair.legacy, pair.service, safety_delay=0, lookback=0)
    assert (second.counts.kept_service, second.counts.updated, second.counts.raced) == (1, 0, [])
    third = follow_once(pair.legacy, pair.service, safety_delay=0, lookback=0)
    assert third.counts.kept_service == 0
    assert pair.service_row(raced)["row_version"] == 2
