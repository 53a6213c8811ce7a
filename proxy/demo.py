"""`strangler demo`: the migration journey on embedded defaults (SQLite, no Redis).

Act 1 (day 0): the legacy monolith, seeded, answering a mobile app's requests.
Act 2: the proxy in front of it, transparent, refusing what it must.
Act 3: the payment service gets its data: backfill, follow, reconcile.
Act 4: see before serving: payment reads are shadowed to the service and compared; a drifted
payment in the service's database shows in `strangler shadow report` and in a contract corpus
recorded from real traffic and replayed against the service, until it is fixed; a tester forces
the service with `X-Canary: always`.
Act 5: the payments route flips to the service, and a user who just paid on the monolith keeps
reading from it (a read-your-writes pin); the service's payments reach the monolith's orders;
the flip is diffed, listed and rolled back.
Act 6: payments move to the service again with safety nets, and the service goes down: GETs are
served by the monolith (fallback), a POST gets a fast 503 once the service is ejected, and the
service is back by itself when it returns.
Act 7: static content leaves the monolith first: exported, verified, served by the proxy.
Act 8: the second service, the catalog's read side: two declared syncs (one table without a
change column, refreshed) fill its read model and views; its gate opens after two reconciles;
catalog reads are shadowed (ETags compared), canaried, moved; a staff price change still goes
to the monolith and shows in the catalog after the sync's lag.
Act 9: who may call what: a partner's key, refused without, rate limited, revoked.
Act 10: evidence drives the move: a rollout moves payments 1 → 100 % while the apps read, a
planted data fault closes the service's gate and the rollout rolls back by itself; the ledger
before and after, and the dashboard.
Everything runs as child processes started with the same commands the README gives, and is
reached over HTTP only.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import typer
from websockets.sync.client import ClientConnection, connect

from proxy.procs import STRANGLER_READY, Child

SYNC_METRICS = re.compile(r"metrics on (http://[\w.:]+:\d+)")
DEMO_USER = "alice@example.com"
STAFF_USER = "staff@legacy-shop.example"
DEMO_PASSWORD = "password123"  # noqa: S105 - the seeded demo shop's published credentials
Echo = Callable[[str], None]


def _short(body: Any, limit: int = 220) -> str:
    text = json.dumps(body, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Narrator:
    """Sends real requests and prints each with its answer, the way a person would read them."""

    def __init__(self, client: httpx.Client, echo: Echo) -> None:
        self.client = client
        self.echo = echo

    def say(self, text: str) -> None:
        self.echo(typer.style(f"\n# {text}", fg=typer.colors.CYAN, bold=True))

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        answer = self.client.request(method, path, **kwargs)
        shown = f" {_short(kwargs['json'])}" if "json" in kwargs else ""
        target = answer.request.url.raw_path.decode("ascii")
        self.echo(typer.style(f"→ {method} {target}{shown}", fg=typer.colors.YELLOW))
        colour = typer.colors.GREEN if answer.status_code < 400 else typer.colors.RED
        meta = answer.headers.get("content-type", "")
        if "etag" in answer.headers:
            meta += f"; ETag {answer.headers['etag']}"
        for name in ("retry-after", "strangler-fallback"):  # the proxy's safety nets at work
            if name in answer.headers:
                meta += f"; {name}: {answer.headers[name]}"
        self.echo(typer.style(f"← {answer.status_code} {meta}", fg=colour))
        if answer.content and "json" in answer.headers.get("content-type", ""):
            self.echo(f"  {_short(answer.json())}")
        return answer


def act_day_zero(n: Narrator) -> None:
    """The legacy monolith as the mobile app sees it today."""
    n.say("The legacy monolith, as the mobile app calls it today")
    n.call("GET", "/healthz")
    n.call("GET", "/api/v1/categories")
    found = n.call("GET", "/api/v1/products", params={"q": "phone", "per_page": 2})
    product = found.json()["items"][0]
    first = n.call("GET", f"/api/v1/products/{product['id']}")
    n.say("A catalog read revalidated with its ETag costs no body")
    n.call(
        "GET", f"/api/v1/products/{product['id']}", headers={"If-None-Match": first.headers["etag"]}
    )

    n.say("Alice logs in, fills her cart, orders and pays")
    token = n.call(
        "POST", "/api/v1/auth/login", json={"email": DEMO_USER, "password": DEMO_PASSWORD}
    )
    auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
    stocked = n.call(
        "GET", "/api/v1/products", params={"in_stock": True, "sort": "price", "per_page": 1}
    )
    cheap = stocked.json()["items"][0]
    n.call(
        "POST", "/api/v1/cart/items", json={"product_id": cheap["id"], "quantity": 1}, headers=auth
    )
    order = n.call(
        "POST", "/api/v1/orders", json={"shipping_address": "1 Rua Verde, Lisbon"}, headers=auth
    )
    order_id = order.json()["id"]
    n.call(
        "POST",
        "/api/v1/payments",
        json={"order_id": order_id, "method": "card", "card_token": "tok_chargeDeclined"},
        headers=auth,
    )
    n.call(
        "POST",
        "/api/v1/payments",
        json={"order_id": order_id, "method": "card", "card_token": "tok_visa"},
        headers=auth,
    )
    n.say("The orders feature reads the payments table: the order now shows paid")
    n.call("GET", f"/api/v1/orders/{order_id}", headers=auth)

    n.say("Bad input gets a 4xx problem+json answer, never a 500")
    n.call("GET", "/api/v1/products", params={"per_page": 1000})
    n.call("GET", "/api/v1/orders/999999", headers=auth)
    n.call("POST", "/api/v1/cart/items", json={"product_id": "one"}, headers=auth)


DAY_ZERO_ROUTES = """\
# Day 0: every request goes to the monolith. The payments route only names what will move
# first; it already carries its own limits.
version: 1
upstreams:
  monolith: {{url: "{monolith}"}}
  # The extracted payment service (services/payment), where the payments route will move.
  # Its gate: the control plane asks it before sending it more traffic (a 2xx lets it through).
  payment: {{url: "{payment}", gate: "{payment}/cutover"}}
default: monolith
routes:
  - name: payments
    match: {{path: /api/v1/payments}}
    to: monolith
    # One user, one arm (keyed by the app's bearer token); after a write, the user's reads stay
    # on the arm that took it for 10s, longer than the data sync's lag.
    sticky: header:Authorization
    pin: 10s
    max_body: 64KiB
    timeout: 10s
