"""Security-catalogue items that had no unit test yet (see /work/notes/catalogue-map.md).

Each test names its catalogue item (section, CVE or RFC 8725 rule). The verifier is the real
one, compiled from a gateway config by :func:`gateway.policy.build_policy` (static HMAC secret
and static public key providers), so these tests hold the composition the gateway runs, not a
hand-built stand-in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.metadata
import json
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from gateway.auth.extract import TokenLocations, extract_token
from gateway.auth.jwk import load_jwk
from gateway.auth.jws import parse_compact
from gateway.auth.keys import RemoteJWKS, StaticKeys, build_key_source, check_fetch_url
from gateway.auth.types import ProviderPolicy
from gateway.auth.verify import Verifier
from gateway.config.loader import parse_config
from gateway.config.models import Provider, TokenLocation
from gateway.errors import (
    BadSignature,
    ConfigError,
    CredentialsMalformed,
    GatewayError,
    InvalidToken,
    TokenExpired,
    TokenMalformed,
)
from gateway.policy import build_policy
from tests.support.jwks_server import DISCOVERY_PATH, JWKSServer, Response
from tests.support.tokens import rsa_private_key

SECRET = b"catalogue-unit-hmac-secret-0123456789abcdef"
HS_ISSUER = "https://hs.catalogue.test"
RS_ISSUER = "https://rs.catalogue.test"
AUD = "api"


# ------------------------------------------------------------------------------------ helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    """A base64url segment: bytes as given, anything else as compact JSON."""
    raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
    return b64(raw)


def hs256_compact(header: Any, payload: Any, secret: bytes = SECRET) -> str:
    """A compact JWS with exactly this header and payload, HMAC-SHA256 signed with ``secret``."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    signature = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def claims(iss: str = HS_ISSUER, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": iss, "sub": "alice", "aud": AUD, "iat": now, "exp": now + 300, **extra}


def config_dict(providers: dict[str, Any]) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": "http://127.0.0.1:9",
        "providers": providers,
        "routes": [{"name": "api", "match": {"path": "/api/**"}}],
    }


def compile_config(providers: dict[str, Any]) -> Verifier:
    """The verifier the gateway builds for these providers (raises ConfigError when refused)."""
    cfg = parse_config(yaml.safe_dump(config_dict(providers)), file="<catalogue>", env={})
    return build_policy(cfg).verifier


