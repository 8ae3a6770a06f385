"""Upstream failures and client disconnects, over real connections.

- connect refused / reset: 502; connect / read timeout: 504; each a problem+json body and one
  diagnostic log line (plus the access line);
- a request whose body was sent is never retried; a failed connect is retried once for
  idempotent methods when ``retry_on_connect_failure`` is on;
- an upstream dying in the middle of the body aborts the client's response (never a complete
  message under a 200), whatever the framing;
- a client that goes away cancels the upstream exchange and frees its connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.proxy import http1
from tests.support.proxy_servers import StreamUpstream, ThreadedRawServer, connect, read_response
from tests.support.servers import GatewayServer
from tests.support.upstream_servers import ServerConn, closed_port, full_backlog, keep_alive, ok


def config(upstream_url: str, **proxy: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream_url,
        "proxy": {"connect_timeout": "0.5s", "read_timeout": "0.5s", **proxy},
        "routes": [{"name": "all", "match": {"path": "/**"}, "auth": "public"}],
    }


class Diagnostics(logging.Handler):
    """Collects the gateway's diagnostic log records (not the access lines)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "jwt_gateway":
            self.records.append(record)

    def warnings(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.WARNING]


@pytest.fixture
def diagnostics() -> Iterator[Diagnostics]:
    handler = Diagnostics()
    logger = logging.getLogger("jwt_gateway")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def assert_problem(r: httpx.Response, status: int, reason: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["reason"] == reason and body["request_id"]


# ------------------------------------------------------------------------------ 502 / 504


def test_connect_refused_is_502(diagnostics: Diagnostics) -> None:
    with GatewayServer(config(f"http://127.0.0.1:{closed_port()}")) as gw:
        r = httpx.get(gw.url + "/x")
    assert_problem(r, 502, "upstream_unavailable")
    assert len(diagnostics.warnings()) == 1
    assert "upstream_unavailable" in diagnostics.warnings()[0]


async def reset_after_request(conn: ServerConn) -> None:
    await conn.read_request()
    conn.abort()


async def never_answer(conn: ServerConn) -> None:
    await conn.read_request()
    await conn.at_eof(within=30)


def test_connection_reset_is_502(diagnostics: Diagnostics) -> None:
    with ThreadedRawServer(reset_after_request) as upstream, GatewayServer(config(upstream.url)) as gw:
        r = httpx.get(gw.url + "/x")
    assert_problem(r, 502, "upstream_unavailable")
    assert len(diagnostics.warnings()) == 1


def test_connect_timeout_is_504(diagnostics: Diagnostics) -> None:
    with full_backlog() as port, GatewayServer(config(f"http://127.0.0.1:{port}")) as gw:
        started = time.monotonic()
        r = httpx.get(gw.url + "/x", timeout=10)
        assert time.monotonic() - started < 3
    assert_problem(r, 504, "upstream_connect_timeout")
    assert len(diagnostics.warnings()) == 1


def test_read_timeout_is_504(diagnostics: Diagnostics) -> None:
    with ThreadedRawServer(never_answer) as upstream, GatewayServer(config(upstream.url)) as gw:
        r = httpx.get(gw.url + "/x", timeout=10)
    assert_problem(r, 504, "upstream_read_timeout")
    assert len(diagnostics.warnings()) == 1
    assert "upstream_read_timeout" in diagnostics.warnings()[0]


# --------------------------------------------------------------------------------- retries


async def close_after_request(conn: ServerConn) -> None:
    await conn.read_request()
    await conn.close()


def test_a_request_whose_body_was_sent_is_never_retried() -> None:
    with (
        ThreadedRawServer(close_after_request) as upstream,
        GatewayServer(config(upstream.url, retry_on_connect_failure=True)) as gw,
    ):
        for method in ("POST", "PUT"):  # PUT is idempotent: still no retry once sent
            before = upstream.raw.accepted
            r = httpx.request(method, gw.url + "/x", content=b"payload")
            assert_problem(r, 502, "upstream_unavailable")
            assert upstream.raw.accepted == before + 1
            assert upstream.raw.requests[-1].body == b"payload"


@pytest.mark.parametrize(
    ("retry", "method", "status"),
    [(True, "GET", 200), (True, "DELETE", 200), (True, "POST", 502), (False, "GET", 502)],
)
def test_a_failed_connect_is_retried_once_for_idempotent_methods_when_configured(
    retry: bool, method: str, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        ThreadedRawServer(keep_alive(ok())) as upstream,
        GatewayServer(config(upstream.url, retry_on_connect_failure=retry)) as gw,
    ):
        pool = gw.gateway.pool
        real_open = pool._open
        attempts: list[int] = []

        async def flaky_open(*args: Any) -> http1.UpstreamConnection:
            attempts.append(1)
            if len(attempts) == 1:
                raise ConnectionRefusedError("first connect refused")
            return await real_open(*args)

        monkeypatch.setattr(pool, "_open", flaky_open)
        r = httpx.request(method, gw.url + "/x")
        assert r.status_code == status
        assert len(attempts) == (2 if status == 200 else 1)


# ------------------------------------------------------------------------ dying mid-body


def dying(head: bytes, partial: bytes, *, reset: bool) -> Any:
    async def handler(conn: ServerConn) -> None:
        await conn.read_request()
        await conn.send(head + partial)
        await asyncio.sleep(0.05)
        if reset:
            conn.abort()
        else:
            await conn.close()

    return handler


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize(
    ("head", "partial", "framing"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n", b"x" * 100, "length"),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            b"64\r\n" + b"x" * 100 + b"\r\n",
            "chunked",
        ),
    ],
    ids=["content_length", "chunked"],
)
def test_an_upstream_dying_mid_body_aborts_the_client_response(
    head: bytes, partial: bytes, framing: str, reset: bool, diagnostics: Diagnostics
) -> None:
    with (
        ThreadedRawServer(dying(head, partial, reset=reset)) as upstream,
        GatewayServer(config(upstream.url, read_timeout="5s")) as gw,
    ):
        with connect(gw.port) as sock:
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
            response = read_response(sock, timeout=5)
    assert response.status == 200  # the head had gone out already
    assert response.framing == framing
    assert not response.complete  # a broken message, never a complete one
    assert response.closed
    assert len(response.body) <= 100
    assert any("upstream_aborted" in w for w in diagnostics.warnings())


