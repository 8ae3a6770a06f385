"""Servers for the proxy engine's end-to-end tests.

- :class:`ThreadedRawServer`: a scripted raw upstream (:class:`~tests.support.upstream_servers.RawServer`)
  on its own event loop in a daemon thread, for sync tests against a gateway in another thread;
- :class:`StreamUpstream`: an ASGI upstream under real uvicorn with streaming endpoints
  (``/download``, ``/upload``, ``/events``, ``/slow``, ``/cookie``, ``/gzip``...), TCP, unix
  socket or TLS (optionally requiring a client certificate);
- :class:`WebSocketEcho`: a real WebSocket upstream (the ``websockets`` library's server);
- :class:`GatewayProcess`: ``jwt-gateway serve --config FILE`` as a subprocess (for RSS and
  SIGTERM tests);
- :func:`read_response`: a raw HTTP/1.1 client that reports how a response was framed and
  whether it was complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import uvloop
import yaml

from tests.support.servers import ServerThread
from tests.support.upstream_servers import Handler, RawServer

__all__ = [
    "BLOCK",
    "GatewayProcess",
    "RawResponse",
    "ResponseReader",
    "StreamUpstream",
    "ThreadedRawServer",
    "WebSocketEcho",
    "exchange",
    "expected_download_digest",
    "read_response",
    "rss_bytes",
]

#: The download endpoint sends this block over and over (1 MiB of fixed pseudo-random bytes).
BLOCK = hashlib.shake_256(b"jwt-gateway proxy tests").digest(1 << 20)


def expected_download_digest(size: int) -> str:
    """sha256 of what ``/download?size=N`` sends."""
    digest = hashlib.sha256()
    full, rest = divmod(size, len(BLOCK))
    for _ in range(full):
        digest.update(BLOCK)
    digest.update(BLOCK[:rest])
    return digest.hexdigest()


# ------------------------------------------------------------------------------ raw upstream


class ThreadedRawServer:
    """A :class:`RawServer` on its own loop in a daemon thread (usable from sync tests)."""

    def __init__(self, handler: Handler, **kwargs: Any) -> None:
        self._handler = handler
        self._kwargs = kwargs
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="raw-upstream", daemon=True)
        self.server: RawServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def raw(self) -> RawServer:
        assert self.server is not None
        return self.server

    def call(self, coro: Awaitable[Any], timeout: float = 10.0) -> Any:
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def __enter__(self) -> ThreadedRawServer:
        self._thread.start()

        async def start() -> RawServer:
            server = RawServer(self._handler, **self._kwargs)
            await server.__aenter__()
            return server

        self.server = self.call(start())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.call(self.server.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


# ----------------------------------------------------------------------------- ASGI upstream


@dataclass
class Seen:
    """What :class:`StreamUpstream` recorded about one request."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body_size: int = 0
    body_sha256: str = ""
    disconnected_at: float | None = None


@dataclass
class _Signals:
    """Cross-thread signals the tests give the upstream (set from the test thread)."""

    loop: asyncio.AbstractEventLoop | None = None
    events: dict[str, asyncio.Event] = field(default_factory=dict)

    def event(self, name: str) -> asyncio.Event:
        if name not in self.events:
            self.events[name] = asyncio.Event()
        return self.events[name]


