"""Token verification: the token is judged by the configuration, never by what it says of itself.

One verification, in order (cheap and key-free checks first)::

    cache hit? ─► strict compact parse (gateway.auth.jws)
              ─► provider by EXACT ``iss`` (no iss: the ``issuer: null`` provider), and the
                 route must accept that provider
              ─► header ``alg`` in that provider's algorithms (never ``none``: config can't
                 name it) ─► ``typ`` when configured
              ─► candidate keys of THAT provider by (kid, alg); unknown kid: one
                 ``refresh_on_miss()`` and ask again
              ─► signature with a key bound to exactly that alg (PyJWT's algorithm object, called
                 directly with the prepared key: no ``jwt.decode``)
              ─► registered and provider claims ─► cache

Keys are bound to their issuer because a token only ever meets the keys of the provider its
``iss`` names. The cache is keyed by the exact token string and stores verification only,
never authorisation: route rules run on every request. An entry lives until the earliest of
the token's ``exp``, the cache TTL and the end of its key set's usability (``max_stale``), and
remembers its key and the key source's ``generation``: when a refresh installs a different set,
the next hit checks that the key is still published (a dict lookup), else the token is verified
afresh, so a withdrawn key is refused after the next refresh even for cached tokens.

A cache hit is a plain dict lookup and a few comparisons, without a lock: single operations on
the cache (get, pop) are atomic under the GIL, and only inserting (the size check and the
eviction of the oldest entry, after a ~100 us signature check anyway) takes the lock, so WSGI
worker threads can share the cache. The least recently used entry is evicted first (a hit
moves its entry to the end: one C call).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from gateway.auth.jws import JWSParts, ParsedJWS, parse_compact
from gateway.auth.types import Claims, KeyLookup, ProviderPolicy, VerificationKey, VerifiedToken
from gateway.config.models import TENANT_ID, TENANT_PLACEHOLDER
from gateway.errors import (
    AlgorithmNotAllowed,
    AudienceMismatch,
    BadSignature,
    ClaimInvalid,
    ConfigError,
    IssuerMismatch,
    TokenExpired,
    TokenMalformed,
    TokenNotYetValid,
    UnknownKid,
)

__all__ = [
    "CompiledPolicy",
    "KeyGenerations",
    "Verifier",
    "check_claims",
    "verify_jws_signature",
    "verify_signature",
]

_MISSING: Any = object()
_DEFAULT_MAX_TOKEN_BYTES = 8 * 1024


@runtime_checkable
class KeyGenerations(Protocol):
    """What the token cache needs from a key source to notice withdrawn or stale keys.

    :class:`gateway.auth.keys.StaticKeys` and :class:`gateway.auth.keys.RemoteJWKS` have it.
    A source without it (a bare :class:`KeyLookup`) is trusted for the cache entry's lifetime.
    """

    @property
    def generation(self) -> int:
        """Changes whenever the installed key set changes."""
        ...

    def holds(self, key: VerificationKey) -> bool:
        """True when ``key`` is still among the source's usable keys (no I/O)."""
        ...

    def usable_for(self) -> float:
        """Seconds the installed keys stay usable without a successful fetch."""
        ...


def _normalise_typ(value: str) -> str:
    # RFC 7515 §4.1.9: "application/" may be omitted; media types compare case-insensitively.
    value = value.lower()
    return value[12:] if value.startswith("application/") else value


