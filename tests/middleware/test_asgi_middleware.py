"""JWTGatewayMiddleware end to end: a real FastAPI app behind the middleware under real uvicorn
(lifespan on), keys from a real JWKS server. The handlers report what they see."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, WebSocket
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.responses import JSONResponse
from starlette.routing import Route
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from gateway import JWTGatewayMiddleware
from gateway.config.loader import parse_config
from gateway.errors import ConfigError
from gateway.middleware.asgi import JWTAuth, JWTUser
from tests.middleware import bearer, middleware_config
from tests.support.jwks_server import JWKSServer
from tests.support.servers import ServerThread, raw_request
from tests.support.tokens import SigningKey


def seen(request: Request) -> dict[str, Any]:
    """What a handler can read about the caller."""
    headers: dict[str, list[str]] = {}
    for name, value in request.scope["headers"]:
        headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
    return {
        "path": request.scope["path"],
        "raw_path": request.scope["raw_path"].decode("latin-1"),
        "headers": headers,
        "auth": dict(request.auth),
        "scopes": request.auth.scopes,
        "user": request.user.identity if request.user.is_authenticated else None,
        "state": request.state.jwt_claims,
    }


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.get("/api/{rest:path}")
    async def api(request: Request) -> dict[str, Any]:
        return seen(request)

    @app.get("/api-mutate/x")
    async def mutate(request: Request) -> dict[str, Any]:
        # A careless app changing the claims it was given.
        request.state.jwt_claims["roles"].append("admin")
        request.auth.claims["roles"].append("admin")
        return {}

    @app.get("/public/{rest:path}")
    async def public(request: Request) -> dict[str, Any]:
        return seen(request)

    @app.get("/report/{rest:path}")
    async def report(request: Request) -> dict[str, Any]:
        return seen(request)

    @app.get("/admin/{rest:path}")
    async def admin(request: Request) -> dict[str, Any]:
        return seen(request)

    @app.websocket("/ws/echo")
    async def ws_echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"sub": websocket.scope["auth"].get("sub")})
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(text)

    @app.websocket("/nows/echo")
    async def nows(websocket: WebSocket) -> None:  # pragma: no cover - refused before
        await websocket.accept()

    return app


def lifespan_server(app: Any) -> ServerThread:
    config = uvicorn.Config(
        app, loop="none", http="httptools", lifespan="on", log_config=None, access_log=False
    )
    return ServerThread(app, config=config)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    # One client for the module: each new httpx client builds an SSL context (~50 ms).
    with httpx.Client(timeout=10) as shared:
        yield shared


@pytest.fixture(scope="module")
def key(idp: JWKSServer) -> SigningKey:
    return idp.add_key("RS256")


@pytest.fixture(scope="module")
def server(idp: JWKSServer, key: SigningKey) -> Iterator[ServerThread]:
    app = fastapi_app()
    app.add_middleware(JWTGatewayMiddleware, config=middleware_config(idp))
    before = idp.fetch_count
    with lifespan_server(app) as running:
        # Lifespan startup started key fetching and waited for the first fetch.
        assert idp.fetch_count > before
        yield running


# --------------------------------------------------------------------------------- allowed


def test_claims_reach_the_handler_as_auth_user_state_and_headers(
    client: httpx.Client, server: ServerThread, idp: JWKSServer, key: SigningKey
) -> None:
    token = idp.mint(key, sub="alice", roles=["reader", "writer"], scope="orders:read orders:write")
    r = client.get(server.url + "/api/orders?x=1", headers=bearer(token))
    assert r.status_code == 200
    body = r.json()
    assert body["auth"]["sub"] == "alice"
    assert body["scopes"] == ["orders:read", "orders:write"]
    assert body["user"] == "alice"
    assert body["state"]["sub"] == "alice"
    assert body["headers"]["x-user-id"] == ["alice"]
    assert body["headers"]["x-user-roles"] == ["reader,writer"]
    # The token is not passed on (headers.forward_authorization is false).
    assert "authorization" not in body["headers"]


def test_spoofed_identity_headers_never_reach_the_app(
    client: httpx.Client, server: ServerThread, idp: JWKSServer, key: SigningKey
) -> None:
    spoof = {"X-User-Id": "admin", "X-User-Roles": "admin", "X-User-Extra": "1"}
    r = client.get(server.url + "/api/x", headers={**bearer(idp.mint(key, sub="bob")), **spoof})
    assert r.json()["headers"]["x-user-id"] == ["bob"]
    assert "x-user-roles" not in r.json()["headers"]  # bob has no roles claim
    assert "x-user-extra" not in r.json()["headers"]
    # On a public route too, and in underscore spellings (raw bytes: httpx would refuse none).
    status, raw = raw_request(
        server.port,
        b"GET /public/x HTTP/1.1\r\nHost: t\r\nX-User-Id: admin\r\nX_User_Id: admin\r\n"
        b"x-user-roles: admin\r\nConnection: close\r\n\r\n",
    )
    assert status == 200
    assert b"admin" not in raw.partition(b"\r\n\r\n")[2]


def test_public_route_has_empty_auth_and_unauthenticated_user(
    client: httpx.Client, server: ServerThread
) -> None:
    body = client.get(server.url + "/public/x").json()
    assert body["auth"] == {}
    assert body["scopes"] == []
    assert body["user"] is None
    assert body["state"] is None


def test_app_routes_on_the_canonical_path(server: ServerThread, idp: JWKSServer, key: SigningKey) -> None:
    # paths.normalize: [merge_slashes]: "//" was authorised as "/", and the app sees "/".
    status, raw = raw_request(
        server.port,
        b"GET /api//deep//x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
        + idp.mint(key).encode()
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert status == 200
    body = httpx.Response(200, content=raw.partition(b"\r\n\r\n")[2]).json()
    assert body["path"] == "/api/deep/x"
    assert body["raw_path"] == "/api/deep/x"


def test_app_changing_its_claims_cannot_change_later_decisions(
    client: httpx.Client, server: ServerThread, idp: JWKSServer, key: SigningKey
) -> None:
    token = bearer(idp.mint(key, roles=["reader"]))
    assert client.get(server.url + "/api-mutate/x", headers=token).status_code == 200
    # The same token (a token-cache hit): its roles are still ["reader"].
    assert client.get(server.url + "/admin/x", headers=token).status_code == 403
    assert client.get(server.url + "/api/x", headers=token).json()["auth"]["roles"] == ["reader"]


def test_report_only_route_passes_with_claims(
    client: httpx.Client, server: ServerThread, idp: JWKSServer, key: SigningKey
) -> None:
    r = client.get(server.url + "/report/x", headers=bearer(idp.mint(key, sub="carol")))
    assert r.status_code == 200
    assert r.json()["auth"]["sub"] == "carol"
    assert client.get(server.url + "/report/x").status_code == 200


# --------------------------------------------------------------------------------- refused


def test_missing_token_is_401_with_bearer_challenge(client: httpx.Client, server: ServerThread) -> None:
    r = client.get(server.url + "/api/x")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="jwt-gateway"'
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["reason"] == "token_missing"
    assert r.json()["request_id"] == r.headers["x-request-id"]


def test_bad_token_is_401_invalid_token(
    client: httpx.Client, server: ServerThread, idp: JWKSServer, key: SigningKey
) -> None:
    token = idp.mint(key)
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    r = client.get(server.url + "/api/x", headers=bearer(tampered))
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    expired = idp.mint(key, exp=int(time.time()) - 3600)
    r = client.get(server.url + "/api/x", headers=bearer(expired))
    assert r.status_code == 401
    assert r.json()["reason"] == "token_expired"


def test_rule_failure_is_403_insufficient_scope(
    client: httpx.Client, server: ServerThread, idp: JWKSServer, key: SigningKey
) -> None:
    r = client.get(server.url + "/admin/x", headers=bearer(idp.mint(key, roles=["reader"])))
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert r.json()["reason"] == "rule_failed"
    ok = client.get(server.url + "/admin/x", headers=bearer(idp.mint(key, roles=["admin"])))
    assert ok.status_code == 200


def test_unmatched_and_denied_routes_never_reach_the_app(client: httpx.Client, server: ServerThread) -> None:
    r = client.get(server.url + "/elsewhere")
    assert r.status_code == 404
    assert r.json()["reason"] == "route_not_found"
    r = client.get(server.url + "/closed/x")
    assert r.status_code == 403
    assert r.json()["reason"] == "route_denied"


def test_non_canonical_path_is_400(server: ServerThread) -> None:
    status, raw = raw_request(server.port, b"GET /public/%2e%2e/api/x HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 400
    assert b"path_not_canonical" in raw


# ------------------------------------------------------------------------------- WebSocket


def test_websocket_with_token_sees_claims(server: ServerThread, idp: JWKSServer, key: SigningKey) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws/echo"
    with connect(url, additional_headers=bearer(idp.mint(key, sub="dave"))) as ws:
        assert ws.recv(timeout=5) == '{"sub":"dave"}'
        ws.send("hi")
        assert ws.recv(timeout=5) == "hi"


def test_websocket_without_token_is_refused_with_the_http_answer(server: ServerThread) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{server.port}/ws/echo", open_timeout=5)
    assert info.value.response.status_code == 401
    assert info.value.response.headers["www-authenticate"] == 'Bearer realm="jwt-gateway"'


def test_websocket_refused_on_a_route_without_websocket(
    server: ServerThread, idp: JWKSServer, key: SigningKey
) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{server.port}/nows/echo", additional_headers=bearer(idp.mint(key)))
    assert info.value.response.status_code == 403


def test_websocket_closed_with_1008_when_the_token_expires(
    server: ServerThread, idp: JWKSServer, key: SigningKey
) -> None:
    token = idp.mint(key, exp=int(time.time()) + 2)
    with connect(f"ws://127.0.0.1:{server.port}/ws/echo", additional_headers=bearer(token)) as ws:
        ws.recv(timeout=5)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)  # the app waits in receive(): the middleware ends it at exp
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008


# ------------------------------------------------------------------------------- lifecycle


async def whoami(request: Request) -> JSONResponse:
    assert isinstance(request.auth, JWTAuth)
    assert isinstance(request.user, JWTUser)
    return JSONResponse({"sub": request.user.display_name, "provider": request.auth.provider})


@requires("orders:read")
async def orders(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def test_without_lifespan_keys_are_fetched_on_the_first_request(
    client: httpx.Client, idp: JWKSServer, key: SigningKey
) -> None:
    app = Starlette(routes=[Route("/api/me", whoami), Route("/api/orders", orders)])
    wrapped = JWTGatewayMiddleware(app, config=middleware_config(idp))
    with ServerThread(wrapped) as running:  # lifespan="off"
        assert not wrapped.policy.key_status()["idp"]["ready"]
        r = client.get(running.url + "/api/me", headers=bearer(idp.mint(key, sub="erin")))
        assert r.status_code == 200
        assert r.json() == {"sub": "erin", "provider": "idp"}
        # Starlette's @requires reads request.auth.scopes: the token's scope claim.
        assert client.get(running.url + "/api/orders", headers=bearer(idp.mint(key))).status_code == 403
        granted = bearer(idp.mint(key, scope="orders:read"))
        assert client.get(running.url + "/api/orders", headers=granted).status_code == 200


def test_lifespan_shutdown_stops_key_fetching_and_a_new_lifespan_restarts_it(
    client: httpx.Client, idp: JWKSServer, key: SigningKey
) -> None:
    app = Starlette(routes=[Route("/api/me", whoami)])
    wrapped = JWTGatewayMiddleware(app, config=middleware_config(idp))
    for _ in range(2):
        with lifespan_server(wrapped) as running:
            r = client.get(running.url + "/api/me", headers=bearer(idp.mint(key)))
            assert r.status_code == 200
        sources = list(wrapped.policy.key_sources.values())
        assert all(getattr(s, "_closed", True) for s in sources)


def test_config_from_a_yaml_file(tmp_path: Any, idp: JWKSServer) -> None:
    import yaml

    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(middleware_config(idp)))
    middleware = JWTGatewayMiddleware(Starlette(), config=str(path))
    assert [r.name for r in middleware.policy.config.routes][-1] == "ws"
    # A GatewayConfig works too; no upstream is needed in middleware mode.
    assert JWTGatewayMiddleware(Starlette(), config=parse_config(path.read_text())).policy.realm


def test_bad_config_raises_config_error_at_construction() -> None:
    with pytest.raises(ConfigError) as info:
        JWTGatewayMiddleware(Starlette(), config={"routes": [{"match": {"path": "x"}}]})
    assert "routes[0].match.path" in str(info.value)
