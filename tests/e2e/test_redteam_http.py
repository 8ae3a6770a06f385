"""Red-team attacks over real HTTP: a client with the gateway's source code tries to make a request
reach the upstream that the routes should refuse, to make the upstream see a spoofed identity or
forwarding header, to crash the gateway into a 5xx, or to desynchronise a connection.

Five families, each asserting the SECURE outcome (refused, stripped, 4xx never 5xx, never
forwarded):

1. path canonicalisation, request targets, Host and method tricks against the route table;
2. identity, forwarding and request-id header spoofing;
3. request smuggling, pipelining after a refusal, ``Expect: 100-continue``, protocol upgrades;
4. the ``credentials_in_body`` refusal of form-encoded ``access_token`` bodies (and its cousins in
   the query string and cookies: the "exactly one credential" rule);
5. the forward-auth endpoint (nginx ``auth_request`` / Traefik ``ForwardAuth``).

An attack that currently succeeds is kept, asserting the secure behaviour, and marked
``xfail(strict=True, reason="VULN: ...")``: fixing the gateway turns it into an XPASS, which fails
the run until the marker is removed.

Servers (module-scoped): an echo upstream recording every request, the gateway in proxy mode (with
the forward-auth path enabled, trusted from 127.0.0.1), and a forward-auth-mode gateway that trusts
nobody local.
"""

from __future__ import annotations

import socket
import time
import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import unquote

import jwt
import pytest

from tests.support.exchange import Sent, send, send_raw
from tests.support.proxy_servers import ResponseReader, ThreadedRawServer, connect, exchange
from tests.support.servers import EchoUpstream, GatewayServer, raw_request
from tests.support.upstream_servers import keep_alive, ok

SECRET = "redteam-e2e-hmac-secret-0123456789abcdef"
ISSUER = "https://hs.redteam.test"
AUD = "api"
DENIED_HOST = "admin.example.com"
#: A token the gateway never verified: it must never reach the upstream beside (or instead of)
#: the one it did verify.
FORGED = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290Iiwicm9sZXMiOlsiYWRtaW4iXX0.forged"
#: What a client sends after an attack; no token, so it is refused if decided on its own.
INNER = b"GET /api/SMUGGLED HTTP/1.1\r\nHost: gw.test\r\n\r\n"
INNER_LEN = b"%d" % len(INNER)
WS_HEAD = (
    b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


def token(**extra: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "aud": AUD, "iat": now, "exp": now + 600, **extra}
    return jwt.encode(claims, SECRET, algorithm="HS256")


USER = token(roles=["user"])


def config(upstream: EchoUpstream, raw: ThreadedRawServer) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "proxy": {"head_timeout": "1s"},
        "forward_auth": {"enabled": True, "path": "/_auth"},
        "providers": {
            "hs": {
                "issuer": ISSUER,
                "secret": SECRET,
                "algorithms": ["HS256"],
                "audiences": [AUD],
                "token": {"cookie": "session"},
            }
        },
        "headers": {
            "claims": {"X-User-Id": "sub", "X-User-Roles": {"claim": "roles", "encode": "csv"}},
            "strip_prefixes": ["X-User-"],
        },
        "routes": [
            {"name": "adminhost", "match": {"path": "/**", "host": DENIED_HOST}, "auth": "deny"},
            {"name": "api", "match": {"path": "/api/**"}},
            {"name": "raw", "match": {"path": "/raw/**"}, "upstream": raw.url},
            {"name": "rawopt", "match": {"path": "/rawopt/**"}, "upstream": raw.url, "auth": "optional"},
            {
                "name": "admin",
                "match": {"path": "/admin/**"},
                "require": {"claim": "roles", "contains": "admin"},
            },
            {"name": "opt", "match": {"path": "/opt/**"}, "auth": "optional"},
            {
                "name": "cors",
                "match": {"path": "/cors/**", "methods": ["GET"]},
                "cors_preflight": True,
            },
            {"name": "cors-rest", "match": {"path": "/cors/**"}, "auth": "deny"},
            {"name": "getonly", "match": {"path": "/getonly", "methods": ["GET"]}},
            {"name": "getonly-rest", "match": {"path": "/getonly"}, "auth": "deny"},
            {"name": "nows", "match": {"path": "/nows/**"}, "auth": "public", "websocket": False},
            {"name": "public", "match": {"path": "/**"}, "auth": "public", "preserve_host": True},
        ],
    }


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[ThreadedRawServer]:
    """Records only complete requests, with their bodies (h11): what an upstream fully received."""
    with ThreadedRawServer(keep_alive(ok(b"fine"))) as server:
        yield server


@pytest.fixture(scope="module")
def gw(upstream: EchoUpstream, raw_upstream: ThreadedRawServer) -> Iterator[GatewayServer]:
    with GatewayServer(config(upstream, raw_upstream)) as server:
        yield server


@pytest.fixture(scope="module")
def fa_untrusted() -> Iterator[GatewayServer]:
    """A forward-auth-mode gateway trusting only 10.0.0.0/8: the tests' 127.0.0.1 is untrusted."""
    cfg = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "mode": "forward_auth",
        "forward_auth": {"trusted_sources": ["10.0.0.0/8"]},
        "routes": [{"name": "all", "match": {"path": "/**"}, "auth": "public"}],
    }
    with GatewayServer(cfg) as server:
        yield server


# ------------------------------------------------------------------------------------ helpers


def bearer(value: str = USER) -> tuple[str, str]:
    return ("Authorization", f"Bearer {value}")


def assert_refused(sent: Sent, *statuses: int) -> None:
    """Refused with one of ``statuses`` (4xx, never 5xx) and never forwarded."""
    assert sent.status in statuses, sent.response[:400]
    assert sent.forwarded == [], "a refused request reached the upstream"


def smuggled(upstream: EchoUpstream, before: int) -> list[str]:
    return [r["path"] for r in upstream.requests[before:] if "SMUGGLED" in r["path"]]


