"""One raw HTTP/1.1 exchange with the gateway, and what reached the echo upstream because of it.

For end-to-end tests that need exact request bytes (no client-side normalisation) and want to
assert both the answer and whether anything was forwarded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tests.support.servers import EchoUpstream, GatewayServer, raw_request

__all__ = ["Sent", "send", "send_raw"]


class Sent:
    """One raw exchange: status, the whole response, and what reached the upstream."""

    def __init__(self, status: int, response: bytes, forwarded: list[dict[str, Any]]) -> None:
        self.status = status
        self.response = response
        self.forwarded = forwarded

    @property
    def reason(self) -> str | None:
        try:
            return str(json.loads(self.response.partition(b"\r\n\r\n")[2])["reason"])
        except (ValueError, KeyError):
            return None

    def header(self, name: str) -> list[str]:
        """Values of ``name`` the upstream received (exactly one forwarded request)."""
        (request,) = self.forwarded
        return [v.decode("latin-1") for n, v in request["headers"] if n == name.lower().encode()]

    def response_header(self, name: str) -> list[bytes]:
        head = self.response.partition(b"\r\n\r\n")[0]
        out = []
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                out.append(value.strip())
        return out


def send_raw(gw: GatewayServer, upstream: EchoUpstream, request: bytes, *, timeout: float = 5.0) -> Sent:
    before = upstream.count
    # The upstream records a request before answering it, and the gateway answers only after the
    # upstream did: once the answer is here, a forwarded request has been recorded.
    status, response = raw_request(gw.port, request, timeout=timeout)
    return Sent(status, response, upstream.requests[before:])


def send(
    gw: GatewayServer,
    upstream: EchoUpstream,
    target: str | bytes,
    headers: Sequence[tuple[str, str]] = (),
    *,
    method: str = "GET",
    body: bytes = b"",
    host: str | None = "gw.test",
) -> Sent:
    raw_target = target if isinstance(target, bytes) else target.encode("latin-1")
    lines = ([f"Host: {host}"] if host is not None else []) + [f"{n}: {v}" for n, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    head = method.encode() + b" " + raw_target + b" HTTP/1.1\r\n" + "\r\n".join(lines).encode("latin-1")
    return send_raw(gw, upstream, head + b"\r\n\r\n" + body)
