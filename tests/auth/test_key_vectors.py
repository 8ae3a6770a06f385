"""Third-party vectors through the key loader: Wycheproof JWK/JWS keys and the RFC 7520 cookbook.

Remote key sets are loaded with ``remote=True`` (the JWKS path); sets of symmetric keys, which
the gateway only ever takes from configuration, with ``remote=False``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.jwk import JWKSInvalid, KeyRejected, hmac_key, load_jwk, load_jwks
from gateway.auth.keys import StaticKeys
from gateway.errors import AlgorithmNotAllowed
from tests.support.tokens import b64url_decode, signature_verifies

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
WYCHEPROOF = VECTORS / "wycheproof"
COOKBOOK = VECTORS / "jose-cookbook"

ALL = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
HMAC = ["HS256", "HS384", "HS512"]
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth"}

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason="shared vectors not available")


def _load(name: str) -> Any:
    return json.loads((WYCHEPROOF / name).read_text())


def _group_key_document(group: dict[str, Any]) -> Any:
    return group.get("public", group.get("private"))


def _is_symmetric(document: Any) -> bool:
    keys = document.get("keys", [document]) if isinstance(document, dict) else []
    return all(isinstance(k, dict) and k.get("kty") == "oct" for k in keys)


# ------------------------------------------------------------------ Wycheproof json_web_key_test

#: The outcome per tcId: "valid" (the key set loads and the token's signature verifies), or the
#: reason the set, the token's key or its signature is refused.
JWK_EXPECTED = {
    1: "oct_in_remote_jwks",  # mixed symmetric/asymmetric set fetched remotely: the HS256 key is skipped
    2: "valid",
    3: "bad_signature",
    4: "duplicate_kid",
    5: "valid",
    6: "use_enc",
    7: "rsa_roca",
    8: "rsa_too_small",
    9: "rsa_bad_exponent",
    10: "hmac_too_short",
    11: "hmac_too_short",
    12: "hmac_too_short",
    13: "valid",
    14: "valid",
    15: "valid",
    16: "hmac_too_short",
    17: "hmac_too_short",
    18: "hmac_too_short",
    19: "alg_unknown",  # ES521 label
    20: "alg_unknown",  # ES224
    21: "use_enc",
    22: "ec_point_invalid",
    23: "ec_bad_params",  # P-256 coordinates labelled P-384
    24: "rsa_bad_params",  # EC members labelled kty RSA
    25: "alg_unknown",  # A256GCM key offered for HS256
    26: "alg_unknown",  # A256KW key offered for HS256
}


def _jwk_cases() -> Iterator[Any]:
    for group in _load("json_web_key_test.json")["testGroups"]:
        for test in group["tests"]:
            yield pytest.param(group, test, id=f"tc{test['tcId']}-{test['comment']}")


def _jwk_outcome(group: dict[str, Any], test: dict[str, Any]) -> str:
    document = _group_key_document(group)
    symmetric = _is_symmetric(document)
    try:
        keyset = load_jwks(document, algorithms=HMAC if symmetric else ALL, remote=not symmetric)
    except JWKSInvalid as exc:
        return exc.rejected[0].reason if exc.reason == "no_usable_keys" else exc.reason
    header = json.loads(b64url_decode(test["jws"].split(".")[0]))
    skipped = {r.kid: r.reason for r in keyset.rejected}
    if header.get("kid") in skipped:
        return skipped[header["kid"]]
    lookup = StaticKeys("wycheproof", keyset.keys, algorithms=HMAC if symmetric else ALL, source="jwks_file")
    return "valid" if signature_verifies(lookup, test["jws"]) else "bad_signature"


@pytest.mark.parametrize(("group", "test"), list(_jwk_cases()))
def test_wycheproof_json_web_key(group: dict[str, Any], test: dict[str, Any]) -> None:
    outcome = _jwk_outcome(group, test)
    assert outcome == JWK_EXPECTED[test["tcId"]]
    assert (outcome == "valid") == (test["result"] == "valid")


def test_wycheproof_json_web_key_every_case_has_an_expectation() -> None:
    ids = {t["tcId"] for g in _load("json_web_key_test.json")["testGroups"] for t in g["tests"]}
    assert ids == set(JWK_EXPECTED)


def test_wycheproof_mixed_key_set_loaded_locally_is_refused_whole() -> None:
    group = _load("json_web_key_test.json")["testGroups"][0]
    assert group["comment"] == "jws_mixedSymmetryKeyset"
    with pytest.raises(JWKSInvalid) as info:
        load_jwks(group["private"], algorithms=[*HMAC, *ALL], remote=False)
    assert info.value.reason == "mixed_key_set"


def test_wycheproof_private_key_sets_are_refused() -> None:
    # Every asymmetric group also ships its private key set: never usable as verification keys.
    for group in _load("json_web_key_test.json")["testGroups"]:
        for jwk in group["private"]["keys"]:
            if jwk["kty"] != "oct" and PRIVATE_MEMBERS & jwk.keys():
                for remote in (True, False):
                    with pytest.raises(KeyRejected) as info:
                        load_jwk(jwk, algorithms=ALL, remote=remote)
                    assert info.value.reason == "private_key"


# ---------------------------------------------------------- Wycheproof json_web_signature_test

#: Per group (by position): the algorithm its key is bound to, or the reason it is refused.
JWS_GROUP_EXPECTED = [
    "HS256", "ES256", "RS256", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
    "RS256", "PS256", "alg_unknown", "HS256",  # rfc7520: the ES521 label is refused
    "RS256", "PS256", "alg_unknown", "HS256",  # rfc7520WithKeyOps
    "use_enc", "use_enc", "key_ops_no_verify", "key_ops_no_verify",
    "HS256", "ES256",
]  # fmt: skip

#: Vectors a strict loader cannot satisfy (see tests/vectors/README.md).
JWS_QUIRKS = {
    346: "vector quirk: the key labelled PS256 is used for the PS384 figure; strict binding refuses",
    350: "vector quirk: the key labelled PS256 is used for the PS384 figure; strict binding refuses",
    347: "vector quirk: the key is labelled ES521 (the algorithm is ES512); the key is refused",
    351: "vector quirk: the key is labelled ES521 (the algorithm is ES512); the key is refused",
    372: "vector quirk: contains '?' but is labelled valid",
    373: "vector quirk: contains '?' but is labelled valid",
}


def _load_group_key(group: dict[str, Any]) -> str:
    document = _group_key_document(group)
    symmetric = _is_symmetric(document)
    try:
        key = load_jwk(document, algorithms=HMAC if symmetric else ALL, remote=not symmetric)
    except KeyRejected as exc:
        return exc.reason
    return key.alg


def _jws_groups() -> list[Any]:
    groups = _load("json_web_signature_test.json")["testGroups"]
    return [pytest.param(i, g, id=f"{i}-{g['comment']}") for i, g in enumerate(groups)]


@pytest.mark.parametrize(("index", "group"), _jws_groups())
def test_wycheproof_signature_group_key(index: int, group: dict[str, Any]) -> None:
    assert _load_group_key(group) == JWS_GROUP_EXPECTED[index]


def _is_compact(jws: Any) -> bool:
    if not isinstance(jws, str) or jws.count(".") != 2:
        return False
    try:
        json.loads(b64url_decode(jws.split(".")[0]))
        b64url_decode(jws.split(".")[2])
    except ValueError:
        return False
    return True


def _signature_cases() -> Iterator[Any]:
    """Valid vectors, and invalid ones whose only fault is the signature itself."""
    for group in _load("json_web_signature_test.json")["testGroups"]:
        signature_faults = {"ModifiedSignature", "ModifiedPadding", "WrongPrimitive"}
        for test in group["tests"]:
            relevant = (
                test["result"] == "valid"
                or signature_faults & set(test["flags"])
                or group["comment"] == "SpecialCaseEs256"
            )
            if not relevant or not _is_compact(test["jws"]) and test["tcId"] not in JWS_QUIRKS:
                continue
            marks = [pytest.mark.xfail(reason=JWS_QUIRKS[test["tcId"]])] if test["tcId"] in JWS_QUIRKS else []
            yield pytest.param(group, test, id=f"tc{test['tcId']}", marks=marks)


@pytest.mark.parametrize(("group", "test"), list(_signature_cases()))
def test_wycheproof_signature_with_loaded_key(group: dict[str, Any], test: dict[str, Any]) -> None:
    document = _group_key_document(group)
    symmetric = _is_symmetric(document)
    algorithms = HMAC if symmetric else ALL
    try:
        key = load_jwk(document, algorithms=algorithms, remote=not symmetric)
    except KeyRejected:
        verified = False
    else:
        lookup = StaticKeys("wycheproof", [key], algorithms=algorithms, source="jwks_file")
        try:
            verified = signature_verifies(lookup, test["jws"])
        except AlgorithmNotAllowed:  # the header names another algorithm than the key's
            verified = False
    assert verified == (test["result"] == "valid")


# ---------------------------------------------------------------------------- RFC 7520 cookbook


def _cookbook(path: str) -> Any:
    return json.loads((COOKBOOK / path).read_text())


@pytest.mark.parametrize(
    ("name", "remote", "expected"),
    [
        ("3_1.ec_public_key.json", True, "ES512"),
        ("3_2.ec_private_key.json", True, "private_key"),
        ("3_2.ec_private_key.json", False, "private_key"),
        ("3_3.rsa_public_key.json", True, "RS256"),  # no alg: first allowed RSA algorithm
        ("3_4.rsa_private_key.json", True, "private_key"),
        ("3_4.rsa_private_key.json", False, "private_key"),
        ("3_5.symmetric_key_mac_computation.json", True, "oct_in_remote_jwks"),
        ("3_5.symmetric_key_mac_computation.json", False, "HS256"),
        ("3_6.symmetric_key_encryption.json", True, "oct_in_remote_jwks"),
        ("3_6.symmetric_key_encryption.json", False, "use_enc"),
    ],
)
def test_cookbook_keys(name: str, remote: bool, expected: str) -> None:
    jwk = _cookbook(f"jwk/{name}")
    try:
        outcome = load_jwk(jwk, algorithms=[*ALL, *HMAC], remote=remote).alg
    except KeyRejected as exc:
        outcome = exc.reason
    assert outcome == expected


def test_cookbook_symmetric_key_as_static_hmac_secret() -> None:
    jwk = _cookbook("jwk/3_5.symmetric_key_mac_computation.json")
    key = hmac_key(b64url_decode(jwk["k"]), algorithm="HS256", allow_weak=False)
    compact = _cookbook("jws/4_4.hmac-sha2_integrity_protection.json")["output"]["compact"]
    lookup = StaticKeys("cookbook", [key], algorithms=["HS256"], source="secret")
    assert signature_verifies(lookup, compact)  # the token's kid matches no key: kid-less static key serves


@pytest.mark.parametrize(
    "path",
    [
        "jws/4_1.rsa_v15_signature.json",
        "jws/4_2.rsa-pss_signature.json",
        "jws/4_3.ecdsa_signature.json",
        "jws/4_4.hmac-sha2_integrity_protection.json",
        "curve25519/jws.json",
    ],
)
def test_cookbook_signatures_verify_with_loaded_public_keys(path: str) -> None:
    example = _cookbook(path)
    alg = example["input"]["alg"]
    jwk = {k: v for k, v in example["input"]["key"].items() if k not in PRIVATE_MEMBERS}
    symmetric = jwk["kty"] == "oct"
    key = load_jwk({**jwk, "alg": alg}, algorithms=[alg], remote=not symmetric)
    lookup = StaticKeys("cookbook", [key], algorithms=[alg], source="jwks_file")
    compact = example["output"]["compact"]
    assert signature_verifies(lookup, compact)
    head, payload, signature = compact.split(".")
    tampered = f"{head}.{payload}A.{signature}"
    assert not signature_verifies(lookup, tampered)
