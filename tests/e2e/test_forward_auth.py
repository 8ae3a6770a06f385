"""The forward-auth endpoint over real HTTP: the nginx auth_request and Traefik ForwardAuth header
contracts, the trust rule, and answers identical to the proxy's. (Traefik is not installable
here: its contract is exercised directly, with the headers Traefik sends.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.observe import Observer, RequestRecord
from tests.support.jwks_server import JWKSServer
from tests.support.servers import EchoUpstream, GatewayServer
from tests.support.tokens import SigningKey, default_claims, new_signing_key

AUD = "api"
DOWN_ISSUER = "https://down.test"


def forward_auth_config(idp: JWKSServer, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "admin": {"enabled": False},
        "providers": {
            "idp": {"issuer": idp.issuer, "discovery": True, "algorithms": ["RS256"], "audiences": [AUD]},
            # An IdP that never answers: its tokens meet "keys unavailable".
            "down": {
                "issuer": DOWN_ISSUER,
                "jwks_uri": "http://127.0.0.1:9/jwks.json",
                "algorithms": ["RS256"],
                "audiences": [AUD],
                "required": False,
            },
        },
        "headers": {
            "claims": {"X-User-Id": "sub", "X-User-Roles": {"claim": "roles", "encode": "csv"}},
            "strip_prefixes": ["X-User-"],
        },
        "routes": [
            {"name": "public", "match": {"path": "/public/**"}, "auth": "public"},
            {"name": "tenant", "match": {"path": "/tenant/**", "host": "a.example"}},
            {
                "name": "admin",
                "match": {"path": "/admin/**"},
                "require": {"claim": "roles", "contains": "admin"},
            },
            {"name": "reports", "match": {"path": "/reports/**", "methods": ["GET"]}},
            {"name": "api", "match": {"path": "/api/**"}},
        ],
    }
    config.update(extra)
    return config


@pytest.fixture(scope="module")
def key(idp: JWKSServer) -> SigningKey:
    return idp.add_key("RS256")


def wait_for_idp(server: GatewayServer) -> None:
    """Wait for the idp provider's keys (the "down" provider never gets any)."""
    deadline = time.monotonic() + 10
    while not server.gateway.policy.key_status()["idp"]["ready"]:
        assert time.monotonic() < deadline, "keys not ready"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def gw(idp: JWKSServer, key: SigningKey, upstream: EchoUpstream) -> Iterator[GatewayServer]:
    """Proxy mode with the forward-auth path; only 127.0.0.1 may call it."""
    config = forward_auth_config(
        idp,
        upstream=upstream.url,
        forward_auth={"enabled": True, "path": "/_auth", "trusted_sources": ["127.0.0.1/32"]},
    )
    with GatewayServer(config) as server:
        wait_for_idp(server)
        yield server


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as shared:
        yield shared


def nginx_call(uri: str, method: str = "GET", **headers: str) -> dict[str, str]:
    """The headers of nginx's auth subrequest (config/nginx/auth_request.conf)."""
    return {"X-Original-URI": uri, "X-Original-Method": method, **headers}


def traefik_call(uri: str, method: str = "GET", host: str = "app.example", **headers: str) -> dict[str, str]:
    """The headers Traefik's ForwardAuth sends (trustForwardHeader: false)."""
    return {
        "X-Forwarded-Method": method,
        "X-Forwarded-Uri": uri,
        "X-Forwarded-Host": host,
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": "203.0.113.7",
        **headers,
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "request_id"}


# --------------------------------------------------------------------------------- allowed


@pytest.mark.parametrize("flavour", [nginx_call, traefik_call])
def test_allowed_call_answers_200_with_claim_headers_and_forwards_nothing(
    flavour: Any,
    client: httpx.Client,
    gw: GatewayServer,
    upstream: EchoUpstream,
    idp: JWKSServer,
    key: SigningKey,
) -> None:
    before = upstream.count
    token = idp.mint(key, sub="alice", roles=["reader", "writer"])
    r = client.get(gw.url + "/_auth", headers=flavour("/api/orders?page=2", **bearer(token)))
    assert r.status_code == 200
    assert r.headers["x-user-id"] == "alice"
    assert r.headers["x-user-roles"] == "reader,writer"
    assert r.headers["x-request-id"]
    assert r.content == b""
    assert upstream.count == before


def test_public_route_answers_200_without_claim_headers(client: httpx.Client, gw: GatewayServer) -> None:
    r = client.get(gw.url + "/_auth", headers=nginx_call("/public/x", **{"X-User-Id": "admin"}))
    assert r.status_code == 200
    assert "x-user-id" not in r.headers


