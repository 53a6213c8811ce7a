"""Rollouts and per-arm statistics on the dashboard.

The page's side of the admin API contract first, with the rollouts and stats answers given by
the test (Playwright answers those two paths, the real proxy every other): percentiles and what
the monolith still serves are shown, and each rollout button sends its action with the reason
and the token, and shows the API's refusal inline. Then pause and abort from the page against
the proxy's own rollout API."""

from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import TOKEN, DashboardProxy, expect, unavailable
from tests.functional.proxy_support import get

NOW = time.time()


def arm(requests: int, p95: float, errors: int = 0) -> dict[str, Any]:
    jitter = random.uniform(0.85, 1.15)  # a live-looking sparkline
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": errors / requests if requests else 0.0,
        "p50": round(p95 * 0.4 * jitter, 4),
        "p95": round(p95 * jitter, 4),
        "p99": round(p95 * 2.1 * jitter, 4),
    }


def stats_answer() -> dict[str, Any]:
    return {
        "window": 60,
        "now": time.time(),
        "routes": {
            "orders": {"monolith": arm(750, 0.0121, 2), "payment": arm(250, 0.0084)},
            "payments": {"monolith": arm(420, 0.0213)},
            "catalog": {"payment": arm(610, 0.0062)},
            "reviews": {"monolith": arm(90, 0.0305, 1)},
        },
        "legacy_paths": [
            {"template": "GET /api/v1/orders/{id}", "requests": 731},
            {"template": "GET /api/v1/payments/{id}", "requests": 402},
            {"template": "GET /api/v1/users/{id}/cart", "requests": 188},
            {"template": "POST /api/v1/checkout", "requests": 64},
            {"template": "GET /static/app.css", "requests": 12},
        ],
    }


def check(name: str, value: float, threshold: float, passed: bool = True) -> dict[str, Any]:
    return {"name": name, "value": value, "threshold": threshold, "passed": passed, "message": ""}


def rollout(state: str = "baking") -> dict[str, Any]:
    return {
        "route": "orders",
        "to": "payment",
        "from": "monolith",
        "state": state,
        "step": 1,
        "steps": [5, 25, 50, 100],
        "weight": 25,
        "bake_seconds": 120,
        "step_started": NOW - 50,
        "due": NOW + 70,
        "started": NOW - 400,
        "updated": NOW - 5,
        "driver": "proxy-a:4121",
        "reason": "payment service passed a week of shadow",
        "author": "ana",
        "message": "",
        "paused_at": None,
        "history": [
            {
                "time": NOW - 400,
                "event": "started",
                "step": 0,
                "weight": 0,
                "version": None,
                "analysis": None,
                "message": "steps 5, 25, 50, 100 %; bake 2m",
            },
            {
                "time": NOW - 290,
                "event": "step",
                "step": 0,
                "weight": 5,
                "version": 3,
                "analysis": None,
                "message": "",
            },
            {
                "time": NOW - 50,
                "event": "step",
                "step": 1,
                "weight": 25,
                "version": 4,
                "analysis": None,
                "message": "analysis passed",
            },
        ],
        "last_analysis": {
            "passed": True,
            "checks": [
                check("error rate delta", 0.0007, 0.01),
                check("p95 ratio", 0.82, 1.2),
                check("shadow mismatch", 0.004, 0.01),
                check("requests", 250, 100),
            ],
            "arms": {},
        },
    }


class FakeRollouts:
    """Answers /api/v1/stats and /api/v1/rollouts… in the page's place; keeps the actions."""

    def __init__(self) -> None:
        self.current = rollout()
        self.actions: list[tuple[str, dict[str, Any], str | None]] = []

    def stats(self, route: Any) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(stats_answer()))

    def rollouts(self, route: Any) -> None:
        request = route.request
        if request.method == "GET":
            body = json.dumps([self.current])
            route.fulfill(status=200, content_type="application/json", body=body)
            return
        action = request.url.rsplit("/", 1)[1]
        self.actions.append((action, request.post_data_json, request.headers.get("authorization")))
        if action == "abort":
            problem = {
                "type": "urn:strangler:problem:rollout-refused",
                "title": "rollout refused",
                "status": 409,
                "detail": "the rollout of 'orders' is rolling-back: nothing to abort",
            }
            route.fulfill(
                status=409, content_type="application/problem+json", body=json.dumps(problem)
            )
            return
        self.current = {**self.current, "state": "paused", "paused_at": time.time()}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(self.current))