@pytest.fixture(scope="module")
def public_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("catalogue") / "rs.pem"
    path.write_bytes(
        rsa_private_key(3)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return str(path)


@pytest.fixture(scope="module")
def verifier(public_pem: str) -> Verifier:
    return compile_config(
        {
            "hs": {
                "issuer": HS_ISSUER,
                "secret": SECRET.decode(),
                "algorithms": ["HS256"],
                "audiences": [AUD],
            },
            "rs": {
                "issuer": RS_ISSUER,
                "public_key_file": public_pem,
                "algorithms": ["RS256"],
                "audiences": [AUD],
            },
        }
    )


def refused(verifier: Verifier, token: str, error: type[GatewayError], reason: str | None = None) -> None:
    """``token`` is refused with ``error`` (and ``reason``), as a 4xx, never a crash."""
    with pytest.raises(error) as info:
        verifier.verify_blocking(token)
    assert 400 <= info.value.status < 500
    if reason is not None:
        assert info.value.reason == reason, (info.value.reason, info.value.detail)


def test_the_fixture_verifier_accepts_a_good_token(verifier: Verifier) -> None:
    """Control: the refusals below are about the attack, not a broken setup."""
    assert verifier.verify_blocking(hs256_compact({"alg": "HS256"}, claims())).claims["sub"] == "alice"
    rs = jwt.encode(claims(RS_ISSUER), rsa_private_key(3), algorithm="RS256")
    assert verifier.verify_blocking(rs).provider == "rs"


# ===================================================== 2.11 / 3.1 python-jwt CVE-2022-39227


def _polyglot(token: str, forged_claims: dict[str, Any]) -> str:
    """CVE-2022-39227: a JSON document whose first key looks like a compact JWS carrying the
    forged claims, while its JSON members hold the legit token's parts."""
    header, payload, signature = token.split(".")
    forged = f"{header}.{segment(forged_claims)}."
    return json.dumps({f"  {forged}": "", "protected": header, "payload": payload, "signature": signature})


def test_cve_2022_39227_polyglot_compact_json_token_is_refused(verifier: Verifier) -> None:
    """python-jwt CVE-2022-39227: mixed compact/JSON "polyglot" token forging claims."""
    legit = hs256_compact({"alg": "HS256"}, claims(role="user"))
    polyglot = _polyglot(legit, claims(role="admin", sub="mallory"))
    refused(verifier, polyglot, TokenMalformed, "token_unsupported")
    # Compact first, JSON appended: still not three canonical base64url segments.
    refused(verifier, legit + json.dumps({"payload": segment(claims(role="admin"))}), TokenMalformed)
    # And as a bearer credential it is not even token68 syntax: refused at extraction.
    locations = TokenLocations.compile([TokenLocation()])
    with pytest.raises(CredentialsMalformed):
        extract_token([(b"authorization", f"Bearer {polyglot}".encode())], b"", locations, 64 * 1024)


# ====================================================================== RFC 8725 §3.3 nested


def test_rfc8725_3_3_nested_jwt_is_refused(verifier: Verifier) -> None:
    """RFC 8725 §3.3: nested tokens are refused entirely (no inner signature is ever trusted)."""
    inner = hs256_compact({"alg": "HS256"}, claims(role="admin"))
    verifier.verify_blocking(inner)  # the inner token alone is fine
    outer_raw = hs256_compact({"alg": "HS256", "cty": "JWT"}, inner.encode("ascii"))
    refused(verifier, outer_raw, TokenMalformed, "token_malformed")
    outer_string = hs256_compact({"alg": "HS256", "cty": "JWT"}, json.dumps(inner).encode())
    refused(verifier, outer_string, TokenMalformed, "token_malformed")


# ============================================================ 3.1 PyJWT CVE-2026-48525 (b64)


def test_cve_2026_48525_b64_header_is_refused_before_the_payload_is_decoded() -> None:
    """PyJWT GHSA-w7vc-732c-9m39: with ``b64:false`` the payload segment must never be decoded
    (a DoS there); the header is judged first."""
    # A payload segment of length 4k+1 is not base64url at all: decoding it would fail.
    undecodable = "A" * (4 * 10000 + 1)
    b64_header = segment({"alg": "HS256", "b64": False, "crit": ["b64"]})
    with pytest.raises(TokenMalformed) as info:
        parse_compact(f"{b64_header}.{undecodable}.{'A' * 43}")
    assert info.value.reason == "header_unsupported"
    # Control: with an ordinary header the same payload is refused for what it is.
    with pytest.raises(TokenMalformed) as info:
        parse_compact(f"{segment({'alg': 'HS256'})}.{undecodable}.{'A' * 43}")
    assert info.value.reason == "token_malformed"


# ======================================================= 3.1 python-jose CVE-2016-7036 (timing)


def test_cve_2016_7036_hmac_signatures_are_compared_in_constant_time(
    verifier: Verifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """python-jose CVE-2016-7036: the HMAC check must use a constant-time comparison.

    No timing is measured: the test holds the verifier to ``hmac.compare_digest`` (a plain
    ``==`` on the MAC would leave the recorder empty)."""
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def recording(a: Any, b: Any) -> bool:
        calls.append((bytes(a), bytes(b)))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording)
    good = hs256_compact({"alg": "HS256"}, claims(jti="ct-good"))
    assert verifier.verify_blocking(good).claims["jti"] == "ct-good"
    forged = hs256_compact({"alg": "HS256"}, claims(jti="ct-forged"), secret=b"x" * 43)
    refused(verifier, forged, BadSignature, "bad_signature")
    signatures = {base64.urlsafe_b64decode(t.split(".")[2] + "=") for t in (good, forged)}
    compared = {a for a, _ in calls} | {b for _, b in calls}
    assert signatures <= compared


# ======================================================= 3.1 PyJWT CVE-2026-48522 (URI schemes)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "data:application/json,%7B%22keys%22%3A%5B%5D%7D",
        "ftp://127.0.0.1/jwks.json",
        "gopher://127.0.0.1:70/_GET",
        "jar:file:///tmp/x.jar!/jwks.json",
        "ldap://127.0.0.1/o=jwks",
        "//127.0.0.1/jwks.json",
    ],
)
def test_cve_2026_48522_jwks_urls_other_than_http_are_refused_at_config(url: str) -> None:
    """PyJWT GHSA-993g-76c3-p5m4: a key URL is only ever fetched over http(s)."""
    assert check_fetch_url(url, allow_insecure=True) is not None
    with pytest.raises(ConfigError):
        compile_config(
            {
                "idp": {
                    "issuer": "https://idp.test",
                    "jwks_uri": url,
                    "allow_insecure_jwks": True,
                    "algorithms": ["RS256"],
                    "audiences": [AUD],
                }
            }
        )


