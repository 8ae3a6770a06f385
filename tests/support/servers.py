"""Real servers for end-to-end tests: any ASGI app under real uvicorn, the gateway, an echo upstream.

Each server runs uvicorn (uvloop + httptools, as in production) in a daemon thread with its own
event loop, on 127.0.0.1 and a free port, and stops cleanly. Typical use::

    with EchoUpstream() as upstream, JWKSServer() as idp:
        key = idp.add_key("RS256")
        with GatewayServer(config_for(idp, upstream)) as gw:
            r = httpx.get(gw.url + "/api/x", headers={"Authorization": f"Bearer {idp.mint(key, aud='api')}"})
            assert r.json()["headers"]["x-user-id"] == ["user-1"]
            assert upstream.count == 1
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import uvicorn
import uvloop
import yaml

from gateway.asgi import GatewayApp
from gateway.asgi_types import Receive, Scope, Send
from gateway.config.loader import parse_config
from gateway.config.models import GatewayConfig
from gateway.devtools import echo_app
from gateway.policy import build_policy
from gateway.server import uvicorn_config

__all__ = ["EchoUpstream", "GatewayServer", "ServerThread", "free_socket"]


def free_socket() -> socket.socket:
    """A bound (not yet listening) TCP socket on 127.0.0.1 and a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class ServerThread:
    """An ASGI app served by real uvicorn in a background thread."""

    def __init__(self, app: Any, *, config: uvicorn.Config | None = None) -> None:
        self.app = app
        self._sock = free_socket()
        self.port: int = self._sock.getsockname()[1]
        self._config = config or uvicorn.Config(
            app,
            loop="none",
            http="httptools",
            lifespan="off",
            log_config=None,
            access_log=False,
            interface="asgi3",
            proxy_headers=False,
        )
        self._server = uvicorn.Server(self._config)
        # Signals belong to the main thread (pytest); this server never installs handlers.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        def run() -> None:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                self.loop = runner.get_loop()
                runner.run(self._server.serve(sockets=[self._sock]))

        self._thread = threading.Thread(target=run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's loop (e.g. to inspect async state)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EchoUpstream(ServerThread):
    """The demo's echo app, recording every request it receives (method, raw path, headers)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        super().__init__(self._app)

    async def _app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.requests.append(
                {
                    "method": scope["method"],
                    "path": scope["raw_path"].decode("latin-1"),
                    "query": scope["query_string"].decode("latin-1"),
                    "headers": list(scope["headers"]),
                }
            )
        await echo_app(scope, receive, send)

    @property
    def count(self) -> int:
        return len(self.requests)

    def __enter__(self) -> EchoUpstream:
        self.start()
        return self


class GatewayServer(ServerThread):
    """The gateway (proxy mode) under real uvicorn, from a config mapping or YAML text."""

    def __init__(
        self, config: Mapping[str, Any] | str | GatewayConfig, *, env: Mapping[str, str] | None = None
    ) -> None:
        if isinstance(config, GatewayConfig):
            cfg = config
        else:
            text = config if isinstance(config, str) else yaml.safe_dump(json.loads(json.dumps(config)))
            cfg = parse_config(text, file="<test>", env=env or {})
        self.config = cfg
        self.gateway = GatewayApp(build_policy(cfg))
        super().__init__(self.gateway, config=uvicorn_config(self.gateway, "127.0.0.1", 0, cfg))

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until every provider has keys (remote JWKS fetched)."""
        deadline = time.monotonic() + timeout
        while not all(s["ready"] for s in self.gateway.policy.key_status().values()):
            if time.monotonic() > deadline:
                raise TimeoutError("gateway keys not ready")
            time.sleep(0.02)

    def __enter__(self) -> GatewayServer:
        self.start()
        return self


def raw_request(port: int, request: bytes, *, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send exact request bytes (no client-side normalisation) and return (status, whole response).

    For paths that httpx would "fix" (dot-segments, encodings) before sending.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    None,
                )
                if length is not None and len(body) >= length:
                    break
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data
