"""Development helpers: an echo upstream and a local development issuer.

Used by ``jwt-gateway demo`` (``make run``) and by the end-to-end tests. Neither is meant for
production: the issuer's keys live in memory only and are never written to disk, so no real
config can pick them up.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.asgi_types import Receive, Scope, Send


async def _read_body(receive: Receive, limit: int = 1 << 20) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if len(body) > limit:
            break
        if not message.get("more_body", False):
            break
    return bytes(body)


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every request with the method, path, query, headers and body size it received."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    headers: dict[str, list[str]] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
    payload = {
        "method": scope["method"],
        "path": scope.get("raw_path", scope["path"].encode()).decode("latin-1"),
        "query": scope.get("query_string", b"").decode("latin-1"),
        "headers": headers,
        "body_bytes": len(body),
    }
    data = json.dumps(payload, indent=2, sort_keys=True).encode() + b"\n"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


class DevIssuer:
    """A local OIDC-style issuer: an RSA key made at start, its JWKS, and a token minter.

    Serve it as an ASGI app: ``/.well-known/openid-configuration`` and ``/jwks.json``.
    """

    def __init__(self, issuer: str, *, kid: str | None = None) -> None:
        self.issuer = issuer.rstrip("/")
        self.kid = kid or f"dev-{uuid.uuid4().hex[:8]}"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        self.jwks = {"keys": [jwk]}

    def token(
        self,
        subject: str,
        *,
        audience: str | Sequence[str],
        lifetime: float = 3600,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """Mint an RS256 access token for ``subject``."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            "jti": uuid.uuid4().hex,
        }
        payload.update(claims or {})
        return jwt.encode(payload, self._key, algorithm="RS256", headers={"kid": self.kid})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await echo_app(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/.well-known/openid-configuration":
            doc: object = {"issuer": self.issuer, "jwks_uri": f"{self.issuer}/jwks.json"}
        elif path == "/jwks.json":
            doc = self.jwks
        else:
            doc = None
        status = 200 if doc is not None else 404
        data = json.dumps(doc if doc is not None else {"error": "not found"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    (b"cache-control", b"max-age=300"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})
