"""RouteTable → Snapshot: the immutable, precompiled form the data plane serves."""

from __future__ import annotations

import dataclasses

import pytest

from proxy.table.compile import compile_table
from proxy.table.model import DEFAULT_MAX_BODY
from tests.proxy.tables import make_snapshot, make_table, route


def test_the_snapshot_cannot_be_changed() -> None:
    snapshot = make_snapshot([route("pay", "/pay", to="payment")])
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.default = snapshot.upstreams["payment"]  # type: ignore[misc]
    with pytest.raises(TypeError):
        snapshot.upstreams["monolith"] = snapshot.upstreams["payment"]  # type: ignore[index]
    with pytest.raises(TypeError):
        snapshot.exact["/x"] = ()  # type: ignore[index]
    (compiled,) = snapshot.routes
    with pytest.raises(dataclasses.FrozenInstanceError):
        compiled.max_body = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        compiled.upstream.port = 1  # type: ignore[misc, union-attr]


def test_compiling_twice_gives_equal_routes() -> None:
    table = make_table([route("pay", "/pay", to="payment", methods=["GET"])])
    assert compile_table(table).routes == compile_table(table).routes


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "stored"),
    [
        pytest.param(
            "http://127.0.0.1:8001", "http", "127.0.0.1", 8001, "http://127.0.0.1:8001", id="port"
        ),
        pytest.param(
            "http://monolith", "http", "monolith", 80, "http://monolith", id="http-default-port"
        ),
        pytest.param(
            "https://pay.internal/",
            "https",
            "pay.internal",
            443,
            "https://pay.internal",
            id="https-default-port",
        ),
        pytest.param("http://[::1]:8002", "http", "::1", 8002, "http://[::1]:8002", id="ipv6"),
    ],
)
def test_upstreams_are_split_into_parts(
    url: str, scheme: str, host: str, port: int, stored: str
) -> None:
    snapshot = make_snapshot([], upstreams={"up": {"url": url, "timeout": "3s"}}, default="up")
    upstream = snapshot.default
    assert (upstream.name, upstream.scheme, upstream.host, upstream.port) == (
        "up",
        scheme,
        host,
        port,
    )
    assert upstream.url == stored
    assert (upstream.timeout, upstream.connect_timeout) == (3.0, 5.0)


def test_route_timeout_and_body_cap() -> None:
    snapshot = make_snapshot(
        [
            {**route("own", "/own"), "timeout": "1.5s", "max_body": "1KiB"},
            route("inherits", "/inherits"),
        ],
        max_body="2MiB",
    )
    by_name = {r.name: r for r in snapshot.routes}
    assert (by_name["own"].timeout, by_name["own"].max_body) == (1.5, 1024)
    assert (by_name["inherits"].timeout, by_name["inherits"].max_body) == (None, 2 * 1024**2)
    assert snapshot.max_body == 2 * 1024**2


def test_the_default_body_cap() -> None:
    (compiled,) = make_snapshot([route("a", "/a")]).routes
    assert compiled.max_body == DEFAULT_MAX_BODY == 30_000_000


@pytest.mark.parametrize(
    ("methods", "compiled"),
    [
        pytest.param(["GET"], {"GET", "HEAD"}, id="get-implies-head"),
        pytest.param(["POST"], {"POST"}, id="post-alone"),
        pytest.param(["get", "put"], {"GET", "HEAD", "PUT"}, id="lower-case"),
        pytest.param(None, None, id="every-method"),
    ],
)
def test_methods(methods: list[str] | None, compiled: set[str] | None) -> None:
    (entry,) = make_snapshot([route("a", "/a", methods=methods)]).routes
    assert entry.methods == (frozenset(compiled) if compiled is not None else None)


@pytest.mark.parametrize(
    ("expose", "external", "internal"),
    [
        pytest.param("both", True, True, id="both"),
        pytest.param("external", True, False, id="external"),
        pytest.param("internal", False, True, id="internal"),
    ],
)
def test_expose(expose: str, external: bool, internal: bool) -> None:
    (entry,) = make_snapshot([{**route("a", "/a"), "expose": expose}]).routes
    assert (entry.external, entry.internal) == (external, internal)


def test_split_weights_are_kept_in_upstream_name_order_and_a_split_is_always_keyed() -> None:
    (entry,) = make_snapshot(
        [{"name": "s", "match": {"path": "/s"}, "split": {"payment": 10, "monolith": 90}}]
    ).routes
    assert entry.upstream is None
    assert entry.split is not None
    assert [u.name for u in entry.split.upstreams] == ["monolith", "payment"]
    assert entry.split.weights == (90, 10)
    assert entry.sticky is None
    assert entry.keyed  # the proxy's own cookie keys it


@pytest.mark.parametrize(
    ("sticky", "compiled"),
    [
        pytest.param("header:X-User-Id", ("header", b"x-user-id"), id="header"),
        pytest.param("cookie:SID", ("cookie", b"SID"), id="cookie"),
        pytest.param("client-ip", ("client-ip", b""), id="client-ip"),
    ],
)
def test_sticky_keys(sticky: str, compiled: tuple[str, bytes]) -> None:
    (entry,) = make_snapshot(
        [
            {
                "name": "s",
                "match": {"path": "/s"},
                "split": {"monolith": 50, "payment": 50},
                "sticky": sticky,
            }
        ]
    ).routes
    assert entry.sticky == compiled
    assert entry.keyed


def test_routes_on_one_path_are_ranked_most_specific_first_then_file_order() -> None:
    snapshot = make_snapshot(
        [
            route("plain", "/pay"),
            route("two-methods", "/pay", methods=["GET", "POST"]),
            route("one-method", "/pay", methods=["PUT"]),
            route("host-and-method", "/pay", methods=["PATCH"], host="shop.example"),
            route("exact", "/pay", exact=True),
            route("another-plain", "/other"),
        ]
    )
    assert [r.name for r in snapshot.routes] == [
        "exact",
        "host-and-method",
        "one-method",
        "two-methods",
        "plain",
        "another-plain",
    ]
    assert [r.name for r in snapshot.exact["/pay"]] == ["exact"]
