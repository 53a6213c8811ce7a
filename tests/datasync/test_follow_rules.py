"""Follow's lag is measured against the legacy's commits (a quiet table's first new write does
not read as hours of lag), its loop rides out transient failures with its health recorded and
exported, and the declared conflict rule decides who wins a row both sides changed. To-legacy's
loop rides out a lost event source the same way."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from datasync import incremental
from datasync.events import Event
from datasync.metrics import SyncMetrics
from datasync.retry import AsyncGuard, Backoff, Guard
from datasync.sources import OutboxSubscriber
from datasync.spec import LEGACY_WINS, SERVICE_WINS
from datasync.state import JOB_FOLLOW, JOB_TO_LEGACY, load_checkpoint
from datasync.status import cutover_check, gather_status
from datasync.to_legacy import LegacyApplier, run_to_legacy
from legacy_monolith.models import Payment as LegacyPayment
from services.payment.db import utcnow
from services.payment.models import Payment as ServicePayment
from services.payment.sync import backfill, follow_once, spec
from tests.services.payment.sync.conftest import (  # noqa: F401 (fixtures)
    Pair,
    sqlite_pair,
    sqlite_templates,
)
from tests.services.payment.sync.test_to_legacy import new_order, service_payment

FAST = Backoff(base=0.001, cap=0.005)


def test_a_quiet_tables_first_new_write_is_not_hours_of_lag(sqlite_pair: Pair) -> None:  # noqa: F811
    pair = sqlite_pair
    hours_ago = utcnow() - timedelta(hours=7)
    with pair.writer.begin() as conn:
        conn.execute(update(LegacyPayment).values(created_at=hours_ago, updated_at=hours_ago))
    caught_up = follow_once(pair.legacy, pair.service, safety_delay=0)  # no backfill: all of it
    assert caught_up.counts.inserted > 0
    assert caught_up.lag_seconds == 0.0

    fresh = pair.insert_legacy()  # the first write in hours, inside the next poll's delay
    held = follow_once(pair.legacy, pair.service, safety_delay=5)
    assert fresh in pair.service_rows()  # applied early, the mark left before it
    assert 0.0 <= held.lag_seconds < 5.0  # not "24558.0s": the age of the newest row
    live = gather_status(spec(), pair.service, pair.legacy)["follow"]["live_lag_seconds"]
    assert 0.0 <= live < 5.0
    assert "lag" not in {
        str(c["name"]) for c in cutover_check(spec(), pair.service).checks if not c["ok"]
    }

    copied = follow_once(pair.legacy, pair.service, safety_delay=0)  # the cap passes it
    assert (copied.counts.written, copied.lag_seconds) == (0, 0.0)  # read again, unchanged


def test_a_row_changed_again_and_again_is_applied_at_every_poll_without_moving_the_mark(
    sqlite_pair: Pair,  # noqa: F811
) -> None:
    """A best-seller's row changes more often than the safety delay: every poll applies its
    latest committed version (it used to wait until the changes stopped), the high-water mark
    stays behind the cap, and the row is read again, unchanged, once the cap passes it."""
    pair = sqlite_pair
    follow_once(pair.legacy, pair.service, safety_delay=0)
    payment = max(pair.service_rows())
    for amount in ("11.00", "12.00", "13.00"):
        with pair.writer.begin() as conn:
            conn.execute(
                update(LegacyPayment)
                .where(LegacyPayment.id == payment)
                .values(refunded_amount=Decimal(amount), updated_at=utcnow())
            )
        poll = follow_once(pair.legacy, pair.service, safety_delay=30)
        assert pair.service_row(payment)["refunded_amount"] == Decimal(amount)
        assert poll.counts.updated == 1
        assert poll.high_water is not None
        assert poll.high_water[0] < utcnow() - timedelta(seconds=29)  # not past the cap
        assert poll.lag_seconds < 30  # counted from the cap: the cautious side
    again = follow_once(pair.legacy, pair.service, safety_delay=0)
    assert (again.counts.updated, again.counts.inserted) == (0, 0)  # read again, unchanged


def test_follow_rides_out_a_lost_database_and_records_its_health(
    sqlite_pair: Pair,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pair = sqlite_pair
    backfill(pair.legacy, pair.service)
    real = incremental._poll
    calls: list[int] = []
    seen: dict[str, Any] = {}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= 2:
            raise OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))
        if len(calls) == 3:  # after two failures: the problem is on record
            with pair.service.connect() as conn:
                seen["checkpoint"] = load_checkpoint(conn, spec().name, JOB_FOLLOW)
            seen["gate"] = cutover_check(spec(), pair.service)
        return real(*args, **kwargs)

    monkeypatch.setattr(incremental, "_poll", flaky)
    metrics = SyncMetrics()
    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="strangler.sync.follow"):
        incremental.follow(
            spec(),
            pair.legacy,
            pair.service,
            interval=0.01,
            stop=stop,
            on_poll=lambda _r: stop.set(),
            metrics=metrics,
            safety_delay=0,
            guard=Guard("follow", logging.getLogger("strangler.sync.follow"), backoff=FAST),
        )
    checkpoint = seen["checkpoint"]
    assert checkpoint.problem.startswith("OperationalError: server closed the connection")
    assert checkpoint.problem_since is not None
    problems = {str(c["name"]): str(c["detail"]) for c in seen["gate"].checks if not c["ok"]}
    assert "follow has a problem since" in problems["follow_alive"]
    assert "server closed the connection" in problems["follow_alive"]

    with pair.service.connect() as conn:
        after = load_checkpoint(conn, spec().name, JOB_FOLLOW)
    assert after is not None
    assert (after.problem, after.problem_since) == (None, None)
    assert after.last_success_at is not None
    labels = {"sync": spec().name, "job": JOB_FOLLOW}
    assert metrics.up.labels(**labels)._value.get() == 1.0
    assert metrics.errors.labels(**labels)._value.get() == 2.0
    assert metrics.last_success.labels(**labels)._value.get() > 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # the problem once (not per attempt), the recovery once
    assert "retrying" in lines[0]
    assert "recovered" in lines[1]
    assert all(r.exc_info is None for r in caplog.records)  # no traceback


class Flaky:
    """A subscriber whose first reads fail as a closed Redis connection does."""

    def __init__(self, inner: OutboxSubscriber, failures: int, pair: Pair) -> None:
        self.inner, self.failures, self.pair = inner, failures, pair
        self.problems: list[str | None] = []

    async def read(self, count: int = 100, block_ms: int = 1000) -> list[Event]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Connection closed by server.")
        with self.pair.service.connect() as conn:
            checkpoint = load_checkpoint(conn, spec().name, JOB_TO_LEGACY)
        self.problems.append(checkpoint.problem if checkpoint else None)
        return await self.inner.read(count, block_ms)

    async def ack(self, *events: Event) -> None:
        await self.inner.ack(*events)

    async def close(self) -> None:
        await self.inner.close()


def test_to_legacy_rides_out_a_lost_event_source(sqlite_pair: Pair) -> None:  # noqa: F811
    pair = sqlite_pair
    service_payment(pair, new_order(pair))
    applier = LegacyApplier(spec(), pair.writer, pair.service)
    source = Flaky(OutboxSubscriber(spec(), pair.service), 2, pair)

    async def run() -> dict[str, int]:
        guard = AsyncGuard("to-legacy", logging.getLogger("strangler.sync.to_legacy"), FAST)
        try:
            result = await run_to_legacy(source, applier, block_ms=1, until_idle=True, guard=guard)
        finally:
            await source.close()
        return dict(result.outcomes)

    assert asyncio.run(run()) == {"applied": 2}
    assert source.problems[0] is not None
    assert "Connection closed by server." in source.problems[0]
    with pair.service.connect() as conn:
        checkpoint = load_checkpoint(conn, spec().name, JOB_TO_LEGACY)
    assert checkpoint is not None
    assert (checkpoint.problem, checkpoint.last_success_at is not None) == (None, True)


def service_wrote(pair: Pair, key: int, stamp_delta: timedelta) -> None:
    """The service changed the row (origin 'service'), stamped relative to the legacy copy."""
    legacy = pair.legacy_row(key)
    assert legacy is not None
    table = ServicePayment.__table__
    with pair.service.begin() as conn:
        conn.execute(
            update(table)
            .where(table.c.id == key)
            .values(
                status="refunded",
                origin="service",
                updated_at=legacy["updated_at"] + stamp_delta,
                row_version=5,
            )
        )


@pytest.mark.parametrize(
    ("rule", "delta", "kept"),
    [
        (LEGACY_WINS, timedelta(seconds=60), False),  # even a newer service write is overwritten
        (SERVICE_WINS, timedelta(seconds=-60), True),  # even an older service write is kept
    ],
)
def test_the_declared_conflict_rule_decides(
    sqlite_pair: Pair,  # noqa: F811
    rule: str,
    delta: timedelta,
    kept: bool,
) -> None:
    pair = sqlite_pair
    declared = replace(spec(), conflict=rule)
    backfill(pair.legacy, pair.service)
    key = min(pair.legacy_rows())
    service_wrote(pair, key, delta)
    polled = incremental.follow_once(
        declared, pair.legacy, pair.service, lookback=10**9, safety_delay=0
    )
    row = pair.service_row(key)
    if kept:
        assert (polled.counts.kept_service, row["status"], row["origin"]) == (
            1,
            "refunded",
            "service",
        )
    else:
        assert polled.counts.updated == 1
        assert pair.service_rows()[key] == pair.legacy_rows()[key]
        assert (row["origin"], row["row_version"]) == ("legacy", 6)
