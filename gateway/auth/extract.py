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

Header names are compared lower-cased. Query, form and cookie parameter names are compared as
the most lenient backend reads them: percent-decoded (a ``%61ccess_token`` is still
``access_token``), and as PHP mangles them (leading spaces dropped; ``.``, a space and ``[``
read as ``_``). A query is split at ``;`` as well as ``&`` (Rack 2, Go < 1.17), cookies at
``,`` and whitespace as well as ``;`` (http.cookies), names trimmed. Values are never decoded:
a token needs no escaping, so an escaped one is malformed.

The standard ``access_token`` parameter is also looked for in form-encoded and multipart
bodies (:func:`body_scanner`), and the query and cookie credentials are removed before
forwarding (:func:`remove_query_credentials`, :func:`remove_cookie_credentials`).
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
    "body_scanner",
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
            # Held as compared: as the most lenient backend reads a name (see _normal_name).
            if location.cookie is not None:
                cookies.add(_normal_name(location.cookie.encode("ascii")))
            if location.query is not None:
                query.add(_normal_name(location.query.encode("ascii")))
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


# ------------------------------------------------------------------- parameter and cookie names

#: What PHP turns into ``_`` in a parameter or cookie name (after dropping leading spaces):
#: ``access.token``, ``access token`` (``access+token``) and ``access[token`` all arrive as
#: ``$_GET['access_token']``. Other backends keep these names apart; treating them as the same
#: name costs nothing but a refusal of names no client uses for anything else.
_PHP_NAME_MANGLING = bytes.maketrans(b" .[", b"___")

#: Names already normalised -> their normal form: the same few names come request after
#: request. Bounded (cleared when full; long names are not kept): junk can only make it miss.
_NORMAL_NAMES: dict[bytes, bytes] = {}
_NORMAL_NAMES_MAX = 1024
_NORMAL_NAME_KEPT = 64


def _normal_name(name: bytes) -> bytes:
    """A query, form or cookie parameter name as the most lenient backend reads it: percent-
    and ``+``-decoded, leading spaces dropped, `` .[`` turned into ``_``. Names are compared
    in this form (TokenLocations holds its names in it)."""
    normal = _NORMAL_NAMES.get(name)
    if normal is not None:
        return normal
    normal = name
    if b"%" in normal or b"+" in normal:
        normal = unquote_to_bytes(normal.replace(b"+", b" "))
    if b" " in normal or b"." in normal or b"[" in normal:
        normal = normal.lstrip(b" ").translate(_PHP_NAME_MANGLING)
    if len(name) <= _NORMAL_NAME_KEPT:
        if len(_NORMAL_NAMES) >= _NORMAL_NAMES_MAX:
            _NORMAL_NAMES.clear()
        _NORMAL_NAMES[name] = normal
    return normal


#: A cookie's name and its ``=``, after a separator (the caller puts a ``;`` before the
#: header): ``;``, and ``,`` or whitespace too, which http.cookies (aiohttp...) and old RFC 2965
#: parsers split at; whitespace between the name and the ``=`` is dropped, as every parser
#: drops it. The separator is the byte right before the name and the name is possessive, so a
#: header is scanned in linear time whatever its padding.
_COOKIE_NAME = re.compile(rb"[;,\s]([^;,\s=]++)\s*+=")
#: What is dropped around a removed cookie.
_COOKIE_PAIR_SEPARATORS = b"; ,\t"


#: Cookie name sets -> the longest ``_``-free piece of each name, which a cookie header must
#: hold literally to name one of them without percent-encoding (a backend may read ``.``, ``[``
#: or a space for ``_``, nothing else). Keyed by the compiled routes' few frozensets.
_NAME_PIECES: dict[frozenset[bytes], tuple[bytes, ...]] = {}


def _may_name(value: bytes, names: frozenset[bytes]) -> bool:
    """False when no cookie in ``value`` can be one of ``names``: the common header, without
    the token cookie, is passed without parsing it."""
    if b"%" in value:
        return True
    pieces = _NAME_PIECES.get(names)
    if pieces is None:
        pieces = tuple(max(name.split(b"_"), key=len) for name in names)
        if len(_NAME_PIECES) >= _NORMAL_NAMES_MAX:
            _NAME_PIECES.clear()
        _NAME_PIECES[names] = pieces
    for piece in pieces:
        if piece in value:
            return True
    return False


def _cookie_value_end(value: bytes, start: int) -> int:
    # A value as Django, Starlette and Werkzeug read it: up to the next ``;``. One holding a
    # comma or a space is then no token68: refused, never half-read.
    end = value.find(b";", start)
    return end if end >= 0 else len(value)


def _plain_cookies(value: bytes) -> bool:
    """Whether a Cookie header is as browsers send it, ``a=1; b=2`` (every space right after a
    ``;``, no comma, no tab): then splitting at ``;`` reads it as every parser does."""
    return b"," not in value and b"\t" not in value and value.count(b" ") == value.count(b"; ")


def _from_cookies(value: bytes, names: frozenset[bytes], found: list[bytes]) -> None:
    if not _may_name(value, names):
        return
    if _plain_cookies(value):
        for pair in value.split(b";"):
            name, _, cookie = pair.lstrip(b" ").partition(b"=")
            if cookie and (_NORMAL_NAMES.get(name) or _normal_name(name)) in names:
                found.append(cookie)
        return
    value = b";" + value
    for match in _COOKIE_NAME.finditer(value):
        name = match[1]
        if (_NORMAL_NAMES.get(name) or _normal_name(name)) in names:
            start = match.end()
            cookie = value[start : _cookie_value_end(value, start)].strip(_COOKIE_SEPARATORS)
            if cookie:
                found.append(cookie)


def _query_pairs(raw_query: bytes) -> list[bytes]:
    """The ``name=value`` pairs of a query as ``&`` splits them, then, when there is a ``;``,
    also as ``;`` splits each of them (Rack 2, Python < 3.9.2, Go < 1.17): a credential found
    in either reading counts. ``token=a;b`` is read whole (``a;b``, no token68: refused)."""
    pairs = raw_query.split(b"&")
    if b";" in raw_query:
        pairs += [sub for pair in pairs if b";" in pair for sub in pair.split(b";")[1:]]
    return pairs


def _from_query(raw_query: bytes, names: frozenset[bytes]) -> tuple[list[bytes], bool]:
    """Tokens in the configured parameters, and whether ``access_token`` is present at all."""
    found: list[bytes] = []
    standard = False
    for pair in _query_pairs(raw_query):
        name, _, value = pair.partition(b"=")
        if not value:
            continue
        name = _NORMAL_NAMES.get(name) or _normal_name(name)
        if name in names:
            found.append(value)
        if name == STANDARD_QUERY_PARAMETER:
            standard = True
    return found, standard


def _is_credential(pair: bytes, names: frozenset[bytes]) -> bool:
    name = pair.partition(b"=")[0]
    return (_NORMAL_NAMES.get(name) or _normal_name(name)) in names


def remove_query_credentials(raw_query: bytes, names: frozenset[bytes]) -> bytes:
    """``raw_query`` without the token parameters ``names`` (as :class:`TokenLocations` holds
    them; compared as extraction compares them), ``&``- or ``;``-separated; every other byte is
    kept as sent. Used so a query token never reaches the upstream."""
    if not raw_query:
        return raw_query
    changed = False
    kept: list[bytes] = []
    for piece in raw_query.split(b"&"):
        if b";" in piece:
            subs = piece.split(b";")
            remaining = [sub for sub in subs if not _is_credential(sub, names)]
            if len(remaining) != len(subs):
                changed = True
                if not remaining:
                    continue
                piece = b";".join(remaining)
        elif _is_credential(piece, names):
            changed = True
            continue
        kept.append(piece)
    return b"&".join(kept) if changed else raw_query


def _remove_cookies(value: bytes, names: frozenset[bytes]) -> bytes:
    """One Cookie header value without the cookies ``names`` (each up to its ``;``, with the
    separators before it)."""
    if not _may_name(value, names):
        return value
    if _plain_cookies(value):
        pairs = value.split(b";")
        kept = [p for p in pairs if not _is_credential(p.lstrip(b" "), names)]
        return value if len(kept) == len(pairs) else b";".join(kept).strip(_COOKIE_SEPARATORS)
    value = b";" + value
    out: list[bytes] = []
    position = 1
    for match in _COOKIE_NAME.finditer(value):
        start = match.start(1)
        name = match[1]
        if start < position or (_NORMAL_NAMES.get(name) or _normal_name(name)) not in names:
            continue  # inside a value already removed, or another cookie
        out.append(value[position:start].rstrip(_COOKIE_PAIR_SEPARATORS))
        position = _cookie_value_end(value, match.end())
    if not out:
        return value[1:]
    out.append(value[position:])
    return b"".join(out).strip(_COOKIE_PAIR_SEPARATORS)


def remove_cookie_credentials(
    headers: Sequence[tuple[bytes, bytes]], names: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """``headers`` with the token cookies ``names`` removed from every Cookie header (a Cookie
    header left empty is dropped), so a cookie token never reaches the upstream. Cookies are
    found as extraction finds them (names trimmed, ``,`` and whitespace separate them too)."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == b"cookie":
            value = _remove_cookies(value, names)
            if not value:
                continue
        out.append((name, value))
    return out


# ------------------------------------------------------------------------ body credentials


def _any_encoding(byte: int) -> bytes:
    # ``byte`` as itself or percent-encoded (hex digits in either case): a form parser decodes
    # parameter names, so ``access%5Ftoken`` is ``access_token``.
    hex_pattern = "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in f"{byte:02x}")
    return b"(?:" + re.escape(bytes([byte])) + b"|%" + hex_pattern.encode("ascii") + b")"


def _form_name(name: bytes) -> bytes:
    """A pattern for a form-encoded ``name``, any byte percent-encoded, each ``_`` also written
    as PHP reads it (``.``, ``[``, a space: `` ``, ``+``, ``%20``)."""
    joiner = rb"(?:[_.\[ +]|%(?:5[fFbB]|2[eE0]))"
    return b"".join(joiner if byte == ord("_") else _any_encoding(byte) for byte in name)


#: ``access_token=<something>`` at a parameter boundary (``&``, ``;`` or the body's start),
#: after any number of leading spaces (PHP drops them); or, reaching the end of the data, what
#: may still become one in the next chunk: ``rest``, a name (and its ``=``) not ended yet; the
#: leading spaces are not kept, the boundary stands for them. Possessive, so padding is scanned
#: in linear time.
_FORM_CREDENTIAL = re.compile(
    rb"[&;][ +]*+(?:%20[ +]*+)*+(?:"
    + _form_name(STANDARD_QUERY_PARAMETER)
    + rb"=[^&;]|(?P<rest>[^&;=]*+=?)\Z)"
)
#: The longest ``rest`` worth carrying: the name with every byte encoded, and its ``=``.
_FORM_CARRY = 3 * len(STANDARD_QUERY_PARAMETER) + 1

#: The ``access_token`` of a multipart part header, as Werkzeug, Django, python-multipart and
#: PHP read ``Content-Disposition: form-data; name="access_token"``: ``name`` in any case,
#: whitespace around ``=``, quoted or not, PHP's spellings; and any extended ``name*=`` (RFC
#: 2231: percent-encoded, split in ``name*0``, ``name*1``...), which no browser sends and a
#: regular expression cannot judge: refused too. Or, reaching the end of the data, what may
#: still become one: ``pending``.
_MULTIPART_VALUE = rb"access[_ .\[]token"
_MULTIPART_CREDENTIAL = re.compile(
    rb"[;:]\s*+(?:[nN][aA][mM][eE]\s*+(?:\*|=\s*+(?:\" *+"
    + _MULTIPART_VALUE
    + rb"\"|"
    + _MULTIPART_VALUE
    + rb"(?=[\s;\"])))|(?P<pending>[\s\w\"=*.\[]*+\Z))"
)
#: The longest pending part header worth carrying, whitespace runs squeezed: a full match
#: without its last byte is 23 bytes (``; name = " access_token``).
_MULTIPART_CARRY = 40


def _multipart_carry(pending: bytes) -> bytes:
    """What a pending multipart match leaves for the next chunk: itself, every whitespace run
    squeezed to one space when long (the pattern reads one space as any run), so padding cannot
    grow the carry; nothing when even that is too long to become a match."""
    if len(pending) <= _MULTIPART_CARRY:
        return pending
    squeezed = b" ".join(pending.split())
    if pending[-1:].isspace():
        squeezed += b" "  # it may still separate ``access`` from ``token``
    return squeezed if len(squeezed) <= _MULTIPART_CARRY else b""


class BodyCredentialScanner:
    """Finds RFC 6750 §2.2's ``access_token`` body parameter as a body streams: form-encoded
    (``form``) and/or a multipart part (``multipart``).

    The gateway verifies tokens only where its config says (headers, opted-in cookies and query
    parameters); a token in a form body would reach the upstream unverified, beside or instead
    of the one the gateway checked (RFC 6750 §3.1: a client uses one method only). Feed every
    chunk, in order, before it is passed on; one regular-expression search per chunk and body
    syntax, the parameter name in any spelling a backend decodes, split across chunks too.
    """

    __slots__ = ("_form_carry", "_multipart_carry")

    def __init__(self, *, form: bool = True, multipart: bool = False) -> None:
        # None: that syntax is not looked for. The body's start is a form parameter boundary.
        self._form_carry: bytes | None = b"&" if form else None
        self._multipart_carry: bytes | None = b"" if multipart else None

    def feed(self, chunk: bytes) -> bool:
        """True when the body so far carries an ``access_token`` parameter with a value."""
        carry = self._form_carry
        if carry is not None:
            match = _FORM_CREDENTIAL.search(carry + chunk if carry else chunk)
            if match is None:
                self._form_carry = b""
            else:
                rest = match["rest"]
                if rest is None:
                    return True
                self._form_carry = b"&" + rest if len(rest) <= _FORM_CARRY else b""
        carry = self._multipart_carry
        if carry is not None:
            match = _MULTIPART_CREDENTIAL.search(carry + chunk if carry else chunk)
            if match is None:
                self._multipart_carry = b""
            else:
                if match["pending"] is None:
                    return True
                self._multipart_carry = _multipart_carry(match[0])
        return False


_FORM_MEDIA_TYPE = b"application/x-www-form-urlencoded"


def _body_syntaxes(headers: Sequence[tuple[bytes, bytes]]) -> tuple[bool, bool]:
    """(form-encoded, multipart): whether ANY Content-Type header names one, in any element a
    backend might take for the media type (PHP cuts it at ``;``, ``,`` or a space; gunicorn
    takes the last header, others the first): when in doubt, the body is scanned."""
    form = multipart = False
    for name, value in headers:
        if name == b"content-type":
            for element in value.lower().replace(b",", b";").split(b";"):
                words = element.split()
                if words:
                    media = words[0]
                    if media == _FORM_MEDIA_TYPE:
                        form = True
                    elif media.startswith(b"multipart/"):
                        multipart = True
    return form, multipart


def is_form_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether any Content-Type of the request is ``application/x-www-form-urlencoded``."""
    return _body_syntaxes(headers)[0]


def body_scanner(headers: Sequence[tuple[bytes, bytes]]) -> BodyCredentialScanner | None:
    """The scanner for the request's body syntaxes (form-encoded, multipart), ``None`` when no
    Content-Type names one (no backend parses the body as a form then)."""
    form, multipart = _body_syntaxes(headers)
    if not (form or multipart):
        return None
    return BodyCredentialScanner(form=form, multipart=multipart)


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
