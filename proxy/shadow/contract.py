"""Replay a recorded corpus against a service and compare its answers with the recorded ones
(`strangler contract run`): the monolith's real answers become the new service's contract test.

Rules:
- Each request is sent as recorded: method, target, headers and body, less Host,
  Content-Length, the hop-by-hop fields and Accept-Encoding (the service answers without a
  content coding; a recorded gzip or deflate body is decoded before it is compared, one in
  another coding is compared by status and headers only). `extra_headers` replace the recorded
  fields of the same name: the corpus never keeps credentials, so a team gives its test identity
  (`--header "Authorization: Bearer …"`).
- The client keeps no cookies between requests, follows no redirects, reads no proxy settings
  from the environment, and adds no header of its own (dataplane's rule for upstream clients).
- Noise, Diffy's idea with the only system at hand: a safe request (GET, HEAD, OPTIONS) is sent
  twice, and the fields in which the service's two answers differ are learned as noise
  (report.py), so timestamps and ids made per request are not reported. A write is sent once.
- Fields the recording redacted (its `secret` patterns) are not compared: the corpus has no
  value for them.
- A request that gets no answer (refused, reset, timed out, or one that cannot be sent) is a
  failure in the tally and counts as differing; it never stops the run.
- An answer is read up to MAX_BODY bytes; a longer one is compared by status and headers only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from functools import lru_cache
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

from proxy.dataplane.headers import HOP_BY_HOP
from proxy.shadow.compare import Answer, Rules, compare, decoded, differing_fields
from proxy.shadow.recording import body_of
from proxy.shadow.report import Tally, mismatched, noise_fields, summarise

SAFE = frozenset({"GET", "HEAD", "OPTIONS"})  # RFC 9110 §9.2.1
NOT_SENT = HOP_BY_HOP | {b"host", b"content-length", b"accept-encoding"}
MAX_BODY = 64 << 20  # the largest body a shadow may capture (routes.yaml's shadow.max_body)


def _request_headers(
    entry: dict[str, Any], extra: list[tuple[str, str]]
) -> list[tuple[bytes, bytes]]:
    replaced = {name.lower().encode("latin-1") for name, _ in extra}
    kept = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in entry["headers"]
    ]
    return [
        *((n, v) for n, v in kept if n not in NOT_SENT and n not in replaced),
        *((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in extra),
    ]


def recorded_answer(entry: dict[str, Any]) -> Answer:
    """The recorded answer, its body decoded when it was sent gzip or deflate (bounded, as the
    shadow's comparison decodes its answers)."""
    headers = tuple(
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in entry["response_headers"]
    )
    recorded = Answer(
        int(entry["status"]), headers, body_of(entry, "response_body"), bool(entry["truncated"])
    )
    return decoded(recorded, MAX_BODY)


async def _send(
    client: httpx.AsyncClient, url: str, entry: dict[str, Any], extra: list[tuple[str, str]]
) -> Answer | str:
    """The service's answer, or the kind of failure."""
    try:
        request = client.build_request(
            entry["method"],
            url + entry["target"],
            headers=_request_headers(entry, extra),
            content=body_of(entry, "body") or None,
        )
    except (httpx.InvalidURL, ValueError):  # a hand-edited target or header httpx refuses
        return "bad-request"
    try:
        response = await client.send(request, stream=True)
        try:
            chunks, size, truncated = [], 0, False
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_BODY:
                    truncated = True
                    break
                chunks.append(chunk)
        finally:
            await response.aclose()
    except httpx.TimeoutException:
        return "timeout"
    except httpx.ConnectError:
        return "connect-failure"
    except (httpx.RequestError, OSError):  # reset, closed early, or a body it cannot decode
        return "reset"
    headers = tuple(
        (name.lower(), value)
        for name, value in response.headers.raw
        if name.lower() != b"content-encoding"
    )
    return Answer(response.status_code, headers, b"" if truncated else b"".join(chunks), truncated)


def _entry_rules(rules: Rules, entry: dict[str, Any]) -> Rules:
    """`rules` with the recorded route's own compare rules, not comparing (nor showing) the
    fields a recording redacted."""
    declared = entry.get("compare") or {}
    secret = tuple(entry.get("secret") or ())
    return _merged(
        rules,
        tuple(declared.get("headers") or ()),
        tuple(declared.get("ignore") or ()),
        tuple(declared.get("unordered") or ()),
        float(declared.get("tolerance") or 0.0),
        secret,
    )


@lru_cache(maxsize=64)
def _merged(
    rules: Rules,
    headers: tuple[str, ...],
    ignore: tuple[str, ...],
    unordered: tuple[str, ...],
    tolerance: float,
    secret: tuple[str, ...],
) -> Rules:
    if not (headers or ignore or unordered or tolerance or secret):
        return rules
    return Rules(
        headers=(*rules.headers, *headers),
        ignore=(*rules.ignore, *ignore, *secret),
        unordered=(*rules.unordered, *unordered),
        tolerance=max(rules.tolerance, tolerance),
        secret=(*rules.secret, *secret),
    )


def _client(timeout: float, concurrency: int) -> httpx.AsyncClient:
    nothing = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))  # keeps no cookie
    client = httpx.AsyncClient(
        cookies=nothing,
        follow_redirects=False,
        trust_env=False,
        timeout=timeout,
        limits=httpx.Limits(max_connections=concurrency),
    )
    client.headers.clear()  # httpx's own Accept, User-Agent, ...: the recorded ones only
    return client


async def run_contract(
    entries: Iterable[dict[str, Any]],
    against: str,
    *,
    rules: Rules,
    extra_headers: list[tuple[str, str]],
    concurrency: int = 4,
    timeout: float = 10.0,  # noqa: ASYNC109 - each request's, not the whole run's
    route: str = "corpus",
) -> dict[str, Any]:
    """Replay `entries` (read_corpus's) against the service at `against`: report.summarise's
    data plus `against`, `replayed`, `unreachable` (requests with no answer), `differing`
    (mismatched or unanswered) and `differ_rate` (differing / replayed)."""
    tally = Tally()
    url = against.rstrip("/")
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for entry in entries:
        queue.put_nowait(entry)
    replayed = queue.qsize()

    async def work(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            entry = queue.get_nowait()
            checked = _entry_rules(rules, entry)
            primary = recorded_answer(entry)
            first = await _send(client, url, entry, extra_headers)
            if isinstance(first, str):
                tally.add_failure(first)
                continue
            tally.add(compare(primary, first, checked))
            if entry["method"] in SAFE:
                second = await _send(client, url, entry, extra_headers)
                if not isinstance(second, str):
                    tally.add_noise(differing_fields(first, second, checked))

    async with _client(timeout, concurrency) as client:
        await asyncio.gather(*(work(client) for _ in range(max(1, concurrency))))
    unreachable = sum(tally.failed.values())
    differing = mismatched(tally, noise_fields(tally)) + unreachable
    return {
        **summarise(route, tally),
        "against": against,
        "replayed": replayed,
        "unreachable": unreachable,
        "differing": differing,
        "differ_rate": round(differing / replayed, 4) if replayed else 0.0,
    }
