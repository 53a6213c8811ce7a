"""ASGI types used across the proxy (plain dicts: the data plane allocates no wrapper objects)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# ASGI's extension for an answer's trailer fields: a server that offers it in the scope takes
# `"trailers": True` in the start message, then an `http.response.trailers` message at the end.
TRAILERS = "http.response.trailers"
# The proxy's own engine: the client sent `Expect: 100-continue`, and `100 Continue` goes to it
# when the application first reads the body.
CONTINUE = "strangler.continue"
# A start message's fields whose values the sender has checked already (the upstream parser
# refuses CR, LF and NUL in them): the engine does not scan them again.
CHECKED = "strangler.checked"
# The proxy's own engine: a whole answer written in one call, (status, fields, reason, body,
# checked, framed) -> bool, instead of a start and a body message (False: send them).
ANSWER = "strangler.answer"
# The proxy's own engine: the request's whole body when all of it has arrived and none of it
# was read, at most `limit` bytes, (limit) -> bytes | None, instead of receive() messages
# (None: read them).
BODY = "strangler.body"
