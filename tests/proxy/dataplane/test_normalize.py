"""The request path → the readings routes match on: the canonical key (every spelling a lenient
backend reads as one path gives one key), the strict and lenient other readings, and what is
refused whatever the routes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.dataplane.normalize import (
    AmbiguousPath,
    Readings,
    fold,
    match_key,
    plain_key,
    read_path,
)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        pytest.param(b"/api/v1/payments", "/api/v1/payments", id="fast-path"),
        pytest.param(b"/", "/", id="root"),
        pytest.param(b"/api/v1/payments/", "/api/v1/payments", id="trailing-slash"),
        pytest.param(b"/a.b/c-d_e~f", "/a.b/c-d_e~f", id="unreserved-punctuation"),
        pytest.param(b"/a/./b", "/a/b", id="dot-segment"),
        pytest.param(b"/a/.", "/a", id="trailing-dot-segment"),
        pytest.param(b"/a/b/../c", "/a/c", id="dot-dot-segment"),
        pytest.param(b"/a/..", "/", id="dot-dot-to-root"),
        pytest.param(b"/a/b/../../c/", "/c", id="two-dot-dots-and-trailing-slash"),
        pytest.param(b"/a//b", "/a/b", id="duplicate-slash"),
        pytest.param(b"//a///b//", "/a/b", id="many-duplicate-slashes"),
        pytest.param(b"//", "/", id="double-root"),
        pytest.param(b"/a/.hidden/..b", "/a/.hidden/..b", id="dots-inside-segments"),
        pytest.param(b"/%61pi/v1", "/api/v1", id="percent-letter"),
        pytest.param(b"/%41%42", "/AB", id="upper-case-letters"),
        pytest.param(b"/a%7Eb", "/a~b", id="percent-tilde-upper-hex"),
        pytest.param(b"/a%7eb", "/a~b", id="percent-tilde-lower-hex"),
        pytest.param(b"/api/%76%31/./payments//", "/api/v1/payments", id="everything-at-once"),
        # Separators: '\\', %5C and %2F read as '/'.
        pytest.param(b"/a%2Fb", "/a/b", id="encoded-slash"),
        pytest.param(b"/a%2fb", "/a/b", id="encoded-slash-lower"),
        pytest.param(b"/a%5Cb", "/a/b", id="encoded-backslash"),
        pytest.param(b"/a%5cb", "/a/b", id="encoded-backslash-lower"),
        pytest.param(b"/a\\b", "/a/b", id="backslash"),
        pytest.param(b"/a/%2E%2E/b", "/b", id="encoded-dot-dot"),
        pytest.param(b"/a/%2e/b", "/a/b", id="encoded-dot-lower"),
        pytest.param(b"/x%2F..%2Fadmin", "/admin", id="encoded-slash-traversal"),
        pytest.param(b"/x\\..\\admin", "/admin", id="backslash-traversal"),
        # Path parameters are cut; trailing dots and spaces stripped.
        pytest.param(b"/admin;x=1", "/admin", id="path-parameter"),
        pytest.param(b"/admin;jsessionid=ab/flip", "/admin/flip", id="parameter-mid-path"),
        pytest.param(b"/admin%3Bx", "/admin", id="encoded-semicolon"),
        pytest.param(b"/;x/admin", "/admin", id="segment-of-parameters-only"),
        pytest.param(b"/x/..;/admin", "/admin", id="tomcat-dot-dot-semicolon"),
        pytest.param(b"/admin.", "/admin", id="trailing-dot"),
        pytest.param(b"/admin..", "/admin", id="trailing-dots"),
        pytest.param(b"/admin./", "/admin", id="trailing-dot-and-slash"),
        pytest.param(b"/admin%2e", "/admin", id="encoded-trailing-dot"),
        pytest.param(b"/admin%20", "/admin", id="trailing-space"),
        pytest.param(b"/admin%20.%20/flip", "/admin/flip", id="trailing-dots-and-spaces"),
        pytest.param(b"/./admin", "/admin", id="leading-dot-segment"),
        pytest.param(b"/x/../admin", "/admin", id="dot-dot-into-admin"),
        pytest.param(b"//admin", "/admin", id="double-slash"),
        pytest.param(b"/a%20b/c.d", "/a b/c.d", id="inner-space-and-dot-kept"),
        pytest.param(b"/%25", "/%", id="escaped-percent-decoded-once"),
        pytest.param(b"/%252F", "/%2F", id="double-escape-decoded-once"),
        pytest.param(b"/caf%C3%A9", "/caf\xc3\xa9", id="utf-8-as-latin-1"),
        pytest.param(b"/ADMIN/Flip", "/ADMIN/Flip", id="case-kept"),
    ],
)
def test_match_key(raw: bytes, key: str) -> None:
    assert match_key(raw) == key


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        pytest.param(b"/ADMIN/Flip", "/admin/flip", id="plain"),
        pytest.param(b"/%41dmin;X=1", "/admin", id="escaped-letter"),
        pytest.param(b"/Admin%2FX", "/admin/x", id="escaped-slash"),
        pytest.param(b"/\xe2\x84\xaaiosk", "/kiosk", id="kelvin-sign-folds-to-k"),
    ],
)
def test_a_case_insensitive_table_folds_the_key(raw: bytes, key: str) -> None:
    assert match_key(raw, case_insensitive=True) == key


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b"/a%00", "control character", id="encoded-nul"),
        pytest.param(b"/a\x00b", "control character", id="raw-nul"),
        pytest.param(b"/admin%09", "control character", id="encoded-tab"),
        pytest.param(b"/admin\t", "control character", id="raw-tab"),
        pytest.param(b"/a%0Ab", "control character", id="encoded-line-feed"),
        pytest.param(b"/a%7F", "control character", id="encoded-delete"),
        pytest.param(b"/a%zzb", "malformed", id="non-hex-escape"),
        pytest.param(b"/a%", "malformed", id="trailing-percent"),
        pytest.param(b"/a%4", "malformed", id="half-escape"),
        pytest.param(b"/a%%41", "malformed", id="double-percent"),
        pytest.param(b"/a%g1", "malformed", id="second-digit-fine-first-not"),
        pytest.param(b"/..", "above the root", id="dot-dot-at-root"),
        pytest.param(b"/a/../..", "above the root", id="dot-dot-past-root"),
        pytest.param(b"/a/../../b", "above the root", id="climb-and-descend"),
        pytest.param(b"/%2e%2e/etc", "above the root", id="encoded-dots-at-root"),
        pytest.param(b"/..;/etc", "above the root", id="dot-dot-semicolon-at-root"),
        pytest.param(b"/a%2F..%2F..%2Fetc", "above the root", id="encoded-slash-climb"),
        pytest.param(b"/a\\..\\..\\etc", "above the root", id="backslash-climb"),
        pytest.param(b"/a/.../b", "dots and spaces", id="three-dots"),
        pytest.param(b"/a/.%20/b", "dots and spaces", id="dot-space"),
        pytest.param(b"/a/%20/b", "dots and spaces", id="space-segment"),
        pytest.param(b"http://shop.example/a", "starting with '/'", id="absolute-form"),
        pytest.param(b"*", "starting with '/'", id="asterisk-form"),
        pytest.param(b"shop.example:443", "starting with '/'", id="authority-form"),
        pytest.param(b"", "starting with '/'", id="empty"),
    ],
)
def test_what_is_refused_whatever_the_routes(raw: bytes, reason: str) -> None:
    with pytest.raises(AmbiguousPath, match=reason):
        match_key(raw)
    with pytest.raises(AmbiguousPath, match=reason):
        read_path(raw)


def test_a_double_escaped_nul_is_refused() -> None:
    """A backend that decodes twice would see NUL."""
    with pytest.raises(AmbiguousPath, match="control character"):
        match_key(b"/a%2500")


@pytest.mark.parametrize(
    ("raw", "readings"),
    [
        pytest.param(b"/api/v1/payments", Readings("/api/v1/payments"), id="plain"),
        pytest.param(b"/a/%62", Readings("/a/b"), id="escape-read-once-is-all"),
        pytest.param(
            b"/pay/ab%2Fcd",
            Readings("/pay/ab/cd", strict=("/pay/ab%2Fcd",)),
            id="escaped-slash-kept-in-its-segment",
        ),
        pytest.param(
            b"/pay/ab%5ccd",
            Readings("/pay/ab/cd", strict=("/pay/ab%5ccd",)),
            id="escaped-backslash-kept-in-its-segment",
        ),
        pytest.param(
            b"/pay/ab\\cd",
            Readings("/pay/ab/cd", strict=("/pay/ab\\cd",)),
            id="backslash-kept-in-its-segment",
        ),
        pytest.param(
            b"/x%2F..%2Fadmin",
            Readings("/admin", strict=("/x%2F..%2Fadmin",)),
            id="escaped-traversal",
        ),
        pytest.param(
            b"/%2561dmin",
            Readings("/%61dmin", strict=("/admin",)),
            id="double-escaped-letter",
        ),
        pytest.param(
            b"/admin%252Fflip",
            Readings("/admin%2Fflip", strict=("/admin/flip",)),
            id="double-escaped-slash",
        ),
        pytest.param(b"/off/50%25zz", Readings("/off/50%zz"), id="no-escape-after-one-decoding"),
        pytest.param(
            b"/off/50%2541%25zz",
            Readings("/off/50%41%zz", strict=("/off/50A%zz",)),
            id="malformed-after-one-decoding-stays",
        ),
        pytest.param(
            b"/admin;x=1", Readings("/admin", lenient=("/admin;x=1",)), id="parameter-as-written"
        ),
        pytest.param(
            b"/admin/health.", Readings("/admin/health", lenient=("/admin/health.",)), id="dot"
        ),
        pytest.param(
            b"/admin/../public",
            Readings("/public", lenient=("/admin/../public",)),
            id="dot-segments-as-written",
        ),
        pytest.param(b"//admin//", Readings("/admin"), id="empty-segments-read-alike"),
    ],
)
def test_readings(raw: bytes, readings: Readings) -> None:
    assert read_path(raw) == readings


def test_readings_of_a_case_insensitive_table_are_folded() -> None:
    assert read_path(b"/Pay/AB%2FCD;X", case_insensitive=True) == Readings(
        "/pay/ab/cd", strict=("/pay/ab%2fcd",), lenient=("/pay/ab%2fcd;x",)
    )


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"/pay/ab%2Fcd", id="escaped-slash"),
        pytest.param(b"/pay/ab%2fcd", id="escaped-slash-lower"),
        pytest.param(b"/pay/ab%5Ccd", id="escaped-backslash"),
        pytest.param(b"/pay/ab%252Fcd", id="double-escaped-slash"),
        pytest.param(b"/pay/ab%255ccd", id="double-escaped-backslash"),
    ],
)
def test_refuse_mode_refuses_every_escaped_slash(raw: bytes) -> None:
    read_path(raw)  # "check" reads it
    with pytest.raises(AmbiguousPath, match="encodes a slash"):
        read_path(raw, refuse_escaped_slashes=True)


def test_refuse_mode_still_reads_a_raw_backslash_both_ways() -> None:
    readings = read_path(b"/a\\b", refuse_escaped_slashes=True)
    assert readings == Readings("/a/b", strict=("/a\\b",))


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        pytest.param("/ADMIN/Flip", "/admin/flip", id="ascii"),
        pytest.param("/\xe2\x84\xaaiosk", "/kiosk", id="kelvin-sign-in-utf-8"),
        pytest.param("/STRA\xc3\x9fE", "/strasse", id="sharp-s-folds-fully"),
        pytest.param("/\xc0b", "/\xe0b", id="not-utf-8-lower-cased"),
    ],
)
def test_fold(text: str, folded: str) -> None:
    assert fold(text) == folded


@pytest.mark.parametrize(
    "raw",
    [
        b"/a%41",
        b"/a\\b",
        b"/a;b",
        b"/a.",
        b"/a./b",
        b"/a/.b",
        b"/a//b",
        b"/a ",
        b"/a\tb",
        b"/caf\xc3\xa9",
        b"a/b",
        b"",
        b"*",
    ],
)
def test_a_path_that_needs_reading_leaves_the_fast_path(raw: bytes) -> None:
    assert plain_key(raw) is None


PIECES = ["a", "B", "/", "//", ".", "..", ";p", "%2F", "%5c", "%2e", "%20", "%41", "%252F", "\\"]


@settings(max_examples=400, derandomize=True, database=None)
@given(st.lists(st.sampled_from(PIECES), max_size=10))
def test_every_path_reads_to_a_canonical_key(pieces: list[str]) -> None:
    """The fast path agrees with the full reading, and the key is a fixed point: a key read
    again is itself (it has nothing left to decode, cut, strip or resolve)."""
    raw = ("/" + "".join(pieces)).encode()
    try:
        readings = read_path(raw)
    except AmbiguousPath:
        assert plain_key(raw) is None
        return
    key = readings.key
    fast = plain_key(raw)
    if fast is not None:
        assert readings == Readings(fast)
    segments = key.split("/")[1:]
    assert key == "/" or all(s and s not in (".", "..") and s[-1] not in ". " for s in segments)
    assert ";" not in key
    assert "\\" not in key
    if "%" not in key:
        assert match_key(key.encode()) == key
