"""The dashboard in headless Chromium, on a real proxy with traffic: what an operator sees (the
routes, their states and live traffic, the served version, the ledger, the shadow's
differences once the token is given) and what they do from it (a flip, refused or committed)."""

from __future__ import annotations

import os
import re
from typing import Any

from proxy.admin.dashboard import CSP
from tests.browser.conftest import TOKEN, DashboardProxy, expect, wait_for_version
from tests.functional.proxy_support import get, wait_until


def send(proxy: DashboardProxy, path: str, times: int) -> None:
    for _ in range(times):
        assert get(proxy.external, path).status == 200


def requests_shown(page: Any, route: str) -> int:
    return int(
        page.locator(f'#routes [data-route="{route}"] .route-requests').get_attribute(
            "data-requests"
        )
    )


def test_the_page_shows_the_routes_their_states_and_live_traffic(
    page: Any, proxy: DashboardProxy
) -> None:
    send(proxy, "/api/v1/orders", 10)
    send(proxy, "/api/v1/payments/7", 5)
    routes = page.locator("#routes")
    badge = routes.locator('[data-route="orders"] .badge')
    assert badge.text_content() == "canary 20 %"
    assert routes.locator('[data-route="catalog"] .badge').text_content() == "moved to payment"
    assert routes.locator('[data-route="payments"] .badge').text_content() == "shadowed to payment"
    assert routes.locator('[data-route="reviews"] .badge').text_content() == "legacy"
    assert page.locator("#served-version").text_content() == "version 1"
    assert page.locator("#sync-state").text_content() == "in sync"
    assert page.locator("#live-text").text_content() == "live"
    arms = routes.locator('[data-route="orders"] tbody tr')
    assert [a.get_attribute("data-arm") for a in arms.all()] == ["monolith", "payment"]

    wait_until(lambda: requests_shown(page, "orders") >= 10, what="the orders traffic shown")
    before = requests_shown(page, "orders")
    send(proxy, "/api/v1/orders", 7)
    wait_until(lambda: requests_shown(page, "orders") >= before + 7, what="the new requests shown")

    ledger = page.locator("#ledger")
    assert (
        ledger.locator('[data-route="orders"] summary .badge').text_content()
        == "canary 20% to payment"
    )
    ledger.locator('[data-route="orders"] summary').click()
    assert "v1" in ledger.locator('[data-route="orders"] .timeline').text_content()


def test_shadow_examples_need_the_token_kept_in_the_tab_only(
    page: Any, proxy: DashboardProxy
) -> None:
    send(proxy, "/api/v1/payments/7", 5)
    shadow = page.locator("#shadow")
    prompt = shadow.get_by_role("button", name="Enter the admin token")
    prompt.click()
    token = page.get_by_label("Token", exact=True)
    assert token.is_visible()
    token.fill(TOKEN)
    page.get_by_label("Your name").fill("ana")
    page.get_by_role("button", name="Save token").click()
    assert page.locator("#token-panel").is_hidden()

    report = shadow.locator('[data-route="payments"]')
    wait_until(lambda: report.count() == 1, what="the shadow report")
    field = report.locator("details", has_text="$.currency")
    field.locator("summary").click()
    pair = field.locator(".pair").first
    assert pair.locator("pre").all_text_contents() == ['"EUR"', '"usd"']

    storage = page.evaluate("() => [sessionStorage.length, localStorage.length, document.cookie]")
    assert storage == [2, 0, ""]
    assert TOKEN in page.evaluate("() => Object.values(sessionStorage)")


