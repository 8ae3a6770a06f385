"""The admin listener: ``/healthz`` (alive), ``/readyz`` (ready to serve), ``/metrics``.

It listens on its own port (127.0.0.1:9901 by default), so it never shadows an upstream path.

- ``/healthz``: 200 while the process serves at all (a liveness probe: restart me if not).
- ``/readyz``: 200 when the gateway should receive traffic, else 503, with a JSON body saying
  why: the app has started (config loaded, key sources running), it is not draining after
  SIGTERM, the upstream pool is open, and every provider with ``required: true`` has usable keys.
  A gateway whose IdP is down at start answers 503 here until the keys arrive.
- ``/metrics``: the Prometheus text exposition (404 when the app has no metrics).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gateway.asgi_types import Receive, Scope, Send

if TYPE_CHECKING:
    from gateway.asgi import GatewayApp
    from gateway.metrics import GatewayMetrics

__all__ = ["AdminApp"]

_JSON = b"application/json"


async def _respond(send: Send, status: int, body: bytes, content_type: bytes, *, head: bool = False) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if status == 405:
        headers.append((b"allow", b"GET, HEAD"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


class AdminApp:
    """ASGI app for the admin port.

    ``metrics``: what ``/metrics`` renders (default: the gateway observer's metrics, if any).
    ``draining`` is set by the server when a shutdown signal arrives: readiness turns false at
    once, so a load balancer stops sending traffic while in-flight requests finish.
    """

    def __init__(self, gateway: GatewayApp, *, metrics: GatewayMetrics | None = None) -> None:
        self.gateway = gateway
        self.metrics = metrics if metrics is not None else gateway.observer.metrics
        self.draining = False
        if self.metrics is not None:
            self.metrics.bind_key_status(lambda: self.gateway.policy.key_status())

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details): started, not draining, pool open, required providers have keys."""
        gateway = self.gateway
        providers = gateway.policy.key_status()
        pool_open = not gateway.pool.closed
        keys_ready = all(status["ready"] for status in providers.values() if status.get("required", True))
        ready = gateway.started and not self.draining and pool_open and keys_ready
        details = {
            "ready": ready,
            "checks": {
                "started": gateway.started,
                "draining": self.draining,
                "upstream_pool": "open" if pool_open else "closed",
                "keys": keys_ready,
            },
            "providers": providers,
        }
        return ready, details

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        head = method == "HEAD"
        if method != "GET" and not head:
            await _respond(send, 405, b'{"status":"method not allowed"}\n', _JSON)
            return
        path = scope["path"]
        if path == "/healthz":
            await _respond(send, 200, b'{"status":"ok"}\n', _JSON, head=head)
        elif path == "/readyz":
            ready, details = self.readiness()
            body = json.dumps(details, default=str).encode() + b"\n"
            await _respond(send, 200 if ready else 503, body, _JSON, head=head)
        elif path == "/metrics" and self.metrics is not None:
            body, content_type = self.metrics.render()
            await _respond(send, 200, body, content_type.encode(), head=head)
        else:
            await _respond(send, 404, b'{"status":"not found"}\n', _JSON, head=head)
