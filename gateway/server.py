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
from collections.abc import Iterator
from typing import Any

import uvicorn

from gateway import logs
from gateway.asgi import GatewayApp
from gateway.config.loader import load_config
from gateway.config.models import GatewayConfig
from gateway.http.admin import AdminApp
from gateway.policy import build_policy

log = logging.getLogger("jwt_gateway")


class _SecondaryServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the primary one in the same loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(app: Any, host: str, port: int, cfg: GatewayConfig, **extra: Any) -> uvicorn.Config:
    """uvicorn settings shared by every listener of the gateway."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="none",
        http="httptools",
        interface="asgi3",
        lifespan="on" if isinstance(app, GatewayApp) else "off",
        proxy_headers=False,
        server_header=False,
        # The upstream's Date passes through; the gateway dates its own answers (problem.py).
        date_header=not isinstance(app, GatewayApp),
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=max(1, int(cfg.proxy.shutdown_timeout)),
        **extra,
    )


async def run_servers(
    app: GatewayApp,
    cfg: GatewayConfig,
    *,
    host: str,
    port: int,
    config_path: str | None = None,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve the gateway (and its admin listener) until SIGINT/SIGTERM; reload on SIGHUP.

    ``sockets``: already-bound listening sockets (proxied port, then admin port) shared by
    worker processes; otherwise the servers bind ``host:port`` and ``admin.host:admin.port``.
    """
    main = uvicorn.Server(uvicorn_config(app, host, port, cfg))
    admin: uvicorn.Server | None = None
    admin_task: asyncio.Task[None] | None = None
    if cfg.admin.enabled:
        admin = _SecondaryServer(uvicorn_config(AdminApp(app), cfg.admin.host, cfg.admin.port, cfg))
        admin_sockets = [sockets[1]] if sockets is not None and len(sockets) > 1 else None
        admin_task = asyncio.create_task(admin.serve(sockets=admin_sockets))
    loop = asyncio.get_running_loop()
    if config_path is not None:
        from gateway.reload import Reloader

        reloader = Reloader(app, config_path)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, reloader.schedule)
        if cfg.watch:
            reloader.watch()
    try:
        await main.serve(sockets=[sockets[0]] if sockets else None)
    finally:
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
    logs.configure(
        fmt=cfg.logging.format, level=log_level or cfg.logging.level, access_log=cfg.logging.access_log
    )
    policy = build_policy(cfg, base_dir=config_path)
    app = GatewayApp(policy)
    bind_host = host if host is not None else cfg.listen.host
    bind_port = port if port is not None else cfg.listen.port
    if workers > 1:
        from gateway.workers import run_workers

        return run_workers(config_path, host=bind_host, port=bind_port, workers=workers, log_level=log_level)
    log.info("jwt-gateway listening on %s:%d", bind_host, bind_port)
    _run(run_servers(app, cfg, host=bind_host, port=bind_port, config_path=config_path))
    return 0


def _run(coro: Any) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        runner = asyncio.Runner()
    with runner:
        runner.run(coro)
