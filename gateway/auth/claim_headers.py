"""Claim headers: strip spoofable inbound headers, encode verified claims as upstream headers.

Compiled once from the ``headers`` config section (:func:`compile_headers`).

**Inbound stripping** runs on every request in every auth mode (required, optional, public,
deny, preflight). A client header is removed when its name, lower-cased and with ``_`` read as
``-``, is one of:

- a configured claim header (``X-User-Id`` also removes ``x_user_id``, ``X-User_Id``...);
- the payload header, if configured;
- a ``strip`` entry (default ``X-Original-URL``, ``X-Rewrite-URL``, ``X-HTTP-Method-Override``);
- under a ``strip_prefixes`` prefix (``X-User-`` removes ``x_user_anything``);
- ``Authorization`` (and any other token header given to :func:`compile_headers`) unless
  ``forward_authorization`` is true;
- any name containing ``_`` when ``drop_underscore_headers`` is true (the default): WSGI/CGI
  servers fold ``_`` and ``-`` together, so an underscore header can impersonate a header the
  gateway does not know the backend trusts. nginx drops them by default for the same reason.

Every copy is removed (duplicates included). Forwarding headers (``Forwarded``,
``X-Forwarded-*``, ``X-Real-IP``) and hop-by-hop headers are the proxy's business, not this
module's.

**Encoding** (``claim_headers(claims)``), per configured header, header names lower-cased:

- absent claim, or JSON ``null``: the header is not set; with ``required: true`` the request is
  refused (:class:`~gateway.errors.ClaimInvalid`, reason ``claim_header_missing``, 401);
- string: as is; integer and float: JSON number text (``42``, ``1.5``; NaN/Infinity refused);
  boolean: ``true`` / ``false``;
- array, per ``encode``: ``csv`` joins the elements with ``,`` (elements must be scalars; an
  empty array gives an empty value); ``json`` is compact JSON with non-ASCII escaped as
  ``\\uXXXX`` (always ASCII, so ``non_ascii`` does not apply); ``repeat`` sets one header per
  element (an empty array sets none); ``first`` takes the first element (an empty array counts
  as an absent claim). Under ``csv`` and ``repeat`` an element that contains ``,`` or has
  leading or trailing spaces or tabs is refused (use ``json`` for such claims): a recipient
  reads the value with RFC 9110 list syntax, combining repeated lines with ``,`` (§5.3),
  splitting on commas and trimming whitespace (§5.6.1), so ``["devs,admin"]`` or
  ``["user", " admin"]`` would read back as other elements than were verified. A string claim
  (not an array) is sent as written, commas included: it is one value, not a list;
- object: compact JSON with ``encode: json``; refused with any other encoding;
- CR, LF, NUL and every other control character (C0, DEL, C1) are refused, whatever the
  mode: never a second header, never a 5xx;
- ``non_ascii``: ``refuse`` refuses a value with non-ASCII characters, and also one with
  leading or trailing spaces (parsers trim them, changing the value); ``rfc8187`` (default)
  sends ``UTF-8''`` + percent-encoded UTF-8 (RFC 8187 ``attr-char`` kept) for a value with
  non-ASCII characters, leading/trailing spaces or a ``'`` (so that no plain value can pose as
  an encoded one); ``base64url`` encodes EVERY value of that header as unpadded base64url of
  its UTF-8 bytes (so the backend always decodes: never ambiguous);
- ``max_bytes`` caps the encoded value (for ``repeat``, the sum of the values): over it, the
  request is refused.

Refusals raise :class:`~gateway.errors.ClaimInvalid` with reason ``claim_header_invalid``
(401): the detail names the header and the claim path, never the value.

The optional payload header carries the verified payload as unpadded base64url of its JSON
(the token's own payload segment when the caller passes it: exactly the bytes that were
verified).
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from gateway.auth.claims import MISSING, compile_claim_path
from gateway.auth.types import Claims
from gateway.config.models import ClaimHeader, Headers
from gateway.errors import ClaimInvalid

Header = tuple[bytes, bytes]

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# RFC 8187 attr-char minus nothing: ALPHA / DIGIT / "!#$&+-.^_`|~".
_ATTR_CHAR_SAFE = "!#$&+-.^_`|~"
_UNDERSCORE = b"_"
# RFC 9110 §5.6.3 OWS: what a list recipient trims around each element.
_OWS = " \t"
# Inbound header names whose decision has been computed. Bounded: past the bound, decisions
# are computed each time (still correct, only slower), so a client cannot grow it unbounded.
_DECISION_CACHE_SIZE = 1024


def normalize_header_name(name: bytes | str) -> bytes:
    """``name`` lower-cased with ``_`` read as ``-``: the form every comparison here uses."""
    raw = name.encode("latin-1") if isinstance(name, str) else name
    return raw.lower().replace(_UNDERSCORE, b"-")


class InboundFilter:
    """Removes spoofable headers from the client's header list (ASGI style)."""

    __slots__ = ("_cache", "_drop_underscore", "_names", "_prefixes")

    def __init__(self, names: Iterable[str], prefixes: Iterable[str], *, drop_underscore: bool) -> None:
        self._names = frozenset(normalize_header_name(n) for n in names)
        self._prefixes = tuple(normalize_header_name(p) for p in prefixes if p)
        self._drop_underscore = drop_underscore
        self._cache: dict[bytes, bool] = {}

    def drops(self, name: bytes) -> bool:
        """True when a client header called ``name`` must not reach the upstream."""
        if self._drop_underscore and _UNDERSCORE in name:
            return True
        normal = name.lower().replace(_UNDERSCORE, b"-")
        return normal in self._names or (bool(self._prefixes) and normal.startswith(self._prefixes))

    def strip(self, headers: Iterable[Header]) -> list[Header]:
        """The headers that may be forwarded, in order (every spoofable copy removed)."""
        cache = self._cache
        kept: list[Header] = []
        for header in headers:
            name = header[0]
            drop = cache.get(name)
            if drop is None:
                drop = self.drops(name)
                if len(cache) < _DECISION_CACHE_SIZE:
                    cache[name] = drop
            if not drop:
                kept.append(header)
        return kept


