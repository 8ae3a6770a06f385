"""The forward-auth endpoint: nginx ``auth_request`` and Traefik ``ForwardAuth`` ask "may this
request pass?", and the gateway answers with the proxy's own decision. It never forwards.

Where it answers: on ``forward_auth.path`` (default ``/_auth``) of the gateway's port when
``forward_auth.enabled``, or on every path with ``mode: forward_auth``.

**The original request**, read only from a peer in ``forward_auth.trusted_sources`` (any other
caller gets 403 ``forward_auth_untrusted`` and nothing it sent is looked at). Exactly one
flavour per call, each header at most once, else 400 ``forward_auth_invalid``:

- nginx: ``X-Original-Method`` + ``X-Original-URI``; the host is the subrequest's ``Host``
  (``proxy_set_header Host $host``);
- Traefik: ``X-Forwarded-Method`` + ``X-Forwarded-Uri``; the host is ``X-Forwarded-Host``.

A call carrying both ``X-Original-URI`` and ``X-Forwarded-Uri`` is refused: behind nginx a
client can add its own ``X-Forwarded-Uri`` (nginx passes client headers to the subrequest), and
behind Traefik its own ``X-Original-URI``; the gateway refuses to pick one. The URI is the raw
request target: its query is split off at the first ``?`` and its path goes through the same
canonical-path rules as in proxy mode (a non-canonical path: 400). The token, cookies and
``Origin`` are read from the subrequest's own headers, which both proxies copy from the client
(nginx: all of them; Traefik: ``authRequestHeaders``).

**The answer**: 200 with the claim headers and ``X-Request-Id`` (empty body) for an allowed
(or report-only) request, for ``auth_request_set $x $upstream_http_x_user_id`` /
``authResponseHeaders``; otherwise the proxy's refusal: 401/403 with the same
``WWW-Authenticate`` challenge and problem+json body, 400 (path), 404 (no route), 503 +
``Retry-After`` (keys unavailable). Every call is access-logged like a proxied request.
"""

from __future__ import annotations

import ipaddress
import re
import time
from typing import TYPE_CHECKING

from gateway.config.models import GatewayConfig
from gateway.errors import GatewayError, RequestError, RouteDenied
from gateway.http.problem import http_date, render_error
from gateway.pipeline import Decision, RequestView

if TYPE_CHECKING:
    from gateway.asgi import GatewayApp
    from gateway.asgi_types import Receive, Scope, Send

Header = tuple[bytes, bytes]

_METHOD = re.compile(rb"[A-Z][A-Z0-9_-]{0,31}")
# Headers naming the original request; never part of the forwarded request's own headers.
_NGINX = (b"x-original-method", b"x-original-uri")
_TRAEFIK = (b"x-forwarded-method", b"x-forwarded-uri", b"x-forwarded-host")
_CONTROL = frozenset({*_NGINX, *_TRAEFIK, b"host"})


def is_forward_auth_call(config: GatewayConfig, path: str) -> bool:
    """True when a request for ``path`` is a forward-auth call under ``config``."""
    return config.mode == "forward_auth" or (config.forward_auth.enabled and path == config.forward_auth.path)


