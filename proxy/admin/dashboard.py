"""The dashboard: one page on the admin listener that shows the migration as the admin API tells
it (the ledger, each route's split, traffic, latency and errors, shadow differences, rollouts)
and does what the API does (a flip; pausing, resuming, promoting or aborting a rollout).

    GET /dashboard               the page
    GET /dashboard/{asset}       its script and style sheet (a fixed list of names)
    GET /                        a redirect to /dashboard (with `redirect_root`)

Rules:
- **The page holds no data.** It is a static shell; its script reads the admin API of the same
  origin every two seconds (not while its tab is hidden: the Page Visibility API) and writes
  every value it shows as text (textContent, never markup), so a route name or a shadow example
  cannot become script. Writes send the admin token as `Authorization: Bearer`, which the user
  types into the page: it is kept in sessionStorage (gone with the tab), never in a cookie, so
  no other site can make a browser send it (a cookie would need CSRF defences; a bearer header
  cannot be forged cross-site, as the OAuth 2.0 bearer usage of RFC 6750 relies on).
- **Nothing from elsewhere.** No CDN, web font or remote image: the charts are inline SVG. The
  Content-Security-Policy (W3C CSP Level 3) allows only this origin for scripts, styles, images
  (and `data:` images) and requests, no inline script or style, and no framing
  (`frame-ancestors 'none'`, which supersedes RFC 7034's X-Frame-Options: no clickjacking of the
  action buttons). `X-Content-Type-Options: nosniff` (the Fetch standard) keeps each asset the
  type it is served as; `Referrer-Policy: no-referrer` keeps the admin listener's address out
  of any request the page might make.
- **Always fresh, cheap to revalidate.** Every answer is `Cache-Control: no-cache` (RFC 9111
  §5.2.2.4: stored, but revalidated before each use) with a strong ETag of its bytes, so an
  unchanged asset costs a 304; the page names its assets with `?v=` and their digest, so a new
  version of the proxy is never served with an old script.
- **No path from the request reaches the file system.** The assets are read once from the
  package (importlib.resources: from a wheel or a zip as well as from a checkout) by their names
  in ASSETS; any other name is a 404 problem+json, so no `..`, encoded slash or symlink can
  reach another file (nginx's `location =` per file rather than `alias` on a directory).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from proxy.errors import PROBLEM_TYPE

PATH = "/dashboard"
PACKAGE = "proxy.admin"
FOLDER = "dashboard"
PAGE = "index.html"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",  # RFC 9239: text/javascript
    "style.css": "text/css; charset=utf-8",
}
PAGE_TYPE = "text/html; charset=utf-8"
VERSION_MARK = "__ASSET_VERSION__"  # replaced in the page by the assets' digest
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


def _read(name: str) -> bytes:
    return resources.files(PACKAGE).joinpath(FOLDER, name).read_bytes()


def _asset(body: bytes, media_type: str) -> Asset:
    return Asset(body, media_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


@cache
def assets() -> dict[str, Asset]:
    """The page and its assets, read once; the page names the assets with their digest."""
    found = {name: _asset(_read(name), media_type) for name, media_type in ASSETS.items()}
    version = hashlib.sha256(b"".join(a.etag.encode() for a in found.values())).hexdigest()[:12]
    page = _read(PAGE).replace(VERSION_MARK.encode(), version.encode())
    return {PAGE: _asset(page, PAGE_TYPE), **found}


def _not_found(detail: str) -> Response:
    body = {"type": PROBLEM_TYPE + "not-found", "title": "not found", "status": 404}
    return Response(
        json.dumps({**body, "detail": detail}),
        status_code=404,
        media_type="application/problem+json",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
    )


def _serve(request: Request, name: str) -> Response:
    asset = assets()[name]
    headers = {**HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    body = b"" if request.method == "HEAD" else asset.body
    response = Response(body, media_type=asset.media_type, headers=headers)
    response.headers["Content-Length"] = str(len(asset.body))
    return response


def dashboard_router(redirect_root: bool = True) -> APIRouter:
    """The dashboard's page and assets (left out of the OpenAPI document: they are no API);
    with `redirect_root`, `/` redirects to the page, where a browser pointed at the admin
    listener would otherwise get a 404."""
    router = APIRouter(include_in_schema=False)
    read = ["GET", "HEAD"]

    @router.api_route(PATH, methods=read)
    @router.api_route(PATH + "/", methods=read)
    def page(request: Request) -> Response:
        return _serve(request, PAGE)

    @router.api_route(PATH + "/{name}", methods=read)
    def asset(request: Request, name: str) -> Response:
        if name not in ASSETS:
            return _not_found(f"the dashboard has no asset {name!r}")
        return _serve(request, name)

    if redirect_root:

        @router.api_route("/", methods=read)
        def root() -> Response:
            return RedirectResponse(PATH, status_code=302)

    return router