class CompiledPolicy:
    """A :class:`ProviderPolicy` with its lists turned into sets, built once per config."""

    __slots__ = (
        "algorithms",
        "audiences",
        "claim_equals",
        "issuer",
        "keys",
        "leeway",
        "max_lifetime",
        "name",
        "require_exp",
        "required_claims",
        "typ",
        "versioned",
    )

    def __init__(self, policy: ProviderPolicy) -> None:
        self.name: str = policy.name
        self.issuer: str | None = policy.issuer
        self.keys: KeyLookup = policy.keys
        self.versioned: KeyGenerations | None = (
            policy.keys if isinstance(policy.keys, KeyGenerations) else None
        )
        self.algorithms: frozenset[str] = frozenset(policy.algorithms)
        if "none" in {alg.lower() for alg in self.algorithms}:
            raise ConfigError(f"provider {policy.name!r}: 'none' is never an allowed algorithm")
        self.audiences: frozenset[str] | None = (
            None if policy.audiences is None else frozenset(policy.audiences)
        )
        self.typ: frozenset[str] | None = (
            None if policy.typ is None else frozenset(_normalise_typ(t) for t in policy.typ)
        )
        self.leeway: float = float(policy.leeway)
        self.require_exp: bool = policy.require_exp
        self.max_lifetime: float | None = policy.max_lifetime
        self.required_claims: tuple[str, ...] = tuple(policy.required_claims)
        self.claim_equals: tuple[tuple[str, Any, str], ...] = tuple(
            (name, value, "token_type_mismatch" if name == "token_type" else "claim_invalid")
            for name, value in policy.claim_equals.items()
        )


# ------------------------------------------------------------------------------- signature


def verify_signature(
    candidates: Sequence[VerificationKey], alg: str, signing_input: bytes, signature: bytes
) -> VerificationKey:
    """Return the candidate whose key verifies ``signature``; the key's alg must be ``alg``.

    Raises :class:`AlgorithmNotAllowed` when every candidate is bound to another algorithm,
    :class:`BadSignature` when none verifies, :class:`UnknownKid` when there is no candidate.
    """
    if not candidates:
        raise UnknownKid("no key of this provider matches the token")
    bound_elsewhere = 0
    for key in candidates:
        # The key source already filters by alg; checking again keeps RFC 8725 §3.1 local.
        if key.alg != alg:
            bound_elsewhere += 1
        elif key.verify(signing_input, signature):
            return key
    if bound_elsewhere == len(candidates):
        raise AlgorithmNotAllowed("the key is bound to another algorithm")
    raise BadSignature("the signature does not verify")


def _check_algorithm(policy: CompiledPolicy, alg: str) -> None:
    if alg not in policy.algorithms:
        raise AlgorithmNotAllowed("the token's alg is not allowed for its issuer")


def _check_typ(policy: CompiledPolicy, header: Mapping[str, Any]) -> None:
    accepted = policy.typ
    if accepted is None:
        return
    typ = header.get("typ")
    if type(typ) is not str or _normalise_typ(typ) not in accepted:
        raise ClaimInvalid("the token's typ is not accepted", reason="typ_mismatch")


def verify_jws_signature(parts: JWSParts | ParsedJWS, policy: ProviderPolicy) -> VerificationKey:
    """Check a parsed token's ``alg`` and signature against one provider's keys (no claims).

    The signature layer on its own, for callers that already know the provider (test vectors
    with non-JSON payloads, tooling). No key refresh is attempted.
    """
    compiled = CompiledPolicy(policy)
    _check_algorithm(compiled, parts.alg)
    candidates = compiled.keys.candidates(parts.kid, parts.alg)
    return verify_signature(candidates, parts.alg, parts.signing_input, parts.signature)


# ---------------------------------------------------------------------------------- claims


def _numeric_date(value: Any, name: str) -> float:
    # RFC 7519 §2 NumericDate: a JSON number. Booleans are ints in Python, strings are not
    # numbers (PyJWT 2.15.1 accepts "1799999999"); NaN/Infinity never get past the parser.
    kind = type(value)
    if kind is not int and kind is not float:
        raise ClaimInvalid(f"{name} must be a number")
    try:
        return float(value)
    except OverflowError:
        raise ClaimInvalid(f"{name} is out of range") from None


