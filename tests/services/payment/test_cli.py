"""`python -m services.payment` as operators run it: serve, migrate, relay, refuse to start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import httpx
import redis

from proxy.procs import Child
from services.payment import billing
from services.payment.db import make_engine, make_session_factory, upgrade, utcnow
from services.payment.ids import SERVICE_ID_FLOOR
from services.payment.schemas import LegacyOrder, PaymentIn
from tests.support import free_port, wait_until

PY = sys.executable
DOWN = f"http://127.0.0.1:{free_port()}"  # no monolith: health must not need one


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "services.payment", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_answers_health_and_stops_cleanly(tmp_path: Path) -> None:
    args = [PY, "-m", "services.payment", "--port", "0", "--legacy-url", DOWN]
    with Child("payment", args, cwd=str(tmp_path)) as child:
        assert httpx.get(f"{child.url}/healthz").json()["status"] == "ok"
        ready = httpx.get(f"{child.url}/readyz").json()
        assert (ready["database"], ready["events"]) == ("sqlite", "memory")
        # uvicorn re-raises the SIGTERM it handled once shutdown is complete.
        assert child.stop() in (0, -signal.SIGTERM)
        assert any("Application shutdown complete" in line for line in child.output)
    assert (tmp_path / "var" / "payment.db").exists()  # the default: SQLite under ./var/


def test_migrate_brings_a_database_to_head_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    done = run(["migrate"], tmp_path, PAYMENT_DATABASE_URL=url)
    assert done.returncode == 0, done.stderr
    assert re.search(r"migrated sqlite:///.*env\.db to \w+", done.stdout)
    again = run(["migrate", "--database-url", url], tmp_path)
    assert again.returncode == 0
    assert again.stdout.split()[-1] == done.stdout.split()[-1]
    assert not (tmp_path / "var").exists()


def test_a_monolith_id_in_the_service_range_refuses_to_start(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    order = LegacyOrder(
        id=1, user_id=1, status="pending_payment", total=Decimal("1.00"), currency="EUR"
    )
    with sessions() as session, session.begin():
        billing.create_payment(
            session, order, PaymentIn(order_id=1, method="wallet"), SERVICE_ID_FLOOR + 1, utcnow()
        )
    engine.dispose()
    done = run(["--port", "0", "--database-url", url, "--legacy-url", DOWN], tmp_path)
    assert done.returncode != 0
    assert "IdRangeError" in done.stderr
    assert "the id spaces would collide" in done.stderr


def test_the_standalone_relay_publishes_and_stops_on_sigterm(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    assert run(["relay"], tmp_path).returncode == 2  # needs Redis
    url = f"sqlite:///{tmp_path / 'p.db'}"
    engine = make_engine(url)
    upgrade(engine)
    order = LegacyOrder(
        id=1, user_id=1, status="pending_payment", total=Decimal("1.00"), currency="EUR"
    )
    with make_session_factory(engine)() as session, session.begin():
        billing.create_payment(session, order, PaymentIn(order_id=1, method="wallet"), 9, utcnow())
    engine.dispose()
    stream = f"{redis_prefix}events"
    proc = subprocess.Popen(
        [PY, "-m", "services.payment", "relay", "--database-url", url, "--redis-url", redis_url],
        env={**os.environ, "PAYMENT_EVENTS_STREAM": stream, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert f"relaying outbox events to {stream}" in proc.stdout.readline()
        client = redis.Redis.from_url(redis_url)
        wait_until(lambda: client.xlen(stream) == 1, what="the relay to publish")
        client.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "relay stopped after publishing 1 events" in out
