"""Forward an allowed request to its upstream and stream the answer back.

The forwarder builds the upstream request from scratch: the client's headers minus hop-by-hop
headers (and every header ``Connection`` nominates), minus every spoofable identity header,
then the gateway's own forwarding, identity and request-id headers. The target is the exact
canonical path the route was matched on (after the route's prefix rewrite) plus the raw query
string, written byte for byte: nothing re-resolves it on the way.

Bodies stream both ways through :class:`~gateway.proxy.pool.UpstreamPool`; size limits are
enforced while streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.asgi_types import Receive, Scope, Send
from gateway.errors import LimitExceeded, RequestError, UpstreamError
from gateway.proxy.headers import Forwarding, TrustedProxies, strip_hop_by_hop_response, strip_request_headers
from gateway.proxy.pool import Origin, UpstreamPool

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_REQUEST_ID = b"x-request-id"


@dataclass(slots=True)
class ForwardResult:
    """What happened upstream, for the access log and metrics."""

    upstream_status: int | None = None
    upstream_seconds: float = 0.0
    #: True when the response started but could not be completed (client or upstream abort).
    aborted: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """Everything the forwarder needs besides the ASGI channel, prepared by the caller."""

    origin: Origin
    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    retry_connect: bool


def build_headers(
    client_headers: Sequence[tuple[bytes, bytes]],
    *,
    strip_inbound: Callable[[list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]],
    forwarding: Forwarding,
    claim_headers: list[tuple[bytes, bytes]],
    request_id: bytes,
    host: bytes,
) -> list[tuple[bytes, bytes]]:
    """Assemble upstream request headers, in the only safe order.

    Hop-by-hop removal (and every header ``Connection`` nominates) runs on the client's list
    *before* the gateway adds its own headers, so ``Connection: X-User-Id`` can never delete a
    gateway-set header; the client's forwarding headers go too (the gateway regenerates them
    from the real peer); then every spoofable identity header; then the gateway's own.
    """
    headers = strip_request_headers(client_headers, trusted_peer=forwarding.trusted_peer)
    headers = strip_inbound(headers)
    headers = [h for h in headers if h[0] != _REQUEST_ID]
    headers.append((b"host", host))
    headers.extend(forwarding.headers)
    headers.extend(claim_headers)
    headers.append((_REQUEST_ID, request_id))
    return headers


class Forwarder:
    """Streams requests to upstreams through one shared connection pool."""

    def __init__(
        self,
        pool: UpstreamPool,
        *,
        trusted: TrustedProxies,
        max_body_bytes: int | None,
        retry_on_connect_failure: bool,
    ) -> None:
        self.pool = pool
        self.trusted = trusted
        self.max_body_bytes = max_body_bytes
        self.retry_on_connect_failure = retry_on_connect_failure

    def retry_allowed(self, method: str) -> bool:
        """A connect failure may be retried once for idempotent methods, when configured."""
        return self.retry_on_connect_failure and method in _IDEMPOTENT

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, request: UpstreamRequest
    ) -> ForwardResult:
        """Send ``request`` upstream with the client's body; stream the response to ``send``.

        Raises a :class:`~gateway.errors.GatewayError` when nothing has been sent to the client
        yet (the caller renders it); once the response has started, failures abort the client
        connection instead (never a silent truncation under a 200).
        """
        result = ForwardResult()
        content_length, has_body = _framing(scope["headers"])
        if (
            content_length is not None
            and self.max_body_bytes is not None
            and content_length > self.max_body_bytes
        ):
            raise LimitExceeded(f"the request body exceeds {self.max_body_bytes} bytes")
        state = _Body(receive, content_length, self.max_body_bytes)
        body = state.iterate() if has_body else None
        started = time.perf_counter()
        response = await self.pool.request(
            request.origin,
            request.method,
            request.target,
            request.headers,
            body,
            content_length=content_length,
            retry_connect=request.retry_connect,
        )
        result.upstream_status = response.status
        watcher: asyncio.Future[Any] | None = None
        current = asyncio.current_task()

        def client_gone(_future: asyncio.Future[Any]) -> None:
            if current is not None:
                current.cancel()

        try:
            # Once the body is consumed, a pending receive() resolves only on disconnect: use it
            # to cancel the upstream exchange as soon as the client goes away.
            if current is not None and (body is None or state.done):
                watcher = asyncio.ensure_future(receive())
                watcher.add_done_callback(client_gone)
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": strip_hop_by_hop_response(response.headers),
                }
            )
            try:
                if response.has_body():
                    # The last chunk carries more_body=False: no extra empty message.
                    done = False
                    while not done:
                        chunk = await response.read_chunk()
                        done = not chunk or response.at_eof
                        if chunk or done:
                            await send({"type": "http.response.body", "body": chunk, "more_body": not done})
                else:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except UpstreamError:
                result.aborted = True
                raise
        except asyncio.CancelledError:
            if watcher is None or not watcher.done() or current is None:
                raise
            # Our own cancellation: the client went away. Closing the upstream response below
            # frees its connection (it is not reused: the body was not read to the end).
            current.uncancel()
            result.aborted = True
        finally:
            if watcher is not None and not watcher.done():
                watcher.remove_done_callback(client_gone)
                watcher.cancel()
            result.upstream_seconds = time.perf_counter() - started
            await response.aclose()
        return result


class _Body:
    """The client's request body as an async iterator, with limits checked while streaming."""

    __slots__ = ("content_length", "done", "limit", "receive", "seen")

    def __init__(self, receive: Receive, content_length: int | None, limit: int | None) -> None:
        self.receive = receive
        self.content_length = content_length
        self.limit = limit
        self.seen = 0
        self.done = False

    async def iterate(self) -> AsyncIterator[bytes]:
        """Yield the body's chunks as they arrive."""
        while not self.done:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise RequestError(
                    "the client disconnected while sending the body", reason="client_disconnected"
                )
            chunk = message.get("body", b"")
            self.seen += len(chunk)
            if self.limit is not None and self.seen > self.limit:
                raise LimitExceeded(f"the request body exceeds {self.limit} bytes")
            if not message.get("more_body", False):
                self.done = True
            if chunk:
                yield chunk


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """(content length, has body) from the client's framing headers, re-derived, never copied.

    The ASGI server (httptools) has already refused conflicting framing; what remains is a
    Content-Length, a chunked body, or no body at all.
    """
    length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            with contextlib.suppress(ValueError):
                length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    if chunked:
        return None, True
    if length is not None:
        return length, length > 0
    return None, False
