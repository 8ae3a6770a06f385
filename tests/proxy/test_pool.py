"""The upstream connection pool against real servers on 127.0.0.1 (and unix sockets, TLS).

Every scenario runs on both event loops the gateway may use (asyncio and uvloop): each test is
a plain function taking ``run``, which runs the scenario coroutine on a fresh loop of the
parametrised kind. Servers are raw asyncio servers that send exactly the bytes a test scripts
(:mod:`tests.support.upstream_servers`); requests are parsed there by h11, an independent strict
parser.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest
import trustme
import uvloop

from gateway.errors import GatewayError, RequestError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.proxy import http1
from gateway.proxy.pool import Origin, PoolLimits, UpstreamPool, UpstreamResponse, build_ssl_context
from tests.support.upstream_servers import (
    RawServer,
    ServerConn,
    closed_port,
    full_backlog,
    keep_alive,
    ok,
)

Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Run a scenario on a fresh event loop of the parametrised kind."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            return loop_runner.run(asyncio.wait_for(coro, 30))

    return runner


def make_pool(**limits: Any) -> UpstreamPool:
    return UpstreamPool(PoolLimits(**limits))


def host(origin: Origin) -> list[tuple[bytes, bytes]]:
    return [(b"host", origin.host_header)]


async def fetch(
    pool: UpstreamPool,
    origin: Origin,
    target: bytes = b"/",
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    **kwargs: Any,
) -> tuple[UpstreamResponse, bytes]:
    """One request, body read to the end, response closed."""
    response = await pool.request(origin, method, target, headers or host(origin), **kwargs)
    try:
        body = b"".join([chunk async for chunk in response.aiter_body()])
    finally:
        await response.aclose()
    return response, body


async def produce(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``predicate`` (pool and server state have no events to wait on) until it holds."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling, see docstring
            await asyncio.sleep(0.005)


def stats(pool: UpstreamPool, origin: Origin) -> dict[str, int]:
    return pool.stats().get(str(origin), {"open": 0, "idle": 0, "in_use": 0, "waiting": 0})


# ----------------------------------------------------------------------------- keep-alive, reuse


def test_keep_alive_connection_is_reused(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok(b"hello"))) as server:
            pool = make_pool()
            origin = server.origin()
            for _ in range(3):
                response, body = await fetch(pool, origin, b"/a?b=1")
                assert (response.status, body) == (200, b"hello")
            assert server.accepted == 1
            assert stats(pool, origin) == {"open": 1, "idle": 1, "in_use": 0, "waiting": 0}
            assert [r.target for r in server.requests] == [b"/a?b=1"] * 3
            await pool.aclose()

    run(scenario())


def test_connection_close_is_honoured(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok(b"x", b"Connection: close"))) as server:
            pool = make_pool()
            origin = server.origin()
            await fetch(pool, origin)
            assert stats(pool, origin)["open"] == 0
            await fetch(pool, origin)
            assert server.accepted == 2
            await pool.aclose()

    run(scenario())


@pytest.mark.parametrize(
    ("status_line", "extra", "reused"),
    [
        (b"HTTP/1.0 200 OK", b"", False),
        (b"HTTP/1.0 200 OK", b"Connection: keep-alive", True),
        (b"HTTP/1.1 200 OK", b"Connection: foo, Close", False),
        (b"HTTP/1.1 200 OK", b"Connection: keep-alive", True),
    ],
)
def test_http10_and_connection_tokens_decide_reuse(
    run: Run, status_line: bytes, extra: bytes, reused: bool
) -> None:
    response = status_line + b"\r\n" + (extra + b"\r\n" if extra else b"") + b"Content-Length: 2\r\n\r\nok"

    async def scenario() -> None:
        async with RawServer(keep_alive(response)) as server:
            pool = make_pool()
            origin = server.origin()
            for _ in range(2):
                _, body = await fetch(pool, origin)
                assert body == b"ok"
            assert server.accepted == (1 if reused else 2)
            await pool.aclose()

    run(scenario())


def test_body_not_fully_read_closes_the_connection(run: Run) -> None:
    big = os.urandom(2 * 1024 * 1024)

    async def scenario() -> None:
        async with RawServer(keep_alive(ok(big))) as server:
            pool = make_pool()
            origin = server.origin()
            response = await pool.request(origin, "GET", b"/big", host(origin))
            first = await response.read_chunk()
            assert first and not response.at_eof
            await response.aclose()
            assert stats(pool, origin) == {"open": 0, "idle": 0, "in_use": 0, "waiting": 0}
            _, body = await fetch(pool, origin)
            assert body == big
            assert server.accepted == 2
            await pool.aclose()

    run(scenario())


def test_dead_idle_connection_is_replaced_transparently(run: Run) -> None:
    async def one_answer_then_close(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(ok(b"first"))  # keep-alive by default, but the server closes anyway
        await conn.close()

    async def scenario() -> None:
        async with RawServer(one_answer_then_close) as server:
            pool = make_pool()
            origin = server.origin()
            await fetch(pool, origin)
            await eventually(lambda: stats(pool, origin)["open"] == 0)
            response, body = await fetch(pool, origin, method="POST", content_length=0)
            assert (response.status, body) == (200, b"first")
            assert server.accepted == 2
            assert len(server.requests) == 2
            await pool.aclose()

    run(scenario())


def test_idle_connections_expire(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok())) as server:
            pool = make_pool(idle_timeout=0.1)
            origin = server.origin()
            await fetch(pool, origin)
            assert stats(pool, origin)["idle"] == 1
            await eventually(lambda: stats(pool, origin)["open"] == 0)
            assert await server.connections[0].client_closed()
            await fetch(pool, origin)
            assert server.accepted == 2
            await pool.aclose()

    run(scenario())


def test_max_idle_bounds_the_idle_list(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok())) as server:
            pool = make_pool(max_idle=1)
            origin = server.origin()
            responses = [await pool.request(origin, "GET", b"/", host(origin)) for _ in range(3)]
            for response in responses:
                await response.aclose()
            assert stats(pool, origin) == {"open": 1, "idle": 1, "in_use": 0, "waiting": 0}
            await pool.aclose()

    run(scenario())


def test_stray_bytes_after_a_response_prevent_reuse(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok(b"a") + ok(b"smuggled"))) as server:
            pool = make_pool()
            origin = server.origin()
            _, body = await fetch(pool, origin)
            assert body == b"a"
            _, body = await fetch(pool, origin)
            assert body == b"a"
            assert server.accepted == 2
            await pool.aclose()

    run(scenario())


def test_bytes_arriving_on_an_idle_connection_discard_it(run: Run) -> None:
    async def answer_then_chatter(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(ok(b"a"))
        await asyncio.sleep(0.05)
        await conn.send(ok(b"unsolicited"))
        await conn.at_eof()

    async def scenario() -> None:
        async with RawServer(answer_then_chatter) as server:
            pool = make_pool()
            origin = server.origin()
            await fetch(pool, origin)
            await eventually(lambda: stats(pool, origin)["open"] == 0)
            _, body = await fetch(pool, origin)
            assert body == b"a"
            assert server.accepted == 2
            await pool.aclose()

    run(scenario())


# ------------------------------------------------------------------------------ response framing


def test_chunked_response_is_dechunked_and_trailers_dropped(run: Run) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-checksum: abc\r\nx-user-id: admin\r\n\r\n"
    )

    async def scenario() -> None:
        async with RawServer(keep_alive(raw)) as server:
            pool = make_pool()
            origin = server.origin()
            for _ in range(2):
                response, body = await fetch(pool, origin)
                assert body == b"hello world"
                assert response.content_length is None
                assert response.headers == [(b"transfer-encoding", b"chunked"), (b"trailer", b"x-checksum")]
            assert server.accepted == 1
            await pool.aclose()

    run(scenario())


def test_content_length_response(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok(b"0123456789"))) as server:
            pool = make_pool()
            origin = server.origin()
            response, body = await fetch(pool, origin)
            assert (response.content_length, body, response.has_body()) == (10, b"0123456789", True)
            await pool.aclose()

    run(scenario())


def test_body_arriving_in_pieces_streams_as_it_arrives(run: Run) -> None:
    """Server-sent events: the consumer holds event 1 before the upstream produces event 2."""

    async def scenario() -> None:
        consumer_has_first = asyncio.Event()

        async def events(conn: ServerConn) -> None:
            await conn.read_request()
            await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await conn.send(b"9\r\ndata: 1\n\n\r\n")
            await consumer_has_first.wait()
            await conn.send(b"9\r\ndata: 2\n\n\r\n0\r\n\r\n")
            await conn.at_eof()

        async with RawServer(events) as server:
            pool = make_pool()
            origin = server.origin()
            response = await pool.request(origin, "GET", b"/events", host(origin))
            assert await response.read_chunk() == b"data: 1\n\n"
            eof_after_first = response.at_eof
            consumer_has_first.set()
            assert await response.read_chunk() == b"data: 2\n\n"
            assert await response.read_chunk() == b""
            eof_at_end = response.at_eof
            assert (eof_after_first, eof_at_end) == (False, True)
            await response.aclose()
            assert stats(pool, origin)["idle"] == 1
            await pool.aclose()

    run(scenario())


def test_read_until_close_body(run: Run) -> None:
    async def until_close(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello ")
        await asyncio.sleep(0.02)
        await conn.send(b"until close")
        await conn.close()

    async def scenario() -> None:
        async with RawServer(until_close) as server:
            pool = make_pool()
            origin = server.origin()
            response, body = await fetch(pool, origin)
            assert (response.status, body, response.content_length) == (200, b"hello until close", None)
            assert stats(pool, origin)["open"] == 0
            await pool.aclose()

    run(scenario())


@pytest.mark.parametrize(
    ("method", "raw", "reused"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True),
        ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", True),
        # Neither length nor chunked: llhttp would read until close, so keep-alive is not
        # trusted even though a HEAD answer has no body (conservative: a new connection).
        ("HEAD", b"HTTP/1.1 200 OK\r\n\r\n", False),
        ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", True),
        ("GET", b'HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\nETag: "x"\r\n\r\n', True),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", True),
    ],
)
def test_responses_without_body_and_reuse_after_them(run: Run, method: str, raw: bytes, reused: bool) -> None:
    async def first_then_ok(conn: ServerConn) -> None:
        if conn.server.accepted == 1:
            await conn.read_request()
            await conn.send(raw)
        while await conn.read_request() is not None:
            await conn.send(ok(b"next"))

    async def scenario() -> None:
        async with RawServer(first_then_ok) as server:
            pool = make_pool()
            origin = server.origin()
            response, body = await fetch(pool, origin, method=method)
            assert not response.has_body()
            assert body == b""
            if b"Content-Length: 5" in raw:
                assert response.content_length == 5
            response, body = await fetch(pool, origin)
            assert body == b"next"
            assert server.accepted == (1 if reused else 2)
            await pool.aclose()

    run(scenario())


def test_head_response_followed_by_a_body_is_not_reused(run: Run) -> None:
    async def scenario() -> None:
        head_with_body = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        async with RawServer(keep_alive(head_with_body)) as server:
            pool = make_pool()
            origin = server.origin()
            response, body = await fetch(pool, origin, method="HEAD")
            assert (response.status, body) == (200, b"")
            await fetch(pool, origin, method="HEAD")
            assert server.accepted == 2
            await pool.aclose()

    run(scenario())


def test_interim_responses_are_skipped(run: Run) -> None:
    raw = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    )

    async def scenario() -> None:
        async with RawServer(keep_alive(raw)) as server:
            pool = make_pool()
            origin = server.origin()
            response, body = await fetch(pool, origin, method="POST", body=produce(b"x"), content_length=1)
            assert (response.status, response.headers, body) == (201, [(b"content-length", b"2")], b"ok")
            await fetch(pool, origin)
            assert server.accepted == 1
            await pool.aclose()

    run(scenario())


def test_set_cookie_order_kept_and_no_cookie_jar(run: Run) -> None:
    raw = ok(
        b"user",
        b"Set-Cookie: session=alice; HttpOnly",
        b"X-Mid: 1",
        b"set-cookie: theme=dark",
        b"SET-COOKIE: lang=en",
    )

    async def scenario() -> None:
        async with RawServer(keep_alive(raw)) as server:
            pool = make_pool()
            origin = server.origin()
            response, _ = await fetch(pool, origin, b"/login")
            assert [(n, v) for n, v in response.headers if n != b"content-length"] == [
                (b"set-cookie", b"session=alice; HttpOnly"),
                (b"x-mid", b"1"),
                (b"set-cookie", b"theme=dark"),
                (b"set-cookie", b"lang=en"),
            ]
            # Another user's request through the same pool and connection carries no cookie.
            await fetch(pool, origin, b"/other-user")
            assert server.accepted == 1
            assert server.requests[1].header(b"cookie") == []
            assert server.requests[1].headers == [(b"host", origin.host_header)]
            await pool.aclose()

    run(scenario())


def test_content_encoding_is_not_decoded(run: Run) -> None:
    compressed = gzip.compress(b"plain text " * 100)

    async def scenario() -> None:
        raw = ok(compressed, b"Content-Encoding: gzip", b"Vary: Accept-Encoding")
        async with RawServer(keep_alive(raw)) as server:
            pool = make_pool()
            origin = server.origin()
            response, body = await fetch(pool, origin, headers=[*host(origin), (b"accept-encoding", b"gzip")])
            assert body == compressed
            assert (b"content-encoding", b"gzip") in response.headers
            assert response.content_length == len(compressed)
            await pool.aclose()

    run(scenario())


def test_header_names_lower_cased_values_as_received(run: Run) -> None:
    raw = ok(b"", b"X-Weird:   spaced  value", b"X-Obs: caf\xc3\xa9 \xff")

    async def scenario() -> None:
        async with RawServer(keep_alive(raw)) as server:
            pool = make_pool()
            origin = server.origin()
            response, _ = await fetch(pool, origin)
            assert response.headers[:2] == [(b"x-weird", b"spaced  value"), (b"x-obs", b"caf\xc3\xa9 \xff")]
            await pool.aclose()

    run(scenario())


# ------------------------------------------------------------------------------- bad framing

H200 = b"HTTP/1.1 200 OK\r\n"
BAD_FRAMING = {
    "cl_and_te": H200 + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te_and_cl": H200 + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "two_different_cl": H200 + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "two_equal_cl": H200 + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "cl_plus_sign": H200 + b"Content-Length: +3\r\n\r\nabc",
    "cl_list": H200 + b"Content-Length: 3, 3\r\n\r\nabc",
    "cl_negative": H200 + b"Content-Length: -1\r\n\r\nabc",
    "cl_hex": H200 + b"Content-Length: 0x3\r\n\r\nabc",
    "cl_inner_space": H200 + b"Content-Length: 1 2\r\n\r\nabc",
    "cl_empty": H200 + b"Content-Length: \r\n\r\nabc",
    "cl_overflow": H200 + b"Content-Length: 99999999999999999999999\r\n\r\nabc",
    "te_chunked_identity": H200 + b"Transfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te_identity_chunked": H200 + b"Transfer-Encoding: identity, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te_gzip_chunked": H200 + b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te_xchunked": H200 + b"Transfer-Encoding: xchunked\r\n\r\nabc",
    "te_quoted": H200 + b'Transfer-Encoding: "chunked"\r\n\r\nabc',
    "te_identity": H200 + b"Transfer-Encoding: identity\r\n\r\nabc",
    "te_duplicate": H200
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te_vertical_tab": H200 + b"Transfer-Encoding: \x0bchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te_space_before_colon": H200 + b"Transfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te_obs_fold": H200 + b"Transfer-Encoding: gzip\r\n ,chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "obs_fold_other_header": H200 + b"X-A: one\r\n two\r\nContent-Length: 0\r\n\r\n",
    "content_length_in_trailers": H200
    + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\ncontent-length: 3\r\n\r\n",
    "chunk_size_overflow": H200 + b"Transfer-Encoding: chunked\r\n\r\n10000000000000002\r\nabc\r\n0\r\n\r\n",
    "chunk_bare_lf_after_size": H200 + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
    "chunk_bare_lf_after_data": H200 + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n",
    "chunk_ext_bare_lf": H200 + b"Transfer-Encoding: chunked\r\n\r\n3;a=b\nabc\r\n0\r\n\r\n",
    "chunk_negative": H200 + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
    "chunk_0x_prefix": H200 + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    "chunk_size_trailing_space": H200 + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    "chunk_data_longer_than_size": H200 + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
    "bare_lf_head": b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc",
    "bare_cr_head": b"HTTP/1.1 200 OK\rContent-Length: 3\r\r\nabc",
    "nul_in_value": H200 + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "ctl_in_value": H200 + b"X-A: a\x01b\r\nContent-Length: 0\r\n\r\n",
    "cr_in_value": H200 + b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "empty_header_name": H200 + b": x\r\nContent-Length: 0\r\n\r\n",
    "space_in_header_name": H200 + b"X A: x\r\nContent-Length: 0\r\n\r\n",
    "http_2_0": b"HTTP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    "http_0_9": b"HTTP/0.9 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    "http_1_2": b"HTTP/1.2 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    "not_http": b"SSH-2.0-OpenSSH_9.6\r\n",
    "status_600": b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
    "status_099": b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n",
    "status_two_digits": b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    "unasked_101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    "oversized_head": H200 + b"X-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",
    "oversized_head_many_fields": H200
    + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 600) for i in range(120))
    + b"\r\n",
    "too_many_headers": H200
    + b"".join(b"X-H%d: v\r\n" % i for i in range(129))
    + b"Content-Length: 0\r\n\r\n",
    "endless_interim_responses": b"HTTP/1.1 100 Continue\r\n\r\n" * 3000,
    "oversized_trailers": H200
    + b"Transfer-Encoding: chunked\r\n\r\n0\r\n"
    + b"".join(b"X-T%d: %s\r\n" % (i, b"t" * 1000) for i in range(70))
    + b"\r\n",
}


@pytest.mark.parametrize("raw", list(BAD_FRAMING.values()), ids=list(BAD_FRAMING))
def test_bad_upstream_framing_is_refused(run: Run, raw: bytes) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(raw)) as server:
            pool = make_pool()
            origin = server.origin()
            with pytest.raises(UpstreamError) as caught:
                await fetch(pool, origin)
            assert caught.value.reason == "upstream_protocol_error"
            assert caught.value.status == 502
            assert stats(pool, origin)["open"] == 0
            await pool.aclose()

    run(scenario())


def _padded_head(fields: int, extra: bytes = b"") -> bytes:
    return H200 + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 90) for i in range(fields)) + extra


def test_a_head_within_the_limit_passes_whatever_follows_it_in_the_same_read(run: Run) -> None:
    # The head limit is first checked against the raw bytes received: a body arriving in the
    # same read makes the fields be counted one by one, and a head within the limit passes.
    head = _padded_head(8, b"Content-Length: 5000\r\n\r\n")
    assert len(head) < 1024

    async def scenario() -> None:
        async with RawServer(keep_alive(head + b"b" * 5000)) as server:
            pool = make_pool(max_response_head=1024)
            response, body = await fetch(pool, server.origin())
            assert (response.status, body) == (200, b"b" * 5000)
            await pool.aclose()

    run(scenario())


@pytest.mark.parametrize(("trailer_bytes", "refused"), [(100, False), (400, True)])
def test_trailers_count_on_top_of_the_head(run: Run, trailer_bytes: int, refused: bool) -> None:
    head = _padded_head(7, b"Transfer-Encoding: chunked\r\n\r\n")  # ~750 bytes of fields
    raw = head + b"2\r\nhi\r\n0\r\nX-T: " + b"t" * trailer_bytes + b"\r\n\r\n"

    async def scenario() -> None:
        async with RawServer(keep_alive(raw)) as server:
            pool = make_pool(max_response_head=1024)
            if refused:
                with pytest.raises(UpstreamError) as caught:
                    await fetch(pool, server.origin())
                assert caught.value.reason == "upstream_protocol_error"
            else:
                response, body = await fetch(pool, server.origin())
                assert (response.status, body) == (200, b"hi")
            await pool.aclose()

    run(scenario())


@pytest.mark.parametrize("piece", [50, 4096])
def test_oversized_head_arriving_slowly_is_refused(run: Run, piece: int) -> None:
    async def endless_head(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(H200)
        with_padding = b"X-Pad: " + b"p" * 200 + b"\r\n"
        try:
            while True:
                data = with_padding * (piece // len(with_padding) + 1)
                await conn.send(data[:piece] if piece < len(data) else data)
        except ConnectionError:
            pass

    async def scenario() -> None:
        async with RawServer(endless_head) as server:
            pool = make_pool(max_response_head=1024)
            origin = server.origin()
            with pytest.raises(UpstreamError) as caught:
                await fetch(pool, origin)
            assert caught.value.reason == "upstream_protocol_error"
            await pool.aclose()

    run(scenario())


def test_framing_error_after_the_head_raises_while_reading(run: Run) -> None:
    async def late_garbage(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(H200 + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(0.05)
        await conn.send(b"zz\r\n")
        await conn.at_eof()

    async def scenario() -> None:
        async with RawServer(late_garbage) as server:
            pool = make_pool()
            origin = server.origin()
            response = await pool.request(origin, "GET", b"/", host(origin))
            assert await response.read_chunk() == b"hello"
            with pytest.raises(UpstreamError) as caught:
                await response.read_chunk()
            assert caught.value.reason == "upstream_protocol_error"
            await response.aclose()
            assert stats(pool, origin)["open"] == 0
            await pool.aclose()

    run(scenario())


# ------------------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    "framing", [b"Content-Length: 100\r\n\r\n", b"Transfer-Encoding: chunked\r\n\r\na\r\n"]
)
@pytest.mark.parametrize("reset", [False, True])
def test_upstream_dying_mid_body_raises(run: Run, framing: bytes, reset: bool) -> None:
    async def die(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(H200 + framing + b"0123456789")
        await asyncio.sleep(0.05)
        if reset:
            conn.abort()
        else:
            await conn.close()

    async def scenario() -> None:
        async with RawServer(die) as server:
            pool = make_pool()
            origin = server.origin()
            response = await pool.request(origin, "GET", b"/", host(origin))
            received = b""
            with pytest.raises(UpstreamUnavailable) as caught:
                async for chunk in response.aiter_body():
                    received += chunk
            assert caught.value.reason == "upstream_aborted"
            assert received == b"0123456789"
            await response.aclose()
            assert stats(pool, origin)["open"] == 0
            await pool.aclose()

    run(scenario())


@pytest.mark.parametrize("sent", [b"", b"HTTP/1.1 200 OK\r\nContent-Le"])
def test_upstream_closing_before_the_head_is_unavailable(run: Run, sent: bytes) -> None:
    async def close_early(conn: ServerConn) -> None:
        await conn.read_request()
        if sent:
            await conn.send(sent)
        await conn.close()

    async def scenario() -> None:
        async with RawServer(close_early) as server:
            pool = make_pool()
            origin = server.origin()
            with pytest.raises(UpstreamUnavailable) as caught:
                await fetch(pool, origin)
            assert caught.value.reason == "upstream_unavailable"
            assert stats(pool, origin)["open"] == 0
            await pool.aclose()

    run(scenario())


@pytest.mark.parametrize(
    "greeting", [b"", b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 408 Request Timeout\r\n\r\n"]
)
def test_upstream_talking_or_closing_before_the_request_is_unavailable(run: Run, greeting: bytes) -> None:
    async def rude(conn: ServerConn) -> None:
        if greeting:
            await conn.send(greeting)
        await conn.close()

    async def scenario() -> None:
        async with RawServer(rude) as server:
            pool = make_pool(read_timeout=10)
            origin = server.origin()
            with pytest.raises(UpstreamError) as caught:  # never a wait for the read timeout
                async with asyncio.timeout(5):
                    await fetch(pool, origin)
            # Unavailable when the close is seen first, a protocol error when the greeting is.
            assert caught.value.status == 502
            assert stats(pool, origin)["open"] == 0
            await pool.aclose()

    run(scenario())


def test_connect_refused_is_unavailable(run: Run) -> None:
    async def scenario() -> None:
        pool = make_pool()
        origin = Origin("http", "127.0.0.1", closed_port())
        with pytest.raises(UpstreamUnavailable) as caught:
            await fetch(pool, origin)
        assert (caught.value.status, caught.value.reason) == (502, "upstream_unavailable")
        assert stats(pool, origin)["open"] == 0
        await pool.aclose()

    run(scenario())


def test_unknown_host_is_unavailable(run: Run) -> None:
    async def scenario() -> None:
        pool = make_pool(connect_timeout=5)
        with pytest.raises(UpstreamUnavailable):
            await fetch(pool, Origin.parse("http://no-such-host.invalid"))
        await pool.aclose()

    run(scenario())


def test_missing_unix_socket_is_unavailable(run: Run) -> None:
    async def scenario() -> None:
        pool = make_pool()
        with pytest.raises(UpstreamUnavailable):
            await fetch(pool, Origin.parse("unix:/nonexistent/gateway-test.sock"))
        await pool.aclose()

    run(scenario())


def test_connect_timeout(run: Run) -> None:
    async def scenario() -> None:
        with full_backlog() as port:
            pool = make_pool(connect_timeout=0.3)
            origin = Origin("http", "127.0.0.1", port)
            with pytest.raises(UpstreamTimeout) as caught:
                await fetch(pool, origin)
            assert (caught.value.status, caught.value.reason) == (504, "upstream_connect_timeout")
            assert stats(pool, origin)["open"] == 0
            await pool.aclose()

    run(scenario())


def test_read_timeout_waiting_for_the_head(run: Run) -> None:
    async def silent(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.at_eof(within=10)

    async def scenario() -> None:
        async with RawServer(silent) as server:
            pool = make_pool(read_timeout=0.2)
            origin = server.origin()
            with pytest.raises(UpstreamTimeout) as caught:
                await fetch(pool, origin)
            assert (caught.value.status, caught.value.reason) == (504, "upstream_read_timeout")
            assert await server.connections[0].client_closed()
            assert stats(pool, origin)["open"] == 0
            await pool.aclose()

    run(scenario())


def test_read_timeout_in_the_middle_of_the_body(run: Run) -> None:
    async def stall(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(H200 + b"Content-Length: 10\r\n\r\n01234")
        await conn.at_eof(within=10)

    async def scenario() -> None:
        async with RawServer(stall) as server:
            pool = make_pool(read_timeout=0.2)
            origin = server.origin()
            response = await pool.request(origin, "GET", b"/", host(origin))
            assert await response.read_chunk() == b"01234"
            with pytest.raises(UpstreamTimeout) as caught:
                await response.read_chunk()
            assert caught.value.reason == "upstream_read_timeout"
            await response.aclose()
            assert stats(pool, origin)["open"] == 0
            await pool.aclose()

    run(scenario())


def test_read_timeout_is_between_bytes_not_total(run: Run) -> None:
    async def slow_but_steady(conn: ServerConn) -> None:
        while await conn.read_request() is not None:
            await conn.send(H200 + b"Content-Length: 6\r\n\r\n")
            for i in range(6):
                await asyncio.sleep(0.1)
                await conn.send(b"%d" % i)

    async def scenario() -> None:
        async with RawServer(slow_but_steady) as server:
            pool = make_pool(read_timeout=0.5)
            origin = server.origin()
            for _ in range(2):  # the second exchange re-arms the connection's lazy timer
                _, body = await fetch(pool, origin)  # 0.6 s in all, never 0.5 s without a byte
                assert body == b"012345"
            assert server.accepted == 1
            await pool.aclose()

    run(scenario())


def test_retry_connect_tries_once_more(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit-level: the first connect fails, the retry (allowed by the caller) succeeds."""

    async def scenario() -> None:
        async with RawServer(keep_alive(ok())) as server:
            pool = make_pool()
            origin = server.origin()
            real_open = pool._open
            attempts: list[int] = []

            async def flaky_open(*args: Any) -> http1.UpstreamConnection:
                attempts.append(1)
                if len(attempts) % 2:
                    raise ConnectionResetError("reset during connect")
                return await real_open(*args)

            monkeypatch.setattr(pool, "_open", flaky_open)
            with pytest.raises(UpstreamUnavailable):
                await fetch(pool, origin)
            assert len(attempts) == 1 and server.accepted == 0
            attempts.clear()
            _, body = await fetch(pool, origin, retry_connect=True)
            assert body == b"ok" and len(attempts) == 2
            await pool.aclose()

    run(scenario())


