"""The request path's safety nets, end to end through the real proxy against real failing
upstreams: the stale keep-alive re-send, per-route retries and the retry budget, the fallback
upstream, outlier ejection, the per-upstream concurrency cap with its queue and per-client
share, and request-body buffering against slow uploads.

One proxy serves every test; each group has upstreams of its own (FaultyUpstream servers), so
the per-upstream state (pool, guard, budget, ejection) of one group never leaks into another.
The proxy trusts 127.0.0.1 as a hop, so a test can act as several clients by X-Forwarded-For;
without that header the client is 127.0.0.1 itself."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.functional.faulty_upstream import FaultyUpstream
from tests.functional.proxy_support import (
    Conn,
    ProxyProcess,
    Response,
    build,
    counter,
    get,
    problem,
    running,
    send,
    wait_until,
)

FALLBACK = "strangler-fallback"
PER_TRY_TIMEOUT = 0.5
STALL = 1.5  # the capped upstream's answer time
QUEUE_TIMEOUT = 0.3
OUTLIER = {"consecutive_failures": 3, "base_ejection": "1s", "probes": 1}
NAMES = (
    "monolith",  # the default, and every fallback's target
    "stale",  # drop_reused; no idempotent_writes
    "stalekeyed",  # drop_reused; idempotent_writes
    "flaky",  # route retry policy
    "down",  # retry budget
    "payment",  # fallback
    "ledger",  # outlier ejection
    "audit",  # outlier rule, answers 500
    "capped",  # concurrency cap and queue
    "uploads",  # slow uploads
    "shared",  # per-client share
    "keyedpay",  # idempotent_writes, ejected at its first failure, falls back to the monolith
)


def upstream_specs(ups: dict[str, FaultyUpstream]) -> dict[str, dict[str, object]]:
    specs: dict[str, dict[str, object]] = {name: {"url": up.url} for name, up in ups.items()}
    specs["stalekeyed"]["idempotent_writes"] = True
    specs["flaky"]["retry_budget"] = 1.0  # every request pays for a retry: no order effects
    specs["ledger"]["outlier"] = OUTLIER
    specs["audit"]["outlier"] = OUTLIER
    specs["capped"].update(
        max_requests=2, max_pending=1, queue_timeout=f"{int(QUEUE_TIMEOUT * 1000)}ms"
    )
    specs["uploads"]["max_connections"] = 8
    specs["shared"]["max_requests"] = 4
    specs["keyedpay"].update(
        idempotent_writes=True, outlier={"consecutive_failures": 1, "base_ejection": "1s"}
    )
    return specs


def routes() -> list[dict[str, object]]:
    def to(name: str, path: str, **extra: object) -> dict[str, object]:
        return {"name": name, "match": {"path": path}, **extra}

    return [
        to("stale", "/stale", to="stale"),
        to("stalekeyed", "/stalekeyed", to="stalekeyed"),
        to("retry", "/retry", to="flaky", retry={"attempts": 2, "backoff": "5ms"}),
        to(
            "per-try",
            "/per-try",
            to="flaky",
            retry={"attempts": 3, "per_try_timeout": f"{int(PER_TRY_TIMEOUT * 1000)}ms"},
        ),
        to(
            "budget",
            "/budget",
            to="down",
            retry={"attempts": 3, "backoff": "1ms", "max_backoff": "2ms"},
        ),
        to("pay", "/pay", to="payment", fallback="monolith"),
        to("payget", "/payget", to="payment", fallback={"to": "monolith", "methods": ["GET"]}),
        to("ledger", "/ledger", to="ledger"),
        to("ledger-fb", "/ledger-fb", to="ledger", fallback="monolith"),
        to("audit", "/audit", to="audit"),
        to("capped", "/capped", to="capped"),
        to("uploads", "/uploads", to="uploads"),
        to("shared", "/shared", to="shared"),
        to("keyedpay", "/keyedpay", to="keyedpay", retry={"attempts": 2}, fallback="monolith"),
    ]


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, FaultyUpstream]]:
    started: dict[str, FaultyUpstream] = {}
    try:
        for name in NAMES:
            started[name] = FaultyUpstream(name).start()
        yield started
    finally:
        for up in started.values():
            up.close()


@pytest.fixture(scope="module")
def proxy(
    ups: dict[str, FaultyUpstream], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyProcess]:
    path: Path = tmp_path_factory.mktemp("safety") / "routes.yaml"
    table = {
        "version": 1,
        "upstreams": upstream_specs(ups),
        "default": "monolith",
        "routes": routes(),
    }
    path.write_text(json.dumps(table, indent=2))  # JSON is YAML
    env = {
        "STRANGLER_TRUSTED_HOPS": '["127.0.0.1/32"]',
        # A request stuck by a bug must not hold the teardown for the default 30 s.
        "STRANGLER_GRACEFUL_TIMEOUT": "3",
    }
    with running(["--routes", str(path)], env) as proxy:
        yield proxy


@pytest.fixture(autouse=True)
def fresh(ups: dict[str, FaultyUpstream]) -> Iterator[None]:
    """Every upstream listening, answering ok, with an empty log."""
    for up in ups.values():
        up.start_listening()
        up.reset()
    yield
    for up in ups.values():
        up.start_listening()


# --- helpers --------------------------------------------------------------------------------------
def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    return counter(proxy.metrics(), name, **labels)


def echo(answer: Response) -> dict[str, object]:
    """The FaultyUpstream's JSON echo in an answer it gave."""
    assert answer.value("content-type") == b"application/json", answer.head
    data = answer.json()
    assert isinstance(data, dict), data
    return data