def _same_value(actual: Any, expected: Any) -> bool:
    if type(expected) is bool or type(expected) is str:
        return type(actual) is type(expected) and bool(actual == expected)
    kind = type(actual)
    return (kind is int or kind is float) and bool(actual == expected)


def _check_audience(policy: CompiledPolicy, claims: Claims) -> None:
    aud = claims.get("aud", _MISSING)
    if aud is _MISSING:
        if policy.audiences is not None:
            raise AudienceMismatch("the token has no aud", reason="audience_missing")
        return
    if type(aud) is str:
        audiences: Sequence[str] = (aud,)
    elif type(aud) is list and all(type(item) is str for item in aud):
        audiences = aud
    else:
        raise ClaimInvalid("aud must be a string or an array of strings")
    if policy.audiences is not None and policy.audiences.isdisjoint(audiences):
        raise AudienceMismatch("the token is not meant for this audience")


def check_claims(policy: CompiledPolicy, claims: Claims, now: float) -> float | None:
    """Check registered and provider claims at time ``now``; return ``exp`` (or ``None``).

    ``iss`` is not looked at here: the provider was chosen by it.
    """
    leeway = policy.leeway
    exp: float | None = None
    raw = claims.get("exp", _MISSING)
    if raw is not _MISSING:
        exp = _numeric_date(raw, "exp")
        if exp <= now - leeway:
            raise TokenExpired("the token has expired")
    elif policy.require_exp:
        raise ClaimInvalid("the token has no exp", reason="claim_missing")
    raw = claims.get("nbf", _MISSING)
    if raw is not _MISSING and _numeric_date(raw, "nbf") > now + leeway:
        raise TokenNotYetValid("the token is not valid yet")
    iat: float | None = None
    raw = claims.get("iat", _MISSING)
    if raw is not _MISSING:
        iat = _numeric_date(raw, "iat")
        if iat > now + leeway:
            raise TokenNotYetValid("the token was issued in the future")
    if policy.max_lifetime is not None:
        if exp is None:
            raise ClaimInvalid("a token without exp has no bounded lifetime", reason="claim_missing")
        # Without iat, the remaining lifetime is what can be bounded.
        if exp - (now if iat is None else iat) > policy.max_lifetime:
            raise ClaimInvalid("the token lives longer than allowed", reason="lifetime_exceeded")
    _check_audience(policy, claims)
    for name in ("sub", "jti"):
        raw = claims.get(name, _MISSING)
        if raw is not _MISSING and type(raw) is not str:
            raise ClaimInvalid(f"{name} must be a string")
    for name in policy.required_claims:
        if name not in claims:
            raise ClaimInvalid(f"the token has no {name} claim", reason="claim_missing")
    for name, expected, reason in policy.claim_equals:
        if not _same_value(claims.get(name, _MISSING), expected):
            raise ClaimInvalid(f"the {name} claim does not have the required value", reason=reason)
    return exp


# ---------------------------------------------------------------------------------- cache


