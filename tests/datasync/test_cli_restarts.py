"""The measured failure, end to end: `strangler sync to-legacy --redis-url …` as its own process
exited with a traceback (`ConnectionError: Connection closed by server.`) on every Redis restart
and never came back. Here Redis (a server of the test's own, kept on disk or not) is restarted
twice under it while the payment service's relay publishes payments made meanwhile: the process
stays up, prints a few warning lines per outage and no traceback, every event reaches the legacy
table, and SIGTERM ends it cleanly (exit 0)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.payment.sync import backfill, reconcile
from tests.datasync.test_restarts import (
    Writer,
    all_in_legacy,
    jobs,
    orders,
    pay,
    relaying,
    service_ids,
    unpublished,
    wait_for,
)
from tests.restartable import redis_process
from tests.services.payment.sync.conftest import (  # noqa: F401 (fixtures)
    Pair,
    sqlite_pair,
    sqlite_templates,
)

ROOT = Path(__file__).resolve().parents[2]
RESTARTS = 2


def strangler() -> list[str]:
    """The installed `strangler` command, else the same entry point through this Python."""
    script = Path(sys.executable).with_name("strangler")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from proxy.cli import main; main()"]


@pytest.mark.parametrize("persist", [True, False], ids=["persisted", "lost"])
def test_to_legacy_as_a_process_outlives_redis_restarts(
    sqlite_pair: Pair,  # noqa: F811
    tmp_path: Path,
    persist: bool,
) -> None:
    pair = sqlite_pair
    backfill(pair.legacy, pair.service)
    made = orders(pair, 150)  # more than the writer makes at its pace
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with redis_process(persist=persist) as server, jobs() as loop:
        command = [
            *strangler(),
            "sync",
            "to-legacy",
            "--redis-url",
            server.url,
            "--legacy-db",
            pair.legacy_url,
            "--service-db",
            pair.service_url,
            "--block-ms",
            "200",
        ]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=stderr)
        try:

            def recoveries() -> int:
                return err.read_text(errors="replace").count("recovered")

            with relaying(loop, pair, server.url):
                with Writer(pay(pair, made), every=0.1) as writer:
                    wait_for(lambda: writer.done >= 5 and all_in_legacy(pair), "first payments")
                    for restart in range(1, RESTARTS + 1):
                        server.restart(0.5)
                        wait_for(lambda: recoveries() >= restart, f"recovery {restart}")  # noqa: B023
                        assert process.poll() is None, err.read_text(errors="replace")
                        wanted = writer.done + 5  # payments made after this restart
                        wait_for(
                            lambda: writer.done >= wanted and all_in_legacy(pair),  # noqa: B023
                            f"payments after restart {restart}",
                        )
                wait_for(lambda: unpublished(pair) == 0, "the relay to publish everything")
                wait_for(lambda: all_in_legacy(pair), "every service payment in the legacy table")
            assert process.poll() is None, err.read_text(errors="replace")
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    errors = err.read_text(errors="replace")
    assert code == 0, errors
    assert "Traceback" not in errors
    lines = errors.splitlines()
    # Per outage: its beginning, its end, and (Redis kept nothing) the group made again.
    assert len(lines) <= RESTARTS * (2 if persist else 3), errors
    assert sum("retrying" in line for line in lines) == RESTARTS, errors
    assert sum("recovered" in line for line in lines) == RESTARTS, errors
    assert len(service_ids(pair)) == writer.done
    assert reconcile(pair.legacy, pair.service, settle=0).drift == 0
    assert "events" in out.read_text()  # the summary printed on the way out
