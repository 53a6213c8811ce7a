"""A service's outbox table as the engine reads and writes it (the transactional outbox:
Richardson's Microservices Patterns, ch. 3; the payment service's `events.py` is the model).

Its columns are fixed (`spec.EventSource`): `id` (identity), `event_id`, `aggregate_id` (the
row's key), `event_type`, `row_version`, `payload` (JSON text), `created_at`, `published_at`.
Only the name is declared. This metadata is never used to create the table: the service owns it.

`row_version` is the row's version when the declaration names a `service.version` column (the
stale guard of to-legacy relies on it); without one, every change event carries 1 and a
refreshed table's deletion 0, so consumers of such a sync order its events by their position in
the outbox or the stream (the relay publishes in outbox id order), never by `row_version`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Any

from sqlalchemy import BigInteger, Column, Identity, Integer, MetaData, String, Table, Text

from datasync.rows import normalise_value
from datasync.spec import ORIGIN_LEGACY, Spec
from datasync.state import BigId, utcnow
from datasync.types import UTCDateTime


@cache
def outbox_table(name: str) -> Table:
    return Table(
        name,
        MetaData(),
        Column("id", BigId, Identity(), primary_key=True),
        Column("event_id", String(36), nullable=False),
        Column("aggregate_id", BigInteger, nullable=False),
        Column("event_type", String(40), nullable=False),
        Column("row_version", Integer, nullable=False),
        Column("payload", Text, nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("published_at", UTCDateTime()),
    )


def json_value(value: Any) -> Any:
    """A field's value as JSON: numbers stay numbers (decimals become their text, so no binary
    float rounds them), times and dates ISO 8601."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, Decimal | float):
        return str(Decimal(str(value)))
    if isinstance(value, datetime | date):
        return normalise_value(value)
    return str(value)


def default_payload(spec: Spec, row: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared field by its service name."""
    return {f.service: json_value(row[f.name]) for f in spec.fields}


def event_payload(spec: Spec, row: Mapping[str, Any], version: int, origin: str) -> dict[str, Any]:
    """The payload of an event about `row` (legacy names): the declared `payload` hook's shape,
    else every field by service name; plus `origin` and `row_version`."""
    hook = spec.hooks.get("payload")
    body = dict(hook(row)) if hook is not None else default_payload(spec, row)
    body["row_version"] = version
    body["origin"] = origin
    return body


def outbox_row(spec: Spec, row: Mapping[str, Any], version: int, event_type: str) -> dict[str, Any]:
    """An outbox row announcing a change the sync copied from the legacy table."""
    payload = event_payload(spec, row, version, ORIGIN_LEGACY)
    return {
        "event_id": str(uuid.uuid4()),
        "aggregate_id": int(row[spec.key]),
        "event_type": event_type,
        "row_version": version,
        "payload": json.dumps(payload, separators=(",", ":")),
        "created_at": utcnow(),
    }


def deletion_row(spec: Spec, key: int) -> dict[str, Any]:
    """An outbox row announcing that the legacy no longer has row `key` (a refreshed table's
    hard delete): the declared `deleted_type` (default `synced_type`), payload the key by its
    service name and `deleted: true`."""
    assert spec.events is not None
    kind = spec.events.deleted_type or spec.events.synced_type or "deleted"
    payload = {spec.service_name(spec.key): key, "deleted": True, "origin": ORIGIN_LEGACY}
    return {
        "event_id": str(uuid.uuid4()),
        "aggregate_id": key,
        "event_type": kind,
        "row_version": 0,
        "payload": json.dumps(payload, separators=(",", ":")),
        "created_at": utcnow(),
    }
