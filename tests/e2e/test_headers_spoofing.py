"""Identity headers over real HTTP: client copies never reach the upstream, claim values never
inject a header, and each encoding arrives as configured (security-catalogue 2.16, 6.1, 6.2).

Requests are sent byte for byte (exact header-name case, duplicates, underscores); what the
upstream received is read from :class:`EchoUpstream`'s record of the raw ASGI headers.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jwt
import pytest

from tests.support.servers import EchoUpstream, GatewayServer, raw_request

SECRET = "a-test-hmac-secret-of-at-least-32-bytes!!"
ISSUER = "https://hs.test"
AUD = "api"

CLAIM_HEADERS: dict[str, Any] = {
    "X-User-Id": "sub",
    "X-User-Roles": {"claim": "roles", "encode": "csv"},
    "X-User-Groups": {"claim": "groups", "encode": "repeat"},
    "X-User-Team": {"claim": "teams", "encode": "first"},
    "X-User-Meta": {"claim": "meta", "encode": "json"},
    "X-User-Name": {"claim": "name"},
    "X-User-Email": {"claim": "email", "non_ascii": "refuse"},
    "X-User-Nick": {"claim": "nick", "non_ascii": "base64url"},
    "X-User-Bio": {"claim": "bio", "max_bytes": 64},
    # Not under the stripped prefix: removed by name.
    "X-Tenant": {"claim": "/org/tenant"},
}
ROUTES: list[dict[str, Any]] = [
    {"name": "public", "match": {"path": "/public/**"}, "auth": "public"},
    {"name": "optional", "match": {"path": "/optional/**"}, "auth": "optional"},
    {"name": "api", "match": {"path": "/api/**"}},
    {
        "name": "legacy",
        "match": {"path": "/legacy/**"},
        "enforce": False,
        "require": {"claim": "roles", "contains": "legacy"},
    },
]


def config(upstream: EchoUpstream, **headers: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "providers": {
            "hs": {"issuer": ISSUER, "secret": SECRET, "algorithms": ["HS256"], "audiences": [AUD]}
        },
        "headers": {"claims": CLAIM_HEADERS, "strip_prefixes": ["X-User-"], **headers},
        "routes": ROUTES,
    }


def token(**claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"iss": ISSUER, "aud": AUD, "sub": "alice", "iat": now, "exp": now + 600}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, SECRET, algorithm="HS256")


ALICE = token(roles=["user"])


@pytest.fixture(scope="module")
def gw(upstream: EchoUpstream) -> Iterator[GatewayServer]:
    with GatewayServer(config(upstream, payload_header="X-JWT-Payload")) as server:
        yield server


@pytest.fixture(scope="module")
def gw_forwarding(upstream: EchoUpstream) -> Iterator[GatewayServer]:
    """forward_authorization on, underscore headers kept unless they spell an identity header."""
    with GatewayServer(config(upstream, forward_authorization=True, drop_underscore_headers=False)) as server:
        yield server


class Forwarded:
    """What one request did: status, raw response, and the headers the upstream received."""

    def __init__(self, status: int, response: bytes, headers: list[tuple[bytes, bytes]] | None) -> None:
        self.status = status
        self.response = response
        self.raw_headers = headers

    @property
    def reached(self) -> bool:
        return self.raw_headers is not None

    def values(self, name: str) -> list[str]:
        assert self.raw_headers is not None
        return [v.decode("latin-1") for n, v in self.raw_headers if n == name.lower().encode()]

    def names(self) -> set[str]:
        assert self.raw_headers is not None
        return {n.decode("latin-1") for n, _ in self.raw_headers}

    def all_values(self) -> list[str]:
        assert self.raw_headers is not None
        return [v.decode("latin-1") for _, v in self.raw_headers]


def send(
    gw: GatewayServer,
    upstream: EchoUpstream,
    path: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    bearer: str | None = None,
    method: str = "GET",
) -> Forwarded:
    lines = [f"{method} {path} HTTP/1.1", "Host: gw.test"]
    if bearer is not None:
        lines.append(f"Authorization: Bearer {bearer}")
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("Connection: close")
    before = upstream.count
    status, response = raw_request(gw.port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    assert 0 < status < 500, response
    # Never a second response or a header injected into ours.
    assert response.count(b"HTTP/1.1 ") == 1
    assert upstream.count <= before + 1
    return Forwarded(status, response, upstream.requests[-1]["headers"] if upstream.count > before else None)


# ------------------------------------------------------------------------- spoofed headers

SPOOFS: list[tuple[str, list[tuple[str, str]]]] = [
    ("exact", [("X-User-Id", "mallory")]),
    ("lower", [("x-user-id", "mallory")]),
    ("upper", [("X-USER-ID", "mallory")]),
    ("mixed", [("x-UsEr-iD", "mallory")]),
    ("underscores", [("X_User_Id", "mallory")]),
    ("one_underscore", [("X-User_Id", "mallory")]),
    ("lower_underscores", [("x_user_id", "mallory")]),
    ("duplicates", [("X-User-Id", "mallory"), ("X-User-Id", "mallory2"), ("x-user-id", "mallory3")]),
    ("roles", [("X-User-Roles", "admin,mallory")]),
    ("prefix_unknown_name", [("X-User-Admin", "mallory"), ("x-user-anything", "mallory")]),
    ("named_outside_prefix", [("X-Tenant", "mallory"), ("x-tenant", "mallory")]),
    ("named_outside_prefix_underscore", [("X_Tenant", "mallory")]),
    ("payload_header", [("X-JWT-Payload", "bWFsbG9yeQ-mallory")]),
    ("original_url", [("X-Original-URL", "/admin/mallory"), ("X-Rewrite-URL", "/admin/mallory")]),
    ("method_override", [("X-HTTP-Method-Override", "DELETE-mallory")]),
    ("connection_nominated", [("Connection", "X-User-Id, X-Tenant"), ("X-User-Id", "mallory")]),
    ("connection_nominated_alone", [("Connection", "x-user-id")]),
    ("tab_in_value", [("X-User-Id", "mallory\tadmin")]),
]

#: (name, path, bearer, identity expected upstream)
SCENARIOS: list[tuple[str, str, str | None, bool]] = [
    ("public_anonymous", "/public/x", None, False),
    ("public_with_token", "/public/x", ALICE, False),  # public: the token is not looked at
    ("optional_anonymous", "/optional/x", None, False),
    ("optional_with_token", "/optional/x", ALICE, True),
    ("required", "/api/x", ALICE, True),
    ("report_only_rule_fails", "/legacy/x", ALICE, True),
    ("report_only_anonymous", "/legacy/x", None, False),
]


@pytest.mark.parametrize(("variant", "spoofed"), SPOOFS, ids=[s[0] for s in SPOOFS])
def test_client_identity_headers_never_reach_the_upstream(
    variant: str, spoofed: list[tuple[str, str]], gw: GatewayServer, upstream: EchoUpstream
) -> None:
    for scenario, path, bearer, identity in SCENARIOS:
        got = send(gw, upstream, path, spoofed, bearer=bearer)
        assert got.status == 200 and got.reached, scenario
        assert not any("mallory" in value for value in got.all_values()), (scenario, got.raw_headers)
        names = got.names()
        assert not names & {"x-user-admin", "x-user-anything", "x-original-url", "x-rewrite-url"}
        assert "x-http-method-override" not in names
        assert not any("_" in name for name in names), scenario
        assert "authorization" not in names  # forward_authorization is off
        if identity:
            assert got.values("X-User-Id") == ["alice"], scenario
            assert got.values("X-User-Roles") == ["user"], scenario
            payload = got.values("X-JWT-Payload")
            assert len(payload) == 1 and json.loads(_b64(payload[0]))["sub"] == "alice"
        else:
            assert not names & {"x-user-id", "x-user-roles", "x-jwt-payload", "x-tenant"}, scenario


def test_underscore_headers_can_be_kept_but_never_spell_an_identity_header(
    gw_forwarding: GatewayServer, upstream: EchoUpstream
) -> None:
    spoofed = [("X_User_Id", "mallory"), ("X_Tenant", "mallory"), ("X_Request_Source", "kept")]
    got = send(gw_forwarding, upstream, "/api/x", spoofed, bearer=ALICE)
    assert got.status == 200
    assert got.values("X-User-Id") == ["alice"]
    assert not any("mallory" in v for v in got.all_values())
    assert got.values("x_request_source") == ["kept"]


@pytest.mark.parametrize(
    "head",
    [
        b"X-Note: hi\r\n X-User-Id: mallory\r\n",  # obs-fold continuation line
        b"X-Note: hi\r\n\tX-User-Id: mallory\r\n",
        b"X-User-Id : mallory\r\n",  # space before the colon (RFC 9112 5.1)
        b"X-User-Id\t: mallory\r\n",
        b"X-User-Id: mall\rory\r\n",
        b"X-User-Id: mall\x00ory\r\n",
        b"X User Id: mallory\r\n",
        b": mallory\r\n",
    ],
    ids=[
        "obs_fold",
        "obs_fold_tab",
        "space_before_colon",
        "tab_before_colon",
        "bare_cr",
        "nul",
        "space_in_name",
        "empty_name",
    ],
)
@pytest.mark.parametrize("path", ["/public/x", "/api/x"])
def test_malformed_header_lines_are_refused_by_the_server(
    head: bytes, path: str, gw: GatewayServer, upstream: EchoUpstream
) -> None:
    before = upstream.count
    request = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: gw.test\r\n"
    request += b"Authorization: Bearer " + ALICE.encode() + b"\r\n" + head + b"Connection: close\r\n\r\n"
    status, response = raw_request(gw.port, request)
    assert status == 400
    assert b"malformed_request" in response
    assert upstream.count == before


# ------------------------------------------------------------------ claim values -> headers


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


#: (id, extra claims, expected status, expected upstream headers: name -> values; [] absent)
#: (id, extra claims, expected status, expected upstream headers (name -> values; [] absent) or,
#: for a refusal, the expected reason)
CLAIM_VALUES: list[tuple[str, dict[str, Any], int, dict[str, list[str]] | str]] = [
    ("sub_crlf", {"sub": "alice\r\nX-User-Roles: admin"}, 401, "claim_header_invalid"),
    ("sub_lf", {"sub": "alice\nX-User-Roles: admin"}, 401, "claim_header_invalid"),
    ("sub_cr", {"sub": "alice\rX-User-Roles: admin"}, 401, "claim_header_invalid"),
    ("sub_nul", {"sub": "alice\x00admin"}, 401, "claim_header_invalid"),
    ("sub_del", {"sub": "alice\x7f"}, 401, "claim_header_invalid"),
    ("sub_c1_nel", {"sub": "alice\u0085X-User-Roles: admin"}, 401, "claim_header_invalid"),
    ("sub_line_separator", {"sub": "alice\u2028X"}, 200, {"X-User-Id": ["UTF-8''alice%E2%80%A8X"]}),
    ("role_crlf", {"roles": ["user", "admin\r\nX-Evil: 1"]}, 401, "claim_header_invalid"),
    ("role_with_comma", {"roles": ["a,b"]}, 401, "claim_header_invalid"),
    # sub must be a string (RFC 7519 StringOrURI): refused by verification, never a 5xx.
    ("sub_integer", {"sub": 1234}, 401, "claim_invalid"),
    ("sub_object", {"sub": {"id": "admin"}}, 401, "claim_invalid"),
    ("sub_null", {"sub": None}, 200, {"X-User-Id": []}),
    ("role_integer", {"roles": 1234}, 200, {"X-User-Roles": ["1234"]}),
    ("role_float", {"roles": 1.5}, 200, {"X-User-Roles": ["1.5"]}),
    ("role_boolean", {"roles": True}, 200, {"X-User-Roles": ["true"]}),
    ("role_object", {"roles": {"id": "admin"}}, 401, "claim_header_invalid"),
    ("role_nested_array", {"roles": [["admin"]]}, 401, "claim_header_invalid"),
    ("roles_mixed_scalars", {"roles": ["a", 1, False]}, 200, {"X-User-Roles": ["a,1,false"]}),
    ("sub_at_cap", {"sub": "a" * 4096}, 200, {"X-User-Id": ["a" * 4096]}),
    ("name_over_cap", {"name": "a" * 4097}, 401, "claim_header_invalid"),
    ("token_too_large", {"sub": "a" * 8000}, 401, "token_too_large"),
    ("name_non_ascii_rfc8187", {"name": "élodie✓"}, 200, {"X-User-Name": ["UTF-8''%C3%A9lodie%E2%9C%93"]}),
    ("name_quote_is_encoded", {"name": "O'Brien"}, 200, {"X-User-Name": ["UTF-8''O%27Brien"]}),
    ("name_leading_space", {"name": " bob"}, 200, {"X-User-Name": ["UTF-8''%20bob"]}),
    ("email_ascii", {"email": "a@example.com"}, 200, {"X-User-Email": ["a@example.com"]}),
    ("email_non_ascii_refused", {"email": "é@example.com"}, 401, "claim_header_invalid"),
    ("nick_base64url", {"nick": "élo"}, 200, {"X-User-Nick": [b64url("élo")]}),
    ("nick_ascii_also_base64url", {"nick": "bob"}, 200, {"X-User-Nick": ["Ym9i"]}),
    ("bio_at_cap", {"bio": "b" * 64}, 200, {"X-User-Bio": ["b" * 64]}),
    ("bio_over_cap", {"bio": "b" * 65}, 401, "claim_header_invalid"),
    ("roles_csv", {"roles": ["user", "admin"]}, 200, {"X-User-Roles": ["user,admin"]}),
    ("roles_scalar", {"roles": "user"}, 200, {"X-User-Roles": ["user"]}),
    ("roles_empty", {"roles": []}, 200, {"X-User-Roles": [""]}),
    ("groups_repeat", {"groups": ["ops", "dev"]}, 200, {"X-User-Groups": ["ops", "dev"]}),
    ("groups_repeat_empty", {"groups": []}, 200, {"X-User-Groups": []}),
    ("groups_repeat_crlf", {"groups": ["ops", "x\r\ny"]}, 401, "claim_header_invalid"),
    ("team_first", {"teams": ["red", "blue"]}, 200, {"X-User-Team": ["red"]}),
    ("team_first_empty", {"teams": []}, 200, {"X-User-Team": []}),
    ("meta_json", {"meta": {"a": [1, "é"]}}, 200, {"X-User-Meta": ['{"a":[1,"\\u00e9"]}']}),
    ("meta_json_crlf_escaped", {"meta": {"x": "a\r\nb"}}, 200, {"X-User-Meta": ['{"x":"a\\r\\nb"}']}),
    ("tenant_nested", {"org": {"tenant": "acme"}}, 200, {"X-Tenant": ["acme"]}),
    ("tenant_missing", {"org": {}}, 200, {"X-Tenant": []}),
]


@pytest.mark.parametrize(
    ("claims", "status", "expected"), [c[1:] for c in CLAIM_VALUES], ids=[c[0] for c in CLAIM_VALUES]
)
def test_claim_values_become_safe_headers(
    claims: dict[str, Any],
    status: int,
    expected: dict[str, list[str]] | str,
    gw: GatewayServer,
    upstream: EchoUpstream,
) -> None:
    bearer = token(**claims)
    # A client copy of every configured header comes along: it must never be used instead.
    spoofed = [(name, "mallory") for name in CLAIM_HEADERS]
    got = send(gw, upstream, "/api/x", spoofed, bearer=bearer)
    assert got.status == status, got.response
    if isinstance(expected, str):
        assert not got.reached
        body = json.loads(got.response.partition(b"\r\n\r\n")[2])
        assert body["reason"] == expected
        assert b"mallory" not in got.response and b"X-Evil" not in got.response
        return
    assert not any("mallory" in v for v in got.all_values())
    for name, values in expected.items():
        assert got.values(name) == values, name
    for value in got.all_values():
        assert value.isascii() and value.isprintable(), value


def test_token_without_sub_never_falls_back_to_the_client_copy(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    got = send(gw, upstream, "/api/x", [("X-User-Id", "admin")], bearer=token(sub=None))
    assert got.status == 200
    assert got.values("X-User-Id") == []


def test_report_only_route_never_forwards_an_unencodable_claim(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    # Report-only passes the request, but a value that cannot be a header is never sent.
    got = send(gw, upstream, "/legacy/x", [("X-User-Id", "mallory")], bearer=token(sub="alice\r\nX-Evil: 1"))
    assert got.status == 200
    assert got.values("X-User-Id") == [] and got.values("X-Evil") == []
    assert not any("mallory" in v for v in got.all_values())


# ---------------------------------------------------------------- authorization and payload


@pytest.mark.parametrize("path", ["/api/x", "/optional/x", "/public/x", "/legacy/x"])
def test_authorization_is_stripped_by_default(path: str, gw: GatewayServer, upstream: EchoUpstream) -> None:
    got = send(gw, upstream, path, bearer=ALICE)
    assert got.status == 200
    assert got.values("Authorization") == []
    assert ALICE not in "".join(got.all_values())


@pytest.mark.parametrize("path", ["/api/x", "/optional/x", "/public/x"])
def test_authorization_is_forwarded_when_configured(
    path: str, gw_forwarding: GatewayServer, upstream: EchoUpstream
) -> None:
    got = send(gw_forwarding, upstream, path, bearer=ALICE)
    assert got.status == 200
    assert got.values("Authorization") == [f"Bearer {ALICE}"]


def test_forwarded_authorization_is_still_only_one_credential(
    gw_forwarding: GatewayServer, upstream: EchoUpstream
) -> None:
    got = send(gw_forwarding, upstream, "/api/x", [("Authorization", "Bearer forged")], bearer=ALICE)
    assert got.status == 400 and not got.reached


def test_payload_header_carries_the_verified_payload(gw: GatewayServer, upstream: EchoUpstream) -> None:
    bearer = token(roles=["user"], org={"tenant": "acme"}, name="élodie")
    got = send(gw, upstream, "/api/x", [("X-JWT-Payload", "forged")], bearer=bearer)
    assert got.status == 200
    [payload] = got.values("X-JWT-Payload")
    assert "=" not in payload
    assert json.loads(_b64(payload)) == jwt.decode(bearer, SECRET, algorithms=["HS256"], audience=AUD)


def test_no_payload_header_without_a_verified_token(gw: GatewayServer, upstream: EchoUpstream) -> None:
    for path in ("/public/x", "/optional/x"):
        got = send(gw, upstream, path, [("X-JWT-Payload", "forged")])
        assert got.status == 200
        assert got.values("X-JWT-Payload") == []


def test_connection_header_cannot_remove_the_gateway_headers(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    got = send(
        gw,
        upstream,
        "/api/x",
        [("Connection", "keep-alive, X-User-Id, X-JWT-Payload, X-Tenant")],
        bearer=token(org={"tenant": "acme"}),
    )
    assert got.status == 200
    assert got.values("X-User-Id") == ["alice"]
    assert got.values("X-Tenant") == ["acme"]
    assert len(got.values("X-JWT-Payload")) == 1
    assert got.values("Connection") == []
