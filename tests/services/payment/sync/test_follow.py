"""Follow: changes made through the monolith's own API reach the service; the (updated_at, id)
cursor survives a restart between rows sharing one timestamp; the look-back catches a late
commit; the cap holds back rows inside the safety delay; equal rows are not rewritten; a newer
service-written row is kept; lag is recorded and exported."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update

from datasync.engines import database_now
from datasync.incremental import BEFORE_ANY_ID, FollowResult, page_query
from datasync.lease import AlreadyRunning, JobLease
from datasync.metrics import SyncMetrics
from datasync.state import JOB_FOLLOW, load_checkpoint
from datasync.state import lag as lag_samples
from legacy_monolith.app import create_app
from legacy_monolith.models import Payment as LegacyPayment
from legacy_monolith.seed import STAFF_USER
from services.payment.models import OutboxEvent
from services.payment.models import Payment as ServicePayment
from services.payment.sync import backfill, follow, follow_once, reconcile, spec
from tests.legacy_monolith.conftest import login, make_settings, place_order, register
from tests.services.payment.sync.conftest import SEEDED_PAYMENTS, Pair
from tests.support import wait_until

NOW = {"safety_delay": 0.0}


@pytest.fixture
def shop(pair: Pair) -> Iterator[TestClient]:
    """The monolith itself, on the pair's legacy database, driven over HTTP."""
    with TestClient(create_app(make_settings(pair.legacy_url))) as client:
        yield client


def pay(client: TestClient, headers: dict[str, str], order_id: Any, **body: Any) -> httpx.Response:
    return client.post(
        "/api/v1/payments",
        json={"order_id": order_id, "method": "card", "card_token": "tok_visa", **body},
        headers=headers,
    )


def caught_up(pair: Pair, ids: set[int], **options: Any) -> bool:
    follow_once(pair.legacy, pair.service, **NOW, **options)
    legacy, service = pair.legacy_rows(), pair.service_rows()
    return all(service.get(i) == legacy[i] for i in ids)


def test_changes_made_through_the_monolith_api_are_followed(pair: Pair, shop: TestClient) -> None:
    backfill(pair.legacy, pair.service)
    _, me = register(shop)
    staff = login(shop, STAFF_USER)
    orders = [place_order(shop, me)["id"] for _ in range(5)]

    captured = pay(shop, me, orders[0]).json()["id"]
    held = pay(shop, me, orders[1], capture=False).json()["id"]
    refunded = pay(shop, me, orders[2]).json()["id"]
    voided = pay(shop, me, orders[3], capture=False).json()["id"]
    declined = pay(shop, me, orders[4], card_token="tok_chargeDeclined")
    assert declined.status_code == 402
    failed = declined.json()["payment_id"]
    ids = {captured, held, refunded, voided, failed}
    wait_until(lambda: caught_up(pair, ids), what="the follower to copy the new payments")
    assert pair.service_row(voided)["status"] == "authorized"

    assert shop.post(f"/api/v1/payments/{held}/capture", headers=staff).status_code == 200
    refund = {"amount": "1.00", "reason": "scratched"}
    assert shop.post(f"/api/v1/payments/{refunded}/refund", json=refund, headers=staff).is_success
    assert shop.post(f"/api/v1/orders/{orders[3]}/cancel", headers=me).status_code == 200
    wait_until(lambda: caught_up(pair, ids), what="the follower to copy the updates")

    statuses = {i: pair.service_row(i)["status"] for i in sorted(ids)}
    assert statuses == {
        captured: "captured",
        held: "captured",
        refunded: "partially_refunded",
        voided: "voided",
        failed: "failed",
    }
    assert pair.service_row(refunded)["refund_reason"] == "scratched"
    assert all(pair.service_row(i)["origin"] == "legacy" for i in ids)
    assert reconcile(pair.legacy, pair.service, settle=0).drift == 0
    # Each row the sync changed has an outbox event marked as coming from the monolith.
    with pair.service.connect() as conn:
        events = conn.execute(
            select(OutboxEvent.aggregate_id, OutboxEvent.event_type, OutboxEvent.payload).where(
                OutboxEvent.aggregate_id.in_(ids)
            )
        ).all()
    kinds = sorted((a, t) for a, t, _p in events)
    assert kinds == sorted(
        [(i, "payment.synced") for i in ids]
        + [(held, "payment.synced"), (refunded, "payment.synced"), (voided, "payment.voided")]
    )
    assert {json.loads(p)["origin"] for _a, _t, p in events} == {"legacy"}


def test_rows_sharing_one_timestamp_are_not_lost_across_a_restart(pair: Pair) -> None:
    backfill(pair.legacy, pair.service)
    with pair.legacy.connect() as conn:
        stamp = database_now(conn)  # after the backfill started, before the poll
    same = [pair.insert_legacy(updated_at=stamp) for _ in range(5)]

    first = follow_once(pair.legacy, pair.service, lookback=0, page_size=2, max_pages=1, **NOW)
    assert first.high_water == (stamp, same[1])
    # A cursor on the timestamp alone would now skip the other three: they share it.
    with pair.legacy.connect() as conn:
        remaining = conn.execute(page_query(spec(), (stamp, same[1]), stamp, 10)).all()
    assert [row.id for row in remaining] == same[2:]

    # "Restart": a new call reads its position back from the service database.
    follow_once(pair.legacy, pair.service, lookback=0, page_size=2, **NOW)
    service = pair.service_rows()
    assert all(service[i] == pair.legacy_rows()[i] for i in same)


