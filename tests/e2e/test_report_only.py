"""Auth modes over real HTTP: report-only (``enforce: false``), ``optional``, ``deny``, CORS
preflights and the status of unmatched requests. The access log line is read as the gateway
writes it (the ``jwt_gateway.access`` logger through the JSON formatter)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from gateway.logs import JSONFormatter
from tests.support.servers import EchoUpstream, GatewayServer

SECRET = "a-test-hmac-secret-of-at-least-32-bytes!!"
ISSUER = "https://hs.test"
AUD = "api"


def token(*, key: str = SECRET, lifetime: int = 600, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUD, "sub": "alice", "iat": now - 5, "exp": now + lifetime, **claims}
    return jwt.encode(payload, key, algorithm="HS256")


USER = token(roles=["user"])
ADMIN = token(roles=["admin"])
EXPIRED = token(roles=["admin"], lifetime=-3600)
FORGED = token(roles=["admin"], key="another-secret-of-at-least-32-bytes!!!")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


class AccessLines(logging.Handler):
    """The access log lines, formatted as the gateway prints them, parsed back."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JSONFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))

    def after(self, count: int, timeout: float = 3.0) -> dict[str, Any]:
        """The first line written after ``count`` lines (waits for it)."""
        deadline = time.monotonic() + timeout
        while len(self.lines) <= count:
            assert time.monotonic() < deadline, "no access line"
            time.sleep(0.002)
        return self.lines[count]


@pytest.fixture(scope="module")
def access() -> Iterator[AccessLines]:
    logger = logging.getLogger("jwt_gateway.access")
    handler = AccessLines()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def config(upstream: EchoUpstream, **extra: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "providers": {
            "hs": {"issuer": ISSUER, "secret": SECRET, "algorithms": ["HS256"], "audiences": [AUD]}
        },
        "headers": {"claims": {"X-User-Id": "sub"}, "strip_prefixes": ["X-User-"]},
        "routes": [
            {
                "name": "legacy",
                "match": {"path": "/legacy/**"},
                "enforce": False,
                "require": {"claim": "roles", "contains": "admin"},
            },
            {"name": "docs", "match": {"path": "/docs/**"}, "auth": "optional"},
            {"name": "closed", "match": {"path": "/closed/**"}, "auth": "deny"},
            {"name": "cors", "match": {"path": "/cors/**"}, "cors_preflight": True},
            {"name": "api", "match": {"path": "/api/**"}},
        ],
        **extra,
    }


@pytest.fixture(scope="module")
def gw(upstream: EchoUpstream, access: AccessLines) -> Iterator[GatewayServer]:
    with GatewayServer(config(upstream)) as server:
        yield server


def call(
    gw: GatewayServer,
    upstream: EchoUpstream,
    access: AccessLines,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
) -> tuple[httpx.Response, dict[str, Any] | None, dict[str, Any]]:
    """Send a request: (response, what the upstream received or None, the access line)."""
    before, seen = upstream.count, len(access.lines)
    response = httpx.request(method, gw.url + path, headers=headers or {})
    assert response.status_code < 500
    received = upstream.requests[-1] if upstream.count > before else None
    assert upstream.count <= before + 1
    return response, received, access.after(seen)


def header(received: dict[str, Any], name: bytes) -> list[bytes]:
    return [v for n, v in received["headers"] if n == name]


# ---------------------------------------------------------------------------- report-only


def test_report_only_lets_a_failing_rule_pass_and_logs_the_would_be_denial(
    gw: GatewayServer, upstream: EchoUpstream, access: AccessLines
) -> None:
    response, received, line = call(gw, upstream, access, "GET", "/legacy/x", bearer(USER))
    assert response.status_code == 200
    assert received is not None and received["path"] == "/legacy/x"
    # The identity was verified: the upstream still learns who the caller is.
    assert header(received, b"x-user-id") == [b"alice"]
    assert line["decision"] == "report_only"
    assert line["reason"] == "rule_failed"
    assert line["rule"] == 'claim roles contains "admin"'
    assert line["route"] == "legacy" and line["status"] == 200 and line["upstream_status"] == 200
    assert line["sub"] == "alice" and line["provider"] == "hs"
    assert USER not in json.dumps(line)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "token_missing"),
        (bearer(EXPIRED), "token_expired"),
        (bearer(FORGED), "bad_signature"),
        (bearer("not-a-jwt"), "token_malformed"),
        ({"Authorization": "Bearer a", "X-Other": "x", "Cookie": "x=1"}, "token_malformed"),
    ],
    ids=["missing", "expired", "forged", "garbage", "short"],
)
def test_report_only_lets_a_bad_or_missing_token_pass_without_identity(
    headers: dict[str, str], reason: str, gw: GatewayServer, upstream: EchoUpstream, access: AccessLines
) -> None:
    response, received, line = call(
        gw, upstream, access, "GET", "/legacy/x", {**headers, "X-User-Id": "mallory"}
    )
    assert response.status_code == 200
    assert received is not None
    # No verified identity: no claim header, and the client's copy is stripped as always.
    assert header(received, b"x-user-id") == []
    assert line["decision"] == "report_only" and line["reason"] == reason
    assert line["sub"] is None