def _resolve(text: str) -> str:
    """One lenient reading: NFKC, ``\\`` as ``/``, ``;params`` and NULs dropped, trailing dots and
    spaces trimmed (Windows), ``//`` merged, dot-segments resolved."""
    text = unicodedata.normalize("NFKC", text).replace("\\", "/").replace("\x00", "")
    out: list[str] = []
    for segment in text.split("/"):
        segment = segment.split(";", 1)[0]
        if segment.strip() in (".", ".."):
            if segment.strip() == ".." and out:
                out.pop()
            continue
        segment = segment.rstrip(". ")
        if segment:
            out.append(segment)
    return "/" + "/".join(out)


def lenient_readings(path: str) -> set[str]:
    """How lenient backends may read a forwarded path (decoded up to three times)."""
    readings = {_resolve(path)}
    for _ in range(3):
        path = unquote(path, errors="replace")
        readings.add(_resolve(path))
    return readings


def reads_as_protected(path: str) -> bool:
    return any(
        reading == prefix or reading.startswith(prefix + "/")
        for reading in lenient_readings(path)
        for prefix in ("/api", "/admin")
    )


def test_the_setup_decides_what_it_should(gw: GatewayServer, upstream: EchoUpstream) -> None:
    """Control: the refusals below are about the attack, not a broken setup."""
    assert send(gw, upstream, "/api/x", [bearer()]).header("X-User-Id") == ["alice"]
    assert_refused(send(gw, upstream, "/api/x"), 401)
    assert_refused(send(gw, upstream, "/admin/x", [bearer()]), 403)
    assert_refused(send(gw, upstream, "/pub/x", host=DENIED_HOST), 403)
    assert send(gw, upstream, "/pub/x").forwarded[0]["path"] == "/pub/x"
    assert reads_as_protected("/pub/%252e%252e/api/x") and not reads_as_protected("/pub/apix")


# ============================================================= 1. paths, targets, Host, methods

#: Unauthenticated targets a lenient backend could read as /api/... or /admin/...
PATH_ATTACKS = [
    "//api/x",
    "///api/x",
    "/./api/x",
    "/pub/../api/x",
    "/pub/x/../../api/x",
    "/pub/%2e%2e/api/x",
    "/pub/%2E%2E/api/x",
    "/pub/.%2e/api/x",
    "/pub/%2e./api/x",
    "/pub/..%2fapi/x",
    "/pub/..%2Fapi/x",
    "/pub%2f..%2fapi%2fx",
    "/pub/%252e%252e/api/x",
    "/pub/..%252fapi/x",
    "/pub/%%32%65%%32%65/api/x",
    "/pub/..\\api/x",
    "/pub/..%5capi/x",
    "/pub/..%5Capi/x",
    "/pub/..%255capi/x",
    "/\\api/x",
    "/%5capi/x",
    "/%61pi/x",
    "/%61%64%6d%69%6e/x",
    "/api%2fx",
    "/api;x=1/x",
    "/api;/x",
    "/pub/..;/api/x",
    "/api%3bx/x",
    "/api./x",
    "/api%2e/x",
    "/api../x",
    "/api%00/x",
    "/api%20/x",
    "/api%09/x",
    "/api%C2%A0/x",
    "/api%E3%80%80/x",
    "/api%E2%80%8B/x",
    "/%EF%BD%81pi/x",
    "/%EF%BD%81%EF%BD%84min/x",
    "/pub/..%c0%afapi/x",
    "/pub/%c0%ae%c0%ae/api/x",
    "/pub/%e0%80%ae%e0%80%ae/api/x",
    "/pub/%u002e%u002e/api/x",
    "/pub/%E2%80%A4%E2%80%A4/api/x",
    "/pub/%EF%BC%8E%EF%BC%8E/api/x",
    "/pub/..%EF%BC%8Fapi/x",
    "/pub/..%EF%BC%BCapi/x",
    "/pub/.%00./api/x",
    "/pub/..%00/api/x",
    "/api%3fx/y",
    "/api%23x/y",
    "/pub#/../api/x",
    "/pub?/../api/x",
    "/api/%2e",
    "/pub/%2e%2e",
    "/pub%2F",
    "/pub/%ZZ/../api",
    "/pub/%2",
    "/pub/%",
]


