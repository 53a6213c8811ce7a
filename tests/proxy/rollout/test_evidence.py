"""SinkEvidence over a real file sink holding what workers share: per-arm statistics as the
proxy's ArmStats documents them, shadow tallies, and the gates; and a step's shadow window."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy.dataplane.armstats import BUCKET, ArmStats
from proxy.rollout.analysis import ArmSummaryLike
from proxy.rollout.evidence import SinkEvidence, shadow_counts, shadow_window
from proxy.shadow.compare import Difference, Verdict
from proxy.shadow.report import Tally
from proxy.shadow.sink import FileSink
from proxy.table.loader import load_text
from tests.proxy.rollout.support import Clock, routes_yaml
from tests.proxy.table.test_gates import serving_gate

START = 1_800_000_000.0  # a bucket's start (a multiple of BUCKET)


def test_the_arms_are_every_workers_numbers_from_the_bucket_holding_the_start(
    tmp_path: Path,
) -> None:
    clock = Clock(START - BUCKET)
    first, second = ArmStats(clock=clock), ArmStats(clock=clock)
    first.observe("payments", "monolith", 200, 0.01)  # a bucket before the window: left out
    clock.advance(BUCKET + 1)
    first.observe("payments", "monolith", 200, 0.01)
    first.observe("payments", "payment", 503, 0.2)
    second.observe("payments", "payment", 200, 0.02)
    second.observe("orders", "monolith", 200, 0.01)
    sink = FileSink(tmp_path / "shadow")

    async def read() -> dict[str, ArmSummaryLike]:
        await sink.put_stats("w1", first.doc())
        await sink.put_stats("w2", second.doc())
        found = await SinkEvidence(sink).arms("payments", START + 3)  # mid-bucket
        return dict(found)

    arms = asyncio.run(read())
    assert sorted(arms) == ["monolith", "payment"]
    payment, monolith = arms["payment"], arms["monolith"]
    assert (payment.requests, payment.errors, payment.error_rate) == (2, 1, 0.5)
    assert monolith.requests == 1


def test_the_shadow_counts_leave_the_noise_out(tmp_path: Path) -> None:
    tally = Tally()
    differs = Verdict((Difference("$.currency", '"EUR"', '"usd"'),), True)
    same = Verdict((), True)
    for verdict in (differs, same, same, differs):
        tally.add(verdict)
    sink = FileSink(tmp_path / "shadow")

    async def read() -> tuple[object, object]:
        await sink.put_tallies("w1", {"payments": tally.to_dict()})
        evidence = SinkEvidence(sink)
        return await evidence.shadow("payments"), await evidence.shadow("orders")

    payments, orders = asyncio.run(read())
    assert payments == {"compared": 4, "differed": 2, "rate": 0.5}
    assert orders is None


def test_a_steps_shadow_window_is_counted_from_its_baseline() -> None:
    base = shadow_counts({"compared": 1000, "differed": 500, "rate": 0.5})
    assert base == {"compared": 1000, "differed": 500}
    now = {"compared": 1100, "differed": 503}
    assert shadow_window(now, base) == {"compared": 100, "differed": 3, "rate": 0.03}
    reset = {"compared": 40, "differed": 1}  # the report was reset during the step
    assert shadow_window(reset, base) == {"compared": 40, "differed": 1, "rate": 0.025}
    assert shadow_window(None, None) == {"compared": 0, "differed": 0, "rate": 0.0}


def test_the_gates_are_asked_over_http() -> None:
    with serving_gate() as gate:
        gate.refuses("lag 12s")
        before = load_text(routes_yaml(gate=gate.url))
        after = load_text(routes_yaml("split: {monolith: 90, payment: 10}", gate=gate.url))
        (answer,) = SinkEvidence(FileSink(Path("unused"))).gates(before, after)
        assert (answer.open, answer.as_dict()["reasons"]) == (False, "lag 12s")
        assert gate.asked == 1
