"""The hardened client-facing protocol (gateway/proxy/protocol.py) under real uvicorn: its
pre-rendered refusals, and the per-connection timer that enforces both the head timeout and the
keep-alive idle timeout. (Size limits, slowloris and smuggling: tests/e2e/test_proxy_limits.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import unittest.mock
from collections.abc import Iterator

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gateway.asgi import GatewayApp
from gateway.config.loader import parse_config
from gateway.config.models import GatewayConfig
from gateway.policy import build_policy
from gateway.proxy.protocol import GatewayCycle, ProtocolLimits
from gateway.server import protocol_limits, uvicorn_config
from tests.support.proxy_servers import ResponseReader, ThreadedRawServer, connect
from tests.support.servers import ServerThread
from tests.support.upstream_servers import keep_alive, ok


def test_protocol_limits_are_validated() -> None:
    responses = {400: b"x", 408: b"x", 431: b"x"}
    with pytest.raises(ValueError):
        ProtocolLimits(max_head_bytes=100, head_timeout=1.0, responses=responses)
    with pytest.raises(ValueError):
        ProtocolLimits(max_head_bytes=4096, head_timeout=0, responses=responses)
    with pytest.raises(ValueError):
        ProtocolLimits(max_head_bytes=4096, head_timeout=1.0, responses={400: b"x"})


@pytest.mark.parametrize(
    ("status", "reason"), [(400, "malformed_request"), (408, "head_timeout"), (431, "headers_too_large")]
)
def test_refusals_are_complete_problem_responses_that_close(status: int, reason: str) -> None:
    raw = protocol_limits(GatewayConfig()).responses[status]
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 %d " % status)
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"application/problem+json"
    assert int(headers[b"content-length"]) == len(body)
    assert b"www-authenticate" not in headers  # framing problems are no credentials problems
    assert json.loads(body)["reason"] == reason


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedRawServer]:
    with ThreadedRawServer(keep_alive(ok(b"fine"))) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(upstream: ThreadedRawServer) -> Iterator[ServerThread]:
    cfg = parse_config(
        f"upstream: {upstream.url}\nproxy: {{head_timeout: 1s}}\n"
        "routes: [{match: {path: /**}, auth: public}]\n",
        file="<test>",
    )
    app = GatewayApp(build_policy(cfg))
    with ServerThread(app, config=uvicorn_config(app, "127.0.0.1", 0, cfg, timeout_keep_alive=1)) as server:
        yield server


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None when it was still open after ``seconds``."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return None
    return data


def test_an_idle_keep_alive_connection_is_closed(gateway: ServerThread) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert ResponseReader(sock).read().status == 200
        started = time.monotonic()
        assert closed_within(sock, 4) == b""
        assert 0.9 < time.monotonic() - started < 3


def test_a_connection_reused_in_time_stays_open(gateway: ServerThread) -> None:
    with connect(gateway.port) as sock:
        reader = ResponseReader(sock)
        for _ in range(3):
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert reader.read().status == 200
            time.sleep(0.5)


def test_pipelined_requests_are_answered_in_order(gateway: ServerThread, upstream: ThreadedRawServer) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: gw\r\n\r\nGET /two HTTP/1.1\r\nHost: gw\r\n\r\n")
        reader = ResponseReader(sock)
        assert [reader.read().status, reader.read().status] == [200, 200]
    assert [r.target for r in upstream.raw.requests[-2:]] == [b"/one", b"/two"]


def test_a_silent_connection_gets_408(gateway: ServerThread) -> None:
    with connect(gateway.port) as sock:
        started = time.monotonic()
        data = closed_within(sock, 4)
    assert data is not None and data.startswith(b"HTTP/1.1 408 ")
    assert 0.9 < time.monotonic() - started < 3


def test_a_malformed_request_gets_a_problem_400(gateway: ServerThread) -> None:
    with connect(gateway.port) as sock:
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: gw\r\nNo colon here\r\n\r\n")
        response = ResponseReader(sock).read()
    assert response.status == 400
    assert json.loads(response.body)["reason"] == "malformed_request"


# ---------------------------------------------------------------- the response writer


def app_answering(headers: list[tuple[bytes, bytes]], body: bytes = b"ok", **start: object) -> object:
    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers, **start})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

    return app


def answer_of(app: object, request: bytes = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") -> bytes:
    config = uvicorn_config(app, "127.0.0.1", 0, GatewayConfig())
    with ServerThread(app, config=config) as server, connect(server.port) as sock:
        sock.sendall(request)
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if data.endswith(b"ok"):
                break
        return data


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-a", b"1\r\nset-cookie: injected=1")],
        [(b"x-a", b"1\nx-b: 2")],
        [(b"x-a", b"nul\x00byte")],
        [(b"x-a", b"bell\x07")],
        [(b"bad name", b"1")],
        [(b"x-a:", b"1")],
    ],
    ids=["crlf", "lf", "nul", "control", "space_in_name", "colon_in_name"],
)
def test_a_response_head_that_would_split_is_never_written(headers: list[tuple[bytes, bytes]]) -> None:
    data = answer_of(app_answering(headers))
    assert b"injected" not in data and b"x-b: 2" not in data
    assert not data.startswith(b"HTTP/1.1 200")


def test_names_are_written_lower_case_and_a_tab_is_allowed() -> None:
    data = answer_of(app_answering([(b"content-length", b"2"), (b"X-Mixed-Case", b"v\tt")]))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nx-mixed-case: v\tt" in head  # names lower-cased as uvicorn writes them; HTAB allowed
    assert body == b"ok"


def test_the_lean_cycle_has_every_attribute_uvicorns_cycle_sets() -> None:
    # GatewayCycle builds itself without uvicorn's __init__ (it is made per request): an
    # attribute a newer uvicorn sets there, and uses in receive() or send_500_response(), must
    # show up here rather than as an AttributeError under load.
    flow = FlowControl(unittest.mock.Mock())
    args = ({"type": "http", "method": "GET"}, unittest.mock.Mock(), flow, logging.getLogger("t"))
    theirs = RequestResponseCycle(
        *args, logging.getLogger("t"), False, [], asyncio.Event(), False, True, _no_op
    )
    ours = GatewayCycle(*args, [], False, True, _no_op, unittest.mock.Mock())
    missing = [name for name in vars(theirs) if not hasattr(ours, name)]
    assert not missing, f"uvicorn's cycle sets {missing}; GatewayCycle.__init__ must set them too"
    for name in ("disconnected", "response_started", "response_complete", "more_body", "keep_alive"):
        assert getattr(ours, name) == getattr(theirs, name), name


def _no_op() -> None:
    return None
