"""Runtime types shared by the decision core (keys, verification, rules, pipeline).

These are plain frozen objects built once at config-compile time (or, for keys, when a key set
is loaded); the request path only reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """True when ``signature`` is a valid signature of ``signing_input`` under this key."""
        try:
            return bool(self.algorithm.verify(signing_input, self.prepared, signature))
        except Exception:
            return False


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
