"""Read-your-writes pins hold across three replicas while payments are canaried and rolled back.

The real stack, every server a child process on 127.0.0.1 as in test_payment_fallback.py: the
seeded monolith (SQLite), the payment service (SQLite, backfilled), `strangler sync follow` and
`strangler sync to-legacy` at their defaults (follow's 1 s interval and 1 s safety delay are the
lag a user must not see), and three `strangler serve` replicas sharing one Redis store (a key
prefix of the test's own). The payments route is `to: monolith`, `sticky: header:Authorization`;
the payment upstream has no `gate:`, so the canary's flips are not refused by the service's
cutover gate (its `/cutover` wants reconciles this test does not run), and no flip needs
`--force`. Nothing else is on the route (no shadow, override, retry or fallback): only the
weights and the pins choose the upstream.

App users (threads) pay in visits: log in, add to the cart, order, POST /api/v1/payments with
an Idempotency-Key, then at once GET the payment and the order's payment list, and again a
moment later (0.3 to 1.5 s: the app refreshes its receipt). Every request goes to a random
replica, as behind a load balancer. Each visit logs in anew, i.e. has a key of its own: a write
renews its key's pin on the upstream that took it, so a user paying again within the pin window
is never moved by a flip at all; a fresh key per visit is a user paying once in a while, whom
the weights do move and only the pin may hold.

1. Control: pins off (`pin: off`, the route as it was without them), flips to 50/50, to the
   service and back while users pay, with follow and to-legacy not started yet (a sync that
   lags without end). A user moved between a payment and its reads misses it (404, or not in
   the order's list): the failure this test exists to catch, so it can fail. With the sync
   running, whether a moved user misses is a race against follow's lag, and a slow machine
   sometimes saw none at all; without it, every moved user misses.
2. Follow and to-legacy start (and catch up on the control's payments); `pin: 10s` (`strangler
   routes set`), then the documented canary, a flip every ~1.75 s: 1 %, 25 %, 50 % (`--split`),
   100 % (`--to payment`), a rollback (`--to monolith`) and forward again. No user misses a
   payment just made; every POST is answered 201; every read is served by the upstream that
   took its payment (the access logs); and pins did move reads, some of them set by another
   replica (strangler_pinned_total and the logs' "choice":"pin"), so the test does not pass by
   luck.
3. Once follow and to-legacy have caught up, each Idempotency-Key made exactly one payment, the
   same one in both databases.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from legacy_monolith.db import make_engine as make_monolith_engine
from legacy_monolith.models import User
from legacy_monolith.seed import DEMO_PASSWORD, STAFF_USER, seed
from proxy.demo import SYNC_METRICS
from proxy.procs import Child
from proxy.store.redis import RedisStore
from services.payment.db import make_engine as make_service_engine
from services.payment.db import upgrade
from services.payment.sync import backfill
from tests.functional.proxy_support import (
    STRANGLER,
    ProxyProcess,
    counter,
    store_args,
    strangler_routes,
)
from tests.functional.test_payment_fallback import (
    FAST_HASH,
    LEGACY_TABLE,
    PYTHON,
    SERVICE_IDS,
    SERVICE_TABLE,
    Job,
    payments_by_order,
    start_together,
)
from tests.support import free_port, wait_until

pytestmark = pytest.mark.redis
Send = Callable[..., httpx.Response]  # (method, path, **httpx arguments), to a random replica

USERS = 20
SEEDED = 20  # the monolith's payments before the test's
UPSTREAMS = ("monolith", "payment")
THINK = (0.3, 1.5)  # seconds between a payment's first reads and its second look
CONTROL_PIN = "off"  # the route as it was without pins
FIRST_FLIP = 0.5  # seconds into a phase (the CLI then takes 1 to 4 s to commit)
GAP = 1.75  # seconds between flips (or less: a flip waits for the one before it)
TAIL = 2.0  # seconds of traffic after a phase's last flip
CONTROL_FLIPS = [
    (("--split", "monolith=50,payment=50"), "control: half"),
    (("--to", "payment"), "control: all"),
    # A rollback too, so users are moved both ways.
    (("--to", "monolith"), "control: back"),
]
CANARY_FLIPS = [
    (("--split", "monolith=99,payment=1"), "canary 1%"),
    (("--split", "monolith=75,payment=25"), "canary 25%"),
    (("--split", "monolith=50,payment=50"), "canary 50%"),
    (("--to", "payment"), "payment service live"),
    (("--to", "monolith"), "rollback"),
    (("--to", "payment"), "forward again"),
]

TABLE = """\
version: 1
upstreams:
  monolith: {{url: "http://127.0.0.1:{monolith}"}}
  payment: {{url: "http://127.0.0.1:{payment}", idempotent_writes: true}}
