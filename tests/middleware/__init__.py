"""Tests of the in-process modes (ASGI middleware, WSGI middleware, FastAPI dependencies).

:func:`middleware_config` is the policy they share: the same routes as the proxy's e2e tests,
with no upstream (in-process there is none).
"""

from __future__ import annotations

from typing import Any

from tests.support.jwks_server import JWKSServer

AUD = "api"


def middleware_config(idp: JWKSServer, **extra: Any) -> dict[str, Any]:
    """A gateway config for an app behind the middleware, keys from ``idp`` (discovery)."""
    config: dict[str, Any] = {
        "providers": {
            "idp": {"issuer": idp.issuer, "discovery": True, "algorithms": ["RS256"], "audiences": [AUD]},
        },
        "headers": {
            "claims": {"X-User-Id": "sub", "X-User-Roles": {"claim": "roles", "encode": "csv"}},
            "strip_prefixes": ["X-User-"],
        },
        "paths": {"normalize": ["merge_slashes"]},
        "routes": [
            {"name": "public", "match": {"path": "/public/**"}, "auth": "public"},
            {"name": "optional", "match": {"path": "/optional/**"}, "auth": "optional"},
            {"name": "closed", "match": {"path": "/closed/**"}, "auth": "deny"},
            {
                "name": "admin",
                "match": {"path": "/admin/**"},
                "require": {"claim": "roles", "contains": "admin"},
            },
            {
                "name": "report",
                "match": {"path": "/report/**"},
                "enforce": False,
                "require": {"claim": "roles", "contains": "admin"},
            },
            {"name": "nows", "match": {"path": "/nows/**"}, "websocket": False},
            {"name": "api", "match": {"path": "/api/**"}},
            {"name": "mutate", "match": {"path": "/api-mutate/**"}},
            {"name": "ws", "match": {"path": "/ws/**"}},
        ],
    }
    config.update(extra)
    return config


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}
