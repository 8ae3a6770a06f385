"""A multi-tenant ``{tenantid}`` issuer (Azure AD / Entra ID) over real HTTP: real gateway, a
real JWKS server publishing the shared keys, an echo upstream.

A token is forwarded only when its ``iss`` is the template filled with its own ``tid`` and that
tenant is listed; every refusal is a 401 that never reaches the upstream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.jwks_server import JWKSServer
from tests.support.servers import EchoUpstream, GatewayServer
from tests.support.tokens import SigningKey, default_claims

TEMPLATE = "https://login.microsoftonline.com/{tenantid}/v2.0"
HOME = "11111111-1111-1111-1111-111111111111"
PARTNER = "22222222-2222-2222-2222-222222222222"
STRANGER = "99999999-9999-9999-9999-999999999999"


@pytest.fixture(scope="module")
def key(idp: JWKSServer) -> SigningKey:
    return idp.add_key("RS256")


@pytest.fixture(scope="module")
def gw(upstream: EchoUpstream, idp: JWKSServer, key: SigningKey) -> Iterator[GatewayServer]:
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "providers": {
            "entra": {
                "issuer": TEMPLATE,
                "tenants": [HOME, PARTNER],
                "jwks_uri": idp.jwks_uri,
                "algorithms": ["RS256"],
                "audiences": ["api"],
            }
        },
        "headers": {"claims": {"X-User-Tenant": "tid"}},
        "routes": [
            {
                "name": "admin",
                "match": {"path": "/admin/**"},
                "require": {"claim": "tid", "equals": HOME},
            },
            {"name": "api", "match": {"path": "/api/**"}},
        ],
    }
    with GatewayServer(config) as server:
        server.wait_ready()
        yield server


def token(key: SigningKey, iss_tenant: str, tid: Any) -> str:
    return key.sign(default_claims(TEMPLATE.replace("{tenantid}", iss_tenant), tid=tid))


def call(gw: GatewayServer, path: str, tok: str) -> httpx.Response:
    return httpx.get(gw.url + path, headers={"Authorization": f"Bearer {tok}"}, timeout=5)


@pytest.mark.parametrize("tenant", [HOME, PARTNER])
def test_a_listed_tenant_passes_with_its_tenant_header(
    gw: GatewayServer, upstream: EchoUpstream, key: SigningKey, tenant: str
) -> None:
    response = call(gw, "/api/orders", token(key, tenant, tenant))
    assert response.status_code == 200
    assert response.json()["headers"]["x-user-tenant"] == [tenant]


@pytest.mark.parametrize(
    ("iss_tenant", "tid", "reason"),
    [
        (STRANGER, STRANGER, "tenant_not_allowed"),
        (HOME, PARTNER, "tenant_mismatch"),  # a partner token dressed up as the home tenant's
        (PARTNER, None, "tenant_mismatch"),
    ],
    ids=["unlisted_tenant", "iss_of_another_tenant", "no_tid"],
)
def test_other_tenants_and_borrowed_issuers_are_401(
    gw: GatewayServer, upstream: EchoUpstream, key: SigningKey, iss_tenant: str, tid: Any, reason: str
) -> None:
    claims = default_claims(TEMPLATE.replace("{tenantid}", iss_tenant))
    if tid is not None:
        claims["tid"] = tid
    before = upstream.count
    response = call(gw, "/api/orders", key.sign(claims))
    assert response.status_code == 401
    assert response.json()["reason"] == reason
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert upstream.count == before


def test_route_rules_tell_the_tenants_apart(gw: GatewayServer, key: SigningKey) -> None:
    assert call(gw, "/admin/x", token(key, HOME, HOME)).status_code == 200
    assert call(gw, "/admin/x", token(key, PARTNER, PARTNER)).status_code == 403
