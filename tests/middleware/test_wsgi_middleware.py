"""JWTGatewayWSGIMiddleware end to end: a real Flask app under real waitress (threaded), a real
Django app under waitress in a subprocess, keys from a real JWKS server. No event loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask, request
from waitress.server import create_server

from gateway import JWTGatewayWSGIMiddleware
from gateway.middleware.wsgi import CLAIMS_KEY, raw_path_of, request_view
from tests.middleware import bearer, middleware_config
from tests.support.jwks_server import JWKSServer
from tests.support.servers import raw_request
from tests.support.tokens import SigningKey

ROOT = Path(__file__).resolve().parents[2]


class WaitressThread:
    """A WSGI app under real waitress (``threads`` worker threads) on 127.0.0.1, free port."""

    def __init__(self, app: Any, *, threads: int = 8) -> None:
        self.server: Any = create_server(app, host="127.0.0.1", port=0, threads=threads, ident=None)
        self.port: int = self.server.effective_port
        self._thread = threading.Thread(target=self.server.run, name="waitress", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> WaitressThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        server = self.server

        def close_all() -> None:  # runs in the server's loop: its map empties, run() returns
            for channel in list(server._map.values()):
                if channel is not server and channel is not server.trigger:
                    channel.close()
            server.close()

        server.trigger.pull_trigger(close_all)
        self._thread.join(timeout=10)
        server.task_dispatcher.shutdown()


def seen() -> dict[str, Any]:
    environ = request.environ
    return {
        "claims": environ.get(CLAIMS_KEY),
        "http": {k: v for k, v in environ.items() if k.startswith("HTTP_") and k != "HTTP_HOST"},
        "path_info": environ["PATH_INFO"],
        "x_user_id": request.headers.get("X-User-Id"),
        "thread": threading.get_ident(),
    }


def flask_app(config: dict[str, Any]) -> Flask:
    app = Flask(__name__)

    @app.route("/api/<path:rest>")
    def api(rest: str) -> dict[str, Any]:
        return seen()

    @app.route("/api-mutate/x")
    def mutate() -> dict[str, Any]:
        request.environ[CLAIMS_KEY]["roles"].append("admin")  # a careless app
        return {}

    @app.route("/public/<path:rest>")
    def public(rest: str) -> dict[str, Any]:
        return seen()

    @app.route("/admin/<path:rest>")
    def admin(rest: str) -> dict[str, Any]:
        return seen()

    app.wsgi_app = JWTGatewayWSGIMiddleware(app.wsgi_app, config=config)  # type: ignore[method-assign]
    return app


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    # One client for the module: each new httpx client builds an SSL context (~50 ms).
    with httpx.Client(timeout=10) as shared:
        yield shared


@pytest.fixture(scope="module")
def key(idp: JWKSServer) -> SigningKey:
    return idp.add_key("RS256")


def wsgi_config(idp: JWKSServer) -> dict[str, Any]:
    config = middleware_config(idp)
    # Unknown-kid re-fetches without a cooldown, so the rotation test need not wait.
    config["providers"]["idp"]["jwks"] = {"min_refresh_interval": 0}
    return config


@pytest.fixture(scope="module")
def app(idp: JWKSServer, key: SigningKey) -> Flask:
    return flask_app(wsgi_config(idp))


@pytest.fixture(scope="module")
def server(app: Flask) -> Iterator[WaitressThread]:
    with WaitressThread(app) as running:
        yield running
    app.wsgi_app.close()  # type: ignore[attr-defined]


def middleware(app: Flask) -> JWTGatewayWSGIMiddleware:
    wrapped = app.wsgi_app
    assert isinstance(wrapped, JWTGatewayWSGIMiddleware)
    return wrapped


# --------------------------------------------------------------------------------- allowed


def test_keys_are_fetched_on_the_first_request_not_at_import(
    client: httpx.Client, idp: JWKSServer, key: SigningKey
) -> None:
    fresh = flask_app(wsgi_config(idp))
    fetches = idp.fetch_count
    with WaitressThread(fresh, threads=2) as running:
        # Built, served, but no request yet: no thread started (a forking server would lose it).
        assert idp.fetch_count == fetches
        assert not middleware(fresh).policy.key_status()["idp"]["ready"]
        r = client.get(running.url + "/api/x", headers=bearer(idp.mint(key)))
        assert r.status_code == 200
        assert middleware(fresh).policy.key_status()["idp"]["ready"]
    middleware(fresh).close()


def test_claims_in_environ_and_claim_headers_as_cgi_keys(
    client: httpx.Client, server: WaitressThread, idp: JWKSServer, key: SigningKey
) -> None:
    token = idp.mint(key, sub="alice", roles=["reader", "writer"])
    r = client.get(server.url + "/api/orders", headers=bearer(token))
    assert r.status_code == 200
    body = r.json()
    assert body["claims"]["sub"] == "alice"
    assert body["http"]["HTTP_X_USER_ID"] == "alice"
    assert body["http"]["HTTP_X_USER_ROLES"] == "reader,writer"
    assert body["x_user_id"] == "alice"
    assert "HTTP_AUTHORIZATION" not in body["http"]


def test_app_changing_its_claims_cannot_change_later_decisions(
    client: httpx.Client, server: WaitressThread, idp: JWKSServer, key: SigningKey
) -> None:
    token = bearer(idp.mint(key, roles=["reader"]))
    assert client.get(server.url + "/api-mutate/x", headers=token).status_code == 200
    assert client.get(server.url + "/admin/x", headers=token).status_code == 403


def test_spoofed_identity_headers_are_removed_on_every_route(
    client: httpx.Client, server: WaitressThread, idp: JWKSServer, key: SigningKey
) -> None:
    spoof = {"X-User-Id": "admin", "X-User-Roles": "admin", "X-User-Anything": "1"}
    body = client.get(server.url + "/public/x", headers=spoof).json()
    assert body["claims"] is None
    assert not any(k.startswith("HTTP_X_USER") for k in body["http"])
    body = client.get(server.url + "/api/x", headers={**spoof, **bearer(idp.mint(key, sub="bob"))}).json()
    assert body["http"]["HTTP_X_USER_ID"] == "bob"
    assert "HTTP_X_USER_ROLES" not in body["http"]
    assert "HTTP_X_USER_ANYTHING" not in body["http"]


def test_underscore_spelling_folded_by_the_server_is_removed(
    app: Flask, idp: JWKSServer, key: SigningKey
) -> None:
    # A server that folds "X_User_Id" into HTTP_X_USER_ID (waitress drops such headers itself,
    # so the environ is written here as such a server would build it).
    captured: dict[str, Any] = {}

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        captured.update(environ)
        start_response("200 OK", [])
        return [b""]

    wrapped = JWTGatewayWSGIMiddleware(inner, config=middleware(app).policy.config, key_wait=0)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/public/x",
        "QUERY_STRING": "",
        "HTTP_X_USER_ID": "admin",
        "HTTP_X_USER_ROLES": "admin",
    }
    statuses: list[str] = []
    wrapped(environ, lambda status, headers, exc_info=None: statuses.append(status))  # type: ignore[arg-type,misc]
    assert statuses == ["200 OK"]
    assert "HTTP_X_USER_ID" not in captured and "HTTP_X_USER_ROLES" not in captured
    wrapped.close()


def test_threaded_requests_with_many_tokens_and_a_key_rotation(
    client: httpx.Client, app: Flask, server: WaitressThread, idp: JWKSServer, key: SigningKey
) -> None:
    tokens = [idp.mint(key, sub=f"user-{i}") for i in range(24)]
    # A new key published by the IdP: its first tokens have an unknown kid, and the concurrent
    # misses share the synchronous re-fetch.
    new_key = idp.add_key("RS256", slot=1)
    rotated = [idp.mint(new_key, sub=f"new-{i}") for i in range(8)]
    fetches = idp.fetch_count

    def call(token: str) -> tuple[int, str | None, int]:
        r = client.get(server.url + "/api/x", headers=bearer(token))  # httpx.Client is thread-safe
        body = r.json()
        return r.status_code, body.get("x_user_id"), body.get("thread", 0)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, tokens * 2 + rotated))
    expected = [f"user-{i}" for i in range(24)] * 2 + [f"new-{i}" for i in range(8)]
    assert [(status, sub) for status, sub, _ in results] == [(200, sub) for sub in expected]
    assert len({thread for *_, thread in results}) > 1  # several waitress threads served them
    assert 1 <= idp.fetch_count - fetches <= 2  # one re-fetch (min_refresh_interval) for 8 misses
    idp.remove_key(new_key)


# --------------------------------------------------------------------------------- refused


def test_refusals_have_the_proxy_status_challenge_and_body(
    client: httpx.Client, server: WaitressThread, idp: JWKSServer, key: SigningKey
) -> None:
    r = client.get(server.url + "/api/x")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="jwt-gateway"'
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["reason"] == "token_missing"
    assert r.json()["request_id"] == r.headers["x-request-id"]
    r = client.get(server.url + "/api/x", headers=bearer(idp.mint(key, exp=int(time.time()) - 3600)))
    assert (r.status_code, r.json()["reason"]) == (401, "token_expired")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    r = client.get(server.url + "/admin/x", headers=bearer(idp.mint(key, roles=["reader"])))
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert (
        client.get(server.url + "/admin/x", headers=bearer(idp.mint(key, roles=["admin"]))).status_code == 200
    )
    assert client.get(server.url + "/nowhere").status_code == 404
    r = client.get(server.url + "/x", headers={"X-Request-Id": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"


def test_non_canonical_raw_paths_are_refused(
    server: WaitressThread, idp: JWKSServer, key: SigningKey
) -> None:
    # waitress decodes PATH_INFO ("/api/a/b", "/public/../admin"): the middleware reads the
    # raw REQUEST_URI, so it sees the encoded "/" and the encoded dots.
    auth = b"Authorization: Bearer " + idp.mint(key).encode() + b"\r\n"
    for target in (b"/api/a%2Fb", b"/public/%2e%2e/admin/x", b"/api/%00"):
        status, raw = raw_request(
            server.port, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n" + auth + b"Connection: close\r\n\r\n"
        )
        assert status == 400, target
        assert b"path_not_canonical" in raw


def test_normalised_path_is_what_the_app_routes_on(
    server: WaitressThread, idp: JWKSServer, key: SigningKey
) -> None:
    # paths.normalize: [merge_slashes]: "/api//x" is decided as "/api/x" and PATH_INFO says so.
    status, raw = raw_request(
        server.port,
        b"GET /api//deep//x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
        + idp.mint(key).encode()
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert status == 200
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["path_info"] == "/api/deep/x"


# ----------------------------------------------------------------------------- raw paths


def test_raw_path_from_raw_uri_request_uri_or_path_info() -> None:
    assert raw_path_of({"RAW_URI": "/a%2Fb?x=1", "PATH_INFO": "/a/b"}) == (b"/a%2Fb", True)
    assert raw_path_of({"REQUEST_URI": "http://h:1/p%2e?q", "PATH_INFO": "/p."}) == (b"/p%2e", True)
    # No raw URI (wsgiref): SCRIPT_NAME + PATH_INFO, re-encoded; the raw spelling is lost.
    assert raw_path_of({"SCRIPT_NAME": "/app", "PATH_INFO": "/caf\xc3\xa9 x"}) == (
        b"/app/caf%C3%A9%20x",
        False,
    )
    view = request_view(
        {"REQUEST_METHOD": "POST", "PATH_INFO": "/x", "QUERY_STRING": "a=1", "CONTENT_TYPE": "text/plain",
         "HTTP_AUTHORIZATION": "Bearer t", "REMOTE_ADDR": "10.0.0.1"}
    )  # fmt: skip
    assert (view.method, view.raw_path, view.query, view.client) == ("POST", b"/x", b"a=1", "10.0.0.1")
    assert view.header(b"authorization") == b"Bearer t"
    assert view.header(b"content-type") == b"text/plain"


# ---------------------------------------------------------------------------------- Django

_DJANGO_APP = """
import json, sys
import django
from django.conf import settings
from django.http import JsonResponse
from django.urls import path

