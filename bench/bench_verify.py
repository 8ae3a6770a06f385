"""Micro-benchmark of token verification: the gateway's Verifier against its building blocks.

For RS256, ES256, EdDSA and HS256, with DISTINCT tokens (every token is seen once per round,
so the verified-token cache never hits), side by side in the same process and the same rounds:

- ``raw``: the ``cryptography`` signature check alone (segments split and decoded beforehand;
  ES256's raw R||S already converted to DER): the floor;
- ``jwt.decode``: plain PyJWT 2.x with key, algorithm, audience, issuer and leeway;
- ``parse``: the gateway's strict compact parse alone (gateway.auth.jws.parse_compact);
- ``gateway``: ``Verifier.verify_blocking`` with an empty cache each round: strict parse, issuer
  routing, alg/typ checks, key lookup, signature, claims, cache miss and store;
- ``gateway async``: the same through ``await Verifier.verify`` inside one running loop.

Then the cache-hit latency (the same token verified again and again), blocking and async.
Rounds are interleaved (every method of every algorithm in each round, in shuffled order) and
medians are reported, because the machine is shared and noisy.

    .venv/bin/python bench/bench_verify.py [--tokens 2000] [--rounds 7] [--hits 200000]

Not a timed test: figures go to bench/README.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hmac
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import get_default_algorithms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.auth.jws import parse_compact
from gateway.auth.types import ProviderPolicy, VerificationKey
from gateway.auth.verify import Verifier

ISSUER = "https://idp.example.com/realms/main"
HMAC_ISSUER = "https://hmac.example.com"
AUDIENCE = "orders-api"
ALGS = ("RS256", "ES256", "EdDSA", "HS256")
METHODS = ("raw", "jwt.decode", "parse", "gateway", "gateway async")
_PYJWT = get_default_algorithms()


class _Keys:
    """A minimal in-memory KeyLookup (the JWKS lifecycle's lookup is a dict get as well)."""

    def __init__(self, keys: Sequence[VerificationKey]) -> None:
        self._by_kid = {key.kid: key for key in keys}
        self._by_alg: dict[str, list[VerificationKey]] = {}
        for key in keys:
            self._by_alg.setdefault(key.alg, []).append(key)

    def candidates(self, kid: str | None, alg: str) -> Sequence[VerificationKey]:
        if kid is None:
            return self._by_alg.get(alg, ())
        key = self._by_kid.get(kid)
        return (key,) if key is not None and key.alg == alg else ()

    async def refresh_on_miss(self) -> bool:
        return False


class _Setup:
    def __init__(self) -> None:
        self.private: dict[str, Any] = {
            "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ES256": ec.generate_private_key(ec.SECP256R1()),
            "EdDSA": ed25519.Ed25519PrivateKey.generate(),
            "HS256": b"bench-hmac-secret-0123456789abcdef-0123456789",
        }
        self.public: dict[str, Any] = {
            alg: key if isinstance(key, bytes) else key.public_key() for alg, key in self.private.items()
        }
        idp_keys = [
            VerificationKey(alg=alg, algorithm=_PYJWT[alg], prepared=self.public[alg], kid=f"{alg.lower()}-1")
            for alg in ("RS256", "ES256", "EdDSA")
        ]
        hmac_key = VerificationKey(
            alg="HS256", algorithm=_PYJWT["HS256"], prepared=self.public["HS256"], kty="oct"
        )
        self.providers = {
            "idp": ProviderPolicy(
                name="idp",
                issuer=ISSUER,
                algorithms=("RS256", "ES256", "EdDSA"),
                audiences=(AUDIENCE,),
                keys=_Keys(idp_keys),
            ),
            "hmac": ProviderPolicy(
                name="hmac",
                issuer=HMAC_ISSUER,
                algorithms=("HS256",),
                audiences=(AUDIENCE,),
                keys=_Keys([hmac_key]),
            ),
        }

    def claims(self, alg: str, i: int) -> dict[str, Any]:
        now = int(time.time())
        # Shaped like a Keycloak access token (about 700 bytes of JSON).
        return {
            "exp": now + 3600,
            "iat": now,
            "nbf": now,
            "jti": f"{i:08d}-5d2c-4c1e-9d7a-{random.getrandbits(48):012x}",
            "iss": HMAC_ISSUER if alg == "HS256" else ISSUER,
            "aud": [AUDIENCE, "account"],
            "sub": "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "typ": "Bearer",
            "azp": "orders-web",
            "session_state": "b2c1c3a0-4a3e-4d1f-8f6e-0c9d1f2e3a4b",
            "realm_access": {"roles": ["offline_access", "uma_authorization", "user"]},
            "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
            "scope": "openid email profile orders:read",
            "email_verified": True,
            "name": "Jane Doe",
            "preferred_username": "jane",
            "email": "jane.doe@example.com",
        }

    def tokens(self, alg: str, count: int) -> list[str]:
        headers = None if alg == "HS256" else {"kid": f"{alg.lower()}-1"}
        return [
            jwt.encode(self.claims(alg, i), self.private[alg], algorithm=alg, headers=headers)
            for i in range(count)
        ]


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _raw_checks(alg: str, public: Any, tokens: Sequence[str]) -> Callable[[], None]:
    """The crypto alone over pre-decoded tokens: the floor every method pays."""
    parts = []
    for token in tokens:
        head, payload, sig = token.split(".")
        signature = _b64decode(sig)
        if alg == "ES256":
            signature = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
        parts.append((f"{head}.{payload}".encode(), signature))

    if alg == "RS256":

        def run() -> None:
            for signing_input, signature in parts:
                public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())

    elif alg == "ES256":

        def run() -> None:
            for signing_input, signature in parts:
                public.verify(signature, signing_input, ec.ECDSA(hashes.SHA256()))

    elif alg == "EdDSA":

        def run() -> None:
            for signing_input, signature in parts:
                public.verify(signature, signing_input)

    else:

        def run() -> None:
            for signing_input, signature in parts:
                if not hmac.compare_digest(hmac.new(public, signing_input, "sha256").digest(), signature):
                    raise AssertionError("bad HMAC")

    return run