@pytest.mark.parametrize("target", PATH_ATTACKS)
def test_path_variants_never_reach_a_protected_path_unauthenticated(
    target: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Encodings, dot-segments, ;params, //, backslashes, NUL, overlong UTF-8, %u, fullwidth and
    invisible characters: refused (4xx), or forwarded as a path no lenient reading turns into a
    protected one. Never a 5xx."""
    sent = send(gw, upstream, target)
    assert 400 <= sent.status < 500 or sent.status == 200, sent.response[:300]
    for request in sent.forwarded:
        assert not reads_as_protected(request["path"]), request["path"]


def test_what_is_forwarded_is_what_was_matched(gw: GatewayServer, upstream: EchoUpstream) -> None:
    """Escapes of unreserved characters are decoded before matching AND forwarding: ``/%61pi`` is
    ``/api`` (token needed); other escapes stay, upper-cased, in both."""
    assert_refused(send(gw, upstream, "/%61pi/x"), 401)
    assert send(gw, upstream, "/%61pi/x", [bearer()]).forwarded[0]["path"] == "/api/x"
    assert send(gw, upstream, "/pub/a%3ab").forwarded[0]["path"] == "/pub/a%3Ab"
    # Case is significant (documented): /API is another path, forwarded as such.
    assert send(gw, upstream, "/API/x").forwarded[0]["path"] == "/API/x"


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET http://gw.test/api/x HTTP/1.1",
        b"GET http://admin.example.com/pub/x HTTP/1.1",
        b"GET https://gw.test/pub/../api/x HTTP/1.1",
        b"GET gw.test/api/x HTTP/1.1",
        b"GET api/x HTTP/1.1",
        b"CONNECT gw.test:443 HTTP/1.1",
        b"CONNECT admin.example.com:80 HTTP/1.1",
        b"OPTIONS * HTTP/1.1",
        b"GET * HTTP/1.1",
        b"GET ?access_token=x HTTP/1.1",
    ],
)
def test_non_origin_form_targets_are_refused(
    request_line: bytes, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Absolute-form (its host differing from Host), authority-form and ``*``: 400, not forwarded."""
    assert_refused(
        send_raw(gw, upstream, request_line + b"\r\nHost: gw.test\r\nConnection: close\r\n\r\n"), 400
    )


@pytest.mark.parametrize("segments", [2000, 5000])
def test_very_long_paths_are_decided_without_a_5xx(
    segments: int, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    plain = send(gw, upstream, "/pub" + "/a" * segments)
    assert plain.status in (200, 414, 431)
    escaped = send(gw, upstream, "/pub" + "/%C3%A9" * (segments // 4))
    assert escaped.status in (200, 414, 431)
    dotted = send(gw, upstream, "/pub" + "/%2e%2e" * (segments // 4) + "/api/x")
    assert_refused(dotted, 400, 414, 431)
    assert_refused(send(gw, upstream, "/api" + "/a" * segments), 401, 414, 431)


@pytest.mark.parametrize(
    "host",
    [
        "admin.example.com",
        "ADMIN.EXAMPLE.COM",
        "Admin.Example.Com:8443",
        "admin.example.com.",
        "admin.example.com..",
        "admin.example.com.:80",
        "admin.example.com:80",
    ],
)
def test_host_spellings_of_a_denied_host_are_denied(
    host: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Istio CVE-2021-39155: case, port and trailing dots never escape a host-bound route."""
    assert_refused(send(gw, upstream, "/pub/x", host=host), 403)


def _names_denied_host(sent: Sent) -> list[str]:
    """Host-like headers of the forwarded requests that name the denied host."""
    found = []
    for request in sent.forwarded:
        for name, value in request["headers"]:
            if name in (b"host", b"x-forwarded-host", b"forwarded") and DENIED_HOST.encode() in value.lower():
                found.append(f"{name.decode()}: {value.decode('latin-1')}")
    return found


@pytest.mark.parametrize(
    "host",
    [
        "admin.example.com:abc",
        "admin.example.com:",
        "admin.example.com:80@evil.test",
        "admin.example.com:+443",
    ],
)
def test_a_malformed_port_never_slips_a_denied_host_past_its_route(
    host: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    sent = send(gw, upstream, "/pub/x", host=host)
    assert sent.status < 500
    assert _names_denied_host(sent) == []


@pytest.mark.parametrize(
    "hosts",
    [("gw.test", DENIED_HOST), (DENIED_HOST, "gw.test"), ("gw.test", "ADMIN.example.com:1")],
)
def test_duplicate_host_headers_never_smuggle_the_denied_host(
    hosts: tuple[str, str], gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Routing and forwarding use the same (first) Host; a second one never crosses."""
    lines = "".join(f"Host: {h}\r\n" for h in hosts).encode()
    sent = send_raw(gw, upstream, b"GET /pub/x HTTP/1.1\r\n" + lines + b"Connection: close\r\n\r\n")
    assert sent.status in (200, 400, 403)
    assert _names_denied_host(sent) == []
    for request in sent.forwarded:
        assert [n for n, _ in request["headers"]].count(b"host") == 1


def test_no_host_never_matches_a_host_bound_route_and_is_not_a_5xx(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    sent = send(gw, upstream, "/pub/x", host=None)
    assert sent.status in (200, 400)
    assert _names_denied_host(sent) == []


@pytest.mark.parametrize(
    ("method", "target", "headers", "statuses"),
    [
        ("HEAD", "/getonly", [], (401,)),
        ("HEAD", "/api/x", [], (401,)),
        ("OPTIONS", "/getonly", [], (403,)),
        (
            "OPTIONS",
            "/getonly",
            [("Origin", "http://a.test"), ("Access-Control-Request-Method", "GET")],
            (403,),
        ),
        (
            "OPTIONS",
            "/api/x",
            [("Origin", "http://a.test"), ("Access-Control-Request-Method", "GET")],
            (401,),
        ),
        (
            "OPTIONS",
            "/cors/x",
            [("Origin", "http://a.test"), ("Access-Control-Request-Method", "DELETE")],
            (403,),
        ),
        ("OPTIONS", "/cors/x", [("Origin", "http://a.test")], (403,)),
        ("OPTIONS", "/cors/x", [("Access-Control-Request-Method", "GET")], (403,)),
        ("POST", "/getonly", [("X-HTTP-Method-Override", "GET")], (403,)),
        ("DELETE", "/getonly", [], (403,)),
        ("PROPFIND", "/getonly", [], (403,)),
        ("PROPFIND", "/api/x", [], (401,)),
        ("TRACE", "/api/x", [], (401,)),
        ("PATCH", "/cors/x", [], (403,)),
        ("get", "/getonly", [], (400,)),
        ("Get", "/api/x", [], (400,)),
        ("FOO", "/pub/x", [], (400,)),
        ("GET\t", "/pub/x", [], (400,)),
    ],
)
def test_method_tricks_never_skip_a_route_rule(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    statuses: tuple[int, ...],
    gw: GatewayServer,
    upstream: EchoUpstream,
) -> None:
    """HEAD meets the GET route's rule; a preflight passes only where cors_preflight says so and
    only for a method that route takes; unknown or lower-case methods are malformed."""
    assert_refused(send(gw, upstream, target, headers, method=method), *statuses)


def test_an_allowed_preflight_carries_no_credential_and_no_identity(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    sent = send(
        gw,
        upstream,
        "/cors/x",
        [
            ("Origin", "http://a.test"),
            ("Access-Control-Request-Method", "GET"),
            bearer(FORGED),
            ("X-User-Id", "root"),
            ("X-HTTP-Method-Override", "GET"),
        ],
        method="OPTIONS",
    )
    assert sent.status == 200
    assert sent.forwarded[0]["method"] == "OPTIONS"
    assert sent.header("authorization") == []
    assert sent.header("x-user-id") == []
    assert sent.header("x-http-method-override") == []


# =================================================================== 2. identity header spoofing

SPOOFED_NAMES = [
    "X-User-Id",
    "x-user-id",
    "X-USER-ID",
    "X_User_Id",
    "x_user_id",
    "X-User_Id",
    "X-User-Roles",
    "X_USER_ROLES",
    "X-User-Admin",
    "x-user-",
]


def _spoofed(request: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    return [
        (n, v)
        for n, v in request["headers"]
        if n.lower().replace(b"_", b"-").startswith(b"x-user-") and b"evil" in v
    ]


@pytest.mark.parametrize("name", SPOOFED_NAMES)
@pytest.mark.parametrize("target", ["/pub/x", "/opt/x", "/api/x"])
def test_client_identity_headers_never_reach_the_upstream(
    name: str, target: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Every spelling (case, underscores, prefix), twice, on public, optional and token routes."""
    headers = [(name, "evil"), (name, "evil2")]
    if target == "/api/x":
        headers.append(bearer())
    sent = send(gw, upstream, target, headers)
    assert sent.status == 200
    assert _spoofed(sent.forwarded[0]) == []
    if target == "/api/x":
        assert sent.header("x-user-id") == ["alice"]
        assert sent.header("x-user-roles") == ["user"]


@pytest.mark.parametrize(
    "raw_field",
    [
        b"X-User-Id : evil",
        b"X-User-Id\t: evil",
        b" X-User-Id: evil",
        b"X-Note: hi\r\n X-User-Id: evil",
        b"X-Note: hi\r\n\tX-User-Id: evil",
        b"X-User-Id\x00: evil",
        b"X-User-Id: ok\revil",
        b"X-User-Id: ok\nX-User-Id: evil",
        b": evil",
        b"X-User-Id",
    ],
)
def test_malformed_header_lines_never_carry_an_identity(
    raw_field: bytes, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Whitespace around names, obs-fold, NUL, bare CR/LF, empty names: 400, or never an identity."""
    sent = send_raw(
        gw,
        upstream,
        b"GET /pub/x HTTP/1.1\r\nHost: gw.test\r\n" + raw_field + b"\r\nConnection: close\r\n\r\n",
    )
    assert sent.status in (200, 400)
    for request in sent.forwarded:
        assert _spoofed(request) == []


@pytest.mark.parametrize(
    "connection",
    [
        "X-User-Id",
        "close, X-User-Id, X-User-Roles",
        "x-request-id",
        "Host",
        "X-Forwarded-For, Forwarded, X-Forwarded-Proto, X-Forwarded-Host",
        "keep-alive, X-USER-ID",
    ],
)
def test_connection_cannot_remove_a_header_the_gateway_sets(
    connection: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Traefik CVE-2021-32813 / CVE-2024-45410, Apache CVE-2022-31813."""
    sent = send(gw, upstream, "/api/x", [bearer(), ("Connection", connection)])
    assert sent.status == 200
    assert sent.header("x-user-id") == ["alice"]
    assert sent.header("x-user-roles") == ["user"]
    assert len(sent.header("x-request-id")) == 1
    assert len(sent.header("host")) == 1
    assert sent.header("x-forwarded-for") == ["127.0.0.1"]
    assert sent.header("forwarded") == ["for=127.0.0.1;proto=http;host=gw.test"]
    assert sent.header("connection") == []


FORWARDING_SPOOFS = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-For", "6.6.6.6, 127.0.0.1"),
    ("x_forwarded_for", "6.6.6.6"),
    ("X-FORWARDED-FOR", "6.6.6.6"),
    ("Forwarded", "for=6.6.6.6;proto=https;host=admin.example.com"),
    ("X-Real-IP", "6.6.6.6"),
    ("X-Forwarded-Host", DENIED_HOST),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Scheme", "https"),
    ("X-Forwarded-Client-Cert", "Hash=6.6.6.6;Subject=CN=admin"),
    ("X-Forwarded-Uri", "/admin/x"),
    ("X_Real_IP", "6.6.6.6"),
]


@pytest.mark.parametrize(("name", "value"), FORWARDING_SPOOFS)
def test_forwarding_headers_from_an_untrusted_peer_are_replaced(
    name: str, value: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    sent = send(gw, upstream, "/pub/x", [(name, value), ("Connection", "X-Forwarded-For")])
    assert sent.status == 200
    assert sent.header("x-forwarded-for") == ["127.0.0.1"]
    assert sent.header("x-forwarded-proto") == ["http"]
    assert sent.header("x-forwarded-host") == ["gw.test"]
    assert sent.header("forwarded") == ["for=127.0.0.1;proto=http;host=gw.test"]
    for header_name, header_value in sent.forwarded[0]["headers"]:
        normal = header_name.replace(b"_", b"-")
        if normal.startswith(b"x-forwarded-") or normal in (b"forwarded", b"x-real-ip"):
            assert value.encode() not in header_value, (header_name, header_value)


@pytest.mark.parametrize(
    ("values", "kept"),
    [
        (["client-id-1"], True),
        (["a/b:c@d=e+f.g_h"], True),
        (["evil id"], False),
        (['"><script>'], False),
        (["x" * 200], False),
        (["a\tb"], False),
        (["first", "second"], True),
    ],
)
def test_client_request_ids_are_kept_only_when_safe_and_never_duplicated(
    values: list[str], kept: bool, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    sent = send(gw, upstream, "/pub/x", [("X-Request-Id", v) for v in values] + [("X_Request_Id", "evil")])
    assert sent.status == 200
    forwarded = sent.header("x-request-id")
    assert len(forwarded) == 1
    assert (forwarded[0] == values[0]) is kept
    assert "evil" not in forwarded[0]


@pytest.mark.parametrize("target", ["/pub/x", "/api/x"])
def test_credentials_never_cross(target: str, gw: GatewayServer, upstream: EchoUpstream) -> None:
    """Authorization (verified or not) and Proxy-Authorization stay at the gateway."""
    headers = [bearer() if target == "/api/x" else bearer(FORGED), ("Proxy-Authorization", "Basic eDp5")]
    sent = send(gw, upstream, target, headers)
    assert sent.status == 200
    assert sent.header("authorization") == []
    assert sent.header("proxy-authorization") == []


# ======================================================= 3. smuggling, pipelining, upgrades


def _post(fields: bytes, body: bytes, *, version: bytes = b"HTTP/1.1", target: bytes = b"/pub/a") -> bytes:
    return b"POST " + target + b" " + version + b"\r\nHost: gw.test\r\n" + fields + b"\r\n" + body


SMUGGLING = {
    "te_on_http_1_0": _post(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n" + INNER, version=b"HTTP/1.0"),
    "te_and_cl_http_1_0": _post(
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + INNER, version=b"HTTP/1.0"
    ),
    "chunk_ext_quoted_crlf": _post(
        b"Transfer-Encoding: chunked\r\n", b'3;x="a\r\nb"\r\nabc\r\n0\r\n\r\n' + INNER
    ),
    "chunk_size_0x": _post(b"Transfer-Encoding: chunked\r\n", b"0x3\r\nabc\r\n0\r\n\r\n" + INNER),
    "chunk_size_negative": _post(b"Transfer-Encoding: chunked\r\n", b"-3\r\nabc\r\n0\r\n\r\n" + INNER),
    "chunk_size_space": _post(b"Transfer-Encoding: chunked\r\n", b"3 \r\nabc\r\n0\r\n\r\n" + INNER),
    "chunk_size_underscore": _post(
        b"Transfer-Encoding: chunked\r\n", b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n" + INNER
    ),
    "chunk_data_too_long": _post(b"Transfer-Encoding: chunked\r\n", b"3\r\nabcdef\r\n0\r\n\r\n" + INNER),
    "chunk_no_crlf_after_data": _post(b"Transfer-Encoding: chunked\r\n", b"3\r\nabc0\r\n\r\n" + INNER),
    "trailer_with_framing": _post(
        b"Transfer-Encoding: chunked\r\n",
        b"3\r\nabc\r\n0\r\nContent-Length: 44\r\nX-User-Id: evil\r\n\r\n" + INNER,
    ),
    "cl_underscore": _post(b"Content-Length: 4_5\r\n", INNER),
    "cl_leading_zeros": _post(b"Content-Length: 00" + INNER_LEN + b"\r\n", INNER),
    "cl_hex": _post(b"Content-Length: 0x2d\r\n", INNER),
    "cl_negative": _post(b"Content-Length: -1\r\n", INNER),
    "cl_huge": _post(b"Content-Length: 99999999999999999999999\r\n", INNER),
    "te_comma_empty": _post(b"Transfer-Encoding: ,chunked\r\n", b"0\r\n\r\n" + INNER),
    "te_gzip_chunked": _post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n" + INNER),
    "te_in_a_nominated_connection": _post(
        b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + INNER
    ),
    "expect_then_body": _post(b"Expect: 100-continue\r\nContent-Length: " + INNER_LEN + b"\r\n", INNER),
    "refused_then_body_cl": _post(b"Content-Length: " + INNER_LEN + b"\r\n", INNER, target=b"/api/x"),
    "refused_then_body_chunked": _post(
        b"Transfer-Encoding: chunked\r\n", b"%x\r\n" % len(INNER) + INNER + b"\r\n0\r\n\r\n", target=b"/api/x"
    ),
    "bad_path_then_body": _post(b"Content-Length: " + INNER_LEN + b"\r\n", INNER, target=b"/pub/%2e%2e/api"),
    "http2_preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + INNER,
}


@pytest.mark.parametrize("case", list(SMUGGLING))
def test_smuggled_requests_never_reach_the_upstream(
    case: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """The inner request carries no token: decided on its own it is refused; only a desync could
    forward it. Never a 5xx, never CL and TE together upstream, never a trailer as a header."""
    before = upstream.count
    responses = exchange(
        gw.port, SMUGGLING[case] + b"GET /pub/END HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
    )
    assert responses, "no answer at all"
    assert all(r.status < 500 for r in responses), [r.head for r in responses]
    assert smuggled(upstream, before) == []
    for request in upstream.requests[before:]:
        names = [n for n, _ in request["headers"]]
        assert not (b"content-length" in names and b"transfer-encoding" in names)
        assert _spoofed(request) == []


def test_each_pipelined_request_is_decided_on_its_own(gw: GatewayServer, upstream: EchoUpstream) -> None:
    """A token on the first request of a connection never authorises the next one; a refusal
    with a body never desynchronises the ones after it."""
    before = upstream.count
    data = (
        b"GET /api/first HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer " + USER.encode() + b"\r\n\r\n"
        b"GET /api/second HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        b"POST /api/third HTTP/1.1\r\nHost: gw.test\r\nContent-Length: "
        + INNER_LEN
        + b"\r\n\r\n"
        + INNER
        + b"GET /pub/fourth HTTP/1.1\r\nHost: gw.test\r\nX-User-Id: evil\r\n\r\n"
        b"GET /pub/%2e%2e/api/fifth HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        b"GET /pub/sixth HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
    )
    responses = exchange(gw.port, data)
    assert [r.status for r in responses] == [200, 401, 401, 200, 400, 200]
    paths = [r["path"] for r in upstream.requests[before:]]
    assert paths == ["/api/first", "/pub/fourth", "/pub/sixth"]
    assert smuggled(upstream, before) == []
    assert all(_spoofed(r) == [] for r in upstream.requests[before:])
    assert b"x-user-id" not in dict(upstream.requests[before + 1]["headers"])


@pytest.mark.parametrize(
    "framing", [b"Content-Length: " + INNER_LEN + b"\r\n", b"Transfer-Encoding: chunked\r\n"]
)
def test_expect_100_continue_on_a_refused_route(
    framing: bytes, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """The refusal comes without inviting the body (no 100 Continue); bytes the client sends
    afterwards are never forwarded as a request."""
    before = upstream.count
    with connect(gw.port, 3.0) as sock:
        sock.sendall(b"POST /api/x HTTP/1.1\r\nHost: gw.test\r\nExpect: 100-continue\r\n" + framing + b"\r\n")
        reader = ResponseReader(sock)
        first = reader.read(timeout=3.0)
        assert first.status == 401
        try:
            sock.sendall(INNER + b"GET /pub/after HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
        except OSError:
            pass  # the gateway may close the connection after the refusal
        while reader.read(timeout=3.0).status != 0:
            pass
    assert smuggled(upstream, before) == []


@pytest.mark.parametrize(
    ("target", "upgrade", "status"),
    [
        (
            b"/pub/x",
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
            200,
        ),
        (
            b"/api/x",
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
            401,
        ),
        (b"/pub/x", b"Connection: Upgrade\r\nUpgrade: foo/1, websocket\r\n", 200),
        (b"/pub/x", b"Connection: keep-alive, Upgrade\r\nUpgrade: TLS/1.2\r\n", 200),
        (b"/nows/x", WS_HEAD, 403),
        (b"/api/x", WS_HEAD, 401),
        (b"/admin/x", WS_HEAD + b"Authorization: Bearer " + USER.encode() + b"\r\n", 403),
        (b"/pub/%2e%2e/api/x", WS_HEAD, 400),
        (b"/pub/x#/../../api/x", WS_HEAD, 400),
        (b"/nows/x", WS_HEAD.replace(b"Upgrade: websocket", b"Upgrade: WebSocket"), 403),
    ],
)
def test_upgrades_never_open_a_tunnel_past_the_rules(
    target: bytes, upgrade: bytes, status: int, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """h2c and other upgrades are answered as plain HTTP and the connection closes (what follows
    is never parsed); WebSocket upgrades are decided like any request and refused where the
    route says so. Nothing pipelined after the upgrade ever reaches the upstream."""
    before = upstream.count
    data = b"GET " + target + b" HTTP/1.1\r\nHost: gw.test\r\n" + upgrade + b"\r\n" + INNER
    responses = exchange(gw.port, data)
    assert [r.status for r in responses] == [status]
    assert smuggled(upstream, before) == []
    for request in upstream.requests[before:]:
        names = {n for n, _ in request["headers"]}
        assert not names & {b"upgrade", b"http2-settings", b"connection"}


def test_an_upgrade_request_with_a_body_is_answered_within_the_head_timeout(gw: GatewayServer) -> None:
    """Three variants at once (one wait): each must get an answer or a close within 1 s of
    head_timeout plus generous slack."""
    variants = [
        b"POST /pub/x HTTP/1.1\r\nHost: gw.test\r\n" + WS_HEAD + b"Content-Length: 5\r\n\r\nhello",
        b"GET /pub/x HTTP/1.1\r\nHost: gw.test\r\n" + WS_HEAD + b"Content-Length: 5\r\n\r\nhello",
        b"GET /api/x HTTP/1.1\r\nHost: gw.test\r\n"
        + WS_HEAD
        + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ]
    socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in variants]
    try:
        for sock, data in zip(socks, variants, strict=True):
            sock.sendall(data)
        deadline = time.monotonic() + 3.0
        answered = []
        for sock in socks:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                answered.append(sock.recv(65536)[:12])  # a status line, or b"" for a close
            except TimeoutError:
                answered.append(None)
        assert None not in answered, answered
    finally:
        for sock in socks:
            sock.close()


# ================================================== 4. credentials in the body, query and cookies


def form_post(
    gw: GatewayServer,
    raw_upstream: ThreadedRawServer,
    body: bytes,
    content_types: Sequence[str] = ("application/x-www-form-urlencoded",),
    *,
    target: str = "/raw/x",
    authorised: bool = True,
) -> Sent:
    """POST ``body`` to a route of the raw upstream, which records only requests it received
    whole (a body refused while streaming may already have sent the head and a first part)."""
    lines = ["Host: gw.test", *(f"Content-Type: {c}" for c in content_types)]
    if authorised:
        lines.append(f"Authorization: Bearer {USER}")
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    head = f"POST {target} HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n"
    before = len(raw_upstream.raw.requests)
    status, response = raw_request(gw.port, head.encode("latin-1") + body)
    forwarded = [
        {
            "method": r.method.decode(),
            "path": r.target.decode("latin-1"),
            "headers": r.headers,
            "body": r.body,
        }
        for r in raw_upstream.raw.requests[before:]
    ]
    return Sent(status, response, forwarded)


BODY_TOKEN = f"access_token={FORGED}".encode()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", BODY_TOKEN),
        ("application/x-www-form-urlencoded; charset=utf-8", BODY_TOKEN),
        ('application/x-www-form-urlencoded; charset="UTF-8"', BODY_TOKEN),
        ("application/x-www-form-urlencoded;charset=iso-8859-1;x=y", BODY_TOKEN),
        ("APPLICATION/X-WWW-FORM-URLENCODED", BODY_TOKEN),
        ("Application/X-Www-Form-Urlencoded ; Charset=UTF-8", BODY_TOKEN),
        ("application/x-www-form-urlencoded\t;charset=utf-8", BODY_TOKEN),
        ("application/x-www-form-urlencoded", b"a=1&" + BODY_TOKEN),
        ("application/x-www-form-urlencoded", b"a=1;" + BODY_TOKEN),
        ("application/x-www-form-urlencoded", b"access%5Ftoken=" + FORGED.encode()),
        ("application/x-www-form-urlencoded", b"access%5ftoken=" + FORGED.encode()),
        ("application/x-www-form-urlencoded", b"%61%63%63%65%73%73%5F%74%6F%6B%65%6E=" + FORGED.encode()),
        ("application/x-www-form-urlencoded", b"%61CCESS_token=x&" + BODY_TOKEN),
        ("application/x-www-form-urlencoded", b"x=" + b"y" * 200_000 + b"&" + BODY_TOKEN),
        ("application/x-www-form-urlencoded", b"&&&;;&" + BODY_TOKEN + b"&b=2"),
    ],
)
def test_a_form_body_token_is_refused_on_a_token_route(
    content_type: str, body: bytes, gw: GatewayServer, raw_upstream: ThreadedRawServer
) -> None:
    """Media type in any case, with parameters, charset, tabs; names percent-encoded in any hex
    case; after a long parameter; after `;`: 400 credentials_in_body, never forwarded."""
    sent = form_post(gw, raw_upstream, body, [content_type])
    assert_refused(sent, 400)
    assert sent.reason == "credentials_in_body"


@pytest.mark.parametrize("target", ["/opt/x", "/api/x"])
def test_a_form_body_token_alone_is_refused_too(
    target: str, gw: GatewayServer, raw_upstream: ThreadedRawServer
) -> None:
    sent = form_post(gw, raw_upstream, BODY_TOKEN, target=target, authorised=False)
    assert_refused(sent, 400, 401)


@pytest.mark.parametrize(
    "pieces",
    [
        [b"a=1&acc", b"ess_token=", FORGED.encode()],
        [b"a=1&access_token", b"=", FORGED.encode()],
        [b"a=1&access_token=", FORGED.encode()],
        [b"a=1&access%", b"5Ftoken=x"],
        [b"a=1&access%5", b"Ftoken=x"],
        [b"a=1&", b"a", b"c", b"c", b"e", b"s", b"s", b"_", b"t", b"o", b"k", b"e", b"n", b"=", b"x"],
        [b"x=" + b"y" * 70_000, b"&access_token=x"],
        [b"", b"access_token=x"],
    ],
)
def test_a_chunked_body_cannot_split_the_name_across_chunks(
    pieces: list[bytes], gw: GatewayServer, raw_upstream: ThreadedRawServer
) -> None:
    """One write per chunk (so the gateway sees them apart): 400, and the upstream never
    receives a complete request (the chunk completing the name is never passed on)."""
    head = (
        b"POST /raw/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer " + USER.encode() + b"\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
    )
    before = len(raw_upstream.raw.requests)
    with connect(gw.port, 5.0) as sock:
        sock.sendall(head)
        try:
            for piece in pieces:
                if piece:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                    time.sleep(0.002)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # refused and closed before the last chunk
        response = ResponseReader(sock).read(timeout=5.0)
    assert response.status == 400
    assert raw_upstream.raw.requests[before:] == []
    # The upstream connection that carried the refused body's first part is never reused: the
    # next request arrives whole and alone.
    after = form_post(gw, raw_upstream, b"a=1&b=2", target="/raw/after")
    assert after.status == 200
    assert [(r["path"], r["body"]) for r in after.forwarded] == [("/raw/after", b"a=1&b=2")]


def test_forms_without_a_token_still_pass(gw: GatewayServer, raw_upstream: ThreadedRawServer) -> None:
    """Controls: the refusal is about the token, not about forms."""
    for body in (b"a=1&note=access_token", b"my_access_token=1&access_tokens=2", b"access_token=&a=1"):
        assert form_post(gw, raw_upstream, body).status == 200


def test_a_second_content_type_cannot_hide_a_form_body(
    gw: GatewayServer, raw_upstream: ThreadedRawServer
) -> None:
    sent = form_post(gw, raw_upstream, BODY_TOKEN, ["text/plain", "application/x-www-form-urlencoded"])
    assert_refused(sent, 400)


def test_a_form_content_type_first_is_still_scanned(
    gw: GatewayServer, raw_upstream: ThreadedRawServer
) -> None:
    sent = form_post(gw, raw_upstream, BODY_TOKEN, ["application/x-www-form-urlencoded", "text/plain"])
    assert_refused(sent, 400)


def test_a_multipart_access_token_field_is_refused(
    gw: GatewayServer, raw_upstream: ThreadedRawServer
) -> None:
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="access_token"\r\n\r\n'
        + FORGED.encode()
        + b"\r\n--XX--\r\n"
    )
    sent = form_post(gw, raw_upstream, body, ["multipart/form-data; boundary=XX"])
    assert_refused(sent, 400)


@pytest.mark.parametrize("name", [b"access.token", b"access+token", b"+access_token", b"access%2Etoken"])
@pytest.mark.parametrize("where", ["body", "query"])
def test_php_mangled_access_token_names_are_refused(
    name: bytes, where: str, gw: GatewayServer, upstream: EchoUpstream, raw_upstream: ThreadedRawServer
) -> None:
    pair = name + b"=" + FORGED.encode()
    if where == "body":
        sent = form_post(gw, raw_upstream, b"a=1&" + pair)
    else:
        sent = send(gw, upstream, b"/api/x?a=1&" + pair, [bearer()])
    assert_refused(sent, 400)


@pytest.mark.parametrize(
    "query",
    [
        f"access_token={FORGED}",
        f"a=1&access_token={FORGED}&b=2",
        f"access%5Ftoken={FORGED}",
        f"%61ccess_token={FORGED}",
        f"access_token=junk&access_token={FORGED}",
    ],
)
def test_header_token_plus_query_token_is_refused(
    query: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    sent = send(gw, upstream, f"/api/x?{query}", [bearer()])
    assert_refused(sent, 400)
    assert sent.reason == "multiple_credentials"


def test_a_semicolon_separated_query_token_is_refused(gw: GatewayServer, upstream: EchoUpstream) -> None:
    sent = send(gw, upstream, f"/api/x?a=1;access_token={FORGED}", [bearer()])
    assert_refused(sent, 400)


def test_an_optional_route_never_forwards_an_unverified_query_token(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    sent = send(gw, upstream, f"/opt/x?access_token={FORGED}")
    assert sent.status < 500
    assert all("access_token" not in r["query"] for r in sent.forwarded)


def test_header_token_plus_cookie_token_is_refused(gw: GatewayServer, upstream: EchoUpstream) -> None:
    assert_refused(send(gw, upstream, "/api/x", [bearer(), ("Cookie", f"session={FORGED}")]), 400)
    assert_refused(
        send(gw, upstream, "/api/x", [bearer(), ("Cookie", "a=1"), ("Cookie", f"session={FORGED}")]), 400
    )
    assert_refused(send(gw, upstream, "/api/x", [bearer(), ("Cookie", f'session="{FORGED}"')]), 400)


def test_token_cookies_are_stripped_on_public_routes(gw: GatewayServer, upstream: EchoUpstream) -> None:
    sent = send(gw, upstream, "/pub/x", [("Cookie", f"a=1; session={FORGED}; b=2")])
    assert sent.header("cookie") == ["a=1; b=2"]


@pytest.mark.parametrize("cookie", [f"session ={FORGED}", f"session\t= {FORGED}", f"a=b, session={FORGED}"])
@pytest.mark.parametrize("target", ["/api/x", "/pub/x"])
def test_a_cookie_token_cannot_hide_behind_whitespace_or_commas(
    cookie: str, target: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    headers = [("Cookie", cookie)] + ([bearer()] if target == "/api/x" else [])
    sent = send(gw, upstream, target, headers)
    assert sent.status < 500
    for request in sent.forwarded:
        assert all(FORGED.encode() not in v for n, v in request["headers"] if n == b"cookie")


# ==================================================================================== 5. forward-auth


def forward_auth(gw: GatewayServer, upstream: EchoUpstream, fields: Sequence[bytes]) -> Sent:
    head = b"GET /_auth HTTP/1.1\r\n" + b"".join(f + b"\r\n" for f in fields)
    return send_raw(gw, upstream, head + b"Connection: close\r\n\r\n")


def nginx(uri: bytes, method: bytes = b"GET", *extra: bytes) -> list[bytes]:
    return [b"Host: gw.test", b"X-Original-Method: " + method, b"X-Original-URI: " + uri, *extra]


def traefik(uri: bytes, host: bytes = b"gw.test", method: bytes = b"GET", *extra: bytes) -> list[bytes]:
    return [
        b"Host: auth.internal",
        b"X-Forwarded-Method: " + method,
        b"X-Forwarded-Uri: " + uri,
        b"X-Forwarded-Host: " + host,
        *extra,
    ]


def test_forward_auth_setup(gw: GatewayServer, upstream: EchoUpstream) -> None:
    ok = forward_auth(gw, upstream, nginx(b"/api/x", b"GET", b"Authorization: Bearer " + USER.encode()))
    assert ok.status == 200 and ok.forwarded == []
    assert ok.response_header("x-user-id") == [b"alice"]
    assert forward_auth(gw, upstream, traefik(b"/pub/x")).status == 200


@pytest.mark.parametrize(
    "uri",
    [
        b"/pub/../api/x",
        b"/pub/%2e%2e/api/x",
        b"/pub%2F..%2Fapi",
        b"/pub/..%5capi/x",
        b"/pub/..;/api/x",
        b"//api/x",
        b"/api%00/x",
        b"/pub/%252e%252e/api",
        b"/pub/..%c0%afapi",
        b"/%EF%BD%81pi/x",
        b"http://gw.test/api/x",
        b"gw.test/api/x",
        b"*",
        b"",
        b"/pub#/../api/x",
        b"/pub x/../../api",
        b"/pub/\xc3\xa9/../../api",
    ],
)
@pytest.mark.parametrize("flavour", ["nginx", "traefik"])
def test_forward_auth_uris_follow_the_canonical_path_rules(
    uri: bytes, flavour: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    fields = nginx(uri) if flavour == "nginx" else traefik(uri)
    assert_refused(forward_auth(gw, upstream, fields), 400)


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        (nginx(b"/pub/x", b"get"), 400),
        (nginx(b"/pub/x", b"GET /api/x"), 400),
        (nginx(b"/pub/x", b"G" * 40), 400),
        (nginx(b"/api/x", b"HEAD"), 401),
        (nginx(b"/pub/x", b"GET", b"X-Forwarded-Uri: /api/x"), 400),
        (traefik(b"/pub/x", b"gw.test", b"GET", b"X-Original-URI: /api/x"), 400),
        (nginx(b"/pub/x", b"GET", b"X-Original-URI: /api/x"), 400),
        (nginx(b"/pub/x", b"GET", b"X-Original-Method: POST"), 400),
        (nginx(b"/pub/x", b"GET", b"Host: admin.example.com"), 400),
        (traefik(b"/pub/x", b"gw.test", b"GET", b"X-Forwarded-Host: admin.example.com"), 400),
        (traefik(b"/pub/x", b"gw.test", b"GET", b"X-Forwarded-Uri: /api/x"), 400),
        (traefik(b"/pub/x", b"gw.test", b"GET", b"X-Forwarded-Method: GET"), 400),
        (nginx(b"/pub/x", b"GET")[1:] + [b"Host: admin.example.com"], 403),
        (traefik(b"/pub/x", b"ADMIN.example.com."), 403),
        (traefik(b"/pub/x", b"admin.example.com:8443"), 403),
        ([b"Host: gw.test", b"X-Original-URI: /pub/x"], 400),
        ([b"Host: gw.test", b"X-Original-Method: GET"], 400),
        ([b"Host: gw.test", b"X-Forwarded-Method: GET", b"X-Original-Method: GET"], 400),
        (
            nginx(b"/cors/x", b"OPTIONS", b"Origin: http://a.test", b"Access-Control-Request-Method: DELETE"),
            403,
        ),
        (
            nginx(
                b"/api/x?access_token=" + FORGED.encode(), b"GET", b"Authorization: Bearer " + USER.encode()
            ),
            400,
        ),
        # A cookie named "session " is the session cookie to every framework: two credentials.
        (nginx(b"/api/x", b"GET", b"Cookie: session =x", b"Authorization: Bearer " + FORGED.encode()), 400),
    ],
)
def test_forward_auth_calls_that_are_ambiguous_or_name_a_refused_request(
    fields: list[bytes], status: int, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Both flavours at once, duplicates, a method that is no method, a denied host in the
    flavour's own host field: refused, never a 200."""
    assert_refused(forward_auth(gw, upstream, fields), status)


def test_forward_auth_answer_never_echoes_client_identity_headers(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    sent = forward_auth(gw, upstream, nginx(b"/pub/x", b"GET", b"X-User-Id: evil", b"X-User-Roles: admin"))
    assert sent.status == 200
    assert sent.response_header("x-user-id") == []
    assert sent.response_header("x-user-roles") == []
    opt = forward_auth(gw, upstream, nginx(b"/opt/x", b"GET", b"X-User-Id: evil"))
    assert opt.status == 200 and opt.response_header("x-user-id") == []


@pytest.mark.parametrize("host", [b"admin.example.com:abc", b"admin.example.com:"])
def test_forward_auth_denied_host_with_a_malformed_port_is_denied(
    host: bytes, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    sent = forward_auth(gw, upstream, traefik(b"/pub/x", host))
    assert sent.status in (400, 403)


@pytest.mark.parametrize(
    "spoof",
    [
        [],
        [b"X-Forwarded-For: 10.0.0.1"],
        [b"X-Real-IP: 10.0.0.1"],
        [b"Forwarded: for=10.0.0.1"],
        [b"X-Forwarded-For: 10.0.0.1, 10.0.0.2", b"X-Client-IP: 10.0.0.1", b"True-Client-IP: 10.0.0.1"],
    ],
)
def test_forward_auth_from_an_untrusted_peer_is_refused_whatever_it_claims(
    spoof: list[bytes], fa_untrusted: GatewayServer, upstream: EchoUpstream
) -> None:
    fields = nginx(b"/pub/x", b"GET", *spoof)
    sent = forward_auth(fa_untrusted, upstream, fields)
    assert_refused(sent, 403)
    assert sent.reason == "forward_auth_untrusted"
    assert sent.response_header("x-user-id") == []
