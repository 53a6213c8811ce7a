"""The shadow sink, the same behaviour in a directory and in a real Redis: each worker's latest
tallies, clears that a worker cannot undo, recordings that end and never keep more than asked,
even with several writers at once, files only their owner reads; and `strangler shadow report`,
which merges what every worker put there."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from proxy.shadow.cli import shadow_app
from proxy.shadow.compare import Answer, Rules, compare
from proxy.shadow.report import Tally
from proxy.shadow.sink import FileSink, RedisSink, Sink, SinkError, open_sink, worker_id

Scenario = Callable[[Callable[[], Sink]], Awaitable[None]]
Run = Callable[[Scenario], None]


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.redis)])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Run:
    """Runs a scenario on an event loop of its own; it opens sinks on one shared place (one
    directory, or one Redis prefix), like workers of several processes or replicas."""

    def play(scenario: Scenario) -> None:
        async def main() -> None:
            opened: list[Sink] = []

            def make() -> Sink:
                if request.param == "file":
                    sink: Sink = FileSink(tmp_path / "shadow")
                else:
                    url = request.getfixturevalue("redis_url")
                    sink = RedisSink(url, request.getfixturevalue("redis_prefix"))
                opened.append(sink)
                return sink

            try:
                await scenario(make)
            finally:
                for sink in opened:
                    await sink.close()

        asyncio.run(main())

    return play


def tally(compared: int) -> dict[str, int]:
    return {"compared": compared}


def test_each_worker_has_one_snapshot_that_its_next_put_replaces(run: Run) -> None:
    async def scenario(make: Callable[[], Sink]) -> None:
        one, two, reader = make(), make(), make()
        assert await reader.tallies() == []
        await one.put_tallies("host:1:1", {"orders": tally(1)})
        await two.put_tallies("host:2:1", {"orders": tally(5), "users": tally(2)})
        await one.put_tallies("host:1:1", {"orders": tally(3), "cart": tally(1)})
        snapshots = await reader.tallies()
        assert sorted(snapshots, key=len) == [
            {"orders": tally(3), "cart": tally(1)},
            {"orders": tally(5), "users": tally(2)},
        ]

    run(scenario)


def test_a_stopped_workers_numbers_stay_until_cleared(run: Run) -> None:
    async def scenario(make: Callable[[], Sink]) -> None:
        gone, cli = make(), make()
        await gone.put_tallies("host:9:1", {"orders": tally(7)})
        await gone.close()
        assert await cli.tallies() == [{"orders": tally(7)}]
        await cli.clear_tallies()
        assert await cli.tallies() == []

    run(scenario)


def test_a_clear_of_one_route_is_not_undone_by_a_worker_that_counted_before_it(run: Run) -> None:
    async def scenario(make: Callable[[], Sink]) -> None:
        worker, cli = make(), make()
        first = {"orders": tally(4), "users": tally(2)}
        assert await worker.put_tallies("w", first) == frozenset()
        await cli.clear_tallies("orders")
        assert await cli.tallies() == [{"users": tally(2)}]
        # The worker's next put still carries its old count: left out, and handed back.
        assert await worker.put_tallies("w", first) == {"orders"}
        assert await cli.tallies() == [{"users": tally(2)}]
        # It started counting again: the new numbers show.
        assert await worker.put_tallies("w", {"orders": tally(1), "users": tally(3)}) == set()
        assert await cli.tallies() == [{"orders": tally(1), "users": tally(3)}]

    run(scenario)


def test_a_clear_of_everything_between_a_workers_puts_restarts_all_its_routes(run: Run) -> None:
    async def scenario(make: Callable[[], Sink]) -> None:
        worker, cli = make(), make()
        await worker.put_tallies("w", {"orders": tally(4)})
        await cli.clear_tallies()
        assert await worker.put_tallies("w", {"orders": tally(5), "cart": tally(1)}) == {
            "orders",
            "cart",
        }
        assert await cli.tallies() == [{}]
        await worker.put_tallies("w", {"orders": tally(1)})
        assert await cli.tallies() == [{"orders": tally(1)}]

    run(scenario)


def test_an_armed_recording_is_listed_until_it_ends(run: Run) -> None:
    async def scenario(make: Callable[[], Sink]) -> None:
        cli, worker = make(), make()
        long = await cli.arm("orders", 10, ("GET", "HEAD"), 60)
        short = await cli.arm("users", 5, (), 0.3)
        assert (long.route, long.count, long.methods) == ("orders", 10, ("GET", "HEAD"))
        assert long.until == pytest.approx(time.time() + 60, abs=5)
        assert sorted(await worker.armed(), key=lambda r: r.route) == [long, short]
        deadline = time.monotonic() + 10
        while short in await worker.armed():
            assert time.monotonic() < deadline, "the short recording never ended"
            await asyncio.sleep(0.05)
        assert await worker.armed() == [long]

    run(scenario)


def test_a_recording_keeps_at_most_its_count_with_two_writers_at_once(run: Run) -> None:
    async def scenario(make: Callable[[], Sink]) -> None:
        cli, one, two = make(), make(), make()
        recording = await cli.arm("orders", 25, ("GET",), 60)

        async def write(sink: Sink, name: str) -> list[int]:
            return [
                await sink.add_records(recording.id, [f'{{"w":"{name}","n":{i}}}'] * 3)
                for i in range(10)
            ]

        held_one, held_two = await asyncio.gather(write(one, "one"), write(two, "two"))
        assert max(held_one + held_two) == 25
        assert all(held <= 25 for held in held_one + held_two)
        lines = await cli.records(recording.id)
        assert len(lines) == 25
        assert {line[:10] for line in lines} == {'{"w":"one"', '{"w":"two"'}
        assert await one.armed() == []  # full: the workers stop capturing
        assert await one.add_records(recording.id, ['{"late":1}']) == 25

    run(scenario)


def test_disarm_stops_a_recording_and_deletes_its_lines(run: Run) -> None:
    async def scenario(make: Callable[[], Sink]) -> None:
        cli, worker = make(), make()
        recording = await cli.arm("orders", 10, (), 60)
        assert await worker.add_records(recording.id, ['{"a":1}', '{"a":2}']) == 2
        await cli.disarm(recording.id)
        assert await worker.armed() == []
        assert await cli.records(recording.id) == []
        assert await worker.add_records(recording.id, ['{"a":3}']) == 0  # dropped
        assert await cli.records(recording.id) == []

    run(scenario)


def test_a_recording_is_armed_only_with_sane_limits(run: Run) -> None:
    async def scenario(make: Callable[[], Sink]) -> None:
        cli = make()
        with pytest.raises(SinkError, match="at least one"):
            await cli.arm("orders", 0, (), 60)
        with pytest.raises(SinkError, match="more than zero seconds"):
            await cli.arm("orders", 1, (), 0)
        recording = await cli.arm("orders", 1, (), 60)
        with pytest.raises(SinkError, match="one line"):
            await cli.add_records(recording.id, ['{"a":\n1}'])

    run(scenario)


def test_the_file_sink_sweeps_recordings_an_hour_after_they_ended(tmp_path: Path) -> None:
    async def scenario() -> None:
        sink = FileSink(tmp_path)
        old = await sink.arm("orders", 5, (), 60)
        await sink.add_records(old.id, ['{"a":1}'])
        spec = tmp_path / "recordings" / f"{old.id}.json"
        spec.write_text(spec.read_text().replace(str(old.until), str(time.time() - 3_700)))
        await sink.arm("users", 5, (), 60)
        assert sorted(p.suffix for p in (tmp_path / "recordings").glob(f"{old.id}*")) == []

    asyncio.run(scenario())


@pytest.mark.redis
def test_redis_keys_expire_a_week_after_a_put_and_an_hour_after_a_recording_ends(
    redis_url: str, redis_prefix: str
) -> None:
    async def scenario() -> RedisSink:
        sink = RedisSink(redis_url, redis_prefix)
        await sink.put_tallies("w", {"orders": tally(1)})
        recording = await sink.arm("orders", 5, (), 60)
        await sink.add_records(recording.id, ['{"a":1}'])
        await sink.close()
        return sink

    asyncio.run(scenario())
    raw = redis.Redis.from_url(redis_url)
    try:
        assert 7 * 86_400 - 60 < raw.ttl(f"{redis_prefix}shadow:tally:w") <= 7 * 86_400
        (key,) = [k for k in raw.scan_iter(match=f"{redis_prefix}record:*") if b"armed" not in k]
        assert 3_600 < raw.ttl(key) <= 3_600 + 61
    finally:
        raw.close()


def test_the_file_sinks_files_are_its_owners_only(tmp_path: Path) -> None:
    shadow = tmp_path / "var" / "shadow"

    async def scenario() -> None:
        sink = FileSink(shadow)
        await sink.put_tallies("host:1:1", {"orders": tally(1)})
        await sink.clear_tallies("users")
        recording = await sink.arm("orders", 5, (), 60)
        await sink.add_records(recording.id, ['{"a":1}'])
        # A lines file an older version left readable by all is narrowed when next written.
        (shadow / "recordings" / f"{recording.id}.jsonl").chmod(0o644)
        await sink.add_records(recording.id, ['{"a":2}'])
        assert await sink.records(recording.id) == ['{"a":1}', '{"a":2}']

    umask = os.umask(0o022)  # the usual default: files 0644, directories 0755
    try:
        asyncio.run(scenario())
    finally:
        os.umask(umask)
    for directory in (shadow, shadow / "tallies", shadow / "recordings"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    files = [path for path in shadow.rglob("*") if path.is_file()]
    assert {path.suffix or path.name for path in files} == {".json", ".jsonl", ".n", ".lock"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_open_sink_picks_the_directory_or_redis(tmp_path: Path) -> None:
    sink = open_sink("file", "p:", tmp_path)
    assert isinstance(sink, FileSink)
    assert sink.dir == tmp_path / "shadow"
    assert isinstance(open_sink("redis://127.0.0.1:1/0", "p:", tmp_path), RedisSink)


def test_an_unreachable_redis_is_a_sink_error_not_a_crash() -> None:
    from proxy.shadow.sink import SinkUnavailable

    async def scenario() -> None:
        sink = RedisSink("redis://127.0.0.1:1/0", "p:")
        try:
            with pytest.raises(SinkUnavailable, match="unreachable"):
                await sink.armed()
        finally:
            await sink.close()

    asyncio.run(scenario())


def test_a_worker_id_names_host_process_and_start() -> None:
    import os
    import socket

    host, pid, started = worker_id().rsplit(":", 2)
    assert (host, int(pid)) == (socket.gethostname(), os.getpid())
    assert abs(int(started) - time.time()) < 86_400 * 365
    assert worker_id() == worker_id()


# --- strangler shadow report ------------------------------------------------------------------
def counted(*candidates: bytes) -> dict[str, Any]:
    """A worker's tally of `orders`: the primary answered {"total": 10}, a shadow each of these."""
    found = Tally()
    primary = Answer(200, (), b'{"total": 10}')
    for body in candidates:
        found.add(compare(primary, Answer(200, (), body), Rules()))
    return found.to_dict()


