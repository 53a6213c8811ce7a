"""Declared compensation against a real payment service and a real monolith (both uvicorn on
127.0.0.1, port 0; the legacy SQLite database seeded by the monolith's own code): the race of a
payment authorized in the service on an order the monolith then cancels is closed by a saga that
voids (or refunds) it through the service's API, once, with one Idempotency-Key."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from sqlalchemy import create_engine, select
from sqlalchemy.dialects import oracle
from sqlalchemy.schema import CreateIndex, CreateTable

from datasync import compensate as comp
from datasync.compensate import (
    JOB_COMPENSATE,
    CompensationResult,
    Options,
    compensate_once,
    open_violations,
    retry_failed,
    run_compensation,
    saga_summary,
    service_client,
)
from datasync.saga import saga_metadata, sync_saga_steps, sync_sagas
from datasync.spec import Action, Compensation, Field, Follow, Spec, Watch
from services.payment import billing
from services.payment.db import make_engine, make_session_factory, utcnow
from services.payment.schemas import LegacyOrder, PaymentIn
from tests.services.payment.conftest import (  # noqa: F401 (fixtures)
    Customer,
    ServerThread,
    ServiceFactory,
    Shop,
    legacy_url,
    monolith,
    serving,
    shop,
    start_service,
)

RULE = "cancelled_order_with_live_payment"
REFUND = Action("POST", "/api/v1/payments/{id}/refund", {"reason": "order {order_id} cancelled"})
COMPENSATION = Compensation(
    name=RULE,
    watch=Watch(table="orders", key="id", changed="updated_at", column="state", value="cancelled"),
    match="order_id",
    state_field="status",
    actions={
        "authorized": Action("POST", "/api/v1/payments/{id}/void"),
        "captured": REFUND,
        "partially_refunded": REFUND,
    },
)
FIELDS = (
    Field("id", "bigint", "id", nullable=False),
    Field("order_id", "bigint", "order_id", nullable=False),
    Field("user_id", "bigint", "user_id", nullable=False),
    Field("amount", "decimal", "amount", nullable=False, precision=12, scale=2),
    Field("currency", "string", "currency", nullable=False, length=3),
    Field("method", "string", "method", nullable=False, length=16),
    Field("status", "string", "status", nullable=False, length=20),
    Field("card_brand", "string", "card_brand", length=16),
    Field("card_last4", "string", "card_last4", length=4),
    Field("provider_ref", "string", "provider_ref", length=64),
    Field("failure_code", "string", "failure_code", length=40),
    Field("refunded_amount", "decimal", "refunded_amount", nullable=False, precision=12, scale=2),
    Field("refund_reason", "string", "refund_reason", length=200),
    Field("created_at", "timestamp", "created_at", nullable=False),
    Field("updated_at", "timestamp", "updated_at", nullable=False),
)
CARD = {"method": "card", "card_token": "tok_visa"}
FAST = Options(retry_base=0.05, retry_cap=0.1)


def payment_spec(**changes: Any) -> Spec:
    """The payment declaration's compensation, built in code (as `payments.yaml` declares it)."""
    spec = Spec(
        name="payments",
        legacy_table="payments",
        service_table="payments",
        key="id",
        changed="updated_at",
        fields=FIELDS,
        origin_column="origin",
        version_column="row_version",
        compensations=(COMPENSATION,),
    )
    return replace(spec, **changes) if changes else spec


