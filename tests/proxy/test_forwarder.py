"""The forwarder's header plan and framing, and client-disconnect handling under an ASGI server
other than the gateway's own protocol (the fallback watcher)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from gateway.config.loader import parse_config
from gateway.errors import RequestError
from gateway.policy import build_policy
from gateway.proxy.forwarder import HeaderPlan, _framing
from tests.support.proxy_servers import StreamUpstream
from tests.support.servers import ServerThread


def plan(*spoofable: bytes) -> HeaderPlan:
    return HeaderPlan(lambda name: name in spoofable or b"_" in name)


def build(client: list[tuple[bytes, bytes]], *, trusted: bool = False) -> list[tuple[bytes, bytes]]:
    return plan(b"x-user-id", b"authorization").build(
        client,
        trusted_peer=trusted,
        host=b"upstream:8000",
        forwarding=[(b"x-forwarded-for", b"10.0.0.1")],
        claim_headers=[(b"x-user-id", b"alice")],
        request_id=b"rid",
    )


def test_the_plan_keeps_the_clients_headers_in_order_then_adds_the_gateways() -> None:
    client = [(b"accept", b"*/*"), (b"x-a", b"1"), (b"cookie", b"c=1"), (b"x-a", b"2")]
    assert build(client) == [
        *client,
        (b"host", b"upstream:8000"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"x-user-id", b"alice"),
        (b"x-request-id", b"rid"),
    ]


def test_the_plan_drops_what_must_not_cross() -> None:
    client = [
        (b"host", b"client"),
        (b"content-length", b"5"),
        (b"transfer-encoding", b"chunked"),
        (b"connection", b"keep-alive, X-Custom"),
        (b"keep-alive", b"timeout=5"),
        (b"upgrade", b"h2c"),
        (b"te", b"trailers"),
        (b"x-custom", b"nominated"),
        (b"x-request-id", b"client-id"),
        (b"x-user-id", b"mallory"),
        (b"x_user_id", b"mallory"),
        (b"authorization", b"Bearer t"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"forwarded", b"for=6.6.6.6"),
        (b"x-real-ip", b"6.6.6.6"),
        (b"x-kept", b"yes"),
    ]
    names = [n for n, _ in build(client)]
    assert names == [b"x-kept", b"host", b"x-forwarded-for", b"x-user-id", b"x-request-id"]


def test_x_real_ip_and_port_pass_only_from_a_trusted_proxy() -> None:
    client = [(b"x-real-ip", b"203.0.113.9"), (b"x-forwarded-port", b"443"), (b"x-forwarded-for", b"1.2.3.4")]
    kept = [n for n, _ in build(client, trusted=True)][:2]
    assert kept == [b"x-real-ip", b"x-forwarded-port"]
    assert [n for n, _ in build(client)][:1] == [b"host"]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], (None, False)),
        ([(b"content-length", b"0")], (0, False)),
        ([(b"content-length", b"12")], (12, True)),
        ([(b"transfer-encoding", b"chunked")], (None, True)),
    ],
)
def test_framing_is_re_derived(headers: list[tuple[bytes, bytes]], expected: tuple[int | None, bool]) -> None:
    assert _framing(headers) == expected


def test_an_unparsable_content_length_is_a_request_error() -> None:
    with pytest.raises(RequestError):
        _framing([(b"content-length", b"12x")])


# ------------------------------------------------------------------- another ASGI server


@pytest.fixture(scope="module")
def upstream() -> Iterator[StreamUpstream]:
    with StreamUpstream() as server:
        yield server


def test_a_client_leaving_is_noticed_under_a_plain_uvicorn_too(upstream: StreamUpstream) -> None:
    """Without the gateway's protocol the forwarder's fallback watcher cancels the exchange."""
    from gateway.asgi import GatewayApp

    cfg = parse_config(
        f"upstream: {upstream.url}\nroutes: [{{match: {{path: /**}}, auth: public}}]\n", file="<test>"
    )
    app = GatewayApp(build_policy(cfg))
    with ServerThread(app) as server:  # uvicorn's stock httptools protocol
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /events?gate=never HTTP/1.1\r\nHost: gw\r\n\r\n")
        got = b""
        while b"data: 1" not in got:
            got += sock.recv(4096)
        seen = upstream.seen[-1]
        left = time.monotonic()
        sock.close()
        deadline = time.monotonic() + 5
        while seen.disconnected_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen.disconnected_at is not None and seen.disconnected_at - left < 2
