"""Long-running sync jobs ride out restarts of real servers of the test's own, with writes going
on: follow through a restart of the service's PostgreSQL and of the monolith's; to-legacy
through a restart of its Redis with persistence (the group resumes) and without (the stream is
gone: the events it lost come from the outbox), and through a restart of the monolith's
PostgreSQL while applying. Every job keeps running, logs one warning and one recovery line per
outage (never a traceback), shows the problem in its health while it lasts, and a reconcile at
the end finds drift 0."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from datasync.events import Event
from datasync.retry import AsyncGuard, Backoff, Guard, Health
from datasync.sources import OutboxSubscriber
from datasync.state import JOB_FOLLOW, JOB_TO_LEGACY, Checkpoint, load_checkpoint
from datasync.stream import StreamSubscriber
from datasync.to_legacy import LegacyApplier, run_to_legacy
from services.payment.events import RedisPublisher, redis_client
from services.payment.models import OutboxEvent
from services.payment.relay import OutboxRelay
from services.payment.schemas import LegacyOrder
from services.payment.sync import backfill, follow, reconcile, spec
from tests.restartable import postgres_process, redis_process
from tests.services.payment.sync.conftest import (  # noqa: F401 (fixtures)
    Pair,
    make_pair,
    sqlite_pair,
    sqlite_templates,
)
from tests.services.payment.sync.test_to_legacy import SERVICE_ID, new_order, service_payment

FOLLOW_LOG = "strangler.sync.follow"
TO_LEGACY_LOG = "strangler.sync.to_legacy"
STREAM_LOG = "datasync.stream"
STREAM = "payment:events"
# The production backoff's shape with a lower cap, so a test's outage ends within seconds.
BACKOFF_CAP = 1.0


def wait_for(check: Callable[[], bool], what: str, within: float = 15.0) -> float:
    """Poll `check` until true; returns the seconds it took (fails after `within`)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, f"timed out waiting for {what}"
        time.sleep(0.02)
    return time.monotonic() - started


def lines_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def outage_lines(lines: list[str]) -> tuple[int, int]:
    """(outages begun, outages ended) as a job's log tells them (`retry.Health`)."""
    return sum("retrying" in line for line in lines), sum("recovered" in line for line in lines)


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


def checkpoint_of(pair: Pair, job: str) -> Checkpoint | None:
    with pair.service.connect() as conn:
        return load_checkpoint(conn, spec().name, job)


class Writer:
    """Writes on in a thread until stopped, one call of `write(n)` every `every` seconds; a
    write that fails (its database is down) is counted and the next one tried."""

    def __init__(self, write: Callable[[int], Any], every: float = 0.03) -> None:
        self.write, self.every = write, every
        self.done, self.failed = 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="writer", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.write(self.done)
            except Exception:  # the database is restarting: the caller would retry too
                self.failed += 1
                continue
            self.done += 1

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def outage(
    health: Health,
    stop: Callable[[], object],
    start: Callable[[], object],
    while_down: Callable[[], object] = lambda: None,
) -> float:
    """Stop a server under a running job, let `while_down` look, start it again once the job
    has met the outage; returns the seconds from the server being back to the job's recovery."""
    stop()
    while_down()
    wait_for(lambda: not health.healthy, "the job to meet the outage")
    start()
    return wait_for(lambda: health.healthy, "the job to recover")


def problem_recorded(pair: Pair, job: str) -> Callable[[], float]:
    """A `while_down` look: the job's checkpoint shows its problem (the service answers)."""

    def recorded(cp: Checkpoint | None) -> bool:
        return cp is not None and cp.problem is not None

    return lambda: wait_for(lambda: recorded(checkpoint_of(pair, job)), "the recorded problem")


def service_ids(pair: Pair) -> set[int]:
    """The payments the service made (its ids count down from SERVICE_ID)."""
    return {k for k in pair.service_rows() if k > SERVICE_ID - 10**6}


