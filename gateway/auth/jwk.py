"""Key loading and hygiene: JWK, JWK Set, PEM and HMAC secrets -> :class:`VerificationKey`.

Everything here is pure (the only I/O is reading a file path the caller names) and runs at load
time, never per request. Each key is judged on its own: a bad key in a JWK Set is skipped with a
stable reason code and never spoils the good keys next to it.

Rules applied to every key, whatever its source:

- ``use`` must be absent or ``"sig"``; ``key_ops`` must be absent or a list containing
  ``"verify"``.
- Asymmetric keys must be public: a JWK carrying private members (``d``, ``p``, ``q``...) or a
  PEM private key is refused. A verifier never needs a private key, a remote JWKS that
  publishes one has leaked it (anyone could forge with it), and a local one is a deployment
  mistake that widens the blast radius. We refuse rather than silently use the public half.
- Symmetric (``oct``) keys are refused in a remote JWKS: a published secret is no secret.
- RSA: 2048 to 8192 bits (larger keys make each verification a CPU sink); odd modulus; public
  exponent odd with 65537 <= e < 2**256 (FIPS 186-5; refuses e=1, whose "signatures" anyone can
  compute); no ROCA fingerprint (CVE-2017-15361).
- EC: P-256, P-384, P-521 with full-length coordinates of a point on the curve; ``ES256`` binds
  to P-256 only, ``ES384`` to P-384, ``ES512`` to P-521 (the misspelling ``ES521`` is unknown).
- OKP: Ed25519 and Ed448, for ``EdDSA``, or for RFC 9864's ``Ed25519`` / ``Ed448`` (each only
  its own curve). X25519/X448 are key-agreement curves and refused.
- HMAC keys must be at least as long as the hash output (RFC 7518 §3.2: 32/48/64 bytes).

Algorithm binding (RFC 8725 §3.1, one key, one algorithm): a key with an ``alg`` member is bound
to it when it is in the provider's allow-list and fits the key type, otherwise the key is
refused. A key without ``alg`` is bound to the FIRST algorithm of the provider's allow-list that
its type permits, so the order of ``algorithms:`` in the config matters for such keys (an RSA key
without ``alg`` under ``[PS256, RS256]`` verifies PS256 only).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import InvalidKeyError

from gateway.auth.types import VerificationKey

__all__ = [
    "HMAC_MIN_BYTES",
    "JWKSInvalid",
    "JWKSet",
    "KeyRejected",
    "MAX_KEY_FILE_BYTES",
    "RejectedKey",
    "SUPPORTED_ALGORITHMS",
    "hmac_key",
    "load_jwk",
    "load_jwk_file",
    "load_jwks",
    "load_pem_public_key_file",
    "parse_json_document",
    "public_key_to_verification_key",
]

# PyJWT's algorithm objects are stateless: one shared instance per name. RFC 9864's
# fully-specified ``Ed25519`` and ``Ed448`` verify as ``EdDSA`` does; what differs is which key
# may carry them (the curve is in the name), checked when a key is bound.
_PYJWT_ALGORITHMS: Final = {
    **get_default_algorithms(),
    "Ed25519": get_default_algorithms()["EdDSA"],
    "Ed448": get_default_algorithms()["EdDSA"],
}

_RSA_ALGS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
#: JWK ``crv`` -> (curve, coordinate length in bytes, the one JWS algorithm for it).
_EC_CURVES: Final[Mapping[str, tuple[ec.EllipticCurve, int, str]]] = {
    "P-256": (ec.SECP256R1(), 32, "ES256"),
    "P-384": (ec.SECP384R1(), 48, "ES384"),
    "P-521": (ec.SECP521R1(), 66, "ES512"),
}
_EC_ALG_BY_CURVE_NAME: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_OKP_CURVES: Final = {"Ed25519": 32, "Ed448": 57}
#: Smallest HMAC key per algorithm: the hash output length (RFC 7518 §3.2).
HMAC_MIN_BYTES: Final[Mapping[str, int]] = {"HS256": 32, "HS384": 48, "HS512": 64}

#: Every algorithm a key can be bound to (``none`` is not among them, in any spelling).
SUPPORTED_ALGORITHMS: Final = frozenset(
    (*_RSA_ALGS, "ES256", "ES384", "ES512", "EdDSA", "Ed25519", "Ed448", *HMAC_MIN_BYTES)
)

_RSA_MIN_BITS: Final = 2048
_RSA_MAX_BITS: Final = 8192
_RSA_MIN_EXPONENT: Final = 65537
#: Members that make a JWK a private key (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2).
_PRIVATE_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth")

#: Key files larger than this are refused (a key is a few KiB; this also stops /dev/zero).
MAX_KEY_FILE_BYTES: Final = 1024 * 1024

_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_PEM_BEGIN: Final = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_SSH_PREFIXES: Final = (b"ssh-", b"ecdsa-sha2-", b"sk-ssh-", b"sk-ecdsa-")


# ---------------------------------------------------------------------------------- exceptions


class KeyRejected(Exception):
    """One key is not trusted. Raised at load time; in a JWK Set the key is skipped.

    ``reason`` is a stable code (``use_enc``, ``rsa_too_small``, ``alg_not_allowed``...) fit for
    logs and metric labels; ``str()`` is a short sentence without key material.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class RejectedKey:
    """A JWK Set entry that was skipped: its position, its ``kid`` (if a string) and why."""

    index: int
    kid: str | None
    reason: str


