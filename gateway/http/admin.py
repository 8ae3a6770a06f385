"""The admin listener: ``/healthz`` (alive), ``/readyz`` (ready to serve), ``/metrics``.

It listens on its own port (127.0.0.1:9901 by default), so it never shadows an upstream path.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gateway.asgi_types import Receive, Scope, Send

if TYPE_CHECKING:
    from gateway.asgi import GatewayApp


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class AdminApp:
    """ASGI app for the admin port."""

    def __init__(self, gateway: GatewayApp) -> None:
        self.gateway = gateway

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details): config loaded, every required provider has keys, pool up."""
        policy = self.gateway.policy
        providers = policy.key_status()
        ready = self.gateway.started and all(
            status["ready"] for status in providers.values() if status.get("required", True)
        )
        return ready, {"ready": ready, "started": self.gateway.started, "providers": providers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/healthz":
            await _respond(send, 200, b'{"status":"ok"}\n', b"application/json")
        elif path == "/readyz":
            ready, details = self.readiness()
            body = json.dumps(details, default=str).encode() + b"\n"
            await _respond(send, 200 if ready else 503, body, b"application/json")
        elif path == "/metrics":
            from gateway.metrics import render_metrics

            body, content_type = render_metrics()
            await _respond(send, 200, body, content_type.encode())
        else:
            await _respond(send, 404, b'{"status":"not found"}\n', b"application/json")
