"""Live reload: on SIGHUP (and on file change with ``watch: true``) the config is loaded,
validated and compiled off the request path, then swapped in atomically.

- Off the request path: file I/O and compilation run in a thread; the event loop only swaps a
  reference (:meth:`gateway.asgi.GatewayApp.install`).
- Atomic: each request reads the policy once when it starts, so requests in flight finish under
  the config they started with, and no request ever sees half of a new config.
- Safe: an invalid new config is refused with a log line and the ``error`` outcome
  (``jwt_gateway_config_reloads_total{outcome="error"}``); the old config keeps serving.
- Warm: remote key caches of unchanged providers are carried over (see
  :class:`~gateway.auth.keys.KeySourceRegistry`), so a reload that only changes routes does not
  re-fetch any JWKS.
- Honest: settings that only take effect at start (listen and admin addresses, the upstream pool
  and its timeouts, request limits, worker-level uvicorn settings) are reported in a warning
  when they differ; the ``logging`` section and ``watch`` are applied live.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gateway import logs
from gateway.config.loader import check_servable, load_config
from gateway.config.models import GatewayConfig
from gateway.errors import ConfigError
from gateway.policy import build_policy

if TYPE_CHECKING:
    from gateway.asgi import GatewayApp

__all__ = ["RESTART_ONLY", "Reloader", "restart_only_changes"]

log = logging.getLogger("jwt_gateway")

#: Config sections (or ``section.field``) read once at start: a reload cannot change them.
#: (The listeners and their protocol limits belong to uvicorn; the pool, its timeouts and its
#: TLS context to the GatewayApp. Everything else is read from the live policy.)
RESTART_ONLY: tuple[str, ...] = (
    "listen",
    "admin",
    "proxy.connect_timeout",
    "proxy.read_timeout",
    "proxy.write_timeout",
    "proxy.max_connections",
    "proxy.max_idle_connections",
    "proxy.idle_timeout",
    "proxy.max_head_bytes",
    "proxy.head_timeout",
    "proxy.tls",
    "proxy.shutdown_timeout",
)


def _get(cfg: GatewayConfig, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def restart_only_changes(
    old: GatewayConfig, new: GatewayConfig, keys: Iterable[str] = RESTART_ONLY
) -> list[str]:
    """The restart-only settings that differ between ``old`` and ``new`` (dotted names)."""
    return [key for key in keys if _get(old, key) != _get(new, key)]


class Reloader:
    """Reloads ``config_path`` into ``app``; at most one reload runs at a time.

    A reload asked for while one runs is done once more after it (several asks coalesce).
    """

    def __init__(self, app: GatewayApp, config_path: str, *, log_level: str | None = None) -> None:
        self.app = app
        self.config_path = config_path
        #: The command line's ``--log-level``, which wins over ``logging.level`` across reloads.
        self.log_level = log_level
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._watcher: asyncio.Task[None] | None = None
        #: Outcome counters (``ok``/``error``), read by tests.
        self.outcomes: dict[str, int] = {"ok": 0, "error": 0}

    def schedule(self) -> None:
        """Ask for a reload (safe to call from a signal handler on the loop)."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            await self.reload_once()
            if not self._again:
                return

    async def reload_once(self) -> bool:
        """Load, compile and swap in the config file. Returns True when the new config is live."""
        current = self.app.policy
        try:
            # File I/O and compilation (key files, rules) happen in a thread, not on the loop.
            cfg = await asyncio.to_thread(load_config, self.config_path)
            check_servable(cfg, self.config_path)
            policy = await asyncio.to_thread(
                build_policy,
                cfg,
                base_dir=self.config_path,
                registry=current.registry,
                events=self.app.observer.policy_events,
            )
        except ConfigError as exc:
            return self._refused(f"config reload refused, the previous config keeps serving: {exc}")
        except Exception:
            log.exception("config reload failed, the previous config keeps serving")
            return self._refused(None)
        try:
            await self.app.install(policy)
        except Exception:
            log.exception("config reload failed while installing, the previous config keeps serving")
            return self._refused(None)
        self.outcomes["ok"] += 1
        self.app.observer.reload_done("ok")
        old = current.config
        changed = restart_only_changes(old, cfg)
        if changed:
            log.warning(
                "config reloaded from %s, but these settings only take effect after a restart: %s",
                self.config_path,
                ", ".join(changed),
            )
        else:
            log.info("config reloaded from %s", self.config_path)
        if cfg.watch and self._watcher is None:
            self.watch()
        elif not cfg.watch and self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if cfg.logging != old.logging:
            logs.configure(
                fmt=cfg.logging.format,
                level=self.log_level or cfg.logging.level,
                access_log=cfg.logging.access_log,
            )
        return True

    def _refused(self, message: str | None) -> bool:
        self.outcomes["error"] += 1
        self.app.observer.reload_done("error")
        if message is not None:
            log.error("%s", message)
        return False

    def watch(self) -> None:
        """Reload whenever the config file changes (``watch: true``)."""
        if self._watcher is None:
            # The folder is watched, not the file: editors and Kubernetes ConfigMap updates
            # replace the file (rename, or a swapped "..data" symlink), which a watch on the
            # file itself would miss.
            target = os.path.abspath(self.config_path)
            self._watcher = asyncio.ensure_future(self._watch(os.path.dirname(target), target))

    async def _watch(self, folder: str, target: str) -> None:
        from watchfiles import awatch

        def relevant(path: str) -> bool:
            return path == target or path.rpartition(os.sep)[2].startswith("..")

        try:
            async for changes in awatch(folder, debounce=200, recursive=False):
                if any(relevant(path) for _change, path in changes):
                    self.schedule()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watching %s failed; SIGHUP still reloads", folder)

    async def aclose(self) -> None:
        """Stop watching and wait for a running reload."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
