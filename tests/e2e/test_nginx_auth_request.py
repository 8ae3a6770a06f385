"""Real nginx in front of an echo upstream, asking the gateway's forward-auth endpoint about every
request with ``auth_request``: the shipped snippet (config/nginx/auth_request.conf) and the shipped
example config (config/examples/forward-auth.yaml), with only ports changed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.jwks_server import JWKSServer
from tests.support.servers import EchoUpstream, GatewayServer, raw_request
from tests.support.tokens import SigningKey

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "config" / "nginx" / "auth_request.conf"
EXAMPLE = ROOT / "config" / "examples" / "forward-auth.yaml"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx; .ci/run installs it)"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_conf(folder: Path, *, port: int, gateway_port: int, app_port: int) -> Path:
    """nginx.conf around the shipped snippet, with the snippet's ports replaced."""
    snippet = SNIPPET.read_text()
    for old, new in (
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{gateway_port};"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{app_port};"),
        ("listen 80;", f"listen 127.0.0.1:{port};"),
    ):
        assert snippet.count(old) == 1, f"the snippet no longer has {old!r}"
        snippet = snippet.replace(old, new)
    (folder / "auth_request.conf").write_text(snippet)
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = folder / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'} warn;\n"
        "events { worker_connections 128; }\n"
        f"http {{\n    access_log off;\n{temp}\n    include {folder / 'auth_request.conf'};\n}}\n"
    )
    return conf


