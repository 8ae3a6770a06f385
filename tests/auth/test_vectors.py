"""Third-party vectors at the signature layer: Wycheproof JWS/JWE and the JOSE cookbook.

The vectors' payloads are text ("foo", "Test"...), not JWT claims, so they run through the
strict parser without the JSON-payload step (:func:`parse_compact_parts`) and the verifier's
signature layer (:func:`verify_jws_signature`: alg allow-list, key binding, signature). Each
group's key is loaded with the gateway's own loader (:mod:`gateway.auth.jwk`) and pinned to its
algorithm, so the key-hygiene vectors (``use: enc``, ``key_ops``, ROCA, mixed key sets) are
judged end to end. A vector is "refused" when the key loader refuses its key or the verifier
raises a :class:`GatewayError`; anything else escaping is a failure.

Mislabelled vectors (``tests/vectors/README.md``) are strict xfails, never loosened checks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.jwk import JWKSInvalid, KeyRejected, load_jwk, load_jwks
from gateway.auth.jws import parse_compact, parse_compact_parts
from gateway.auth.types import ProviderPolicy, VerificationKey
from gateway.auth.verify import Verifier, verify_jws_signature
from gateway.errors import GatewayError, TokenMalformed
from tests.auth.test_verify import StaticKeys

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
WYCHEPROOF = VECTORS / "wycheproof"
COOKBOOK = VECTORS / "jose-cookbook"

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason=f"vectors not found at {VECTORS}")

#: tcId -> why a strict verifier cannot meet the label (json_web_signature_test.json).
QUIRKS = {
    346: "key labelled PS256 is used for the PS384 figure (RFC 7520 Figure 20)",
    350: "key labelled PS256 is used for the PS384 figure (RFC 7520 Figure 20)",
    347: "key labelled with the unknown algorithm ES521 (ES512 is meant)",
    351: "key labelled with the unknown algorithm ES521 (ES512 is meant)",
    367: "byte-identical to valid tcId 357 but labelled invalid",
    370: "byte-identical to valid tcId 357 but labelled invalid",
    372: "contains '?' (not base64url) but labelled valid",
    373: "contains '?' (not base64url) but labelled valid",
}
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")
_DEFAULT_ALG = {"RSA": "RS256", "oct": "HS256", "OKP": "EdDSA"}
_EC_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WYCHEPROOF / name).read_text())
    return data


def _serialised(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _key_alg(jwk: Mapping[str, Any]) -> str:
    alg = jwk.get("alg")
    if isinstance(alg, str):
        return alg
    if jwk.get("kty") == "EC":
        return _EC_ALG.get(str(jwk.get("crv")), "ES256")
    return _DEFAULT_ALG.get(str(jwk.get("kty")), "RS256")


def _public(jwk: Mapping[str, Any]) -> dict[str, Any]:
    if jwk.get("kty") == "oct":
        return dict(jwk)
    return {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}


def _policy_for(key_document: Mapping[str, Any]) -> ProviderPolicy:
    """The group's key(s) as a provider pinned to their algorithm(s). May raise key errors."""
    if "keys" in key_document:
        algorithms = tuple(dict.fromkeys(_key_alg(k) for k in key_document["keys"]))
        keys: tuple[VerificationKey, ...] = load_jwks(
            {"keys": [_public(k) for k in key_document["keys"]]}, algorithms=algorithms, remote=False
        ).keys
    else:
        algorithms = (_key_alg(key_document),)
        keys = (load_jwk(_public(key_document), algorithms=algorithms, remote=False),)
    return ProviderPolicy(
        name="vector", issuer=None, algorithms=algorithms, audiences=None, keys=StaticKeys(keys)
    )


def _accepted(key_document: Mapping[str, Any], token: str) -> bool:
    """True when the gateway accepts ``token``'s signature; False when it refuses it."""
    try:
        policy = _policy_for(key_document)
    except (KeyRejected, JWKSInvalid):
        return False
    try:
        verify_jws_signature(parse_compact_parts(token), policy)
    except GatewayError:
        return False
    return True


def _wycheproof_jws_cases() -> Iterator[Any]:
    for file_name in ("json_web_signature_test.json", "json_web_crypto_test.json"):
        if not (WYCHEPROOF / file_name).exists():
            return
        for group in _load(file_name)["testGroups"]:
            key_document = group.get("public") or group["private"]
            for test in group["tests"]:
                if "jws" not in test:
                    continue
                marks = []
                if file_name == "json_web_signature_test.json" and test["tcId"] in QUIRKS:
                    marks.append(pytest.mark.xfail(reason=QUIRKS[test["tcId"]], strict=True))
                yield pytest.param(
                    key_document,
                    _serialised(test["jws"]),
                    test["result"] == "valid",
                    id=f"{file_name.split('_test')[0]}-{test['tcId']}-{test['comment']}",
                    marks=marks,
                )


@pytest.mark.parametrize(("key_document", "token", "valid"), list(_wycheproof_jws_cases()))
def test_wycheproof_jws(key_document: Mapping[str, Any], token: str, valid: bool) -> None:
    assert _accepted(key_document, token) is valid