class _Entry:
    """One verified token. ``source``/``generation``/``key`` let a hit notice that the key set
    changed since: the key is then looked up again (withdrawn: the entry is dropped).

    ``expired_at`` and ``valid_from`` are the instants a hit re-checks, so that a clock moved
    back or forward is still judged as a fresh check (:func:`check_claims`) would:

    - ``expired_at`` = ``exp`` + leeway (a fresh check refuses ``exp <= now - leeway``);
    - ``valid_from`` = the latest of ``nbf`` - leeway, ``iat`` - leeway (a fresh check refuses
      ``nbf > now + leeway`` and ``iat > now + leeway``) and, with ``max_lifetime`` and no
      ``iat``, ``exp`` - ``max_lifetime`` (the remaining lifetime grows as the clock goes back).
      ``not_before`` keeps the ``nbf``/``iat`` part apart, so that a hit raises the error a
      fresh check raises first; it is only looked at once ``now < valid_from``.
    """

    __slots__ = (
        "deadline",
        "expired_at",
        "generation",
        "key",
        "not_before",
        "provider",
        "source",
        "valid_from",
        "verified",
    )

    def __init__(
        self,
        deadline: float,
        verified: VerifiedToken,
        policy: CompiledPolicy,
        source: KeyGenerations | None,
        generation: int,
        key: VerificationKey,
    ) -> None:
        self.deadline = deadline
        self.verified = verified
        self.provider = verified.provider
        leeway = policy.leeway
        claims = verified.claims
        exp = verified.expires_at
        self.expired_at = math.inf if exp is None else exp + leeway
        # check_claims passed, so nbf and iat, when present, are JSON numbers it accepted.
        not_before = -math.inf
        for name in ("nbf", "iat"):
            raw = claims.get(name, _MISSING)
            if raw is not _MISSING:
                not_before = max(not_before, float(raw) - leeway)
        self.not_before = not_before
        lifetime_from = -math.inf
        if policy.max_lifetime is not None and exp is not None and "iat" not in claims:
            lifetime_from = exp - policy.max_lifetime
        self.valid_from = max(not_before, lifetime_from)
        self.source = source
        self.generation = generation
        self.key = key


def _generation_of(policy: CompiledPolicy) -> int:
    source = policy.versioned
    return 0 if source is None else source.generation


# -------------------------------------------------------------------------------- verifier


