"""Raw upstream servers for proxy tests: they send exactly the bytes a test scripts.

:class:`RawServer` runs ``handler(conn)`` for every accepted connection on 127.0.0.1 (or a unix
socket, optionally with TLS) and counts connections. :class:`ServerConn` reads requests with h11
(a strict, independent parser: what it accepts is what a careful upstream sees) and writes raw
response bytes. Servers stop, and their connections close, when the ``async with`` ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import h11

from gateway.proxy.pool import Origin


@dataclass
class ReceivedRequest:
    """One request as the upstream parsed it (h11), with the raw bytes it arrived as."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body_size: int = 0
    body_sha256: str = ""
    body: bytes = b""
    raw_head: bytes = b""

    def header(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (lower-case), in order."""
        return [v for n, v in self.headers if n == name]


@dataclass
class ServerConn:
    """One accepted connection, seen from the upstream."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: RawServer
    buffer: bytes = b""
    requests: list[ReceivedRequest] = field(default_factory=list)
    #: Set when the handler saw the client's EOF (while reading a request or in ``at_eof``).
    eof: asyncio.Event = field(default_factory=asyncio.Event)

    async def read_request(self, *, keep_body: bool = True, read_size: int = 65536) -> ReceivedRequest | None:
        """The next request parsed by h11, or ``None`` when the client closed first."""
        parser = h11.Connection(h11.SERVER)
        raw = bytearray()
        if self.buffer:
            raw += self.buffer
            parser.receive_data(self.buffer)
            self.buffer = b""
        request: ReceivedRequest | None = None
        digest = hashlib.sha256()
        body = bytearray()
        while True:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(read_size)
                if not data:
                    self.eof.set()
                if request is None:
                    raw += data
                if not data and request is None and not raw:
                    return None
                parser.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head_end = bytes(raw).find(b"\r\n\r\n")
                request = ReceivedRequest(
                    method=event.method,
                    target=event.target,
                    headers=[(bytes(n), bytes(v)) for n, v in event.headers],
                    raw_head=bytes(raw[: head_end + 4]),
                )
            elif isinstance(event, h11.Data):
                assert request is not None
                digest.update(event.data)
                request.body_size += len(event.data)
                if keep_body:
                    body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                request.body_sha256 = digest.hexdigest()
                request.body = bytes(body)
                self.buffer = parser.trailing_data[0]
                self.requests.append(request)
                self.server.requests.append(request)
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def read_head(self) -> bytes:
        """Raw bytes up to the end of the next request head (no parsing)."""
        data = await self.reader.readuntil(b"\r\n\r\n")
        return data

    async def send(self, data: bytes) -> None:
        """Write raw bytes and wait until they are handed to the kernel."""
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        """Close the connection (FIN)."""
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def abort(self) -> None:
        """Reset the connection (RST)."""
        transport = self.writer.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.abort()

    async def at_eof(self, within: float = 5.0) -> bool:
        """Read (and discard) until the client closes; True if it did ``within`` seconds.

        For handlers; tests use :meth:`client_closed` (one reader at a time on a stream).
        """
        try:
            async with asyncio.timeout(within):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        self.eof.set()
        return True

    async def client_closed(self, within: float = 5.0) -> bool:
        """True once the handler has seen the client close the connection (``within`` seconds)."""
        try:
            async with asyncio.timeout(within):
                await self.eof.wait()
        except TimeoutError:
            return False
        return True


Handler = Callable[[ServerConn], Awaitable[None]]


class RawServer:
    """A scripted upstream: ``handler`` runs once per accepted connection."""

    def __init__(
        self,
        handler: Handler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        unix_path: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.unix_path = unix_path
        self.host = host
        self.connections: list[ServerConn] = []
        self.requests: list[ReceivedRequest] = []
        self.errors: list[BaseException] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def accepted(self) -> int:
        """How many connections were accepted so far."""
        return len(self.connections)

    def origin(self, host: str = "127.0.0.1") -> Origin:
        """The pool origin for this server."""
        if self.unix_path is not None:
            return Origin("unix", "localhost", 0, self.unix_path)
        return Origin("https" if self.ssl_context else "http", host, self.port)

    async def __aenter__(self) -> RawServer:
        if self.unix_path is not None:
            self._server = await asyncio.start_unix_server(self._accept, self.unix_path, ssl=self.ssl_context)
        else:
            self._server = await asyncio.start_server(self._accept, self.host, 0, ssl=self.ssl_context)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.connections:
            conn.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ServerConn(reader, writer, self)
        self.connections.append(conn)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping (asyncio.streams logs a task that ends cancelled)
        except BaseException as exc:  # a broken script must fail the test, not hang it
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            writer.transport.close()


def respond_each(*responses: bytes) -> Handler:
    """A handler answering successive requests on one connection with these raw responses.

    After the last one it waits for the client to close.
    """

    async def handler(conn: ServerConn) -> None:
        for response in responses:
            if await conn.read_request() is None:
                return
            await conn.send(response)
        await conn.at_eof(within=30)

    return handler


def keep_alive(response: bytes) -> Handler:
    """A handler answering every request on the connection with the same raw response."""

    async def handler(conn: ServerConn) -> None:
        while await conn.read_request() is not None:
            await conn.send(response)

    return handler


def ok(body: bytes = b"ok", *extra: bytes) -> bytes:
    """A ``200`` response with a Content-Length body and extra raw header lines."""
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(h + b"\r\n" for h in extra)
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A listening 127.0.0.1 port whose accept queue is full: new connects hang (SYN dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()
