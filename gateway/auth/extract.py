"""Finding the one bearer credential of a request (RFC 6750 §2), without decoding surprises.

A request may present its token in exactly one place. Looked at, per the route's providers'
``token`` settings (compiled once into :class:`TokenLocations`):

- a header (``Authorization`` by default) holding ``<scheme> SP <token68>``; the scheme is
  compared case-insensitively, exactly one space separates it from the token, nothing follows.
  An empty configured scheme means the header holds the bare token;
- a cookie (off by default), and a query parameter (off by default).

Refused with :class:`CredentialsMalformed` (400 ``invalid_request``): a credential header sent
twice, a comma-joined or space-separated second credential, the configured scheme without a
token68 after it, a token in more than one place, and a header/cookie token together with
RFC 6750's standard ``access_token`` query parameter even when query tokens are not enabled
(the backend might read that unverified second token).

A header carrying *another* scheme (``Basic ...``) holds no bearer token (RFC 6750 §3.1): it is
ignored, and a request without any token gets ``None`` (the caller answers 401 without an error
code). A token longer than ``max_bytes`` is refused before any parsing (401 ``invalid_token``,
reason ``token_too_large``): the client's token is bad, not its request framing.

Header names are compared lower-cased; query parameter names are compared after
percent-decoding (a ``%61ccess_token`` is still ``access_token`` to a backend) while values are
never decoded: a token needs no escaping, so an escaped one is malformed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from gateway.config.models import TokenLocation
from gateway.errors import CredentialsMalformed, TokenMalformed

__all__ = [
    "STANDARD_QUERY_PARAMETER",
    "BodyCredentialScanner",
    "TokenLocations",
    "extract_token",
    "is_form_body",
    "remove_cookie_credentials",
    "remove_query_credentials",
]

#: RFC 6750 §2.3's query parameter; its presence beside another credential is always refused.
STANDARD_QUERY_PARAMETER = b"access_token"

# RFC 7235 token68, ``1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="``: the only
# credential syntax a bearer token can have (RFC 6750 §2.1). Checked with bytes.translate, one
# C pass over the token (a regular expression costs about ten times more on a 1 KB JWT).
_TOKEN68_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"


def _is_token68(value: bytes) -> bool:
    body = value.rstrip(b"=")
    return bool(body) and not body.translate(None, _TOKEN68_CHARS)


#: Tokens already found to be token68 -> their text. A client sends the same token request
#: after request: a hit spares the check and the decoding, and hands out the same str object
#: each time, whose hash is then computed once (the verified-token cache is keyed by it).
#: Bounded (cleared when full): junk tokens can only make it miss.
_KNOWN_TOKENS: dict[bytes, str] = {}
_KNOWN_TOKENS_MAX = 1024


def _token_text(token: bytes) -> str:
    """``token`` (checked to be token68) as text, remembered."""
    text = _KNOWN_TOKENS.get(token)
    if text is None:
        text = token.decode("ascii")
        if len(_KNOWN_TOKENS) >= _KNOWN_TOKENS_MAX:
            _KNOWN_TOKENS.clear()
        _KNOWN_TOKENS[token] = text
    return text


_COOKIE_SEPARATORS = b" \t"
#: An RFC 9110 token: what an authorization scheme (or an auth-param's name alone) looks like.
_AUTH_SCHEME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class TokenLocations:
    """Where a route looks for its token: compiled once from its providers' ``token`` settings."""

    #: Lower-cased header name -> accepted lower-cased schemes (``b""``: the bare token).
    headers: dict[bytes, frozenset[bytes]]
    #: Cookie names holding a token (case-sensitive, as cookies are).
    cookies: frozenset[bytes]
    #: Query parameter names holding a token.
    query: frozenset[bytes]

    @classmethod
    def compile(cls, locations: Iterable[TokenLocation]) -> TokenLocations:
        """Merge the token locations of every provider a route accepts."""
        headers: dict[bytes, set[bytes]] = {}
        cookies: set[bytes] = set()
        query: set[bytes] = set()
        for location in locations:
            if location.header is not None:
                name = location.header.lower().encode("ascii")
                headers.setdefault(name, set()).add(location.scheme.lower().encode("ascii"))
            if location.cookie is not None:
                cookies.add(location.cookie.encode("ascii"))
            if location.query is not None:
                query.add(location.query.encode("ascii"))
        return cls(
            headers={name: frozenset(schemes) for name, schemes in headers.items()},
            cookies=frozenset(cookies),
            query=frozenset(query),
        )


