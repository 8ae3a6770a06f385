"""The route table cannot be bypassed over real HTTP: path variants and methods, sent byte for byte.

Routes: ``/public/**`` (public), ``/admin/**`` (roles contains admin), ``/reports/**`` GET only
(roles contains admin) then ``/reports/**`` POST (public), ``/api/**`` (any valid token).
Every variant is sent with a non-admin token and without a token. The oracle, per request:

- nothing reaches the upstream through a route whose rule the request does not meet: never
  ``admin`` (no token here is an admin's), never ``api`` or ``reports`` anonymously;
- what the upstream receives is exactly the canonical path the gateway matched (read from the
  access record) and canonicalises to itself;
- read the way a lenient backend reads paths (decoding repeatedly, ``\\`` as ``/``, ``;params``
  dropped, NFKC, case folded, dots and spaces trimmed, NUL truncating, dot-segments resolved),
  the forwarded path reaches no protected route the request could not pass;
- never a 5xx.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from gateway.config.models import Match
from gateway.errors import PathNotCanonical
from gateway.routing.path import canonical_path
from gateway.routing.table import RouteTable
from tests.routing.test_path import lenient_read
from tests.support.servers import EchoUpstream, GatewayServer, raw_request

SECRET = "a-test-hmac-secret-of-at-least-32-bytes!!"
ISSUER = "https://hs.test"
AUD = "api"

ROUTES: list[dict[str, Any]] = [
    {"name": "public", "match": {"path": "/public/**"}, "auth": "public"},
    {"name": "admin", "match": {"path": "/admin/**"}, "require": {"claim": "roles", "contains": "admin"}},
    {
        "name": "reports-read",
        "match": {"path": "/reports/**", "methods": ["GET"]},
        "require": {"claim": "roles", "contains": "admin"},
    },
    {"name": "reports-post", "match": {"path": "/reports/**", "methods": ["POST"]}, "auth": "public"},
    {"name": "api", "match": {"path": "/api/**"}},
]

#: The same patterns, for the oracle: which route a path would reach on a lenient backend.
ORACLE: RouteTable[str] = RouteTable(
    [(Match(path=r["match"]["path"]), str(r["name"])) for r in ROUTES if r["name"] != "reports-post"]
)
#: Routes each kind of credentials may NOT get through.
FORBIDDEN = {"user": {"admin", "reports-read"}, "anonymous": {"admin", "reports-read", "api"}}


def _token(roles: list[str]) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUD, "sub": "bob", "roles": roles, "iat": now, "exp": now + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


USER = _token(["user"])
ADMIN = _token(["user", "admin"])


class AccessRecords(logging.Handler):
    """Collects the gateway's access records (the ``jwt_gateway.access`` logger's fields)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = getattr(record, "fields", None)
        if fields is not None:
            self.records.append(dict(fields))

    def wait_for(self, count: int, timeout: float = 3.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while len(self.records) < count:
            assert time.monotonic() < deadline, "no access record"
            time.sleep(0.002)
        return self.records[count - 1]


@pytest.fixture(scope="module")
def access() -> Iterator[AccessRecords]:
    logger = logging.getLogger("jwt_gateway.access")
    handler = AccessRecords()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


ALL_NORMALIZE = ["merge_slashes", "resolve_dots", "strip_trailing_slash"]


def gateway_config(upstream: EchoUpstream, normalize: list[str]) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "providers": {
            "hs": {"issuer": ISSUER, "secret": SECRET, "algorithms": ["HS256"], "audiences": [AUD]}
        },
        "headers": {"claims": {"X-User-Id": "sub"}, "strip_prefixes": ["X-User-"]},
        "paths": {"normalize": normalize},
        "routes": ROUTES,
    }


@pytest.fixture(scope="module")
def gw(upstream: EchoUpstream, access: AccessRecords) -> Iterator[GatewayServer]:
    with GatewayServer(gateway_config(upstream, [])) as server:
        yield server


@pytest.fixture(scope="module")
def gw_normalizing(upstream: EchoUpstream, access: AccessRecords) -> Iterator[GatewayServer]:
    """Resolves ``//``, dot-segments and trailing slashes instead of refusing them."""
    with GatewayServer(gateway_config(upstream, ALL_NORMALIZE)) as server:
        yield server


