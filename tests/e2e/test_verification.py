"""Token verification over real HTTP (issue 5): extraction, strict parsing, algorithms, claims,
RFC 6750 / RFC 9457 error shapes and the verified-token cache, through the real gateway (uvicorn)
with a real JWKS server, static-key providers and an echo upstream.

Every denial is also asserted never to reach the upstream. One gateway serves the whole module:
each provider below exists to exercise one kind of check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.jwks_server import JWKSServer
from tests.support.servers import EchoUpstream, GatewayServer, free_socket
from tests.support.tokens import SigningKey, new_signing_key, rsa_private_key

SECRET = "e2e-verification-hmac-secret-0123456789abcdef"
AUD = "api"
HS = "https://hs.test"
PEM = "https://pem.test"
ANY_AUD = "https://any-audience.test"
BOUNDED = "https://bounded.test"
AT_JWT = "https://at-jwt.test"
SHORT = "https://short.test"
CUSTOM = "https://custom.test"
COOKIE = "https://cookie.test"
QUERY = "https://query.test"
DOWN = "https://down.test"
MAX_TOKEN_BYTES = 8 * 1024
#: A claim given this value is left out of the token.
DROP: Any = object()


# ------------------------------------------------------------------------------- token helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(value: Any) -> str:
    """A base64url segment of ``value``: bytes as given (exact JSON text), else compact JSON."""
    raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
    return b64(raw)


def hs256(key: bytes) -> Callable[[bytes], bytes]:
    return lambda signing_input: hmac.new(key, signing_input, hashlib.sha256).digest()


HS_SIGN = hs256(SECRET.encode())


def compact(header: Any, payload: Any, sign: Callable[[bytes], bytes] = HS_SIGN) -> str:
    """A compact JWS with exactly this header and payload (bytes: the exact JSON text)."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    return f"{signing_input}.{b64(sign(signing_input.encode('ascii')))}"


def claims(iss: str | None = HS, **extra: Any) -> dict[str, Any]:
    """Valid claims for ``iss`` (None: no iss), changed by ``extra``."""
    now = int(time.time())
    out: dict[str, Any] = {"sub": "alice", "aud": AUD, "iat": now, "exp": now + 300}
    if iss is not None:
        out["iss"] = iss
    out.update(extra)
    return {k: v for k, v in out.items() if v is not DROP}


