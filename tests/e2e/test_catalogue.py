"""Security-catalogue items that had no end-to-end test yet (see /work/notes/catalogue-map.md),
over real HTTP: the gateway under uvicorn, a real JWKS server, an echo upstream recording every
request it receives, and exact request bytes where a client library would "fix" them.

Each test names its catalogue item. Every refusal is also asserted never to reach the upstream.
Two gateways serve the module: ``gw`` (strict paths, the default) and ``gw_normalizing``
(``//`` and dot-segments resolved instead of refused).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.support.exchange import Sent, send, send_raw
from tests.support.jwks_server import JWKSServer
from tests.support.proxy_servers import ThreadedRawServer
from tests.support.servers import EchoUpstream, GatewayServer
from tests.support.tokens import b64url, new_signing_key, rsa_private_key
from tests.support.upstream_servers import keep_alive

SECRET = "catalogue-e2e-hmac-secret-0123456789abcdef"
HS_ISSUER = "https://hs.catalogue.test"
AUD = "api"
#: Hosts of the ``tenant`` route: more than 100 (Caddy CVE-2026-27588 broke above 100).
TENANT_HOSTS = [f"h{i}.tenant.test" for i in range(150)]


# ------------------------------------------------------------------------------------ helpers


def hs_token(**extra: Any) -> str:
    now = int(time.time())
    claims = {"iss": HS_ISSUER, "sub": "alice", "aud": AUD, "iat": now, "exp": now + 300, **extra}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, SECRET, algorithm="HS256")


USER = hs_token(roles=["user"])
ADMIN = hs_token(roles=["user", "admin"], sub="root")


#: What the WebSocket-refusing upstream answers to every request.
WS_REFUSAL = b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nnope"


def config(
    upstream: EchoUpstream, idp: JWKSServer, refusing: ThreadedRawServer, normalize: list[str]
) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "paths": {"normalize": normalize},
        "providers": {
            "hs": {"issuer": HS_ISSUER, "secret": SECRET, "algorithms": ["HS256"], "audiences": [AUD]},
            "idp": {
                "issuer": idp.issuer,
                "jwks_uri": idp.jwks_uri,
                "algorithms": ["RS256"],
                "audiences": [AUD],
            },
        },
        "headers": {"claims": {"X-User-Id": "sub"}, "strip_prefixes": ["X-User-"]},
        "routes": [
            {"name": "secret", "match": {"path": "/secret"}},
            {"name": "tenant", "match": {"path": "/tenant/**", "host": TENANT_HOSTS}},
            {"name": "pub", "match": {"path": "/pub/**"}, "auth": "public", "strip_prefix": "/pub"},
            {
                "name": "admin",
                "match": {"path": "/admin/**"},
                "require": {"claim": "roles", "contains": "admin"},
            },
            {"name": "api", "match": {"path": "/api/**"}},
            {"name": "ws", "match": {"path": "/ws/**"}},
            {
                "name": "wsrefuse",
                "match": {"path": "/wsrefuse/**"},
                "auth": "public",
                "upstream": refusing.url,
            },
            {"name": "public", "match": {"path": "/**"}, "auth": "public"},
        ],
    }


@pytest.fixture(scope="module")
def idp() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        server.add_key("RS256", slot=0)
        yield server


@pytest.fixture(scope="module")
def attacker() -> Iterator[JWKSServer]:
    """A server the attacker controls: it must never be contacted by the gateway."""
    with JWKSServer() as server:
        server.add_key("RS256", slot=6)
        yield server


@pytest.fixture(scope="module")
def refusing() -> Iterator[ThreadedRawServer]:
    """An upstream that refuses every request (WebSocket upgrades included) with 403."""
    with ThreadedRawServer(keep_alive(WS_REFUSAL)) as server:
        yield server


@pytest.fixture(scope="module")
def gw(upstream: EchoUpstream, idp: JWKSServer, refusing: ThreadedRawServer) -> Iterator[GatewayServer]:
    with GatewayServer(config(upstream, idp, refusing, [])) as server:
        server.wait_ready()
        yield server


@pytest.fixture(scope="module")
def gw_normalizing(
    upstream: EchoUpstream, idp: JWKSServer, refusing: ThreadedRawServer
) -> Iterator[GatewayServer]:
    with GatewayServer(config(upstream, idp, refusing, ["merge_slashes", "resolve_dots"])) as server:
        server.wait_ready()
        yield server


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def assert_refused(sent: Sent, *statuses: int) -> None:
    """Refused with one of ``statuses`` (4xx, never 5xx) and never forwarded."""
    assert sent.status in statuses, sent.response[:300]
    assert sent.forwarded == [], "a refused request reached the upstream"


def test_the_setup_forwards_what_it_should(gw: GatewayServer, upstream: EchoUpstream) -> None:
    """Control: the refusals below are about the attack, not a broken setup."""
    assert send(gw, upstream, "/api/x", [bearer(USER)]).header("X-User-Id") == ["alice"]
    assert send(gw, upstream, "/admin/x", [bearer(ADMIN)]).header("X-User-Id") == ["root"]
    assert len(send(gw, upstream, "/secretx").forwarded) == 1  # public catch-all
    assert send(gw, upstream, "/pub/x").forwarded[0]["path"] == "/x"  # strip_prefix
    assert_refused(send(gw, upstream, "/secret"), 401)


# ========================================================== 1 #14 / 2.12 token_huge_64k_no_5xx


def test_token_huge_64k_no_5xx(gw: GatewayServer, upstream: EchoUpstream) -> None:
    """Catalogue 2.12: a 64 KiB token hits the head limit (431), never a 5xx, never forwarded."""
    token = USER + "." + "A" * (64 * 1024)
    assert_refused(send(gw, upstream, "/api/x", [bearer(token)]), 431)
    # Split over several header lines, a 64 KiB head still hits the limit.
    pieces = [(f"X-Pad-{i}", "p" * 8000) for i in range(8)]
    assert_refused(send(gw, upstream, "/api/x", [bearer(USER), *pieces]), 431)


# ============================================================ 2.15 / RFC 6750 §2.2 form body


def test_rfc6750_form_body_access_token_alone_is_not_a_credential(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Catalogue 2.15: ``access_token`` in a form body is not accepted as the token."""
    body = f"access_token={ADMIN}".encode()
    sent = send(
        gw,
        upstream,
        "/admin/x",
        [("Content-Type", "application/x-www-form-urlencoded")],
        method="POST",
        body=body,
    )
    assert_refused(sent, 401)
    assert sent.reason == "token_missing"