def test_the_rest_of_the_port_still_proxies(
    client: httpx.Client, gw: GatewayServer, upstream: EchoUpstream, idp: JWKSServer, key: SigningKey
) -> None:
    r = client.get(gw.url + "/api/x", headers=bearer(idp.mint(key, sub="bob")))
    assert r.status_code == 200
    assert r.json()["headers"]["x-user-id"] == ["bob"]


# --------------------------------------------------------------------------------- refused


def test_refusals_match_the_proxy_answer_for_the_same_request(
    client: httpx.Client, gw: GatewayServer
) -> None:
    proxied = client.get(gw.url + "/api/orders")
    asked = client.get(gw.url + "/_auth", headers=nginx_call("/api/orders"))
    assert asked.status_code == proxied.status_code == 401
    assert (
        asked.headers["www-authenticate"]
        == proxied.headers["www-authenticate"]
        == 'Bearer realm="jwt-gateway"'
    )
    assert asked.headers["content-type"] == "application/problem+json"
    assert without_request_id(asked.json()) == without_request_id(proxied.json())
    assert asked.json()["request_id"] == asked.headers["x-request-id"]


def test_bad_token_401_and_rule_failure_403(
    client: httpx.Client, gw: GatewayServer, idp: JWKSServer, key: SigningKey
) -> None:
    expired = idp.mint(key, exp=int(time.time()) - 3600)
    r = client.get(gw.url + "/_auth", headers=traefik_call("/api/x", **bearer(expired)))
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert r.json()["reason"] == "token_expired"
    reader = idp.mint(key, roles=["reader"])
    r = client.get(gw.url + "/_auth", headers=nginx_call("/admin/users", **bearer(reader)))
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    admin = idp.mint(key, roles=["admin"])
    assert (
        client.get(gw.url + "/_auth", headers=nginx_call("/admin/users", **bearer(admin))).status_code == 200
    )


def test_keys_unavailable_is_503_with_retry_after(client: httpx.Client, gw: GatewayServer) -> None:
    token = new_signing_key("RS256", slot=2).sign(default_claims(DOWN_ISSUER, AUD))
    r = client.get(gw.url + "/_auth", headers=nginx_call("/api/x", **bearer(token)))
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["reason"] == "keys_unavailable"


def test_forwarded_uri_follows_the_canonical_path_rules(
    client: httpx.Client, gw: GatewayServer, idp: JWKSServer, key: SigningKey
) -> None:
    auth = bearer(idp.mint(key, roles=["reader"]))
    for uri in (
        "/public/../admin/x",
        "/public/%2e%2e/admin/x",
        "/api/a%2Fb",
        "/api//x",
        "http://evil/api/x",
        "",
    ):
        r = client.get(gw.url + "/_auth", headers=nginx_call(uri, **auth))
        assert r.status_code == 400, uri
        assert r.json()["reason"] == "path_not_canonical"
        assert "www-authenticate" not in r.headers
    # The query is split off at the first "?": "/public?/../admin" is the path "/public".
    assert client.get(gw.url + "/_auth", headers=nginx_call("/public/x?/../admin")).status_code == 200


def test_method_and_route_matching_use_the_original_request(
    client: httpx.Client, gw: GatewayServer, idp: JWKSServer, key: SigningKey
) -> None:
    auth = bearer(idp.mint(key))
    assert client.get(gw.url + "/_auth", headers=nginx_call("/reports/1", "GET", **auth)).status_code == 200
    r = client.get(gw.url + "/_auth", headers=nginx_call("/reports/1", "POST", **auth))
    assert (r.status_code, r.json()["reason"]) == (404, "route_not_found")
    assert client.get(gw.url + "/_auth", headers=nginx_call("/nowhere", **auth)).status_code == 404


def test_host_comes_from_host_for_nginx_and_x_forwarded_host_for_traefik(
    client: httpx.Client, gw: GatewayServer, idp: JWKSServer, key: SigningKey
) -> None:
    auth = bearer(idp.mint(key))
    ok = traefik_call("/tenant/x", host="a.example", **auth)
    assert client.get(gw.url + "/_auth", headers=ok).status_code == 200
    other = traefik_call("/tenant/x", host="b.example", **auth)
    assert client.get(gw.url + "/_auth", headers=other).status_code == 404
    # nginx sets Host $host; a client's own X-Forwarded-Host (nginx passes it on) is ignored.
    nginx_ok = nginx_call("/tenant/x", Host="a.example", **auth)
    assert client.get(gw.url + "/_auth", headers=nginx_ok).status_code == 200
    spoofed = nginx_call("/tenant/x", Host="b.example", **{"X-Forwarded-Host": "a.example"}, **auth)
    assert client.get(gw.url + "/_auth", headers=spoofed).status_code == 404


