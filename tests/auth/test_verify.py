"""Token verification (gateway.auth.verify): catalogue sections 1-5 as unit tests.

Tokens are built by hand (header and payload JSON written as given, signed with PyJWT's
algorithm objects) so that every odd header, payload or signature can be produced. Keys are
built here, not with gateway.auth.jwk: these tests are about the verifier, not key hygiene.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import get_default_algorithms

from gateway.auth.jwk import load_jwk
from gateway.auth.pyjwt_errors import PYJWT_ERRORS, translate_pyjwt_error
from gateway.auth.types import ProviderPolicy, VerificationKey, VerifiedToken
from gateway.auth.verify import Verifier, verify_signature
from gateway.errors import (
    AlgorithmNotAllowed,
    AudienceMismatch,
    BadSignature,
    ClaimInvalid,
    ConfigError,
    GatewayError,
    InvalidToken,
    IssuerMismatch,
    KeysUnavailable,
    TokenExpired,
    TokenMalformed,
    TokenNotYetValid,
    UnknownKid,
)

# ======================================================================== shared test helpers

ALGORITHMS = get_default_algorithms()
NOW = 1_800_000_000.0
ISS = "https://idp.example.com/realms/main"
LEGACY_ISS = "https://legacy.example.com"
AUD = "orders-api"
HMAC_SECRET = b"django-insecure-0123456789abcdef-0123456789abcdef"
DROP: Any = object()

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
LEGACY_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
ATTACKER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64_json(value: Any) -> str:
    if isinstance(value, bytes):
        return b64(value)
    return b64(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def vkey(alg: str, key: Any, kid: str | None = None) -> VerificationKey:
    """A VerificationKey bound to ``alg`` for a private/public key object or HMAC secret."""
    if isinstance(key, bytes):
        return VerificationKey(alg=alg, algorithm=ALGORITHMS[alg], prepared=key, kid=kid, kty="oct")
    public = key.public_key() if hasattr(key, "public_key") else key
    if isinstance(public, rsa.RSAPublicKey):
        kty = "RSA"
    elif isinstance(public, ec.EllipticCurvePublicKey):
        kty = "EC"
    else:
        kty = "OKP"
    return VerificationKey(alg=alg, algorithm=ALGORITHMS[alg], prepared=public, kid=kid, kty=kty)


class StaticKeys:
    """A KeyLookup over a fixed list, with counters and an optional rotation on refresh."""

    def __init__(
        self,
        keys: Sequence[VerificationKey] = (),
        *,
        on_refresh: Sequence[VerificationKey] = (),
        unavailable: bool = False,
        strict: bool = True,
    ) -> None:
        self.keys = list(keys)
        self.on_refresh = list(on_refresh)
        self.unavailable = unavailable
        #: False: a careless key source returning keys whatever their alg.
        self.strict = strict
        self.lookups: list[tuple[str | None, str]] = []
        self.refreshes = 0

    def candidates(self, kid: str | None, alg: str) -> Sequence[VerificationKey]:
        self.lookups.append((kid, alg))
        if self.unavailable:
            raise KeysUnavailable("the IdP cannot be reached", retry_after=7)
        if not self.strict:
            return [k for k in self.keys if kid is None or k.kid == kid]
        if kid is None:
            return [k for k in self.keys if k.alg == alg]
        matches = [k for k in self.keys if k.kid == kid]
        if matches and all(k.alg != alg for k in matches):
            raise AlgorithmNotAllowed("the key is bound to another algorithm")
        return [k for k in matches if k.alg == alg]

    def _refresh(self) -> bool:
        self.refreshes += 1
        added, self.on_refresh = self.on_refresh, []
        self.keys.extend(added)
        return bool(added)

    async def refresh_on_miss(self) -> bool:
        return self._refresh()


class SyncRefreshKeys(StaticKeys):
    """A key source that also offers the blocking refresh used by WSGI callers."""

    def refresh_on_miss_sync(self) -> bool:
        return self._refresh()


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sign(alg: str, key: Any, signing_input: bytes) -> bytes:
    return ALGORITHMS[alg].sign(signing_input, key)


def claims_for(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"iss": ISS, "sub": "alice", "aud": AUD, "exp": NOW + 600, "iat": NOW - 10}
    for name, value in overrides.items():
        if value is DROP:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def make_token(
    claims: Any = None,
    *,
    alg: str = "RS256",
    key: Any = RSA_KEY,
    kid: str | None = "rsa-1",
    header: Any = None,
    signing_alg: str | None = None,
    signature: bytes | None = None,
    **extra_header: Any,
) -> str:
    """A compact JWS; ``claims``/``header`` given as bytes are used as the exact JSON text."""
    if header is None:
        header = {"alg": alg, **({"kid": kid} if kid is not None else {}), **extra_header}
    payload = claims_for() if claims is None else claims
    signing_input = f"{b64_json(header)}.{b64_json(payload)}".encode("ascii")
    if signature is None:
        signature = sign(signing_alg or alg, key, signing_input)
    return f"{signing_input.decode('ascii')}.{b64(signature)}"


def hmac_token(
    secret: bytes, claims: Any = None, *, alg: str = "HS256", kid: str | None = None, **kw: Any
) -> str:
    return make_token(claims, alg=alg, key=secret, kid=kid, **kw)


def django_claims(**overrides: Any) -> dict[str, Any]:
    base = {"token_type": "access", "user_id": 42, "jti": "abc", "exp": NOW + 300, "iat": NOW - 5}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


def corp_policy(**overrides: Any) -> ProviderPolicy:
    fields: dict[str, Any] = {
        "name": "corp",
        "issuer": ISS,
        "algorithms": ("RS256", "PS256", "RS512", "ES256", "EdDSA"),
        "audiences": (AUD,),
        "keys": StaticKeys(
            [vkey("RS256", RSA_KEY, "rsa-1"), vkey("ES256", EC_KEY, "ec-1"), vkey("EdDSA", ED_KEY, "ed-1")]
        ),
    }
    fields.update(overrides)
    return ProviderPolicy(**fields)


def django_policy(**overrides: Any) -> ProviderPolicy:
    fields: dict[str, Any] = {
        "name": "django",
        "issuer": None,
        "algorithms": ("HS256",),
        "audiences": None,
        "keys": StaticKeys([vkey("HS256", HMAC_SECRET)]),
        "claim_equals": {"token_type": "access"},
    }
    fields.update(overrides)
    return ProviderPolicy(**fields)


def legacy_policy(**overrides: Any) -> ProviderPolicy:
    fields: dict[str, Any] = {
        "name": "legacy",
        "issuer": LEGACY_ISS,
        "algorithms": ("RS256",),
        "audiences": ("legacy-api",),
        "keys": StaticKeys([vkey("RS256", LEGACY_KEY)]),
        "leeway": 0.0,
    }
    fields.update(overrides)
    return ProviderPolicy(**fields)


def make_verifier(*policies: ProviderPolicy, clock: Clock | None = None, **kw: Any) -> Verifier:
    policies = policies or (corp_policy(), django_policy(), legacy_policy())
    kw.setdefault("cache_enabled", False)
    return Verifier({p.name: p for p in policies}, clock=clock or Clock(), **kw)


def refused(
    verifier: Verifier,
    token: str,
    error: type[GatewayError] = InvalidToken,
    reason: str | None = None,
    allowed: frozenset[str] | None = None,
) -> GatewayError:
    """Assert that ``token`` is refused with ``error`` (and ``reason``), never a 5xx."""
    with pytest.raises(error) as info:
        verifier.verify_blocking(token, allowed)
    exc = info.value
    assert isinstance(exc, GatewayError)
    if not isinstance(exc, KeysUnavailable):
        assert 400 <= exc.status < 500
    if reason is not None:
        assert exc.reason == reason, (exc.reason, exc.detail)
    return exc


@pytest.fixture
def verifier() -> Verifier:
    return make_verifier()


# ================================================================================= accepted


def test_valid_rs256_token_is_accepted(verifier: Verifier) -> None:
    result = verifier.verify_blocking(make_token())
    assert isinstance(result, VerifiedToken)
    assert result.provider == "corp"
    assert result.claims["sub"] == "alice"
    assert result.header == {"alg": "RS256", "kid": "rsa-1"}
    assert result.expires_at == NOW + 600


@pytest.mark.parametrize(
    ("alg", "key", "kid"), [("ES256", EC_KEY, "ec-1"), ("EdDSA", ED_KEY, "ed-1")], ids=["es256", "eddsa"]
)
def test_valid_ec_and_eddsa_tokens_are_accepted(verifier: Verifier, alg: str, key: Any, kid: str) -> None:
    assert verifier.verify_blocking(make_token(alg=alg, key=key, kid=kid)).provider == "corp"


def test_token_without_kid_is_tried_with_the_keys_of_its_alg(verifier: Verifier) -> None:
    assert verifier.verify_blocking(make_token(kid=None)).provider == "corp"


def test_valid_hs256_token_without_iss_goes_to_the_issuerless_provider(verifier: Verifier) -> None:
    result = verifier.verify_blocking(hmac_token(HMAC_SECRET, django_claims()))
    assert result.provider == "django"
    assert result.claims["user_id"] == 42


def test_static_pem_provider_without_kid(verifier: Verifier) -> None:
    token = make_token(claims_for(iss=LEGACY_ISS, aud="legacy-api"), key=LEGACY_KEY, kid=None)
    assert verifier.verify_blocking(token).provider == "legacy"


async def test_async_verify_gives_the_same_answers(verifier: Verifier) -> None:
    assert (await verifier.verify(make_token())).provider == "corp"
    with pytest.raises(BadSignature):
        await verifier.verify(make_token(key=ATTACKER_RSA_KEY))


# ========================================================================= 2.1 alg: none


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", [b"", b"garbage-signature"], ids=["empty_sig", "garbage_sig"])
def test_alg_none_in_any_spelling_is_refused(verifier: Verifier, alg: str, signature: bytes) -> None:
    token = make_token(alg=alg, signature=signature)
    exc = refused(verifier, token)
    if signature:
        assert isinstance(exc, AlgorithmNotAllowed)


def test_alg_none_without_trailing_dot_is_refused(verifier: Verifier) -> None:
    token = make_token(alg="none", signature=b"").rstrip(".")
    refused(verifier, token, TokenMalformed)


@pytest.mark.parametrize(
    "alg", [None, "", ["RS256"], "rs256", "RS256 ", " RS256", "RS256\x00", 256, {"alg": "RS256"}, "HS256"]
)
def test_alg_values_that_are_not_allowed(verifier: Verifier, alg: Any) -> None:
    token = make_token(header={"alg": alg, "kid": "rsa-1"}, signing_alg="RS256")
    refused(verifier, token, AlgorithmNotAllowed, "algorithm_not_allowed")


def test_alg_member_missing_is_refused(verifier: Verifier) -> None:
    token = make_token(header={"kid": "rsa-1"}, signing_alg="RS256")
    refused(verifier, token, AlgorithmNotAllowed)


def test_none_can_never_be_configured() -> None:
    with pytest.raises(ConfigError):
        make_verifier(corp_policy(algorithms=("RS256", "none")))


# ====================================================== 2.2 algorithm confusion (HS* + public key)


def _public_key_forms(private: Any, name: str) -> dict[str, bytes]:
    public = private.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ssh = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    if isinstance(public, rsa.RSAPublicKey):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
    else:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public))
    forms = {
        f"{name}_pem": pem,
        f"{name}_pem_no_newline": pem.rstrip(b"\n"),
        f"{name}_der": der,
        f"{name}_openssh": ssh,
        f"{name}_jwk_json": json.dumps(jwk).encode(),
        f"{name}_jwks_json": json.dumps({"keys": [jwk]}).encode(),
    }
    if isinstance(public, rsa.RSAPublicKey):
        n = public.public_numbers().n
        forms[f"{name}_pkcs1_pem"] = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        )
        forms[f"{name}_pkcs1_der"] = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1
        )
        forms[f"{name}_modulus"] = n.to_bytes(256, "big")
        forms[f"{name}_n_string"] = jwk["n"].encode()
    elif isinstance(public, ec.EllipticCurvePublicKey):
        forms[f"{name}_point"] = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        forms[f"{name}_x_string"] = jwk["x"].encode()
    else:
        forms[f"{name}_raw"] = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        forms[f"{name}_x_string"] = jwk["x"].encode()
    return forms


CONFUSION_SECRETS = {
    **_public_key_forms(RSA_KEY, "rsa"),
    **_public_key_forms(EC_KEY, "ec"),
    **_public_key_forms(ED_KEY, "ed"),
    "empty": b"",
    "secret": b"secret",
}
KID_OF = {"rsa": "rsa-1", "ec": "ec-1", "ed": "ed-1"}


@pytest.mark.parametrize("hs", ["HS256", "HS384", "HS512"])
@pytest.mark.parametrize("form", sorted(CONFUSION_SECRETS))
def test_hmac_keyed_with_public_key_material_is_refused(verifier: Verifier, form: str, hs: str) -> None:
    """alg_confusion_hs*_secret_*: every public-key form as the HMAC secret, both routes."""
    secret = CONFUSION_SECRETS[form]
    kid = KID_OF.get(form.split("_")[0], "rsa-1")
    # Aimed at the IdP provider, with its kid: HS* is not one of its algorithms.
    refused(verifier, hmac_token(secret, claims_for(role="admin"), alg=hs, kid=kid), AlgorithmNotAllowed)
    refused(verifier, hmac_token(secret, claims_for(role="admin"), alg=hs), AlgorithmNotAllowed)
    # Aimed at the HMAC provider: its one secret is not the public key.
    forged = hmac_token(secret, django_claims(role="admin"), alg=hs)
    refused(verifier, forged, AlgorithmNotAllowed if hs != "HS256" else BadSignature)


def test_key_source_returning_a_key_of_another_alg_is_still_refused() -> None:
    """A careless key source (or a provider allowing RS256 and HS256): the key's binding decides."""
    pem = CONFUSION_SECRETS["rsa_pem"]
    keys = StaticKeys([vkey("RS256", RSA_KEY, "rsa-1")], strict=False)
    verifier = make_verifier(corp_policy(algorithms=("RS256", "HS256"), keys=keys))
    refused(verifier, hmac_token(pem, claims_for(), kid="rsa-1"), AlgorithmNotAllowed)
    refused(verifier, hmac_token(pem, claims_for()), AlgorithmNotAllowed)


