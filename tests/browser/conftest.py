"""The browser tests' fixtures: headless Chromium (Debian's, driven by Playwright) in front of a
real proxy whose admin listener serves the dashboard, with two recorder upstreams behind it.

Chromium is `STRANGLER_TEST_CHROMIUM`, else `chromium` on the PATH (Debian's package, which
.ci/run installs). Without it, or without Playwright, the browser tests are skipped with the
reason; in CI (`CI=true`) they fail instead. `STRANGLER_TEST_SCREENSHOT=FILE` saves a
screenshot of the dashboard with live data there (to look at the design; never committed).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.functional.proxy_support import (
    ProxyProcess,
    Recorder,
    Table,
    recorder,
    reply,
    wait_until,
)

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture says why: a skip, or in CI a failure
    expect = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "dashboard-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Author": "ops"}


def unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message}: in CI every browser test runs")
    pytest.skip(message)


def chromium_path() -> str:
    found = os.environ.get("STRANGLER_TEST_CHROMIUM") or shutil.which("chromium")
    if not found or not Path(found).exists():
        unavailable("Debian's chromium is not installed (apt-get install chromium)")
    return str(found)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per module (each test takes a fresh context: its own storage)."""
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -c constraints.txt -e '.[dev]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def json_answer(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(data),
        data,
    )


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Recorder, Recorder]]:
    """The monolith and the payment service: the same payment, its currency spelt differently
    (a difference the shadow finds)."""
    with recorder() as monolith, recorder() as payment:
        monolith.handler = reply(json_answer({"id": 7, "amount": "10.00", "currency": "EUR"}))
        payment.handler = reply(json_answer({"id": 7, "amount": "10.00", "currency": "usd"}))
        yield monolith, payment


ROUTES: list[dict[str, object]] = [
    {
        "name": "payments",
        "match": {"path": "/api/v1/payments"},
        "to": "monolith",
        "shadow": {"to": "payment", "sample": 1.0, "noise": 0},
    },
    {
        "name": "orders",
        "match": {"path": "/api/v1/orders"},
        "split": {"monolith": 80, "payment": 20},
    },
    {"name": "catalog", "match": {"path": "/api/v1/products"}, "to": "payment"},
    {"name": "reviews", "match": {"path": "/api/v1/reviews"}, "to": "monolith"},
    {"name": "search", "match": {"path": "/api/v1/search"}, "to": "monolith"},
]


class DashboardProxy(ProxyProcess):
    """`strangler serve`, the dashboard on its admin listener."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"

    def has(self, path: str) -> bool:
        """Whether the admin listener serves `path` (anything but a 404)."""
        try:
            self.api(path)
        except urllib.error.HTTPError as exc:
            return exc.code != 404
        return True

    def api(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET (or with `body`, POST with the token) an admin API path: its JSON."""
        data = None if body is None else json.dumps(body).encode()
        headers = {**AUTH, "Content-Type": "application/json"} if body is not None else AUTH
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())


@pytest.fixture(scope="module")
def proxy(
    upstreams: tuple[Recorder, Recorder], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DashboardProxy]:
    monolith, payment = upstreams
    work = tmp_path_factory.mktemp("dashboard")
    table = Table(
        work / "routes.yaml",
        {"monolith": monolith.url, "payment": payment.url},
        ROUTES,
        default="monolith",
    )
    args = ["--routes", str(table.write()), "--state-dir", str(work / "var")]
    running = DashboardProxy(args, {"STRANGLER_ADMIN_TOKEN": TOKEN})
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def page(browser: Any, proxy: DashboardProxy) -> Iterator[Any]:
    """A fresh tab (its own sessionStorage) on the dashboard, failing the test on a script
    error or a Content-Security-Policy violation."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    tab.on(
        "console",
        lambda message: (
            problems.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    tab.set_default_timeout(10_000)
    tab.goto(proxy.url + "/dashboard?poll=500")  # reads every 0.5 s: shorter waits
    try:
        yield tab
    finally:
        context.close()
    assert not problems, problems


def wait_for_version(proxy: DashboardProxy, version: int) -> None:
    wait_until(
        lambda: proxy.api("/api/v1/routes/status")["served_version"] == version,
        what=f"the proxy to serve version {version}",
    )
