"""`strangler contract run` against a real service on 127.0.0.1 (uvicorn, port 0): a corpus of
recorded pairs passes when the service answers the same, a planted difference is reported with
its JSON path and fails the run, per-request values are learned as noise, the team's test
identity replaces recorded headers, and an unreachable service fails without crashing."""

from __future__ import annotations

import gzip
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from proxy.shadow.cli import contract_app
from proxy.shadow.exchange import Exchange
from proxy.shadow.recording import corpus_line, write_corpus
from tests.support import free_port

Scope = dict[str, Any]


class Service:
    """The new service: /orders/N answers an order (its `served_at` differs on every request),
    /whoami echoes the request's headers and sets a cookie."""

    def __init__(self) -> None:
        self.totals: dict[int, float] = {}
        self.counter = itertools.count(1)
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.requests += 1
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        extra: list[tuple[bytes, bytes]] = []
        if path.startswith("/orders/"):
            n = int(path.rsplit("/", 1)[1])
            body = order(n, self.totals.get(n, 10.0), served_at=next(self.counter))
        elif path == "/whoami":
            names = ("authorization", "accept-language", "user-agent", "cookie", "accept-encoding")
            body = {name: headers.get(name) for name in names}
            extra.append((b"set-cookie", b"session=from-the-service; Path=/"))
        else:
            body = {"error": "not found"}
        await send(
            {
                "type": "http.response.start",
                "status": 200 if "error" not in body else 404,
                "headers": [(b"content-type", b"application/json"), *extra],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def order(n: int, total: float, served_at: int) -> dict[str, Any]:
    return {"id": n, "total": total, "status": "paid", "served_at": served_at}


@pytest.fixture
def service() -> Iterator[tuple[Service, str]]:
    app = Service()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="service", daemon=True)
    thread.start()
    started = threading.Event()
    while not server.started and thread.is_alive():
        started.wait(0.01)
    assert server.started, "the service did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)


def recorded(
    target: str,
    answer: dict[str, Any] | bytes,
    *,
    headers: tuple[tuple[bytes, bytes], ...] = ((b"accept", b"application/json"),),
    response_headers: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),),
) -> str:
    body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
    exchange = Exchange(
        "orders",
        "monolith",
        "GET",
        target.encode(),
        headers,
        b"",
        200,
        response_headers,
        body,
        False,
        1_738_324_798.0,
    )
    return corpus_line(exchange)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Three orders as the monolith answered them, at its own times."""
    path = tmp_path / "orders-corpus.jsonl"
    lines = [recorded(f"/orders/{n}", order(n, 10.0, served_at=900 + n)) for n in (1, 2, 3)]
    write_corpus(path, "orders", lines)
    return path


def contract(*args: str) -> Any:
    return CliRunner().invoke(contract_app, ["run", *args])


def test_a_service_that_answers_like_the_recording_passes(
    service: tuple[Service, str], corpus: Path
) -> None:
    _, url = service
    result = contract(str(corpus), "--against", url)
    assert result.exit_code == 0, result.output
    assert "contract: 3 replayed, 0.0 % differ (threshold 0.0 %): passed" in result.output
    # served_at differs on every request, between the service's own two answers too: noise.
    assert "noise (ignored): $.served_at" in result.output


def test_a_planted_difference_is_reported_with_its_path_and_fails(
    service: tuple[Service, str], corpus: Path
) -> None:
    app, url = service
    app.totals[2] = 12.5
    result = contract(str(corpus), "--against", url)
    assert result.exit_code == 1, result.output
    assert "$.total: 1 (33.3 %)" in result.output
    assert "primary:   10.0" in result.output
    assert "candidate: 12.5" in result.output
    assert "contract: 3 replayed, 33.3 % differ (threshold 0.0 %): failed" in result.output
    assert "$.served_at:" not in result.output  # noise is not reported as a difference


def test_a_threshold_lets_a_known_share_of_differences_pass(
    service: tuple[Service, str], corpus: Path
) -> None:
    app, url = service
    app.totals[2] = 12.5
    result = contract(str(corpus), "--against", url, "--threshold", "34")
    assert result.exit_code == 0, result.output
    assert "33.3 % differ (threshold 34.0 %): passed" in result.output


def test_ignore_and_tolerance_make_a_difference_acceptable(
    service: tuple[Service, str], corpus: Path
) -> None:
    app, url = service
    app.totals[2] = 10.004
    assert contract(str(corpus), "--against", url).exit_code == 1
    assert contract(str(corpus), "--against", url, "--tolerance", "0.01").exit_code == 0
    app.totals[2] = 99.0
    assert contract(str(corpus), "--against", url, "--ignore", "$.total").exit_code == 0


def test_the_routes_own_compare_rules_travel_in_the_corpus(
    service: tuple[Service, str], tmp_path: Path
) -> None:
    """A corpus recorded on a route with `compare: {ignore: [$.total]}` replays with that rule:
    the team's CI needs no flags to compare as the shadow did."""
    from proxy.shadow.compare import Rules

    app, url = service
    app.totals[1] = 99.0
    exchange = Exchange(
        "orders",
        "monolith",
        "GET",
        b"/orders/1",
        ((b"accept", b"application/json"),),
        b"",
        200,
        ((b"content-type", b"application/json"),),
        json.dumps(order(1, 10.0, served_at=901)).encode(),
        False,
        1_738_324_798.0,
    )
    path = tmp_path / "ruled.jsonl"
    # Three requests: the per-request `served_at` is learned as noise from three hits.
    write_corpus(path, "orders", [corpus_line(exchange, rules=Rules(ignore=("$.total",)))] * 3)
    result = contract(str(path), "--against", url)
    assert result.exit_code == 0, result.output
    plain = tmp_path / "plain.jsonl"
    write_corpus(plain, "orders", [corpus_line(exchange)] * 3)
    assert contract(str(plain), "--against", url).exit_code == 1