def test_rollouts_and_arm_statistics_as_the_contract_gives_them(
    page: Any, proxy: DashboardProxy
) -> None:
    fake = FakeRollouts()

    def ledger_without_paths(route: Any) -> None:  # the faked stats' paths are the ones shown
        answer = route.fetch()
        body = answer.json()
        body.pop("legacy_paths", None)
        route.fulfill(response=answer, json=body)

    page.route(re.compile(r".*/api/v1/ledger(\?.*)?$"), ledger_without_paths)
    page.route(re.compile(r".*/api/v1/stats(\?.*)?$"), fake.stats)
    page.route(re.compile(r".*/api/v1/rollouts(/.*)?$"), fake.rollouts)
    page.evaluate(f"() => sessionStorage.setItem('strangler.admin-token', '{TOKEN}')")
    page.reload()
    for path in ("/api/v1/orders", "/api/v1/payments/7", "/unrouted"):
        get(proxy.external, path)

    payment = page.locator('#routes [data-route="orders"] tr[data-arm="payment"]')
    expect(payment).to_contain_text("250")
    expect(page.locator("#routes-note")).to_contain_text("last 60 s")
    expect(page.locator("#routes thead").first).to_contain_text("p99")
    legacy = page.locator("#legacy li")
    expect(legacy).to_have_count(5)
    expect(legacy.first).to_contain_text("GET /api/v1/orders/{id}")
    expect(legacy.first).to_contain_text("731")

    card = page.locator('#rollouts [data-route="orders"]')
    expect(card.locator(".badge")).to_have_text("baking")
    expect(card).to_contain_text("step 2/4 · 25 % to payment")
    expect(card.locator(".checks li.pass")).to_have_count(4)
    expect(card.get_by_role("button", name="Resume")).to_be_disabled()

    card.get_by_role("button", name="Pause").click()
    reason = card.get_by_label("Reason for pausing the rollout of orders")
    expect(reason).to_be_focused()
    card.get_by_role("button", name="Pause rollout").click()
    expect(card.get_by_role("alert")).to_contain_text("Give a reason")
    assert fake.actions == []
    reason.fill("latency spike on payment")
    card.get_by_role("button", name="Pause rollout").click()
    expect(card.locator(".badge")).to_have_text("paused")
    assert fake.actions == [("pause", {"reason": "latency spike on payment"}, f"Bearer {TOKEN}")]
    expect(card.get_by_role("button", name="Resume")).to_be_enabled()
    expect(card.get_by_role("button", name="Pause", exact=True)).to_be_disabled()

    card.get_by_role("button", name="Abort").click()
    card.get_by_label("Reason for aborting the rollout of orders").fill("give up")
    card.get_by_role("button", name="Abort rollout").click()
    expect(card.get_by_role("alert")).to_contain_text("409: the rollout of 'orders' is")
    assert fake.actions[-1][0] == "abort"

    target = os.environ.get("STRANGLER_TEST_SCREENSHOT")
    if target:  # beside the page test's: FILE-rollouts.png
        page.wait_for_timeout(4000)  # a few polls: the sparklines have points
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=str(Path(target).with_suffix("")) + "-rollouts.png", full_page=True)


def test_pause_and_abort_a_real_rollout_from_the_page(page: Any, proxy: DashboardProxy) -> None:
    pytest.importorskip("proxy.admin.rollout")
    if not proxy.has("/api/v1/rollouts"):
        unavailable("the admin app does not serve /api/v1/rollouts (create_admin_app)")
    started = proxy.api(
        "/api/v1/rollouts",
        {
            "route": "search",
            "to": "payment",
            "steps": [10, 50, 100],
            "bake": "1h",
            "reason": "search moves to the payment team",
        },
    )
    assert started["route"] == "search"
    page.evaluate(f"() => sessionStorage.setItem('strangler.admin-token', '{TOKEN}')")
    page.reload()
    card = page.locator('#rollouts [data-route="search"]')
    expect(card.get_by_role("button", name="Pause")).to_be_enabled()
    card.get_by_role("button", name="Pause").click()
    card.get_by_label("Reason for pausing the rollout of search").fill("a human looks first")
    card.get_by_role("button", name="Pause rollout").click()
    expect(card.locator(".badge")).to_have_text("paused")
    assert proxy.api("/api/v1/rollouts/search")["state"] == "paused"

    card.get_by_role("button", name="Abort").click()
    card.get_by_label("Reason for aborting the rollout of search").fill("not this week")
    card.get_by_role("button", name="Abort rollout").click()
    # The proxy's own rollout driver acts on the request: the route is put back, the card says so.
    expect(card.locator(".badge")).to_have_text("aborted", timeout=15_000)
    found = proxy.api("/api/v1/rollouts/search")
    assert found["state"] == "aborted"
    said = {e["event"]: e.get("message") or "" for e in found["history"]}
    assert "a human looks first" in said["paused"]
    assert "not this week" in said["aborted"], found["history"]