def test_verify_signature_checks_the_binding_itself() -> None:
    rs = vkey("RS256", RSA_KEY, "rsa-1")
    with pytest.raises(AlgorithmNotAllowed):
        verify_signature([rs], "HS256", b"a.b", b"x" * 32)
    with pytest.raises(UnknownKid):
        verify_signature([], "RS256", b"a.b", b"x")
    with pytest.raises(BadSignature):
        verify_signature([rs, vkey("PS256", RSA_KEY)], "RS256", b"a.b", b"x" * 256)


# ================================================================== 2.3 key <-> algorithm binding


@pytest.mark.parametrize(
    ("alg", "key", "kid"),
    [
        ("PS256", RSA_KEY, "rsa-1"),  # legit PSS signature, key bound to RS256
        ("RS512", RSA_KEY, "rsa-1"),
        ("ES256", EC_KEY, "rsa-1"),  # ES256 header with the RSA kid
        ("RS256", RSA_KEY, "ec-1"),  # RS256 header with the EC kid
        ("EdDSA", ED_KEY, "ec-1"),
        ("ES256", EC_KEY, "ed-1"),
    ],
    ids=["ps256_rsa_kid", "rs512_rsa_kid", "es256_rsa_kid", "rs256_ec_kid", "eddsa_ec_kid", "es256_ed_kid"],
)
def test_header_alg_must_equal_the_keys_alg(verifier: Verifier, alg: str, key: Any, kid: str) -> None:
    refused(verifier, make_token(alg=alg, key=key, kid=kid), AlgorithmNotAllowed)


def test_ps256_without_kid_finds_no_ps256_key(verifier: Verifier) -> None:
    refused(verifier, make_token(alg="PS256", kid=None), UnknownKid)


# ====================================================================== issuer <-> key binding


def test_hs256_with_the_real_secret_but_the_jwks_issuer(verifier: Verifier) -> None:
    """hs256_real_hmac_secret_but_jwks_issuer."""
    token = hmac_token(HMAC_SECRET, django_claims(iss=ISS, aud=AUD))
    refused(verifier, token, AlgorithmNotAllowed)


def test_rs256_with_the_idp_key_but_the_hmac_issuer(verifier: Verifier) -> None:
    """rs256_real_idp_key_but_hmac_issuer: no iss routes to the HMAC provider."""
    refused(verifier, make_token(django_claims()), AlgorithmNotAllowed)


def test_idp_key_does_not_verify_the_legacy_issuers_tokens(verifier: Verifier) -> None:
    token = make_token(claims_for(iss=LEGACY_ISS, aud="legacy-api"), kid=None)
    refused(verifier, token, BadSignature)
    refused(verifier, make_token(claims_for(iss=LEGACY_ISS, aud="legacy-api")), UnknownKid)


