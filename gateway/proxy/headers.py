"""Which headers cross the gateway, and the forwarding headers it adds. Pure functions, no I/O.

Hop-by-hop headers (RFC 9110 §7.6.1) and every header a ``Connection`` field nominates are
removed from the client's list *before* the gateway adds its own, so ``Connection: X-User-Id``
can never delete a gateway-set header (Traefik CVE-2021-32813 / CVE-2024-45410, Apache
CVE-2022-31813). The client's ``Content-Length`` and ``Host`` never cross either: the pool
re-derives framing, the forwarder sets the upstream's Host.

Forwarding headers (``X-Forwarded-For/-Proto/-Host``, RFC 7239 ``Forwarded``) are always
regenerated from the real peer; the rest of the ``X-Forwarded-*`` family and ``X-Real-IP`` are
dropped unless the peer is a trusted proxy. Incoming values are believed only from a peer inside
``trusted_proxies``; the chain is then walked right to left over trusted hops to the real client
(as uvicorn's ``_TrustedHosts`` does), and kept from that client onwards with the peer appended.
From anyone else they are replaced, never appended to. Garbage in a trusted chain never
crashes: it falls back to the peer.

Header names are lower-case bytes, as in ASGI.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Headers = Sequence[tuple[bytes, bytes]]

#: Hop-by-hop headers (RFC 9110 §7.6.1, plus the de-facto Proxy-Connection and Keep-Alive).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Method-override headers: frameworks (Rails, Laravel, Express method-override, Symfony)
#: would turn a GET the route allowed into the DELETE it did not. The gateway decided on the
#: request's real method, so these never cross, from anyone.
METHOD_OVERRIDES = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})
#: Never copied from the client's request: framing is re-derived, Host is the upstream's.
_REQUEST_DROP = HOP_BY_HOP | METHOD_OVERRIDES | {b"content-length", b"host"}
#: Forwarding headers the gateway regenerates on every request.
REGENERATED_FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)
#: Forwarding headers the gateway does not set: kept only when the peer is a trusted proxy.
#: Also the client-address and original-host headers that CDNs and frameworks read (Rails'
#: remote_ip takes Client-IP; Akamai True-Client-IP; Cloudflare CF-Connecting-IP...).
TRUSTED_ONLY_FORWARDING = frozenset(
    {
        b"x-forwarded-port",
        b"x-forwarded-prefix",
        b"x-real-ip",
        b"client-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-cluster-client-ip",
        b"x-original-host",
        b"x-host",
    }
)
FORWARDING_HEADERS = REGENERATED_FORWARDING | TRUSTED_ONLY_FORWARDING
#: The rest of the ``X-Forwarded-*`` family (X-Forwarded-Ssl, -Scheme, -Uri, -Client-Cert...) is
#: kept only from a trusted peer too: backends believe some of them (Rack takes
#: X-Forwarded-Ssl: on for https, Envoy-fronted services read X-Forwarded-Client-Cert).
FORWARDED_PREFIX = b"x-forwarded-"
_FROM_TRUSTED = _REQUEST_DROP | REGENERATED_FORWARDING
_FROM_UNTRUSTED = _REQUEST_DROP | FORWARDING_HEADERS

_OWS = b" \t"
#: Largest forwarding value walked; a longer one is treated as garbage (peer fallback).
_MAX_CHAIN_BYTES = 8192
_PEER_CACHE_MAX = 4096
_IP_CHARS = b"0123456789abcdefABCDEF:."
_HOST_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:[]"
_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_OBFUSCATED_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
#: Request scheme (ASGI ``scope["scheme"]``) -> the proto the gateway reports (a WebSocket
#: handshake is an HTTP request: ws/wss report http/https).
_SCHEMES = {"http": b"http", "https": b"https", "ws": b"http", "wss": b"https"}
_INCOMING_PROTOS = {b"http": b"http", b"https": b"https"}


# ---------------------------------------------------------------------------------- hop-by-hop


def _nominated(values: list[bytes]) -> set[bytes]:
    names: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip(_OWS).lower()
            if token:
                names.add(token)
    return names


#: ``Connection`` value -> the names it nominates. The same few values ("keep-alive", "close",
#: "upgrade") come on nearly every message; bounded anyway.
#: Names (and Connection values) longer than this are never cached: the caches of header
#: names fill up once and stay, so a client sending thousands of distinct 16 KiB names must not
#: make them hold tens of megabytes (real header names are short; a long one is just re-checked).
MAX_CACHED_NAME = 64
_NOMINATED: dict[bytes, frozenset[bytes]] = {}
_NOMINATED_MAX = 256


def nominated_names(connection: list[bytes]) -> frozenset[bytes]:
    """The lower-cased header names the ``Connection`` field values nominate (cached)."""
    if len(connection) == 1:
        value = connection[0]
        names = _NOMINATED.get(value)
        if names is None:
            names = frozenset(_nominated(connection))
            if len(value) <= MAX_CACHED_NAME and len(_NOMINATED) < _NOMINATED_MAX:
                _NOMINATED[value] = names
        return names
    return frozenset(_nominated(connection))


def is_forwarding_header(name: bytes) -> bool:
    """Whether a (lower-case) header name is a forwarding header: one the gateway regenerates,
    or one it keeps only from a trusted peer (the named ones and every other ``X-Forwarded-*``)."""
    return name in FORWARDING_HEADERS or name.startswith(FORWARDED_PREFIX)


def _strip(
    headers: Headers, drop: frozenset[bytes], drop_prefix: bytes | None = None
) -> list[tuple[bytes, bytes]]:
    kept: list[tuple[bytes, bytes]] = []
    connection: list[bytes] | None = None
    for item in headers:
        name = item[0]
        if name in drop:
            if name == b"connection":
                if connection is None:
                    connection = []
                connection.append(item[1])
            continue
        if drop_prefix is not None and name.startswith(drop_prefix):
            continue
        kept.append(item)
    if connection is not None:
        nominated = nominated_names(connection)
        if not nominated <= drop:
            kept = [item for item in kept if item[0] not in nominated]
    return kept


def fields_size(headers: list[tuple[bytes, bytes]]) -> int:
    """What a head's fields count against a head size limit: name, value, ``": "`` and CRLF each."""
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
    return size