def test_report_only_with_a_passing_rule_is_simply_allowed(
    gw: GatewayServer, upstream: EchoUpstream, access: AccessLines
) -> None:
    response, received, line = call(gw, upstream, access, "GET", "/legacy/x", bearer(ADMIN))
    assert response.status_code == 200
    assert received is not None and header(received, b"x-user-id") == [b"alice"]
    assert line["decision"] == "allowed" and line["reason"] == "ok" and line["rule"] is None


def test_enforced_route_denies_what_report_only_would_log(
    gw: GatewayServer, upstream: EchoUpstream, access: AccessLines
) -> None:
    response, received, line = call(gw, upstream, access, "GET", "/api/x", bearer(EXPIRED))
    assert response.status_code == 401 and received is None
    assert line["decision"] == "denied" and line["reason"] == "token_expired"


# ------------------------------------------------------------------------------- optional


def test_optional_valid_token_sets_the_identity(
    gw: GatewayServer, upstream: EchoUpstream, access: AccessLines
) -> None:
    response, received, line = call(gw, upstream, access, "GET", "/docs/x", bearer(USER))
    assert response.status_code == 200
    assert received is not None and header(received, b"x-user-id") == [b"alice"]
    assert line["decision"] == "allowed" and line["sub"] == "alice"


def test_optional_without_token_passes_without_identity(
    gw: GatewayServer, upstream: EchoUpstream, access: AccessLines
) -> None:
    response, received, line = call(gw, upstream, access, "GET", "/docs/x", {"X-User-Id": "mallory"})
    assert response.status_code == 200
    assert received is not None and header(received, b"x-user-id") == []
    assert line["decision"] == "allowed" and line["sub"] is None


@pytest.mark.parametrize("bad", [EXPIRED, FORGED, "not-a-jwt"], ids=["expired", "forged", "garbage"])
def test_optional_invalid_token_is_still_refused(
    bad: str, gw: GatewayServer, upstream: EchoUpstream, access: AccessLines
) -> None:
    response, received, line = call(gw, upstream, access, "GET", "/docs/x", bearer(bad))
    assert response.status_code == 401 and received is None
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert line["decision"] == "denied"


def test_optional_with_two_credentials_is_refused(
    gw: GatewayServer, upstream: EchoUpstream, access: AccessLines
) -> None:
    response, received, _ = call(gw, upstream, access, "GET", f"/docs/x?access_token={USER}", bearer(USER))
    assert response.status_code == 400 and received is None


# ----------------------------------------------------------------------------------- deny


@pytest.mark.parametrize("headers", [{}, bearer(ADMIN)], ids=["anonymous", "admin"])
@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS"])
def test_deny_route_is_closed_to_everyone(
    method: str, headers: dict[str, str], gw: GatewayServer, upstream: EchoUpstream, access: AccessLines
) -> None:
    response, received, line = call(gw, upstream, access, method, "/closed/x", headers)
    assert response.status_code == 403 and received is None
    assert response.json()["reason"] == "route_denied"
    assert line["decision"] == "denied" and line["route"] == "closed"


# --------------------------------------------------------------------------- CORS preflight

PREFLIGHT = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}


def test_cors_preflight_passes_without_a_token(
    gw: GatewayServer, upstream: EchoUpstream, access: AccessLines
) -> None:
    response, received, line = call(
        gw, upstream, access, "OPTIONS", "/cors/x", {**PREFLIGHT, "X-User-Id": "m"}
    )
    assert response.status_code == 200
    assert received is not None and received["method"] == "OPTIONS"
    assert header(received, b"x-user-id") == []
    assert line["decision"] == "allowed"


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        ("OPTIONS", {}),
        ("OPTIONS", {"Origin": "https://app.example.com"}),
        ("OPTIONS", {"Access-Control-Request-Method": "POST"}),
        ("GET", PREFLIGHT),
        ("POST", PREFLIGHT),
    ],
    ids=["plain_options", "origin_only", "acrm_only", "get_with_cors_headers", "post_with_cors_headers"],
)
def test_only_a_real_preflight_skips_the_token(
    method: str, headers: dict[str, str], gw: GatewayServer, upstream: EchoUpstream, access: AccessLines
) -> None:
    response, received, line = call(gw, upstream, access, method, "/cors/x", headers)
    assert response.status_code == 401 and received is None
    assert line["reason"] == "token_missing"


def test_preflight_on_a_route_without_cors_preflight_needs_a_token(
    gw: GatewayServer, upstream: EchoUpstream, access: AccessLines
) -> None:
    response, received, _ = call(gw, upstream, access, "OPTIONS", "/api/x", PREFLIGHT)
    assert response.status_code == 401 and received is None


# ------------------------------------------------------------------------- unmatched status


@pytest.mark.parametrize("status", [401, 403, 404])
def test_unmatched_requests_get_the_configured_status_and_are_never_forwarded(
    status: int, upstream: EchoUpstream, access: AccessLines
) -> None:
    with GatewayServer(config(upstream, unmatched_status=status)) as server:
        for headers in ({}, bearer(ADMIN)):
            response, received, line = call(server, upstream, access, "GET", "/nowhere", headers)
            assert response.status_code == status and received is None
            assert response.json()["reason"] == "route_not_found"
            assert line["decision"] == "denied" and line["route"] is None and line["status"] == status
