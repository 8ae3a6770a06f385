"""Signing keys and signed tokens for tests (PyJWT does the signing).

Key generation is slow (RSA-2048: ~100 ms on this machine), so private keys come from a
process-wide pool: ``new_signing_key("RS256", slot=3)`` always returns the same key for slot 3.
Tests that need distinct keys use distinct slots. RS* and PS* share the RSA pool.

::

    key = new_signing_key("ES256", slot=1)          # kid "es256-1"
    jwk = key.public_jwk()                          # {"kty": "EC", "kid": ..., "alg": "ES256", ...}
    token = key.sign(default_claims("https://idp.test", "api"))
    token = key.sign({"sub": "x"}, include_kid=False, headers={"typ": "at+jwt"})
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

__all__ = [
    "SigningKey",
    "b64url",
    "bad_jwks_entries",
    "default_claims",
    "new_signing_key",
    "rsa_private_key",
    "signature_verifies",
]

_CURVES: dict[str, ec.EllipticCurve] = {
    "ES256": ec.SECP256R1(),
    "ES384": ec.SECP384R1(),
    "ES512": ec.SECP521R1(),
}
_ALGORITHMS = get_default_algorithms()


def b64url(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signature_verifies(lookup: Any, token: str) -> bool:
    """Check only the signature of a compact JWS the way the verifier uses a ``KeyLookup``.

    The header's ``kid`` and ``alg`` go to ``lookup.candidates()`` (which may raise
    KeysUnavailable / AlgorithmNotAllowed); True when one candidate verifies the signature.
    """
    header_b64, payload_b64, signature_b64 = token.split(".")
    try:
        header = json.loads(b64url_decode(header_b64))
        signature = b64url_decode(signature_b64)
    except (ValueError, binascii.Error):
        return False
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    keys = lookup.candidates(header.get("kid"), header["alg"])
    return any(key.verify(signing_input, signature) for key in keys)


def _uint(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


@functools.cache
def rsa_private_key(slot: int = 0, bits: int = 2048) -> rsa.RSAPrivateKey:
    """An RSA private key from the pool (same ``slot`` and ``bits``: same key)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def _private_key(alg: str, slot: int) -> Any:
    if alg.startswith(("RS", "PS")):
        return rsa_private_key(slot)
    if alg in _CURVES:
        return ec.generate_private_key(_CURVES[alg])
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"no signing key type for {alg}")


@dataclass(frozen=True)
class SigningKey:
    """A private key, its algorithm and kid; publishes its public JWK and signs tokens."""

    alg: str
    kid: str | None
    private_key: Any

    def public_jwk(
        self, *, include_kid: bool = True, include_alg: bool = True, **extra: Any
    ) -> dict[str, Any]:
        """The public JWK (``use: sig``), with optional extra or overriding members."""
        jwk: dict[str, Any] = dict(_ALGORITHMS[self.alg].to_jwk(self.private_key.public_key(), as_dict=True))
        jwk["use"] = "sig"
        if include_kid and self.kid is not None:
            jwk["kid"] = self.kid
        if include_alg:
            jwk["alg"] = self.alg
        jwk.update(extra)
        return jwk

    def sign(
        self,
        claims: dict[str, Any],
        *,
        include_kid: bool = True,
        headers: dict[str, Any] | None = None,
        alg: str | None = None,
    ) -> str:
        """A compact JWS of ``claims``; ``alg`` overrides the header's algorithm (RSA: RS*/PS*)."""
        header: dict[str, Any] = {}
        if include_kid and self.kid is not None:
            header["kid"] = self.kid
        header.update(headers or {})
        return jwt.encode(claims, self.private_key, algorithm=alg or self.alg, headers=header)


def new_signing_key(alg: str = "RS256", *, slot: int = 0, kid: str | None = "") -> SigningKey:
    """A signing key from the pool. ``kid`` defaults to ``"<alg>-<slot>"``; ``None``: no kid."""
    return SigningKey(
        alg=alg, kid=f"{alg.lower()}-{slot}" if kid == "" else kid, private_key=_private_key(alg, slot)
    )


def default_claims(
    issuer: str | None, audience: str | None = "api", *, lifetime: int = 300, **extra: Any
) -> dict[str, Any]:
    """``iss``/``aud``/``sub``/``iat``/``exp`` for a token valid now, plus ``extra``."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "user-1", "iat": now, "exp": now + lifetime}
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    claims.update(extra)
    return claims


@functools.lru_cache(maxsize=1)
def _weak_material() -> dict[str, Any]:
    small = rsa_private_key(0, 1024).public_key().public_numbers()
    big = rsa_private_key(0).public_key().public_numbers()
    ec_public = _private_key("ES256", 0).public_key().public_numbers()
    return {"small": small, "big": big, "ec": ec_public}


def bad_jwks_entries() -> list[tuple[str, Any]]:
    """JWKS entries that must never be trusted, each named by the reason the loader gives.

    Covers the security catalogue's "bad keys mixed with good" list: an ``oct`` key in a remote
    set, ``use: enc``, ``key_ops: [encrypt]``, RSA-1024, RSA e=1, an off-curve EC point, short EC
    coordinates, unknown kty, no kty, bad ``n``, a private key, and junk values.
    """
    m = _weak_material()
    big, small, pt = m["big"], m["small"], m["ec"]
    rsa_big = {"kty": "RSA", "n": _uint(big.n), "e": "AQAB", "alg": "RS256"}
    ec_good = {"kty": "EC", "crv": "P-256", "x": _uint(pt.x, 32), "y": _uint(pt.y, 32), "alg": "ES256"}
    return [
        ("oct_in_remote_jwks", {"kty": "oct", "kid": "bad-oct", "k": b64url(b"k" * 32), "alg": "HS256"}),
        ("use_enc", {**rsa_big, "kid": "bad-use-enc", "use": "enc"}),
        ("key_ops_no_verify", {**rsa_big, "kid": "bad-key-ops", "key_ops": ["encrypt"]}),
        ("rsa_too_small", {"kty": "RSA", "kid": "bad-rsa-1024", "n": _uint(small.n), "e": "AQAB"}),
        ("rsa_bad_exponent", {**rsa_big, "kid": "bad-e-1", "e": "AQ"}),
        ("ec_point_invalid", {**ec_good, "kid": "bad-off-curve", "y": _uint((pt.y + 1) % 2**256, 32)}),
        ("ec_bad_params", {**ec_good, "kid": "bad-short-x", "x": _uint(pt.x, 32)[:-2]}),
        ("kty_unsupported", {"kty": "XYZ", "kid": "bad-kty"}),
        ("kty_missing", {"kid": "bad-no-kty", "n": rsa_big["n"], "e": "AQAB"}),
        ("rsa_bad_params", {**rsa_big, "kid": "bad-n", "n": "!!not-base64!!"}),
        ("private_key", {**rsa_big, "kid": "bad-private", "d": "AQAB"}),
        ("kid_not_string", {**rsa_big, "kid": 7}),
        ("not_an_object", 42),
        ("not_an_object", "string"),
        ("not_an_object", None),
        ("not_an_object", []),
    ]
