"""`strangler consumers` as operators run it (the installed command, in a process of its own):
a mobile app's key made once, rotated and revoked, on a file store, a Redis store and through a
real admin API served by uvicorn; what the proxies read afterwards; --json failures in the
routes commands' shape, exit codes, and a write without the admin token refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from proxy.access.cli import consumers_app
from proxy.access.consumers import Registry
from proxy.admin.app import _user_data_reader, _writer, create_admin_app
from proxy.admin.consumers import consumers_router
from proxy.store.consumers import FileConsumerStore, RedisConsumerStore
from proxy.store.file import FileStore
from tests.functional.proxy_support import STRANGLER
from tests.support import serving

TOKEN = "t0ken-for-the-admin-api"
KEY_LINE = re.compile(r"^  key (k_[0-9a-f]{8}): (sk_[A-Za-z0-9_-]{43})$", re.MULTILINE)
NOT_AGAIN = "this key will not be shown again"


def _env(env: dict[str, str] | None) -> dict[str, str]:
    """The caller's environment without its STRANGLER_* settings, as author "ops"."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("STRANGLER_")}
    return {**base, "STRANGLER_AUTHOR": "ops", **(env or {})}


def consumers(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`strangler consumers ARGS`."""
    return subprocess.run(
        [STRANGLER, "consumers", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_env(env),
    )


def side_by_side(
    *commands: list[str], env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Independent `strangler consumers` commands run at the same time, each one's outcome."""
    running = [
        subprocess.Popen(
            [STRANGLER, "consumers", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(env),
        )
        for args in commands
    ]
    done = []
    for args, process in zip(commands, running, strict=True):
        out, err = process.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(args, process.returncode, out, err))
    return done


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    done = consumers(*args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def new_key(out: str) -> tuple[str, str]:
    """The key id and the key a write printed, said once with its warning."""
    (found,) = KEY_LINE.findall(out)
    assert out.count(found[1]) == 1
    assert NOT_AGAIN in out
    return found[0], found[1]


def failure(done: subprocess.CompletedProcess[str], code: int, kind: str) -> dict[str, Any]:
    """The one JSON object a --json failure prints, checked for its shape, code and kind."""
    assert done.returncode == code, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert set(report["error"]) == {"kind", "message", "details"}
    assert report["error"]["kind"] == kind
    return dict(report)


def accepted(path: Path, key: str) -> str | None:
    """The consumer a proxy following the file store would identify by `key`."""
    found = Registry(FileConsumerStore(path).current()).by_key(key, time.time())
    return None if found is None else found.name


def test_a_mobile_app_gets_a_key_rotates_it_and_is_revoked(tmp_path: Path) -> None:
    store = ["--consumers", str(tmp_path / "consumers.json")]
    path = tmp_path / "consumers.json"
    add = ["add", "mobile-ios", "--group", "mobile", "--description", "iOS app"]
    out = ok(*add, "--reason", "app launch", *store)
    assert out.startswith("consumer mobile-ios added (version 1)")
    first_id, first = new_key(out)
    assert accepted(path, first) == "mobile-ios"

    reads = side_by_side(
        ["list", *store], ["show", "mobile-ios", "--json", *store], ["show", "mobile-ios", *store]
    )
    listing, shown, shown_text = (done.stdout for done in reads)
    assert "mobile-ios" in listing
    assert "iOS app" in listing
    assert json.loads(shown)["keys"][0]["id"] == first_id
    stored_hash = json.loads(path.read_text())["consumers"][0]["keys"][0]["sha256"]
    for said in (listing, shown, shown_text):
        assert first not in said
        assert stored_hash not in said

    # a new release ships a new key; the old one keeps working for the grace
    rotated = ok("rotate-key", "mobile-ios", "--grace", "1h", "--reason", "release 2.0", *store)
    second_id, second = new_key(rotated)
    assert accepted(path, first) == "mobile-ios"
    assert accepted(path, second) == "mobile-ios"
    # the old key leaked: revoke it at once
    ok("revoke", "mobile-ios", "--key", first_id, "--reason", "leaked in a crash log", *store)
    assert accepted(path, first) is None
    assert accepted(path, second) == "mobile-ios"
    ok("update", "mobile-ios", "--group", "mobile", "--group", "beta", "--reason", "beta", *store)
    # and the app is withdrawn
    ok("revoke", "mobile-ios", "--reason", "app withdrawn", *store)
    assert accepted(path, second) is None

    history, history_text, gone = side_by_side(
        ["history", "--json", *store], ["history", *store], ["show", "mobile-ios", "--json", *store]
    )
    entries = json.loads(history.stdout)
    assert [(e["action"], e["key_id"], e["author"]) for e in entries] == [
        ("revoke", None, "ops"),
        ("update", None, "ops"),
        ("revoke-key", first_id, "ops"),
        ("rotate-key", second_id, "ops"),
        ("add", first_id, "ops"),
    ]
    assert entries[2]["reason"] == "leaked in a crash log"
    audit = path.with_name("consumers-audit.jsonl").read_text()
    for said in (history.stdout, history_text.stdout, audit):
        assert first not in said
        assert second not in said
        assert stored_hash not in said
    failure(gone, 1, "unknown-consumer")


def test_a_service_without_a_key_is_known_by_its_certificate_and_its_tokens(
    tmp_path: Path,
) -> None:
    path = tmp_path / "consumers.json"
    credentials = ["--subject", "CN=orders,O=Shop", "--jwt", "https://idp.example.com/=orders-svc"]
    out = ok(
        "add", "orders", "--no-key", *credentials, "--reason", "mTLS", "--consumers", str(path)
    )
    assert NOT_AGAIN not in out
    assert KEY_LINE.search(out) is None
    registry = Registry(FileConsumerStore(path).current())
    found = registry.by_subject("cn=orders, o=shop")
    assert found is not None
    assert found.name == "orders"
    assert registry.by_jwt("https://idp.example.com/", "orders-svc") is found


def test_the_environment_names_the_store(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.json"
    env = {"STRANGLER_CONSUMERS": str(path)}
    _, key = new_key(ok("add", "partner", "--reason", "contract", env=env))
    assert accepted(path, key) == "partner"
    assert "partner" in ok("list", env=env)


REFUSALS = [
    (["add", "partner", "--reason", "again"], 1, "duplicate-consumer"),
    (["add", "Partner Two", "--reason", "x"], 1, "invalid-consumer"),
    (["revoke", "partner", "--key", "k_00000000", "--reason", "x"], 1, "unknown-key"),
    (["rotate-key", "nobody", "--reason", "x"], 1, "unknown-consumer"),
    (["add", "b", "--jwt", "no-equals", "--reason", "x"], 2, "usage"),
    (["rotate-key", "partner", "--grace", "soon", "--reason", "x"], 2, "usage"),
    (["update", "partner", "--reason", "x"], 2, "usage"),
    (["update", "partner", "--clear", "keys", "--reason", "x"], 2, "usage"),
]


def test_refusals_are_json_objects_with_their_exit_code(tmp_path: Path) -> None:
    """The same commands, in this process (typer's runner) to keep the table quick."""
    store = ["--consumers", str(tmp_path / "consumers.json"), "--json"]
    ok("add", "partner", "--reason", "contract", *store)
    runner = CliRunner()
    for args, code, kind in REFUSALS:
        done = runner.invoke(consumers_app, [*args, *store], env={"STRANGLER_AUTHOR": "ops"})
        failure(subprocess.CompletedProcess(args, done.exit_code, done.stdout, ""), code, kind)
        assert done.stderr.startswith("strangler consumers: ")
    assert consumers("add", "c", *store).returncode == 2  # no --reason: typer's usage error
    assert len(json.loads(ok("history", *store))) == 1  # nothing else was written


@pytest.mark.redis
def test_the_cli_writes_to_the_replicas_redis_store(redis_url: str, redis_prefix: str) -> None:
    store = ["--store", redis_url, "--prefix", redis_prefix]
    _, key = new_key(ok("add", "mobile-android", "--reason", "launch", *store))
    shared = RedisConsumerStore(redis_url, redis_prefix)
    try:
        found = Registry(shared.current()).by_key(key, time.time())
        assert found is not None
        assert found.name == "mobile-android"
        assert [e.author for e in shared.history()] == ["ops"]
    finally:
        shared.close()
    assert "mobile-android" in ok("list", *store)


# --- through a running admin API ------------------------------------------------------------
@pytest.fixture
def admin(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The admin app with the consumers endpoints over a file store, served on a free port."""
    path = tmp_path / "consumers.json"
    app = create_admin_app(FileStore(tmp_path / "routes.yaml"), TOKEN)
    app.include_router(
        consumers_router(lambda: FileConsumerStore(path), _writer, _user_data_reader)
    )
    with serving(app) as url:
        yield url, path


def test_the_cli_through_the_admin_api_does_what_it_does_on_the_store(
    admin: tuple[str, Path],
) -> None:
    url, path = admin
    remote = ["--admin", url]
    local = ["--consumers", str(path)]
    token = {"STRANGLER_ADMIN_TOKEN": TOKEN}
    out = ok("add", "mobile-ios", "--group", "mobile", "--reason", "launch", *remote, env=token)
    first_id, first = new_key(out)
    assert accepted(path, first) == "mobile-ios"  # the proxy's store has it
    _, second = new_key(
        ok("rotate-key", "mobile-ios", "--grace", "0", "--reason", "leak", *remote, env=token)
    )
    assert accepted(path, first) is None
    assert accepted(path, second) == "mobile-ios"
    ok("update", "mobile-ios", "--clear", "groups", "--reason", "no groups", *remote, env=token)
    # reads answer the same through the API and from the store
    reads = (["list"], ["show", "mobile-ios"], ["history", "--json"])
    answers = side_by_side(
        *([*c, *remote] for c in reads), *([*c, *local] for c in reads), env=token
    )
    assert all(done.returncode == 0 for done in answers)
    assert [d.stdout for d in answers[: len(reads)]] == [d.stdout for d in answers[len(reads) :]]
    entries = json.loads(answers[2].stdout)
    assert [(e["action"], e["author"]) for e in entries] == [
        ("update", "ops"),
        ("rotate-key", "ops"),
        ("add", "ops"),
    ]
    assert entries[2]["key_id"] == first_id
    failure(consumers("show", "nobody", "--json", *remote, env=token), 1, "unknown-consumer")
    failure(
        consumers("add", "mobile-ios", "--reason", "x", "--json", *remote, env=token),
        1,
        "duplicate-consumer",
    )
    ok("revoke", "mobile-ios", "--reason", "withdrawn", *remote, env=token)
    assert accepted(path, second) is None


def test_a_write_through_the_admin_api_needs_its_token(admin: tuple[str, Path]) -> None:
    url, path = admin
    add = ["add", "mobile-ios", "--reason", "launch", "--json", "--admin", url]
    refused = failure(consumers(*add), 1, "unauthorized")
    assert "bearer token" in refused["error"]["message"]
    failure(consumers(*add, env={"STRANGLER_ADMIN_TOKEN": "not-" + TOKEN}), 1, "unauthorized")
    assert FileConsumerStore(path).current().consumers == ()
    # Reads need the token too where one is set: who may call is not for anyone on the network.
    failure(consumers("list", "--json", "--admin", url), 1, "unauthorized")
    token = {"STRANGLER_ADMIN_TOKEN": TOKEN}
    assert "version 0: 0 consumers" in ok("list", "--admin", url, env=token)
