"""After cutover a customer pays in the service while the monolith cancels the order (its cancel
checks only its own payments table): the order ends cancelled with money taken. To-legacy still
applies the payment but counts a `conflict` and warns; reconcile reports the payment as
`cancelled_order_with_live_payment`, counted in the drift (exit 3). Nothing on clean data."""

from __future__ import annotations

import json
import logging
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from datasync.cli import app
from legacy_monolith.app import create_app
from services.payment.schemas import LegacyOrder
from services.payment.sync import backfill, reconcile, to_legacy_once
from tests.legacy_monolith.conftest import make_settings, place_order, register
from tests.services.payment.sync.conftest import Pair
from tests.services.payment.sync.test_to_legacy import service_payment

CATEGORY = "cancelled_order_with_live_payment"


def test_clean_data_reports_no_live_payment_on_a_cancelled_order(pair: Pair) -> None:
    backfill(pair.legacy, pair.service)
    report = reconcile(pair.legacy, pair.service, settle=0)
    assert (report.flagged, report.drift) == ([], 0)
    assert report.as_dict()[CATEGORY] == []
    assert report.as_dict()["counts"][CATEGORY] == 0


def test_a_service_payment_on_an_order_the_monolith_cancelled_is_reported(
    pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    backfill(pair.legacy, pair.service)
    with TestClient(create_app(make_settings(pair.legacy_url))) as shop:
        user_id, headers = register(shop)
        placed = place_order(shop, headers)
        order = LegacyOrder(
            id=int(str(placed["id"])),
            user_id=user_id,
            status="pending_payment",
            total=Decimal(str(placed["total"])),
            currency=str(placed["currency"]),
        )
        # Cutover: the customer pays in the service (authorized, then captured)...
        paid = service_payment(pair, order)
        # ... and the monolith, which has not seen that payment yet, lets the order be cancelled.
        cancelled = shop.post(f"/api/v1/orders/{order.id}/cancel", headers=headers)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"

    # Seen from the service side already (the payment is not in the monolith yet).
    early = reconcile(pair.legacy, pair.service, settle=0)
    assert [(i.key, i.legacy_state, i.service_state) for i in early.flagged] == [
        (paid, None, "captured")
    ]

    with caplog.at_level(logging.WARNING, logger="strangler.sync.to_legacy"):
        result = to_legacy_once(pair.writer, pair.service)
    assert result.outcomes == {"conflict": 2}  # applied (the record is true), but flagged
    assert pair.legacy_row(paid)["status"] == "captured"  # type: ignore[index]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "CONFLICT" in m and f"payment {paid}" in m and f"order {order.id}" in m for m in warnings
    ), warnings

    args = ["--legacy-db", pair.legacy_url, "--service-db", pair.service_url, "--settle", "0"]
    runner = CliRunner()
    shown = runner.invoke(app, ["reconcile", "--json", *args])
    assert shown.exit_code == 3, shown.output
    report = json.loads(shown.stdout)
    assert (report["drift"], report["passed"]) == (1, False)
    assert report["counts"] == {"missing": 0, "extra": 0, "differing": 0, CATEGORY: 1}
    assert report[CATEGORY] == [
        {
            "payment_id": paid,
            "order_id": order.id,
            "legacy_status": "captured",
            "service_status": "captured",
            "saga": "none",  # no compensation has run: nothing repairs it yet
        }
    ]
    table = runner.invoke(app, ["reconcile", *args])
    assert table.exit_code == 3
    assert str(paid) in table.stdout  # a line of the drift table (cells wrap in narrow terminals)
    assert "1 live payment(s) on a cancelled order" in table.stdout