class TrustedSources:
    """``forward_auth.trusted_sources``, compiled once per config."""

    __slots__ = ("_networks",)

    def __init__(self, cidrs: list[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __contains__(self, peer: str | None) -> bool:
        if not peer:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


# One compiled TrustedSources per config object (configs are frozen; a reload makes a new one).
_compiled: tuple[GatewayConfig, TrustedSources] | None = None


def _trusted(config: GatewayConfig) -> TrustedSources:
    global _compiled
    cached = _compiled
    if cached is not None and cached[0] is config:
        return cached[1]
    trusted = TrustedSources(config.forward_auth.trusted_sources)
    _compiled = (config, trusted)
    return trusted


def _invalid(detail: str) -> RequestError:
    # Not a credentials problem: no Bearer challenge.
    error = RequestError(detail, reason="forward_auth_invalid")
    error.bearer_error = None
    return error


def _one(headers: list[Header], name: bytes) -> bytes | None:
    found: bytes | None = None
    for key, value in headers:
        if key == name:
            if found is not None:
                raise _invalid(f"{name.decode()} is given more than once")
            found = value
    return found


def original_request(headers: list[Header], client: str | None) -> RequestView:
    """The request the proxy asks about, from a trusted forward-auth call's headers.

    Raises :class:`~gateway.errors.RequestError` (400 ``forward_auth_invalid``) when the call
    does not name exactly one original method and URI.
    """
    nginx_uri = _one(headers, b"x-original-uri")
    traefik_uri = _one(headers, b"x-forwarded-uri")
    if nginx_uri is not None and traefik_uri is not None:
        raise _invalid("X-Original-URI and X-Forwarded-Uri are both given")
    if nginx_uri is not None:
        uri, method, host = nginx_uri, _one(headers, b"x-original-method"), _one(headers, b"host")
    elif traefik_uri is not None:
        uri, method = traefik_uri, _one(headers, b"x-forwarded-method")
        host = _one(headers, b"x-forwarded-host")
    else:
        raise _invalid("a forward-auth call names the original URI in X-Original-URI or X-Forwarded-Uri")
    if method is None:
        raise _invalid("the original method is missing (X-Original-Method or X-Forwarded-Method)")
    if not _METHOD.fullmatch(method):
        raise _invalid("the original method is not an HTTP method")
    raw_path, _, query = uri.partition(b"?")
    own = [h for h in headers if h[0] not in _CONTROL]
    if host is not None:
        own.insert(0, (b"host", host))
    return RequestView(method.decode("ascii"), raw_path, query, own, client)


def _original_client(headers: list[Header], peer: str | None) -> str | None:
    # For the access log only: the proxy's X-Forwarded-For names the client it served.
    forwarded = None
    for key, value in headers:
        if key == b"x-forwarded-for":
            forwarded = value
    if forwarded:
        last = forwarded.rsplit(b",", 1)[-1].strip()
        if last:
            return last.decode("latin-1")
    return peer


async def answer_forward_auth(app: GatewayApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer one forward-auth call with ``app``'s pipeline (see the module docstring).

    Called from :meth:`GatewayApp.handle_http`, which has counted the request as started.
    """
    from gateway.asgi import request_id_of

    started = time.perf_counter()
    policy = app.pipeline.policy
    headers: list[Header] = scope["headers"]
    request_id = request_id_of(headers)
    client = scope.get("client")
    peer = client[0] if client else None
    decision: Decision | None = None
    view = RequestView(scope.get("method", "GET"), b"", b"", headers, peer)
    try:
        if peer not in _trusted(policy.config):
            raise RouteDenied("this peer may not make forward-auth calls", reason="forward_auth_untrusted")
        view = original_request(headers, _original_client(headers, peer))
        decision = await app.pipeline.decide(view)
        error = decision.error if not decision.allowed else None
    except GatewayError as exc:
        error = exc
    if error is None:
        assert decision is not None
        out = [
            (b"content-length", b"0"),
            (b"cache-control", b"no-store"),
            (b"date", http_date()),
            *decision.claim_headers,
            (b"x-request-id", request_id),
        ]
        status = 200
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": b""})
    else:
        rendered = render_error(error, realm=policy.realm, request_id=request_id.decode())
        status = rendered.status
        out = [*rendered.headers, (b"x-request-id", request_id)]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": rendered.body})
    # Refused before any decision (untrusted peer, malformed call): the log names why.
    reason = error.reason if decision is None and error is not None else None
    app._access(view, decision, status, started, request_id, None, reason)


__all__ = ["TrustedSources", "answer_forward_auth", "is_forward_auth_call", "original_request"]
