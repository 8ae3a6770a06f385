"""The canonical request path: the one string that is both matched and forwarded.

ASGI's ``scope["path"]`` is already percent-decoded (``%2F`` has become ``/``), so the gateway
works from ``scope["raw_path"]`` and computes, once per request, the canonical path. Routes are
matched against it and the upstream receives exactly it (after the route's prefix rewriting),
so the gateway and the backend can never read two different paths.

Rules (a refusal raises :class:`gateway.errors.PathNotCanonical`, answered 400):

- The path starts with ``/``. ``#`` and ``?`` never appear (ASGI splits the query off; a
  raw ``#`` or ``?`` means a confused client or an attack).
- Percent-escapes must be well formed (``%`` + two hex digits). Escapes of unreserved
  characters (``A-Z a-z 0-9 - . _ ~``) are decoded: ``/%61dmin`` is ``/admin``. Every other
  escape stays encoded, with its hex digits upper-cased (``%3a`` -> ``%3A``): ``%3A`` and ``:``
  stay two different strings, which is safe because matching and forwarding use the same one.
- Always refused, also escaped: ``/`` (``%2F``), ``\\`` (raw or ``%5C``), ``;`` (path
  parameters, Tomcat's ``..;/``), ``%`` itself (``%25``: double encoding such as ``%252e`` is
  never passed on to a backend that might decode twice), ``?`` (``%3F``), ``#`` (``%23``),
  NUL and every other control character (raw or escaped), raw bytes >= 0x80 (clients must
  percent-encode), escaped bytes that are not strict UTF-8 (overlong ``%C0%AF``, surrogates).
- Non-ASCII characters (escaped UTF-8) stay escaped. A character that a lenient backend could
  fold into ASCII is refused: one whose NFKC form or case mapping contains an ASCII character
  (full-width ``%EF%BD%81``, the Kelvin sign, ``ſ``, ``İ``...), and invisible or space-like
  characters (Unicode categories Cc, Cf, Zs, Zl, Zp). So ``/%EF%BD%81dmin`` is refused, never
  forwarded to a backend that NFKC-normalises it into ``/admin``.
- Segments: ``.`` and ``..`` (also spelled ``%2E``/``%2e``, which decode to ``.``) are refused,
  as are segments ending in ``.`` (``/admin./``, trimmed by Windows-style backends) and
  segments that start or end with a space (``%20``); empty segments (``//``) are refused. A
  single trailing slash (``/admin/``) is kept: it is a different path from ``/admin``.
- Printable ASCII characters that may not appear raw in a path (``"<>[]^`{|}``) are
  percent-encoded, so the raw and escaped spellings give the same canonical string.
- Matching is case-sensitive: ``/ADMIN`` is not ``/admin`` (RFC 3986 paths are
  case-sensitive). A route table with a permissive catch-all in front of a case-insensitive
  backend must list the case variants explicitly (or deny them).

``normalize`` (from ``paths.normalize``) resolves some ambiguities instead of refusing them:
``merge_slashes`` (``//`` -> ``/``), ``resolve_dots`` (``.`` and ``..`` segments resolved as in
RFC 3986 §5.2.4, ``..`` above the root refused), ``strip_trailing_slash`` (``/admin/`` ->
``/admin``). Whatever is resolved, the returned string is THE path: it is matched and it is
forwarded.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection
from functools import lru_cache

from gateway.errors import PathNotCanonical

NORMALIZE_OPTIONS = frozenset({"merge_slashes", "resolve_dots", "strip_trailing_slash"})

# The "already canonical" fast path: plain pchar segments (no "%", no ";"), none empty, none
# ending in "." (which excludes "." and ".." too), and an optional single trailing slash.
_SEGMENT_CHARS = rb"A-Za-z0-9_~!$&'()*+,=:@-"
_FAST_PATH = re.compile(rb"(?:/[." + _SEGMENT_CHARS + rb"]*[" + _SEGMENT_CHARS + rb"])+/?|/")

# A segment of plain pchar characters: nothing to decode, encode or refuse.
_PLAIN_SEGMENT = re.compile(rb"[." + _SEGMENT_CHARS + rb"]*")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters allowed raw in a path segment besides the unreserved ones (RFC 3986 pchar minus
# ";" which is refused, and "/" which separates segments).
_RAW_OK = _UNRESERVED | frozenset(b"!$&'()*+,=:@")
# Refused whether raw or escaped, with the reason given to the client.
_REFUSED = {
    0x2F: "an encoded '/' (%2F)",
    0x5C: "a backslash",
    0x3B: "a ';' (path parameter)",
    0x25: "an encoded '%' (%25, double encoding)",
    0x3F: "a '?'",
    0x23: "a '#'",
}
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})


def _refuse(why: str) -> PathNotCanonical:
    return PathNotCanonical(f"the request path is not canonical: it contains {why}")


#: Characters Windows' "best fit" code-page mapping turns into ASCII path syntax, though NFKC
#: does not: a backend calling the ANSI file APIs reads "..∕admin" as "../admin" (the WorstFit
#: research, 2025). Division slash, set minus, fraction slash, big solidus, yen and won signs.
_WINDOWS_BEST_FIT = frozenset("\u2215\u2216\u2044\u29f8\u29f9\u00a5\u20a9")


@lru_cache(maxsize=4096)
def _folds_to_ascii(char: str) -> bool:
    """True when a lenient backend could read the non-ASCII ``char`` as ASCII or as nothing."""
    if unicodedata.category(char) in _REFUSED_CATEGORIES or char in _WINDOWS_BEST_FIT:
        return True
    if any(c.isascii() for c in unicodedata.normalize("NFKC", char)):
        return True
    # Case mappings: the dotless i upper-cases to "I", the Kelvin sign lower-cases to "k".
    # ("ß" upper-cases to "SS", which reads as no single ASCII letter: it stays allowed.)
    return any(len(m) == 1 and m.isascii() for m in (char.upper(), char.lower(), char.casefold()))


def _check_ascii(value: int) -> None:
    if value < 0x20 or value == 0x7F:
        raise _refuse("a NUL byte" if value == 0 else "a control character")
    why = _REFUSED.get(value)
    if why is not None:
        raise _refuse(why)


def _escape_table() -> dict[bytes, int]:
    table = {}
    for value in range(256):
        hi, lo = f"{value:02x}"[0], f"{value:02x}"[1]
        for h in {hi, hi.upper()}:
            for low in {lo, lo.upper()}:
                table[(h + low).encode("ascii")] = value
    return table


#: The two hex digits after a "%" (any case) -> the byte value.
_ESCAPES = _escape_table()


def _plain(piece: bytes, out: list[str], decoded: list[str]) -> None:
    """Append a run of literal (unescaped) bytes of a segment."""
    if _PLAIN_SEGMENT.fullmatch(piece) is not None:
        text = piece.decode("ascii")
        out.append(text)
        decoded.append(text)
        return
    for b in piece:
        if b >= 0x80:
            raise _refuse("a raw non-ASCII byte (percent-encode it)")
        _check_ascii(b)
        char = chr(b)
        out.append(char if b in _RAW_OK else f"%{b:02X}")
        decoded.append(char)


def _utf8(run: bytearray, out: list[str], decoded: list[str]) -> None:
    """Append a run of escaped bytes >= 0x80: strict UTF-8 (no overlong forms), no confusables."""
    try:
        text = run.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse("percent-encoded bytes that are not valid UTF-8") from None
    if any(_folds_to_ascii(char) for char in text):
        raise _refuse("a non-ASCII character that can be read as ASCII or as a space")
    out.extend(f"%{byte:02X}" for byte in run)
    decoded.append(text)
    run.clear()


def _segment(raw: bytes) -> tuple[str, str]:
    """Canonicalise one segment: (canonical spelling, fully decoded text for the checks)."""
    if _PLAIN_SEGMENT.fullmatch(raw) is not None:
        text = raw.decode("ascii")
        return text, text
    out: list[str] = []
    decoded: list[str] = []
    pieces = raw.split(b"%")
    _plain(pieces[0], out, decoded)
    run = bytearray()
    for piece in pieces[1:]:
        value = _ESCAPES.get(piece[:2])
        if value is None:
            raise _refuse("an invalid percent-escape")
        if value >= 0x80:
            run.append(value)
        else:
            if run:
                _utf8(run, out, decoded)
            _check_ascii(value)
            char = chr(value)
            out.append(char if value in _UNRESERVED else f"%{value:02X}")
            decoded.append(char)
        if len(piece) > 2:
            if run:
                _utf8(run, out, decoded)
            _plain(piece[2:], out, decoded)
    if run:
        _utf8(run, out, decoded)
    return "".join(out), "".join(decoded)


def canonical_path(raw_path: bytes, normalize: Collection[str] = frozenset()) -> str:
    """The canonical form of ``raw_path`` (ASGI ``raw_path``, without the query string).

    Raises :class:`~gateway.errors.PathNotCanonical` when the path is ambiguous and
    ``normalize`` does not resolve it. See the module docstring for the rules.
    """
    if _FAST_PATH.fullmatch(raw_path) is not None:
        path = raw_path.decode("ascii")
        if path[-1] == "/" and len(path) > 1 and "strip_trailing_slash" in normalize:
            return path[:-1]
        return path
    return _slow_path(raw_path, normalize)


def _slow_path(raw_path: bytes, normalize: Collection[str]) -> str:
    options = frozenset(normalize)
    unknown = options - NORMALIZE_OPTIONS
    if unknown:
        raise ValueError(f"unknown normalize option(s): {sorted(unknown)}")
    if not raw_path.startswith(b"/"):
        raise PathNotCanonical("the request path is not canonical: it must start with '/'")
    merge_slashes = "merge_slashes" in options
    resolve_dots = "resolve_dots" in options
    raw_segments = raw_path[1:].split(b"/")
    last = len(raw_segments) - 1
    segments: list[str] = []
    ends_with_dot_segment = False
    for index, raw in enumerate(raw_segments):
        canonical, decoded = _segment(raw)
        ends_with_dot_segment = False
        if decoded == "":
            if index == last:
                segments.append("")
                continue
            if merge_slashes:
                continue
            raise _refuse("an empty segment ('//')")
        if decoded in (".", ".."):
            if not resolve_dots:
                raise _refuse("a dot-segment ('.' or '..')")
            if decoded == "..":
                if not segments:
                    raise _refuse("a '..' segment that climbs above the root")
                segments.pop()
            ends_with_dot_segment = True
            continue
        if decoded[-1] == ".":
            raise _refuse("a segment ending in '.'")
        if decoded[0] == " " or decoded[-1] == " ":
            raise _refuse("a segment that starts or ends with a space")
        segments.append(canonical)
    if ends_with_dot_segment:
        # "/a/b/.." is the directory "/a/", as in RFC 3986 §5.2.4.
        segments.append("")
    if "strip_trailing_slash" in options and len(segments) > 1 and segments[-1] == "":
        segments.pop()
    if not segments:
        return "/"
    return "/" + "/".join(segments)


__all__ = ["NORMALIZE_OPTIONS", "canonical_path"]
