"""Recording a route: a worker captures only once it has heard of an armed recording, never more
than it asks nor more bytes than its limit, redacts off the event loop, never keeps a credential
or a secret field; the corpus round-trips bodies byte for byte, is its owner's only, and a bad
corpus file is refused with its line."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from proxy.shadow import recording as recording_module
from proxy.shadow.cli import record_command
from proxy.shadow.exchange import Exchange
from proxy.shadow.recording import (
    MAX_BUFFERED,
    CorpusError,
    Recorder,
    body_of,
    corpus_line,
    read_corpus,
    redact_body,
    write_corpus,
)
from proxy.shadow.sink import FileSink
from tests.support import wait_until

AT = 1_738_324_798.12


def exchange(
    route: str = "orders",
    method: str = "GET",
    *,
    target: bytes = b"/api/v1/orders?page=2",
    headers: tuple[tuple[bytes, bytes], ...] = ((b"accept", b"application/json"),),
    body: bytes = b"",
    status: int = 200,
    response_headers: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),),
    response_body: bytes = b'{"id": 7}',
    truncated: bool = False,
) -> Exchange:
    return Exchange(
        route,
        "monolith",
        method,
        target,
        headers,
        body,
        status,
        response_headers,
        response_body,
        truncated,
        AT,
    )


def test_a_worker_wants_a_route_only_once_its_tick_saw_the_recording(tmp_path: Path) -> None:
    async def scenario() -> None:
        sink = FileSink(tmp_path)
        recorder = Recorder(sink, "w1")
        await recorder.tick()
        await sink.arm("orders", 5, ("GET", "HEAD"), 60)
        assert not recorder.wants("orders", "GET")  # no I/O: it has not heard of it yet
        recorder.offer(exchange())
        await recorder.tick()
        assert recorder.wants("orders", "GET")
        assert recorder.wants("orders", "HEAD")
        assert not recorder.wants("orders", "POST")
        assert not recorder.wants("users", "GET")

    asyncio.run(scenario())


def test_a_worker_keeps_at_most_the_count_and_stops_when_the_recording_is_full(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        sink = FileSink(tmp_path)
        recording = await sink.arm("orders", 3, (), 60)
        one, two = Recorder(sink, "w1"), Recorder(sink, "w2")
        await one.tick()
        await two.tick()
        for n in range(5):
            if one.wants("orders", "GET"):
                one.offer(exchange(target=f"/one/{n}".encode()))
        assert not one.wants("orders", "GET")  # three kept in memory: no room this tick
        two.offer(exchange(target=b"/two/0"))
        two.offer(exchange(target=b"/two/1"))
        await two.tick()
        await one.tick()
        kept = [json.loads(line)["target"] for line in await sink.records(recording.id)]
        assert kept == ["/two/0", "/two/1", "/one/0"]
        assert not one.wants("orders", "GET")  # the sink said full
        assert two.wants("orders", "GET")  # has room as far as it knows...
        await two.tick()
        assert not two.wants("orders", "GET")  # ...until its next tick

    asyncio.run(scenario())


def test_a_worker_stops_capturing_when_the_recording_ends_or_is_disarmed(tmp_path: Path) -> None:
    async def scenario() -> None:
        sink = FileSink(tmp_path)
        recorder = Recorder(sink, "w1")
        short = await sink.arm("orders", 5, (), 0.2)
        kept = await sink.arm("users", 5, (), 60)
        await recorder.tick()
        assert recorder.wants("orders", "GET")
        deadline = time.monotonic() + 10
        while recorder.wants("orders", "GET"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
            await recorder.tick()
        assert short.until <= time.time()
        await sink.disarm(kept.id)
        await recorder.tick()
        assert not recorder.wants("users", "GET")

    asyncio.run(scenario())


def test_offer_never_keeps_credentials_nor_the_proxys_hop_headers() -> None:
    line = json.loads(
        corpus_line(
            exchange(
                headers=(
                    (b"accept", b"application/json"),
                    (b"authorization", b"Bearer real-user-token"),
                    (b"cookie", b"session=abc"),
                    (b"proxy-authorization", b"Basic eA=="),
                    (b"x-forwarded-for", b"203.0.113.9"),
                    (b"x-forwarded-proto", b"https"),
                    (b"forwarded", b"for=203.0.113.9"),
                    (b"via", b"1.1 strangler"),
                    (b"traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),
                    (b"x-request-id", b"req-42"),
                ),
                response_headers=(
                    (b"content-type", b"application/json"),
                    (b"set-cookie", b"session=new; HttpOnly"),
                    (b"x-request-id", b"req-42"),
                ),
            )
        )
    )
    assert line["headers"] == [["accept", "application/json"], ["x-request-id", "req-42"]]
    assert line["response_headers"] == [
        ["content-type", "application/json"],
        ["x-request-id", "req-42"],
    ]
    assert "real-user-token" not in json.dumps(line)


def test_the_drop_list_and_common_credential_headers_are_never_kept(tmp_path: Path) -> None:
    credentials = (
        (b"x-api-key", b"key-123"),
        (b"x-auth-token", b"token-123"),
        (b"x-csrf-token", b"csrf-123"),
        (b"x-xsrf-token", b"xsrf-123"),
        (b"x-user-id", b"user-123"),  # the route's sticky key header...
        (b"x-route-override", b"monolith-123"),  # ...and its override header
    )
    pair = exchange(
        headers=((b"accept", b"*/*"), *credentials),
        response_headers=((b"content-type", b"application/json"), (b"x-csrf-token", b"csrf-9")),
    )
    drop = ("x-user-id", "x-route-override")

    async def scenario() -> list[str]:
        sink = FileSink(tmp_path)
        recording = await sink.arm("orders", 5, (), 60)
        recorder = Recorder(sink, "w1")
        await recorder.tick()
        recorder.offer(pair, secret=(), rules=None, drop=drop)
        await recorder.tick()
        return await sink.records(recording.id)

    (recorded,) = asyncio.run(scenario())
    for line in (recorded, corpus_line(pair, drop=drop)):
        entry = json.loads(line)
        assert entry["headers"] == [["accept", "*/*"]]
        assert entry["response_headers"] == [["content-type", "application/json"]]
        assert "-123" not in line
        assert "csrf-9" not in line
    # Without the drop list the route's own headers are kept, the common credentials are not.
    kept = [name for name, _ in json.loads(corpus_line(pair))["headers"]]
    assert kept == ["accept", "x-user-id", "x-route-override"]


def test_secret_json_fields_are_redacted_in_requests_and_answers() -> None:
    secret = ("$.card.number", "$.items[*].token", "$.meta.*")
    line = json.loads(
        corpus_line(
            exchange(
                method="POST",
                body=b'{"card": {"number": "4111111111111111", "brand": "visa"}}',
                response_body=json.dumps(
                    {
                        "items": [{"token": "t1", "id": 1}, {"token": "t2", "id": 2}],
                        "meta": {"key": "k", "other": "o"},
                        "card": {"number": "4111111111111111"},
                    }
                ).encode(),
            ),
            secret,
        )
    )
    assert json.loads(line["body"]) == {"card": {"number": "<redacted>", "brand": "visa"}}
    assert json.loads(line["response_body"]) == {
        "items": [{"token": "<redacted>", "id": 1}, {"token": "<redacted>", "id": 2}],
        "meta": {"key": "<redacted>", "other": "<redacted>"},
        "card": {"number": "<redacted>"},
    }
    assert line["secret"] == list(secret)  # a replay does not compare them
    assert "4111" not in json.dumps(line)


def test_a_body_without_secret_fields_is_kept_byte_for_byte() -> None:
    body = b'{ "id" : 7,\n  "name": "x" }'
    assert redact_body(body, ("$.card",)) is body
    assert redact_body(b"not json", ("$.card",)) == b"not json"
    assert redact_body(b"anything", ("$",)) == b'"<redacted>"'


def test_a_cut_json_answer_with_secret_patterns_is_not_kept_at_all() -> None:
    line = json.loads(
        corpus_line(
            exchange(response_body=b'{"card": {"number": "41111', truncated=True), ("$.card",)
        )
    )
    assert (line["response_body"], line["truncated"]) == ("<redacted>", True)


def test_binary_bodies_round_trip_through_a_corpus_file(tmp_path: Path) -> None:
    png = bytes(range(256)) + b"\x89PNG\r\n\x1a\n"
    line = corpus_line(
        exchange(
            method="PUT",
            body=b"\xff\xfe\x00raw",
            response_headers=((b"content-type", b"image/png"),),
            response_body=png,
        )
    )
    path = tmp_path / "orders-corpus.jsonl"
    write_corpus(path, "orders", [line, corpus_line(exchange())])
    header, entries = read_corpus(path)
    assert (header["corpus"], header["route"], header["count"]) == (1, "orders", 2)
    assert header["recorded_at"].endswith("Z")
    first = entries[0]
    assert (first["body"], first["response_body"]) == (None, None)
    assert body_of(first, "body") == b"\xff\xfe\x00raw"
    assert body_of(first, "response_body") == png
    assert body_of(entries[1], "response_body") == b'{"id": 7}'
    assert (entries[1]["method"], entries[1]["target"], entries[1]["status"]) == (
        "GET",
        "/api/v1/orders?page=2",
        200,
    )
    assert entries[1]["at"] == "2025-01-31T11:59:58.120Z"


def test_a_written_corpus_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    path.write_text("an older file, readable by all")
    path.chmod(0o644)
    write_corpus(path, "orders", [corpus_line(exchange())])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_corpus(path)[0]["count"] == 1
    fresh = tmp_path / "fresh.jsonl"
    write_corpus(fresh, "orders", [])
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_an_absolute_form_target_is_kept_as_its_path_and_query() -> None:
    line = json.loads(corpus_line(exchange(target=b"http://shop.example/api/v1/orders?page=2")))
    assert line["target"] == "/api/v1/orders?page=2"


GOOD_HEADER = '{"corpus": 1, "route": "orders", "recorded_at": "x", "count": 1}'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("", "empty, not a corpus", id="empty"),
        pytest.param('{"route": "orders"}\n', "line 1: not a corpus header", id="no-header"),
        pytest.param(
            '{"corpus": 2, "route": "orders"}\n',
            "line 1: corpus version 2 is not supported",
            id="newer-version",
        ),
        pytest.param(
            GOOD_HEADER + "\n" + corpus_line(exchange()) + "\n{not json\n",
            "line 3: not JSON",
            id="bad-json",
        ),
        pytest.param(
            GOOD_HEADER + '\n\n{"method": "GET"}\n', "line 3: no 'target'", id="missing-field"
        ),
        pytest.param(
            GOOD_HEADER + "\n" + corpus_line(exchange()).replace('"status": 200', '"status": "ok"'),
            "line 2: 'status' is not an integer",
            id="bad-status",
        ),
        pytest.param(
            GOOD_HEADER + "\n" + corpus_line(exchange()).replace('"GET"', '"G T"'),
            "line 2: 'G T' is not an HTTP method",
            id="bad-method",
        ),
        pytest.param(
            GOOD_HEADER + "\n" + corpus_line(exchange()).replace('"/api', '"http://x/api'),
            "line 2: target 'http://x/api/v1/orders?page=2' is not a path",
            id="absolute-target",
        ),
        pytest.param(
            GOOD_HEADER + '\n{"method": "GET", "target": "/", "headers": [["a"]], "status": 200, '
            '"response_headers": [], "truncated": false}',
            "line 2: 'headers' is not a list of [name, value] pairs",
            id="bad-headers",
        ),
        pytest.param(
            GOOD_HEADER + '\n{"method": "GET", "target": "/", "headers": [], "status": 200, '
            '"response_headers": [], "truncated": false, "body_b64": "%%%"}',
            "line 2: 'body_b64' is not base64",
            id="bad-base64",
        ),
    ],
)
def test_a_bad_corpus_is_refused_with_its_line(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(CorpusError) as refused:
        read_corpus(path)
    message = str(refused.value)
    assert message.startswith(str(path))
    assert problem in message


def test_a_missing_corpus_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="cannot be read: No such file or directory"):
        read_corpus(tmp_path / "nope.jsonl")


def test_a_sink_outage_is_logged_once_and_the_lines_wait_for_the_next_tick(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        sink = FileSink(tmp_path)
        recording = await sink.arm("orders", 5, (), 60)
        recorder = Recorder(sink, "w1")
        await recorder.tick()
        recorder.offer(exchange(target=b"/a"))
        # The directory goes away (a full disk or an unmounted volume looks the same).
        shutil.move(tmp_path / "recordings", tmp_path / "away")
        (tmp_path / "recordings").write_text("in the way")
        with caplog.at_level(logging.WARNING, logger="strangler"):
            await recorder.tick()
            await recorder.tick()
            assert recorder.wants("orders", "GET")  # still capturing what it has room for
            recorder.offer(exchange(target=b"/b"))
            (tmp_path / "recordings").unlink()
            shutil.move(tmp_path / "away", tmp_path / "recordings")
            await recorder.tick()
        failures = [r for r in caplog.records if "shadow sink failed" in r.getMessage()]
        assert len(failures) == 1
        assert any("answers again" in r.getMessage() for r in caplog.records)
        targets = [json.loads(line)["target"] for line in await sink.records(recording.id)]
        assert targets == ["/a", "/b"]

    asyncio.run(scenario())


def big_json(size: int) -> bytes:
    """A JSON answer of about `size` bytes, with a card number to redact."""
    rows = [{"id": n, "name": "x" * 90} for n in range(size // 110)]
    return json.dumps({"card": {"number": "card-secret-4111"}, "rows": rows}).encode()


def test_offer_only_keeps_the_exchange_and_the_tick_redacts_it_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made_in: list[int] = []
    real = recording_module.corpus_line

    def spy(*args: Any, **kwargs: Any) -> str:
        made_in.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(recording_module, "corpus_line", spy)
    answer = big_json(1_000_000)
    assert len(answer) > 990_000

    async def scenario() -> list[str]:
        sink = FileSink(tmp_path)
        recording = await sink.arm("orders", 5, (), 60)
        recorder = Recorder(sink, "w1")
        await recorder.tick()
        recorder.offer(exchange(response_body=answer), secret=("$.card.number",))
        recorder.offer(exchange(target=b"/b", response_body=answer), secret=("$.card.number",))
        recorder.offer(exchange(target=b"/c"))
        assert made_in == []  # no parsing, redaction nor JSON on the request's task
        assert recorder.buffered == 2 * len(answer) + len(b'{"id": 7}')
        await recorder.tick()
        assert recorder.buffered == 0
        return await sink.records(recording.id)

    loop_thread = threading.get_ident()  # asyncio.run runs its loop in this thread
    lines = asyncio.run(scenario())
    assert len(made_in) == 3
    assert loop_thread not in made_in
    assert len(set(made_in)) == 1  # one thread call for the tick's whole batch
    assert [json.loads(line)["target"] for line in lines] == ["/api/v1/orders?page=2", "/b", "/c"]
    first = json.loads(lines[0])
    assert json.loads(first["response_body"])["card"] == {"number": "<redacted>"}
    leaked = [line for line in lines if "card-secret" in line]  # no diff of 1 MB lines
    assert leaked == []


def test_a_worker_holds_at_most_its_byte_limit_and_logs_the_drops_once_per_tick(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert MAX_BUFFERED == 64 * 1024 * 1024
    pair = exchange(body=b"q" * 400, response_body=b"a" * 600)  # 1000 bytes of bodies

    async def scenario() -> None:
        sink = FileSink(tmp_path)
        assert Recorder(sink, "w0").max_buffered == MAX_BUFFERED
        one = await sink.arm("orders", 10, (), 60)
        two = await sink.arm("orders", 10, (), 60)
        recorder = Recorder(sink, "w1", max_buffered=3_000)
        await recorder.tick()
        for _ in range(2):
            recorder.offer(pair)
        assert recorder.buffered == 2_000  # kept for both recordings, counted once
        recorder.offer(exchange(body=b"q" * 1_001))  # would pass the limit: dropped
        assert recorder.wants("orders", "GET")
        recorder.offer(pair)
        assert recorder.buffered == 3_000
        assert not recorder.wants("orders", "GET")  # full: the data plane captures nothing
        recorder.offer(pair)  # offered anyway: dropped
        with caplog.at_level(logging.WARNING, logger="strangler"):
            await recorder.tick()
            await recorder.tick()
        dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert len(dropped) == 1
        assert "2 exchange(s) dropped" in dropped[0]
        assert "3000 bytes" in dropped[0]
        assert recorder.buffered == 0
        assert recorder.wants("orders", "GET")
        assert len(await sink.records(one.id)) == len(await sink.records(two.id)) == 3

    asyncio.run(scenario())


def test_a_pair_that_cannot_be_made_a_line_is_dropped_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = recording_module.corpus_line

    def fragile(pair: Exchange, *args: Any, **kwargs: Any) -> str:
        if pair.target == b"/bad":
            raise RecursionError("maximum recursion depth exceeded")
        return real(pair, *args, **kwargs)

    monkeypatch.setattr(recording_module, "corpus_line", fragile)

    async def scenario() -> list[str]:
        sink = FileSink(tmp_path)
        recording = await sink.arm("orders", 5, (), 60)
        recorder = Recorder(sink, "w1")
        await recorder.tick()
        for target in (b"/a", b"/bad", b"/c"):
            recorder.offer(exchange(target=target))
        with caplog.at_level(logging.WARNING, logger="strangler"):
            await recorder.tick()
        assert recorder.buffered == 0
        return await sink.records(recording.id)

    targets = [json.loads(line)["target"] for line in asyncio.run(scenario())]
    assert targets == ["/a", "/c"]
    assert any("1 exchange(s) could not be made" in r.getMessage() for r in caplog.records)


# --- strangler record ---------------------------------------------------------------------------
class Worker:
    """A proxy worker in a thread: ticks its Recorder and offers `orders` traffic (with a user's
    credentials and a card number) whenever the recorder wants it, up to `limit` exchanges."""

    def __init__(self, state_dir: Path, limit: int = 1_000) -> None:
        self.sink = FileSink(state_dir / "shadow")
        self.limit = limit
        self.offered = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)

    async def run(self) -> None:
        recorder = Recorder(self.sink, "w1")
        while not self.stop.is_set():
            await recorder.tick()
            if self.offered < self.limit and recorder.wants("orders", "GET"):
                recorder.offer(
                    exchange(
                        target=f"/api/v1/orders/{self.offered}".encode(),
                        headers=((b"authorization", b"Bearer user-token"), (b"accept", b"*/*")),
                        response_body=b'{"id": 1, "card": {"number": "4111111111111111"}}',
                    ),
                    secret=("$.card.number",),
                )
                self.offered += 1
            await asyncio.sleep(0.02)

    def __enter__(self) -> Worker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def record(*args: str) -> Any:
    app = typer.Typer()
    app.command("record")(record_command)
    return CliRunner().invoke(app, list(args))


def test_record_writes_a_corpus_of_count_redacted_pairs(tmp_path: Path) -> None:
    out = tmp_path / "orders.jsonl"
    with Worker(tmp_path / "var"):
        result = record(
            "orders", "--count", "3", "--out", str(out), "--state-dir", str(tmp_path / "var")
        )
    assert result.exit_code == 0, result.output
    assert f"recorded 3 pairs of orders to {out}" in result.output
    header, entries = read_corpus(out)
    assert (header["route"], header["count"], len(entries)) == ("orders", 3, 3)
    assert all(entry["headers"] == [["accept", "*/*"]] for entry in entries)
    text = out.read_text()
    assert "user-token" not in text
    assert "4111" not in text
    # Disarmed afterwards: the workers stop capturing and its lines are gone.
    assert not list((tmp_path / "var" / "shadow" / "recordings").glob("*.json*"))


def test_record_writes_fewer_pairs_when_the_timeout_comes_first(tmp_path: Path) -> None:
    out = tmp_path / "orders.jsonl"
    with Worker(tmp_path / "var", limit=2):
        result = record(
            "orders",
            "--count",
            "5",
            "--out",
            str(out),
            "--state-dir",
            str(tmp_path / "var"),
            "--timeout",
            "1s",
        )
    assert result.exit_code == 0, result.output
    assert "recorded 2 pairs of orders" in result.output
    assert "(5 asked; the timeout of 1s came first)" in result.output
    assert len(read_corpus(out)[1]) == 2


def test_record_with_no_traffic_fails_with_what_to_check(tmp_path: Path) -> None:
    out = tmp_path / "orders.jsonl"
    result = record(
        "orders",
        "--count",
        "5",
        "--out",
        str(out),
        "--state-dir",
        str(tmp_path),
        "--timeout",
        "200ms",
    )
    assert result.exit_code == 1
    assert "recorded nothing of orders in 200ms" in result.output
    assert f"the same --store file --state-dir {tmp_path}" in result.output
    assert "GET, HEAD traffic reaching the route orders" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--count", "0"], "Invalid value for '--count'", id="count-0"),
        pytest.param(["--count", "10001"], "Invalid value for '--count'", id="count-over"),
        pytest.param(["--count", "1", "--methods", "GE T"], "--methods wants", id="methods"),
        pytest.param(["--count", "1", "--timeout", "0s"], "--timeout:", id="timeout"),
    ],
)
def test_record_refuses_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    result = record("orders", "--state-dir", str(tmp_path), *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_ctrl_c_disarms_the_recording(tmp_path: Path) -> None:
    command = "import typer; from proxy.shadow.cli import record_command; typer.run(record_command)"
    process = subprocess.Popen(
        [sys.executable, "-c", command, "orders", "--count", "5", "--state-dir", str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        specs = tmp_path / "shadow" / "recordings"
        wait_until(lambda: any(specs.glob("*.json")), what="the recording to be armed")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "stopped; the recording of orders was disarmed, nothing written" in stderr
    assert not list(specs.glob("*.json*"))