@pytest.fixture
def idp() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        yield server


@pytest.mark.parametrize(
    "jwks_uri", ["file:///etc/passwd", "data:application/json,%7B%22keys%22%3A%5B%5D%7D"]
)
async def test_cve_2026_48522_discovered_jwks_uri_with_another_scheme_is_never_fetched(
    idp: JWKSServer, jwks_uri: str
) -> None:
    """PyJWT GHSA-993g-76c3-p5m4, via discovery: the IdP's document may not point keys at
    ``file:`` or ``data:``; the old keys (none here) stay, the provider is not ready."""
    idp.add_key("RS256")
    document = {"issuer": idp.issuer, "jwks_uri": jwks_uri}
    idp.respond(DISCOVERY_PATH, Response(200, json.dumps(document).encode()))
    provider = {"issuer": idp.issuer, "discovery": True, "algorithms": ["RS256"], "audiences": [AUD]}
    source = build_key_source("idp", Provider.model_validate(provider))
    assert isinstance(source, RemoteJWKS)
    try:
        assert await source.refresh() is False
        assert source.status().last_outcome == "insecure_url"
        assert not source.ready
        assert idp.fetch_count == 0
    finally:
        await source.aclose()


# ============================================= 2.2 / 3.1 Authlib CVE-2024-37568, CVE-2026-48526


@pytest.mark.parametrize(
    "provider",
    [
        {"public_key_file": "{pem}", "algorithms": ["RS256", "HS256"]},
        {"jwks_uri": "https://idp.test/jwks.json", "algorithms": ["ES256", "HS384"]},
        {"discovery": True, "algorithms": ["HS256"]},
        {"secret": SECRET.decode(), "algorithms": ["HS256", "RS256"]},
        {"secret": SECRET.decode() * 2, "algorithms": ["HS256", "HS512"]},
    ],
    ids=["pem_rs_hs", "jwks_es_hs", "discovery_hs", "secret_hs_rs", "secret_two_hs"],
)
def test_cve_2024_37568_mixed_family_algorithm_lists_are_refused_at_config(
    provider: dict[str, Any], public_pem: str
) -> None:
    """Authlib CVE-2024-37568 / PyJWT CVE-2026-48526 precondition (catalogue 2.2 design rule):
    a provider never gets a list mixing HMAC with public-key algorithms, and a secret is bound
    to exactly one HMAC algorithm."""
    body = {k: (public_pem if v == "{pem}" else v) for k, v in provider.items()}
    with pytest.raises(ConfigError):
        compile_config({"p": {"issuer": "https://p.test", "audiences": [AUD], **body}})


# ====================================== 8.3 jwt_tool weak-secret crack / RFC 8725 §3.5 entropy


JWT_TOOL_COMMON_SECRETS = [
    "secret",
    "password",
    "your-256-bit-secret",
    "changeme",
    "jwt",
    "key",
    "123456",
    "secretkey",
    "s3cr3t",
    "",
]


