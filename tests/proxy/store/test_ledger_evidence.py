"""The ledger's evidence through a real file store and file sink: recorded for a committed
version from what the workers shared (arms, shadow tallies) and what the gates said, and read
back onto that version's transition with what the monolith served lately."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from proxy.dataplane.armstats import ArmStats
from proxy.shadow.report import Tally
from proxy.shadow.sink import FileSink
from proxy.store.file import FileStore
from proxy.store.ledger import ledger_of, read_ledger, record_evidence
from proxy.table.gates import GateAnswer

TABLE = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
  payment: {url: "http://127.0.0.1:8002"}
default: monolith
routes:
  - name: payments
    match: {path: /api/v1/payments}
    to: monolith
"""
CANARY = TABLE.replace("    to: monolith\n", "    split: {monolith: 90, payment: 10}\n")


def test_evidence_recorded_for_a_version_and_read_back(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(TABLE)
    store = FileStore(tmp_path / "routes.yaml")
    assert store.current().info.version == 1
    sink = FileSink(tmp_path / "shadow")
    gate = GateAnswer("payment", ("payments",), "http://127.0.0.1:8002/cutover", True, 200, "")

    async def scenario() -> None:
        worker = ArmStats()
        for status in (200, 200, 200, 502):
            worker.observe("payments", "monolith", status, 0.02)
        worker.observe("default", "monolith", 200, 0.01)
        worker.legacy("GET", b"/api/v1/orders/1")
        await sink.put_stats("other:1:1", worker.doc())
        await sink.put_tallies("other:1:1", {"payments": Tally(compared=40).to_dict()})
        version = store.commit(
            CANARY, author="ana", reason="canary 10%", expected_version=store.current().info.version
        ).info.version
        here = ArmStats()  # the committing worker's own numbers, fresher than its last put
        here.observe("payments", "monolith", 200, 0.02)
        kept = await record_evidence(
            sink, version, ["payments"], gates=[gate], window=60, worker="here:1:1", local=here
        )
        payments = kept["routes"]["payments"]
        assert (
            payments["arms"]["monolith"]["requests"],
            payments["arms"]["monolith"]["errors"],
        ) == (5, 1)
        assert payments["shadow"] == {"compared": 40, "differed": 0, "rate": 0.0}
        assert payments["gates"] == [gate.as_dict()]
        assert (await sink.evidence())[version] == kept

        ledger = await read_ledger(store, sink, window=600, now=time.time())
        found = ledger.as_dict()
        (route,) = found["routes"]
        steps = {step["version"]: step for step in route["transitions"]}
        assert steps[version]["evidence"] == payments
        assert all(s["evidence"] is None for v, s in steps.items() if v != version)
        assert found["legacy_window"] == 600
        assert found["legacy_paths"] == [{"template": "GET /api/v1/orders/{id}", "requests": 1}]

    asyncio.run(scenario())
    assert "evidence" not in ledger_of(store).as_dict()["routes"][0]["transitions"][0]
