"""WebSocket proxying: the upstream handshake and the message relay.

The client's side of a WebSocket is uvicorn's (ASGI ``websocket`` messages); the upstream's side
is a connection of the pool taken over after ``101 Switching Protocols``
(:meth:`~gateway.proxy.http1.UpstreamResponse.detach`), framed here with websockets' sans-I/O
:class:`~websockets.protocol.Protocol` as a client. Messages are relayed whole, both ways.

The handshake towards the upstream is the gateway's own: a fresh ``Sec-WebSocket-Key`` (the
answer's ``Sec-WebSocket-Accept`` is checked), no extensions offered (compression is negotiated
between the client and the gateway), and the client's subprotocols passed on, minus the token
entries of :func:`split_subprotocols`. The upstream's choice must be one the client offered.

Token in ``Sec-WebSocket-Protocol`` (browsers cannot set ``Authorization`` on a WebSocket),
when a provider opts in with ``token.websocket_protocol: true``: the client offers the entry
``bearer.<token>`` (the compact JWT is a valid subprotocol token as it is), and may offer the
bare entry ``bearer`` as well. Both are removed before the handshake goes upstream. When the
upstream selects no subprotocol and the client offered ``bearer``, the gateway selects
``bearer``: some browsers fail a handshake that offered subprotocols and got none back.

Close codes: the client's close code goes upstream (``1001`` when the client vanished without
one); the upstream's goes to the client (``1000`` when its close frame had none). An upstream
that breaks the protocol or drops the connection without a close frame closes the client's
side with ``1014`` (bad gateway); a session whose token expires is closed with ``1008``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

from gateway.asgi_types import Receive, Send
from gateway.errors import CredentialsMalformed, UpstreamError
from gateway.proxy.http1 import UpgradedStream, UpstreamResponse

__all__ = [
    "TOKEN_MARKER",
    "TOKEN_PREFIX",
    "RelayOutcome",
    "check_handshake",
    "relay",
    "split_subprotocols",
    "upstream_handshake_headers",
]

#: A subprotocol entry ``bearer.<token>`` carries the token (compared case-insensitively).
TOKEN_PREFIX = "bearer."  # noqa: S105 - a marker, not a secret
#: The bare entry a client may offer so that the gateway has a subprotocol to select.
TOKEN_MARKER = "bearer"  # noqa: S105 - a marker, not a secret

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Client handshake headers the gateway re-derives for its own handshake with the upstream.
_HANDSHAKE_HEADERS = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"sec-websocket-accept",
    }
)
_UNSENDABLE = frozenset({1005, 1006, 1015})
_BAD_GATEWAY = 1014
_POLICY_VIOLATION = 1008
_GOING_AWAY = 1001
#: How long a closing handshake may take before the connection is dropped anyway.
_CLOSE_GRACE = 5.0


def split_subprotocols(offered: Sequence[str]) -> tuple[str | None, list[str], bool]:
    """(token, subprotocols to pass upstream, ``bearer`` marker offered) from the client's list.

    Raises :class:`~gateway.errors.CredentialsMalformed` (``multiple_credentials``) when more
    than one ``bearer.<token>`` entry is offered.
    """
    token: str | None = None
    rest: list[str] = []
    marker = False
    for entry in offered:
        lowered = entry[:7].lower()
        if lowered == TOKEN_PREFIX:
            if token is not None:
                raise CredentialsMalformed(
                    "the request presents more than one credential", reason="multiple_credentials"
                )
            token = entry[7:]
        elif entry.lower() == TOKEN_MARKER:
            marker = True
        else:
            rest.append(entry)
    return token, rest, marker


def upstream_handshake_headers(
    headers: Sequence[tuple[bytes, bytes]], subprotocols: Sequence[str]
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(headers, key): ``headers`` (already stripped for forwarding) plus the gateway's own
    handshake fields. The pool adds ``Connection: upgrade`` and ``Upgrade: websocket``."""
    key = base64.b64encode(os.urandom(16))
    out = [item for item in headers if item[0] not in _HANDSHAKE_HEADERS]
    out.append((b"sec-websocket-key", key))
    out.append((b"sec-websocket-version", b"13"))
    if subprotocols:
        out.append((b"sec-websocket-protocol", ", ".join(subprotocols).encode("latin-1")))
    return out, key


def check_handshake(response: UpstreamResponse, key: bytes, offered: Sequence[str]) -> str | None:
    """The subprotocol the upstream selected, after checking its ``101`` answer.

    Raises :class:`~gateway.errors.UpstreamError` (``upstream_websocket_handshake``) for a
    wrong ``Sec-WebSocket-Accept``, an extension the gateway did not offer, or a subprotocol
    the client did not offer.
    """
    expected = base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 - RFC 6455
    accept: bytes | None = None
    selected: str | None = None
    for name, value in response.headers:
        if name == b"sec-websocket-accept":
            accept = value.strip()
        elif name == b"sec-websocket-extensions":
            raise _handshake_error("the upstream selected an extension that was not offered")
        elif name == b"sec-websocket-protocol":
            if selected is not None:
                raise _handshake_error("the upstream selected more than one subprotocol")
            selected = value.strip().decode("latin-1")
    if accept != expected:
        raise _handshake_error("the upstream's Sec-WebSocket-Accept does not match")
    if selected is not None and selected not in offered:
        raise _handshake_error("the upstream selected a subprotocol that was not offered")
    return selected


def _handshake_error(detail: str) -> UpstreamError:
    return UpstreamError(detail, reason="upstream_websocket_handshake")


