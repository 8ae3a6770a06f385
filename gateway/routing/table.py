"""The route table: compiled once from ``routes[].match``, matched on every request.

Semantics (the lead copies these into README / ``gateway.example.yaml``):

- **Precedence: first match in file order.** The first route whose path, method and host all
  match wins; later routes are not looked at. ``jwt-gateway check`` reports a route that can
  never match because one earlier route covers everything it matches (:meth:`unreachable`).
- **Paths** are matched against the canonical path (:mod:`gateway.routing.path`),
  case-sensitively, on whole segments:

  - ``/exact`` matches that path only (``/exact/`` with a trailing slash is another path);
  - ``*`` matches exactly one non-empty segment;
  - ``{name}`` matches exactly one non-empty segment and captures it as path parameter
    ``name`` (its value is the canonical segment, still percent-encoded where the path is);
  - ``**`` matches any number of segments (zero included) and may only be the last segment:
    ``/public/**`` matches ``/public``, ``/public/`` and everything below ``/public/``, never
    ``/publicity``; ``/**`` matches every path.

  ``*``, ``**`` and ``{name}`` are whole segments (``/files/*.json`` is refused). Literal
  segments are written in canonical form; they are canonicalised at load (``%61`` -> ``a``,
  ``%3a`` -> ``%3A``, non-ASCII -> UTF-8 percent-escapes) and refused if no canonical path
  could ever contain them (``//``, ``..``, ``;``...).
- **Methods** are compared case-insensitively: a request method ``get`` matches a ``GET``
  route, because several backends (Werkzeug/Flask) upper-case the method and would run the
  GET handler; matching it against another route would let it skip the GET route's rule.
  **HEAD matches a route that lists GET**: Starlette, Flask and Django answer HEAD with the
  GET handler, so a HEAD request must meet the GET route's rule rather than fall through to a
  later, more permissive route. A route without ``methods`` matches every method.
- **Host** (optional): exact names, compared case-insensitively with the port and a trailing
  dot removed; ``*.example.com`` matches any name ending in ``.example.com`` (one or more
  labels, not ``example.com`` itself). A route with a host constraint never matches a request
  without a (valid) Host. A route without ``host`` matches every host.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from gateway.config.models import Match
from gateway.errors import ConfigError, PathNotCanonical
from gateway.routing.path import canonical_path

T = TypeVar("T")

_NO_PARAMS: Mapping[str, str] = MappingProxyType({})
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HOST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")
_HOST_PATTERN = re.compile(r"(?:\*\.)?[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\]")
# Separates the host from the path in the string the combined regexes match; it can occur in
# neither (canonical paths have no control characters, hosts are validated).
_SEP = "\x00"
_NEVER = re.compile("(?!)")


class _Star:
    """One non-empty segment (``*``)."""

    def __repr__(self) -> str:
        return "*"


STAR = _Star()


@dataclass(frozen=True, slots=True)
class _Param:
    """One non-empty segment captured as a path parameter (``{name}``)."""

    name: str


_Segment = str | _Star | _Param


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A compiled path pattern: fixed segments, then optionally ``**`` (``rest``)."""

    source: str
    segments: tuple[_Segment, ...]
    rest: bool
    #: Regex source for the canonical path (no anchors: used inside the combined regexes).
    regex: str
    params: tuple[str, ...]
    compiled: re.Pattern[str]

    @property
    def first(self) -> str | None:
        """The literal first segment, or None when the first segment is a wildcard."""
        if self.segments and isinstance(self.segments[0], str):
            return self.segments[0]
        return None

    def covers(self, other: PathPattern) -> bool:
        """True when every path ``other`` matches is also matched by this pattern."""
        if other.rest and not self.rest:
            return False
        if len(other.segments) < len(self.segments):
            return False
        if not self.rest and len(other.segments) != len(self.segments):
            return False
        return all(
            _segment_covers(mine, theirs) for mine, theirs in zip(self.segments, other.segments, strict=False)
        )


def _segment_covers(mine: _Segment, theirs: _Segment) -> bool:
    if isinstance(mine, str):
        return isinstance(theirs, str) and theirs == mine
    # "*" and "{name}" match any non-empty segment: they cover any non-empty literal too.
    return not isinstance(theirs, str) or theirs != ""