class JWKSInvalid(Exception):
    """A whole document is refused; a remote one never replaces the keys already installed.

    ``reason``: ``invalid_json`` (not strict UTF-8 JSON), ``not_an_object``, ``keys_not_array``,
    ``duplicate_kid`` (two usable keys share a ``kid``: which one is meant is ambiguous),
    ``mixed_key_set`` (a local set mixing HMAC secrets and public keys), ``no_usable_keys``.
    ``rejected`` lists the entries skipped on the way, for the log.
    """

    def __init__(self, reason: str, message: str, *, rejected: Sequence[RejectedKey] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.rejected = tuple(rejected)


@dataclass(frozen=True, slots=True)
class JWKSet:
    """The usable keys of a JWK Set, in document order, and the entries that were skipped."""

    keys: tuple[VerificationKey, ...]
    rejected: tuple[RejectedKey, ...] = ()


# ------------------------------------------------------------------------------------- helpers


def _b64url_bytes(jwk: Mapping[str, Any], member: str, reason: str) -> bytes:
    """Decode a base64url member strictly: a string of the unpadded alphabet only."""
    value = jwk.get(member)
    if not isinstance(value, str) or not _B64URL.fullmatch(value) or len(value) % 4 == 1:
        raise KeyRejected(reason, f"member {member!r} is missing or not base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise KeyRejected(reason, f"member {member!r} is not base64url") from None


def _b64url_uint(jwk: Mapping[str, Any], member: str, reason: str) -> int:
    raw = _b64url_bytes(jwk, member, reason)
    if not raw:
        raise KeyRejected(reason, f"member {member!r} is empty")
    return int.from_bytes(raw, "big")


def _bind(alg: str | None, algorithms: Sequence[str], permitted: Collection[str]) -> str:
    """The one algorithm a key is bound to: its own ``alg``, else the first allowed that fits."""
    if alg is not None:
        if alg not in permitted:
            raise KeyRejected("alg_key_mismatch", f"alg {alg} does not fit this key type")
        return alg
    for candidate in algorithms:
        if candidate in permitted:
            return candidate
    raise KeyRejected("no_allowed_alg", "no allowed algorithm fits this key type")


def _make(alg: str, public: Any, kid: str | None, kty: str) -> VerificationKey:
    algorithm = _PYJWT_ALGORITHMS[alg]
    try:
        # PyJWT's own checks (key family, EC curve for the algorithm) as a second opinion.
        prepared = algorithm.prepare_key(public)
    except (InvalidKeyError, TypeError, ValueError):
        raise KeyRejected("alg_key_mismatch", f"the key does not fit {alg}") from None
    return VerificationKey(alg=alg, algorithm=algorithm, prepared=prepared, kid=kid, kty=kty)


def _small_odd_primes(count: int) -> tuple[int, ...]:
    primes: list[int] = []
    candidate = 3
    while len(primes) < count:
        if all(candidate % p for p in primes):
            primes.append(candidate)
        candidate += 2
    return tuple(primes)


def _roca_masks() -> tuple[tuple[int, int], ...]:
    # A ROCA modulus (Infineon RSALib, CVE-2017-15361) is congruent to a power of 65537 modulo
    # every prime of the library's primorial M. For keys of 1984..4096 bits M = 701# (the first
    # 126 primes), so a modulus whose residues all lie in <65537> is flagged; a random modulus
    # passes with probability about 2**-170. Each mask has bit r set for every r in <65537> mod p.
    masks = []
    for p in _small_odd_primes(125):  # 3 .. 701
        mask, x = 0, 1
        while True:
            mask |= 1 << x
            x = x * 65537 % p
            if x == 1:
                break
        masks.append((p, mask))
    return tuple(masks)


_ROCA_MASKS: Final = _roca_masks()


def _has_roca_fingerprint(n: int) -> bool:
    return all((1 << (n % p)) & mask for p, mask in _ROCA_MASKS)


# ----------------------------------------------------------------------- public keys (any source)


def _check_rsa_numbers(n: int, e: int) -> None:
    bits = n.bit_length()
    if bits < _RSA_MIN_BITS:
        raise KeyRejected("rsa_too_small", f"RSA key of {bits} bits (at least {_RSA_MIN_BITS} required)")
    if bits > _RSA_MAX_BITS:
        raise KeyRejected("rsa_too_large", f"RSA key of {bits} bits (at most {_RSA_MAX_BITS} accepted)")
    if n % 2 == 0:
        raise KeyRejected("rsa_bad_params", "RSA modulus is even")
    if e % 2 == 0 or e < _RSA_MIN_EXPONENT or e.bit_length() > 256 or e >= n:
        raise KeyRejected("rsa_bad_exponent", "RSA public exponent must be odd, >= 65537 and < 2**256")
    if _has_roca_fingerprint(n):
        raise KeyRejected("rsa_roca", "RSA key has the ROCA fingerprint (CVE-2017-15361)")


def _bind_public(public: Any, alg: str | None, algorithms: Sequence[str], kid: str | None) -> VerificationKey:
    """Bind an already checked public key to its one algorithm."""
    if isinstance(public, rsa.RSAPublicKey):
        return _make(_bind(alg, algorithms, _RSA_ALGS), public, kid, "RSA")
    if isinstance(public, ec.EllipticCurvePublicKey):
        curve_alg = _EC_ALG_BY_CURVE_NAME.get(public.curve.name)
        if curve_alg is None:
            raise KeyRejected("crv_unsupported", f"EC curve {public.curve.name} is not supported")
        return _make(_bind(alg, algorithms, (curve_alg,)), public, kid, "EC")
    if isinstance(public, ed25519.Ed25519PublicKey):
        return _make(_bind(alg, algorithms, ("EdDSA", "Ed25519")), public, kid, "OKP")
    if isinstance(public, ed448.Ed448PublicKey):
        return _make(_bind(alg, algorithms, ("EdDSA", "Ed448")), public, kid, "OKP")
    raise KeyRejected("kty_unsupported", f"{type(public).__name__} keys are not supported")


def public_key_to_verification_key(
    public: Any, *, alg: str | None, algorithms: Sequence[str], kid: str | None = None
) -> VerificationKey:
    """Check a ``cryptography`` public key (from PEM or a certificate) and bind it to one algorithm.

    ``alg`` is the key's declared algorithm (already known to be allowed) or ``None``.
    Raises :class:`KeyRejected`.
    """
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        _check_rsa_numbers(numbers.n, numbers.e)
    return _bind_public(public, alg, algorithms, kid)


# ------------------------------------------------------------------------------------------ JWK


def _rsa_from_jwk(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
    n = _b64url_uint(jwk, "n", "rsa_bad_params")
    e = _b64url_uint(jwk, "e", "rsa_bad_params")
    # Judged before construction: cryptography refuses e=1 with a bare ValueError, and the log
    # deserves the precise reason.
    _check_rsa_numbers(n, e)
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise KeyRejected("rsa_bad_params", "RSA public numbers are invalid") from None


def _ec_from_jwk(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in _EC_CURVES:
        raise KeyRejected("crv_unsupported", "EC curve is missing or not supported")
    curve, size, _ = _EC_CURVES[crv]
    x = _b64url_bytes(jwk, "x", "ec_bad_params")
    y = _b64url_bytes(jwk, "y", "ec_bad_params")
    if len(x) != size or len(y) != size:
        raise KeyRejected("ec_bad_params", f"EC coordinates must be {size} bytes for {crv}")
    try:
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
        ).public_key()
    except ValueError:
        raise KeyRejected("ec_point_invalid", f"EC point is not on {crv}") from None


def _okp_from_jwk(jwk: Mapping[str, Any]) -> ed25519.Ed25519PublicKey | ed448.Ed448PublicKey:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in _OKP_CURVES:
        raise KeyRejected("crv_unsupported", "OKP curve is missing or not a signature curve")
    x = _b64url_bytes(jwk, "x", "okp_bad_params")
    if len(x) != _OKP_CURVES[crv]:
        raise KeyRejected("okp_bad_params", f"{crv} public key must be {_OKP_CURVES[crv]} bytes")
    try:
        if crv == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(x)
        return ed448.Ed448PublicKey.from_public_bytes(x)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyRejected("okp_bad_params", f"{crv} public key is invalid") from None


def _oct_from_jwk(
    jwk: Mapping[str, Any], alg: str | None, algorithms: Sequence[str], kid: str | None
) -> VerificationKey:
    secret = _b64url_bytes(jwk, "k", "hmac_bad_params")
    if alg is not None:
        if alg not in HMAC_MIN_BYTES:
            raise KeyRejected("alg_key_mismatch", f"alg {alg} does not fit an oct key")
        bound = alg
    else:
        fitting = [a for a in algorithms if a in HMAC_MIN_BYTES and len(secret) >= HMAC_MIN_BYTES[a]]
        if not fitting:
            if any(a in HMAC_MIN_BYTES for a in algorithms):
                raise KeyRejected("hmac_too_short", "HMAC key is shorter than the hash output")
            raise KeyRejected("no_allowed_alg", "no allowed algorithm fits an oct key")
        bound = fitting[0]
    if len(secret) < HMAC_MIN_BYTES[bound]:
        raise KeyRejected(
            "hmac_too_short",
            f"{bound} key of {len(secret)} bytes (at least {HMAC_MIN_BYTES[bound]} required)",
        )
    return _hmac_verification_key(secret, bound, kid)


def _check_usage(jwk: Mapping[str, Any]) -> None:
    use = jwk.get("use")
    if use is not None and use != "sig":
        if use == "enc":
            raise KeyRejected("use_enc", "key is for encryption (use: enc)")
        raise KeyRejected("use_invalid", "key use is not sig")
    if "key_ops" in jwk:
        ops = jwk["key_ops"]
        if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops) or "verify" not in ops:
            raise KeyRejected("key_ops_no_verify", "key_ops does not allow verify")


def load_jwk(jwk: Any, *, algorithms: Sequence[str], remote: bool) -> VerificationKey:
    """Load one JWK (RFC 7517) as a public verification key bound to exactly one algorithm.

    ``algorithms`` is the provider's allow-list, in order. ``remote`` is true for keys fetched
    from an IdP: symmetric keys are then refused. Raises :class:`KeyRejected`.
    """
    if not isinstance(jwk, Mapping):
        raise KeyRejected("not_an_object", "a JWK must be a JSON object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise KeyRejected("kid_not_string", "kid must be a string")
    kty = jwk.get("kty")
    if kty is None:
        raise KeyRejected("kty_missing", "kty is missing")
    if kty not in ("RSA", "EC", "OKP", "oct"):
        raise KeyRejected("kty_unsupported", "kty is not RSA, EC, OKP or oct")
    # Leaked secrets first: they are the finding that matters most in the log.
    if kty == "oct" and remote:
        raise KeyRejected("oct_in_remote_jwks", "symmetric keys are never taken from a remote JWKS")
    if kty != "oct" and any(member in jwk for member in _PRIVATE_MEMBERS):
        raise KeyRejected("private_key", "the JWK carries private key material; only public keys are used")
    _check_usage(jwk)
    alg = jwk.get("alg")
    if alg is not None:
        if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
            raise KeyRejected("alg_unknown", "alg is not a supported JWS algorithm")
        if alg not in algorithms:
            raise KeyRejected("alg_not_allowed", f"alg {alg} is not in the provider's algorithms")
    if kty == "oct":
        return _oct_from_jwk(jwk, alg, algorithms, kid)
    public: Any
    if kty == "RSA":
        public = _rsa_from_jwk(jwk)
    elif kty == "EC":
        public = _ec_from_jwk(jwk)
    else:
        public = _okp_from_jwk(jwk)
    return _bind_public(public, alg, algorithms, kid)


def load_jwks(document: Any, *, algorithms: Sequence[str], remote: bool) -> JWKSet:
    """Load a JWK Set: every usable key, each judged on its own.

    Raises :class:`JWKSInvalid` when the document as a whole cannot be trusted: not an object
    with a ``keys`` array, two usable keys with the same ``kid``, HMAC and public keys mixed in
    a local set, or no usable key at all (a set that suddenly has none is treated like a broken
    document, so the previous keys keep serving).
    """
    if not isinstance(document, Mapping):
        raise JWKSInvalid("not_an_object", "a JWK Set must be a JSON object")
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise JWKSInvalid("keys_not_array", "a JWK Set needs a `keys` array")
    keys: list[VerificationKey] = []
    rejected: list[RejectedKey] = []
    for index, entry in enumerate(entries):
        try:
            keys.append(load_jwk(entry, algorithms=algorithms, remote=remote))
        except KeyRejected as exc:
            kid = entry.get("kid") if isinstance(entry, Mapping) else None
            rejected.append(RejectedKey(index, kid if isinstance(kid, str) else None, exc.reason))
    seen: set[str] = set()
    for key in keys:
        if key.kid is not None:
            if key.kid in seen:
                raise JWKSInvalid(
                    "duplicate_kid", "two usable keys share one kid; the set is ambiguous", rejected=rejected
                )
            seen.add(key.kid)
    if not remote and len({key.kty == "oct" for key in keys}) > 1:
        raise JWKSInvalid("mixed_key_set", "the set mixes HMAC secrets and public keys", rejected=rejected)
    if not keys:
        raise JWKSInvalid("no_usable_keys", "the set holds no usable signing key", rejected=rejected)
    return JWKSet(tuple(keys), tuple(rejected))


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise ValueError("duplicate member")
        out[name] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_document(data: bytes) -> Any:
    """Parse strict JSON: UTF-8, no duplicate members, no NaN/Infinity, bounded nesting.

    Raises :class:`JWKSInvalid` with reason ``invalid_json``.
    """
    try:
        return json.loads(
            data.decode("utf-8"), object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant
        )
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise JWKSInvalid("invalid_json", "the document is not strict JSON") from None


# -------------------------------------------------------------------------------------- files


def _read_key_file(path: str | Path) -> bytes:
    """Read a key file, refusing anything larger than :data:`MAX_KEY_FILE_BYTES` (OSError)."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyRejected("file_too_large", f"key file larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def load_pem_public_key_file(path: str | Path, *, algorithms: Sequence[str]) -> VerificationKey:
    """Load a PEM public key: SubjectPublicKeyInfo, PKCS#1 RSA public key or X.509 certificate.

    The file must hold exactly one PEM block (a chain is ambiguous). A certificate is only a
    container for its public key: its validity period and issuer are not checked. The key gets
    no ``kid`` and is bound to the first allowed algorithm that fits it. Raises
    :class:`KeyRejected` (and ``OSError`` when the file cannot be read).
    """
    data = _read_key_file(path)
    labels = _PEM_BEGIN.findall(data)
    if not labels:
        raise KeyRejected("not_pem", "the file holds no PEM block")
    if len(labels) > 1:
        raise KeyRejected("pem_multiple_blocks", "the file holds several PEM blocks; give exactly one key")
    label = labels[0].decode("ascii")
    if "PRIVATE" in label:
        raise KeyRejected("private_key", "the file holds a private key; give the public key or certificate")
    try:
        if label == "CERTIFICATE":
            public: Any = x509.load_pem_x509_certificate(data).public_key()
        elif label in ("PUBLIC KEY", "RSA PUBLIC KEY"):
            public = load_pem_public_key(data)
        else:
            raise KeyRejected("not_pem", f"unsupported PEM block {label!r}")
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyRejected("pem_invalid", f"the {label} block cannot be parsed") from None
    return public_key_to_verification_key(public, alg=None, algorithms=algorithms)


def load_jwk_file(path: str | Path, *, algorithms: Sequence[str]) -> tuple[VerificationKey, ...]:
    """Load a local JWK or JWK Set file (``{"keys": [...]}``) as static keys.

    A single JWK must be usable (:class:`KeyRejected` otherwise); a set follows
    :func:`load_jwks` with ``remote=False``. Raises :class:`KeyRejected`, :class:`JWKSInvalid`
    or ``OSError``.
    """
    document = parse_json_document(_read_key_file(path))
    if isinstance(document, Mapping) and "keys" in document:
        return load_jwks(document, algorithms=algorithms, remote=False).keys
    return (load_jwk(document, algorithms=algorithms, remote=False),)


# ---------------------------------------------------------------------------------------- HMAC


# Secret texts that may be an encoded DER key: base64 in either alphabet (padded or not,
# whitespace allowed), and hex (whitespace or ':' between bytes allowed, as openssl prints it).
_ANY_BASE64_TEXT: Final = re.compile(rb"[A-Za-z0-9+/=_\-\s]+")
_B64URL_TEXT: Final = re.compile(rb"[A-Za-z0-9_-]+")
_HEX_TEXT: Final = re.compile(rb"[0-9A-Fa-f:\s]+")
_BASE64URL_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")
_TEXT_SEPARATORS: Final = b" \t\r\n\v\f:"
#: Shortest encoded DER public key looked at: a raw Ed25519 SubjectPublicKeyInfo is 44 bytes.
_MIN_DER_BYTES: Final = 44
#: Byte lengths of the RSA moduli worth recognising as a pasted JWK ``n`` (2048, 3072, 4096 bits).
_RSA_MODULUS_BYTES: Final = frozenset({256, 384, 512})


def _odd_primes_below(limit: int) -> tuple[int, ...]:
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytes(len(range(i * i, limit, i)))
    return tuple(i for i in range(3, limit) if sieve[i])


def _product(numbers: Sequence[int]) -> int:
    result = 1
    for number in numbers:
        result *= number
    return result


# An RSA modulus is the product of two large primes: it has no small factor. A random odd number
# has none below 2**14 about once in eight, so this check keeps random secrets of modulus
# length mostly apart from pasted moduli (one gcd at load time).
_SMALL_PRIMES_PRODUCT: Final = _product(_odd_primes_below(1 << 14))


def _decoded_texts(stripped: bytes) -> list[bytes]:
    """What a secret text decodes to as base64 (either alphabet, padding optional) or hex."""
    blobs: list[bytes] = []
    if len(stripped) < _MIN_DER_BYTES * 4 // 3:
        return blobs
    if _ANY_BASE64_TEXT.fullmatch(stripped):
        # A PEM body without its armour lines, or a DER key in base64url.
        compact = b"".join(stripped.split()).rstrip(b"=").translate(_BASE64URL_TO_STANDARD)
        if len(compact) % 4 != 1:
            try:
                blobs.append(base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True))
            except (binascii.Error, ValueError):
                pass
    if _HEX_TEXT.fullmatch(stripped):
        digits = stripped.translate(None, _TEXT_SEPARATORS)
        if len(digits) % 2 == 0:
            try:
                blobs.append(bytes.fromhex(digits.decode("ascii")))
            except ValueError:
                pass
    return blobs


def _is_der_public_key(blob: bytes) -> bool:
    if blob[:1] != b"\x30":  # every DER key or certificate is a SEQUENCE
        return False
    try:
        load_der_public_key(blob)
        return True
    except (ValueError, TypeError, UnsupportedAlgorithm):
        pass
    try:
        x509.load_der_x509_certificate(blob)
        return True
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False


def _looks_like_public_key(secret: bytes) -> bool:
    """True when a configured "secret" is really public key material (algorithm confusion).

    Recognised: PEM (any block), OpenSSH public keys, JWK or JWK Set JSON, DER public keys and
    certificates as raw bytes, base64 (standard or base64url, padded or not) or hex.
    """
    stripped = secret.strip()
    if b"-----BEGIN" in stripped or stripped.startswith(_SSH_PREFIXES):
        return True
    if stripped.startswith((b"{", b"[")):
        try:
            document = json.loads(stripped)
        except (ValueError, RecursionError):
            document = None
        if isinstance(document, dict) and ({"kty", "keys", "n", "x"} & document.keys()):
            return True
    # A JWK ``n`` alone is not looked for: it has the very form of a long random base64url
    # secret (secrets.token_urlsafe(256) would be refused about 3% of the time).
    return any(_is_der_public_key(blob) for blob in (secret, *_decoded_texts(stripped)))


def _hmac_verification_key(secret: bytes, alg: str, kid: str | None) -> VerificationKey:
    algorithm = _PYJWT_ALGORITHMS[alg]
    try:
        prepared = algorithm.prepare_key(secret)
    except InvalidKeyError:
        raise KeyRejected("secret_is_public_key", "the HMAC key is public key material") from None
    return VerificationKey(alg=alg, algorithm=algorithm, prepared=prepared, kid=kid, kty="oct")


def hmac_key(secret: bytes, *, algorithm: str, allow_weak: bool) -> VerificationKey:
    """A static HMAC key: the raw bytes of the configured secret, bound to ``algorithm``.

    Refused: an empty secret (always); a secret shorter than the hash output (32/48/64 bytes for
    HS256/384/512) unless ``allow_weak``; anything that looks like public key material (PEM,
    OpenSSH, DER as bytes, base64, base64url or hex, JWK or JWKS JSON), whatever ``allow_weak``
    says, because an HMAC keyed with a public key lets anyone forge tokens. Raises
    :class:`KeyRejected`.
    """
    if algorithm not in HMAC_MIN_BYTES:
        raise KeyRejected("alg_key_mismatch", f"{algorithm} is not an HMAC algorithm")
    if not secret:
        raise KeyRejected("hmac_too_short", "the HMAC secret is empty")
    if _looks_like_public_key(secret):
        raise KeyRejected("secret_is_public_key", "the HMAC secret is public key material")
    minimum = HMAC_MIN_BYTES[algorithm]
    if len(secret) < minimum and not allow_weak:
        raise KeyRejected(
            "hmac_too_short",
            f"the {algorithm} secret is {len(secret)} bytes; at least {minimum} are required "
            "(allow_weak_secret: true accepts it)",
        )
    return _hmac_verification_key(secret, algorithm, None)
