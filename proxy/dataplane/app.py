"""The data plane's ASGI callable: one request, from head to access-log line.

    read the snapshot once → refuse what must be refused (method, headers, Host, loop, path,
    exposure, size, load) → match → choose the upstream → forward (streaming) → log + metrics

No framework routing, no per-request objects beyond locals; errors before the response starts
become problem+json answers, after it starts the connection is closed (see errors.py).
"""

from __future__ import annotations

import time
from json.encoder import encode_basestring_ascii as _json_str

from proxy.dataplane.forward import ClientGone, Outcome
from proxy.dataplane.headers import BadHeaders, prepare_request, request_id_of
from proxy.dataplane.match import find_route
from proxy.dataplane.normalize import AmbiguousPath, match_key
from proxy.dataplane.split import choose
from proxy.errors import (
    ProxyError,
    ResponseAborted,
    UpstreamAborted,
    problem_body,
    problem_headers,
)
from proxy.runtime import Runtime
from proxy.types import Receive, Scope, Send

REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})


VERSION_HEADER = b"strangler-route-version"


class DataPlane:
    """Serves one listener role ('external' or 'internal') from the worker's runtime."""

    def __init__(self, runtime: Runtime, role: str) -> None:
        self.runtime = runtime
        self.role = role
        self.external = role == "external"
        self.via = runtime.settings.via_name.encode()
        mode = runtime.settings.version_header
        # Responses say which route-table version served them (on by default internally).
        self.version_header = mode == "all" or (mode == "internal" and role == "internal")
        self._version_field: tuple[int, list[tuple[bytes, bytes]]] = (-1, [])
        self.in_flight = 0
        metrics = runtime.metrics
        self.in_flight_gauge = metrics.in_flight.labels(role) if metrics.multiprocess else None
        metrics.in_flight_sources[role] = lambda: self.in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        snapshot = runtime.snapshot  # read once: the whole request uses this table
        started = time.perf_counter()
        client = scope["client"][0] if scope.get("client") else ""
        outcome = Outcome()
        route_name = upstream_name = "-"
        request_id = ""
        runtime.in_flight += 1
        holder = None  # the client address counted against the per-client limit
        self.in_flight += 1
        if self.in_flight_gauge is not None:
            self.in_flight_gauge.inc()
        try:
            if runtime.in_flight > runtime.settings.max_in_flight:
                raise ProxyError(
                    503, "overloaded", "the proxy is at its concurrency limit", retry_after=1
                )
            method = scope["method"]
            if method in REFUSED_METHODS:
                raise ProxyError(405, "method-not-allowed", f"{method} is not proxied")
            trusted = runtime.trusted(client)
            try:
                facts = prepare_request(
                    scope["headers"],
                    client=client,
                    scheme=scope["scheme"],
                    trusted=trusted,
                    via=self.via,
                )
            except BadHeaders as exc:
                raise ProxyError(exc.status, exc.kind, str(exc)) from None
            request_id = facts.request_id
            # Behind a trusted hop (a load balancer) the client is the right-most address it
            # did not add itself: sticky client-ip splits and the per-client limit use that.
            holder = (runtime.origin(facts.forwarded_for) if trusted else "") or client
            held = runtime.per_client.get(holder, 0) + 1
            runtime.per_client[holder] = held
            if held > runtime.settings.max_in_flight_per_client:
                raise ProxyError(
                    503,
                    "overloaded",
                    "too many concurrent requests from this client",
                    retry_after=1,
                )
            if facts.loop:
                raise ProxyError(508, "loop-detected", "this request has already passed this proxy")
            try:
                key = match_key(scope["raw_path"])
            except AmbiguousPath as exc:
                raise ProxyError(400, "bad-target", str(exc)) from None
            route = find_route(snapshot, key, method, facts.host, scope["headers"])
            if route is not None:
                route_name = route.name
                if not (route.external if self.external else route.internal):
                    raise ProxyError(
                        404, "not-found", f"no route for this path on the {self.role} listener"
                    )
                upstream = choose(route, scope["headers"], holder)
                max_body = route.max_body
                read_timeout = route.timeout or upstream.timeout
            else:
                route_name = "default"
                upstream = snapshot.default
                max_body = snapshot.max_body
                read_timeout = upstream.timeout
            upstream_name = upstream.name
            if facts.content_length is not None and facts.content_length > max_body:
                raise ProxyError(
                    413,
                    "body-too-large",
                    f"the body is {facts.content_length} bytes; this route takes {max_body}",
                    close=True,
                )
            await runtime.forwarder.forward(
                scope,
                receive,
                send,
                upstream,
                facts.headers,
                has_body=bool(facts.content_length) or facts.chunked,
                read_timeout=read_timeout,
                max_body=max_body,
                body_idle=runtime.settings.body_idle_timeout,
                send_timeout=runtime.settings.send_timeout,
                outcome=outcome,
                content_length=facts.content_length,
                extra_headers=self._version(snapshot.version),
            )
        except ProxyError as exc:
            if exc.status >= 502:
                runtime.metrics.upstream_errors.labels(route_name, upstream_name, exc.kind).inc()
            outcome.error = exc.kind
            if outcome.started:
                raise UpstreamAborted(exc.kind) from exc
            outcome.status = exc.status
            request_id = request_id or request_id_of(scope["headers"])
            await self._problem(send, exc, request_id, self._version(snapshot.version))
        except ClientGone:
            outcome.status, outcome.error = 499, "client-gone"
        except ResponseAborted as exc:
            if isinstance(exc, UpstreamAborted):
                runtime.metrics.upstream_errors.labels(route_name, upstream_name, exc.kind).inc()
            outcome.error = exc.kind
            raise
        finally:
            runtime.in_flight -= 1
            if holder is not None:
                left = runtime.per_client.get(holder, 1) - 1
                if left:
                    runtime.per_client[holder] = left
                else:
                    del runtime.per_client[holder]
            self.in_flight -= 1
            if self.in_flight_gauge is not None:
                self.in_flight_gauge.dec()
            elapsed = time.perf_counter() - started
            runtime.metrics.observe(route_name, upstream_name, outcome.status, elapsed)
            if runtime.access_log.enabled:
                runtime.access_log.write_line(
                    self._log_line(
                        scope,
                        client,
                        request_id,
                        route_name,
                        upstream_name,
                        outcome,
                        elapsed,
                        snapshot.version,
                    )
                )

    def _log_line(
        self,
        scope: Scope,
        client: str,
        request_id: str,
        route: str,
        upstream: str,
        outcome: Outcome,
        elapsed: float,
        version: int,
    ) -> str:
        """The access-log record as one JSON line. Only the target and the method come from the
        client unchecked, so only they go through the JSON string encoder (which escapes control
        characters); every other field is a number or a name the proxy validated."""
        query = scope["query_string"]
        target = scope["raw_path"].decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        error = f'"{outcome.error}"' if outcome.error else "null"
        return (
            f'{{"ts":{time.time():.6f},"request_id":"{request_id}","listener":"{self.role}",'
            f'"client":"{client}","method":{_json_str(scope["method"])},'
            f'"target":{_json_str(target)},"route":"{route}","upstream":"{upstream}",'
            f'"status":{outcome.status},"bytes_in":{outcome.bytes_in},'
            f'"bytes_out":{outcome.bytes_out},"duration_ms":{elapsed * 1000:.3f},'
            f'"table_version":{version},"error":{error}}}'
        )

    def _version(self, version: int) -> list[tuple[bytes, bytes]] | None:
        """The version header's field (made once per table version, not per request)."""
        if not self.version_header:
            return None
        cached = self._version_field
        if cached[0] != version:
            cached = self._version_field = (version, [(VERSION_HEADER, str(version).encode())])
        return cached[1]

    @staticmethod
    async def _problem(
        send: Send, exc: ProxyError, request_id: str, extra: list[tuple[bytes, bytes]] | None
    ) -> None:
        body = problem_body(exc.status, exc.kind, exc.detail, request_id)
        headers = problem_headers(
            body, request_id=request_id, close=exc.close, retry_after=exc.retry_after
        )
        if extra:
            headers.extend(extra)
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
