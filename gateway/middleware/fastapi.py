"""FastAPI dependencies over :class:`~gateway.middleware.asgi.JWTGatewayMiddleware`.

::

    from fastapi import Depends, FastAPI
    from gateway.middleware.asgi import JWTGatewayMiddleware
    from gateway.middleware.fastapi import jwt_claims, require_scope

    app = FastAPI()
    app.add_middleware(JWTGatewayMiddleware, config="gateway.yaml")

    @app.get("/me")
    def me(claims=Depends(jwt_claims)):              # 401 when the request has no verified token
        return {"sub": claims["sub"]}

    @app.get("/orders", dependencies=[Depends(require_scope("orders:read"))])
    def orders():                                      # 403 insufficient_scope without the scope
        ...

The dependencies read what the middleware put in the scope; they never verify anything
themselves. A refusal is raised as a :class:`gateway.errors.GatewayError`, which the middleware
renders exactly like its own refusals (same status, ``WWW-Authenticate`` challenge and
problem+json body). They take a Starlette ``HTTPConnection``, so they serve HTTP and WebSocket
endpoints alike, and this module imports nothing from FastAPI: it loads without it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import HTTPConnection

from gateway.auth.types import Claims
from gateway.errors import AuthorizationError, TokenMissing
from gateway.middleware.common import granted_scopes
from gateway.pipeline import Decision


class MiddlewareMissing(RuntimeError):
    """A gateway dependency ran in an app without :class:`JWTGatewayMiddleware` (a setup bug)."""


def _decision(conn: HTTPConnection) -> Decision:
    decision = conn.scope.get("jwt_gateway")
    if not isinstance(decision, Decision):
        raise MiddlewareMissing(
            "jwt_claims and require_scope need the middleware: "
            "app.add_middleware(JWTGatewayMiddleware, config=...)"
        )
    return decision


def claims_of(conn: HTTPConnection) -> Claims:
    """The request's verified claims, or raise 401 (what :func:`jwt_claims` returns, callable
    from plain code: a Starlette endpoint, a WebSocket handler)."""
    decision = _decision(conn)
    token = decision.token
    if token is None:
        if decision.error is not None:
            raise decision.error
        raise TokenMissing("a bearer token is required")
    return token.claims


# The dependencies are coroutines: FastAPI runs plain ``def`` dependencies in a thread pool,
# which would cost more than the lookup itself.


async def jwt_claims(conn: HTTPConnection) -> Claims:
    """The request's verified claims (use as ``Depends(jwt_claims)``).

    Raises 401 when the request carries no verified token: on an ``auth: optional`` or
    ``public`` route without one (``token_missing``), or on a report-only route whose token
    was refused (that refusal's reason).
    """
    return claims_of(conn)


def require_scope(*scopes: str, match: str = "all") -> Callable[[HTTPConnection], Awaitable[Claims]]:
    """A dependency requiring the token's ``scope``/``scp`` to grant ``scopes``; returns the claims.

    ``match="all"`` (default) needs every scope, ``"any"`` one of them. Without a token: 401
    (as :func:`jwt_claims`); without the scopes: 403 with ``WWW-Authenticate: Bearer
    error="insufficient_scope", scope="..."`` (RFC 6750 §3.1).
    """
    wanted = tuple(s for scope in scopes for s in scope.split())
    if not wanted:
        raise ValueError("require_scope needs at least one scope")
    if match not in ("all", "any"):
        raise ValueError("match is 'all' or 'any'")
    need_all = match == "all"

    async def scope_dependency(conn: HTTPConnection) -> Claims:
        claims = claims_of(conn)
        granted = set(granted_scopes(claims))
        ok = granted.issuperset(wanted) if need_all else not granted.isdisjoint(wanted)
        if not ok:
            raise AuthorizationError(
                "the token does not grant the scope this endpoint requires",
                reason="insufficient_scope",
                scopes=wanted,
            )
        return claims

    scope_dependency.__name__ = f"require_scope_{'_'.join(wanted)}"
    return scope_dependency


__all__ = ["MiddlewareMissing", "claims_of", "jwt_claims", "require_scope"]