class _Refused(Exception):
    """Internal: a claim value cannot become a header value (the message names no value)."""


class _ClaimHeader:
    """One configured claim header, compiled."""

    __slots__ = ("claim", "encode", "get", "max_bytes", "name", "name_bytes", "non_ascii", "required")

    def __init__(self, name: str, spec: ClaimHeader) -> None:
        path = compile_claim_path(spec.claim)
        self.name = name
        self.name_bytes = name.lower().encode("ascii")
        self.claim = path.label
        self.get = path.get
        self.encode = spec.encode
        self.non_ascii = spec.non_ascii
        self.max_bytes = spec.max_bytes
        self.required = spec.required

    def refuse(self, why: str) -> ClaimInvalid:
        return ClaimInvalid(
            f"claim header {self.name} (claim {self.claim}): {why}", reason="claim_header_invalid"
        )

    def add(self, claims: Claims, out: list[Header]) -> None:
        value = self.get(claims)
        try:
            if type(value) is str:
                # The common case (sub, email...): one string, one header.
                encoded = self.header_value(value)
                if len(encoded) > self.max_bytes:
                    raise _Refused(f"the value is larger than max_bytes ({self.max_bytes})")
                out.append((self.name_bytes, encoded))
                return
            if value is None or value is MISSING:
                self.missing()
                return
            texts = self.texts(value)
            if texts is None:
                self.missing()
                return
            values = [self.header_value(t) for t in texts]
            size = 0
            for encoded in values:
                size += len(encoded)
            if size > self.max_bytes:
                raise _Refused(f"the value is larger than max_bytes ({self.max_bytes})")
        except _Refused as exc:
            raise self.refuse(str(exc)) from None
        name = self.name_bytes
        for encoded in values:
            out.append((name, encoded))

    def missing(self) -> None:
        if self.required:
            raise ClaimInvalid(
                f"claim header {self.name}: the required claim {self.claim} is missing",
                reason="claim_header_missing",
            )

    def texts(self, value: Any) -> list[str] | None:
        """The header value(s) as text, before the ASCII encoding; None: treat as absent."""
        if type(value) is list:
            encode = self.encode
            if encode == "csv":
                return [_csv(value)]
            if encode == "json":
                return [_json(value)]
            if encode == "first":
                return [_scalar(value[0])] if value else None
            return _repeated(value)
        if isinstance(value, dict):
            if self.encode == "json":
                return [_json(value)]
            raise _Refused("the claim is an object (use encode: json)")
        return [_scalar(value)]

    def header_value(self, text: str) -> bytes:
        """``text`` as a safe header value per ``non_ascii``."""
        if text.isascii():
            # For ASCII, isprintable() is exactly "no C0 control character and no DEL".
            if not text.isprintable():
                raise _Refused("the value contains a control character")
            plain = not text or (text[0] != " " and text[-1] != " ")
        elif _CONTROL.search(text) is not None:
            raise _Refused("the value contains a control character")
        else:
            plain = False
        mode = self.non_ascii
        if mode == "base64url":
            return base64.urlsafe_b64encode(text.encode("utf-8")).rstrip(b"=")
        if mode == "refuse":
            if not plain:
                raise _Refused("the value has non-ASCII characters or leading/trailing spaces")
            return text.encode("ascii")
        if plain and "'" not in text:
            return text.encode("ascii")
        return b"UTF-8''" + quote(text.encode("utf-8"), safe=_ATTR_CHAR_SAFE).encode("ascii")


