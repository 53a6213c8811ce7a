"""A static route's pure rules: path safety (a table of escape attempts), conditional requests,
ranges and the choice of a precompressed sibling."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from proxy.dataplane.normalize import AmbiguousPath, match_key
from proxy.dataplane.static import (
    Found,
    Unsatisfiable,
    accepted,
    byte_range,
    choose,
    etag_of,
    locate,
    path_parts,
    precondition,
    range_applies,
)
from proxy.errors import ProxyError
from proxy.table.compile import StaticPolicy
from proxy.table.model import DEFAULT_IMMUTABLE


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.png").write_bytes(b"png")
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_text("<p>hi</p>")
    (root / ".env").write_text("SECRET=1")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("x")
    (tmp_path / "outside.txt").write_text("outside")
    (root / "out").symlink_to(tmp_path / "outside.txt")
    (root / "outdir").symlink_to(tmp_path)
    (root / "env-link").symlink_to(root / ".env")
    return root


def policy(root: Path, index: bool = False) -> StaticPolicy:
    return StaticPolicy(
        os.path.realpath(root), "/static", 3600, re.compile(DEFAULT_IMMUTABLE), index
    )


def fetch(root: Path, raw: bytes, index: bool = False) -> Found:
    """What the data plane does: normalise (may refuse), then the static route's own checks."""
    match_key(raw)
    parts, directory = path_parts(raw, "/static")
    return locate(policy(root, index), parts, directory)


def test_a_plain_file_is_found(tree: Path) -> None:
    found = fetch(tree, b"/static/img/a.png")
    assert found.path == os.path.realpath(tree / "img" / "a.png")
    assert found.size == 3


ESCAPES = [
    pytest.param(b"/static/../etc/passwd", id="dot-dot"),
    pytest.param(b"/static/img/../../outside.txt", id="dot-dot-deeper"),
    pytest.param(b"/static/%2e%2e/outside.txt", id="encoded-dot-dot"),
    pytest.param(b"/static/%2E%2E/outside.txt", id="encoded-dot-dot-upper"),
    pytest.param(b"/static/%252e%252e/outside.txt", id="double-encoded-dot-dot"),
    pytest.param(b"/static/img%2f..%2f..%2foutside.txt", id="encoded-slash"),
    pytest.param(b"/static/..%5coutside.txt", id="encoded-backslash"),
    pytest.param(b"/static/..\\outside.txt", id="backslash"),
    pytest.param(b"/static/img/a.png%00.txt", id="nul"),
    pytest.param(b"/static/./img/a.png", id="dot-segment"),
    pytest.param(b"/static//img/a.png", id="empty-segment"),
    pytest.param(b"/static/out", id="symlink-out-of-root"),
    pytest.param(b"/static/outdir/outside.txt", id="symlinked-dir-out-of-root"),
    pytest.param(b"/static/.env", id="dotfile"),
    pytest.param(b"/static/.git/config", id="dot-directory"),
    pytest.param(b"/static/env-link", id="symlink-to-dotfile"),
    pytest.param(b"/static/img", id="directory"),
    pytest.param(b"/static/img/", id="directory-slash"),
    pytest.param(b"/static/docs/", id="directory-without-index-option"),
    pytest.param(b"/static/img/a.png/", id="file-as-directory"),
    pytest.param(b"/static/missing.png", id="missing"),
]


@pytest.mark.parametrize("raw", ESCAPES)
def test_escapes_are_refused_with_a_4xx(tree: Path, raw: bytes) -> None:
    with pytest.raises((AmbiguousPath, ProxyError)) as refused:  # AmbiguousPath: the 400
        fetch(tree, raw)
    if isinstance(refused.value, ProxyError):
        assert refused.value.status in (400, 404)


def test_a_directory_serves_its_index_only_when_asked(tree: Path) -> None:
    found = fetch(tree, b"/static/docs/", index=True)
    assert found.name == "index.html"
    with pytest.raises(ProxyError):
        fetch(tree, b"/static/img/", index=True)  # no index.html: still no listing


def test_siblings_are_found(tree: Path) -> None:
    (tree / "img" / "a.png.gz").write_bytes(b"gz")
    (tree / "img" / "a.png.br").write_bytes(b"brotli")
    found = fetch(tree, b"/static/img/a.png")
    assert [coding for coding, *_ in found.siblings] == ["br", "gzip"]


# --- choose ---------------------------------------------------------------------------------------
ETAG = etag_of(100, 0x1234)
MTIME = 1_700_000_000
HTTP_DATE = "Tue, 14 Nov 2023 22:13:20 GMT"  # == MTIME
EARLIER = "Tue, 14 Nov 2023 22:13:19 GMT"


