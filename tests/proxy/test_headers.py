"""Hop-by-hop removal and forwarding headers (security-catalogue 6.2 and 6.5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxy.headers import (
    FORWARDING_HEADERS,
    HOP_BY_HOP,
    Forwarding,
    TrustedProxies,
    strip_forwarding,
    strip_hop_by_hop,
    strip_hop_by_hop_response,
    strip_request_headers,
)
from gateway.proxy.http1 import encode_request_head

Headers = list[tuple[bytes, bytes]]

BASE: Headers = [(b"accept", b"*/*"), (b"user-agent", b"curl/8.5")]


def names(headers: Headers) -> list[bytes]:
    return [name for name, _ in headers]


def value(headers: Headers, name: bytes) -> bytes | None:
    found = [v for n, v in headers if n == name]
    assert len(found) <= 1, f"{name!r} appears {len(found)} times"
    return found[0] if found else None


# ------------------------------------------------------------------------- 6.2 hop-by-hop


@pytest.mark.parametrize(
    "name",
    sorted(HOP_BY_HOP | {b"content-length", b"host"}),
)
def test_hop_by_hop_headers_and_framing_never_cross(name: bytes) -> None:
    headers = [*BASE, (name, b"value"), (b"x-after", b"1")]
    assert strip_hop_by_hop(headers) == [*BASE, (b"x-after", b"1")]


@pytest.mark.parametrize(
    ("connection", "removed"),
    [
        # spoof_via_connection_header_removal: the client nominates identity headers.
        ([b"close, X-User-Id, X-User-Role"], {b"x-user-id", b"x-user-role"}),
        ([b"  X-User-Id ,\tx-user-role ,, "], {b"x-user-id", b"x-user-role"}),
        ([b"keep-alive", b"X-User-Id"], {b"x-user-id"}),  # several Connection fields
        ([b"X-USER-ID"], {b"x-user-id"}),
        ([b"x-forwarded-for, X-Real-IP"], {b"x-forwarded-for", b"x-real-ip"}),
        ([b"Authorization"], {b"authorization"}),
        ([b"keep-alive"], set()),
        ([b""], set()),
        ([b","], set()),
    ],
)
def test_connection_nominated_headers_are_removed(connection: list[bytes], removed: set[bytes]) -> None:
    candidates = [
        (b"x-user-id", b"admin"),
        (b"x-user-role", b"admin"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"x-real-ip", b"6.6.6.6"),
        (b"authorization", b"Bearer t"),
        (b"x-untouched", b"1"),
    ]
    headers = [*BASE, *[(b"connection", c) for c in connection], *candidates, (b"keep-alive", b"timeout=5")]
    kept = strip_hop_by_hop(headers)
    assert set(names(kept)) == {b"accept", b"user-agent"} | ({n for n, _ in candidates} - removed)
    assert b"connection" not in names(kept) and b"keep-alive" not in names(kept)


def test_connection_trick_cannot_remove_a_gateway_header() -> None:
    """CVE-2021-32813 / CVE-2024-45410 / CVE-2022-31813: strip first, then add gateway headers."""
    client = [
        (b"host", b"api.example.com"),
        (b"connection", b"close, X-User-Id, X-Forwarded-For"),
        (b"x-user-id", b"admin"),
    ]
    upstream = strip_hop_by_hop(client)
    upstream += [(b"host", b"orders:8000"), (b"x-user-id", b"alice"), (b"x-forwarded-for", b"203.0.113.5")]
    assert value(upstream, b"x-user-id") == b"alice"
    assert value(upstream, b"x-forwarded-for") == b"203.0.113.5"
    assert value(upstream, b"host") == b"orders:8000"
    # And no Connection header reaches the upstream that could nominate gateway headers there.
    head = encode_request_head("GET", b"/", upstream, b"", None)
    assert b"connection" not in head.lower()


def test_h2c_upgrade_is_not_forwarded() -> None:
    headers = [
        *BASE,
        (b"connection", b"Upgrade, HTTP2-Settings"),
        (b"upgrade", b"h2c"),
        (b"http2-settings", b"AAMAAABkAARAAAAAAAIAAAAA"),
    ]
    assert strip_hop_by_hop(headers) == BASE


def test_websocket_upgrade_headers_are_not_copied() -> None:
    headers = [*BASE, (b"connection", b"Upgrade"), (b"upgrade", b"websocket"), (b"sec-websocket-key", b"k")]
    assert strip_hop_by_hop(headers) == [*BASE, (b"sec-websocket-key", b"k")]


def test_order_and_repeated_fields_are_kept() -> None:
    headers = [(b"accept", b"a"), (b"te", b"trailers"), (b"x-a", b"1"), (b"accept", b"b"), (b"x-a", b"2")]
    assert strip_hop_by_hop(headers) == [(b"accept", b"a"), (b"x-a", b"1"), (b"accept", b"b"), (b"x-a", b"2")]


def test_response_hop_by_hop_keeps_content_length_and_cookies() -> None:
    headers = [
        (b"content-type", b"text/plain"),
        (b"connection", b"keep-alive, X-Backend-Secret"),
        (b"keep-alive", b"timeout=5"),
        (b"x-backend-secret", b"s"),
        (b"set-cookie", b"a=1"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"12"),
        (b"set-cookie", b"b=2"),
        (b"proxy-authenticate", b"Basic"),
        (b"trailer", b"x-t"),
        (b"upgrade", b"h2c"),
        (b"content-encoding", b"gzip"),
    ]
    assert strip_hop_by_hop_response(headers) == [
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"content-length", b"12"),
        (b"set-cookie", b"b=2"),
        (b"content-encoding", b"gzip"),
    ]


# ----------------------------------------------------------------- 6.5 forwarding headers


SPOOFED: Headers = [
    (b"x-forwarded-for", b"6.6.6.6"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"evil.example"),
    (b"x-forwarded-port", b"443"),
    (b"x-forwarded-prefix", b"/admin"),
    (b"forwarded", b"for=6.6.6.6;proto=https;host=evil.example"),
    (b"x-real-ip", b"6.6.6.6"),
    (b"client-ip", b"6.6.6.6"),
    (b"true-client-ip", b"6.6.6.6"),
    (b"x-client-ip", b"6.6.6.6"),
    (b"cf-connecting-ip", b"6.6.6.6"),
    (b"fastly-client-ip", b"6.6.6.6"),
    (b"x-cluster-client-ip", b"6.6.6.6"),
    (b"x-original-host", b"evil.example"),
    (b"x-host", b"evil.example"),
]
#: What a trusted proxy may pass on: everything but the regenerated four.
TRUSTED_ONLY = {n for n, _ in SPOOFED} - {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
}


@pytest.mark.parametrize("trusted_peer", [False, True])
def test_client_forwarding_headers_are_stripped(trusted_peer: bool) -> None:
    kept = strip_request_headers([(b"host", b"h"), *BASE, *SPOOFED], trusted_peer=trusted_peer)
    expected_kept = TRUSTED_ONLY if trusted_peer else set()
    assert set(names(kept)) == {b"accept", b"user-agent"} | expected_kept
    assert strip_forwarding([*BASE, *SPOOFED], trusted_peer=trusted_peer) == [
        *BASE,
        *[(n, v) for n, v in SPOOFED if n in expected_kept],
    ]
    assert FORWARDING_HEADERS == {n for n, _ in SPOOFED}


def test_untrusted_peer_values_are_replaced_not_appended() -> None:
    """xff_spoofed_by_client: 6.6.6.6 must never reach the upstream as a hop."""
    result = TrustedProxies([]).forwarding("203.0.113.5", "http", b"api.example.com", [*BASE, *SPOOFED])
    assert result == Forwarding(
        client="203.0.113.5",
        trusted_peer=False,
        headers=[
            (b"x-forwarded-for", b"203.0.113.5"),
            (b"x-forwarded-proto", b"http"),
            (b"x-forwarded-host", b"api.example.com"),
            (b"forwarded", b"for=203.0.113.5;proto=http;host=api.example.com"),
        ],
    )
    upstream = strip_request_headers([*BASE, *SPOOFED], trusted_peer=False) + result.headers
    assert b"6.6.6.6" not in b"".join(v for _, v in upstream)
    assert b"evil.example" not in b"".join(v for _, v in upstream)


def test_peer_outside_the_trusted_networks_is_not_believed() -> None:
    proxies = TrustedProxies(["10.0.0.0/8"])
    result = proxies.forwarding("192.0.2.10", "https", b"h", [(b"x-forwarded-for", b"6.6.6.6")])
    assert (result.client, result.trusted_peer) == ("192.0.2.10", False)
    assert value(result.headers, b"x-forwarded-for") == b"192.0.2.10"
    assert value(result.headers, b"x-forwarded-proto") == b"https"


TRUSTED = ["10.0.0.0/8", "2001:db8:ffff::/48", "127.0.0.1/32"]


@pytest.mark.parametrize(
    ("peer", "xff", "client", "xff_out"),
    [
        # IPv4: the load balancer appended the real client.
        ("10.0.0.1", [b"203.0.113.7"], "203.0.113.7", b"203.0.113.7, 10.0.0.1"),
        # the client's own spoofed entries left of the real client are dropped (unverifiable)
        ("10.0.0.1", [b"6.6.6.6, 203.0.113.7"], "203.0.113.7", b"203.0.113.7, 10.0.0.1"),
        # several trusted hops are walked over
        (
            "10.0.0.1",
            [b"6.6.6.6, 203.0.113.7, 10.9.9.9, 10.8.8.8"],
            "203.0.113.7",
            b"203.0.113.7, 10.9.9.9, 10.8.8.8, 10.0.0.1",
        ),
        # several X-Forwarded-For fields are one list, in order
        (
            "10.0.0.1",
            [b"6.6.6.6", b"203.0.113.7,10.2.2.2"],
            "203.0.113.7",
            b"203.0.113.7, 10.2.2.2, 10.0.0.1",
        ),
        # all trusted: the leftmost is the client
        ("10.0.0.1", [b"10.3.3.3, 10.2.2.2"], "10.3.3.3", b"10.3.3.3, 10.2.2.2, 10.0.0.1"),
        # no XFF from a trusted peer: the peer is the client
        ("10.0.0.1", [], "10.0.0.1", b"10.0.0.1"),
        # IPv6 peer and hops, compressed and canonicalised
        ("2001:db8:ffff::1", [b"2001:DB8:0:0::7"], "2001:db8::7", b"2001:db8::7, 2001:db8:ffff::1"),
        # mixed families, brackets and ports as some proxies write them
        ("10.0.0.1", [b"[2001:db8::7]:4711, 10.2.2.2:80"], "2001:db8::7", b"2001:db8::7, 10.2.2.2, 10.0.0.1"),
        (
            "2001:db8:ffff::1",
            [b"203.0.113.7, 2001:db8:ffff::2"],
            "203.0.113.7",
            b"203.0.113.7, 2001:db8:ffff::2, 2001:db8:ffff::1",
        ),
        # IPv4-mapped IPv6 peer is an IPv4 peer
        ("::ffff:10.0.0.1", [b"203.0.113.7"], "203.0.113.7", b"203.0.113.7, 10.0.0.1"),
        # garbage from a trusted proxy: never crash, fall back to the peer
        ("10.0.0.1", [b"garbage"], "10.0.0.1", b"10.0.0.1"),
        ("10.0.0.1", [b"203.0.113.7, nonsense"], "10.0.0.1", b"10.0.0.1"),
        ("10.0.0.1", [b""], "10.0.0.1", b"10.0.0.1"),
        ("10.0.0.1", [b"203.0.113.7,,10.2.2.2"], "10.0.0.1", b"10.0.0.1"),
        ("10.0.0.1", [b"203.0.113.7, 10.2.2.2 x"], "10.0.0.1", b"10.0.0.1"),
        ("10.0.0.1", [b"1.2.3.4\xff"], "10.0.0.1", b"10.0.0.1"),
        ("10.0.0.1", [b"[1.2.3.4]"], "10.0.0.1", b"10.0.0.1"),
        ("10.0.0.1", [b"999.1.1.1"], "10.0.0.1", b"10.0.0.1"),
        ("10.0.0.1", [b"fe80::1%eth0"], "10.0.0.1", b"10.0.0.1"),
        ("10.0.0.1", [b"1.2.3.4, " * 2000 + b"5.6.7.8"], "10.0.0.1", b"10.0.0.1"),
        # garbage left of the real client is never walked: it does not matter
        ("10.0.0.1", [b"<script>, 203.0.113.7"], "203.0.113.7", b"203.0.113.7, 10.0.0.1"),
    ],
)
def test_trusted_x_forwarded_for_walk(peer: str, xff: list[bytes], client: str, xff_out: bytes) -> None:
    headers = [(b"x-forwarded-for", v) for v in xff]
    result = TrustedProxies(TRUSTED).forwarding(peer, "http", b"h", headers)
    assert result.trusted_peer
    assert result.client == client
    assert value(result.headers, b"x-forwarded-for") == xff_out


def test_trusted_chain_is_mirrored_into_forwarded() -> None:
    headers = [(b"x-forwarded-for", b"203.0.113.7, 2001:db8:ffff::9")]
    result = TrustedProxies(TRUSTED).forwarding("10.0.0.1", "https", b"api.example.com:8443", headers)
    assert value(result.headers, b"forwarded") == (
        b'for=203.0.113.7, for="[2001:db8:ffff::9]", for=10.0.0.1;proto=https;host="api.example.com:8443"'
    )


@pytest.mark.parametrize(
    ("incoming", "client", "forwarded_out"),
    [
        # RFC 7239 §7.4 style chain from trusted proxies: kept from the client's element on.
        (
            [b'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https;host=shop.example, for=10.2.2.2'],
            "2001:db8::7",
            b'for="[2001:db8::7]:4711";proto=https;host=shop.example, for=10.2.2.2, '
            b"for=10.0.0.1;proto=http;host=h",
        ),
        # obfuscated and unknown identifiers are clients (never walked over), kept as they are
        (
            [b"for=_hidden;by=_gw1, for=10.2.2.2"],
            None,
            b"for=_hidden;by=_gw1, for=10.2.2.2, for=10.0.0.1;proto=http;host=h",
        ),
        ([b"For=unknown"], None, b"for=unknown, for=10.0.0.1;proto=http;host=h"),
        # an element without for= ends the walk
        ([b"proto=https"], None, b"proto=https, for=10.0.0.1;proto=http;host=h"),
        # quoted values with escapes are re-serialised safely
        (
            [b'for=203.0.113.7;host="a\\"b"'],
            "203.0.113.7",
            b'for=203.0.113.7;host="a\\"b", for=10.0.0.1;proto=http;host=h',
        ),
        # malformed chains are ignored: only the gateway's own element
        ([b"for=6.6.6.6;;garbage"], "10.0.0.1", b"for=10.0.0.1;proto=http;host=h"),
        ([b'for="unterminated'], "10.0.0.1", b"for=10.0.0.1;proto=http;host=h"),
        ([b"for=[2001:db8::7]"], "10.0.0.1", b"for=10.0.0.1;proto=http;host=h"),  # unquoted ':' is no token
        ([b'for="[10.1.1.1]"'], "10.0.0.1", b"for=10.0.0.1;proto=http;host=h"),
        ([b"for=1.2.3.4:99999999"], "10.0.0.1", b"for=10.0.0.1;proto=http;host=h"),
        ([b"for=example.com"], "10.0.0.1", b"for=10.0.0.1;proto=http;host=h"),
        ([b"for=1.2.3.4,"], "10.0.0.1", b"for=10.0.0.1;proto=http;host=h"),
        ([b"=x"], "10.0.0.1", b"for=10.0.0.1;proto=http;host=h"),
        ([b'for="\x01"'], "10.0.0.1", b"for=10.0.0.1;proto=http;host=h"),
    ],
)
def test_trusted_forwarded_walk(incoming: list[bytes], client: str | None, forwarded_out: bytes) -> None:
    headers = [(b"forwarded", v) for v in incoming]
    result = TrustedProxies(TRUSTED).forwarding("10.0.0.1", "http", b"h", headers)
    assert result.client == client
    assert value(result.headers, b"forwarded") == forwarded_out


def test_forwarded_from_an_untrusted_peer_is_replaced() -> None:
    headers = [(b"forwarded", b"for=10.2.2.2;proto=https")]
    result = TrustedProxies(TRUSTED).forwarding("203.0.113.5", "http", b"h", headers)
    assert value(result.headers, b"forwarded") == b"for=203.0.113.5;proto=http;host=h"
    assert result.client == "203.0.113.5"


@pytest.mark.parametrize(
    ("peer", "node"),
    [
        ("192.0.2.43", b"for=192.0.2.43"),
        ("2001:db8:cafe::17", b'for="[2001:db8:cafe::17]"'),
        ("::1", b'for="[::1]"'),
        (None, b"for=unknown"),  # a unix-socket client
        ("testclient", b"for=unknown"),
    ],
)
def test_forwarded_node_syntax(peer: str | None, node: bytes) -> None:
    result = TrustedProxies([]).forwarding(peer, "https", b"example.com", [])
    assert value(result.headers, b"forwarded") == node + b";proto=https;host=example.com"
    expected_xff = None if node == b"for=unknown" else peer.encode() if peer else None
    assert value(result.headers, b"x-forwarded-for") == expected_xff


@pytest.mark.parametrize(
    ("scheme", "proto"),
    [("http", b"http"), ("https", b"https"), ("ws", b"http"), ("wss", b"https"), ("gopher", b"http")],
)
def test_proto_follows_the_scheme(scheme: str, proto: bytes) -> None:
    result = TrustedProxies([]).forwarding("192.0.2.1", scheme, None, [])
    assert value(result.headers, b"x-forwarded-proto") == proto
    assert value(result.headers, b"x-forwarded-host") is None
    assert value(result.headers, b"forwarded") == b"for=192.0.2.1;proto=" + proto


@pytest.mark.parametrize(
    ("incoming_proto", "incoming_host", "proto", "host"),
    [
        ([b"https"], [b"shop.example"], b"https", b"shop.example"),
        ([b" HTTPS "], [b"shop.example:8443"], b"https", b"shop.example:8443"),
        ([b"https, http"], [b"a, b"], b"http", b"gw.internal"),  # lists are not guessed at
        ([b"javascript"], [b'bad"host'], b"http", b"gw.internal"),
        ([b"https", b"http"], [b"a", b"b"], b"http", b"gw.internal"),
        ([], [], b"http", b"gw.internal"),
    ],
)
def test_trusted_proto_and_host(
    incoming_proto: list[bytes], incoming_host: list[bytes], proto: bytes, host: bytes
) -> None:
    headers = [(b"x-forwarded-proto", p) for p in incoming_proto] + [
        (b"x-forwarded-host", h) for h in incoming_host
    ]
    result = TrustedProxies(TRUSTED).forwarding("10.0.0.1", "http", b"gw.internal", headers)
    assert value(result.headers, b"x-forwarded-proto") == proto
    assert value(result.headers, b"x-forwarded-host") == host


@pytest.mark.parametrize("host", [b'evil"host', b"a b", b"x\\y", b"", b"h" * 300, b"caf\xc3\xa9"])
def test_invalid_client_host_is_not_echoed(host: bytes) -> None:
    result = TrustedProxies([]).forwarding("192.0.2.1", "http", host, [])
    assert value(result.headers, b"x-forwarded-host") is None
    assert value(result.headers, b"forwarded") == b"for=192.0.2.1;proto=http"


@pytest.mark.parametrize(
    ("address", "trusted"),
    [
        ("10.1.2.3", True),
        ("127.0.0.1", True),
        ("127.0.0.2", False),
        ("11.0.0.1", False),
        ("2001:db8:ffff:1::1", True),
        ("[2001:db8:ffff::1]", True),
        ("[2001:db8:ffff::1]:443", True),
        ("10.1.2.3:8080", True),
        ("::ffff:10.1.2.3", True),
        ("2001:db8:fffe::1", False),
        ("not-an-ip", False),
        ("", False),
        (None, False),
    ],
)
def test_is_trusted(address: str | None, trusted: bool) -> None:
    proxies = TrustedProxies(TRUSTED)
    assert proxies.is_trusted(address) is trusted
    assert proxies.is_trusted(address) is trusted  # cached answer agrees
    assert proxies.enabled


def test_forwarding_headers_shortcut_matches() -> None:
    proxies = TrustedProxies(TRUSTED)
    headers = [(b"x-forwarded-for", b"203.0.113.7")]
    expected = proxies.forwarding("10.0.0.1", "https", b"h", headers).headers
    assert proxies.forwarding_headers("10.0.0.1", headers, "https", b"h") == expected


def test_no_trusted_proxies_trusts_nobody() -> None:
    proxies = TrustedProxies()
    assert not proxies.enabled
    assert not proxies.is_trusted("127.0.0.1")
    assert proxies.client_address("127.0.0.1", [(b"x-forwarded-for", b"6.6.6.6")]) == "127.0.0.1"


def test_invalid_cidr_is_refused_at_construction() -> None:
    with pytest.raises(ValueError):
        TrustedProxies(["10.0.0.0/33"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"x-forwarded-for", b"forwarded", b"x-forwarded-proto", b"x-forwarded-host"]),
            st.binary(max_size=80)
            | st.text('0123456789abcdef.:[]_, ;="\\forunkwn', max_size=60).map(str.encode),
        ),
        max_size=6,
    ),
    st.sampled_from(["10.0.0.1", "2001:db8:ffff::1", "203.0.113.5", None]),
)
def test_forwarding_never_crashes_and_emits_safe_values(headers: Headers, peer: str | None) -> None:
    result = TrustedProxies(TRUSTED).forwarding(peer, "https", b"example.com", headers)
    for name, emitted in result.headers:
        assert name in FORWARDING_HEADERS
        assert emitted.isascii()
        assert not any(c < 0x20 or c == 0x7F for c in emitted), emitted
    # What the gateway emits must itself parse as a trusted chain on the next hop.
    again = TrustedProxies(TRUSTED).forwarding("10.0.0.1", "https", b"example.com", result.headers)
    if result.client is not None and value(result.headers, b"x-forwarded-for") is not None:
        assert again.client == result.client


def test_the_whole_x_forwarded_family_is_kept_only_from_a_trusted_peer() -> None:
    headers: Headers = [
        (b"x-forwarded-ssl", b"on"),
        (b"x-forwarded-client-cert", b"Hash=abc"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"x-forwardedness", b"not-of-the-family"),
        (b"accept", b"*/*"),
    ]
    untrusted = [b"x-forwardedness", b"accept"]
    trusted = [b"x-forwarded-ssl", b"x-forwarded-client-cert", b"x-forwardedness", b"accept"]
    assert [n for n, _ in strip_request_headers(headers, trusted_peer=False)] == untrusted
    assert [n for n, _ in strip_forwarding(headers, trusted_peer=False)] == untrusted
    assert [n for n, _ in strip_request_headers(headers, trusted_peer=True)] == trusted
    assert [n for n, _ in strip_forwarding(headers, trusted_peer=True)] == trusted
