"""Strict parsing of compact JWS tokens (RFC 7515 §7.1), before any cryptography.

Only one serialisation is accepted: three segments of *canonical* base64url (alphabet
``A-Za-z0-9-_``, no padding, zero unused bits), so that one token has exactly one spelling
(RFC 8725 §2.6). Header and payload must be UTF-8 JSON objects without duplicate member
names, NaN/Infinity, lone surrogates or deep nesting. Header members that would let the token
choose its own key or change how it is processed (``jwk``, ``jku``, ``x5u``, ``x5c``,
``crit``, ``b64``, ``zip``, ``enc``) are refused outright: the gateway never uses them, and a
token that carries them was not made for it.

Everything here is pure and raises only :class:`gateway.errors.TokenMalformed` (with a finer
``reason``) or :class:`gateway.errors.AlgorithmNotAllowed` (missing or non-string ``alg``).
"""

from __future__ import annotations

import binascii
import json
import re
import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import cachetools

from gateway.errors import AlgorithmNotAllowed, TokenMalformed

__all__ = [
    "MAX_DEPTH",
    "MAX_KID_LENGTH",
    "MAX_TOKEN_CHARS",
    "REFUSED_HEADER_MEMBERS",
    "JWSParts",
    "ParsedJWS",
    "b64url_decode",
    "parse_compact",
    "parse_compact_parts",
]

#: Hard cap on the token length, whatever the caller checked before (extraction enforces the
#: configured ``max_token_bytes``, usually much smaller).
MAX_TOKEN_CHARS = 64 * 1024
#: Longest ``kid`` accepted; longer ones are refused before any key lookup.
MAX_KID_LENGTH = 256
#: Deepest JSON nesting accepted in header or payload (real tokens stay below 6).
MAX_DEPTH = 32
#: Header members refused in any form. ``jwk``/``jku``/``x5u``/``x5c`` name a key or a key URL
#: (the key is always chosen from configuration); ``crit``/``b64`` change how the token is
#: processed (RFC 7515 §4.1.11, RFC 7797); ``zip``/``enc`` belong to JWE.
REFUSED_HEADER_MEMBERS = frozenset({"jwk", "jku", "x5u", "x5c", "crit", "b64", "zip", "enc"})

# Header and signature are never empty; an empty payload is syntactically possible (the JSON
# check refuses it for JWTs).
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+")
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_PADDING = (b"", b"", b"==", b"=")
_STANDARD_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# A segment of length 4k+2 encodes 1 byte in its last two characters (4 unused bits), one of
# length 4k+3 encodes 2 bytes in its last three (2 unused bits). Canonical encoders leave the
# unused bits zero; the lookup is on the last character after translation to standard base64.
_CANONICAL_LAST: tuple[frozenset[int], ...] = (
    frozenset(range(256)),  # 4k: no unused bits
    frozenset(),  # 4k+1: never valid
    frozenset(c for i, c in enumerate(_STANDARD_ALPHABET) if i & 0x0F == 0),
    frozenset(c for i, c in enumerate(_STANDARD_ALPHABET) if i & 0x03 == 0),
)
# ``\uD800``-``\uDFFF`` escapes: only then can a decoded string hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_BRACKETS_ONLY = bytes(c for c in range(256) if c not in b"[]{}")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


# Accepted headers are remembered by their (translated) segment: all tokens of one signing key
# share a header, so its decoding and checks are done once. Least recently used first out, so a
# flood of distinct headers cannot push out the few a deployment's keys produce for good. The
# cached header is a read-only view: it is shared by every token with that header segment and
# handed to apps (VerifiedToken.header), so a write into it must not change how later tokens
# are judged.
_HEADER_CACHE_SIZE = 64


class JWSParts(NamedTuple):
    """A strictly parsed compact JWS whose payload is left as bytes (signature-layer use).

    ``header`` is a read-only mapping shared with other tokens that have the same header segment.
    """

    header: Mapping[str, Any]
    payload: bytes
    #: ``ASCII(BASE64URL(header) '.' BASE64URL(payload))``: what the signature covers.
    signing_input: bytes
    signature: bytes
    alg: str
    kid: str | None


class ParsedJWS(NamedTuple):
    """A strictly parsed compact JWS whose payload is a JSON object (a JWT claims set).

    ``header`` is a read-only mapping shared with other tokens that have the same header segment.
    """

    header: Mapping[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes
    alg: str
    kid: str | None


class _DuplicateMember(ValueError):
    pass


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §5.2 / RFC 7519 §4 allow "reject or last wins"; rejecting leaves no parser
    # differential with a first-wins backend.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateMember("duplicate member name")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    # 1e400 parses as inf and -1e400 as -inf; inf - inf is nan, and nan != nan.
    if value - value != 0.0:
        raise ValueError("number out of range")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_object_without_duplicates,
    parse_constant=_refuse_constant,
    parse_float=_finite_float,
)
# The C scanner behind JSONDecoder (typeshed does not declare it).
_SCAN_ONCE: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_JSON_WHITESPACE = " \t\n\r"


