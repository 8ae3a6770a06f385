"""Forward an allowed request to its upstream and stream the answer back.

The forwarder builds the upstream request from scratch: the client's headers minus hop-by-hop
headers (and every header ``Connection`` nominates), minus every spoofable identity header,
then the gateway's own forwarding, identity and request-id headers (:class:`HeaderPlan`). The
target is the exact canonical path the route was matched on (after the route's prefix rewrite)
plus the raw query string, written byte for byte: nothing re-resolves it on the way.

Bodies stream both ways through :class:`~gateway.proxy.pool.UpstreamPool`, never buffered
whole; the body limit is enforced while streaming (and before reading anything when the
declared ``Content-Length`` is already over it). The client's framing headers are never
forwarded: the pool re-derives ``Content-Length`` or chunked framing from what it sends.

A client that goes away cancels the upstream exchange: its connection is closed, never reused.
Under the gateway's own protocol (:mod:`gateway.proxy.protocol`) the connection's loss cancels
the exchange directly; under another ASGI server a watcher task waits on ``receive()``, started
only when the exchange is still running a few milliseconds after it began.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.asgi_types import Receive, Scope, Send
from gateway.auth.extract import BodyCredentialScanner, body_scanner
from gateway.errors import CredentialsMalformed, LimitExceeded, RequestError, RequestTimeout, UpstreamError
from gateway.proxy.headers import (
    FORWARDED_PREFIX,
    FORWARDING_HEADERS,
    HOP_BY_HOP,
    MAX_CACHED_NAME,
    METHOD_OVERRIDES,
    REGENERATED_FORWARDING,
    nominated_names,
)
from gateway.proxy.pool import Origin, UpstreamPool
from gateway.proxy.protocol import GatewayCycle

__all__ = ["ForwardResult", "Forwarder", "HeaderPlan"]

_REQUEST_ID = b"x-request-id"
_HOST = b"host"
_CONNECTION = b"connection"
#: Dropped from every client request: hop-by-hop, framing (re-derived), Host (the upstream's
#: or, with preserve_host, re-set), the client's request id (the gateway sets its own), method overrides.
_ALWAYS_DROPPED = HOP_BY_HOP | METHOD_OVERRIDES | {b"content-length", _HOST, _REQUEST_ID}
_DROP_FROM_TRUSTED = _ALWAYS_DROPPED | REGENERATED_FORWARDING
_DROP_FROM_UNTRUSTED = _ALWAYS_DROPPED | FORWARDING_HEADERS
_NAME_CACHE_MAX = 1024
#: A response still running after this long gets a disconnect watcher.
WATCH_AFTER = 0.005
_START = "http.response.start"
_BODY = "http.response.body"


class HeaderPlan:
    """Which client headers cross, for one policy: one pass per request, decisions cached.

    Removes hop-by-hop headers and every header ``Connection`` nominates *before* the gateway
    adds its own (so ``Connection: X-User-Id`` cannot delete a gateway-set header), the client's
    ``Content-Length``/``Transfer-Encoding``/``Host``/``X-Request-Id``, its forwarding headers
    (regenerated; ``X-Forwarded-Port/-Prefix`` and ``X-Real-IP`` kept only from a trusted
    proxy), and everything ``drops_inbound`` says is spoofable (claim headers, prefixes,
    underscores, the token header...).
    """

    __slots__ = ("_drops_inbound", "_from_trusted", "_from_untrusted")

    def __init__(self, drops_inbound: Callable[[bytes], bool]) -> None:
        self._drops_inbound = drops_inbound
        # Name -> dropped, one table per kind of peer. Names come from a small vocabulary;
        # bounded anyway.
        self._from_trusted: dict[bytes, bool] = {}
        self._from_untrusted: dict[bytes, bool] = {}

    def _drops(self, name: bytes, trusted_peer: bool) -> bool:
        cache = self._from_trusted if trusted_peer else self._from_untrusted
        drop = cache.get(name)
        if drop is None:
            drop = (
                name in (_DROP_FROM_TRUSTED if trusted_peer else _DROP_FROM_UNTRUSTED)
                or (not trusted_peer and name.startswith(FORWARDED_PREFIX))
                or self._drops_inbound(name)
            )
            if len(name) <= MAX_CACHED_NAME and len(cache) < _NAME_CACHE_MAX:
                cache[name] = drop
        return drop

    def build(
        self,
        client_headers: Sequence[tuple[bytes, bytes]],
        *,
        trusted_peer: bool,
        host: bytes,
        forwarding: Sequence[tuple[bytes, bytes]],
        claim_headers: Sequence[tuple[bytes, bytes]],
        request_id: bytes,
    ) -> list[tuple[bytes, bytes]]:
        """The upstream request headers: the client's that may cross, in order, then Host, the
        forwarding headers, the claim headers and the request id."""
        cache = self._from_trusted if trusted_peer else self._from_untrusted
        kept: list[tuple[bytes, bytes]] = []
        nominated: list[bytes] | None = None
        for item in client_headers:
            name = item[0]
            drop = cache.get(name)
            if drop is None:
                drop = self._drops(name, trusted_peer)
            if drop:
                if name == _CONNECTION:
                    if nominated is None:
                        nominated = []
                    nominated.append(item[1])
                continue
            kept.append(item)
        if nominated is not None:
            names = nominated_names(nominated)
            if names:
                kept = [item for item in kept if item[0] not in names]
        kept.append((_HOST, host))
        kept += forwarding
        kept += claim_headers
        kept.append((_REQUEST_ID, request_id))
        return kept


@dataclass(slots=True)
class ForwardResult:
    """What happened upstream, for the access log and metrics (filled while forwarding)."""

    upstream_status: int | None = None
    upstream_seconds: float = 0.0
    #: The response head went to the client: a failure now can only abort the connection.
    response_started: bool = False
    #: True when the response started but could not be completed (client or upstream abort).
    aborted: bool = False


class Forwarder:
    """Streams requests to upstreams through one shared connection pool."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        result: ForwardResult,
        origin: Origin,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        retry_connect: bool,
        max_body_bytes: int | None,
        body_timeout: float | None = None,
        refuse_body_credentials: bool = False,
    ) -> None:
        """Send the request upstream with the client's body; stream the response to ``send``.

        Raises a :class:`~gateway.errors.GatewayError` when nothing has been sent to the client
        yet (``result.response_started`` is false: the caller renders it); once the response
        has started, failures are raised too and the caller must abort the client connection
        (never a silent truncation under a 200). A client that disconnects ends the exchange
        quietly (``result.aborted``).
        """
        content_length, has_body = _framing(scope["headers"])
        if content_length is not None and max_body_bytes is not None and content_length > max_body_bytes:
            # Refused before reading a byte of it.
            raise LimitExceeded(f"the request body exceeds {max_body_bytes} bytes")
        body = None
        if has_body:
            scanner = body_scanner(scope["headers"]) if refuse_body_credentials else None
            body = _Body(receive, content_length, max_body_bytes, body_timeout, scanner)
        # The gateway's own protocol cancels this task when the client goes away (no cost per
        # request); under another ASGI server a lazily armed watcher does it.
        owner = getattr(receive, "__self__", None)
        cycle = owner if isinstance(owner, GatewayCycle) else None
        watch: _DisconnectWatch | None = None
        if cycle is not None:
            cycle.watcher = cycle.task or asyncio.current_task()
        else:
            watch = _DisconnectWatch(receive, body)
        started = time.perf_counter()
        try:
            response = await self.pool.request(
                origin,
                method,
                target,
                headers,
                body.iterate() if body is not None else None,
                content_length=content_length,
                retry_connect=retry_connect,
            )
            try:
                result.upstream_status = status = response.status
                result.response_started = True
                headers = response.end_to_end_headers()
                if not response.has_body():
                    whole: bytes | None = b""
                elif response.body_received:
                    # The whole body came with the head (the common small answer).
                    whole = response.take_body()
                else:
                    whole = None
                if whole is None:
                    await send({"type": _START, "status": status, "headers": headers})
                    await self._stream(response, send, result)
                elif cycle is None or not cycle.finish_parsed(
                    status, headers, response.content_length, whole
                ):
                    # Under another ASGI server (or while the client is not reading): messages.
                    await send({"type": _START, "status": status, "headers": headers})
                    await send({"type": _BODY, "body": whole, "more_body": False})
            finally:
                response.close()
        except asyncio.CancelledError:
            ours = cycle.cancelled_by_disconnect if cycle is not None else watch is not None and watch.fired
            if not ours:
                raise
            # Our own cancellation: the client went away. The upstream response was closed
            # above without being read to its end, so its connection is not reused.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            result.aborted = True
        finally:
            if cycle is not None:
                cycle.watcher = None
            elif watch is not None:
                watch.stop()
            result.upstream_seconds = time.perf_counter() - started

    @staticmethod
    async def _stream(response: Any, send: Send, result: ForwardResult) -> None:
        # The last chunk carries more_body=False: no extra empty message.
        try:
            done = False
            while not done:
                chunk = await response.read_chunk()
                done = not chunk or response.at_eof
                if chunk or done:
                    await send({"type": _BODY, "body": chunk, "more_body": not done})
        except UpstreamError:
            result.aborted = True
            raise