def served_by(answer: Response, name: str) -> None:
    """`answer` is a 200 from the FaultyUpstream called `name` (by the header it stamps: the
    body of a "stall:S" answer is no echo)."""
    assert answer.status == 200, (answer.status, answer.head, answer.body[:300])
    assert answer.value("x-upstream") == name.encode(), answer.head


def access_line(proxy: ProxyProcess, request_id: str) -> dict[str, object]:
    def lines() -> list[dict[str, object]]:
        return [
            json.loads(line)
            for line in list(proxy.stdout)
            if line.startswith("{") and f'"request_id":"{request_id}"' in line
        ]

    wait_until(lambda: bool(lines()), 5, f"the access-log line of {request_id}")
    (line,) = lines()
    return line


def prime(proxy: ProxyProcess, up: FaultyUpstream, path: str) -> None:
    """Leave exactly one idle pooled proxy connection to `up` (in drop_reused mode): a GET that
    was answered at once on a connection the pool then keeps. A GET that first met a pooled
    connection was dropped there and re-sent on a throwaway one, leaving the pool empty."""
    for _ in range(3):
        up.reset_log()
        assert get(proxy.external, path).status == 200
        if [each.reused for each in up.requests] == [False]:
            up.reset_log()
            return
    raise AssertionError(f"no GET to {up.name} was answered on a new pooled connection")


def concurrently(
    port: int, jobs: list[tuple[str, list[tuple[str, str]]]]
) -> list[tuple[Response, float]]:
    """GET each (target, headers) from a connection of its own, all at once: each answer with
    the seconds it took."""

    def timed(job: tuple[str, list[tuple[str, str]]]) -> tuple[Response, float]:
        started = time.monotonic()
        answer = send(port, "GET", job[0], job[1])
        return answer, time.monotonic() - started

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(timed, jobs))


