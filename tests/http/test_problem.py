"""Error rendering: RFC 6750 challenges and RFC 9457 problem+json bodies."""

from __future__ import annotations

import json

import pytest

from gateway.errors import (
    AudienceMismatch,
    BadSignature,
    CredentialsMalformed,
    GatewayError,
    InternalError,
    KeysUnavailable,
    PathNotCanonical,
    RouteDenied,
    RouteNotFound,
    RuleFailed,
    TokenExpired,
    TokenMissing,
    UpstreamTimeout,
)
from gateway.http.problem import challenge, render_error


def headers_of(error: GatewayError) -> dict[bytes, bytes]:
    return dict(render_error(error, realm="gw", request_id="rid-1").headers)


def test_missing_token_challenge_has_no_error_code() -> None:
    assert challenge(TokenMissing("need a token"), "gw") == 'Bearer realm="gw"'


def test_invalid_token_challenge_names_error_and_description() -> None:
    value = challenge(TokenExpired("the token has expired"), "gw")
    assert value == 'Bearer realm="gw", error="invalid_token", error_description="the token has expired"'


def test_insufficient_scope_names_the_scopes() -> None:
    value = challenge(RuleFailed("no", scopes=("orders:read", "orders:write")), "gw")
    assert value is not None
    assert value.startswith('Bearer realm="gw", error="insufficient_scope"')
    assert value.endswith('scope="orders:read orders:write"')


def test_invalid_request_challenge() -> None:
    value = challenge(CredentialsMalformed("two tokens"), "gw")
    assert value is not None and 'error="invalid_request"' in value


@pytest.mark.parametrize(
    "error",
    [
        PathNotCanonical("bad"),
        RouteNotFound(),
        RouteDenied(),
        KeysUnavailable(),
        UpstreamTimeout(),
        InternalError(),
    ],
)
def test_no_challenge_where_the_token_is_not_the_problem(error: GatewayError) -> None:
    assert challenge(error, "gw") is None
    assert b"www-authenticate" not in headers_of(error)


def test_description_cannot_inject_quotes_or_lines() -> None:
    value = challenge(BadSignature('evil" , error="x\r\nSet-Cookie: a=b'), "gw")
    assert value is not None
    assert "\r" not in value and "\n" not in value
    description = value.split('error_description="', 1)[1]
    assert description.count('"') == 1  # only the closing quote


def test_problem_body_is_rfc9457_with_reason_and_request_id() -> None:
    rendered = render_error(AudienceMismatch("wrong audience"), realm="gw", request_id="rid-1")
    assert rendered.status == 403
    body = json.loads(rendered.body)
    assert body == {
        "type": "about:blank",
        "title": "Forbidden",
        "status": 403,
        "detail": "wrong audience",
        "reason": "audience_mismatch",
        "request_id": "rid-1",
    }
    headers = dict(rendered.headers)
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"content-length"] == str(len(rendered.body)).encode()
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"date"].endswith(b" GMT")


def test_keys_unavailable_has_retry_after() -> None:
    assert headers_of(KeysUnavailable("idp down", retry_after=42))[b"retry-after"] == b"42"
    assert render_error(KeysUnavailable(), realm="gw").status == 503
