"""A real JWKS / OIDC-discovery server on 127.0.0.1 for tests.

It runs a raw asyncio HTTP/1.1 server (one request per connection, ``Connection: close``) in a
daemon thread with its own event loop, so sync and async tests alike can use it; every
setting can be changed from the test while it runs. It serves:

- ``GET /.well-known/openid-configuration``: ``{"issuer": ..., "jwks_uri": ...}``;
- ``GET /jwks.json``: the published keys (plus any raw entries), with an optional
  ``Cache-Control``.

Typical use (a fixture is three lines)::

    @pytest.fixture
    def idp():
        with JWKSServer() as server:
            yield server

    def test_x(idp):
        key = idp.add_key("RS256")                 # publish a pooled RS256 key, kid "rs256-0"
        token = idp.mint(key, aud="api")           # iss = idp.issuer, valid for 5 minutes
        idp.cache_control = "max-age=2"
        idp.delay = 1.0                            # every answer waits 1 s
        idp.serve_status(503) / serve_html() / serve_invalid_json() / serve_huge() / redirect_to(url)
        idp.serve_ok()                             # back to normal
        idp.go_down(); idp.come_up()               # connection refused, then back on the same port
        idp.fetch_count, idp.discovery_count, idp.fetch_times

Counters count every request to the path, whatever the answer. Pass ``ssl_context`` (e.g. from
``trustme``) to serve https.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.support.tokens import SigningKey, default_claims, new_signing_key

__all__ = ["JWKSServer", "Response"]

JWKS_PATH = "/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"
_REASONS = {
    200: "OK",
    302: "Found",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Response:
    """A canned answer that replaces the normal one for a path."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    #: Send no Content-Length (the body ends when the connection closes).
    omit_length: bool = False


