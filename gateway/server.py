"""Run the gateway under uvicorn (uvloop + httptools): the proxied port and the admin port.

uvicorn's own proxy-header handling is off: the gateway decides for itself which
X-Forwarded-*/Forwarded values to believe (``proxy.trusted_proxies``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn

from gateway import logs
from gateway.asgi import GatewayApp
from gateway.config.loader import check_servable, load_config
from gateway.config.models import GatewayConfig
from gateway.errors import GatewayError, LimitExceeded, RequestError, RequestTimeout
from gateway.http.admin import AdminApp
from gateway.http.problem import render_error
from gateway.metrics import GatewayMetrics
from gateway.observe import Observer
from gateway.policy import build_policy
from gateway.proxy.protocol import ProtocolLimits, QuietWebSocketProtocol, hardened_protocol
from gateway.reload import Reloader

log = logging.getLogger("jwt_gateway")


class _SecondaryServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the primary one in the same loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(app: Any, host: str, port: int, cfg: GatewayConfig, **extra: Any) -> uvicorn.Config:
    """uvicorn settings shared by every listener of the gateway.

    Both listeners speak the hardened httptools protocol (:mod:`gateway.proxy.protocol`: head
    size limit ``proxy.max_head_bytes`` -> 431, head timeout ``proxy.head_timeout`` -> 408).
    The proxied port relays WebSockets (websockets' sans-I/O implementation); the admin port
    refuses them.
    """
    gateway = isinstance(app, GatewayApp)
    options: dict[str, Any] = {
        "http": hardened_protocol(protocol_limits(cfg)),
        "ws": QuietWebSocketProtocol if gateway else "none",
        **extra,
    }
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        interface="asgi3",
        lifespan="on" if gateway else "off",
        proxy_headers=False,
        server_header=False,
        # The upstream's Date passes through; the gateway dates its own answers (problem.py).
        date_header=not gateway,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=max(1, int(cfg.proxy.shutdown_timeout)),
        **options,
    )


def protocol_limits(cfg: GatewayConfig) -> ProtocolLimits:
    """The client-facing protocol's limits from ``cfg.proxy``, with their problem+json answers."""
    malformed = RequestError("the request is not valid HTTP/1.1", reason="malformed_request")
    malformed.bearer_error = None  # a framing error, not a credentials problem: no challenge
    timeout = RequestTimeout("the request head did not arrive in time", reason="head_timeout")
    too_large = LimitExceeded(
        f"the request head exceeds {cfg.proxy.max_head_bytes} bytes", reason="headers_too_large", status=431
    )
    return ProtocolLimits(
        max_head_bytes=cfg.proxy.max_head_bytes,
        head_timeout=cfg.proxy.head_timeout,
        responses={
            error.status: _closing_response(error, cfg.realm) for error in (malformed, timeout, too_large)
        },
    )


def _closing_response(error: GatewayError, realm: str) -> bytes:
    """``error`` as complete HTTP/1.1 response bytes that close the connection (no Date: these
    answers are rendered once, at start-up)."""
    rendered = render_error(error, realm=realm)
    lines = [b"HTTP/1.1 %d %s\r\n" % (rendered.status, error.title.encode("ascii"))]
    lines += [name + b": " + value + b"\r\n" for name, value in rendered.headers if name != b"date"]
    lines.append(b"connection: close\r\n\r\n")
    return b"".join(lines) + rendered.body


class _MainServer(uvicorn.Server):
    """The proxied listener's server: drains on SIGTERM/SIGINT.

    uvicorn's own signal capture re-raises the signal once the server has stopped, which kills
    the process by the default SIGTERM action before the admin listener and the key sources are
    closed; here the handlers live on the event loop and the process ends normally (exit 0)
    after a clean drain. ``on_exit`` runs when the signal arrives (readiness turns false).
    """

    def __init__(self, config: uvicorn.Config, *, on_exit: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover - not on Linux
                continue
            installed.append(sig)
        try:
            yield
        finally:
            for captured in installed:
                loop.remove_signal_handler(captured)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info(
                "%s received: draining (in-flight requests get up to %ss)",
                signal.Signals(sig).name,
                self.config.timeout_graceful_shutdown,
            )
        if self.on_exit is not None:
            self.on_exit()
        super().handle_exit(sig, frame)


#: In multiprocess mode each worker copies its key status into the shared gauges this often.
KEY_STATUS_REFRESH_SECONDS = 5.0


async def _refresh_key_status(metrics: GatewayMetrics) -> None:
    while True:
        metrics.refresh_key_status()
        await asyncio.sleep(KEY_STATUS_REFRESH_SECONDS)


def build_app(
    cfg: GatewayConfig, config_path: str | None = None, *, multiprocess: bool = False
) -> GatewayApp:
    """The gateway app for ``cfg`` with its metrics (``multiprocess``: one worker of several)
    and the access log observer."""
    metrics = GatewayMetrics(multiprocess=multiprocess)
    policy = build_policy(cfg, base_dir=config_path, events=metrics)
    return GatewayApp(policy, observer=Observer(metrics))


async def run_servers(
    app: GatewayApp,
    cfg: GatewayConfig,
    *,
    host: str,
    port: int,
    config_path: str | None = None,
    sockets: list[socket.socket] | None = None,
    log_level: str | None = None,
) -> None:
    """Serve the gateway (and its admin listener) until SIGINT/SIGTERM; reload on SIGHUP.

    SIGTERM drains: readiness turns false, the listener stops accepting, in-flight requests get
    up to ``proxy.shutdown_timeout`` to finish, then key sources and upstream connections close.

    ``sockets``: already-bound listening sockets (proxied port, then admin port) shared by
    worker processes; otherwise the servers bind ``host:port`` and ``admin.host:admin.port``.
    ``log_level``: the command line's override of ``logging.level`` (kept across reloads).
    """
    admin_app = AdminApp(app) if cfg.admin.enabled else None

    def draining() -> None:
        if admin_app is not None:
            admin_app.draining = True

    main = _MainServer(uvicorn_config(app, host, port, cfg), on_exit=draining)
    admin: uvicorn.Server | None = None
    admin_task: asyncio.Task[None] | None = None
    if admin_app is not None:
        admin = _SecondaryServer(uvicorn_config(admin_app, cfg.admin.host, cfg.admin.port, cfg))
        admin_sockets = [sockets[1]] if sockets is not None and len(sockets) > 1 else None
        admin_task = asyncio.create_task(admin.serve(sockets=admin_sockets))
    metrics = app.observer.metrics
    refresher: asyncio.Task[None] | None = None
    if metrics is not None and metrics.multiprocess:
        metrics.bind_key_status(lambda: app.policy.key_status())
        refresher = asyncio.create_task(_refresh_key_status(metrics))
    loop = asyncio.get_running_loop()
    reloader: Reloader | None = None
    sighup = False
    if config_path is not None:
        reloader = Reloader(app, config_path, log_level=log_level)
        try:
            loop.add_signal_handler(signal.SIGHUP, reloader.schedule)
            sighup = True
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or not POSIX
            pass
        if cfg.watch:
            reloader.watch()
    try:
        await main.serve(sockets=[sockets[0]] if sockets else None)
    finally:
        # Drained: the access lines of the last requests may still sit in the buffer.
        logs.flush()
        if sighup:
            loop.remove_signal_handler(signal.SIGHUP)
        if reloader is not None:
            await reloader.aclose()
        if refresher is not None:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
        if admin is not None and admin_task is not None:
            admin.should_exit = True
            await admin_task


def serve(
    config_path: str,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int = 1,
    log_level: str | None = None,
) -> int:
    """Load the config, build the app and serve it. Returns the process exit code."""
    cfg = load_config(config_path)
    check_servable(cfg, config_path)
    logs.configure(
        fmt=cfg.logging.format, level=log_level or cfg.logging.level, access_log=cfg.logging.access_log
    )
    bind_host = host if host is not None else cfg.listen.host
    bind_port = port if port is not None else cfg.listen.port
    if workers > 1:
        from gateway.workers import run_workers

        return run_workers(config_path, host=bind_host, port=bind_port, workers=workers, log_level=log_level)
    app = build_app(cfg, config_path)
    log.info("jwt-gateway listening on %s:%d", bind_host, bind_port)
    _run(run_servers(app, cfg, host=bind_host, port=bind_port, config_path=config_path, log_level=log_level))
    return 0


def _run(coro: Any) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        runner = asyncio.Runner()
    with runner:
        runner.run(coro)
