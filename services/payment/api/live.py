"""A payment's live channel: `GET /api/v1/live/payments/{id}` as a WebSocket.

The app opens it to watch a payment it made settle, instead of polling `GET /payments/{id}`.
It is the service's own (the monolith has no live channel), so the route table sends
`/api/v1/live` to the service with `websocket:` on, whichever backend serves the payments
route: a live channel stays open through a flip or a rollback of that route.

- Who: the bearer token of the upgrade request (`Authorization`, as on every other route);
  without one, or for a payment the caller may not see, the channel is closed with code 1008
  (policy violation) and a reason, never opened to an empty stream.
- What: the payment as `GET /payments/{id}` answers it, at once, then again each time its
  status or refunded amount changes (read every POLL_SECONDS). The channel stays open until the
  client closes it (or the service stops).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool

from services.payment.api.deps import Services
from services.payment.api.payments import visible_payment
from services.payment.api.writes import payment_body
from services.payment.auth import Caller
from services.payment.errors import ApiError, unauthorized

router = APIRouter()
POLL_SECONDS = 0.5
POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1


def _token(socket: WebSocket) -> str | None:
    """The upgrade's bearer token, read as the REST routes' HTTPBearer reads it."""
    scheme, token = get_authorization_scheme_param(socket.headers.get("authorization"))
    return token or None if scheme.lower() == "bearer" else None


def _read(services: Services, caller: Caller, payment_id: int) -> dict[str, Any]:
    with services.readers() as session:
        return payment_body(visible_payment(session, caller, payment_id))


async def _until_closed(socket: WebSocket) -> None:
    """Whatever the client sends is ignored; its close ends the channel."""
    while (await socket.receive())["type"] != "websocket.disconnect":
        pass


@router.websocket("/live/payments/{payment_id}")
async def live_payment(socket: WebSocket, payment_id: int) -> None:
    services: Services = socket.app.state.services
    token = _token(socket)
    try:
        if token is None:
            raise unauthorized("A bearer token is required")
        caller = await run_in_threadpool(services.auth.caller, token)
        shown = await run_in_threadpool(_read, services, caller, payment_id)
    except ApiError as exc:
        await socket.close(POLICY_VIOLATION, exc.detail[:120])
        return
    await socket.accept()
    await socket.send_json(shown)
    closed = asyncio.ensure_future(_until_closed(socket))
    try:
        while not closed.done():
            await asyncio.wait({closed}, timeout=POLL_SECONDS)
            now = await run_in_threadpool(_read, services, caller, payment_id)
            if now != shown:
                shown = now
                await socket.send_json(now)
    except WebSocketDisconnect:
        pass
    finally:
        closed.cancel()
