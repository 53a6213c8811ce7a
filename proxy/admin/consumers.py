"""The admin API's consumers: who may call through the proxy, and their credentials.

    GET   /api/v1/consumers                   every consumer (keys by id and hint); ETag "N"
    GET   /api/v1/consumers/history?limit=    the audit log, newest first
    GET   /api/v1/consumers/{name}            one consumer
    POST  /api/v1/consumers                   add {name, groups, subjects, jwt, description,
                                              key, reason, author?}: 201, with the new key
    POST  /api/v1/consumers/{name}/keys       rotate {grace, reason, author?}: the new key
    POST  /api/v1/consumers/{name}/revoke     {key_id?, reason, author?}: one key, or the
                                              consumer with every credential it has
    PATCH /api/v1/consumers/{name}            update {groups?, subjects?, jwt?, description?,
                                              reason, author?}

Revocation is a POST with a body rather than a DELETE: it carries its reason like every other
write, and one path revokes a key or the whole consumer.

Writes need the admin token (the admin app's check, `check_writer`), a reason, and may send
`If-Match: "N"` to fail with 409 when the document is no longer version N. A new key is in the
answer once (`key.secret`, with Cache-Control: no-store, as RFC 6749 §5.1 answers tokens) and
nowhere else: listings show a key's id, hint, creation and expiry, never its hash. Unknown
fields are refused. Refusals are the store's errors, which the admin app answers as problem+json:
404 unknown consumer or key, 409 duplicate name, credential already taken or version conflict,
422 invalid (a name, a subject, an empty reason), 503 store unreachable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from proxy.access.consumers import (
    DEFAULT_GRACE,
    MAX_DESCRIPTION,
    MAX_REASON,
    Add,
    ConsumerRefused,
    Operation,
    Revoke,
    RotateKey,
    UnknownConsumer,
    Update,
    parse_grace,
)
from proxy.store.consumers import ConsumerStore

Reason = Annotated[str, Field(min_length=1, max_length=MAX_REASON)]
IfMatch = Annotated[
    str | None, Header(description='"N": fail with 409 unless version N is current.')
]
AuthorIn = Annotated[str | None, Field(min_length=1, max_length=200)]


class JwtIn(BaseModel):
    issuer: str = Field(min_length=1, max_length=1024)
    subject: str = Field(min_length=1, max_length=1024)
    model_config = ConfigDict(extra="forbid")


class AddIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    groups: list[str] = Field(default_factory=list)
    subjects: list[str] = Field(default_factory=list)
    jwt: list[JwtIn] = Field(default_factory=list)
    description: str = Field("", max_length=MAX_DESCRIPTION)
    key: bool = Field(True, description="Make a first API key (false: mTLS or JWT only).")
    reason: Reason
    author: AuthorIn = None
    # An unknown field is refused, never ignored (a newer client's flag must not vanish).
    model_config = ConfigDict(extra="forbid")


class RotateIn(BaseModel):
    grace: float = Field(
        DEFAULT_GRACE,
        description="Seconds (or '24h', '30m', '0') the consumer's other keys keep working.",
    )
    reason: Reason
    author: AuthorIn = None
    model_config = ConfigDict(extra="forbid")

    @field_validator("grace", mode="before")
    @classmethod
    def _grace(cls, value: object) -> float:
        return parse_grace(value)


class RevokeIn(BaseModel):
    key_id: str | None = Field(None, min_length=1, max_length=64)
    reason: Reason
    author: AuthorIn = None
    model_config = ConfigDict(extra="forbid")


class UpdateIn(BaseModel):
    groups: list[str] | None = None
    subjects: list[str] | None = None
    jwt: list[JwtIn] | None = None
    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    reason: Reason
    author: AuthorIn = None
    model_config = ConfigDict(extra="forbid")


def _pairs(pairs: list[JwtIn]) -> tuple[tuple[str, str], ...]:
    return tuple((p.issuer, p.subject) for p in pairs)


def _expected(if_match: str | None) -> int | None:
    """The version an `If-Match: "N"` names (None: none given)."""
    if if_match is None:
        return None
    value = if_match.strip().removeprefix("W/").strip('"')
    if not value.isdigit():
        raise ConsumerRefused('If-Match: "N" names the version this change is based on')
    return int(value)


def consumers_router(
    store_factory: Callable[[], ConsumerStore],
    check_writer: Callable[..., str],
    check_reader: Callable[..., None],
) -> APIRouter:
    """The consumers endpoints over the store `store_factory` makes (called once, at the first
    request); `check_writer` is the admin app's dependency that checks a write's bearer token
    and answers its author, `check_reader` the one every request passes: who may call and with
    which groups, subjects and key ids is not for anyone who reaches the admin listener, so
    reads need the token too when one is set."""
    router = APIRouter(
        prefix="/api/v1/consumers", tags=["consumers"], dependencies=[Depends(check_reader)]
    )
    # A plain default, not an Annotated alias: the alias would be local to this function, where
    # the postponed annotations cannot find it.
    writer_of = Depends(check_writer)
    opened: list[ConsumerStore] = []

    def store() -> ConsumerStore:
        if not opened:
            opened.append(store_factory())
        return opened[0]

    def write(operation: Operation, author: str, reason: str, if_match: str | None) -> JSONResponse:
        result = store().apply(
            operation, author=author, reason=reason, expected_version=_expected(if_match)
        )
        headers = {"ETag": f'"{result.document.version}"'}
        if result.key is not None:
            headers["Cache-Control"] = "no-store"
        status = 201 if isinstance(operation, Add) else 200
        return JSONResponse(result.as_dict(time.time()), status_code=status, headers=headers)

    @router.get("")
    def listing() -> JSONResponse:
        document = store().current()
        return JSONResponse(document.public(time.time()), headers={"ETag": f'"{document.version}"'})

    @router.get("/history")
    def history(limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict[str, Any]]:
        return [entry.as_dict() for entry in store().history(limit)]

    @router.get("/{name}")
    def one(name: str) -> dict[str, Any]:
        consumer = store().current().get(name)
        if consumer is None:
            raise UnknownConsumer(name)
        return consumer.public(time.time())

    @router.post("", status_code=201)
    def add(body: AddIn, writer: str = writer_of, if_match: IfMatch = None) -> JSONResponse:
        """A new consumer; the answer carries its first key (unless `key` is false) once."""
        operation = Add(
            body.name,
            tuple(body.groups),
            tuple(body.subjects),
            _pairs(body.jwt),
            body.description,
            body.key,
        )
        return write(operation, body.author or writer, body.reason, if_match)

    @router.post("/{name}/keys")
    def rotate(
        name: str, body: RotateIn, writer: str = writer_of, if_match: IfMatch = None
    ) -> JSONResponse:
        """A new key; the consumer's other keys keep working `grace` seconds more."""
        return write(RotateKey(name, body.grace), body.author or writer, body.reason, if_match)

    @router.post("/{name}/revoke")
    def revoke(
        name: str, body: RevokeIn, writer: str = writer_of, if_match: IfMatch = None
    ) -> JSONResponse:
        """One key (`key_id`), or the consumer with every credential it has."""
        return write(Revoke(name, body.key_id), body.author or writer, body.reason, if_match)

    @router.patch("/{name}")
    def update(
        name: str, body: UpdateIn, writer: str = writer_of, if_match: IfMatch = None
    ) -> JSONResponse:
        """Replace the groups, subjects, JWT pairs or description given."""
        operation = Update(
            name,
            None if body.groups is None else tuple(body.groups),
            None if body.subjects is None else tuple(body.subjects),
            None if body.jwt is None else _pairs(body.jwt),
            body.description,
        )
        return write(operation, body.author or writer, body.reason, if_match)

    return router