def report(*args: str) -> Any:
    return CliRunner().invoke(shadow_app, ["report", *args])


def test_report_merges_every_workers_tallies_per_route(tmp_path: Path) -> None:
    async def workers() -> None:
        sink = FileSink(tmp_path / "shadow")
        await sink.put_tallies("a:1:1", {"orders": counted(b'{"total": 10}', b'{"total": 12}')})
        await sink.put_tallies("b:2:1", {"orders": counted(b'{"total": 10}', b'{"total": 10}')})
        await sink.put_tallies("b:2:1", {"orders": counted(b'{"total": 10}'), "users": counted()})

    asyncio.run(workers())
    result = report("--state-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "orders: 3 compared, 33.3 % differ (1)" in result.output
    assert "  $.total: 1 (33.3 %)" in result.output
    assert "users: 0 compared" in result.output
    data = json.loads(report("orders", "--json", "--state-dir", str(tmp_path)).stdout)
    assert [(s["route"], s["compared"], s["mismatched"]) for s in data] == [("orders", 3, 1)]


def test_report_of_a_route_without_comparisons_says_so(tmp_path: Path) -> None:
    result = report("nope", "--state-dir", str(tmp_path))
    assert result.exit_code == 0
    assert result.stdout.strip() == "no shadow comparisons for nope yet"
    assert f"(read {tmp_path / 'shadow'}: the proxy's --state-dir?" in result.stderr
    assert report("--state-dir", str(tmp_path)).stdout.strip() == "no shadow comparisons yet"
    assert json.loads(report("nope", "--json", "--state-dir", str(tmp_path)).stdout) == []


def test_report_reset_prints_then_forgets(tmp_path: Path) -> None:
    asyncio.run(
        FileSink(tmp_path / "shadow").put_tallies("a:1:1", {"orders": counted(b'{"total": 1}')})
    )
    result = report("--reset", "--state-dir", str(tmp_path))
    assert "orders: 1 compared, 100.0 % differ (1)" in result.output
    assert "shadow comparisons of every route reset" in result.output
    assert report("--state-dir", str(tmp_path)).stdout.strip() == "no shadow comparisons yet"


@pytest.mark.redis
def test_report_reads_the_replicas_shared_redis(redis_url: str, redis_prefix: str) -> None:
    async def replicas() -> None:
        for worker in ("host-a:1:1", "host-b:1:1"):
            sink = RedisSink(redis_url, redis_prefix)
            await sink.put_tallies(worker, {"orders": counted(b'{"total": 10}')})
            await sink.close()

    asyncio.run(replicas())
    result = report("--store", redis_url, "--prefix", redis_prefix)
    assert result.exit_code == 0, result.output
    assert "orders: 2 compared, 0.0 % differ (0)" in result.output


def test_report_with_redis_down_fails_with_the_reason() -> None:
    result = report("--store", "redis://127.0.0.1:1/0")
    assert result.exit_code == 1
    assert "strangler shadow report: the shadow sink at redis://127.0.0.1:1/0 is unreachable" in (
        result.output
    )
