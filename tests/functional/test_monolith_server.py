"""The monolith as its operators run it: `python -m legacy_monolith seed`, then serve, then a
mobile user's whole journey over real HTTP (uvicorn with httptools on 127.0.0.1, port 0)."""

from __future__ import annotations

import signal
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from legacy_monolith.seed import DEMO_PASSWORD, DEMO_USER, STAFF_USER
from proxy.procs import Child

PY = sys.executable


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    import os
    import subprocess

    return subprocess.run(
        [PY, "-m", "legacy_monolith", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def shop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory seeded with the default command (SQLite under ./var/)."""
    cwd = tmp_path_factory.mktemp("shop")
    seeded = run(["seed", "--payments", "120", "--users", "20"], cwd)
    assert seeded.returncode == 0, seeded.stderr
    assert "120 payments" in seeded.stdout
    assert (cwd / "var" / "legacy.db").exists()
    return cwd


@pytest.fixture(scope="module")
def server(shop_dir: Path) -> Iterator[Child]:
    with Child("monolith", [PY, "-m", "legacy_monolith", "--port", "0"], cwd=str(shop_dir)) as proc:
        yield proc


def test_seed_refuses_a_seeded_database_unless_reset(shop_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'again.db'}"
    assert run(["seed", "--database-url", url, "--payments", "10"], tmp_path).returncode == 0
    again = run(["seed", "--database-url", url, "--payments", "10"], tmp_path)
    assert again.returncode == 1
    assert "--reset" in again.stderr
    reset = run(["seed", "--database-url", url, "--payments", "30", "--reset"], tmp_path)
    assert reset.returncode == 0, reset.stderr
    with sqlite3.connect(tmp_path / "again.db") as db:
        assert db.execute("SELECT count(*) FROM payments").fetchone()[0] == 30


def test_seed_reads_the_database_url_from_the_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    done = run(["seed", "--payments", "5"], tmp_path, env={"LEGACY_DATABASE_URL": url})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "env.db").exists()
    assert not (tmp_path / "var").exists()


def test_seed_rejects_a_negative_count(tmp_path: Path) -> None:
    done = run(["seed", "--payments", "-3"], tmp_path)
    assert done.returncode == 2
    assert "must be 0 or more" in done.stderr


def test_health_names_the_backend(server: Child) -> None:
    health = httpx.get(f"{server.url}/healthz").json()
    assert health == {
        "status": "ok",
        "version": health["version"],
        "database": "sqlite",
        "cache": "memory",
        "cache_available": True,
    }


def test_a_mobile_users_journey_over_http(server: Child) -> None:
    with httpx.Client(base_url=server.url) as http:
        token = http.post(
            "/api/v1/auth/login", json={"email": DEMO_USER, "password": DEMO_PASSWORD}
        ).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        catalog = http.get("/api/v1/products", params={"in_stock": True, "per_page": 50})
        assert catalog.status_code == 200
        product = max(catalog.json()["items"], key=lambda p: p["stock_qty"])
        assert http.get(product["image_url"]).status_code == 200
        assert (
            http.post(
                "/api/v1/cart/items", json={"product_id": product["id"], "quantity": 1}
            ).status_code
            == 201
        )
        order = http.post("/api/v1/orders", json={"shipping_address": "1 Main St"}).json()
        assert order["status"] == "pending_payment"
        payment = http.post(
            "/api/v1/payments",
            json={"order_id": order["id"], "method": "card", "card_token": "tok_mastercard"},
        ).json()
        assert payment["status"] == "captured"
        assert http.get(f"/api/v1/orders/{order['id']}").json()["status"] == "paid"
        staff = http.post(
            "/api/v1/auth/login", json={"email": STAFF_USER, "password": DEMO_PASSWORD}
        ).json()["access_token"]
        refund = http.post(
            f"/api/v1/payments/{payment['id']}/refund",
            json={},
            headers={"Authorization": f"Bearer {staff}"},
        )
        assert refund.json()["status"] == "refunded"
        assert http.get(f"/api/v1/orders/{order['id']}").json()["status"] == "refunded"


def test_errors_over_http_are_problem_json(server: Child) -> None:
    for method, path, body in (
        ("GET", "/no/such/path", None),
        ("DELETE", "/api/v1/categories", None),
        ("GET", "/api/v1/products/0", None),
        ("POST", "/api/v1/auth/login", b"{not json"),
        ("GET", "/api/v1/orders", None),
    ):
        answer = httpx.request(
            method,
            server.url + path,
            content=body,
            headers={"Content-Type": "application/json"} if body else {},
        )
        assert 400 <= answer.status_code < 500, (method, path)
        assert answer.headers["content-type"] == "application/problem+json", (method, path)
        problem = answer.json()
        assert problem["status"] == answer.status_code
        assert problem["type"].startswith("https://problems.legacy-shop.example/")
    malformed = httpx.post(
        f"{server.url}/api/v1/auth/login",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert malformed.status_code == 400
    assert malformed.json()["type"].endswith("/malformed-json")


def test_serves_several_workers_and_stops_cleanly(shop_dir: Path) -> None:
    proc = Child(
        "monolith",
        [PY, "-m", "legacy_monolith", "--port", "0", "--workers", "2"],
        cwd=str(shop_dir),
    ).start()
    try:
        for _ in range(10):
            assert httpx.get(f"{proc.url}/api/v1/categories").status_code == 200
    finally:
        code = proc.stop(sig=signal.SIGTERM)
    assert code == 0


def test_several_workers_without_redis_turn_the_cache_off(shop_dir: Path) -> None:
    """Per-worker caches would serve a price another worker already changed."""
    with Child(
        "monolith",
        [PY, "-m", "legacy_monolith", "--port", "0", "--workers", "2"],
        cwd=str(shop_dir),
    ) as proc:
        assert httpx.get(f"{proc.url}/healthz").json()["cache"] == "off"
    assert any("catalog caching is off" in line for line in proc.output)
