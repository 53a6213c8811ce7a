"""After cutover the payment service dies, and the shop keeps taking payments.

Everything that serves runs as operators run it, as child processes on 127.0.0.1: the seeded
monolith, the payment service (its data backfilled), `strangler sync follow` and `strangler sync
to-legacy` (both kept running after cutover, as the README says), and `strangler serve` with the
payments route moved to the service, `fallback: monolith` and outlier ejection with a short
`base_ejection`. A few app users (threads) log in and loop through the proxy: cart, order, POST
/payments with an Idempotency-Key, GET the payment back. Mid-traffic the service is killed
(SIGKILL), the traffic goes on for a few seconds, the service is started again on its port, and
the traffic goes on until the proxy has taken it back by itself (outlier state closed). Then:

- every POST /payments was answered 201: a request that never reached the dead service (refused,
  or the upstream ejected) may go to the monolith whatever its method (proxy/dataplane/plan.py);
- during the outage every payments answer came from the monolith (the `strangler-fallback`
  header, and the proxy's access log), and a payment the service took before the kill, once
  to-legacy delivered it, reads back 200 through the proxy;
- once follow and to-legacy have caught up, each Idempotency-Key made exactly one payment, the
  same one in both databases, and `strangler sync reconcile` finds drift 0.

The kill waits until no POST /payments is in flight (GETs and the monolith's own requests go
on): a POST the service received before it died may have been committed there, so the proxy
answers it 502 rather than repeat it elsewhere, and as the monolith ignores Idempotency-Key a
client's retry could pay twice there. That case is the contract's, not this test's subject.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Table, select
from sqlalchemy.engine import Engine

from legacy_monolith.db import make_engine as make_monolith_engine
from legacy_monolith.models import Payment as LegacyPayment
from legacy_monolith.models import User
from legacy_monolith.seed import DEMO_PASSWORD, STAFF_USER, seed
from proxy.demo import SYNC_METRICS
from proxy.procs import Child
from services.payment.db import make_engine as make_service_engine
from services.payment.db import upgrade
from services.payment.models import Payment as ServicePayment
from services.payment.sync import backfill
from tests.functional.proxy_support import STRANGLER, ProxyProcess, counter
from tests.support import free_port, wait_until

SEEDED = 40  # the monolith's payments before the test's
FAST_HASH = 1_000  # PBKDF2 rounds for seeded users; production strength is not under test here
PYTHON = sys.executable
USERS = 4  # app users sending traffic at once
OUTAGE_SECONDS = 3.5  # the deliberate window: how long the service stays dead before its restart
SERVICE_IDS = range(3_000_000_000_000_000, 4_000_000_000_000_001)  # the ids the service hands out
FALLBACK = "strangler-fallback"
LEGACY_TABLE: Table = LegacyPayment.__table__  # type: ignore[assignment]
SERVICE_TABLE: Table = ServicePayment.__table__  # type: ignore[assignment]

ROUTES = """\
version: 1
upstreams:
  monolith: {{url: "http://127.0.0.1:{monolith}"}}
  payment:
    url: "http://127.0.0.1:{payment}"
    connect_timeout: 1s
    outlier: {{base_ejection: 1s, max_ejection: 2s}}
default: monolith
routes:
  - name: payments
    match: {{path: /api/v1/payments}}
    to: payment
    fallback: monolith