# --- 1. the stale keep-alive race -----------------------------------------------------------------
def test_gets_dropped_on_a_reused_connection_are_resent_once_on_a_new_one(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    stale = ups["stale"]
    stale.mode = "drop_reused"
    before = metric(proxy, "strangler_retries_total", route="stale", step="stale")
    answers = [get(proxy.external, f"/stale/get/{i}") for i in range(10)]
    assert [a.status for a in answers] == [200] * 10, [a.body[:200] for a in answers]
    for i, answer in enumerate(answers):
        path = f"/stale/get/{i}"
        tries = stale.matching("GET", path)
        assert 1 <= len(tries) <= 2, tries  # re-sent at most once
        assert [each.answered for each in tries][-1] is True
        assert all(each.reused for each in tries[:-1])  # only a reused connection's drop
        assert echo(answer)["n"] == tries[-1].number
    dropped = [each for each in stale.requests if each.reused]
    assert len(dropped) >= 4  # every other GET meets the connection the previous one left
    after = metric(proxy, "strangler_retries_total", route="stale", step="stale")
    assert after - before == len(dropped)


def test_a_dropped_reused_connection_is_resent_while_other_requests_open_connections(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    """Under concurrency (where the keep-alive race happens), a request that met a stale pooled
    connection is still re-sent, though another request opened a connection meanwhile."""
    stale = ups["stale"]
    stale.mode = "drop_reused"
    failed = []
    for round_ in range(4):
        prime(proxy, stale, "/stale/prime")  # one pooled connection for two requests
        jobs: list[tuple[str, list[tuple[str, str]]]] = [
            (f"/stale/pair/{round_}/{i}", []) for i in range(2)
        ]
        for answer, _ in concurrently(proxy.external, jobs):
            if answer.status != 200:
                failed.append((round_, answer.status, answer.body[:200]))
    assert failed == []


def test_posts_dropped_on_a_reused_connection_are_never_sent_twice(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    stale = ups["stale"]
    stale.mode = "drop_reused"
    answers = [send(proxy.external, "POST", f"/stale/post/{i}", body=b"a=1") for i in range(10)]
    for i in range(10):
        assert stale.count("POST", f"/stale/post/{i}") == 1
    failed = [a for a in answers if a.status != 200]
    for answer in failed:
        problem(answer, 502, "upstream-disconnected")
    dropped = [each for each in stale.requests if each.reused]
    assert len(failed) == len(dropped) >= 4


def test_a_keyed_post_is_resent_after_a_stale_connection_when_the_upstream_takes_keys(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    keyed = ups["stalekeyed"]
    keyed.mode = "drop_reused"
    prime(proxy, keyed, "/stalekeyed/prime")
    header = ("Idempotency-Key", "stale-key-1")
    answer = send(proxy.external, "POST", "/stalekeyed/order", [header], b'{"qty":1}')
    served_by(answer, "stalekeyed")
    tries = keyed.matching("POST", "/stalekeyed/order", header=header)
    assert [each.reused for each in tries] == [True, False], tries
    assert tries[-1].body == b'{"qty":1}'


def test_a_keyed_post_is_not_resent_when_the_upstream_does_not_take_keys(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    stale = ups["stale"]
    stale.mode = "drop_reused"
    prime(proxy, stale, "/stale/prime")
    header = ("Idempotency-Key", "stale-key-2")
    answer = send(proxy.external, "POST", "/stale/order", [header], b'{"qty":1}')
    problem(answer, 502, "upstream-disconnected")
    assert stale.count("POST", "/stale/order", header=header) == 1


UPLOAD = 100_000  # above the request buffer: the upstream is asked `Expect: 100-continue`


def expect_upload(
    port: int, method: str, target: str, headers: list[tuple[str, str]] | None = None
) -> tuple[list[int], Response]:
    """An upload that waits for `100 Continue` before its body: the statuses before the final
    answer (the 100, if one came), and the final answer."""
    fields = [("Expect", "100-continue"), ("Content-Length", str(UPLOAD)), *(headers or [])]
    interim = []
    with Conn(port, timeout=10) as conn:
        conn.sendall(build(method, target, fields))
        answer = conn.read_response()
        if answer.status == 100:
            interim.append(100)
            conn.sendall(b"u" * UPLOAD)
            answer = conn.read_response()
    return interim, answer


@pytest.mark.parametrize(
    ("name", "method", "headers"),
    [
        ("stale", "PUT", []),
        ("stalekeyed", "POST", [("Idempotency-Key", "stale-upload-1")]),
    ],
)
def test_an_upload_waiting_for_100_is_resent_after_a_stale_connection(
    proxy: ProxyProcess,
    ups: dict[str, FaultyUpstream],
    name: str,
    method: str,
    headers: list[tuple[str, str]],
) -> None:
    """A large upload asks the upstream first (`Expect: 100-continue`). A pooled connection the
    upstream drops before its 100 has taken none of the body, nor has the client sent any: it
    goes again on a new connection, and the client's 100 comes from there."""
    up = ups[name]
    up.mode = "drop_reused"
    prime(proxy, up, f"/{name}/prime")
    before = metric(proxy, "strangler_retries_total", route=name, step="stale")
    interim, answer = expect_upload(proxy.external, method, f"/{name}/upload", headers)
    assert interim == [100]
    served_by(answer, name)
    tries = up.matching(method, f"/{name}/upload")
    assert [(each.reused, each.body_size) for each in tries] == [(True, 0), (False, UPLOAD)]
    assert tries[-1].complete
    assert metric(proxy, "strangler_retries_total", route=name, step="stale") == before + 1


def test_an_unkeyed_upload_waiting_for_100_is_not_resent_after_a_stale_connection(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    """A POST without a key is never sent twice, even with its body unsent: the client gets the
    502 instead of a 100, and sends nothing."""
    stale = ups["stale"]
    stale.mode = "drop_reused"
    prime(proxy, stale, "/stale/prime")
    interim, answer = expect_upload(proxy.external, "POST", "/stale/upload")
    assert interim == []
    problem(answer, 502, "upstream-disconnected")
    assert [(each.reused, each.body_size) for each in stale.requests] == [(True, 0)]


# --- 2. a route's retry policy --------------------------------------------------------------------
def test_a_get_answered_503_is_retried(proxy: ProxyProcess, ups: dict[str, FaultyUpstream]) -> None:
    flaky = ups["flaky"]
    flaky.script(["503", "ok"])
    before = metric(proxy, "strangler_retries_total", route="retry", step="retry", reason="503")
    served_by(get(proxy.external, "/retry/a"), "flaky")
    assert flaky.count("GET", "/retry/a") == 2
    after = metric(proxy, "strangler_retries_total", route="retry", step="retry", reason="503")
    assert after - before == 1


def test_a_post_answered_503_is_not_retried(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    flaky = ups["flaky"]
    flaky.script(["503", "ok"])
    answer = send(proxy.external, "POST", "/retry/p", body=b"a=1")
    assert answer.status == 503
    found = echo(answer)  # the upstream's own answer, unchanged
    assert (found["upstream"], found["status"], found["method"]) == ("flaky", 503, "POST")
    assert flaky.count("POST", "/retry/p") == 1


def test_a_get_reset_before_any_answer_is_retried(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    flaky = ups["flaky"]
    flaky.script(["reset_before", "ok"])
    served_by(get(proxy.external, "/retry/r"), "flaky")
    assert flaky.count("GET", "/retry/r") == 2


def test_when_the_attempts_run_out_the_last_answer_is_the_clients(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    flaky = ups["flaky"]
    flaky.script(["503", "503", "ok"])  # attempts: 2
    answer = get(proxy.external, "/retry/x")
    assert answer.status == 503, answer.head
    found = echo(answer)  # not a proxy problem+json
    assert found["upstream"] == "flaky"
    tries = flaky.matching("GET", "/retry/x")
    assert len(tries) == 2
    assert found["n"] == tries[-1].number


def test_a_try_without_an_answer_head_in_per_try_timeout_is_retried(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    flaky = ups["flaky"]
    flaky.script(["stall"])
    started = time.monotonic()
    answer = get(proxy.external, "/per-try/slow")
    elapsed = time.monotonic() - started
    served_by(answer, "flaky")
    tries = flaky.matching("GET", "/per-try/slow")
    # Two, unless a loaded machine made the second one miss per_try_timeout as well.
    assert [each.behaviour for each in tries][:2] == ["stall", "ok"], tries
    # The stalled try is cut at per_try_timeout, not at the route's 60 s read timeout.
    assert PER_TRY_TIMEOUT * 0.9 <= elapsed < 3 * PER_TRY_TIMEOUT + 0.5


# --- 3. the retry budget --------------------------------------------------------------------------
def test_the_retry_budget_keeps_retries_near_a_fifth_of_the_traffic(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    down = ups["down"]
    down.mode = "503"
    answers = [get(proxy.external, f"/budget/{i}") for i in range(100)]
    assert {a.status for a in answers} == {503}
    # Without a budget, attempts: 3 would make it 300; the budget is 20 % plus a reserve of 3.
    assert 100 <= len(down.requests) <= 130, len(down.requests)
    retries = metric(proxy, "strangler_retries_total", route="budget")
    assert retries == len(down.requests) - 100


# --- 4. the fallback ------------------------------------------------------------------------------
def test_a_refused_upstream_falls_back_for_any_method(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    payment, monolith = ups["payment"], ups["monolith"]
    payment.stop_listening()
    payment.close_idle_connections()
    time.sleep(0.2)  # the proxy drops the pooled connections the upstream closed
    labels = {"route": "pay", "upstream": "payment", "to": "monolith"}
    before = metric(proxy, "strangler_fallbacks_total", reason="connect-failure", **labels)

    answer = send(proxy.internal, "GET", "/pay/a", [("X-Request-ID", "safety-fb-get")])
    served_by(answer, "monolith")
    assert answer.value(FALLBACK) == b"payment; reason=connect-failure"
    answer = send(proxy.internal, "POST", "/pay/a", body=b"a=1")  # nothing was sent: it may
    served_by(answer, "monolith")
    assert answer.value(FALLBACK) == b"payment; reason=connect-failure"
    assert monolith.count("POST", "/pay/a") == 1
    assert monolith.matching("POST", "/pay/a")[0].body == b"a=1"
    # The external listener does not tell clients about its internals.
    answer = get(proxy.external, "/pay/b")
    served_by(answer, "monolith")
    assert answer.value(FALLBACK) is None
    assert payment.requests == []

    after = metric(proxy, "strangler_fallbacks_total", reason="connect-failure", **labels)
    assert after - before == 3
    line = access_line(proxy, "safety-fb-get")
    assert line["fallback"] == {"from": "payment", "reason": "connect-failure"}, line
    assert (line["status"], line["upstream"], line["tries"]) == (200, "monolith", 2), line


def test_a_503_falls_back_for_a_get_and_not_for_a_post(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    payment, monolith = ups["payment"], ups["monolith"]
    payment.mode = "503"
    answer = get(proxy.internal, "/pay/b")
    served_by(answer, "monolith")
    assert answer.value(FALLBACK) == b"payment; reason=503"
    assert payment.count("GET", "/pay/b") == 1

    answer = send(proxy.internal, "POST", "/pay/b", body=b"a=1")
    assert answer.status == 503
    assert echo(answer)["upstream"] == "payment"
    assert answer.value(FALLBACK) is None
    assert payment.count("POST", "/pay/b") == 1
    assert monolith.count("POST") == 0


def test_a_reset_falls_back_for_a_get_and_fails_a_post(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    payment, monolith = ups["payment"], ups["monolith"]
    payment.mode = "reset_before"
    answer = get(proxy.internal, "/pay/c")
    served_by(answer, "monolith")
    assert answer.value(FALLBACK) == b"payment; reason=reset"

    answer = send(proxy.internal, "POST", "/pay/c", body=b"a=1")
    problem(answer, 502, "upstream-disconnected")
    assert payment.count("POST", "/pay/c") == 1
    assert monolith.count("POST") == 0


def test_a_small_answer_cut_before_the_client_saw_it_falls_back_for_a_get(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    """A small answer is read whole before the client sees a byte: one cut short there has
    reached no client, so a GET may still be served by the fallback; a POST, which reached the
    upstream, is not sent anywhere else."""
    payment, monolith = ups["payment"], ups["monolith"]
    payment.mode = "reset_after:100:1000"
    answer = get(proxy.internal, "/pay/cut")
    served_by(answer, "monolith")
    assert answer.value(FALLBACK) == b"payment; reason=reset"

    answer = send(proxy.internal, "POST", "/pay/cut", body=b"a=1")
    problem(answer, 502, "upstream-body-incomplete")
    assert payment.count("POST", "/pay/cut") == 1
    assert monolith.count("POST") == 0


def test_a_get_whose_small_answer_is_cut_is_retried(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    flaky = ups["flaky"]
    flaky.script(["reset_after:100:1000", "ok"])
    served_by(get(proxy.external, "/retry/cut"), "flaky")
    assert flaky.count("GET", "/retry/cut") == 2


def test_fallback_methods_limit_which_requests_fall_back(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    payment, monolith = ups["payment"], ups["monolith"]
    payment.mode = "503"
    served_by(get(proxy.internal, "/payget/d"), "monolith")
    answer = send(proxy.internal, "DELETE", "/payget/d")  # idempotent, but not listed
    assert answer.status == 503
    assert echo(answer)["upstream"] == "payment"
    assert monolith.count("DELETE") == 0

    payment.stop_listening()
    payment.close_idle_connections()
    time.sleep(0.2)
    served_by(get(proxy.internal, "/payget/e"), "monolith")
    # On /pay this POST would fall back (nothing was sent); here only GET (and HEAD) may.
    problem(send(proxy.internal, "POST", "/payget/e", body=b"a=1"), 502, "upstream-unreachable")
    assert monolith.count("POST") == 0


def split_post(port: int, target: str, size: int = 100_000, first: int = 70_000) -> Response:
    """POST `size` bytes, the first `first` (over the 64 KiB request buffer) at once and the
    rest a moment later, so the proxy streams the body instead of buffering it."""
    with Conn(port) as conn:
        conn.sendall(build("POST", target, [("Content-Length", str(size))]) + b"z" * first)
        time.sleep(0.2)
        conn.sendall(b"z" * (size - first))
        return conn.read_response()


def test_a_streamed_body_to_a_refused_upstream_is_never_a_500(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    """Nothing was sent to a refused upstream, so a request with a streamed (unbuffered) body may
    still fall back; at worst it is the clean 502 of the refused upstream, never a crash."""
    payment, monolith, flaky = ups["payment"], ups["monolith"], ups["flaky"]
    for up in (payment, flaky):
        up.stop_listening()
        up.close_idle_connections()
    time.sleep(0.2)
    answer = split_post(proxy.internal, "/pay/big")
    if answer.status == 200:
        served_by(answer, "monolith")
        (seen,) = monolith.matching("POST", "/pay/big")
        assert (seen.body_size, seen.complete) == (100_000, True)
    else:
        problem(answer, 502, "upstream-unreachable")
    # The retry policy meets the same refused upstream twice.
    problem(split_post(proxy.internal, "/retry/big"), 502, "upstream-unreachable")


# --- 5. outlier ejection --------------------------------------------------------------------------
def test_an_upstream_failing_to_connect_is_ejected_then_probed_back(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    ledger, monolith = ups["ledger"], ups["monolith"]
    ledger.stop_listening()
    ledger.close_idle_connections()
    time.sleep(0.2)
    ejections = metric(proxy, "strangler_upstream_ejections_total", upstream="ledger")
    for i in range(3):
        problem(get(proxy.external, f"/ledger/{i}"), 502, "upstream-unreachable")
    metrics = proxy.metrics()
    assert counter(metrics, "strangler_upstream_state", upstream="ledger") == 1
    assert counter(metrics, "strangler_upstream_ejections_total", upstream="ledger") >= (
        ejections + 1
    )

    ledger.start_listening()  # back, but the proxy does not know yet
    started = time.monotonic()
    answer = get(proxy.external, "/ledger/x")
    assert time.monotonic() - started < 0.5
    problem(answer, 503, "upstream-ejected")
    assert answer.value("retry-after") in {b"1", b"2"}, answer.head
    answer = get(proxy.internal, "/ledger-fb/y")  # straight to the fallback
    served_by(answer, "monolith")
    assert answer.value(FALLBACK) == b"ledger; reason=ejected"
    assert ledger.requests == []

    # After base_ejection a probe goes through; its success closes the upstream again.
    deadline = time.monotonic() + 5
    while True:
        answer = get(proxy.external, "/ledger/probe")
        if answer.status == 200 or time.monotonic() > deadline:
            break
        problem(answer, 503, "upstream-ejected")
        time.sleep(0.1)
    served_by(answer, "ledger")
    assert counter(proxy.metrics(), "strangler_upstream_state", upstream="ledger") == 0
    served_by(get(proxy.external, "/ledger/z"), "ledger")
    answer = get(proxy.internal, "/ledger-fb/z")
    served_by(answer, "ledger")
    assert answer.value(FALLBACK) is None
    assert monolith.count("GET", "/ledger-fb/z") == 0


def test_500_answers_do_not_eject(proxy: ProxyProcess, ups: dict[str, FaultyUpstream]) -> None:
    audit = ups["audit"]
    audit.mode = "500"
    for i in range(6):  # twice consecutive_failures
        answer = get(proxy.external, f"/audit/{i}")
        assert answer.status == 500
        assert echo(answer)["upstream"] == "audit"
    assert audit.count("GET") == 6
    audit.mode = None
    served_by(get(proxy.external, "/audit/ok"), "audit")
    metrics = proxy.metrics()
    assert counter(metrics, "strangler_upstream_state", upstream="audit") == 0
    assert counter(metrics, "strangler_upstream_ejections_total", upstream="audit") == 0


# --- 6. the concurrency cap -----------------------------------------------------------------------
def test_over_max_requests_one_waits_and_the_rest_get_a_fast_503(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    capped = ups["capped"]
    capped.mode = f"stall:{STALL}"
    # Five clients (by X-Forwarded-For from a trusted hop), so the per-client share plays no part.
    jobs = [(f"/capped/{i}", [("X-Forwarded-For", f"10.0.6.{i}")]) for i in range(5)]
    answers = concurrently(proxy.external, jobs)
    assert sorted(a.status for a, _ in answers) == [200, 200, 503, 503, 503]
    assert capped.count("GET") == 2
    reasons = []
    for answer, seconds in answers:
        if answer.status == 200:
            served_by(answer, "capped")
            continue
        found = problem(answer, 503, "upstream-saturated")
        assert answer.value("retry-after") == b"1", answer.head
        assert seconds < STALL, seconds  # refused without waiting for a slot to come free
        detail = str(found["detail"])
        reasons += [reason for reason in ("queue-full", "queue-timeout") if reason in detail]
    assert sorted(reasons) == ["queue-full", "queue-full", "queue-timeout"]


# --- 7. slow uploads ------------------------------------------------------------------------------
def test_slow_uploads_hold_no_upstream_connection(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    uploads = ups["uploads"]
    slow: list[socket.socket] = []
    try:
        for i in range(30):  # max_connections: 8
            sock = socket.create_connection(("127.0.0.1", proxy.external), timeout=5)
            slow.append(sock)
            sock.sendall(build("POST", f"/uploads/slow/{i}", [("Content-Length", "20000")]))
            sock.sendall(b"abc")
        time.sleep(0.3)  # the proxy reads their heads and the first bytes
        for sock in slow[::3]:
            sock.sendall(b"d")
        started = time.monotonic()
        answer = get(proxy.external, "/uploads/normal", timeout=5)
        assert time.monotonic() - started < 1.0
        served_by(answer, "uploads")
        assert uploads.count("POST") == 0
    finally:
        for sock in slow:
            sock.close()
    time.sleep(0.3)
    assert uploads.count("POST") == 0
    assert [each.path for each in uploads.requests] == ["/uploads/normal"]


# --- 8. the per-client share ----------------------------------------------------------------------
def test_one_client_holds_at_most_its_share_of_an_upstreams_slots(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    shared = ups["shared"]
    shared.mode = "stall:1.2"  # max_requests: 4; a client's share is 0.5 of it
    held = [Conn(proxy.external) for _ in range(2)]
    other = Conn(proxy.external)
    try:
        for i, conn in enumerate(held):
            conn.sendall(build("GET", f"/shared/held/{i}"))
        shared.wait_for_requests(2, "GET")
        answer = get(proxy.external, "/shared/third", timeout=5)
        found = problem(answer, 503, "upstream-saturated")
        assert "client-share" in str(found["detail"]), found
        assert answer.value("retry-after") == b"1", answer.head
        # Another client still gets one of the free slots.
        other.sendall(build("GET", "/shared/other", [("X-Forwarded-For", "10.0.8.1")]))
        served_by(other.read_response(), "shared")
        for conn in held:
            served_by(conn.read_response(), "shared")
    finally:
        for conn in [*held, other]:
            conn.close()
    assert shared.count("GET", "/shared/third") == 0


def test_a_client_that_waited_for_a_slot_is_counted_once(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    shared = ups["shared"]
    shared.on("/shared/first", "stall:0.5")
    shared.on("/shared/fill", "stall:1")
    a = [("X-Forwarded-For", "10.0.9.1")]
    first = Conn(proxy.external)
    fill = [Conn(proxy.external) for _ in range(3)]
    waiter = Conn(proxy.external)
    try:
        first.sendall(build("GET", "/shared/first", a))
        for i, conn in enumerate(fill):  # clients B, B and C: all four slots taken
            client = "10.0.9.2" if i < 2 else "10.0.9.3"
            conn.sendall(build("GET", f"/shared/fill/{i}", [("X-Forwarded-For", client)]))
        shared.wait_for_requests(4)
        waiter.sendall(build("GET", "/shared/then", a))  # waits for the first one's slot
        for conn in [first, waiter, *fill]:
            served_by(conn.read_response(), "shared")
    finally:
        for conn in [first, waiter, *fill]:
            conn.close()
    # Client A holds nothing now: it may take its share (2 of 4) again.
    shared.on("/shared/again", "stall:0.3")
    answers = concurrently(proxy.external, [(f"/shared/again/{i}", a) for i in range(2)])
    for answer, _ in answers:
        served_by(answer, "shared")


def test_requests_that_queue_for_a_slot_do_not_exceed_the_clients_share(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    shared = ups["shared"]
    shared.on("/shared/busy", "stall:0.5")
    shared.on("/shared/many", "stall:1")
    busy = [Conn(proxy.external) for _ in range(4)]
    try:
        for i, conn in enumerate(busy):  # clients B, B, C, C: all four slots taken
            client = "10.0.10.2" if i < 2 else "10.0.10.3"
            conn.sendall(build("GET", f"/shared/busy/{i}", [("X-Forwarded-For", client)]))
        shared.wait_for_requests(4)
        # Client A asks four times while the upstream is full; its share is 2 of the 4 slots.
        a = [("X-Forwarded-For", "10.0.10.1")]
        answers = concurrently(proxy.external, [(f"/shared/many/{i}", a) for i in range(4)])
        for conn in busy:
            served_by(conn.read_response(), "shared")
    finally:
        for conn in busy:
            conn.close()
    for answer, _ in answers:
        if answer.status != 200:
            found = problem(answer, 503, "upstream-saturated")
            assert "client-share" in str(found["detail"]), found
    starts = sorted(each.received_at for each in shared.matching("GET", prefix="/shared/many"))
    # Each takes 1 s at the upstream: no more than two of them may have been there at once.
    at_once = max(sum(1 for other in starts if 0 <= other - start < 0.8) for start in starts)
    assert at_once <= 2, starts


def test_a_keyed_post_that_reached_its_upstream_is_never_sent_to_the_fallback(
    proxy: ProxyProcess, ups: dict[str, FaultyUpstream]
) -> None:
    """The POST reaches the service and its connection drops; the re-send (allowed: the
    service honours the key) finds it ejected. The monolith must not take it too: it does not
    know the key, and the customer would pay twice."""
    ups["keyedpay"].script(["reset_before"])
    answer = send(proxy.external, "POST", "/keyedpay", [("Idempotency-Key", "k-1")], b"{}")
    problem(answer, 503, "upstream-ejected")
    assert ups["keyedpay"].count("POST") == 1
    assert ups["monolith"].count("POST") == 0