def send(
    gw: GatewayServer, method: bytes, target: bytes, token: str | None, access: AccessRecords
) -> tuple[int, bytes, dict[str, Any] | None]:
    """Send one request byte for byte; return (status, response, the gateway's access record).

    The record is None when the HTTP layer refused the request before the gateway saw it.
    """
    seen = len(access.records)
    auth = b"" if token is None else b"Authorization: Bearer " + token.encode() + b"\r\n"
    request = method + b" " + target + b" HTTP/1.1\r\nHost: gw.test\r\n" + auth + b"Connection: close\r\n\r\n"
    status, response = raw_request(gw.port, request)
    record = None
    if status != 0 and b"malformed_request" not in response:
        record = access.wait_for(seen + 1)
    return status, response, record


def assert_not_bypassed(
    kind: str,
    raw_path: bytes,
    normalize: list[str],
    status: int,
    record: dict[str, Any] | None,
    reached: dict[str, Any] | None,
) -> None:
    """The oracle (see the module docstring)."""
    assert 0 < status < 500, status
    if record is None:
        assert status == 400 and reached is None  # refused by the HTTP layer: never forwarded
        return
    if record["path"] is None:
        assert status == 400 and record["reason"] == "path_not_canonical" and reached is None
    else:
        try:
            assert record["path"] == canonical_path(raw_path, normalize)
        except PathNotCanonical:
            pytest.fail(f"the gateway accepted {raw_path!r}, which is not canonical")
    if reached is None:
        assert record["decision"] == "denied"
        return
    received = reached["path"]
    assert record["decision"] == "allowed"
    assert received == record["path"], "the upstream received another path than the one matched"
    assert canonical_path(received.encode("ascii"), normalize) == received
    assert record["route"] not in FORBIDDEN[kind], f"{kind} request got through {record['route']}"
    backend = ORACLE.match("GET", lenient_read(received), None)
    backend_route = backend.payload if backend is not None else None
    if backend_route in FORBIDDEN[kind]:
        assert record["route"] == backend_route, (received, record["route"], backend_route)


# security-catalogue 6.4, tests/routing/test_path.py and more: each is sent with a user token
# and without a token.
PATH_VARIANTS: list[bytes] = [
    # plain, case and prefix boundaries
    b"/admin",
    b"/admin/",
    b"/admin/x",
    b"/ADMIN/x",
    b"/Admin/x",
    b"/adminx",
    b"/admin-x",
    b"/publicity",
    b"/public-admin",
    b"/publicadmin/x",
    # empty segments
    b"//admin",
    b"//admin/x",
    b"///admin/x",
    b"/admin//x",
    b"//public/../api/x",
    # dot-segments, raw and encoded
    b"/public/../admin",
    b"/public/../admin/x",
    b"/./admin/x",
    b"/api/../admin/x",
    b"/api/%2e%2e/admin/x",
    b"/api/%2E%2E/admin/x",
    b"/api/.%2e/admin/x",
    b"/api/./../admin/x",
    b"/api/x/../../admin",
    b"/admin/.",
    b"/admin/%2e",
    b"/admin/x/..",
    b"/public/%2e%2e/admin/x",
    b"/public/../api/x",
    b"/public/%2e%2e/reports/x",
    # trailing dots and spaces
    b"/admin./x",
    b"/admin%20/x",
    b"/public/..%20/admin",
    # encoded slashes and backslashes
    b"/admin%2Fx",
    b"/admin%2fx",
    b"/api/..%2fadmin/x",
    b"/api%2f..%2fadmin%2fx",
    b"/public/..%2fadmin/x",
    b"/public%2f..%2fadmin/x",
    b"/api/..\\admin/x",
    b"/public/..\\admin/x",
    b"/api/..%5cadmin/x",
    b"/\\admin/x",
    # path parameters (Tomcat ..;/)
    b"/admin;x",
    b"/admin;x=1/x",
    b"/admin;/x",
    b"/api/..;/admin/x",
    b"/public/..;/admin/x",
    b"/public/..%3b/admin/x",
    # double encoding
    b"/%252e%252e/admin",
    b"/api/%252e%252e/admin/x",
    b"/public/%252e%252e/api/x",
    b"/public/%25%32%65%25%32%65/admin",
    # NUL and control characters
    b"/admin%00",
    b"/admin%00/x",
    b"/public/%00/../../api/x",
    b"/admin%09/x",
    b"/public/a%0d%0aX-User-Id:%20admin",
    # fragments and query markers
    b"/admin#/../api/x",
    b"/public#/../../admin",
    b"/public%23/../admin",
    b"/public%3F/../admin",
    b"/public?/../admin",
    # decoded unreserved characters: the same route
    b"/%61dmin",
    b"/%61dmin/x",
    b"/%41DMIN/x",
    b"/%61%64%6d%69%6e/x",
    b"/adm%69n/x",
    # non-ASCII: full-width, confusables, overlong UTF-8, invalid UTF-8
    b"/%EF%BD%81dmin/x",
    b"/%EF%BC%A1DMIN/x",
    b"/public/%EF%BC%8E%EF%BC%8E/admin",
    b"/public/%EF%BC%8Fadmin",
    b"/%E2%84%AAadmin",
    b"/api/..%c0%afadmin/x",
    b"/public/%c0%ae%c0%ae/admin",
    b"/public/%e0%80%ae%e0%80%ae/admin",
    b"/public/%ff/../admin",
    b"/public/%C2%A0/../admin",
    # legitimate paths: reached (or refused) exactly as their route says
    b"/public/x",
    b"/public/.well-known/x",
    b"/public/a%3ab",
    b"/public/caf%C3%A9",
    b"/api/x",
    b"/reports/x",
]