def test_tls_errors_are_not_retried(run: Run) -> None:
    async def scenario() -> None:
        ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_context)
        async with RawServer(keep_alive(ok()), ssl_context=server_context) as server:
            pool = UpstreamPool(PoolLimits(), ssl_context=build_ssl_context())
            with pytest.raises(UpstreamUnavailable) as caught:
                await fetch(pool, server.origin(), retry_connect=True)
            assert caught.value.reason == "upstream_tls_error"
            await pool.aclose()

    run(scenario())


# ------------------------------------------------------------------------------ request bodies


def test_chunked_request_body_arrives_exactly(run: Run) -> None:
    pieces = [os.urandom(n) for n in (1, 0, 17, 70_000, 0, 3, 1 << 20)]
    expected = b"".join(pieces)

    async def scenario() -> None:
        async with RawServer(keep_alive(ok())) as server:
            pool = make_pool()
            origin = server.origin()
            await fetch(pool, origin, b"/upload", method="POST", body=produce(*pieces))
            request = server.requests[0]
            assert request.header(b"transfer-encoding") == [b"chunked"]
            assert request.header(b"content-length") == []
            assert request.body_sha256 == hashlib.sha256(expected).hexdigest()
            assert request.body_size == len(expected)
            await fetch(pool, origin)
            assert server.accepted == 1
            await pool.aclose()

    run(scenario())


