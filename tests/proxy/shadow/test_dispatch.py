"""The shadow dispatcher's own rules, without sockets: answers are compared with their content
codings undone (a gzip mtime is no difference, a planted field inside gzip is found by its
path), and the queue is bounded in copies and in bytes, dropping and counting what it cannot
hold instead of waiting."""

from __future__ import annotations

import asyncio
import gzip
import json

from proxy.observability import Metrics
from proxy.shadow.compare import Answer, Rules, compare
from proxy.shadow.dispatch import Mirror, _off_loop
from proxy.shadow.exchange import Exchange
from proxy.table.compile import compile_table
from proxy.table.loader import load_text

JSON = (b"content-type", b"application/json")
GZIP = (b"content-encoding", b"gzip")
TABLE = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:9"}
  service: {url: "http://127.0.0.1:9"}
default: monolith
routes:
  - name: payments
    match: {path: /api/v1/payments}
    to: monolith
    shadow: {to: service}
"""


def gzipped(body: dict[str, object], mtime: int) -> Answer:
    data = gzip.compress(json.dumps(body).encode(), mtime=mtime)
    return Answer(200, (JSON, GZIP), data)


def test_gzip_answers_compare_by_their_json_fields() -> None:
    same = asyncio.run(
        _off_loop(
            compare,
            gzipped({"amount": "10.00"}, 1),
            gzipped({"amount": "10.00"}, 2),
            Rules(),
            1 << 20,
        )
    )
    assert same.differences == ()
    planted = asyncio.run(
        _off_loop(
            compare,
            gzipped({"amount": "10.00"}, 1),
            Answer(200, (JSON,), json.dumps({"amount": "10.01"}).encode()),
            Rules(),
            1 << 20,
        )
    )
    assert [d.field for d in planted.differences] == ["$.amount"]


def exchange(size: int) -> Exchange:
    return Exchange(
        "payments", "monolith", "GET", b"/api/v1/payments/1", (), b"", 200, (JSON,),
        b"x" * size, False, 0.0,
    )  # fmt: skip


def test_the_queue_drops_and_counts_past_its_copies_and_its_bytes() -> None:
    snapshot = compile_table(load_text(TABLE))
    (route,) = snapshot.routes
    assert route.shadow is not None
    policy, primary = route.shadow, snapshot.default

    async def scenario() -> tuple[list[bool], list[bool], Mirror, Mirror]:
        by_count = Mirror(Metrics(), queue_size=2, workers=1)
        counted = [by_count.offer(exchange(10), policy, primary) for _ in range(4)]
        by_bytes = Mirror(Metrics(), queue_bytes=1_000, workers=1)
        sized = [by_bytes.offer(exchange(400), policy, primary) for _ in range(4)]
        await by_count.stop()
        await by_bytes.stop()
        return counted, sized, by_count, by_bytes

    counted, sized, by_count, by_bytes = asyncio.run(scenario())
    assert counted == [True, True, False, False]
    assert sized == [True, True, False, False]  # 400 + 400 fit in 1,000; a third does not
    assert by_count.tallies["payments"].dropped == 2
    assert by_bytes.tallies["payments"].dropped == 2


def test_coded_answers_are_decoded_and_compared_off_the_loop(monkeypatch: object) -> None:
    """A small gzip body may decode to a large one: it is never compared on the event loop,
    whatever its size on the wire (an uncoded small one is: a thread costs more than it)."""
    import proxy.shadow.dispatch as dispatch

    threads: list[str] = []

    async def to_thread(fn: object, *args: object) -> object:
        threads.append("used")
        return fn()  # type: ignore[operator]

    monkeypatch.setattr(dispatch.asyncio, "to_thread", to_thread)  # type: ignore[attr-defined]
    plain = Answer(200, (JSON,), b'{"a": 1}')
    asyncio.run(_off_loop(compare, plain, plain, Rules(), 1 << 20))
    assert threads == []
    coded = gzipped({"a": 1}, 1)
    asyncio.run(_off_loop(compare, coded, coded, Rules(), 1 << 20))
    assert threads == ["used"]
