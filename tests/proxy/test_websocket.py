"""The WebSocket handshake helpers: subprotocol token entries and the upstream's 101 checks."""

from __future__ import annotations

import base64
import hashlib

import pytest

from gateway.errors import CredentialsMalformed, UpstreamError
from gateway.proxy.websocket import check_handshake, split_subprotocols, upstream_handshake_headers

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@pytest.mark.parametrize(
    ("offered", "token", "rest", "marker"),
    [
        ([], None, [], False),
        (["chat.v1", "chat.v2"], None, ["chat.v1", "chat.v2"], False),
        (["bearer.abc.def.ghi"], "abc.def.ghi", [], False),
        (["bearer", "bearer.abc.def.ghi"], "abc.def.ghi", [], True),
        (["chat.v1", "Bearer.xyz", "BEARER"], "xyz", ["chat.v1"], True),
        (["bearer"], None, [], True),
        (["bearerx.abc", "bearers"], None, ["bearerx.abc", "bearers"], False),
    ],
)
def test_split_subprotocols(offered: list[str], token: str | None, rest: list[str], marker: bool) -> None:
    assert split_subprotocols(offered) == (token, rest, marker)


def test_two_token_entries_are_two_credentials() -> None:
    with pytest.raises(CredentialsMalformed) as info:
        split_subprotocols(["bearer.a.b.c", "bearer.d.e.f"])
    assert info.value.reason == "multiple_credentials"


def test_upstream_handshake_headers_are_the_gateways_own() -> None:
    client = [
        (b"host", b"up"),
        (b"sec-websocket-key", b"client-key=="),
        (b"sec-websocket-version", b"8"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"sec-websocket-protocol", b"bearer.secret"),
        (b"origin", b"https://app.example"),
    ]
    headers, key = upstream_handshake_headers(client, ["chat.v1", "chat.v2"])
    assert len(base64.b64decode(key)) == 16 and key != b"client-key=="
    assert headers == [
        (b"host", b"up"),
        (b"origin", b"https://app.example"),
        (b"sec-websocket-key", key),
        (b"sec-websocket-version", b"13"),
        (b"sec-websocket-protocol", b"chat.v1, chat.v2"),
    ]
    bare, _ = upstream_handshake_headers(client, [])
    assert not any(name == b"sec-websocket-protocol" for name, _ in bare)


class Answer:
    """Stands in for an UpstreamResponse: only its headers are read."""

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())  # noqa: S324 - RFC 6455


def test_a_correct_101_yields_the_selected_subprotocol() -> None:
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    assert check_handshake(Answer([(b"sec-websocket-accept", accept_for(key))]), key, []) is None
    answer = Answer([(b"sec-websocket-accept", accept_for(key)), (b"sec-websocket-protocol", b"chat.v2")])
    assert check_handshake(answer, key, ["chat.v1", "chat.v2"]) == "chat.v2"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"sec-websocket-accept", b"wrong")],
        [(b"sec-websocket-accept", b"ACCEPT"), (b"sec-websocket-extensions", b"permessage-deflate")],
        [(b"sec-websocket-accept", b"ACCEPT"), (b"sec-websocket-protocol", b"chat.v9")],
        [
            (b"sec-websocket-accept", b"ACCEPT"),
            (b"sec-websocket-protocol", b"chat.v1"),
            (b"sec-websocket-protocol", b"chat.v1"),
        ],
    ],
    ids=["no_accept", "wrong_accept", "extension", "unoffered_subprotocol", "two_subprotocols"],
)
def test_a_bad_101_is_refused(headers: list[tuple[bytes, bytes]]) -> None:
    key = b"dGhlIHNhbXBsZSBub25jZQ=="
    headers = [(n, accept_for(key) if v == b"ACCEPT" else v) for n, v in headers]
    with pytest.raises(UpstreamError) as info:
        check_handshake(Answer(headers), key, ["chat.v1"])  # type: ignore[arg-type]
    assert info.value.reason == "upstream_websocket_handshake"