class World:
    """One test's service (its own SQLite database), engines on both databases, and the shop."""

    def __init__(self, front: Shop, service: ServerThread, service_url: str, legacy: str) -> None:
        self.shop = front
        self.service = service
        self.engine = make_engine(service_url)
        self.legacy = create_engine(
            legacy, connect_args={"check_same_thread": False, "timeout": 30}
        )
        self.client = service_client(service.url, front.staff.token)

    def close(self) -> None:
        self.client.close()
        self.engine.dispose()
        self.legacy.dispose()

    def pay(self, who: Customer, order_id: int, *, capture: bool = False) -> int:
        body = {"order_id": order_id, **CARD, "capture": capture}
        made = httpx.post(f"{self.service.url}/api/v1/payments", json=body, headers=who.headers)
        assert made.status_code == 201, made.text
        return int(made.json()["id"])

    def payment(self, payment_id: int) -> dict[str, Any]:
        got = self.client.get(f"/api/v1/payments/{payment_id}")
        assert got.status_code == 200, got.text
        return dict(got.json())

    def once(self, spec: Spec | None = None, **kwargs: Any) -> CompensationResult:
        client = kwargs.pop("client", self.client)
        return compensate_once(spec or payment_spec(), self.legacy, self.engine, client, **kwargs)

    def saga(self, row_key: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(sync_sagas).where(sync_sagas.c.row_key == row_key)).one()
        return dict(row._mapping)

    def steps(self, row_key: int) -> list[tuple[str, str]]:
        saga_id = self.saga(row_key)["id"]
        t = sync_saga_steps
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.c.outcome, t.c.detail).where(t.c.saga_id == saga_id).order_by(t.c.step)
            ).all()
        return [(str(r.outcome), str(r.detail)) for r in rows]

    def race(self, *, capture: bool = False) -> tuple[int, int]:
        """Order placed, paid in the service, cancelled in the monolith (which has not seen the
        payment: no to-legacy ran). Returns (order id, payment id)."""
        alice = self.shop.customer()
        order = int(self.shop.order(alice)["id"])
        paid = self.pay(alice, order, capture=capture)
        self.shop.cancel(alice, order)
        return order, paid


@pytest.fixture
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """A fresh service on its own database (SQLite, or PostgreSQL when the test asks), in front
    of the session's monolith."""
    url = f"sqlite:///{tmp_path / 'service.db'}"
    if getattr(request, "param", "sqlite") == "postgres":
        url = request.getfixturevalue("postgres_databases")()
    started: ServiceFactory = request.getfixturevalue("start_service")
    made = World(
        request.getfixturevalue("shop"),
        started(url),
        url,
        request.getfixturevalue("legacy_url"),
    )
    yield made
    made.close()


@pytest.mark.parametrize("world", ["sqlite", "postgres"], indirect=True)
def test_the_race_is_voided_once_through_the_api(world: World) -> None:
    order, paid = world.race()
    assert world.payment(paid)["status"] == "authorized"

    first = world.once()
    assert first.outcomes == {"done": 1}, first.as_dict()
    assert first.created == 1
    assert world.payment(paid)["status"] == "voided"
    saga = world.saga(paid)
    assert (saga["state"], saga["outcome"], saga["attempts"], saga["http_status"]) == (
        "done",
        "done",
        1,
        200,
    )
    assert (saga["watched_key"], saga["row_state"]) == (order, "authorized")
    assert saga["action"] == f"POST /api/v1/payments/{paid}/void"
    assert saga["idem_key"] == f"strangler-payments-{RULE}-{paid}"
    assert saga["finished_at"] is not None
    assert [outcome for outcome, _ in world.steps(paid)] == ["found", "call", "done"]

    again = world.once()
    assert (again.created, again.outcomes) == (0, {})
    assert [outcome for outcome, _ in world.steps(paid)] == ["found", "call", "done"]
    with world.engine.connect() as conn, world.legacy.connect() as legacy:
        summary = saga_summary(payment_spec(), conn)
        assert open_violations(payment_spec(), legacy, conn) == []
    assert summary["counts"]["done"] == 1
    assert (summary["open"], summary["oldest_open_seconds"], summary["failures"]) == (0, None, [])


def test_a_captured_payment_is_refunded_in_full(world: World) -> None:
    order, paid = world.race(capture=True)
    result = world.once()
    assert result.outcomes == {"done": 1}
    payment = world.payment(paid)
    assert payment["status"] == "refunded"
    assert Decimal(payment["refunded_amount"]) == Decimal(payment["amount"])
    assert world.saga(paid)["action"] == f"POST /api/v1/payments/{paid}/refund"
    assert world.saga(paid)["body"] == f'{{"reason":"order {order} cancelled"}}'


