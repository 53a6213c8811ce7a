"""The catalog answers the monolith's three catalog GETs byte for byte: a seeded shop copied
through the declared syncs, then both apps asked the same requests (lists with every filter,
search spellings, sort and page; single products; bad input). Same status, body bytes, ETag,
Cache-Control and content type; If-None-Match with the ETag gives 304 on both. On SQLite and
on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.services.catalog.conftest import Apps, Shop, making_shop, serving

P = "/api/v1/products"

LISTS: dict[str, dict[str, Any]] = {
    "default": {},
    "per-page-100": {"per_page": 100},
    "page-2": {"page": 2},
    "page-3-of-7": {"page": 3, "per_page": 7},
    "last-page": {"page": 61, "per_page": 7},
    "beyond-last-page": {"page": 999},
    "one-per-page": {"page": 200, "per_page": 1},
    "sort-price": {"sort": "price", "per_page": 13, "page": 2},
    "sort-minus-price": {"sort": "-price", "per_page": 13},
    "sort-newest": {"sort": "newest", "per_page": 13, "page": 3},
    "sort-name": {"sort": "name", "per_page": 50, "page": 2},
    "category": {"category_id": 5},
    "category-sorted": {"category_id": 1, "sort": "-price"},
    "category-unknown": {"category_id": 999},
    "in-stock": {"in_stock": "true", "sort": "price"},
    "out-of-stock": {"in_stock": "false", "sort": "newest"},
    "in-stock-as-1": {"in_stock": "1", "category_id": 3},
    "category-out-of-stock": {"category_id": 2, "in_stock": "false"},
}
SEARCHES = [
    "a",
    "Ph",
    "Phone",
    "PHONE",
    "pHoNe",
    "hone pro",
    "AURORA",
    "PHON-01",
    "-0100",
    "0100",
    "%",
    "_",
    "\\",
    "100%",
    "cotton_t",
    "n_t",
    "back\\sl",
    '"quoted"',
    '"',
    "  ",
    "two  spaces",
    "o  s",
    "odd_",
    "ODD",
    "clair",
    "e B",
    "zzz-no-match",
    "Aurora Phone Pro 1",
    "y" * 100,
]
SEARCH_COMBINATIONS: dict[str, dict[str, Any]] = {
    "q-category": {"q": "pro", "category_id": 1},
    "q-in-stock-sorted": {"q": "Max", "in_stock": "true", "sort": "-price", "per_page": 5},
    "q-out-of-stock-page-2": {"q": "e", "in_stock": "false", "page": 2, "per_page": 10},
    "q-newest-page-3": {"q": "ir", "sort": "newest", "page": 3, "per_page": 4},
    "q-beyond-last": {"q": "helix", "page": 50},
}
INVALID: dict[str, dict[str, Any]] = {
    "page-0": {"page": 0},
    "page-abc": {"page": "abc"},
    "per-page-101": {"per_page": 101},
    "per-page-0": {"per_page": 0},
    "sort-bad": {"sort": "bad"},
    "category-abc": {"category_id": "abc"},
    "category-0": {"category_id": 0},
    "category-too-big": {"category_id": 2**53},
    "q-empty": {"q": ""},
    "q-too-long": {"q": "x" * 101},
    "q-control": {"q": "a\x01b"},
    "in-stock-maybe": {"in_stock": "maybe"},
    "several": {"page": 0, "per_page": 500, "category_id": "x", "sort": "up", "in_stock": "?"},
}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shop(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shop]:
    with making_shop(request, tmp_path_factory.mktemp("parity")) as made:
        yield made


@pytest.fixture(scope="module")
def apps(shop: Shop) -> Iterator[Apps]:
    with serving(shop) as both:
        yield both


def test_categories(apps: Apps) -> None:
    answer = apps.same("/api/v1/categories")
    assert answer.status_code == 200
    assert len(answer.json()["items"]) == 14


@pytest.mark.parametrize("params", LISTS.values(), ids=LISTS.keys())
def test_product_lists(apps: Apps, params: dict[str, Any]) -> None:
    assert apps.same(P, params).status_code == 200


@pytest.mark.parametrize("q", SEARCHES, ids=[repr(q[:20]) for q in SEARCHES])
def test_search(apps: Apps, q: str) -> None:
    answer = apps.same(P, {"q": q, "per_page": 100})
    assert answer.status_code == 200


def test_the_searches_find_something(apps: Apps) -> None:
    totals = {q: apps.monolith.get(P, params={"q": q}).json()["total"] for q in SEARCHES}
    assert totals["zzz-no-match"] == 0
    assert all(totals[q] > 0 for q in ("%", "_", "\\", '"', "100%", "n_t", "back\\sl", "clair"))
    assert totals["Phone"] == totals["PHONE"] == totals["pHoNe"] > 0


@pytest.mark.parametrize("params", SEARCH_COMBINATIONS.values(), ids=SEARCH_COMBINATIONS.keys())
def test_search_with_filters_sorts_and_pages(apps: Apps, params: dict[str, Any]) -> None:
    assert apps.same(P, params).status_code == 200


@pytest.mark.parametrize("params", INVALID.values(), ids=INVALID.keys())
def test_invalid_parameters(apps: Apps, params: dict[str, Any]) -> None:
    answer = apps.same(P, params)
    assert answer.status_code == 422
    assert answer.json()["type"].endswith("/validation-failed")


def test_products_by_id(apps: Apps, shop: Shop) -> None:
    active = shop.product_ids(active=True)
    for product_id in (active[0], active[len(active) // 2], active[-1]):
        assert apps.same(f"{P}/{product_id}").status_code == 200


def test_inactive_and_missing_products_are_404(apps: Apps, shop: Shop) -> None:
    inactive = shop.product_ids(active=False)
    assert inactive, "the seeded shop has inactive products"
    for product_id in (inactive[0], 99_999):
        answer = apps.same(f"{P}/{product_id}")
        assert answer.status_code == 404
        assert answer.json()["type"].endswith("/not-found")


@pytest.mark.parametrize("path", ["0", "abc", str(2**53), "1/extra"])
def test_bad_product_paths(apps: Apps, path: str) -> None:
    assert apps.same(f"{P}/{path}").status_code in (404, 422)


@pytest.mark.parametrize(
    ("path", "params"),
    [("/api/v1/categories", {}), (P, {"q": "pro", "sort": "price"}), (f"{P}/1", {})],
    ids=["categories", "list", "product"],
)
def test_if_none_match_gives_304_on_both(apps: Apps, path: str, params: dict[str, Any]) -> None:
    etag = apps.same(path, params).headers["etag"]
    for given in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        answer = apps.same(path, params, headers={"If-None-Match": given})
        assert answer.status_code == 304
        assert answer.content == b""
    assert apps.same(path, params, headers={"If-None-Match": '"other"'}).status_code == 200
