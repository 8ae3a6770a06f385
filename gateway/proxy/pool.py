"""The upstream HTTP/1.1 connection pool of the request path.

Built on asyncio protocols and httptools (:mod:`gateway.proxy.http1`) rather than httpx: the
request path pays for exactly what a proxy needs. Per origin, the pool keeps at most
``max_connections`` connections (callers wait for a free slot, bounded by ``connect_timeout``)
and at most ``max_idle`` idle ones (most recently used first, expired after ``idle_timeout``).

Rules that keep it safe:

- framing is derived, never copied: the caller may not pass ``Content-Length``,
  ``Transfer-Encoding``, ``Connection``, ``Upgrade`` or other hop-by-hop headers; the pool
  writes ``Content-Length`` when the length is known, otherwise ``Transfer-Encoding: chunked``,
  and checks that the body matches the declared length;
- a connection is reused only after a response read to its end under keep-alive, with the
  request body fully sent; never after ``Connection: close``, HTTP/1.0 without keep-alive, a
  read-until-close body, an error, a cancellation, or stray bytes;
- a request is retried on another connection only when nothing was written (a dead idle
  connection is discarded before use), or, when the caller allows it (idempotent methods),
  once after a failed connect;
- no cookie jar, no decoding, no redirects: the response goes back as the upstream sent it.

Errors: connect refused/reset/DNS failure ``UpstreamUnavailable`` (502, ``upstream_unavailable``;
TLS failures ``upstream_tls_error``); connect timeout ``UpstreamTimeout`` (504,
``upstream_connect_timeout``); no free slot within ``connect_timeout`` ``UpstreamTimeout``
(``upstream_pool_timeout``: the upstream is saturated, and a gateway timeout says so); read and
write timeouts ``UpstreamTimeout`` (``upstream_read_timeout``, ``upstream_write_timeout``); bad
framing ``UpstreamError`` (502, ``upstream_protocol_error``); connection lost mid-body
``UpstreamUnavailable`` (``upstream_aborted``); request body longer or shorter than
``content_length`` ``RequestError`` (``body_exceeds_content_length``,
``body_shorter_than_content_length``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gateway.errors import RequestError, UpstreamTimeout, UpstreamUnavailable
from gateway.proxy.http1 import (
    UpgradedStream,
    UpstreamConnection,
    UpstreamResponse,
    chunk_frame,
    encode_request_head,
)

__all__ = [
    "Origin",
    "PoolLimits",
    "UpgradedStream",
    "UpstreamPool",
    "UpstreamResponse",
    "build_ssl_context",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?\Z")
_CHUNKED = b"transfer-encoding: chunked\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_CRLF = b"\r\n"
_COALESCE_LIMIT = 16 * 1024


@dataclass(frozen=True, slots=True)
class Origin:
    """Where to connect: ``http``/``https`` host and port, or a ``unix`` socket path.

    For ``unix``, ``host`` is only the Host header value to use (``localhost``). Build one per
    configured upstream at load time: it is the pool's key, and :attr:`host_header` (``host``,
    ``[v6]``, plus ``:port`` when not the scheme's default) is computed once.
    """

    scheme: str
    host: str
    port: int
    unix_path: str | None = None
    host_header: bytes = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scheme == "unix":
            path = self.unix_path
            if not path or not path.startswith("/") or "\x00" in path:
                raise ValueError("a unix: upstream needs an absolute socket path")
        elif self.scheme in _DEFAULT_PORTS:
            if self.unix_path is not None:
                raise ValueError("unix_path is only for unix: upstreams")
            if not 0 < self.port < 65536:
                raise ValueError(f"invalid upstream port {self.port}")
        else:
            raise ValueError(f"unsupported upstream scheme {self.scheme!r} (http, https or unix)")
        if not _valid_host(self.host):
            raise ValueError(f"invalid upstream host {self.host!r}")
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.scheme != "unix" and self.port != _DEFAULT_PORTS[self.scheme]:
            host = f"{host}:{self.port}"
        object.__setattr__(self, "host_header", host.encode("ascii"))
        object.__setattr__(self, "_hash", hash((self.scheme, self.host, self.port, self.unix_path)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix:{self.unix_path}"
        return f"{self.scheme}://{self.host_header.decode('ascii')}"

    @classmethod
    def parse(cls, url: str) -> Origin:
        """``http://host[:port]``, ``https://host[:port]``, ``unix:/path`` (or ``unix:///path``).

        A trailing ``/`` is allowed; any other path, a query, a fragment or credentials are
        refused with ``ValueError`` (prefixes belong to the route, not to the origin).
        """
        if url.startswith("unix:"):
            path = url[5:]
            if path.startswith("//"):
                path = path[2:]
            return cls("unix", "localhost", 0, path)
        if "?" in url or "#" in url or any(c.isspace() for c in url):
            raise ValueError(f"invalid upstream URL {url!r}")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"unsupported upstream URL scheme in {url!r} (http, https or unix)")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials in an upstream URL are not supported")
        if parts.path not in ("", "/"):
            raise ValueError(f"an upstream URL has no path (use the route's prefix options): {url!r}")
        host = parts.hostname
        if not host:
            raise ValueError(f"upstream URL {url!r} names no host")
        port = parts.port  # raises ValueError for a bad port
        return cls(scheme, host, port if port is not None else _DEFAULT_PORTS[scheme])


def _valid_host(host: str) -> bool:
    if not host or not host.isascii() or host != host.lower():
        return False
    if ":" in host:
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    return _HOSTNAME.match(host) is not None


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Per-origin limits and timeouts (seconds) of :class:`UpstreamPool`."""

    max_connections: int = 256
    max_idle: int = 64
    idle_timeout: float = 60.0
    #: Bounds waiting for a free slot plus connecting (and the TLS handshake).
    connect_timeout: float = 5.0
    #: Longest wait for the next bytes of a response (head or body).
    read_timeout: float = 60.0
    #: Longest wait for the upstream to accept more request bytes.
    write_timeout: float = 60.0
    max_response_head: int = 64 * 1024
    max_response_headers: int = 128

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_idle < 0:
            raise ValueError("max_connections must be >= 1 and max_idle >= 0")
        for name in ("idle_timeout", "connect_timeout", "read_timeout", "write_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.max_response_head < 1024 or self.max_response_headers < 1:
            raise ValueError("max_response_head must be >= 1024 and max_response_headers >= 1")


def build_ssl_context(
    verify: bool = True,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> ssl.SSLContext:
    """A client TLS context for upstreams: verification on unless ``verify=False``.

    ``ca_file`` replaces the system trust store; ``cert_file`` (with ``key_file``, or a PEM
    holding both) is presented as the client certificate (mTLS). ALPN offers only http/1.1.
    """
    if key_file is not None and cert_file is None:
        raise ValueError("key_file needs cert_file")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _OriginPool:
    """Connections to one origin: the idle stack, the open count and the slot waiters."""

    __slots__ = ("idle", "open", "origin", "pool", "waiters")

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        #: Oldest first; taken from the right (most recently used: least likely to be dead).
        self.idle: deque[UpstreamConnection] = deque()
        #: Connections that exist: connecting, in use, idle.
        self.open = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def take_idle(self, now: float) -> UpstreamConnection | None:
        idle_timeout = self.pool.limits.idle_timeout
        idle = self.idle
        while idle:
            conn = idle.pop()
            conn.idle = False
            if not conn.closed and now - conn.idle_since <= idle_timeout:
                return conn
            # Dead (closed by the server, flagged by connection_lost/eof_received) or too old:
            # nothing was written to it, so taking another one is safe for any method.
            conn.close()
            self.open -= 1
        return None

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        pool = self.pool
        if reusable and not pool.closed and len(self.idle) < pool.limits.max_idle:
            conn.make_idle(pool.loop_time())
            self.idle.append(conn)
            pool.schedule_sweep()
        else:
            if pool.closed:
                conn.abort()  # see close_idle
            elif not conn.closed:
                conn.close()
            self.open -= 1
        if self.waiters:
            self.wake_one()

    def detach(self, conn: UpstreamConnection) -> None:
        self.open -= 1
        if self.waiters:
            self.wake_one()

    def forget_idle(self, conn: UpstreamConnection) -> None:
        """An idle connection died (connection_lost): drop it and free its slot."""
        if conn.idle:
            conn.idle = False
            try:
                self.idle.remove(conn)
            except ValueError:  # pragma: no cover - idle flag and list always agree
                pass
            self.open -= 1
            if self.waiters:
                self.wake_one()

    def expire(self, now: float) -> None:
        idle_timeout = self.pool.limits.idle_timeout
        idle = self.idle
        while idle and now - idle[0].idle_since > idle_timeout:
            conn = idle.popleft()
            conn.idle = False
            conn.close()
            self.open -= 1
        if self.waiters:
            self.wake_one()

    def close_idle(self) -> None:
        while self.idle:
            conn = self.idle.pop()
            conn.idle = False
            # Aborted, not closed: a TLS close would wait for the upstream's close_notify,
            # and the pool closes as the process (or its event loop) ends.
            conn.abort()
            self.open -= 1

    def wake_one(self) -> None:
        """Tell the first live waiter that a slot or an idle connection may be free."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def wait_for_change(self, loop: asyncio.AbstractEventLoop) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Woken and cancelled at once: pass the wake-up on, or a free slot would idle
                # while others wait.
                self.wake_one()
            else:
                waiter.cancel()
                try:
                    self.waiters.remove(waiter)
                except ValueError:
                    pass
            raise


class UpstreamPool:
    """HTTP/1.1 connections to upstreams, reused across requests (see the module docstring)."""

    def __init__(self, limits: PoolLimits | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.limits = limits if limits is not None else PoolLimits()
        self._ssl_context = ssl_context
        self._origins: dict[Origin, _OriginPool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None
        self.closed = False

    # ------------------------------------------------------------------ public API

    async def request(
        self,
        origin: Origin,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: AsyncIterator[bytes] | None = None,
        *,
        content_length: int | None = None,
        retry_connect: bool = False,
        upgrade: bytes | None = None,
    ) -> UpstreamResponse:
        """Send one request and return the response once its head has arrived.

        ``headers`` are sent as given (names lower-case tokens, values without CR/LF/NUL; the
        caller includes Host); the pool adds only framing: ``Content-Length`` when
        ``content_length`` is given (``0`` with ``body=None`` for an empty body), otherwise
        ``Transfer-Encoding: chunked`` when ``body`` is not ``None``. ``upgrade`` (e.g.
        ``b"websocket"``) adds ``Connection: upgrade`` and ``Upgrade``; a ``101`` answer can then
        be taken over with :meth:`UpstreamResponse.detach`. ``retry_connect`` allows one more
        connect attempt when connecting failed: set it for idempotent methods only.

        Raises ``ValueError`` for headers the caller may not pass or that would inject lines.
        """
        if self.closed:
            raise UpstreamUnavailable("the upstream pool is closed", reason="pool_closed")
        if content_length is not None:
            if content_length < 0 or (content_length and body is None):
                raise ValueError("content_length must be >= 0, and > 0 only with a body")
            framing = b"content-length: %d\r\n" % content_length
        elif body is not None:
            framing = _CHUNKED
        else:
            framing = b""
        head = encode_request_head(method, target, headers, framing, upgrade)
        chunked = body is not None and content_length is None

        # Pull the first body chunk before taking a connection: it usually is the whole body
        # and then rides in the head's write, and a body that fails early (limits, client
        # gone) leaves no connection half-used.
        iterator: AsyncIterator[bytes] | None = None
        first = b""
        body_done = True
        if body is not None:
            iterator = body.__aiter__()
            first, body_done = await _next_chunk(iterator)
            if content_length is not None:
                _check_length(len(first), content_length, body_done)
        out = [head]
        if first:
            if chunked:
                out += (chunk_frame(first), first, _CRLF)
            else:
                out.append(first)
        if chunked and body_done:
            out.append(_LAST_CHUNK)
        if len(out) > 1 and len(first) < _COALESCE_LIMIT:
            out = [b"".join(out)]

        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        op = self._origins.get(origin)
        if op is None:
            op = self._origins[origin] = _OriginPool(self, origin)
        conn = op.take_idle(loop.time()) if op.idle else None
        if conn is None:
            conn = await self._acquire(op, loop, retry_connect)
        try:
            conn.begin(is_head=method == "HEAD", expect_upgrade=upgrade is not None)
            transport = conn.transport
            assert transport is not None
            if conn.closed:
                # A fresh connection the server dropped (or wrote to) before we wrote anything.
                raise UpstreamUnavailable("the upstream closed the connection before the request")
            if len(out) == 1:
                transport.write(out[0])
            else:
                transport.writelines(out)
            if body_done:
                conn.request_complete = True
            else:
                assert iterator is not None
                await _send_rest(conn, iterator, content_length, len(first), chunked)
            await conn.wait_head()
        except BaseException:
            conn.abort()
            op.release(conn, False)
            raise
        return UpstreamResponse(conn, op)

    async def aclose(self) -> None:
        """Close idle connections and refuse new requests; in-flight ones close when released."""
        self.closed = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for op in self._origins.values():
            op.close_idle()
            op.wake_all()
        # Let the transports report their end before the event loop may close.
        await asyncio.sleep(0)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per origin: ``open`` (incl. connecting), ``idle``, ``in_use`` and ``waiting`` counts."""
        return {
            str(origin): {
                "open": op.open,
                "idle": len(op.idle),
                "in_use": op.open - len(op.idle),
                "waiting": sum(1 for w in op.waiters if not w.done()),
            }
            for origin, op in self._origins.items()
        }

    # ------------------------------------------------------------------ internals

    def loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def schedule_sweep(self) -> None:
        if self._sweep_handle is None and self._loop is not None:
            interval = max(self.limits.idle_timeout / 4, 0.05)
            self._sweep_handle = self._loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        self._sweep_handle = None
        now = self.loop_time()
        remaining = False
        for op in self._origins.values():
            op.expire(now)
            remaining = remaining or bool(op.idle)
        if remaining:
            self.schedule_sweep()

    async def _acquire(
        self, op: _OriginPool, loop: asyncio.AbstractEventLoop, retry_connect: bool
    ) -> UpstreamConnection:
        limits = self.limits
        connecting = False
        try:
            async with asyncio.timeout(limits.connect_timeout):
                while op.open >= limits.max_connections:
                    await op.wait_for_change(loop)
                    if self.closed:
                        raise UpstreamUnavailable("the upstream pool is closed", reason="pool_closed")
                    conn = op.take_idle(loop.time()) if op.idle else None
                    if conn is not None:
                        return conn
                connecting = True
                op.open += 1
                try:
                    return await self._connect(op.origin, loop, retry_connect)
                except BaseException:
                    op.open -= 1
                    if op.waiters:
                        op.wake_one()
                    raise
        except TimeoutError:
            if connecting:
                raise UpstreamTimeout(
                    "connecting to the upstream timed out", reason="upstream_connect_timeout"
                ) from None
            raise UpstreamTimeout(
                "no upstream connection became free in time", reason="upstream_pool_timeout"
            ) from None

    async def _connect(
        self, origin: Origin, loop: asyncio.AbstractEventLoop, retry_connect: bool
    ) -> UpstreamConnection:
        attempts = 2 if retry_connect else 1
        while True:
            attempts -= 1
            try:
                conn = await self._open(origin, loop)
            except ssl.SSLError:
                # Certificate or handshake failures are not transient: never retried.
                raise UpstreamUnavailable(
                    "the TLS handshake with the upstream failed", reason="upstream_tls_error"
                ) from None
            except TimeoutError:
                raise UpstreamTimeout(
                    "connecting to the upstream timed out", reason="upstream_connect_timeout"
                ) from None
            except OSError:
                if attempts:
                    continue
                raise UpstreamUnavailable("could not connect to the upstream") from None
            op = self._origins[origin]
            conn.on_idle_lost = op.forget_idle
            return conn

    async def _open(self, origin: Origin, loop: asyncio.AbstractEventLoop) -> UpstreamConnection:
        limits = self.limits

        def factory() -> UpstreamConnection:
            return UpstreamConnection(
                loop,
                max_head=limits.max_response_head,
                max_headers=limits.max_response_headers,
                read_timeout=limits.read_timeout,
                write_timeout=limits.write_timeout,
            )

        if origin.unix_path is not None:
            _, conn = await loop.create_unix_connection(factory, origin.unix_path)
        elif origin.scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = build_ssl_context()
            _, conn = await loop.create_connection(
                factory,
                origin.host,
                origin.port,
                ssl=self._ssl_context,
                server_hostname=origin.host,
                ssl_handshake_timeout=limits.connect_timeout,
            )
        else:
            _, conn = await loop.create_connection(factory, origin.host, origin.port)
        return conn


async def _next_chunk(iterator: AsyncIterator[bytes]) -> tuple[bytes, bool]:
    """The next non-empty chunk and ``False``, or ``(b"", True)`` at the end.

    Empty chunks are skipped: in a chunked body an empty chunk would end the body early.
    """
    while True:
        try:
            chunk = await iterator.__anext__()
        except StopAsyncIteration:
            return b"", True
        if chunk:
            return chunk, False


def _check_length(sent: int, content_length: int, done: bool) -> None:
    if sent > content_length:
        raise RequestError(
            "the request body is longer than its Content-Length", reason="body_exceeds_content_length"
        )
    if done and sent < content_length:
        raise RequestError(
            "the request body is shorter than its Content-Length",
            reason="body_shorter_than_content_length",
        )


async def _send_rest(
    conn: UpstreamConnection,
    iterator: AsyncIterator[bytes],
    content_length: int | None,
    sent: int,
    chunked: bool,
) -> None:
    """Stream the rest of the request body with flow control, then mark the request sent.

    Stops early, leaving the request incomplete (so the connection is not reused), when the
    upstream closed the connection or answered and stopped reading.
    """
    transport = conn.transport
    assert transport is not None
    while True:
        await conn.drain(until_answer=True)
        if conn.closed or (conn.head_done and conn.write_paused):
            return
        chunk, done = await _next_chunk(iterator)
        if done:
            break
        sent += len(chunk)
        if content_length is not None:
            _check_length(sent, content_length, False)
        if conn.is_closed():
            return
        if chunked:
            frame = chunk_frame(chunk)
            if len(chunk) < _COALESCE_LIMIT:
                transport.write(frame + chunk + _CRLF)
            else:
                transport.writelines((frame, chunk, _CRLF))
        else:
            transport.write(chunk)
    if content_length is not None:
        _check_length(sent, content_length, True)
    if not conn.closed:
        if chunked:
            transport.write(_LAST_CHUNK)
        conn.request_complete = True
