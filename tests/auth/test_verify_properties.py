"""Property tests (hypothesis): no mutation of a valid token is accepted, nothing but our errors.

A mutation is one to three edits of the token string: flip a bit of a character, insert any
character, delete one, or replace one with any character. Unless the result is the identical
token, the verifier must refuse it, and with a :class:`gateway.errors.GatewayError` subclass:
never another exception, never a 5xx.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.auth.jws import parse_compact
from gateway.auth.verify import Verifier
from gateway.errors import GatewayError, KeysUnavailable
from tests.auth.test_verify import (
    EC_KEY,
    ED_KEY,
    HMAC_SECRET,
    ISS,
    NOW,
    RSA_KEY,
    Clock,
    claims_for,
    django_claims,
    hmac_token,
    make_token,
    make_verifier,
)

SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

TOKENS = {
    "RS256": make_token(claims_for(role="user")),
    "ES256": make_token(claims_for(role="user"), alg="ES256", key=EC_KEY, kid="ec-1"),
    "EdDSA": make_token(claims_for(role="user"), alg="EdDSA", key=ED_KEY, kid="ed-1"),
    "HS256": hmac_token(HMAC_SECRET, django_claims()),
}

# Characters worth trying more often than chance would: structure, padding, the other
# alphabet, whitespace, NUL, a lone surrogate, non-ASCII.
_SPECIAL = st.sampled_from(
    [".", "=", "+", "/", "-", "_", " ", "\t", "\n", "\x00", "\ud800", "é", "{", "A", "a"]
)
CHARS = st.one_of(_SPECIAL, st.characters())


@st.composite
def mutated(draw: st.DrawFn, original: str) -> str:
    token = original
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "replace"]))
        if kind == "insert":
            at = draw(st.integers(0, len(token)))
            token = token[:at] + draw(CHARS) + token[at:]
            continue
        if not token:
            continue
        at = draw(st.integers(0, len(token) - 1))
        if kind == "delete":
            token = token[:at] + token[at + 1 :]
        elif kind == "replace":
            token = token[:at] + draw(CHARS) + token[at + 1 :]
        else:
            flipped = chr(ord(token[at]) ^ (1 << draw(st.integers(0, 7))))
            token = token[:at] + flipped + token[at + 1 :]
    return token


def _verifier(cached: bool) -> Verifier:
    return make_verifier(clock=Clock(), cache_enabled=cached)


UNCACHED = _verifier(False)
CACHED = _verifier(True)
for _token in TOKENS.values():
    # The originals verify, and the cached verifier holds them: a mutation must not hit.
    assert UNCACHED.verify_blocking(_token)
    assert CACHED.verify_blocking(_token)


def _assert_refused_or_identical(verifier: Verifier, original: str, candidate: str) -> None:
    try:
        result = verifier.verify_blocking(candidate)
    except GatewayError as exc:
        assert not isinstance(exc, KeysUnavailable)
        assert 400 <= exc.status < 500
        return
    assert candidate == original, "a mutated token was accepted"
    assert result.claims == parse_compact(original).claims


@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
@pytest.mark.parametrize("alg", sorted(TOKENS))
@SETTINGS
@given(data=st.data())
def test_no_mutation_of_a_valid_token_is_accepted(alg: str, cached: bool, data: st.DataObject) -> None:
    original = TOKENS[alg]
    candidate = data.draw(mutated(original))
    _assert_refused_or_identical(CACHED if cached else UNCACHED, original, candidate)


@SETTINGS
@given(text=st.text(alphabet=st.one_of(_SPECIAL, st.characters()), max_size=200))
def test_arbitrary_text_only_raises_our_errors(text: str) -> None:
    try:
        UNCACHED.verify_blocking(text)
    except GatewayError as exc:
        assert exc.status < 500
    else:  # pragma: no cover - would be a forgery
        pytest.fail("arbitrary text was accepted")


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
CLAIM_NAMES = st.sampled_from(
    ["iss", "aud", "exp", "nbf", "iat", "sub", "jti", "token_type", "role", "scope"]
) | st.text(max_size=8)
TIME_VALUES = st.one_of(
    st.floats(min_value=NOW - 7200, max_value=NOW + 7200),
    st.integers(int(NOW) - 7200, int(NOW) + 7200),
    JSON_VALUES,
)


@SETTINGS
@given(
    extra=st.dictionaries(CLAIM_NAMES, JSON_VALUES, max_size=6),
    times=st.fixed_dictionaries({}, optional={"exp": TIME_VALUES, "nbf": TIME_VALUES, "iat": TIME_VALUES}),
    with_iss=st.booleans(),
)
def test_any_signed_claims_set_is_accepted_or_refused_cleanly(
    extra: dict[str, Any], times: dict[str, Any], with_iss: bool
) -> None:
    """Legit-signed HS256 tokens with random claims: a verdict, never a crash."""
    claims = {**extra, **times}
    if with_iss:
        claims["iss"] = ISS
    else:
        claims.pop("iss", None)
    token = hmac_token(HMAC_SECRET, json.loads(json.dumps(claims)))
    try:
        result = UNCACHED.verify_blocking(token)
    except GatewayError as exc:
        assert exc.status < 500
        return
    # Accepted: then it went to the HMAC provider and every rule held.
    assert result.provider == "django"
    assert result.claims.get("token_type") == "access"
    exp = result.claims["exp"]
    assert type(exp) in (int, float) and exp > NOW - 30


@SETTINGS
@given(
    header=st.dictionaries(
        st.text(max_size=6) | st.sampled_from(["alg", "kid", "typ", "crit"]), JSON_VALUES, max_size=5
    )
)
def test_any_header_is_accepted_or_refused_cleanly(header: dict[str, Any]) -> None:
    header = {"alg": "RS256", "kid": "rsa-1", **header}
    token = make_token(header=header, signing_alg="RS256", key=RSA_KEY)
    try:
        UNCACHED.verify_blocking(token)
    except GatewayError as exc:
        assert exc.status < 500
        return
    assert header["alg"] == "RS256" and header["kid"] == "rsa-1"