@pytest.mark.parametrize("secret", JWT_TOOL_COMMON_SECRETS)
def test_jwt_tool_common_hmac_secrets_are_refused_at_config(secret: str) -> None:
    """jwt_tool playbook weak-HMAC crack (``jwt-common.txt``) and blank password
    (CVE-2019-20933); RFC 8725 §3.5: a secret shorter than the hash output never loads."""
    with pytest.raises(ConfigError):
        compile_config(
            {"hs": {"issuer": HS_ISSUER, "secret": secret, "algorithms": ["HS256"], "audiences": [AUD]}}
        )


def test_hs256_signed_with_the_kid_itself_is_refused(verifier: Verifier) -> None:
    """Catalogue 2.2 weak secrets: the kid used as the HMAC secret."""
    for kid in ("hs", "hs-1", HS_ISSUER):
        token = hs256_compact({"alg": "HS256", "kid": kid}, claims(role="admin"), secret=kid.encode())
        refused(verifier, token, BadSignature, "bad_signature")


# ============================================================ 8.2 RFC 7515 Appendix A.1 / A.5

#: RFC 7515 A.1: the HS256 example (its signature is also RFC 7636's PKCE code_verifier example).
RFC7515_A1_KEY = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"
RFC7515_A1_TOKEN = (
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
)
#: RFC 7515 A.5: the same claims, unsecured (``alg: none``, empty signature).
RFC7515_A5_TOKEN = (
    "eyJhbGciOiJub25lIn0"
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ."
)


def _rfc7515_verifier(clock: float) -> Verifier:
    key = load_jwk({"kty": "oct", "k": RFC7515_A1_KEY}, algorithms=["HS256"], remote=False)
    keys = StaticKeys("joe", [key], algorithms=["HS256"], source="rfc7515")
    policy = ProviderPolicy(name="joe", issuer="joe", algorithms=("HS256",), audiences=None, keys=keys)
    return Verifier({"joe": policy}, clock=lambda: clock, cache_enabled=False)


def test_rfc7515_a1_hs256_example_verifies_and_its_claims_are_judged() -> None:
    """RFC 7515 Appendix A.1 (catalogue 8.2): the example verifies with its key while it was
    valid (exp 1300819380), and is refused as expired now."""
    result = _rfc7515_verifier(1300819380 - 60).verify_blocking(RFC7515_A1_TOKEN)
    assert result.claims == {"iss": "joe", "exp": 1300819380, "http://example.com/is_root": True}
    assert result.header == {"typ": "JWT", "alg": "HS256"}
    with pytest.raises(TokenExpired):
        _rfc7515_verifier(time.time()).verify_blocking(RFC7515_A1_TOKEN)
    # One changed signature bit and it no longer verifies.
    tampered = RFC7515_A1_TOKEN[:-1] + ("k" if RFC7515_A1_TOKEN[-1] != "k" else "g")
    with pytest.raises((BadSignature, TokenMalformed)):
        _rfc7515_verifier(1300819380 - 60).verify_blocking(tampered)


def test_rfc7515_a5_unsecured_example_is_refused() -> None:
    """RFC 7515 Appendix A.5 (catalogue 8.2): the unsecured JWS is refused, even by a provider
    whose claims it meets, and without and with a signature appended."""
    verifier = _rfc7515_verifier(1300819380 - 60)
    for token in (RFC7515_A5_TOKEN, RFC7515_A5_TOKEN + RFC7515_A1_TOKEN.rsplit(".", 1)[1]):
        with pytest.raises(InvalidToken):
            verifier.verify_blocking(token)


# ================================================================ 1 dependency floor (section 3)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def test_dependency_floor_pyjwt_2_13_and_h11_0_16() -> None:
    """Catalogue 1 "dependency floor": PyJWT >= 2.13.0 (CVE-2026-48522..48526), h11 >= 0.16.0
    (CVE-2025-43859), declared in pyproject and installed; python-jose is never a dependency."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    requirements = " ".join(pyproject["project"]["dependencies"]).lower().replace(" ", "")
    assert "pyjwt[crypto]>=2.13" in requirements
    assert "h11>=0.16" in requirements
    assert "python-jose" not in requirements
    assert _version(importlib.metadata.version("PyJWT")) >= (2, 13, 0)
    assert _version(importlib.metadata.version("h11")) >= (0, 16, 0)
