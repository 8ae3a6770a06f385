"""WebSocket proxying end to end: the ``websockets`` client library against the gateway, and a
real WebSocket echo upstream (the ``websockets`` server).

The upgrade is decided like any request (a denial is an HTTP 401/403 with the problem+json
body), subprotocols pass through, the token may come from ``Sec-WebSocket-Protocol`` when its
provider opts in (``bearer.<token>``, stripped before the handshake goes upstream), and the
session is closed with 1008 when the token expires.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support.proxy_servers import ThreadedRawServer, WebSocketEcho
from tests.support.servers import GatewayServer
from tests.support.upstream_servers import keep_alive

SECRET = "a-test-hmac-secret-of-at-least-32-bytes!!"
OTHER_SECRET = "another-test-hmac-secret-of-32-bytes-or-more"
AUD = "api"


def token(issuer: str = "https://hs.test", secret: str = SECRET, lifetime: int = 600, **extra: Any) -> str:
    now = int(time.time())
    claims = {"iss": issuer, "aud": AUD, "sub": "alice", "iat": now, "exp": now + lifetime, **extra}
    return jwt.encode(claims, secret, algorithm="HS256")


def other_token() -> str:
    return token("https://other.test", OTHER_SECRET)


def config(upstream: str, *, opt_in: bool = True) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream,
        "providers": {
            "hs": {
                "issuer": "https://hs.test",
                "secret": SECRET,
                "algorithms": ["HS256"],
                "audiences": [AUD],
                "token": {"websocket_protocol": opt_in},
            },
            "other": {
                "issuer": "https://other.test",
                "secret": OTHER_SECRET,
                "algorithms": ["HS256"],
                "audiences": [AUD],
            },
        },
        "headers": {"claims": {"X-User-Id": "sub"}},
        "routes": [
            {"name": "nows", "match": {"path": "/nows/**"}, "auth": "public", "websocket": False},
            {"name": "keep", "match": {"path": "/keep/**"}, "close_on_expiry": False},
            {"name": "public", "match": {"path": "/public/**"}, "auth": "public"},
            {"name": "ws", "match": {"path": "/**"}},
        ],
    }


@pytest.fixture(scope="module")
def echo() -> Iterator[WebSocketEcho]:
    with WebSocketEcho(subprotocols=["chat.v2", "chat.v1"]) as server:
        yield server


@pytest.fixture(scope="module")
def gw(echo: WebSocketEcho) -> Iterator[GatewayServer]:
    with GatewayServer(config(echo.url)) as server:
        yield server


def ws_url(gw: GatewayServer, path: str = "/chat") -> str:
    return f"ws://127.0.0.1:{gw.port}{path}"


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def open_ws(gw: GatewayServer, path: str = "/chat", **kwargs: Any) -> ClientConnection:
    return connect(ws_url(gw, path), open_timeout=5, close_timeout=5, **kwargs)


def refused(gw: GatewayServer, path: str = "/chat", **kwargs: Any) -> Any:
    with pytest.raises(InvalidStatus) as info:
        open_ws(gw, path, **kwargs).close()
    return info.value.response


# -------------------------------------------------------------------------------- relaying


def test_messages_are_relayed_both_ways(gw: GatewayServer, echo: WebSocketEcho) -> None:
    with open_ws(gw, additional_headers=bearer(token())) as ws:
        ws.send("hello")
        assert ws.recv(5) == "hello"
        ws.send(b"\x00\x01binary")
        assert ws.recv(5) == b"\x00\x01binary"
        big = "x" * 300_000
        ws.send(big)
        assert ws.recv(5) == big
        ws.send("whoami")
        assert ws.recv(5) == "alice"  # the claim header reached the upstream's handshake
    handshake = echo.handshakes[-1]
    assert handshake["x-user-id"] == "alice"
    assert "authorization" not in handshake
    assert "sec-websocket-extensions" not in handshake  # compression stays client <-> gateway
    assert handshake["x-forwarded-for"] == "127.0.0.1"


def test_subprotocols_pass_through(gw: GatewayServer, echo: WebSocketEcho) -> None:
    with open_ws(gw, additional_headers=bearer(token()), subprotocols=["chat.v1", "chat.v2"]) as ws:  # type: ignore[list-item]
        chosen = ws.subprotocol
        ws.send("ping")
        assert ws.recv(5) == "ping"
    assert chosen in ("chat.v1", "chat.v2")
    assert echo.handshakes[-1]["sec-websocket-protocol"] == "chat.v1, chat.v2"


def test_close_codes_pass_both_ways(gw: GatewayServer, echo: WebSocketEcho) -> None:
    with open_ws(gw, additional_headers=bearer(token())) as ws:
        ws.send("close 4001")
        with pytest.raises(ConnectionClosed):
            ws.recv(5)
        assert ws.close_code == 4001
    with open_ws(gw, additional_headers=bearer(token())) as ws:
        ws.send("hi")
        ws.recv(5)
        ws.close(4002, "bye")
    deadline = time.monotonic() + 5
    while echo.closed[-1:] != [4002] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert echo.closed[-1] == 4002


# ---------------------------------------------------------------------------------- denial


def test_an_upgrade_without_a_token_is_refused_with_401(gw: GatewayServer, echo: WebSocketEcho) -> None:
    before = len(echo.handshakes)
    response = refused(gw)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="jwt-gateway"'
    assert response.headers["Content-Type"] == "application/problem+json"
    assert json.loads(response.body)["reason"] == "token_missing"
    assert len(echo.handshakes) == before


def test_an_invalid_token_is_refused_with_401(gw: GatewayServer) -> None:
    response = refused(gw, additional_headers=bearer(token(secret="x" * 40)))
    assert response.status_code == 401
    assert json.loads(response.body)["reason"] == "bad_signature"


def test_a_route_closed_to_websockets_refuses_with_403(gw: GatewayServer, echo: WebSocketEcho) -> None:
    before = len(echo.handshakes)
    response = refused(gw, "/nows/x")
    assert response.status_code == 403
    assert json.loads(response.body)["reason"] == "websocket_not_allowed"
    assert len(echo.handshakes) == before


def test_a_public_route_relays_without_a_token(gw: GatewayServer) -> None:
    with open_ws(gw, "/public/feed") as ws:
        ws.send("anyone")
        assert ws.recv(5) == "anyone"


# ---------------------------------------------------------------------- token in subprotocol


def test_the_token_may_come_from_the_subprotocol_list(gw: GatewayServer, echo: WebSocketEcho) -> None:
    with open_ws(gw, subprotocols=["bearer", f"bearer.{token()}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "bearer"  # the marker, so that browsers see a selection
        ws.send("whoami")
        assert ws.recv(5) == "alice"
    handshake = echo.handshakes[-1]
    assert "sec-websocket-protocol" not in handshake  # the token never goes upstream
    with open_ws(gw, subprotocols=["chat.v1", f"bearer.{token()}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "chat.v1"
    assert echo.handshakes[-1]["sec-websocket-protocol"] == "chat.v1"


def test_a_subprotocol_token_counts_as_a_credential(gw: GatewayServer) -> None:
    two = refused(gw, subprotocols=[f"bearer.{token()}", f"bearer.{token()}"])
    assert two.status_code == 400
    both = refused(gw, subprotocols=[f"bearer.{token()}"], additional_headers=bearer(token()))
    assert both.status_code == 400
    assert json.loads(both.body)["reason"] == "multiple_credentials"


def test_a_provider_that_did_not_opt_in_refuses_the_subprotocol_token(gw: GatewayServer) -> None:
    response = refused(gw, subprotocols=[f"bearer.{other_token()}"])
    assert response.status_code == 401
    assert json.loads(response.body)["reason"] == "token_location_not_allowed"
    with open_ws(gw, additional_headers=bearer(other_token())) as ws:  # its header token is fine
        ws.send("ok")
        assert ws.recv(5) == "ok"


def test_without_opt_in_the_subprotocol_token_is_ignored_and_stripped(echo: WebSocketEcho) -> None:
    with GatewayServer(config(echo.url, opt_in=False)) as gw:
        response = refused(gw, subprotocols=[f"bearer.{token()}"])
        assert response.status_code == 401
        assert json.loads(response.body)["reason"] == "token_missing"
        with open_ws(gw, "/public/x", subprotocols=["chat.v1", f"bearer.{token()}"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "chat.v1"
        assert echo.handshakes[-1]["sec-websocket-protocol"] == "chat.v1"


# ---------------------------------------------------------------------------------- expiry


def test_a_session_is_closed_with_1008_when_the_token_expires(gw: GatewayServer, echo: WebSocketEcho) -> None:
    short = token(lifetime=2)
    with (
        open_ws(gw, additional_headers=bearer(short)) as closing,
        open_ws(gw, "/keep/x", additional_headers=bearer(short)) as kept,
    ):
        closing.send("before")
        assert closing.recv(5) == "before"
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            closing.recv(10)
        assert closing.close_code == 1008
        assert closing.close_reason == "token expired"
        assert time.monotonic() - started < 5
        # close_on_expiry: false keeps the other session open past exp.
        kept.send("still here")
        assert kept.recv(5) == "still here"


# --------------------------------------------------------------------------------- upstream


def test_an_upstream_refusing_the_upgrade_is_passed_on() -> None:
    refusal = b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nnope"
    with ThreadedRawServer(keep_alive(refusal)) as upstream, GatewayServer(config(upstream.url)) as gw:
        response = refused(gw, additional_headers=bearer(token()))
    assert response.status_code == 403
    assert response.body == b"nope"


def test_an_unreachable_upstream_is_502() -> None:
    with GatewayServer(config("http://127.0.0.1:9")) as gw:
        response = refused(gw, additional_headers=bearer(token()))
    assert response.status_code == 502
    assert json.loads(response.body)["reason"] == "upstream_unavailable"
