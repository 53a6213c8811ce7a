"""`Idempotency-Key` on POST: a retried request gets the first answer instead of a second effect.

Rules (Stripe's, which the mobile apps' HTTP clients already follow):

- A key is scoped to the calling user and lives `ttl` (24 h); at most 255 visible ASCII
  characters (else 422 validation-failed, from the header's declared constraints).
- The key's first request claims it (a row `in_progress`, committed at once). Its answer is
  stored in the SAME transaction as the change it made (payment + outbox + stored answer commit
  together or not at all), so a crash can never leave a payment without its stored answer.
- A replay (same user, key, endpoint and body) gets the stored status, body and headers, plus
  `Idempotent-Replayed: true`. Declines (402) and the other 4xx answers of the operation are
  stored and replayed too; 5xx answers (the monolith unreachable, a bug) and 401/403 (a token
  that expired mid-request) are not: the claim is released so a retry runs again.
- The same key with another endpoint or body: 422 idempotency-key-reused. The endpoint is the
  route rebuilt from the parsed path parameters (`/payments/01/refund` is `/payments/1/refund`,
  as for the monolith), never the raw path, which a client could pad past the stored column.
- A request whose key is still in progress waits up to `wait` seconds for the first to finish
  (then replays it), else 409 idempotency-key-in-progress with `Retry-After: 1`.
- A claim older than `lock_seconds` belongs to a request that died: the next request takes it
  over. Should the first one still finish, the stored answer is written only by the transaction
  that finds the key still in progress; the other rolls back its change and replays the answer.
- Bodies are compared semantically (the validated model, defaults filled in, as canonical JSON),
  so a client that re-serialises its JSON differently still replays.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi.responses import Response
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.payment.db import utcnow
from services.payment.errors import ApiError
from services.payment.models import IdempotencyKey

REPLAYED_HEADER = "Idempotent-Replayed"
KEY_PATTERN = r"^[\x20-\x7e]+$"
KEY_MAX_LENGTH = 255  # Stripe's limit
POLL_SECONDS = 0.02


@dataclass(frozen=True)
class Answer:
    """A response as stored for replays: status, body bytes and the headers that matter."""

    status: int
    body: bytes
    headers: dict[str, str]

    def response(self, replayed: bool = False) -> Response:
        headers = dict(self.headers)
        media_type = headers.pop("content-type", None)
        if replayed:
            headers[REPLAYED_HEADER] = "true"
        return Response(self.body, self.status, headers=headers, media_type=media_type)

    @classmethod
    def of(cls, response: Response) -> Answer:
        kept = {"content-type", "location", "retry-after", "www-authenticate"}
        headers = {k: v for k, v in response.headers.items() if k in kept}
        return cls(response.status_code, bytes(response.body), headers)


@dataclass(frozen=True)
class Claim:
    """This request holds the key (row `row_id`) and must complete or release it."""

    row_id: int


class Superseded(Exception):
    """The key was completed by another request meanwhile: roll back and replay its answer."""


def fingerprint(endpoint: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{endpoint}\n{canonical}".encode()).hexdigest()


class IdempotencyStore:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        ttl: float = 24 * 3600.0,
        wait: float = 2.0,
        lock_seconds: float = 60.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = session_factory
        self._ttl = timedelta(seconds=ttl)
        self._wait = wait
        self._lock = timedelta(seconds=lock_seconds)
        self._clock = clock

    def claim(self, user_id: int, key: str, endpoint: str, digest: str) -> Claim | Answer:
        """Claim the key, or get its stored answer; raises 422 reused / 409 in progress."""
        deadline = time.monotonic() + self._wait
        while True:
            outcome = self._try_claim(user_id, key, endpoint, digest)
            if outcome is not None:
                return outcome
            if time.monotonic() >= deadline:
                raise ApiError(
                    409,
                    "idempotency-key-in-progress",
                    "A request with this Idempotency-Key is still in progress; retry later",
                    headers={"Retry-After": "1"},
                )
            time.sleep(POLL_SECONDS)

    def _try_claim(
        self, user_id: int, key: str, endpoint: str, digest: str
    ) -> Claim | Answer | None:
        """One attempt: the claim, the stored answer, or None while another request holds it."""
        for _ in range(3):  # a key released or expired meanwhile is tried again at once
            now = self._clock()
            claimed = self._insert(user_id, key, endpoint, digest, now)
            if claimed is not None:
                return claimed
            with self._sessions() as session, session.begin():
                existing = session.scalars(
                    select(IdempotencyKey).where(
                        IdempotencyKey.user_id == user_id, IdempotencyKey.idem_key == key
                    )
                ).first()
                if existing is None:
                    continue
                if existing.expires_at <= now:
                    session.delete(existing)
                    continue
                return self._existing(session, existing, endpoint, digest, now)
        return None

    def _insert(
        self, user_id: int, key: str, endpoint: str, digest: str, now: datetime
    ) -> Claim | None:
        """The common case, a new key: one INSERT (None when the key exists)."""
        try:
            with self._sessions() as session, session.begin():
                row = IdempotencyKey(
                    idem_key=key,
                    user_id=user_id,
                    endpoint=endpoint,
                    request_sha256=digest,
                    state="in_progress",
                    created_at=now,
                    expires_at=now + self._ttl,
                )
                session.add(row)
                session.flush()
                return Claim(row.id)
        except IntegrityError:
            return None

    def _existing(
        self, session: Session, row: IdempotencyKey, endpoint: str, digest: str, now: datetime
    ) -> Claim | Answer | None:
        if row.request_sha256 != digest or row.endpoint != endpoint:
            raise ApiError(
                422,
                "idempotency-key-reused",
                "This Idempotency-Key was used with a different request; use a new key",
            )
        if row.state == "done":
            return _stored(row)
        if row.created_at <= now - self._lock:
            taken = session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == row.id, IdempotencyKey.state == "in_progress")
                .values(created_at=now)
            )
            if taken.rowcount:  # type: ignore[attr-defined]
                return Claim(row.id)
        return None

    def complete(
        self, session: Session, claim: Claim, answer: Answer, payment_id: int | None
    ) -> None:
        """Store the answer in the caller's transaction; `Superseded` if the key was done."""
        done = session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.id == claim.row_id, IdempotencyKey.state == "in_progress")
            .values(
                state="done",
                status_code=answer.status,
                response_body=answer.body.decode("utf-8"),
                response_headers=json.dumps(answer.headers, sort_keys=True),
                payment_id=payment_id,
            )
        )
        if not done.rowcount:  # type: ignore[attr-defined]
            raise Superseded

    def complete_alone(self, claim: Claim, answer: Answer, payment_id: int | None) -> Answer:
        """Store an answer that changed nothing; returns the answer to send."""
        try:
            with self._sessions() as session, session.begin():
                self.complete(session, claim, answer, payment_id)
        except Superseded:
            return self.stored(claim)
        return answer

    def stored(self, claim: Claim) -> Answer:
        with self._sessions() as session:
            row = session.get(IdempotencyKey, claim.row_id)
            if row is None or row.state != "done":
                raise ApiError(
                    409,
                    "idempotency-key-in-progress",
                    "A request with this Idempotency-Key is still in progress; retry later",
                    headers={"Retry-After": "1"},
                )
            return _stored(row)

    def release(self, claim: Claim) -> None:
        """Give the key up (the request failed with a 5xx): a retry runs again."""
        with self._sessions() as session, session.begin():
            session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.id == claim.row_id, IdempotencyKey.state == "in_progress"
                )
            )


def _stored(row: IdempotencyKey) -> Answer:
    headers: dict[str, str] = json.loads(row.response_headers or "{}")
    return Answer(row.status_code or 500, (row.response_body or "").encode("utf-8"), headers)