# ------------------------------------------------------------------- spoofable input refused


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-original-uri"),
        pytest.param({"X-Original-URI": "/api/x"}, id="no-method"),
        pytest.param({"X-Original-URI": "/api/x", "X-Original-Method": "get"}, id="lower-case-method"),
        pytest.param({"X-Original-URI": "/api/x", "X-Original-Method": "GET /x"}, id="method-with-space"),
        pytest.param(
            {"X-Original-URI": "/public/x", "X-Original-Method": "GET", "X-Forwarded-Uri": "/api/x"},
            id="both-flavours",
        ),
        pytest.param(
            # Traefik's flavour never reads nginx's method, and the other way round.
            {"X-Forwarded-Uri": "/public/x", "X-Original-Method": "GET"},
            id="mixed-method",
        ),
    ],
)
def test_ambiguous_or_incomplete_calls_are_400(
    client: httpx.Client, gw: GatewayServer, headers: dict[str, str]
) -> None:
    r = client.get(gw.url + "/_auth", headers=headers)
    assert r.status_code == 400
    assert r.json()["reason"] == "forward_auth_invalid"


def test_duplicate_original_uri_is_400(client: httpx.Client, gw: GatewayServer) -> None:
    headers = [("X-Original-URI", "/public/x"), ("X-Original-URI", "/admin/x"), ("X-Original-Method", "GET")]
    r = client.get(gw.url + "/_auth", headers=headers)
    assert (r.status_code, r.json()["reason"]) == (400, "forward_auth_invalid")


def test_untrusted_peer_is_refused_whatever_it_sends(
    gw: GatewayServer, upstream: EchoUpstream, idp: JWKSServer, key: SigningKey
) -> None:
    # 127.0.0.2 is loopback too, but not in trusted_sources (127.0.0.1/32).
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport, timeout=10) as other:
        token = idp.mint(key, roles=["admin"])
        r = other.get(gw.url + "/_auth", headers=nginx_call("/admin/x", **bearer(token)))
        assert r.status_code == 403
        assert r.json()["reason"] == "forward_auth_untrusted"
        assert "www-authenticate" not in r.headers
        assert "x-user-id" not in r.headers
        # The proxied paths stay open to it as to anyone.
        assert other.get(gw.url + "/public/x").status_code == 200


class Recorder(Observer):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[RequestRecord] = []

    def request_done(self, record: RequestRecord) -> None:
        self.records.append(record)


def test_every_call_is_access_logged_like_a_proxied_request(
    client: httpx.Client, gw: GatewayServer, idp: JWKSServer, key: SigningKey
) -> None:
    recorder, saved = Recorder(), gw.gateway.observer
    gw.gateway.observer = recorder
    try:
        token = idp.mint(key, sub="alice")
        client.get(gw.url + "/_auth", headers=traefik_call("/api/orders?secret=1", "DELETE", **bearer(token)))
        client.get(gw.url + "/_auth", headers=nginx_call("/admin/x"))
        client.get(gw.url + "/_auth", headers={"X-Original-URI": "/api/x"})
    finally:
        gw.gateway.observer = saved
    allowed, refused, invalid = recorder.records
    assert (allowed.method, allowed.path, allowed.route, allowed.status) == (
        "DELETE",
        "/api/orders",
        "api",
        200,
    )
    assert (allowed.decision, allowed.sub, allowed.client) == ("allowed", "alice", "203.0.113.7")
    assert (refused.status, refused.decision, refused.reason) == (401, "denied", "token_missing")
    assert (invalid.status, invalid.decision, invalid.reason) == (400, "error", "forward_auth_invalid")


# --------------------------------------------------------------------- mode: forward_auth


def test_forward_auth_mode_answers_on_every_path_and_needs_no_upstream(
    client: httpx.Client, idp: JWKSServer, key: SigningKey, upstream: EchoUpstream
) -> None:
    config = forward_auth_config(idp, mode="forward_auth")
    assert "upstream" not in config
    with GatewayServer(config) as server:
        wait_for_idp(server)
        token = idp.mint(key, sub="carol")
        for path in ("/", "/_auth", "/verify", "/api/x"):
            r = client.get(server.url + path, headers=traefik_call("/api/orders", **bearer(token)))
            assert r.status_code == 200, path
            assert r.headers["x-user-id"] == "carol"
        assert client.get(server.url + "/api/x").status_code == 400  # not a forward-auth call