def compile_path_pattern(source: str, normalize: Collection[str] = frozenset()) -> PathPattern:
    """Compile ``source`` (a ``match.path``); raises ValueError with a one-line reason."""
    if not source.startswith("/"):
        raise ValueError("a path pattern must start with /")
    parts = source[1:].split("/")
    rest = parts[-1] == "**"
    if rest:
        parts.pop()
    segments: list[_Segment] = []
    pieces: list[str] = []
    params: list[str] = []
    for index, part in enumerate(parts):
        if part == "**":
            raise ValueError("'**' may only be the last segment of a path pattern")
        if part == "*":
            segments.append(STAR)
            pieces.append("[^/]+")
            continue
        param = _PARAM.fullmatch(part)
        if param is not None:
            name = param.group(1)
            if name in params:
                raise ValueError(f"path parameter {{{name}}} appears twice")
            params.append(name)
            segments.append(_Param(name))
            pieces.append("([^/]+)")
            continue
        if "*" in part or "{" in part or "}" in part:
            raise ValueError("'*', '**' and '{name}' must be whole segments")
        if part == "" and (index != len(parts) - 1 or rest):
            raise ValueError("a path pattern must not contain an empty segment ('//')")
        literal = _canonical_literal(part, normalize, last=index == len(parts) - 1 and index > 0 and not rest)
        segments.append(literal)
        pieces.append(re.escape(literal))
    if rest:
        regex = "/" + "/".join(pieces) + "(?:/.*)?" if pieces else "/.*"
    else:
        regex = "/" + "/".join(pieces)
    return PathPattern(source, tuple(segments), rest, regex, tuple(params), re.compile(regex, re.DOTALL))


def _canonical_literal(part: str, normalize: Collection[str], *, last: bool) -> str:
    if part == "":
        if "strip_trailing_slash" in normalize and last:
            raise ValueError("a trailing '/' can never match with paths.normalize strip_trailing_slash")
        return ""
    # Non-ASCII may be written as is in the config; requests carry it percent-encoded.
    raw = "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode()) for c in part)
    try:
        canonical = canonical_path(("/" + raw).encode("ascii"))
    except PathNotCanonical as exc:
        raise ValueError(f"segment {part!r} can never be part of a canonical path: {exc.detail}") from None
    if canonical.count("/") != 1:
        raise ValueError(f"segment {part!r} can never be part of a canonical path")
    return canonical[1:]


# ------------------------------------------------------------------------------------- hosts


@dataclass(frozen=True, slots=True)
class HostPattern:
    """An exact host name, or ``*.suffix`` (``suffix`` starts with a dot)."""

    source: str
    exact: str | None
    suffix: str | None

    def matches(self, host: str) -> bool:
        """``host`` must already be normalised (:func:`normalize_host`)."""
        if self.exact is not None:
            return host == self.exact
        assert self.suffix is not None
        return host.endswith(self.suffix) and len(host) > len(self.suffix)

    def covers(self, other: HostPattern) -> bool:
        """True when every host ``other`` matches is also matched by this pattern."""
        if other.exact is not None:
            return self.matches(other.exact)
        assert other.suffix is not None
        return self.suffix is not None and other.suffix.endswith(self.suffix)

    def regex(self) -> str:
        """The pattern as a regex fragment for normalised hosts."""
        if self.exact is not None:
            return re.escape(self.exact)
        assert self.suffix is not None
        return "[^\x00]+" + re.escape(self.suffix)


def compile_host_pattern(source: str) -> HostPattern:
    """Compile one ``match.host`` entry; raises ValueError with a one-line reason."""
    host = source.strip().lower().rstrip(".")
    if not _HOST_PATTERN.fullmatch(host):
        raise ValueError(f"{source!r} is not a host name (write it without port: *.example.com)")
    if host.startswith("*."):
        return HostPattern(source, None, host[1:])
    return HostPattern(source, host, None)


def normalize_host(host: str | None) -> str | None:
    """The request's Host, lower-cased, without port and trailing dot; None when unusable."""
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        name, tail = host[: end + 1], host[end + 1 :]
        if tail and (tail[0] != ":" or not tail[1:].isdigit()):
            return None
    else:
        name, colon, port = host.partition(":")
        if colon and not port.isdigit():
            return None
        name = name.rstrip(".")
    return name if _HOST_NAME.fullmatch(name) else None