def late_commit(pair: Pair) -> tuple[int, FollowResult]:
    """A payment whose transaction stamped `updated_at` and then committed after a follower had
    moved past that time. On PostgreSQL this is real (an open transaction while another commits
    and the follower polls); SQLite has one writer at a time, so the late row is back-dated."""
    if pair.backend == "sqlite":
        polled = follow_once(pair.legacy, pair.service, lookback=0, **NOW)
        assert polled.high_water is not None
        stamp = polled.high_water[0] - timedelta(seconds=5)
        return pair.insert_legacy(updated_at=stamp), polled
    table = LegacyPayment.__table__
    template = {k: v for k, v in pair.legacy_row(min(pair.legacy_rows())).items() if k != "id"}
    with pair.writer.connect() as slow:
        with pair.legacy.connect() as conn:
            stamped = database_now(conn)
        late = slow.execute(
            insert(table).values({**template, "updated_at": stamped}).returning(table.c.id)
        ).scalar_one()
        after = pair.insert_legacy(updated_at=stamped + timedelta(milliseconds=1))  # commits
        polls: list[FollowResult] = []

        def moved_past() -> bool:
            polls.append(follow_once(pair.legacy, pair.service, lookback=0, **NOW))
            return polls[-1].high_water is not None and polls[-1].high_water[1] == after

        wait_until(moved_past, what="the follower to move past the uncommitted row")
        slow.commit()
    return int(late), polls[-1]


def test_a_late_commit_is_caught_by_the_look_back(pair: Pair) -> None:
    backfill(pair.legacy, pair.service)
    late, polled = late_commit(pair)
    assert polled.high_water is not None
    assert polled.high_water[1] != late
    without = follow_once(pair.legacy, pair.service, lookback=0, **NOW)
    assert late not in pair.service_rows()
    assert without.counts.inserted == 0
    follow_once(pair.legacy, pair.service, lookback=30, **NOW)
    assert pair.service_rows()[late] == pair.legacy_rows()[late]


def test_rows_inside_the_safety_delay_are_applied_early_but_the_mark_waits(
    sqlite_pair: Pair,
) -> None:
    pair = sqlite_pair
    backfill(pair.legacy, pair.service)
    fresh = pair.insert_legacy()
    early = follow_once(pair.legacy, pair.service, safety_delay=60)
    assert fresh in pair.service_rows()  # a committed row: safe to apply at once
    assert early.high_water is not None
    assert early.high_water[1] == BEFORE_ANY_ID  # still where the backfill began: not past it
    assert 0.0 <= early.lag_seconds < 60  # counted from the cap: the cautious side


def test_equal_rows_are_not_rewritten_and_newer_service_rows_are_kept(pair: Pair) -> None:
    backfill(pair.legacy, pair.service)
    again = follow_once(pair.legacy, pair.service, lookback=10**9, **NOW)
    assert again.counts.written == 0
    assert again.counts.unchanged > 0
    assert {r["row_version"] for r in map(pair.service_row, pair.service_rows())} == {1}

    ids = sorted(pair.legacy_rows())
    kept, taken = ids[0], ids[1]
    later = pair.legacy_row(kept)["updated_at"] + timedelta(seconds=1)  # type: ignore[index]
    earlier = pair.legacy_row(taken)["updated_at"] - timedelta(seconds=1)  # type: ignore[index]
    table = ServicePayment.__table__
    with pair.service.begin() as conn:
        for key, stamp in ((kept, later), (taken, earlier)):
            conn.execute(
                update(table)
                .where(table.c.id == key)
                .values(status="refunded", origin="service", updated_at=stamp, row_version=5)
            )
    polled = follow_once(pair.legacy, pair.service, lookback=10**9, **NOW)
    assert (polled.counts.kept_service, polled.counts.updated) == (1, 1)
    assert pair.service_row(kept)["status"] == "refunded"  # the service's newer write stays
    overwritten = pair.service_row(taken)
    assert pair.service_rows()[taken] == pair.legacy_rows()[taken]
    assert (overwritten["origin"], overwritten["row_version"]) == ("legacy", 6)


def test_lag_is_recorded_and_exported(sqlite_pair: Pair) -> None:
    pair = sqlite_pair
    backfill(pair.legacy, pair.service)
    metrics = SyncMetrics()
    port = metrics.serve(0)
    fresh = pair.insert_legacy()
    polls: list[FollowResult] = []
    stop = threading.Event()

    def on_poll(result: FollowResult) -> None:
        polls.append(result)
        if fresh in pair.service_rows():
            stop.set()

    runner = threading.Thread(
        target=follow,
        args=(pair.legacy, pair.service),
        kwargs={"interval": 0.01, "stop": stop, "on_poll": on_poll, "metrics": metrics, **NOW},
    )
    runner.start()
    runner.join(timeout=20)
    assert not runner.is_alive()
    assert polls
    with pair.service.connect() as conn:
        checkpoint = load_checkpoint(conn, spec().name, JOB_FOLLOW)
        samples = conn.execute(select(lag_samples.c.lag_seconds)).all()
    assert checkpoint is not None
    assert checkpoint.position_id == fresh
    assert checkpoint.lag_seconds == polls[-1].lag_seconds == 0.0
    assert len(samples) == len(polls)
    scraped = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert 'strangler_sync_lag_seconds{job="follow",sync="payments"} 0.0' in scraped
    assert (
        'strangler_sync_rows_total{job="follow",outcome="inserted",sync="payments"} 1.0' in scraped
    )


def test_one_follower_at_a_time(sqlite_pair: Pair) -> None:
    pair = sqlite_pair
    elsewhere = JobLease(
        pair.service, spec().name, JOB_FOLLOW
    )  # a continuous follower in another process
    elsewhere.acquire()
    with pytest.raises(AlreadyRunning, match="another follow is running"):
        follow_once(pair.legacy, pair.service)
    elsewhere.release()
    assert follow_once(pair.legacy, pair.service).rows_read == SEEDED_PAYMENTS  # it stopped