def strip_hop_by_hop(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The client's request headers without hop-by-hop headers, Content-Length and Host.

    Also removes every header any ``Connection`` field nominates (comma lists, several fields,
    any case, optional whitespace). Run it on the client's list before adding gateway headers.
    """
    return _strip(headers, _REQUEST_DROP)


def strip_hop_by_hop_response(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers without hop-by-hop ones (Content-Length is kept)."""
    return _strip(headers, HOP_BY_HOP)


def strip_request_headers(headers: Headers, *, trusted_peer: bool) -> list[tuple[bytes, bytes]]:
    """:func:`strip_hop_by_hop` plus the client's forwarding headers, in one pass.

    ``X-Forwarded-For/-Proto/-Host`` and ``Forwarded`` are always removed (see
    :meth:`TrustedProxies.forwarding`, which regenerates them); ``X-Real-IP`` and every other
    ``X-Forwarded-*`` (Port, Prefix, Ssl, Client-Cert...) are kept only from a trusted peer.
    """
    if trusted_peer:
        return _strip(headers, _FROM_TRUSTED)
    return _strip(headers, _FROM_UNTRUSTED, FORWARDED_PREFIX)


def strip_forwarding(headers: Headers, *, trusted_peer: bool) -> list[tuple[bytes, bytes]]:
    """Only the forwarding-header part of :func:`strip_request_headers`."""
    if trusted_peer:
        return [item for item in headers if item[0] not in REGENERATED_FORWARDING]
    return [item for item in headers if not is_forwarding_header(item[0])]


# ------------------------------------------------------------------------- addresses and nodes


def _normalise_ip(text: str) -> str | None:
    """``text`` as a canonical IP address string, or ``None`` if it is not one.

    Accepts a bracketed IPv6 address and a trailing port (``1.2.3.4:80``, ``[::1]:80``), as
    X-Forwarded-For writers disagree on both. IPv4-mapped IPv6 addresses become IPv4.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not _is_port(text[end + 1 :])):
            return None
        text = text[1:end]
        if ":" not in text:
            return None  # brackets hold IPv6 only
    elif text.count(":") == 1:
        text, port = text.split(":")
        if not _is_port(":" + port):
            return None
    if not text or len(text) > 45 or text.encode("ascii", "replace").translate(None, _IP_CHARS):
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _is_port(text: str) -> bool:
    return len(text) in range(2, 7) and text[0] == ":" and text[1:].isdigit() and text[1:].isascii()


def _forwarded_node(ip: str | None) -> bytes:
    """The RFC 7239 node for an address: IPv6 bracketed and quoted, ``unknown`` without one."""
    if ip is None:
        return b"unknown"
    if ":" in ip:
        return b'"[' + ip.encode("ascii") + b']"'
    return ip.encode("ascii")


def _valid_host(host: bytes) -> bool:
    return 0 < len(host) <= 255 and not host.translate(None, _HOST_CHARS)


def _quote(value: bytes) -> bytes:
    """An RFC 7239 value: a token as is, anything else as a quoted-string (validated input)."""
    if value and not value.translate(None, _TOKEN_CHARS):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# ---------------------------------------------------------------------- RFC 7239 Forwarded parse

_Element = list[tuple[bytes, bytes]]


def _parse_forwarded(values: list[bytes]) -> list[_Element] | None:
    """``Forwarded`` field values as elements of (lower-case name, unquoted value) pairs.

    ``None`` for anything that is not well-formed (RFC 7239 §4): the caller then ignores the
    incoming chain rather than guess.
    """
    text = b", ".join(values)
    if len(text) > _MAX_CHAIN_BYTES:
        return None
    elements: list[_Element] = []
    pairs: _Element = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _OWS:
            i += 1
        if i < n and text[i] not in b",;":
            eq = text.find(b"=", i)
            if eq < 0:
                return None
            name = text[i:eq].lower()
            if not name or name.translate(None, _TOKEN_CHARS):
                return None
            i = eq + 1
            if i < n and text[i] == 0x22:  # quoted-string
                value = bytearray()
                i += 1
                while i < n and text[i] != 0x22:
                    if text[i] == 0x5C:
                        i += 1
                        if i >= n:
                            return None
                    if text[i] < 0x20 and text[i] != 0x09 or text[i] == 0x7F:
                        return None
                    value.append(text[i])
                    i += 1
                if i >= n:
                    return None
                i += 1
                pairs.append((name, bytes(value)))
            else:
                start = i
                while i < n and text[i] not in b",; \t":
                    i += 1
                token = text[start:i]
                if not token or token.translate(None, _TOKEN_CHARS):
                    return None
                pairs.append((name, token))
            while i < n and text[i] in _OWS:
                i += 1
        if i >= n or text[i] == 0x2C:  # end of an element
            if not pairs:
                return None
            elements.append(pairs)
            pairs = []
            if i >= n:
                return elements
            i += 1
        elif text[i] == 0x3B:
            i += 1
        else:
            return None


_UNKNOWN_NODE = ""


def _node_address(node: bytes) -> str | None:
    """The IP of an RFC 7239 node; ``""`` for ``unknown`` or obfuscated; ``None`` if malformed."""
    try:
        text = node.decode("ascii")
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and _node_port(rest[1:]))):
            return None
        return _normalise_ip(text[: end + 1])
    name, colon, port = text.partition(":")
    if colon and not _node_port(port):
        return None
    if name == "unknown" or _obfuscated(name):
        return _UNKNOWN_NODE
    ip = _normalise_ip(name)
    return ip if ip is not None and ":" not in ip else None


def _node_port(port: str) -> bool:
    return (port.isascii() and port.isdigit() and len(port) <= 5) or _obfuscated(port)


def _obfuscated(text: str) -> bool:
    return len(text) > 1 and text[0] == "_" and not text.encode("ascii").translate(None, _OBFUSCATED_CHARS)


def _element_address(element: _Element) -> str | None:
    node = next((value for name, value in element if name == b"for"), None)
    return None if node is None else _node_address(node) or None


def _serialise(element: _Element) -> bytes:
    return b";".join(name + b"=" + _quote(value) for name, value in element)


# ----------------------------------------------------------------------------- trusted proxies


@dataclass(frozen=True, slots=True)
class Forwarding:
    """What :meth:`TrustedProxies.forwarding` decided for one request."""

    #: The real client address (canonical IP), or ``None`` when unknown (unix socket,
    #: ``unknown`` or obfuscated identifier from a trusted proxy).
    client: str | None
    #: The direct peer is a trusted proxy (its incoming forwarding headers were believed).
    trusted_peer: bool
    #: Headers to add to the upstream request (X-Forwarded-For/-Proto/-Host, Forwarded).
    headers: list[tuple[bytes, bytes]]


class TrustedProxies:
    """The peers whose forwarding headers are believed, from CIDRs parsed once.

    ``trusted_proxies: []`` (the default) trusts nobody: every incoming forwarding header is
    replaced by one naming the direct peer.
    """

    __slots__ = ("_direct", "_networks", "_peers")

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self._networks = tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)
        # peer string -> (canonical IP or None, trusted): peers repeat, parsing does not need to.
        self._peers: dict[str, tuple[str | None, bool]] = {}
        # (peer, scheme, host) -> Forwarding for untrusted peers, whose incoming headers are
        # never read: the answer depends on nothing else, and the same clients come back.
        self._direct: dict[tuple[str | None, str, bytes | None], Forwarding] = {}

    @property
    def enabled(self) -> bool:
        """True when at least one network is trusted."""
        return bool(self._networks)

    def _peer(self, peer: str | None) -> tuple[str | None, bool]:
        if peer is None:
            return None, False
        known = self._peers.get(peer)
        if known is None:
            ip = _normalise_ip(peer)
            known = (ip, ip is not None and self._contains(ip))
            if len(self._peers) >= _PEER_CACHE_MAX:
                self._peers.clear()
            self._peers[peer] = known
        return known

    def _contains(self, ip: str) -> bool:
        address = ipaddress.ip_address(ip)
        return any(address in network for network in self._networks if network.version == address.version)

    def is_trusted(self, address: str | None) -> bool:
        """True when ``address`` (an IP, optionally bracketed or with a port) is trusted."""
        return self._peer(address)[1]

    def forwarding_headers(
        self, peer: str | None, headers: Headers, scheme: str, host: bytes | None
    ) -> list[tuple[bytes, bytes]]:
        """Only the headers of :meth:`forwarding` (argument order of the forwarder's call)."""
        return self.forwarding(peer, scheme, host, headers).headers

    def client_address(self, peer: str | None, headers: Headers) -> str | None:
        """The real client: the rightmost untrusted hop of the peer's chain (see module doc)."""
        return self.forwarding(peer, "http", None, headers).client

    def forwarding(self, peer: str | None, scheme: str, host: bytes | None, headers: Headers) -> Forwarding:
        """The forwarding headers to send upstream for a request from ``peer``.

        ``scheme`` is how the gateway was reached (``http``/``https``), ``host`` the client's
        Host header value (``None`` if absent), ``headers`` the client's full header list.
        The returned object (and its header list) may be shared: do not modify it.
        """
        key = (peer, scheme, host)
        known = self._direct.get(key)
        if known is not None:
            return known
        peer_ip, trusted = self._peer(peer)
        scheme_bytes = _SCHEMES.get(scheme, b"http")
        host = host if host is not None and _valid_host(host) else None
        chain: list[str] = []  # hops before the peer, from the real client onwards
        client = peer_ip
        proto = scheme_bytes
        forwarded_host = host
        elements: list[bytes] = []
        if trusted:
            xff: list[bytes] = []
            forwarded: list[bytes] = []
            incoming_proto: list[bytes] = []
            incoming_host: list[bytes] = []
            for name, value in headers:
                if name == b"x-forwarded-for":
                    xff.append(value)
                elif name == b"forwarded":
                    forwarded.append(value)
                elif name == b"x-forwarded-proto":
                    incoming_proto.append(value)
                elif name == b"x-forwarded-host":
                    incoming_host.append(value)
            if xff:
                walked = self._walk_xff(xff)
                if walked is not None:
                    chain = walked
                    client = chain[0] if chain else peer_ip
            if forwarded:
                walked_elements = self._walk_forwarded(forwarded)
                if walked_elements is not None:
                    elements = [_serialise(e) for e in walked_elements[1]]
                    if not xff:
                        # Only Forwarded came in: X-Forwarded-For mirrors its addresses.
                        client = walked_elements[0]
                        chain = [a for a in map(_element_address, walked_elements[1]) if a]
            elif chain:
                elements = [b"for=" + _forwarded_node(hop) for hop in chain]
            if len(incoming_proto) == 1:
                proto = _INCOMING_PROTOS.get(incoming_proto[0].strip(_OWS).lower(), scheme_bytes)
            if len(incoming_host) == 1 and _valid_host(incoming_host[0].strip(_OWS)):
                forwarded_host = incoming_host[0].strip(_OWS)
        out: list[tuple[bytes, bytes]] = []
        if peer_ip is not None:
            out.append((b"x-forwarded-for", ", ".join([*chain, peer_ip]).encode("ascii")))
        out.append((b"x-forwarded-proto", proto))
        if forwarded_host is not None:
            out.append((b"x-forwarded-host", forwarded_host))
        ours = b"for=" + _forwarded_node(peer_ip) + b";proto=" + scheme_bytes
        if host is not None:
            ours += b";host=" + _quote(host)
        elements.append(ours)
        out.append((b"forwarded", b", ".join(elements)))
        result = Forwarding(client=client, trusted_peer=trusted, headers=out)
        if not trusted:
            if len(self._direct) >= _PEER_CACHE_MAX:
                self._direct.clear()
            self._direct[key] = result
        return result

    def _walk_xff(self, values: list[bytes]) -> list[str] | None:
        """The chain from the real client to the last hop before the peer; ``None`` if garbage."""
        text = b",".join(values)
        if len(text) > _MAX_CHAIN_BYTES:
            return None
        hops = text.split(b",")
        kept: list[str] = []
        for raw in reversed(hops):
            try:
                ip, trusted = self._peer(raw.strip(_OWS).decode("ascii"))
            except UnicodeDecodeError:
                return None
            if ip is None:
                return None
            kept.append(ip)
            if not trusted:
                break  # the first untrusted hop is the client; what is left of it is unverified
        kept.reverse()
        return kept

    def _walk_forwarded(self, values: list[bytes]) -> tuple[str | None, list[_Element]] | None:
        """(client, elements from the client's onwards) of a trusted Forwarded chain, or None."""
        elements = _parse_forwarded(values)
        if elements is None:
            return None
        addresses: list[str | None] = []
        for element in elements:
            node = next((value for name, value in element if name == b"for"), None)
            address = None if node is None else _node_address(node)
            if node is not None and address is None:
                return None  # a malformed node: believe nothing
            addresses.append(address or None)  # "" (unknown, obfuscated) -> None
        for index in range(len(elements) - 1, -1, -1):
            address = addresses[index]
            if address is None or not self._peer(address)[1]:
                return address, elements[index:]
        return addresses[0], elements  # every hop trusted: the first one is the client