def all_in_legacy(pair: Pair) -> bool:
    """Every payment the service made is in the monolith's table, field for field."""
    service, legacy = pair.service_rows(), pair.legacy_rows()
    made = [key for key in service if key > SERVICE_ID - 10**6]
    return all(legacy.get(key) == service[key] for key in made)


# --- follow --------------------------------------------------------------------------------
def test_follow_rides_out_restarts_of_the_service_and_the_legacy_database(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    with postgres_process() as legacy_db, postgres_process() as service_db:
        pair = make_pair("postgres", legacy_db.url, service_db.url)
        try:
            backfill(pair.legacy, pair.service)
            stop = threading.Event()
            guard = Guard(
                "follow", logging.getLogger(FOLLOW_LOG), stop.wait, Backoff(cap=BACKOFF_CAP)
            )
            follower = threading.Thread(
                target=follow,
                args=(pair.legacy, pair.service),
                kwargs={"interval": 0.1, "stop": stop, "guard": guard, "safety_delay": 0},
                name="follow",
                daemon=True,
            )
            follower.start()
            recovered: list[float] = []
            with Writer(lambda _n: pair.insert_legacy()) as writer:
                wait_for(lambda: guard.health.last_success is not None, "a first poll")
                recovered.append(outage(guard.health, service_db.stop, service_db.start))
                assert follower.is_alive(), "follow ended on a service restart"
                # The legacy database down, the service's answers: the problem is on record.
                seen = problem_recorded(pair, JOB_FOLLOW)
                recovered.append(outage(guard.health, legacy_db.stop, legacy_db.start, seen))
                assert follower.is_alive(), "follow ended on a legacy restart"
                wait_for(lambda: writer.done >= 3 * 3, "writes after the restarts")
            assert writer.failed > 0  # the monolith's writes did fail while its database was down
            wait_for(
                lambda: set(pair.legacy_rows()) <= set(pair.service_rows()), "follow to catch up"
            )
            stop.set()
            follower.join(timeout=15)
            assert not follower.is_alive()
            checkpoint = checkpoint_of(pair, JOB_FOLLOW)
            assert checkpoint is not None
            assert (checkpoint.problem, checkpoint.status) == (None, "stopped")
            assert checkpoint.last_success_at is not None
            report = reconcile(pair.legacy, pair.service, settle=0)
        finally:
            for engine in (pair.legacy, pair.writer, pair.service):
                engine.dispose()
    assert report.drift == 0, report
    assert outage_lines(lines_of(caplog, FOLLOW_LOG)) == (2, 2), lines_of(caplog, FOLLOW_LOG)
    assert all(seconds < 5 for seconds in recovered), recovered
    no_traceback(caplog)
    print(f"follow recovered {', '.join(f'{s:.2f}s' for s in recovered)} after the restarts")


# --- to-legacy -----------------------------------------------------------------------------
class Holding(LegacyApplier):
    """An applier that waits while `hold` is clear (events pile up in the stream meanwhile)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.go = threading.Event()
        self.go.set()
        self.waiting = threading.Event()

    def handle(self, events: Any) -> Any:
        if not self.go.is_set():
            self.waiting.set()
            self.go.wait(30)
        return super().handle(events)


class Loop:
    """An event loop in a thread of its own, running the jobs under test as tasks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="jobs", daemon=True)
        self.thread.start()

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@contextmanager
def jobs() -> Iterator[Loop]:
    loop = Loop()
    try:
        yield loop
    finally:
        loop.close()


@contextmanager
def relaying(loop: Loop, pair: Pair, url: str) -> Iterator[OutboxRelay]:
    """The payment service's own relay, publishing its outbox to `url`'s stream."""
    publisher = RedisPublisher(redis_client(url), STREAM)
    relay = OutboxRelay(pair.service, publisher, batch_size=50, interval=0.05)
    stop = asyncio.Event()
    task = asyncio.run_coroutine_threadsafe(relay.run(stop), loop.loop)
    try:
        yield relay
    finally:
        loop.loop.call_soon_threadsafe(stop.set)
        task.result(15)  # returns: it never raised
        loop.call(publisher.close())