"""
SHADOW_ROUTES = """\
# Before the canary: every payment read is also sent to the service, after the monolith's
# answer went back, and the two answers are compared.
version: 2
upstreams:
  monolith: {{url: "{monolith}"}}
  payment: {{url: "{payment}", gate: "{payment}/cutover"}}
default: monolith
routes:
  - name: payments
    match: {{path: /api/v1/payments}}
    to: monolith
    sticky: header:Authorization
    pin: 10s
    shadow: {{to: payment, sample: 1.0, noise: 0.5}}
    compare: {{headers: [content-type], secret: ["$.card_last4", "$.items[*].card_last4"]}}
    override: {{header: X-Canary, cookie: canary}}
    max_body: 64KiB
    timeout: 10s
  # The service's own live channel (the monolith has none): WebSocket upgrades are tunnelled
  # to it, and an open channel keeps its service whatever the payments route does.
  - name: payment-live
    match: {{path: /api/v1/live}}
    to: payment
    websocket: true
"""
BROKEN_ROUTES = """\
version: 2
upstreams:
  monolith: {{url: "{monolith}"}}
default: monolith
routes:
  - name: payments
    match: {{path: /api/v1/payments}}
    split: {{monolith: 90, payment: 20}}
    timeout: soon
"""


def _same_answer(direct: httpx.Response, proxied: httpx.Response) -> bool:
    def shape(r: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
        return r.status_code, [(k, v) for k, v in r.headers.multi_items() if k != "date"], r.content

    return shape(direct) == shape(proxied)


def act_proxy(n: Narrator, direct: httpx.Client, admin: str) -> None:
    """Day 0 of the migration: the proxy in front, and nobody can tell."""
    n.say("Day 0: the same requests through the strangler proxy")
    for path in ("/api/v1/categories", "/api/v1/products?q=phone&per_page=2", "/healthz"):
        proxied = n.call("GET", path)
        same = _same_answer(direct.get(path), proxied)
        n.echo(f"  same status, headers and bytes as the monolith's own answer: {same}")
    n.say("What the proxy refuses before it reaches the monolith (problem+json, never a 500)")
    n.call("GET", "/api/v1/x%2F..%2Fpayments")
    n.call("TRACE", "/api/v1/categories")
    n.call("GET", "/api/v1/categories", headers={"Via": "1.1 strangler"})
    n.call(
        "POST",
        "/api/v1/payments",
        content=b"x" * 100_000,
        headers={"Content-Type": "application/json"},
    )
    n.say("Its admin listener: readiness and Prometheus metrics, labelled by route")
    ready = httpx.get(f"{admin}/readyz", timeout=5)
    n.echo(f"  GET {admin}/readyz → {ready.status_code} {ready.text}")
    _counted(n, admin, "strangler_requests_total", label="")


def _login(client: httpx.Client) -> dict[str, str]:
    token = client.post("/api/v1/auth/login", json={"email": DEMO_USER, "password": DEMO_PASSWORD})
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def _new_order(client: httpx.Client, auth: dict[str, str]) -> int:
    """Alice orders the cheapest product in stock (through `client`); the order's id."""
    stocked = client.get(
        "/api/v1/products", params={"in_stock": True, "sort": "price", "per_page": 1}
    )
    product = stocked.json()["items"][0]["id"]
    client.post("/api/v1/cart/items", json={"product_id": product, "quantity": 1}, headers=auth)
    order = client.post(
        "/api/v1/orders", json={"shipping_address": "1 Rua Verde, Lisbon"}, headers=auth
    )
    return int(order.json()["id"])


