"""Key loading and hygiene (gateway/auth/jwk.py): every rule, each key judged on its own."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import NameOID

from gateway.auth.jwk import (
    MAX_KEY_FILE_BYTES,
    JWKSInvalid,
    KeyRejected,
    hmac_key,
    load_jwk,
    load_jwk_file,
    load_jwks,
    load_pem_public_key_file,
    parse_json_document,
)
from gateway.auth.types import VerificationKey
from tests.support.tokens import b64url, bad_jwks_entries, new_signing_key, rsa_private_key

ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
SECRET_32 = b"0123456789abcdef0123456789abcdef"


def _uint(value: int, length: int | None = None) -> str:
    size = length or max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


def _rsa_jwk(**extra: Any) -> dict[str, Any]:
    return new_signing_key("RS256").public_jwk(**extra)


def _rejected(jwk: Any, *, algorithms: list[str] | None = None, remote: bool = True) -> str:
    with pytest.raises(KeyRejected) as info:
        load_jwk(jwk, algorithms=algorithms or ASYMMETRIC, remote=remote)
    assert str(info.value)  # a sentence for the log
    return info.value.reason


def _verifies(key: VerificationKey, token: str) -> bool:
    head, payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    return key.verify(f"{head}.{payload}".encode(), raw)


# ------------------------------------------------------------------------------- good keys


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256", "PS384", "ES256", "ES384", "ES512", "EdDSA"])
def test_public_jwk_loads_bound_to_its_alg_and_verifies(alg: str) -> None:
    signer = new_signing_key(alg)
    key = load_jwk(signer.public_jwk(), algorithms=ASYMMETRIC, remote=True)
    assert (key.alg, key.kid) == (alg, signer.kid)
    assert key.kty == {"R": "RSA", "P": "RSA", "E": "EC" if alg != "EdDSA" else "OKP"}[alg[0]]
    assert _verifies(key, signer.sign({"sub": "x"}))
    assert not _verifies(key, new_signing_key(alg, slot=1).sign({"sub": "x"}))


def test_ed448_key_loads_for_eddsa() -> None:
    public = ed448.Ed448PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = load_jwk({"kty": "OKP", "crv": "Ed448", "x": b64url(raw)}, algorithms=["EdDSA"], remote=True)
    assert key.alg == "EdDSA"


def _okp_jwk(curve: str, **extra: Any) -> tuple[dict[str, Any], Any]:
    private = (ed25519.Ed25519PrivateKey if curve == "Ed25519" else ed448.Ed448PrivateKey).generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": curve, "x": b64url(raw), **extra}, private


def _signed(alg: str, private: Any) -> str:
    # Signed by hand: PyJWT does not know RFC 9864's names.
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps({"sub": "x"}).encode())
    signature = private.sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{b64url(signature)}"


@pytest.mark.parametrize("curve", ["Ed25519", "Ed448"])
def test_rfc9864_fully_specified_eddsa_binds_only_its_own_curve(curve: str) -> None:
    other = "Ed448" if curve == "Ed25519" else "Ed25519"
    jwk, private = _okp_jwk(curve, alg=curve)
    key = load_jwk(jwk, algorithms=[curve], remote=True)
    assert key.alg == curve and key.kty == "OKP"
    assert _verifies(key, _signed(curve, private))
    # The key's alg names another curve: refused; without alg, bound by the allowed list.
    assert _rejected(_okp_jwk(other, alg=curve)[0], algorithms=[curve, other]) == "alg_key_mismatch"
    assert load_jwk(_okp_jwk(curve)[0], algorithms=[other, curve], remote=True).alg == curve
    assert _rejected(_okp_jwk(curve)[0], algorithms=[other]) == "no_allowed_alg"
    assert load_jwk(_okp_jwk(curve)[0], algorithms=["EdDSA", curve], remote=True).alg == "EdDSA"


def test_key_without_alg_binds_to_first_allowed_algorithm_that_fits() -> None:
    jwk = _rsa_jwk(include_alg=False)
    assert load_jwk(jwk, algorithms=["ES256", "PS256", "RS256"], remote=True).alg == "PS256"
    assert load_jwk(jwk, algorithms=["RS384", "PS256"], remote=True).alg == "RS384"
    ec384 = new_signing_key("ES384").public_jwk(include_alg=False)
    assert load_jwk(ec384, algorithms=["ES256", "ES384"], remote=True).alg == "ES384"
    assert _rejected(ec384, algorithms=["ES256", "RS256"]) == "no_allowed_alg"


def test_key_use_sig_and_key_ops_verify_are_accepted() -> None:
    assert load_jwk(_rsa_jwk(key_ops=["sign", "verify"]), algorithms=ASYMMETRIC, remote=True)
    assert load_jwk(_rsa_jwk(use="sig"), algorithms=ASYMMETRIC, remote=True)


def test_x5c_and_unknown_members_are_ignored() -> None:
    key = load_jwk(_rsa_jwk(x5c=["garbage"], ext=True, whatever={"a": 1}), algorithms=ASYMMETRIC, remote=True)
    assert key.alg == "RS256"


# ------------------------------------------------------------------------- alg binding


@pytest.mark.parametrize(
    "alg", ["ES521", "none", "None", "RS256 ", "rs256", "A256GCM", "RSA-OAEP", 5, None, ["RS256"]]
)
def test_unknown_or_malformed_alg_is_refused(alg: Any) -> None:
    jwk = _rsa_jwk()
    jwk["alg"] = alg
    if alg is None:
        jwk.pop("alg")
        assert load_jwk(jwk, algorithms=ASYMMETRIC, remote=True).alg == "RS256"
    else:
        assert _rejected(jwk) == "alg_unknown"


def test_alg_outside_the_allow_list_is_refused() -> None:
    assert _rejected(_rsa_jwk(), algorithms=["PS256", "ES256"]) == "alg_not_allowed"


@pytest.mark.parametrize(
    ("signer_alg", "label"),
    [("RS256", "ES256"), ("ES256", "RS256"), ("ES256", "EdDSA"), ("EdDSA", "ES256"), ("ES384", "ES256"),
     ("ES512", "ES384"), ("ES256", "ES512"), ("RS256", "HS256")],
)  # fmt: skip
def test_alg_that_does_not_fit_the_key_is_refused(signer_alg: str, label: str) -> None:
    jwk = new_signing_key(signer_alg).public_jwk(alg=label)
    assert _rejected(jwk, algorithms=[*ASYMMETRIC, "HS256"]) == "alg_key_mismatch"


# ---------------------------------------------------------------------------- hygiene


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"use": "enc"}, "use_enc"),
        ({"use": "signature"}, "use_invalid"),
        ({"use": 1}, "use_invalid"),
        ({"key_ops": ["encrypt"]}, "key_ops_no_verify"),
        ({"key_ops": ["sign"]}, "key_ops_no_verify"),
        ({"key_ops": []}, "key_ops_no_verify"),
        ({"key_ops": "verify"}, "key_ops_no_verify"),
        ({"key_ops": [1, "verify"]}, "key_ops_no_verify"),
        ({"kid": 7}, "kid_not_string"),
        ({"kid": ["a"]}, "kid_not_string"),
        ({"kty": "XYZ"}, "kty_unsupported"),
        ({"kty": "rsa"}, "kty_unsupported"),
        ({"kty": ["RSA"]}, "kty_unsupported"),
        ({"d": "AQAB"}, "private_key"),
        ({"p": "AQAB"}, "private_key"),
    ],
)
def test_rsa_jwk_hygiene(extra: dict[str, Any], reason: str) -> None:
    assert _rejected(_rsa_jwk(**extra)) == reason


@pytest.mark.parametrize("junk", [42, "string", None, [], 1.5, True])
def test_non_object_entry_is_refused(junk: Any) -> None:
    assert _rejected(junk) == "not_an_object"


def test_missing_kty_is_refused() -> None:
    jwk = _rsa_jwk()
    del jwk["kty"]
    assert _rejected(jwk) == "kty_missing"


def test_private_jwk_is_refused_locally_too() -> None:
    private = rsa_private_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private))
    assert _rejected(jwk, remote=False) == "private_key"
    ec_private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1())))
    assert _rejected(ec_private, remote=False) == "private_key"


def test_rsa_1024_is_refused() -> None:
    numbers = rsa_private_key(0, 1024).public_key().public_numbers()
    assert _rejected({"kty": "RSA", "n": _uint(numbers.n), "e": "AQAB"}) == "rsa_too_small"


def test_rsa_larger_than_8192_bits_is_refused() -> None:
    n = (1 << 8200) | 1
    assert _rejected({"kty": "RSA", "n": _uint(n), "e": "AQAB"}) == "rsa_too_large"


@pytest.mark.parametrize("e", [1, 3, 17, 65536, 65538, 2**256 + 1])
def test_weak_or_even_rsa_exponent_is_refused(e: int) -> None:
    assert _rejected(_rsa_jwk(e=_uint(e))) == "rsa_bad_exponent"


def test_rsa_exponent_65537_and_larger_odd_is_accepted() -> None:
    # A larger odd exponent is legal (cryptography accepts it as a public key).
    assert load_jwk(_rsa_jwk(e=_uint(65539)), algorithms=ASYMMETRIC, remote=True).alg == "RS256"


@pytest.mark.parametrize("n", ["", "!!not-base64!!", "AQAB=", "a b", "A", None, 12345])
def test_malformed_rsa_modulus_is_refused(n: Any) -> None:
    assert _rejected(_rsa_jwk(n=n)) == "rsa_bad_params"


def test_even_rsa_modulus_is_refused() -> None:
    n = rsa_private_key().public_key().public_numbers().n + 1
    assert _rejected(_rsa_jwk(n=_uint(n))) == "rsa_bad_params"


def test_ec_point_off_the_curve_is_refused() -> None:
    jwk = new_signing_key("ES256").public_jwk()
    y = int.from_bytes(base64.urlsafe_b64decode(jwk["y"] + "=="), "big")
    assert _rejected({**jwk, "y": _uint((y + 1) % 2**256, 32)}) == "ec_point_invalid"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"crv": "secp256k1"}, "crv_unsupported"),
        ({"crv": "P-192"}, "crv_unsupported"),
        ({"crv": None}, "crv_unsupported"),
        ({"x": None}, "ec_bad_params"),
        ({"x": "AAAA"}, "ec_bad_params"),
        ({"y": b64url(b"\x00" * 33)}, "ec_bad_params"),
    ],
)
def test_ec_jwk_hygiene(change: dict[str, Any], reason: str) -> None:
    jwk = {**new_signing_key("ES256").public_jwk(), **change}
    if change.get("crv", "") is None:
        del jwk["crv"]
    assert _rejected(jwk) == reason


def test_ec_coordinates_must_be_full_length() -> None:
    # RFC 7518 6.2.1.2: a P-256 coordinate is always 32 bytes, leading zeros included.
    jwk = new_signing_key("ES256").public_jwk()
    x = base64.urlsafe_b64decode(jwk["x"] + "==")
    assert _rejected({**jwk, "x": b64url(x[1:])}) == "ec_bad_params"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"crv": "X25519"}, "crv_unsupported"),
        ({"crv": "X448"}, "crv_unsupported"),
        ({"x": b64url(b"\x01" * 31)}, "okp_bad_params"),
        ({"d": b64url(b"\x01" * 32)}, "private_key"),
    ],
)
def test_okp_jwk_hygiene(change: dict[str, Any], reason: str) -> None:
    assert _rejected({**new_signing_key("EdDSA").public_jwk(), **change}) == reason


def test_roca_fingerprint_not_raised_for_ordinary_keys() -> None:
    for slot in range(3):
        jwk = new_signing_key("RS256", slot=slot).public_jwk()
        assert load_jwk(jwk, algorithms=ASYMMETRIC, remote=True)


# ------------------------------------------------------------------------------ HMAC in JWKs


def _oct(secret: bytes, **extra: Any) -> dict[str, Any]:
    return {"kty": "oct", "k": b64url(secret), **extra}


def test_oct_key_in_remote_jwks_is_refused() -> None:
    assert _rejected(_oct(SECRET_32, alg="HS256"), algorithms=["HS256"], remote=True) == "oct_in_remote_jwks"


def test_oct_key_loads_locally_with_hash_length() -> None:
    key = load_jwk(_oct(SECRET_32, alg="HS256", kid="h"), algorithms=["HS256"], remote=False)
    assert (key.alg, key.kid, key.kty) == ("HS256", "h", "oct")
    assert _verifies(key, jwt.encode({"a": 1}, SECRET_32, algorithm="HS256"))


@pytest.mark.parametrize(("alg", "size"), [("HS256", 31), ("HS384", 47), ("HS512", 63), ("HS256", 0)])
def test_oct_key_shorter_than_hash_is_refused(alg: str, size: int) -> None:
    assert _rejected(_oct(b"k" * size, alg=alg), algorithms=[alg], remote=False) == "hmac_too_short"


def test_oct_key_without_alg_binds_to_first_algorithm_it_is_long_enough_for() -> None:
    key = load_jwk(_oct(b"k" * 48), algorithms=["HS512", "HS384", "HS256"], remote=False)
    assert key.alg == "HS384"
    assert _rejected(_oct(b"k" * 20), algorithms=["HS256"], remote=False) == "hmac_too_short"
    assert _rejected(_oct(SECRET_32), algorithms=["RS256"], remote=False) == "no_allowed_alg"


def test_oct_key_with_non_hmac_alg_is_refused() -> None:
    assert _rejected(_oct(SECRET_32, alg="RS256"), algorithms=["RS256"], remote=False) == "alg_key_mismatch"


# ------------------------------------------------------------------------------------ JWK Sets


def test_bad_keys_never_spoil_the_good_ones() -> None:
    good = [new_signing_key(alg) for alg in ("RS256", "ES256", "EdDSA")]
    bad = bad_jwks_entries()
    document = {
        "keys": [bad[0][1], good[0].public_jwk(), *(entry for _, entry in bad[1:]), good[1].public_jwk()]
    }
    document["keys"].append(good[2].public_jwk())
    keyset = load_jwks(document, algorithms=ASYMMETRIC, remote=True)
    assert [k.kid for k in keyset.keys] == [g.kid for g in good]
    assert [r.reason for r in keyset.rejected] == [reason for reason, _ in bad]
    assert keyset.rejected[0].index == 0 and keyset.rejected[1].index == 2
    assert keyset.rejected[0].kid == "bad-oct"
    kid_rejection = next(r for r in keyset.rejected if r.reason == "kid_not_string")
    assert kid_rejection.kid is None  # a non-string kid is never echoed


def test_duplicate_kid_among_usable_keys_refuses_the_document() -> None:
    a = new_signing_key("RS256", slot=0).public_jwk()
    b = new_signing_key("RS256", slot=1).public_jwk(kid=a["kid"])
    with pytest.raises(JWKSInvalid) as info:
        load_jwks({"keys": [a, b]}, algorithms=ASYMMETRIC, remote=True)
    assert info.value.reason == "duplicate_kid"


def test_same_kid_on_a_skipped_encryption_key_is_not_a_duplicate() -> None:
    # RFC 7517 4.5 allows a shared kid across "equivalent alternatives"; only usable keys count.
    a = new_signing_key("RS256", slot=0).public_jwk()
    enc = new_signing_key("RS256", slot=1).public_jwk(kid=a["kid"], use="enc", alg="RSA-OAEP")
    keyset = load_jwks({"keys": [a, enc]}, algorithms=ASYMMETRIC, remote=True)
    assert [k.kid for k in keyset.keys] == [a["kid"]]
    assert keyset.rejected[0].reason == "use_enc"


def test_several_keys_without_kid_are_fine() -> None:
    keys = [new_signing_key("ES256", slot=i).public_jwk(include_kid=False) for i in range(3)]
    assert len(load_jwks({"keys": keys}, algorithms=["ES256"], remote=True).keys) == 3


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ([], "not_an_object"),
        ("keys", "not_an_object"),
        (None, "not_an_object"),
        ({}, "keys_not_array"),
        ({"keys": {}}, "keys_not_array"),
        ({"keys": "x"}, "keys_not_array"),
        ({"keys": []}, "no_usable_keys"),
        ({"keys": [42, {"kty": "RSA", "use": "enc"}]}, "no_usable_keys"),
    ],
)
def test_unusable_documents_are_refused(document: Any, reason: str) -> None:
    with pytest.raises(JWKSInvalid) as info:
        load_jwks(document, algorithms=ASYMMETRIC, remote=True)
    assert info.value.reason == reason


def test_no_usable_keys_reports_each_rejection() -> None:
    with pytest.raises(JWKSInvalid) as info:
        load_jwks({"keys": [_rsa_jwk(use="enc"), 42]}, algorithms=ASYMMETRIC, remote=True)
    assert [(r.index, r.reason) for r in info.value.rejected] == [(0, "use_enc"), (1, "not_an_object")]


def test_local_set_mixing_hmac_and_public_keys_is_refused() -> None:
    document = {"keys": [_oct(SECRET_32, alg="HS256", kid="h"), _rsa_jwk()]}
    with pytest.raises(JWKSInvalid) as info:
        load_jwks(document, algorithms=["HS256", "RS256"], remote=False)
    assert info.value.reason == "mixed_key_set"
    # Remotely the oct key is simply skipped.
    keyset = load_jwks(document, algorithms=["HS256", "RS256"], remote=True)
    assert [k.alg for k in keyset.keys] == ["RS256"]


# ---------------------------------------------------------------------------------- strict JSON


@pytest.mark.parametrize(
    "data",
    [
        b'{"keys": [], "keys": []}',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b"\xff\xfe{}",
        b"\xef\xbb\xbf{}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"n": 1' + b"0" * 5000 + b"}",
        b"",
        b"<html></html>",
        b'{"keys": [',
    ],
    ids=["duplicate", "nan", "infinity", "utf16", "bom", "deep", "huge-int", "empty", "html", "truncated"],
)
def test_parse_json_document_is_strict(data: bytes) -> None:
    with pytest.raises(JWKSInvalid) as info:
        parse_json_document(data)
    assert info.value.reason == "invalid_json"


def test_parse_json_document_accepts_plain_json() -> None:
    assert parse_json_document(b'{"keys": [{"kty": "RSA"}]}') == {"keys": [{"kty": "RSA"}]}


# ------------------------------------------------------------------------------------ PEM files


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _spki(public: Any) -> bytes:
    return bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _certificate(private: Any) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now - datetime.timedelta(days=1))  # expired: only the key matters
        .sign(private, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_pem_spki_rsa_key(tmp_path: Path) -> None:
    signer = new_signing_key("RS256")
    path = _write(tmp_path, "k.pem", _spki(signer.private_key.public_key()))
    key = load_pem_public_key_file(path, algorithms=["RS256"])
    assert (key.alg, key.kid, key.kty) == ("RS256", None, "RSA")
    assert _verifies(key, signer.sign({"a": 1}))


def test_pem_pkcs1_rsa_key(tmp_path: Path) -> None:
    signer = new_signing_key("RS256")
    pem = signer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    assert pem.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    key = load_pem_public_key_file(_write(tmp_path, "k.pem", pem), algorithms=["PS256", "RS256"])
    assert key.alg == "PS256"  # first allowed algorithm that fits


def test_pem_certificate_key_even_when_expired(tmp_path: Path) -> None:
    signer = new_signing_key("ES256")
    path = _write(tmp_path, "cert.pem", _certificate(signer.private_key))
    key = load_pem_public_key_file(path, algorithms=["RS256", "ES256"])
    assert key.alg == "ES256"
    assert _verifies(key, signer.sign({"a": 1}))


@pytest.mark.parametrize("alg", ["ES384", "EdDSA"])
def test_pem_ec_and_ed25519_keys(tmp_path: Path, alg: str) -> None:
    signer = new_signing_key(alg)
    key = load_pem_public_key_file(
        _write(tmp_path, "k.pem", _spki(signer.private_key.public_key())), algorithms=[alg]
    )
    assert key.alg == alg


def _pem_rejected(path: Path, algorithms: list[str] | None = None) -> str:
    with pytest.raises(KeyRejected) as info:
        load_pem_public_key_file(path, algorithms=algorithms or ["RS256", "ES256"])
    return info.value.reason


def test_pem_hygiene(tmp_path: Path) -> None:
    private = rsa_private_key()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    spki = _spki(private.public_key())
    small = _spki(rsa_private_key(0, 1024).public_key())
    p256 = _spki(ec.generate_private_key(ec.SECP256R1()).public_key())
    assert _pem_rejected(_write(tmp_path, "a", private_pem)) == "private_key"
    assert _pem_rejected(_write(tmp_path, "b", spki + spki)) == "pem_multiple_blocks"
    assert _pem_rejected(_write(tmp_path, "c", b"ssh-rsa AAAA")) == "not_pem"
    assert (
        _pem_rejected(_write(tmp_path, "d", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
        == "pem_invalid"
    )
    assert _pem_rejected(_write(tmp_path, "e", small)) == "rsa_too_small"
    assert _pem_rejected(_write(tmp_path, "f", p256), ["RS256"]) == "no_allowed_alg"
    assert _pem_rejected(_write(tmp_path, "g", b"-----BEGIN DSA PARAMETERS-----\n")) == "not_pem"
    assert _pem_rejected(_write(tmp_path, "h", b" " * (MAX_KEY_FILE_BYTES + 1))) == "file_too_large"


def test_pem_x25519_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import x25519

    pem = _spki(x25519.X25519PrivateKey.generate().public_key())
    assert _pem_rejected(_write(tmp_path, "x", pem), ["EdDSA"]) == "kty_unsupported"


def test_missing_key_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_pem_public_key_file(tmp_path / "absent.pem", algorithms=["RS256"])
    with pytest.raises(OSError):
        load_jwk_file(tmp_path / "absent.json", algorithms=["RS256"])


# ------------------------------------------------------------------------------ JWK(S) files


def test_jwk_file_single_key_and_set(tmp_path: Path) -> None:
    a, b = new_signing_key("RS256"), new_signing_key("ES256")
    single = _write(tmp_path, "one.json", json.dumps(a.public_jwk()).encode())
    assert [k.kid for k in load_jwk_file(single, algorithms=ASYMMETRIC)] == [a.kid]
    both = _write(tmp_path, "set.json", json.dumps({"keys": [a.public_jwk(), b.public_jwk(), 42]}).encode())
    assert [k.kid for k in load_jwk_file(both, algorithms=ASYMMETRIC)] == [a.kid, b.kid]


def test_jwk_file_problems(tmp_path: Path) -> None:
    with pytest.raises(KeyRejected, match="private"):
        load_jwk_file(
            _write(tmp_path, "p.json", jwt.algorithms.RSAAlgorithm.to_jwk(rsa_private_key()).encode()),
            algorithms=ASYMMETRIC,
        )
    with pytest.raises(JWKSInvalid) as info:
        load_jwk_file(_write(tmp_path, "bad.json", b"{not json"), algorithms=ASYMMETRIC)
    assert info.value.reason == "invalid_json"
    with pytest.raises(JWKSInvalid) as info:
        load_jwk_file(
            _write(tmp_path, "none.json", b'{"keys": [{"kty": "RSA", "use": "enc"}]}'), algorithms=ASYMMETRIC
        )
    assert info.value.reason == "no_usable_keys"


# -------------------------------------------------------------------------------- HMAC secrets


def test_hmac_secret_of_hash_length_is_accepted_and_verifies() -> None:
    key = hmac_key(SECRET_32, algorithm="HS256", allow_weak=False)
    assert (key.alg, key.kid, key.kty, key.prepared) == ("HS256", None, "oct", SECRET_32)
    assert _verifies(key, jwt.encode({"a": 1}, SECRET_32, algorithm="HS256"))


@pytest.mark.parametrize(("alg", "size"), [("HS256", 31), ("HS384", 47), ("HS512", 63), ("HS512", 40)])
def test_short_hmac_secret_needs_allow_weak(alg: str, size: int) -> None:
    with pytest.raises(KeyRejected) as info:
        hmac_key(b"s" * size, algorithm=alg, allow_weak=False)
    assert info.value.reason == "hmac_too_short"
    assert "s" * size not in str(info.value)  # never echo the secret
    assert hmac_key(b"s" * size, algorithm=alg, allow_weak=True).alg == alg


def test_empty_hmac_secret_is_refused_even_when_weak_allowed() -> None:
    with pytest.raises(KeyRejected) as info:
        hmac_key(b"", algorithm="HS256", allow_weak=True)
    assert info.value.reason == "hmac_too_short"


def _public_material() -> dict[str, bytes]:
    public = rsa_private_key().public_key()
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = _spki(public)
    jwk = new_signing_key("RS256").public_jwk()
    body = b"".join(pem.splitlines()[1:-1])
    return {
        "spki_pem": pem,
        "spki_pem_no_newline": pem.rstrip(b"\n"),
        "pkcs1_pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "certificate": _certificate(rsa_private_key()),
        "der": der,
        "pem_body_without_armour": body,
        "openssh_rsa": public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ),
        "openssh_ed25519": ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "openssh_ecdsa": ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "jwk_json": json.dumps(jwk).encode(),
        "jwks_json": json.dumps({"keys": [jwk]}).encode(),
        "jwk_json_indented": b"  \n" + json.dumps(jwk, indent=2).encode(),
    }


@pytest.mark.parametrize("name", list(_public_material()))
@pytest.mark.parametrize("alg", ["HS256", "HS512"])
def test_public_key_material_is_never_an_hmac_secret(name: str, alg: str) -> None:
    material = _public_material()[name]
    with pytest.raises(KeyRejected) as info:
        hmac_key(material, algorithm=alg, allow_weak=True)
    assert info.value.reason == "secret_is_public_key"


def test_random_secret_starting_like_der_is_still_accepted() -> None:
    assert hmac_key(b"\x30\x82" + b"z" * 40, algorithm="HS256", allow_weak=False)
    assert hmac_key(b"MII" + b"A" * 61, algorithm="HS256", allow_weak=False)


def test_hmac_key_needs_an_hmac_algorithm() -> None:
    with pytest.raises(KeyRejected) as info:
        hmac_key(SECRET_32, algorithm="RS256", allow_weak=False)
    assert info.value.reason == "alg_key_mismatch"


def test_rsa_public_numbers_from_foreign_library_round_trip() -> None:
    # A JWK built by hand (not by PyJWT) with a leading zero octet in n still loads.
    numbers = rsa_private_key(1).public_key().public_numbers()
    n = b"\x00" + numbers.n.to_bytes(256, "big")
    key = load_jwk({"kty": "RSA", "n": b64url(n), "e": "AQAB"}, algorithms=["RS256"], remote=True)
    assert key.alg == "RS256"


# ------------------------------------------------- encoded public keys pasted as HMAC secrets


def _encoded_public_material() -> dict[str, bytes]:
    rsa_public = rsa_private_key().public_key()
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key()
    ed_public = ed25519.Ed25519PrivateKey.generate().public_key()
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = rsa_public.public_bytes(serialization.Encoding.DER, spki)
    pkcs1 = rsa_public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    ec_der = ec_public.public_bytes(serialization.Encoding.DER, spki)
    ed_der = ed_public.public_bytes(serialization.Encoding.DER, spki)
    cert_der = x509.load_pem_x509_certificate(_certificate(rsa_private_key())).public_bytes(
        serialization.Encoding.DER
    )
    return {
        "der_b64url": b64url(der).encode(),
        "der_b64url_padded": base64.urlsafe_b64encode(der),
        "der_b64_unpadded": base64.b64encode(der).rstrip(b"="),
        "der_b64_wrapped": base64.encodebytes(der),
        "pkcs1_der_b64url": b64url(pkcs1).encode(),
        "ec_der_b64url": b64url(ec_der).encode(),
        "ed25519_der_b64url": b64url(ed_der).encode(),
        "ed25519_der_b64": base64.b64encode(ed_der),
        "certificate_der_b64url": b64url(cert_der).encode(),
        "der_hex": der.hex().encode(),
        "der_hex_upper": der.hex().upper().encode(),
        "der_hex_colons": der.hex(":").encode(),
        "der_hex_spaced": b"\n".join(der[i : i + 16].hex(" ").encode() for i in range(0, len(der), 16)),
        "ec_der_hex": ec_der.hex().encode(),
        "ed25519_der_hex": ed_der.hex().encode(),
        "certificate_der_hex": cert_der.hex().encode(),
    }


@pytest.mark.parametrize("name", list(_encoded_public_material()))
def test_encoded_public_keys_and_moduli_are_never_an_hmac_secret(name: str) -> None:
    material = _encoded_public_material()[name]
    with pytest.raises(KeyRejected) as info:
        hmac_key(material, algorithm="HS256", allow_weak=True)
    assert info.value.reason == "secret_is_public_key"


def test_ordinary_secrets_in_every_text_encoding_are_accepted() -> None:
    import secrets

    for size in (32, 48, 64, 128):
        raw = secrets.token_bytes(size)
        for secret in (
            raw.hex().encode(),
            raw.hex(":").encode(),
            base64.b64encode(raw),
            base64.urlsafe_b64encode(raw),
            b64url(raw).encode(),
        ):
            assert hmac_key(secret, algorithm="HS256", allow_weak=False).alg == "HS256"


def test_a_long_random_base64url_secret_is_accepted() -> None:
    # secrets.token_urlsafe(256) has the very form of a 2048-bit JWK n: a JWK n pasted on its
    # own is therefore not looked for (a heuristic refused about 3% of such secrets).
    import secrets

    for _ in range(50):
        assert hmac_key(secrets.token_urlsafe(256).encode(), algorithm="HS256", allow_weak=False)
