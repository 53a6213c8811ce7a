"""The same-day reference: the smallest correct raw-ASGI + aiohttp forwarder (no routing, no
header rules, no limits, no logs, no metrics). The proxy's throughput is quoted against it.

    BENCH_UPSTREAM=http://127.0.0.1:18081 \\
        uvicorn bench.raw_forwarder:app --loop uvloop --http httptools
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
from yarl import URL

UPSTREAM = URL(os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:18081"))
HOP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"})
session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global session
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=4),
                    cookie_jar=aiohttp.DummyCookieJar(),
                    auto_decompress=False,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
                )
                await send({"type": "lifespan.startup.complete"})
            else:
                assert session is not None
                await session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert session is not None
    has_body = False
    headers = []
    for name, value in scope["headers"]:
        if name in HOP:
            has_body = has_body or name == b"transfer-encoding"
            continue
        has_body = has_body or name == b"content-length"
        headers.append((name.decode(), value.decode()))

    async def body() -> Any:
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionResetError
            yield message.get("body", b"")
            more = message.get("more_body", False)

    url = UPSTREAM.with_path(scope["raw_path"].decode(), encoded=True)
    if scope["query_string"]:
        url = URL(str(url) + "?" + scope["query_string"].decode(), encoded=True)
    async with session.request(
        scope["method"],
        url,
        headers=headers,
        data=body() if has_body else None,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        allow_redirects=False,
    ) as response:
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (k.lower(), v) for k, v in response.raw_headers if k.lower() not in HOP
                ],
            }
        )
        async for chunk in response.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