def test_content_length_request_body_arrives_exactly(run: Run) -> None:
    pieces = [os.urandom(n) for n in (10, 0, 100_000, 5)]
    expected = b"".join(pieces)

    async def scenario() -> None:
        async with RawServer(keep_alive(ok())) as server:
            pool = make_pool()
            origin = server.origin()
            await fetch(pool, origin, method="PUT", body=produce(*pieces), content_length=len(expected))
            request = server.requests[0]
            assert request.header(b"content-length") == [b"%d" % len(expected)]
            assert request.header(b"transfer-encoding") == []
            assert request.body == expected
            await pool.aclose()

    run(scenario())


def test_empty_chunked_body_and_zero_length_framing(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok())) as server:
            pool = make_pool()
            origin = server.origin()
            await fetch(pool, origin, method="POST", body=produce(b"", b""))
            await fetch(pool, origin, method="POST", content_length=0)
            await fetch(pool, origin, method="GET")
            chunked, zero, bodiless = server.requests
            assert chunked.header(b"transfer-encoding") == [b"chunked"] and chunked.body == b""
            assert zero.header(b"content-length") == [b"0"] and zero.header(b"transfer-encoding") == []
            assert bodiless.raw_head == b"GET / HTTP/1.1\r\nhost: " + origin.host_header + b"\r\n\r\n"
            assert server.accepted == 1
            await pool.aclose()

    run(scenario())


