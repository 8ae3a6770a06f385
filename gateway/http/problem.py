"""Errors -> HTTP responses: RFC 6750 challenges and RFC 9457 problem+json bodies.

Every denial of every deployment mode (proxy, ASGI and WSGI middleware, forward-auth) is
rendered here, so a client sees the same status, challenge and body whichever way the gateway
runs.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from email.utils import formatdate

from gateway.errors import GatewayError, KeysUnavailable

PROBLEM_JSON = b"application/problem+json"

# RFC 6750 §3: error_description and scope use %x20-21 / %x23-5B / %x5D-7E (no '"' or '\').
_UNSAFE_PARAM = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _param(value: str) -> str:
    return _UNSAFE_PARAM.sub("?", value)


_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The current IMF-fixdate, cached per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A rendered error: status, headers (lower-cased bytes names) and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def challenge(error: GatewayError, realm: str) -> str | None:
    """The ``WWW-Authenticate`` value for ``error``, or None when no challenge applies.

    401 always carries one (RFC 7235 §3.1); 403 and 400 carry one when they concern the
    bearer token (``insufficient_scope``, ``invalid_request``); a missing token gets a challenge
    without an ``error`` attribute (RFC 6750 §3.1).
    """
    if error.status != 401 and error.bearer_error is None:
        return None
    parts = [f'Bearer realm="{_param(realm)}"']
    if error.bearer_error is not None:
        parts.append(f'error="{error.bearer_error}"')
        parts.append(f'error_description="{_param(error.detail)}"')
        scopes = getattr(error, "scopes", ())
        if scopes:
            parts.append(f'scope="{_param(" ".join(scopes))}"')
    return ", ".join(parts)


def render_error(error: GatewayError, *, realm: str, request_id: str | None = None) -> ErrorResponse:
    """Render ``error`` as an RFC 9457 problem+json response with its RFC 6750 challenge."""
    problem: dict[str, object] = {
        "type": "about:blank",
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "reason": error.reason,
    }
    if request_id is not None:
        problem["request_id"] = request_id
    body = json.dumps(problem, separators=(",", ":"), ensure_ascii=True).encode()
    headers = [
        (b"content-type", PROBLEM_JSON),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"date", http_date()),
    ]
    value = challenge(error, realm)
    if value is not None:
        headers.append((b"www-authenticate", value.encode("ascii")))
    if isinstance(error, KeysUnavailable):
        headers.append((b"retry-after", str(max(1, int(error.retry_after))).encode()))
    return ErrorResponse(error.status, headers, body)