def hs_token(iss: str | None = HS, *, headers: dict[str, Any] | None = None, **extra: Any) -> str:
    return jwt.encode(claims(iss, **extra), SECRET, algorithm="HS256", headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def idp() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        server.add_key("RS256", slot=0)
        server.add_key("ES256", slot=0)
        yield server


@pytest.fixture(scope="module")
def rs_key(idp: JWKSServer) -> SigningKey:
    """The IdP's RS256 signing key (published with kid ``rs256-0`` and ``alg: RS256``)."""
    return new_signing_key("RS256", slot=0)


@pytest.fixture(scope="module")
def pem_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("keys") / "legacy.pem"
    path.write_bytes(
        rsa_private_key(5)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return str(path)


def _hmac(issuer: str | None, **options: Any) -> dict[str, Any]:
    return {"issuer": issuer, "secret": SECRET, "algorithms": ["HS256"], "audiences": [AUD], **options}


def verification_config(upstream: EchoUpstream, idp: JWKSServer, pem_file: str) -> dict[str, Any]:
    closed = free_socket()  # bound, never listening: the "down" IdP refuses connections
    down_uri = f"http://127.0.0.1:{closed.getsockname()[1]}/jwks.json"
    closed.close()
    everyone = ["idp", "hs", "pem", "any_audience", "bounded", "at_jwt", "short", "django", "down"]
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "max_token_bytes": MAX_TOKEN_BYTES,
        "providers": {
            "idp": {
                "issuer": idp.issuer,
                "jwks_uri": idp.jwks_uri,
                "algorithms": ["RS256", "PS256", "ES256"],
                "audiences": [AUD],
            },
            "hs": _hmac(HS, audiences=[AUD, "api2"]),
            "pem": {
                "issuer": PEM,
                "public_key_file": pem_file,
                "algorithms": ["RS256"],
                "audiences": [AUD],
            },
            "any_audience": _hmac(ANY_AUD, audiences=None, audience="any"),
            "bounded": _hmac(BOUNDED, max_lifetime="10m", required_claims=["jti"]),
            "at_jwt": _hmac(AT_JWT, typ="at+jwt"),
            "short": _hmac(SHORT, leeway=0),
            "django": _hmac(None, audiences=None, audience="any", claims={"token_type": "access"}),
            "custom": _hmac(CUSTOM, token={"header": "X-Api-Token", "scheme": ""}),
            "cookie": _hmac(COOKIE, token={"header": None, "cookie": "gw_session"}),
            "query": _hmac(QUERY, token={"header": None, "query": "token"}),
            "down": {
                "issuer": DOWN,
                "jwks_uri": down_uri,
                "algorithms": ["RS256"],
                "audiences": [AUD],
                "required": False,
                "jwks": {"timeout": "1s", "retry_backoff": "5s", "retry_backoff_max": "5s"},
            },
        },
        "headers": {"claims": {"X-User-Id": "sub"}, "strip_prefixes": ["X-User-"]},
        "routes": [
            {"name": "api", "match": {"path": "/api/**"}, "providers": everyone},
            {
                "name": "orders",
                "match": {"path": "/orders/**"},
                "providers": ["hs"],
                "require": {"scope": "orders:read"},
            },
            {
                "name": "admin",
                "match": {"path": "/admin/**"},
                "providers": ["hs", "idp"],
                "require": {"claim": "roles", "contains": "admin"},
            },
            {"name": "custom", "match": {"path": "/custom/**"}, "providers": ["custom"]},
            {"name": "cookie", "match": {"path": "/cookie/**"}, "providers": ["cookie"]},
            {"name": "query", "match": {"path": "/query/**"}, "providers": ["query"]},
            {"name": "both", "match": {"path": "/both/**"}, "providers": ["hs", "cookie"]},
        ],
    }


@pytest.fixture(scope="module")
def gw(upstream: EchoUpstream, idp: JWKSServer, pem_file: str) -> Iterator[GatewayServer]:
    with GatewayServer(verification_config(upstream, idp, pem_file)) as server:
        wait_for_keys(server, "idp")
        yield server


@pytest.fixture(scope="module")
def client(gw: GatewayServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=10) as c:
        yield c


def wait_for_keys(server: GatewayServer, provider: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not server.gateway.policy.key_status()[provider]["ready"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{provider} keys not loaded")
        time.sleep(0.02)


# ------------------------------------------------------------------------------ assertions


class Gate:
    """Sends requests and checks outcomes, counting what reached the upstream."""

    def __init__(self, client: httpx.Client, upstream: EchoUpstream) -> None:
        self.client = client
        self.upstream = upstream

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def allowed(self, path: str, **kwargs: Any) -> httpx.Response:
        before = self.upstream.count
        r = self.get(path, **kwargs)
        assert r.status_code == 200, r.text
        assert self.upstream.count == before + 1
        return r

    def denied(self, path: str, status: int, reason: str | None = None, **kwargs: Any) -> httpx.Response:
        """The request is refused with ``status`` (and ``reason``) and never forwarded."""
        before = self.upstream.count
        r = self.get(path, **kwargs)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert body["status"] == status
        if reason is not None:
            assert body["reason"] == reason, body
        assert self.upstream.count == before, "a denied request reached the upstream"
        challenge = r.headers.get("www-authenticate", "")
        if status == 401:
            assert challenge.startswith('Bearer realm="jwt-gateway"')
        if status == 400 and body["reason"] != "path_not_canonical":
            assert 'error="invalid_request"' in challenge
        return r


@pytest.fixture
def gate(client: httpx.Client, upstream: EchoUpstream) -> Gate:
    return Gate(client, upstream)


def assert_not_echoed(r: httpx.Response, token: str) -> None:
    """Neither the token nor any of its segments comes back to the client."""
    text = r.text + "".join(f"{k}: {v}" for k, v in r.headers.items())
    for part in {token, *token.split(".")} - {""}:
        if len(part) >= 8:
            assert part not in text


# =================================================================================== extraction


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(gate: Gate, scheme: str) -> None:
    r = gate.allowed("/api/x", headers={"Authorization": f"{scheme} {hs_token()}"})
    assert r.json()["headers"]["x-user-id"] == ["alice"]
    assert "authorization" not in r.json()["headers"]


@pytest.mark.parametrize(
    ("value", "status", "reason"),
    [
        ("Bearer  {t}", 400, "malformed_authorization"),  # two spaces
        ("Bearer {t} {t}", 400, "malformed_authorization"),
        ("Bearer", 400, "malformed_authorization"),
        ("Bearer Bearer {t}", 400, "malformed_authorization"),
        ("Bearer\t{t}", 401, "token_missing"),  # not the Bearer scheme at all
        ("Token {t}", 401, "token_missing"),
        ("Basic dXNlcjpwYXNzd29yZA==", 401, "token_missing"),
        ("{t}", 401, "token_missing"),  # a bare token is not a Bearer credential
    ],
    ids=[
        "two_spaces",
        "two_tokens",
        "scheme_only",
        "scheme_twice",
        "tab",
        "other_scheme_token",
        "basic",
        "bare_token",
    ],
)
def test_authorization_header_is_scheme_one_space_token68(
    gate: Gate, value: str, status: int, reason: str
) -> None:
    token = hs_token()
    gate.denied("/api/x", status, reason, headers={"Authorization": value.format(t=token)})


def test_custom_header_carries_the_bare_token(gate: Gate) -> None:
    token = hs_token(CUSTOM)
    r = gate.allowed("/custom/x", headers={"X-Api-Token": token})
    assert r.json()["headers"]["x-user-id"] == ["alice"]
    assert "x-api-token" not in r.json()["headers"]  # the credential is not forwarded
    # That route's provider does not read Authorization at all.
    gate.denied("/custom/x", 401, "token_missing", headers=bearer(token))
    gate.denied("/custom/x", 400, None, headers={"X-Api-Token": f"Bearer {token}"})


def test_cookie_carries_the_token_where_configured(gate: Gate) -> None:
    token = hs_token(COOKIE)
    r = gate.allowed("/cookie/x", headers={"Cookie": f"theme=dark; gw_session={token}; lang=en"})
    assert r.json()["headers"]["x-user-id"] == ["alice"]
    # Cookies are not a token location unless configured.
    gate.denied("/api/x", 401, "token_missing", headers={"Cookie": f"gw_session={hs_token()}"})


def test_query_parameter_is_off_by_default(gate: Gate) -> None:
    token = hs_token()
    gate.denied(f"/api/x?access_token={token}", 401, "token_missing")
    gate.denied(f"/api/x?token={token}", 401, "token_missing")


def test_query_parameter_when_enabled(gate: Gate) -> None:
    r = gate.allowed(f"/query/x?token={hs_token(QUERY)}&page=2")
    assert r.json()["headers"]["x-user-id"] == ["alice"]
    gate.denied(f"/query/x?token={hs_token(QUERY)}&token={hs_token(QUERY)}", 400, "multiple_credentials")


def _two_credentials() -> list[Any]:
    def two_headers(first: str, second: str) -> dict[str, Any]:
        return {"headers": [("Authorization", f"Bearer {first}"), ("Authorization", f"Bearer {second}")]}

    cases: list[tuple[str, Callable[[str, str], tuple[str, dict[str, Any]]]]] = [
        ("two_headers_valid_valid", lambda a, b: ("/api/x", two_headers(a, b))),
        ("two_headers_valid_invalid", lambda a, b: ("/api/x", two_headers(a, "x.y.z"))),
        ("two_headers_invalid_valid", lambda a, b: ("/api/x", two_headers("x.y.z", a))),
        ("comma_joined", lambda a, b: ("/api/x", {"headers": {"Authorization": f"Bearer {a}, Bearer {b}"}})),
        (
            "comma_joined_no_space",
            lambda a, b: ("/api/x", {"headers": {"Authorization": f"Bearer {a},Bearer {b}"}}),
        ),
        (
            "header_and_cookie",
            lambda a, b: ("/both/x", {"headers": {**bearer(a), "Cookie": f"gw_session={b}"}}),
        ),
        ("header_and_standard_query", lambda a, b: (f"/api/x?access_token={b}", {"headers": bearer(a)})),
        ("header_and_junk_query", lambda a, b: ("/api/x?access_token=junk", {"headers": bearer(a)})),
    ]
    return [pytest.param(make, id=name) for name, make in cases]


@pytest.mark.parametrize("make", _two_credentials())
def test_more_than_one_credential_is_400_invalid_request(
    gate: Gate, make: Callable[[str, str], tuple[str, dict[str, Any]]]
) -> None:
    path, kwargs = make(hs_token(), hs_token(COOKIE, roles=["admin"]))
    r = gate.denied(path, 400, "multiple_credentials", **kwargs)
    assert r.headers["www-authenticate"].startswith('Bearer realm="jwt-gateway", error="invalid_request"')


def test_token_larger_than_max_token_bytes_is_refused_before_parsing(gate: Gate) -> None:
    fits = hs_token(pad="p" * 5000)
    assert len(fits) < MAX_TOKEN_BYTES
    gate.allowed("/api/x", headers=bearer(fits))
    big = hs_token(pad="p" * 6500)
    assert len(big) > MAX_TOKEN_BYTES
    r = gate.denied("/api/x", 401, "token_too_large", headers=bearer(big))
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    # Refused before any parsing: not even a well-formed JWS is needed to hit the limit.
    gate.denied("/api/x", 401, "token_too_large", headers=bearer("a" * (MAX_TOKEN_BYTES + 1)))


# =============================================================================== strict parsing


def _with_url_safe_chars() -> str:
    for _ in range(200):
        token = hs_token(jti=secrets.token_hex(8))
        if "-" in token or "_" in token:
            return token
    raise AssertionError("no token with - or _ found")


def _non_zero_unused_bits(token: str) -> str:
    head, _, sig = token.rpartition(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(sig) % 4 == 3  # HS256: 32 bytes -> 43 chars, 2 unused bits
    index = alphabet.index(sig[-1])
    return f"{head}.{sig[:-1]}{alphabet[index | 1]}"


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _payload_text(**extra_json: str) -> bytes:
    """The JSON text of valid claims for ``hs``, with raw JSON members appended."""
    base = json.dumps(claims())[:-1]
    return (base + "".join(f', "{k}": {v}' for k, v in extra_json.items()) + "}").encode()


HS_HEADER = {"alg": "HS256", "typ": "JWT"}


def _strict_cases() -> list[Any]:
    cases: list[tuple[str, Callable[[], str], int, str | None]] = [
        ("signature_padded", lambda: hs_token() + "==", 401, "token_malformed"),
        ("signature_one_pad", lambda: hs_token() + "=", 401, "token_malformed"),
        (
            "plus_slash_alphabet",
            lambda: _with_url_safe_chars().replace("-", "+").replace("_", "/"),
            401,
            "token_malformed",
        ),
        ("unused_bits_set", lambda: _non_zero_unused_bits(hs_token()), 401, "token_malformed"),
        ("four_segments", lambda: hs_token() + ".e30", 401, "token_malformed"),
        ("two_segments", lambda: hs_token().rpartition(".")[0], 401, "token_malformed"),
        ("empty_signature", lambda: hs_token().rpartition(".")[0] + ".", 401, "token_malformed"),
        (
            "jwe_five_segments",
            lambda: ".".join(
                [segment({"alg": "RSA-OAEP", "enc": "A256GCM"}), "AAAA", "AAAA", "AAAA", "AAAA"]
            ),
            401,
            None,
        ),
        ("many_dots", lambda: "e" + "." * 4000 + "e", 401, "token_malformed"),
        (
            "duplicate_claim",
            lambda: compact(HS_HEADER, _payload_text(sub='"mallory"')),
            401,
            "token_malformed",
        ),
        (
            "duplicate_header_member",
            lambda: compact(b'{"alg":"HS256","alg":"HS256"}', claims()),
            401,
            "token_malformed",
        ),
        ("nan_exp", lambda: compact(HS_HEADER, _payload_text(nbf="NaN")), 401, "token_malformed"),
        ("infinity", lambda: compact(HS_HEADER, _payload_text(nbf="Infinity")), 401, "token_malformed"),
        ("huge_number", lambda: compact(HS_HEADER, _payload_text(nbf="1e400")), 401, "token_malformed"),
        (
            "deeply_nested_payload",
            lambda: compact(HS_HEADER, _payload_text(deep=_nested(2000).decode())),
            401,
            "token_malformed",
        ),
        (
            "deeply_nested_header",
            lambda: compact(b'{"alg":"HS256","x":' + _nested(1500) + b"}", claims()),
            401,
            "token_malformed",
        ),
        ("payload_is_array", lambda: compact(HS_HEADER, [1, 2, 3]), 401, "token_malformed"),
        ("payload_not_utf8", lambda: compact(HS_HEADER, b'{"sub":"\xff\xfe"}'), 401, "token_malformed"),
        ("header_crit", lambda: hs_token(headers={"crit": ["exp"]}), 401, "header_unsupported"),
        ("header_b64_false", lambda: hs_token(headers={"b64": False}), 401, "header_unsupported"),
        (
            "header_jku",
            lambda: hs_token(headers={"jku": "http://127.0.0.1:1/jwks"}),
            401,
            "header_unsupported",
        ),
        ("header_zip", lambda: hs_token(headers={"zip": "DEF"}), 401, "header_unsupported"),
    ]
    return [pytest.param(make, status, reason, id=name) for name, make, status, reason in cases]


@pytest.mark.parametrize(("make", "status", "reason"), _strict_cases())
def test_strict_parsing_refuses_with_401_never_5xx(
    gate: Gate, make: Callable[[], str], status: int, reason: str | None
) -> None:
    token = make()
    r = gate.denied("/api/x", status, reason, headers=bearer(token))
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert_not_echoed(r, token)


@pytest.mark.parametrize("form", ["flattened", "general"])
def test_json_serialisation_is_not_a_bearer_credential(gate: Gate, form: str) -> None:
    token = hs_token()
    protected, payload, signature = token.split(".")
    if form == "flattened":
        document = {"payload": payload, "protected": protected, "signature": signature}
    else:
        document = {"payload": payload, "signatures": [{"protected": protected, "signature": signature}]}
    # Not token68 syntax: the request itself is malformed (400), it is never parsed as a JWS.
    r = gate.denied("/api/x", 400, None, headers=bearer(json.dumps(document)))
    assert r.json()["reason"] in ("malformed_authorization", "multiple_credentials")  # it has commas


# ==================================================================================== algorithms


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", ["", "c2lnbmF0dXJl"], ids=["empty_sig", "garbage_sig"])
def test_alg_none_in_any_spelling_is_refused(gate: Gate, idp: JWKSServer, alg: str, signature: str) -> None:
    for iss, kid in ((HS, None), (idp.issuer, "rs256-0")):
        header = {"alg": alg, **({"kid": kid} if kid else {})}
        token = f"{segment(header)}.{segment(claims(iss))}.{signature}"
        gate.denied("/api/x", 401, None, headers=bearer(token))


def _public_material(key: SigningKey) -> dict[str, bytes]:
    public = key.private_key.public_key()
    return {
        "spki_pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "pkcs1_pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "jwk_json": json.dumps(key.public_jwk()).encode(),
        "jwks_json": json.dumps({"keys": [key.public_jwk()]}).encode(),
    }


@pytest.mark.parametrize("material", ["spki_pem", "pkcs1_pem", "jwk_json", "jwks_json"])
def test_hs256_signed_with_the_public_key_is_refused(
    gate: Gate, idp: JWKSServer, rs_key: SigningKey, material: str
) -> None:
    secret = _public_material(rs_key)[material]
    # Claiming the IdP: HS256 is not among its algorithms, whatever the kid.
    header = {"alg": "HS256", "typ": "JWT", "kid": rs_key.kid}
    gate.denied(
        "/api/x",
        401,
        "algorithm_not_allowed",
        headers=bearer(compact(header, claims(idp.issuer), hs256(secret))),
    )
    # Claiming the HMAC provider: its one secret does not verify it.
    gate.denied("/api/x", 401, "bad_signature", headers=bearer(compact(HS_HEADER, claims(HS), hs256(secret))))


def test_algorithm_comes_from_the_key_not_the_token(gate: Gate, idp: JWKSServer, rs_key: SigningKey) -> None:
    body = claims(idp.issuer)
    gate.allowed("/api/x", headers=bearer(rs_key.sign(body)))
    # PS256 is allowed for the provider, but this key is bound to RS256 (its JWK says so).
    gate.denied("/api/x", 401, "algorithm_not_allowed", headers=bearer(rs_key.sign(body, alg="PS256")))
    # RS512: not allowed for the provider at all.
    gate.denied("/api/x", 401, "algorithm_not_allowed", headers=bearer(rs_key.sign(body, alg="RS512")))
    # ES256 header naming the RSA kid.
    es = new_signing_key("ES256", slot=0)
    token = jwt.encode(body, es.private_key, algorithm="ES256", headers={"kid": rs_key.kid})
    gate.denied("/api/x", 401, "algorithm_not_allowed", headers=bearer(token))
    # The ES256 key under its own kid is fine.
    gate.allowed("/api/x", headers=bearer(es.sign(body)))


def test_embedded_key_is_never_used(gate: Gate, idp: JWKSServer) -> None:
    attacker = new_signing_key("RS256", slot=7, kid="rs256-0")
    token = attacker.sign(claims(idp.issuer), headers={"jwk": attacker.public_jwk()})
    gate.denied("/api/x", 401, "header_unsupported", headers=bearer(token))
    gate.denied("/api/x", 401, "bad_signature", headers=bearer(attacker.sign(claims(idp.issuer))))


# ======================================================================================== claims


def _claim_cases() -> list[Any]:
    now = int(time.time())
    cases: list[tuple[str, Callable[[], str], int, str]] = [
        ("exp_required", lambda: hs_token(exp=DROP), 401, "claim_missing"),
        ("exp_string", lambda: hs_token(exp=str(now + 300)), 401, "claim_invalid"),
        ("exp_bool", lambda: hs_token(exp=True), 401, "claim_invalid"),
        ("nbf_string", lambda: hs_token(nbf=str(now)), 401, "claim_invalid"),
        ("expired_beyond_leeway", lambda: hs_token(exp=int(time.time()) - 45), 401, "token_expired"),
        ("nbf_beyond_leeway", lambda: hs_token(nbf=int(time.time()) + 45), 401, "token_not_yet_valid"),
        ("iat_in_the_future", lambda: hs_token(iat=int(time.time()) + 86400), 401, "token_not_yet_valid"),
        ("iss_trailing_slash", lambda: hs_token(HS + "/"), 401, "issuer_mismatch"),
        ("iss_upper_case", lambda: hs_token(HS.upper()), 401, "issuer_mismatch"),
        ("iss_prefix", lambda: hs_token("https://hs.tes"), 401, "issuer_mismatch"),
        ("iss_list", lambda: compact(HS_HEADER, {**claims(None), "iss": [HS]}), 401, "issuer_mismatch"),
        ("iss_route_not_accepting_provider", lambda: hs_token(CUSTOM), 401, "issuer_not_allowed"),
        ("aud_other", lambda: hs_token(aud="billing"), 403, "audience_mismatch"),
        ("aud_list_without_ours", lambda: hs_token(aud=["billing", "apis"]), 403, "audience_mismatch"),
        ("aud_substring", lambda: hs_token(aud="ap"), 403, "audience_mismatch"),
        ("aud_missing", lambda: hs_token(aud=DROP), 403, "audience_missing"),
        ("aud_nested_list", lambda: hs_token(aud=[[AUD]]), 401, "claim_invalid"),
        ("aud_number", lambda: hs_token(aud=42), 401, "claim_invalid"),
        ("max_lifetime_exceeded", lambda: hs_token(BOUNDED, jti="j", exp=now + 3600),
         401, "lifetime_exceeded"),
        ("required_claim_missing", lambda: hs_token(BOUNDED), 401, "claim_missing"),
        ("typ_id_token", lambda: hs_token(AT_JWT, headers={"typ": "JWT"}), 401, "typ_mismatch"),
        ("typ_missing", lambda: jwt.encode(claims(AT_JWT), SECRET, algorithm="HS256", headers={"typ": None}),
         401, "typ_mismatch"),
        ("token_type_refresh", lambda: hs_token(None, token_type="refresh", user_id="7"),
         401, "token_type_mismatch"),
        ("token_type_missing", lambda: hs_token(None, user_id="7"), 401, "token_type_mismatch"),
    ]  # fmt: skip
    return [pytest.param(make, status, reason, id=name) for name, make, status, reason in cases]


@pytest.mark.parametrize(("make", "status", "reason"), _claim_cases())
def test_claims_are_checked_by_the_provider_config(
    gate: Gate, make: Callable[[], str], status: int, reason: str
) -> None:
    r = gate.denied("/api/x", status, reason, headers=bearer(make()))
    error = "invalid_token" if status == 401 else "insufficient_scope"
    assert f'error="{error}"' in r.headers["www-authenticate"]


def _accepted_claims() -> list[Any]:
    cases: list[tuple[str, Callable[[], str]]] = [
        ("expired_within_leeway", lambda: hs_token(exp=int(time.time()) - 10)),
        ("nbf_within_leeway", lambda: hs_token(nbf=int(time.time()) + 10)),
        ("fractional_exp", lambda: hs_token(exp=time.time() + 300.5)),
        ("aud_string", lambda: hs_token(aud=AUD)),
        ("aud_list_with_ours", lambda: hs_token(aud=["billing", AUD])),
        ("aud_second_configured", lambda: hs_token(aud="api2")),
        ("audience_any_other", lambda: hs_token(ANY_AUD, aud="anything")),
        ("audience_any_missing", lambda: hs_token(ANY_AUD, aud=DROP)),
        ("lifetime_within_bound", lambda: hs_token(BOUNDED, jti="j", exp=int(time.time()) + 500)),
        ("typ_at_jwt", lambda: hs_token(AT_JWT, headers={"typ": "at+jwt"})),
        ("typ_application_at_jwt", lambda: hs_token(AT_JWT, headers={"typ": "application/AT+JWT"})),
        ("token_type_access", lambda: hs_token(None, token_type="access", user_id="7", aud=DROP)),
        ("pem_without_kid", lambda: jwt.encode(claims(PEM), rsa_private_key(5), algorithm="RS256")),
        ("pem_with_any_kid", lambda: jwt.encode(claims(PEM), rsa_private_key(5), "RS256", {"kid": "k9"})),
    ]
    return [pytest.param(make, id=name) for name, make in cases]


@pytest.mark.parametrize("make", _accepted_claims())
def test_tokens_within_the_rules_are_accepted(gate: Gate, make: Callable[[], str]) -> None:
    r = gate.allowed("/api/x", headers=bearer(make()))
    assert r.json()["headers"]["x-user-id"] == ["alice"]


# ================================================================================ error shapes


def test_no_token_is_401_with_a_bare_challenge(gate: Gate) -> None:
    r = gate.denied("/api/x", 401, "token_missing")
    assert r.headers["www-authenticate"] == 'Bearer realm="jwt-gateway"'
    body = r.json()
    assert set(body) >= {"type", "title", "status", "detail", "reason", "request_id"}
    assert (body["type"], body["title"]) == ("about:blank", "Unauthorized")
    assert body["request_id"] == r.headers["x-request-id"]
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("make", "reason", "words"),
    [
        (lambda: hs_token(exp=int(time.time()) - 3600), "token_expired", "expired"),
        (
            lambda: jwt.encode(claims(HS), "another-secret-of-at-least-32-bytes!", algorithm="HS256"),
            "bad_signature",
            "signature",
        ),
        (lambda: hs_token("https://nobody.test"), "issuer_mismatch", "issuer"),
    ],  # fmt: skip
    ids=["expired", "bad_signature", "unknown_issuer"],
)
def test_bad_token_challenge_names_the_reason_without_echoing_the_token(
    gate: Gate, make: Callable[[], str], reason: str, words: str
) -> None:
    token = make()
    r = gate.denied("/api/x", 401, reason, headers=bearer(token))
    challenge = r.headers["www-authenticate"]
    prefix = 'Bearer realm="jwt-gateway", error="invalid_token", error_description="'
    assert challenge.startswith(prefix) and challenge.endswith('"')
    description = challenge[len(prefix) : -1]
    assert words in description
    assert r.json()["detail"] == description
    assert_not_echoed(r, token)


def test_failed_scope_rule_is_403_insufficient_scope_naming_the_scope(gate: Gate) -> None:
    r = gate.denied("/orders/1", 403, "rule_failed", headers=bearer(hs_token(scope="profile orders:write")))
    assert r.headers["www-authenticate"] == (
        'Bearer realm="jwt-gateway", error="insufficient_scope", '
        'error_description="the token does not satisfy this route\'s rule", scope="orders:read"'
    )
    gate.denied("/orders/1", 403, "rule_failed", headers=bearer(hs_token()))
    gate.allowed("/orders/1", headers=bearer(hs_token(scope="profile orders:read")))
    gate.allowed("/orders/1", headers=bearer(hs_token(scp=["orders:read"])))


def test_failed_claim_rule_is_403_without_scope_attribute(gate: Gate) -> None:
    r = gate.denied("/admin/x", 403, "rule_failed", headers=bearer(hs_token(roles=["user"])))
    challenge = r.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and "scope=" not in challenge.replace("_scope", "")
    gate.allowed("/admin/x", headers=bearer(hs_token(roles=["user", "admin"])))


def test_unreachable_keys_are_503_with_retry_after_never_401(gate: Gate, rs_key: SigningKey) -> None:
    token = rs_key.sign(claims(DOWN))
    r = gate.denied("/api/x", 503, "keys_unavailable", headers=bearer(token))
    (retry_after,) = r.headers.get_list("retry-after")  # exactly one
    assert 1 <= int(retry_after) <= 300
    assert "www-authenticate" not in r.headers  # the token is not at fault
    assert r.json()["title"] == "Service Unavailable"


# ============================================================================ verified-token cache


def test_cache_hit_does_not_skip_the_route_rules(gate: Gate, gw: GatewayServer) -> None:
    verifier = gw.gateway.policy.verifier
    token = hs_token(roles=["user"], jti=secrets.token_hex(8))
    size = verifier.cache_size
    gate.allowed("/api/x", headers=bearer(token))
    assert verifier.cache_size == size + 1  # verified once, cached
    gate.denied("/admin/x", 403, "rule_failed", headers=bearer(token))  # hit, rule still runs
    gate.allowed("/api/y", headers=bearer(token))
    gate.denied("/orders/1", 403, "rule_failed", headers=bearer(token))
    assert verifier.cache_size == size + 1


def test_cache_hit_does_not_skip_the_route_providers(gate: Gate) -> None:
    token = hs_token(ANY_AUD, roles=["admin"])
    gate.allowed("/api/x", headers=bearer(token))
    # /admin accepts only hs and idp tokens: the cached verification does not change that.
    gate.denied("/admin/x", 401, "issuer_not_allowed", headers=bearer(token))


def test_expired_cached_token_is_refused(gate: Gate, gw: GatewayServer) -> None:
    exp = time.time() + 0.8  # a fractional NumericDate is a valid one
    token = hs_token(SHORT, exp=exp)  # the "short" provider has no leeway
    gate.allowed("/api/x", headers=bearer(token))
    size = gw.gateway.policy.verifier.cache_size
    gate.allowed("/api/x", headers=bearer(token))
    assert gw.gateway.policy.verifier.cache_size == size  # a hit
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    gate.denied("/api/x", 401, "token_expired", headers=bearer(token))
