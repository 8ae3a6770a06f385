"""djangorestframework-simplejwt tokens, issued by a real Django project, through the gateway.

The project under tests/interop/django_project/ runs its real login endpoint
(``TokenObtainPairView``) in a subprocess, so Django's settings never enter this process. Its
tokens carry what simplejwt puts in them by default: ``token_type``, ``exp``, ``iat``, ``jti`` and
``user_id``; no ``iss``, no ``aud``, no ``kid``. The gateway's provider says so explicitly
(``issuer: null``, ``audience: any``, ``claims: {token_type: access}``), accepts access tokens and
refuses refresh tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.servers import EchoUpstream, GatewayServer

ROOT = Path(__file__).resolve().parents[2]
#: simplejwt's SIGNING_KEY, shared with the gateway (HS256 needs at least 32 bytes).
SIGNING_KEY = "django-shared-signing-key-0123456789abcdef"


def _mint_env(**signing: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "INTEROP_"))}
    env["DJANGO_SETTINGS_MODULE"] = "tests.interop.django_project.settings"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(signing)
    return env


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("simplejwt-keys")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = folder / "private.pem"
    public = folder / "public.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture(scope="module")
def minted(pem_files: tuple[Path, Path]) -> dict[str, dict[str, str]]:
    """One access/refresh pair per signing setup, from the real Django login endpoint."""
    private, public = pem_files
    setups = {
        "HS256": _mint_env(INTEROP_JWT_ALGORITHM="HS256", INTEROP_JWT_SECRET=SIGNING_KEY),
        "RS256": _mint_env(
            INTEROP_JWT_ALGORITHM="RS256",
            INTEROP_JWT_PRIVATE_KEY_FILE=str(private),
            INTEROP_JWT_PUBLIC_KEY_FILE=str(public),
        ),
    }
    command = [sys.executable, "-m", "tests.interop.django_project.mint"]
    # Both Django processes at once: each takes about a second.
    running = {
        alg: subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for alg, env in setups.items()
    }
    pairs: dict[str, dict[str, str]] = {}
    for alg, process in running.items():
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        pairs[alg] = json.loads(out)
    return pairs


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoUpstream]:
    with EchoUpstream() as server:
        yield server


def django_config(upstream: EchoUpstream, key_source: dict[str, Any]) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "providers": {
            "django": {
                "issuer": None,
                **key_source,
                "audience": "any",
                "claims": {"token_type": "access"},
            }
        },
        "headers": {"claims": {"X-User-Id": "user_id"}, "strip_prefixes": ["X-User-"]},
        "routes": [{"name": "api", "match": {"path": "/api/**"}}],
    }


@pytest.fixture(scope="module")
def gateways(upstream: EchoUpstream, pem_files: tuple[Path, Path]) -> Iterator[dict[str, GatewayServer]]:
    hs = {"secret": SIGNING_KEY, "algorithms": ["HS256"]}
    rs = {"public_key_file": str(pem_files[1]), "algorithms": ["RS256"]}
    with (
        GatewayServer(django_config(upstream, hs)) as hs_gw,
        GatewayServer(django_config(upstream, rs)) as rs_gw,
    ):
        yield {"HS256": hs_gw, "RS256": rs_gw}


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


Get = Callable[[GatewayServer, str], httpx.Response]


@pytest.fixture(scope="module")
def get(http: httpx.Client) -> Get:
    """``get(gateway, token)``: one request to a token-protected route."""

    def send(gw: GatewayServer, token: str) -> httpx.Response:
        return http.get(gw.url + "/api/orders", headers={"Authorization": f"Bearer {token}"})

    return send


@pytest.mark.parametrize("alg", ["HS256", "RS256"])
def test_simplejwt_tokens_look_as_expected(minted: dict[str, dict[str, str]], alg: str) -> None:
    access = minted[alg]["access"]
    assert jwt.get_unverified_header(access) == {"alg": alg, "typ": "JWT"}  # no kid
    claims = jwt.decode(access, options={"verify_signature": False})
    assert set(claims) == {"token_type", "exp", "iat", "jti", "user_id"}  # no iss, no aud
    assert claims["token_type"] == "access"
    assert claims["user_id"] == minted[alg]["user_id"]


@pytest.mark.parametrize("alg", ["HS256", "RS256"])
def test_simplejwt_access_token_passes_with_the_user_id_header(
    minted: dict[str, dict[str, str]],
    gateways: dict[str, GatewayServer],
    upstream: EchoUpstream,
    alg: str,
    get: Get,
) -> None:
    before = upstream.count
    r = get(gateways[alg], minted[alg]["access"])
    assert r.status_code == 200, r.text
    assert upstream.count == before + 1
    headers = r.json()["headers"]
    assert headers["x-user-id"] == [minted[alg]["user_id"]]
    assert "authorization" not in headers


@pytest.mark.parametrize("alg", ["HS256", "RS256"])
def test_simplejwt_refresh_token_is_refused(
    minted: dict[str, dict[str, str]],
    gateways: dict[str, GatewayServer],
    upstream: EchoUpstream,
    alg: str,
    get: Get,
) -> None:
    before = upstream.count
    r = get(gateways[alg], minted[alg]["refresh"])
    assert r.status_code == 401
    assert r.json()["reason"] == "token_type_mismatch"
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert upstream.count == before


def test_simplejwt_tokens_only_verify_with_their_own_key_setup(
    minted: dict[str, dict[str, str]], gateways: dict[str, GatewayServer], upstream: EchoUpstream, get: Get
) -> None:
    before = upstream.count
    for token_alg, gateway_alg in (("HS256", "RS256"), ("RS256", "HS256")):
        r = get(gateways[gateway_alg], minted[token_alg]["access"])
        assert (r.status_code, r.json()["reason"]) == (401, "algorithm_not_allowed")
    # simplejwt signed with another secret: the shared secret is what makes a token valid.
    forged = jwt.encode(
        jwt.decode(minted["HS256"]["access"], options={"verify_signature": False}),
        "another-django-signing-key-0123456789abcdef",
        algorithm="HS256",
    )
    r = get(gateways["HS256"], forged)
    assert (r.status_code, r.json()["reason"]) == (401, "bad_signature")
    assert upstream.count == before
