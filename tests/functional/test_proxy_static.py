"""A static route served by the real `strangler serve` from a tmp directory: validators,
conditional requests, ranges, precompressed siblings, caching, refusals; and `strangler static
export --verify` against the real monolith."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from proxy.procs import Child
from tests.functional.proxy_support import (
    STRANGLER,
    ProxyProcess,
    Recorder,
    Table,
    counter,
    exchange,
    get,
    problem,
    running,
    seeded_monolith,
    send,
)

PY = sys.executable
BODY = bytes(range(256)) * 1024  # 256 KiB: several 64 KiB pieces


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("static")
    files = base / "files"
    (files / "img").mkdir(parents=True)
    (files / "img" / "big.bin").write_bytes(BODY)
    (files / "app.0123abcd.js").write_text("console.log(1)\n")
    (files / "app.0123abcd.js.gz").write_bytes(gzip.compress(b"console.log(1)\n"))
    (files / "app.0123abcd.js.br").write_bytes(b"pretend-brotli")
    (files / ".env").write_text("SECRET=1")
    (base / "secret.txt").write_text("outside the root")
    (files / "escape").symlink_to(base / "secret.txt")
    return base


@pytest.fixture(scope="module")
def proxy(upstreams: tuple[Recorder, Recorder], root: Path) -> Iterator[ProxyProcess]:
    main, _ = upstreams
    table = Table(
        root / "routes.yaml",
        {"main": main.url},
        [{"name": "assets", "match": {"path": "/static"}, "static": {"root": "files"}}],
    )
    with running(["--routes", str(table.write())]) as proxy:
        yield proxy


def test_a_file_with_every_header(proxy: ProxyProcess, upstream: Recorder) -> None:
    answer = get(proxy.external, "/static/img/big.bin")
    assert answer.status == 200
    assert answer.body == BODY
    assert answer.value("content-length") == str(len(BODY)).encode()
    assert answer.value("content-type") == b"application/octet-stream"
    etag = answer.value("etag")
    assert etag is not None
    assert re.fullmatch(rb'"[0-9a-f]+-[0-9a-f]+"', etag)
    assert answer.value("last-modified") is not None
    assert answer.value("cache-control") == b"public, max-age=3600"
    assert answer.value("accept-ranges") == b"bytes"
    assert answer.value("vary") is None
    assert answer.value("date") is not None
    assert not upstream.seen  # the upstream never saw it
    head = send(proxy.external, "HEAD", "/static/img/big.bin")
    assert head.status == 200
    assert head.body == b""
    assert head.value("content-length") == str(len(BODY)).encode()
    assert head.value("etag") == etag
    metrics = exchange(proxy.admin, b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n").body.decode()
    assert counter(metrics, "strangler_requests_total", upstream="static") >= 2


def test_not_modified_by_etag_and_by_date(proxy: ProxyProcess) -> None:
    first = get(proxy.external, "/static/img/big.bin")
    etag = (first.value("etag") or b"").decode()
    by_tag = get(proxy.external, "/static/img/big.bin", headers=[("If-None-Match", etag)])
    assert by_tag.status == 304
    assert by_tag.body == b""
    assert by_tag.value("etag") == etag.encode()
    assert by_tag.value("cache-control") is not None
    assert by_tag.value("last-modified") == first.value("last-modified")
    since = (first.value("last-modified") or b"").decode()
    by_date = get(proxy.external, "/static/img/big.bin", headers=[("If-Modified-Since", since)])
    assert by_date.status == 304
    # If-None-Match wins: a different tag means a full answer even with a recent date
    both = [("If-None-Match", '"other"'), ("If-Modified-Since", formatdate(usegmt=True))]
    assert get(proxy.external, "/static/img/big.bin", headers=both).status == 200


def test_ranges(proxy: ProxyProcess) -> None:
    part = get(proxy.external, "/static/img/big.bin", headers=[("Range", "bytes=100-199")])
    assert part.status == 206
    assert part.body == BODY[100:200]
    assert part.value("content-range") == f"bytes 100-199/{len(BODY)}".encode()
    tail = get(proxy.external, "/static/img/big.bin", headers=[("Range", "bytes=-10")])
    assert tail.body == BODY[-10:]
    beyond = get(proxy.external, "/static/img/big.bin", headers=[("Range", "bytes=999999999-")])
    assert beyond.status == 416
    assert beyond.value("content-range") == f"bytes */{len(BODY)}".encode()
    several = get(proxy.external, "/static/img/big.bin", headers=[("Range", "bytes=0-1,5-6")])
    assert several.status == 200
    assert several.body == BODY


def test_precompressed_by_accept_encoding(proxy: ProxyProcess) -> None:
    target = "/static/app.0123abcd.js"
    plain = get(proxy.external, target)
    assert plain.body == b"console.log(1)\n"
    assert plain.value("content-encoding") is None
    assert plain.value("vary") == b"Accept-Encoding"
    assert plain.value("cache-control") == b"public, max-age=3600, immutable"
    zipped = get(proxy.external, target, headers=[("Accept-Encoding", "gzip")])
    assert zipped.value("content-encoding") == b"gzip"
    assert gzip.decompress(zipped.body) == b"console.log(1)\n"
    assert (zipped.value("etag") or b"").endswith(b'-gz"')
    brotli = get(proxy.external, target, headers=[("Accept-Encoding", "gzip, br")])
    assert brotli.value("content-encoding") == b"br"
    assert brotli.body == b"pretend-brotli"
    refused = get(proxy.external, target, headers=[("Accept-Encoding", "br;q=0, gzip;q=0")])
    assert refused.value("content-encoding") is None


def test_writes_are_refused_with_allow(proxy: ProxyProcess) -> None:
    answer = send(proxy.external, "POST", "/static/img/big.bin", body=b"x")
    problem(answer, 405, "method-not-allowed")
    assert answer.value("allow") == b"GET, HEAD"


@pytest.mark.parametrize(
    "target",
    [
        b"/static/../secret.txt",
        b"/static/img/../../secret.txt",
        b"/static/%2e%2e/secret.txt",
        b"/static/%252e%252e/secret.txt",
        b"/static/..%5csecret.txt",
        b"/static/img%2F..%2F..%2Fsecret.txt",
        b"/static/img\\..\\..\\secret.txt",
        b"/static/img%00.bin",
        b"/static/escape",
        b"/static/.env",
        b"/static/img",
        b"/static/img/",
        b"/static/missing.png",
    ],
)
def test_escapes_are_refused(proxy: ProxyProcess, upstream: Recorder, target: bytes) -> None:
    answer = exchange(proxy.external, b"GET " + target + b" HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
    if answer.status == 200:  # only a request the normaliser sent elsewhere may be answered
        assert upstream.seen, target
        assert b"outside the root" not in answer.body
        return
    assert 400 <= answer.status < 500, (target, answer.status)
    problem(answer, answer.status)
    assert b"outside the root" not in answer.body
    assert b"SECRET" not in answer.body


# --- static export ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def monolith(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Child]:
    with seeded_monolith(tmp_path_factory.mktemp("monolith"), payments=5, users=2) as child:
        yield child


def strangler(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STRANGLER, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_export_then_verify_against_the_monolith(monolith: Child, tmp_path: Path) -> None:
    into = tmp_path / "static"
    done = strangler("static", "export", "--from", monolith.url, "--to", str(into), "--verify")
    assert done.returncode == 0, done.stderr
    files = sorted(p.relative_to(into).as_posix() for p in into.rglob("*") if p.is_file())
    assert files
    assert all(name.startswith("img/") for name in files)
    assert "verified" in done.stdout
    tampered = into / files[0]
    tampered.write_bytes(b"not the monolith's")
    check = strangler(
        "static", "export", "--from", monolith.url, "--to", str(into), "--verify", "--no-fetch"
    )
    assert check.returncode == 1
    assert f"/static/{files[0]}: bytes differ" in check.stderr
    assert len([line for line in check.stderr.splitlines() if "differ" in line]) == 1