# Not origin-form: refused by the HTTP layer, never routed (security-catalogue 6.5).
OTHER_TARGETS: list[bytes] = [
    b"http://gw.test/admin/x",
    b"http://gw.test/api/../admin/x",
    b"http://other.test/public/x",
    b"admin",
]


def test_at_least_fifty_path_variants() -> None:
    assert len(PATH_VARIANTS) + len(OTHER_TARGETS) >= 50


@pytest.mark.parametrize("target", PATH_VARIANTS, ids=[repr(t)[2:-1] for t in PATH_VARIANTS])
def test_path_variant_never_bypasses_the_rules(
    target: bytes,
    gw: GatewayServer,
    gw_normalizing: GatewayServer,
    upstream: EchoUpstream,
    access: AccessRecords,
) -> None:
    # The HTTP layer splits the query and drops a fragment before the gateway sees raw_path.
    raw_path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    for server, normalize in ((gw, []), (gw_normalizing, ALL_NORMALIZE)):
        for kind, token in (("user", USER), ("anonymous", None)):
            before = upstream.count
            status, _, record = send(server, b"GET", target, token, access)
            reached = upstream.requests[-1] if upstream.count > before else None
            assert upstream.count <= before + 1
            assert_not_bypassed(kind, raw_path, normalize, status, record, reached)


@pytest.mark.parametrize("target", OTHER_TARGETS, ids=[repr(t)[2:-1] for t in OTHER_TARGETS])
def test_non_origin_form_targets_are_refused(
    target: bytes, gw: GatewayServer, upstream: EchoUpstream, access: AccessRecords
) -> None:
    for token in (USER, None):
        before = upstream.count
        status, response, record = send(gw, b"GET", target, token, access)
        assert status == 400
        assert record is None and upstream.count == before


@pytest.mark.parametrize(
    ("target", "path", "route"),
    [
        (b"/admin/x", "/admin/x", "admin"),
        (b"/%61dmin/x", "/admin/x", "admin"),
        (b"/admin/", "/admin/", "admin"),
        (b"/public/a%3ab?q=%2e%2e", "/public/a%3Ab", "public"),
        (b"/public/a%20b", "/public/a%20b", "public"),
        (b"/public/a{b}", "/public/a%7Bb%7D", "public"),
        (b"/api/caf%c3%a9", "/api/caf%C3%A9", "api"),
    ],
)
def test_forwarded_path_is_the_matched_canonical_path(
    target: bytes, path: str, route: str, gw: GatewayServer, upstream: EchoUpstream, access: AccessRecords
) -> None:
    before = upstream.count
    status, _, record = send(gw, b"GET", target, ADMIN, access)
    assert status == 200 and upstream.count == before + 1
    assert record is not None and record["route"] == route and record["path"] == path
    assert upstream.requests[-1]["path"] == path
    if b"?" in target:
        assert upstream.requests[-1]["query"] == target.split(b"?", 1)[1].decode()


