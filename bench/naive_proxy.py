"""The naive peer of the proxy benchmark: a JWT-checking reverse proxy written the way a Python
user would write one after reading the Starlette and httpx docs.

Deliberately naive, and kept that way (it is the yardstick, not a thing to tune): Starlette
routing, one shared ``httpx.AsyncClient`` with its stock transport, PyJWT verifying the RS256
signature on every request (the PEM text is handed to ``jwt.decode`` each time, as the PyJWT
README shows), and ``StreamingResponse(upstream.aiter_raw())`` back to the client.

Run by ``bench/run_proxy_bench.py`` as::

    NAIVE_UPSTREAM=http://127.0.0.1:8001 NAIVE_PUBLIC_KEY_FILE=rsa_public.pem \
        uvicorn naive_proxy:app --app-dir bench --host 127.0.0.1 --port 8003

Environment: ``NAIVE_UPSTREAM`` (base URL), ``NAIVE_PUBLIC_KEY_FILE`` (PEM public key),
``NAIVE_ISSUER``, ``NAIVE_AUDIENCE``, ``NAIVE_SUBJECT`` (the ``sub`` the route requires).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

UPSTREAM = os.environ.get("NAIVE_UPSTREAM", "http://127.0.0.1:8000")
PUBLIC_KEY_FILE = os.environ.get("NAIVE_PUBLIC_KEY_FILE", "rsa_public.pem")
ISSUER = os.environ.get("NAIVE_ISSUER", "https://idp.bench.test")
AUDIENCE = os.environ.get("NAIVE_AUDIENCE", "bench-api")
SUBJECT = os.environ.get("NAIVE_SUBJECT", "bench-user")

# A user would not send these on; everything else goes through as it came.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


@functools.cache
def _public_key() -> str:
    # Read once, then handed to PyJWT as PEM text on every request (PyJWT parses it each time).
    return Path(PUBLIC_KEY_FILE).read_text()


client = httpx.AsyncClient(base_url=UPSTREAM)


def _unauthorized(detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})


async def proxy(request: Request) -> Response:
    """Verify the Bearer token, then forward the request and stream the response back."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return _unauthorized("missing bearer token")
    try:
        claims = jwt.decode(token, _public_key(), algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)
    except jwt.PyJWTError:
        return _unauthorized("invalid token")
    if claims.get("sub") != SUBJECT:
        return JSONResponse({"detail": "forbidden"}, status_code=403)

    headers = [
        (k, v)
        for k, v in request.headers.items()
        if k not in HOP_BY_HOP and k not in ("host", "authorization", "content-length")
    ]
    headers.append(("x-user-id", str(claims["sub"])))
    upstream_request = client.build_request(
        request.method,
        request.url.path,
        params=request.url.query,
        headers=headers,
        content=request.stream(),
    )
    upstream = await client.send(upstream_request, stream=True)
    response_headers = {k: v for k, v in upstream.headers.items() if k not in HOP_BY_HOP}
    return StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        headers=response_headers,
        background=BackgroundTask(upstream.aclose),
    )


@contextlib.asynccontextmanager
async def lifespan(_app: Starlette) -> AsyncIterator[None]:
    yield
    await client.aclose()


METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
app = Starlette(
    routes=[Route("/{path:path}", proxy, methods=METHODS)],
    lifespan=lifespan,
)
