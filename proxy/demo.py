"""`strangler demo`: the migration journey on embedded defaults (SQLite, no Redis).

Act 1 (day 0): the legacy monolith, seeded, answering a mobile app's requests. Later acts put
the proxy in front of it and move payments out. Everything runs as child processes started with
the same commands the README gives, and is reached over HTTP only.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import typer

from proxy.procs import STRANGLER_READY, Child

DEMO_USER = "alice@example.com"
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
  # The extracted payment service. In this demo a second monolith process stands in for it.
  payment: {{url: "{payment}"}}
default: monolith
routes:
  - name: payments
    match: {{path: /api/v1/payments}}
    to: monolith
    max_body: 64KiB
    timeout: 10s
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
    n.call("GET", "/api/v1/products%2F..%2Fusers")
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
    for line in httpx.get(f"{admin}/metrics", timeout=5).text.splitlines():
        if line.startswith("strangler_requests_total"):
            n.echo(f"  {line}")


def act_flip(n: Narrator, routes: Path, admin: str) -> None:
    """The route-table life-cycle: a flip, what changed, who did it, and a rollback."""

    def cli(*args: str) -> None:
        n.echo("$ strangler routes " + shlex.join(args))
        code, output = Child(
            "strangler",
            _strangler("routes", *args, "--routes", str(routes)),
            env={"STRANGLER_AUTHOR": "platform-team"},
        ).run_to_end()
        for line in output.rstrip("\n").splitlines():
            n.echo("  " + line)
        if code:
            n.echo(f"  (exit {code})")

    def served(version: int) -> None:
        deadline = time.monotonic() + 10
        while httpx.get(f"{admin}/readyz", timeout=5).json()["table_version"] != version:
            if time.monotonic() > deadline:
                raise typer.Exit(1)
            time.sleep(0.1)
        n.echo(f"  (the proxy now serves version {version}, without a restart)")

    def requests_by_upstream() -> None:
        for line in httpx.get(f"{admin}/metrics", timeout=5).text.splitlines():
            if line.startswith("strangler_requests_total") and 'route="payments"' in line:
                n.echo(f"  {line}")

    n.say("Move payments: flip the route, see what changed and who did it, roll it back")
    cli("flip", "payments", "--to", "payment", "--reason", "payment service live")
    served(2)
    n.call("GET", "/api/v1/payments?per_page=1")
    requests_by_upstream()
    cli("diff", "1")
    cli("history")
    cli("rollback", "1", "--reason", "error rate up")
    served(3)
    n.call("GET", "/api/v1/payments?per_page=1")
    requests_by_upstream()


def _strangler(*args: str) -> list[str]:
    return [sys.executable, "-m", "proxy.cli", *args]


def run_demo(workdir: Path, *, keep_running: bool = False, echo: Echo = typer.echo) -> None:
    """Seed a fresh shop under `workdir`, start the monolith and the proxy in front of it, play
    the acts, stop (or stay up with `keep_running`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("legacy.db*"):  # only what an earlier demo made; nothing else
        old.unlink()
    database = f"sqlite:///{workdir / 'legacy.db'}"
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

        echo(f"$ python -m legacy_monolith --port 0 --database-url {database}  # stand-in payment")
        payment = Child(
            "payment", [python, "-m", "legacy_monolith", "--port", "0", "--database-url", database]
        ).start()
        stack.callback(payment.stop)
        routes = workdir / "routes.yaml"
        for old in (workdir / "var").glob("routes-history/*"):
            old.unlink()
        routes.write_text(DAY_ZERO_ROUTES.format(monolith=monolith.url, payment=payment.url))
        broken = workdir / "routes-broken.yaml"
        broken.write_text(BROKEN_ROUTES.format(monolith=monolith.url))
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
        )
        echo("$ strangler " + " ".join(serve))
        with Child("proxy", _strangler(*serve), ready=STRANGLER_READY) as proxy:
            for role, url in proxy.listeners.items():
                echo(f"  {role} listener on {url}")
            with (
                httpx.Client(base_url=proxy.url, timeout=10) as through,
                httpx.Client(base_url=monolith.url, timeout=10) as direct,
            ):
                act_proxy(Narrator(through, echo), direct, proxy.listeners["admin"])
                act_flip(Narrator(through, echo), routes, proxy.listeners["admin"])
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