class JWKSServer:
    """A controllable identity provider serving discovery and a JWKS (see the module docstring)."""

    def __init__(self, *, issuer: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self._issuer = issuer
        self._ssl = ssl_context
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[SigningKey, dict[str, Any]]] = {}
        self._anonymous = 0
        self._extra_entries: list[Any] = []
        self._document: Any = None
        self._overrides: dict[str, Response] = {}
        self._requests: dict[str, list[float]] = {}
        #: ``Cache-Control`` header of the JWKS answer (None: no header).
        self.cache_control: str | None = None
        #: Seconds every answer waits before its first byte.
        self.delay: float = 0.0
        #: Seconds between 16-byte pieces of the JWKS body (0: sent at once).
        self.drip: float = 0.0
        #: Overrides of the discovery document's members (None: the real values).
        self.discovery_issuer: str | None = None
        self.discovery_jwks_uri: str | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> JWKSServer:
        """Start listening on a free port of 127.0.0.1."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="jwks-server", daemon=True)
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        """Stop the server and its thread."""
        if self._loop is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(timeout=5)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> JWKSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def go_down(self) -> None:
        """Stop listening: new connections are refused until :meth:`come_up`."""
        self._call(self._close_listener())

    def come_up(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen())

    # -- URLs -----------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http(s)://127.0.0.1:<port>``."""
        return f"{'https' if self._ssl else 'http'}://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        """The issuer (default: the base URL)."""
        return self._issuer or self.base_url

    @property
    def jwks_uri(self) -> str:
        """The JWKS URL."""
        return self.base_url + JWKS_PATH

    @property
    def discovery_url(self) -> str:
        """The discovery URL."""
        return self.base_url + DISCOVERY_PATH

    # -- keys -----------------------------------------------------------------------------------

    def add_key(
        self,
        alg: str = "RS256",
        *,
        slot: int = 0,
        kid: str | None = "",
        publish_kid: bool = True,
        publish_alg: bool = True,
        **jwk_extra: Any,
    ) -> SigningKey:
        """Publish a pooled signing key (see :func:`tests.support.tokens.new_signing_key`)."""
        key = new_signing_key(alg, slot=slot, kid=kid)
        jwk = key.public_jwk(include_kid=publish_kid, include_alg=publish_alg, **jwk_extra)
        with self._lock:
            if key.kid is None or not publish_kid:
                self._anonymous += 1
                name = f"\0anonymous-{self._anonymous}"
            else:
                name = key.kid
            self._keys[name] = (key, jwk)
        return key

    def remove_key(self, key: SigningKey | str) -> None:
        """Withdraw a published key (by key or kid)."""
        kid = key if isinstance(key, str) else key.kid
        with self._lock:
            for name, (published, _) in list(self._keys.items()):
                if name == kid or published.kid == kid:
                    del self._keys[name]

    def clear_keys(self) -> None:
        """Withdraw every key and raw entry."""
        with self._lock:
            self._keys.clear()
            self._extra_entries.clear()

    def rotate(self, alg: str = "RS256", *, slot: int) -> SigningKey:
        """Replace every published key with a new one (from pool ``slot``)."""
        self.clear_keys()
        return self.add_key(alg, slot=slot)

    def add_entry(self, entry: Any) -> None:
        """Append a raw entry (any JSON value) to the ``keys`` array."""
        with self._lock:
            self._extra_entries.append(entry)

    def set_document(self, document: Any) -> None:
        """Serve this JSON value as the whole JWKS (None: back to the published keys)."""
        with self._lock:
            self._document = document

    def jwks(self) -> dict[str, Any]:
        """The JWKS document as currently served (when not overridden)."""
        with self._lock:
            if self._document is not None:
                return dict(self._document)
            return {"keys": [jwk for _, jwk in self._keys.values()] + list(self._extra_entries)}

    def mint(
        self, key: SigningKey, claims: dict[str, Any] | None = None, *, include_kid: bool = True, **extra: Any
    ) -> str:
        """A token signed by ``key``: ``claims`` or :func:`default_claims` for this issuer + ``extra``."""
        body = claims if claims is not None else default_claims(self.issuer, **extra)
        return key.sign(body, include_kid=include_kid)

    # -- behaviour ------------------------------------------------------------------------------

    def respond(self, path: str, response: Response | None) -> None:
        """Answer ``path`` with ``response`` instead of the normal answer (None: normal)."""
        with self._lock:
            if response is None:
                self._overrides.pop(path, None)
            else:
                self._overrides[path] = response

    def serve_ok(self) -> None:
        """Normal answers again on every path (delay and drip reset too)."""
        with self._lock:
            self._overrides.clear()
        self.delay = 0.0
        self.drip = 0.0

    def serve_status(self, status: int, path: str = JWKS_PATH) -> None:
        """Answer ``path`` with an error status and a small body."""
        self.respond(path, Response(status, b'{"error": "unavailable"}'))

    def serve_html(self, path: str = JWKS_PATH) -> None:
        """Answer 200 with an HTML page (a captive portal, a login page...)."""
        self.respond(path, Response(200, b"<html><body>Sign in</body></html>", "text/html"))

    def serve_invalid_json(self, path: str = JWKS_PATH) -> None:
        """Answer 200 with truncated JSON."""
        self.respond(path, Response(200, b'{"keys": [{"kty": "RSA", '))

    def serve_body(self, body: bytes, path: str = JWKS_PATH, content_type: str = "application/json") -> None:
        """Answer 200 with these exact bytes."""
        self.respond(path, Response(200, body, content_type))

    def serve_huge(
        self, size: int = 3 * 1024 * 1024, *, with_key: SigningKey | None = None, omit_length: bool = False
    ) -> None:
        """Answer with a valid-looking JWKS of about ``size`` bytes of filler RSA keys.

        ``with_key``'s public JWK is included, so a test can show that a key published only in
        an oversized document is refused. ``omit_length`` drops Content-Length, so the client
        has to enforce its cap while streaming.
        """
        template = new_signing_key("RS256", slot=0).public_jwk(include_alg=False)
        entry_size = len(json.dumps(template)) + 20
        keys = [{**template, "kid": f"filler-{i}"} for i in range(size // entry_size + 1)]
        if with_key is not None:
            keys.append(with_key.public_jwk())
        body = json.dumps({"keys": keys}).encode()
        self.respond(JWKS_PATH, Response(200, body, omit_length=omit_length))

    def redirect_to(self, location: str, path: str = JWKS_PATH) -> None:
        """Answer ``path`` with ``302 Found`` to ``location``."""
        self.respond(path, Response(302, b"", "text/plain", {"Location": location}))

    # -- counters -------------------------------------------------------------------------------

    @property
    def fetch_count(self) -> int:
        """Requests to the JWKS path so far."""
        return len(self.fetch_times)

    @property
    def fetch_times(self) -> list[float]:
        """``time.monotonic()`` of each JWKS request."""
        with self._lock:
            return list(self._requests.get(JWKS_PATH, ()))

    @property
    def discovery_count(self) -> int:
        """Requests to the discovery path so far."""
        with self._lock:
            return len(self._requests.get(DISCOVERY_PATH, ()))

    def request_count(self, path: str) -> int:
        """Requests to any ``path`` (query ignored) so far."""
        with self._lock:
            return len(self._requests.get(path, ()))

    def reset_counts(self) -> None:
        """Forget every counted request."""
        with self._lock:
            self._requests.clear()

    def wait_for_fetches(self, count: int, timeout: float = 5.0) -> None:
        """Block until at least ``count`` JWKS requests arrived (sync tests only)."""
        deadline = time.monotonic() + timeout
        while self.fetch_count < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.fetch_count} JWKS fetches, expected {count}")
            time.sleep(0.01)

    async def await_fetches(self, count: int, within: float = 5.0) -> None:
        """Wait until at least ``count`` JWKS requests arrived, without blocking the loop."""
        deadline = time.monotonic() + within
        while self.fetch_count < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.fetch_count} JWKS fetches, expected {count}")
            await asyncio.sleep(0.01)

    # -- the server -----------------------------------------------------------------------------

    def _call(self, coro: Any) -> Any:
        assert self._loop is not None, "the server is not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, ssl=self._ssl, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _shutdown(self) -> None:
        await self._close_listener()
        # Abort connections still open (a client that gave up on a huge body leaves the handler
        # in drain()): close() would wait for the write buffer to flush, and the loop stops next.
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(BaseException):
                await task
        # abort() closes the socket in a callback: let it run before the loop is stopped, or the
        # socket is left to the garbage collector (ResourceWarning).
        for _ in range(3):
            await asyncio.sleep(0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else "/"
            with self._lock:
                self._requests.setdefault(path, []).append(time.monotonic())
            if self.delay:
                await asyncio.sleep(self.delay)
            response = self._answer(path)
            await self._send(writer, response, drip=self.drip if path == JWKS_PATH else 0.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._writers.discard(writer)  # only now: _shutdown aborts one still closing

    def _answer(self, path: str) -> Response:
        with self._lock:
            override = self._overrides.get(path)
        if override is not None:
            return override
        if path == JWKS_PATH:
            headers = {"Cache-Control": self.cache_control} if self.cache_control else {}
            return Response(200, json.dumps(self.jwks()).encode(), headers=headers)
        if path == DISCOVERY_PATH:
            document = {
                "issuer": self.discovery_issuer if self.discovery_issuer is not None else self.issuer,
                "jwks_uri": self.discovery_jwks_uri if self.discovery_jwks_uri is not None else self.jwks_uri,
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
            return Response(200, json.dumps(document).encode())
        return Response(404, b'{"error": "not found"}')

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, response: Response, *, drip: float) -> None:
        reason = _REASONS.get(response.status, "Status")
        lines = [
            f"HTTP/1.1 {response.status} {reason}",
            f"Content-Type: {response.content_type}",
            *([] if response.omit_length else [f"Content-Length: {len(response.body)}"]),
            "Connection: close",
            *(f"{name}: {value}" for name, value in response.headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not drip:
            writer.write(response.body)
            await writer.drain()
            return
        for piece in _pieces(response.body, 16):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(drip)


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