class Verifier:
    """Verifies bearer tokens against the configured providers; one instance per config.

    ``allowed`` (the route's providers, by name; ``None``: any) is applied after the token
    has been routed to its provider by ``iss``, on cache hits as well.
    """

    def __init__(
        self,
        providers: Mapping[str, ProviderPolicy],
        *,
        cache_max_entries: int = 10_000,
        cache_ttl: float = 300.0,
        cache_enabled: bool = True,
        clock: Callable[[], float] = time.time,
        max_token_bytes: int = _DEFAULT_MAX_TOKEN_BYTES,
    ) -> None:
        self._by_issuer: dict[str, CompiledPolicy] = {}
        self._without_issuer: CompiledPolicy | None = None
        #: Multi-tenant issuers: (text before {tenantid}, text after, accepted tenants, policy).
        self._templated: list[tuple[str, str, frozenset[str] | None, CompiledPolicy]] = []
        for name, policy in providers.items():
            if policy.name != name:
                raise ConfigError(f"provider {name!r} is compiled under the name {policy.name!r}")
            compiled = CompiledPolicy(policy)
            if policy.issuer is not None and TENANT_PLACEHOLDER in policy.issuer:
                prefix, _, suffix = policy.issuer.partition(TENANT_PLACEHOLDER)
                for other_prefix, other_suffix, _, other in self._templated:
                    # One iss could fill both templates: the first would claim (and maybe
                    # refuse) tokens meant for the second. Refused instead of ordered.
                    if (prefix.startswith(other_prefix) or other_prefix.startswith(prefix)) and (
                        suffix.endswith(other_suffix) or other_suffix.endswith(suffix)
                    ):
                        raise ConfigError(
                            f"providers {other.name!r} and {name!r} have overlapping {{tenantid}} "
                            "issuers: one token's iss could fill both"
                        )
                self._templated.append((prefix, suffix, policy.tenants, compiled))
            elif policy.issuer is None:
                if self._without_issuer is not None:
                    raise ConfigError("only one provider may have `issuer: null`")
                self._without_issuer = compiled
            elif policy.issuer in self._by_issuer:
                raise ConfigError(f"two providers have the issuer {policy.issuer!r}")
            else:
                self._by_issuer[policy.issuer] = compiled
        self._clock = clock
        self._ttl = float(cache_ttl)
        self._max_token_bytes = max_token_bytes
        self._cache: OrderedDict[str, _Entry] | None = (
            OrderedDict() if cache_enabled and cache_max_entries > 0 else None
        )
        self._cache_max_entries = cache_max_entries
        # Taken to insert (size check + eviction): verify_blocking runs on WSGI worker threads.
        self._lock = threading.Lock()
        #: Optional metrics hooks, one call per cache lookup that found a usable entry / none
        #: (set by ``build_policy`` only when the cache is on; must be cheap and never raise).
        self.on_cache_hit: Callable[[], object] | None = None
        self.on_cache_miss: Callable[[], object] | None = None

    # -- public API -------------------------------------------------------------------------

    def lookup(self, token: str, allowed: frozenset[str] | None = None) -> VerifiedToken | None:
        """The cached verification of ``token`` (counted as a cache hit), else ``None``.

        The synchronous fast path in front of :meth:`verify` (which then counts the miss): a
        hit is judged exactly as :meth:`verify` would judge it, and raises the same errors.
        """
        hit = self._cached(token, allowed)
        if hit is not None and self.on_cache_hit is not None:
            self.on_cache_hit()
        return hit

    async def verify(self, token: str, allowed: frozenset[str] | None = None) -> VerifiedToken:
        """Verify ``token`` for a route accepting the ``allowed`` providers (``None``: any).

        Raises a :class:`gateway.errors.GatewayError` subclass: InvalidToken family (401),
        AudienceMismatch (403), KeysUnavailable (503).
        """
        hit = self.lookup(token, allowed)
        if hit is not None:
            return hit
        if self.on_cache_miss is not None:
            self.on_cache_miss()
        parsed, policy = self._route(token, allowed)
        keys = policy.keys
        # The generation is read before the keys: a set installed in between makes the cache
        # entry look older than it is (checked again on its next hit), never newer.
        generation = _generation_of(policy)
        candidates = keys.candidates(parsed.kid, parsed.alg)
        if not candidates:
            await keys.refresh_on_miss()
            generation = _generation_of(policy)
            candidates = keys.candidates(parsed.kid, parsed.alg)
        return self._complete(token, parsed, policy, candidates, generation)

    def verify_blocking(self, token: str, allowed: frozenset[str] | None = None) -> VerifiedToken:
        """:meth:`verify` for synchronous callers (WSGI).

        On an unknown kid, calls the key source's ``refresh_on_miss_sync()`` when it has one.
        """
        hit = self.lookup(token, allowed)
        if hit is not None:
            return hit
        if self.on_cache_miss is not None:
            self.on_cache_miss()
        parsed, policy = self._route(token, allowed)
        keys = policy.keys
        generation = _generation_of(policy)
        candidates = keys.candidates(parsed.kid, parsed.alg)
        if not candidates:
            refresh: Callable[[], object] | None = getattr(keys, "refresh_on_miss_sync", None)
            if refresh is not None:
                refresh()
                generation = _generation_of(policy)
                candidates = keys.candidates(parsed.kid, parsed.alg)
        return self._complete(token, parsed, policy, candidates, generation)

    def clear_cache(self) -> None:
        """Forget every verified token (e.g. after a key was withdrawn)."""
        if self._cache is not None:
            with self._lock:
                self._cache.clear()

    @property
    def cache_size(self) -> int:
        """Number of cached verified tokens."""
        return 0 if self._cache is None else len(self._cache)

    # -- steps ------------------------------------------------------------------------------

    def _cached(self, token: str, allowed: frozenset[str] | None) -> VerifiedToken | None:
        if len(token) > self._max_token_bytes:
            raise TokenMalformed("the token is too large", reason="token_too_large")
        cache = self._cache
        if cache is None:
            return None
        entry = cache.get(token)
        if entry is None:
            return None
        now = self._clock()
        if now >= entry.deadline:
            cache.pop(token, None)
            return None
        source = entry.source
        if source is not None and source.generation != entry.generation:
            # The key set changed since this token was verified: is its key still there?
            generation = source.generation
            if not source.holds(entry.key):
                cache.pop(token, None)
                return None  # verified afresh: answers unknown_kid, bad_signature or 503
            entry.generation = generation
        # Least recently used goes first; another thread may have evicted it just now.
        with contextlib.suppress(KeyError):
            cache.move_to_end(token)
        if allowed is not None and entry.provider not in allowed:
            raise IssuerMismatch("the token's issuer is not accepted here", reason="issuer_not_allowed")
        # The deadline already ends at exp; re-checking keeps a moved clock honest.
        if now >= entry.expired_at:
            raise TokenExpired("the token has expired")
        if now < entry.valid_from:
            if now < entry.not_before:
                raise TokenNotYetValid("the token is not valid yet")
            raise ClaimInvalid("the token lives longer than allowed", reason="lifetime_exceeded")
        return entry.verified

    def _route(self, token: str, allowed: frozenset[str] | None) -> tuple[ParsedJWS, CompiledPolicy]:
        parsed = parse_compact(token)
        iss = parsed.claims.get("iss", _MISSING)
        if iss is _MISSING:
            policy = self._without_issuer
        elif type(iss) is str:
            policy = self._by_issuer.get(iss)
            if policy is None and self._templated:
                policy = self._tenant_policy(iss, parsed.claims)
        else:
            raise IssuerMismatch("iss must be a string")
        if policy is None:
            raise IssuerMismatch("the token's issuer is not a configured provider")
        if allowed is not None and policy.name not in allowed:
            raise IssuerMismatch("the token's issuer is not accepted here", reason="issuer_not_allowed")
        _check_algorithm(policy, parsed.alg)
        _check_typ(policy, parsed.header)
        return parsed, policy

    def _tenant_policy(self, iss: str, claims: Claims) -> CompiledPolicy | None:
        """The multi-tenant provider whose ``{tenantid}`` issuer ``iss`` fills in, if any.

        The tenant in ``iss`` must be the token's own ``tid`` claim (Microsoft's rule: a token
        of tenant A cannot name tenant B in ``iss``) and one of the provider's tenants. Both are
        signed claims: the signature check that follows makes them trustworthy.
        """
        for prefix, suffix, tenants, policy in self._templated:
            if not (iss.startswith(prefix) and iss.endswith(suffix)) or len(iss) <= len(prefix) + len(suffix):
                continue
            tenant = iss[len(prefix) : len(iss) - len(suffix)]
            if not TENANT_ID.fullmatch(tenant):
                continue  # a '/' or other text where the tenant goes: not this issuer
            if claims.get("tid") != tenant:
                raise IssuerMismatch("the token's iss does not name its own tid", reason="tenant_mismatch")
            if tenants is not None and tenant not in tenants:
                raise IssuerMismatch("the token's tenant is not accepted", reason="tenant_not_allowed")
            return policy
        return None

    def _complete(
        self,
        token: str,
        parsed: ParsedJWS,
        policy: CompiledPolicy,
        candidates: Sequence[VerificationKey],
        generation: int,
    ) -> VerifiedToken:
        key = verify_signature(candidates, parsed.alg, parsed.signing_input, parsed.signature)
        now = self._clock()
        claims = parsed.claims
        exp = check_claims(policy, claims, now)
        verified = VerifiedToken(provider=policy.name, claims=claims, header=parsed.header, expires_at=exp)
        cache = self._cache
        if cache is not None:
            deadline = now + self._ttl if exp is None else min(now + self._ttl, exp)
            source = policy.versioned
            if source is not None:
                # Keys served stale must not outlive max_stale through the cache either.
                deadline = min(deadline, now + source.usable_for())
            if deadline > now:
                entry = _Entry(deadline, verified, policy, source, generation, key)
                with self._lock:
                    if token not in cache:
                        while len(cache) >= self._cache_max_entries:
                            cache.popitem(last=False)
                    cache[token] = entry
        return verified
