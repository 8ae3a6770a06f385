"""Red-team attacks that only show over real HTTP: what the upstream actually receives.

The unit-level attacks live in ``tests/auth/test_redteam_tokens.py``. Here a real gateway (uvicorn)
forwards to the real echo upstream, which reports every header it got, so each test checks what
an attacker can make reach the backend. Where an attack succeeds today the test asserts the secure
outcome and is marked ``xfail(strict=True, reason="VULN: ...")``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from tests.support.servers import EchoUpstream, GatewayServer, raw_request

HS_SECRET = "redteam-e2e-hs-secret-0123456789abcdef"
CK_SECRET = "redteam-e2e-cookie-secret-0123456789ab"
AUD = "api"


def config(upstream: EchoUpstream) -> dict[str, Any]:
    hmac = {"algorithms": ["HS256"], "audiences": [AUD]}
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "providers": {
            "hs": {"issuer": "https://hs.test", "secret": HS_SECRET, **hmac},
            # A second provider whose tokens come in a cookie or a query parameter only.
            "ck": {
                "issuer": "https://ck.test",
                "secret": CK_SECRET,
                "token": {"header": None, "cookie": "session", "query": "tok"},
                **hmac,
            },
        },
        "headers": {
            "claims": {
                "X-User-Id": "sub",
                "X-User-Roles": {"claim": "roles", "encode": "csv"},
                "X-User-Groups": {"claim": "groups", "encode": "repeat"},
            },
            "strip_prefixes": ["X-User-"],
        },
        "routes": [
            {"name": "a", "match": {"path": "/a/**"}, "providers": ["hs"]},
            {"name": "c", "match": {"path": "/c/**"}, "providers": ["ck"]},
            {
                "name": "admin",
                "match": {"path": "/admin/**"},
                "providers": ["hs"],
                "require": {"claim": "roles", "contains": "admin"},
            },
        ],
    }


@pytest.fixture(scope="module")
def gw(upstream: EchoUpstream) -> Iterator[GatewayServer]:
    with GatewayServer(config(upstream)) as server:
        yield server


def mint(iss: str = "https://hs.test", secret: str = HS_SECRET, **extra: Any) -> str:
    now = int(time.time())
    claims = {"iss": iss, "sub": "alice", "aud": AUD, "iat": now, "exp": now + 300, **extra}
    return jwt.encode(claims, secret, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def received(upstream: EchoUpstream, before: int) -> list[dict[str, Any]]:
    return upstream.requests[before:]


def backend_list(values: list[str]) -> list[str]:
    """A list header as a recipient reads it (RFC 9110 §5.3, §5.6.1): lines combined with ", ",
    split on commas, whitespace around elements dropped, empty elements ignored."""
    return [e.strip(" \t") for e in ", ".join(values).split(",") if e.strip(" \t")]


# ------------------------------------------------------------------- credentials of other providers


def test_another_providers_header_credential_never_reaches_the_upstream(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    forged = mint(roles=["admin"], secret="not-the-secret-0123456789abcdef0123")
    before = upstream.count
    cookie = f"session={mint('https://ck.test', CK_SECRET)}"
    r = httpx.get(gw.url + "/c/x", headers={**bearer(forged), "Cookie": cookie})
    assert r.status_code == 200
    (request,) = received(upstream, before)
    assert forged not in str(request["headers"])


@pytest.mark.parametrize("where", ["cookie", "query"])
def test_another_providers_cookie_or_query_credential_never_reaches_the_upstream(
    gw: GatewayServer, upstream: EchoUpstream, where: str
) -> None:
    forged = mint("https://ck.test", "attacker-secret-0123456789abcdef0123", sub="root", roles=["admin"])
    before = upstream.count
    if where == "cookie":
        r = httpx.get(gw.url + "/a/x", headers={**bearer(mint()), "Cookie": f"session={forged}"})
    else:
        r = httpx.get(gw.url + f"/a/x?tok={forged}", headers=bearer(mint()))
    if r.status_code == 400:
        return  # refused as a second credential: secure too
    assert r.status_code == 200
    (request,) = received(upstream, before)
    assert forged not in request["query"] + str(request["headers"])


# ----------------------------------------------------------------------------- claim headers


@pytest.mark.parametrize(
    "sub",
    [
        "alice\r\nX-Injected: 1",
        "alice\nX-Injected: 1",
        "alice\rX-Injected: 1",
        "alice\u0000X-Injected: 1",
        "alice\u0085X-Injected: 1",
        "alice\r\n\r\nGET /admin HTTP/1.1",
    ],
)
def test_control_characters_in_claims_never_reach_the_upstream(
    gw: GatewayServer, upstream: EchoUpstream, sub: str
) -> None:
    before = upstream.count
    r = httpx.get(gw.url + "/a/x", headers=bearer(mint(sub=sub)))
    assert r.status_code == 401
    assert r.json()["reason"] == "claim_header_invalid"
    assert "alice" not in r.text and "Injected" not in r.text
    assert upstream.count == before


def test_unicode_claims_reach_the_upstream_encoded_never_raw(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    r = httpx.get(gw.url + "/a/x", headers=bearer(mint(sub="a\u2028b\u00e9", roles=["r\u00f4le"])))
    assert r.status_code == 200
    headers = r.json()["headers"]
    assert headers["x-user-id"] == ["UTF-8''a%E2%80%A8b%C3%A9"]
    assert headers["x-user-roles"] == ["UTF-8''r%C3%B4le"]


def test_spoofed_identity_headers_are_replaced_by_the_verified_ones(gw: GatewayServer) -> None:
    r = httpx.get(
        gw.url + "/a/x",
        headers=[
            ("Authorization", f"Bearer {mint(roles=['user'])}"),
            ("X-User-Roles", "admin"),
            ("X-User-Groups", "admin"),
            ("X-User-Id", "root"),
        ],
    )
    assert r.status_code == 200
    headers = r.json()["headers"]
    assert headers["x-user-id"] == ["alice"] and headers["x-user-roles"] == ["user"]
    assert "x-user-groups" not in headers


@pytest.mark.xfail(
    strict=True,
    reason="NOT FIXED (by design): a string claim is sent as written; use encode: json for lists "
    '(roles: "user,admin" reaches the upstream as X-User-Roles: user,admin, the header of '
    'roles: ["user", "admin"])',
)
def test_a_scalar_claim_with_a_comma_is_not_read_as_two_roles_by_the_upstream(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    token = mint(roles="user,admin")
    assert httpx.get(gw.url + "/admin/x", headers=bearer(token)).status_code == 403  # not admin here
    r = httpx.get(gw.url + "/a/x", headers=bearer(token))
    if r.status_code == 401:
        return  # refused as an ambiguous claim header: secure
    assert "admin" not in backend_list(r.json()["headers"]["x-user-roles"])


def test_a_repeated_claim_element_with_a_comma_is_not_read_as_two_groups_by_the_upstream(
    gw: GatewayServer,
) -> None:
    r = httpx.get(gw.url + "/a/x", headers=bearer(mint(groups=["devs,admin"])))
    if r.status_code == 401:
        return
    assert backend_list(r.json()["headers"]["x-user-groups"]) == ["devs,admin"]


# ----------------------------------------------------------------------------------- caches


def test_a_cached_grant_never_covers_another_token_or_a_forged_variant(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    admin, user = mint(sub="root", roles=["admin"]), mint(sub="bob", roles=["user"])
    head, payload, signature = admin.split(".")
    variants = [
        f"{head}.{payload}.{signature}=",
        f"{head}.{payload}.{signature[:-1]}",
        f"{user.split('.')[0]}.{user.split('.')[1]}.{signature}",
        f"{head}.{payload}.{user.split('.')[2]}",
    ]
    for _ in range(2):
        before = upstream.count
        assert httpx.get(gw.url + "/admin/x", headers=bearer(admin)).status_code == 200
        assert httpx.get(gw.url + "/admin/x", headers=bearer(user)).status_code == 403
        for variant in variants:
            assert httpx.get(gw.url + "/admin/x", headers=bearer(variant)).status_code in (400, 401)
        (forwarded,) = received(upstream, before)  # the admin request only
        assert (b"x-user-id", b"root") in forwarded["headers"]


def test_two_authorization_headers_are_refused_whatever_the_cache_holds(
    gw: GatewayServer, upstream: EchoUpstream
) -> None:
    admin, user = mint(sub="root", roles=["admin"]), mint(sub="bob", roles=["user"])
    assert httpx.get(gw.url + "/admin/x", headers=bearer(admin)).status_code == 200  # cached now
    before = upstream.count
    for first, second in ((user, admin), (admin, user), ("junk", admin), (admin, "junk")):
        request = (
            f"GET /admin/x HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {first}\r\n"
            f"Authorization: Bearer {second}\r\nConnection: close\r\n\r\n"
        ).encode()
        status, _ = raw_request(gw.port, request)
        assert status == 400
    assert upstream.count == before
