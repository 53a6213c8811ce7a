"""Access across three replicas sharing one Redis (a redis-server of the test's own, so it can be
stopped): a consumer added through one replica's admin API is known to all, a limit is one
limit however the requests are spread, a revocation through one replica is refused by all, and
with Redis stopped known keys keep working while each replica limits at its share."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from proxy.access.ratelimit import HEARTBEAT_SECONDS
from proxy.store.redis import RedisStore
from tests.functional.proxy_support import (
    ProxyProcess,
    Recorder,
    counter,
    recorder,
    running,
    send,
    store_args,
)
from tests.support import RedisProcess, redis_process, wait_until

pytestmark = pytest.mark.redis

PREFIX = "access-replicas:"
TOKEN = "replicas-admin-token"
ENV = {
    "STRANGLER_STORE_POLL_INTERVAL": "0.5",
    "STRANGLER_ADMIN_TOKEN": TOKEN,
    "STRANGLER_CONSUMERS_PREFIX": "access-replicas:consumers:",
}
LIMIT = 60
TABLE = f"""\
version: 1
upstreams:
  main: {{url: "{{main}}"}}
default: main
routes:
  - name: api
    match: {{path: /api}}
    to: main
    access: {{groups: [partners]}}
  - name: limited
    match: {{path: /limited}}
    to: main
    access: {{groups: [partners]}}
    rate_limit: {{rate: {LIMIT}/minute, by: consumer}}
"""


@dataclass
class Cluster:
    server: RedisProcess
    replicas: list[ProxyProcess]
    upstream: Recorder


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir: Path = tmp_path_factory.mktemp("access-replicas")
    with redis_process() as server, recorder() as main, contextlib.ExitStack() as stack:
        store = RedisStore(server.url, PREFIX)
        stack.callback(store.close)
        store.commit(
            TABLE.replace("{main}", main.url), author="test", reason="start", expected_version=0
        )
        replicas = [
            stack.enter_context(
                running(store_args(server.url, PREFIX, workdir / f"cache-{n}.yaml"), ENV)
            )
            for n in range(3)
        ]
        yield Cluster(server, replicas, main)


def _admin(replica: ProxyProcess, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{replica.admin}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        found = json.loads(answer.read())
    assert isinstance(found, dict)
    return found


def _status(replica: ProxyProcess, path: str, key: str) -> int:
    return send(replica.external, "GET", path, [("X-API-Key", key)]).status


def _partner(cluster: Cluster, name: str) -> str:
    """A partner added through the first replica, once every replica knows its key."""
    added = _admin(
        cluster.replicas[0],
        "/api/v1/consumers",
        {"name": name, "groups": ["partners"], "reason": "contract signed"},
    )
    key = added["key"]
    assert isinstance(key, dict)
    secret = str(key["secret"])
    wait_until(
        lambda: all(_status(r, "/api/x", secret) == 200 for r in cluster.replicas),
        what="every replica to know the new key",
    )
    return secret


def test_a_limit_is_one_limit_across_three_replicas(cluster: Cluster) -> None:
    key = _partner(cluster, "spread")
    statuses = [_status(cluster.replicas[n % 3], "/limited/x", key) for n in range(LIMIT + 30)]
    admitted = statuses.count(200)
    assert abs(admitted - LIMIT) <= max(1, LIMIT // 100), statuses
    assert set(statuses) == {200, 429}
    assert statuses[-1] == 429


def test_a_key_revoked_through_one_replica_is_refused_by_all(cluster: Cluster) -> None:
    key = _partner(cluster, "leaving")
    started = time.monotonic()
    _admin(cluster.replicas[1], "/api/v1/consumers/leaving/revoke", {"reason": "contract ended"})
    wait_until(
        lambda: all(_status(r, "/api/x", key) == 401 for r in cluster.replicas),
        timeout=5,
        what="every replica to refuse the revoked key",
    )
    refused_after = time.monotonic() - started
    print(f"revoked key refused by all three replicas {refused_after:.3f}s after the revoke")


def test_with_redis_stopped_known_keys_work_and_each_replica_limits_at_its_share(
    cluster: Cluster,
) -> None:
    key = _partner(cluster, "steady")
    members = redis.Redis.from_url(cluster.server.url)
    try:
        wait_until(lambda: members.zcard(PREFIX + "limits:members") == 3, what="3 members")
    finally:
        members.close()
    time.sleep(HEARTBEAT_SECONDS + 0.5)  # ... and each has heard, at its next beat, of all three
    cluster.server.stop()
    try:
        assert all(_status(r, "/api/x", key) == 200 for r in cluster.replicas)
        one = cluster.replicas[0]
        statuses = [_status(one, "/limited/y", key) for _ in range(LIMIT)]
        share = LIMIT // 3
        assert statuses.count(200) == share, statuses
        metrics = send(one.admin, "GET", "/metrics").body.decode()
        assert counter(metrics, "strangler_rate_limit_local_total", route="limited") >= share
    finally:
        cluster.server.start()
