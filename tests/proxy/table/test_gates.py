"""Cutover gates: which upstreams a change sends more traffic (pure), which gate URLs a table
may name, and `check_gates` asking a real gate (an HTTP server on 127.0.0.1, port 0, in a
thread, whose answer a test switches and whose requests it counts)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from proxy.store.base import StoreError
from proxy.table.gates import DEFAULT, GateClosed, check_gates, traffic_gains
from proxy.table.loader import TableInvalid, load_text
from proxy.table.model import RouteTable
from proxy.table.validate import check_gate_url


class Gate:
    """A switchable gate: answers every GET with `status` and a /cutover-shaped JSON body."""

    def __init__(self) -> None:
        self.status = 200
        self.reasons: list[str] = []
        self.asked = 0
        self._lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with gate._lock:
                    gate.asked += 1
                    status, reasons = gate.status, list(gate.reasons)
                body = json.dumps({"ready": status == 200, "reasons": reasons}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, args=(0.05,), name="gate", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/cutover"

    def opens(self) -> None:
        with self._lock:
            self.status, self.reasons = 200, []

    def refuses(self, *reasons: str) -> None:
        with self._lock:
            self.status, self.reasons = 503, list(reasons)


@contextmanager
def serving_gate() -> Iterator[Gate]:
    gate = Gate()
    gate.thread.start()
    try:
        yield gate
    finally:
        gate.server.shutdown()
        gate.server.server_close()
        gate.thread.join(timeout=5)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def table(
    *routes: str, default: str = "monolith", gate: str | None = None, version: int = 1
) -> RouteTable:
    """A table over monolith and payment (payment gated by `gate`), routes as YAML lines."""
    payment = '{url: "http://127.0.0.1:8002"' + (f', gate: "{gate}"}}' if gate else "}")
    text = (
        f"version: {version}\nupstreams:\n"
        '  monolith: {url: "http://127.0.0.1:8001"}\n'
        f"  payment: {payment}\n"
        '  catalog: {url: "http://127.0.0.1:8003"}\n'
        f"default: {default}\nroutes:\n" + "".join(f"  - {r}\n" for r in routes)
    )
    if not routes:
        text = text.replace("routes:\n", "routes: []\n")
    return load_text(text)


def to(name: str, upstream: str, path: str | None = None) -> str:
    return f"{{name: {name}, match: {{path: {path or '/' + name}}}, to: {upstream}}}"


def split(name: str, **weights: int) -> str:
    pairs = ", ".join(f"{upstream}: {weight}" for upstream, weight in weights.items())
    return f"{{name: {name}, match: {{path: /{name}}}, split: {{{pairs}}}}}"


# --- traffic_gains (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "gains"),
    [
        pytest.param(
            table(to("payments", "monolith"), to("orders", "monolith")),
            table(to("payments", "payment"), to("orders", "monolith")),
            {"payment": ["payments"]},
            id="to-to",
        ),
        pytest.param(
            table(split("payments", monolith=90, payment=10)),
            table(split("payments", monolith=50, payment=50)),
            {"payment": ["payments"]},
            id="split-weight-up",
        ),
        pytest.param(
            table(split("payments", monolith=50, payment=50)),
            table(split("payments", monolith=90, payment=10)),
            {"monolith": ["payments"]},
            id="split-weight-down",
        ),
        pytest.param(
            table(to("payments", "monolith")),
            table(split("payments", monolith=100, payment=0)),
            {},
            id="split-with-weight-0-is-no-gain",
        ),
        pytest.param(
            table(to("orders", "monolith")),
            table(to("orders", "monolith"), to("payments", "payment")),
            {"payment": ["payments"]},
            id="new-route-to-a-non-default-upstream",
        ),
        pytest.param(
            table(to("orders", "monolith")),
            table(to("orders", "monolith"), to("payments", "monolith")),
            {},
            id="new-route-to-the-default-upstream",
        ),
        pytest.param(
            table(to("orders", "monolith"), to("payments", "payment")),
            table(to("orders", "monolith")),
            {"monolith": ["payments"]},
            id="removed-route-falls-back-to-the-default",
        ),
        pytest.param(
            table(to("payments", "monolith"), default="payment"),
            table(default="payment"),
            {"payment": ["payments"]},
            id="removed-route-gives-a-gated-default-more",
        ),
        pytest.param(
            table(to("payments", "payment")),
            table(to("payments", "payment"), default="payment"),
            {"payment": [DEFAULT]},
            id="default-changed",
        ),
        pytest.param(
            table(to("default", "monolith")),
            table(to("default", "monolith"), default="payment"),
            {"payment": [DEFAULT]},
            id="a-route-named-default-does-not-hide-the-default",
        ),
        pytest.param(
            table(to("payments", "payment"), split("orders", monolith=70, catalog=30)),
            table(to("payments", "payment"), split("orders", monolith=70, catalog=30)),
            {},
            id="unchanged",
        ),
        pytest.param(
            table(to("payments", "payment"), version=7),
            table(to("payments", "payment"), version=8),
            {},
            id="only-the-version-differs",
        ),
    ],
)
def test_traffic_gains(before: RouteTable, after: RouteTable, gains: dict[str, list[str]]) -> None:
    assert traffic_gains(before, after) == gains


def test_a_rollback_that_lowers_an_upstreams_share_is_no_gain_for_it() -> None:
    v1 = table(to("payments", "monolith"), to("orders", "monolith"))
    v3 = table(to("payments", "payment"), split("orders", monolith=80, payment=20))
    assert traffic_gains(v1, v3) == {"payment": ["payments", "orders"]}
    back = traffic_gains(v3, v1)
    assert "payment" not in back
    assert back == {"monolith": ["payments", "orders"]}


# --- gate URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8002/cutover", "https://payment.internal/cutover?deep=1"]
)
def test_a_gate_is_an_http_url_with_a_path_allowed(url: str) -> None:
    assert check_gate_url(url) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param("ftp://127.0.0.1/cutover", "a gate is an http:// or https:// URL", id="ftp"),
        pytest.param("file:///etc/passwd", "a gate is an http:// or https:// URL", id="file"),
        pytest.param("127.0.0.1:8002/cutover", "a gate is an http:// or https:// URL", id="bare"),
        pytest.param("http:///cutover", "a gate is an http:// or https:// URL", id="no-host"),
        pytest.param(
            "http://ops:pw@127.0.0.1:8002/cutover", "credentials do not belong", id="credentials"
        ),
        pytest.param("http://ops@127.0.0.1:8002/cutover", "credentials do not belong", id="user"),
        pytest.param("http://127.0.0.1:99999/cutover", "is not a URL", id="port-out-of-range"),
        pytest.param("http://127.0.0.1:0/cutover", "port 0 is not a port", id="port-0"),
    ],
)
def test_a_gate_url_is_refused(url: str, reason: str) -> None:
    why = check_gate_url(url)
    assert why is not None
    assert reason in why


def test_a_table_with_a_bad_gate_is_refused_with_its_line_and_reason() -> None:
    text = (
        "version: 1\nupstreams:\n"
        '  monolith: {url: "http://127.0.0.1:8001"}\n'
        "  payment:\n"
        '    url: "http://127.0.0.1:8002"\n'
        '    gate: "ftp://127.0.0.1:8002/cutover"\n'
        "default: monolith\n"
    )
    with pytest.raises(TableInvalid) as caught:
        load_text(text, "routes.yaml")
    ((line, field, message),) = [(p.line, p.where(), p.message) for p in caught.value.problems]
    assert (line, field) == (6, "upstreams.payment.gate")
    assert "a gate is an http:// or https:// URL" in message
    assert caught.value.describe().startswith("routes.yaml:6: upstreams.payment.gate: ")


# --- check_gates against a real gate ----------------------------------------------------------


@pytest.fixture(scope="module")
def module_gate() -> Iterator[Gate]:
    with serving_gate() as gate:
        yield gate


@pytest.fixture
def gate(module_gate: Gate) -> Gate:
    module_gate.opens()
    module_gate.asked = 0
    return module_gate


def test_an_open_gate_lets_the_change_through(gate: Gate) -> None:
    before = table(to("payments", "monolith"), gate=gate.url)
    after = table(to("payments", "payment"), gate=gate.url)
    assert check_gates(before, after) == ["payment"]
    assert gate.asked == 1


def test_a_closed_gate_refuses_with_its_reasons(gate: Gate) -> None:
    gate.refuses("the backfill has not finished", "follow has not run")
    before = table(split("payments", monolith=90, payment=10), gate=gate.url)
    after = table(split("payments", monolith=50, payment=50), gate=gate.url)
    with pytest.raises(GateClosed) as caught:
        check_gates(before, after)
    message = str(caught.value)
    assert "upstream 'payment' (routes payments)" in message
    assert "is closed (503)" in message
    assert "the backfill has not finished; follow has not run" in message
    assert message.endswith("nothing changed")
    assert isinstance(caught.value, StoreError)
    assert (caught.value.status, caught.value.kind) == (409, "gate-closed")
    assert gate.asked == 1


def test_a_gate_that_does_not_answer_refuses() -> None:
    url = f"http://127.0.0.1:{free_port()}/cutover"
    before = table(to("payments", "monolith"), gate=url)
    after = table(to("payments", "payment"), gate=url)
    with pytest.raises(GateClosed) as caught:
        check_gates(before, after)
    assert f"at {url} did not answer" in str(caught.value)
    assert "nothing changed" in str(caught.value)


def test_an_upstream_without_a_gate_is_never_asked(gate: Gate) -> None:
    gate.refuses("closed")
    before = table(to("payments", "monolith"), gate=gate.url)
    after = table(to("payments", "monolith"), to("products", "catalog"), gate=gate.url)
    assert traffic_gains(before, after) == {"catalog": ["products"]}
    assert check_gates(before, after) == []
    # and a table without any gate asks nobody
    assert check_gates(table(to("payments", "monolith")), table(to("payments", "payment"))) == []
    assert gate.asked == 0


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(
            [to("payments", "payment")], [to("payments", "monolith")], id="to-back-to-monolith"
        ),
        pytest.param(
            [split("payments", monolith=50, payment=50)],
            [split("payments", monolith=90, payment=10)],
            id="split-down",
        ),
        pytest.param([to("payments", "payment")], [], id="route-removed"),
    ],
)
def test_lowering_a_gated_upstreams_share_never_asks_its_gate(
    gate: Gate, before: list[str], after: list[str]
) -> None:
    gate.refuses("closed")
    assert check_gates(table(*before, gate=gate.url), table(*after, gate=gate.url)) == []
    assert gate.asked == 0


def test_a_change_cannot_drop_the_gate_that_refuses_it(gate: Gate) -> None:
    gate.refuses("follow has not run")
    before = table(to("payments", "monolith"), gate=gate.url)
    with pytest.raises(GateClosed, match="follow has not run"):
        check_gates(before, table(to("payments", "payment")))  # no gate any more
    assert gate.asked == 1
    gate.opens()
    assert check_gates(before, table(to("payments", "payment"))) == ["payment"]


def test_a_redirect_does_not_open_a_gate(gate: Gate) -> None:
    gate.status = 302  # redirects are not followed: only a 2xx opens
    before = table(to("payments", "monolith"), gate=gate.url)
    after = table(to("payments", "payment"), gate=gate.url)
    with pytest.raises(GateClosed, match=r"is closed \(302\)"):
        check_gates(before, after)


def test_a_new_name_for_a_gated_service_asks_its_gate(gate: Gate) -> None:
    gate.refuses("backfill not done")
    before = table(to("payments", "monolith"), gate=gate.url)
    alias = load_text(
        before_text(before).replace(
            "  catalog:", '  payment2: {url: "http://127.0.0.1:8002"}\n  catalog:'
        )
    )
    after = load_text(before_text(alias).replace("to: monolith", "to: payment2"))
    with pytest.raises(GateClosed, match="backfill not done"):
        check_gates(before, after)
    assert gate.asked == 1


def test_repointing_an_upstream_at_a_gated_service_asks_its_gate(gate: Gate) -> None:
    gate.refuses("lag over budget")
    before = table(to("payments", "monolith"), gate=gate.url)
    after = load_text(
        before_text(before).replace(
            'monolith: {url: "http://127.0.0.1:8001"}', 'monolith: {url: "http://127.0.0.1:8002"}'
        )
    )
    assert "monolith" in traffic_gains(before, after)
    with pytest.raises(GateClosed, match="lag over budget"):
        check_gates(before, after)


def before_text(model: RouteTable) -> str:
    """The YAML of a table built by `table()` (rebuilt from the model, flow style)."""
    lines = [f"version: {model.version}", "upstreams:"]
    for name, spec in model.upstreams.items():
        gate = f', gate: "{spec.gate}"' if spec.gate else ""
        lines.append(f'  {name}: {{url: "{spec.url}"{gate}}}')
    lines += [f"default: {model.default}", "routes:"]
    lines += [
        f"  - {{name: {r.name}, match: {{path: {r.match.path}}}, to: {r.to}}}" for r in model.routes
    ]
    return "\n".join(lines) + "\n"