def test_a_payment_authorized_after_the_cursor_passed_the_cancel_is_caught(
    world: World,
) -> None:
    # No look-back and no sweep due: only the service rows' own cursor (b) can find it.
    spec = payment_spec(follow=Follow(lookback=0.0))
    alice = world.shop.customer()
    placed = world.shop.order(alice)
    snapshot = LegacyOrder(
        id=int(placed["id"]),
        user_id=alice.id,
        status="pending_payment",
        total=Decimal(str(placed["total"])),
        currency=str(placed["currency"]),
    )
    world.shop.cancel(alice, snapshot.id)
    assert world.once(spec).created == 0  # the cancel is passed by cursor (a), and swept

    # The service read the order before the cancel and commits its payment only now.
    sessions = make_session_factory(world.engine)
    body = PaymentIn(order_id=snapshot.id, method="card", card_token="tok_visa", capture=False)
    with sessions() as session, session.begin():
        payment, _ = billing.create_payment(
            session, snapshot, body, 3_999_999_999_999_001, utcnow()
        )
        paid = payment.id

    caught = world.once(spec, options=Options(sweep=3600))
    assert (caught.found, caught.swept, caught.outcomes) == ({"service": 1}, False, {"done": 1})
    assert world.payment(paid)["status"] == "voided"
    assert world.steps(paid)[0][1].startswith("service row changed")


def failing_front(target: str, failures: int, seen: list[str]) -> FastAPI:
    """A tiny real upstream in front of the service: 503 to the first `failures` calls, then a
    forwarder; records each call's Idempotency-Key."""
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def relay(path: str, request: Request) -> Response:
        seen.append(request.headers.get("idempotency-key", ""))
        if len(seen) <= failures:
            return Response('{"status":503}', 503, media_type="application/problem+json")
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with httpx.AsyncClient(base_url=target, timeout=10) as forward:
            body = await request.body()
            answer = await forward.request(
                request.method, f"/{path}", headers=headers, content=body
            )
        return Response(
            answer.content, answer.status_code, media_type=answer.headers.get("content-type")
        )

    return app


def test_a_503_is_retried_with_backoff_and_the_same_key_until_done(world: World) -> None:
    _, paid = world.race()
    seen: list[str] = []
    with serving(failing_front(world.service.url, 2, seen)) as front:
        client = service_client(front.url, world.shop.staff.token)
        outcomes = [world.once(client=client, options=FAST).outcomes]
        assert world.saga(paid)["state"] == "retrying"
        assert world.once(client=client, options=FAST).outcomes == {}  # not due yet: no call
        for _ in range(40):
            time.sleep(0.1)
            outcomes.append(world.once(client=client, options=FAST).outcomes)
            if world.saga(paid)["state"] == "done":
                break
        client.close()
    assert [o for o in outcomes if o] == [{"retrying": 1}, {"retrying": 1}, {"done": 1}]
    assert seen == [f"strangler-payments-{RULE}-{paid}"] * 3
    assert world.payment(paid)["status"] == "voided"
    saga = world.saga(paid)
    assert (saga["state"], saga["attempts"], saga["http_status"]) == ("done", 3, 200)
    assert [outcome for outcome, _ in world.steps(paid)] == [
        "found",
        "call",
        "retrying",
        "call",
        "retrying",
        "call",
        "done",
    ]


def test_a_payment_voided_meanwhile_is_done_already(world: World) -> None:
    _, paid = world.race()
    assert world.once(options=Options(batch=0)).created == 1  # found, not called yet
    voided = world.client.post(f"/api/v1/payments/{paid}/void")  # by someone else
    assert voided.status_code == 200
    result = world.once()
    assert result.outcomes == {"already": 1}
    saga = world.saga(paid)
    assert (saga["state"], saga["outcome"], saga["http_status"]) == ("done", "already", 409)
    assert "not-voidable" in saga["last_error"]


def test_a_rejected_call_fails_once_and_reconcile_shows_it(world: World) -> None:
    broken = replace(
        COMPENSATION, actions={"authorized": Action("POST", "/api/v1/payments/{id}/nope")}
    )
    spec = payment_spec(compensations=(broken,))
    order, paid = world.race()
    assert world.once(spec).outcomes == {"rejected": 1}
    assert world.once(spec).outcomes == {}  # permanent: never called again
    with world.engine.connect() as conn, world.legacy.connect() as legacy:
        summary = saga_summary(spec, conn)
        found = open_violations(spec, legacy, conn, states=("authorized", "captured"))
    assert summary["counts"]["failed"] == 1
    assert summary["failures"][0]["row_key"] == paid
    assert summary["failures"][0]["http_status"] == 404
    assert [v.as_dict() for v in found] == [
        {
            "rule": RULE,
            "row_key": paid,
            "watched_key": order,
            "state": "authorized",
            "action": f"POST /api/v1/payments/{paid}/nope",
            "saga_state": "failed",
            "saga_outcome": "rejected",
        }
    ]


