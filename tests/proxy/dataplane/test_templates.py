"""What the monolith still serves (pure): a request path's template (identifiers → {id}), a
bounded set of templates per worker, and the ranking over every worker's documents."""

from __future__ import annotations

import json

import pytest

from proxy.dataplane.armstats import BUCKET, KEEP, ArmStats
from proxy.dataplane.templates import (
    MAX_LENGTH,
    Templates,
    legacy_paths_window,
    template_of,
)

T0 = 1_000_000.0


@pytest.mark.parametrize(
    ("path", "template"),
    [
        pytest.param("/api/v1/orders/123", "/api/v1/orders/{id}", id="digits"),
        pytest.param("/api/v1/orders/123/items/7", "/api/v1/orders/{id}/items/{id}", id="two"),
        pytest.param(
            "/users/3f2b1c4e-8d5a-4c1e-9F7B-2a6d8e0c1b3f/cart", "/users/{id}/cart", id="uuid"
        ),
        pytest.param("/blobs/5f8d0a3c9e", "/blobs/{id}", id="hex"),
        pytest.param("/objects/507f1f77bcf86cd799439011", "/objects/{id}", id="object-id"),
        pytest.param("/sessions/aGVsbG8gd29ybGQ9MTIz", "/sessions/{id}", id="base64"),
        pytest.param("/t/Zx8_k2LmQp-w4rTy", "/t/{id}", id="base64url-token"),
        pytest.param("/t/AbCdEfGhIjKlMnOpQr", "/t/{id}", id="base64-without-digits"),
        pytest.param("/api/v1/orders", "/api/v1/orders", id="words-and-versions-stay"),
        pytest.param("/blog/my-long-article-title", "/blog/my-long-article-title", id="slug"),
        pytest.param("/a/ProductCatalogOverview", "/a/ProductCatalogOverview", id="camel-case"),
        pytest.param("/files/report.pdf", "/files/report.pdf", id="file-name"),
        pytest.param("/abc123", "/abc123", id="short-mixed-stays"),
        pytest.param("/orders/", "/orders/", id="trailing-slash"),
        pytest.param("/", "/", id="root"),
        pytest.param("/%31%32", "/%31%32", id="as-sent-not-decoded"),
    ],
)
def test_template_of_a_path(path: str, template: str) -> None:
    assert template_of(path.encode()) == template


def test_a_long_path_is_cut() -> None:
    found = template_of(b"/" + b"segment/" * 100)
    assert len(found) == MAX_LENGTH
    assert found.endswith("…")


def test_the_set_of_templates_is_bounded() -> None:
    templates = Templates(limit=2)
    assert templates.name("GET", b"/a/1", 1) == "GET /a/{id}"
    assert templates.name("POST", b"/a/2", 1) == "POST /a/{id}"
    assert templates.name("GET", b"/b/1", 1) == "GET {other}"
    assert templates.name("PROPFIND", b"/c", 1) == "* {other}"  # one entry for made-up methods
    assert templates.name("GET", b"/a/99", 2) == "GET /a/{id}"  # a known one still counts
    assert len(templates) == 2


def test_templates_no_longer_counted_leave_the_set() -> None:
    templates = Templates(limit=1)
    templates.name("GET", b"/old", 10)
    templates.forget_before(11)
    assert templates.name("GET", b"/new", 11) == "GET /new"


def test_legacy_paths_ranked_over_workers_and_the_window() -> None:
    clock = [T0]
    one, two = ArmStats(lambda: clock[0]), ArmStats(lambda: clock[0])
    for stats, path in [
        (one, b"/api/v1/orders/123"),
        (two, b"/api/v1/orders/456"),
        (one, b"/api/v1/users/1"),
        (two, b"/api/v1/invoices"),
    ]:
        stats.observe("default", "monolith", 200, 0.01)
        stats.legacy("GET", path)
    clock[0] = T0 + BUCKET
    one.observe("default", "monolith", 200, 0.01)
    one.legacy("DELETE", b"/api/v1/users/2")
    docs = [json.loads(json.dumps(s.doc())) for s in (one, two)]
    assert legacy_paths_window(docs, T0) == [
        ("GET /api/v1/orders/{id}", 2),
        ("DELETE /api/v1/users/{id}", 1),
        ("GET /api/v1/invoices", 1),
        ("GET /api/v1/users/{id}", 1),
    ]
    assert legacy_paths_window(docs, T0 + BUCKET) == [("DELETE /api/v1/users/{id}", 1)]
    assert legacy_paths_window(docs, T0, T0 + BUCKET)[0] == ("GET /api/v1/orders/{id}", 2)


def test_a_worker_forgets_templates_with_its_buckets() -> None:
    clock = [T0]
    stats = ArmStats(lambda: clock[0], templates=Templates(limit=1))
    stats.observe("default", "monolith", 200, 0.01)
    stats.legacy("GET", b"/old")
    clock[0] = T0 + KEEP + BUCKET
    stats.observe("default", "monolith", 200, 0.01)
    stats.legacy("GET", b"/new")
    assert legacy_paths_window([stats.doc()], 0) == [("GET /new", 1)]


def test_bad_path_counts_are_skipped() -> None:
    stats = ArmStats(lambda: T0)
    stats.observe("default", "monolith", 200, 0.01)
    stats.legacy("GET", b"/x")
    bad = {"v": 1, "bucket": 5, "buckets": {str(int(T0 // 5)): {"paths": {"GET /y": "many"}}}}
    assert legacy_paths_window([bad, stats.doc()], 0) == [("GET /x", 1)]
