"""The gateway as an ASGI application (proxy mode).

A raw ASGI app, no framework router on the hot path: each HTTP request is turned into a
:class:`~gateway.pipeline.RequestView`, decided by the pipeline, then either answered with an
RFC 6750 / RFC 9457 error or forwarded, streaming, to its upstream. WebSocket upgrades are
decided by the same pipeline, then relayed (:mod:`gateway.proxy.websocket`).

Per-request settings (body limit, concurrency limit, trusted proxies, header rules) are read
from the policy the request is decided under, so a reload changes them for the next request.
The upstream pool's limits and TLS context are fixed for the life of the process.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable
from typing import Any

from gateway.asgi_types import Receive, Scope, Send
from gateway.auth.extract import remove_cookie_credentials
from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidToken,
    LimitExceeded,
    OverCapacity,
    RequestTimeout,
    RouteDenied,
    UpstreamError,
)
from gateway.forward_auth import answer_forward_auth
from gateway.http.problem import render_error
from gateway.observe import Observer, RequestRecord
from gateway.pipeline import Decision, Pipeline, RequestView
from gateway.policy import Policy
from gateway.proxy.forwarder import Forwarder, ForwardResult, HeaderPlan
from gateway.proxy.headers import strip_hop_by_hop_response
from gateway.proxy.pool import PoolLimits, UpstreamPool
from gateway.proxy.websocket import (
    TOKEN_MARKER,
    check_handshake,
    relay,
    split_subprotocols,
    upstream_handshake_headers,
)

log = logging.getLogger("jwt_gateway")

_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
_REQUEST_ID = b"x-request-id"
_HOST = b"host"
_START = "http.response.start"
_BODY = "http.response.body"
_CLOSE = (b"connection", b"close")
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: Largest body of an upstream's refusal of a WebSocket handshake passed on to the client.
_MAX_HANDSHAKE_BODY = 64 * 1024


#: The order _access passes RequestRecord's fields in.
_RECORD_FIELDS = (
    "request_id", "method", "path", "route", "status", "decision", "reason", "provider", "sub",
    "client", "upstream_status", "duration_ms", "verify_ms", "upstream_ms", "rule",
)  # fmt: skip
if tuple(f.name for f in dataclasses.fields(RequestRecord)) != _RECORD_FIELDS:  # pragma: no cover
    raise ImportError("RequestRecord's fields changed: update GatewayApp._access")


class ResponseAborted(Exception):
    """Raised after a response has started and could not be completed: the ASGI server then
    closes the client connection, so a truncated body is never mistaken for a complete one."""

    gateway_abort = True


#: New request ids: a random per-process prefix and a counter (unique, no syscall per request).
_ID_PREFIX = os.urandom(8).hex().encode()
_id_counter = itertools.count(1)


def request_id_of(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's X-Request-Id if it is short and made of safe characters, else a new one
    (24 hex digits)."""
    for name, value in headers:
        if name == _REQUEST_ID:
            if _SAFE_REQUEST_ID.fullmatch(value):
                return value
            break
    return b"%s%08x" % (_ID_PREFIX, next(_id_counter) & 0xFFFFFFFF)


async def _ignored() -> None:
    """Any other scope type: nothing to do."""


def _overloaded(limit: int) -> OverCapacity:
    return OverCapacity(f"more than {limit} requests are being handled")


