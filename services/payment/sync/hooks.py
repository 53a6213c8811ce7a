"""The payment sync's hooks, named by `payments.yaml`: the event payload in the API's shape;
the service's own schema migration for `strangler sync migrate`/`--migrate`; and `refine`,
the top of the service's id range (legacy ids above it are the monolith's own again after
SQLite's jump, `ids.py`), which the declaration has no key for.

`payload` is `events.payment_payload` for a row given as a mapping (legacy names, which are the
service's names too): the API's JSON of the payment plus `refund_reason`; the engine adds
`row_version` and `origin` (`datasync.outbox.event_payload`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy.engine import Engine

from datasync.spec import Spec
from services.payment.ids import SERVICE_ID_START
from services.payment.schemas import PaymentOut

API_FIELDS = tuple(PaymentOut.model_fields)


def payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """The API's JSON of the payment in `row`, plus its refund_reason."""
    body: dict[str, Any] = PaymentOut.model_validate(
        {name: row[name] for name in API_FIELDS}
    ).model_dump(mode="json")
    body["refund_reason"] = row["refund_reason"]
    return body


def migrate(engine: Engine) -> str | None:
    """The payment service's Alembic migrations (and the sync's tables); returns the revision."""
    from services.payment.db import current_revision, upgrade

    upgrade(engine)
    return current_revision(engine)


def refine(spec: Spec) -> Spec:
    """The declared sync with the service's id range closed at `SERVICE_ID_START`."""
    if spec.key_ceiling is not None:
        return spec
    return replace(spec, key_ceiling=SERVICE_ID_START)