class Shell:
    """Runs `strangler …` commands as a person would, printing each with its output."""

    def __init__(self, n: Narrator, routes: Path, legacy_db: str, service_db: str) -> None:
        self.n = n
        self.routes = routes
        self.databases = ("--legacy-db", legacy_db, "--service-db", service_db)

    def run(
        self, *args: str, extra: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> int:
        self.n.echo("$ strangler " + shlex.join(args))
        code, output = Child(
            "strangler",
            _strangler(*args, *extra),
            env={
                "STRANGLER_AUTHOR": "platform-team",
                "COLUMNS": "100",
                "NO_COLOR": "1",
                **(env or {}),
            },
        ).run_to_end()
        for line in output.rstrip("\n").splitlines():
            self.n.echo("  " + line)
        if code:
            self.n.echo(f"  (exit {code})")
        return code

    def routes_cli(self, *args: str) -> int:
        return self.run("routes", *args, extra=("--routes", str(self.routes)))

    def sync(self, *args: str, env: dict[str, str] | None = None) -> int:
        return self.run("sync", *args, extra=self.databases, env=env)

    def consumers(self, *args: str) -> str:
        """A `strangler consumers` command on the demo's consumer store; returns the new key
        when the command made one."""
        store = str(self.routes.parent / "var" / "consumers.json")
        self.n.echo("$ strangler consumers " + shlex.join(args))
        code, output = Child(
            "strangler",
            _strangler("consumers", *args),
            env={"STRANGLER_AUTHOR": "platform-team", "STRANGLER_CONSUMERS": store},
        ).run_to_end()
        for line in output.rstrip("\n").splitlines():
            self.n.echo("  " + line)
        if code:
            self.n.echo(f"  (exit {code})")
        found = re.search(r"\bsk_[A-Za-z0-9_-]+", output)
        return found[0] if found else ""

    def state(self, *args: str) -> int:
        """A shadow command, reading the proxy's state directory."""
        return self.run(*args, extra=("--state-dir", str(self.routes.parent / "var")))


def act_data(n: Narrator, sh: Shell, service: httpx.Client, follower: Callable[[], Child]) -> None:
    """The payment service gets the monolith's payments, keeps up with them, and proves it."""
    n.say("Moving payments before their data: the payment service's gate refuses")
    sh.routes_cli("flip", "payments", "--to", "payment", "--reason", "too early")
    n.say("The sync is declared, not coded: one engine moves any table a file describes")
    sh.run("sync", "check")
    n.say("The payment service's database is filled from the monolith's, reading it only")
    sh.sync("backfill")
    n.say("follow keeps copying the monolith's changes, polling by a high-water mark")
    n.echo("$ strangler sync follow --interval 0.5 --metrics-port 0  (in the background)")
    metrics = follower().url
    n.echo(f"  following; lag and rows/s on {metrics}/metrics")
    auth = _login(n.client)
    n.say("A payment made through the monolith (the route still goes there) ...")
    order = _new_order(n.client, auth)
    paid = n.call(
        "POST",
        "/api/v1/payments",
        json={"order_id": order, "method": "wallet"},
        headers=auth,
    )
    payment = paid.json()["id"]
    started = time.monotonic()
    from_service = service.get(f"/api/v1/payments/{payment}", headers=auth)
    while from_service.status_code == 404 and time.monotonic() - started < 20:
        time.sleep(0.1)
        from_service = service.get(f"/api/v1/payments/{payment}", headers=auth)
    n.say(f"... is in the service's database {time.monotonic() - started:.1f}s later")
    n.echo(f"→ GET {service.base_url}/api/v1/payments/{payment}  (the service, directly)")
    n.echo(f"← {from_service.status_code} {_short(from_service.json())}")
    same = from_service.json() == paid.json()
    n.echo(f"  the service answers with the monolith's payment, field for field: {same}")
    for line in httpx.get(f"{metrics}/metrics", timeout=5).text.splitlines():
        if line.startswith("strangler_sync_") and "lag" in line:
            n.echo(f"  {line}")
    n.say("Reconcile, twice: both databases compared by key, chunk hashes bisected to rows")
    sh.sync("reconcile", "--settle", "0")
    sh.sync("reconcile", "--settle", "0")
    n.say("Everything the sync knows, and whether the payments route may move")
    sh.sync("status")


def _counted(n: Narrator, admin: str, metric: str, label: str = 'route="payments"') -> None:
    """The proxy's lines of `metric` with `label` (the payments route's unless told)."""
    for line in httpx.get(f"{admin}/metrics", timeout=5).text.splitlines():
        if line.startswith(metric) and label in line:
            n.echo(f"  {line}")


def _drift(service_db: str, payment: int, currency: str) -> None:
    """Set one payment's currency in the service's own database (the planted difference)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(service_db)
    try:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE payments SET currency = :c WHERE id = :id"),
                {"c": currency, "id": payment},
            )
    finally:
        engine.dispose()


def act_shadow(
    n: Narrator, sh: Shell, admin: str, shadow_table: Path, service: str, service_db: str
) -> None:
    """See before serving: shadow, report, a recorded contract, a forced canary user."""
    n.say("Before any user is served by it, the service answers a copy of every payment read")
    sh.routes_cli("set", str(shadow_table), "--reason", "shadow payment reads")
    _served(n, admin, 2)
    auth = _login(n.client)
    listed = n.client.get("/api/v1/payments", params={"per_page": 100}, headers=auth).json()
    oldest = listed["items"][-1]  # Alice's oldest: follow's look-back is long done with it
    payment, currency = int(oldest["id"]), str(oldest["currency"])
    n.say(f"A bad script lower-cases payment {payment}'s currency in the service's database")
    statement = f"UPDATE payments SET currency = 'usd' WHERE id = {payment}"  # noqa: S608 - shown
    n.echo(f'$ sqlite3 payment.db "{statement}"')
    _drift(service_db, payment, "usd")

    def reads(count: int, until: Callable[[], bool] | None = None) -> None:
        made = 0
        while made < 2 * count or (until is not None and not until() and made < 400):
            n.client.get(f"/api/v1/payments/{payment}", headers=auth)
            n.client.get("/api/v1/payments", params={"per_page": 100}, headers=auth)
            made += 2
            if until is not None:
                time.sleep(0.1)
        n.echo(f"  ({made} payment reads by Alice's app, answered by the monolith)")
        time.sleep(1.5)  # the workers share their numbers once a second

    n.say("Alice's app reads her payments; the monolith answers, the service gets a copy")
    n.call("GET", f"/api/v1/payments/{payment}", headers=auth)
    reads(5)
    n.say("What the service answered differently (noise fields learned, not reported)")
    sh.state("shadow", "report", "payments")
    n.say("The same reads, recorded as a contract corpus (no credentials kept) ...")
    corpus = sh.routes.parent / "payments-corpus.jsonl"
    recorder = Child(
        "record",
        _strangler(
            *("record", "payments", "--count", "4", "--timeout", "20s", "--out", str(corpus)),
            *("--state-dir", str(sh.routes.parent / "var")),
        ),
        env={"NO_COLOR": "1"},
    )
    n.echo(f"$ strangler record payments --count 4 --out {corpus.name}  (while the app reads)")
    with ThreadPoolExecutor(1) as background:
        recording = background.submit(recorder.run_to_end, 60)
        reads(2, until=recording.done)  # the app goes on reading until 4 pairs are recorded
        code, output = recording.result()
    for line in output.rstrip("\n").splitlines():
        n.echo(f"  {line}")
    replay = (
        *("contract", "run", str(corpus), "--against", service),
        *("--header", f"Authorization: {auth['Authorization']}"),
    )
    n.say("... replayed against the service, as its team's CI would: the drift fails it")
    sh.run(*replay)
    n.say("The service's team fixes the data; the report starts again")
    _drift(service_db, payment, currency)
    sh.state("shadow", "report", "payments", "--reset")
    time.sleep(1.5)  # every worker has heard of the reset
    reads(5)
    sh.state("shadow", "report", "payments")
    sh.run(*replay)
    if code != 0:
        raise typer.Exit(code)
    n.say("A tester opts in before anyone else: X-Canary: always goes to the service")
    n.call("GET", f"/api/v1/payments/{payment}", headers={**auth, "X-Canary": "always"})
    _counted(n, admin, "strangler_overrides_total")


def _served(n: Narrator, admin: str, version: int) -> None:
    deadline = time.monotonic() + 10
    while httpx.get(f"{admin}/readyz", timeout=5).json()["table_version"] != version:
        if time.monotonic() > deadline:
            raise typer.Exit(1)
        time.sleep(0.1)
    n.echo(f"  (the proxy now serves version {version}, without a restart)")


def act_flip(n: Narrator, sh: Shell, admin: str, service_url: str) -> int:
    """The route-table life-cycle: a flip, what changed, who did it, and a rollback. Returns the
    id of the payment the service took."""

    def served(version: int) -> None:
        _served(n, admin, version)

    def requests_by_upstream() -> None:
        _counted(n, admin, "strangler_requests_total")

    phone = _login(n.client)
    n.say("Alice pays an order from her phone, on the monolith, a moment before the flip")
    before = _new_order(n.client, phone)
    early = n.call(
        "POST", "/api/v1/payments", json={"order_id": before, "method": "wallet"}, headers=phone
    )
    n.say("Move payments: flip the route to the payment service")
    sh.routes_cli("flip", "payments", "--to", "payment", "--reason", "payment service live")
    served(3)
    n.say("Her phone reads that payment at once: it stays on the monolith, which took her write")
    n.echo("  (a read-your-writes pin for 10s, longer than the sync's lag; every replica knows)")
    n.call("GET", f"/api/v1/payments/{early.json()['id']}", headers=phone)
    _counted(n, admin, "strangler_pinned_total")
    n.say("Anyone else's payments go to the service now")
    n.call("GET", "/api/v1/payments?per_page=1")
    requests_by_upstream()
    auth = _login(n.client)
    n.say("Alice pays a new order from her tablet: the service takes it (an id from its range)")
    order = _new_order(n.client, auth)
    paid = n.call(
        "POST",
        "/api/v1/payments",
        json={"order_id": order, "method": "card", "card_token": "tok_visa"},
        headers={**auth, "Idempotency-Key": f"demo-{order}"},
    )
    n.say("to-legacy applies the service's payment events to the monolith's payments table ...")
    sh.sync("to-legacy", "--once")
    n.say("... so the monolith's orders feature, unchanged, shows the order paid")
    shown = n.call("GET", f"/api/v1/orders/{order}", headers=auth)
    n.echo(f"  order {order} status: {shown.json().get('status')}")
    act_race(n, sh, auth, service_url)
    with _live_channel(n, int(paid.json()["id"]), auth) as live:
        n.say("What changed, who did it, and the way back")
        sh.routes_cli("diff", "2")
        sh.routes_cli("history")
        sh.routes_cli("rollback", "2", "--reason", "error rate up")
        served(4)
        n.call("GET", "/api/v1/payments?per_page=1")
        requests_by_upstream()
        n.say("Her tablet's live channel is still open after the rollback, on the service")
        started = time.perf_counter()
        live.ping().wait(10)
        n.echo(
            f"  ping answered through the tunnel in {1000 * (time.perf_counter() - started):.1f} ms"
        )
    _counted(n, admin, "strangler_tunnels_total", 'route="payment-live"')
    return int(paid.json()["id"])


def _live_channel(n: Narrator, payment: int, auth: dict[str, str]) -> ClientConnection:
    """The app's live channel on a payment: a WebSocket the proxy tunnels to the service."""
    n.say("Her tablet watches that payment on a live channel (a WebSocket, tunnelled by the proxy)")
    path = f"/api/v1/live/payments/{payment}"
    base = str(n.client.base_url).rstrip("/").replace("http://", "ws://", 1)
    n.echo(typer.style(f"→ GET {path} (Upgrade: websocket)", fg=typer.colors.YELLOW))
    live = connect(base + path, additional_headers=auth, open_timeout=10, close_timeout=5)
    n.echo(typer.style("← 101 Switching Protocols", fg=typer.colors.GREEN))
    shown = json.loads(live.recv(timeout=10))
    n.echo(f"  first message: payment {shown['id']} {shown['status']} {shown['amount']}")
    return live


def act_race(n: Narrator, sh: Shell, auth: dict[str, str], service_url: str) -> None:
    """The race the monolith cannot see, closed by the declared compensation."""
    n.say("Alice pays one more order on the service, and cancels it at once on the monolith:")
    order = _new_order(n.client, auth)
    n.call(
        "POST",
        "/api/v1/payments",
        json={"order_id": order, "method": "wallet"},
        headers={**auth, "Idempotency-Key": f"demo-{order}"},
    )
    n.say("the monolith cannot see a payment to-legacy has not delivered yet, so it cancels")
    n.call("POST", f"/api/v1/orders/{order}/cancel", headers=auth)
    n.say("The declared compensation voids or refunds it through the service's API, as a saga")
    staff = n.client.post(
        "/api/v1/auth/login", json={"email": STAFF_USER, "password": DEMO_PASSWORD}
    ).json()["access_token"]
    sh.sync(
        "compensate",
        "--once",
        "--service-url",
        service_url,
        env={"STRANGLER_SERVICE_TOKEN": staff},
    )
    sh.sync("to-legacy", "--once")
    n.say("to-legacy brings the payment and its refund to the monolith; the saga is in status")
    sh.sync("status")


SAFETY_ROUTES = """\
# Payments on the payment service, with safety nets for the day it fails.
version: 5
upstreams:
  monolith: {{url: "{monolith}"}}
  payment:
    url: "{payment}"
    gate: "{payment}/cutover"
    # Outlier ejection: 2 gateway failures in a row take the service out of the path for 2s
    # (longer each time in a row), then one probe request decides whether it is back.
    outlier: {{consecutive_failures: 2, base_ejection: 2s, probes: 1}}
default: monolith
routes:
  - name: payments
    match: {{path: /api/v1/payments}}
    to: payment
    # A GET the service cannot answer is served by the monolith, whose table to-legacy keeps
    # up to date; a POST is not (the monolith knows nothing of Idempotency-Key).
    fallback: {{to: monolith, methods: [GET]}}
    max_body: 64KiB
    timeout: 10s
  - name: payment-live
    match: {{path: /api/v1/live}}
    to: payment
    websocket: true
"""


# The same table with the catalog's images served by the proxy itself (static content first).
STATIC_ROUTE = """\
  - name: static
    match: {{path: /static}}
    # Files exported from the monolith; fingerprinted names are cached `immutable`.
    static: {{root: "{root}", max_age: 24h}}
"""


def act_static(
    n: Narrator, sh: Shell, admin: str, monolith_url: str, safety: str, workdir: Path
) -> str:
    """Static content leaves the monolith first: exported, verified, served by the proxy.
    Returns the route table it set (version 6)."""
    n.say("Static files leave the monolith first: exported from it over HTTP and verified")
    root = workdir / "static"
    sh.run("static", "export", "--from", monolith_url, "--to", str(root), "--verify")
    table = workdir / "routes-static.yaml"
    text = safety.replace("version: 5", "version: 6") + STATIC_ROUTE.format(root=root.resolve())
    table.write_text(text)
    n.say("A route serves /static/ from that directory: the monolith no longer sees those reads")
    sh.routes_cli("set", str(table), "--reason", "static files served by the proxy")
    _served(n, admin, 6)
    image = n.client.get("/api/v1/products", params={"per_page": 1}).json()["items"][0]
    first = n.call("GET", image["image_url"])
    for name in ("cache-control", "last-modified", "accept-ranges", "content-length"):
        n.echo(f"  {name}: {first.headers.get(name)}")
    n.say("Revalidated with its ETag: 304, no body; a range of it: 206")
    n.call("GET", image["image_url"], headers={"If-None-Match": first.headers["etag"]})
    ranged = n.call("GET", image["image_url"], headers={"Range": "bytes=0-15"})
    n.echo(f"  content-range: {ranged.headers.get('content-range')}")
    _counted(n, admin, "strangler_requests_total", label='route="static"')
    return text


CATALOG_SYNCS = ("services/catalog/sync/categories.yaml", "services/catalog/sync/products.yaml")
# The catalog service as an upstream (its gate asks both catalog syncs), added to the table.
CATALOG_UPSTREAM = """\
  # The catalog's read side (services/catalog): its gate asks both catalog syncs.
  catalog: {{url: "{catalog}", gate: "{catalog}/cutover"}}
"""
# Catalog reads (GET only: staff edits stay on the monolith), shadowed to the service first.
CATALOG_ROUTES = """\
  - name: catalog
    match: {path: /api/v1/products, methods: [GET]}
    to: monolith
    shadow: {to: catalog, sample: 1.0}
    compare: {headers: [content-type, etag, cache-control]}
  - name: categories
    match: {path: /api/v1/categories, methods: [GET]}
    to: monolith
    shadow: {to: catalog, sample: 1.0}
    compare: {headers: [content-type, etag, cache-control]}
"""


def catalog_table(static_table: str, catalog: str) -> str:
    """Version 7: the static table with the catalog upstream and its shadowed routes."""
    upstream = CATALOG_UPSTREAM.format(catalog=catalog)
    table = static_table.replace("version: 6", "version: 7", 1)
    return table.replace("default: monolith", upstream + "default: monolith", 1) + CATALOG_ROUTES


def _catalog_reads(n: Narrator, product: int) -> None:
    """What a phone asks of the catalog: categories, a page, a search, a product."""
    n.call("GET", "/api/v1/categories")
    n.call("GET", "/api/v1/products", params={"sort": "price", "per_page": 3})
    n.call("GET", "/api/v1/products", params={"q": "pho", "per_page": 2})
    n.call("GET", f"/api/v1/products/{product}")
    for page in range(1, 6):  # and some more, unprinted
        n.client.get("/api/v1/products", params={"page": page, "in_stock": True})


def act_catalog(
    n: Narrator,
    sh: Shell,
    admin: str,
    static_table: str,
    start_catalog: Callable[[], str],
    start_followers: Callable[[], None],
) -> None:
    """The second service: the catalog's read side, shadowed, gated, canaried, moved."""
    n.say("The second service: the catalog's read side, kept by two declared syncs")
    n.echo("  (categories has no change column: it is followed by full refresh)")
    for declaration in CATALOG_SYNCS:
        sh.run("sync", "check", "--sync", declaration)
    n.say("Backfilled: each batch also computes the catalog's views, in the same transaction")
    n.echo("  (products with their category and rendered answer, counts, the search index)")
    sh.sync("backfill", "--sync", CATALOG_SYNCS[0], "--migrate", "--quiet")
    sh.sync("backfill", "--sync", CATALOG_SYNCS[1], "--quiet")
    catalog = start_catalog()
    start_followers()
    n.say("Reconciled twice, both tables: the catalog's gate opens")
    for _ in range(2):
        sh.sync(
            "reconcile", "--sync", CATALOG_SYNCS[0], "--sync", CATALOG_SYNCS[1], "--settle", "0"
        )
    gate = httpx.get(f"{catalog}/cutover", timeout=10)
    n.echo(f"→ GET {catalog}/cutover\n← {gate.status_code} ready: {gate.json().get('ready')}")
    n.say("Before it serves anyone: every catalog read is shadowed to it, ETags compared too")
    table = sh.routes.parent / "routes-catalog.yaml"
    table.write_text(catalog_table(static_table, catalog))
    sh.routes_cli("set", str(table), "--reason", "shadow catalog reads")
    _served(n, admin, 7)
    product = n.client.get("/api/v1/products", params={"per_page": 1}).json()["items"][0]["id"]
    _catalog_reads(n, product)
    time.sleep(1.5)  # the workers share their numbers once a second
    sh.state("shadow", "report", "catalog")
    n.say("A canary (one client in ten), then all catalog reads: the gate is asked each time")
    sh.routes_cli("flip", "catalog", "--split", "monolith=90,catalog=10", "--reason", "canary")
    _served(n, admin, 8)
    for _ in range(50):  # 50 phones, each keyed by its own strangler_key cookie
        with httpx.Client(base_url=n.client.base_url, timeout=10) as phone:
            phone.get("/api/v1/products", params={"per_page": 5})
    n.echo("  (50 phones read the product list once each)")
    _counted(n, admin, "strangler_requests_total", label='route="catalog"')
    sh.routes_cli("flip", "catalog", "--to", "catalog", "--reason", "catalog read side live")
    sh.routes_cli("flip", "categories", "--to", "catalog", "--reason", "catalog read side live")
    _served(n, admin, 10)
    _catalog_reads(n, product)
    _counted(n, admin, "strangler_requests_total", label='upstream="catalog"')
    act_price_change(n, product)
    n.say("The migration ledger: every route's state, since when, and who moved it why")
    sh.run("ledger", extra=("--routes", str(sh.routes)))


def act_price_change(n: Narrator, product: int) -> None:
    """A staff command on the monolith, seen by the catalog's read model after the sync's lag."""
    n.say("A staff price change is a command: the route takes GETs only, so the monolith takes it")
    token = n.client.post(
        "/api/v1/auth/login", json={"email": STAFF_USER, "password": DEMO_PASSWORD}
    ).json()["access_token"]
    before = n.client.get(f"/api/v1/products/{product}").json()["price"]
    price = f"{float(before) + 1:.2f}"
    n.call(
        "PATCH",
        f"/api/v1/products/{product}",
        json={"price": price},
        headers={"Authorization": f"Bearer {token}"},
    )
    started = time.monotonic()
    shown = n.client.get(f"/api/v1/products/{product}").json()["price"]
    while shown != price and time.monotonic() - started < 20:
        time.sleep(0.05)
        shown = n.client.get(f"/api/v1/products/{product}").json()["price"]
    n.say(f"The catalog shows {shown} {time.monotonic() - started:.1f}s later (the sync's lag)")
    n.call("GET", f"/api/v1/products/{product}")


# Version 11: partners read the catalog on a host name of their own, with a key, within a limit.
PARTNER_ROUTE = """\
  # Partners read the catalog on their own host name: a key of a consumer in the partners
  # group, 5 requests a minute each (shared by every replica through Redis when there is one).
  - name: partner-catalog
    match: {path: /api/v1/products, host: partners.localhost, methods: [GET]}
    to: catalog
    access: {groups: [partners]}
    rate_limit: {rate: 5/minute, by: consumer}
"""
PARTNER_HOST = {"Host": "partners.localhost"}


def partner_table(current: str) -> str:
    """The served table with the partner route added, as the next version."""
    version = int(re.search(r"^version: (\d+)", current, re.MULTILINE)[1])  # type: ignore[index]
    return current.replace(f"version: {version}", f"version: {version + 1}", 1) + PARTNER_ROUTE


def _until(check: Callable[[], bool], timeout: float = 10.0) -> float:
    """Poll `check` until it holds; the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)
    return time.monotonic()


def act_access(n: Narrator, sh: Shell, admin: str) -> None:
    """Who may call what: a partner with a key, refused without, rate limited, revoked."""
    n.say("Who may call what: partners get the catalog on their own host name, with a key")
    table = sh.routes.parent / "routes-partners.yaml"
    table.write_text(partner_table(sh.routes.read_text()))
    sh.routes_cli("set", str(table), "--reason", "partner API: catalog reads with a key")
    _served(n, admin, 11)
    n.say("A partner without a key is refused (401, and how to present one)")
    keyless = n.call("GET", "/api/v1/products", params={"per_page": 1}, headers=PARTNER_HOST)
    n.echo(f"  WWW-Authenticate: {keyless.headers.get('www-authenticate')}")
    n.say("The platform team registers the partner: its key is shown once, stored as a hash")
    started = time.monotonic()
    key = sh.consumers("add", "acme", "--group", "partners", "--reason", "contract signed")
    partner = {**PARTNER_HOST, "X-API-Key": key}
    known = _until(lambda: n.client.get("/api/v1/products", headers=partner).status_code == 200)
    n.echo(f"  (the proxy serves the key {known - started:.2f}s after the command started)")
    n.say("With the key: served, and a claimed identity from the client never passes")
    n.call(
        "GET",
        "/api/v1/products",
        params={"per_page": 1},
        headers={**partner, "X-Consumer-Id": "someone-else"},
    )
    n.say("Five requests a minute: the sixth is refused with when to come back")
    for _ in range(3):
        n.client.get("/api/v1/products", params={"per_page": 1}, headers=partner)
    limited = n.call("GET", "/api/v1/products", params={"per_page": 1}, headers=partner)
    fields = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")
    n.echo("  " + ", ".join(f"{f}: {limited.headers.get(f)}" for f in fields))
    n.say("The phones, on the shop's own host name, need no key: nothing changed for them")
    n.call("GET", "/api/v1/products", params={"per_page": 1})
    n.say("The contract ends: the partner is revoked, and every proxy refuses its key")
    started = time.monotonic()
    sh.consumers("revoke", "acme", "--reason", "contract ended")
    refused = _until(lambda: n.client.get("/api/v1/products", headers=partner).status_code == 401)
    n.call("GET", "/api/v1/products", params={"per_page": 1}, headers=partner)
    n.echo(f"  (refused {refused - started:.2f}s after the command started)")
    sh.consumers("history")


class Traffic:
    """The apps' payment reads while a rollout runs: signed-in phones, each keyed by its own
    session (the route's sticky key), and apps whose session expired (no key: placed afresh on
    every request, their 401 answered by whichever arm); and order reads the monolith serves."""

    def __init__(self, base: str, phones: list[dict[str, str]], orders: list[int]) -> None:
        self.base, self.phones, self.orders = base, phones, orders
        self.sent = self.failed = 0
        self._stop = False
        self._pool = ThreadPoolExecutor(4)
        self._runs: list[Any] = []

    def __enter__(self) -> Traffic:
        self._runs = [self._pool.submit(self._run, n) for n in range(4)]
        return self

    def __exit__(self, *_: object) -> None:
        self._stop = True
        for run in self._runs:
            run.result()
        self._pool.shutdown()

    def _run(self, lane: int) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            n = lane
            while not self._stop:
                n += 1
                phone = self.phones[n % len(self.phones)]
                client.cookies.clear()  # apps without a session keep no cookie either
                if n % 3 == 0:
                    answer = client.get("/api/v1/payments", params={"per_page": 1})
                elif n % 3 == 1:
                    answer = client.get("/api/v1/payments", params={"per_page": 1}, headers=phone)
                else:
                    order = self.orders[n % len(self.orders)]
                    answer = client.get(f"/api/v1/orders/{order}", headers=phone)
                self.sent += 1
                self.failed += answer.status_code >= 500
                time.sleep(0.01)


def _currency(service_db: str, payment: int) -> str:
    from sqlalchemy import create_engine, text

    engine = create_engine(service_db)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT currency FROM payments WHERE id = :id"), {"id": payment}
            ).scalar_one()
    finally:
        engine.dispose()
    return str(found)


def _rollout(admin: str) -> dict[str, Any]:
    return dict(httpx.get(f"{admin}/api/v1/rollouts/payments", timeout=5).json())


def _follow_rollout(
    n: Narrator, admin: str, until: Callable[[dict[str, Any]], bool], timeout: float = 90
) -> dict[str, Any]:
    """Print each event of the payments rollout as the proxy's driver records it, until
    `until` holds; the rollout."""
    shown, deadline = 0, time.monotonic() + timeout
    while True:
        rollout = _rollout(admin)
        for event in rollout["history"][shown:]:
            version = f" (version {event['version']})" if event.get("version") else ""
            n.echo(f"  {event['event']}{version}: {event['message']}")
        shown = len(rollout["history"])
        if until(rollout):
            return rollout
        if time.monotonic() > deadline:
            n.echo(f"  the rollout did not get there in {timeout:.0f}s: {rollout['state']}")
            raise typer.Exit(1)
        time.sleep(0.2)


# The demo's traffic is small: thresholds for a few requests a second per arm (the defaults
# suit production traffic: 20 requests per arm and step, 2-minute bakes).
DEMO_ROLLOUT = (
    *("--steps", "1,5,25,50,100", "--bake", "4s", "--settle", "2s", "--min-requests", "3"),
    *("--max-p95-ratio", "4", "--max-p99-ratio", "8", "--quiet-limit", "20"),
)


def act_rollout(
    n: Narrator, sh: Shell, admin: str, service_db: str, payment: int, dashboard: str
) -> None:
    """Evidence drives the move: payments moved 1 → 100 % by a rollout while the apps read,
    one rollout rolled back by a planted fault, and the ledger before and after."""
    n.say("Evidence drives the move: payments go back to the monolith, to be moved by a rollout")
    sh.sync("to-legacy", "--once")  # every payment the service took is in the monolith first
    sh.routes_cli("flip", "payments", "--to", "monolith", "--reason", "move it again, on evidence")
    n.say("The ledger so far (the evidence of each change under it)")
    sh.run("ledger", "payments", extra=("--routes", str(sh.routes)))
    phones = [_login(n.client) for _ in range(6)]
    orders = [_new_order(n.client, phones[0]) for _ in range(3)]
    with Traffic(str(n.client.base_url), phones, orders) as traffic:
        n.echo(f"  (the apps read payments and orders, {len(phones)} phones and expired sessions)")
        n.say("A rollout moves payments step by step; each step is judged on both arms")
        rollout = ("rollout", "start", "payments", "--to", "payment", *DEMO_ROLLOUT)
        sh.run(*rollout, "--reason", "payment service v2", extra=("--routes", str(sh.routes)))
        _follow_rollout(n, admin, lambda r: r["step"] >= 1 and r["state"] == "baking")
        n.say("A bad script changes a payment in the service's database; reconcile finds it")
        currency = _currency(service_db, payment)
        _drift(service_db, payment, "XXX")
        sh.sync("reconcile")
        n.say("The service's data gate closes: the next analysis fails, the rollout rolls back")
        failed = _follow_rollout(n, admin, lambda r: r["state"] in ROLLOUT_ENDS)
        n.echo(f"  rollout {failed['state']}; payments are back on the monolith")
        n.say("The data is fixed; two clean reconciles open the gate again")
        _drift(service_db, payment, currency)
        sh.sync("reconcile")
        sh.sync("reconcile")
        n.say("The rollout again, to the end: 1, 5, 25, 50 and 100 %")
        sh.run(
            *rollout,
            "--reason",
            "payment service v2, data fixed",
            extra=("--routes", str(sh.routes)),
        )
        done = _follow_rollout(n, admin, lambda r: r["state"] in ROLLOUT_ENDS)
        if done["state"] != "succeeded":
            raise typer.Exit(1)
    n.echo(f"  ({traffic.sent} requests while it ran, {traffic.failed} failed)")
    sh.run("rollout", "status", "payments", extra=("--routes", str(sh.routes)))
    n.say("The ledger after: each step with the evidence it passed on, and what is left to move")
    sh.run("ledger", "payments", extra=("--routes", str(sh.routes)))
    n.echo(f"  the dashboard shows all of it: {dashboard}")


ROLLOUT_ENDS = ("rolled-back", "succeeded", "aborted", "failed")


def _ejected_for(admin: str, upstream: str) -> float:
    """Seconds the proxy keeps `upstream` out of the path (its admin API's route status)."""
    status = httpx.get(f"{admin}/api/v1/routes/status", timeout=5).json()
    found = [u for u in status.get("upstreams", []) if u["name"] == upstream]
    return float(found[0]["ejected_for_s"]) if found else 0.0


def act_outage(
    n: Narrator,
    sh: Shell,
    admin: str,
    safety_table: Path,
    payment: int,
    stop_service: Callable[[], None],
    start_service: Callable[[], None],
) -> None:
    """The payment service goes down and comes back; the proxy's safety nets carry the shop."""
    n.say("Payments move to the service again, this time with safety nets")
    sh.routes_cli("set", str(safety_table), "--reason", "payment service live, with fallback")
    _served(n, admin, 5)
    n.say("Through the internal listener, which says when a fallback served an answer")
    auth = _login(n.client)
    order = _new_order(n.client, auth)
    n.call("GET", f"/api/v1/payments/{payment}", headers=auth)
    stop_service()
    n.say("The payment service has stopped: catalog and payment reads keep answering")
    n.call("GET", "/api/v1/categories")
    n.call("GET", f"/api/v1/payments/{payment}", headers=auth)
    n.call("GET", f"/api/v1/payments/{payment}", headers=auth)
    n.say("Two failures in a row: the service is ejected, a read no longer even tries it")
    n.call("GET", f"/api/v1/payments/{payment}", headers=auth)
    n.say("Alice pays: a POST does not fall back, so it gets a fast 503 while the service is out")
    pay = {"order_id": order, "method": "card", "card_token": "tok_visa"}
    key = {**auth, "Idempotency-Key": f"demo-{order}"}
    refused = n.call("POST", "/api/v1/payments", json=pay, headers=key)
    n.echo(f"  answered in {refused.elapsed.total_seconds() * 1000:.0f} ms, the service untried")
    sh.run("routes", "status", "--admin", admin)
    n.say("The payment service starts again on its port ...")
    start_service()
    deadline = time.monotonic() + 10
    while _ejected_for(admin, "payment") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    n.say("... its ejection runs out, the next request probes it, and it is back by itself")
    n.call("GET", f"/api/v1/payments/{payment}", headers=auth)
    n.say("Alice's app sends her payment again with the same Idempotency-Key: paid once")
    n.call("POST", "/api/v1/payments", json=pay, headers=key)
    sh.run("routes", "status", "--admin", admin)


def _strangler(*args: str) -> list[str]:
    return [sys.executable, "-m", "proxy.cli", *args]


def run_demo(workdir: Path, *, keep_running: bool = False, echo: Echo = typer.echo) -> None:
    """Seed a fresh shop under `workdir`, start the monolith and the proxy in front of it, play
    the acts, stop (or stay up with `keep_running`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for pattern in ("legacy.db*", "payment.db*", "catalog.db*"):  # what an earlier demo made
        for old in workdir.glob(pattern):
            old.unlink()
    database = f"sqlite:///{workdir / 'legacy.db'}"
    service_db = f"sqlite:///{workdir / 'payment.db'}"
    python = sys.executable
    started = time.perf_counter()
    echo(typer.style("strangler demo", bold=True))
    echo(f"$ python -m legacy_monolith seed --database-url {database}")
    code, output = Child(
        "seed", [python, "-m", "legacy_monolith", "seed", "--database-url", database]
    ).run_to_end()
    echo("  " + output.strip().replace("\n", "\n  "))
    if code != 0:
        raise typer.Exit(code)
    echo(f"$ python -m legacy_monolith --port 0 --database-url {database}")
    with (
        contextlib.ExitStack() as stack,
        Child(
            "monolith", [python, "-m", "legacy_monolith", "--port", "0", "--database-url", database]
        ) as monolith,
    ):
        echo(f"  monolith listening on {monolith.url} (pid {monolith.pid})")
        with httpx.Client(base_url=monolith.url, timeout=10) as client:
            act_day_zero(Narrator(client, echo))

        service = [python, "-m", "services.payment", "--port", "0"]
        service += ["--database-url", service_db, "--legacy-url", monolith.url]
        echo("$ " + shlex.join(["python", *service[1:]]))
        payment = Child("payment", service).start()
        stack.callback(lambda: payment.stop())  # the one running at the end
        echo(f"  payment service listening on {payment.url} (pid {payment.pid})")

        def stop_service() -> None:
            echo(f"$ kill {payment.pid}  (the payment service)")
            payment.stop()

        def start_service() -> None:
            nonlocal payment
            again = [*service[:3], "--port", payment.url.rsplit(":", 1)[1], *service[5:]]
            echo("$ " + shlex.join(["python", *again[1:]]))
            payment = Child("payment", again).start()
            echo(f"  payment service listening on {payment.url} (pid {payment.pid})")

        routes = workdir / "routes.yaml"
        for old in (workdir / "var").glob("routes-history/*"):
            old.unlink()
        routes.write_text(DAY_ZERO_ROUTES.format(monolith=monolith.url, payment=payment.url))
        broken = workdir / "routes-broken.yaml"
        broken.write_text(BROKEN_ROUTES.format(monolith=monolith.url))
        shutil.rmtree(workdir / "var" / "shadow", ignore_errors=True)  # an earlier demo's
        shadowed = workdir / "routes-shadow.yaml"
        shadowed.write_text(SHADOW_ROUTES.format(monolith=monolith.url, payment=payment.url))
        safety = workdir / "routes-safety-nets.yaml"
        safety.write_text(SAFETY_ROUTES.format(monolith=monolith.url, payment=payment.url))
        echo(
            typer.style("\n# The route table: checked, then shown", fg=typer.colors.CYAN, bold=True)
        )
        for args in (
            ("routes", "validate", str(broken)),
            ("routes", "validate", str(routes)),
            ("routes", "show", str(routes)),
        ):
            echo("$ strangler " + " ".join(args))
            code, output = Child("strangler", _strangler(*args)).run_to_end()
            echo("  " + output.strip().replace("\n", "\n  ") + f"\n  (exit {code})")
        serve = (
            "serve",
            "--routes",
            str(routes),
            "--listen",
            "127.0.0.1:0",
            "--internal-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--state-dir",
            str(workdir / "var"),
        )
        echo("$ strangler " + " ".join(serve))
        consumers = workdir / "var" / "consumers.json"
        for old in (consumers, consumers.with_name("consumers-audit.jsonl")):
            old.unlink(missing_ok=True)  # an earlier demo's partner
        with Child(
            "proxy",
            _strangler(*serve),
            ready=STRANGLER_READY,
            env={"STRANGLER_CONSUMERS": str(consumers)},
        ) as proxy:
            for role, url in proxy.listeners.items():
                echo(f"  {role} listener on {url}")
            with (
                httpx.Client(base_url=proxy.url, timeout=10) as through,
                httpx.Client(base_url=proxy.listeners["internal"], timeout=10) as inside,
                httpx.Client(base_url=monolith.url, timeout=10) as direct,
                httpx.Client(base_url=payment.url, timeout=10) as to_service,
            ):
                n = Narrator(through, echo)
                sh = Shell(n, routes, database, service_db)
                act_proxy(n, direct, proxy.listeners["admin"])
                follow = [
                    *_strangler("sync", "follow", "--interval", "0.5", "--metrics-port", "0"),
                    *("--legacy-db", database, "--service-db", service_db),
                ]

                def follower() -> Child:
                    child = Child("follow", follow, ready=SYNC_METRICS).start()
                    stack.callback(child.stop)
                    return child

                act_data(n, sh, to_service, follower)
                act_shadow(n, sh, proxy.listeners["admin"], shadowed, payment.url, service_db)
                taken = act_flip(n, sh, proxy.listeners["admin"], payment.url)
                act_outage(
                    Narrator(inside, echo),
                    sh,
                    proxy.listeners["admin"],
                    safety,
                    taken,
                    stop_service,
                    start_service,
                )
                static_table = act_static(
                    n,
                    sh,
                    proxy.listeners["admin"],
                    monolith.url,
                    safety.read_text(),
                    workdir,
                )
                catalog_db = f"sqlite:///{workdir / 'catalog.db'}"
                on_catalog = Shell(n, routes, database, catalog_db)

                def start_catalog() -> str:
                    command = [python, "-m", "services.catalog", "--port", "0"]
                    command += ["--database-url", catalog_db]
                    echo("$ " + shlex.join(["python", *command[1:]]))
                    child = Child("catalog", command).start()
                    stack.callback(child.stop)
                    echo(f"  catalog service listening on {child.url} (pid {child.pid})")
                    return child.url

                def start_followers() -> None:
                    for declaration in CATALOG_SYNCS:
                        command = [
                            *_strangler("sync", "follow", "--sync", declaration),
                            *("--metrics-port", "0", "--interval", "0.5"),
                            *("--legacy-db", database, "--service-db", catalog_db),
                        ]
                        echo("$ " + shlex.join(["strangler", *command[3:]]) + "  (background)")
                        child = Child("follow", command, ready=SYNC_METRICS).start()
                        stack.callback(child.stop)

                act_catalog(
                    n,
                    on_catalog,
                    proxy.listeners["admin"],
                    static_table,
                    start_catalog,
                    start_followers,
                )
                act_access(n, sh, proxy.listeners["admin"])
                act_rollout(
                    n,
                    sh,
                    proxy.listeners["admin"],
                    service_db,
                    taken,
                    proxy.listeners["admin"] + "/dashboard",
                )
            echo(typer.style(f"\ndemo done in {time.perf_counter() - started:.1f}s", bold=True))
            if keep_running:
                echo(
                    f"still serving: proxy {proxy.url} in front of the monolith {monolith.url}; "
                    "Ctrl-C stops both"
                )
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    echo("stopping")
