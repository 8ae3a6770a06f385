"""Header hygiene over real connections: what the upstream receives, read by an independent
parser (h11) from the raw bytes the gateway wrote.

- hop-by-hop headers and every header ``Connection`` nominates are removed before the gateway
  adds its own (security-catalogue 6.2: ``Connection: X-User-Id`` cannot delete a gateway
  header; Traefik CVE-2021-32813 / CVE-2024-45410, Apache CVE-2022-31813);
- the client's Content-Length / Transfer-Encoding never go upstream as given: framing is
  re-derived, never both;
- an h2c upgrade is not forwarded;
- forwarding headers come from the real peer; incoming ones are believed only from
  ``trusted_proxies``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.support.proxy_servers import ThreadedRawServer, connect, read_response
from tests.support.servers import GatewayServer
from tests.support.upstream_servers import ReceivedRequest, keep_alive, ok

SECRET = "a-test-hmac-secret-of-at-least-32-bytes!!"
ISSUER = "https://hs.test"
AUD = "api"


def token() -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def config(upstream: ThreadedRawServer, **proxy: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "proxy": proxy,
        "providers": {
            "hs": {"issuer": ISSUER, "secret": SECRET, "algorithms": ["HS256"], "audiences": [AUD]}
        },
        "headers": {"claims": {"X-User-Id": "sub"}},
        "routes": [
            {"name": "private", "match": {"path": "/private/**"}},
            {"name": "public", "match": {"path": "/**"}, "auth": "public"},
        ],
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedRawServer]:
    with ThreadedRawServer(keep_alive(ok(b"fine"))) as server:
        yield server


@pytest.fixture(scope="module")
def gw(upstream: ThreadedRawServer) -> Iterator[GatewayServer]:
    with GatewayServer(config(upstream)) as server:
        yield server


@pytest.fixture(scope="module")
def gw_trusting(upstream: ThreadedRawServer) -> Iterator[GatewayServer]:
    with GatewayServer(config(upstream, trusted_proxies=["127.0.0.1/32"])) as server:
        yield server


def forward(
    gw: GatewayServer, upstream: ThreadedRawServer, head: bytes, body: bytes = b""
) -> ReceivedRequest:
    """Send ``head`` (+ body) raw; return the request as the upstream parsed it."""
    before = len(upstream.raw.requests)
    with connect(gw.port) as sock:
        sock.sendall(head + body)
        response = read_response(sock)
    assert response.status == 200, response.head + response.body
    assert len(upstream.raw.requests) == before + 1
    return upstream.raw.requests[-1]


def names(request: ReceivedRequest) -> list[bytes]:
    return [n for n, _ in request.headers]


def test_connection_cannot_remove_gateway_headers(gw: GatewayServer, upstream: ThreadedRawServer) -> None:
    got = forward(
        gw,
        upstream,
        b"GET /private/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + token().encode() + b"\r\n"
        b"Connection: close, X-User-Id, X-Forwarded-For, Forwarded, X-Request-Id, X-Custom\r\n"
        b"Connection: x-forwarded-proto\r\nX-Custom: nominated\r\nX-Kept: yes\r\n\r\n",
    )
    assert got.header(b"x-user-id") == [b"alice"]
    assert got.header(b"x-forwarded-for") == [b"127.0.0.1"]
    assert got.header(b"x-forwarded-proto") == [b"http"]
    assert got.header(b"forwarded") == [b"for=127.0.0.1;proto=http;host=gw"]
    assert len(got.header(b"x-request-id")) == 1
    assert got.header(b"x-custom") == []  # nominated by the client: removed
    assert got.header(b"x-kept") == [b"yes"]
    assert got.header(b"connection") == []


def test_hop_by_hop_headers_are_removed(gw: GatewayServer, upstream: ThreadedRawServer) -> None:
    got = forward(
        gw,
        upstream,
        b"GET /public/x HTTP/1.1\r\nHost: gw\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\nTrailer: X-Checksum\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"Upgrade: something\r\nX-End: 1\r\n\r\n",
    )
    for name in (b"keep-alive", b"proxy-connection", b"te", b"trailer", b"proxy-authorization", b"upgrade"):
        assert got.header(name) == [], name
    assert got.header(b"x-end") == [b"1"]


def test_h2c_upgrade_is_not_forwarded(gw: GatewayServer, upstream: ThreadedRawServer) -> None:
    before = len(upstream.raw.requests)
    with connect(gw.port) as sock:
        sock.sendall(
            b"GET /public/h2c HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            # What an h2c client sends after a 101 (here: a smuggling attempt).
            b"GET /private/SMUGGLED HTTP/1.1\r\nHost: gw\r\n\r\n"
        )
        response = read_response(sock)
        assert response.status == 200  # answered as plain HTTP/1.1, no 101
        assert response.header(b"connection") == [b"close"]
        assert sock.recv(100) == b""  # and closed: nothing after the head is ever parsed
    assert len(upstream.raw.requests) == before + 1
    got = upstream.raw.requests[-1]
    assert got.target == b"/public/h2c"
    for name in (b"upgrade", b"http2-settings", b"connection"):
        assert got.header(name) == []


def test_client_framing_is_re_derived_never_copied(gw: GatewayServer, upstream: ThreadedRawServer) -> None:
    sized = forward(
        gw, upstream, b"POST /public/a HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\n", b"hello"
    )
    assert sized.header(b"content-length") == [b"5"] and sized.header(b"transfer-encoding") == []
    assert sized.body == b"hello"
    chunked = forward(
        gw,
        upstream,
        b"POST /public/b HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    assert chunked.header(b"transfer-encoding") == [b"chunked"] and chunked.header(b"content-length") == []
    assert chunked.body == b"hello world"
    assert b"ext=1" not in chunked.raw_head and chunked.header(b"x-trailer") == []
    empty = forward(gw, upstream, b"GET /public/c HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n")
    assert empty.header(b"content-length") in ([], [b"0"]) and empty.header(b"transfer-encoding") == []
    for got in (sized, chunked, empty):
        lowered = got.raw_head.lower()
        assert not (b"\r\ncontent-length:" in lowered and b"\r\ntransfer-encoding:" in lowered)


def test_forwarding_headers_name_the_real_peer_when_nobody_is_trusted(
    gw: GatewayServer, upstream: ThreadedRawServer
) -> None:
    got = forward(
        gw,
        upstream,
        b"GET /public/f HTTP/1.1\r\nHost: gw.example\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"
        b"Forwarded: for=6.6.6.6;proto=https\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n"
        b"X-Forwarded-Port: 443\r\nX-Forwarded-Ssl: on\r\n\r\n",
    )
    assert got.header(b"x-forwarded-ssl") == []
    assert got.header(b"x-forwarded-for") == [b"127.0.0.1"]  # replaced, not appended to
    assert got.header(b"x-forwarded-proto") == [b"http"]
    assert got.header(b"x-forwarded-host") == [b"gw.example"]
    assert got.header(b"forwarded") == [b"for=127.0.0.1;proto=http;host=gw.example"]
    assert got.header(b"x-real-ip") == [] and got.header(b"x-forwarded-port") == []


def test_forwarding_headers_extend_a_trusted_proxys_chain(
    gw_trusting: GatewayServer, upstream: ThreadedRawServer
) -> None:
    got = forward(
        gw_trusting,
        upstream,
        b"GET /public/f HTTP/1.1\r\nHost: gw.example\r\nX-Forwarded-For: 203.0.113.7\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\nX-Real-IP: 203.0.113.7\r\n"
        b"X-Forwarded-Ssl: on\r\nX-Forwarded-Client-Cert: Hash=abc\r\n\r\n",
    )
    # The rest of the X-Forwarded-* family passes from a trusted proxy (stripped from others:
    # tests/e2e/test_catalogue.py::test_client_x_forwarded_family_never_reaches_the_upstream).
    assert got.header(b"x-forwarded-ssl") == [b"on"]
    assert got.header(b"x-forwarded-client-cert") == [b"Hash=abc"]
    assert got.header(b"x-forwarded-for") == [b"203.0.113.7, 127.0.0.1"]
    assert got.header(b"x-forwarded-proto") == [b"https"]
    assert got.header(b"x-forwarded-host") == [b"shop.example"]
    assert got.header(b"forwarded") == [b"for=203.0.113.7, for=127.0.0.1;proto=http;host=gw.example"]
    assert got.header(b"x-real-ip") == [b"203.0.113.7"]


def test_the_clients_request_id_passes_only_when_safe(gw: GatewayServer, upstream: ThreadedRawServer) -> None:
    kept = forward(gw, upstream, b"GET /public/r HTTP/1.1\r\nHost: gw\r\nX-Request-Id: abc-123\r\n\r\n")
    assert kept.header(b"x-request-id") == [b"abc-123"]
    replaced = forward(
        gw, upstream, b"GET /public/r HTTP/1.1\r\nHost: gw\r\nX-Request-Id: a b\r\nX-Request-Id: two\r\n\r\n"
    )
    (value,) = replaced.header(b"x-request-id")
    assert value not in (b"a b", b"two") and len(value) == 24


def test_method_overrides_and_client_address_headers_never_cross_from_a_client(
    gw: GatewayServer, upstream: ThreadedRawServer
) -> None:
    # A GET the route allowed must not become the DELETE it did not (Rails, Laravel, Express
    # method-override); client-address headers CDNs and frameworks read are the peer's to set.
    spoofed = [
        b"X-HTTP-Method-Override: DELETE",
        b"X-HTTP-Method: DELETE",
        b"X-Method-Override: DELETE",
        b"Client-IP: 6.6.6.6",
        b"True-Client-IP: 6.6.6.6",
        b"X-Client-IP: 6.6.6.6",
        b"CF-Connecting-IP: 6.6.6.6",
        b"X-Cluster-Client-IP: 6.6.6.6",
        b"X-Original-Host: admin.example",
        b"X-Host: admin.example",
    ]
    got = forward(
        gw, upstream, b"GET /public/f HTTP/1.1\r\nHost: gw.example\r\n" + b"\r\n".join(spoofed) + b"\r\n\r\n"
    )
    for line in spoofed:
        name = line.split(b":")[0].lower()
        assert got.header(name) == [], name