def test_legacy_key_does_not_verify_the_idps_tokens(verifier: Verifier) -> None:
    refused(verifier, make_token(key=LEGACY_KEY), BadSignature)
    refused(verifier, make_token(key=LEGACY_KEY, kid=None), BadSignature)


def test_route_allow_list_is_applied_after_issuer_routing(verifier: Verifier) -> None:
    token = make_token()
    assert verifier.verify_blocking(token, frozenset({"corp"})).provider == "corp"
    refused(verifier, token, IssuerMismatch, "issuer_not_allowed", allowed=frozenset({"legacy"}))
    refused(verifier, token, IssuerMismatch, "issuer_not_allowed", allowed=frozenset())
    refused(verifier, token, IssuerMismatch, allowed=frozenset({"Corp", "unknown"}))


# =========================================================== 2.5 embedded keys and key URLs


class _RecordingHandler(BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        body = json.dumps({"keys": []}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def attacker_server() -> Iterator[str]:
    _RecordingHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _attacker_jwk(kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(ATTACKER_RSA_KEY.public_key()))
    jwk["kid"] = kid
    return jwk


def _attacker_x5c() -> list[str]:
    ca = trustme.CA()
    leaf = ca.issue_cert("attacker.example")
    ders = [base64.b64decode(b"".join(blob.bytes().split(b"\n")[1:-2])) for blob in leaf.cert_chain_pems]
    return [base64.b64encode(der).decode() for der in ders]


@pytest.mark.parametrize("kid", ["rsa-1", "attacker"], ids=["trusted_kid", "attacker_kid"])
@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
def test_embedded_keys_and_key_urls_are_refused_and_never_fetched(
    verifier: Verifier, attacker_server: str, member: str, kid: str
) -> None:
    value: Any = {
        "jwk": _attacker_jwk(kid),
        "jku": f"{attacker_server}/jwks.json",
        "x5u": f"{attacker_server}/cert.pem",
        "x5c": _attacker_x5c() if member == "x5c" else None,
    }[member]
    token = make_token(claims_for(role="admin"), key=ATTACKER_RSA_KEY, kid=kid, **{member: value})
    refused(verifier, token, TokenMalformed, "header_unsupported")
    assert _RecordingHandler.requests == []


def test_kid_that_is_an_attacker_url_is_only_a_lookup_key(verifier: Verifier, attacker_server: str) -> None:
    """kid_is_attacker_url_not_fetched."""
    token = make_token(key=ATTACKER_RSA_KEY, kid=f"{attacker_server}/jwks.json")
    refused(verifier, token, UnknownKid)
    assert _RecordingHandler.requests == []


# ============================================================================ 2.4 kid injection


@pytest.mark.parametrize(
    ("kid", "secret"),
    [
        ("../../../../../../dev/null", b""),
        ("/dev/null", b""),
        ("/invalid_path", b""),
        ("|sleep 10", b""),
        ("| curl http://127.0.0.1:9/", b""),
        ("x' UNION SELECT '1';--", b"1"),
        ("' OR '1'='1", b"1"),
        ("https://attacker.example/jwks.json", b""),
        ("rsa-1\x00", b""),
        ("rsa-1 ", b""),
        ("RSA-1", b""),
    ],
)
def test_kid_injection_is_only_a_failed_lookup(verifier: Verifier, kid: str, secret: bytes) -> None:
    # The HMAC provider (no iss): an unknown kid after one refresh attempt.
    keys = verifier._without_issuer.keys  # type: ignore[union-attr]
    assert isinstance(keys, StaticKeys)
    refused(verifier, hmac_token(secret, django_claims(role="admin"), kid=kid), UnknownKid, "unknown_kid")
    assert keys.lookups[-1] == (kid, "HS256")
    # The IdP provider, HS256 with the injected kid: refused before any lookup; RS256: unknown kid.
    refused(verifier, hmac_token(secret, claims_for(), kid=kid), AlgorithmNotAllowed)
    refused(verifier, make_token(key=ATTACKER_RSA_KEY, kid=kid), UnknownKid)


@pytest.mark.parametrize(
    "kid", [1, ["rsa-1"], {"kid": "rsa-1"}, None, True, "", "k" * 4096], ids=lambda v: type(v).__name__
)
def test_unusable_kid_values_are_401_not_500(verifier: Verifier, kid: Any) -> None:
    token = make_token(header={"alg": "RS256", "kid": kid}, signing_alg="RS256")
    refused(verifier, token, TokenMalformed, "kid_invalid")


def test_unknown_kid_refreshes_once_then_refuses() -> None:
    keys = StaticKeys([vkey("RS256", RSA_KEY, "rsa-1")])
    verifier = make_verifier(corp_policy(keys=keys))
    refused(verifier, make_token(key=ATTACKER_RSA_KEY, kid="random-kid"), UnknownKid)
    # verify_blocking has no refresh without refresh_on_miss_sync.
    assert keys.refreshes == 0
    with pytest.raises(UnknownKid):
        asyncio.run(verifier.verify(make_token(key=ATTACKER_RSA_KEY, kid="random-kid")))
    assert keys.refreshes == 1


async def test_rotated_key_is_found_after_one_refresh() -> None:
    keys = StaticKeys([vkey("RS256", RSA_KEY, "rsa-1")], on_refresh=[vkey("RS256", LEGACY_KEY, "rsa-2")])
    verifier = make_verifier(corp_policy(keys=keys))
    result = await verifier.verify(make_token(key=LEGACY_KEY, kid="rsa-2"))
    assert result.provider == "corp"
    assert keys.refreshes == 1
    await verifier.verify(make_token(key=LEGACY_KEY, kid="rsa-2"))
    assert keys.refreshes == 1


def test_blocking_verify_uses_the_sync_refresh_when_offered() -> None:
    keys = SyncRefreshKeys([vkey("RS256", RSA_KEY, "rsa-1")], on_refresh=[vkey("RS256", LEGACY_KEY, "rsa-2")])
    verifier = make_verifier(corp_policy(keys=keys))
    assert verifier.verify_blocking(make_token(key=LEGACY_KEY, kid="rsa-2")).provider == "corp"
    assert keys.refreshes == 1


def test_known_kid_never_triggers_a_refresh() -> None:
    keys = StaticKeys([vkey("RS256", RSA_KEY, "rsa-1")])
    verifier = make_verifier(corp_policy(keys=keys))
    with pytest.raises(BadSignature):
        asyncio.run(verifier.verify(make_token(key=ATTACKER_RSA_KEY)))
    assert keys.refreshes == 0


@pytest.mark.parametrize("mode", ["async", "blocking"])
def test_keys_unavailable_propagates_as_503(mode: str) -> None:
    verifier = make_verifier(corp_policy(keys=StaticKeys(unavailable=True)))
    with pytest.raises(KeysUnavailable) as info:
        if mode == "async":
            asyncio.run(verifier.verify(make_token()))
        else:
            verifier.verify_blocking(make_token())
    assert info.value.status == 503
    assert info.value.retry_after == 7


# ======================================================================= 2.6 crit and b64


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["x-require-mfa"], "x-require-mfa": True},
        {"crit": []},
        {"crit": "x-ext"},
        {"crit": ["b64"], "b64": False},
        {"b64": False},
        {"zip": "DEF"},
    ],
    ids=["crit_unknown", "crit_empty", "crit_not_list", "b64_false_crit", "b64_false_no_crit", "zip"],
)
def test_crit_b64_and_zip_are_refused_even_when_legit_signed(
    verifier: Verifier, extra: dict[str, Any]
) -> None:
    refused(verifier, make_token(**extra), TokenMalformed, "header_unsupported")


def test_b64_false_detached_and_raw_payload_are_refused(verifier: Verifier) -> None:
    header = b64_json({"alg": "RS256", "kid": "rsa-1", "b64": False, "crit": ["b64"]})
    raw_payload = json.dumps(claims_for())
    sig = b64(sign("RS256", RSA_KEY, f"{header}.{raw_payload}".encode()))
    refused(verifier, f"{header}..{sig}", TokenMalformed)
    refused(verifier, f"{header}.{raw_payload}.{sig}", TokenMalformed)


# ======================================================== 2.7 signature stripping and special sigs


def _flip(token: str, byte: int = 10, bit: int = 0) -> str:
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[byte] ^= 1 << bit
    return f"{head}.{payload}.{b64(bytes(raw))}"


def test_signature_stripping_variants(verifier: Verifier) -> None:
    token = make_token(claims_for(role="admin"))
    head, payload, sig = token.split(".")
    refused(verifier, f"{head}.{payload}", TokenMalformed)
    refused(verifier, f"{head}.{payload}.", TokenMalformed)
    raw = base64.urlsafe_b64decode(sig + "==")
    refused(verifier, f"{head}.{payload}.{b64(raw[:-1])}", BadSignature)
    refused(verifier, f"{head}.{payload}.{b64(raw[:3])}", BadSignature)
    refused(verifier, f"{head}.{payload}.{sig[:-4]}")  # jwt_tool: last 4 characters dropped
    refused(verifier, f"{head}.{payload}.{sig[:-1]}")


