"""The data plane's ASGI callable: one request, in five named steps.

    admit    concurrency accounting (global and per client), method, headers, Host, loop
    resolve  pure: path, route, exposure, key, upstream (override, read-your-writes pin,
             weights), limits, safety nets, shadow sampling → a Plan (plan.py)
    guard    who is calling (API key, bearer JWT, client certificate), may it use this route
             and method, is it within the route's rate limit (access/): 401, 403, 429, 503
    serve    a static route's file, from its root directory, instead of forward (static.py);
             or an Upgrade request's tunnel on a route that allows it (tunnel.py)
    forward  read the body (buffered up to a bound), then try the plan's upstream: ejected or
             saturated upstreams are not tried; a failed try may be re-sent (stale connection,
             retry) or served by the fallback (plan.next_step); a write's pin is shared before
             its answer goes back; the answer streams back (a copy kept if shadowed/recorded)
    record   metrics, the arm statistics (armstats.py: per route and upstream tried, and what
             the default upstream serves by path template), one access-log line; a kept copy
             goes to the shadow dispatcher and the recorder, off the request's path

No framework routing; per request only a few slotted objects (the Plan, the Call that carries
it through its tries, the Outcome the record step reads); errors before the response starts
become problem+json answers, after it starts the connection is closed (see errors.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass

from proxy.access.policy import Identity, authorize, upstream_fields
from proxy.dataplane import static
from proxy.dataplane.breaker import CLOSED, PROBING, Guard, Saturated, drop_one
from proxy.dataplane.forward import (
    Body,
    Capture,
    ClientGone,
    Outcome,
    Pool,
    TryFailed,
    _too_large,
    answer_client,
    answer_whole,
    read_body,
    replayable,
)
from proxy.dataplane.headers import (
    ALLOW,
    BadHeaders,
    RequestFacts,
    prepare_request,
    request_id_of,
)
from proxy.dataplane.plan import (
    BY_OVERRIDE,
    BY_PIN,
    FALLBACK,
    GIVE_UP,
    RETRY,
    SAFE,
    STALE,
    Plan,
    Tries,
    next_step,
    reacts_to,
    resolve,
)
from proxy.dataplane.record import access_line
from proxy.errors import (
    ProxyError,
    ResponseAborted,
    UpstreamAborted,
    problem_body,
    problem_headers,
)
from proxy.runtime import Runtime
from proxy.settings import plain
from proxy.shadow.exchange import Exchange
from proxy.table.compile import STATIC, CompiledRoute, CredentialPolicy, RatePolicy, Snapshot
from proxy.tls import client_cert_name
from proxy.types import ANSWER, BODY, CONTINUE, TRAILERS, Receive, Scope, Send

log = logging.getLogger("strangler")
REFUSED_METHODS = frozenset({"CONNECT", "TRACE"})
VERSION_HEADER = b"strangler-route-version"
FALLBACK_HEADER = b"strangler-fallback"
GATEWAY_STATUSES = frozenset({502, 503, 504})
RECORD_LIMIT = 1 << 20  # answer bytes a recording keeps per pair
_NONE: dict[str, object] = {}
UPSTREAM_FAILURES = ("upstream-", "bad-upstream-")  # kinds of an upstream's failure (errors.py)


@dataclass(slots=True)
class Call:
    """One request on its way to an answer: its ASGI channel, header facts and body, the client
    it counts against, what it has tried, and whether the next try needs a new connection."""

    scope: Scope
    receive: Receive
    send: Send
    facts: RequestFacts
    body: Body
    holder: str
    outcome: Outcome
    fresh: bool = False
    capture: Capture | None = None  # a copy of the answer, for a shadow or a recording
    expect: bool = False  # the upstream decides on the client's `100 Continue`
    tries: Tries | None = None  # made when first needed: most requests are answered at once

    def so_far(self) -> Tries:
        """What the request has tried so far (plan.next_step reads and notes it); a streamed
        body stops being replayable once its first piece is taken."""
        tries = self.tries
        if tries is None:
            tries = self.tries = Tries(True)
        if tries.replayable:
            tries.replayable = replayable(self.body)
        return tries


def _keys_of(route: CompiledRoute, credentials: CredentialPolicy) -> tuple[str, ...]:
    """The headers that identify a user on `route` (the table's API key header, its sticky
    key, its override): a recording never keeps them (a key may be a bearer token or an API
    key)."""
    names = [credentials.api_key_header.decode("ascii")]
    if route.sticky is not None and route.sticky[0] == "header":
        names.append(route.sticky[1].decode("latin-1"))
    if route.override is not None and route.override.header is not None:
        names.append(route.override.header.decode("latin-1"))
    return tuple(names)


def _ejected(plan: Plan, blocked: float) -> ProxyError:
    return ProxyError(
        503,
        "upstream-ejected",
        f"the upstream {plan.upstream.name} is failing and out of the path for now",
        retry_after=math.ceil(blocked),
    )


def _saturated(plan: Plan, reason: str) -> ProxyError:
    return ProxyError(
        503,
        "upstream-saturated",
        f"the upstream {plan.upstream.name} has no free slot ({reason})",
        retry_after=1,
    )


class DataPlane:
    """Serves one listener role ('external' or 'internal') from the worker's runtime."""

    def __init__(self, runtime: Runtime, role: str) -> None:
        self.runtime = runtime
        self.settings = plain(runtime.settings)  # read per request: plain attributes
        self.role = role
        self.external = role == "external"
        self.via = runtime.settings.via_name.encode()
        mode = runtime.settings.version_header
        # Responses say which route-table version served them, and whether a fallback served
        # them (on by default on the internal listener only).
        self.show_headers = mode == "all" or (mode == "internal" and role == "internal")
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
        plan: Plan | None = None
        request_id = ""
        holder = None  # the client address counted against the per-client limit
        self._enter()
        try:
            facts, holder = self._admit(scope, client)
            request_id = facts.request_id
            plan = resolve(
                snapshot,
                external=self.external,
                role=self.role,
                method=scope["method"],
                raw_path=scope["raw_path"],
                host=facts.host,
                headers=scope["headers"],
                client=holder,
                content_length=facts.content_length,
                pins=runtime.pins,
                https=facts.https,
                keyed=facts.keyed,
            )
            matched = plan.route
            if snapshot.access is not None if matched is None else matched.guarded:
                await self._guard(scope, facts, plan, snapshot, holder, outcome)
            if matched is not None and matched.static is not None:
                await self._serve(scope, receive, send, plan, outcome)
                return
            if matched is not None and matched.websocket is not None:
                attach = scope.get("extensions", _NONE).get("strangler.upgrade")
                if attach is not None:
                    await runtime.tunnels.serve(
                        plan, matched.websocket, scope, facts.headers, attach, send, outcome
                    )
                    return
            await self._forward(scope, receive, send, plan, facts, holder, outcome)
        except ProxyError as exc:
            route, upstream = (plan.route_name, plan.upstream.name) if plan else ("-", "-")
            if exc.status >= 502:
                runtime.metrics.upstream_errors.labels(route, upstream, exc.kind).inc()
            outcome.error = exc.kind
            if outcome.started:
                raise UpstreamAborted(exc.kind) from exc
            outcome.status = exc.status
            request_id = request_id or request_id_of(scope["headers"])
            extra = self._headers(snapshot.version, outcome, plan)
            await self._problem(send, exc, request_id, extra)
        except ClientGone:
            # The protocol may have answered a malformed body itself (the client was told).
            refused = scope.get("extensions", {}).get("strangler.refused")
            if refused is None:
                outcome.status, outcome.error = 499, "client-gone"
            else:
                outcome.status, outcome.error = refused["status"], refused["kind"]
                request_id = refused["request_id"]
        except ResponseAborted as exc:
            if isinstance(exc, UpstreamAborted) and plan is not None:
                runtime.metrics.upstream_errors.labels(
                    plan.route_name, plan.upstream.name, exc.kind
                ).inc()
            outcome.error = exc.kind
            raise
        finally:
            self._leave(holder)
            self._record(scope, client, request_id, plan, outcome, started, snapshot)

    # --- admit --------------------------------------------------------------------------------
    def _enter(self) -> None:
        self.runtime.in_flight += 1
        self.in_flight += 1
        if self.in_flight_gauge is not None:
            self.in_flight_gauge.inc()

    def _admit(self, scope: Scope, client: str) -> tuple[RequestFacts, str]:
        """The request's header facts and the client it counts against; refusals raise."""
        runtime = self.runtime
        settings = self.settings
        if runtime.in_flight > settings.max_in_flight:
            raise ProxyError(
                503, "overloaded", "the proxy is at its concurrency limit", retry_after=1
            )
        method = scope["method"]
        if method in REFUSED_METHODS:
            raise ProxyError(
                405, "method-not-allowed", f"{method} is not proxied", headers=[(b"allow", ALLOW)]
            )
        trusted = runtime.trusted(client)
        try:
            facts = prepare_request(
                scope["headers"],
                client=client,
                scheme=scope["scheme"],
                trusted=trusted,
                via=self.via,
                http_version=scope["http_version"],
                spelled=scope.get("extensions", _NONE).get("strangler.names"),
            )
        except BadHeaders as exc:
            raise ProxyError(exc.status, exc.kind, str(exc)) from None
        if facts.loop:
            raise ProxyError(508, "loop-detected", "this request has already passed this proxy")
        # Behind a trusted hop (a load balancer) the client is the right-most address it did not
        # add itself: sticky client-ip splits and the per-client limits use that.
        holder = (runtime.origin(facts.forwarded_for) if trusted else "") or client
        held = runtime.per_client.get(holder, 0) + 1
        runtime.per_client[holder] = held
        if held > settings.max_in_flight_per_client:
            drop_one(self.runtime.per_client, holder)
            raise ProxyError(
                503, "overloaded", "too many concurrent requests from this client", retry_after=1
            )
        return facts, holder

    def _leave(self, holder: str | None) -> None:
        self.runtime.in_flight -= 1
        if holder is not None:
            drop_one(self.runtime.per_client, holder)
        self.in_flight -= 1
        if self.in_flight_gauge is not None:
            self.in_flight_gauge.dec()

    # --- guard --------------------------------------------------------------------------------
    async def _guard(
        self,
        scope: Scope,
        facts: RequestFacts,
        plan: Plan,
        snapshot: Snapshot,
        holder: str,
        outcome: Outcome,
    ) -> None:
        """Who is calling, may it (access/policy.py), and is it within its rate limit: a 401,
        403, 429 or 503 refuses the request before anything is read or sent upstream."""
        route = plan.route
        access = snapshot.access if route is None else route.access
        identity: Identity | None = None
        try:
            if access is not None or (route is not None and route.identify):
                identity = self.runtime.gate.identify(
                    scope["headers"], snapshot.credentials, client_cert_name(scope)
                )
                if access is not None:
                    authorize(access, identity, plan.method, snapshot.credentials)
                if identity is not None:
                    outcome.consumer = identity.consumer
                    forward = route is not None and route.forward_credentials
                    upstream_fields(facts.headers, identity, forward_credentials=forward)
            if route is not None and route.rate_limit is not None:
                await self._limit(route, route.rate_limit, identity, holder, outcome)
        except ProxyError as exc:
            self.runtime.metrics.access_refused.labels(plan.route_name, str(exc.status)).inc()
            raise

    async def _limit(
        self,
        route: CompiledRoute,
        rate: RatePolicy,
        identity: Identity | None,
        holder: str,
        outcome: Outcome,
    ) -> None:
        # Consumers and addresses in separate key spaces: a consumer named like an address
        # must not share its counter.
        if identity is not None and rate.by == "consumer":
            key = "c:" + identity.consumer
        else:
            key = "a:" + holder
        decision = await self.runtime.limiter.hit(route.name, rate, key)
        if not decision.allowed:
            self.runtime.metrics.rate_limited.labels(route.name).inc()
            raise ProxyError(
                429,
                "rate-limited",
                f"more than {decision.limit} requests in the window on route {route.name}",
                retry_after=max(1, decision.reset),
                headers=[(n, v) for n, v in decision.headers() if n != b"retry-after"],
            )
        outcome.fields = decision.headers()

    # --- serve --------------------------------------------------------------------------------
    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, plan: Plan, outcome: Outcome
    ) -> None:
        """A static route's answer: the proxy's own file, no upstream (static.py)."""
        assert plan.route is not None
        assert plan.route.static is not None
        outcome.tries = 1
        await static.serve(
            plan.route.static,
            scope["method"],
            scope["raw_path"],
            scope["headers"],
            receive,
            send,
            send_timeout=self.settings.send_timeout,
            outcome=outcome,
            extra_headers=self._headers(plan.version, outcome, plan),
        )

    # --- forward ------------------------------------------------------------------------------
    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        plan: Plan,
        facts: RequestFacts,
        holder: str,
        outcome: Outcome,
    ) -> None:
        """Read the body, then try the plan until an answer is sent or nothing more may be
        tried (plan.next_step decides; see plan.py for when a request may be repeated)."""
        settings = self.settings
        body: Body = None
        expect = False
        if facts.content_length or facts.chunked:
            expect = self._continues(scope, facts)
            body = None if expect else self._whole_body(scope, plan, outcome)
            if body is None:
                body = await read_body(
                    receive,
                    buffer=-1 if expect else settings.request_buffer,
                    max_body=plan.max_body,
                    content_length=facts.content_length,
                    body_idle=settings.body_idle_timeout,
                    outcome=outcome,
                    loop=self.runtime.loop,
                )
        call = Call(scope, receive, send, facts, body, holder, outcome)
        call.expect = expect
        if not callable(body):
            call.capture = self._capture(plan)
        guard = self.runtime.guards.get(plan.upstream)
        guard.deposit()
        while True:
            outcome.tries += 1
            step = await self._try(call, plan, guard)
            if step is None:
                if call.capture is not None:
                    try:
                        self._hand_off(call, plan)
                    except Exception:  # the answer has gone: a lost copy is all it costs
                        log.exception("copy of a %s answer not handed off", plan.route_name)
                return
            await self._prepare(step, call, plan, guard)
            if step == FALLBACK:
                guard = self.runtime.guards.get(plan.upstream)

    def _whole_body(self, scope: Scope, plan: Plan, outcome: Outcome) -> bytes | None:
        """A small body that has all arrived, taken at once from the engine (`strangler.body`:
        no receive() message, no idle timer); None when it must be read (read_body)."""
        take = scope.get("extensions", _NONE).get(BODY)
        if take is None:
            return None
        body: bytes | None = take(self.settings.request_buffer)
        if body is not None:
            outcome.bytes_in = len(body)
            if len(body) > plan.max_body:
                raise _too_large()
        return body

    async def _prepare(self, step: str, call: Call, plan: Plan, guard: Guard) -> None:
        """Set up the next try: a new connection, a retry after its backoff, or the fallback."""
        tries = call.so_far()
        call.fresh = step == STALE
        if step == STALE:
            tries.stale_used = True
        elif step == RETRY:
            guard.withdraw()
            retry = plan.retry
            assert retry is not None
            delay = min(retry.max_backoff, retry.backoff * 2 ** (tries.tries - 1))
            tries.tries += 1
            await asyncio.sleep(random.uniform(0, delay))  # noqa: S311 - full jitter
        elif step == FALLBACK:
            fallback = plan.fallback
            assert fallback is not None
            call.outcome.fallback_from = plan.upstream.name
            tries.fallen_back = True
            plan.upstream = fallback.upstream
            route_timeout = plan.route.timeout if plan.route is not None else None
            plan.read_timeout = route_timeout or fallback.upstream.timeout

    async def _try(self, call: Call, plan: Plan, guard: Guard) -> str | None:
        """One try of `plan.upstream`: None once answered, else the next step to take. Raises
        the failure as a ProxyError when nothing more may be tried. An ejected upstream, or one
        with no free slot in time, is not tried at all."""
        blocked = guard.blocked_for(time.monotonic()) if guard.state != CLOSED else 0.0
        if blocked:
            return self._next(call, plan, "ejected", _ejected(plan, blocked), False, guard)
        probe = guard.rounds if guard.state == PROBING else 0  # the probing round, if a probe
        holder = call.holder
        try:
            if not guard.take(holder, self.settings.upstream_share_per_client):
                await guard.queue(holder)
        except Saturated as exc:
            if probe and probe == guard.rounds:
                guard.unprobe()
            return self._next(call, plan, "saturated", _saturated(plan, exc.reason), False, guard)
        forwarder = self.runtime.forwarder
        pool = forwarder.enter(plan.upstream)
        try:
            return await self._exchange(call, plan, pool, guard, probe)
        finally:
            forwarder.leave(pool)
            guard.release(holder)

    def _continues(self, scope: Scope, facts: RequestFacts) -> bool:
        """Whether the client's `Expect: 100-continue` goes to the upstream (end to end): for a
        body declared too large to read first (a Content-Length above the request buffer), the
        upstream is asked, and the client's 100 and body follow only once it has said 100, so
        an upload it refuses on its head (401, 413) is never sent (HAProxy forwards Expect so;
        Envoy with proxy_100_continue). A smaller or chunked body is read first and the proxy
        says 100 itself (nginx's way): nothing reaches the upstream before the client has sent
        a whole small body, and a retry or a fallback can send it again."""
        if CONTINUE not in scope.get("extensions", _NONE):
            return False
        length = facts.content_length
        return length is not None and length > self.settings.request_buffer

    async def _exchange(
        self, call: Call, plan: Plan, pool: Pool, guard: Guard, probe: int
    ) -> str | None:
        """Send the request, judge the response head (a status may retry or fall back), then
        stream the answer. Every try's verdict goes to the upstream's outlier rule."""
        retry, forwarder = plan.retry, self.runtime.forwarder
        judged = False
        try:
            try:
                response = await forwarder.open(
                    pool,
                    plan.upstream,
                    call.scope,
                    call.facts.headers,
                    call.body,
                    read_timeout=plan.read_timeout,
                    # the retry policy's per-try timeout, not on the fallback (no Tries made)
                    head_timeout=(
                        retry.per_try_timeout
                        if retry and (call.tries is None or not call.tries.fallen_back)
                        else None
                    ),
                    fresh=call.fresh,
                    expect=call.expect,
                    # prepare_request has read them: a Host, and a Content-Length it kept
                    framed=(bool(call.facts.host), call.facts.content_length is not None),
                )
            except TryFailed as failed:
                # A pooled connection the upstream had closed is the pool's fault, not a sign
                # of a failing upstream: several die at once after an upstream restart.
                if not (failed.reused and failed.kind == "reset"):
                    judged = self._judge(guard, True, probe)
                return self._next(call, plan, failed.kind, failed.error, failed.reused, guard)
            try:
                status = response.status
                judged = guard.upstream.outlier is None or self._judge(
                    guard, status in GATEWAY_STATUSES, probe
                )
                if reacts_to(plan, status):
                    step = next_step(
                        plan, status, call.so_far(), reused=False, budget=guard.budget >= 1
                    )
                    if step != GIVE_UP:
                        response.close()  # its body is not wanted: the connection is not reused
                        self._count(plan, step, str(status), call.outcome)
                        return step
                try:
                    whole = await forwarder.buffered(response, call.scope, plan.read_timeout)
                except TryFailed as failed:  # judged by its status already: counted once
                    return self._next(call, plan, failed.kind, failed.error, False, guard)
                extensions = call.scope.get("extensions", _NONE)
                if (
                    plan.key is not None
                    and plan.method not in SAFE
                    and status < 500  # a failed write changed nothing to read back
                    and plan.route is not None
                ):
                    await self._pin(plan)
                extra = self._headers(plan.version, call.outcome, plan)
                write_whole = extensions.get(ANSWER)
                if (
                    whole is not None
                    and write_whole is not None
                    and answer_whole(
                        response,
                        whole,
                        write_whole,
                        outcome=call.outcome,
                        extra_headers=extra,
                        capture=call.capture,
                        checked=forwarder.strict,
                    )
                ):
                    return None
                await answer_client(
                    response,
                    forwarder.reader(response),
                    call.receive,
                    call.send,
                    whole=whole,
                    streamed_body=callable(call.body),
                    read_timeout=plan.read_timeout,
                    send_timeout=self.settings.send_timeout,
                    outcome=call.outcome,
                    extra_headers=extra,
                    capture=call.capture,
                    checked=forwarder.strict,
                    trailers=TRAILERS in extensions,
                    loop=self.runtime.loop,
                )
                return None
            except BaseException:
                response.close()  # never leave an answer's connection behind (idempotent)
                raise
        finally:
            if probe and probe == guard.rounds and not judged:
                guard.unprobe()  # no verdict (the client left): another probe may go

    def _judge(self, guard: Guard, failed: bool, probe: int) -> bool:
        """Count an answer for the upstream's outlier rule (and the ejection it causes). A
        probe's answer counts as one only in its own probing round: a probe slower than the
        next ejection must not decide the next round."""
        if guard.upstream.outlier is None:
            return True
        probing = probe != 0 and probe == guard.rounds
        if guard.record(failed, time.monotonic(), probing):
            self.runtime.metrics.ejected(guard.upstream.name)
        return True

    def _next(
        self, call: Call, plan: Plan, failure: str, error: ProxyError, reused: bool, guard: Guard
    ) -> str:
        step = next_step(plan, failure, call.so_far(), reused=reused, budget=guard.budget >= 1)
        if step == GIVE_UP:
            raise error
        self._count(plan, step, failure, call.outcome)
        return step

    def _count(self, plan: Plan, step: str, reason: str, outcome: Outcome) -> None:
        metrics = self.runtime.metrics
        if step == FALLBACK:
            assert plan.fallback is not None
            outcome.fallback_reason = reason
            metrics.fallbacks.labels(
                plan.route_name, plan.upstream.name, plan.fallback.upstream.name, reason
            ).inc()
        else:
            metrics.retries.labels(plan.route_name, plan.upstream.name, step, reason).inc()

    def _capture(self, plan: Plan) -> Capture | None:
        """A copy of the answer is kept when the request is shadowed or recorded."""
        recorder = self.runtime.recorder
        recording = plan.route is not None and recorder.wants(plan.route_name, plan.method)
        if plan.shadow is None and not recording:
            return None
        limit = plan.shadow.max_body if plan.shadow is not None else 0
        return Capture(max(limit, RECORD_LIMIT if recording else 0))

    async def _pin(self, plan: Plan) -> None:
        """After a write by a key: keep the key on the upstream that took it, here at once and
        on every other worker and replica before the answer goes back (store/pins.py)."""
        route, key = plan.route, plan.key
        assert route is not None
        assert key is not None
        now = time.monotonic()
        runtime = self.runtime
        if runtime.pins.put(route.name, key, plan.upstream.name, now + route.pin, now):
            runtime.metrics.pins.labels(route.name, plan.upstream.name).inc()
            try:
                await runtime.pin_wire.publish(route.name, key, plan.upstream.name, route.pin)
            except Exception:  # a write is never failed for its pin: it still holds here
                log.warning("read-your-writes pin not shared", exc_info=True)

    def _hand_off(self, call: Call, plan: Plan) -> None:
        """The answer has been sent: its copy goes to the shadow and the recorder."""
        capture = call.capture
        assert capture is not None
        assert plan.route is not None
        scope = call.scope
        target = scope["raw_path"]
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        exchange = Exchange(
            plan.route_name,
            plan.upstream.name,
            plan.method,
            target,
            tuple((n.lower(), v) for n, v in call.facts.headers),
            call.body if isinstance(call.body, bytes) else b"",
            capture.status,
            capture.headers,
            capture.body(),
            capture.truncated,
            time.time(),
        )
        runtime = self.runtime
        if plan.shadow is not None and plan.shadow.upstream is not plan.upstream:
            runtime.mirror.offer(exchange, plan.shadow, plan.upstream)
        if runtime.recorder.wants(plan.route_name, plan.method):
            route = plan.route
            rules = route.rules
            runtime.recorder.offer(
                exchange,
                secret=rules.secret if rules else (),
                rules=rules,
                drop=_keys_of(route, runtime.snapshot.credentials),
            )

    # --- record -------------------------------------------------------------------------------
    def _record(
        self,
        scope: Scope,
        client: str,
        request_id: str,
        plan: Plan | None,
        outcome: Outcome,
        started: float,
        snapshot: Snapshot,
    ) -> None:
        runtime = self.runtime
        route, upstream = (plan.route_name, plan.upstream.name) if plan else ("-", "-")
        elapsed = time.perf_counter() - started
        runtime.metrics.observe(route, upstream, outcome.status, elapsed)
        if plan is not None and outcome.tries and plan.upstream is not STATIC:
            self._arm(plan, outcome, elapsed, scope["raw_path"], snapshot)
        choice = plan.choice if plan else "-"
        if choice == BY_PIN:
            runtime.metrics.pinned.labels(route, upstream).inc()
        elif choice == BY_OVERRIDE:
            runtime.metrics.overrides.labels(route, upstream).inc()
        if runtime.access_log.enabled:
            runtime.access_log.write_line(
                access_line(
                    scope,
                    self.role,
                    client,
                    request_id,
                    route,
                    upstream,
                    outcome,
                    elapsed,
                    snapshot.version,
                    choice,
                )
            )

    def _arm(
        self, plan: Plan, outcome: Outcome, elapsed: float, raw_path: bytes, snapshot: Snapshot
    ) -> None:
        """The arm statistics (armstats.py) of a request an upstream was tried for; an answer
        the upstream cut off after it started counts as a 502; a request the fallback answered
        counts as a failure of the upstream it fell back from too (a rollout must not see a
        failing service as healthy because its fallback hid the failures from the clients);
        and the default upstream's requests count by their path template (templates.py)."""
        status = outcome.status
        if outcome.started and outcome.error.startswith(UPSTREAM_FAILURES):
            status = 502
        stats = self.runtime.arm_stats
        if outcome.fallback_from:
            stats.observe(plan.route_name, outcome.fallback_from, 502, elapsed)
        stats.observe(plan.route_name, plan.upstream.name, status, elapsed)
        if plan.upstream is snapshot.default:
            stats.legacy(plan.method, raw_path)

    def _headers(
        self, version: int, outcome: Outcome, plan: Plan | None
    ) -> list[tuple[bytes, bytes]] | None:
        """The proxy's own response fields: the key cookie a new client is given (on every
        answer, whichever arm gives it), the version field (made once per table version, not
        per request), and the fallback's when one served the request."""
        cookie = plan.set_cookie if plan is not None else None
        if outcome.fields is not None:  # rare: a rate-limited route's RateLimit-* fields
            fields = self._fields(version, outcome, cookie)
            return fields + outcome.fields if fields else outcome.fields
        return self._fields(version, outcome, cookie)

    def _fields(
        self, version: int, outcome: Outcome, cookie: bytes | None
    ) -> list[tuple[bytes, bytes]] | None:
        if not self.show_headers:
            return [(b"set-cookie", cookie)] if cookie else None
        cached = self._version_field
        if cached[0] != version:
            cached = self._version_field = (version, [(VERSION_HEADER, str(version).encode())])
        if not outcome.fallback_from and not cookie:
            return cached[1]
        fields = list(cached[1])
        if outcome.fallback_from:
            reason = f"{outcome.fallback_from}; reason={outcome.fallback_reason}".encode()
            fields.append((FALLBACK_HEADER, reason))
        if cookie:
            fields.append((b"set-cookie", cookie))
        return fields

    @staticmethod
    async def _problem(
        send: Send, exc: ProxyError, request_id: str, extra: list[tuple[bytes, bytes]] | None
    ) -> None:
        body = problem_body(exc.status, exc.kind, exc.detail, request_id)
        headers = problem_headers(
            body, request_id=request_id, close=exc.close, retry_after=exc.retry_after
        )
        headers.extend(exc.headers)
        if extra:
            headers.extend(extra)
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
