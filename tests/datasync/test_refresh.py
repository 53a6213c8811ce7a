"""A table without a change column, followed by full refresh (`datasync/refresh.py`): the
`regions` lookup table of `tables/regions.yaml`, on SQLite and PostgreSQL. Each pass copies what
differs, deletes what the legacy no longer holds (with a deletion event), writes nothing on an
unchanged table, and keeps the service's view in the same transaction through the `project`
hook; a failing hook rolls its page back. The declaration refuses what such a table cannot do.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from typer.testing import CliRunner

from datasync.backfill import backfill
from datasync.cli import app
from datasync.declaration import DeclarationError, load, loads
from datasync.incremental import follow, follow_once
from datasync.reconcile import reconcile
from datasync.spec import LEGACY_WINS
from datasync.state import ensure_schema, utcnow
from datasync.status import cutover_check, gather_status
from tests.datasync.tables import regions as r
from tests.datasync.tables.stock import Databases, postgres_schemas, sqlite_databases

YAML = Path(r.__file__).with_name("regions.yaml")
SPEC = load(YAML)


@pytest.fixture(scope="module")
def postgres_database(postgres_databases: Callable[[], str]) -> str:
    return postgres_databases()


@pytest.fixture(params=["sqlite", "postgres"])
def dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    if request.param == "postgres":
        made = postgres_schemas(request.getfixturevalue("postgres_database"), request.addfinalizer)
    else:
        made = sqlite_databases(tmp_path)
    r.legacy_md.create_all(made.monolith)
    r.service_md.create_all(made.service)
    ensure_schema(made.service)
    r.CALLS.clear()
    r.FAIL_ON.clear()
    yield made
    made.dispose()


def region(key: int, rank: int = 1, label: str | None = None) -> dict[str, Any]:
    return {"region_id": key, "code": f"R{key}", "label": label or f"Region {key}", "rank": rank}


def seed(dbs: Databases, keys: list[int]) -> None:
    with dbs.monolith.begin() as conn:
        conn.execute(insert(r.regions), [region(k, rank=k % 3) for k in keys])


def legacy_rows(dbs: Databases) -> list[dict[str, Any]]:
    with dbs.monolith.connect() as conn:
        return [dict(row) for row in conn.execute(select(r.regions)).mappings()]


def service_rows(dbs: Databases) -> list[dict[str, Any]]:
    """The service's rows under legacy names, read without the engine."""
    with dbs.service.connect() as conn:
        rows = conn.execute(select(r.svc_regions)).mappings()
        return [
            {"region_id": x["region_id"], "code": x["code"], "label": x["title"], "rank": x["rank"]}
            for x in rows
        ]


def view(dbs: Databases) -> dict[int, tuple[str, int]]:
    with dbs.service.connect() as conn:
        return {v.region_id: (v.shout, v.same_rank) for v in conn.execute(select(r.region_view))}


def events(dbs: Databases) -> list[tuple[str, int, dict[str, Any]]]:
    with dbs.service.connect() as conn:
        found = conn.execute(select(r.region_outbox).order_by(r.region_outbox.c.id)).all()
    return [(e.event_type, e.aggregate_id, json.loads(e.payload)) for e in found]


def assert_in_step(dbs: Databases) -> None:
    legacy = legacy_rows(dbs)
    assert sorted(service_rows(dbs), key=lambda x: x["region_id"]) == sorted(
        legacy, key=lambda x: x["region_id"]
    )
    assert view(dbs) == r.expected_view(legacy)


# --- the declaration ----------------------------------------------------------------------------
def test_a_table_without_a_change_column_is_followed_by_full_refresh() -> None:
    assert SPEC.refreshed
    assert SPEC.changed is None
    assert SPEC.conflict == LEGACY_WINS  # the default without times to compare
    assert SPEC.hooks["project"] is r.project


@pytest.mark.parametrize(
    ("extra", "where", "reason"),
    [
        ("directions: [to-service, to-legacy]\n", "directions", "moves to the service only"),
        ("conflict: newer-wins\n", "conflict", "it takes legacy-wins"),
        ("conflict: service-wins\n", "conflict", "it takes legacy-wins"),
        ("gate: {max_lag: 250ms}\n", "gate.max_lag", "never lets the gate pass"),
    ],
)
def test_what_a_refreshed_table_cannot_do_is_refused_with_its_line(
    extra: str, where: str, reason: str
) -> None:
    text = YAML.read_text().replace("gate: {max_lag: 5s, confirmations: 1}\n", "") + extra
    with pytest.raises(DeclarationError) as refused:
        loads(text, "regions.yaml")
    line = text.splitlines().index(extra.rstrip("\n")) + 1
    assert f"regions.yaml:{line}: {where}: " in str(refused.value)
    assert reason in str(refused.value)


