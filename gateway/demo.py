"""``jwt-gateway demo`` (``make run``): a working gateway in one command.

Starts on 127.0.0.1 the gateway, an echo upstream (answers with what it received, as JSON) and a
development issuer serving a JWKS, then prints ready-to-paste curl commands. The issuer's key is
made at start and lives in memory only. Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from typing import Any

import uvicorn

from gateway import logs
from gateway.asgi import GatewayApp
from gateway.config.models import GatewayConfig
from gateway.devtools import DevIssuer, echo_app
from gateway.policy import build_policy
from gateway.server import _run, _SecondaryServer, run_servers

AUDIENCE = "demo-api"


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def demo_config(issuer: str, upstream: str, port: int, admin_port: int = 0) -> GatewayConfig:
    """The demo's gateway config (the same shape as a gateway.yaml)."""
    return GatewayConfig.model_validate(
        {
            "listen": {"host": "127.0.0.1", "port": port},
            "admin": {"host": "127.0.0.1", "port": admin_port, "enabled": admin_port != 0},
            "upstream": upstream,
            "providers": {
                "demo": {
                    "issuer": issuer,
                    "discovery": True,
                    "algorithms": ["RS256"],
                    "audiences": [AUDIENCE],
                }
            },
            "headers": {
                "claims": {"X-User-Id": "sub", "X-User-Roles": {"claim": "roles", "encode": "csv"}},
                "strip_prefixes": ["X-User-"],
            },
            "routes": [
                {"name": "public", "match": {"path": "/public/**"}, "auth": "public"},
                {
                    "name": "admin",
                    "match": {"path": "/admin/**"},
                    "require": {"claim": "roles", "contains": "admin"},
                },
                {"name": "api", "match": {"path": "/api/**"}},
            ],
            "logging": {"format": "text"},
        }
    )


def _banner(port: int, user: str, admin: str) -> str:
    base = f"http://127.0.0.1:{port}"
    return f"""
jwt-gateway demo is running: gateway {base}, echo upstream and a development issuer.
Demo tokens are valid for 1 hour (the issuer's key lives in memory only).
Paste these lines into another shell:

  USER_TOKEN={user}
  ADMIN_TOKEN={admin}

  curl -i {base}/public/hello                                       # 200: public route, no token needed
  curl -i -H "Authorization: Bearer $USER_TOKEN" {base}/api/orders  # 200: the echo shows X-User-Id
  curl -i {base}/api/orders                                         # 401: no token
  curl -i -H "Authorization: Bearer $USER_TOKEN" {base}/admin/users # 403: not an admin
  curl -i -H "Authorization: Bearer $ADMIN_TOKEN" {base}/admin/users # 200: admin

Press Ctrl-C to stop.
"""


async def _demo(port: int) -> None:
    issuer_sock, upstream_sock = _socket(), _socket()
    issuer_url = f"http://127.0.0.1:{issuer_sock.getsockname()[1]}"
    upstream_url = f"http://127.0.0.1:{upstream_sock.getsockname()[1]}"
    issuer = DevIssuer(issuer_url)
    cfg = demo_config(issuer_url, upstream_url, port)
    app = GatewayApp(build_policy(cfg))

    def side(app_: Any) -> _SecondaryServer:
        return _SecondaryServer(
            uvicorn.Config(
                app_, loop="none", http="httptools", lifespan="off", log_config=None, access_log=False
            )
        )

    issuer_server, echo_server = side(issuer), side(echo_app)
    tasks = [
        asyncio.create_task(issuer_server.serve(sockets=[issuer_sock])),
        asyncio.create_task(echo_server.serve(sockets=[upstream_sock])),
    ]

    async def announce() -> None:
        for _ in range(200):
            if app.started and all(s["ready"] for s in app.policy.key_status().values()):
                break
            await asyncio.sleep(0.05)
        user = issuer.token("alice", audience=AUDIENCE, claims={"roles": ["user"]})
        admin = issuer.token("root", audience=AUDIENCE, claims={"roles": ["user", "admin"]})
        print(_banner(port, user, admin), flush=True)

    announcer = asyncio.create_task(announce())
    try:
        await run_servers(app, cfg, host="127.0.0.1", port=port)
    finally:
        announcer.cancel()
        issuer_server.should_exit = echo_server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks)


def run_demo(port: int = 8080) -> int:
    """Run the demo until Ctrl-C."""
    logs.configure(fmt="text", level="info")
    try:
        with socket.create_server(("127.0.0.1", port)):
            pass
    except OSError as exc:
        print(f"jwt-gateway demo: port {port} is not free ({exc.strerror}); try --port", file=sys.stderr)
        return 2
    _run(_demo(port))
    return 0