@pytest.mark.parametrize(("byte", "bit"), [(0, 7), (10, 0), (255, 0), (128, 3)])
def test_one_flipped_bit_is_refused(verifier: Verifier, byte: int, bit: int) -> None:
    refused(verifier, _flip(make_token(), byte, bit), BadSignature)


def test_borrowed_signature_and_tampered_payload_are_refused(verifier: Verifier) -> None:
    """payload_tampered_role_admin_original_sig; signature of another valid token."""
    user = make_token(claims_for(role="user"))
    other = make_token(claims_for(sub="bob"))
    head, _, sig = user.split(".")
    admin_payload = b64_json(claims_for(role="admin"))
    refused(verifier, f"{head}.{admin_payload}.{sig}", BadSignature)
    refused(verifier, f"{head}.{user.split('.')[1]}.{other.split('.')[2]}", BadSignature)


def test_kid_swapped_to_another_key_is_refused(verifier: Verifier) -> None:
    token = make_token()
    _, payload, sig = token.split(".")
    swapped = b64_json({"alg": "ES256", "kid": "ec-1"})
    refused(verifier, f"{swapped}.{payload}.{sig}", BadSignature)


@pytest.mark.parametrize(
    "signature",
    [
        bytes(256),
        RSA_KEY.public_key().public_numbers().n.to_bytes(256, "big"),
        (RSA_KEY.public_key().public_numbers().n - 1).to_bytes(256, "big"),
        (1).to_bytes(256, "big"),
        b"\x00" + bytes(255) + b"\x01",
        bytes(257),
    ],
    ids=["zero", "n", "n_minus_1", "one", "257_bytes", "zero_257"],
)
def test_special_rsa_signatures_are_refused(verifier: Verifier, signature: bytes) -> None:
    refused(verifier, make_token(signature=signature), BadSignature)


def _raw(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _legit_ec_der() -> tuple[str, bytes]:
    header = b64_json({"alg": "ES256", "kid": "ec-1"})
    signing_input = f"{header}.{b64_json(claims_for())}"
    der = EC_KEY.sign(signing_input.encode(), ec.ECDSA(ALGORITHMS["ES256"].hash_alg()))  # type: ignore[attr-defined]
    return signing_input, der


@pytest.mark.parametrize(
    ("r", "s"),
    [
        (0, 0),
        (1, 1),
        (0, 1),
        (1, 0),
        (P256_ORDER, P256_ORDER),
        (P256_ORDER - 1, P256_ORDER - 1),
        (P256_ORDER, 1),
    ],
    ids=["r0_s0", "r1_s1", "r0_s1", "r1_s0", "rn_sn", "rn1_sn1", "rn_s1"],
)
def test_special_ecdsa_signatures_are_refused(verifier: Verifier, r: int, s: int) -> None:
    """CVE-2022-21449 psychic signatures and friends."""
    token = make_token(alg="ES256", key=EC_KEY, kid="ec-1", signature=_raw(r, s))
    refused(verifier, token, BadSignature)


def test_ecdsa_signature_in_der_or_with_extra_bytes_is_refused(verifier: Verifier) -> None:
    signing_input, der = _legit_ec_der()
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(der)
    raw = _raw(r, s)
    assert verifier.verify_blocking(f"{signing_input}.{b64(raw)}").provider == "corp"
    for bad in (der, raw + b"\x00", b"\x00" + raw, raw[:-1], encode_dss_signature(r, s) + b"\x00", raw * 2):
        refused(verifier, f"{signing_input}.{b64(bad)}", BadSignature)


def test_es256_signature_with_s_replaced_by_n_minus_s_is_refused_or_accepted_consistently(
    verifier: Verifier,
) -> None:
    # ECDSA malleability: (r, n-s) is mathematically valid; JWS does not forbid it. What matters
    # is that it is a different token string (the cache is keyed on the exact string).
    signing_input, der = _legit_ec_der()
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(der)
    twin = f"{signing_input}.{b64(_raw(r, P256_ORDER - s))}"
    assert verifier.verify_blocking(twin).claims == claims_for()


def test_eddsa_all_zero_signature_is_refused(verifier: Verifier) -> None:
    refused(verifier, make_token(alg="EdDSA", key=ED_KEY, kid="ed-1", signature=bytes(64)), BadSignature)
    refused(verifier, make_token(alg="EdDSA", key=ED_KEY, kid="ed-1", signature=bytes(65)), BadSignature)


def test_hmac_signature_truncated_or_empty_key_is_refused(verifier: Verifier) -> None:
    token = hmac_token(HMAC_SECRET, django_claims())
    head, payload, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "=")
    refused(verifier, f"{head}.{payload}.{b64(raw[:16])}", BadSignature)
    refused(verifier, f"{head}.{payload}.{b64(raw + b'0')}", BadSignature)
    refused(verifier, hmac_token(b"", django_claims()), BadSignature)


# ============================================================================ 2.9 time claims


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"exp": NOW - 3600}, TokenExpired),
        ({"exp": NOW - 30 - 20}, TokenExpired),
        ({"exp": NOW - 30}, TokenExpired),  # exp <= now - leeway
        ({"nbf": NOW + 3600}, TokenNotYetValid),
        ({"nbf": NOW + 30 + 20}, TokenNotYetValid),
        ({"iat": NOW + 86400}, TokenNotYetValid),
        ({"iat": NOW + 31}, TokenNotYetValid),
        ({"exp": DROP}, ClaimInvalid),
    ],
    ids=[
        "exp_1h_ago",
        "exp_beyond_leeway",
        "exp_at_leeway",
        "nbf_1h",
        "nbf_beyond_leeway",
        "iat_1d",
        "iat_31s",
        "no_exp",
    ],
)
def test_time_claims_refused(
    verifier: Verifier, overrides: dict[str, Any], error: type[GatewayError]
) -> None:
    refused(verifier, make_token(claims_for(**overrides)), error)


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": NOW - 10},  # inside leeway/3
        {"nbf": NOW + 10},
        {"iat": NOW + 10},
        {"exp": NOW + 600.75, "iat": NOW - 0.25, "nbf": NOW - 1.5},
        {"exp": 1e20},
        {"iat": DROP},
    ],
    ids=["exp_in_leeway", "nbf_in_leeway", "iat_in_leeway", "fractional", "far_future", "no_iat"],
)
def test_time_claims_accepted(verifier: Verifier, overrides: dict[str, Any]) -> None:
    assert verifier.verify_blocking(make_token(claims_for(**overrides))).provider == "corp"


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize(
    "value",
    [str(int(NOW + 600)), True, False, None, {"$date": NOW + 600}, [NOW + 600], "1e400"],
    ids=["digits_string", "true", "false", "null", "object", "list", "string_1e400"],
)
def test_numeric_dates_must_be_json_numbers(verifier: Verifier, claim: str, value: Any) -> None:
    refused(verifier, make_token(claims_for(**{claim: value})), ClaimInvalid, "claim_invalid")


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity"])
def test_numeric_dates_must_be_finite(verifier: Verifier, literal: bytes) -> None:
    payload = json.dumps(claims_for(exp=DROP)).encode()[:-1] + b',"exp":' + literal + b"}"
    refused(verifier, make_token(payload), TokenMalformed)


def test_huge_integer_dates_are_refused_without_overflow(verifier: Verifier) -> None:
    refused(verifier, make_token(claims_for(exp=10**400)), ClaimInvalid)
    refused(verifier, make_token(claims_for(nbf=-(10**400))), ClaimInvalid)


def test_leeway_is_per_provider(verifier: Verifier) -> None:
    # legacy has leeway 0: 10 s after exp is expired there, fine for corp.
    legacy = make_token(claims_for(iss=LEGACY_ISS, aud="legacy-api", exp=NOW - 10), key=LEGACY_KEY, kid=None)
    refused(verifier, legacy, TokenExpired, "token_expired")
    assert verifier.verify_blocking(make_token(claims_for(exp=NOW - 10))).provider == "corp"


def test_exp_can_be_optional_per_provider() -> None:
    verifier = make_verifier(corp_policy(require_exp=False))
    assert verifier.verify_blocking(make_token(claims_for(exp=DROP))).expires_at is None