def test_a_refreshed_table_has_no_key_range_of_the_services_own() -> None:
    text = YAML.read_text().replace(
        "  table: svc_regions\n", "  table: svc_regions\n  key_floor: 1_000_000\n"
    )
    with pytest.raises(DeclarationError, match=r"service\.key_floor: .*no keys of its own"):
        loads(text, "regions.yaml")


def test_a_refreshed_table_cannot_be_compensated() -> None:
    text = YAML.read_text() + (
        "compensate:\n"
        "  - name: rule\n"
        "    watch: {table: orders, key: id, changed: updated_at, when: {state: x}}\n"
        "    match: rank\n"
        "    state: code\n"
        '    actions: {R1: {call: "POST /api/v1/regions/{region_id}/void"}}\n'
    )
    with pytest.raises(DeclarationError, match=r"compensate: .*cannot be compensated"):
        loads(text, "regions.yaml")


# --- passes -------------------------------------------------------------------------------------
def test_backfill_then_a_pass_over_an_unchanged_table_writes_nothing(dbs: Databases) -> None:
    seed(dbs, list(range(1, 11)))
    backfill(SPEC, dbs.legacy, dbs.service, batch_size=4)
    assert_in_step(dbs)  # backfill's batches went through the hook too
    told = len(r.CALLS)
    result = follow_once(SPEC, dbs.legacy, dbs.service)
    assert (result.rows_read, result.pages, result.counts.written) == (10, 3, 0)
    assert result.counts.unchanged == 10
    assert result.counts.deleted == 0
    assert len(r.CALLS) == told  # nothing changed: the hook is not called
    assert events(dbs) == []  # backfill records none, an empty pass none


def test_a_pass_applies_inserts_updates_and_hard_deletes_with_their_events(
    dbs: Databases,
) -> None:
    seed(dbs, list(range(1, 11)))
    follow_once(SPEC, dbs.legacy, dbs.service)
    assert_in_step(dbs)
    first = events(dbs)
    assert sorted(key for _, key, _ in first) == list(range(1, 11))  # follow's inserts
    with dbs.monolith.begin() as conn:
        conn.execute(
            update(r.regions).where(r.regions.c.region_id == 6).values(label="Six", rank=2)
        )
        # The first key, one in the middle of a page, a page's last, and the table's last.
        conn.execute(r.regions.delete().where(r.regions.c.region_id.in_([1, 5, 8, 10])))
        conn.execute(insert(r.regions), [region(20, rank=2), region(7_000, rank=9)])
    result = follow_once(SPEC, dbs.legacy, dbs.service)
    c = result.counts
    assert (c.inserted, c.updated, c.deleted) == (2, 1, 4)
    assert_in_step(dbs)
    kinds = sorted((kind, key) for kind, key, _ in events(dbs)[len(first) :])
    assert kinds == [
        ("region.changed", 6),
        ("region.changed", 20),
        ("region.changed", 7_000),
        ("region.deleted", 1),
        ("region.deleted", 5),
        ("region.deleted", 8),
        ("region.deleted", 10),
    ]
    deleted = next(p for kind, key, p in events(dbs) if (kind, key) == ("region.deleted", 5))
    assert deleted == {"region_id": 5, "deleted": True, "origin": "legacy"}
    changed = [p for kind, key, p in events(dbs) if key == 6][-1]
    assert (changed["title"], changed["rank"]) == ("Six", 2)  # by the service's names


def test_a_failing_projection_rolls_its_page_back_and_the_next_pass_completes(
    dbs: Databases,
) -> None:
    seed(dbs, list(range(1, 11)))
    backfill(SPEC, dbs.legacy, dbs.service)  # records no events
    with dbs.monolith.begin() as conn:
        conn.execute(update(r.regions).where(r.regions.c.region_id.in_([2, 6])).values(rank=7))
    r.FAIL_ON.add(6)
    with pytest.raises(r.ProjectionFailed):
        follow_once(SPEC, dbs.legacy, dbs.service)
    by_key = {x["region_id"]: x for x in service_rows(dbs)}
    assert by_key[2]["rank"] == 7  # its page (1-4) committed before
    assert by_key[6]["rank"] == 0  # its page (5-8) rolled back whole: rows, events, view
    assert {key for _, key, _ in events(dbs)} == {2}
    r.FAIL_ON.clear()
    follow_once(SPEC, dbs.legacy, dbs.service)
    assert_in_step(dbs)


