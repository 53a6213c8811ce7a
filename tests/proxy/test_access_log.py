"""The access log's buffer: lines reach the stream whole, in order, one per line, at the
latest FLUSH_SECONDS after they were written, at once past FLUSH_BYTES, and a broken stream
never stops the proxy."""

from __future__ import annotations

import asyncio
import io

from proxy.observability import FLUSH_BYTES, FLUSH_SECONDS, AccessLog


def test_lines_arrive_in_order_each_on_its_own_line_after_the_flush_delay() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        stream = io.BytesIO()
        log = AccessLog(stream)
        log.write_line('{"n":1}')
        log.write_line('{"n":2,"target":"/é"}')
        before = stream.getvalue()
        await asyncio.sleep(FLUSH_SECONDS + 0.2)
        return before, stream.getvalue()

    before, after = asyncio.run(scenario())
    assert before == b""  # buffered: no write per request
    assert after == '{"n":1}\n{"n":2,"target":"/é"}\n'.encode()


def test_a_full_buffer_is_written_at_once_and_a_disabled_log_writes_nothing() -> None:
    line = "x" * 1000
    count = FLUSH_BYTES // (len(line) + 1) + 1

    async def scenario() -> tuple[bytes, bytes]:
        stream = io.BytesIO()
        log = AccessLog(stream)
        for _ in range(count - 1):
            log.write_line(line)
        before = stream.getvalue()
        log.write_line(line)  # past FLUSH_BYTES: written now, not at the timer
        return before, stream.getvalue()

    before, after = asyncio.run(scenario())
    assert before == b""
    assert after == (line + "\n").encode() * count
    quiet = io.BytesIO()
    off = AccessLog(quiet, enabled=False)
    off.write_line(line)
    off.flush()
    assert quiet.getvalue() == b""


def test_a_closed_stream_loses_the_lines_not_the_request() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream)
    stream.close()
    log.write_line("{}")
    log.flush()  # no exception: traffic goes on
    log.write_line("{}")
    log.flush()