@pytest.mark.parametrize(
    ("overrides", "ok"),
    [
        ({"iat": NOW - 10, "exp": NOW + 590}, True),  # lifetime 600
        ({"iat": NOW - 10, "exp": NOW + 591}, False),
        ({"iat": DROP, "exp": NOW + 600}, True),  # remaining lifetime
        ({"iat": DROP, "exp": NOW + 601}, False),
    ],
    ids=["iat_ok", "iat_too_long", "no_iat_ok", "no_iat_too_long"],
)
def test_max_lifetime(overrides: dict[str, Any], ok: bool) -> None:
    verifier = make_verifier(corp_policy(max_lifetime=600.0))
    token = make_token(claims_for(**overrides))
    if ok:
        verifier.verify_blocking(token)
    else:
        refused(verifier, token, ClaimInvalid, "lifetime_exceeded")


def test_max_lifetime_needs_exp() -> None:
    verifier = make_verifier(corp_policy(max_lifetime=600.0, require_exp=False))
    refused(verifier, make_token(claims_for(exp=DROP)), ClaimInvalid, "claim_missing")


# ============================================================================ 2.10 iss and aud


@pytest.mark.parametrize(
    "iss",
    [
        "https://other.example.com",
        "https://idp.example.com",  # prefix
        "https://idp.example.com/realms",
        "h",
        ISS + ".evil.example",  # suffix
        ISS + "/",
        ISS.upper(),
        "HTTPS://idp.example.com/realms/main",
        " " + ISS,
        ISS + "\x00",
        [ISS],
        {"iss": ISS},
        None,
        "",
        42,
    ],
    ids=[
        "other",
        "prefix",
        "prefix_path",
        "single_char",
        "suffix",
        "trailing_slash",
        "upper",
        "scheme_case",
        "leading_space",
        "nul",
        "list",
        "object",
        "null",
        "empty",
        "number",
    ],
)
def test_iss_must_match_a_provider_exactly(verifier: Verifier, iss: Any) -> None:
    """CVE-2024-53861 style partial matches included."""
    refused(verifier, make_token(claims_for(iss=iss)), IssuerMismatch, "issuer_mismatch")


def test_missing_iss_without_an_issuerless_provider_is_refused() -> None:
    verifier = make_verifier(corp_policy(), legacy_policy())
    refused(verifier, make_token(claims_for(iss=DROP)), IssuerMismatch, "issuer_mismatch")


def test_missing_iss_goes_to_the_issuerless_provider_only(verifier: Verifier) -> None:
    refused(verifier, make_token(claims_for(iss=DROP)), AlgorithmNotAllowed)


@pytest.mark.parametrize(
    ("aud", "error", "reason"),
    [
        ("other-api", AudienceMismatch, "audience_mismatch"),
        (["other-api", "account"], AudienceMismatch, "audience_mismatch"),
        ("orders", AudienceMismatch, "audience_mismatch"),  # substring
        ("orders-api-v2", AudienceMismatch, "audience_mismatch"),  # superstring
        ("Orders-Api", AudienceMismatch, "audience_mismatch"),
        ([], AudienceMismatch, "audience_mismatch"),
        (DROP, AudienceMismatch, "audience_missing"),
        ([["orders-api"]], ClaimInvalid, "claim_invalid"),
        (42, ClaimInvalid, "claim_invalid"),
        (["orders-api", 42], ClaimInvalid, "claim_invalid"),
        (None, ClaimInvalid, "claim_invalid"),
        ({"aud": "orders-api"}, ClaimInvalid, "claim_invalid"),
    ],
    ids=[
        "other",
        "list_without",
        "substring",
        "superstring",
        "case",
        "empty_list",
        "missing",
        "nested",
        "number",
        "list_number",
        "null",
        "object",
    ],
)
def test_aud_refused(verifier: Verifier, aud: Any, error: type[GatewayError], reason: str) -> None:
    exc = refused(verifier, make_token(claims_for(aud=aud)), error, reason)
    assert exc.status == (403 if error is AudienceMismatch else 401)


@pytest.mark.parametrize("aud", ["orders-api", ["account", "orders-api"], ["orders-api"]])
def test_aud_accepted(verifier: Verifier, aud: Any) -> None:
    verifier.verify_blocking(make_token(claims_for(aud=aud)))


def test_audience_any_accepts_any_well_typed_aud() -> None:
    verifier = make_verifier(corp_policy(audiences=None))
    for aud in ("x", ["a", "b"], [], DROP):
        verifier.verify_blocking(make_token(claims_for(aud=aud)))
    refused(verifier, make_token(claims_for(aud=42)), ClaimInvalid)
    refused(verifier, make_token(claims_for(aud=[["x"]])), ClaimInvalid)


def test_several_audiences_any_of() -> None:
    verifier = make_verifier(corp_policy(audiences=("a", "b")))
    verifier.verify_blocking(make_token(claims_for(aud="b")))
    refused(verifier, make_token(claims_for(aud="c")), AudienceMismatch)


# ======================================================================== 2.11 JSON level


def test_duplicate_claims_are_refused_even_when_legit_signed(verifier: Verifier) -> None:
    payload = json.dumps(claims_for(role="admin")).encode()[:-1] + b',"role":"user"}'
    refused(verifier, make_token(payload), TokenMalformed)
    payload = json.dumps(claims_for()).encode()[:-1] + b',"sub":"mallory"}'
    refused(verifier, make_token(payload), TokenMalformed)


def test_duplicate_header_members_are_refused(verifier: Verifier) -> None:
    header = b'{"alg":"none","kid":"rsa-1","alg":"RS256"}'
    refused(verifier, make_token(header=header, signing_alg="RS256"), TokenMalformed)


@pytest.mark.parametrize("payload", [b"[1,2,3]", b'"admin"', b"42", b"null", b"true", b"{}x"])
def test_non_object_payloads_are_refused_even_when_legit_signed(verifier: Verifier, payload: bytes) -> None:
    refused(verifier, make_token(payload), TokenMalformed)


@pytest.mark.parametrize(
    "payload",
    [
        json.dumps(claims_for()).encode()[:-1] + b',"name":"\xff\xfe"}',
        b"\xef\xbb\xbf" + json.dumps(claims_for()).encode(),
    ],
    ids=["invalid_utf8", "bom"],
)
def test_payload_encoding_refused_even_when_legit_signed(verifier: Verifier, payload: bytes) -> None:
    """payload_invalid_utf8_legit_signature."""
    refused(verifier, make_token(payload), TokenMalformed)


@pytest.mark.parametrize("name", ["sub", "jti"])
@pytest.mark.parametrize("value", [1234, ["alice"], {"id": "admin"}, None, True])
def test_sub_and_jti_must_be_strings(verifier: Verifier, name: str, value: Any) -> None:
    refused(verifier, make_token(claims_for(**{name: value})), ClaimInvalid)


def test_claims_with_crlf_and_non_ascii_are_verified_not_judged_here(verifier: Verifier) -> None:
    # Header-safety of claim values is the header builder's job; verification must not 5xx.
    claims = claims_for(sub="alice\r\nX-User-Role: admin", name="élodie✓", big="a" * 4000)
    assert verifier.verify_blocking(make_token(claims)).claims["sub"] == claims["sub"]


# ================================================================= 2.12 resource exhaustion


def test_huge_tokens_are_refused_before_parsing(verifier: Verifier) -> None:
    refused(verifier, "a" * 65536, TokenMalformed, "token_too_large")
    refused(verifier, make_token(claims_for(pad="x" * 9000)), TokenMalformed, "token_too_large")
    roomy = make_verifier(max_token_bytes=20000)
    assert roomy.verify_blocking(make_token(claims_for(pad="x" * 9000))).provider == "corp"


def test_many_dots_are_refused(verifier: Verifier) -> None:
    refused(verifier, "e" + "." * 8000 + "e", TokenMalformed)


def test_deep_nesting_is_refused_without_5xx(verifier: Verifier) -> None:
    deep = b"[" * 3000 + b"]" * 3000
    header = b'{"alg":"RS256","kid":"rsa-1","x":' + deep + b"}"
    refused(verifier, make_token(header=header, signing_alg="RS256"), TokenMalformed)
    payload = json.dumps(claims_for()).encode()[:-1] + b',"x":' + deep + b"}"
    refused(verifier, make_token(payload), TokenMalformed)


# =========================================================== 2.13 / 2.14 canonical form, not-JWS


def test_non_canonical_base64_is_refused_even_around_a_valid_signature(verifier: Verifier) -> None:
    token = make_token()
    head, payload, sig = token.split(".")
    assert len(sig) == 342  # 256 bytes: 4 unused bits in the last character
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    changed_bits = sig[:-1] + alphabet[alphabet.index(sig[-1]) ^ 1]
    for variant in (
        f"{token}==",
        f"{token}=",
        f"{head}.{payload}.{changed_bits}",
        f"{head}.{payload}.{sig[:100]}!{sig[100:]}",
        f"{head}.{payload}.{sig[:100]} {sig[100:]}",
        f"{head}.{payload}.{sig.replace('-', '+').replace('_', '/')}",
        f"{head}=.{payload}.{sig}",
    ):
        assert variant != token
        refused(verifier, variant, TokenMalformed)


