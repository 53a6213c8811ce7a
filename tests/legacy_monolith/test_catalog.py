"""Catalog reads: categories, products, search, pagination, ETags; staff edits invalidate."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from legacy_monolith.seed import STAFF_USER
from tests.legacy_monolith.conftest import login, register


def test_categories_list_with_product_counts(client: TestClient) -> None:
    answer = client.get("/api/v1/categories")
    assert answer.status_code == 200
    items = answer.json()["items"]
    slugs = [c["slug"] for c in items]
    assert slugs[:3] == ["phones", "laptops", "tablets"]
    headphones = next(c for c in items if c["slug"] == "headphones")
    audio = next(c for c in items if c["slug"] == "audio")
    assert headphones["parent_id"] == audio["id"]
    assert all(c["product_count"] >= 0 for c in items)
    assert sum(c["product_count"] for c in items) == client.get("/api/v1/products").json()["total"]


def test_products_paginate_without_overlap(client: TestClient) -> None:
    first = client.get("/api/v1/products", params={"per_page": 7, "page": 1}).json()
    second = client.get("/api/v1/products", params={"per_page": 7, "page": 2}).json()
    assert first["per_page"] == 7
    assert len(first["items"]) == 7
    assert first["pages"] == -(-first["total"] // 7)
    assert not {p["id"] for p in first["items"]} & {p["id"] for p in second["items"]}
    beyond = client.get("/api/v1/products", params={"page": first["pages"] + 1}).json()
    assert beyond["items"] == []


def test_products_filter_by_category_and_sort_by_price(client: TestClient) -> None:
    category = client.get("/api/v1/categories").json()["items"][0]
    page = client.get(
        "/api/v1/products",
        params={"category_id": category["id"], "sort": "price", "per_page": 100},
    ).json()
    assert page["total"] == category["product_count"]
    assert {p["category_id"] for p in page["items"]} == {category["id"]}
    prices = [float(p["price"]) for p in page["items"]]
    assert prices == sorted(prices)


def test_search_matches_name_and_sku_case_insensitively(client: TestClient) -> None:
    product = client.get("/api/v1/products", params={"per_page": 1}).json()["items"][0]
    word = product["name"].split()[1].upper()
    by_name = client.get("/api/v1/products", params={"q": word, "per_page": 100}).json()
    assert by_name["total"] >= 1
    assert all(
        word.lower() in p["name"].lower() or word.lower() in p["sku"].lower()
        for p in by_name["items"]
    )
    by_sku = client.get("/api/v1/products", params={"q": product["sku"].lower()}).json()
    assert [p["id"] for p in by_sku["items"]] == [product["id"]]


def test_search_treats_like_wildcards_literally(client: TestClient) -> None:
    for q in ("%", "_", "\\"):
        answer = client.get("/api/v1/products", params={"q": q})
        assert answer.status_code == 200
        assert answer.json()["total"] == 0, q


def test_product_detail_money_as_string_and_image_url(client: TestClient) -> None:
    listed = client.get("/api/v1/products", params={"per_page": 1}).json()["items"][0]
    answer = client.get(f"/api/v1/products/{listed['id']}")
    assert answer.status_code == 200
    product = answer.json()
    assert product == listed
    assert isinstance(product["price"], str)
    assert re.fullmatch(r"\d+\.\d{2}", product["price"])
    image = client.get(product["image_url"])
    assert image.status_code == 200
    assert image.headers["content-type"].startswith("image/svg+xml")


def test_unknown_product_is_404_problem(client: TestClient) -> None:
    answer = client.get("/api/v1/products/999999999")
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"].endswith("/not-found")


def test_etag_revalidation_answers_304(client: TestClient) -> None:
    first = client.get("/api/v1/categories")
    etag = first.headers["etag"]
    assert etag.startswith('"')
    assert first.headers["cache-control"] == "public, max-age=30"
    again = client.get("/api/v1/categories", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    weak = client.get("/api/v1/categories", headers={"If-None-Match": f'"x", W/{etag}'})
    assert weak.status_code == 304
    other = client.get("/api/v1/categories", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200


def test_staff_price_change_is_visible_at_once_despite_the_cache(client: TestClient) -> None:
    product = client.get("/api/v1/products", params={"per_page": 1, "sort": "newest"}).json()
    product = product["items"][0]
    before = client.get(f"/api/v1/products/{product['id']}")
    listed_before = client.get("/api/v1/products", params={"per_page": 1, "sort": "newest"})
    staff = login(client, STAFF_USER)
    new_price = "12.34" if product["price"] != "12.34" else "43.21"
    changed = client.patch(
        f"/api/v1/products/{product['id']}", json={"price": new_price}, headers=staff
    )
    assert changed.status_code == 200
    assert changed.json()["price"] == new_price
    after = client.get(f"/api/v1/products/{product['id']}")
    assert after.json()["price"] == new_price
    assert after.headers["etag"] != before.headers["etag"]
    listed = client.get("/api/v1/products", params={"per_page": 1, "sort": "newest"})
    assert listed.json()["items"][0]["price"] == new_price
    assert listed.headers["etag"] != listed_before.headers["etag"]


def test_only_staff_may_edit_products(client: TestClient) -> None:
    _, headers = register(client)
    answer = client.patch("/api/v1/products/1", json={"price": "1.00"}, headers=headers)
    assert answer.status_code == 403
    assert answer.json()["type"].endswith("/forbidden")


def test_bad_query_parameters_are_422_not_500(client: TestClient) -> None:
    for params in (
        {"page": 0},
        {"per_page": 1000},
        {"sort": "random"},
        {"category_id": "x"},
        {"category_id": 2**70},
        {"q": "a\x00b"},
        {"q": "x" * 101},
    ):
        answer = client.get("/api/v1/products", params=params)
        assert answer.status_code == 422, params
        assert answer.json()["status"] == 422