def test_a_flip_from_the_page_changes_the_table(page: Any, proxy: DashboardProxy) -> None:
    form = page.locator("#flip-form")
    result = page.locator("#flip-result")
    form.get_by_label("Route", exact=True).select_option("reviews")
    form.get_by_label("Upstream", exact=True).select_option("payment")

    # Without the token: refused, said inline, nothing changes.
    form.get_by_label("Reason", exact=True).fill("reviews served by the payment team")
    form.get_by_role("button", name="Apply").click()
    expect(result.get_by_role("alert")).to_contain_text("401: a valid bearer token is required")

    page.evaluate(f"() => sessionStorage.setItem('strangler.admin-token', '{TOKEN}')")
    # A split that does not add up: the API's problem, with its reason, inline.
    form.get_by_text("a split").click()
    form.get_by_label("monolith", exact=True).fill("70")
    form.get_by_label("payment", exact=True).fill("20")
    expect(page.locator("#flip-split-sum")).to_have_text(re.compile(r"^Total 90 %"))
    form.get_by_role("button", name="Apply").click()
    expect(result.get_by_role("alert")).to_contain_text("422: ")

    # A preview commits nothing; then the change itself.
    form.get_by_label("payment", exact=True).fill("30")
    form.get_by_role("button", name="Preview").click()
    expect(result).to_contain_text("Would commit version 2")
    expect(result).to_contain_text("split")
    assert proxy.api("/api/v1/routes")["version"] == 1
    form.get_by_role("button", name="Apply").click()
    expect(result).to_contain_text("Committed version 2")

    current = proxy.api("/api/v1/routes")
    assert current["version"] == 2
    assert current["reason"] == "reviews served by the payment team"
    reviews = next(r for r in current["table"]["routes"] if r["name"] == "reviews")
    assert reviews["split"] == {"monolith": 70, "payment": 30}
    wait_for_version(proxy, 2)
    expect(page.locator('#routes [data-route="reviews"] .badge')).to_have_text("canary 30 %")
    expect(page.locator("#served-version")).to_have_text("version 2")
    ledger = page.locator('#ledger [data-route="reviews"]')
    ledger.locator("summary").click()
    expect(ledger.locator(".timeline")).to_contain_text("reviews served by the payment team")


def test_the_admin_listener_serves_the_page_and_nothing_beside_it(proxy: DashboardProxy) -> None:
    """On the real listener (raw requests, no client normalising the path)."""
    root = get(proxy.admin, "/")
    assert root.status == 302
    assert root.value("location") == b"/dashboard"
    page = get(proxy.admin, "/dashboard")
    assert page.status == 200
    assert page.value("content-type") == b"text/html; charset=utf-8"
    assert page.value("content-security-policy") == CSP.encode()
    assert page.value("x-content-type-options") == b"nosniff"
    for target in (
        "/dashboard/../../pyproject.toml",
        "/dashboard/%2e%2e/%2e%2e/pyproject.toml",
        "/dashboard/..%2f..%2fpyproject.toml",
        "/dashboard//etc/passwd",
        "/dashboard/app.js%2f..%2f..%2fdashboard.py",
    ):
        answer = get(proxy.admin, target)
        assert answer.status == 404, (target, answer.head)
        assert answer.value("content-type") == b"application/problem+json", target
    # The data plane never serves it: /dashboard there is the monolith's path like any other.
    assert b"Migration dashboard" not in get(proxy.external, "/dashboard").body


def test_a_screenshot_with_live_data(page: Any, proxy: DashboardProxy) -> None:
    """Saved where STRANGLER_TEST_SCREENSHOT says (to judge the design), else only rendered."""
    send(proxy, "/api/v1/orders", 20)
    send(proxy, "/api/v1/payments/7", 4)
    send(proxy, "/api/v1/products", 6)
    send(proxy, "/unrouted/path/1234", 3)
    page.evaluate(f"() => sessionStorage.setItem('strangler.admin-token', '{TOKEN}')")
    page.reload()
    wait_until(lambda: page.locator("#shadow [data-route]").count() > 0, what="the shadow")
    assert re.fullmatch(r"version \d+", page.locator("#served-version").text_content() or "")
    target = os.environ.get("STRANGLER_TEST_SCREENSHOT")
    if target:
        page.wait_for_timeout(4000)  # a few polls: the sparklines have points
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=target, full_page=True)
