"""The gateway's decision core as pure ASGI middleware (Starlette, FastAPI, any ASGI app).

::

    app.add_middleware(JWTGatewayMiddleware, config="gateway.yaml")

Every HTTP request and WebSocket upgrade is decided by the same
:class:`~gateway.pipeline.Pipeline` as in proxy mode, against the app's own paths (the canonical
path of ``raw_path``). A refused request gets the proxy's answer (RFC 6750 challenge, RFC 9457
problem+json body) and never reaches the app. An admitted request reaches it with:

- ``scope["auth"]``: a :class:`JWTAuth`, Starlette's ``AuthCredentials`` (``request.auth.scopes``
  are the token's ``scope``/``scp``, so ``@requires("orders:read")`` works) that is also a
  read-only mapping of the verified claims (``request.auth["sub"]``); empty without a token;
- ``scope["user"]``: a :class:`JWTUser` (``request.user.is_authenticated``, ``.identity`` =
  ``sub``, ``.claims``), or Starlette's ``UnauthenticatedUser`` without a token;
- ``scope["state"]["jwt_claims"]``: the claims, or ``None`` (``request.state.jwt_claims``);
- ``scope["jwt_gateway"]``: the :class:`~gateway.pipeline.Decision` (route, path, token);
- the claims are the request's own copy: whatever the app does to them, the gateway's token
  cache (and so the next decision for the same token) is untouched;
- the configured claim headers in ``scope["headers"]``, after every spoofable client copy (and
  the ``Authorization`` header, unless ``headers.forward_authorization``) was removed, on every
  route, public ones included;
- ``path``/``raw_path`` set to the canonical path when it differs from what the client sent
  (``paths.normalize``), so the app routes on exactly the path that was authorised.

Key fetching starts on the app's ``lifespan.startup`` (waiting up to ``key_wait`` seconds for
the first fetch) and stops on shutdown; an app run without lifespan starts it on the first
request. The app may raise a :class:`gateway.errors.GatewayError` (the FastAPI dependencies in
:mod:`gateway.middleware.fastapi` do): before the response has started, it is rendered exactly
as the gateway renders its own refusals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any
from urllib.parse import quote

from starlette.authentication import AuthCredentials, BaseUser, UnauthenticatedUser

from gateway.asgi_types import ASGIApp, Message, Receive, Scope, Send
from gateway.auth.types import Claims
from gateway.errors import GatewayError, RouteDenied
from gateway.http.problem import render_error
from gateway.middleware.common import (
    DEFAULT_KEY_WAIT,
    ConfigSource,
    PolicyFactory,
    admitted_token,
    decoded_path,
    first_fetches_done,
    granted_scopes,
    request_id_of,
    subject_of,
)
from gateway.pipeline import Decision, Pipeline, RequestView
from gateway.policy import Policy

log = logging.getLogger("jwt_gateway.middleware")

_EMPTY_CLAIMS: Claims = {}
# Characters ASGI servers leave raw in a path; only used when a server gives no raw_path.
_PATH_SAFE = "/!$&'()*+,;=:@~"
# WebSocket close code "policy violation" (RFC 6455 §7.4.1).
_POLICY_VIOLATION = 1008


class JWTAuth(AuthCredentials, Mapping[str, Any]):
    """``scope["auth"]``: Starlette credentials (``.scopes``) and a mapping of the verified claims.

    Empty (falsy, no scopes) when the request carried no token (``auth: public`` or
    ``optional`` routes).
    """

    def __init__(self, claims: Claims | None = None, provider: str | None = None) -> None:
        super().__init__(granted_scopes(claims))
        #: The verified claims (an empty mapping without a token).
        self.claims: Claims = claims if claims is not None else _EMPTY_CLAIMS
        #: The name of the provider that issued the token (``providers.<name>``), or None.
        self.provider = provider

    def __getitem__(self, key: str) -> Any:
        return self.claims[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.claims)

    def __len__(self) -> int:
        return len(self.claims)

    def __repr__(self) -> str:
        # Claim values stay out of reprs (and so out of tracebacks and logs).
        return f"JWTAuth(provider={self.provider!r}, scopes={self.scopes!r}, claims=<{len(self.claims)}>)"


class JWTUser(BaseUser):
    """``scope["user"]`` for a request with a verified token."""

    def __init__(self, claims: Claims, provider: str | None = None) -> None:
        #: The verified claims.
        self.claims = claims
        #: The name of the provider that issued the token.
        self.provider = provider

    @property
    def is_authenticated(self) -> bool:
        """Always True: the token was verified."""
        return True

    @property
    def display_name(self) -> str:
        """The ``sub`` claim."""
        return subject_of(self.claims)

    @property
    def identity(self) -> str:
        """The ``sub`` claim."""
        return subject_of(self.claims)

    def __repr__(self) -> str:
        return f"JWTUser(provider={self.provider!r})"


class JWTGatewayMiddleware:
    """Pure ASGI middleware running the gateway's decision core in front of ``app``.

    ``config``: a path to ``gateway.yaml``, a :class:`~gateway.config.models.GatewayConfig`,
    or a mapping of the same shape. ``base_dir``: where relative key-file paths are resolved
    (default: the config file's directory, or the working directory). ``key_wait``: seconds
    startup waits for the first key fetch of each remote provider (0: do not wait; requests
    meanwhile get 503 ``keys_unavailable``). Raises :class:`~gateway.errors.ConfigError` for a
    bad config, at construction.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: ConfigSource,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        key_wait: float = DEFAULT_KEY_WAIT,
    ) -> None:
        self.app = app
        self._factory = PolicyFactory(config, base_dir=base_dir)
        self.pipeline = Pipeline(self._factory.build())
        self.key_wait = key_wait
        self._started = False
        self._closed = False
        self._starting: asyncio.Future[None] | None = None

    @property
    def policy(self) -> Policy:
        """The compiled policy requests are decided under."""
        return self.pipeline.policy

    # ----------------------------------------------------------------------------- lifecycle

    async def startup(self) -> None:
        """Start key fetching (once; concurrent callers share it) and wait up to ``key_wait``."""
        if self._started:
            return
        starting = self._starting
        if starting is None:
            starting = self._starting = asyncio.ensure_future(self._start())
        # Shielded: a request that gives up waiting must not cancel the start others share.
        await asyncio.shield(starting)

    async def shutdown(self) -> None:
        """Stop key fetching. A later startup (a new lifespan) rebuilds the policy."""
        if self._started:
            self._started = False
            self._starting = None
            self._closed = True
            await self.policy.aclose()

    async def _start(self) -> None:
        if self._closed:
            # Closed key sources cannot restart (a test client's second lifespan, say).
            self.pipeline.swap(self._factory.build())
            self._closed = False
        policy = self.policy
        await policy.start()
        deadline = time.monotonic() + self.key_wait
        # Polled: key sources expose no "first fetch done" event, and this runs once per start.
        while not first_fetches_done(policy) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        self._started = True

    # ------------------------------------------------------------------------------ dispatch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if not self._started:
                await self.startup()
            await self._http(scope, receive, send)
        elif kind == "websocket":
            if not self._started:
                await self.startup()
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_hooked() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
            return message

        async def send_hooked(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.shutdown()
            await send(message)

        await self.app(scope, receive_hooked, send_hooked)

    # ---------------------------------------------------------------------------------- HTTP

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        view = self._view(scope, websocket=False)
        decision = await self.pipeline.decide(view)
        if not decision.allowed:
            assert decision.error is not None
            self._log_refusal(view, decision)
            await self._send_error(send, decision.error, view.headers)
            return
        if decision.outcome == "report_only":
            self._log_refusal(view, decision)
        inner = self._admit(scope, view, decision)
        response_started = False

        async def send_tracking(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(inner, receive, send_tracking)
        except GatewayError as exc:
            # Raised by the app (e.g. a FastAPI dependency): the gateway's answer, unless the
            # app already started its own, in which case the server must see the failure.
            if response_started:
                raise
            await self._send_error(send, exc, view.headers)

    async def _send_error(self, send: Send, error: GatewayError, headers: Any) -> None:
        request_id = request_id_of(headers)
        rendered = render_error(error, realm=self.policy.realm, request_id=request_id)
        out = [*rendered.headers, (b"x-request-id", request_id.encode("ascii"))]
        await send({"type": "http.response.start", "status": rendered.status, "headers": out})
        await send({"type": "http.response.body", "body": rendered.body})

    # ----------------------------------------------------------------------------- WebSocket

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        view = self._view(scope, websocket=True)
        decision = await self.pipeline.decide(view)
        route = decision.route
        if decision.allowed and route is not None and not route.websocket:
            decision = Decision(
                "denied",
                route=route,
                path=decision.path,
                error=RouteDenied("WebSocket upgrades are not allowed here", reason="websocket_not_allowed"),
            )
        if not decision.allowed:
            assert decision.error is not None
            self._log_refusal(view, decision)
            await self._refuse_websocket(scope, receive, send, decision.error, view.headers)
            return
        if decision.outcome == "report_only":
            self._log_refusal(view, decision)
        inner = self._admit(scope, view, decision)
        token = decision.token
        expires_at = token.expires_at if token is not None else None
        if expires_at is None or route is None or not route.close_on_expiry:
            await self.app(inner, receive, send)
            return
        await self._relay_until(expires_at, inner, receive, send)

    async def _refuse_websocket(
        self, scope: Scope, receive: Receive, send: Send, error: GatewayError, headers: Any
    ) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            # The server can answer the upgrade with a plain HTTP response: the same one as HTTP.
            request_id = request_id_of(headers)
            rendered = render_error(error, realm=self.policy.realm, request_id=request_id)
            out = [*rendered.headers, (b"x-request-id", request_id.encode("ascii"))]
            await send({"type": "websocket.http.response.start", "status": rendered.status, "headers": out})
            await send({"type": "websocket.http.response.body", "body": rendered.body})
        else:
            await send({"type": "websocket.close", "code": _POLICY_VIOLATION})

    async def _relay_until(self, expires_at: float, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, closing the socket with 1008 once the token's ``exp`` has passed.

        The app's pending ``receive()`` is interrupted at ``exp`` (it gets a disconnect), and
        nothing the app sends after ``exp`` goes out.
        """
        closed = False
        accepted = False

        async def close() -> Message:
            nonlocal closed
            if not closed:
                closed = True
                if accepted:
                    await send({"type": "websocket.close", "code": _POLICY_VIOLATION})
            return {"type": "websocket.disconnect", "code": _POLICY_VIOLATION}

        async def receive_bounded() -> Message:
            if closed:
                return {"type": "websocket.disconnect", "code": _POLICY_VIOLATION}
            remaining = expires_at - time.time()
            if remaining <= 0 and accepted:
                return await close()
            try:
                async with asyncio.timeout(remaining if accepted else None):
                    return await receive()
            except TimeoutError:
                return await close()

        async def send_bounded(message: Message) -> None:
            nonlocal accepted
            if closed:
                return
            if message["type"] == "websocket.accept":
                accepted = True
            elif message["type"] == "websocket.send" and time.time() >= expires_at:
                await close()
                return
            await send(message)

        await self.app(scope, receive_bounded, send_bounded)

    # ------------------------------------------------------------------------------- helpers

    @staticmethod
    def _view(scope: Scope, *, websocket: bool) -> RequestView:
        raw_path = scope.get("raw_path")
        if not raw_path:
            # A server without raw_path: re-encode the decoded path (an encoded "/" or "%" in
            # the original can no longer be told apart: servers that matter all send raw_path).
            raw_path = quote(scope["path"], safe=_PATH_SAFE).encode("ascii")
        client = scope.get("client")
        return RequestView(
            scope.get("method", "GET"),
            raw_path,
            scope.get("query_string", b""),
            scope["headers"],
            client[0] if client else None,
            websocket,
        )

    def _admit(self, scope: Scope, view: RequestView, decision: Decision) -> Scope:
        """The scope the app sees: stripped headers + claim headers, claims, canonical path."""
        headers = self.policy.headers.strip_inbound(view.headers)
        if decision.claim_headers:
            headers.extend(decision.claim_headers)
        inner: MutableMapping[str, Any] = dict(scope)
        inner["headers"] = headers
        path = decision.path
        if path is not None:
            canonical = path.encode("ascii")
            if canonical != view.raw_path:
                inner["raw_path"] = canonical
                inner["path"] = decoded_path(path)
        token = admitted_token(decision)
        if token is not None:
            claims: Claims | None = token.claims
            inner["auth"] = JWTAuth(token.claims, token.provider)
            inner["user"] = JWTUser(token.claims, token.provider)
        else:
            claims = None
            inner["auth"] = JWTAuth()
            inner["user"] = UnauthenticatedUser()
        # The state dict is the server's per-request copy: shared with outer middleware on purpose.
        state = scope.get("state")
        if state is None:
            state = inner["state"] = {}
        state["jwt_claims"] = claims
        inner["jwt_gateway"] = decision
        return inner

    @staticmethod
    def _log_refusal(view: RequestView, decision: Decision) -> None:
        route = decision.route.name if decision.route is not None else None
        log.info(
            "%s %s %s: %s (route %s)",
            "report-only (would deny)" if decision.outcome == "report_only" else "denied",
            view.method,
            decision.path if decision.path is not None else "(path refused)",
            decision.reason,
            route,
        )


__all__ = ["JWTAuth", "JWTGatewayMiddleware", "JWTUser"]