class _Settings:
    """What the request path reads from one policy, computed once per policy (not per request)."""

    __slots__ = (
        "forward_auth_all",
        "forward_auth_path",
        "body_timeout",
        "max_body_bytes",
        "max_concurrency",
        "plan",
        "policy",
        "retry",
        "subject_claim",
        "trusted",
        "ws_providers",
        "ws_token_header",
    )

    def __init__(self, policy: Policy) -> None:
        config = policy.config
        proxy = config.proxy
        self.policy = policy
        self.max_body_bytes = proxy.max_body_bytes
        self.body_timeout = proxy.body_timeout
        self.max_concurrency = proxy.max_concurrency
        self.retry = proxy.retry_on_connect_failure
        self.trusted = policy.trusted_proxies
        self.subject_claim = config.logging.subject_claim
        self.plan = HeaderPlan(policy.headers.inbound.drops)
        # is_forward_auth_call, as two fields: every request is a call, or those for one path.
        self.forward_auth_all = config.mode == "forward_auth"
        self.forward_auth_path = config.forward_auth.path if config.forward_auth.enabled else None
        # Providers accepting a token in Sec-WebSocket-Protocol, and the header the token is
        # presented to the pipeline in (the first such provider's token header).
        opted = [(name, p.token) for name, p in config.providers.items() if p.token.websocket_protocol]
        self.ws_providers = frozenset(name for name, _ in opted)
        header = next((t for _, t in opted if t.header is not None), None)
        self.ws_token_header: tuple[bytes, bytes] | None = None
        if header is not None and header.header is not None:
            scheme = header.scheme.encode("ascii")
            self.ws_token_header = (header.header.lower().encode("ascii"), scheme + b" " if scheme else b"")


