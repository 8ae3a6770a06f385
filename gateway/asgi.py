"""The gateway as an ASGI application (proxy mode).

A raw ASGI app, no framework router on the hot path: each HTTP request is turned into a
:class:`~gateway.pipeline.RequestView`, decided by the pipeline, then either answered with an
RFC 6750 / RFC 9457 error or forwarded, streaming, to its upstream.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import MutableMapping
from typing import Any

from gateway.asgi_types import Receive, Scope, Send
from gateway.errors import GatewayError, InternalError
from gateway.http.problem import render_error
from gateway.observe import Observer, RequestRecord
from gateway.pipeline import Decision, Pipeline, RequestView
from gateway.policy import Policy
from gateway.proxy.forwarder import Forwarder, UpstreamRequest, build_headers
from gateway.proxy.pool import PoolLimits, UpstreamPool

log = logging.getLogger("jwt_gateway")

_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")


class ResponseAborted(Exception):
    """Raised after a response has started and could not be completed: the ASGI server then
    closes the client connection, so a truncated body is never mistaken for a complete one."""

    gateway_abort = True


def request_id_of(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's X-Request-Id if it is short and made of safe characters, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            if _SAFE_REQUEST_ID.fullmatch(value):
                return value
            break
    return os.urandom(12).hex().encode()


class GatewayApp:
    """ASGI app: decide, then deny or forward. Owns the pipeline, the pool and the key sources."""

    def __init__(self, policy: Policy, *, observer: Observer | None = None) -> None:
        self.pipeline = Pipeline(policy)
        self.observer = observer or Observer()
        proxy = policy.config.proxy
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
        self.forwarder = Forwarder(
            self.pool,
            trusted=policy.trusted_proxies,
            max_body_bytes=proxy.max_body_bytes,
            retry_on_connect_failure=proxy.retry_on_connect_failure,
        )
        self.started = False

    @property
    def policy(self) -> Policy:
        """The policy new requests are decided under."""
        return self.pipeline.policy

    async def startup(self) -> None:
        """Start background work (key fetching). Never blocks on an unreachable IdP."""
        await self.policy.start()
        self.started = True

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle_http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # WebSocket relaying arrives with the proxy engine; until then refuse cleanly.
            await send({"type": "websocket.close", "code": 1008})

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
        """Decide one HTTP request, then deny it or forward it."""
        started = time.perf_counter()
        self.observer.request_started()
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
        policy = self.pipeline.policy
        status = 500
        upstream_status: int | None = None
        upstream_seconds = 0.0
        decision: Decision | None = None
        response_started = False

        async def send_tracking(message: MutableMapping[str, Any]) -> None:
            nonlocal response_started, status
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
            await send(message)

        try:
            decision = await self.pipeline.decide(view)
            if not decision.allowed:
                assert decision.error is not None
                await self._send_error(send_tracking, decision.error, policy, request_id)
            else:
                assert decision.route is not None and decision.path is not None
                request = self._upstream_request(policy, decision, view, scope, request_id)
                result = await self.forwarder.forward(scope, receive, send_tracking, request)
                upstream_status, upstream_seconds = result.upstream_status, result.upstream_seconds
                if result.aborted:
                    status = 499 if upstream_status is not None else status
        except GatewayError as exc:
            if response_started:
                log.warning("response aborted: %s (request_id=%s)", exc.reason, request_id.decode())
                self._access(view, decision, status, started, request_id, upstream_status, exc.reason)
                raise ResponseAborted(exc.reason) from None
            await self._send_error(send_tracking, exc, policy, request_id)
            self._access(view, decision, status, started, request_id, upstream_status, exc.reason)
            return
        except Exception:
            log.exception("unexpected error (request_id=%s)", request_id.decode())
            if response_started:
                raise ResponseAborted("internal_error") from None
            await self._send_error(send_tracking, InternalError("unexpected error"), policy, request_id)
            self._access(view, decision, status, started, request_id, upstream_status, "internal_error")
            return
        self._access(view, decision, status, started, request_id, upstream_status, None, upstream_seconds)

    @staticmethod
    def _upstream_request(
        policy: Policy, decision: Decision, view: RequestView, scope: Scope, request_id: bytes
    ) -> UpstreamRequest:
        route = decision.route
        assert route is not None and decision.path is not None
        target = route.upstream_path(decision.path).encode("ascii")
        if view.query:
            target += b"?" + view.query
        host = view.header(b"host") if route.preserve_host else None
        forwarding = policy.trusted_proxies.forwarding(
            view.client, scope.get("scheme", "http"), view.header(b"host"), view.headers
        )
        headers = build_headers(
            view.headers,
            strip_inbound=policy.headers.strip_inbound,
            forwarding=forwarding,
            claim_headers=decision.claim_headers,
            request_id=request_id,
            host=host or route.origin.host_header,
        )
        return UpstreamRequest(
            origin=route.origin,
            method=view.method,
            target=target,
            headers=headers,
            retry_connect=policy.retry_allowed(view.method),
        )

    @staticmethod
    async def _send_error(send: Any, error: GatewayError, policy: Policy, request_id: bytes) -> None:
        rendered = render_error(error, realm=policy.realm, request_id=request_id.decode())
        headers = [*rendered.headers, (b"x-request-id", request_id)]
        await send({"type": "http.response.start", "status": rendered.status, "headers": headers})
        await send({"type": "http.response.body", "body": rendered.body})

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
        policy = self.pipeline.policy
        route = decision.route if decision is not None else None
        token = decision.token if decision is not None else None
        subject_claim = policy.config.logging.subject_claim
        sub = token.claims.get(subject_claim) if token is not None and subject_claim else None
        self.observer.request_done(
            RequestRecord(
                request_id=request_id.decode(),
                method=view.method,
                path=decision.path if decision is not None else None,
                route=route.name if route is not None else None,
                status=status,
                decision=decision.outcome if decision is not None else "error",
                reason=reason or (decision.reason if decision is not None else "internal_error"),
                provider=token.provider if token is not None else None,
                sub=sub if isinstance(sub, str | int) and not isinstance(sub, bool) else None,
                client=view.client,
                upstream_status=upstream_status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                verify_ms=round(decision.verify_seconds * 1000, 3) if decision is not None else 0.0,
                upstream_ms=round(upstream_seconds * 1000, 3),
                rule=decision.rule_failure if decision is not None else None,
            )
        )


__all__ = ["GatewayApp", "ResponseAborted"]