@dataclass(slots=True)
class RelayOutcome:
    """How a relayed session ended, for the access log."""

    #: ``client_closed``, ``upstream_closed``, ``token_expired``, ``upstream_failed``.
    reason: str
    close_code: int | None = None


class _Relay:
    """One session: client messages upstream, upstream messages to the client."""

    def __init__(self, receive: Receive, send: Send, stream: UpgradedStream, max_size: int | None) -> None:
        self.receive = receive
        self.send = send
        self.stream = stream
        self.upstream = Protocol(Side.CLIENT, max_size=max_size)
        self.client_open = True

    async def flush(self) -> None:
        """Write whatever the upstream protocol has queued (frames, pongs, close echoes)."""
        data = b"".join(self.upstream.data_to_send())
        if data and not self.stream.closed:
            await self.stream.write(data)

    async def close_client(self, code: int, reason: str = "") -> None:
        if self.client_open:
            self.client_open = False
            with contextlib.suppress(Exception):  # the client may already be gone
                await self.send({"type": "websocket.close", "code": code, "reason": reason})

    async def close_upstream(self, code: int | None, reason: str = "") -> None:
        upstream = self.upstream
        if upstream.close_sent is None and upstream.close_rcvd is None:
            with contextlib.suppress(Exception):
                upstream.send_close(code, reason)
                await self.flush()

    async def client_to_upstream(self) -> int:
        """Relay client messages until the client disconnects; return its close code."""
        upstream = self.upstream
        while True:
            message = await self.receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    upstream.send_text(text.encode("utf-8"))
                else:
                    upstream.send_binary(message.get("bytes") or b"")
                await self.flush()
            elif kind == "websocket.disconnect":
                self.client_open = False
                code: int = message.get("code", 1005)
                return code

    async def upstream_to_client(self) -> RelayOutcome:
        """Relay upstream messages until it closes; return how it ended."""
        upstream = self.upstream
        parts: list[bytes] = []
        opcode = Opcode.BINARY
        while True:
            data = await self.stream.read()
            if data:
                upstream.receive_data(data)
            else:
                upstream.receive_eof()
            for event in upstream.events_received():
                assert isinstance(event, Frame)
                if event.opcode is Opcode.TEXT or event.opcode is Opcode.BINARY:
                    opcode = event.opcode
                    parts = [bytes(event.data)]
                elif event.opcode is Opcode.CONT:
                    parts.append(bytes(event.data))
                else:
                    continue  # ping (answered by the protocol), pong, close (below)
                if event.fin:
                    payload = parts[0] if len(parts) == 1 else b"".join(parts)
                    parts = []
                    if not await self._to_client(opcode, payload):
                        return RelayOutcome("upstream_failed", _BAD_GATEWAY)
            await self.flush()
            if upstream.close_rcvd is not None:
                code = upstream.close_rcvd.code
                code = 1000 if code in _UNSENDABLE else code
                await self.close_client(code, upstream.close_rcvd.reason)
                return RelayOutcome("upstream_closed", code)
            if upstream.parser_exc is not None or not data:
                await self.close_client(_BAD_GATEWAY)
                return RelayOutcome("upstream_failed", _BAD_GATEWAY)

    async def _to_client(self, opcode: Opcode, payload: bytes) -> bool:
        message: dict[str, Any] = {"type": "websocket.send"}
        if opcode is Opcode.TEXT:
            try:
                message["text"] = payload.decode("utf-8")
            except UnicodeDecodeError:
                await self.close_upstream(1007, "invalid UTF-8")
                await self.close_client(_BAD_GATEWAY)
                return False
        else:
            message["bytes"] = payload
        await self.send(message)
        return True


async def relay(
    receive: Receive,
    send: Send,
    stream: UpgradedStream,
    *,
    expires_at: float | None,
    max_size: int | None = 16 * 1024 * 1024,
) -> RelayOutcome:
    """Relay an accepted WebSocket session both ways until one side closes or ``expires_at``
    (Unix time, the token's ``exp``) passes; then close the other side and the upstream
    connection. Never raises for the peers' faults."""
    session = _Relay(receive, send, stream, max_size)
    from_client = asyncio.ensure_future(session.client_to_upstream())
    from_upstream = asyncio.ensure_future(session.upstream_to_client())
    timeout = None if expires_at is None else max(0.0, expires_at - time.time())
    outcome: RelayOutcome
    try:
        done, _ = await asyncio.wait(
            (from_client, from_upstream), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if from_upstream in done and from_upstream.exception() is None:
            outcome = from_upstream.result()
        elif from_client in done and from_client.exception() is None:
            code = from_client.result()
            await session.close_upstream(_GOING_AWAY if code in _UNSENDABLE else code)
            outcome = RelayOutcome("client_closed", code)
            # Give the upstream time to answer the close (its echo ends upstream_to_client).
            await asyncio.wait((from_upstream,), timeout=_CLOSE_GRACE)
        elif done:
            # Writing to or reading from the upstream failed (connection lost, write timeout).
            outcome = RelayOutcome("upstream_failed", _BAD_GATEWAY)
            await session.close_client(_BAD_GATEWAY)
        else:
            outcome = RelayOutcome("token_expired", _POLICY_VIOLATION)
            await session.close_client(_POLICY_VIOLATION, "token expired")
            await session.close_upstream(_GOING_AWAY, "token expired")
    finally:
        for task in (from_client, from_upstream):
            if not task.done():
                task.cancel()
        for task in (from_client, from_upstream):
            with contextlib.suppress(BaseException):
                await task
        await stream.aclose()
    return outcome