def unpublished(pair: Pair) -> int:
    with pair.service.connect() as conn:
        query = select(func.count()).select_from(OutboxEvent)
        return int(conn.scalar(query.where(OutboxEvent.published_at.is_(None))) or 0)


def orders(pair: Pair, count: int) -> list[LegacyOrder]:
    """Orders placed in the monolith beforehand (a payment needs one)."""
    return [new_order(pair) for _ in range(count)]


def pay(pair: Pair, made: list[LegacyOrder]) -> Callable[[int], Any]:
    """A writer's call: the n-th service payment (authorize + capture: two events)."""
    return lambda n: service_payment(pair, made[n], SERVICE_ID - n)


@pytest.mark.parametrize("persist", [True, False], ids=["persisted", "lost"])
def test_to_legacy_rides_out_redis_restarts_losing_nothing(
    sqlite_pair: Pair,  # noqa: F811
    persist: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    pair = sqlite_pair
    backfill(pair.legacy, pair.service)
    made = orders(pair, 60)
    with redis_process(persist=persist) as server, jobs() as loop:
        subscriber = StreamSubscriber(
            server.url,
            STREAM,
            "to-legacy",
            "c1",
            key_field="payment_id",
            backoff=Backoff(cap=BACKOFF_CAP),
        )
        applier = Holding(spec(), pair.writer, pair.service)
        guard = AsyncGuard("to-legacy", logging.getLogger(TO_LEGACY_LOG), Backoff(cap=BACKOFF_CAP))
        stop = asyncio.Event()
        job = asyncio.run_coroutine_threadsafe(
            run_to_legacy(subscriber, applier, stop=stop, batch=5, block_ms=200, guard=guard),
            loop.loop,
        )
        recovered = 0.0
        try:
            with relaying(loop, pair, server.url):
                with Writer(pay(pair, made), every=0.05) as writer:
                    wait_for(lambda: writer.done >= 10 and all_in_legacy(pair), "first payments")
                    # The job holds a batch while more is published: the stream has a backlog.
                    applier.go.clear()
                    applier.waiting.wait(10)
                    wait_for(lambda: writer.done >= 20 and unpublished(pair) == 0, "a backlog")
                    # Killed while the job holds a batch: its ack is lost, and the backlog too
                    # when Redis keeps nothing.
                    seen = problem_recorded(pair, JOB_TO_LEGACY)  # the subscriber's problem

                    def while_down() -> None:
                        applier.go.set()
                        seen()

                    recovered = outage(subscriber.health, server.stop, server.start, while_down)
                    assert not job.done(), "to-legacy ended on a Redis restart"
                    wait_for(lambda: writer.done >= 35, "payments after the restart")
                wait_for(lambda: unpublished(pair) == 0, "the relay to publish everything")
                wait_for(lambda: all_in_legacy(pair), "every service payment in the legacy table")
            assert not job.done()
        finally:
            applier.go.set()
            loop.loop.call_soon_threadsafe(stop.set)
            result = job.result(15)
            loop.call(subscriber.close())
    assert subscriber.resets == (0 if persist else 1)
    checkpoint = checkpoint_of(pair, JOB_TO_LEGACY)
    assert checkpoint is not None
    assert (checkpoint.problem, checkpoint.status) == (None, "stopped")
    assert len(service_ids(pair)) == writer.done >= 35
    report = reconcile(pair.legacy, pair.service, settle=0)
    assert report.drift == 0, report
    assert result.outcomes["applied"] >= 2 * writer.done
    stream_lines = lines_of(caplog, STREAM_LOG)
    assert outage_lines(stream_lines) == (1, 1), stream_lines
    assert sum("consumer group was gone" in line for line in stream_lines) == (0 if persist else 1)
    caught = [line for line in lines_of(caplog, TO_LEGACY_LOG) if "caught up" in line]
    if not persist:  # the backlog Redis lost came from the outbox
        assert any("(reset)" in line for line in caught), caught
    assert outage_lines(lines_of(caplog, TO_LEGACY_LOG)) == (0, 0)  # the subscriber rode it
    no_traceback(caplog)
    print(f"to-legacy's stream recovered {recovered:.2f}s after Redis was back")


def test_to_legacy_rides_out_a_restart_of_the_legacy_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with postgres_process() as legacy_db, jobs() as loop:
        pair = make_pair("postgres", legacy_db.url, f"sqlite:///{tmp_path / 'service.db'}")
        try:
            backfill(pair.legacy, pair.service)
            made = orders(pair, 60)
            source = OutboxSubscriber(spec(), pair.service)
            applier = LegacyApplier(spec(), pair.writer, pair.service)
            guard = AsyncGuard(
                "to-legacy", logging.getLogger(TO_LEGACY_LOG), Backoff(cap=BACKOFF_CAP)
            )
            stop = asyncio.Event()
            job = asyncio.run_coroutine_threadsafe(
                run_to_legacy(source, applier, stop=stop, batch=5, block_ms=100, guard=guard),
                loop.loop,
            )
            try:
                with Writer(pay(pair, made), every=0.03) as writer:
                    wait_for(lambda: writer.done >= 10, "the first payments")
                    seen = problem_recorded(pair, JOB_TO_LEGACY)
                    recovered = outage(guard.health, legacy_db.stop, legacy_db.start, seen)
                    assert not job.done(), "to-legacy ended on a legacy restart"
                    wait_for(lambda: writer.done >= 30, "payments after the restart")
                wait_for(lambda: all_in_legacy(pair), "every service payment in the legacy table")
            finally:
                loop.loop.call_soon_threadsafe(stop.set)
                job.result(15)
                loop.call(source.close())
            checkpoint = checkpoint_of(pair, JOB_TO_LEGACY)
            assert checkpoint is not None
            assert (checkpoint.problem, checkpoint.status) == (None, "stopped")
            assert len(service_ids(pair)) == writer.done
            report = reconcile(pair.legacy, pair.service, settle=0)
        finally:
            for engine in (pair.legacy, pair.writer, pair.service):
                engine.dispose()
    assert report.drift == 0, report
    assert outage_lines(lines_of(caplog, TO_LEGACY_LOG)) == (1, 1), lines_of(caplog, TO_LEGACY_LOG)
    no_traceback(caplog)
    print(f"to-legacy recovered {recovered:.2f}s after the legacy database was back")


def test_the_catch_up_reads_only_unhandled_events_since_the_last_handled_one(
    sqlite_pair: Pair,  # noqa: F811
) -> None:
    from datasync.sources import OutboxCatchUp

    pair = sqlite_pair
    made = orders(pair, 3)
    for n in range(3):
        service_payment(pair, made[n], SERVICE_ID - n)
    clock = [0.0]
    catch_up = OutboxCatchUp(spec(), pair.service, every=60, clock=lambda: clock[0])
    applier = LegacyApplier(spec(), pair.writer, pair.service)
    applier.prepare()  # the engine's tables (`run_to_legacy` marks the job first)

    def one_pass(resets: int) -> list[Event]:
        assert catch_up.due(resets)
        events = catch_up.read(100, resets)
        applier.handle(events)
        catch_up.finished()
        return events

    first = one_pass(0)  # at start: everything unhandled
    assert len(first) == 6
    assert all(e.message_id == "" for e in first)  # the stream's position is not moved
    assert not catch_up.due(0)
    assert catch_up.due(1)  # a reset
    assert one_pass(1) == []
    clock[0] = 61.0
    assert catch_up.due(1)  # the safety net
    assert one_pass(1) == []
    checkpoint = checkpoint_of(pair, JOB_TO_LEGACY)
    assert checkpoint is not None
    assert checkpoint.position_at is not None
    assert checkpoint.position_ref is None