# ------------------------------------------------------------------------------------ routes


@dataclass(slots=True)
class RouteMatch(Generic[T]):
    """The route a request matched: its position in the file, its payload, its parameters.

    Read-only by convention (not ``frozen``: a frozen dataclass costs ~0.5 us per request).
    """

    index: int
    payload: T
    params: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One route as ``explain`` shows it: did it match this request, and why (not)."""

    index: int
    matched: bool
    why: str


@dataclass(frozen=True, slots=True)
class _Entry:
    path: PathPattern
    #: Upper-case methods (HEAD added when GET is listed); None: every method.
    methods: frozenset[str] | None
    #: None: every host.
    hosts: tuple[HostPattern, ...] | None


@dataclass(frozen=True, slots=True)
class _Bucket:
    """The routes that accept one method, as one regex of alternatives in file order."""

    regex: re.Pattern[str]
    #: Outer group number -> the route's shared match (routes without parameters) or its index
    #: and ((param name, group number), ...).
    groups: Mapping[int, RouteMatch[Any] | tuple[int, tuple[tuple[str, int], ...]]]


class RouteTable(Generic[T]):
    """Routes compiled for matching: first match in file order wins.

    ``entries`` are ``(match, payload)`` pairs in file order; ``payload`` is whatever the
    caller wants back (the compiled route). Invalid patterns raise
    :class:`~gateway.errors.ConfigError` with the key path ``routes[i].match.<field>``.
    """

    def __init__(self, entries: Sequence[tuple[Match, T]], *, normalize: Iterable[str] = frozenset()) -> None:
        normalize = frozenset(normalize)
        self._payloads = [payload for _, payload in entries]
        self._entries = [_compile_entry(i, match, normalize) for i, (match, _) in enumerate(entries)]
        self._use_host = any(e.hosts is not None for e in self._entries)
        # Index: literal first segment -> (method -> bucket, bucket for unlisted methods). A
        # request looks up its first segment (unknown ones use the fallback) and its method,
        # then runs one small regex over the few routes that can match, in file order.
        methods = sorted({m for e in self._entries if e.methods is not None for m in e.methods})
        firsts = sorted({e.path.first for e in self._entries if e.path.first is not None})
        self._index = {first: self._buckets(methods, first) for first in firsts}
        self._fallback = self._buckets(methods, None)

    def _buckets(self, methods: list[str], first: str | None) -> tuple[dict[str, _Bucket], _Bucket]:
        by_method = {m: self._bucket(_accepts(m, first)) for m in methods}
        return by_method, self._bucket(_accepts(None, first))

    def __len__(self) -> int:
        return len(self._entries)

    def _bucket(self, accepts: Callable[[_Entry], bool]) -> _Bucket:
        alternatives: list[str] = []
        groups: dict[int, RouteMatch[T] | tuple[int, tuple[tuple[str, int], ...]]] = {}
        next_group = 1
        for index, entry in enumerate(self._entries):
            if not accepts(entry):
                continue
            outer = next_group
            params = tuple((name, outer + k + 1) for k, name in enumerate(entry.path.params))
            next_group += 1 + len(params)
            # A route without parameters always yields the same match: built once, shared.
            groups[outer] = (
                (index, params) if params else RouteMatch(index, self._payloads[index], _NO_PARAMS)
            )
            if self._use_host:
                if entry.hosts is None:
                    host = "[^\x00]*"
                else:
                    host = "(?:" + "|".join(h.regex() for h in entry.hosts) + ")"
                alternatives.append(f"({host}{_SEP}{entry.path.regex})")
            else:
                alternatives.append(f"({entry.path.regex})")
        if not alternatives:
            return _Bucket(_NEVER, groups)
        return _Bucket(re.compile("|".join(alternatives), re.DOTALL), groups)

    def match(self, method: str, path: str, host: str | None) -> RouteMatch[T] | None:
        """The first route (file order) matching ``method``, canonical ``path`` and ``host``."""
        end = path.find("/", 1)
        by_method, other = self._index.get(path[1:end] if end > 0 else path[1:], self._fallback)
        bucket = by_method.get(method)
        if bucket is None:
            bucket = by_method.get(method.upper(), other)
        if self._use_host:
            subject = (normalize_host(host) or "") + _SEP + path
        else:
            subject = path
        found = bucket.regex.fullmatch(subject)
        if found is None:
            return None
        route = bucket.groups[found.lastindex or 0]
        if isinstance(route, RouteMatch):
            return route
        index, params = route
        return RouteMatch(index, self._payloads[index], {name: found.group(g) for name, g in params})

    def candidates(self, method: str, path: str, host: str | None) -> list[Candidate]:
        """Every route in file order, whether it matches this request and why (for ``explain``)."""
        method = method.upper()
        normal_host = normalize_host(host)
        winner: int | None = None
        out: list[Candidate] = []
        for index, entry in enumerate(self._entries):
            why = _mismatch(entry, method, path, normal_host)
            if why is not None:
                out.append(Candidate(index, False, why))
            elif winner is None:
                winner = index
                out.append(Candidate(index, True, "matches: first match in file order"))
            else:
                out.append(Candidate(index, False, f"matches too, but route {winner} comes first"))
        return out

    def unreachable(self) -> list[tuple[int, int]]:
        """``(i, j)`` pairs: route ``i`` never matches because earlier route ``j`` covers it.

        Only single-route shadowing is detected (not a route covered by several earlier routes
        together).
        """
        found: list[tuple[int, int]] = []
        for i, later in enumerate(self._entries):
            for j in range(i):
                if _entry_covers(self._entries[j], later):
                    found.append((i, j))
                    break
        return found


def _accepts(method: str | None, first: str | None) -> Callable[[_Entry], bool]:
    """A filter for the routes that may match ``method`` and a path with first segment ``first``.

    ``method`` None stands for the methods no route lists; ``first`` None for the first
    segments no route names literally.
    """

    def accepts(entry: _Entry) -> bool:
        if entry.methods is not None and (method is None or method not in entry.methods):
            return False
        return entry.path.first is None or entry.path.first == first

    return accepts


def _compile_entry(index: int, match: Match, normalize: frozenset[str]) -> _Entry:
    where = f"routes[{index}].match"
    try:
        path = compile_path_pattern(match.path, normalize)
    except ValueError as exc:
        raise ConfigError(str(exc), path=f"{where}.path") from None
    methods: frozenset[str] | None = None
    if match.methods is not None:
        methods = frozenset(m.upper() for m in match.methods)
        if "GET" in methods:
            methods |= {"HEAD"}
    hosts: tuple[HostPattern, ...] | None = None
    if match.host is not None:
        sources = [match.host] if isinstance(match.host, str) else match.host
        if not sources:
            raise ConfigError("host must not be empty (omit it to match every host)", path=f"{where}.host")
        try:
            hosts = tuple(compile_host_pattern(h) for h in sources)
        except ValueError as exc:
            raise ConfigError(str(exc), path=f"{where}.host") from None
    return _Entry(path, methods, hosts)


def _mismatch(entry: _Entry, method: str, path: str, host: str | None) -> str | None:
    if entry.path.compiled.fullmatch(path) is None:
        return f"path {path} does not match {entry.path.source}"
    if entry.methods is not None and method not in entry.methods:
        return f"method {method} is not one of {', '.join(sorted(entry.methods))}"
    if entry.hosts is not None:
        if host is None:
            return "the request has no usable Host; the route needs one"
        if not any(h.matches(host) for h in entry.hosts):
            return f"host {host} is not one of {', '.join(h.source for h in entry.hosts)}"
    return None


def _entry_covers(earlier: _Entry, later: _Entry) -> bool:
    if not earlier.path.covers(later.path):
        return False
    if earlier.methods is not None and (later.methods is None or not later.methods <= earlier.methods):
        return False
    if earlier.hosts is not None:
        if later.hosts is None:
            return False
        if not all(any(e.covers(h) for e in earlier.hosts) for h in later.hosts):
            return False
    return True


__all__ = [
    "Candidate",
    "HostPattern",
    "PathPattern",
    "RouteMatch",
    "RouteTable",
    "compile_host_pattern",
    "compile_path_pattern",
    "normalize_host",
]