def _pyjwt_checks(alg: str, public: Any, tokens: Sequence[str]) -> Callable[[], None]:
    issuer = HMAC_ISSUER if alg == "HS256" else ISSUER

    def run() -> None:
        for token in tokens:
            jwt.decode(token, public, algorithms=[alg], audience=AUDIENCE, issuer=issuer, leeway=30)

    return run


def _parse_checks(tokens: Sequence[str]) -> Callable[[], None]:
    def run() -> None:
        for token in tokens:
            parse_compact(token)

    return run


def _gateway_checks(providers: dict[str, ProviderPolicy], tokens: Sequence[str]) -> Callable[[], None]:
    def run() -> None:
        verifier = Verifier(providers, cache_max_entries=len(tokens) + 1)  # fresh: every token misses
        for token in tokens:
            verifier.verify_blocking(token)

    return run


def _gateway_async_checks(providers: dict[str, ProviderPolicy], tokens: Sequence[str]) -> Callable[[], None]:
    loop = asyncio.new_event_loop()

    async def verify_all(verifier: Verifier) -> None:
        for token in tokens:
            await verifier.verify(token)

    def run() -> None:
        loop.run_until_complete(verify_all(Verifier(providers, cache_max_entries=len(tokens) + 1)))

    return run


def _timed(run: Callable[[], None]) -> float:
    gc.collect()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _hit_latency(providers: dict[str, ProviderPolicy], token: str, count: int) -> tuple[float, float]:
    verifier = Verifier(providers)
    verifier.verify_blocking(token)
    gc.collect()
    start = time.perf_counter()
    for _ in range(count):
        verifier.verify_blocking(token)
    blocking = (time.perf_counter() - start) / count

    async def hits() -> float:
        started = time.perf_counter()
        for _ in range(count):
            await verifier.verify(token)
        return (time.perf_counter() - started) / count

    return blocking, asyncio.run(hits())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--tokens", type=int, default=2000, help="distinct tokens per algorithm (default 2000)"
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument(
        "--hits", type=int, default=200_000, help="cache hits timed per round (default 200000)"
    )
    args = parser.parse_args(argv)

    setup = _Setup()
    print(f"signing {args.tokens} distinct tokens per algorithm ...", file=sys.stderr)
    tokens = {alg: setup.tokens(alg, args.tokens) for alg in ALGS}
    print(f"token sizes: {', '.join(f'{alg} {len(tokens[alg][0])} B' for alg in ALGS)}", file=sys.stderr)

    runs: dict[tuple[str, str], Callable[[], None]] = {}
    for alg in ALGS:
        runs[alg, "raw"] = _raw_checks(alg, setup.public[alg], tokens[alg])
        runs[alg, "jwt.decode"] = _pyjwt_checks(alg, setup.public[alg], tokens[alg])
        runs[alg, "parse"] = _parse_checks(tokens[alg])
        runs[alg, "gateway"] = _gateway_checks(setup.providers, tokens[alg])
        runs[alg, "gateway async"] = _gateway_async_checks(setup.providers, tokens[alg])
    for run in runs.values():  # warm-up, and a check that every method accepts every token
        run()

    rates: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    hit_blocking: list[float] = []
    hit_async: list[float] = []
    order = list(runs)
    for round_number in range(args.rounds):
        random.shuffle(order)
        for key in order:
            rates[key].append(args.tokens / _timed(runs[key]))
        blocking, in_loop = _hit_latency(setup.providers, tokens["RS256"][0], args.hits)
        hit_blocking.append(blocking)
        hit_async.append(in_loop)
        print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)

    median = {key: statistics.median(values) for key, values in rates.items()}
    print(f"\nMedians of {args.rounds} interleaved rounds, {args.tokens} distinct tokens per algorithm")
    print("and round.\n")
    print(
        "| alg | " + " | ".join(f"{m} /s" for m in METHODS) + " | gateway vs jwt.decode | gateway µs/token |"
    )
    print("|---|" + "---:|" * (len(METHODS) + 2))
    for alg in ALGS:
        cells = " | ".join(f"{median[alg, m]:,.0f}" for m in METHODS)
        ratio = median[alg, "gateway"] / median[alg, "jwt.decode"]
        print(f"| {alg} | {cells} | {ratio:.2f}x | {1e6 / median[alg, 'gateway']:.1f} |")
    print(
        f"\nCache hit (RS256 token, {args.hits:,} hits per round): "
        f"blocking {statistics.median(hit_blocking) * 1e6:.2f} µs, "
        f"async {statistics.median(hit_async) * 1e6:.2f} µs (median)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
