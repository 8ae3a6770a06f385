"""The route table: patterns, methods, hosts, first-match precedence, shadowed routes."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.models import Match
from gateway.errors import ConfigError
from gateway.routing.table import RouteTable, compile_path_pattern, normalize_host


def table(
    *routes: tuple[str, dict[str, Any]] | str, normalize: frozenset[str] = frozenset()
) -> RouteTable[int]:
    entries = []
    for i, route in enumerate(routes):
        path, extra = (route, {}) if isinstance(route, str) else route
        entries.append((Match(path=path, **extra), i))
    return RouteTable(entries, normalize=normalize)


def matched(t: RouteTable[int], path: str, method: str = "GET", host: str | None = None) -> int | None:
    found = t.match(method, path, host)
    return None if found is None else found.payload


# ------------------------------------------------------------------------------ path patterns

# (pattern, path, matches?)
PATTERN_CASES = [
    ("/exact", "/exact", True),
    ("/exact", "/exact/", False),
    ("/exact", "/exact/x", False),
    ("/exact", "/exactly", False),
    ("/exact", "/EXACT", False),
    ("/", "/", True),
    ("/", "/x", False),
    ("/a/", "/a/", True),
    ("/a/", "/a", False),
    ("/public/**", "/public", True),
    ("/public/**", "/public/", True),
    ("/public/**", "/public/x", True),
    ("/public/**", "/public/x/y/z/", True),
    ("/public/**", "/publicity", False),
    ("/public/**", "/public-admin", False),
    ("/public/**", "/publi", False),
    ("/public/**", "/", False),
    ("/**", "/", True),
    ("/**", "/anything/at/all", True),
    ("/a/*", "/a/b", True),
    ("/a/*", "/a/", False),
    ("/a/*", "/a", False),
    ("/a/*", "/a/b/c", False),
    ("/a/*/c", "/a/b/c", True),
    ("/a/*/c", "/a/b/d", False),
    ("/*/c", "/x/c", True),
    ("/a/*/**", "/a/b", True),
    ("/a/*/**", "/a/b/c/d", True),
    ("/a/*/**", "/a", False),
    ("/users/{id}", "/users/42", True),
    ("/users/{id}", "/users/", False),
    ("/users/{id}", "/users/42/x", False),
    ("/users/{id}/**", "/users/42/orders/7", True),
    ("/caf%C3%A9", "/caf%C3%A9", True),
    ("/café", "/caf%C3%A9", True),
    ("/%61dmin", "/admin", True),
    ("/a%3ab", "/a%3Ab", True),
    ("/a.json", "/a.json", True),
    ("/a.json", "/aXjson", False),  # regex metacharacters are escaped
    ("/a+b", "/a+b", True),
    ("/a+b", "/aab", False),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), PATTERN_CASES)
def test_path_patterns(pattern: str, path: str, expected: bool) -> None:
    t = table(pattern)
    assert (matched(t, path) == 0) is expected


def test_named_segments_are_captured_as_canonical_strings() -> None:
    t = table("/orgs/{org}/users/{id}", "/files/{name}/**")
    found = t.match("GET", "/orgs/acme/users/a%3Ab", None)
    assert found is not None
    assert found.index == 0
    assert dict(found.params) == {"org": "acme", "id": "a%3Ab"}
    found = t.match("GET", "/files/report.pdf/v2", None)
    assert found is not None and dict(found.params) == {"name": "report.pdf"}
    found = t.match("GET", "/orgs/acme/users/1", None)
    assert found is not None and found.payload == 0


def test_route_without_params_has_empty_params() -> None:
    found = table("/a/**").match("GET", "/a/b", None)
    assert found is not None and dict(found.params) == {}


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("/a/**/b", "last segment"),
        ("/a/**/", "last segment"),
        ("/files/*.json", "whole segments"),
        ("/x{id}", "whole segments"),
        ("/{id}/{id}", "twice"),
        ("/{1x}", "whole segments"),
        ("//a", "empty segment"),
        ("/a//b", "empty segment"),
        ("/a/../b", "canonical"),
        ("/a/./b", "canonical"),
        ("/a;x", "canonical"),
        ("/a%2Fb", "canonical"),
        ("/a%00", "canonical"),
        ("/a%25", "canonical"),
        ("/a.", "canonical"),
        ("/\uff41dmin", "canonical"),
    ],
)
def test_invalid_patterns_are_config_errors(pattern: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        table("/ok", pattern)
    assert caught.value.path == "routes[1].match.path"


def test_trailing_slash_pattern_refused_when_slashes_are_stripped() -> None:
    with pytest.raises(ConfigError, match="strip_trailing_slash"):
        table("/a/", normalize=frozenset({"strip_trailing_slash"}))
    table("/", normalize=frozenset({"strip_trailing_slash"}))  # the root stays matchable


def test_pattern_model() -> None:
    pattern = compile_path_pattern("/a/{id}/**")
    assert pattern.rest and pattern.params == ("id",) and pattern.first == "a"
    assert compile_path_pattern("/{x}").first is None
    assert compile_path_pattern("/**").first is None


# ------------------------------------------------------------------------------------ methods


def test_methods() -> None:
    t = table(("/a", {"methods": ["GET"]}), ("/a", {"methods": ["POST", "DELETE"]}), "/a")
    assert matched(t, "/a", "GET") == 0
    assert matched(t, "/a", "POST") == 1
    assert matched(t, "/a", "DELETE") == 1
    assert matched(t, "/a", "PATCH") == 2
    assert matched(t, "/a", "PROPFIND") == 2


def test_head_matches_a_get_route() -> None:
    # Backends answer HEAD with the GET handler: HEAD must meet the GET route's rule.
    t = table(("/a", {"methods": ["GET"]}), "/a")
    assert matched(t, "/a", "HEAD") == 0


def test_head_does_not_match_a_post_route() -> None:
    t = table(("/a", {"methods": ["POST"]}), "/a")
    assert matched(t, "/a", "HEAD") == 1


def test_methods_compare_case_insensitively() -> None:
    # Werkzeug upper-cases methods: "get" must meet the GET route's rule, not skip it.
    t = table(("/a", {"methods": ["GET"]}), "/**")
    assert matched(t, "/a", "get") == 0
    assert matched(t, "/a", "gEt") == 0
    assert matched(t, "/a", "head") == 0


def test_methods_in_config_are_upper_cased() -> None:
    t = table(("/a", {"methods": ["post"]}))
    assert matched(t, "/a", "POST") == 0
    assert matched(t, "/a", "GET") is None


def test_no_route_for_method_is_no_match() -> None:
    t = table(("/a", {"methods": ["GET"]}))
    assert matched(t, "/a", "POST") is None
    assert matched(t, "/b", "GET") is None


# -------------------------------------------------------------------------------------- hosts


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.example.com", 0),
        ("API.Example.COM", 0),
        ("api.example.com:8443", 0),
        ("api.example.com.", 0),
        ("x.tenant.example.com", 1),
        ("tenant.example.com", 1),
        ("example.com", 2),
        ("evil-example.com", 2),
        ("api.example.com.evil.net", 2),
        ("[::1]:8080", 3),
        ("[::1]", 3),
        (None, 2),
        ("", 2),
        ("bad host", 2),
        ("api.example.com:port", 2),
        ("api.example.com\x00x", 2),
    ],
)
def test_hosts(host: str | None, expected: int) -> None:
    t = table(
        ("/a", {"host": "api.example.com"}),
        ("/a", {"host": ["*.example.com"]}),
        "/a",
        ("/b", {"host": "[::1]"}),
    )
    path = "/b" if expected == 3 else "/a"
    assert matched(t, path, "GET", host) == expected


def test_host_route_never_matches_without_host() -> None:
    t = table(("/a", {"host": "api.example.com"}))
    assert matched(t, "/a", "GET", None) is None


@pytest.mark.parametrize("bad", ["api.example.com:8080", "*", "a..b/x", "http://x", "*.*.x"])
def test_invalid_host_patterns(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        table(("/a", {"host": bad}))
    assert caught.value.path == "routes[0].match.host"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Example.COM:80", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:443", "[::1]"),
        ("[::1", None),
        ("[::1]x", None),
        ("a b", None),
        ("", None),
        (None, None),
        ("x:", None),
    ],
)
def test_normalize_host(raw: str | None, normal: str | None) -> None:
    assert normalize_host(raw) == normal


# --------------------------------------------------------------------------------- precedence


def test_first_match_in_file_order_wins() -> None:
    t = table("/api/**", "/api/admin/**", "/api/users/{id}")
    assert matched(t, "/api/admin/x") == 0
    assert matched(t, "/api/users/1") == 0
    t = table("/api/admin/**", "/api/users/{id}", "/api/**")
    assert matched(t, "/api/admin/x") == 0
    assert matched(t, "/api/users/1") == 1
    assert matched(t, "/api/other") == 2


def test_precedence_across_first_segment_index() -> None:
    # A wildcard first segment listed before a literal one still wins (file order).
    t = table("/{tenant}/admin", "/acme/admin", "/acme/**")
    assert matched(t, "/acme/admin") == 0
    assert matched(t, "/acme/x") == 2
    assert matched(t, "/other/admin") == 0


def test_precedence_with_methods_and_hosts() -> None:
    t = table(
        ("/a/**", {"methods": ["POST"]}),
        ("/a/**", {"host": "h.test"}),
        "/a/**",
    )
    assert matched(t, "/a/x", "POST") == 0
    assert matched(t, "/a/x", "GET", "h.test") == 1
    assert matched(t, "/a/x", "POST", "h.test") == 0
    assert matched(t, "/a/x", "GET", "other.test") == 2


def test_unmatched_is_none() -> None:
    t = table("/a", "/b/**")
    assert matched(t, "/c") is None
    assert matched(RouteTable([]), "/a") is None


def test_large_table_matches_each_route() -> None:
    routes: list[tuple[str, dict[str, Any]] | str] = []
    for i in range(40):
        routes.append((f"/svc{i}/items/{{id}}", {"methods": ["GET", "POST"]}))
        routes.append(f"/svc{i}/**")
    t = table(*routes)
    for i in range(40):
        found = t.match("GET", f"/svc{i}/items/7", None)
        assert found is not None and found.payload == 2 * i and dict(found.params) == {"id": "7"}
        assert matched(t, f"/svc{i}/items/7", "DELETE") == 2 * i + 1
        assert matched(t, f"/svc{i}", "GET") == 2 * i + 1


# -------------------------------------------------------------------------------- unreachable

# (earlier, later, later is unreachable?)
COVER_CASES = [
    ("/**", "/anything", True),
    ("/**", "/a/**", True),
    ("/a/**", "/a", True),
    ("/a/**", "/a/", True),
    ("/a/**", "/a/b/**", True),
    ("/a/**", "/a/{id}", True),
    ("/a/**", "/ab", False),
    ("/a/**", "/**", False),
    ("/a/b/**", "/a/**", False),
    ("/a/*", "/a/b", True),
    ("/a/*", "/a/{id}", True),
    ("/a/{x}", "/a/*", True),
    ("/a/*", "/a/", False),
    ("/a/*", "/a/b/c", False),
    ("/a/*", "/a/**", False),
    ("/a/b", "/a/*", False),
    ("/a/b", "/a/b", True),
    ("/a/*/c", "/a/b/c", True),
    ("/a/b/c", "/a/*/c", False),
    ("/*/**", "/a/b", True),
    ("/*/**", "/", False),
]


@pytest.mark.parametrize(("earlier", "later", "unreachable"), COVER_CASES)
def test_unreachable_paths(earlier: str, later: str, unreachable: bool) -> None:
    assert table(earlier, later).unreachable() == ([(1, 0)] if unreachable else [])


def test_unreachable_with_methods_and_hosts() -> None:
    assert table(("/a", {"methods": ["GET"]}), "/a").unreachable() == []
    assert table("/a", ("/a", {"methods": ["GET"]})).unreachable() == [(1, 0)]
    assert table(("/a", {"methods": ["GET", "POST"]}), ("/a", {"methods": ["POST"]})).unreachable() == [
        (1, 0)
    ]
    assert table(("/a", {"methods": ["GET"]}), ("/a", {"methods": ["HEAD"]})).unreachable() == [(1, 0)]
    assert table(("/a", {"methods": ["HEAD"]}), ("/a", {"methods": ["GET"]})).unreachable() == []
    assert table(("/a", {"host": "x.test"}), "/a").unreachable() == []
    assert table("/a", ("/a", {"host": "x.test"})).unreachable() == [(1, 0)]
    assert table(("/a", {"host": "*.test"}), ("/a", {"host": ["x.test", "*.y.test"]})).unreachable() == [
        (1, 0)
    ]
    assert table(("/a", {"host": "*.y.test"}), ("/a", {"host": "*.test"})).unreachable() == []


def test_unreachable_reports_the_first_covering_route() -> None:
    t = table("/a/**", "/b", "/**", "/a/x", "/c")
    assert t.unreachable() == [(3, 0), (4, 2)]


# --------------------------------------------------------------------------------- candidates


def test_candidates_explain_every_route() -> None:
    t = table(
        "/public/**",
        ("/api/**", {"methods": ["POST"]}),
        ("/api/**", {"host": "h.test"}),
        "/api/{x}",
        "/**",
    )
    result = t.candidates("GET", "/api/x", "other.test")
    assert [(c.index, c.matched) for c in result] == [
        (0, False),
        (1, False),
        (2, False),
        (3, True),
        (4, False),
    ]
    assert "does not match /public/**" in result[0].why
    assert "method GET" in result[1].why and "POST" in result[1].why
    assert "host other.test" in result[2].why
    assert "first match" in result[3].why
    assert "route 3 comes first" in result[4].why
    winner = t.match("GET", "/api/x", "other.test")
    assert winner is not None and winner.index == 3


def test_candidates_without_host() -> None:
    t = table(("/a", {"host": "h.test"}))
    (only,) = t.candidates("GET", "/a", None)
    assert not only.matched and "Host" in only.why


def test_len() -> None:
    assert len(table("/a", "/b")) == 2