"""


@dataclass
class Call:
    """One payments request of an app user, as the user saw it."""

    method: str
    path: str
    started: float
    request_id: str
    ended: float = 0.0
    status: int = 0  # 0: no answer at all
    fallback: str | None = None  # the strangler-fallback header: the fallback served it
    payment: dict[str, Any] | None = None
    key: str | None = None
    error: str = ""

    @property
    def payment_id(self) -> int | None:
        return int(self.payment["id"]) if self.payment else None


def login(http: httpx.Client, email: str) -> dict[str, str]:
    answer = http.post("/api/v1/auth/login", json={"email": email, "password": DEMO_PASSWORD})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def new_order(http: httpx.Client, auth: dict[str, str], product: int) -> int:
    added = http.post("/api/v1/cart/items", json={"product_id": product}, headers=auth)
    assert added.status_code == 201, added.text
    order = http.post("/api/v1/orders", json={}, headers=auth)
    assert order.status_code == 201, order.text
    return int(order.json()["id"])


class Traffic:
    """App users, one thread each. Their POST /payments can be held back for a moment."""

    def __init__(self, proxy_url: str, users: list[str], products: list[int]) -> None:
        self.proxy_url = proxy_url
        self.calls: list[Call] = []
        self.orders: dict[str, int] = {}  # Idempotency-Key -> the order it pays
        self.errors: list[str] = []  # a user that stopped on anything else
        self._stopping = threading.Event()
        self._gate = threading.Condition()
        self._posting = 0
        self._held = False
        self._threads = [
            threading.Thread(target=self._user, args=(email, product), daemon=True)
            for email, product in zip(users, products, strict=True)
        ]

    def start(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=20)
        assert not any(t.is_alive() for t in self._threads), "an app user is stuck"

    @contextlib.contextmanager
    def no_payment_post_in_flight(self) -> Iterator[None]:
        with self._gate:
            self._held = True
            assert self._gate.wait_for(lambda: self._posting == 0, timeout=15)
        try:
            yield
        finally:
            with self._gate:
                self._held = False
                self._gate.notify_all()

    @contextlib.contextmanager
    def _posting_payment(self) -> Iterator[None]:
        with self._gate:
            self._gate.wait_for(lambda: not self._held)
            self._posting += 1
        try:
            yield
        finally:
            with self._gate:
                self._posting -= 1
                self._gate.notify_all()

    def call(
        self, http: httpx.Client, method: str, path: str, headers: dict[str, str], **kwargs: Any
    ) -> Call:
        """A payments request, recorded whatever happens to it (its X-Request-ID names its line
        in the proxy's access log)."""
        call = Call(method, path, time.monotonic(), request_id=uuid.uuid4().hex)
        try:
            answer = http.request(
                method, path, headers={**headers, "X-Request-ID": call.request_id}, **kwargs
            )
        except httpx.HTTPError as exc:
            call.error = repr(exc)
        else:
            call.status = answer.status_code
            call.fallback = answer.headers.get(FALLBACK)
            if answer.status_code in (200, 201):
                call.payment = answer.json()
            else:
                call.error = answer.text[:300]
        call.ended = time.monotonic()
        self.calls.append(call)
        return call

    def _user(self, email: str, product: int) -> None:
        try:
            with httpx.Client(base_url=self.proxy_url, timeout=10) as http:
                auth = login(http, email)
                while not self._stopping.is_set():
                    order = new_order(http, auth, product)
                    key = f"pay-{uuid.uuid4()}"
                    self.orders[key] = order
                    with self._posting_payment():
                        paid = self.call(
                            http,
                            "POST",
                            "/api/v1/payments",
                            json={"order_id": order, "method": "card", "card_token": "tok_visa"},
                            headers={**auth, "Idempotency-Key": key},
                        )
                    paid.key = key
                    if paid.payment_id is not None:
                        self.call(http, "GET", f"/api/v1/payments/{paid.payment_id}", headers=auth)
        except Exception as exc:  # reported by the test, not lost in a thread
            self.errors.append(f"{email}: {exc!r}")

    def payments(self, since: float = 0.0, until: float = float("inf")) -> list[Call]:
        """The calls that started at or after `since` and ended by `until`."""
        return [c for c in list(self.calls) if c.started >= since and c.ended <= until]

    def posts(self) -> list[Call]:
        return [c for c in list(self.calls) if c.method == "POST"]

    def taken_by_service(self, since: float) -> int:
        return sum(
            1
            for c in self.payments(since)
            if c.method == "POST" and c.status == 201 and c.fallback is None
        )


class Job:
    """A long-running `strangler sync` job, its output in a file; stopped with SIGTERM."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log
        self.args = [STRANGLER, "sync", *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Job:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def check_running(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.args[2]} exited:\n{self.log.read_text()[-2000:]}")


def payments_by_order(engine: Engine, table: Table, orders: list[int]) -> dict[int, list[int]]:
    """order id -> the ids of its payments, in one database."""
    out: dict[int, list[int]] = {order: [] for order in orders}
    with engine.connect() as conn:
        query = select(table.c.order_id, table.c.id).where(table.c.order_id.in_(orders))
        for order, payment in conn.execute(query):
            out[int(order)].append(int(payment))
    return out


def start_together(*starts: Callable[[], object]) -> None:
    """Start child processes at once (each `start` waits until its child is ready)."""
    with ThreadPoolExecutor(len(starts)) as pool:
        for done in [pool.submit(start) for start in starts]:
            done.result()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_urls(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """The monolith's and the service's databases: SQLite files, or PostgreSQL databases."""
    if request.param == "postgres":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        return make(), make()
    return f"sqlite:///{tmp_path / 'legacy.db'}", f"sqlite:///{tmp_path / 'payment.db'}"


@pytest.mark.timeout(60)
def test_payments_keep_working_on_the_monolith_while_the_payment_service_is_down(
    database_urls: tuple[str, str], tmp_path: Path
) -> None:
    legacy_db, service_db = database_urls
    databases = ("--legacy-db", legacy_db, "--service-db", service_db)
    legacy = make_monolith_engine(legacy_db)
    service = make_service_engine(service_db)
    seed(
        legacy,
        payments=SEEDED,
        users=USERS + 1,
        products_per_category=6,
        password_iterations=FAST_HASH,
    )
    with legacy.connect() as conn:
        users = conn.execute(select(User.email).where(User.email != STAFF_USER).order_by(User.id))
        emails = list(users.scalars())
    upgrade(service)
    backfill(legacy, service)  # what `strangler sync backfill` runs

    monolith_port, payment_port = free_port(), free_port()
    while payment_port == monolith_port:
        payment_port = free_port()
    monolith_url = f"http://127.0.0.1:{monolith_port}"
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.format(monolith=monolith_port, payment=payment_port))
    monolith_args = [PYTHON, "-m", "legacy_monolith", "--port", str(monolith_port)]
    monolith = Child("monolith", [*monolith_args, "--database-url", legacy_db])
    service_args = [PYTHON, "-m", "services.payment", "--port", str(payment_port)]
    service_args += ["--database-url", service_db, "--legacy-url", monolith_url]
    payment = Child("payment", service_args)
    follow = Child(
        "follow",
        [STRANGLER, "sync", "follow", "--interval", "0.2", "--metrics-port", "0", *databases],
        ready=SYNC_METRICS,
    )
    to_legacy = Job(tmp_path / "to-legacy.log", "to-legacy", "--block-ms", "200", *databases)
    # --version-header all: the apps' own listener shows which answers a fallback served.
    proxy = ProxyProcess(["--routes", str(routes), "--version-header", "all"])
    with contextlib.ExitStack() as stack:
        for each in (legacy, service):
            stack.callback(each.dispose)
        stack.callback(lambda: payment.stop())  # the one running at the end
        for child in (monolith, follow, to_legacy, proxy):
            stack.callback(child.stop)
        start_together(monolith.start, payment.start, follow.start, to_legacy.start, proxy.start)
        through = stack.enter_context(
            httpx.Client(base_url=f"http://127.0.0.1:{proxy.external}", timeout=10)
        )
        catalog = through.get(
            "/api/v1/products", params={"in_stock": True, "sort": "-price", "per_page": 100}
        )
        products = [p["id"] for p in catalog.json()["items"] if p["stock_qty"] >= 150]
        assert len(products) > USERS

        # A payment the service takes before the kill (an id of its own range), which to-legacy
        # then delivers to the monolith's table.
        witness_auth = login(through, emails[-1])
        made = through.post(
            "/api/v1/payments",
            json={
                "order_id": new_order(through, witness_auth, products[-1]),
                "method": "card",
                "card_token": "tok_visa",
            },
            headers={**witness_auth, "Idempotency-Key": f"witness-{uuid.uuid4()}"},
        )
        assert made.status_code == 201, made.text
        assert FALLBACK not in made.headers
        witness = made.json()
        assert witness["id"] in SERVICE_IDS

        def delivered() -> bool:
            to_legacy.check_running()
            answer = httpx.get(
                f"{monolith_url}/api/v1/payments/{witness['id']}", headers=witness_auth
            )
            return answer.status_code == 200

        wait_until(delivered, 15, "to-legacy to deliver the service's payment to the monolith")

        traffic = Traffic(str(through.base_url), emails[:USERS], products[:USERS]).start()
        stack.callback(traffic.stop)
        wait_until(lambda: traffic.taken_by_service(0) >= 2 * USERS, 15, "the service's payments")

        # --- the payment service dies, mid-traffic ---
        with traffic.no_payment_post_in_flight():
            payment.stop(sig=signal.SIGKILL)
        killed = time.monotonic()
        during = through.get(f"/api/v1/payments/{witness['id']}", headers=witness_auth)
        assert during.status_code == 200, during.text
        assert during.headers[FALLBACK].startswith("payment; reason="), during.headers
        assert during.json() == witness
        metrics = proxy.metrics
        wait_until(
            lambda: (
                counter(metrics(), "strangler_upstream_ejections_total", upstream="payment") > 0
            ),
            OUTAGE_SECONDS,
            "the proxy to eject the dead service",
        )
        time.sleep(max(0.0, killed + OUTAGE_SECONDS - time.monotonic()))  # the outage window
        assert traffic.errors == []

        # --- the service is started again on its port; the proxy takes it back by itself ---
        restarting = time.monotonic()
        payment = Child("payment", service_args).start()

        def back() -> bool:
            closed = counter(metrics(), "strangler_upstream_state", upstream="payment") == 0
            return closed and traffic.taken_by_service(restarting) >= USERS

        wait_until(back, 15, "the proxy to send payments to the service again")
        traffic.stop()
        assert traffic.errors == []

        # --- what the app users saw ---
        posts = traffic.posts()
        assert all(c.status == 201 for c in posts), [c for c in posts if c.status != 201]
        outage = traffic.payments(killed, restarting)
        assert sum(1 for c in outage if c.method == "POST") >= USERS
        for call in outage:  # every one served by the monolith
            assert call.fallback is not None, call
            assert re.fullmatch(r"payment; reason=(connect-failure|ejected)", call.fallback), call
            if call.method == "POST":
                assert call.payment_id not in SERVICE_IDS, call  # an id the monolith gave

        # The proxy's access log says the same of each request (it flushes every 0.5 s).
        lines: dict[str, dict[str, Any]] = {}

        def logged() -> bool:
            lines.update((e["request_id"], e) for e in map(json.loads, list(proxy.stdout)))
            return all(c.request_id in lines for c in traffic.calls)

        wait_until(logged, 5, "the proxy's access log")
        for call in traffic.calls:
            entry = lines[call.request_id]
            assert entry["route"] == "payments", entry
            if call.fallback is None:
                assert (entry["upstream"], entry["fallback"]) == ("payment", None), entry
            else:
                assert entry["upstream"] == "monolith", entry
                assert call.fallback == "payment; reason={reason}".format(**entry["fallback"])
        # A GET right after its POST finds the payment, unless the other backend answers it
        # before the sync has carried the payment over (to-legacy one way, follow the other).
        made_by_service = {c.payment_id: c.fallback is None for c in posts}
        for call in (c for c in traffic.calls if c.method == "GET"):
            payment_id = int(call.path.rsplit("/", 1)[1])
            crossed = made_by_service[payment_id] != (call.fallback is None)
            assert call.status == 200 or (call.status == 404 and crossed), call

        # --- the data: follow and to-legacy catch up, nothing is duplicated, no drift ---
        keys = {str(c.key): int(c.payment_id or 0) for c in posts}
        orders = [traffic.orders[key] for key in keys]
        ours = set(keys.values())

        def caught_up() -> bool:
            to_legacy.check_running()
            return all(
                {i for ids in payments_by_order(engine, table, orders).values() for i in ids}
                >= ours
                for engine, table in ((legacy, LEGACY_TABLE), (service, SERVICE_TABLE))
            )

        wait_until(caught_up, 15, "follow and to-legacy to carry every payment over")
        for engine, table in ((legacy, LEGACY_TABLE), (service, SERVICE_TABLE)):
            per_order = payments_by_order(engine, table, orders)
            for key, payment_id in keys.items():  # one payment per key, the one the user got
                assert per_order[traffic.orders[key]] == [payment_id], (key, per_order)
        reconcile = subprocess.run(
            [STRANGLER, "sync", "reconcile", "--settle", "0", "--json", *databases],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
        report = json.loads(reconcile.stdout)
        assert report["passed"], report
        assert report["drift"] == 0, report
        assert report["rows_legacy"] == report["rows_service"] == SEEDED + 1 + len(keys)
        assert report["skipped_young"] == 0
