"""The replica driving a rollout is killed mid-step: another one takes the lease when it expires
and finishes the rollout from the recorded state, without committing the step again or starting
its bake over. One real proxy replica on a real Redis serves the route and measures both arms;
the two drivers share the Redis store (the killed one is a process of its own, SIGKILLed).

The drivers keep their rollouts under a prefix of their own beside the replica's table, so a
driver the replica runs itself never competes with them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxy.rollout.control import Rollouts
from proxy.rollout.driver import RolloutDriver, SinkEvidence
from proxy.rollout.model import FINAL, Rollout
from proxy.rollout.store import RedisRollouts
from proxy.shadow.sink import RedisSink
from proxy.store.redis import RedisStore
from tests.functional.proxy_support import echo, recorder, running, store_args, wait_until
from tests.functional.test_rollout import ANALYSIS, Traffic
from tests.proxy.rollout.support import driving

pytestmark = pytest.mark.redis

LEASE = 0.5  # seconds: the killed driver's rollouts wait at most this long
DRIVER = """
import asyncio, sys
from proxy.rollout.driver import RolloutDriver, SinkEvidence
from proxy.rollout.store import RedisRollouts
from proxy.shadow.sink import RedisSink
from proxy.store.redis import RedisStore

url, prefix, drills, holder, lease = sys.argv[1:6]

async def main():
    evidence = SinkEvidence(RedisSink(url, prefix))
    store = RedisStore(url, prefix)
    rollouts = RedisRollouts(url, drills)
    driver = RolloutDriver(store, rollouts, evidence, holder, 0.05, float(lease))
    await driver.run()

asyncio.run(main())
"""


@pytest.fixture
def killable(redis_url: str, redis_prefix: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def test_another_replica_finishes_a_rollout_whose_driver_was_killed(
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    killable: list[subprocess.Popen[bytes]],
) -> None:
    drills = redis_prefix + "drill:"
    with recorder() as monolith, recorder() as payment:
        monolith.reset(echo("monolith"))
        payment.reset(echo("payment"))
        seed = tmp_path / "routes.yaml"
        seed.write_text(
            "version: 1\nupstreams:\n"
            f'  monolith: {{url: "{monolith.url}"}}\n  payment: {{url: "{payment.url}"}}\n'
            "default: monolith\nroutes:\n"
            "  - name: payments\n    match: {path: /api/v1/payments}\n    to: monolith\n"
            f"    rollout: {{to: payment, steps: [25, 50], bake: 1500ms, analysis: {ANALYSIS}}}\n"
        )
        table = RedisStore(redis_url, redis_prefix, seed=seed)
        rollouts = RedisRollouts(redis_url, drills)
        args = [*store_args(redis_url, redis_prefix, tmp_path / "cache.yaml")]
        args += ["--routes", str(seed), "--state-dir", str(tmp_path / "var")]
        with running(args) as replica:
            killable.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        DRIVER,
                        redis_url,
                        redis_prefix,
                        drills,
                        "replica-a",
                        str(LEASE),
                    ],
                )
            )
            sink = RedisSink(redis_url, redis_prefix)
            second = RolloutDriver(table, rollouts, SinkEvidence(sink), "replica-b", 0.05, LEASE)
            with Traffic(replica.external):
                Rollouts(table, rollouts).start("payments", {}, reason="canary", author="ana")
                baking = _until(rollouts, lambda r: r.state == "baking" and r.weight == 25)
                assert baking.driver == "replica-a"
                with driving(second, sink.close):
                    assert rollouts.holder() == "replica-a"  # replica-b waits for the lease
                    killable[0].kill()  # no goodbye: its lease runs out
                    done = _until(rollouts, lambda r: r.state in FINAL)
        table_versions = [(i.author, i.reason) for i in reversed(table.history())]
        table.close()
        rollouts.close()
    assert (done.state, done.driver) == ("succeeded", "replica-b"), done.message
    assert [reason for author, reason in table_versions if author == "rollout"] == [
        "rollout payments step 1/3: 25% to payment (canary)",  # committed once, by replica-a
        "rollout payments step 2/3: 50% to payment (canary)",
        "rollout payments step 3/3: 100% to payment (canary)",
    ]
    steps = [e for e in done.history if e.event == "step"]
    assert steps[0].time == baking.step_started  # its bake went on from when it started
    passed = [e for e in done.history if e.event == "passed"]
    assert passed[0].time >= baking.step_started + 1.5


def _until(rollouts: RedisRollouts, done: Callable[[Rollout], bool]) -> Rollout:
    found: list[Rollout] = []

    def check() -> bool:
        rollout = rollouts.get("payments")
        found[:] = [rollout] if rollout is not None else []
        return rollout is not None and done(rollout)

    wait_until(check, 60.0, "the rollout")
    return found[0]
