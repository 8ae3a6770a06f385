"""jwt-gateway: a reverse-proxy JWT gateway on ASGI."""

__version__ = "0.1.0"
