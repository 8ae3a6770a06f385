"""The request path end to end, over real HTTP: real uvicorn running the gateway, a real upstream,
a real JWKS server. Each test names the behaviour it holds the gateway to."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.jwks_server import JWKSServer
from tests.support.servers import EchoUpstream, GatewayServer, raw_request

SECRET = "a-test-hmac-secret-of-at-least-32-bytes!!"
AUD = "api"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("keys")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    out: dict[str, Any] = {"rsa": rsa_key, "ec": ec_key}
    for name, key in (("rsa", rsa_key), ("ec", ec_key)):
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        path = folder / f"{name}.pem"
        path.write_bytes(pem)
        out[f"{name}_pem"] = str(path)
    return out


def gateway_config(upstream: EchoUpstream, idp: JWKSServer, keys: dict[str, Any]) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "providers": {
            "idp": {"issuer": idp.issuer, "discovery": True, "algorithms": ["RS256"], "audiences": [AUD]},
            "hs": {
                "issuer": "https://hs.test",
                "secret": SECRET,
                "algorithms": ["HS256"],
                "audiences": [AUD],
            },
            "rs": {
                "issuer": "https://rs.test",
                "public_key_file": keys["rsa_pem"],
                "algorithms": ["RS256"],
                "audiences": [AUD],
            },
            "es": {
                "issuer": "https://es.test",
                "public_key_file": keys["ec_pem"],
                "algorithms": ["ES256"],
                "audiences": [AUD],
            },
        },
        "headers": {
            "claims": {"X-User-Id": "sub", "X-User-Roles": {"claim": "roles", "encode": "csv"}},
            "strip_prefixes": ["X-User-"],
        },
        "routes": [
            {"name": "public", "match": {"path": "/public/**"}, "auth": "public"},
            {
                "name": "admin",
                "match": {"path": "/admin/**"},
                "require": {"claim": "roles", "contains": "admin"},
            },
            {"name": "reports", "match": {"path": "/reports/**", "methods": ["GET"]}},
            {"name": "api", "match": {"path": "/api/**"}},
        ],
    }


@pytest.fixture(scope="module")
def gw(upstream: EchoUpstream, idp: JWKSServer, keys: dict[str, Any]) -> Iterator[GatewayServer]:
    idp.add_key("RS256")
    with GatewayServer(gateway_config(upstream, idp, keys)) as server:
        server.wait_ready()
        yield server


def claims(iss: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": iss, "sub": "alice", "aud": AUD, "iat": now, "exp": now + 300, **extra}


def hs_token(**extra: Any) -> str:
    return jwt.encode(claims("https://hs.test", **extra), SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def forwarded(upstream: EchoUpstream, before: int) -> list[dict[str, Any]]:
    return upstream.requests[before:]


# --------------------------------------------------------------------------- route matching


def test_public_route_needs_no_token(gw: GatewayServer, upstream: EchoUpstream) -> None:
    r = httpx.get(gw.url + "/public/hello?x=1")
    assert r.status_code == 200
    assert r.json()["path"] == "/public/hello"
    assert r.json()["query"] == "x=1"


def test_prefix_matches_whole_segments_only(gw: GatewayServer, upstream: EchoUpstream) -> None:
    before = upstream.count
    r = httpx.get(gw.url + "/publicity")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["reason"] == "route_not_found"
    assert upstream.count == before


def test_unmatched_path_is_denied_and_not_forwarded(gw: GatewayServer, upstream: EchoUpstream) -> None:
    before = upstream.count
    r = httpx.get(gw.url + "/elsewhere", headers=bearer(hs_token()))
    assert r.status_code == 404
    assert upstream.count == before


def test_method_not_listed_falls_through_to_deny(gw: GatewayServer, upstream: EchoUpstream) -> None:
    before = upstream.count
    assert httpx.get(gw.url + "/reports/1", headers=bearer(hs_token())).status_code == 200
    r = httpx.post(gw.url + "/reports/1", headers=bearer(hs_token()))
    assert r.status_code == 404
    assert upstream.count == before + 1


# --------------------------------------------------------------------------- verification


@pytest.mark.parametrize("kind", ["hs256", "rs256_pem", "es256_pem", "rs256_jwks"])
def test_each_key_source_verifies_its_tokens(
    kind: str, gw: GatewayServer, idp: JWKSServer, keys: dict[str, Any]
) -> None:
    if kind == "hs256":
        token = hs_token()
    elif kind == "rs256_pem":
        token = jwt.encode(claims("https://rs.test"), keys["rsa"], algorithm="RS256")
    elif kind == "es256_pem":
        token = jwt.encode(claims("https://es.test"), keys["ec"], algorithm="ES256")
    else:
        key = idp.add_key("RS256")
        token = idp.mint(key, aud=AUD, sub="alice")
    r = httpx.get(gw.url + "/api/x", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["x-user-id"] == ["alice"]


def test_missing_token_is_401_without_error_code(gw: GatewayServer, upstream: EchoUpstream) -> None:
    before = upstream.count
    r = httpx.get(gw.url + "/api/x")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="jwt-gateway"'
    body = r.json()
    assert body["reason"] == "token_missing"
    assert body["status"] == 401 and body["title"] == "Unauthorized" and body["type"] == "about:blank"
    assert r.headers["content-type"] == "application/problem+json"
    assert upstream.count == before


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: hs_token(exp=int(time.time()) - 3600), "token_expired"),
        (lambda k: jwt.encode(claims("https://hs.test"), "x" * 40, algorithm="HS256"), "bad_signature"),
        (lambda k: jwt.encode(claims("https://other.test"), SECRET, algorithm="HS256"), "issuer_mismatch"),
        # The algorithm is pinned by config: an HS256 token claiming the RS256 provider's issuer.
        (lambda k: jwt.encode(claims("https://rs.test"), SECRET, algorithm="HS256"), "algorithm_not_allowed"),
        (lambda k: jwt.encode({**claims("https://hs.test"), "exp": None}, SECRET, algorithm="HS256"), None),
    ],
    ids=["expired", "bad_signature", "unknown_issuer", "alg_pinned", "exp_not_a_number"],
)
def test_bad_tokens_are_401_invalid_token(
    make: Any, reason: str | None, gw: GatewayServer, upstream: EchoUpstream, keys: dict[str, Any]
) -> None:
    token = make(keys)
    before = upstream.count
    r = httpx.get(gw.url + "/api/x", headers=bearer(token))
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="jwt-gateway", error="invalid_token", error_description="')
    if reason is not None:
        assert r.json()["reason"] == reason
    assert token not in r.text and token not in challenge
    assert upstream.count == before


def test_wrong_audience_is_403(gw: GatewayServer, upstream: EchoUpstream) -> None:
    before = upstream.count
    r = httpx.get(gw.url + "/api/x", headers=bearer(hs_token(aud="someone-else")))
    assert r.status_code == 403
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert r.json()["reason"] == "audience_mismatch"
    assert upstream.count == before


def test_none_algorithm_is_refused(gw: GatewayServer, upstream: EchoUpstream) -> None:
    token = jwt.encode(claims("https://hs.test"), None, algorithm="none")
    before = upstream.count
    assert httpx.get(gw.url + "/api/x", headers=bearer(token)).status_code == 401
    assert upstream.count == before


# --------------------------------------------------------------------------- rules and headers


def test_claim_rule_denies_with_403_insufficient_scope(gw: GatewayServer, upstream: EchoUpstream) -> None:
    before = upstream.count
    r = httpx.get(gw.url + "/admin/users", headers=bearer(hs_token(roles=["user"])))
    assert r.status_code == 403
    assert r.headers["www-authenticate"].startswith('Bearer realm="jwt-gateway", error="insufficient_scope"')
    assert r.json()["reason"] == "rule_failed"
    assert "admin" not in r.json()["detail"]  # the policy is not taught to the client
    assert upstream.count == before
    r = httpx.get(gw.url + "/admin/users", headers=bearer(hs_token(roles=["user", "admin"])))
    assert r.status_code == 200
    assert r.json()["headers"]["x-user-roles"] == ["user,admin"]


@pytest.mark.parametrize("path", ["/public/x", "/api/x"])
def test_client_copies_of_claim_headers_never_reach_upstream(path: str, gw: GatewayServer) -> None:
    spoofed = [
        ("X-User-Id", "mallory"),
        ("x-user-id", "mallory2"),
        ("X-User-Roles", "admin"),
        ("X-User-Extra", "anything"),
        ("X_User_Id", "mallory3"),
        ("Authorization", f"Bearer {hs_token(sub='alice')}"),
    ]
    r = httpx.get(gw.url + path, headers=spoofed)
    assert r.status_code == 200
    headers = r.json()["headers"]
    values = [v for vs in headers.values() for v in vs]
    assert not any("mallory" in v for v in values)
    assert "x-user-extra" not in headers
    assert "authorization" not in headers  # the token is stripped before forwarding
    if path == "/api/x":
        assert headers["x-user-id"] == ["alice"]
    else:
        assert "x-user-id" not in headers


def test_connection_header_cannot_remove_gateway_headers(gw: GatewayServer) -> None:
    r = httpx.get(gw.url + "/api/x", headers={**bearer(hs_token()), "Connection": "keep-alive, X-User-Id"})
    assert r.status_code == 200
    assert r.json()["headers"]["x-user-id"] == ["alice"]


# --------------------------------------------------------------------------- forwarding


def test_request_body_streams_to_upstream(gw: GatewayServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 16384

    r = httpx.post(gw.url + "/api/upload", headers=bearer(hs_token()), content=chunks())
    assert r.status_code == 200
    assert r.json()["body_bytes"] == 64 * 16384


def test_raw_query_is_forwarded_byte_for_byte(gw: GatewayServer) -> None:
    query = "a=%2F%2e&b=1&b=2&c=%E2%9C%93&empty="
    r = httpx.get(f"{gw.url}/public/q?{query}")
    assert r.json()["query"] == query


def test_request_id_is_made_or_honoured(gw: GatewayServer) -> None:
    r = httpx.get(gw.url + "/public/x", headers={"X-Request-Id": "abc-123"})
    assert r.json()["headers"]["x-request-id"] == ["abc-123"]
    r = httpx.get(gw.url + "/public/x", headers={"X-Request-Id": "bad value\twith tab"})
    rid = r.json()["headers"]["x-request-id"][0]
    assert rid != "bad value\twith tab" and len(rid) == 24
    r = httpx.get(gw.url + "/nowhere")
    assert r.json()["request_id"] == r.headers["x-request-id"]


def test_non_canonical_path_is_400(gw: GatewayServer, upstream: EchoUpstream) -> None:
    before = upstream.count
    status, response = raw_request(
        gw.port, b"GET /public/../admin/users HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 400
    assert b'"reason":"path_not_canonical"' in response
    assert upstream.count == before


def test_upstream_unreachable_is_502(tmp_path: Path, idp: JWKSServer, keys: dict[str, Any]) -> None:
    dead = EchoUpstream()
    url = dead.url
    dead.stop()  # the port is now closed
    cfg = gateway_config(dead, idp, keys)
    cfg["upstream"] = url
    with GatewayServer(cfg) as server:
        r = httpx.get(server.url + "/public/x")
    assert r.status_code == 502
    assert r.json()["reason"] == "upstream_unavailable"
