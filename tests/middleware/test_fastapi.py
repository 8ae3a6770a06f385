"""The FastAPI dependencies (``jwt_claims``, ``require_scope``) in a real FastAPI app behind
JWTGatewayMiddleware under real uvicorn: per-endpoint refusals look exactly like the gateway's."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI

from gateway.middleware.asgi import JWTGatewayMiddleware
from gateway.middleware.fastapi import MiddlewareMissing, jwt_claims, require_scope
from tests.middleware import bearer, middleware_config
from tests.support.jwks_server import JWKSServer
from tests.support.servers import ServerThread
from tests.support.tokens import SigningKey

JWTClaims = Annotated[Mapping[str, Any], Depends(jwt_claims)]


def build_app() -> FastAPI:
    app = FastAPI()

    @app.get("/api/me")
    async def me(claims: JWTClaims) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    @app.get("/optional/me")
    def optional_me(claims: Mapping[str, Any] = Depends(jwt_claims)) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    @app.get("/report/me")
    async def report_me(claims: JWTClaims) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    @app.get("/api/orders", dependencies=[Depends(require_scope("orders:read"))])
    async def orders() -> dict[str, Any]:
        return {"orders": []}

    @app.get("/api/either")
    async def either(
        claims: Annotated[Mapping[str, Any], Depends(require_scope("a:read", "b:read", match="any"))],
    ) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    return app


@pytest.fixture(scope="module")
def key(idp: JWKSServer) -> SigningKey:
    return idp.add_key("RS256")


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as shared:
        yield shared


@pytest.fixture(scope="module")
def server(idp: JWKSServer, key: SigningKey) -> Iterator[ServerThread]:
    app = build_app()
    app.add_middleware(JWTGatewayMiddleware, config=middleware_config(idp))
    config = uvicorn.Config(app, loop="none", http="httptools", lifespan="on", log_config=None)
    with ServerThread(app, config=config) as running:
        yield running


def test_jwt_claims_returns_the_verified_claims(
    client: httpx.Client, server: ServerThread, idp: JWKSServer, key: SigningKey
) -> None:
    r = client.get(server.url + "/api/me", headers=bearer(idp.mint(key, sub="alice")))
    assert (r.status_code, r.json()) == (200, {"sub": "alice"})
    # A plain `def` endpoint with the classic `= Depends(jwt_claims)` spelling.
    r = client.get(server.url + "/optional/me", headers=bearer(idp.mint(key, sub="bob")))
    assert (r.status_code, r.json()) == (200, {"sub": "bob"})


def test_jwt_claims_without_a_token_is_the_gateway_401(client: httpx.Client, server: ServerThread) -> None:
    r = client.get(server.url + "/optional/me")  # auth: optional lets it reach the endpoint
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="jwt-gateway"'
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["reason"] == "token_missing"
    assert r.json()["request_id"] == r.headers["x-request-id"]


def test_jwt_claims_on_a_report_only_route_names_the_refusal(
    client: httpx.Client, server: ServerThread
) -> None:
    r = client.get(server.url + "/report/me", headers=bearer("not.a.token"))
    assert r.status_code == 401
    assert r.json()["reason"] == "token_malformed"
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_require_scope_403_with_the_rfc6750_challenge(
    client: httpx.Client, server: ServerThread, idp: JWKSServer, key: SigningKey
) -> None:
    r = client.get(server.url + "/api/orders", headers=bearer(idp.mint(key, scope="profile")))
    assert r.status_code == 403
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="jwt-gateway", error="insufficient_scope"')
    assert 'scope="orders:read"' in challenge
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["reason"] == "insufficient_scope"
    granted = client.get(
        server.url + "/api/orders", headers=bearer(idp.mint(key, scope="profile orders:read"))
    )
    assert granted.status_code == 200
    # `scp` arrays (Azure AD, Okta) count as scopes too.
    assert (
        client.get(server.url + "/api/orders", headers=bearer(idp.mint(key, scp=["orders:read"]))).status_code
        == 200
    )


def test_require_scope_any(
    client: httpx.Client, server: ServerThread, idp: JWKSServer, key: SigningKey
) -> None:
    assert (
        client.get(server.url + "/api/either", headers=bearer(idp.mint(key, scope="b:read"))).status_code
        == 200
    )
    r = client.get(server.url + "/api/either", headers=bearer(idp.mint(key, scope="c:read")))
    assert r.status_code == 403
    assert 'scope="a:read b:read"' in r.headers["www-authenticate"]


def test_dependencies_without_the_middleware_are_a_setup_error(client: httpx.Client) -> None:
    app = build_app()
    raised: list[BaseException] = []

    @app.exception_handler(MiddlewareMissing)
    async def record(request: Any, exc: MiddlewareMissing) -> Any:
        raised.append(exc)
        raise exc

    with ServerThread(app) as running:
        assert client.get(running.url + "/api/me").status_code == 500
    assert raised and "add_middleware" in str(raised[0])


def test_require_scope_arguments_and_openapi() -> None:
    with pytest.raises(ValueError):
        require_scope()
    with pytest.raises(ValueError):
        require_scope("x", match="most")
    # The dependencies take a Starlette HTTPConnection: FastAPI documents no parameter for them.
    schema = build_app().openapi()
    assert schema["paths"]["/api/orders"]["get"].get("parameters") is None