def whoami(request):
    return JsonResponse({
        "claims": request.META.get("jwt_gateway.claims"),
        "x_user_id": request.headers.get("X-User-Id"),
        "authorization": request.headers.get("Authorization"),
    })

settings.configure(
    DEBUG=False, SECRET_KEY="test", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
    INSTALLED_APPS=[], MIDDLEWARE=[],
)
urlpatterns = [path("api/whoami", whoami), path("public/whoami", whoami)]
django.setup()

from django.core.wsgi import get_wsgi_application
from waitress.server import create_server
from gateway import JWTGatewayWSGIMiddleware

application = JWTGatewayWSGIMiddleware(get_wsgi_application(), config=json.loads(sys.argv[1]))
server = create_server(application, host="127.0.0.1", port=0, threads=4, ident=None)
print(server.effective_port, flush=True)
server.run()
"""


def test_django_app_under_waitress(client: httpx.Client, idp: JWKSServer, key: SigningKey) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _DJANGO_APP, json.dumps(middleware_config(idp))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        token = idp.mint(key, sub="dj-user")
        r = client.get(url + "/api/whoami", headers={**bearer(token), "X-User-Id": "admin"}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json() == {"claims": r.json()["claims"], "x_user_id": "dj-user", "authorization": None}
        assert r.json()["claims"]["sub"] == "dj-user"
        r = client.get(url + "/public/whoami", headers={"X-User-Id": "admin"})
        assert r.json() == {"claims": None, "x_user_id": None, "authorization": None}
        r = client.get(url + "/api/whoami")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer realm="jwt-gateway"'
    finally:
        process.terminate()
        process.communicate(timeout=10)
