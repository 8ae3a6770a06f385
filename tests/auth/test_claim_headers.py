"""Claim headers: spoof-proof inbound stripping and injection-proof claim encoding."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from gateway.auth.claim_headers import ClaimHeaders, InboundFilter, compile_headers, normalize_header_name
from gateway.config.models import Headers
from gateway.errors import ClaimInvalid


def headers(**spec: Any) -> ClaimHeaders:
    return compile_headers(Headers.model_validate(spec))


def one(spec: dict[str, Any] | str, claims: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    return headers(claims={"X-Out": spec}).claim_headers(claims)


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


# ------------------------------------------------------------------------------ inbound strip

GATEWAY = headers(
    claims={"X-User-Id": "sub", "X-User-Roles": {"claim": "roles"}, "X-Tenant": "tid"},
    strip_prefixes=["X-Auth-"],
    payload_header="X-JWT-Payload",
)

# (client header name, stripped?)
STRIP_CASES: list[tuple[bytes, bool]] = [
    (b"x-user-id", True),
    (b"X-User-Id", True),
    (b"X-USER-ID", True),
    (b"x_user_id", True),
    (b"X_User_Id", True),
    (b"x-user_id", True),
    (b"x-user-roles", True),
    (b"x-tenant", True),
    (b"x_tenant", True),
    (b"x-jwt-payload", True),
    (b"x_jwt_payload", True),
    (b"x-auth-anything", True),
    (b"X-Auth-User", True),
    (b"x_auth_user", True),
    (b"x-auth-", True),
    (b"authorization", True),
    (b"Authorization", True),
    (b"x-original-url", True),
    (b"x-rewrite-url", True),
    (b"x-http-method-override", True),
    (b"x_http_method_override", True),
    (b"any_underscore_header", True),  # drop_underscore_headers (default)
    (b"x-user-idx", False),
    (b"x-user", False),
    (b"x-auth", False),
    (b"xx-user-id", False),
    (b"accept", False),
    (b"content-type", False),
    (b"x-request-id", False),
    (b"cookie", False),
]


@pytest.mark.parametrize(("name", "stripped"), STRIP_CASES)
def test_inbound_strip(name: bytes, stripped: bool) -> None:
    kept = GATEWAY.strip_inbound([(name, b"admin")])
    assert (kept == []) is stripped
    assert GATEWAY.inbound.drops(name) is stripped


def test_strip_keeps_order_and_removes_every_copy() -> None:
    client = [
        (b"host", b"gw.test"),
        (b"x-user-id", b"admin"),
        (b"accept", b"*/*"),
        (b"x_user_id", b"admin"),
        (b"X-User-Id", b"admin"),
        (b"x-user-roles", b"admin"),
        (b"x-user-roles", b"root"),
        (b"authorization", b"Bearer t"),
        (b"accept", b"text/html"),
    ]
    for _ in range(2):  # the second pass uses the decision cache
        assert GATEWAY.strip_inbound(client) == [
            (b"host", b"gw.test"),
            (b"accept", b"*/*"),
            (b"accept", b"text/html"),
        ]


def test_strip_then_set_leaves_only_gateway_values() -> None:
    client = [(b"x-user-id", b"admin"), (b"x_user_id", b"admin"), (b"x-tenant", b"evil"), (b"accept", b"*/*")]
    forwarded = GATEWAY.strip_inbound(client) + GATEWAY.claim_headers({"sub": "alice", "roles": ["user"]})
    names = [n for n, _ in forwarded]
    assert names.count(b"x-user-id") == 1
    assert (b"x-user-id", b"alice") in forwarded
    assert b"x-tenant" not in names  # the client copy is gone even though the claim is absent
    assert all(v != b"admin" for _, v in forwarded)


def test_forward_authorization_keeps_the_header() -> None:
    h = headers(forward_authorization=True)
    assert h.strip_inbound([(b"authorization", b"Bearer t")]) == [(b"authorization", b"Bearer t")]


def test_custom_token_headers_are_stripped() -> None:
    h = compile_headers(Headers(), token_headers=["Authorization", "X-Api-Token"])
    assert h.strip_inbound([(b"x-api-token", b"t"), (b"authorization", b"t"), (b"a", b"b")]) == [(b"a", b"b")]


def test_underscore_headers_can_be_kept() -> None:
    h = headers(claims={"X-User-Id": "sub"}, drop_underscore_headers=False)
    assert h.strip_inbound([(b"x_custom", b"1"), (b"x_user_id", b"admin")]) == [(b"x_custom", b"1")]


def test_custom_strip_list() -> None:
    h = headers(strip=["X-Debug"])
    assert h.strip_inbound([(b"x-debug", b"1"), (b"x-original-url", b"/admin")]) == [
        (b"x-original-url", b"/admin")
    ]


def test_filter_cache_is_bounded() -> None:
    f = InboundFilter(["x-user-id"], [], drop_underscore=True)
    f.strip([(f"x-h{i}".encode(), b"") for i in range(5000)])
    assert len(f._cache) <= 1024
    assert f.strip([(b"x-user-id", b"1"), (b"x-h4999", b"2")]) == [(b"x-h4999", b"2")]


def test_normalize_header_name() -> None:
    assert normalize_header_name("X_User-Id") == b"x-user-id"
    assert normalize_header_name(b"X_USER_ID") == b"x-user-id"


def test_header_names_for_explain() -> None:
    assert GATEWAY.header_names() == ["X-User-Id", "X-User-Roles", "X-Tenant", "X-JWT-Payload"]


def test_duplicate_claim_header_names_are_refused() -> None:
    with pytest.raises(ValueError, match="same name"):
        headers(claims={"X-User-Id": "sub", "x_user_id": "sub"})


def test_invalid_payload_header_name_is_refused() -> None:
    with pytest.raises(ValueError, match="payload_header"):
        headers(payload_header="X Payload")


def test_invalid_claim_path_is_refused() -> None:
    with pytest.raises(ValueError, match=r"headers\.claims\.X-A"):
        headers(claims={"X-A": "/a~2"})


# ------------------------------------------------------------------------------- encoding

# (header spec, claim value, expected header values)
ENCODE_CASES: list[tuple[dict[str, Any], Any, list[bytes]]] = [
    # scalars
    ({}, "alice", [b"alice"]),
    ({}, "", [b""]),
    ({}, 1234, [b"1234"]),
    ({}, -5, [b"-5"]),
    ({}, 1.5, [b"1.5"]),
    ({}, 1e100, [b"1e+100"]),
    ({}, True, [b"true"]),
    ({}, False, [b"false"]),
    ({}, "a b", [b"a b"]),
    ({}, "O'Brien", [b"UTF-8''O%27Brien"]),
    ({"non_ascii": "refuse"}, "O'Brien", [b"O'Brien"]),
    # arrays, csv (default)
    ({}, ["a", "b", "c"], [b"a,b,c"]),
    ({}, ["a"], [b"a"]),
    ({}, [], [b""]),
    ({}, [1, True, "x", 2.5], [b"1,true,x,2.5"]),
    # arrays, json
    ({"encode": "json"}, ["a", "b"], [b'["a","b"]']),
    ({"encode": "json"}, [], [b"[]"]),
    ({"encode": "json"}, ["a,b", {"k": [1]}], [b'["a,b",{"k":[1]}]']),
    ({"encode": "json"}, ["é"], [b'["\\u00e9"]']),
    ({"encode": "json"}, ["a\r\nX-Role: admin"], [b'["a\\r\\nX-Role: admin"]']),
    ({"encode": "json"}, {"id": "admin"}, [b'{"id":"admin"}']),
    ({"encode": "json"}, "plain", [b"plain"]),
    # arrays, repeat
    ({"encode": "repeat"}, ["a", "b"], [b"a", b"b"]),
    ({"encode": "repeat"}, ["a b", "c"], [b"a b", b"c"]),
    ({"encode": "repeat"}, [], []),
    # arrays, first
    ({"encode": "first"}, ["a", "b"], [b"a"]),
    ({"encode": "first"}, [], []),
    ({"encode": "first"}, "solo", [b"solo"]),
    # non-ASCII
    ({}, "élodie✓", [b"UTF-8''%C3%A9lodie%E2%9C%93"]),
    ({"non_ascii": "rfc8187"}, "a b", [b"a b"]),
    ({"non_ascii": "rfc8187"}, " admin", [b"UTF-8''%20admin"]),
    ({"non_ascii": "rfc8187"}, "UTF-8''%61dmin", [b"UTF-8''UTF-8%27%27%2561dmin"]),
    ({"non_ascii": "rfc8187"}, "a!#$&+-.^_`|~z", [b"a!#$&+-.^_`|~z"]),
    ({"non_ascii": "rfc8187"}, ["é", "a"], [b"UTF-8''%C3%A9%2Ca"]),
    ({"non_ascii": "base64url"}, "élodie", [b64("élodie".encode())]),
    ({"non_ascii": "base64url"}, "alice", [b64(b"alice")]),
    ({"non_ascii": "base64url", "encode": "repeat"}, ["é", "a"], [b64("é".encode()), b64(b"a")]),
    ({"non_ascii": "refuse"}, "alice", [b"alice"]),
    # absent or null: no header
    ({}, None, []),
]


@pytest.mark.parametrize(("spec", "value", "expected"), ENCODE_CASES)
def test_encoding(spec: dict[str, Any], value: Any, expected: list[bytes]) -> None:
    result = one({"claim": "v", **spec}, {"v": value})
    assert result == [(b"x-out", v) for v in expected]


def test_missing_claim_sets_no_header() -> None:
    assert one("v", {}) == []


# (header spec, claim value) -> refused with claim_header_invalid
REFUSE_CASES: list[tuple[dict[str, Any], Any]] = [
    ({}, "alice\r\nX-User-Role: admin"),
    ({}, "alice\nX-User-Role: admin"),
    ({}, "alice\rx"),
    ({}, "alice\x00"),
    ({}, "a\tb"),
    ({}, "a\x7fb"),
    ({}, "a\x85b"),  # C1 control (NEL)
    ({}, "é\nx"),
    ({"non_ascii": "base64url"}, "a\r\nb"),
    ({"non_ascii": "rfc8187"}, "a\r\nb"),
    ({}, ["ok", "bad\r\nX: y"]),
    ({"encode": "repeat"}, ["ok", "bad\nX: y"]),
    ({"encode": "first"}, ["bad\nX: y", "ok"]),
    ({}, ["a,b", "c"]),  # csv cannot carry a comma inside an element
    ({}, [["nested"]]),
    ({}, [{"k": "v"}]),
    ({}, [None]),
    ({"encode": "repeat"}, [["nested"]]),
    ({"encode": "first"}, [{"k": "v"}]),
    ({}, {"id": "admin"}),  # objects need encode: json
    ({"encode": "repeat"}, {"id": "admin"}),
    ({}, float("inf")),
    ({}, float("nan")),
    ({"encode": "json"}, [float("nan")]),
    ({"non_ascii": "refuse"}, "élodie"),
    ({"non_ascii": "refuse"}, " admin"),
    ({"non_ascii": "refuse"}, "admin "),
    ({"non_ascii": "refuse"}, ["a", "é"]),
    ({"max_bytes": 10}, "a" * 11),
    ({"max_bytes": 10}, ["aaaaa", "aaaaa"]),
    ({"max_bytes": 10, "encode": "repeat"}, ["aaaaaa", "aaaaaa"]),
    ({"max_bytes": 20}, "é" * 4),  # 4 chars, but 28 bytes encoded
    ({}, "a" * 8000),
]


@pytest.mark.parametrize(("spec", "value"), REFUSE_CASES)
def test_refused_values(spec: dict[str, Any], value: Any) -> None:
    h = headers(claims={"X-Out": {"claim": "v", **spec}})
    with pytest.raises(ClaimInvalid) as caught:
        h.claim_headers({"v": value})
    error = caught.value
    assert error.status == 401
    assert error.reason == "claim_header_invalid"
    assert "X-Out" in error.detail
    # The detail names the header and the claim, never the value.
    for part in ("alice", "admin", "bad", "nested", "é", "aaaa"):
        assert part not in error.detail


def test_max_bytes_boundary_is_inclusive() -> None:
    assert one({"claim": "v", "max_bytes": 5}, {"v": "abcde"}) == [(b"x-out", b"abcde")]


@pytest.mark.parametrize("value", [None, "absent"])
def test_required_missing_is_refused(value: str | None) -> None:
    h = headers(claims={"X-User-Id": {"claim": "sub", "required": True}})
    claims = {} if value == "absent" else {"sub": value}
    with pytest.raises(ClaimInvalid) as caught:
        h.claim_headers(claims)
    assert caught.value.reason == "claim_header_missing"
    assert caught.value.status == 401


def test_required_first_of_empty_array_is_refused() -> None:
    h = headers(claims={"X-Role": {"claim": "roles", "encode": "first", "required": True}})
    with pytest.raises(ClaimInvalid):
        h.claim_headers({"roles": []})


def test_headers_come_in_config_order_with_lower_case_names() -> None:
    h = headers(claims={"X-B": "b", "X-A": "a", "X-Roles": {"claim": "/realm_access/roles"}})
    assert h.claim_headers({"a": "1", "b": "2", "realm_access": {"roles": ["x", "y"]}}) == [
        (b"x-b", b"2"),
        (b"x-a", b"1"),
        (b"x-roles", b"x,y"),
    ]


def test_odd_claim_names() -> None:
    h = headers(
        claims={
            "X-Roles": "https://example.com/roles",
            "X-Realm": "/realm_access/roles",
            "X-Slash": "/a~1b",
        }
    )
    claims = {"https://example.com/roles": ["r"], "realm_access": {"roles": ["k"]}, "a/b": "s"}
    assert h.claim_headers(claims) == [(b"x-roles", b"r"), (b"x-realm", b"k"), (b"x-slash", b"s")]


def test_sub_missing_and_client_copy_is_not_used() -> None:
    client = [(b"x-user-id", b"admin")]
    forwarded = GATEWAY.strip_inbound(client) + GATEWAY.claim_headers({"roles": ["user"]})
    assert all(name != b"x-user-id" for name, _ in forwarded)


def test_payload_header_uses_the_verified_segment_verbatim() -> None:
    segment = b64(b'{"sub":"alice"}')
    out = GATEWAY.claim_headers({"sub": "alice"}, segment)
    assert out[-1] == (b"x-jwt-payload", segment)


def test_payload_header_from_claims() -> None:
    claims = {"sub": "élodie", "roles": ["a"]}
    name, value = GATEWAY.claim_headers(claims)[-1]
    assert name == b"x-jwt-payload"
    assert json.loads(base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))) == claims
    assert value.isascii() and b"=" not in value


# ------------------------------------------------------- list elements a recipient would re-split

# RFC 9110: repeated field lines may be combined with "," (§5.3), list elements are split on
# "," and trimmed of spaces/tabs (§5.6.1). An element that would not read back as itself is
# refused under csv and repeat, in every non_ascii mode.
AMBIGUOUS_ELEMENTS: list[list[Any]] = [
    ["user", " admin"],
    ["user", "admin "],
    [" admin"],
    ["admin\t"],
    ["\tadmin", "user"],
    ["user", "  "],
    ["devs,admin"],
    ["devs", "a,b"],
    [","],
]


@pytest.mark.parametrize("encode", ["csv", "repeat"])
@pytest.mark.parametrize("non_ascii", ["rfc8187", "refuse", "base64url"])
@pytest.mark.parametrize("value", AMBIGUOUS_ELEMENTS)
def test_list_elements_that_a_recipient_would_resplit_or_trim_are_refused(
    encode: str, non_ascii: str, value: list[Any]
) -> None:
    h = headers(claims={"X-Out": {"claim": "v", "encode": encode, "non_ascii": non_ascii}})
    with pytest.raises(ClaimInvalid) as caught:
        h.claim_headers({"v": value})
    assert caught.value.reason == "claim_header_invalid"
    assert "encode: json" in caught.value.detail
    assert "admin" not in caught.value.detail and "devs" not in caught.value.detail


@pytest.mark.parametrize(
    ("encode", "value", "expected"),
    [
        ("csv", ["a b", "c d"], [b"a b,c d"]),  # inner spaces are kept by list parsers
        ("csv", ["user", 1, True], [b"user,1,true"]),
        ("repeat", ["a b", "c"], [b"a b", b"c"]),
        ("repeat", [1.5, False], [b"1.5", b"false"]),
        ("json", ["devs,admin", " admin"], [b'["devs,admin"," admin"]']),
        ("first", ["devs,admin", "x"], [b"devs,admin"]),  # one value, not a list
    ],
)
def test_unambiguous_list_elements_are_sent(encode: str, value: list[Any], expected: list[bytes]) -> None:
    assert one({"claim": "v", "encode": encode}, {"v": value}) == [(b"x-out", v) for v in expected]


def test_a_string_claim_with_a_comma_is_sent_as_written() -> None:
    # Documented choice: a string claim is one value; lists that need commas use encode: json.
    assert one({"claim": "v", "encode": "csv"}, {"v": "Doe, John"}) == [(b"x-out", b"Doe, John")]
    assert one({"claim": "v", "encode": "repeat"}, {"v": "a,b"}) == [(b"x-out", b"a,b")]


def test_json_keeps_what_csv_and_repeat_refuse() -> None:
    value = ["devs,admin", " admin", "user\t"]
    (header,) = one({"claim": "v", "encode": "json"}, {"v": value})
    assert json.loads(header[1]) == value
