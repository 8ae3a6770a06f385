"""The HTTP/1.1 client protocol (gateway/proxy/http1.py) as a unit: the exact request head, the
chunk framing, and the response views driven byte by byte without sockets. (Most behaviour,
including the refusal of forbidden header names, injected values and non-origin targets, is
tested against real servers in tests/proxy/test_pool.py; only what it does not cover is here.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from gateway.errors import UpstreamUnavailable
from gateway.proxy import http1
from gateway.proxy.http1 import UpstreamConnection, UpstreamResponse, chunk_frame, encode_request_head

# ------------------------------------------------------------------------------ request heads


def test_the_head_is_request_line_headers_framing_then_a_blank_line() -> None:
    head = encode_request_head(
        "POST",
        b"/a/b?x=1&y=%2F",
        [(b"host", b"app:8000"), (b"x-user-id", b"alice"), (b"x-user-id", b"bob")],
        b"transfer-encoding: chunked\r\n",
        None,
    )
    assert head == (
        b"POST /a/b?x=1&y=%2F HTTP/1.1\r\n"
        b"host: app:8000\r\nx-user-id: alice\r\nx-user-id: bob\r\n"
        b"transfer-encoding: chunked\r\n"
        b"\r\n"
    )


def test_a_head_without_headers() -> None:
    assert encode_request_head("GET", b"/", [], b"", None) == b"GET / HTTP/1.1\r\n\r\n"


def test_an_upgrade_request_names_its_protocol_last() -> None:
    head = encode_request_head("GET", b"/ws", [(b"host", b"h")], b"", b"websocket")
    assert head == b"GET /ws HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    versioned = encode_request_head("GET", b"/", [], b"", b"h2c/1")
    assert b"upgrade: h2c/1\r\n" in versioned


@pytest.mark.parametrize(
    "upgrade",
    [
        b"web socket",
        b"",
        b"websocket\r\nx-injected: 1",
        b"websocket/13\r\nx-injected: 1",
        b"ws/1\x00",
        b"w@s",
    ],
)
def test_a_bad_upgrade_protocol_is_refused(upgrade: bytes) -> None:
    with pytest.raises(ValueError):
        encode_request_head("GET", b"/ws", [(b"host", b"h")], b"", upgrade)


@pytest.mark.parametrize("target", [b"/a\tb", b"/a\x7f", b"/\x1b[31m", b"?x", b"a/b", b"**"])
def test_targets_with_other_control_bytes_or_not_origin_form_are_refused(target: bytes) -> None:
    with pytest.raises(ValueError):
        encode_request_head("GET", target, [], b"", None)


@pytest.mark.parametrize("method", ["GÉT", "G\tT", "GET /x HTTP/1.1\r\n\r\nGET", "(GET)"])
def test_methods_must_be_ascii_tokens(method: str) -> None:
    with pytest.raises(ValueError):
        encode_request_head(method, b"/", [], b"", None)


def test_values_may_hold_tabs_and_obs_text_as_received() -> None:
    # Only CR, LF and NUL can split a head; other bytes pass byte for byte.
    value = b"a\tb \xe9\xff"
    assert b"x-v: " + value + b"\r\n" in encode_request_head("GET", b"/", [(b"x-v", value)], b"", None)


def test_a_refused_name_is_refused_again_on_every_call() -> None:
    # The checked-name cache must only remember names that passed.
    for _ in range(2):
        with pytest.raises(ValueError):
            encode_request_head("GET", b"/", [(b"Transfer-Encoding", b"chunked")], b"", None)
    assert b"Transfer-Encoding" not in http1._CHECKED_NAMES


@pytest.mark.parametrize(
    ("size", "line"),
    [(1, b"1\r\n"), (10, b"a\r\n"), (255, b"ff\r\n"), (4096, b"1000\r\n"), (65537, b"10001\r\n")],
)
def test_chunk_frame_is_the_lowercase_hex_size_line(size: int, line: bytes) -> None:
    assert chunk_frame(b"x" * size) == line


# ------------------------------------------------------------------------ responses, as units


class FakeTransport:
    """Just enough of a transport to drive the protocol synchronously."""

    def __init__(self) -> None:
        self.aborted = False
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class FakeOwner:
    """Records what the response gives back to the pool."""

    def __init__(self) -> None:
        self.released: list[bool] = []
        self.detached = 0

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        self.released.append(reusable)

    def detach(self, conn: UpstreamConnection) -> None:
        self.detached += 1


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def connection(
    loop: asyncio.AbstractEventLoop, *, is_head: bool = False
) -> tuple[UpstreamConnection, FakeTransport]:
    conn = UpstreamConnection(loop, max_head=8192, max_headers=32, read_timeout=1, write_timeout=1)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.begin(is_head=is_head, expect_upgrade=False)
    return conn, transport


def test_end_to_end_headers_drop_hop_by_hop_and_nominated_fields(loop: asyncio.AbstractEventLoop) -> None:
    conn, _ = connection(loop)
    conn.data_received(
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\n"
        b"X-Internal: secret-route\r\nSet-Cookie: a=1\r\nContent-Length: 2\r\nSet-Cookie: b=2\r\n"
        b"Proxy-Connection: x\r\n\r\nok"
    )
    conn.request_complete = True
    response = UpstreamResponse(conn, FakeOwner())
    assert response.end_to_end_headers() == [
        (b"set-cookie", b"a=1"),
        (b"content-length", b"2"),
        (b"set-cookie", b"b=2"),
    ]
    # `headers` keeps everything, as received, names lower-cased.
    assert [name for name, _ in response.headers][:3] == [b"connection", b"keep-alive", b"x-internal"]


def test_a_small_complete_answer_is_taken_at_once_and_released_for_reuse(
    loop: asyncio.AbstractEventLoop,
) -> None:
    conn, _ = connection(loop)
    owner = FakeOwner()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    conn.request_complete = True
    response = UpstreamResponse(conn, owner)
    assert (response.status, response.content_length, response.has_body()) == (200, 5, True)
    assert response.body_received and response.at_eof is False
    assert response.take_body() == b"hello"
    assert owner.released == [True]
    assert response.take_body() == b"" and response.at_eof
    response.close()  # a no-op once released
    assert owner.released == [True]


def test_an_incomplete_body_cannot_be_taken_and_closing_discards_the_connection(
    loop: asyncio.AbstractEventLoop,
) -> None:
    conn, transport = connection(loop)
    owner = FakeOwner()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    response = UpstreamResponse(conn, owner)
    assert not response.body_received
    with pytest.raises(RuntimeError):
        response.take_body()
    with pytest.raises(RuntimeError):
        response.detach()  # only a 101 can be detached
    response.close()
    assert owner.released == [False] and transport.aborted


def test_a_head_answer_has_no_body_and_the_connection_stays_usable(loop: asyncio.AbstractEventLoop) -> None:
    conn, _ = connection(loop, is_head=True)
    owner = FakeOwner()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    conn.request_complete = True
    response = UpstreamResponse(conn, owner)  # complete with its head: released at once
    assert (response.has_body(), response.content_length, owner.released) == (False, 1000, [True])
    # The next exchange on the same connection parses a fresh response.
    conn.begin(is_head=False, expect_upgrade=False)
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert (conn.status, conn.complete, conn.error()) == (204, True, None)


def test_reusable_needs_a_clean_keep_alive_exchange(loop: asyncio.AbstractEventLoop) -> None:
    conn, _ = connection(loop)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert not conn.reusable()  # the request body was not marked sent
    conn.request_complete = True
    assert conn.reusable()
    closing, _ = connection(loop)
    closing.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    closing.request_complete = True
    assert not closing.reusable()


def test_eof_before_any_answer_is_upstream_unavailable(loop: asyncio.AbstractEventLoop) -> None:
    conn, _ = connection(loop)
    conn.connection_lost(None)
    error = conn.error()
    assert isinstance(error, UpstreamUnavailable) and error.status == 502
    assert conn.error() is not error  # each raise gets a fresh copy


def test_an_idle_connection_that_dies_tells_its_owner(loop: asyncio.AbstractEventLoop) -> None:
    conn, _ = connection(loop)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    lost: list[UpstreamConnection] = []
    conn.on_idle_lost = lost.append
    conn.make_idle(now=1.0)
    conn.connection_lost(None)
    assert lost == [conn] and conn.closed and conn.error() is None
