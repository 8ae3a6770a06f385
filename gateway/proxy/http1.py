"""The client side of one HTTP/1.1 upstream connection: an asyncio protocol around httptools.

:class:`UpstreamConnection` speaks one request/response exchange at a time (no pipelining). It
writes request heads and bodies with flow control, parses the response with httptools'
``HttpResponseParser`` (llhttp in strict mode) and adds the framing checks llhttp leaves to its
caller: a single ``Transfer-Encoding: chunked`` only, HTTP/1.0 or 1.1 only, status 100-599,
bounded head size and header count, no bytes beyond the response. Whatever is unclear about
where a response ends is refused as ``upstream_protocol_error``: a proxy that guesses framing
is a smuggling vector.

:class:`UpstreamResponse` and :class:`UpgradedStream` are the views the caller gets; the pool
(:mod:`gateway.proxy.pool`) decides which connection serves an exchange and what happens to it
afterwards.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from operator import itemgetter
from typing import Protocol, cast

import httptools

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.proxy.headers import HOP_BY_HOP, MAX_CACHED_NAME, fields_size, nominated_names

# How the body of the current response ends, decided when its head is complete.
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3

#: Reading from the upstream pauses while more body bytes than this wait for the consumer, and
#: resumes when the consumer takes them (it takes everything buffered at once).
READ_HIGH_WATER = 256 * 1024

_PROTOCOL_ERROR = "upstream_protocol_error"
_ABORTED = "upstream_aborted"

#: Request headers the caller may not pass: the pool derives framing and connection management
#: itself and never copies them (RFC 9112 §6.3, security-catalogue 6.3).
FORBIDDEN_REQUEST_HEADERS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"upgrade",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
    }
)
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
#: Header names already checked (token, not forbidden). Names come from a small vocabulary, so
#: after warm-up the per-request check is one set lookup per header.
_CHECKED_NAMES: set[bytes] = set()
_CHECKED_NAMES_MAX = 4096
_METHODS: dict[str, bytes] = {}
_REQUEST_LINE_END = b" HTTP/1.1\r\n"
_CRLF = b"\r\n"
#: Bytes that may not appear in a request target (they would end or split the request line).
_TARGET_BAD = bytes(range(0x21)) + b"\x7f"
_RESPONSE_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
#: Response header names on_header must look at: framing, and hop-by-hop (not forwarded).
_SPECIAL_RESPONSE_HEADERS = _RESPONSE_FRAMING | HOP_BY_HOP
_HEADER_NAME = itemgetter(0)
_HEADER_VALUE = itemgetter(1)
_JOIN_FIELD = b": ".join
_JOIN_LINES = b"\r\n".join


class ConnectionOwner(Protocol):
    """Who gets a connection back when an exchange ends (the pool's per-origin state)."""

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """Take the connection back: keep it idle when ``reusable``, else close it."""

    def detach(self, conn: UpstreamConnection) -> None:
        """Stop accounting for a connection handed over to a protocol relay."""


class _ProtocolViolation(Exception):
    """Raised inside parser callbacks to stop parsing; the reason becomes the error detail."""


def _check_name(name: bytes) -> None:
    if not _TOKEN.match(name):
        raise ValueError("request header name is not an HTTP token")
    if name.lower() in FORBIDDEN_REQUEST_HEADERS:
        raise ValueError(
            f"request header {name.decode('ascii')!r} is derived by the pool and may not be passed"
        )
    if len(name) <= MAX_CACHED_NAME and len(_CHECKED_NAMES) < _CHECKED_NAMES_MAX:
        _CHECKED_NAMES.add(name)


def _method_bytes(method: str) -> bytes:
    encoded = _METHODS.get(method)
    if encoded is None:
        if not method.isascii() or not _TOKEN.match(method.encode("ascii")):
            raise ValueError("request method is not an HTTP token")
        encoded = method.encode("ascii")
        if len(_METHODS) < 64:
            _METHODS[method] = encoded
    return encoded


def encode_request_head(
    method: str,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    framing: bytes,
    upgrade: bytes | None,
) -> bytes:
    """The request head, ready for one write.

    ``framing`` is the framing header line(s) the pool derived (``b""`` for none). Raises
    ``ValueError`` for a forbidden or malformed header name, a target that could split the
    request line, or a value containing CR, LF or NUL (header injection).
    """
    if not target or (target[0] != 0x2F and target != b"*") or target.translate(None, _TARGET_BAD) != target:
        raise ValueError("request target must be origin-form without spaces or control bytes")
    # Names and fields are handled by C loops (set.issuperset, map with bytes.join): no
    # Python-level iteration per header once every name is known.
    if not _CHECKED_NAMES.issuperset(map(_HEADER_NAME, headers)):
        for name, _ in headers:
            if name not in _CHECKED_NAMES:
                _check_name(name)
    parts = [_method_bytes(method), b" ", target, _REQUEST_LINE_END]
    if headers:
        parts += (_JOIN_LINES(map(_JOIN_FIELD, headers)), _CRLF)
    if framing:
        parts.append(framing)
    if upgrade is not None:
        if not _TOKEN.match(upgrade.split(b"/", 1)[0]):
            raise ValueError("upgrade protocol is not an HTTP token")
        parts += (b"connection: upgrade\r\nupgrade: ", upgrade, _CRLF)
    parts.append(_CRLF)
    # Names are checked tokens, the target and method were checked above: only values (and the
    # upgrade protocol) may still smuggle a line end or a NUL. Joined, they are searched with
    # memchr (``int in bytes``) rather than inspected one by one.
    values = b"".join(map(_HEADER_VALUE, headers))
    if upgrade is not None:
        values += upgrade
    if 13 in values or 10 in values or 0 in values:
        raise ValueError("request header value contains CR, LF or NUL")
    return b"".join(parts)


def chunk_frame(data: bytes) -> bytes:
    """The chunk-size line for one non-empty chunk of a chunked request body."""
    return b"%x\r\n" % len(data)


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an upstream, reusable across sequential exchanges.

    The pool calls :meth:`begin` before writing a request; the protocol callbacks fill the
    response state; :meth:`wait_head`, :meth:`wait_readable` and :meth:`drain` let the request
    task and the body consumer wait (with the read and write timeouts) for progress.
    """

    __slots__ = (
        "_broken",
        "_buffered",
        "_drain_waiter",
        "_error",
        "_expect_upgrade",
        "_fields_counted",
        "_head_bytes",
        "_head_size",
        "_interim",
        "_is_head",
        "_loop",
        "_max_head",
        "_max_headers",
        "_parser",
        "_parser_dirty",
        "_read_deadline",
        "_read_timeout",
        "_read_timer",
        "_read_waiter",
        "_reading_paused",
        "_te_count",
        "_te_value",
        "write_paused",
        "_write_timeout",
        "active",
        "chunks",
        "closed",
        "complete",
        "connection_values",
        "content_length",
        "forward_headers",
        "framing",
        "head_done",
        "headers",
        "idle",
        "idle_since",
        "keep_alive",
        "on_idle_lost",
        "request_complete",
        "status",
        "transport",
        "upgraded",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        max_head: int,
        max_headers: int,
        read_timeout: float,
        write_timeout: float,
    ) -> None:
        self._loop = loop
        self._max_head = max_head
        self._max_headers = max_headers
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._parser = httptools.HttpResponseParser(self)
        self._parser_dirty = False
        self.transport: asyncio.Transport | None = None
        #: The transport is closed or the peer sent EOF: the connection is never reused.
        self.closed = False
        #: Sitting in the pool's idle list (the pool's bookkeeping).
        self.idle = False
        self.idle_since = 0.0
        #: Called by ``connection_lost`` when the connection dies while idle.
        self.on_idle_lost: Callable[[UpstreamConnection], None] | None = None
        self._read_waiter: asyncio.Future[bool] | None = None
        self._read_deadline = 0.0
        self._read_timer: asyncio.TimerHandle | None = None
        self._drain_waiter: asyncio.Future[bool] | None = None
        self.write_paused = False
        self._reading_paused = False
        self.chunks: deque[bytes] = deque()
        self._buffered = 0
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.active = False
        self._is_head = False
        self._expect_upgrade = False
        self._error: GatewayError | None = None
        self._broken = False
        self._interim = False
        # Raw bytes received before the head completed (checked when the head is still
        # incomplete after a read), and the size of the parsed fields (checked per field, so a
        # huge head arriving in the same read as its end is refused too).
        self._head_bytes = 0
        self._head_size = 0
        # Whether _head_size includes the final head's fields (see _check_head).
        self._fields_counted = False
        self._te_count = 0
        self._te_value = b""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        #: ``headers`` without hop-by-hop ones, and the Connection values (collected as parsed).
        self.forward_headers: list[tuple[bytes, bytes]] = []
        self.connection_values: list[bytes] | None = None
        self.content_length: int | None = None
        self.framing = NO_BODY
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.request_complete = False
        self.upgraded = False

    # ------------------------------------------------------------------ exchange lifecycle

    def begin(self, *, is_head: bool, expect_upgrade: bool) -> None:
        """Start an exchange on this (fresh or idle) connection."""
        if self._parser_dirty:
            # After a HEAD response llhttp still expects the body the headers announced.
            self._parser = httptools.HttpResponseParser(self)
            self._parser_dirty = False
        self._reset_exchange()
        self.active = True
        self._is_head = is_head
        self._expect_upgrade = expect_upgrade
        self.chunks.clear()
        self._buffered = 0

    def reusable(self) -> bool:
        """True when the exchange ended cleanly and the connection may serve another one."""
        return (
            self.complete
            and self.keep_alive
            and self.request_complete
            and not self._broken
            and not self.closed
            and not self.upgraded
            and not self._expect_upgrade
        )

    def make_idle(self, now: float) -> None:
        """Park the connection in the pool: from now on any byte from the upstream is a fault."""
        self.active = False
        self.idle = True
        self.idle_since = now
        self.chunks.clear()
        self._buffered = 0
        if self._reading_paused:
            self._resume_reading()

    def close(self) -> None:
        """Close the connection (flushing nothing more is expected; used for clean endings)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once: the exchange did not end cleanly."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def error(self) -> GatewayError | None:
        """A fresh copy of the exchange's error, if any (each raise gets its own traceback)."""
        err = self._error
        if err is None:
            return None
        return self._copy_error(err)

    @staticmethod
    def _copy_error(err: GatewayError) -> GatewayError:
        return type(err)(err.detail, reason=err.reason)

    def _fail(self, error: GatewayError) -> None:
        if self._error is None:
            self._error = error
        self._broken = True
        self.abort()
        self._wake_reader()
        self._wake_drainer()

    # ------------------------------------------------------------------ waiting

    async def wait_readable(self, max_wait: float | None) -> bool:
        """Wait until the protocol reports progress; False when ``max_wait`` passed first."""
        waiter = self._new_read_waiter(max_wait)
        try:
            return await waiter
        finally:
            self._read_waiter = None

    def _new_read_waiter(self, max_wait: float | None) -> asyncio.Future[bool]:
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._read_waiter = waiter
        if max_wait is None:
            self._read_deadline = float("inf")
        else:
            self._read_deadline = self._loop.time() + max_wait
            if self._read_timer is None:
                self._read_timer = self._loop.call_at(self._read_deadline, self._check_read_deadline)
        return waiter

    def _check_read_deadline(self) -> None:
        # One timer per connection, re-armed lazily: a wait only records its deadline, so the
        # common case (the answer comes well within the timeout) never schedules or cancels a
        # timer per request.
        self._read_timer = None
        waiter = self._read_waiter
        if waiter is None or waiter.done() or self.closed:
            return
        deadline = self._read_deadline
        if deadline == float("inf"):
            return
        if self._loop.time() >= deadline - 0.001:
            waiter.set_result(False)
        else:
            self._read_timer = self._loop.call_at(deadline, self._check_read_deadline)

    async def wait_head(self) -> None:
        """Wait for the final (non-1xx) response head; raises the exchange's error."""
        while True:
            if self._error is not None:
                raise self._copy_error(self._error)
            if self.head_done:
                return
            if self.closed:
                # EOF before a head (possibly before the exchange began: connection_lost then
                # recorded no error): nothing more can arrive.
                raise UpstreamUnavailable("the upstream closed the connection without answering")
            # wait_readable, inlined: one coroutine less per request.
            waiter = self._new_read_waiter(self._read_timeout)
            try:
                progressed = await waiter
            finally:
                self._read_waiter = None
            if not progressed:
                raise UpstreamTimeout("the upstream did not answer in time", reason="upstream_read_timeout")

    async def drain(self, *, until_answer: bool) -> None:
        """Wait while the transport's write buffer is above its high-water mark.

        Returns early when the connection closed and, with ``until_answer``, when the response
        head arrived (the caller then stops sending: an upstream that answered and stopped
        reading would otherwise stall the upload until the write timeout). The caller checks
        which.
        """
        while self.write_paused and not self.closed and not (until_answer and self.head_done):
            waiter: asyncio.Future[bool] = self._loop.create_future()
            self._drain_waiter = waiter
            timer = self._loop.call_later(self._write_timeout, _expire, waiter)
            try:
                progressed = await waiter
            finally:
                self._drain_waiter = None
                timer.cancel()
            if not progressed:
                raise UpstreamTimeout(
                    "the upstream stopped reading the request", reason="upstream_write_timeout"
                )

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _wake_drainer(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    # ------------------------------------------------------------------ body buffer

    def take_buffered(self) -> bytes:
        """Every body byte received so far, as one bytes object (resumes reading if paused)."""
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._reading_paused:
            self._resume_reading()
        return data

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _push(self, data: bytes) -> None:
        self.chunks.append(data)
        self._buffered += len(data)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self._push(data)
            self._wake_reader()
            return
        if not self.active or self.complete:
            # Bytes nobody asked for: an idle connection, or data beyond a finished response.
            self._broken = True
            self.abort()
            return
        if not self.head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._switch_protocols(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
            return
        if not self.head_done and self._head_bytes > self._max_head:
            self._fail(UpstreamError("invalid upstream response: head too large", reason=_PROTOCOL_ERROR))
            return
        self._wake_reader()

    def _switch_protocols(self, tail: bytes) -> None:
        if not self.upgraded:  # pragma: no cover - on_headers_complete refuses an unasked 101
            self._fail(UpstreamError("the upstream switched protocols unasked", reason=_PROTOCOL_ERROR))
            return
        if tail:
            self._push(tail)

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        if self.complete and not self.upgraded:
            # Bytes after a finished response: keep what was read, never reuse the connection.
            self._broken = True
            self.abort()
            self._wake_reader()
            return
        # llhttp's reasons ("Invalid character in chunk size") and ours name the fault, never
        # a header value.
        cause = exc.__context__
        detail = str(cause) if isinstance(cause, _ProtocolViolation) else str(exc) or "malformed"
        self._fail(UpstreamError(f"invalid upstream response: {detail}", reason=_PROTOCOL_ERROR))

    def is_closed(self) -> bool:
        """``closed``, read through a call (the flag changes while the caller awaits)."""
        return self.closed

    def eof_received(self) -> bool | None:
        # The peer will send nothing more; returning a false value closes the transport.
        self.closed = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self.idle:
            if self.on_idle_lost is not None:
                self.on_idle_lost(self)
            return
        if self.active and not self.complete and self._error is None:
            if self.head_done and self.framing == UNTIL_CLOSE and exc is None:
                # The only framing that ends at close (RFC 9112 §6.3 rule 8); never reused.
                self.complete = True
                self.keep_alive = False
            elif self.head_done:
                self._error = UpstreamUnavailable(
                    "the upstream connection closed in the middle of the response", reason=_ABORTED
                )
            else:
                self._error = UpstreamUnavailable("the upstream closed the connection without answering")
        self._wake_reader()
        self._wake_drainer()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drainer()

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        if self.head_done:
            raise _ProtocolViolation("more than one response")
        self.headers = []
        self.forward_headers = []
        self.connection_values = None
        self._te_count = 0
        self.content_length = None

    def on_header(self, name: bytes, value: bytes) -> None:
        # The head's size and field count are checked once it is complete (_check_head):
        # until then a head is bounded by one read (and data_received counts the raw bytes of
        # a head spanning reads).
        if self.head_done:
            # A trailer field after a chunked body: counted against the head limit, never
            # merged into the headers (a trailer must not change framing or identity).
            if not self._fields_counted:
                self._head_size += fields_size(self.headers)
                self._fields_counted = True
            self._head_size += len(name) + len(value) + 4
            if self._head_size > self._max_head:
                raise _ProtocolViolation("head too large")
            return
        name = name.lower()
        item = (name, value)
        self.headers.append(item)
        if name not in _SPECIAL_RESPONSE_HEADERS:  # the common case: one set lookup
            self.forward_headers.append(item)
        elif name == b"content-length":
            # llhttp has already refused duplicates, signs, lists and overflow.
            self.content_length = int(value)
            self.forward_headers.append(item)
        elif name == b"transfer-encoding":
            self._te_count += 1
            self._te_value = value
        elif name == b"connection":
            if self.connection_values is None:
                self.connection_values = [value]
            else:
                self.connection_values.append(value)

    def _check_head(self) -> None:
        # Every field counts its name, value, ": " and CRLF, over every head of the exchange
        # (interim 1xx ones too). On the wire a field takes at least its name, value, ":" and
        # CRLF, so the raw bytes received so far plus one per field bound the count from above:
        # a head within that bound is not summed field by field (the common case).
        headers = self.headers
        count = len(headers)
        if count > self._max_headers:
            raise _ProtocolViolation("too many header fields")
        if self._head_size == 0 and self._head_bytes + count <= self._max_head:
            return
        self._head_size += fields_size(headers)
        self._fields_counted = True
        if self._head_size > self._max_head:
            raise _ProtocolViolation("head too large")

    def on_headers_complete(self) -> None:
        self._check_head()
        parser = self._parser
        status = parser.get_status_code()
        if status < 200 and not self._fields_counted:
            # An interim head: counted exactly now (the next head's bound assumes it).
            self._head_size += fields_size(self.headers)
            if self._head_size > self._max_head:
                raise _ProtocolViolation("head too large")
        if status < 200:
            if status == 101:
                if not self._expect_upgrade:
                    raise _ProtocolViolation("101 without an upgrade request")
                self.status = 101
                self.upgraded = True
                self.head_done = True
                self.complete = True
                return
            if status < 100:
                raise _ProtocolViolation("invalid status code")
            self._interim = True  # 100 Continue, 103 Early Hints...: skipped
            return
        if status > 599:
            raise _ProtocolViolation("invalid status code")
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _ProtocolViolation("unsupported HTTP version")
        if self._te_count:
            # Only a lone "chunked" is accepted: "chunked, identity", "xchunked", "gzip, chunked"
            # or two TE fields leave the body length to guesswork (RFC 9112 §6.3 rules 3-4).
            if self._te_count > 1 or self._te_value.strip().lower() != b"chunked":
                raise _ProtocolViolation("unsupported Transfer-Encoding")
            framing = CHUNKED
        elif self.content_length is not None:
            framing = LENGTH
        else:
            framing = UNTIL_CLOSE
        if self._is_head or status == 204 or status == 304:
            framing = NO_BODY
        self.status = status
        self.framing = framing
        self.keep_alive = framing != UNTIL_CLOSE and parser.should_keep_alive()
        self.head_done = True
        if self._is_head:
            # httptools cannot tell llhttp to skip the announced body: end the exchange here and
            # give the next one a fresh parser.
            self.complete = True
            self._parser_dirty = True
        self._wake_drainer()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            raise _ProtocolViolation("body bytes after the end of the response")
        self._push(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


# ---------------------------------------------------------------------- caller-facing views


class UpstreamResponse:
    """The upstream's answer: status and head at once, body streamed on demand.

    ``headers`` keeps the received order with names lower-cased and values as received (every
    Set-Cookie, in order; Content-Encoding untouched). The body is de-chunked and never decoded.
    The connection goes back to the pool as soon as the last body byte is handed out; call
    :meth:`aclose` in every case (it is a no-op then, and closes the connection otherwise).
    """

    __slots__ = (
        "_conn",
        "_connection_values",
        "_forward_headers",
        "_framing",
        "_owner",
        "content_length",
        "headers",
        "status",
    )

    def __init__(self, conn: UpstreamConnection, owner: ConnectionOwner) -> None:
        self.status = conn.status
        self.headers = conn.headers
        self._forward_headers = conn.forward_headers
        self._connection_values = conn.connection_values
        #: The Content-Length the upstream declared (also for HEAD and 304), else ``None``.
        self.content_length = conn.content_length
        self._framing = conn.framing
        self._owner = owner
        self._conn: UpstreamConnection | None = conn
        if conn.complete and not conn.chunks and not conn.upgraded:
            self._finish(conn)

    def end_to_end_headers(self) -> list[tuple[bytes, bytes]]:
        """``headers`` without the hop-by-hop ones and those ``Connection`` nominates: what
        :func:`gateway.proxy.headers.strip_hop_by_hop_response` gives, sorted out as parsed.
        The list may be this response's own: do not modify it."""
        headers = self._forward_headers
        values = self._connection_values
        if values is not None:
            nominated = nominated_names(values)
            if not nominated <= HOP_BY_HOP:
                headers = [item for item in headers if item[0] not in nominated]
        return headers

    def has_body(self) -> bool:
        """False for responses that carry no body: HEAD, 1xx, 204, 304."""
        return self._framing != NO_BODY and self.status != 101

    @property
    def at_eof(self) -> bool:
        """True once every body byte has been handed out (the next read returns ``b""``).

        Lets the caller mark its last body message ``more_body=False`` without an extra one.
        """
        conn = self._conn
        return conn is None or (conn.complete and not conn.chunks)

    @property
    def body_received(self) -> bool:
        """True once the whole body has arrived (it may still be buffered here)."""
        conn = self._conn
        return conn is None or conn.complete

    def take_body(self) -> bytes:
        """The whole body when :attr:`body_received` (the common small answer that came with
        its head): no await, and the connection goes back to the pool at once."""
        conn = self._conn
        if conn is None:
            return b""
        if not conn.complete or conn.upgraded:
            raise RuntimeError("the body has not been received yet: use read_chunk()")
        data = conn.take_buffered() if conn.chunks else b""
        self._finish(conn)
        return data

    async def read_chunk(self) -> bytes:
        """The next body bytes as they arrive (all buffered bytes at once); ``b""`` at the end.

        Raises :class:`~gateway.errors.UpstreamUnavailable` (``upstream_aborted``) when the
        connection dies before the body is complete, :class:`~gateway.errors.UpstreamTimeout`
        when the upstream goes quiet for longer than the read timeout, and
        :class:`~gateway.errors.UpstreamError` (``upstream_protocol_error``) for bad framing.
        """
        conn = self._conn
        if conn is None:
            return b""
        if conn.upgraded:
            raise RuntimeError("the connection was upgraded: use detach()")
        while True:
            if conn.chunks:
                data = conn.take_buffered()
                if conn.complete:
                    self._finish(conn)
                return data
            if conn.complete:
                self._finish(conn)
                return b""
            err = conn.error()
            if err is not None:
                self._abort(conn)
                raise err
            try:
                progressed = await conn.wait_readable(conn._read_timeout)
            except BaseException:
                # Cancelled (the client went away): the response was not read to its end.
                self._abort(conn)
                raise
            if not progressed:
                self._abort(conn)
                raise UpstreamTimeout(
                    "the upstream stopped sending the response", reason="upstream_read_timeout"
                )

    def aiter_body(self) -> AsyncIterator[bytes]:
        """The de-chunked body bytes, as they arrive (see :meth:`read_chunk`)."""
        return self

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        data = await self.read_chunk()
        if not data:
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        """Give the connection back: to the pool if the response ended cleanly, else closed."""
        self.close()

    def close(self) -> None:
        """:meth:`aclose` without a coroutine (it never waits)."""
        conn = self._conn
        if conn is None:
            return
        if conn.complete and not conn.upgraded:
            self._finish(conn)
        else:
            self._abort(conn)

    def detach(self) -> UpgradedStream:
        """After ``101 Switching Protocols``: the raw connection, for a protocol relay.

        The connection leaves the pool (it no longer counts against ``max_connections``).
        """
        conn = self._conn
        if conn is None or not conn.upgraded:
            raise RuntimeError("only a 101 response on an upgrade request can be detached")
        self._conn = None
        self._owner.detach(conn)
        return UpgradedStream(conn)

    def _finish(self, conn: UpstreamConnection) -> None:
        self._conn = None
        self._owner.release(conn, conn.reusable())

    def _abort(self, conn: UpstreamConnection) -> None:
        self._conn = None
        conn.abort()
        self._owner.release(conn, False)


class UpgradedStream:
    """A connection after ``101 Switching Protocols``: raw bytes both ways, with flow control.

    ``read`` has no timeout (a WebSocket may be quiet for long); ``write`` waits while the
    upstream is not reading, up to the write timeout.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: UpstreamConnection) -> None:
        self._conn = conn

    async def read(self) -> bytes:
        """The next bytes from the upstream; ``b""`` once it closed the connection."""
        conn = self._conn
        while not conn.chunks:
            if conn.closed:
                return b""
            await conn.wait_readable(None)
        return conn.take_buffered()

    async def write(self, data: bytes) -> None:
        """Send ``data`` to the upstream; raises ``UpstreamUnavailable`` if it is gone."""
        conn = self._conn
        if conn.closed or conn.transport is None:
            raise UpstreamUnavailable("the upstream connection is closed", reason=_ABORTED)
        conn.transport.write(data)
        await conn.drain(until_answer=False)

    async def aclose(self) -> None:
        """Close the connection."""
        self._conn.close()

    @property
    def closed(self) -> bool:
        """True once the connection is closed (either side)."""
        return self._conn.closed
