"""The proxy passes requests and responses through as the client and the upstream meant them.

Real servers: the gateway under uvicorn (hardened httptools protocol), a streaming ASGI upstream
under uvicorn, raw sockets where a client library would normalise what is sent or read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from tests.support.proxy_servers import (
    GZIP_BODY,
    GZIP_PLAIN,
    StreamUpstream,
    ThreadedRawServer,
    connect,
    read_response,
)
from tests.support.servers import GatewayServer
from tests.support.upstream_servers import ServerConn

SECRET = "a-test-hmac-secret-of-at-least-32-bytes!!"
ISSUER = "https://hs.test"
AUD = "api"


def token(**extra: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 600, **extra}
    return jwt.encode(claims, SECRET, algorithm="HS256")


#: Raw answers of the scripted upstream, by request target (no ASGI server in between: uvicorn
#: itself refuses to send a 304 with a Content-Length).
RAW_ANSWERS = {
    b"/204": b'HTTP/1.1 204 No Content\r\netag: "v1"\r\n\r\n',
    b"/304": b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\ncontent-length: 1234\r\n\r\n',
    b"/head": b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\n\r\n",
}


async def scripted(conn: ServerConn) -> None:
    while (request := await conn.read_request()) is not None:
        await conn.send(RAW_ANSWERS[request.target])


def config(upstream: StreamUpstream, raw_upstream: ThreadedRawServer) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "providers": {
            "hs": {"issuer": ISSUER, "secret": SECRET, "algorithms": ["HS256"], "audiences": [AUD]}
        },
        "headers": {"claims": {"X-User-Id": "sub"}, "strip_prefixes": ["X-User-"]},
        "routes": [
            {
                "name": "dav",
                "match": {"path": "/dav/**", "methods": ["PROPFIND", "MKCOL", "GET"]},
                "auth": "public",
            },
            {"name": "getonly", "match": {"path": "/getonly/**", "methods": ["GET"]}, "auth": "public"},
            {"name": "strip", "match": {"path": "/api/**"}, "auth": "public", "strip_prefix": "/api"},
            {"name": "add", "match": {"path": "/add/**"}, "auth": "public", "add_prefix": "/v2"},
            {
                "name": "both",
                "match": {"path": "/svc/**"},
                "auth": "public",
                "strip_prefix": "/svc",
                "add_prefix": "/internal",
            },
            {
                "name": "based",
                "match": {"path": "/based/**"},
                "auth": "public",
                "upstream": upstream.url + "/base",
            },
            {"name": "keephost", "match": {"path": "/keephost/**"}, "auth": "public", "preserve_host": True},
            {"name": "private", "match": {"path": "/private/**"}},
            {
                "name": "raw",
                "match": {"path": "/raw/**"},
                "auth": "public",
                "upstream": raw_upstream.url,
                "strip_prefix": "/raw",
            },
            {
                "name": "public",
                "match": {
                    "path": "/**",
                    "methods": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                },
                "auth": "public",
            },
        ],
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[StreamUpstream]:
    with StreamUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[ThreadedRawServer]:
    with ThreadedRawServer(scripted) as server:
        yield server


@pytest.fixture(scope="module")
def gw(upstream: StreamUpstream, raw_upstream: ThreadedRawServer) -> Iterator[GatewayServer]:
    with GatewayServer(config(upstream, raw_upstream)) as server:
        yield server


def raw(gw: GatewayServer, request: bytes, *, method: str = "GET") -> Any:
    with connect(gw.port) as sock:
        sock.sendall(request)
        return read_response(sock, method=method)


# ------------------------------------------------------------------------------------ methods


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_standard_methods_reach_the_upstream(
    method: str, gw: GatewayServer, upstream: StreamUpstream
) -> None:
    r = httpx.request(
        method, gw.url + "/anything/x", content=b"body" if method in ("POST", "PUT", "PATCH") else None
    )
    assert r.status_code == 200
    assert r.json()["method"] == method
    assert upstream.seen[-1].method == method


@pytest.mark.parametrize("method", ["PROPFIND", "MKCOL"])
def test_custom_methods_pass_when_the_route_allows_them(
    method: str, gw: GatewayServer, upstream: StreamUpstream
) -> None:
    r = httpx.request(method, gw.url + "/dav/folder", content=b"<propfind/>")
    assert r.status_code == 200
    assert r.json()["method"] == method
    assert r.json()["body_size"] == len(b"<propfind/>")


def test_a_method_the_route_does_not_list_is_not_forwarded(
    gw: GatewayServer, upstream: StreamUpstream
) -> None:
    before = len(upstream.seen)
    assert httpx.request("PROPFIND", gw.url + "/getonly/x").status_code == 404
    assert httpx.request("PROPFIND", gw.url + "/elsewhere").status_code == 404
    assert httpx.request("PROPFIND", gw.url + "/private/x").status_code == 401  # needs a token
    assert len(upstream.seen) == before


# ------------------------------------------------------------------------------- path, query


@pytest.mark.parametrize(
    "query",
    [
        b"a=1&a=2&b=",
        b"x=%2F%2e%2e%2Fadmin",
        b"q=a+b%20c",
        b";semi=colon",
        b"bad=%ZZ%",
        b"utf=%F0%9F%98%80",
        b"=x&&empty=&",
        b"with?question=mark?",
        b"UPPER=Case&lower=case",
        b"json={%22a%22:[1,2]}",
        b"slash=/a/../b//c",
    ],
)
def test_raw_query_reaches_the_upstream_byte_for_byte(
    query: bytes, gw: GatewayServer, upstream: StreamUpstream
) -> None:
    response = raw(gw, b"GET /public/q?" + query + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert response.status == 200, response.head
    assert upstream.seen[-1].query == query
    assert upstream.seen[-1].path == "/public/q"


def test_an_empty_query_marker_is_not_invented_or_dropped_wrongly(
    gw: GatewayServer, upstream: StreamUpstream
) -> None:
    response = raw(gw, b"GET /public/q HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert response.status == 200
    assert upstream.seen[-1].query == b""


@pytest.mark.parametrize(
    ("path", "forwarded"),
    [
        ("/api/orders/7", "/orders/7"),
        ("/api", "/"),
        ("/add/orders/7", "/v2/add/orders/7"),
        ("/svc/orders", "/internal/orders"),
        ("/svc", "/internal"),
        ("/based/x", "/base/based/x"),
    ],
)
def test_the_upstream_receives_the_matched_path_after_the_prefix_rewrite(
    path: str, forwarded: str, gw: GatewayServer, upstream: StreamUpstream
) -> None:
    r = httpx.get(gw.url + path + "?k=v")
    assert r.status_code == 200
    assert upstream.seen[-1].path == forwarded
    assert upstream.seen[-1].query == b"k=v"


# ------------------------------------------------------------------------------- responses


def test_several_set_cookie_headers_keep_their_order(gw: GatewayServer) -> None:
    response = raw(gw, b"GET /cookie?user=a HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert response.status == 200
    names = [n for n, _ in response.headers if n in (b"set-cookie", b"x-between")]
    assert names == [b"set-cookie", b"x-between", b"set-cookie", b"set-cookie"]
    assert response.header(b"set-cookie") == [
        b"session=a; Path=/; HttpOnly",
        b"theme=dark; Path=/",
        b"lang=en; Path=/",
    ]


def test_content_encoding_passes_through_never_decoded(gw: GatewayServer) -> None:
    response = raw(
        gw, b"GET /gzip HTTP/1.1\r\nHost: gw\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"
    )
    assert response.status == 200
    assert response.header(b"content-encoding") == [b"gzip"]
    assert response.header(b"content-length") == [b"%d" % len(GZIP_BODY)]
    assert response.body == GZIP_BODY  # the compressed bytes, as the upstream sent them
    assert len(GZIP_PLAIN) > len(GZIP_BODY)


def test_content_length_is_kept_and_chunked_stays_chunked(gw: GatewayServer) -> None:
    sized = raw(gw, b"GET /download?size=5000 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert sized.framing == "length" and sized.complete and len(sized.body) == 5000
    chunked = raw(
        gw, b"GET /download?size=300000&framing=chunked HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
    )
    assert chunked.framing == "chunked" and chunked.complete and len(chunked.body) == 300000


@pytest.mark.parametrize(
    ("request_line", "method", "status", "length"),
    [
        (b"HEAD /download?size=1000", "HEAD", 200, [b"1000"]),
        (b"HEAD /raw/head", "HEAD", 200, [b"1000"]),
        (b"GET /raw/204", "GET", 204, []),
        (b"GET /raw/304", "GET", 304, [b"1234"]),
        (b"HEAD /raw/304", "HEAD", 304, [b"1234"]),
    ],
    ids=["head", "raw_head", "204", "304_with_length", "head_304"],
)
def test_head_204_and_304_carry_no_body(
    request_line: bytes, method: str, status: int, length: list[bytes], gw: GatewayServer
) -> None:
    with connect(gw.port) as sock:
        sock.sendall(request_line + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
        first = read_response(sock, method=method)
        assert first.status == status
        assert first.header(b"content-length") == length  # kept where the upstream said it
        # No body bytes follow: the next answer on the same connection starts cleanly.
        sock.sendall(b"GET /public/next HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        second = read_response(sock)
        assert second.status == 200 and second.complete
        assert json.loads(second.body)["path"] == "/public/next"


# ------------------------------------------------------------------------------------- host


def test_host_is_the_upstreams_by_default(gw: GatewayServer, upstream: StreamUpstream) -> None:
    r = httpx.get(gw.url + "/public/h", headers={"Host": "client.example"})
    assert r.status_code == 200
    assert dict(upstream.seen[-1].headers)[b"host"] == f"127.0.0.1:{upstream.port}".encode()
    assert dict(upstream.seen[-1].headers)[b"x-forwarded-host"] == b"client.example"


def test_preserve_host_keeps_the_clients(gw: GatewayServer, upstream: StreamUpstream) -> None:
    r = httpx.get(gw.url + "/keephost/h", headers={"Host": "client.example"})
    assert r.status_code == 200
    hosts = [v for n, v in upstream.seen[-1].headers if n == b"host"]
    assert hosts == [b"client.example"]


def test_claim_headers_reach_the_upstream_of_a_protected_route(
    gw: GatewayServer, upstream: StreamUpstream
) -> None:
    r = httpx.get(
        gw.url + "/private/x", headers={"Authorization": f"Bearer {token()}", "X-User-Id": "mallory"}
    )
    assert r.status_code == 200
    assert [v for n, v in upstream.seen[-1].headers if n == b"x-user-id"] == [b"alice"]
    assert not any(n == b"authorization" for n, _ in upstream.seen[-1].headers)