default: monolith
routes:
  - name: payments
    match: {{path: /api/v1/payments}}
    to: monolith
    sticky: header:Authorization
    pin: {pin}
"""


@dataclass
class Read:
    """One look at a payment just made: by its id, or in its order's payment list."""

    kind: str  # "id" or "list"
    when: str  # "now" (right after the POST) or "later" (after THINK)
    request_id: str
    started: float  # wall clock, to compare with the flips' commit times
    status: int = 0  # 0: no answer at all
    found: bool = False
    error: str = ""


@dataclass
class Visit:
    """One payment of one user, and what the user saw of it."""

    email: str
    key: str  # Idempotency-Key
    order: int
    request_id: str  # of the POST
    posted: float = 0.0  # wall clock when the POST was answered
    status: int = 0
    payment_id: int | None = None
    error: str = ""
    reads: list[Read] = field(default_factory=list)

    @property
    def upstream(self) -> str:
        """Who took the payment: the service hands out ids of its own range."""
        return "payment" if self.payment_id in SERVICE_IDS else "monolith"

    def misses(self) -> list[Read]:
        return [r for r in self.reads if not r.found]


@dataclass
class Logged:
    replica: int  # which of the three served the request
    entry: dict[str, Any]


@dataclass
class FlipDone:
    reason: str
    version: int
    committed: float  # wall clock when the CLI returned
    seconds: float  # how long the CLI took


class Shoppers:
    """App users, one thread each, paying in visits through random replicas."""

    def __init__(self, replicas: list[str], users: list[str], products: list[int]) -> None:
        self.replicas = replicas
        self.visits: list[Visit] = []
        self.errors: list[str] = []  # anything but a payments read going wrong
        self.requests = 0  # every request the users sent, payments or not
        self._counting = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._user, args=(index, email, product), daemon=True)
            for index, (email, product) in enumerate(zip(users, products, strict=True))
        ]

    def start(self) -> Shoppers:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Let every user finish the visit under way."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in self._threads), "an app user is stuck"

    def _user(self, index: int, email: str, product: int) -> None:
        rng = random.Random(index)
        with contextlib.ExitStack() as stack:
            clients = [
                stack.enter_context(httpx.Client(base_url=url, timeout=15)) for url in self.replicas
            ]

            def send(method: str, path: str, **kwargs: Any) -> httpx.Response:
                with self._counting:
                    self.requests += 1
                return rng.choice(clients).request(method, path, **kwargs)

            while not self._stopping.is_set():
                try:
                    self._visit(send, rng, email, product)
                except Exception as exc:  # reported by the test; the user goes on
                    self.errors.append(f"{email}: {exc!r}")
                    time.sleep(0.2)

    def _visit(self, send: Send, rng: random.Random, email: str, product: int) -> None:
        login = send("POST", "/api/v1/auth/login", json={"email": email, "password": DEMO_PASSWORD})
        assert login.status_code == 200, login.text
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        added = send("POST", "/api/v1/cart/items", json={"product_id": product}, headers=auth)
        assert added.status_code == 201, added.text
        made = send("POST", "/api/v1/orders", json={}, headers=auth)
        assert made.status_code == 201, made.text
        visit = Visit(email, f"ryw-{uuid.uuid4()}", int(made.json()["id"]), uuid.uuid4().hex)
        self.visits.append(visit)
        try:
            paid = send(
                "POST",
                "/api/v1/payments",
                json={"order_id": visit.order, "method": "card", "card_token": "tok_visa"},
                headers={**auth, "Idempotency-Key": visit.key, "X-Request-ID": visit.request_id},
            )
        except httpx.HTTPError as exc:
            visit.error = repr(exc)
            return
        finally:
            visit.posted = time.time()
        visit.status = paid.status_code
        if paid.status_code != 201:
            visit.error = paid.text[:300]
            return
        visit.payment_id = int(paid.json()["id"])
        self._look(send, visit, auth, "now")
        time.sleep(rng.uniform(*THINK))
        self._look(send, visit, auth, "later")

    @staticmethod
    def _look(send: Send, visit: Visit, auth: dict[str, str], when: str) -> None:
        for kind, path in (
            ("id", f"/api/v1/payments/{visit.payment_id}"),
            ("list", f"/api/v1/payments?order_id={visit.order}"),
        ):
            read = Read(kind, when, uuid.uuid4().hex, time.time())
            visit.reads.append(read)
            try:
                answer = send("GET", path, headers={**auth, "X-Request-ID": read.request_id})
            except httpx.HTTPError as exc:
                read.error = repr(exc)
                continue
            read.status = answer.status_code
            if answer.status_code != 200:
                read.error = answer.text[:300]
            elif kind == "id":
                read.found = answer.json()["id"] == visit.payment_id
            else:
                read.found = any(p["id"] == visit.payment_id for p in answer.json()["items"])

    def straddling(self, flips: list[FlipDone]) -> int:
        """Visits with a flip committed between their payment and their last read."""
        return sum(
            1
            for v in self.visits
            if v.reads and any(v.posted < f.committed < v.reads[-1].started for f in flips)
        )


