"""The request path → the key routes match on; ambiguous spellings are refused."""

from __future__ import annotations

import pytest

from proxy.dataplane.normalize import AmbiguousPath, match_key


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
    ],
)
def test_match_key(raw: bytes, key: str) -> None:
    assert match_key(raw) == key


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b"/a%2Fb", "encodes %2F", id="encoded-slash"),
        pytest.param(b"/a%2fb", "encodes %2F", id="encoded-slash-lower"),
        pytest.param(b"/a%5Cb", "encodes %5C", id="encoded-backslash"),
        pytest.param(b"/a%5cb", "encodes %5C", id="encoded-backslash-lower"),
        pytest.param(b"/a/%2E%2E/b", "encodes %2E", id="encoded-dot-dot"),
        pytest.param(b"/a/%2e/b", "encodes %2E", id="encoded-dot-lower"),
        pytest.param(b"/a%00", "encodes %00", id="encoded-nul"),
        pytest.param(b"/a%zzb", "malformed", id="non-hex-escape"),
        pytest.param(b"/a%", "malformed", id="trailing-percent"),
        pytest.param(b"/a%4", "malformed", id="half-escape"),
        pytest.param(b"/a%%41", "malformed", id="double-percent"),
        pytest.param(b"/a%g1", "malformed", id="second-digit-fine-first-not"),
        pytest.param(b"/a\\b", "backslash", id="backslash"),
        pytest.param(b"/..", "above the root", id="dot-dot-at-root"),
        pytest.param(b"/a/../..", "above the root", id="dot-dot-past-root"),
        pytest.param(b"/a/../../b", "above the root", id="climb-and-descend"),
        pytest.param(b"http://shop.example/a", "starting with '/'", id="absolute-form"),
        pytest.param(b"*", "starting with '/'", id="asterisk-form"),
        pytest.param(b"shop.example:443", "starting with '/'", id="authority-form"),
        pytest.param(b"", "starting with '/'", id="empty"),
    ],
)
def test_ambiguous_paths_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(AmbiguousPath, match=reason):
        match_key(raw)
