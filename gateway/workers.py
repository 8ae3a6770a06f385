"""``serve --workers N``: N worker processes sharing the listening sockets.

The parent binds the proxied and admin sockets, forks the workers (before any event loop or
thread exists), forwards SIGTERM/SIGINT (drain and stop) and SIGHUP (reload) to them, and
restarts a worker that dies unexpectedly. Each worker builds its own policy, key caches and
upstream pool, like an Envoy worker thread: budget IdP load as workers x refresh rate.

Shutdown: on SIGTERM every worker drains on its own (stops accepting, finishes its in-flight
requests within ``proxy.shutdown_timeout``); the parent waits for them, and kills any worker
still alive ``shutdown_timeout`` + 10 s later.

Metrics: the parent points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary directory before
forking, so the workers run prometheus-client's multiprocess mode (see :mod:`gateway.metrics`):
whichever worker answers a scrape on the shared admin socket reports the sum over all workers.
A dead worker is marked with ``mark_process_dead`` (its live gauges drop out; its counters
stay), and the directory is removed when the parent exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from types import FrameType

log = logging.getLogger("jwt_gateway")

__all__ = ["run_workers"]

#: After the stop signal, workers get ``shutdown_timeout`` plus this long before SIGKILL.
KILL_GRACE_SECONDS = 10.0
#: A worker that died unexpectedly is restarted after this pause.
RESTART_DELAY_SECONDS = 0.5

_FORWARDED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _worker(config_path: str, sockets: list[socket.socket], log_level: str | None) -> None:
    from gateway.config.loader import load_config
    from gateway.server import _run, build_app, run_servers

    cfg = load_config(config_path)
    app = build_app(cfg, config_path, multiprocess=True)
    _run(
        run_servers(app, cfg, host="", port=0, config_path=config_path, sockets=sockets, log_level=log_level)
    )


def run_workers(config_path: str, *, host: str, port: int, workers: int, log_level: str | None = None) -> int:
    """Supervise ``workers`` processes until SIGTERM/SIGINT. Returns the exit code."""
    from prometheus_client.multiprocess import mark_process_dead

    from gateway.config.loader import load_config

    cfg = load_config(config_path)
    sockets = [_bind(host, port)]
    if cfg.admin.enabled:
        try:
            sockets.append(_bind(cfg.admin.host, cfg.admin.port))
        except BaseException:
            sockets[0].close()
            raise
    metrics_dir = tempfile.mkdtemp(prefix="jwt-gateway-metrics-")
    previous_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    children: dict[int, int] = {}
    stop_requested_at: float | None = None
    kill_after = cfg.proxy.shutdown_timeout + KILL_GRACE_SECONDS

    def spawn(slot: int) -> None:
        # Signals stay blocked across the fork until the child has replaced the parent's
        # handlers: a child must never run `forward` on its copy of `children`.
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        pid = os.fork()
        if pid == 0:  # child
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # A reload asked for while the worker starts is moot: it reads the file anyway.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
            code = 0
            try:
                _worker(config_path, sockets, log_level)
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                os._exit(code)
        children[pid] = slot
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)

    def forward(sig: int, _frame: FrameType | None) -> None:
        nonlocal stop_requested_at
        if sig in (signal.SIGTERM, signal.SIGINT) and stop_requested_at is None:
            stop_requested_at = time.monotonic()
            log.info("%s received: %d workers draining", signal.Signals(sig).name, len(children))
            # No worker will be started again: drop the parent's copies of the listening
            # sockets, so that the port closes as soon as the workers stop accepting.
            for sock in sockets:
                sock.close()
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    try:
        for slot in range(workers):
            spawn(slot)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, forward)
        log.info("jwt-gateway: %d workers listening on %s:%d", workers, host, port)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if stop_requested_at is not None and time.monotonic() - stop_requested_at > kill_after:
                    log.error("workers still running %.0fs after the stop signal: killing them", kill_after)
                    for child in list(children):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child, signal.SIGKILL)
                    stop_requested_at = time.monotonic()
                time.sleep(0.1)
                continue
            slot = children.pop(pid, -1)
            mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
            if slot >= 0 and stop_requested_at is None:
                log.error("worker %d exited (status %d); restarting it", pid, status)
                time.sleep(RESTART_DELAY_SECONDS)
                spawn(slot)
    finally:
        for sock in sockets:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if previous_dir is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = previous_dir
    return 0
