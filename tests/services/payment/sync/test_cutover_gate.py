"""The cutover gate trusts live data only: follow must be alive (its last poll within
max(3 x its interval, 10 s); a stopped follower or an old `--once` poll does not count), the two
drift-0 reconciles must have finished after the backfill and within the freshness window, and
the lag must be within budget. Each unmet condition is explained (human and --json)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import timedelta

from typer.testing import CliRunner

from datasync.cli import app
from datasync.state import JOB_FOLLOW, load_checkpoint, save_checkpoint
from datasync.status import status_lines
from services.payment.db import utcnow
from services.payment.sync import (
    backfill,
    cutover_check,
    follow,
    follow_once,
    gather_status,
    reconcile,
    spec,
)
from tests.services.payment.sync.conftest import Pair


def ready(pair: Pair) -> None:
    """Backfill, one follow poll, drift 0 confirmed twice: the gate opens."""
    backfill(pair.legacy, pair.service)
    follow_once(pair.legacy, pair.service, safety_delay=0)
    for _ in range(2):
        assert reconcile(pair.legacy, pair.service, settle=0).drift == 0
    gate = cutover_check(pair.service)
    assert (gate.ready, gate.reasons) == (True, ())


def unmet(pair: Pair, **options: object) -> dict[str, str]:
    gate = cutover_check(pair.service, **options)  # type: ignore[arg-type]
    assert not gate.ready
    assert gate.reasons
    return {str(c["name"]): str(c["detail"]) for c in gate.checks if not c["ok"]}


def test_stopping_follow_then_paying_in_the_monolith_closes_the_gate(pair: Pair) -> None:
    ready(pair)
    polled = threading.Event()
    stop = threading.Event()

    def once(_result: object) -> None:
        polled.set()
        stop.set()

    follow(pair.legacy, pair.service, interval=0.05, stop=stop, on_poll=once, safety_delay=0)
    assert polled.is_set()
    pair.insert_legacy()  # a monolith payment nobody copies any more

    problems = unmet(pair)
    assert list(problems) == ["follow_alive"]
    assert "follow is stopped" in problems["follow_alive"]


def test_a_follower_counts_as_alive_within_three_intervals_or_ten_seconds(pair: Pair) -> None:
    ready(pair)
    # A single poll (--once) records no interval and counts only while it is recent: 10 s.
    with pair.service.connect() as conn:
        checkpoint = load_checkpoint(conn, spec().name, JOB_FOLLOW)
    assert checkpoint is not None
    assert (checkpoint.status, checkpoint.poll_interval) == ("once", None)
    assert cutover_check(pair.service, now=utcnow() + timedelta(seconds=8)).ready
    problems = unmet(pair, now=utcnow() + timedelta(seconds=11))
    assert list(problems) == ["follow_alive"]
    assert "single follow poll (--once)" in problems["follow_alive"]

    # A continuous follower records its interval (5 s): alive for 15 s after its last poll.
    polled, stop = threading.Event(), threading.Event()
    thread = threading.Thread(
        target=follow,
        args=(pair.legacy, pair.service),
        kwargs={"interval": 5.0, "stop": stop, "on_poll": lambda _r: polled.set()},
    )
    thread.start()
    try:
        assert polled.wait(15)
        with pair.service.connect() as conn:
            checkpoint = load_checkpoint(conn, spec().name, JOB_FOLLOW)
        assert checkpoint is not None
        assert (checkpoint.status, checkpoint.poll_interval) == ("polling", 5.0)
        assert checkpoint.message is None  # a free human note: follow keeps nothing in it
        assert cutover_check(pair.service, now=utcnow() + timedelta(seconds=13)).ready
        problems = unmet(pair, now=utcnow() + timedelta(seconds=16))
        assert "over 15s" in problems["follow_alive"]
        assert "is it dead" in problems["follow_alive"]
    finally:
        stop.set()
        thread.join(15)


def test_reconciles_must_be_recent_and_after_the_backfill(pair: Pair) -> None:
    ready(pair)
    problems = unmet(pair, reconcile_max_age=900, now=utcnow() + timedelta(minutes=16))
    assert "stale" in problems["reconciles"]
    # (now + 16 min also makes the follow poll old; the reconciles are judged on their own.)
    problems = unmet(pair, reconcile_max_age=0.0)
    assert list(problems) == ["reconciles"]
    assert "stale" in problems["reconciles"]

    # A backfill finished after them (--restart): they compared other data.
    backfill(pair.legacy, pair.service, restart=True)
    follow_once(pair.legacy, pair.service, safety_delay=0)
    problems = unmet(pair)
    assert list(problems) == ["reconciles"]
    assert "before the backfill did" in problems["reconciles"]
    reconcile(pair.legacy, pair.service, settle=0)
    assert "1 of the 2" not in unmet(pair)["reconciles"]  # one old, one new: still not enough
    reconcile(pair.legacy, pair.service, settle=0)
    assert cutover_check(pair.service).ready


def test_lag_over_budget_closes_the_gate(pair: Pair) -> None:
    ready(pair)
    with pair.service.begin() as conn:
        checkpoint = load_checkpoint(conn, spec().name, JOB_FOLLOW)
        assert checkpoint is not None
        save_checkpoint(conn, replace(checkpoint, lag_seconds=42.0))
    problems = unmet(pair)
    assert list(problems) == ["lag"]
    assert "follow lag 42.0s is over 5.0s" in problems["lag"]


def test_status_explains_every_unmet_condition(pair: Pair) -> None:
    backfill(pair.legacy, pair.service)
    reconcile(pair.legacy, pair.service, settle=0)
    data = gather_status(pair.service)
    gate = data["cutover"]
    assert gate["ready"] is False
    assert {c["name"]: c["ok"] for c in gate["checks"]} == {
        "backfill": True,
        "follow_alive": False,
        "lag": False,
        "reconciles": False,
    }
    assert gate["reasons"] == [
        "follow has not run",
        "follow has not run, so its lag is unknown",
        "1 of the 2 reconciles needed have run",
    ]
    lines = dict(status_lines(data))
    assert lines["cutover gate"] == "NOT READY"
    assert lines["  follow"] == "UNMET: follow has not run"
    assert lines["  backfill"].startswith("ok: ")

    # The freshness window is an option of `status`.
    follow_once(pair.legacy, pair.service, safety_delay=0)
    reconcile(pair.legacy, pair.service, settle=0)
    args = ["--legacy-db", pair.legacy_url, "--service-db", pair.service_url]
    fresh = CliRunner().invoke(app, ["status", "--json", *args])
    assert json.loads(fresh.stdout)["cutover"]["ready"] is True, fresh.output
    stale = CliRunner().invoke(app, ["status", "--json", "--reconcile-max-age", "0", *args])
    gate = json.loads(stale.stdout)["cutover"]
    assert gate["ready"] is False
    assert len(gate["reasons"]) == 1
    assert "stale" in gate["reasons"][0]
    human = CliRunner().invoke(app, ["status", "--reconcile-max-age", "0", *args])
    assert "NOT READY" in human.stdout
    assert "UNMET: the last 2 reconciles are stale" in human.stdout
