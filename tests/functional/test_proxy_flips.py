"""A served route moved with `strangler routes flip` and back with `rollback`, while the proxy
runs: the watcher serves each new version, and requests follow it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.functional.proxy_support import get, recorder, running, wait_until

STRANGLER = str(Path(sys.executable).parent / "strangler")


def routes_cli(*args: str, routes: Path) -> str:
    done = subprocess.run(
        [STRANGLER, "routes", *args, "--routes", str(routes)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "STRANGLER_AUTHOR": "ops"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_flip_and_rollback_are_served_without_a_restart(tmp_path: Path) -> None:
    with recorder() as monolith, recorder() as payment:
        routes = tmp_path / "routes.yaml"
        routes.write_text(
            "version: 1\nupstreams:\n"
            f'  monolith: {{url: "{monolith.url}"}}\n  payment: {{url: "{payment.url}"}}\n'
            "default: monolith\nroutes:\n"
            "  - name: payments\n    match: {path: /api/v1/payments}\n    to: monolith\n"
        )
        with running(["--routes", str(routes)]) as proxy:
            assert get(proxy.external, "/api/v1/payments/1").status == 200
            assert len(monolith.seen) == 1
            routes_cli("flip", "payments", "--to", "payment", "--reason", "cut over", routes=routes)
            wait_until(lambda: proxy.readyz()["table_version"] == 2, what="version 2 served")
            assert get(proxy.external, "/api/v1/payments/2").status == 200
            assert [s.target for s in payment.seen] == [b"/api/v1/payments/2"]
            assert get(proxy.external, "/api/v1/orders").status == 200  # the rest stays
            assert monolith.seen[-1].target == b"/api/v1/orders"
            routes_cli("rollback", "1", "--reason", "errors up", routes=routes)
            wait_until(lambda: proxy.readyz()["table_version"] == 3, what="version 3 served")
            assert get(proxy.external, "/api/v1/payments/3").status == 200
            assert monolith.seen[-1].target == b"/api/v1/payments/3"
            assert len(payment.seen) == 1
        history = routes_cli("history", routes=routes)
        assert [line.split()[0] for line in history.splitlines()] == ["3", "2", "1"]


def test_a_flip_through_the_admin_api_is_served(tmp_path: Path) -> None:
    import httpx

    with recorder() as monolith, recorder() as payment:
        routes = tmp_path / "routes.yaml"
        routes.write_text(
            "version: 1\nupstreams:\n"
            f'  monolith: {{url: "{monolith.url}"}}\n  payment: {{url: "{payment.url}"}}\n'
            "default: monolith\nroutes:\n"
            "  - name: payments\n    match: {path: /api/v1/payments}\n    to: monolith\n"
        )
        env = {"STRANGLER_ADMIN_TOKEN": "t0ken"}
        with running(["--routes", str(routes)], env) as proxy:
            admin = f"http://127.0.0.1:{proxy.admin}"
            assert httpx.get(f"{admin}/api/v1/routes").json()["version"] == 1
            refused = httpx.post(
                f"{admin}/api/v1/routes/flip",
                json={"route": "payments", "to": "payment", "reason": "x"},
            )
            assert refused.status_code == 401
            flipped = httpx.post(
                f"{admin}/api/v1/routes/flip",
                json={"route": "payments", "to": "payment", "reason": "cut over"},
                headers={"Authorization": "Bearer t0ken", "X-Author": "ops"},
            )
            assert flipped.status_code == 200, flipped.text
            wait_until(lambda: proxy.readyz()["table_version"] == 2, what="version 2 served")
            assert get(proxy.external, "/api/v1/payments/9").status == 200
            assert [s.target for s in payment.seen] == [b"/api/v1/payments/9"]
            # the admin API is never served on a data-plane listener
            assert get(proxy.external, "/api/v1/routes").status == 200
            assert monolith.seen[-1].target == b"/api/v1/routes"


def test_a_non_loopback_admin_listener_needs_a_token() -> None:
    done = subprocess.run(
        [
            STRANGLER,
            "serve",
            "--default-upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--internal-listen",
            "off",
            "--admin-listen",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "STRANGLER_ADMIN_TOKEN"},
    )
    assert done.returncode == 2
    assert "STRANGLER_ADMIN_TOKEN" in done.stderr


def test_the_cli_changes_a_remote_proxy_through_its_admin_api(tmp_path: Path) -> None:
    with recorder() as monolith, recorder() as payment:
        routes = tmp_path / "served" / "routes.yaml"
        routes.parent.mkdir()
        routes.write_text(
            "version: 1\nupstreams:\n"
            f'  monolith: {{url: "{monolith.url}"}}\n  payment: {{url: "{payment.url}"}}\n'
            "default: monolith\nroutes:\n"
            "  - name: payments\n    match: {path: /api/v1/payments}\n    to: monolith\n"
        )
        with running(["--routes", str(routes)], {"STRANGLER_ADMIN_TOKEN": "t0ken"}) as proxy:
            admin = ["--admin", f"http://127.0.0.1:{proxy.admin}"]
            env = {**os.environ, "STRANGLER_ADMIN_TOKEN": "t0ken", "STRANGLER_AUTHOR": "ops"}

            def cli(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [STRANGLER, "routes", *args, *admin],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                    env=env,
                    cwd=tmp_path,
                )

            flipped = cli(
                "flip", "payments", "--split", "monolith=50,payment=50", "--reason", "canary"
            )
            assert flipped.returncode == 0, flipped.stderr
            assert "version 2 committed (ops: canary)" in flipped.stdout
            refused = cli("flip", "payments", "--to", "nowhere", "--reason", "typo")
            assert refused.returncode == 1
            assert "unknown upstream 'nowhere'" in refused.stderr
            back = cli("rollback", "1", "--reason", "errors up")
            assert "version 3 committed (ops: rollback to version 1: errors up)" in back.stdout
            history = cli("history")
            assert [line.split()[0] for line in history.stdout.splitlines()] == ["3", "2", "1"]
            wait_until(lambda: proxy.readyz()["table_version"] == 3, what="version 3 served")
            no_token = subprocess.run(
                [STRANGLER, "routes", "rollback", "2", "--reason", "x", *admin],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env={k: v for k, v in env.items() if k != "STRANGLER_ADMIN_TOKEN"},
            )
            assert no_token.returncode == 1
            assert "bearer token" in no_token.stderr