def test_etag_has_nginx_shape() -> None:
    assert ETAG == '"64-1234"'
    assert etag_of(100, 0x1234, "-br") == '"64-1234-br"'


@pytest.mark.parametrize(
    ("headers", "method", "verdict"),
    [
        ({}, "GET", None),
        ({b"if-none-match": ETAG}, "GET", 304),
        ({b"if-none-match": "W/" + ETAG}, "GET", 304),  # weak comparison
        ({b"if-none-match": '"other", ' + ETAG}, "HEAD", 304),
        ({b"if-none-match": "*"}, "GET", 304),
        ({b"if-none-match": '"other"'}, "GET", None),
        ({b"if-modified-since": HTTP_DATE}, "GET", 304),
        ({b"if-modified-since": EARLIER}, "GET", None),
        ({b"if-modified-since": "not a date"}, "GET", None),
        # If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2)
        ({b"if-none-match": '"other"', b"if-modified-since": HTTP_DATE}, "GET", None),
        ({b"if-match": '"other"'}, "GET", 412),
        ({b"if-match": ETAG}, "GET", None),
        ({b"if-unmodified-since": EARLIER}, "GET", 412),
        ({b"if-unmodified-since": HTTP_DATE}, "GET", None),
    ],
)
def test_preconditions(headers: dict[bytes, str], method: str, verdict: int | None) -> None:
    assert precondition(headers, ETAG, MTIME, method) == verdict


@pytest.mark.parametrize(
    ("header", "span"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=90-", (90, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=95-200", (95, 99)),
        ("bytes=0-0", (0, 0)),
        ("bytes=0-9,20-29", None),  # several: the whole file
        ("items=0-9", None),  # another unit: ignored
        ("bytes=9-0", None),  # invalid: ignored
        ("bytes=abc", None),
        ("bytes=", None),
    ],
)
def test_byte_ranges(header: str, span: tuple[int, int] | None) -> None:
    assert byte_range(header, 100) == span


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=200-300", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(Unsatisfiable):
        byte_range(header, 100)


def test_if_range() -> None:
    assert range_applies(None, ETAG, MTIME)
    assert range_applies(ETAG, ETAG, MTIME)
    assert not range_applies('"other"', ETAG, MTIME)
    assert not range_applies("W/" + ETAG, ETAG, MTIME)  # If-Range needs a strong match
    assert range_applies(HTTP_DATE, ETAG, MTIME)
    assert not range_applies(EARLIER, ETAG, MTIME)


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        ("gzip, br", "br"),
        ("gzip", "gzip"),
        ("br;q=0.5, gzip", "gzip"),
        ("br;q=0, gzip;q=0", None),
        ("*", "br"),
        ("*, br;q=0", "gzip"),
        ("identity", None),
        ("", None),
        ("x-gzip", "gzip"),
    ],
)
def test_accept_encoding(accept: str, chosen: str | None) -> None:
    assert accepted(accept, ["br", "gzip"]) == chosen


def _found() -> Found:
    return Found(
        "/r/app.0123abcd.js", 100, MTIME * 10**9, (("gzip", "/r/app.0123abcd.js.gz", 40, 7),)
    )


def test_choose_a_precompressed_sibling_with_its_own_etag() -> None:
    answer = choose(policy(Path("/r")), _found(), "GET", {b"accept-encoding": "gzip"})
    fields = dict(answer.headers)
    assert answer.path.endswith(".gz")
    assert fields[b"content-encoding"] == b"gzip"
    assert fields[b"etag"] == etag_of(40, 7, "-gz").encode()
    assert fields[b"vary"] == b"Accept-Encoding"
    assert fields[b"cache-control"] == b"public, max-age=3600, immutable"
    assert fields[b"content-length"] == b"40"


def test_a_range_never_gets_the_compressed_file() -> None:
    headers = {b"accept-encoding": "gzip", b"range": "bytes=0-9"}
    answer = choose(policy(Path("/r")), _found(), "GET", headers)
    fields = dict(answer.headers)
    assert answer.status == 206
    assert b"content-encoding" not in fields
    assert fields[b"content-range"] == b"bytes 0-9/100"
    assert (answer.offset, answer.length) == (0, 10)


def test_unsatisfiable_range_answer() -> None:
    answer = choose(policy(Path("/r")), _found(), "GET", {b"range": "bytes=500-"})
    assert answer.status == 416
    assert dict(answer.headers)[b"content-range"] == b"bytes */100"


def test_not_modified_keeps_validators_and_no_body() -> None:
    etag = etag_of(100, MTIME * 10**9)
    answer = choose(policy(Path("/r")), _found(), "GET", {b"if-none-match": etag})
    fields = dict(answer.headers)
    assert answer.status == 304
    assert {b"etag", b"cache-control", b"last-modified"} <= set(fields)
    assert b"content-length" not in fields