def test_padded_header_legit_signed_is_refused(verifier: Verifier) -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","kid":"rsa-1"}').decode()
    assert header.endswith("=")
    payload = b64_json(claims_for())
    sig = b64(sign("RS256", RSA_KEY, f"{header}.{payload}".encode()))
    refused(verifier, f"{header}.{payload}.{sig}", TokenMalformed)


@pytest.mark.parametrize(
    "token",
    [
        ".".join([b64_json({"alg": "RSA-OAEP", "enc": "A256GCM"}), "AAAA", "AAAA", "AAAA", "AAAA"]),
        ".".join([b64_json({"alg": "dir", "enc": "A128GCM"}), "", "AAAA", "AAAA", "AAAA"]),
        "a.b.c.d",
        "a.b.c.d.e.f",
        json.dumps({"payload": "e30", "protected": "e30", "signature": "AAAA"}),
        json.dumps({"payload": "e30", "signatures": [{"protected": "e30", "signature": "AAAA"}]}),
    ],
    ids=["jwe_rsa_oaep", "jwe_dir", "four", "six", "flattened_json", "general_json"],
)
def test_not_a_compact_jws_is_refused(verifier: Verifier, token: str) -> None:
    refused(verifier, token, TokenMalformed)


# ====================================================================== typ and provider claims


@pytest.mark.parametrize(
    ("typ", "ok"),
    [
        ("at+jwt", True),
        ("AT+JWT", True),
        ("application/at+jwt", True),
        ("Application/AT+JWT", True),
        ("JWT", False),
        ("jwt", False),
        (DROP, False),
        (None, False),
        (["at+jwt"], False),
        ("at+jwt ", False),
    ],
)
def test_typ_check(typ: Any, ok: bool) -> None:
    verifier = make_verifier(corp_policy(typ=("at+jwt",)))
    extra = {} if typ is DROP else {"typ": typ}
    token = make_token(**extra)
    if ok:
        verifier.verify_blocking(token)
    else:
        refused(verifier, token, ClaimInvalid, "typ_mismatch")


def test_typ_is_not_checked_unless_configured(verifier: Verifier) -> None:
    verifier.verify_blocking(make_token(typ="JWT"))
    verifier.verify_blocking(make_token(typ=42))


@pytest.mark.parametrize(
    ("token_type", "reason"),
    [
        ("refresh", "token_type_mismatch"),
        (DROP, "token_type_mismatch"),
        ("Access", "token_type_mismatch"),
        (["access"], "token_type_mismatch"),
    ],
)
def test_simplejwt_refresh_tokens_are_refused(verifier: Verifier, token_type: Any, reason: str) -> None:
    token = hmac_token(HMAC_SECRET, django_claims(token_type=token_type))
    refused(verifier, token, ClaimInvalid, reason)


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        (True, True, True),
        (True, 1, False),
        (1, True, False),
        (1, 1, True),
        (1, 1.0, True),
        (1.5, 1.5, True),
        ("1", 1, False),
        (1, "1", False),
        (False, None, False),
        (False, DROP, False),
        ("yes", "yes", True),
    ],
)
def test_claim_equals_is_type_strict(expected: Any, actual: Any, ok: bool) -> None:
    verifier = make_verifier(corp_policy(claim_equals={"mfa": expected}))
    token = make_token(claims_for(mfa=actual))
    if ok:
        verifier.verify_blocking(token)
    else:
        refused(verifier, token, ClaimInvalid, "claim_invalid")


def test_required_claims() -> None:
    verifier = make_verifier(corp_policy(required_claims=("email", "tenant")))
    verifier.verify_blocking(make_token(claims_for(email="a@b", tenant=None)))
    refused(verifier, make_token(claims_for(email="a@b")), ClaimInvalid, "claim_missing")


def test_details_never_echo_claim_values_or_tokens(verifier: Verifier) -> None:
    secretish = "SECRET-VALUE-123"
    for token in (
        make_token(claims_for(iss=secretish)),
        make_token(claims_for(aud=secretish)),
        make_token(claims_for(exp=secretish)),
        make_token(kid=secretish),
        make_token(key=ATTACKER_RSA_KEY, kid=secretish),
        hmac_token(HMAC_SECRET, django_claims(token_type=secretish)),
    ):
        with pytest.raises(GatewayError) as info:
            verifier.verify_blocking(token)
        assert secretish not in info.value.detail
        assert token not in info.value.detail


# ============================================================================ construction


def test_two_issuerless_providers_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        make_verifier(django_policy(), django_policy(name="other"))


def test_two_providers_with_one_issuer_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        make_verifier(corp_policy(), corp_policy(name="corp2"))


def test_provider_names_must_match_their_keys() -> None:
    with pytest.raises(ConfigError):
        Verifier({"x": corp_policy()})


def test_no_providers_refuses_everything() -> None:
    refused(Verifier({}), make_token(), IssuerMismatch)


# =================================================================================== cache


def _cached_verifier(clock: Clock, **kw: Any) -> tuple[Verifier, StaticKeys]:
    keys = StaticKeys([vkey("RS256", RSA_KEY, "rsa-1")])
    verifier = make_verifier(corp_policy(keys=keys), clock=clock, cache_enabled=True, **kw)
    return verifier, keys


def test_cache_hit_returns_the_same_result_without_key_lookup() -> None:
    verifier, keys = _cached_verifier(Clock())
    token = make_token()
    first = verifier.verify_blocking(token)
    second = verifier.verify_blocking(token)
    assert second is first
    assert len(keys.lookups) == 1
    assert verifier.cache_size == 1


async def test_async_and_blocking_share_the_cache() -> None:
    verifier, keys = _cached_verifier(Clock())
    token = make_token()
    first = await verifier.verify(token)
    assert verifier.verify_blocking(token) is first
    assert len(keys.lookups) == 1


def test_cache_hit_for_a_provider_outside_allowed_is_refused() -> None:
    verifier, _ = _cached_verifier(Clock())
    token = make_token()
    verifier.verify_blocking(token, frozenset({"corp"}))
    refused(verifier, token, IssuerMismatch, "issuer_not_allowed", allowed=frozenset({"legacy"}))
    assert verifier.verify_blocking(token).provider == "corp"


def test_cached_entry_is_rechecked_at_exp() -> None:
    clock = Clock()
    verifier, keys = _cached_verifier(clock)
    token = make_token(claims_for(exp=NOW + 60))
    verifier.verify_blocking(token)
    clock.now = NOW + 59
    verifier.verify_blocking(token)
    assert len(keys.lookups) == 1
    clock.now = NOW + 60 + 31  # past exp + leeway
    refused(verifier, token, TokenExpired)
    assert verifier.cache_size == 0


def test_cache_entry_lives_at_most_the_ttl() -> None:
    clock = Clock()
    verifier, keys = _cached_verifier(clock, cache_ttl=10.0)
    token = make_token()
    verifier.verify_blocking(token)
    clock.now = NOW + 9.9
    verifier.verify_blocking(token)
    assert len(keys.lookups) == 1
    clock.now = NOW + 10
    verifier.verify_blocking(token)
    assert len(keys.lookups) == 2


def test_token_inside_leeway_after_exp_is_verified_but_not_cached() -> None:
    clock = Clock()
    verifier, keys = _cached_verifier(clock)
    token = make_token(claims_for(exp=NOW - 5))
    verifier.verify_blocking(token)
    verifier.verify_blocking(token)
    assert len(keys.lookups) == 2
    assert verifier.cache_size == 0


def test_cache_hit_rechecks_time_if_the_clock_goes_back() -> None:
    clock = Clock()
    verifier, _ = _cached_verifier(clock)
    token = make_token(claims_for(nbf=NOW))
    verifier.verify_blocking(token)
    clock.now = NOW - 3600
    refused(verifier, token, TokenNotYetValid)


def test_cache_is_bounded() -> None:
    verifier, _ = _cached_verifier(Clock(), cache_max_entries=3)
    tokens = [make_token(claims_for(jti=str(i))) for i in range(5)]
    for token in tokens:
        verifier.verify_blocking(token)
    assert verifier.cache_size == 3