class StreamUpstream(ServerThread):
    """An ASGI upstream with streaming endpoints, under real uvicorn (httptools).

    ``unix_path``: serve on that unix socket instead of TCP. ``ssl``: keyword arguments for
    uvicorn's TLS settings (``ssl_certfile``, ``ssl_keyfile``, ``ssl_ca_certs``, ``ssl_cert_reqs``).
    """

    def __init__(self, *, unix_path: str | None = None, tls: dict[str, Any] | None = None) -> None:
        self.seen: list[Seen] = []
        self.signals = _Signals()
        self.unix_path = unix_path
        config = uvicorn.Config(
            self._app,
            loop="none",
            http="httptools",
            lifespan="off",
            log_config=None,
            access_log=False,
            interface="asgi3",
            proxy_headers=False,
            timeout_graceful_shutdown=1,  # handlers still waiting (slow, event streams) are cancelled
            **(tls or {}),
        )
        super().__init__(self._app, config=config)
        if unix_path is not None:
            self._sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(unix_path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(unix_path)
            self._sock = sock
        self.tls = tls is not None

    @property
    def url(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def signal(self, name: str) -> None:
        """Set the upstream-side event ``name`` (from the test thread)."""
        loop = self.loop
        assert loop is not None
        loop.call_soon_threadsafe(lambda: self.signals.event(name).set())

    def __enter__(self) -> StreamUpstream:
        self.start()
        self.signals.loop = self.loop
        return self

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen = Seen(
            scope["method"],
            scope["raw_path"].decode("latin-1"),
            scope["query_string"],
            list(scope["headers"]),
        )
        self.seen.append(seen)
        route = scope["path"]
        query = dict(
            part.split("=", 1) for part in scope["query_string"].decode("latin-1").split("&") if "=" in part
        )
        handler = _ROUTES.get(route, _echo)
        await handler(self, seen, query, receive, send)


async def _read_body(seen: Seen, receive: Any) -> bytes:
    digest = hashlib.sha256()
    kept = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            seen.disconnected_at = time.monotonic()
            break
        chunk = message.get("body", b"")
        digest.update(chunk)
        seen.body_size += len(chunk)
        if len(kept) < 1 << 16:
            kept += chunk[: (1 << 16) - len(kept)]
        if not message.get("more_body", False):
            break
    seen.body_sha256 = digest.hexdigest()
    return bytes(kept)


async def _start(send: Any, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _echo(up: StreamUpstream, seen: Seen, query: dict[str, str], receive: Any, send: Any) -> None:
    body = await _read_body(seen, receive)
    payload = {
        "method": seen.method,
        "path": seen.path,
        "query": seen.query.decode("latin-1"),
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in seen.headers],
        "body_size": seen.body_size,
        "body_sha256": seen.body_sha256,
        "body_head": body[:64].decode("latin-1"),
    }
    data = json.dumps(payload).encode()
    await _start(send, 200, [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))])
    await send({"type": "http.response.body", "body": data})


async def _download(up: StreamUpstream, seen: Seen, query: dict[str, str], receive: Any, send: Any) -> None:
    size = int(query.get("size", "0"))
    chunked = query.get("framing") == "chunked"
    headers = [(b"content-type", b"application/octet-stream")]
    if not chunked:
        headers.append((b"content-length", b"%d" % size))
    await _start(send, 200, headers)
    sent = 0
    step = 64 * 1024
    while sent < size:
        n = min(step, size - sent)
        offset = sent % len(BLOCK)
        piece = BLOCK[offset : offset + n]
        if len(piece) < n:
            piece += BLOCK[: n - len(piece)]
        sent += n
        await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
    if size == 0:
        await send({"type": "http.response.body", "body": b""})


async def _upload(up: StreamUpstream, seen: Seen, query: dict[str, str], receive: Any, send: Any) -> None:
    await _read_body(seen, receive)
    data = json.dumps({"size": seen.body_size, "sha256": seen.body_sha256}).encode()
    await _start(send, 200, [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))])
    await send({"type": "http.response.body", "body": data})


