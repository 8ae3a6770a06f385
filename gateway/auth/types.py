"""Runtime types shared by the decision core (keys, verification, rules, pipeline).

These are plain frozen objects built once at config-compile time (or, for keys, when a key set
is loaded); the request path only reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ed448, ed25519
from jwt.algorithms import Algorithm

#: Verified JWT claims, as decoded from JSON.
Claims = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key (or HMAC secret) bound to exactly one algorithm (RFC 8725 §3.1).

    ``prepared`` is what ``algorithm.verify(signing_input, prepared, signature)`` accepts: a
    ``cryptography`` public key object, or the secret bytes for HMAC.
    """

    alg: str
    algorithm: Algorithm
    prepared: Any
    kid: str | None = None
    #: "RSA", "EC", "OKP" or "oct".
    kty: str = ""
    #: The exact signature length this key makes (0: not known, not checked). Derived.
    signature_length: int = field(default=0, init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "signature_length", _signature_length(self.alg, self.prepared))

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """True when ``signature`` is a valid signature of ``signing_input`` under this key.

        A signature of any other length than the key makes is refused first: some backends
        accept a shortened RSA-PSS signature (its leading zero byte dropped), which would give
        one token two spellings (RFC 8017 §8.1.2 wants exactly k octets).
        """
        expected = self.signature_length
        if expected and len(signature) != expected:
            return False
        try:
            return bool(self.algorithm.verify(signing_input, self.prepared, signature))
        except Exception:
            return False


#: Signature length per algorithm where it does not depend on the key (RFC 7518, RFC 8037).
_FIXED_SIGNATURE_LENGTHS = {
    "HS256": 32,
    "HS384": 48,
    "HS512": 64,
    "ES256": 64,
    "ES384": 96,
    "ES512": 132,
    "Ed25519": 64,
    "Ed448": 114,
}


def _signature_length(alg: str, prepared: Any) -> int:
    fixed = _FIXED_SIGNATURE_LENGTHS.get(alg)
    if fixed is not None:
        return fixed
    key_size = getattr(prepared, "key_size", None)  # RSA public keys: the modulus size in bits
    if alg[:2] in ("RS", "PS") and isinstance(key_size, int):
        return (key_size + 7) // 8
    if alg == "EdDSA":
        if isinstance(prepared, ed25519.Ed25519PublicKey):
            return 64
        if isinstance(prepared, ed448.Ed448PublicKey):
            return 114
    return 0


class KeyLookup(Protocol):
    """A provider's key source, as the verifier sees it (static keys or a JWKS lifecycle).

    ``candidates`` never performs I/O. It returns the keys to try for a token with this ``kid``
    (``None`` when the token has none) and header ``alg``:

    - raises :class:`gateway.errors.KeysUnavailable` when the provider has no usable key set
      (never loaded, or stale beyond ``max_stale``);
    - raises :class:`gateway.errors.AlgorithmNotAllowed` when the kid's key is bound to another
      algorithm;
    - returns an empty sequence when the kid is unknown: the caller may then ``await
      refresh_on_miss()`` once and ask again.
    """

    def candidates(self, kid: str | None, alg: str) -> Sequence[VerificationKey]: ...

    async def refresh_on_miss(self) -> bool:
        """Re-fetch after an unknown kid, single-flight and rate-limited; True if keys changed."""
        ...


@dataclass(frozen=True, slots=True)
class ProviderPolicy:
    """How tokens of one issuer are verified, compiled from ``providers.<name>``."""

    name: str
    #: Exact ``iss`` value; ``None`` means the provider's tokens carry no ``iss`` at all.
    issuer: str | None
    algorithms: tuple[str, ...]
    #: Accepted audiences (any-of); ``None`` means ``audience: any`` was written explicitly.
    audiences: tuple[str, ...] | None
    keys: KeyLookup
    leeway: float = 30.0
    require_exp: bool = True
    max_lifetime: float | None = None
    required_claims: tuple[str, ...] = ()
    #: Accepted ``typ`` header values (compared case-insensitively, "application/" stripped).
    typ: tuple[str, ...] | None = None
    #: Claims that must equal a fixed value (e.g. ``token_type: access`` for simplejwt).
    claim_equals: Mapping[str, Any] = field(default_factory=dict)
    #: With a ``{tenantid}`` issuer: the accepted tenant IDs (``None``: any tenant).
    tenants: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """The outcome of a successful verification."""

    provider: str
    claims: Claims
    header: Mapping[str, Any]
    #: ``exp`` as a float, or ``None`` when the token has none.
    expires_at: float | None