def test_cache_evicts_the_least_recently_used_token() -> None:
    verifier, keys = _cached_verifier(Clock(), cache_max_entries=2)
    first, second, third = (make_token(claims_for(jti=str(i))) for i in range(3))
    verifier.verify_blocking(first)
    verifier.verify_blocking(second)
    verifier.verify_blocking(first)  # a hit: ``second`` is now the least recently used
    verifier.verify_blocking(third)  # evicts ``second``
    lookups = len(keys.lookups)
    verifier.verify_blocking(first)
    assert len(keys.lookups) == lookups  # still cached
    verifier.verify_blocking(second)
    assert len(keys.lookups) == lookups + 1  # verified afresh


def test_failures_are_not_cached_and_similar_tokens_do_not_hit() -> None:
    verifier, keys = _cached_verifier(Clock())
    token = make_token()
    verifier.verify_blocking(token)
    for variant in (token + "==", _flip(token), token.replace(".", ". ", 1)):
        refused(verifier, variant)
    assert verifier.cache_size == 1


def test_cache_can_be_disabled_and_cleared() -> None:
    verifier = make_verifier(cache_enabled=False)
    verifier.verify_blocking(make_token())
    assert verifier.cache_size == 0
    cached, keys = _cached_verifier(Clock())
    cached.verify_blocking(make_token())
    cached.clear_cache()
    assert cached.cache_size == 0
    cached.verify_blocking(make_token())
    assert len(keys.lookups) == 2


def test_cache_is_safe_across_threads() -> None:
    verifier, _ = _cached_verifier(Clock(), cache_max_entries=8)
    tokens = [make_token(claims_for(jti=str(i))) for i in range(16)]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                for token in tokens:
                    assert verifier.verify_blocking(token).provider == "corp"
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert verifier.cache_size <= 8


# ================================================================= cache vs. key set changes


class VersionedKeys(StaticKeys):
    """A key source with ``generation``/``holds``/``usable_for``, as gateway.auth.keys has."""

    def __init__(self, keys: Sequence[VerificationKey]) -> None:
        super().__init__(keys)
        self.generation = 0
        self.remaining = float("inf")
        self.holds_calls = 0

    def install(self, keys: Sequence[VerificationKey]) -> None:
        self.keys = list(keys)
        self.generation += 1

    def holds(self, key: VerificationKey) -> bool:
        self.holds_calls += 1
        return not self.unavailable and key in self.keys

    def usable_for(self) -> float:
        return self.remaining


def _versioned_verifier(clock: Clock) -> tuple[Verifier, VersionedKeys]:
    keys = VersionedKeys([vkey("RS256", RSA_KEY, "rsa-1"), vkey("ES256", EC_KEY, "ec-1")])
    return make_verifier(corp_policy(keys=keys), clock=clock, cache_enabled=True), keys


def test_cached_token_is_refused_once_its_key_is_withdrawn() -> None:
    verifier, keys = _versioned_verifier(Clock())
    token = make_token()
    verifier.verify_blocking(token)
    verifier.verify_blocking(token)
    assert len(keys.lookups) == 1 and keys.holds_calls == 0  # plain hits: no key check
    keys.install([vkey("ES256", EC_KEY, "ec-1")])  # rsa-1 withdrawn by a refresh
    refused(verifier, token, UnknownKid, "unknown_kid")
    assert verifier.cache_size == 0
    # Other tokens of the keys still published keep being cached.
    ec_token = make_token(alg="ES256", key=EC_KEY, kid="ec-1")
    first = verifier.verify_blocking(ec_token)
    assert verifier.verify_blocking(ec_token) is first


async def test_cached_token_is_refused_once_its_key_is_withdrawn_async() -> None:
    verifier, keys = _versioned_verifier(Clock())
    token = make_token()
    await verifier.verify(token)
    keys.install([vkey("RS256", LEGACY_KEY, "rsa-1")])  # same kid, another key
    with pytest.raises(BadSignature):
        await verifier.verify(token)


def test_cache_hit_survives_a_refresh_that_keeps_its_key() -> None:
    verifier, keys = _versioned_verifier(Clock())
    token = make_token()
    first = verifier.verify_blocking(token)
    # A new document publishing the same key (new objects, same material) and one more.
    keys.install([vkey("RS256", RSA_KEY, "rsa-1"), vkey("RS256", LEGACY_KEY, "rsa-2")])
    assert verifier.verify_blocking(token) is first
    assert verifier.verify_blocking(token) is first
    assert keys.holds_calls == 1  # checked once per generation, then plain hits again
    assert len(keys.lookups) == 1


def test_cache_entry_never_outlives_the_usability_of_its_keys() -> None:
    clock = Clock()
    verifier, keys = _versioned_verifier(clock)
    keys.remaining = 20.0  # e.g. a JWKS served stale, 20 s before max_stale runs out
    token = make_token()
    verifier.verify_blocking(token)
    clock.now = NOW + 19
    verifier.verify_blocking(token)
    assert len(keys.lookups) == 1
    clock.now = NOW + 21
    keys.unavailable = True  # the IdP never came back
    refused(verifier, token, KeysUnavailable)
    assert verifier.cache_size == 0


def test_unusable_keys_are_not_cached_at_all() -> None:
    verifier, keys = _versioned_verifier(Clock())
    keys.remaining = 0.0
    token = make_token()
    verifier.verify_blocking(token)
    assert verifier.cache_size == 0


# ============================================================================ PyJWT errors


def _pyjwt_exception_classes() -> list[type[Exception]]:
    return [
        obj
        for obj in vars(jwt.exceptions).values()
        if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == "jwt.exceptions"
    ]


def test_every_pyjwt_exception_class_maps_to_a_reason() -> None:
    classes = _pyjwt_exception_classes()
    assert len(classes) >= 19
    for cls in classes:
        assert cls in PYJWT_ERRORS, f"{cls.__name__} is not mapped"
        exc = cls("claim") if cls is jwt.exceptions.MissingRequiredClaimError else cls("boom: token=abc")
        translated = translate_pyjwt_error(exc)
        error_class, reason = PYJWT_ERRORS[cls]
        assert type(translated) is error_class
        assert translated.reason == reason
        assert "abc" not in translated.detail


def test_pyjwt_mapping_samples() -> None:
    assert isinstance(translate_pyjwt_error(jwt.exceptions.ExpiredSignatureError()), TokenExpired)
    assert isinstance(translate_pyjwt_error(jwt.exceptions.InvalidSignatureError()), BadSignature)
    assert translate_pyjwt_error(jwt.exceptions.InvalidKeyError()).status == 503

    class FutureError(jwt.exceptions.DecodeError):
        pass

    assert isinstance(translate_pyjwt_error(FutureError()), TokenMalformed)
    assert translate_pyjwt_error(ValueError()).status == 500


# ============================================================ RFC 9864 fully-specified EdDSA


def test_rfc9864_ed25519_tokens_verify_only_under_that_name() -> None:
    raw = ED_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw), "kid": "ed-9864", "alg": "Ed25519"}
    key = load_jwk(jwk, algorithms=["Ed25519"], remote=True)
    verifier = make_verifier(corp_policy(algorithms=("Ed25519",), keys=StaticKeys([key])))
    token = make_token(alg="Ed25519", signing_alg="EdDSA", key=ED_KEY, kid="ed-9864")
    assert verifier.verify_blocking(token).claims["sub"] == "alice"
    # The same key and signature under the generic name: not the algorithm the key is bound to.
    refused(verifier, make_token(alg="EdDSA", key=ED_KEY, kid="ed-9864"), AlgorithmNotAllowed)
    # And a forged signature under the new name is still a bad signature.
    refused(verifier, make_token(alg="Ed25519", key=ED_KEY, kid="ed-9864", signature=bytes(64)), BadSignature)


# ============================================================== multi-tenant {tenantid} issuers

TEMPLATE = "https://login.microsoftonline.com/{tenantid}/v2.0"
TENANT_A = "11111111-1111-1111-1111-111111111111"
TENANT_B = "22222222-2222-2222-2222-222222222222"


def tenant_token(iss_tenant: str, tid: Any = None, **claims: Any) -> str:
    tid = iss_tenant if tid is None else tid
    return make_token(claims_for(iss=TEMPLATE.replace("{tenantid}", iss_tenant), tid=tid, **claims))


def tenant_verifier(tenants: frozenset[str] | None) -> Verifier:
    return make_verifier(corp_policy(name="azure", issuer=TEMPLATE, tenants=tenants), legacy_policy())