@pytest.mark.parametrize(
    ("pieces", "declared", "reason"),
    [
        ((b"abc", b"def"), 4, "body_exceeds_content_length"),
        ((b"abcdef",), 4, "body_exceeds_content_length"),
        ((b"ab",), 4, "body_shorter_than_content_length"),
        ((b"ab", b"c"), 4, "body_shorter_than_content_length"),
        ((), 4, "body_shorter_than_content_length"),
    ],
)
def test_content_length_mismatch_aborts(
    run: Run, pieces: tuple[bytes, ...], declared: int, reason: str
) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok())) as server:
            pool = make_pool()
            origin = server.origin()
            with pytest.raises(RequestError) as caught:
                await fetch(pool, origin, method="POST", body=produce(*pieces), content_length=declared)
            assert caught.value.reason == reason
            assert stats(pool, origin)["open"] == 0
            assert server.requests == []  # the upstream never saw a complete request
            for conn in server.connections:
                assert await conn.client_closed()
            await pool.aclose()

    run(scenario())


def test_failing_body_iterator_aborts_and_propagates(run: Run) -> None:
    class ClientGone(GatewayError):
        """Stands for whatever the caller's body raises (a limit, a disconnect)."""

    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await asyncio.sleep(0.01)
        raise ClientGone("client went away")

    class FailingAtOnce:
        """A body that fails before its first chunk."""

        def __aiter__(self) -> FailingAtOnce:
            return self

        async def __anext__(self) -> bytes:
            raise ClientGone("limit")

    async def scenario() -> None:
        async with RawServer(keep_alive(ok())) as server:
            pool = make_pool()
            origin = server.origin()
            with pytest.raises(ClientGone):
                await fetch(pool, origin, method="POST", body=FailingAtOnce())
            assert server.accepted == 0  # nothing was connected for a body that failed first
            with pytest.raises(ClientGone):
                await fetch(pool, origin, method="POST", body=failing())
            assert stats(pool, origin)["open"] == 0
            assert await server.connections[0].client_closed()
            assert server.requests == []
            await pool.aclose()

    run(scenario())


