"""``serve --workers N``: N worker processes sharing the listening sockets.

The parent binds the proxied and admin sockets, forks the workers (before any event loop or
thread exists), forwards SIGTERM/SIGINT (drain and stop) and SIGHUP (reload) to them, and
restarts a worker that dies unexpectedly. Each worker builds its own policy, key caches and
upstream pool, like an Envoy worker thread: budget IdP load as workers x refresh rate.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from types import FrameType

log = logging.getLogger("jwt_gateway")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(config_path: str, sockets: list[socket.socket], log_level: str | None) -> None:
    from gateway.asgi import GatewayApp
    from gateway.config.loader import load_config
    from gateway.policy import build_policy
    from gateway.server import _run, run_servers

    cfg = load_config(config_path)
    app = GatewayApp(build_policy(cfg, base_dir=config_path))
    _run(run_servers(app, cfg, host="", port=0, config_path=config_path, sockets=sockets))


def run_workers(config_path: str, *, host: str, port: int, workers: int, log_level: str | None = None) -> int:
    """Supervise ``workers`` processes until SIGTERM/SIGINT. Returns the exit code."""
    from gateway.config.loader import load_config

    cfg = load_config(config_path)
    sockets = [_bind(host, port)]
    if cfg.admin.enabled:
        sockets.append(_bind(cfg.admin.host, cfg.admin.port))
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # child
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            code = 0
            try:
                _worker(config_path, sockets, log_level)
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                os._exit(code)
        children[pid] = slot

    def forward(sig: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in list(children):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    for slot in range(workers):
        spawn(slot)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    log.info("jwt-gateway: %d workers listening on %s:%d", workers, host, port)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries os.wait
            continue
        slot = children.pop(pid, -1)
        if slot >= 0 and not stopping:
            log.error("worker %d exited (status %d); restarting it", pid, status)
            time.sleep(0.5)
            spawn(slot)
    for sock in sockets:
        sock.close()
    return 0


__all__ = ["run_workers"]