def _nesting_depth(data: bytes) -> int:
    brackets = _JSON_STRING.sub(b"", data).translate(None, _BRACKETS_ONLY)
    depth = deepest = 0
    for c in brackets:
        if c in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    """Decode ``data`` as one UTF-8 JSON object, strictly."""
    # Counting brackets bounds the depth cheaply; only unusual documents pay for the exact scan.
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _nesting_depth(data) > MAX_DEPTH:
        raise TokenMalformed(f"the {what} is nested too deeply")
    try:
        # Decoding ourselves: json.loads(bytes) would also guess UTF-16 and UTF-32.
        text = data.decode("utf-8")
        if text[:1] == "{":
            # The C scanner alone: JSONDecoder.decode costs twice as much around it.
            value, end = _SCAN_ONCE(text, 0)
            if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
                raise ValueError("trailing data")
        else:
            value = _DECODER.decode(text)
    except _DuplicateMember:
        raise TokenMalformed(f"the {what} has duplicate member names") from None
    except (ValueError, RecursionError, StopIteration):
        # UnicodeDecodeError and JSONDecodeError are ValueErrors, and so is a UTF-8 BOM;
        # the scanner raises StopIteration when no value starts at an index.
        raise TokenMalformed(f"the {what} is not UTF-8 JSON") from None
    if type(value) is not dict:
        raise TokenMalformed(f"the {what} is not a JSON object")
    if _SURROGATE_ESCAPE.search(data) is not None:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise TokenMalformed(f"the {what} holds a lone surrogate") from None
    return value


def _decode_segment(segment: bytes, what: str) -> bytes:
    # ``segment`` is already translated to the standard alphabet and known to hold only
    # alphabet characters (the compact regex ran first).
    remainder = len(segment) & 3
    if segment and segment[-1] not in _CANONICAL_LAST[remainder]:
        raise TokenMalformed(f"the {what} is not canonical base64url")
    return binascii.a2b_base64(segment + _PADDING[remainder])


def b64url_decode(segment: str) -> bytes:
    """Decode one canonical, unpadded base64url segment; raise TokenMalformed otherwise."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", segment):
        raise TokenMalformed("not base64url")
    return _decode_segment(segment.encode("ascii").translate(_URLSAFE_TO_STANDARD), "segment")


def _not_compact(token: str) -> TokenMalformed:
    """The most useful error for a string that is not a compact JWS (failure path only)."""
    if token[:1] == "{":
        return TokenMalformed("JSON serialisation is not accepted", reason="token_unsupported")
    dots = token.count(".")
    if dots == 4:
        return TokenMalformed("JWE is not accepted", reason="token_unsupported")
    if dots != 2:
        return TokenMalformed("the token does not have three segments")
    segments = token.split(".")
    if not segments[0]:
        return TokenMalformed("the header segment is empty")
    if not segments[2]:
        return TokenMalformed("the signature segment is empty")
    return TokenMalformed("the token is not base64url")


def _check_header(header: dict[str, Any]) -> tuple[str, str | None]:
    alg = header.get("alg")
    if type(alg) is not str or not alg:
        raise AlgorithmNotAllowed("the header has no string alg")
    if not REFUSED_HEADER_MEMBERS.isdisjoint(header):
        names = ", ".join(sorted(REFUSED_HEADER_MEMBERS.intersection(header)))
        raise TokenMalformed(f"header member not accepted: {names}", reason="header_unsupported")
    if "kid" not in header:
        return alg, None
    kid = header["kid"]
    if type(kid) is not str or not 0 < len(kid) <= MAX_KID_LENGTH:
        raise TokenMalformed("kid must be a non-empty string of bounded length", reason="kid_invalid")
    return alg, kid


@cachetools.cached(cachetools.LRUCache(maxsize=_HEADER_CACHE_SIZE), lock=threading.Lock())
def _header_of(header_b64: bytes) -> tuple[Mapping[str, Any], str, str | None]:
    """The decoded and checked header of a segment, with its ``alg`` and ``kid``.

    Cached (a refused header raises and is not remembered). The header is shared, so it is
    returned as a read-only view, made once per cache fill (free per request). Its members are
    JSON values: only ``alg``, ``kid`` and ``typ`` (strings) are ever judged. The lock is for
    WSGI worker threads: an LRU's bookkeeping is not atomic.
    """
    header = _json_object(_decode_segment(header_b64, "header"), "header")
    alg, kid = _check_header(header)
    return MappingProxyType(header), alg, kid


def _split(token: str) -> tuple[Mapping[str, Any], bytes, bytes, bytes, str, str | None]:
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenMalformed("the token is too large", reason="token_too_large")
    if _COMPACT.fullmatch(token) is None:
        raise _not_compact(token)
    raw = token.encode("ascii")
    header_b64, payload_b64, signature_b64 = raw.translate(_URLSAFE_TO_STANDARD).split(b".")
    header, alg, kid = _header_of(header_b64)
    payload = _decode_segment(payload_b64, "payload")
    signature = _decode_segment(signature_b64, "signature")
    signing_input = raw[: len(header_b64) + 1 + len(payload_b64)]
    return header, payload, signing_input, signature, alg, kid


def parse_compact_parts(token: str) -> JWSParts:
    """Parse a compact JWS strictly, leaving the payload undecoded.

    For signature-layer use (test vectors whose payload is text); the request path uses
    :func:`parse_compact`.
    """
    return JWSParts(*_split(token))


def parse_compact(token: str) -> ParsedJWS:
    """Parse a compact JWS strictly: header and payload must be JSON objects.

    Raises :class:`TokenMalformed` (reasons ``token_malformed``, ``token_too_large``,
    ``token_unsupported``, ``header_unsupported``, ``kid_invalid``) or
    :class:`AlgorithmNotAllowed` when the header has no usable ``alg``.
    """
    header, payload, signing_input, signature, alg, kid = _split(token)
    claims = _json_object(payload, "payload")
    return ParsedJWS(header, claims, signing_input, signature, alg, kid)
