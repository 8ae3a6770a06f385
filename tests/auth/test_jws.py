"""Strict compact JWS parsing (gateway.auth.jws): structure, base64url, JSON, header members.

These tests need no keys: signatures are arbitrary bytes, since parsing happens before any
cryptography. Signature-level and end-to-end refusals are in test_verify.py.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from gateway.auth import jws
from gateway.auth.jws import (
    MAX_DEPTH,
    MAX_KID_LENGTH,
    MAX_TOKEN_CHARS,
    JWSParts,
    ParsedJWS,
    b64url_decode,
    parse_compact,
    parse_compact_parts,
)
from gateway.errors import AlgorithmNotAllowed, GatewayError, TokenMalformed

SIG = bytes(range(32))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def seg(value: Any) -> str:
    """A segment from a JSON value (compact) or raw bytes/str taken as the JSON text."""
    if isinstance(value, bytes):
        return b64(value)
    if isinstance(value, str):
        return b64(value.encode("utf-8"))
    return b64(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def token(header: Any = None, payload: Any = None, signature: bytes = SIG) -> str:
    header = {"alg": "RS256", "kid": "rsa-1"} if header is None else header
    payload = {"sub": "alice", "exp": 2_000_000_000} if payload is None else payload
    return f"{seg(header)}.{seg(payload)}.{b64(signature)}"


def refused(tok: str, reason: str = "token_malformed", *, parts: bool = False) -> TokenMalformed:
    with pytest.raises(TokenMalformed) as info:
        (parse_compact_parts if parts else parse_compact)(tok)
    assert info.value.reason == reason, info.value.detail
    return info.value


# ----------------------------------------------------------------------------------- accepted


def test_parses_header_claims_signing_input_and_signature() -> None:
    tok = token()
    parsed = parse_compact(tok)
    assert isinstance(parsed, ParsedJWS)
    assert parsed.header == {"alg": "RS256", "kid": "rsa-1"}
    assert parsed.claims == {"sub": "alice", "exp": 2_000_000_000}
    assert parsed.signing_input == tok.rsplit(".", 1)[0].encode("ascii")
    assert parsed.signature == SIG
    assert parsed.alg == "RS256"
    assert parsed.kid == "rsa-1"


def test_kid_is_optional() -> None:
    assert parse_compact(token({"alg": "HS256"})).kid is None


def test_parts_keep_a_non_json_payload_as_bytes() -> None:
    parts = parse_compact_parts(f"{seg({'alg': 'EdDSA'})}.{b64(b'Example text')}.{b64(SIG)}")
    assert isinstance(parts, JWSParts)
    assert parts.payload == b"Example text"


def test_parts_accept_an_empty_payload_but_a_jwt_needs_claims() -> None:
    tok = f"{seg({'alg': 'RS256'})}..{b64(SIG)}"
    assert parse_compact_parts(tok).payload == b""
    refused(tok)


def test_json_whitespace_around_and_inside_is_valid() -> None:
    parsed = parse_compact(token(b' { "alg" : "HS256" ,\n\t"kid":"k" } \r\n', b'\n{"sub":"a"} '))
    assert parsed.header == {"alg": "HS256", "kid": "k"}
    assert parsed.claims == {"sub": "a"}


def test_escaped_non_ascii_and_surrogate_pairs_are_accepted() -> None:
    parsed = parse_compact(token(payload=b'{"name":"\\u00e9lodie \\ud83d\\ude00"}'))
    assert parsed.claims["name"] == "élodie 😀"


def test_raw_utf8_is_accepted() -> None:
    parsed = parse_compact(token(payload={"name": "élodie✓"}))
    assert parsed.claims["name"] == "élodie✓"


def test_fractional_and_large_numbers_are_kept() -> None:
    parsed = parse_compact(token(payload=b'{"exp":1799999999.5,"big":1e20,"n":-3}'))
    assert parsed.claims == {"exp": 1799999999.5, "big": 1e20, "n": -3}


def test_nesting_at_the_limit_is_accepted_and_brackets_in_strings_do_not_count() -> None:
    nested: Any = "x"
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    assert parse_compact(token(payload={"n": nested})).claims["n"] is not None
    many = {"s": "[[[[{{{{" * 50, "list": [[1]] * 40}
    assert parse_compact(token(payload=many)).claims == many


# ------------------------------------------------------------------------- segments (2.7, 2.14)


@pytest.mark.parametrize(
    "tok",
    [
        "",
        "abc",
        f"{seg({'alg': 'RS256'})}.{seg({'sub': 'a'})}",  # signature stripped, no dot
        f"{seg({'alg': 'RS256'})}.{seg({'sub': 'a'})}.",  # empty signature (CVE-2020-28042)
        f".{seg({'sub': 'a'})}.{b64(SIG)}",  # empty header
        f"{seg({'alg': 'RS256'})}.{seg({'sub': 'a'})}.{b64(SIG)}.{b64(SIG)}",  # 4 segments
        f"{seg({'alg': 'RS256'})}.{seg({'sub': 'a'})}.{b64(SIG)}.",  # trailing dot
        ".".join([seg({"alg": "RS256"})] * 6),  # 6 segments
        "..",
        "...",
    ],
    ids=["empty", "one", "two", "empty_sig", "empty_header", "four", "trailing_dot", "six", "dots2", "dots3"],
)
def test_anything_but_three_segments_is_refused(tok: str) -> None:
    refused(tok)


@pytest.mark.parametrize(
    "header",
    [{"alg": "RSA-OAEP", "enc": "A256GCM"}, {"alg": "dir", "enc": "A128GCM"}],
    ids=["rsa_oaep", "dir"],
)
def test_jwe_is_refused(header: dict[str, str]) -> None:
    jwe = ".".join([seg(header), "", b64(b"iv" * 6), b64(b"ciphertext"), b64(b"tag" * 5)])
    refused(jwe, "token_unsupported")
    # The same header on a 3-segment token is not JWE-shaped but still names encryption.
    refused(token(header), "header_unsupported")


@pytest.mark.parametrize("flattened", [True, False], ids=["flattened", "general"])
def test_json_serialisation_is_refused(flattened: bool) -> None:
    protected = seg({"alg": "RS256"})
    sig = {"protected": protected, "signature": b64(SIG)}
    doc: dict[str, Any] = {"payload": seg({"sub": "a"})}
    doc.update(sig) if flattened else doc.update(signatures=[sig])
    refused(json.dumps(doc), "token_unsupported")


def test_many_dots_are_refused_fast() -> None:
    start = time.perf_counter()
    for _ in range(100):
        refused("e" + "." * 8000 + "e")
    assert time.perf_counter() - start < 2.0  # generous: linear, not quadratic


def test_a_token_beyond_the_hard_cap_is_refused_before_parsing() -> None:
    refused("a" * (MAX_TOKEN_CHARS + 1), "token_too_large")
    refused(token(payload={"pad": "x" * MAX_TOKEN_CHARS}), "token_too_large")


# --------------------------------------------------------------------- non-canonical base64 (2.13)


def _segments(tok: str) -> list[str]:
    return tok.split(".")


@pytest.mark.parametrize("index", [0, 1, 2], ids=["header", "payload", "signature"])
@pytest.mark.parametrize("suffix", ["=", "==", "==="], ids=["pad1", "pad2", "pad3"])
def test_padding_is_refused(index: int, suffix: str) -> None:
    parts = _segments(token())
    parts[index] += suffix
    refused(".".join(parts))


@pytest.mark.parametrize("index", [0, 1, 2], ids=["header", "payload", "signature"])
@pytest.mark.parametrize("bad", ["+", "/", " ", "\n", "!", "?", "é", "%2B", "\x00"])
def test_characters_outside_base64url_are_refused(index: int, bad: str) -> None:
    parts = _segments(token())
    middle = len(parts[index]) // 2
    parts[index] = parts[index][:middle] + bad + parts[index][middle:]
    refused(".".join(parts))


def test_standard_alphabet_in_place_of_url_safe_is_refused() -> None:
    # A signature with both '-' and '_' when encoded url-safe.
    sig = bytes([0xFB, 0xFF, 0xBF]) * 4
    tok = token(signature=sig)
    assert "-" in tok and "_" in tok
    refused(tok.replace("-", "+"))
    refused(tok.replace("_", "/"))
    assert parse_compact(tok).signature == sig


def _all_last_chars(segment: str) -> list[str]:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return [segment[:-1] + c for c in alphabet]


@pytest.mark.parametrize("length", [1, 2, 31, 32, 33, 256], ids=lambda n: f"{n}bytes")
def test_a_segment_is_accepted_only_in_its_canonical_spelling(length: int) -> None:
    """Every last character is tried: accepted exactly when re-encoding gives the segment back."""
    canonical = b64(bytes((7 * i + 3) % 256 for i in range(length)))
    header, payload, _ = _segments(token())
    accepted = 0
    for variant in _all_last_chars(canonical):
        lenient = base64.urlsafe_b64decode(variant + "=" * (-len(variant) % 4))
        round_trips = b64(lenient) == variant
        try:
            parsed = parse_compact(f"{header}.{payload}.{variant}")
        except TokenMalformed:
            assert not round_trips, variant
            continue
        assert round_trips, variant
        assert parsed.signature == lenient
        accepted += 1
    # 4 unused bits leave 4 last characters, 2 leave 16, none leave all 64.
    assert accepted == {1: 4, 2: 16, 0: 64}[length % 3]


def test_changed_unused_bits_in_header_and_payload_are_refused() -> None:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    header, payload, signature = _segments(token({"alg": "RS256", "x": "a"}, {"sub": "alice1"}))
    assert {len(header) % 4, len(payload) % 4} == {2, 3}, "fixture must leave unused bits"
    for index, part in ((0, header), (1, payload)):
        parts = [header, payload, signature]
        parts[index] = part[:-1] + alphabet[alphabet.index(part[-1]) ^ 1]  # lowest bit is unused
        refused(".".join(parts))


def test_a_segment_of_length_4k_plus_1_is_refused() -> None:
    header, payload, signature = _segments(token())
    refused(f"{header}.{payload}.{signature}A" if len(signature) % 4 == 0 else f"{header}.{payload}.AAAAA")


def test_b64url_decode_is_strict() -> None:
    assert b64url_decode("QQ") == b"A"
    assert b64url_decode("") == b""
    for bad in ("QQ==", "QR", "Q", "Q+", "Q/", "Q Q"):
        with pytest.raises(TokenMalformed):
            b64url_decode(bad)


# --------------------------------------------------------------------------- JSON level (2.11)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"role":"admin","sub":"a","role":"user"}',
        b'{"sub":"alice","sub":"mallory"}',
        b'{"a":{"x":1,"x":2}}',
        b'{"a":[{"x":1,"x":2}]}',
    ],
    ids=["role", "sub", "nested", "in_array"],
)
def test_duplicate_members_in_the_payload_are_refused(payload: bytes) -> None:
    error = refused(token(payload=payload))
    assert "duplicate" in error.detail


def test_duplicate_members_in_the_header_are_refused() -> None:
    refused(token(b'{"alg":"none","alg":"RS256"}'))
    refused(token(b'{"alg":"RS256","kid":"a","kid":"b"}'))


@pytest.mark.parametrize(
    "payload", [b"[1,2,3]", b'"admin"', b"42", b"null", b"true", b"", b" ", b"{}x", b'{"a":1}{}']
)
def test_a_payload_that_is_not_one_json_object_is_refused(payload: bytes) -> None:
    refused(token(payload=payload))


@pytest.mark.parametrize("header", [b"[]", b'["RS256"]', b'"RS256"', b"1", b"null", b'{"alg":"RS256"}x'])
def test_a_header_that_is_not_one_json_object_is_refused(header: bytes) -> None:
    refused(token(header))


@pytest.mark.parametrize(
    "payload",
    [
        b'{"exp":NaN}',
        b'{"exp":Infinity}',
        b'{"exp":-Infinity}',
        b'{"exp":1e400}',
        b'{"exp":-1e400}',
        b'{"x":[1.5e999]}',
    ],
)
def test_nan_and_infinity_are_refused(payload: bytes) -> None:
    refused(token(payload=payload))


@pytest.mark.parametrize(
    "payload",
    [
        b'{"sub":"\xff\xfe"}',  # invalid UTF-8 (catalogue 2.11)
        b'\xef\xbb\xbf{"sub":"a"}',  # UTF-8 BOM
        '{"sub":"a"}'.encode("utf-16"),  # json.loads(bytes) would guess UTF-16
        '{"sub":"a"}'.encode("utf-32-le"),
        b'{"sub":"\xc0\xaf"}',  # overlong encoding
        b'{"sub":"\xed\xa0\x80"}',  # encoded surrogate
    ],
    ids=["ff_fe", "bom", "utf16", "utf32", "overlong", "cesu"],
)
def test_a_payload_that_is_not_utf8_is_refused(payload: bytes) -> None:
    refused(token(payload=payload))


@pytest.mark.parametrize(
    "payload",
    [b'{"sub":"\\ud800"}', b'{"sub":"a\\uDC00b"}', b'{"\\udbff":1}', b'{"s":"\\ude00\\ud83d"}'],
    ids=["high", "low", "key", "reversed_pair"],
)
def test_lone_surrogates_are_refused(payload: bytes) -> None:
    refused(token(payload=payload))


@pytest.mark.parametrize("opening", ["[", '{"a":'], ids=["arrays", "objects"])
@pytest.mark.parametrize("where", ["header", "payload"])
def test_deep_nesting_is_refused_without_recursion_error(opening: str, where: str) -> None:
    closing = "]" if opening == "[" else "}"
    deep = opening * 3000 + "1" + closing * 3000
    if where == "header":
        tok = token(f'{{"alg":"RS256","x":{deep}}}')
    else:
        tok = token(payload=f'{{"sub":"a","x":{deep}}}')
    refused(tok)


def test_one_level_beyond_the_limit_is_refused() -> None:
    nested: Any = 1
    for _ in range(MAX_DEPTH):
        nested = [nested]
    refused(token(payload={"n": nested}))


def test_an_integer_beyond_the_digit_limit_is_refused() -> None:
    refused(token(payload=b'{"exp":' + b"9" * 5000 + b"}"))


# ----------------------------------------------------------------------------- header members


@pytest.mark.parametrize(
    "header",
    [
        {"kid": "rsa-1"},
        {"alg": None},
        {"alg": ""},
        {"alg": ["RS256"]},
        {"alg": 256},
        {"alg": True},
        {"alg": {"name": "RS256"}},
    ],
    ids=["missing", "null", "empty", "list", "number", "bool", "object"],
)
def test_a_header_without_a_string_alg_is_refused(header: dict[str, Any]) -> None:
    with pytest.raises(AlgorithmNotAllowed):
        parse_compact(token(header))


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["x-require-mfa"], "x-require-mfa": True},
        {"crit": []},
        {"crit": "x-ext"},
        {"crit": ["exp"]},
        {"crit": ["b64"], "b64": False},
        {"b64": False},
        {"b64": True},
        {"zip": "DEF"},
        {"enc": "A128GCM"},
        {"jwk": {"kty": "oct", "k": "AAAA"}},
        {"jku": "https://attacker.example/jwks.json"},
        {"x5u": "https://attacker.example/cert.pem"},
        {"x5c": ["MIIB"]},
        {"jku": None},
    ],
    ids=[
        "crit_unknown",
        "crit_empty",
        "crit_string",
        "crit_registered",
        "b64_false_crit",
        "b64_false",
        "b64_true",
        "zip",
        "enc",
        "jwk",
        "jku",
        "x5u",
        "x5c",
        "jku_null",
    ],
)
def test_refused_header_members(extra: dict[str, Any]) -> None:
    refused(token({"alg": "RS256", "kid": "rsa-1", **extra}), "header_unsupported")


def test_refused_header_members_are_named_in_the_detail_not_their_values() -> None:
    error = refused(token({"alg": "RS256", "jku": "https://secret.example/x"}), "header_unsupported")
    assert "jku" in error.detail
    assert "secret.example" not in error.detail


def test_b64_false_payload_in_the_clear_is_refused_either_way() -> None:
    # RFC 7797 §4.2: payload in the clear (not base64url) fails the compact syntax first.
    header = seg({"alg": "HS256", "b64": False, "crit": ["b64"]})
    refused(f"{header}.$.02.{b64(SIG)}")
    refused(f'{header}.{{"sub":"a"}}.{b64(SIG)}')
    refused(f"{header}..{b64(SIG)}", "header_unsupported", parts=True)


@pytest.mark.parametrize(
    "kid",
    [1, 0, ["rsa-1"], {"kid": "rsa-1"}, None, True, "", "k" * (MAX_KID_LENGTH + 1), "k" * 4096],
    ids=["int", "zero", "list", "object", "null", "bool", "empty", "too_long", "4KiB"],
)
def test_an_unusable_kid_is_refused(kid: Any) -> None:
    refused(token({"alg": "RS256", "kid": kid}), "kid_invalid")


@pytest.mark.parametrize(
    "kid",
    ["k" * MAX_KID_LENGTH, "../../../../../../dev/null", "x' UNION SELECT '1';--", "|sleep 10", "rsa-1\x00"],
    ids=["max_length", "traversal", "sql", "shell", "nul"],
)
def test_any_string_kid_is_only_a_lookup_key(kid: str) -> None:
    assert parse_compact(token({"alg": "RS256", "kid": kid})).kid == kid


def test_other_header_members_are_kept_but_not_interpreted() -> None:
    header = {"alg": "RS256", "typ": "at+jwt", "cty": "JWT", "x5t": "abc", "custom": [1]}
    assert parse_compact(token(header)).header == header


def test_only_our_error_types_escape() -> None:
    for tok in ("\ud800", "é.é.é", "a.b.c", "{}", "[]", "\x00.\x00.\x00", "A.A.A", "AA.AA.AA"):
        with pytest.raises(GatewayError):
            parse_compact(tok)


def test_module_exports_are_defined() -> None:
    for name in jws.__all__:
        assert hasattr(jws, name)