def flip(
    store: list[str], workdir: Path, args: tuple[str, ...], reason: str, at: float
) -> FlipDone:
    """`strangler routes flip payments ARGS` at `at` (wall clock), or at once if late."""
    time.sleep(max(0.0, at - time.time()))
    started = time.monotonic()
    done = strangler_routes("flip", "payments", *args, "--reason", reason, *store, cwd=workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    return FlipDone(reason, committed_version(done.stdout), time.time(), time.monotonic() - started)


def committed_version(output: str) -> int:
    found = re.search(r"version (\d+) committed", output)
    assert found is not None, output
    return int(found.group(1))


def run_phase(
    replicas: list[ProxyProcess],
    users: list[str],
    products: list[int],
    flips: Sequence[tuple[tuple[str, ...], str]],
    store: list[str],
    workdir: Path,
) -> tuple[Shoppers, list[FlipDone]]:
    """App users pay while `flips` are committed every GAP seconds; they go on for TAIL
    seconds after the last one, then finish their visits."""
    shoppers = Shoppers([f"http://127.0.0.1:{r.external}" for r in replicas], users, products)
    began = time.time()
    shoppers.start()
    try:
        done = [
            flip(store, workdir, args, reason, began + FIRST_FLIP + n * GAP)
            for n, (args, reason) in enumerate(flips)
        ]
        time.sleep(max(0.0, done[-1].committed + TAIL - time.time()))
    finally:
        shoppers.stop()
    return shoppers, done


@contextlib.contextmanager
def serving(*children: Child | Job | ProxyProcess) -> Iterator[None]:
    try:
        start_together(*(child.start for child in children))
        yield
    finally:
        # Every child is stopped, even when one's stop fails (else the rest outlive the test).
        failed: list[BaseException] = []
        for child in children:
            try:
                child.stop()
            except Exception as exc:  # re-raised below, once the others are stopped
                failed.append(exc)
        if failed:
            raise failed[0]


def access_log(replicas: list[ProxyProcess], wanted: set[str]) -> dict[str, Logged]:
    """request id -> the replica that served it and its access-log line (flushed every 0.5 s)."""
    lines: dict[str, Logged] = {}

    def logged() -> bool:
        for index, replica in enumerate(replicas):
            for line in list(replica.stdout):
                entry = json.loads(line)
                lines[entry["request_id"]] = Logged(index, entry)
        return wanted <= lines.keys()

    wait_until(logged, 5, "the replicas' access logs")
    return lines


def stats(shoppers: Shoppers, flips: list[FlipDone]) -> dict[str, object]:
    took = {u: sum(1 for v in shoppers.visits if v.upstream == u) for u in UPSTREAMS}
    return {
        "visits": len(shoppers.visits),
        "requests": shoppers.requests,
        "payment_reads": sum(len(v.reads) for v in shoppers.visits),
        "flips": len(flips),
        "flip_cli_seconds": [round(f.seconds, 2) for f in flips],
        "visits_across_a_flip": shoppers.straddling(flips),
        "paid_on": took,
        "misses": {
            when: sum(1 for v in shoppers.visits for r in v.misses() if r.when == when)
            for when in ("now", "later")
        },
        "visits_with_a_miss": sum(1 for v in shoppers.visits if v.misses()),
    }


@pytest.mark.timeout(150)
def test_users_read_their_payments_on_any_replica_while_the_route_is_canaried(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    began = time.monotonic()
    legacy_db, service_db = f"sqlite:///{tmp_path / 'legacy.db'}", f"sqlite:///{tmp_path / 'p.db'}"
    databases = ("--legacy-db", legacy_db, "--service-db", service_db)
    legacy, service = make_monolith_engine(legacy_db), make_service_engine(service_db)
    seed(
        legacy,
        payments=SEEDED,
        users=USERS + 1,
        products_per_category=6,
        password_iterations=FAST_HASH,
    )
    with legacy.connect() as conn:
        users = conn.execute(select(User.email).where(User.email != STAFF_USER).order_by(User.id))
        emails = list(users.scalars())[:USERS]
    upgrade(service)
    backfill(legacy, service)  # what `strangler sync backfill` runs

    monolith_port = free_port()
    payment_port = free_port()
    while payment_port == monolith_port:
        payment_port = free_port()
    ports = {"monolith": monolith_port, "payment": payment_port}
    monolith_url = f"http://127.0.0.1:{monolith_port}"
    store = ["--store", redis_url, "--store-prefix", redis_prefix]
    routes = RedisStore(redis_url, redis_prefix)
    try:
        day0 = TABLE.format(pin=CONTROL_PIN, **ports)
        routes.commit(day0, author="test", reason="day 0", expected_version=0)
    finally:
        routes.close()
    replicas = [
        ProxyProcess(store_args(redis_url, redis_prefix, tmp_path / f"replica-{n}.yaml"))
        for n in range(3)
    ]
    monolith = [PYTHON, "-m", "legacy_monolith", "--port", str(monolith_port)]
    payment = [PYTHON, "-m", "services.payment", "--port", str(payment_port)]
    follow = [STRANGLER, "sync", "follow", "--metrics-port", "0", *databases]  # its defaults
    servers: list[Child | Job | ProxyProcess] = [
        Child("monolith", [*monolith, "--database-url", legacy_db]),
        Child("payment", [*payment, "--database-url", service_db, "--legacy-url", monolith_url]),
        *replicas,
    ]
    sync = [
        Child("follow", follow, ready=SYNC_METRICS),
        Job(tmp_path / "to-legacy.log", "to-legacy", *databases),
    ]
    with contextlib.ExitStack() as stack:
        for engine in (legacy, service):
            stack.callback(engine.dispose)
        stack.enter_context(serving(*servers))
        catalog = httpx.get(
            f"{monolith_url}/api/v1/products",
            params={"in_stock": True, "sort": "-price", "per_page": 100},
        )
        stocked = [p["id"] for p in catalog.json()["items"] if p["stock_qty"] >= 150]
        assert len(stocked) >= 5, catalog.json()
        products = [stocked[n % len(stocked)] for n in range(USERS)]

        # --- 1. control: no pins, no sync yet; users moved by a flip miss their payment ---
        control, control_flips = run_phase(
            replicas, emails, products, CONTROL_FLIPS, store, tmp_path
        )
        assert control.errors == []

        # --- 2. the sync starts; pins on, then the canary, a rollback and forward again ---
        stack.enter_context(serving(*sync))
        pinned_table = tmp_path / "routes.yaml"
        pinned_table.write_text(TABLE.format(pin="10s", **ports))
        done = strangler_routes(
            "set", str(pinned_table), "--reason", "read-your-writes pins", *store, cwd=tmp_path
        )
        assert done.returncode == 0, done.stdout + done.stderr
        version = committed_version(done.stdout)
        wait_until(
            lambda: all(r.readyz()["table_version"] == version for r in replicas),
            5,
            f"every replica on version {version}",
        )
        canary, canary_flips = run_phase(replicas, emails, products, CANARY_FLIPS, store, tmp_path)
        assert canary.errors == []
        summary = {"control": stats(control, control_flips), "canary": stats(canary, canary_flips)}
        print(json.dumps(summary))  # the measured numbers (shown with -s)

        # --- what the users saw ---
        visits = [*control.visits, *canary.visits]
        assert all(v.status == 201 for v in visits), [v for v in visits if v.status != 201]
        canary_misses = [(v, r) for v in canary.visits for r in v.misses()]
        assert canary_misses == [], (summary, canary_misses[:5])
        for upstream in UPSTREAMS:  # the canary did move users, both ways
            assert any(v.upstream == upstream for v in canary.visits), summary
        assert any(v.misses() for v in control.visits), summary  # without pins, it misses

        # --- the replicas' access logs: who served what, and how it was chosen ---
        wanted = {v.request_id for v in visits} | {r.request_id for v in visits for r in v.reads}
        lines = access_log(replicas, wanted)
        for visit in control.visits:  # a miss is a read the route sent to the other upstream
            for read in visit.reads:
                moved = lines[read.request_id].entry["upstream"] != visit.upstream
                assert moved == (not read.found), (visit, read)
        by_pin = dict.fromkeys(UPSTREAMS, 0)  # reads a pin sent to this upstream
        across_replicas = 0
        for visit in canary.visits:
            paid = lines[visit.request_id]
            assert (paid.entry["route"], paid.entry["upstream"]) == ("payments", visit.upstream)
            for read in visit.reads:
                seen = lines[read.request_id]
                assert seen.entry["upstream"] == visit.upstream, (visit, read, seen)
                if seen.entry["choice"] == "pin":
                    by_pin[visit.upstream] += 1
                    across_replicas += seen.replica != paid.replica
        metrics = [r.metrics() for r in replicas]
        pinned = sum(counter(m, "strangler_pinned_total", route="payments") for m in metrics)
        pins = sum(counter(m, "strangler_pins_total", route="payments") for m in metrics)
        counts = {"pins": pins, "pinned": pinned, "by_pin": by_pin, "across": across_replicas}
        # Every read a pin moved was logged so; pins held users on the monolith as the canary
        # grew and on the service across the rollback; some were set by another replica.
        assert pinned == sum(by_pin.values()), counts
        assert all(by_pin.values()), counts
        assert across_replicas > 0, counts

        # --- 3. the data: follow and to-legacy catch up; one payment per key, in both ---
        orders = {v.key: v.order for v in visits}
        made = {v.key: v.payment_id for v in visits}

        def caught_up() -> bool:
            return all(
                all(per_order[orders[key]] for key in orders)
                for per_order in (
                    payments_by_order(engine, table, list(orders.values()))
                    for engine, table in ((legacy, LEGACY_TABLE), (service, SERVICE_TABLE))
                )
            )

        wait_until(caught_up, 15, "follow and to-legacy to carry every payment over")
        for engine, table in ((legacy, LEGACY_TABLE), (service, SERVICE_TABLE)):
            per_order = payments_by_order(engine, table, list(orders.values()))
            for key, payment_id in made.items():
                assert per_order[orders[key]] == [payment_id], (key, per_order[orders[key]])
        print(json.dumps({**counts, "seconds": round(time.monotonic() - began, 1)}))