class GatewayApp:
    """ASGI app: decide, then deny or forward. Owns the pipeline, the pool and the key sources."""

    def __init__(self, policy: Policy, *, observer: Observer | None = None) -> None:
        self.pipeline = Pipeline(policy)
        self.observer = observer or Observer()
        proxy = policy.config.proxy
        # Fixed for the life of the process (a reload does not resize or re-key the pool).
        self.pool = UpstreamPool(
            PoolLimits(
                max_connections=proxy.max_connections,
                max_idle=proxy.max_idle_connections,
                idle_timeout=proxy.idle_timeout,
                connect_timeout=proxy.connect_timeout,
                read_timeout=proxy.read_timeout,
                write_timeout=proxy.write_timeout,
            ),
            ssl_context=policy.upstream_ssl,
        )
        self.forwarder = Forwarder(self.pool)
        self.started = False
        #: Requests (and WebSocket sessions) being handled now.
        self.active = 0
        self._settings = _Settings(policy)

    @property
    def policy(self) -> Policy:
        """The policy new requests are decided under."""
        return self.pipeline.policy

    def _settings_for(self, policy: Policy) -> _Settings:
        settings = self._settings
        if settings.policy is not policy:
            settings = self._settings = _Settings(policy)
        return settings

    async def startup(self) -> None:
        """Start background work (key fetching). Never blocks on an unreachable IdP.

        Then freezes what start-up allocated (config, compiled policy, modules) out of the
        garbage collector's reach: full collections no longer walk it on the request path.
        """
        await self.policy.start()
        self.started = True
        gc.collect()
        gc.freeze()

    async def install(self, policy: Policy) -> None:
        """Make ``policy`` live: start its new key sources, swap it in, retire unused ones.

        Requests already being decided keep the policy they read when they started.
        """
        await policy.start()
        self.pipeline.swap(policy)
        for source in policy.keys.retired:
            await source.aclose()

    async def shutdown(self) -> None:
        """Stop background work and close upstream connections."""
        await self.policy.aclose()
        await self.pool.aclose()

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: it hands the server the coroutine that serves the scope, so
        # an HTTP request runs in one coroutine (handle_http), not two.
        kind = scope["type"]
        if kind == "http":
            return self.handle_http(scope, receive, send)
        if kind == "lifespan":
            return self._lifespan(receive, send)
        if kind == "websocket":
            return self._websocket_session(scope, receive, send)
        return _ignored()

    async def _websocket_session(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.handle_websocket(scope, receive, send)
        finally:
            self.observer.request_ended()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Decide one HTTP request, then deny it or forward it (counted in flight meanwhile)."""
        started = time.perf_counter()
        observer = self.observer
        observer.request_started()
        try:
            policy = self.pipeline.policy
            settings = self._settings
            if settings.policy is not policy:
                settings = self._settings_for(policy)
            if settings.forward_auth_all or scope["path"] == settings.forward_auth_path:
                await answer_forward_auth(self, scope, receive, send)
                return
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            request_id = request_id_of(headers)
            client = scope.get("client")
            view = RequestView(
                scope["method"],
                scope.get("raw_path") or scope["path"].encode("utf-8"),
                scope.get("query_string", b""),
                headers,
                client[0] if client else None,
            )
            if self.active >= settings.max_concurrency:
                error = _overloaded(settings.max_concurrency)
                status = await self._send_error(send, error, policy, request_id)
                self._access(view, None, status, started, request_id, None, error.reason)
                return
            self.active += 1
            result = ForwardResult()
            decision: Decision | None = None
            try:
                decision = await self.pipeline.decide(view)
                if decision.outcome == "denied":
                    assert decision.error is not None
                    status = await self._send_error(send, decision.error, policy, request_id)
                else:
                    route = decision.route
                    assert route is not None and decision.path is not None
                    origin = route.origin
                    target = route.upstream_target(decision.path, view.query)
                    if route.credential_cookies:
                        headers = remove_cookie_credentials(headers, route.credential_cookies)
                    client_host = view.header(_HOST)
                    forwarding = settings.trusted.forwarding(
                        view.client, scope["scheme"], client_host, headers
                    )
                    method = view.method
                    await self.forwarder.forward(
                        scope,
                        receive,
                        send,
                        result,
                        origin,
                        method,
                        target,
                        settings.plan.build(
                            headers,
                            trusted_peer=forwarding.trusted_peer,
                            host=client_host if route.preserve_host and client_host else origin.host_header,
                            forwarding=forwarding.headers,
                            claim_headers=decision.claim_headers,
                            request_id=request_id,
                        ),
                        retry_connect=settings.retry and method in _IDEMPOTENT,
                        max_body_bytes=settings.max_body_bytes,
                        body_timeout=settings.body_timeout,
                        refuse_body_credentials=route.auth != "public",
                    )
                    status = 499 if result.aborted else result.upstream_status or 502
            except GatewayError as exc:
                if isinstance(exc, UpstreamError):
                    log.warning(
                        "upstream failed: %s (route=%s, request_id=%s)",
                        exc.reason,
                        decision.route.name if decision is not None and decision.route is not None else None,
                        request_id.decode(),
                    )
                if result.response_started:
                    # Only the connection can say it: the client must never take the truncated
                    # body for a complete one.
                    self._access(
                        view,
                        decision,
                        result.upstream_status or 502,
                        started,
                        request_id,
                        result.upstream_status,
                        exc.reason,
                        result.upstream_seconds,
                    )
                    raise ResponseAborted(exc.reason) from None
                status = await self._send_error(send, exc, policy, request_id)
                self._access(view, decision, status, started, request_id, result.upstream_status, exc.reason)
                return
            except Exception:
                log.exception("unexpected error (request_id=%s)", request_id.decode())
                if result.response_started:
                    self._access(
                        view,
                        decision,
                        result.upstream_status or 500,
                        started,
                        request_id,
                        result.upstream_status,
                        "internal_error",
                    )
                    raise ResponseAborted("internal_error") from None
                status = await self._send_error(send, InternalError("unexpected error"), policy, request_id)
                self._access(
                    view, decision, status, started, request_id, result.upstream_status, "internal_error"
                )
                return
            finally:
                self.active -= 1
            self._access(
                view,
                decision,
                status,
                started,
                request_id,
                result.upstream_status,
                "client_disconnected" if result.aborted else None,
                result.upstream_seconds,
            )
        finally:
            # However the request ended (cancelled by a disconnect too): the in-flight gauge.
            observer.request_ended()

    # ------------------------------------------------------------------------ WebSocket

    async def handle_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Decide a WebSocket upgrade like any request, then relay the session.

        A denied upgrade is answered with the same HTTP error a request would get (the ASGI
        ``websocket.http.response`` extension), or, on a server without it, closed with 1008
        before the handshake completes (uvicorn then answers 403).
        """
        started = time.perf_counter()
        self.observer.request_started()
        if (await receive())["type"] != "websocket.connect":
            return
        policy = self.pipeline.policy
        settings = self._settings_for(policy)
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id = request_id_of(headers)
        client = scope.get("client")
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        view = RequestView(
            "GET",
            raw_path,
            scope.get("query_string", b""),
            headers,
            client[0] if client else None,
            websocket=True,
        )
        decision: Decision | None = None
        upstream_status: int | None = None
        if self.active >= settings.max_concurrency:
            overload = _overloaded(settings.max_concurrency)
            status = await self._deny_websocket(scope, send, overload, policy, request_id)
            self._access(view, None, status, started, request_id, None, overload.reason)
            return
        self.active += 1
        try:
            try:
                token, subprotocols, marker = split_subprotocols(scope.get("subprotocols") or ())
                from_protocol = token is not None and settings.ws_token_header is not None
                if from_protocol:
                    assert token is not None and settings.ws_token_header is not None
                    name, scheme = settings.ws_token_header
                    view.headers = [*headers, (name, scheme + token.encode("latin-1"))]
                decision = await self.pipeline.decide(view)
                view.headers = headers
                error: GatewayError | None = decision.error if not decision.allowed else None
                route = decision.route
                if error is None and route is not None and not route.websocket:
                    error = RouteDenied(
                        "WebSocket upgrades are not allowed here", reason="websocket_not_allowed"
                    )
                if (
                    error is None
                    and from_protocol
                    and decision.token is not None
                    and decision.token.provider not in settings.ws_providers
                ):
                    error = InvalidToken(
                        "this token may not be sent in Sec-WebSocket-Protocol",
                        reason="token_location_not_allowed",
                    )
                if error is not None:
                    status = await self._deny_websocket(scope, send, error, policy, request_id)
                    self._access(view, decision, status, started, request_id, None, error.reason)
                    return
                assert route is not None and decision.path is not None
                target = route.upstream_target(decision.path, view.query)
                if route.credential_cookies:
                    headers = remove_cookie_credentials(headers, route.credential_cookies)
                client_host = view.header(_HOST)
                forwarding = settings.trusted.forwarding(view.client, scope["scheme"], client_host, headers)
                upstream_headers = settings.plan.build(
                    headers,
                    trusted_peer=forwarding.trusted_peer,
                    host=client_host if route.preserve_host and client_host else route.origin.host_header,
                    forwarding=forwarding.headers,
                    claim_headers=decision.claim_headers,
                    request_id=request_id,
                )
                upstream_headers, key = upstream_handshake_headers(upstream_headers, subprotocols)
                response = await self.pool.request(
                    route.origin,
                    "GET",
                    target,
                    upstream_headers,
                    None,
                    retry_connect=settings.retry,
                    upgrade=b"websocket",
                )
                upstream_status = response.status
                if response.status != 101:
                    status = await self._refused_upstream(send, response)
                    self._access(
                        view,
                        decision,
                        status,
                        started,
                        request_id,
                        upstream_status,
                        "upstream_refused_upgrade",
                    )
                    return
                try:
                    selected = check_handshake(response, key, subprotocols)
                except GatewayError:
                    await response.aclose()
                    raise
                stream = response.detach()
            except GatewayError as exc:
                if isinstance(exc, UpstreamError):
                    log.warning(
                        "upstream failed: %s (WebSocket, request_id=%s)", exc.reason, request_id.decode()
                    )
                status = await self._deny_websocket(scope, send, exc, policy, request_id)
                self._access(view, decision, status, started, request_id, upstream_status, exc.reason)
                return
            if selected is None and marker and from_protocol:
                selected = TOKEN_MARKER
            await send(
                {"type": "websocket.accept", "subprotocol": selected, "headers": [(_REQUEST_ID, request_id)]}
            )
            token_info = decision.token
            close_on_expiry = route.close_on_expiry and token_info is not None
            outcome = await relay(
                receive,
                send,
                stream,
                expires_at=token_info.expires_at if close_on_expiry and token_info is not None else None,
            )
            self._access(
                view, decision, 101, started, request_id, 101, outcome.reason, time.perf_counter() - started
            )
        finally:
            self.active -= 1

    async def _deny_websocket(
        self, scope: Scope, send: Send, error: GatewayError, policy: Policy, request_id: bytes
    ) -> int:
        if "websocket.http.response" in (scope.get("extensions") or {}):
            rendered = render_error(error, realm=policy.realm, request_id=request_id.decode())
            headers = [*rendered.headers, (_REQUEST_ID, request_id)]
            await send(
                {"type": "websocket.http.response.start", "status": rendered.status, "headers": headers}
            )
            await send({"type": "websocket.http.response.body", "body": rendered.body})
            return rendered.status
        await send({"type": "websocket.close", "code": 1008})
        return 403

    @staticmethod
    async def _refused_upstream(send: Send, response: Any) -> int:
        """Pass the upstream's refusal of the handshake (a non-101 answer) on to the client."""
        body = b""
        try:
            while len(body) <= _MAX_HANDSHAKE_BODY:
                chunk = await response.read_chunk()
                if not chunk:
                    break
                body += chunk
        finally:
            await response.aclose()
        if len(body) > _MAX_HANDSHAKE_BODY:
            raise UpstreamError(
                "the upstream's refusal of the upgrade is too large", reason="upstream_refused_upgrade"
            )
        headers = [(n, v) for n, v in strip_hop_by_hop_response(response.headers) if n != b"content-length"]
        await send({"type": "websocket.http.response.start", "status": response.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return int(response.status)

    # ------------------------------------------------------------------------ answers and logs

    @staticmethod
    async def _send_error(send: Any, error: GatewayError, policy: Policy, request_id: bytes) -> int:
        rendered = render_error(error, realm=policy.realm, request_id=request_id.decode())
        headers = [*rendered.headers, (_REQUEST_ID, request_id)]
        if isinstance(error, (LimitExceeded, RequestTimeout)):
            # The rest of an oversized or stalled body is not read: the connection cannot be reused.
            headers.append(_CLOSE)
        elif isinstance(error, OverCapacity):
            headers.append((b"retry-after", b"1"))
        await send({"type": _START, "status": rendered.status, "headers": headers})
        await send({"type": _BODY, "body": rendered.body})
        return rendered.status

    def _access(
        self,
        view: RequestView,
        decision: Decision | None,
        status: int,
        started: float,
        request_id: bytes,
        upstream_status: int | None,
        reason: str | None,
        upstream_seconds: float = 0.0,
    ) -> None:
        # RequestRecord is built with positional arguments (keywords cost ~1.5 % of a request);
        # _RECORD_FIELDS below checks the field order at import. Milliseconds with three
        # decimals come from whole microseconds (round(x, 3) costs twice as much).
        elapsed = time.perf_counter() - started
        duration_ms = int(elapsed * 1e6 + 0.5) / 1000
        upstream_ms = int(upstream_seconds * 1e6 + 0.5) / 1000 if upstream_seconds else 0.0
        if decision is None:
            record = RequestRecord(
                request_id.decode(), view.method, None, None, status, "error", reason or "internal_error",
                None, None, view.client, upstream_status, duration_ms, 0.0, upstream_ms, None,
            )  # fmt: skip
        else:
            route = decision.route
            token = decision.token
            provider = sub = None
            if token is not None:
                provider = token.provider
                subject_claim = self._settings.subject_claim
                if subject_claim:
                    sub = token.claims.get(subject_claim)
                    kind = type(sub)
                    if kind is not str and kind is not int:  # never bool, float, list, dict
                        sub = None
            verify_seconds = decision.verify_seconds
            verify_ms = int(verify_seconds * 1e6 + 0.5) / 1000 if verify_seconds else 0.0
            record = RequestRecord(
                request_id.decode(), view.method, decision.path, route.name if route is not None else None,
                status, decision.outcome, reason or decision.reason, provider, sub, view.client,
                upstream_status, duration_ms, verify_ms, upstream_ms, decision.rule_failure,
            )  # fmt: skip
        self.observer.request_done(record)


__all__ = ["GatewayApp", "ResponseAborted", "request_id_of"]