class _DisconnectWatch:
    """Cancels the forwarding task when the client disconnects, once armed.

    Armed lazily by a timer (one ``call_later`` per request, no task): after ``WATCH_AFTER``
    seconds, if the request body has been read, a task waits on ``receive()`` (which then
    resolves only on disconnect or at the end of the response) and cancels the forwarder.
    """

    __slots__ = ("_body", "_receive", "_stopped", "_task", "_timer", "_watcher", "fired")

    def __init__(self, receive: Receive, body: _Body | None) -> None:
        self._receive = receive
        self._body = body
        self._task = asyncio.current_task()
        self._watcher: asyncio.Future[Any] | None = None
        self._stopped = False
        self.fired = False
        loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = loop.call_later(WATCH_AFTER, self._arm)

    def _arm(self) -> None:
        self._timer = None
        body = self._body
        if body is not None and not body.done:
            # Still uploading: receive() belongs to the body reader (which sees a disconnect).
            self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER * 20, self._arm)
            return
        watcher = asyncio.ensure_future(_disconnected(self._receive))
        watcher.add_done_callback(self._gone)
        self._watcher = watcher

    def _gone(self, watcher: asyncio.Future[Any]) -> None:
        # A done callback already scheduled when stop() ran still runs: the flag stops it.
        if self._stopped or watcher.cancelled() or self._task is None:
            return
        self.fired = True
        self._task.cancel()

    def stop(self) -> None:
        """Disarm (the exchange is over): no cancellation can come from here afterwards."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        watcher = self._watcher
        if watcher is not None:
            self._watcher = None
            watcher.remove_done_callback(self._gone)
            if not watcher.done():
                watcher.cancel()


async def _disconnected(receive: Receive) -> None:
    """Return once the client has disconnected (or the response is complete).

    A request without a body still has its one empty ``http.request`` message to hand out.
    """
    while (await receive())["type"] != "http.disconnect":
        pass


class _Body:
    """The client's request body as an async iterator, with limits checked while streaming:
    its size, and how long it may pause between two pieces (``idle_timeout``, seconds)."""

    __slots__ = ("content_length", "done", "idle_timeout", "limit", "receive", "scanner", "seen")

    def __init__(
        self,
        receive: Receive,
        content_length: int | None,
        limit: int | None,
        idle_timeout: float | None = None,
        scanner: BodyCredentialScanner | None = None,
    ) -> None:
        self.receive = receive
        self.scanner = scanner
        self.content_length = content_length
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.seen = 0
        self.done = False

    async def iterate(self) -> AsyncIterator[bytes]:
        """Yield the body's chunks as they arrive."""
        while not self.done:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    message = await self.receive()
            except TimeoutError:
                # A client trickling its body (or never sending what it announced) would hold a
                # gateway slot and an upstream connection for as long as it likes.
                raise RequestTimeout(
                    f"the request body paused for more than {self.idle_timeout:g} s", reason="body_timeout"
                ) from None
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
                if self.scanner is not None and self.scanner.feed(chunk):
                    # Refused before this chunk (the one carrying the token) goes upstream.
                    raise CredentialsMalformed(
                        "a token in the request body is not accepted here: send it in the "
                        "Authorization header",
                        reason="credentials_in_body",
                    )
                yield chunk


def _framing(headers: list[tuple[bytes, bytes]]) -> tuple[int | None, bool]:
    """(content length, has body) from the client's framing headers, re-derived, never copied.

    The ASGI server (llhttp, strict) has already refused conflicting or malformed framing
    (CL with TE, duplicate or signed lengths, TE other than a final ``chunked``); what remains
    is a Content-Length, a chunked body, or no body at all.
    """
    length: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise RequestError("invalid Content-Length", reason="invalid_content_length") from None
        elif name == b"transfer-encoding":
            chunked = True
    if chunked:
        return None, True
    if length is not None:
        return length, length > 0
    return None, False