class Nginx:
    """nginx in the foreground (``daemon off``) as a subprocess, on a free port."""

    def __init__(self, folder: Path, *, gateway_port: int, app_port: int) -> None:
        self.folder = folder
        self.port = _free_port()
        self.conf = nginx_conf(folder, port=self.port, gateway_port=gateway_port, app_port=app_port)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Nginx:
        assert NGINX is not None
        command = [NGINX, "-p", str(self.folder), "-e", str(self.folder / "error.log"), "-c", str(self.conf)]
        checked = subprocess.run([*command, "-t"], capture_output=True, timeout=30, check=False)
        assert checked.returncode == 0, checked.stderr.decode()
        self.process = subprocess.Popen(
            [*command, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {self.error_log()}") from None
                time.sleep(0.02)

    def error_log(self) -> str:
        path = self.folder / "error.log"
        return path.read_text() if path.exists() else ""

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.communicate(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - nginx ignores SIGTERM?
                self.process.kill()
                self.process.communicate()


@pytest.fixture(scope="module")
def key(idp: JWKSServer) -> SigningKey:
    return idp.add_key("RS256")


@pytest.fixture(scope="module")
def gateway(idp: JWKSServer, key: SigningKey, upstream: EchoUpstream) -> Iterator[GatewayServer]:
    env = {"OIDC_ISSUER": idp.issuer, "OIDC_AUDIENCE": "api", "UPSTREAM_URL": upstream.url}
    with GatewayServer(EXAMPLE.read_text(), env=env) as server:
        server.wait_ready()
        yield server


@pytest.fixture(scope="module")
def nginx(
    tmp_path_factory: pytest.TempPathFactory, gateway: GatewayServer, upstream: EchoUpstream
) -> Iterator[Nginx]:
    with Nginx(tmp_path_factory.mktemp("nginx"), gateway_port=gateway.port, app_port=upstream.port) as server:
        yield server


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as shared:
        yield shared


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def headers_seen(request: dict[str, Any]) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for name, value in request["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


# --------------------------------------------------------------------------------- allowed


def test_allowed_request_reaches_the_app_with_the_claim_headers(
    client: httpx.Client, nginx: Nginx, upstream: EchoUpstream, idp: JWKSServer, key: SigningKey
) -> None:
    before = upstream.count
    token = idp.mint(key, sub="alice", roles=["reader", "writer"])
    r = client.get(nginx.url + "/api/orders?page=2", headers=bearer(token))
    assert r.status_code == 200, nginx.error_log()
    assert upstream.count == before + 1
    seen = upstream.requests[-1]
    assert (seen["path"], seen["query"]) == ("/api/orders", "page=2")
    headers = headers_seen(seen)
    assert headers[b"x-user-id"] == [b"alice"]
    assert headers[b"x-user-roles"] == [b"reader,writer"]
    assert b"authorization" not in headers  # the snippet does not pass the token on


def test_spoofed_identity_headers_never_reach_the_app(
    client: httpx.Client, nginx: Nginx, upstream: EchoUpstream, idp: JWKSServer, key: SigningKey
) -> None:
    token = idp.mint(key, sub="bob")  # no roles claim: the gateway sends no X-User-Roles
    client.get(nginx.url + "/api/x", headers={**bearer(token), "X-User-Id": "admin", "X-User-Roles": "admin"})
    headers = headers_seen(upstream.requests[-1])
    assert headers[b"x-user-id"] == [b"bob"]
    assert b"x-user-roles" not in headers
    # A public route: the gateway sends no identity at all, and the client's copies are removed.
    r = client.get(nginx.url + "/static/app.js", headers={"X-User-Id": "admin", "x-user-roles": "admin"})
    assert r.status_code == 200
    headers = headers_seen(upstream.requests[-1])
    assert b"x-user-id" not in headers and b"x-user-roles" not in headers
    # Underscore spellings (read as X-User-Id by WSGI/CGI backends) are dropped by nginx.
    status, _ = raw_request(
        nginx.port, b"GET /static/x HTTP/1.1\r\nHost: t\r\nX_User_Id: admin\r\nConnection: close\r\n\r\n"
    )
    assert status == 200
    assert not any(b"user" in name for name in headers_seen(upstream.requests[-1]))


# --------------------------------------------------------------------------------- refused


def test_missing_token_is_401_from_nginx_with_the_challenge(
    client: httpx.Client, nginx: Nginx, upstream: EchoUpstream
) -> None:
    before = upstream.count
    r = client.get(nginx.url + "/api/orders")
    assert r.status_code == 401
    assert r.headers.get_list("www-authenticate") == ['Bearer realm="jwt-gateway"']
    assert upstream.count == before


def test_bad_token_is_401_invalid_token(
    client: httpx.Client, nginx: Nginx, upstream: EchoUpstream, idp: JWKSServer, key: SigningKey
) -> None:
    before = upstream.count
    r = client.get(nginx.url + "/api/orders", headers=bearer(idp.mint(key, exp=int(time.time()) - 3600)))
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert upstream.count == before


def test_rule_failure_is_403_from_nginx_with_insufficient_scope(
    client: httpx.Client, nginx: Nginx, upstream: EchoUpstream, idp: JWKSServer, key: SigningKey
) -> None:
    before = upstream.count
    r = client.get(nginx.url + "/admin/users", headers=bearer(idp.mint(key, roles=["reader"])))
    assert r.status_code == 403
    challenges = r.headers.get_list("www-authenticate")
    assert len(challenges) == 1 and 'error="insufficient_scope"' in challenges[0]
    assert upstream.count == before
    r = client.get(nginx.url + "/admin/users", headers=bearer(idp.mint(key, roles=["admin"])))
    assert r.status_code == 200


@pytest.mark.parametrize("target", [b"/static/%2e%2e/admin/users", b"/static/../admin/users", b"/api/a%2Fb"])
def test_non_canonical_uri_is_refused_and_not_forwarded(
    nginx: Nginx, upstream: EchoUpstream, idp: JWKSServer, key: SigningKey, target: bytes
) -> None:
    # nginx resolves "/static/../admin" to "/admin" for its own routing, but asks the gateway
    # about the raw $request_uri, which the gateway refuses: nginx answers 400.
    before = upstream.count
    token = idp.mint(key, roles=["reader"]).encode()
    status, _ = raw_request(
        nginx.port,
        b"GET "
        + target
        + b" HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
        + token
        + b"\r\nConnection: close\r\n\r\n",
    )
    assert status == 400
    assert upstream.count == before


def test_unmatched_path_is_404_and_not_forwarded(
    client: httpx.Client, nginx: Nginx, upstream: EchoUpstream, idp: JWKSServer, key: SigningKey
) -> None:
    before = upstream.count
    assert client.get(nginx.url + "/elsewhere", headers=bearer(idp.mint(key))).status_code == 404
    assert upstream.count == before


def test_the_auth_location_is_internal(client: httpx.Client, nginx: Nginx) -> None:
    assert client.get(nginx.url + "/_jwt_gateway_auth").status_code == 404


def test_client_cannot_name_another_uri_to_the_gateway(
    client: httpx.Client, nginx: Nginx, upstream: EchoUpstream, idp: JWKSServer, key: SigningKey
) -> None:
    # nginx passes client headers on to the auth subrequest: a client's own X-Forwarded-Uri
    # (Traefik's header) next to nginx's X-Original-URI makes the call ambiguous, and refused.
    before = upstream.count
    r = client.get(
        nginx.url + "/admin/users",
        headers={
            **bearer(idp.mint(key, roles=["reader"])),
            "X-Forwarded-Uri": "/static/x",
            "X-Forwarded-Method": "GET",
        },
    )
    assert r.status_code == 400
    assert upstream.count == before
