"""The client-facing HTTP/1.1 protocol: uvicorn's httptools protocol, hardened and trimmed.

uvicorn's :class:`~uvicorn.protocols.http.httptools_impl.HttpToolsProtocol` has no limit on the
size of a request head and no timeout for reading it (security-catalogue 6.6): a client can
send a megabyte of header lines, or trickle one byte every few seconds and hold a connection
forever (slowloris). :func:`hardened_protocol` returns a subclass that adds, at no measurable
cost per request:

- a **head size limit**: the request line is counted as llhttp hands it over, the header
  fields once the head is complete (one C pass over the parsed fields, so a huge head arriving
  in one read is refused too; until then it is bounded by that read), and the raw bytes of a
  head that is still incomplete after a read are counted as well (a field that never ends).
  Beyond ``max_head_bytes`` the client gets ``431`` and the connection is closed;
- a **head timeout**: the whole head must arrive within ``head_timeout`` seconds of its first
  byte (for a new connection: of the connection). One timer per *connection*, re-armed lazily,
  checks timestamps that each request only writes; the same timer enforces uvicorn's keep-alive
  idle timeout (uvicorn schedules and cancels a timer per request). A late head gets ``408``;
- **origin-form targets only**: an absolute-form (``GET http://other/``) or authority-form
  (``CONNECT host:443``) target is ``400``: a gateway is no forward proxy;
- **no protocol switch except WebSocket**: any other ``Upgrade`` (``h2c``...) is answered as a
  plain HTTP/1.1 request (the proxy never forwards ``Upgrade``) and the connection is closed
  after the answer, so bytes sent after the head are never parsed as a request;
- **trailers stay trailers**: uvicorn appends the trailer fields of a chunked body to the
  request's header list (the very list the app reads); here they are dropped;
- ``400`` (malformed request, also when the body's framing breaks after a good head), ``408``
  and ``431`` answers are the gateway's problem+json bodies, pre-rendered by the caller (this
  layer does not import the HTTP edge).

Each request's :class:`GatewayCycle` writes the response head together with the first body
bytes (one write, one segment), checks the head at C speed, lets 204/304 keep their
Content-Length, and tells the forwarder at once when the client disconnects. A response whose
whole body is at hand goes out through :meth:`GatewayCycle.finish`: one call, one write, no
ASGI messages. The cycle is built lean (positional arguments, constant state as class
defaults, a one-waiter event instead of :class:`asyncio.Event`): it is made for every request.

The rest (parsing with llhttp in strict mode, pipelining, keep-alive, flow control, WebSocket
hand-over) is uvicorn's.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from gateway.proxy.headers import MAX_CACHED_NAME, fields_size

__all__ = [
    "GatewayCycle",
    "HardenedHttpToolsProtocol",
    "ProtocolLimits",
    "QuietWebSocketProtocol",
    "hardened_protocol",
]

log = logging.getLogger("jwt_gateway")

# uvicorn's WebSocket protocol logs every handshake at INFO with the path *and query string*,
# which may hold a token (``token.query``). Its diagnostics go to a logger that passes only
# warnings and errors on to the gateway's handlers.
_WS_LOG = logging.Logger("jwt_gateway.websocket", logging.WARNING)
_WS_LOG.parent = log

_NO_BODY_STATUS = frozenset({204, 304})
_CRLF = b"\r\n"
_COLON = b": "
_LAST_CHUNK = b"0\r\n\r\n"
_JOIN_FIELD = b": ".join
_JOIN_LINES = b"\r\n".join
_SPECIAL_RESPONSE_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})
#: Control bytes allowed nowhere in a response head (HTAB is allowed; CR and LF are counted).
_HEAD_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
#: Lower-case response header names already checked to be tokens (a small vocabulary).
_KNOWN_NAMES: set[bytes] = set()
_KNOWN_NAMES_MAX = 4096


class _HeadTooLarge(Exception):
    """Raised inside an llhttp callback to stop parsing a head that is over the limit."""


class _NotOriginForm(Exception):
    """Raised inside an llhttp callback for a request target that is not origin-form."""


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    """Limits of the client-facing protocol, and the answers it gives when one is hit.

    ``responses`` maps 400, 408 and 431 to complete HTTP/1.1 responses (status line, headers
    including ``Connection: close``, body), written as they are before the connection closes.
    """

    max_head_bytes: int
    head_timeout: float
    responses: Mapping[int, bytes]

    def __post_init__(self) -> None:
        if self.max_head_bytes < 1024:
            raise ValueError("max_head_bytes must be at least 1 KiB")
        if not self.head_timeout > 0:
            raise ValueError("head_timeout must be positive")
        missing = {400, 408, 431} - set(self.responses)
        if missing:
            raise ValueError(f"responses for {sorted(missing)} are missing")


class _RequestSignal(asyncio.Event):
    """:class:`asyncio.Event` for the request body's arrival, without its per-instance deque
    and loop binding (one is made per request; it rarely has a waiter)."""

    def __init__(self) -> None:  # no super().__init__(): the state is the two fields below
        self._value = False
        self._waiters: list[asyncio.Future[bool]] | None = None  # type: ignore[assignment]

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            waiters = self._waiters
            if waiters:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> Literal[True]:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = []
        waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            waiters.remove(waiter)


def _nothing() -> None:
    return None


class GatewayCycle(RequestResponseCycle):
    """uvicorn's request/response cycle with a leaner ``send`` and three additions.

    - ``send`` validates the response head at C speed once it is assembled (line ends counted,
      control bytes searched, header names checked against a cache of known tokens) instead of
      two regular-expression searches per header; it writes what uvicorn writes (names
      lower-cased, ``Connection: close`` / chunked framing added the same way) except uvicorn's
      own access log line (the gateway logs every request itself);
    - 204 and 304 may keep their Content-Length (no body follows, RFC 9110 §6.4.1);
    - a disconnect hook: while ``watcher`` holds a task, the client's disconnect cancels it at
      once and sets ``cancelled_by_disconnect``. The forwarder finds the cycle through
      ``receive.__self__``: no timer and no watcher task per request;
    - :meth:`finish`: a whole response in one synchronous call.
    """

    watcher: asyncio.Task[Any] | None = None
    #: The task running this cycle's ASGI app (set by the protocol when it starts it).
    task: asyncio.Task[Any] | None = None
    cancelled_by_disconnect = False
    #: The response head, written with the first body message (see _start).
    _head = b""
    loop: asyncio.AbstractEventLoop

    # The state every cycle starts with, as class attributes: set on the instance only once
    # it changes (uvicorn's __init__ assigns all of it, with keyword arguments, per request).
    access_log = False
    default_headers: list[tuple[bytes, bytes]] = []  # never mutated: _start copies it
    disconnected = False
    waiting_for_100_continue = False
    more_body = True
    response_started = False
    response_complete = False
    chunked_encoding: bool | None = None
    expected_content_length = 0

    def __init__(  # positional on purpose: built for every request
        self,
        scope: Any,
        transport: asyncio.Transport,
        flow: Any,
        logger: logging.Logger,
        default_headers: list[tuple[bytes, bytes]],
        expect_100_continue: bool,
        keep_alive: bool,
        on_response: Any,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.scope = scope
        self.transport = transport
        self.flow = flow
        self.logger = self.access_logger = logger
        if default_headers:
            self.default_headers = default_headers
        self.message_event = _RequestSignal()
        self.on_response = on_response
        self.keep_alive = keep_alive
        if expect_100_continue:
            self.waiting_for_100_continue = True
        self.body = bytearray()
        self.loop = loop

    async def run_asgi(self, app: Any) -> None:
        """uvicorn's ASGI exception wrapper (the same checks and log lines)."""
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self.send_500_response()
            else:
                self.transport.close()
        else:
            if result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
                self.transport.close()
            elif not self.response_started and not self.disconnected:
                self.logger.error("ASGI callable returned without starting response.")
                await self.send_500_response()
            elif not self.response_complete and not self.disconnected:
                self.logger.error("ASGI callable returned without completing response.")
                self.transport.close()
        finally:
            self.on_response = _nothing

    def finish(self, status: int, headers: Any, body: bytes) -> bool:
        """Send a whole response (head and complete body) at once, as an ``http.response.start``
        and a final ``http.response.body`` message would; ``False`` (nothing sent) when that
        cannot happen without waiting (the transport is paused) or the response has started."""
        if self.response_started or self.flow.write_paused or self.disconnected:
            return False
        self._start(status, headers, defer=False)
        self._body(body, False)
        return True

    def finish_parsed(
        self, status: int, headers: list[tuple[bytes, bytes]], content_length: int | None, body: bytes
    ) -> bool:
        """:meth:`finish` for an upstream's answer as :mod:`gateway.proxy.http1` parsed it.

        ``headers`` are its end-to-end fields (no hop-by-hop ones, so no Transfer-Encoding or
        Connection), with names lower-cased; llhttp (strict) has already refused names that
        are not tokens and values with control bytes or line ends, and checked the status;
        ``content_length`` is their Content-Length. The head is therefore assembled without
        inspecting each field again; it says what :meth:`_start` would say.
        """
        if self.default_headers:
            return self.finish(status, headers, body)
        if self.response_started or self.flow.write_paused or self.disconnected:
            return False
        self.response_started = True
        self.waiting_for_100_continue = False
        parts = [STATUS_LINE[status]]
        if headers:
            parts += (_JOIN_LINES(map(_JOIN_FIELD, headers)), _CRLF)
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        if status in _NO_BODY_STATUS:
            self.expected_content_length = 0
            self.chunked_encoding = False
        elif content_length is not None:
            self.expected_content_length = content_length
            self.chunked_encoding = False
        elif self.scope["method"] != "HEAD":
            self.chunked_encoding = True
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(_CRLF)
        self._head = b"".join(parts)
        self._body(body, False)
        return True

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    f"Expected ASGI message 'http.response.start', but got '{message['type']}'."
                )
            self._start(message["status"], message.get("headers", ()))
            return
        if self.response_complete:
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, after response already completed."
            )
        if message["type"] != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{message['type']}'.")
        self._body(message.get("body", b""), message.get("more_body", False))

    def _body(self, body: bytes, more_body: bool) -> None:
        transport = self.transport
        head = self._head
        if head:
            # The head goes out with the first body bytes: one write, one segment, one syscall.
            self._head = b""
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
            if head:
                transport.write(head)
        elif self.chunked_encoding:
            if body:
                frame = b"%x\r\n" % len(body)
                if more_body:
                    transport.write(b"".join((head, frame, body, _CRLF)))
                else:
                    transport.write(b"".join((head, frame, body, _CRLF, _LAST_CHUNK)))
            elif not more_body:
                transport.write(head + _LAST_CHUNK)
            elif head:
                transport.write(head)
        else:
            size = len(body)
            if size > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= size
            if head or body:
                transport.write(head + body if head else body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                transport.close()
            self.on_response()

    def _start(self, status: int, headers: Any, *, defer: bool = True) -> None:
        self.response_started = True
        self.waiting_for_100_continue = False
        if self.default_headers:
            headers = [*self.default_headers, *headers]
        parts = [STATUS_LINE[status]]
        lines = 2  # the status line and the blank line
        chunked: bool | None = None
        close = False
        known = _KNOWN_NAMES
        for name, value in headers:
            if name not in known:
                name = _checked_name(name)
            if name in _SPECIAL_RESPONSE_HEADERS:
                if name == b"content-length":
                    if chunked is None:
                        self.expected_content_length = int(value)
                        chunked = False
                elif name == b"transfer-encoding":
                    if value.lower() == b"chunked":
                        self.expected_content_length = 0
                        chunked = True
                elif b"close" in [token.strip().lower() for token in value.split(b",")]:
                    self.keep_alive = False
                    close = True
            parts += (name, _COLON, value, _CRLF)
            lines += 1
        if not self.keep_alive and not close:
            parts.append(b"connection: close\r\n")
            lines += 1
        if status in _NO_BODY_STATUS:
            # No body follows whatever Content-Length says (RFC 9110 §6.4.1).
            self.expected_content_length = 0
            chunked = False
        elif chunked is None and self.scope["method"] != "HEAD":
            chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
            lines += 1
        self.chunked_encoding = chunked
        parts.append(_CRLF)
        head = b"".join(parts)
        # Values were not inspected one by one: counting line ends over the whole head finds a
        # CR or LF inside a value (response splitting), the search any other control byte.
        if head.count(b"\n") != lines or head.count(b"\r") != lines or _HEAD_CONTROL.search(head):
            raise RuntimeError("Invalid HTTP header value.")
        # Held back until the first body message, or the end of this loop iteration at the
        # latest (a streamed response whose first bytes take their time still shows its head).
        self._head = head
        if defer:
            self.loop.call_soon(self._flush_head)

    def _flush_head(self) -> None:
        head = self._head
        if head:
            self._head = b""
            if not self.disconnected and not self.transport.is_closing():
                self.transport.write(head)

    def client_gone(self) -> None:
        """Called by the protocol when the connection is lost before the response completed."""
        task = self.watcher
        if task is not None:
            self.watcher = None
            self.cancelled_by_disconnect = True
            task.cancel()


def _checked_name(name: bytes) -> bytes:
    """``name`` lower-cased, once checked to be a token (known lower-case names are cached)."""
    if not _TOKEN.match(name):
        raise RuntimeError("Invalid HTTP header name.")
    name = name.lower()
    if len(name) <= MAX_CACHED_NAME and len(_KNOWN_NAMES) < _KNOWN_NAMES_MAX:
        _KNOWN_NAMES.add(name)
    return name


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a head size limit and a head timeout (see module doc).

    Use :func:`hardened_protocol` to get a subclass bound to a :class:`ProtocolLimits`.
    """

    limits: ClassVar[ProtocolLimits]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.limits
        self._max_head = limits.max_head_bytes
        self._head_timeout = limits.head_timeout
        #: Loop time the current head started (first byte), 0.0 when no head is being read.
        self._head_started = 0.0
        #: Bytes of the current head counted so far: fields as parsed, or raw reads.
        self._head_size = 0
        self._head_raw = 0
        self._read_size = 0
        self._fields_counted = False
        self._head_timer: asyncio.TimerHandle | None = None
        #: Loop time the connection went idle after a response (keep-alive), 0.0 otherwise.
        self._idle_since = 0.0
        self._upgrade_refused = False

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Waiting for the first head counts: a connection that sends nothing is cut off too.
        self._head_started = self.loop.time()
        self._head_timer = self.loop.call_later(self._head_timeout, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        cycle: RequestResponseCycle | None = self.cycle
        super().connection_lost(exc)
        if isinstance(cycle, GatewayCycle) and not cycle.response_complete:
            cycle.client_gone()

    def _check_head(self) -> None:
        # One timer per connection enforces both the head timeout and the keep-alive idle
        # timeout, from timestamps the request path only writes (uvicorn would schedule and
        # cancel a keep-alive timer for every request).
        self._head_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        timeout = self._head_timeout
        started = self._head_started
        if started:
            elapsed = now - started
            if elapsed >= timeout:
                self._refuse(408, "request head timeout")
                return
            delay = timeout - elapsed
        elif self._idle_since:
            elapsed = now - self._idle_since
            if elapsed >= self.timeout_keep_alive:
                self.transport.close()
                return
            delay = min(self.timeout_keep_alive - elapsed, timeout / 4)
        else:
            # A request is being answered. A head that starts right after this check is seen
            # at most a quarter of the timeout late.
            delay = timeout / 4
        self._head_timer = self.loop.call_later(delay, self._check_head)

    def _refuse(self, status: int, why: str) -> None:
        """Answer ``status`` (when no response is under way) and close the connection."""
        log.info("closing a client connection: %s", why)
        self._head_started = 0.0
        cycle: RequestResponseCycle | None = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.write(self.limits.responses[status])
        elif not cycle.response_started and not self.pipeline:
            # The head was fine, the body is not: this answer is the request's, and whatever
            # the app would still send goes nowhere (it sees a disconnected client).
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(self.limits.responses[status])
        # Otherwise an earlier (pipelined) request is still being answered: an answer written
        # now would interleave with it, so the connection just closes.
        self.transport.close()

    # ------------------------------------------------------------------ parsing

    def data_received(self, data: bytes) -> None:
        self._read_size = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._hand_over()
            else:
                self._refuse_upgrade()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(431, "request head too large")
            else:
                self._refuse(400, "invalid HTTP request")
            return
        if self._head_started:
            # A head still incomplete after this read: llhttp buffers the unfinished field, so
            # the raw bytes count (the whole read: at worst it also held the end of a previous
            # pipelined request).
            self._head_raw += len(data)
            if self._head_raw > self._max_head:
                self._refuse(431, "request head too large")

    def _should_upgrade(self) -> bool:
        # A WebSocket handshake is a GET without a body (RFC 6455 §4.1). One that announces a
        # body would have llhttp swallow it before the hand-over, and the handshake would then
        # wait for a body that never comes (no decision, no timeout): answered as a plain
        # request instead, like any other refused upgrade, and the connection closes after.
        if self.scope.get("method") != "GET":
            return False
        for name, value in self.headers:
            if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
                return False
        return bool(super()._should_upgrade())

    def _hand_over(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.handle_websocket_upgrade()

    def _refuse_upgrade(self) -> None:
        # The request itself is answered (its cycle already started); what follows the head is
        # another protocol's bytes, never parsed as HTTP: close once the answer is written.
        self._upgrade_refused = True
        self._head_started = 0.0
        cycle: RequestResponseCycle | None = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.close()
        else:
            cycle.keep_alive = False

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, msg)

    def on_message_begin(self) -> None:
        # uvicorn's scope, built here rather than through super() (once per request).
        self.url = b""
        self.expect_100_continue = False
        headers: list[tuple[bytes, bytes]] = []
        self.headers = headers
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": headers,
            "state": self.app_state.copy(),
        }
        self._idle_since = 0.0
        self._head_started = self.loop.time()
        self._head_size = 0
        self._head_raw = 0
        self._fields_counted = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._head_size += len(url)
        if self._head_size > self._max_head:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_started:
            # A trailer field of a chunked body: uvicorn would append it to the request's
            # headers (the very list the app reads), turning a trailer into a header after
            # the fact. Trailers are dropped (counted against the head limit).
            if not self._fields_counted:
                self._head_size += fields_size(self.headers)
                self._fields_counted = True
            self._head_size += len(name) + len(value) + 4
            if self._head_size > self._max_head:
                raise _HeadTooLarge
            return
        # The fields' size is checked once the head is complete (on_headers_complete): until
        # then a head is bounded by one read, and data_received counts the raw bytes of a head
        # spanning reads.
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        # The fields count their name, value, ": " and CRLF. On the wire a field takes at least
        # its name, value, ":" and CRLF, so this head's raw bytes (earlier reads, and the whole
        # read that completes it) plus one per field bound the count from above: a head
        # within that bound is not summed field by field (the common case).
        headers = self.headers
        if self._head_raw + self._read_size + len(headers) > self._max_head:
            self._head_size += fields_size(headers)
            self._fields_counted = True
            if self._head_size > self._max_head:
                raise _HeadTooLarge
        self._head_started = 0.0
        url = self.url
        if not url.startswith(b"/") and url != b"*":
            # Absolute-form (``GET http://other/...``) or authority-form (``CONNECT host:443``):
            # a gateway is no forward proxy, and the upstream is fixed by configuration.
            raise _NotOriginForm
        parser = self.parser
        http_version = parser.get_http_version()
        scope = self.scope
        method = scope["method"] = parser.get_method().decode("ascii")
        if method == "CONNECT":
            # A tunnel request, whatever its target: a gateway never tunnels (400, close).
            raise _NotOriginForm
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root_path = self.root_path
        if root_path:
            scope["path"] = root_path + path
            scope["raw_path"] = root_path.encode("ascii") + raw_path
        else:
            scope["path"] = path
            scope["raw_path"] = raw_path
        scope["query_string"] = parsed_url.query or b""

        existing_cycle = self.cycle
        self.cycle = GatewayCycle(
            scope,
            self.transport,
            self.flow,
            self.logger,
            self.server_state.default_headers,
            self.expect_100_continue,
            http_version != "1.0" and parser.should_keep_alive(),
            self.on_response_complete,
            self.loop,
        )
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(self.cycle, self.app)
        else:
            # Pipelined requests wait for the previous response.
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn's, remembering the task on the cycle: the forwarder learns which task to
        # cancel on a disconnect without asyncio.current_task() (a getpid() call on 3.11).
        if self.config.reset_contextvars:
            task = self.loop.create_task(cycle.run_asgi(app), context=contextvars.Context())
        else:
            task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        if isinstance(cycle, GatewayCycle):
            cycle.task = task

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        transport = self.transport
        if transport.is_closing():
            return
        if self._upgrade_refused:
            transport.close()
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            # Keep-alive: _check_head closes the connection if it stays idle too long.
            self._idle_since = self.loop.time()


def hardened_protocol(limits: ProtocolLimits) -> type[HardenedHttpToolsProtocol]:
    """A :class:`HardenedHttpToolsProtocol` subclass bound to ``limits``, for uvicorn's ``http=``."""
    return type("GatewayHttpProtocol", (HardenedHttpToolsProtocol,), {"limits": limits})


class QuietWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol (websockets), without per-handshake INFO lines.

    Those lines name the query string, which may carry a token; the gateway's access log
    records WebSocket sessions itself. A handshake answered with an HTTP response (the
    ``websocket.http.response`` extension: how the gateway refuses an upgrade) also counts as
    complete, so uvicorn does not log an error for every refusal.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.logger = _WS_LOG
        self.conn.logger = _WS_LOG

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True