def test_reconcile_and_status_know_a_refreshed_table(dbs: Databases) -> None:
    seed(dbs, list(range(1, 8)))
    follow_once(SPEC, dbs.legacy, dbs.service)
    clean = reconcile(SPEC, dbs.legacy, dbs.service, settle=0, recheck_after=0)
    assert clean.drift == 0
    with dbs.monolith.begin() as conn:
        conn.execute(update(r.regions).where(r.regions.c.region_id == 3).values(label="Moved"))
    behind = reconcile(SPEC, dbs.legacy, dbs.service, settle=0, recheck_after=0)
    assert behind.drift == 1  # no change time: nothing is "in flight", the pass has not run
    time.sleep(0.3)
    status = gather_status(SPEC, dbs.service, dbs.legacy)
    following = status["follow"]
    assert following["high_water"] is None
    assert following["live_lag_seconds"] >= 0.3  # as old as the last pass's start
    follow_once(SPEC, dbs.legacy, dbs.service)
    assert reconcile(SPEC, dbs.legacy, dbs.service, settle=0, recheck_after=0).drift == 0
    # The gate judges a refreshed table by the age of its last pass, not the pass's length.
    assert not [x for x in cutover_check(SPEC, dbs.service).reasons if "lag" in x]
    later = utcnow() + timedelta(seconds=6)  # past max_lag 5s, before follow counts as dead
    late = [x for x in cutover_check(SPEC, dbs.service, now=later).reasons if "lag" in x]
    assert len(late) == 1
    assert re.fullmatch(r"follow lag [67]\.\ds is over 5\.0s", late[0])


def test_a_running_follower_refreshes_every_interval(dbs: Databases) -> None:
    seed(dbs, [1, 2, 3])
    stop = threading.Event()
    runner = threading.Thread(
        target=follow, args=(SPEC, dbs.legacy, dbs.service), kwargs={"stop": stop}, daemon=True
    )
    runner.start()
    try:
        wait_for(lambda: len(service_rows(dbs)) == 3)
        with dbs.monolith.begin() as conn:
            conn.execute(r.regions.delete().where(r.regions.c.region_id == 2))
            conn.execute(insert(r.regions), [region(4, label="Late")])
        wait_for(lambda: sorted(x["region_id"] for x in service_rows(dbs)) == [1, 3, 4])
        assert_in_step(dbs)
    finally:
        stop.set()
        runner.join(10)
    assert not runner.is_alive()


def test_the_command_line_follows_a_refreshed_table(dbs: Databases) -> None:
    seed(dbs, [1, 2])
    env = {"STRANGLER_LEGACY_DB": dbs.legacy_url, "STRANGLER_SERVICE_DB": dbs.service_url}
    done = CliRunner().invoke(app, ["follow", "--once", "--sync", str(YAML)], env=env)
    assert done.exit_code == 0, done.output
    assert "2 inserted" in done.output
    assert "0 deleted; full refresh of 1 page(s)" in done.output
    assert_in_step(dbs)


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_the_refresh_statements_compile_for_oracle() -> None:
    """Keyset pages without LIMIT (FETCH FIRST on 19c and 23ai) and bounded key ranges."""
    from sqlalchemy.dialects import oracle

    from datasync.refresh import legacy_page, service_keys

    for version in ((19,), (23,)):
        dialect = oracle.dialect()  # type: ignore[no-untyped-call]
        dialect.server_version_info = version
        for statement in (
            legacy_page(SPEC, None, 500),
            legacy_page(SPEC, 7, 500),
            service_keys(SPEC, 7, 11),
            service_keys(SPEC, None, None),
        ):
            sql = str(statement.compile(dialect=dialect))
            assert "LIMIT" not in sql, sql
        page = str(legacy_page(SPEC, 7, 500).compile(dialect=dialect))
        assert "FETCH FIRST" in page
        assert "ORDER BY regions.region_id" in page