def test_upload_respects_write_flow_control(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    total = 16 * 1024 * 1024
    piece = os.urandom(64 * 1024)

    async def slow_reader(conn: ServerConn) -> None:
        await asyncio.sleep(0.3)  # let the client hit the socket buffers first
        await conn.read_request(keep_body=False)
        await conn.send(ok(b"stored"))
        await conn.at_eof()

    async def scenario() -> None:
        async with RawServer(slow_reader) as server:
            pool = make_pool()
            origin = server.origin()
            connections: list[http1.UpstreamConnection] = []
            real_connect = pool._connect

            async def recording_connect(*args: Any) -> http1.UpstreamConnection:
                conn = await real_connect(*args)
                connections.append(conn)
                return conn

            monkeypatch.setattr(pool, "_connect", recording_connect)
            buffered: list[int] = []

            async def body() -> AsyncIterator[bytes]:
                for _ in range(total // len(piece)):
                    yield piece
                    if connections and connections[0].transport is not None:
                        buffered.append(connections[0].transport.get_write_buffer_size())

            _, reply = await fetch(pool, origin, method="POST", body=body(), content_length=total)
            assert reply == b"stored"
            assert server.requests[0].body_size == total
            assert server.requests[0].body_sha256 == hashlib.sha256(piece * (total // len(piece))).hexdigest()
            # Paused at the transport's high-water mark, never the whole body in memory.
            assert 0 < max(buffered) <= 1024 * 1024
            await pool.aclose()

    run(scenario())


def test_download_respects_read_flow_control(run: Run) -> None:
    total = 16 * 1024 * 1024
    block = os.urandom(256 * 1024)

    async def fast_writer(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(H200 + b"Content-Length: %d\r\n\r\n" % total)
        for _ in range(total // len(block)):
            await conn.send(block)
        await conn.at_eof()

    async def scenario() -> None:
        async with RawServer(fast_writer) as server:
            pool = make_pool()
            origin = server.origin()
            response = await pool.request(origin, "GET", b"/download", host(origin))
            conn = response._conn
            assert conn is not None
            digest = hashlib.sha256()
            peak = 0
            await asyncio.sleep(0.3)  # a slow consumer: the upstream must be paused meanwhile
            peak = max(peak, conn._buffered)
            async for chunk in response.aiter_body():
                digest.update(chunk)
                peak = max(peak, len(chunk))
                await asyncio.sleep(0)
            assert digest.hexdigest() == hashlib.sha256(block * (total // len(block))).hexdigest()
            assert peak <= http1.READ_HIGH_WATER + 1024 * 1024
            await pool.aclose()

    run(scenario())


def test_early_answer_stops_the_upload(run: Run) -> None:
    async def refuse_upload(conn: ServerConn) -> None:
        await conn.read_head()
        await conn.send(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope"
        )
        await asyncio.sleep(2)  # never reads the body

    async def endless() -> AsyncIterator[bytes]:
        block = b"u" * 65536
        for _ in range(4096):  # 256 MiB if nobody stopped us
            yield block

    async def scenario() -> None:
        async with RawServer(refuse_upload) as server:
            pool = make_pool(write_timeout=10)
            origin = server.origin()
            response, body = await fetch(pool, origin, method="POST", body=endless())
            assert (response.status, body) == (413, b"nope")
            assert stats(pool, origin)["open"] == 0
            await pool.aclose()

    run(scenario())


def test_write_timeout_when_the_upstream_stops_reading(run: Run) -> None:
    async def never_reads(conn: ServerConn) -> None:
        await asyncio.sleep(5)

    async def endless() -> AsyncIterator[bytes]:
        block = b"u" * 65536
        for _ in range(4096):
            yield block

    async def scenario() -> None:
        async with RawServer(never_reads) as server:
            pool = make_pool(write_timeout=0.3)
            origin = server.origin()
            with pytest.raises(UpstreamTimeout) as caught:
                await fetch(pool, origin, method="POST", body=endless())
            assert caught.value.reason == "upstream_write_timeout"
            assert stats(pool, origin)["open"] == 0
            await pool.aclose()

    run(scenario())


# ------------------------------------------------------------------------ caller-supplied headers


@pytest.mark.parametrize(
    "name",
    [
        b"content-length",
        b"Content-Length",
        b"transfer-encoding",
        b"TRANSFER-ENCODING",
        b"connection",
        b"upgrade",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"content-length ",
        b"bad name",
        b"x:y",
        b"",
        b"x\r\ny",
    ],
)
def test_forbidden_or_malformed_header_names_are_refused(run: Run, name: bytes) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok())) as server:
            pool = make_pool()
            origin = server.origin()
            with pytest.raises(ValueError):
                await pool.request(origin, "POST", b"/", [*host(origin), (name, b"5")], produce(b"x"))
            assert server.accepted == 0
            await pool.aclose()

    run(scenario())


@pytest.mark.parametrize(
    ("method", "target", "value"),
    [
        ("GET", b"/", b"a\r\nx-injected: 1"),
        ("GET", b"/", b"a\nx-injected: 1"),
        ("GET", b"/", b"a\rb"),
        ("GET", b"/", b"a\x00b"),
        ("GET", b"/a b", b"v"),
        ("GET", b"/a\r\nHost: evil", b"v"),
        ("GET", b"/a\x00", b"v"),
        ("GET", b"http://other/", b"v"),
        ("GET", b"", b"v"),
        ("GE T", b"/", b"v"),
        ("", b"/", b"v"),
        ("GET\r\n", b"/", b"v"),
    ],
)
def test_injection_through_target_method_or_values_is_refused(
    run: Run, method: str, target: bytes, value: bytes
) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok())) as server:
            pool = make_pool()
            origin = server.origin()
            with pytest.raises(ValueError):
                await pool.request(origin, method, target, [*host(origin), (b"x-value", value)])
            assert server.accepted == 0
            await pool.aclose()

    run(scenario())


def test_options_asterisk_and_extension_methods_are_sent(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok())) as server:
            pool = make_pool()
            origin = server.origin()
            await fetch(pool, origin, b"*", method="OPTIONS")
            await fetch(pool, origin, b"/dav", method="PROPFIND")
            assert [(r.method, r.target) for r in server.requests] == [
                (b"OPTIONS", b"*"),
                (b"PROPFIND", b"/dav"),
            ]
            await pool.aclose()

    run(scenario())


# --------------------------------------------------------------------------- unix sockets, TLS


def test_unix_socket_upstream(run: Run) -> None:
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "app.sock")
            async with RawServer(keep_alive(ok(b"sidecar")), unix_path=path) as server:
                pool = make_pool()
                origin = Origin.parse(f"unix:{path}")
                for _ in range(2):
                    _, body = await fetch(pool, origin)
                    assert body == b"sidecar"
                assert server.accepted == 1
                assert server.requests[0].header(b"host") == [b"localhost"]
                await pool.aclose()

    run(scenario())


def _tls_server_context(ca: trustme.CA, *, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


def test_tls_untrusted_certificate_is_refused(run: Run) -> None:
    async def scenario() -> None:
        ca = trustme.CA()
        async with RawServer(keep_alive(ok()), ssl_context=_tls_server_context(ca)) as server:
            pool = UpstreamPool(PoolLimits(), ssl_context=build_ssl_context())
            with pytest.raises(UpstreamUnavailable) as caught:
                await fetch(pool, server.origin())
            assert caught.value.reason == "upstream_tls_error"
            assert server.requests == []
            await pool.aclose()

    run(scenario())


def test_tls_with_ca_bundle_and_hostname_check(run: Run) -> None:
    async def scenario() -> None:
        ca = trustme.CA()
        with tempfile.TemporaryDirectory() as directory:
            ca_file = os.path.join(directory, "ca.pem")
            ca.cert_pem.write_to_path(ca_file)
            async with RawServer(keep_alive(ok(b"secure")), ssl_context=_tls_server_context(ca)) as server:
                pool = UpstreamPool(PoolLimits(), ssl_context=build_ssl_context(ca_file=ca_file))
                for _ in range(2):
                    _, body = await fetch(pool, server.origin())
                    assert body == b"secure"
                assert server.accepted == 1
                # The certificate names 127.0.0.1 and localhost, not this name.
                other = Origin("https", "127.0.0.2", server.port)
                with pytest.raises(UpstreamUnavailable) as caught:
                    await fetch(pool, other)
                assert caught.value.reason in ("upstream_tls_error", "upstream_unavailable")
                await pool.aclose()

    run(scenario())


def test_tls_verification_can_be_switched_off(run: Run) -> None:
    async def scenario() -> None:
        ca = trustme.CA()
        async with RawServer(keep_alive(ok(b"insecure")), ssl_context=_tls_server_context(ca)) as server:
            pool = UpstreamPool(PoolLimits(), ssl_context=build_ssl_context(verify=False))
            _, body = await fetch(pool, server.origin())
            assert body == b"insecure"
            await pool.aclose()

    run(scenario())


def test_mtls_client_certificate_is_presented(run: Run) -> None:
    async def who_am_i(conn: ServerConn) -> None:
        while await conn.read_request() is not None:
            peer = conn.writer.get_extra_info("peercert")
            name = next(value for kind, value in peer["subjectAltName"] if kind == "email")
            await conn.send(ok(name.encode()))

    async def scenario() -> None:
        ca = trustme.CA()
        client_cert = ca.issue_cert("gateway@example.com")
        with tempfile.TemporaryDirectory() as directory:
            ca_file = os.path.join(directory, "ca.pem")
            cert_file = os.path.join(directory, "client.pem")
            key_file = os.path.join(directory, "client.key")
            ca.cert_pem.write_to_path(ca_file)
            client_cert.cert_chain_pems[0].write_to_path(cert_file)
            client_cert.private_key_pem.write_to_path(key_file)
            server_context = _tls_server_context(ca, require_client_cert=True)
            async with RawServer(who_am_i, ssl_context=server_context) as server:
                with_cert = UpstreamPool(
                    PoolLimits(),
                    ssl_context=build_ssl_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file),
                )
                _, body = await fetch(with_cert, server.origin())
                assert body == b"gateway@example.com"
                await with_cert.aclose()

                without_cert = UpstreamPool(PoolLimits(), ssl_context=build_ssl_context(ca_file=ca_file))
                with pytest.raises(UpstreamUnavailable):
                    await fetch(without_cert, server.origin())
                await without_cert.aclose()

    run(scenario())


# ------------------------------------------------------------------ cancellation and slot limits


def test_cancellation_while_waiting_for_the_head_closes_the_connection(run: Run) -> None:
    async def silent(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.at_eof(within=10)

    async def scenario() -> None:
        async with RawServer(silent) as server:
            pool = make_pool()
            origin = server.origin()
            task = asyncio.create_task(fetch(pool, origin))
            await eventually(lambda: len(server.requests) == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert stats(pool, origin)["open"] == 0
            assert await server.connections[0].client_closed()
            await pool.aclose()

    run(scenario())


def test_cancellation_while_reading_the_body_closes_the_connection(run: Run) -> None:
    async def partial(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(H200 + b"Content-Length: 100\r\n\r\nfirst")
        await conn.at_eof(within=10)

    async def scenario() -> None:
        async with RawServer(partial) as server:
            pool = make_pool()
            origin = server.origin()
            response = await pool.request(origin, "GET", b"/", host(origin))
            assert await response.read_chunk() == b"first"
            reader = asyncio.create_task(response.read_chunk())
            await asyncio.sleep(0.05)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            assert stats(pool, origin)["open"] == 0
            assert await server.connections[0].client_closed()
            await response.aclose()  # a no-op now
            await pool.aclose()

    run(scenario())


def test_cancellation_while_sending_the_body_closes_the_connection(run: Run) -> None:
    async def scenario() -> None:
        gate = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"part one"
            await gate.wait()
            yield b"never sent"

        async with RawServer(keep_alive(ok())) as server:
            pool = make_pool()
            origin = server.origin()
            task = asyncio.create_task(fetch(pool, origin, method="POST", body=body()))
            await eventually(lambda: server.accepted == 1)
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert stats(pool, origin)["open"] == 0
            assert server.requests == []
            await pool.aclose()

    run(scenario())


def test_max_connections_makes_callers_wait(run: Run) -> None:
    big = b"b" * (1024 * 1024)

    async def scenario() -> None:
        async with RawServer(keep_alive(ok(big))) as server:
            pool = make_pool(max_connections=1, connect_timeout=5)
            origin = server.origin()
            first = await pool.request(origin, "GET", b"/1", host(origin))
            second = asyncio.create_task(fetch(pool, origin, b"/2"))
            await asyncio.sleep(0.1)
            assert not second.done()
            assert stats(pool, origin) == {"open": 1, "idle": 0, "in_use": 1, "waiting": 1}
            async for _ in first.aiter_body():  # read to the end: the connection is handed over
                pass
            await first.aclose()
            _, body = await second
            assert body == big
            assert server.accepted == 1
            await pool.aclose()

    run(scenario())


def test_slot_freed_by_a_closed_connection_wakes_a_waiter(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok(b"x" * 1_000_000))) as server:
            pool = make_pool(max_connections=1)
            origin = server.origin()
            first = await pool.request(origin, "GET", b"/1", host(origin))
            second = asyncio.create_task(fetch(pool, origin, b"/2"))
            await asyncio.sleep(0.05)
            await first.aclose()  # body unread: the connection is closed, its slot freed
            _, body = await second
            assert len(body) == 1_000_000
            assert server.accepted == 2
            await pool.aclose()

    run(scenario())


def test_waiting_for_a_slot_is_bounded_by_connect_timeout(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok(b"x" * 1_000_000))) as server:
            pool = make_pool(max_connections=1, connect_timeout=0.2)
            origin = server.origin()
            first = await pool.request(origin, "GET", b"/1", host(origin))
            with pytest.raises(UpstreamTimeout) as caught:
                await fetch(pool, origin, b"/2")
            assert (caught.value.status, caught.value.reason) == (504, "upstream_pool_timeout")
            assert stats(pool, origin)["waiting"] == 0
            await first.aclose()
            _, body = await fetch(pool, origin, b"/3")  # the pool still works afterwards
            assert len(body) == 1_000_000
            await pool.aclose()

    run(scenario())


def test_closed_pool_refuses_requests_and_closes_idle_connections(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(ok())) as server:
            pool = make_pool()
            origin = server.origin()
            await fetch(pool, origin)
            await pool.aclose()
            assert await server.connections[0].client_closed()
            with pytest.raises(UpstreamUnavailable) as caught:
                await fetch(pool, origin)
            assert caught.value.reason == "pool_closed"

    run(scenario())


# ------------------------------------------------------------------------------------ upgrade


def test_upgrade_hands_over_the_raw_connection(run: Run) -> None:
    async def websocket_echo(conn: ServerConn) -> None:
        request = await conn.read_request()
        assert request is not None
        assert request.header(b"connection") == [b"upgrade"]
        assert request.header(b"upgrade") == [b"websocket"]
        await conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello"
        )
        while data := await conn.reader.read(65536):
            await conn.send(b"echo:" + data)
        conn.eof.set()

    async def scenario() -> None:
        async with RawServer(websocket_echo) as server:
            pool = make_pool()
            origin = server.origin()
            headers = [*host(origin), (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")]
            response = await pool.request(origin, "GET", b"/ws", headers, upgrade=b"websocket")
            assert response.status == 101 and not response.has_body()
            stream = response.detach()
            assert stats(pool, origin)["open"] == 0  # no longer the pool's
            assert await stream.read() == b"hello"
            await stream.write(b"ping")
            assert await stream.read() == b"echo:ping"
            await stream.aclose()
            assert stream.closed
            assert await server.connections[0].client_closed()
            await response.aclose()
            await pool.aclose()

    run(scenario())


def test_upgrade_refused_by_the_upstream_is_a_plain_response(run: Run) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")) as server:
            pool = make_pool()
            origin = server.origin()
            response, body = await fetch(pool, origin, b"/ws", upgrade=b"websocket")
            assert (response.status, body) == (403, b"no")
            with pytest.raises(RuntimeError):
                response.detach()
            assert stats(pool, origin)["open"] == 0  # a connection that asked to upgrade is not reused
            await pool.aclose()

    run(scenario())


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",  # no Connection: upgrade
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
)
def test_malformed_101_is_refused(run: Run, raw: bytes) -> None:
    async def scenario() -> None:
        async with RawServer(keep_alive(raw)) as server:
            pool = make_pool()
            origin = server.origin()
            with pytest.raises(UpstreamError) as caught:
                await pool.request(origin, "GET", b"/ws", host(origin), upgrade=b"websocket")
            assert caught.value.reason == "upstream_protocol_error"
            assert stats(pool, origin)["open"] == 0
            await pool.aclose()

    run(scenario())


def test_upstream_closing_an_upgraded_stream_reads_as_eof(run: Run) -> None:
    async def upgrade_then_close(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        await conn.send(b"bye")
        await conn.close()

    async def scenario() -> None:
        async with RawServer(upgrade_then_close) as server:
            pool = make_pool()
            origin = server.origin()
            response = await pool.request(origin, "GET", b"/ws", host(origin), upgrade=b"websocket")
            stream = response.detach()
            received = b""
            while data := await stream.read():
                received += data
            assert received == b"bye"
            with pytest.raises(UpstreamUnavailable):
                await stream.write(b"late")
            await pool.aclose()

    run(scenario())


# ---------------------------------------------------------------------------- value objects


@pytest.mark.parametrize(
    ("url", "expected", "host_header"),
    [
        ("http://orders:8000", Origin("http", "orders", 8000), b"orders:8000"),
        ("http://orders:8000/", Origin("http", "orders", 8000), b"orders:8000"),
        ("HTTP://Orders.Example.COM", Origin("http", "orders.example.com", 80), b"orders.example.com"),
        ("https://api.example.com", Origin("https", "api.example.com", 443), b"api.example.com"),
        ("https://api.example.com:8443", Origin("https", "api.example.com", 8443), b"api.example.com:8443"),
        ("http://[::1]:9000", Origin("http", "::1", 9000), b"[::1]:9000"),
        ("http://127.0.0.1", Origin("http", "127.0.0.1", 80), b"127.0.0.1"),
        ("http://my_service:80", Origin("http", "my_service", 80), b"my_service"),
        ("unix:/run/app.sock", Origin("unix", "localhost", 0, "/run/app.sock"), b"localhost"),
        ("unix:///run/app.sock", Origin("unix", "localhost", 0, "/run/app.sock"), b"localhost"),
    ],
)
def test_origin_parse(url: str, expected: Origin, host_header: bytes) -> None:
    origin = Origin.parse(url)
    assert origin == expected
    assert hash(origin) == hash(expected)
    assert origin.host_header == host_header
    assert Origin.parse(str(origin)) == origin


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host",
        "http://",
        "http://host/prefix",
        "http://host?x=1",
        "http://host/#frag",
        "http://user:pw@host",
        "http://host:0",
        "http://host:65536",
        "http://host:port",
        "http://ho st",
        "http://host\r\n",
        "http://[::1",
        "http://exa$mple.com",
        "http://exämple.com",
        "unix:relative.sock",
        "unix:",
        "unix:/run/a\x00b.sock",
        "orders:8000",
    ],
)
def test_origin_parse_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        Origin.parse(url)


def test_pool_limits_are_validated() -> None:
    for bad in ({"max_connections": 0}, {"max_idle": -1}, {"read_timeout": 0}, {"max_response_head": 10}):
        with pytest.raises(ValueError):
            PoolLimits(**bad)


def test_build_ssl_context_defaults_and_pairs() -> None:
    context = build_ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    insecure = build_ssl_context(verify=False)
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    with pytest.raises(ValueError):
        build_ssl_context(key_file="/tmp/key.pem")


# ------------------------------------------------------------- protocol level: split invariance


class _FakeTransport:
    """Just enough transport for driving the protocol synchronously (unit level)."""

    def __init__(self) -> None:
        self.closed = False
        self.paused = False

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


VALID_RESPONSES = {
    "length": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
    "chunked": b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x="a b"\r\nhello\r\n6\r\n world\r\n'
    b"0\r\nX-Trailer: t\r\n\r\n",
    "interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
    b"Content-Length: 11\r\n\r\nhello world",
    "empty": b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
}


def _drive(pieces: list[bytes]) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool, str | None]:
    loop = asyncio.new_event_loop()
    try:
        conn = http1.UpstreamConnection(loop, max_head=4096, max_headers=16, read_timeout=1, write_timeout=1)
        conn.connection_made(_FakeTransport())  # type: ignore[arg-type]
        conn.begin(is_head=False, expect_upgrade=False)
        for piece in pieces:
            conn.data_received(piece)
        error = conn.error()
        body = b"".join(conn.chunks)
        return conn.status, conn.headers, body, conn.complete, None if error is None else error.reason
    finally:
        loop.close()


@pytest.mark.parametrize("name", list(VALID_RESPONSES))
def test_any_split_of_a_valid_response_parses_the_same(name: str) -> None:
    raw = VALID_RESPONSES[name]
    whole = _drive([raw])
    assert whole[3] is True and whole[4] is None
    for cut in range(1, len(raw)):
        assert _drive([raw[:cut], raw[cut:]]) == whole, cut
    assert _drive([raw[i : i + 1] for i in range(len(raw))]) == whole


@pytest.mark.parametrize(
    "name",
    ["cl_and_te", "te_chunked_identity", "te_duplicate", "chunk_size_overflow", "chunk_bare_lf_after_size"],
)
def test_any_split_of_a_bad_response_is_refused(name: str) -> None:
    raw = BAD_FRAMING[name]
    for cut in range(1, len(raw)):
        assert _drive([raw[:cut], raw[cut:]])[4] == "upstream_protocol_error", cut


def test_long_header_names_pass_but_are_not_remembered() -> None:
    # The checked-name cache fills once and stays: a client's long names must not fill it.
    long_name = b"x-" + b"n" * 200
    short_name = b"x-short-enough"
    head = http1.encode_request_head("GET", b"/", [(long_name, b"1"), (short_name, b"2")], b"", None)
    assert long_name + b": 1\r\n" in head and short_name + b": 2\r\n" in head
    assert short_name in http1._CHECKED_NAMES
    assert long_name not in http1._CHECKED_NAMES
    with pytest.raises(ValueError):  # a long bad name is still checked every time
        http1.encode_request_head("GET", b"/", [(b"bad name " + b"n" * 200, b"1")], b"", None)