def test_the_runner_keeps_passing_until_stopped(world: World) -> None:
    _, paid = world.race()
    stop = threading.Event()
    passes: list[CompensationResult] = []

    def seen(result: CompensationResult) -> None:
        passes.append(result)
        if world.saga(paid)["state"] == "done":
            stop.set()

    runner = threading.Thread(
        target=run_compensation,
        args=(payment_spec(), world.legacy, world.engine, world.client),
        kwargs={"stop": stop, "interval": 0.05, "on_pass": seen},
    )
    runner.start()
    runner.join(timeout=15)
    stop.set()
    assert not runner.is_alive()
    assert passes[0].swept
    assert world.payment(paid)["status"] == "voided"


def test_an_operator_retries_a_failed_saga_once_the_cause_is_fixed(world: World) -> None:
    """A saga that failed (a 4xx) is never called again by itself; `retry_failed` puts it back
    with a fresh key (the service would replay the stored 404 for the old one), and the fixed
    declaration's call then voids the payment."""
    broken = replace(
        COMPENSATION, actions={"authorized": Action("POST", "/api/v1/payments/{id}/nope")}
    )
    _, paid = world.race()
    assert world.once(payment_spec(compensations=(broken,))).outcomes == {"rejected": 1}
    first_key = world.saga(paid)["idem_key"]
    assert retry_failed(payment_spec(), world.engine) == 1
    again = world.saga(paid)
    assert (again["state"], again["attempts"]) == ("pending", 0)
    assert again["idem_key"] != first_key
    assert again["idem_key"].startswith(first_key + "-authorized-retry-")
    assert again["action"] == f"POST /api/v1/payments/{paid}/void"  # the declaration as it is now
    assert world.once(payment_spec()).outcomes == {"done": 1}
    assert world.payment(paid)["status"] == "voided"
    assert retry_failed(payment_spec(), world.engine) == 0  # nothing failed any more


def test_one_runner_per_sync_holds_the_lease(world: World) -> None:
    from datasync.lease import AlreadyRunning, JobLease

    held = JobLease(world.engine, payment_spec().name, JOB_COMPENSATE)
    with held, pytest.raises(AlreadyRunning, match="another compensate is running"):
        run_compensation(
            payment_spec(),
            world.legacy,
            world.engine,
            world.client,
            stop=threading.Event(),
        )


def test_every_statement_compiles_for_oracle() -> None:
    spec = payment_spec()
    dialect = oracle.dialect()  # type: ignore[no-untyped-call]
    now = utcnow()
    mark = (now, 1)
    statements: list[Any] = [
        comp.watched_changed_query(COMPENSATION.watch, now, mark, 500),
        comp.triggered_keys_query(COMPENSATION.watch, 1, 500),
        comp.triggered_among_query(COMPENSATION.watch, [1, 2]),
        comp.service_rows_query(spec, COMPENSATION, [1, 2], ["authorized"]),
        comp.service_changed_query(spec, COMPENSATION, now, mark, 500),
        comp.row_state_query(spec, COMPENSATION, 1),
        comp.existing_sagas_query(spec, RULE, [1, 2]),
        comp.due_sagas_query(spec, now, 100),
        comp.cursor_query(spec, RULE, "watched"),
    ]
    for statement in statements:
        assert str(statement.compile(dialect=dialect))
    for table in saga_metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=dialect))
        assert "GENERATED BY DEFAULT AS IDENTITY" in ddl or table.name == "sync_saga_cursors"
        names = [table.name, *(c.name for c in table.columns)]
        names += [str(c.name) for c in table.constraints if c.name]
        for index in table.indexes:
            names.append(str(index.name))
            assert str(CreateIndex(index).compile(dialect=dialect))
        assert all(n == n.lower() and len(n) <= 30 for n in names), names
