"""Live reload: on SIGHUP (and on file change with ``watch: true``) the config is loaded,
validated and compiled off the request path, then swapped in atomically.

Requests in flight finish under the policy they started with (each request reads the policy
once); an invalid new config is refused with a log line and the old one keeps serving. Remote
key caches of unchanged providers are carried over (see :class:`~gateway.auth.keys.KeySourceRegistry`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.config.loader import load_config
from gateway.errors import ConfigError
from gateway.policy import build_policy

if TYPE_CHECKING:
    from gateway.asgi import GatewayApp

log = logging.getLogger("jwt_gateway")


class Reloader:
    """Reloads ``config_path`` into ``app``; at most one reload runs at a time."""

    def __init__(self, app: GatewayApp, config_path: str) -> None:
        self.app = app
        self.config_path = config_path
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._watcher: asyncio.Task[None] | None = None
        #: Outcome counters (``ok``/``error``), read by metrics and tests.
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
            policy = await asyncio.to_thread(
                build_policy, cfg, base_dir=self.config_path, registry=current.registry
            )
        except ConfigError as exc:
            self.outcomes["error"] += 1
            self.app.observer.reload_done("error")
            log.error("config reload refused, the previous config keeps serving: %s", exc)
            return False
        except Exception:
            self.outcomes["error"] += 1
            self.app.observer.reload_done("error")
            log.exception("config reload failed, the previous config keeps serving")
            return False
        await self.app.install(policy)
        self.outcomes["ok"] += 1
        self.app.observer.reload_done("ok")
        log.info("config reloaded from %s", self.config_path)
        return True

    def watch(self) -> None:
        """Reload whenever the config file changes (``watch: true``)."""
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        from watchfiles import awatch

        async for _changes in awatch(self.config_path, debounce=200, recursive=False):
            self.schedule()

    async def aclose(self) -> None:
        """Stop watching and wait for a running reload."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