@pytest.mark.parametrize(
    ("method", "target", "token", "status", "route"),
    [
        # Methods are matched case-insensitively: `get` is the GET route, with its rule.
        (b"get", b"/reports/x", None, 401, "reports-read"),
        (b"get", b"/reports/x", USER, 403, "reports-read"),
        (b"get", b"/admin/x", USER, 403, "admin"),
        # HEAD meets the GET route's rule; it never falls through to a later route.
        (b"HEAD", b"/reports/x", None, 401, "reports-read"),
        (b"HEAD", b"/reports/x", USER, 403, "reports-read"),
        (b"HEAD", b"/reports/x", ADMIN, 200, "reports-read"),
        (b"head", b"/reports/x", USER, 403, "reports-read"),
        # Methods no route lists match nothing: denied, never forwarded.
        (b"PROPFIND", b"/reports/x", None, 404, None),
        (b"PROPFIND", b"/admin/x", None, 401, "admin"),
        (b"OPTIONS", b"/reports/x", None, 404, None),
        (b"OPTIONS", b"/admin/x", None, 401, "admin"),
        (b"DELETE", b"/admin", USER, 403, "admin"),
        (b"DELETE", b"/reports/x", ADMIN, 404, None),
        (b"TRACE", b"/api/x", None, 401, "api"),
        # The public POST route is public by configuration.
        (b"POST", b"/reports/x", None, 200, "reports-post"),
        (b"post", b"/reports/x", None, 200, "reports-post"),
    ],
)
def test_methods(
    method: bytes,
    target: bytes,
    token: str | None,
    status: int,
    route: str | None,
    gw: GatewayServer,
    upstream: EchoUpstream,
    access: AccessRecords,
) -> None:
    before = upstream.count
    got, response, record = send(gw, method, target, token, access)
    if record is None:
        # The HTTP layer may refuse an odd method spelling itself: never forwarded either way.
        assert got == 400 and upstream.count == before
        return
    assert got == status, response
    assert record["route"] == route
    assert upstream.count == before + (1 if status == 200 else 0)
    if status == 200:
        assert upstream.requests[-1]["method"] == record["method"]


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/public/../admin/x", "/admin/x"),
        (b"//admin//x/", "/admin/x"),
        (b"/api/%2e%2e/admin", "/admin"),
        (b"/public/./x/", "/public/x"),
    ],
)
def test_normalized_path_is_matched_and_forwarded_as_resolved(
    target: bytes, path: str, gw_normalizing: GatewayServer, upstream: EchoUpstream, access: AccessRecords
) -> None:
    # Resolving /public/../admin makes it /admin: the admin rule applies, and /admin is sent.
    status, _, record = send(gw_normalizing, b"GET", target, USER, access)
    expected_route = "admin" if path.startswith("/admin") else "public"
    assert record is not None and record["route"] == expected_route and record["path"] == path
    if expected_route == "admin":
        assert status == 403
    before = upstream.count
    status, _, record = send(gw_normalizing, b"GET", target, ADMIN, access)
    assert status == 200 and upstream.count == before + 1
    assert upstream.requests[-1]["path"] == path


def test_http_1_0_request_line_is_decided_the_same(
    gw: GatewayServer, upstream: EchoUpstream, access: AccessRecords
) -> None:
    before = upstream.count
    status, _ = raw_request(gw.port, b"GET /admin/x HTTP/1.0\r\nHost: gw.test\r\n\r\n")
    assert status == 401 and upstream.count == before
    status, _ = raw_request(gw.port, b"GET /public/../admin HTTP/1.0\r\n\r\n")
    assert status == 400 and upstream.count == before


def test_unmatched_paths_report_the_route_not_found(gw: GatewayServer, access: AccessRecords) -> None:
    status, response, record = send(gw, b"GET", b"/elsewhere", USER, access)
    assert status == 404 and record is not None
    assert record["reason"] == "route_not_found" and record["route"] is None
    body = json.loads(response.partition(b"\r\n\r\n")[2])
    assert body["reason"] == "route_not_found"
