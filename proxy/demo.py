"""`strangler demo`: the migration journey on embedded defaults (SQLite, no Redis).

Act 1 (day 0): the legacy monolith, seeded, answering a mobile app's requests. Later acts put
the proxy in front of it and move payments out. Everything runs as child processes started with
the same commands the README gives, and is reached over HTTP only.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import typer

from proxy.procs import Child

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


def run_demo(workdir: Path, *, keep_running: bool = False, echo: Echo = typer.echo) -> None:
    """Seed a fresh shop under `workdir`, start the monolith, play the acts, stop (or stay up)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("legacy.db*"):  # only what an earlier demo made; nothing else
        old.unlink()
    database = f"sqlite:///{workdir / 'legacy.db'}"
    python = sys.executable
    echo(typer.style("strangler demo: act 1, day 0", bold=True))
    echo(f"$ python -m legacy_monolith seed --database-url {database}")
    started = time.perf_counter()
    seeded = Child("seed", [python, "-m", "legacy_monolith", "seed", "--database-url", database])
    code, output = seeded.run_to_end()
    echo("  " + output.strip().replace("\n", "\n  "))
    if code != 0:
        raise typer.Exit(code)
    echo(f"$ python -m legacy_monolith --port 0 --database-url {database}")
    with Child(
        "monolith", [python, "-m", "legacy_monolith", "--port", "0", "--database-url", database]
    ) as monolith:
        echo(f"  monolith listening on {monolith.url} (pid {monolith.pid})")
        with httpx.Client(base_url=monolith.url, timeout=10) as client:
            act_day_zero(Narrator(client, echo))
        echo(typer.style(f"\ndemo done in {time.perf_counter() - started:.1f}s", bold=True))
        if keep_running:
            echo(f"monolith still serving on {monolith.url}; Ctrl-C stops it")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                echo("stopping")