async def _events(up: StreamUpstream, seen: Seen, query: dict[str, str], receive: Any, send: Any) -> None:
    """SSE: event 1, then event 2 only once the test signals ``query['gate']`` (if given)."""
    await _start(send, 200, [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")])
    await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    gate = query.get("gate")
    if gate:
        waiter = asyncio.ensure_future(up.signals.event(gate).wait())
        gone = asyncio.ensure_future(_until_disconnect(seen, receive))
        done, pending = await asyncio.wait((waiter, gone), return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if gone in done:
            return
    await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})


async def _until_disconnect(seen: Seen, receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    seen.disconnected_at = time.monotonic()


async def _slow(up: StreamUpstream, seen: Seen, query: dict[str, str], receive: Any, send: Any) -> None:
    await _read_body(seen, receive)
    await asyncio.sleep(float(query.get("delay", "1")))
    await _start(send, 200, [(b"content-type", b"text/plain"), (b"content-length", b"4")])
    await send({"type": "http.response.body", "body": b"slow"})


async def _cookie(up: StreamUpstream, seen: Seen, query: dict[str, str], receive: Any, send: Any) -> None:
    """Sets three cookies (for the user named in ``user``) and echoes the Cookie it received."""
    await _read_body(seen, receive)
    user = query.get("user", "a").encode()
    cookie = b"; ".join(v for n, v in seen.headers if n == b"cookie")
    headers = [
        (b"set-cookie", b"session=" + user + b"; Path=/; HttpOnly"),
        (b"x-between", b"1"),
        (b"set-cookie", b"theme=dark; Path=/"),
        (b"set-cookie", b"lang=en; Path=/"),
        (b"content-length", b"%d" % len(cookie)),
    ]
    await _start(send, 200, headers)
    await send({"type": "http.response.body", "body": cookie})


GZIP_PLAIN = b"compressible " * 1000
GZIP_BODY = gzip.compress(GZIP_PLAIN, mtime=0)


async def _gzip(up: StreamUpstream, seen: Seen, query: dict[str, str], receive: Any, send: Any) -> None:
    await _read_body(seen, receive)
    headers = [
        (b"content-type", b"text/plain"),
        (b"content-encoding", b"gzip"),
        (b"vary", b"accept-encoding"),
        (b"content-length", b"%d" % len(GZIP_BODY)),
    ]
    await _start(send, 200, headers)
    await send({"type": "http.response.body", "body": GZIP_BODY})


async def _status(up: StreamUpstream, seen: Seen, query: dict[str, str], receive: Any, send: Any) -> None:
    """``/status?code=N&length=L``: status N with a Content-Length header of L (and no body)."""
    await _read_body(seen, receive)
    code = int(query.get("code", "200"))
    headers = [(b"etag", b'"v1"')]
    if "length" in query:
        headers.append((b"content-length", query["length"].encode()))
    await _start(send, code, headers)
    await send({"type": "http.response.body", "body": b""})


_ROUTES: dict[str, Callable[..., Awaitable[None]]] = {
    "/download": _download,
    "/upload": _upload,
    "/events": _events,
    "/slow": _slow,
    "/cookie": _cookie,
    "/gzip": _gzip,
    "/status": _status,
}


# ----------------------------------------------------------------------------- WebSocket echo


class WebSocketEcho:
    """A WebSocket upstream (websockets' asyncio server) in a daemon thread.

    Echoes every message; ``close <code>`` makes it close with that code; ``whoami`` answers
    with the request's X-User-Id header. Accepts the subprotocols in ``subprotocols`` (the
    first the client offers). Records each handshake's request headers in ``handshakes``.
    """

    def __init__(self, subprotocols: list[str] | None = None) -> None:
        self.subprotocols = subprotocols
        self.handshakes: list[dict[str, str]] = []
        self.closed: list[int | None] = []
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ws-upstream", daemon=True)
        self._server: Any = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def __enter__(self) -> WebSocketEcho:
        from websockets.asyncio.server import serve

        self._thread.start()

        async def start() -> Any:
            return await serve(
                self._handler,
                "127.0.0.1",
                0,
                select_subprotocol=self._select,
                process_request=self._record,
                compression=None,
            )

        self._server = self._call(start())
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        return self

    def _select(self, connection: Any, offered: Any) -> Any:
        # The first offered subprotocol this server speaks; none is fine too.
        return next((p for p in offered if p in (self.subprotocols or [])), None)

    def _record(self, connection: Any, request: Any) -> None:
        self.handshakes.append({k.lower(): v for k, v in request.headers.raw_items()})

    async def _handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in ws:
                if message == "whoami":
                    await ws.send(ws.request.headers.get("X-User-Id", ""))
                elif isinstance(message, str) and message.startswith("close "):
                    await ws.close(int(message.split()[1]), "asked to")
                    break
                else:
                    await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.closed.append(ws.close_code)

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        with contextlib.suppress(Exception):
            self._call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


# ---------------------------------------------------------------------------- gateway process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int, field_name: str = "VmRSS") -> int:
    """A process's resident set size (or ``VmHWM``, its peak) from /proc, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not found for pid {pid}")


class GatewayProcess:
    """``jwt-gateway serve --config FILE`` in a subprocess, on a free port."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.port = _free_port()
        config = {**config, "listen": {"host": "127.0.0.1", "port": self.port}}
        config.setdefault("admin", {"enabled": False})
        self.config_file = workdir / "gateway.yaml"
        self.config_file.write_text(yaml.safe_dump(json.loads(json.dumps(config))))
        self.log_file = workdir / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> GatewayProcess:
        command = Path(sys.executable).parent / "jwt-gateway"
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [str(command), "serve", "--config", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited: {self.log_file.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start listening")
            time.sleep(0.05)
        return self

    def terminate(self) -> None:
        """Send SIGTERM (the drain signal)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


# ---------------------------------------------------------------------------- raw HTTP client


@dataclass
class RawResponse:
    """A response read byte by byte from a raw socket."""

    status: int
    head: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    #: ``length``, ``chunked``, ``close`` (read until EOF) or ``none``.
    framing: str
    #: The body ended as its framing says (all of Content-Length, or the last chunk).
    complete: bool
    #: The connection was closed by the gateway after the response.
    closed: bool

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


class ResponseReader:
    """Reads successive responses from one raw socket (bytes read past a response are kept)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.closed = False

    def _more(self) -> bool:
        if self.closed:
            return False
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            data = b""
        if not data:
            self.closed = True
            return False
        self.buffer += data
        return True

    def read(self, *, method: str = "GET", timeout: float = 10.0) -> RawResponse:
        """The next response, honouring its framing; a broken connection ends it early."""
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.buffer:
            if not self._more():
                return RawResponse(0, self.buffer, [], b"", "none", False, True)
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        names = dict(headers)

        def done(body: bytes, framing: str, complete: bool) -> RawResponse:
            return RawResponse(status, head, headers, body, framing, complete, self.closed)

        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return done(b"", "none", True)
        if names.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buffer:
                    if not self._more():
                        return done(body, "chunked", False)
                size_line, _, self.buffer = self.buffer.partition(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                while len(self.buffer) < size + 2:
                    if not self._more():
                        return done(body + self.buffer[:size], "chunked", False)
                body += self.buffer[:size]
                self.buffer = self.buffer[size + 2 :]
                if size == 0:
                    return done(body, "chunked", True)
        if b"content-length" in names:
            length = int(names[b"content-length"])
            while len(self.buffer) < length:
                if not self._more():
                    return done(self.buffer, "length", False)
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return done(body, "length", True)
        while self._more():
            pass
        body, self.buffer = self.buffer, b""
        return done(body, "close", True)


def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> list[RawResponse]:
    """Send ``data`` on one connection and read every response until the connection closes
    (or a response says ``Connection: close``)."""
    responses = []
    with connect(port, timeout) as sock:
        sock.sendall(data)
        reader = ResponseReader(sock)
        while True:
            response = reader.read(timeout=timeout)
            if response.status == 0:
                return responses
            responses.append(response)
            if response.closed or response.header(b"connection") == [b"close"]:
                return responses


def read_response(sock: socket.socket, *, method: str = "GET", timeout: float = 10.0) -> RawResponse:
    """Read one response from ``sock`` (see :class:`ResponseReader`)."""
    return ResponseReader(sock).read(method=method, timeout=timeout)


@contextlib.contextmanager
def connect(port: int, timeout: float = 10.0) -> Iterator[socket.socket]:
    """A raw TCP connection to 127.0.0.1:``port``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()


def sha256_stream(chunks: Iterator[bytes]) -> tuple[int, str]:
    """(size, sha256) of a stream of chunks."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def stream_upload(url: str, size: int, headers: dict[str, str] | None = None) -> httpx.Response:
    """POST ``size`` bytes of BLOCK data, chunked (no Content-Length), and return the answer."""

    def body() -> Iterator[bytes]:
        sent = 0
        while sent < size:
            piece = BLOCK[: min(len(BLOCK), size - sent)]
            sent += len(piece)
            yield piece

    return httpx.post(url, content=body(), headers=headers, timeout=60)