def test_rfc6750_header_and_form_body_token_is_400_invalid_request(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Catalogue 5 / 2.15 (Kong FTI-4580): header + form-body token is two methods: 400."""
    sent = send(
        gw,
        upstream,
        "/api/x",
        [bearer(USER), ("Content-Type", "application/x-www-form-urlencoded")],
        method="POST",
        body=f"access_token={ADMIN}&x=1".encode(),
    )
    assert_refused(sent, 400)
    assert sent.reason == "credentials_in_body"
    assert b'error="invalid_request"' in sent.response


@pytest.mark.parametrize(
    ("content_type", "body", "forwarded"),
    [
        ("application/x-www-form-urlencoded", f"x=1&access%5Ftoken={ADMIN}", False),
        ("application/x-www-form-urlencoded; charset=UTF-8", f"access_token={ADMIN}", False),
        ("application/json", f'{{"access_token": "{ADMIN}"}}', True),  # not RFC 6750 §2.2
        ("application/x-www-form-urlencoded", "x=1&note=access_token", True),
    ],
    ids=["encoded_name", "charset", "json_is_not_a_form", "no_token"],
)
def test_a_form_body_token_never_reaches_the_upstream_of_a_token_route(
    gw: GatewayServer, upstream: EchoUpstream, content_type: str, body: str, forwarded: bool
) -> None:
    """The gateway does not verify body tokens, so it never passes one on unverified."""
    sent = send(
        gw,
        upstream,
        "/api/x",
        [bearer(USER), ("Content-Type", content_type)],
        method="POST",
        body=body.encode(),
    )
    if forwarded:
        assert sent.status == 200 and len(sent.forwarded) == 1
    else:
        assert_refused(sent, 400)
        assert sent.reason == "credentials_in_body"


def test_a_public_route_passes_form_bodies_untouched(gw: GatewayServer, upstream: EchoUpstream) -> None:
    """A public route takes no token at all: its bodies are the upstream's business."""
    sent = send(
        gw,
        upstream,
        "/public/form",
        [("Content-Type", "application/x-www-form-urlencoded")],
        method="POST",
        body=f"access_token={ADMIN}".encode(),
    )
    assert sent.status == 200 and len(sent.forwarded) == 1


# =================================================== 2.15 two Authorization headers, both orders


@pytest.mark.parametrize("order", ["admin_then_user", "user_then_admin"])
def test_rfc6750_two_authorization_headers_400_invalid_request(
    order: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Catalogue 2.15 / 5: two Authorization headers (admin+user and user+admin) on the admin
    route: 400 invalid_request whichever comes first."""
    tokens = [ADMIN, USER] if order == "admin_then_user" else [USER, ADMIN]
    sent = send(gw, upstream, "/admin/x", [bearer(t) for t in tokens])
    assert_refused(sent, 400)
    assert sent.reason == "multiple_credentials"
    assert b'error="invalid_request"' in sent.response


# ============================================ 3.3 Envoy CVE-2023-27487 / 3.4 Symfony CVE-2018-14773

PATH_OVERRIDES = [
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Envoy-Original-Path",
    "X-Original-URI",
    "X-Forwarded-Uri",
    "X-Forwarded-Prefix",
    "X-Forwarded-Path",
]


@pytest.mark.parametrize("name", PATH_OVERRIDES)
def test_client_path_override_headers_never_change_the_decision(
    name: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Envoy CVE-2023-27487 (client ``x-envoy-original-path`` used for jwt_authn), Symfony
    CVE-2018-14773 (``X-Original-URL``): only the request line's path is authorised."""
    assert_refused(send(gw, upstream, "/admin/x", [(name, "/public/x")]), 401)
    assert_refused(send(gw, upstream, "/admin/x", [bearer(USER), (name, "/public/x")]), 403)
    sent = send(gw, upstream, "/public/x", [(name, "/admin/x")])
    assert [r["path"] for r in sent.forwarded] == ["/public/x"]


def test_catalogue_listed_rewrite_headers_are_stripped(gw: GatewayServer, upstream: EchoUpstream) -> None:
    """Catalogue 6.1: ``X-Original-URL`` / ``X-Rewrite-URL`` / ``X-HTTP-Method-Override`` never
    reach the upstream (Symfony CVE-2018-14773)."""
    spoof = [
        ("X-Original-URL", "/admin/x"),
        ("X-Rewrite-URL", "/admin/x"),
        ("X-HTTP-Method-Override", "DELETE"),
    ]
    sent = send(gw, upstream, "/public/x", spoof)
    for name, _ in spoof:
        assert sent.header(name) == [], name


#: Client-sent ``X-Forwarded-*`` headers the gateway neither sets nor strips (found by this
#: audit). Backends read them: Rack's ``ssl?`` trusts X-Forwarded-Ssl/-Scheme, Envoy-fronted
#: services trust X-Forwarded-Client-Cert, Traefik-style apps X-Forwarded-Uri/-Method.
FORWARDING_FAMILY = [
    "X-Forwarded-Ssl",
    "X-Forwarded-Scheme",
    "X-Forwarded-Uri",
    "X-Forwarded-Method",
    "X-Forwarded-Server",
    "X-Forwarded-Client-Cert",
    "X-Forwarded-Path",
]


@pytest.mark.parametrize("name", FORWARDING_FAMILY)
def test_client_x_forwarded_family_never_reaches_the_upstream(
    name: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Catalogue 6.1 / 6.5: ``X-Forwarded-*`` from an untrusted client is stripped (or replaced
    by the gateway's own value), never passed on as the client wrote it."""
    sent = send(gw, upstream, "/public/x", [(name, "spoofed-by-client")])
    assert "spoofed-by-client" not in sent.header(name)


# ======================================================= 3.3 Istio CVE-2020-8595 (exact + ?/#)


@pytest.mark.parametrize(
    "target",
    [
        b"/secret?",
        b"/secret?x=1",
        b"/secret#",
        b"/secret#frag",
        b"/secret?#",
        b"/secret%3F",
        b"/secret%3f",
        b"/secret%23",
    ],
)
def test_istio_cve_2020_8595_exact_route_with_query_or_fragment_marker(
    target: bytes, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Istio CVE-2020-8595: an exact-path protected route is not bypassed by appending ``?``
    or ``#`` (raw or escaped) when a public catch-all follows it."""
    assert_refused(send(gw, upstream, target), 400, 401)


# =============================================== 3.4 nginx CVE-2013-4547, HTTP/0.9 request lines


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /public/x /../admin/x HTTP/1.1",
        b"GET /admin /x HTTP/1.1",
        b"GET /public/ HTTP/1.1/../../admin/x HTTP/1.1",
        b"GET /public/x\t/../admin/x HTTP/1.1",
    ],
    ids=["space_then_dots", "space_in_segment", "fake_version_in_target", "tab_in_target"],
)
def test_nginx_cve_2013_4547_unescaped_space_in_request_target(
    request_line: bytes, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """nginx CVE-2013-4547: an unescaped space (or tab) in the target is refused (400), never
    split into a path the gateway authorises and another the backend reads."""
    sent = send_raw(gw, upstream, request_line + b"\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
    assert_refused(sent, 400)


@pytest.mark.parametrize("path", [b"/admin/x", b"/api/x"])
def test_http_0_9_style_request_line_is_never_forwarded(
    path: bytes, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Catalogue 6.4: an HTTP/0.9-style request line (no version, no headers) is decided like
    any other (401 without a token), refused (400) or the connection closed: never forwarded
    without a token, never a 5xx."""
    sent = send_raw(gw, upstream, b"GET " + path + b"\r\n\r\n", timeout=3.0)
    assert sent.status in (0, 400, 401), sent.response[:200]
    assert sent.forwarded == []


# ========================================== 3.4 Traefik CVE-2026-48020 (StripPrefix + dot-segments)

STRIP_PREFIX_VARIANTS = [
    b"/pub/../admin/x",
    b"/pub/%2e%2e/admin/x",
    b"/pub/%2E%2E/admin/x",
    b"/pub/.%2e/admin/x",
    b"/pub/..%2fadmin/x",
    b"/pub%2f..%2fadmin/x",
    b"/pub/%252e%252e/admin/x",
    b"/pub/..;/admin/x",
    b"/pub/..\\admin/x",
    b"/pub/..%5cadmin/x",
    b"/pub/x/../../admin/x",
    b"/pub//../admin/x",
    b"/pub/%c0%ae%c0%ae/admin/x",
]


@pytest.mark.parametrize("target", STRIP_PREFIX_VARIANTS, ids=[repr(t)[2:-1] for t in STRIP_PREFIX_VARIANTS])
def test_traefik_cve_2026_48020_strip_prefix_cannot_reach_a_protected_path(
    target: bytes, gw: GatewayServer, gw_normalizing: GatewayServer, upstream: EchoUpstream
) -> None:
    """Traefik CVE-2026-48020: a public route with ``strip_prefix`` plus ``..``/``%2e%2e``
    never forwards a path that resolves to the protected ``/admin`` route. Strict paths: 400;
    normalising: resolved first, then judged by the admin route (401)."""
    assert_refused(send(gw, upstream, target), 400)
    assert_refused(send(gw_normalizing, upstream, target), 400, 401)


# ============================================ 3.4 Caddy CVE-2026-27588 / Istio CVE-2021-39155 (Host)


@pytest.mark.parametrize(
    "host",
    ["h120.tenant.test", "H120.TENANT.TEST", "H149.Tenant.Test", "h120.tenant.test.", "H0.TENANT.TEST:8080"],
)
def test_host_match_is_case_insensitive_with_more_than_100_hosts(
    host: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    """Caddy CVE-2026-27588 (MatchHost case-sensitive above 100 hosts), Istio CVE-2021-39155:
    a host-bound protected route is matched whatever the Host case, so the public catch-all
    after it never serves the request."""
    assert_refused(send(gw, upstream, "/tenant/x", host=host), 401)
    # Control: another host is not the tenant route, the public catch-all forwards it.
    assert len(send(gw, upstream, "/tenant/x", host="elsewhere.test").forwarded) == 1


# =============================================== 3.5 Envoy CVE-2025-64763 (early data after upgrade)

UPGRADE = (
    b"GET %s HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.mark.parametrize(
    ("target", "auth", "status"),
    [
        (b"/ws/chat", b"", 401),
        (b"/ws/chat", b"Authorization: Bearer x.y.z\r\n", 401),
        (b"/wsrefuse/chat", b"", 403),
    ],
    ids=["refused_by_gateway_no_token", "refused_by_gateway_bad_token", "refused_by_upstream"],
)
@pytest.mark.parametrize("early", [b"/admin/SMUGGLED", b"/public/SMUGGLED", b"/wsrefuse/SMUGGLED"])
def test_envoy_cve_2025_64763_early_data_after_a_refused_upgrade_is_never_forwarded(
    target: bytes,
    auth: bytes,
    status: int,
    early: bytes,
    gw: GatewayServer,
    upstream: EchoUpstream,
    refusing: ThreadedRawServer,
) -> None:
    """Envoy CVE-2025-64763: bytes sent right behind an upgrade request belong to the other
    protocol. When the upgrade is refused (by the gateway or by the upstream) they are never
    parsed as a second HTTP request and never reach an upstream."""
    smuggled = b"GET " + early + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    before = upstream.count
    sent = send_raw(gw, upstream, UPGRADE % target + auth + b"\r\n" + smuggled, timeout=3.0)
    time.sleep(0.05)  # a smuggled request would be forwarded after the first answer
    assert sent.status == status, sent.response[:300]
    assert sent.response.count(b"HTTP/1.1 ") == 1  # one answer: the upgrade request's
    assert not [r for r in upstream.requests[before:] if "SMUGGLED" in r["path"]]
    assert not [r for r in refusing.raw.requests if b"SMUGGLED" in r.target]


# ====================================================== 7 / 2.8 RSA e=1 key: forgery with sig = EM

_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def _emsa_pkcs1_v15(message: bytes, size: int) -> bytes:
    t = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    return b"\x00\x01" + b"\xff" * (size - len(t) - 3) + b"\x00" + t


def test_rsa_e_1_key_in_the_jwks_cannot_be_used_to_forge(
    gw: GatewayServer, idp: JWKSServer, upstream: EchoUpstream
) -> None:
    """Catalogue 7 (bad keys mixed with good, RSA e=1): with e=1 the "signature" is the
    encoded message itself, so anyone can sign. Such a key is never trusted, even after a
    re-fetch for its kid; good keys keep working."""
    n = rsa_private_key(4).public_key().public_numbers().n
    size = (n.bit_length() + 7) // 8
    idp.add_entry(
        {
            "kty": "RSA",
            "kid": "e-one",
            "alg": "RS256",
            "use": "sig",
            "n": b64url(n.to_bytes(size, "big")),
            "e": "AQ",
        }
    )
    claims = {
        "iss": idp.issuer,
        "sub": "mallory",
        "aud": AUD,
        "roles": ["admin"],
        "exp": int(time.time()) + 300,
    }
    header = b64url(b'{"alg":"RS256","kid":"e-one"}')
    signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
    forged = f"{signing_input}.{b64url(_emsa_pkcs1_v15(signing_input.encode(), size))}"
    sent = send(gw, upstream, "/admin/x", [bearer(forged)])
    assert_refused(sent, 401)
    assert sent.reason == "unknown_kid"
    good = new_signing_key("RS256", slot=0).sign({**claims, "sub": "alice"})
    assert send(gw, upstream, "/admin/x", [bearer(good)]).header("X-User-Id") == ["alice"]


# ======================================= 8.3 jwt_tool "external interaction" / RFC 8725 §3.10


def test_jwt_tool_urls_in_every_header_member_and_claim_are_never_fetched(
    gw: GatewayServer, upstream: EchoUpstream, attacker: JWKSServer
) -> None:
    """jwt_tool playbook "external interaction injection into every header/payload claim",
    RFC 8725 §3.10 (SSRF through ``jku``/``x5u``): the gateway contacts no URL a token names,
    including an unconfigured ``iss`` (no discovery from token data, PyJWT CVE-2026-48522)."""
    url = attacker.base_url + "/cb"
    evil = new_signing_key("RS256", slot=6)
    now = int(time.time())
    base = {"sub": "alice", "aud": AUD, "iat": now, "exp": now + 300}
    url_claims = {name: url for name in ("jti", "picture", "website", "profile", "azp", "nonce", "sid")}
    headers_with_urls = {"typ": url, "cty": url, "x5t": url, "x5t#S256": url, "kid": url}
    tokens = [
        # Every accepted header member and many claims carry the URL; the HMAC provider signs.
        jwt.encode(
            {**base, "iss": HS_ISSUER, **url_claims}, SECRET, algorithm="HS256", headers=headers_with_urls
        ),
        # Key URLs in the header.
        evil.sign({**base, "iss": HS_ISSUER}, headers={"jku": attacker.jwks_uri}),
        evil.sign({**base, "iss": HS_ISSUER}, headers={"x5u": url}),
        # The attacker as issuer: discovery and its JWKS are never asked for.
        evil.sign({**base, "iss": attacker.issuer}),
        evil.sign(
            {**base, "iss": attacker.issuer}, headers={"jku": attacker.jwks_uri, "kid": attacker.jwks_uri}
        ),
        evil.sign({**base, "iss": attacker.issuer + "/"}),
        evil.sign({**base, "iss": attacker.discovery_url}),
    ]
    statuses = [send(gw, upstream, "/api/x", [bearer(t)]).status for t in tokens]
    assert all(s < 500 for s in statuses), statuses
    assert statuses[1:] == [401] * (len(tokens) - 1)
    time.sleep(0.2)  # a fetch started in the background would have arrived by now
    assert attacker.discovery_count == 0
    assert attacker.fetch_count == 0
    assert attacker.request_count("/cb") == 0


# ====================================================================== 6.6 header count limit


def test_header_count_is_bounded_by_the_head_limit(gw: GatewayServer, upstream: EchoUpstream) -> None:
    """Catalogue 6.6 (header count limit): there is no separate count, the 16 KiB head limit
    bounds it. 5000 one-letter headers exceed it (431); 1500 stay under it and are answered
    promptly, never with a 5xx."""
    many = [(f"a{i}", "b") for i in range(5000)]
    assert_refused(send(gw, upstream, "/public/x", many), 431)
    started = time.monotonic()
    sent = send(gw, upstream, "/public/x", [(f"a{i}", "b") for i in range(1500)])
    assert 0 < sent.status < 500
    assert time.monotonic() - started < 3.0
