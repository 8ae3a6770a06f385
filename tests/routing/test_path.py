"""Canonical paths: one string, matched and forwarded, that no lenient backend reads otherwise.

The oracle: every variant is either refused (400), or its canonical path, read the way a
lenient backend would (decoding repeatedly, ``\\`` as ``/``, ``;params`` dropped, NFKC, case
folded, trailing dots and spaces trimmed, NUL truncating, dot-segments resolved), reaches the
same protected route the gateway matched it to, or the gateway matched nothing (404, never
forwarded). The canonical path is a fixed point: canonicalising what is forwarded changes
nothing.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import unquote

import pytest

from gateway.config.models import Match
from gateway.errors import PathNotCanonical
from gateway.routing.path import canonical_path
from gateway.routing.table import RouteTable

REFUSED = "REFUSED"
ALL = frozenset({"merge_slashes", "resolve_dots", "strip_trailing_slash"})

TABLE: RouteTable[str] = RouteTable(
    [
        (Match(path="/admin/**"), "admin"),  # needs role admin
        (Match(path="/api/**"), "api"),  # needs a token
        (Match(path="/public/**"), "public"),  # anonymous
    ]
)
PROTECTED = {"admin", "api"}

# (raw path, expected canonical path or REFUSED) with the default policy (normalize nothing).
DEFAULT_CASES: list[tuple[bytes, str]] = [
    # plain and case
    (b"/admin", "/admin"),
    (b"/admin/", "/admin/"),
    (b"/admin/x/", "/admin/x/"),
    (b"/ADMIN/x", "/ADMIN/x"),
    (b"/Admin/x", "/Admin/x"),
    (b"/adminx", "/adminx"),
    (b"/publicity", "/publicity"),
    (b"/public-admin", "/public-admin"),
    (b"/", "/"),
    # empty segments
    (b"//admin/x", REFUSED),
    (b"///admin/x", REFUSED),
    (b"/admin//x", REFUSED),
    (b"//public/../api/x", REFUSED),
    # dot segments, raw and encoded
    (b"/./admin/x", REFUSED),
    (b"/api/../admin/x", REFUSED),
    (b"/api/%2e%2e/admin/x", REFUSED),
    (b"/api/%2E%2E/admin/x", REFUSED),
    (b"/api/.%2e/admin/x", REFUSED),
    (b"/api/%2e./admin/x", REFUSED),
    (b"/api/./../admin/x", REFUSED),
    (b"/api/x/../../admin", REFUSED),
    (b"/admin/.", REFUSED),
    (b"/admin/%2e", REFUSED),
    (b"/admin/x/..", REFUSED),
    (b"/public/../admin/x", REFUSED),
    (b"/public/%2e%2e/admin/x", REFUSED),
    (b"/public/../api/x", REFUSED),
    (b"/public/..", REFUSED),
    (b"/public/%2E", REFUSED),
    # segments ending in a dot or a space (trimmed by Windows-style backends)
    (b"/admin./x", REFUSED),
    (b"/public/...", REFUSED),
    (b"/public/..%20/admin", REFUSED),
    (b"/public/%20../admin", REFUSED),
    (b"/admin%20/x", REFUSED),
    # a dot inside a segment is fine
    (b"/public/.well-known/x", "/public/.well-known/x"),
    (b"/public/..a", "/public/..a"),
    (b"/public/%2e%2ea", "/public/..a"),
    (b"/public/a%2Eb", "/public/a.b"),
    # encoded slashes and backslashes
    (b"/admin%2fx", REFUSED),
    (b"/admin%2Fx", REFUSED),
    (b"/api/..%2fadmin/x", REFUSED),
    (b"/api%2f..%2fadmin%2fx", REFUSED),
    (b"/public/..%2fadmin/x", REFUSED),
    (b"/public%2f..%2fadmin/x", REFUSED),
    (b"/api/..\\admin/x", REFUSED),
    (b"/api/..%5cadmin/x", REFUSED),
    (b"/\\admin/x", REFUSED),
    (b"/public/..\\admin/x", REFUSED),
    # path parameters (Tomcat ..;/)
    (b"/admin;x=1/x", REFUSED),
    (b"/admin;/x", REFUSED),
    (b"/api/..;/admin/x", REFUSED),
    (b"/public/..;/admin/x", REFUSED),
    (b"/public/a%3bb", REFUSED),
    # double encoding: %25 is refused outright
    (b"/api/%252e%252e/admin/x", REFUSED),
    (b"/public/%252e%252e/api/x", REFUSED),
    (b"/public/a%25b", REFUSED),
    (b"/public/%25%32%65", REFUSED),
    # NUL and control characters
    (b"/admin%00/x", REFUSED),
    (b"/public/%00/../../api/x", REFUSED),
    (b"/admin%09/x", REFUSED),
    (b"/public/a%0d%0ab", REFUSED),
    (b"/public/a%7fb", REFUSED),
    (b"/public/a\x00b", REFUSED),
    (b"/public/a\rb", REFUSED),
    (b"/public/a\x7fb", REFUSED),
    # fragment and query markers
    (b"/admin#/../api/x", REFUSED),
    (b"/public?x=/admin", REFUSED),
    (b"/public/a%3Fb", REFUSED),
    (b"/public/a%23b", REFUSED),
    # unreserved characters are decoded, reserved ones stay encoded (hex upper-cased)
    (b"/%61dmin/x", "/admin/x"),
    (b"/%41DMIN/x", "/ADMIN/x"),
    (b"/%61%64%6d%69%6e", "/admin"),
    (b"/public/%7Eu%5f%2D", "/public/~u_-"),
    (b"/public/a%3ab", "/public/a%3Ab"),
    (b"/public/a%3Ab", "/public/a%3Ab"),
    (b"/public/a:b@c!$&'()*+,=", "/public/a:b@c!$&'()*+,="),
    (b"/public/a%20b", "/public/a%20b"),
    (b"/public/a b", "/public/a%20b"),
    (b"/public/a{b}", "/public/a%7Bb%7D"),
    (b'/public/a"b', "/public/a%22b"),
    # invalid escapes
    (b"/public/x%zz", REFUSED),
    (b"/public/x%4", REFUSED),
    (b"/public/x%", REFUSED),
    (b"/public/x%2", REFUSED),
    # non-ASCII: raw bytes refused, valid UTF-8 kept encoded, confusables refused
    (b"/public/caf\xc3\xa9", REFUSED),
    (b"/public/caf%c3%a9", "/public/caf%C3%A9"),
    (b"/public/stra%C3%9Fe", "/public/stra%C3%9Fe"),
    (b"/public/%E6%97%A5%E6%9C%AC", "/public/%E6%97%A5%E6%9C%AC"),
    (b"/%EF%BD%81dmin/x", REFUSED),  # full-width a (NFKC -> a)
    (b"/public/%EF%BC%8E%EF%BC%8E/admin", REFUSED),  # full-width dots
    (b"/public/%EF%BC%8Fadmin", REFUSED),  # full-width solidus
    (b"/public/%E2%80%A4%E2%80%A4/admin", REFUSED),  # one-dot leaders
    (b"/public/%E2%84%AA", REFUSED),  # Kelvin sign (lower-cases to k)
    (b"/public/%C4%B1", REFUSED),  # dotless i (upper-cases to I)
    (b"/public/%E2%80%AE", REFUSED),  # right-to-left override (Cf)
    (b"/public/a%E2%80%8Bb", REFUSED),  # zero-width space
    (b"/public/%C2%A0", REFUSED),  # no-break space
    (b"/public/%C2%85", REFUSED),  # C1 control NEL
    # invalid UTF-8
    (b"/api/..%c0%afadmin/x", REFUSED),  # overlong "/"
    (b"/public/%c0%ae%c0%ae/admin", REFUSED),  # overlong "."
    (b"/public/%e0%80%ae", REFUSED),
    (b"/public/%ed%a0%80", REFUSED),  # surrogate
    (b"/public/%ff", REFUSED),
    (b"/public/%c3", REFUSED),  # truncated
    (b"/public/%c3x", REFUSED),
    # absolute form and other non-paths
    (b"http://gw.test/admin/x", REFUSED),
    (b"http://gw.test/api/../admin/x", REFUSED),
    (b"", REFUSED),
    (b"*", REFUSED),
    (b"admin", REFUSED),
]

# (raw path, normalize options, expected)
NORMALIZE_CASES: list[tuple[bytes, frozenset[str], str]] = [
    (b"//admin/x", frozenset({"merge_slashes"}), "/admin/x"),
    (b"///admin//x//", frozenset({"merge_slashes"}), "/admin/x/"),
    (b"//", frozenset({"merge_slashes"}), "/"),
    (b"/public//x", frozenset({"merge_slashes"}), "/public/x"),
    (b"/public/../admin/x", frozenset({"merge_slashes"}), REFUSED),
    (b"/public/../admin/x", frozenset({"resolve_dots"}), "/admin/x"),
    (b"/api/%2e%2e/admin", frozenset({"resolve_dots"}), "/admin"),
    (b"/api/.%2e/admin/x", frozenset({"resolve_dots"}), "/admin/x"),
    (b"/public/./x", frozenset({"resolve_dots"}), "/public/x"),
    (b"/public/x/.", frozenset({"resolve_dots"}), "/public/x/"),
    (b"/public/..", frozenset({"resolve_dots"}), "/"),
    (b"/..", frozenset({"resolve_dots"}), REFUSED),
    (b"/public/../../x", frozenset({"resolve_dots"}), REFUSED),
    (b"/public/..%2fadmin", frozenset({"resolve_dots"}), REFUSED),
    (b"/public/..;/admin", frozenset({"resolve_dots"}), REFUSED),
    (b"/public/..\\admin", frozenset({"resolve_dots"}), REFUSED),
    (b"/public/%252e%252e/admin", frozenset({"resolve_dots"}), REFUSED),
    (b"/admin./x", frozenset({"resolve_dots"}), REFUSED),
    (b"//public/../admin", frozenset({"resolve_dots"}), REFUSED),
    (b"/admin/", frozenset({"strip_trailing_slash"}), "/admin"),
    (b"/admin/x/", frozenset({"strip_trailing_slash"}), "/admin/x"),
    (b"/%61dmin/", frozenset({"strip_trailing_slash"}), "/admin"),
    (b"/", frozenset({"strip_trailing_slash"}), "/"),
    (b"//public/./../admin//", ALL, "/admin"),
    (b"/public/x/../../api/", ALL, "/api"),
    (b"//..", ALL, REFUSED),
    (b"/admin%00", ALL, REFUSED),
    (b"/api/..%c0%af", ALL, REFUSED),
    (b"/%EF%BD%81dmin", ALL, REFUSED),
]


def lenient_read(path: str) -> str:
    """How a lenient backend might read a forwarded path (the test oracle)."""
    text = path
    for _ in range(3):
        text = unquote(text, errors="replace")
    text = text.split("\x00")[0].split("#")[0].split("?")[0]
    text = unicodedata.normalize("NFKC", text.replace("\\", "/")).lower()
    segments: list[str] = []
    for raw in text.split("/"):
        segment = raw.split(";")[0]
        if segment not in (".", ".."):
            segment = segment.strip().rstrip(". ")
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def route_of(path: str) -> str | None:
    found = TABLE.match("GET", path, None)
    return None if found is None else found.payload


def assert_safe(canonical: str, normalize: frozenset[str]) -> None:
    """The forwarded path reaches no protected route other than the one the gateway matched."""
    matched = route_of(canonical)
    backend = route_of(lenient_read(canonical))
    if backend in PROTECTED:
        assert matched in (backend, None), (canonical, matched, backend)
    # What is forwarded canonicalises to itself: matching it again gives the same answer.
    assert canonical_path(canonical.encode("ascii"), normalize) == canonical


@pytest.mark.parametrize(("raw", "expected"), DEFAULT_CASES, ids=[repr(c[0])[2:-1] for c in DEFAULT_CASES])
def test_default_policy(raw: bytes, expected: str) -> None:
    if expected == REFUSED:
        with pytest.raises(PathNotCanonical) as caught:
            canonical_path(raw)
        assert caught.value.status == 400
        assert caught.value.reason == "path_not_canonical"
        return
    canonical = canonical_path(raw)
    assert canonical == expected
    assert_safe(canonical, frozenset())


@pytest.mark.parametrize(
    ("raw", "normalize", "expected"),
    NORMALIZE_CASES,
    ids=[f"{repr(c[0])[2:-1]}-{'+'.join(sorted(c[1]))}" for c in NORMALIZE_CASES],
)
def test_normalize_options(raw: bytes, normalize: frozenset[str], expected: str) -> None:
    if expected == REFUSED:
        with pytest.raises(PathNotCanonical):
            canonical_path(raw, normalize)
        return
    canonical = canonical_path(raw, normalize)
    assert canonical == expected
    assert_safe(canonical, normalize)


@pytest.mark.parametrize("raw", [c[0] for c in DEFAULT_CASES])
def test_every_variant_is_refused_or_safe_under_every_option(raw: bytes) -> None:
    for normalize in (frozenset(), *(frozenset({o}) for o in ALL), ALL):
        try:
            canonical = canonical_path(raw, normalize)
        except PathNotCanonical:
            continue
        assert_safe(canonical, normalize)


def test_resolved_path_is_matched_as_what_it_resolves_to() -> None:
    # With resolve_dots, /public/../admin is /admin: the admin rule applies, /admin is forwarded.
    canonical = canonical_path(b"/public/../admin/x", frozenset({"resolve_dots"}))
    assert route_of(canonical) == "admin"


def test_refusal_detail_never_echoes_the_path() -> None:
    secret = b"/public/%00<script>alert(1)</script>"
    with pytest.raises(PathNotCanonical) as caught:
        canonical_path(secret)
    assert "script" not in caught.value.detail
    assert "NUL" in caught.value.detail


@pytest.mark.parametrize(
    "raw",
    [b"/", b"/a", b"/a/", b"/api/v1/users/42/orders", b"/.well-known/openid-configuration", b"/a:b@c"],
)
def test_fast_path_agrees_with_the_slow_path(raw: bytes) -> None:
    from gateway.routing.path import _slow_path

    for normalize in (frozenset(), ALL):
        assert canonical_path(raw, normalize) == _slow_path(raw, normalize)


def test_unknown_normalize_option_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown normalize"):
        canonical_path(b"//x", frozenset({"fold_case"}))


def test_at_least_fifty_variants() -> None:
    assert len(DEFAULT_CASES) + len(NORMALIZE_CASES) >= 50


@pytest.mark.parametrize(
    "encoded",
    [b"%E2%88%95", b"%E2%88%96", b"%E2%81%84", b"%E2%A7%B8", b"%E2%A7%B9", b"%C2%A5", b"%E2%82%A9"],
    ids=["division_slash", "set_minus", "fraction_slash", "big_solidus", "big_reverse_solidus", "yen", "won"],
)
def test_windows_best_fit_path_characters_are_refused(encoded: bytes) -> None:
    # Windows' best-fit mapping reads these as '/', '\\' (yen and won in Japanese and Korean
    # code pages): "..<char>admin" would be "../admin" to a backend using the ANSI APIs.
    with pytest.raises(PathNotCanonical):
        canonical_path(b"/pub/.." + encoded + b"admin", frozenset())