def test_json_output_is_one_object_for_ci(service: tuple[Service, str], corpus: Path) -> None:
    app, url = service
    app.totals[3] = 11.0
    result = contract(str(corpus), "--against", url, "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert (data["route"], data["against"], data["replayed"]) == ("orders", url, 3)
    assert (data["differing"], data["unreachable"], data["passed"]) == (1, 0, False)
    assert data["differ_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert [f["field"] for f in data["fields"]] == ["$.total"]
    assert [n["field"] for n in data["noise"]] == ["$.served_at"]


def test_header_gives_the_test_identity_and_nothing_else_is_added(
    service: tuple[Service, str], tmp_path: Path
) -> None:
    app, url = service
    expected = {
        "authorization": "Bearer test-identity",
        "accept-language": "de",  # replaced
        "user-agent": "shop-app/5.1",  # as recorded: the client adds no User-Agent of its own
        "cookie": None,  # the Set-Cookie of the answer before is never sent back
        "accept-encoding": None,
    }
    line = recorded(
        "/whoami",
        expected,
        headers=(
            (b"accept-language", b"fr"),
            (b"user-agent", b"shop-app/5.1"),
            (b"accept-encoding", b"gzip"),
        ),
    )
    path = tmp_path / "whoami.jsonl"
    write_corpus(path, "whoami", [line, line, line])
    result = contract(
        str(path),
        "--against",
        url,
        "--concurrency",
        "1",
        "--header",
        "Authorization: Bearer test-identity",
        "--header",
        "accept-language: de",
    )
    assert result.exit_code == 0, result.output
    assert app.requests == 6  # each safe request twice: the second for noise


def test_a_recorded_gzip_answer_is_compared_by_its_content(
    service: tuple[Service, str], tmp_path: Path
) -> None:
    _, url = service
    body = gzip.compress(json.dumps(order(1, 10.0, served_at=1)).encode())
    line = recorded(
        "/orders/1",
        body,
        response_headers=((b"content-type", b"application/json"), (b"content-encoding", b"gzip")),
    )
    path = tmp_path / "gzip.jsonl"
    write_corpus(path, "orders", [line])
    result = contract(str(path), "--against", url)
    assert result.exit_code == 0, result.output


def test_an_unreachable_service_counts_failures_and_fails(corpus: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = contract(str(corpus), "--against", url, "--json", "--timeout", "2s")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert (data["unreachable"], data["failed"], data["differ_rate"]) == (
        3,
        {"connect-failure": 3},
        1.0,
    )
    text = contract(str(corpus), "--against", url, "--timeout", "2s")
    assert "contract: 3 replayed, 100.0 % differ (threshold 0.0 %), 3 unanswered: failed" in (
        text.output
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--header", "no colon"], "--header wants 'Name: value'", id="header"),
        pytest.param(["--ignore", "total"], "a path starts with '$'", id="path"),
        pytest.param(["--timeout", "soon"], "--timeout: 'soon' is not a duration", id="timeout"),
    ],
)
def test_usage_errors_exit_2(corpus: Path, args: list[str], message: str) -> None:
    result = contract(str(corpus), "--against", "http://127.0.0.1:1", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_a_bad_corpus_exits_2_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"corpus": 1, "route": "orders"}\n{"method": "GET"\n')
    result = contract(str(path), "--against", "http://127.0.0.1:1")
    assert result.exit_code == 2
    assert f"{path} line 2: not JSON" in result.output
