"""The gateway in-process: ASGI middleware (:mod:`.asgi`), WSGI middleware (:mod:`.wsgi`) and
FastAPI dependencies (:mod:`.fastapi`). Each runs the proxy's decision core unchanged.

The classes are imported on first use, so importing one mode does not load the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.middleware.asgi import JWTGatewayMiddleware
    from gateway.middleware.wsgi import JWTGatewayWSGIMiddleware

_LAZY = {
    "JWTGatewayMiddleware": "gateway.middleware.asgi",
    "JWTGatewayWSGIMiddleware": "gateway.middleware.wsgi",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["JWTGatewayMiddleware", "JWTGatewayWSGIMiddleware"]
