"""Limits, request smuggling and open-proxy attempts, over raw sockets (security-catalogue 6.3,
6.5, 6.6).

Smuggling oracle: every attack carries an inner ``GET /admin/SMUGGLED-<case>`` without a token;
it must never reach the upstream, and the gateway never forwards a request with both
Content-Length and Transfer-Encoding. A sentinel request with ``Connection: close`` follows
each attack on the same connection, so a connection the gateway keeps parsing ends quickly.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.proxy_servers import (
    StreamUpstream,
    ThreadedRawServer,
    connect,
    exchange,
    read_response,
)
from tests.support.servers import GatewayServer
from tests.support.upstream_servers import keep_alive, ok

SECRET = "a-test-hmac-secret-of-at-least-32-bytes!!"
ISSUER = "https://hs.test"
AUD = "api"
SENTINEL = b"GET /public/END HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"


def config(upstream_url: str, **proxy: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream_url,
        "proxy": proxy,
        "providers": {
            "hs": {"issuer": ISSUER, "secret": SECRET, "algorithms": ["HS256"], "audiences": [AUD]}
        },
        "routes": [
            {"name": "admin", "match": {"path": "/admin/**"}},
            {"name": "public", "match": {"path": "/**"}, "auth": "public"},
        ],
    }


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[ThreadedRawServer]:
    with ThreadedRawServer(keep_alive(ok(b"fine"))) as server:
        yield server


@pytest.fixture(scope="module")
def gw(raw_upstream: ThreadedRawServer) -> Iterator[GatewayServer]:
    with GatewayServer(
        config(raw_upstream.url, max_body_bytes=1024, head_timeout="1s", body_timeout="1s")
    ) as server:
        yield server


def smuggled(upstream: ThreadedRawServer) -> list[bytes]:
    return [r.target for r in upstream.raw.requests if b"SMUGGLED" in r.target or b"SMUGGLED" in r.raw_head]


INNER = b"GET /admin/SMUGGLED HTTP/1.1\r\nHost: gw\r\n\r\n"


def post(fields: bytes, body: bytes) -> bytes:
    """``POST /public/a`` with these raw header lines (each ending in CRLF), then ``body``."""
    return b"POST /public/a HTTP/1.1\r\nHost: gw\r\n" + fields + b"\r\n" + body


CHUNKED_END = b"0\r\n\r\n"
SMUGGLING = {
    "cl_te": post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", CHUNKED_END + INNER),
    "te_cl": post(
        b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", b"5c\r\n" + INNER + b"\r\n" + CHUNKED_END
    ),
    "te_xchunked": post(b"Transfer-Encoding: xchunked\r\n", CHUNKED_END + INNER),
    "te_space_before_colon": post(
        b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", CHUNKED_END + INNER
    ),
    "te_tab_value": post(b"Transfer-Encoding:\tchunked\r\nContent-Length: 5\r\n", CHUNKED_END + INNER),
    "te_chunked_identity": post(b"Transfer-Encoding: chunked, identity\r\n", CHUNKED_END + INNER),
    "te_identity_chunked": post(
        b"Transfer-Encoding: identity, chunked\r\nContent-Length: 5\r\n", CHUNKED_END + INNER
    ),
    "te_quoted": post(b'Transfer-Encoding: "chunked"\r\n', CHUNKED_END + INNER),
    "te_upper": post(b"Transfer-Encoding: CHUNKED\r\nContent-Length: 5\r\n", CHUNKED_END + INNER),
    "te_folded": post(b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n", CHUNKED_END + INNER),
    "te_duplicate": post(
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", CHUNKED_END + INNER
    ),
    "te_vertical_tab": post(b"Transfer-Encoding: \x0bchunked\r\n", CHUNKED_END + INNER),
    "cl_duplicate_conflicting": post(b"Content-Length: 0\r\nContent-Length: 44\r\n", INNER),
    "cl_list": post(b"Content-Length: 0, 44\r\n", INNER),
    "cl_plus": post(b"Content-Length: +44\r\n", INNER),
    "chunk_size_bare_lf": post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\r\n" + CHUNKED_END + INNER),
    "chunk_ext_bare_lf": post(
        b"Transfer-Encoding: chunked\r\n", b"5;a=b\nc\r\nhello\r\n" + CHUNKED_END + INNER
    ),
    "chunk_size_overflow": post(
        b"Transfer-Encoding: chunked\r\n", b"10000000000000002\r\nhello\r\n" + CHUNKED_END + INNER
    ),
    "get_with_body": b"GET /public/a HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(INNER) + INNER,
    "bare_lf_head": b"GET /public/a HTTP/1.1\nHost: gw\n\n" + INNER,
    "pipelined_after_valid": b"GET /public/a HTTP/1.1\r\nHost: gw\r\n\r\n" + INNER,
}


@pytest.mark.parametrize("case", list(SMUGGLING))
def test_smuggled_requests_never_reach_the_upstream(
    case: str, gw: GatewayServer, raw_upstream: ThreadedRawServer
) -> None:
    before = len(raw_upstream.raw.requests)
    responses = exchange(gw.port, SMUGGLING[case] + SENTINEL)
    assert responses, "no answer at all"
    assert all(r.status < 500 for r in responses), [r.head for r in responses]
    assert smuggled(raw_upstream) == []
    for request in raw_upstream.raw.requests[before:]:
        head = request.raw_head.lower()
        assert not (b"\r\ncontent-length:" in head and b"\r\ntransfer-encoding:" in head)


# ---------------------------------------------------------------------------------- open proxy


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET http://127.0.0.1:{port}/public/x HTTP/1.1",
        b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1",
        b"CONNECT 127.0.0.1:{port} HTTP/1.1",
        b"CONNECT example.com:443 HTTP/1.1",
        b"CONNECT /public/x HTTP/1.1",
    ],
    ids=[
        "absolute_form_upstream",
        "absolute_form_metadata",
        "connect_upstream",
        "connect_elsewhere",
        "connect_origin_form",
    ],
)
def test_absolute_form_and_connect_are_refused(
    request_line: bytes, gw: GatewayServer, raw_upstream: ThreadedRawServer
) -> None:
    before = len(raw_upstream.raw.requests)
    line = request_line.replace(b"{port}", b"%d" % raw_upstream.port)
    responses = exchange(gw.port, line + b"\r\nHost: gw\r\n\r\n")
    assert [r.status for r in responses] == [400]
    assert responses[0].header(b"content-type") == [b"application/problem+json"]
    assert len(raw_upstream.raw.requests) == before


@pytest.mark.parametrize("host", [b"169.254.169.254", b"internal.example:22", b"localhost:1", b"[::1]:80"])
def test_a_host_header_naming_elsewhere_never_changes_the_upstream(
    host: bytes, gw: GatewayServer, raw_upstream: ThreadedRawServer
) -> None:
    before = len(raw_upstream.raw.requests)
    (response,) = exchange(
        gw.port, b"GET /public/x HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    )
    assert response.status == 200
    (request,) = raw_upstream.raw.requests[before:]
    assert request.header(b"host") == [b"127.0.0.1:%d" % raw_upstream.port]


# --------------------------------------------------------------------------------------- body


def test_a_declared_oversized_body_is_refused_before_it_is_read(
    gw: GatewayServer, raw_upstream: ThreadedRawServer
) -> None:
    before = len(raw_upstream.raw.requests)
    started = time.monotonic()
    with connect(gw.port) as sock:
        sock.sendall(b"POST /public/up HTTP/1.1\r\nHost: gw\r\nContent-Length: 99999999999\r\n\r\n")
        response = read_response(sock, timeout=3)
    assert response.status == 413
    assert time.monotonic() - started < 2
    assert response.header(b"connection") == [b"close"]
    assert response.header(b"content-type") == [b"application/problem+json"]
    assert len(raw_upstream.raw.requests) == before


def test_a_chunked_body_is_counted_while_streaming(
    gw: GatewayServer, raw_upstream: ThreadedRawServer
) -> None:
    complete_before = [r for r in raw_upstream.raw.requests if r.body_size > 1024]
    with connect(gw.port) as sock:
        sock.sendall(b"POST /public/up HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"258\r\n" + b"x" * 600 + b"\r\n")
        time.sleep(0.05)
        sock.sendall(b"258\r\n" + b"x" * 600 + b"\r\n")  # 1200 bytes: over the 1024 limit
        response = read_response(sock, timeout=3)
    assert response.status == 413
    assert response.header(b"connection") == [b"close"]
    assert [r for r in raw_upstream.raw.requests if r.body_size > 1024] == complete_before


def test_a_body_under_the_limit_passes(gw: GatewayServer, raw_upstream: ThreadedRawServer) -> None:
    (response,) = exchange(
        gw.port,
        b"POST /public/up HTTP/1.1\r\nHost: gw\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n"
        + b"y" * 1024,
    )
    assert response.status == 200
    assert raw_upstream.raw.requests[-1].body_size == 1024


def test_a_content_length_shorter_than_the_body_cannot_smuggle_the_rest(
    gw: GatewayServer, raw_upstream: ThreadedRawServer
) -> None:
    before = len(raw_upstream.raw.requests)
    responses = exchange(
        gw.port, b"POST /public/up HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n\r\nabcd" + INNER + SENTINEL
    )
    assert responses[0].status == 200
    assert [r.status for r in responses[1:]] == [401, 200]  # the rest is a request of its own: decided
    forwarded = raw_upstream.raw.requests[before:]
    assert [(r.target, r.body) for r in forwarded] == [(b"/public/up", b"abcd"), (b"/public/END", b"")]


@pytest.mark.parametrize("sent", [b"", b"0123456789"], ids=["nothing", "a_part"])
def test_a_stalled_body_is_408_and_never_completes_upstream(
    gw: GatewayServer, raw_upstream: ThreadedRawServer, sent: bytes
) -> None:
    # body_timeout is 1 s here: a client announcing 100 bytes and sending fewer would otherwise
    # hold a gateway slot and an upstream connection for as long as it likes.
    started = time.monotonic()
    with connect(gw.port) as sock:
        sock.sendall(b"POST /public/stalled HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n" + sent)
        response = read_response(sock, timeout=5)
    elapsed = time.monotonic() - started
    assert response.status == 408
    assert 0.9 < elapsed < 3.5
    assert response.header(b"connection") == [b"close"]
    assert response.header(b"content-type") == [b"application/problem+json"]
    assert b'"reason":"body_timeout"' in response.body.replace(b" ", b"")
    assert not [r for r in raw_upstream.raw.requests if r.target == b"/public/stalled" and r.body_size == 100]


def test_a_slow_body_that_keeps_moving_passes(gw: GatewayServer, raw_upstream: ThreadedRawServer) -> None:
    # The limit is on each pause, not on the whole upload: 4 pieces 0.4 s apart take longer
    # than body_timeout in total.
    with connect(gw.port) as sock:
        sock.sendall(
            b"POST /public/trickle HTTP/1.1\r\nHost: gw\r\nContent-Length: 40\r\nConnection: close\r\n\r\n"
        )
        for _ in range(4):
            time.sleep(0.4)
            sock.sendall(b"z" * 10)
        response = read_response(sock, timeout=5)
    assert response.status == 200
    assert [r.body_size for r in raw_upstream.raw.requests if r.target == b"/public/trickle"] == [40]


# --------------------------------------------------------------------------------------- head


def test_an_oversized_head_is_431(gw: GatewayServer, raw_upstream: ThreadedRawServer) -> None:
    before = len(raw_upstream.raw.requests)
    big = b"GET /public/x HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    many = b"GET /public/x HTTP/1.1\r\nHost: gw\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(200)
    )
    long_url = b"GET /public/" + b"p" * 17000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n"
    for request in (big, many + b"\r\n", long_url, big[:-4]):  # the last one never ends
        (response,) = exchange(gw.port, request)
        assert response.status == 431, request[:60]
        assert response.header(b"connection") == [b"close"]
    assert len(raw_upstream.raw.requests) == before


def test_a_head_just_under_the_limit_passes(gw: GatewayServer) -> None:
    head = b"GET /public/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nX-Pad: " + b"p" * 15000 + b"\r\n\r\n"
    (response,) = exchange(gw.port, head)
    assert response.status == 200


def test_a_head_under_the_limit_passes_with_a_large_body_in_the_same_write(gw: GatewayServer) -> None:
    # The head limit is first checked against the raw bytes read: a body read together with
    # the head makes its fields be counted one by one, and a head under the limit passes.
    body = b"b" * 1000  # the body limit here is 1 KiB
    head = (
        b"POST /public/up HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: %d\r\nX-Pad: "
        % len(body)
        + b"p" * 15800
        + b"\r\n\r\n"
    )
    assert len(head) < 16 * 1024 < len(head + body)
    (response,) = exchange(gw.port, head + body)
    assert response.status == 200


@pytest.mark.parametrize(("trailer", "status"), [(100, 200), (7000, 431)])
def test_trailers_count_on_top_of_the_head(gw: GatewayServer, trailer: int, status: int) -> None:
    head = b"POST /public/up HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nX-Pad: " + b"p" * 10000
    request = head + b"\r\n\r\n2\r\nhi\r\n0\r\nX-T: " + b"t" * trailer + b"\r\n\r\nGET /public/x HTTP/1.1\r\n"
    responses = exchange(gw.port, request + b"Host: gw\r\nConnection: close\r\n\r\n")
    assert responses[0].status == status


def test_a_client_trickling_its_head_is_cut_off(gw: GatewayServer) -> None:
    # head_timeout is 1 s here: the head must be complete 1 s after its first byte.
    started = time.monotonic()
    with connect(gw.port) as sock:
        sock.sendall(b"GET /public/slow HTTP/1.1\r\nHost: gw\r\n")
        got = b""
        for i in range(40):
            try:
                sock.sendall(b"X-Line-%d: v\r\n" % i)
            except OSError:
                break
            sock.settimeout(0.1)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except ConnectionResetError:
                break
            got += data
            if not data or b"\r\n\r\n" in got:
                break
    elapsed = time.monotonic() - started
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert 0.9 < elapsed < 3.0


def test_stalled_connections_do_not_delay_a_normal_request(gw: GatewayServer) -> None:
    stalled: list[socket.socket] = []
    try:
        for _ in range(150):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            sock.sendall(b"GET /public/x HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
            stalled.append(sock)
        started = time.monotonic()
        r = httpx.get(gw.url + "/public/normal", timeout=10)
        assert r.status_code == 200
        assert time.monotonic() - started < 3
        # And the stalled ones are cut off by the head timeout (1 s, checked at least every 0.25 s).
        time.sleep(1.6)
        stalled[0].settimeout(2)
        assert stalled[0].recv(100).startswith(b"HTTP/1.1 408 ")
    finally:
        for sock in stalled:
            sock.close()


# -------------------------------------------------------------------------------- concurrency


def test_requests_beyond_the_concurrency_limit_get_503() -> None:
    with StreamUpstream() as upstream, GatewayServer(config(upstream.url, max_concurrency=2)) as gw:
        results: list[int] = []

        def hold(gate: str) -> None:
            with httpx.stream("GET", gw.url + f"/events?gate={gate}", timeout=10) as r:
                results.append(r.status_code)
                r.read()

        threads = [threading.Thread(target=hold, args=(f"g{i}",)) for i in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 5
        while gw.gateway.active < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = httpx.get(gw.url + "/public/third")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        assert r.headers["retry-after"] == "1"
        assert r.json()["reason"] == "over_capacity"
        upstream.signal("g0")
        upstream.signal("g1")
        for thread in threads:
            thread.join(10)
        assert results == [200, 200]
        assert httpx.get(gw.url + "/public/after").status_code == 200