# ------------------------------------------------------------------------ client goes away


@pytest.fixture(scope="module")
def stream_upstream() -> Iterator[StreamUpstream]:
    with StreamUpstream() as server:
        yield server


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_client_leaving_an_event_stream_cancels_the_upstream_request(
    stream_upstream: StreamUpstream,
) -> None:
    with GatewayServer(config(stream_upstream.url, read_timeout="60s")) as gw:
        sock = socket.create_connection(("127.0.0.1", gw.port))
        sock.sendall(b"GET /events?gate=never HTTP/1.1\r\nHost: gw\r\n\r\n")
        got = b""
        while b"data: 1" not in got:
            got += sock.recv(4096)
        seen = stream_upstream.seen[-1]
        assert seen.path == "/events" and seen.disconnected_at is None
        left = time.monotonic()
        sock.close()
        assert wait_for(lambda: seen.disconnected_at is not None, 5)
        assert seen.disconnected_at is not None and seen.disconnected_at - left < 2
        # The upstream connection is closed, not parked for reuse with an unread body.
        assert wait_for(
            lambda: all(s["in_use"] == 0 and s["idle"] == 0 for s in gw.gateway.pool.stats().values())
        )
        assert gw.gateway.active == 0


def test_a_client_leaving_before_the_answer_cancels_the_upstream_request() -> None:
    closed_at: list[float] = []

    async def long_poll(conn: ServerConn) -> None:
        await conn.read_request()
        if await conn.at_eof(within=10):
            closed_at.append(time.monotonic())

    with (
        ThreadedRawServer(long_poll) as upstream,
        GatewayServer(config(upstream.url, read_timeout="60s")) as gw,
    ):
        sock = socket.create_connection(("127.0.0.1", gw.port))
        sock.sendall(b"GET /long-poll HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert wait_for(lambda: upstream.raw.requests)
        time.sleep(0.05)
        left = time.monotonic()
        sock.close()
        assert wait_for(lambda: closed_at, 5)
        assert closed_at[0] - left < 2
        assert wait_for(lambda: all(s["in_use"] == 0 for s in gw.gateway.pool.stats().values()))