def _multiple() -> CredentialsMalformed:
    return CredentialsMalformed(
        "the request presents more than one credential", reason="multiple_credentials"
    )


def _from_header(value: bytes, schemes: frozenset[bytes]) -> bytes | None:
    """The token in one credential header value, ``None`` if it uses another scheme."""
    scheme, space, credentials = value.partition(b" ")
    if (
        space
        and scheme
        and scheme.lower() in schemes
        and (credentials in _KNOWN_TOKENS or _is_token68(credentials))
    ):
        # The common case, in one pass over the token: token68 holds no comma or space, and a
        # scheme is a token, so this is no list of credentials.
        return credentials
    if b"," in value:
        _check_list(value, schemes)
        return None
    if scheme and scheme.lower() in schemes:
        if not space:
            raise CredentialsMalformed("the authorization scheme has no token")
        if not _is_token68(credentials):
            raise CredentialsMalformed("the authorization header is not '<scheme> <token>'")
        return credentials
    if b"" in schemes:
        # A header configured for the bare token.
        if not space and _is_token68(value):
            return value
        if len(schemes) == 1:
            raise CredentialsMalformed("the token header does not hold one token68")
    return None


def _check_list(value: bytes, schemes: frozenset[bytes]) -> None:
    """Judge a comma-separated credential value (RFC 7235 allows a list): never one token of
    ours, so one naming our scheme raises.

    A list naming our scheme beside anything that looks like a credential (another scheme, or
    ours again, or an empty element) is two credentials; our scheme followed only by text that
    cannot start a credential (a JSON-serialised JWS, say) is a malformed header. Other schemes'
    parameters may hold commas (Digest): a list without our scheme is not ours to judge.
    """
    ours = 0
    credential_like = 0
    garbage = False
    for part in value.split(b","):
        first = part.strip(_COOKIE_SEPARATORS).partition(b" ")[0]
        if first.lower() in schemes:
            ours += 1
        elif not first or _AUTH_SCHEME.fullmatch(first):
            credential_like += 1
        else:
            garbage = True
    if not ours:
        return
    if ours > 1 or credential_like or not garbage:
        raise _multiple()
    raise CredentialsMalformed("the authorization header is not '<scheme> <token>'")


def _from_cookies(value: bytes, names: frozenset[bytes], found: list[bytes]) -> None:
    for pair in value.split(b";"):
        name, equals, cookie = pair.strip(_COOKIE_SEPARATORS).partition(b"=")
        if equals and cookie and name in names:
            found.append(cookie)


def _from_query(raw_query: bytes, names: frozenset[bytes]) -> tuple[list[bytes], bool]:
    """Tokens in the configured parameters, and whether ``access_token`` is present at all."""
    found: list[bytes] = []
    standard = False
    for pair in raw_query.split(b"&"):
        name, _, value = pair.partition(b"=")
        if b"%" in name or b"+" in name:
            name = unquote_to_bytes(name.replace(b"+", b" "))
        if not value:
            continue
        if name in names:
            found.append(value)
        if name == STANDARD_QUERY_PARAMETER:
            standard = True
    return found, standard


def _param_name(pair: bytes) -> bytes:
    name = pair.partition(b"=")[0]
    if b"%" in name or b"+" in name:
        name = unquote_to_bytes(name.replace(b"+", b" "))
    return name


def remove_query_credentials(raw_query: bytes, names: frozenset[bytes]) -> bytes:
    """``raw_query`` without the token parameters ``names`` (compared as extraction compares
    them); every other byte is kept as sent. Used so a query token never reaches the upstream."""
    if not raw_query:
        return raw_query
    pairs = raw_query.split(b"&")
    kept = [pair for pair in pairs if _param_name(pair) not in names]
    return raw_query if len(kept) == len(pairs) else b"&".join(kept)


