"""The engine's outbox relay (`datasync/relay.py`, `strangler sync relay`) on real SQLite and
PostgreSQL service databases and a real Redis: committed outbox rows reach the declared stream
in id order, with the fields a `StreamSubscriber` reads, and are marked published; one relay per
outbox table publishes (two declarations sharing it never publish a row twice); a Redis outage
loses nothing, ends nothing and logs once; published rows past the retention are purged, no
others; the command publishes once and refuses a declaration without an outbox and a stream."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, insert, select
from typer.testing import CliRunner

from datasync.cli import app
from datasync.declaration import load
from datasync.events import Event
from datasync.relay import Relay, RelaySettings
from datasync.spec import Spec
from datasync.state import load_checkpoint
from datasync.stream import StreamSubscriber
from tests.datasync.tables.stock import (
    STOCK_YAML,
    Databases,
    StockTables,
    create_stock,
    postgres_schemas,
    sqlite_databases,
)
from tests.support import redis_process, wait_until

# Loaded once: the jobs key their table metadata by the Spec object.
SPEC = load(STOCK_YAML)
OUTBOX = "stock_outbox"
FIELDS = {"event_id", "type", "item_no", "row_version", "occurred_at", "payload"}
QUICK = RelaySettings(interval=0.05, lease_seconds=1.5, max_backoff=0.5)
runner = CliRunner()


def with_stream(stream: str, name: str = SPEC.name) -> Spec:
    """The stock declaration publishing its outbox to `stream` (as sync `name`)."""
    assert SPEC.events is not None
    return replace(SPEC, name=name, events=replace(SPEC.events, stream=stream))


@pytest.fixture(scope="module")
def postgres_database(postgres_databases: Callable[[], str]) -> str:
    return postgres_databases()


@pytest.fixture(params=["sqlite", "postgres"])
def dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    if request.param == "postgres":
        made = postgres_schemas(request.getfixturevalue("postgres_database"), request.addfinalizer)
    else:
        made = sqlite_databases(tmp_path)
    yield made
    made.dispose()


@pytest.fixture
def stock(dbs: Databases) -> StockTables:
    return create_stock(dbs, SPEC)


@pytest.fixture
def stream(redis_prefix: str) -> str:
    return f"{redis_prefix}stock:events"


# --- the outbox and the stream, read and written without the relay --------------------------------
def add_events(
    dbs: Databases,
    stock: StockTables,
    changes: Sequence[tuple[int, int]],
    *,
    created: datetime | None = None,
    published: datetime | None = None,
) -> list[str]:
    """One outbox row per (key, version), each in its own transaction; their event ids."""
    made = []
    for key, version in changes:
        event_id = str(uuid.uuid4())
        payload = {"item_no": key, "qty_on_hand": version * 10, "origin": "legacy"}
        payload["row_version"] = version
        row = {
            "event_id": event_id,
            "aggregate_id": key,
            "event_type": "stock.synced",
            "row_version": version,
            "payload": json.dumps(payload, separators=(",", ":")),
            "created_at": created or datetime.now(UTC),
            "published_at": published,
        }
        with dbs.service.begin() as conn:
            conn.execute(insert(stock.outbox).values(row))
        made.append(event_id)
    return made


def outbox(dbs: Databases, stock: StockTables) -> list[dict[str, Any]]:
    table = stock.outbox
    with dbs.service.connect() as conn:
        return [dict(row) for row in conn.execute(select(table).order_by(table.c.id)).mappings()]


def unpublished(dbs: Databases, stock: StockTables) -> int:
    table = stock.outbox
    query = select(func.count()).where(table.c.published_at.is_(None))
    with dbs.service.connect() as conn:
        return int(conn.scalar(query) or 0)


def entries(url: str, stream: str) -> list[dict[str, str]]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return [fields for _id, fields in client.xrange(stream)]
    finally:
        client.close()


def event_ids(url: str, stream: str) -> list[str]:
    return [fields["event_id"] for fields in entries(url, stream)]


def relay_checkpoint(dbs: Databases) -> Any:
    with dbs.service.connect() as conn:
        return load_checkpoint(conn, OUTBOX, "relay")


# --- order, fields, marking ----------------------------------------------------------------------
def test_rows_are_published_in_id_order_with_the_subscribers_fields_and_marked_published(
    dbs: Databases, stock: StockTables, redis_url: str, stream: str
) -> None:
    made = add_events(dbs, stock, [(7, 1), (3, 1), (7, 2), (9, 1), (3, 2)])
    relay = Relay(with_stream(stream), dbs.service, redis_url, settings=RelaySettings(batch_size=2))
    try:
        assert [relay.publish_once() for _ in range(4)] == [2, 2, 1, 0]
    finally:
        relay.close()

    rows = outbox(dbs, stock)
    published = entries(redis_url, stream)
    assert [fields["event_id"] for fields in published] == made
    for fields, row in zip(published, rows, strict=True):
        assert set(fields) == FIELDS
        assert fields == {
            "event_id": row["event_id"],
            "type": "stock.synced",
            "item_no": str(row["aggregate_id"]),
            "row_version": str(row["row_version"]),
            "occurred_at": row["created_at"].isoformat().replace("+00:00", "Z"),
            "payload": row["payload"],
        }
        assert row["published_at"] is not None
        assert row["published_at"] >= row["created_at"]
    checkpoint = relay_checkpoint(dbs)
    assert (checkpoint.position_id, checkpoint.rows_done) == (rows[-1]["id"], 5)


def test_a_stream_subscriber_reads_the_published_rows_as_events(
    dbs: Databases, stock: StockTables, redis_url: str, stream: str
) -> None:
    add_events(dbs, stock, [(11, 1), (12, 1), (11, 2)])
    relay = Relay(with_stream(stream), dbs.service, redis_url)
    try:
        assert relay.publish_once() == 3
    finally:
        relay.close()

    async def read() -> list[Event]:
        subscriber = StreamSubscriber(redis_url, stream, "to-legacy", "c1", key_field="item_no")
        try:
            got = await subscriber.read(count=10, block_ms=100)
            await subscriber.ack(*got)
            return got
        finally:
            await subscriber.close()

    got = asyncio.run(read())
    expected = [
        Event(
            event_id=row["event_id"],
            type=row["event_type"],
            key=row["aggregate_id"],
            version=row["row_version"],
            occurred_at=row["created_at"].isoformat().replace("+00:00", "Z"),
            payload=json.loads(row["payload"]),
        )
        for row in outbox(dbs, stock)
    ]
    assert [replace(event, message_id="") for event in got] == expected
    assert all(event.message_id for event in got)
    assert got[2].payload == {
        "item_no": 11,
        "qty_on_hand": 20,
        "origin": "legacy",
        "row_version": 2,
    }


# --- one relay per outbox ------------------------------------------------------------------------
def test_two_relays_on_one_outbox_never_publish_a_row_twice_and_one_takes_over(
    dbs: Databases, stock: StockTables, redis_url: str, stream: str
) -> None:
    # Two declarations sharing the outbox and its stream (a catalog's products and categories).
    relays = [
        Relay(with_stream(stream, name), dbs.service, redis_url, settings=QUICK)
        for name in ("stock_items", "stock_bins")
    ]
    writer = threading.Thread(
        target=add_events, args=(dbs, stock, [(key, 1) for key in range(1, 151)])
    )
    for relay in relays:
        relay.start()
    try:
        writer.start()
        writer.join(60)
        wait_until(lambda: unpublished(dbs, stock) == 0, 30, "every row published")
        first = [row["event_id"] for row in outbox(dbs, stock)]
        assert event_ids(redis_url, stream) == first  # each once, in outbox order
        holder, standby = sorted(relays, key=lambda relay: -relay.published)
        assert (holder.published, standby.published) == (150, 0)

        holder.stop()  # releases the lease: the other takes it within a third of its duration
        later = add_events(dbs, stock, [(key, 2) for key in range(1, 21)])
        wait_until(lambda: unpublished(dbs, stock) == 0, 10, "the standby to take over")
        assert event_ids(redis_url, stream) == first + later
        assert standby.published == 20
    finally:
        for relay in relays:
            relay.stop()
    assert [relay.error for relay in relays] == [None, None]


# --- outages -------------------------------------------------------------------------------------
def test_a_redis_outage_loses_nothing_ends_nothing_and_logs_once(
    dbs: Databases, stock: StockTables, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="datasync.relay")
    with redis_process(persist=True) as server:
        relay = Relay(with_stream("stock:events"), dbs.service, server.url, settings=QUICK)
        relay.start()
        try:
            before = add_events(dbs, stock, [(key, 1) for key in range(1, 6)])
            wait_until(lambda: unpublished(dbs, stock) == 0, what="the first events published")
            server.stop()
            during = add_events(dbs, stock, [(key, 2) for key in range(1, 11)])
            wait_until(lambda: relay.health.failures >= 3, what="several failed passes")
            assert relay.running
            assert unpublished(dbs, stock) == 10  # nothing marked that was not published
            problem = relay_checkpoint(dbs).problem
            assert problem.startswith("EventSourceError: cannot publish to stream stock:events")
            server.start()
            wait_until(
                lambda: unpublished(dbs, stock) == 0 and relay.health.healthy,
                what="the relay to resume",
            )
            # Its recovery is recorded right after the pass that succeeded.
            wait_until(lambda: relay_checkpoint(dbs).problem is None, what="the recovery noted")
        finally:
            relay.stop()
        published = event_ids(server.url, "stock:events")
    assert relay.error is None
    assert published == before + during
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "datasync.relay" and r.levelno >= logging.WARNING
    ]
    assert len(warnings) == 2, warnings
    assert "EventSourceError: cannot publish" in warnings[0]
    assert "retrying" in warnings[0]
    assert "recovered after" in warnings[1]
    assert "Traceback" not in caplog.text


# --- retention -----------------------------------------------------------------------------------
def test_retention_deletes_only_rows_published_before_it(
    dbs: Databases, stock: StockTables, redis_url: str, stream: str
) -> None:
    now = datetime.now(UTC)
    two_days, three_days, an_hour = (
        now - timedelta(days=2),
        now - timedelta(days=3),
        now - timedelta(hours=1),
    )
    add_events(dbs, stock, [(k, 1) for k in range(1, 6)], created=three_days, published=two_days)
    recent = add_events(dbs, stock, [(k, 2) for k in range(1, 3)], published=an_hour)
    pending = add_events(dbs, stock, [(k, 3) for k in range(1, 3)], created=three_days)
    settings = RelaySettings(retention=24 * 3600, purge_batch=2)
    relay = Relay(with_stream(stream), dbs.service, redis_url, settings=settings)

    assert relay.purge_once() == 5  # in batches of 2
    assert [row["event_id"] for row in outbox(dbs, stock)] == recent + pending
    assert relay.purge_once() == 0


# --- embedding -----------------------------------------------------------------------------------
def test_a_relay_served_from_an_event_loop_publishes_when_woken(
    dbs: Databases, stock: StockTables, redis_url: str, stream: str
) -> None:
    slow = replace(QUICK, interval=30.0)  # only a wake publishes within the test
    relay = Relay(with_stream(stream), dbs.service, redis_url, settings=slow)

    async def lifespan() -> int:
        stop = asyncio.Event()
        task = asyncio.ensure_future(relay.serve(stop))
        await asyncio.sleep(0.3)  # the first pass found nothing
        made = await asyncio.to_thread(add_events, dbs, stock, [(5, 1), (6, 1)])
        relay.wake()
        await asyncio.to_thread(wait_until, lambda: unpublished(dbs, stock) == 0, 5, "a wake")
        assert event_ids(redis_url, stream) == made
        stop.set()
        result = await asyncio.wait_for(task, 5)
        return result.published

    assert asyncio.run(lifespan()) == 2


# --- the command ---------------------------------------------------------------------------------
def declaration(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stock_relay.yaml"
    path.write_text(text)
    return path


def with_stream_yaml(tmp_path: Path, stream: str) -> Path:
    text = STOCK_YAML.read_text()
    assert "  outbox: stock_outbox\n" in text
    return declaration(
        tmp_path,
        text.replace("  outbox: stock_outbox\n", f"  outbox: stock_outbox\n  stream: {stream}\n"),
    )


def test_the_command_publishes_once_and_refuses_while_another_relay_works(
    dbs: Databases, stock: StockTables, redis_url: str, stream: str, tmp_path: Path
) -> None:
    path = with_stream_yaml(tmp_path, stream)
    made = add_events(dbs, stock, [(1, 1), (2, 1), (1, 2)])
    base = ["relay", "--sync", str(path), "--service-db", dbs.service_url, "--once"]

    done = runner.invoke(app, [*base, "--redis-url", redis_url, "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {
        "outbox": OUTBOX,
        "stream": stream,
        "published": 3,
        "purged": 0,
        "retention_seconds": 86400.0,
        "standby": False,
        "problem": None,
    }
    assert event_ids(redis_url, stream) == made
    assert unpublished(dbs, stock) == 0

    again = runner.invoke(app, base, env={"STRANGLER_REDIS_URL": redis_url})
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith(f"relay {OUTBOX} -> {stream}: published 0 event(s); purged 0")

    working = Relay(with_stream(stream, "stock_bins"), dbs.service, redis_url)
    try:
        assert working.publish_once() == 0  # holds the lease now
        refused = runner.invoke(app, [*base, "--redis-url", redis_url])
    finally:
        working.close()
    assert refused.exit_code == 1
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"error: another relay is running for the {OUTBOX} sync (lease held by")


def test_the_command_refuses_a_declaration_without_an_outbox_and_a_stream(
    tmp_path: Path,
) -> None:
    text = STOCK_YAML.read_text()
    no_events = declaration(
        tmp_path,
        text[: text.index("events:")].replace(
            "directions: [to-service, to-legacy]", "directions: [to-service]"
        ),
    )
    cases = {
        no_events: "declares no events.outbox and no events.stream",
        STOCK_YAML: "declares no events.stream",  # an outbox the to-legacy job reads directly
    }
    for path, missing in cases.items():
        done = runner.invoke(
            app, ["relay", "--sync", str(path), "--redis-url", "redis://127.0.0.1:1/0", "--once"]
        )
        assert done.exit_code == 1, done.output
        assert done.stderr.splitlines() == [
            f"error: sync stock_items {missing}: the relay publishes the outbox table to the "
            f"stream ({path})"
        ]

    no_url = runner.invoke(
        app,
        ["relay", "--sync", str(with_stream_yaml(tmp_path, "s")), "--once"],
        env={"STRANGLER_REDIS_URL": None},
    )
    assert no_url.exit_code == 1
    assert no_url.stderr.splitlines() == ["error: relay needs --redis-url (or STRANGLER_REDIS_URL)"]
