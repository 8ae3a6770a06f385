"""Tokens made by PyJWT, joserfc and jwcrypto pass the gateway, for every algorithm it supports.

Asymmetric keys are published by a real JWKS server (with ``kid`` and ``alg``); HS256 uses a
shared secret. Each library signs with its own API and key import (PEM for the asymmetric keys),
so a difference in how a library encodes headers, signatures or claims shows up here.
"""

from __future__ import annotations

import base64
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt as joserfc_jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jwt as jwcrypto_jwt

from tests.support.jwks_server import JWKSServer
from tests.support.servers import EchoUpstream, GatewayServer
from tests.support.tokens import SigningKey, new_signing_key

AUD = "api"
SECRET = "interop-shared-hmac-secret-0123456789abcdef"
HMAC_ISSUER = "https://interop-hmac.test"
ASYMMETRIC = ["RS256", "PS256", "ES256", "ES384", "EdDSA"]
#: RSA pool slot per RSA algorithm: one key per algorithm (RFC 8725 §3.1).
_SLOTS = {"RS256": 0, "PS256": 1}


def _key(alg: str) -> SigningKey:
    return new_signing_key(alg, slot=_SLOTS.get(alg, 0))


def _pem(key: SigningKey) -> bytes:
    return key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# ------------------------------------------------------------------------------ the libraries


def sign_pyjwt(alg: str, claims: dict[str, Any], kid: str | None) -> str:
    key: Any = SECRET if alg == "HS256" else _key(alg).private_key
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def sign_joserfc(alg: str, claims: dict[str, Any], kid: str | None) -> str:
    key: Any
    if alg == "HS256":
        key = OctKey.import_key(SECRET.encode())
    elif alg.startswith(("RS", "PS")):
        key = RSAKey.import_key(_pem(_key(alg)))
    elif alg.startswith("ES"):
        key = ECKey.import_key(_pem(_key(alg)))
    else:
        key = OKPKey.import_key(_pem(_key(alg)))
    header = {"alg": alg, **({"kid": kid} if kid else {})}
    with warnings.catch_warnings():
        # joserfc marks EdDSA deprecated (RFC 9864 prefers "Ed25519"); tokens in the field use it.
        warnings.simplefilter("ignore")
        # joserfc signs only "recommended" algorithms unless they are listed.
        return joserfc_jwt.encode(header, claims, key, algorithms=[alg])


def sign_jwcrypto(alg: str, claims: dict[str, Any], kid: str | None) -> str:
    if alg == "HS256":
        key = jwcrypto_jwk.JWK(kty="oct", k=base64.urlsafe_b64encode(SECRET.encode()).rstrip(b"=").decode())
    else:
        key = jwcrypto_jwk.JWK.from_pem(_pem(_key(alg)))
    token = jwcrypto_jwt.JWT(header={"alg": alg, **({"kid": kid} if kid else {})}, claims=claims)
    token.make_signed_token(key)
    return str(token.serialize())


LIBRARIES: dict[str, Callable[[str, dict[str, Any], str | None], str]] = {
    "pyjwt": sign_pyjwt,
    "joserfc": sign_joserfc,
    "jwcrypto": sign_jwcrypto,
}


# ---------------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoUpstream]:
    with EchoUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def idp() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        for alg in ASYMMETRIC:
            server.add_key(alg, slot=_SLOTS.get(alg, 0))
        yield server


@pytest.fixture(scope="module")
def gw(upstream: EchoUpstream, idp: JWKSServer) -> Iterator[GatewayServer]:
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "providers": {
            "idp": {
                "issuer": idp.issuer,
                "jwks_uri": idp.jwks_uri,
                "algorithms": ASYMMETRIC,
                "audiences": [AUD],
            },
            "service": {"issuer": HMAC_ISSUER, "secret": SECRET, "algorithms": ["HS256"], "audiences": [AUD]},
        },
        "headers": {"claims": {"X-User-Id": "sub"}},
        "routes": [{"name": "api", "match": {"path": "/api/**"}}],
    }
    with GatewayServer(config) as server:
        server.wait_ready()
        yield server


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


# ------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("alg", [*ASYMMETRIC, "HS256"])
@pytest.mark.parametrize("library", list(LIBRARIES))
def test_library_tokens_pass_the_gateway(
    library: str, alg: str, idp: JWKSServer, gw: GatewayServer, upstream: EchoUpstream, http: httpx.Client
) -> None:
    now = int(time.time())
    issuer = HMAC_ISSUER if alg == "HS256" else idp.issuer
    claims = {"iss": issuer, "sub": f"{library}-{alg}", "aud": AUD, "iat": now, "exp": now + 300}
    token = LIBRARIES[library](alg, claims, None if alg == "HS256" else _key(alg).kid)
    assert jwt.get_unverified_header(token)["alg"] == alg

    before = upstream.count
    r = http.get(gw.url + "/api/x", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["x-user-id"] == [f"{library}-{alg}"]

    # The same library's token with the payload swapped keeps nothing of its validity.
    header, _, signature = token.split(".")
    other = LIBRARIES[library](alg, {**claims, "sub": "mallory"}, None if alg == "HS256" else _key(alg).kid)
    forged = f"{header}.{other.split('.')[1]}.{signature}"
    r = http.get(gw.url + "/api/x", headers={"Authorization": f"Bearer {forged}"})
    assert (r.status_code, r.json()["reason"]) == (401, "bad_signature")
    assert upstream.count == before + 1