def remove_cookie_credentials(
    headers: Sequence[tuple[bytes, bytes]], names: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """``headers`` with the token cookies ``names`` removed from every Cookie header (a Cookie
    header left empty is dropped), so a cookie token never reaches the upstream."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == b"cookie":
            pairs = [
                p for p in value.split(b";") if p.strip(_COOKIE_SEPARATORS).partition(b"=")[0] not in names
            ]
            value = b";".join(pairs).strip(_COOKIE_SEPARATORS)
            if not value:
                continue
        out.append((name, value))
    return out


def _any_encoding(name: bytes) -> bytes:
    # A pattern matching ``name`` with any of its bytes percent-encoded (hex digits in either
    # case): a form parser decodes parameter names, so ``access%5Ftoken`` is ``access_token``.
    parts = []
    for byte in name:
        hex_pattern = "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in f"{byte:02x}")
        parts.append(b"(?:" + re.escape(bytes([byte])) + b"|%" + hex_pattern.encode("ascii") + b")")
    return b"".join(parts)


_FORM_MEDIA_TYPE = b"application/x-www-form-urlencoded"
#: ``access_token=<something>`` at a parameter boundary (``&``, ``;`` or the body's start).
_BODY_CREDENTIAL = re.compile(rb"[&;]" + _any_encoding(STANDARD_QUERY_PARAMETER) + rb"=[^&;]")
#: Bytes kept from one chunk to the next: the longest match (every name byte encoded) but one.
_BODY_CARRY = 3 * len(STANDARD_QUERY_PARAMETER) + 2


class BodyCredentialScanner:
    """Finds RFC 6750 §2.2's form-encoded ``access_token`` body parameter as a body streams.

    The gateway verifies tokens only where its config says (headers, opted-in cookies and query
    parameters); a token in a form body would reach the upstream unverified, beside or instead
    of the one the gateway checked (RFC 6750 §3.1: a client uses one method only). Feed every
    chunk, in order, before it is passed on; one regular-expression search per chunk, the
    parameter name in any percent-encoding, split across chunks too.
    """

    __slots__ = ("_carry",)

    def __init__(self) -> None:
        self._carry = b"&"  # the body's start is a parameter boundary

    def feed(self, chunk: bytes) -> bool:
        """True when the body so far carries an ``access_token`` parameter with a value."""
        data = self._carry + chunk
        if _BODY_CREDENTIAL.search(data) is not None:
            return True
        self._carry = data[-_BODY_CARRY:]
        return False


def is_form_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether the request's Content-Type is ``application/x-www-form-urlencoded``."""
    for name, value in headers:
        if name == b"content-type":
            return (
                value.partition(b";")[0].strip(_COOKIE_SEPARATORS).lower()
                == b"application/x-www-form-urlencoded"
            )
    return False


def extract_token(
    headers: Sequence[tuple[bytes, bytes]],
    raw_query: bytes,
    locations: TokenLocations,
    max_bytes: int,
) -> str | None:
    """Return the request's one bearer token, or ``None`` when it presents none.

    ``headers`` are (name, value) byte pairs as in ASGI; ``raw_query`` is the undecoded query
    string. Raises :class:`CredentialsMalformed` (``multiple_credentials``,
    ``malformed_authorization``, ``malformed_credentials``) or :class:`TokenMalformed`
    (``token_too_large``).
    """
    # Tokens from headers were checked to be token68 by _from_header; the others are checked
    # at the end. The common request (one Authorization header) allocates nothing here.
    header_token: bytes | None = None
    header_tokens = 0
    other: list[bytes] | None = None
    header_schemes = locations.headers
    cookie_names = locations.cookies
    seen: bytes | set[bytes] | None = None  # the credential header names met so far
    for raw_name, value in headers:
        name = raw_name.lower()
        schemes = header_schemes.get(name)
        if schemes is not None:
            if seen is None:
                seen = name
            elif type(seen) is bytes:
                if seen == name:
                    raise _multiple()
                seen = {seen, name}
            else:
                assert isinstance(seen, set)
                if name in seen:
                    raise _multiple()
                seen.add(name)
            token = _from_header(value, schemes)
            if token is not None:
                header_token = token
                header_tokens += 1
        elif cookie_names and name == b"cookie":
            if other is None:
                other = []
            _from_cookies(value, cookie_names, other)

    if raw_query:
        query_tokens, standard_present = _from_query(raw_query, locations.query)
        if standard_present and (header_tokens or other):
            raise _multiple()
        if query_tokens:
            if other is None:
                other = []
            other += query_tokens

    count = header_tokens + (len(other) if other else 0)
    if not count:
        return None
    if count > 1:
        raise _multiple()
    token = header_token if header_token is not None else other[0]  # type: ignore[index]
    if len(token) > max_bytes:
        raise TokenMalformed("the token is too large", reason="token_too_large")
    if header_token is None and token not in _KNOWN_TOKENS and not _is_token68(token):
        raise CredentialsMalformed("the token is not token68", reason="malformed_credentials")
    return _token_text(token)