def test_a_tenant_token_verifies_under_the_templated_issuer() -> None:
    verifier = tenant_verifier(frozenset({TENANT_A}))
    verified = verifier.verify_blocking(tenant_token(TENANT_A))
    assert verified.provider == "azure" and verified.claims["tid"] == TENANT_A


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (lambda: tenant_token(TENANT_A, tid=TENANT_B), "tenant_mismatch"),
        (lambda: tenant_token(TENANT_A, tid=DROP), "tenant_mismatch"),
        (lambda: tenant_token(TENANT_A, tid=[TENANT_A]), "tenant_mismatch"),
        (lambda: tenant_token(TENANT_B), "tenant_not_allowed"),
        # What stands where the tenant goes is a tenant ID or nothing of this issuer.
        (lambda: tenant_token(f"{TENANT_A}/x", tid=f"{TENANT_A}/x"), None),
        (lambda: tenant_token("", tid=""), None),
        (lambda: make_token(claims_for(iss=TEMPLATE, tid="{tenantid}")), None),
    ],
    ids=[
        "tid_of_another_tenant",
        "no_tid",
        "tid_not_a_string",
        "tenant_not_listed",
        "slash",
        "empty",
        "literal",
    ],
)
def test_a_tenant_token_must_name_its_own_listed_tenant(token: Any, reason: str | None) -> None:
    refused(tenant_verifier(frozenset({TENANT_A})), token(), IssuerMismatch, reason or "issuer_mismatch")


def test_tenants_any_accepts_every_tenant_that_names_itself() -> None:
    verifier = tenant_verifier(None)
    assert verifier.verify_blocking(tenant_token(TENANT_B)).provider == "azure"
    refused(verifier, tenant_token(TENANT_B, tid=TENANT_A), IssuerMismatch, "tenant_mismatch")


def test_an_exact_issuer_wins_over_a_template() -> None:
    exact = TEMPLATE.replace("{tenantid}", TENANT_B)
    verifier = make_verifier(
        corp_policy(name="azure", issuer=TEMPLATE, tenants=None),
        legacy_policy(
            name="home", issuer=exact, audiences=(AUD,), keys=StaticKeys([vkey("RS256", RSA_KEY, "rsa-1")])
        ),
    )
    assert verifier.verify_blocking(tenant_token(TENANT_B)).provider == "home"
    assert verifier.verify_blocking(tenant_token(TENANT_A)).provider == "azure"


# ================================================ cache hits judged as a fresh check would


def _judgement(verifier: Verifier, token: str) -> str:
    try:
        return "accepted:" + verifier.verify_blocking(token).provider
    except GatewayError as exc:
        return f"{type(exc).__name__}:{exc.reason}"


CLOCK_STEP_CLAIMS = {
    "iat_at_leeway": {"iat": NOW + 30},
    "iat_inside_leeway": {"iat": NOW + 10.5},
    "nbf_at_leeway": {"nbf": NOW + 30, "iat": DROP},
    "iat_after_nbf": {"nbf": NOW - 100, "iat": NOW + 20},
    "nbf_after_iat": {"nbf": NOW + 20, "iat": NOW - 100},
    "no_iat_no_nbf": {"iat": DROP},
    "past_iat": {"iat": NOW - 50},
}


@pytest.mark.parametrize("overrides", list(CLOCK_STEP_CLAIMS.values()), ids=list(CLOCK_STEP_CLAIMS))
@pytest.mark.parametrize("step", [0.0, -1.0, -15.0, -19.9, -20.0, -25.0, -60.0, -3600.0, 5.0, 59.0])
def test_a_cache_hit_after_the_clock_steps_back_is_judged_as_a_fresh_check(
    overrides: dict[str, Any], step: float
) -> None:
    clock = Clock()
    cached, _ = _cached_verifier(clock, cache_ttl=10_000)
    token = make_token(claims_for(exp=NOW + 60, **overrides))
    assert cached.verify_blocking(token).provider == "corp"
    assert cached.cache_size == 1
    clock.now = NOW + step
    fresh = make_verifier(corp_policy(keys=StaticKeys([vkey("RS256", RSA_KEY, "rsa-1")])), clock=clock)
    assert _judgement(cached, token) == _judgement(fresh, token)


def test_iat_in_the_future_is_rechecked_on_a_cache_hit() -> None:
    clock = Clock()
    verifier, keys = _cached_verifier(clock, cache_ttl=10_000)
    token = make_token(claims_for(iat=NOW + 30))  # accepted: iat within the leeway
    verifier.verify_blocking(token)
    clock.now = NOW - 0.5  # iat > now + leeway now
    refused(verifier, token, TokenNotYetValid)
    assert len(keys.lookups) == 1  # judged by the cache entry, not verified again
    clock.now = NOW
    assert verifier.verify_blocking(token).provider == "corp"


@pytest.mark.parametrize("iat", [DROP, NOW - 100])
def test_max_lifetime_is_judged_on_a_cache_hit_as_a_fresh_check(iat: Any) -> None:
    clock = Clock()
    keys = StaticKeys([vkey("RS256", RSA_KEY, "rsa-1")])
    policy = corp_policy(keys=keys, max_lifetime=600.0)
    cached = make_verifier(policy, clock=clock, cache_enabled=True, cache_ttl=10_000)
    token = make_token(claims_for(exp=NOW + 500, iat=iat))
    cached.verify_blocking(token)
    for step in (-50.0, -100.0, -101.0, -400.0):
        clock.now = NOW + step
        fresh = make_verifier(corp_policy(keys=keys, max_lifetime=600.0), clock=clock)
        assert _judgement(cached, token) == _judgement(fresh, token), step
    # Without iat the remaining lifetime (exp - now) grows as the clock goes back.
    clock.now = NOW - 101
    if iat is DROP:
        refused(cached, token, ClaimInvalid, "lifetime_exceeded")
    else:
        assert cached.verify_blocking(token).provider == "corp"


def test_a_hit_refused_for_nbf_and_lifetime_names_nbf_first() -> None:
    clock = Clock()
    keys = StaticKeys([vkey("RS256", RSA_KEY, "rsa-1")])
    cached = make_verifier(
        corp_policy(keys=keys, max_lifetime=600.0), clock=clock, cache_enabled=True, cache_ttl=10_000
    )
    token = make_token(claims_for(exp=NOW + 590, iat=DROP, nbf=NOW))
    cached.verify_blocking(token)
    clock.now = NOW - 1000  # both nbf and the lifetime bound are violated: a fresh check says nbf
    fresh = make_verifier(corp_policy(keys=keys, max_lifetime=600.0), clock=clock)
    assert _judgement(cached, token) == _judgement(fresh, token) == "TokenNotYetValid:token_not_yet_valid"


# ======================================================= the verified header is read-only


def test_the_verified_header_is_read_only_and_shared_safely() -> None:
    verifier = make_verifier(cache_enabled=True)
    first = verifier.verify_blocking(make_token(claims_for(jti="1"), typ="JWT"))
    second = verifier.verify_blocking(make_token(claims_for(jti="2"), typ="JWT"))
    assert first.header == {"alg": "RS256", "kid": "rsa-1", "typ": "JWT"}
    for header in (first.header, second.header):
        with pytest.raises(TypeError):
            header["typ"] = "at+jwt"  # type: ignore[index]
        with pytest.raises(AttributeError):
            header.pop("typ")  # type: ignore[attr-defined]
    assert second.header["typ"] == "JWT"


def test_an_app_cannot_change_the_typ_check_through_the_header_it_was_given() -> None:
    typed = corp_policy(name="typed", issuer="https://typed.example.com", typ=("at+jwt",))
    verifier = make_verifier(corp_policy(), typed)
    header = {"alg": "RS256", "kid": "rsa-1", "x-test": "header-write"}  # a segment of its own
    verified = verifier.verify_blocking(make_token(header=header))
    with pytest.raises(TypeError):
        verified.header["typ"] = "at+jwt"  # type: ignore[index]
    dict(verified.header)["typ"] = "at+jwt"  # a copy is the app's own
    refused(
        verifier,
        make_token(claims_for(iss="https://typed.example.com"), header=header),
        ClaimInvalid,
        "typ_mismatch",
    )
    assert "typ" not in verified.header


@pytest.mark.parametrize(
    "other",
    [
        "https://login.microsoftonline.com/{tenantid}/v2.0",
        "https://login.microsoftonline.com/{tenantid}",  # a suffix of the other's
        "https://login.microsoftonline.com/x/{tenantid}/v2.0",  # a longer prefix
    ],
)
def test_overlapping_tenant_templates_are_a_config_error(other: str) -> None:
    with pytest.raises(ConfigError, match="overlapping"):
        make_verifier(
            corp_policy(name="azure", issuer=TEMPLATE, tenants=None),
            legacy_policy(name="other", issuer=other, tenants=None),
        )


def test_distinct_tenant_templates_coexist() -> None:
    v1 = "https://sts.windows.net/{tenantid}/"
    verifier = make_verifier(
        corp_policy(name="azure", issuer=TEMPLATE, tenants=None),
        legacy_policy(name="v1", issuer=v1, tenants=None),
    )
    assert verifier.verify_blocking(tenant_token(TENANT_A)).provider == "azure"
