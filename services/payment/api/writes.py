"""How a payment write runs: outside any transaction, the calls to the monolith and the id;
then one transaction for the change, its outbox event and (with an Idempotency-Key) its stored
answer. Answers are rendered here, once, so a replay is byte for byte the first answer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from services.payment.api.deps import Services
from services.payment.auth import Caller
from services.payment.errors import ApiError, error_response, render_json
from services.payment.idempotency import Answer, Superseded, fingerprint
from services.payment.models import Payment
from services.payment.schemas import PaymentOut

# Answers about the caller or the moment, not about the operation: a retry must run again (a
# token that expired mid-request must not lock its user out of the key for 24 hours).
NOT_STORED = frozenset({401, 403, 408, 429})

# The transactional part of a write: given the open session, the answer and the payment it
# concerns (None when it changed nothing). Raising ApiError rolls the transaction back.
Work = Callable[[Session], tuple[Response, int | None]]


def payment_body(payment: Payment) -> dict[str, Any]:
    """The payment as the API shows it (the answers' body, the live channel's messages)."""
    return PaymentOut.model_validate(payment, from_attributes=True).model_dump(mode="json")


def payment_response(
    payment: Payment, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = payment_body(payment)
    return Response(render_json(body), status, headers=headers, media_type="application/json")


def endpoint_of(request: Request, path_params: Mapping[str, int]) -> str:
    """The operation a key is bound to: the method and the route's path rebuilt (`url_path_for`)
    from the PARSED path parameters, e.g. "POST /api/v1/payments/1/refund" whether the client sent
    `/payments/1/refund` or `/payments/0001/refund` (the same payment, as for the monolith).
    Never the raw path: a client can pad it far beyond the stored column (String(200)). The
    value is the raw path's for canonical paths, so keys stored before this rule still replay."""
    route = request.scope.get("route")
    name = getattr(route, "name", None)
    if not isinstance(name, str):
        raise RuntimeError(f"no route for {request.method} {request.url.path!r}")
    return f"{request.method} {request.app.url_path_for(name, **path_params)}"


def run_write(
    services: Services,
    request: Request,
    caller: Caller,
    key: str | None,
    body: Any,
    prepare: Callable[[], Work],
    path_params: Mapping[str, int] | None = None,
) -> Response:
    """Run a write; with an Idempotency-Key, at most once per key (see idempotency.py).
    `path_params` are the route's parsed path parameters (they name the operation's target)."""
    if key is None:
        work = prepare()
        with services.sessions() as session, session.begin():
            response, _ = work(session)
        services.events_committed()
        return response
    store = services.idempotency
    endpoint = endpoint_of(request, path_params or {})
    claimed = store.claim(caller.id, key, endpoint, fingerprint(endpoint, body))
    if isinstance(claimed, Answer):
        return claimed.response(replayed=True)
    try:
        work = prepare()
        with services.sessions() as session, session.begin():
            response, payment_id = work(session)
            answer = Answer.of(response)
            store.complete(session, claimed, answer, payment_id)
    except Superseded:
        return store.stored(claimed).response(replayed=True)
    except ApiError as exc:
        if exc.status >= 500 or exc.status in NOT_STORED:
            store.release(claimed)
            raise
        answer = Answer.of(error_response(exc, request.url.path))
        sent = store.complete_alone(claimed, answer, None)
        return sent.response(replayed=sent is not answer)
    except BaseException:
        store.release(claimed)
        raise
    services.events_committed()
    return answer.response()