def test_wycheproof_counts_are_the_documented_ones() -> None:
    cases = list(_wycheproof_jws_cases())
    assert len(cases) == 401 + 49  # signature file + the JWS tests of the crypto file
    assert sum(1 for case in cases if case.values[2]) == 46 + 4  # crypto: tcIds 1, 18, 33, 48


def _wycheproof_jwe_cases() -> Iterator[Any]:
    for file_name in ("json_web_encryption_test.json", "json_web_crypto_test.json"):
        for group in _load(file_name)["testGroups"]:
            for test in group["tests"]:
                if "jwe" in test:
                    yield pytest.param(
                        _serialised(test["jwe"]), id=f"{file_name.split('_test')[0]}-{test['tcId']}"
                    )


JWE_VERIFIER = Verifier(
    {
        "any": ProviderPolicy(
            name="any", issuer=None, algorithms=("HS256",), audiences=None, keys=StaticKeys()
        )
    },
    cache_enabled=False,
    max_token_bytes=1 << 20,
)


@pytest.mark.parametrize("token", list(_wycheproof_jwe_cases()))
def test_every_jwe_is_refused(token: str) -> None:
    with pytest.raises(TokenMalformed) as info:
        parse_compact(token)
    if token.count(".") == 4 or token.startswith("{"):
        assert info.value.reason == "token_unsupported"
    with pytest.raises(GatewayError) as outcome:
        JWE_VERIFIER.verify_blocking(token)
    assert outcome.value.status == 401


def test_jwe_vector_count() -> None:
    assert len(list(_wycheproof_jwe_cases())) == 139 + 34


# ----------------------------------------------------------------------- JOSE cookbook


def _cookbook(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((COOKBOOK / path).read_text())
    return data


POSITIVE = [
    "jws/4_1.rsa_v15_signature.json",
    "jws/4_2.rsa-pss_signature.json",
    "jws/4_3.ecdsa_signature.json",
    "jws/4_4.hmac-sha2_integrity_protection.json",
    "curve25519/jws.json",
]


@pytest.mark.parametrize("path", POSITIVE)
def test_cookbook_compact_examples_verify(path: str) -> None:
    example = _cookbook(path)
    key = dict(example["input"]["key"])
    key["alg"] = example["input"]["alg"]
    token = example["output"]["compact"]
    parts = parse_compact_parts(token)
    assert parts.payload.decode("utf-8") == example["input"]["payload"]
    assert _accepted(key, token)
    # The payload is text: as a JWT it is refused before any key is consulted.
    with pytest.raises(TokenMalformed):
        parse_compact(token)


@pytest.mark.parametrize("path", POSITIVE)
def test_cookbook_examples_with_a_changed_payload_fail(path: str) -> None:
    example = _cookbook(path)
    key = dict(example["input"]["key"])
    key["alg"] = example["input"]["alg"]
    head, _, sig = example["output"]["compact"].split(".")
    assert not _accepted(key, f"{head}.SGVsbG8.{sig}")


def test_cookbook_detached_content_is_refused() -> None:
    example = _cookbook("jws/4_5.signature_with_detached_content.json")
    key = dict(example["input"]["key"])
    key["alg"] = example["input"]["alg"]
    token = example["output"]["compact"]
    assert ".." in token
    assert not _accepted(key, token)


def _json_forms() -> Iterator[Any]:
    paths = sorted(str(p.relative_to(COOKBOOK)) for p in (COOKBOOK / "jws").glob("*.json"))
    paths += sorted(str(p.relative_to(COOKBOOK)) for p in (COOKBOOK / "rfc7797").glob("*.json"))
    paths.append("curve25519/jws.json")
    for path in paths:
        for form in ("json", "json_flat"):
            output = _cookbook(path).get("output", {})
            if form in output:
                yield pytest.param(json.dumps(output[form]), id=f"{path}-{form}")


@pytest.mark.parametrize("token", list(_json_forms()))
def test_cookbook_json_serialisations_are_refused(token: str) -> None:
    with pytest.raises(TokenMalformed) as info:
        parse_compact_parts(token)
    assert info.value.reason == "token_unsupported"


@pytest.mark.parametrize("path", sorted(p.name for p in (COOKBOOK / "rfc7797").glob("*.json")))
def test_rfc7797_unencoded_payload_examples_are_refused(path: str) -> None:
    example = _cookbook(f"rfc7797/{path}")
    key = dict(example["input"]["key"])
    forms = [json.dumps(v) for v in example["output"].values() if not isinstance(v, str)]
    forms += [v for v in example["output"].values() if isinstance(v, str)]
    assert forms
    for token in forms:
        assert not _accepted(key, token)
    # Even with the payload base64url-encoded (a syntactically compact token), b64 is refused.
    header = example["signing"]["protected_b64u"]
    with pytest.raises(TokenMalformed):
        parse_compact_parts(f"{header}.JC4wMg.{example['signing']['sig']}")
