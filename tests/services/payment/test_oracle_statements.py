"""Every statement the service runs, captured from a real run on SQLite (every route, the relay,
idempotency keys, id blocks), compiles for Oracle 19c and 23ai (CONVENTIONS.md rule 12)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Text, event
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement, visitors
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.schema import Column
from sqlalchemy.sql.selectable import Select

from services.payment.app import create_app
from tests.legacy_monolith.test_oracle_dialect import VERSIONS, oracle
from tests.services.payment.conftest import ServerThread, Shop, service_settings, serving
from tests.support import wait_until


@pytest.fixture(params=list(VERSIONS), ids=list(VERSIONS))
def dialect(request: pytest.FixtureRequest) -> Dialect:
    return oracle(VERSIONS[request.param])


def drive(url: str, shop: Shop) -> None:
    alice = shop.customer()
    staff = shop.staff.headers
    orders = [shop.order(alice)["id"] for _ in range(3)]
    card = {"method": "card", "card_token": "tok_visa"}
    keyed = {**alice.headers, "Idempotency-Key": "oracle-run"}
    with httpx.Client(base_url=url, headers=alice.headers) as http:
        paid = http.post("/api/v1/payments", json={"order_id": orders[0], **card}).json()
        http.post("/api/v1/payments", json={"order_id": orders[0], **card})  # 409
        body = {"order_id": orders[1], "capture": False, **card}
        held = http.post("/api/v1/payments", json=body, headers=keyed).json()
        http.post("/api/v1/payments", json=body, headers=keyed)  # replay
        http.post("/api/v1/payments", json={"order_id": orders[2], **card}, headers=keyed)  # 422
        http.post(f"/api/v1/payments/{held['id']}/capture", headers=staff)
        http.post(
            f"/api/v1/payments/{paid['id']}/refund",
            json={"amount": "0.01", "reason": "r"},
            headers={**staff, "Idempotency-Key": "refund-1"},
        )
        http.get(f"/api/v1/payments/{paid['id']}")
        http.get("/api/v1/payments", params={"order_id": orders[0], "status": "captured"})
        http.get("/api/v1/payments", params={"user_id": alice.id, "page": 2, "per_page": 1})
        http.get("/api/v1/payments", headers=staff)
        http.get("/readyz")
        http.get("/healthz")
        time.sleep(0.3)  # the key's TTL (0.2 s) under test: an expired key is deleted, then reused
        http.post("/api/v1/payments", json=body, headers=keyed)


@pytest.fixture(scope="module")
def captured(
    tmp_path_factory: pytest.TempPathFactory, shop: Shop, monolith: ServerThread
) -> list[ClauseElement]:
    statements: dict[str, ClauseElement] = {}

    def record(_conn: Any, clause: ClauseElement, *_args: Any) -> None:
        if isinstance(clause, ClauseElement) and not isinstance(clause, TextClause):
            statements.setdefault(str(clause), clause)

    url = f"sqlite:///{Path(tmp_path_factory.mktemp('oracle')) / 'payment.db'}"
    settings = service_settings(
        url, legacy_url=monolith.url, id_block_size=1, idempotency_ttl_seconds=0.2
    )
    app = create_app(settings)
    event.listen(app.state.services.engine, "before_execute", record)
    with serving(app) as server:
        drive(server.url, shop)
        relay = app.state.relay
        wait_until(lambda: relay.published >= 4, what="the relay to publish")
    return list(statements.values())


def test_the_run_captured_reads_and_writes(captured: list[ClauseElement]) -> None:
    for kind in (Select, Insert, Update, Delete):
        assert any(isinstance(s, kind) for s in captured), kind.__name__
    assert len(captured) > 15
    tables = {t.name for s in captured if isinstance(s, Update) for t in [s.table]}  # type: ignore[attr-defined]
    assert {"payments", "idempotency_keys", "id_blocks", "outbox", "leases"} <= tables


def test_every_statement_compiles_for_oracle(
    captured: list[ClauseElement], dialect: Dialect
) -> None:
    for statement in captured:
        sql = str(statement.compile(dialect=dialect))
        assert not re.search(r"\bLIMIT\b", sql), sql
        assert not re.search(r"\bIS (NOT )?(1|0|true|false)\b", sql), sql
        assert "ILIKE" not in sql, sql
    listing = [
        str(s.compile(dialect=dialect))
        for s in captured
        if isinstance(s, Select) and s._limit_clause is not None
    ]
    assert listing
    assert all("FETCH FIRST" in sql for sql in listing)


def test_no_text_column_in_a_where_clause(captured: list[ClauseElement]) -> None:
    for statement in captured:
        where = getattr(statement, "whereclause", None)
        if not isinstance(statement, Select | Update | Delete) or where is None:
            continue
        for element in visitors.iterate(where):
            if isinstance(element, Column):
                assert not isinstance(element.type, Text), f"{element} in WHERE of {statement}"
