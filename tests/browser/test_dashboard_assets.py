"""The dashboard's page and assets as the admin app serves them (no browser): their types and
security headers, revalidation, nothing fetched from elsewhere, and no way to any other file."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from proxy.admin.app import create_admin_app
from proxy.admin.dashboard import ASSETS, CSP, dashboard_router
from proxy.store.file import FileStore

TABLE = """\
version: 1
upstreams:
  monolith: {url: "http://127.0.0.1:8001"}
default: monolith
"""


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    (tmp_path / "routes.yaml").write_text(TABLE)
    app = create_admin_app(FileStore(tmp_path / "routes.yaml"), "token")
    if not any(getattr(r, "path", None) == "/dashboard" for r in app.routes):
        app.include_router(dashboard_router())
    with TestClient(app, follow_redirects=False) as test_client:
        yield test_client


def assert_secured(headers: object) -> None:
    assert headers["content-security-policy"] == CSP  # type: ignore[index]
    assert headers["x-content-type-options"] == "nosniff"  # type: ignore[index]
    assert headers["cache-control"] == "no-cache"  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/dashboard", "text/html; charset=utf-8"),
        ("/dashboard/", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/style.css", "text/css; charset=utf-8"),
    ],
)
def test_each_asset_has_its_type_and_the_security_headers(
    client: TestClient, path: str, media_type: str
) -> None:
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == media_type
    assert_secured(answer.headers)
    assert answer.content


def test_the_policy_allows_only_this_origin_and_no_framing() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives == {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",
        "connect-src": "'self'",
        "frame-ancestors": "'none'",
    }


def test_the_page_names_its_assets_with_their_version(client: TestClient) -> None:
    page = client.get("/dashboard").text
    versions = re.findall(r'(?:src|href)="/dashboard/(app\.js|style\.css)\?v=([0-9a-f]{12})"', page)
    assert {name for name, _ in versions} == set(ASSETS)
    assert len({v for _, v in versions}) == 1
    assert "__ASSET_VERSION__" not in page


def test_nothing_is_loaded_from_elsewhere(client: TestClient) -> None:
    """No CDN, web font or remote image: every URL the page, script and style sheet name is
    this origin's (the CSP would block the rest; this keeps the page from needing it)."""
    page = client.get("/dashboard").text
    script = client.get("/dashboard/app.js").text
    style = client.get("/dashboard/style.css").text
    for attribute in re.findall(r'(?:src|href|action)="([^"]*)"', page):
        assert attribute.startswith(("/", "#", "data:")), attribute
    assert "@import" not in style
    assert "@font-face" not in style
    for url in re.findall(r"url\(([^)]*)\)", style):
        assert url.strip("'\"").startswith("data:"), url
    # The script talks to the admin API by path, never to a host (the SVG namespace is a
    # name, not a fetch).
    script = script.replace('"http://www.w3.org/2000/svg"', "")
    assert not re.findall(r"[\"'`](?:https?:)?//", script)
    assert ".innerHTML" not in script
    assert "insertAdjacentHTML" not in script


def test_an_unchanged_asset_is_a_304(client: TestClient) -> None:
    first = client.get("/dashboard/app.js")
    etag = first.headers["etag"]
    again = client.get("/dashboard/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert client.get("/dashboard/app.js", headers={"If-None-Match": '"other"'}).status_code == 200


def test_head_answers_the_headers_alone(client: TestClient) -> None:
    answer = client.head("/dashboard/style.css")
    assert answer.status_code == 200
    assert answer.content == b""
    assert int(answer.headers["content-length"]) == len(client.get("/dashboard/style.css").content)
    assert_secured(answer.headers)


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard/index.html.bak",
        "/dashboard/dashboard.py",
        "/dashboard/..%2Fdashboard.py",
        "/dashboard/%2e%2e%2fapp.py",
        "/dashboard/app.js%00.css",
        "/dashboard/APP.JS",
        "/dashboard/style.css/../../app.py",
    ],
)
def test_no_other_file_is_served(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == 404
    assert problem["type"] == "urn:strangler:problem:not-found"


def test_the_admin_listeners_root_redirects_to_the_dashboard(client: TestClient) -> None:
    answer = client.get("/")
    assert answer.status_code == 302
    assert answer.headers["location"] == "/dashboard"


def test_the_dashboard_is_no_part_of_the_api_document(client: TestClient) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/dashboard")]