def _scalar(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        if not math.isfinite(value):
            raise _Refused("the value is not a finite number")
        return repr(value)
    raise _Refused("an array element is not a string, number or boolean (use encode: json)")


def _csv(value: list[Any]) -> str:
    elements: list[Any] = value
    try:
        joined = ",".join(value)  # the common case: every element is a string
    except TypeError:
        elements = [_scalar(v) for v in value]
        joined = ",".join(elements)
    # n elements make n-1 separators; any more comma came from inside an element.
    if value and joined.count(",") != len(value) - 1:
        raise _Refused("an array element contains ',' (use encode: json)")
    # A list recipient trims OWS around each element: ["user", " admin"] would read as "admin".
    if (" " in joined or "\t" in joined) and any(e != e.strip(_OWS) for e in elements):
        raise _Refused("an array element has leading or trailing whitespace (use encode: json)")
    return joined


def _repeated(value: list[Any]) -> list[str]:
    """One text per element for ``encode: repeat``; each must read back as exactly one element.

    Recipients may combine repeated field lines into one with ``,`` (RFC 9110 §5.3; WSGI does),
    so an element with a comma or with whitespace a list parser trims is refused.
    """
    texts = [_scalar(v) for v in value]
    for text in texts:
        if "," in text:
            raise _Refused("an array element contains ',' (use encode: json)")
        if text != text.strip(_OWS):
            raise _Refused("an array element has leading or trailing whitespace (use encode: json)")
    return texts


def _json(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (ValueError, TypeError):
        raise _Refused("the value cannot be written as JSON") from None


class ClaimHeaders:
    """The compiled ``headers`` section: inbound stripping and claim-header encoding."""

    __slots__ = ("_headers", "_payload_bytes", "_payload_name", "inbound")

    def __init__(
        self, headers: Sequence[_ClaimHeader], payload_name: str | None, inbound: InboundFilter
    ) -> None:
        self._headers = tuple(headers)
        self._payload_name = payload_name
        self._payload_bytes = payload_name.lower().encode("ascii") if payload_name else b""
        #: The inbound filter (also usable on its own, e.g. by forward-auth).
        self.inbound = inbound

    def strip_inbound(self, headers: Iterable[Header]) -> list[Header]:
        """The client's headers without any spoofable one (see the module docstring)."""
        return self.inbound.strip(headers)

    def claim_headers(self, claims: Claims, payload_segment: bytes | None = None) -> list[Header]:
        """Headers to set upstream from verified ``claims`` (lower-cased names, in config order).

        ``payload_segment``: the token's base64url payload segment, used verbatim for the
        payload header when given. Raises :class:`~gateway.errors.ClaimInvalid` when a value
        cannot be encoded safely or a required claim is missing.
        """
        out: list[Header] = []
        for header in self._headers:
            header.add(claims, out)
        if self._payload_name is not None:
            if payload_segment is None:
                payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=True).encode("ascii")
                payload_segment = base64.urlsafe_b64encode(payload).rstrip(b"=")
            out.append((self._payload_bytes, payload_segment))
        return out

    def header_names(self) -> list[str]:
        """The names of the headers the gateway may set, as configured (for ``explain``)."""
        names = [h.name for h in self._headers]
        if self._payload_name is not None:
            names.append(self._payload_name)
        return names


def compile_headers(headers: Headers, *, token_headers: Iterable[str] = ("Authorization",)) -> ClaimHeaders:
    """Compile the ``headers`` section once.

    ``token_headers``: the headers that carry tokens (every provider's ``token.header``);
    they are stripped unless ``forward_authorization``. Raises ValueError (one line) for an
    invalid claim path or header name.
    """
    compiled: list[_ClaimHeader] = []
    for name, spec in headers.claims.items():
        try:
            compiled.append(_ClaimHeader(name, spec))
        except ValueError as exc:
            raise ValueError(f"headers.claims.{name}: {exc}") from None
    payload = headers.payload_header
    if payload is not None and not _HEADER_NAME.fullmatch(payload):
        raise ValueError(f"headers.payload_header: {payload!r} is not a valid HTTP header name")
    set_by_gateway = [h.name for h in compiled] + ([payload] if payload else [])
    normal = [normalize_header_name(n) for n in set_by_gateway]
    if len(set(normal)) != len(normal):
        raise ValueError("headers: two claim headers have the same name (case, '_' and '-' aside)")
    stripped = [*set_by_gateway, *headers.strip]
    if not headers.forward_authorization:
        stripped.extend(token_headers)
    inbound = InboundFilter(stripped, headers.strip_prefixes, drop_underscore=headers.drop_underscore_headers)
    return ClaimHeaders(compiled, payload, inbound)


__all__ = ["ClaimHeaders", "Header", "InboundFilter", "compile_headers", "normalize_header_name"]
