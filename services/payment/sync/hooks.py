"""The payment sync's hooks, named by `payments.yaml`: the event payload in the API's shape, and
the service's own schema migration for `strangler sync migrate`/`--migrate`.

`payload` is `events.payment_payload` for a row given as a mapping (legacy names, which are the
service's names too): the API's JSON of the payment plus `refund_reason`; the engine adds
`row_version` and `origin` (`datasync.outbox.event_payload`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Engine

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
