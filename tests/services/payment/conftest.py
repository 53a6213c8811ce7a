"""Payment-service fixtures: a real monolith (seeded SQLite, uvicorn on 127.0.0.1, port 0, in a
thread) that the service authenticates against and reads orders from, and real payment services
in front of their own databases (SQLite, or PostgreSQL from tests/conftest.py)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from legacy_monolith.app import create_app as create_legacy_app
from legacy_monolith.db import make_engine as make_legacy_engine
from legacy_monolith.seed import DEMO_PASSWORD, STAFF_USER, seed
from legacy_monolith.settings import Settings as LegacySettings
from services.payment.app import create_app
from services.payment.settings import Settings

FAST_HASH = 1_000  # PBKDF2 rounds for test users; production strength is not under test here


class ServerThread:
    """An ASGI app served by uvicorn on 127.0.0.1 (port 0) in a thread, lifespan included."""

    def __init__(self, app: FastAPI, ws: str = "none") -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", ws=ws
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.url = ""

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = threading.Event()
        for _ in range(1000):
            if self.server.started or not self.thread.is_alive():
                break
            deadline.wait(0.01)
        if not self.server.started:
            raise RuntimeError("the server did not start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@contextmanager
def serving(app: FastAPI) -> Iterator[ServerThread]:
    server = ServerThread(app).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Customer:
    id: int
    headers: dict[str, str]
    token: str = ""


@dataclass
class Shop:
    """The monolith, driven over HTTP as the mobile apps drive it."""

    url: str
    http: httpx.Client
    staff: Customer = field(init=False)

    def login(self, email: str, password: str = DEMO_PASSWORD) -> Customer:
        answer = self.http.post("/api/v1/auth/login", json={"email": email, "password": password})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        token = body["access_token"]
        return Customer(body["user_id"], {"Authorization": f"Bearer {token}"}, token)

    def customer(self) -> Customer:
        email = f"user-{secrets.token_hex(6)}@example.com"
        made = self.http.post(
            "/api/v1/users",
            json={"email": email, "password": "correct horse", "full_name": "Test User"},
        )
        assert made.status_code == 201, made.text
        return self.login(email, "correct horse")

    def order(self, who: Customer, quantity: int = 1, product: int | None = None) -> dict[str, Any]:
        if product is None:
            product = self.product()
        added = self.http.post(
            "/api/v1/cart/items",
            json={"product_id": product, "quantity": quantity},
            headers=who.headers,
        )
        assert added.status_code == 201, added.text
        made = self.http.post(
            "/api/v1/orders", json={"shipping_address": "1 Main St"}, headers=who.headers
        )
        assert made.status_code == 201, made.text
        return dict(made.json())

    def product(self) -> int:
        page = self.http.get("/api/v1/products", params={"in_stock": True, "per_page": 100})
        return int(max(page.json()["items"], key=lambda p: p["stock_qty"])["id"])

    def cancel(self, who: Customer, order_id: int) -> None:
        done = self.http.post(f"/api/v1/orders/{order_id}/cancel", headers=who.headers)
        assert done.status_code == 200, done.text


@pytest.fixture(scope="session")
def legacy_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('legacy') / 'legacy.db'}"
    engine = make_legacy_engine(url)
    try:
        seed(engine, payments=40, users=6, products_per_category=6, password_iterations=FAST_HASH)
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="session")
def monolith(legacy_url: str) -> Iterator[ServerThread]:
    settings = LegacySettings(
        database_url=legacy_url,
        cache_prefix=f"legacy-test:{secrets.token_hex(4)}:",
        password_iterations=FAST_HASH,
    )
    with serving(create_legacy_app(settings)) as server:
        yield server


@pytest.fixture(scope="session")
def shop(monolith: ServerThread) -> Iterator[Shop]:
    with httpx.Client(base_url=monolith.url, timeout=30) as http:
        shop = Shop(monolith.url, http)
        shop.staff = shop.login(STAFF_USER)
        yield shop


def service_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "events_stream": f"t:{secrets.token_hex(4)}:events",
        "relay_interval_seconds": 0.05,
    }
    values.update(overrides)
    return Settings(**values)


ServiceFactory = Callable[..., ServerThread]


@pytest.fixture
def start_service(monolith: ServerThread, tmp_path: Path) -> Iterator[ServiceFactory]:
    """Starts payment services against the monolith; all are stopped after the test."""
    running: list[ServerThread] = []

    def start(
        database_url: str | None = None,
        *,
        legacy_transport: httpx.BaseTransport | None = None,
        **overrides: Any,
    ) -> ServerThread:
        url = database_url or f"sqlite:///{tmp_path / f'payment-{len(running)}.db'}"
        overrides.setdefault("legacy_url", monolith.url)
        settings = service_settings(url, **overrides)
        server = ServerThread(create_app(settings, legacy_transport=legacy_transport))
        running.append(server.start())
        return server

    yield start
    for server in running:
        server.stop()


@pytest.fixture(scope="module")
def service(monolith: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A payment service on SQLite shared by a module's tests (they use orders of their own)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('payment') / 'payment.db'}"
    with serving(create_app(service_settings(url, legacy_url=monolith.url))) as server:
        yield server.url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh service database on each backend (the PostgreSQL one is real)."""
    if request.param == "postgres":
        make: Callable[[], str] = request.getfixturevalue("postgres_databases")
        return make()
    return f"sqlite:///{tmp_path / 'service.db'}"
