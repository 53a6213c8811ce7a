"""Replicas sharing one Redis store: real `strangler serve` processes on a redis-server of the
test's own (so subscriptions can be killed and Redis stopped without touching anyone else's).

A flip reaches every replica at once by pub/sub; a replica whose subscription was lost still
gets it by polling; a replica started during an outage serves its last-known-good table, catches
up when Redis answers, and never serves an older version than it has served."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from proxy.store.redis import RedisStore
from tests.functional.proxy_support import (
    STRANGLER,
    ProxyProcess,
    Recorder,
    echo,
    get,
    logged,
    recorder,
    route_version,
    running,
    store_args,
    strangler_routes,
    subscribers,
    table_text,
    wait_until,
)
from tests.support import RedisProcess, redis_process

pytestmark = pytest.mark.redis

PREFIX = "replicas:"
POLL = 0.5  # STRANGLER_STORE_POLL_INTERVAL of every replica here
ENV = {"STRANGLER_STORE_POLL_INTERVAL": str(POLL)}
CONVERGE = 3.0  # seconds a change may take to reach a replica that hears of it
HEALED = 2 * POLL + 0.5  # ... and one that must find it by polling


def api_table(a: Recorder, b: Recorder, action: dict[str, object]) -> str:
    route = {"name": "api", "match": {"path": "/api"}, **action}
    return table_text({"a": a.url, "b": b.url}, [route], default="a")


@dataclass
class Cluster:
    server: RedisProcess
    store: RedisStore
    replicas: list[ProxyProcess]
    a: Recorder
    b: Recorder
    workdir: Path
    subscription: str  # the Redis client id of the last replica's subscription

    def table(self, **action: object) -> str:
        return api_table(self.a, self.b, action)

    def version(self) -> int:
        return self.store.current().info.version

    def commit(self, **action: object) -> int:
        current = self.version()
        committed = self.store.commit(
            self.table(**action), author="test", reason="test", expected_version=current
        )
        return committed.info.version

    def served(self, replica: ProxyProcess) -> int:
        version = replica.readyz()["table_version"]
        assert isinstance(version, int)
        return version

    def all_serve(self, version: int) -> bool:
        return all(self.served(replica) == version for replica in self.replicas)

    def store_flags(self) -> list[str]:
        return ["--store", self.server.url, "--store-prefix", PREFIX]


def new_subscription(url: str, before: set[str]) -> str:
    """The id of the one subscription that appears at `url` beyond `before`."""
    wait_until(lambda: len(subscribers(url) - before) == 1, 10, "a new subscription")
    (found,) = subscribers(url) - before
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("replicas")
    with (
        redis_process() as server,
        recorder() as a,
        recorder() as b,
        contextlib.ExitStack() as stack,
    ):
        a.reset(echo("a"))
        b.reset(echo("b"))
        store = RedisStore(server.url, PREFIX)
        stack.callback(store.close)
        store.commit(
            api_table(a, b, {"to": "a"}), author="test", reason="start", expected_version=0
        )
        replicas, subscription = [], ""
        for index in range(3):
            before = subscribers(server.url)
            cache = workdir / f"replica-{index}" / "last-known-good.yaml"
            replicas.append(
                stack.enter_context(running(store_args(server.url, PREFIX, cache), ENV))
            )
            subscription = new_subscription(server.url, before)
        yield Cluster(server, store, replicas, a, b, workdir, subscription)


def test_three_replicas_converge_after_a_flip(cluster: Cluster) -> None:
    base = cluster.version()
    target = "b" if cluster.store.current().table.routes[0].to != "b" else "a"
    done = strangler_routes(
        "flip",
        "api",
        "--to",
        target,
        "--reason",
        "cut over",
        *cluster.store_flags(),
        cwd=cluster.workdir,
    )
    assert done.returncode == 0, done.stderr
    assert f"version {base + 1} committed (ops: cut over)" in done.stdout
    wait_until(lambda: cluster.all_serve(base + 1), CONVERGE, f"every replica on {base + 1}")
    for replica in cluster.replicas:
        answer = get(replica.internal, "/api/orders")
        assert (answer.status, answer.body, route_version(answer)) == (
            200,
            target.encode(),
            base + 1,
        )


def test_a_replica_whose_subscription_was_killed_still_gets_the_next_flip(
    cluster: Cluster,
) -> None:
    client = redis.Redis.from_url(cluster.server.url)
    try:
        assert client.client_kill_filter(_id=cluster.subscription) == 1
    finally:
        client.close()
    version = cluster.commit(split={"a": 50, "b": 50})
    last = cluster.replicas[-1]
    wait_until(lambda: cluster.served(last) == version, HEALED, "the replica to poll")
    wait_until(lambda: cluster.all_serve(version), CONVERGE, f"every replica on {version}")
    # and it subscribes again: the next flip is heard at once
    wait_until(lambda: len(subscribers(cluster.server.url)) == 3, CONVERGE, "3 subscriptions")


def test_a_version_whose_notification_was_lost_is_found_by_polling(cluster: Cluster) -> None:
    deaf = RedisStore(cluster.server.url, PREFIX)
    deaf.channel = PREFIX + "nobody-listens"  # the publish is lost, as on a dead subscription
    try:
        current = cluster.version()
        committed = deaf.commit(
            cluster.table(to="b"), author="test", reason="quiet", expected_version=current
        )
    finally:
        deaf.close()
    wait_until(
        lambda: cluster.all_serve(committed.info.version),
        HEALED,
        f"every replica to poll version {committed.info.version}",
    )


def test_an_invalid_table_pushed_with_routes_set_is_refused_and_nothing_changes(
    cluster: Cluster,
) -> None:
    served = cluster.version()
    wait_until(lambda: cluster.all_serve(served), CONVERGE, f"every replica on {served}")
    bad = cluster.workdir / "bad.yaml"
    bad.write_text(cluster.table(to="nowhere"))
    done = strangler_routes(
        "set", str(bad), "--reason", "typo", *cluster.store_flags(), cwd=cluster.workdir
    )
    assert done.returncode == 1, done.stdout
    assert f"{bad}:7: routes[0].to: unknown upstream 'nowhere'" in done.stderr
    assert "refused: the table is invalid; nothing changed" in done.stderr
    assert cluster.version() == served
    assert cluster.all_serve(served)
    answer = get(cluster.replicas[0].internal, "/api/orders")
    assert (answer.status, route_version(answer)) == (200, served)


def test_routes_status_shows_each_routes_state_and_traffic(cluster: Cluster) -> None:
    version = cluster.commit(split={"a": 90, "b": 10})
    replica = cluster.replicas[0]
    wait_until(lambda: cluster.served(replica) == version, CONVERGE, f"version {version}")
    admin = ["--admin", f"http://127.0.0.1:{replica.admin}"]

    def status() -> dict[str, object]:
        done = strangler_routes("status", *admin, "--json", cwd=cluster.workdir)
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert isinstance(data, dict)
        return data

    def api_requests(data: dict[str, object]) -> int:
        routes = data["routes"]
        assert isinstance(routes, list)
        return int(routes[0]["traffic"]["requests"])

    before = status()
    for index in range(5):
        assert get(replica.internal, f"/api/orders/{index}").status == 200
    after = status()
    assert (after["served_version"], after["store_version"], after["in_sync"]) == (
        version,
        version,
        True,
    )
    routes = after["routes"]
    assert isinstance(routes, list)
    (api,) = routes
    assert (api["name"], api["state"]) == ("api", "canary")
    assert [(u["name"], u["weight"]) for u in api["upstreams"]] == [("a", 90.0), ("b", 10.0)]
    assert api_requests(after) == api_requests(before) + 5
    assert sum(u["requests"] for u in api["traffic"]["by_upstream"].values()) == api_requests(after)

    done = strangler_routes("status", *admin, cwd=cluster.workdir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"serving version {version}"
    (row,) = [line.split() for line in lines if line.split()[:1] == ["api"]]
    assert row[:6] == ["api", "canary", "a", "90%,", "b", "10%"]
    assert row[6:8] == [str(api_requests(after)), "req"]
    assert any(line.split()[:2] == ["default", "-"] for line in lines)


def test_a_replica_started_while_redis_is_down_serves_its_last_known_good_table(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "last-known-good.yaml"
    with redis_process() as server, recorder() as a, recorder() as b:
        a.reset(echo("a"))
        b.reset(echo("b"))
        args = store_args(server.url, PREFIX, cache)
        store = RedisStore(server.url, PREFIX)
        try:
            store.commit(api_table(a, b, {"to": "a"}), author="t", reason="a", expected_version=0)
            with running(args, ENV) as replica:
                store.commit(
                    api_table(a, b, {"to": "b"}), author="t", reason="b", expected_version=1
                )
                wait_until(lambda: replica.readyz()["table_version"] == 2, CONVERGE, "version 2")
                wait_until(lambda: "version: 2" in cache.read_text(), CONVERGE, "the cache")
            server.stop()

            with running(args, ENV) as replica:
                assert replica.readyz()["table_version"] == 2
                assert logged(replica, f"serving version 2 from {cache}")
                answer = get(replica.internal, "/api/orders")
                assert (answer.status, answer.body, route_version(answer)) == (200, b"b", 2)

                server.start()  # back, but empty: its data was lost, and it is seeded again
                store.commit(
                    api_table(a, b, {"to": "a"}), author="t", reason="a", expected_version=0
                )
                wait_until(
                    lambda: logged(replica, "says version 1, older than the served version 2"),
                    CONVERGE,
                    "the replica to refuse the older version",
                )
                assert replica.readyz()["table_version"] == 2
                answer = get(replica.internal, "/api/orders")
                assert (answer.status, answer.body, route_version(answer)) == (200, b"b", 2)
                # ... and to put the version it serves back, so the fleet and the next commits
                # continue from it instead of splitting
                wait_until(lambda: store.current_number() == 2, CONVERGE, "the store restored")
                restored = store.get(2)
                assert restored.info.author == "replica"
                assert restored.table.routes[0].to == "b"
                assert logged(replica, "restoring it to the store")

                store.commit(  # the next commit continues from the restored version
                    api_table(a, b, {"to": "a"}), author="t", reason="a", expected_version=2
                )
                wait_until(lambda: replica.readyz()["table_version"] == 3, CONVERGE, "version 3")
                answer = get(replica.internal, "/api/orders")
                assert (answer.status, answer.body, route_version(answer)) == (200, b"a", 3)
                wait_until(lambda: "version: 3" in cache.read_text(), CONVERGE, "the cache")
                assert logged(replica, "reconnected")
        finally:
            store.close()


def test_a_replica_with_no_last_known_good_table_does_not_start_during_an_outage(
    tmp_path: Path,
) -> None:
    """Serving the day-0 seed file instead would undo every flip for its share of traffic."""
    with redis_process() as server, recorder() as a, recorder() as b:
        seed = tmp_path / "routes.yaml"
        seed.write_text(api_table(a, b, {"to": "a"}).replace("version: 1", "version: 4"))
        server.stop()
        cache = tmp_path / "lkg.yaml"
        args = ["--routes", str(seed), *store_args(server.url, PREFIX, cache)]
        done = subprocess.run(
            [
                STRANGLER,
                "serve",
                *args,
                "--listen",
                "127.0.0.1:0",
                "--internal-listen",
                "off",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1
        assert "is unreachable" in done.stderr
        assert f"no last-known-good table at {cache} to start from" in done.stderr
        server.start()  # empty: the replica seeds it from its routes file, at that version
        with running(args, ENV) as replica:
            assert replica.readyz()["table_version"] == 4
            assert "version: 4" in cache.read_text()


def test_wrong_store_credentials_stop_the_start_even_with_a_last_known_good_table(
    tmp_path: Path,
) -> None:
    with redis_process() as server, recorder() as a, recorder() as b:
        cache = tmp_path / "lkg.yaml"
        cache.write_text(api_table(a, b, {"to": "a"}))
        admin = redis.Redis.from_url(server.url)
        admin.config_set("requirepass", "right-password")
        admin.close()
        wrong = server.url.replace("redis://", "redis://:wrong-password@")
        done = subprocess.run(
            [
                STRANGLER,
                "serve",
                *store_args(wrong, PREFIX, cache),
                "--listen",
                "127.0.0.1:0",
                "--internal-listen",
                "off",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, done.stderr
        assert "refused this client" in done.stderr
        assert "wrong-password" not in done.stderr
