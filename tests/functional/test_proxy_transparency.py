"""The real proxy in front of the real legacy monolith is invisible: over a sample of its
endpoints, the answer through the proxy equals the answer straight from the monolith (status,
body bytes, every header but `date`), with one `server` and one `date` header."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from legacy_monolith.seed import DEMO_PASSWORD, DEMO_USER
from proxy.procs import Child
from tests.functional.proxy_support import Response, build, exchange, running, seeded_monolith

PY = sys.executable
HOST = "shop.test"
PASS_THROUGH_ONLY = {b"date"}  # generated per answer; everything else must match byte for byte


@pytest.fixture(scope="module")
def monolith(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    with seeded_monolith(tmp_path_factory.mktemp("monolith"), payments=20, users=5) as child:
        yield child


@pytest.fixture(scope="module")
def ports(monolith: Child) -> Iterator[tuple[int, int]]:
    """(direct port, proxied port)."""
    with running(["--default-upstream", monolith.url]) as proxy:
        yield int(monolith.url.rsplit(":", 1)[1]), proxy.external


def both(ports: tuple[int, int], raw: bytes) -> tuple[Response, Response]:
    direct, proxied = ports
    return exchange(direct, raw), exchange(proxied, raw)


def comparable(answer: Response) -> list[tuple[bytes, bytes]]:
    return [(n.lower(), v) for n, v in answer.headers if n.lower() not in PASS_THROUGH_ONLY]


def assert_same(direct: Response, proxied: Response) -> None:
    assert proxied.status == direct.status
    assert proxied.body == direct.body
    assert comparable(proxied) == comparable(direct)
    assert len(proxied.values("server")) == 1, proxied.head
    assert len(proxied.values("date")) == 1, proxied.head
    assert proxied.values("server") == direct.values("server")


def get_json(port: int, target: str) -> dict[str, object]:
    answer = exchange(port, build("GET", target, host=HOST))
    assert answer.status == 200, answer.body
    data = answer.json()
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def product(ports: tuple[int, int]) -> dict[str, object]:
    page = get_json(ports[0], "/api/v1/products?per_page=5")
    items = page["items"]
    assert isinstance(items, list)
    assert items
    first = items[0]
    assert isinstance(first, dict)
    return first


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/api/v1/categories", id="categories"),
        pytest.param("/api/v1/products?in_stock=true&per_page=5&sort=-price", id="product-list"),
        pytest.param("/api/v1/products?q=a%20b&page=2&per_page=3", id="product-search"),
        pytest.param("/api/v1/products/999999", id="404-problem"),
        pytest.param("/api/v1/products?per_page=100000", id="422-problem"),
        pytest.param("/api/v1/products?sort=sideways", id="422-bad-enum"),
        pytest.param("/no/such/path", id="404-unknown-path"),
        pytest.param("/api/v1/orders", id="401-without-token"),
        pytest.param("/openapi.json", id="openapi"),
    ],
)
def test_gets_through_the_proxy_equal_gets_direct(ports: tuple[int, int], target: str) -> None:
    direct, proxied = both(ports, build("GET", target, [("Accept", "application/json")], host=HOST))
    assert_same(direct, proxied)


def test_a_problem_answer_passes_through(ports: tuple[int, int]) -> None:
    direct, proxied = both(ports, build("GET", "/api/v1/products/999999", host=HOST))
    assert proxied.status == 404
    assert proxied.value("content-type") == b"application/problem+json"
    assert direct.body == proxied.body


def test_product_detail_and_etag_revalidation(
    ports: tuple[int, int], product: dict[str, object]
) -> None:
    target = f"/api/v1/products/{product['id']}"
    direct, proxied = both(ports, build("GET", target, host=HOST))
    assert_same(direct, proxied)
    etag = proxied.value("etag")
    assert etag
    revalidate = build("GET", target, [("If-None-Match", etag.decode())], host=HOST)
    direct, proxied = both(ports, revalidate)
    assert proxied.status == 304
    assert proxied.body == b""
    assert_same(direct, proxied)


def test_a_static_image_passes_through_byte_exact(
    ports: tuple[int, int], product: dict[str, object]
) -> None:
    image = product["image_url"]
    assert isinstance(image, str)
    assert image.startswith("/static/")
    direct, proxied = both(ports, build("GET", image, host=HOST))
    assert proxied.status == 200
    assert proxied.body
    assert_same(direct, proxied)
    head_direct, head_proxied = (
        exchange(port, build("HEAD", image, host=HOST), head=True) for port in ports
    )
    assert_same(head_direct, head_proxied)


def test_a_json_login_through_the_proxy_matches_direct(ports: tuple[int, int]) -> None:
    body = json.dumps({"email": DEMO_USER, "password": DEMO_PASSWORD}).encode()
    raw = build(
        "POST", "/api/v1/auth/login", [("Content-Type", "application/json")], body, host=HOST
    )
    direct, proxied = both(ports, raw)
    assert proxied.status == direct.status == 200
    # Each login issues a fresh token; everything else is the same.
    first, second = direct.json(), proxied.json()
    assert isinstance(first, dict)
    assert isinstance(second, dict)
    assert first.pop("access_token") != second.pop("access_token")
    assert first == second
    assert comparable(proxied) == comparable(direct)
    assert len(proxied.values("server")) == 1
    assert len(proxied.values("date")) == 1


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b"{not json", 400, id="malformed-json"),
        pytest.param(b'{"email": "x"}', 422, id="missing-field"),
        pytest.param(b'{"email": "nobody@example.com", "password": "wrong"}', 401, id="wrong"),
    ],
)
def test_refused_logins_through_the_proxy_equal_direct(
    ports: tuple[int, int], body: bytes, status: int
) -> None:
    raw = build(
        "POST", "/api/v1/auth/login", [("Content-Type", "application/json")], body, host=HOST
    )
    direct, proxied = both(ports, raw)
    assert proxied.status == status
    assert_same(direct, proxied)
