"""jwt-gateway: a reverse-proxy JWT gateway on ASGI.

The in-process modes are importable from here (loaded on first use, so ``import gateway``
stays cheap)::

    from gateway import JWTGatewayMiddleware        # ASGI: Starlette, FastAPI
    from gateway import JWTGatewayWSGIMiddleware    # WSGI: Flask, Django
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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


__all__ = ["JWTGatewayMiddleware", "JWTGatewayWSGIMiddleware", "__version__"]
