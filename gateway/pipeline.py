"""The heart of the gateway: ``decide(request) -> Decision``, transport-neutral.

One request, in order (each step may end the request with an explicit denial)::

    canonical path -> route match -> (deny | public | preflight?) -> extract token
    -> verify (provider by iss, key by kid, signature, registered claims)
    -> route rule -> claim headers -> allow

Proxy mode, the ASGI and WSGI middlewares and forward-auth all call :meth:`Pipeline.decide`
(or its blocking twin); none of them re-implements a rule. The pipeline holds one immutable
:class:`~gateway.policy.Policy`; a reload swaps the whole policy, so a request decided under
one config never sees half of another.

Two memos, kept per policy (a swap starts them afresh), spare the steps whose answer cannot
change while the policy stays: the canonical path and route match of a (method, raw path, Host)
(not for OPTIONS: a CORS preflight depends on more headers), and the rule outcome and claim
headers of a verified token on a route without path parameters (the verified-token cache hands
out the same ``VerifiedToken`` object for the same token). Both are bounded (cleared when full)
and store only successes: a refusal is always worked out afresh.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from gateway.auth.extract import extract_token
from gateway.auth.types import Claims, VerifiedToken
from gateway.errors import (
    GatewayError,
    PathNotCanonical,
    RequestError,
    RouteDenied,
    RouteNotFound,
    RuleFailed,
    TokenMissing,
)
from gateway.routing.path import canonical_path
from gateway.routing.table import normalize_host

if TYPE_CHECKING:
    from gateway.policy import CompiledRoute, Policy

Outcome = Literal["allowed", "denied", "report_only"]

_EMPTY: Mapping[str, str] = {}
#: Entries per memo (see the module docstring); a full memo is cleared, never scanned.
MEMO_MAX_ENTRIES = 4096
#: Only (path, Host) pairs up to this size are memoised: a client sending thousands of distinct
#: 16 KiB paths must not make the memo hold tens of megabytes (it costs them a re-match only).
MEMO_MAX_KEY_BYTES = 512


class _Memo:
    """Per-policy memos of the request path (see the module docstring)."""

    __slots__ = ("grants", "policy", "routes")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        #: (method, raw path, Host value) -> (canonical path, route, params).
        self.routes: dict[tuple[str, bytes, bytes | None], tuple[str, CompiledRoute, Mapping[str, str]]] = {}
        #: (id of the VerifiedToken, id of the route) -> (that token, that route, claim headers).
        #: The entry holds both objects, so neither id can be reused while it exists.
        self.grants: dict[
            tuple[int, int], tuple[VerifiedToken, CompiledRoute, list[tuple[bytes, bytes]]]
        ] = {}


@dataclass(slots=True)
class RequestView:
    """What the decision needs to know about a request, whatever the transport.

    ``headers`` are ASGI-style: lower-cased byte names, byte values, in received order.
    """

    method: str
    raw_path: bytes
    query: bytes = b""
    headers: Sequence[tuple[bytes, bytes]] = ()
    client: str | None = None
    websocket: bool = False

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class Decision:
    """What to do with a request: allow (with these claim headers) or deny (with this error).

    In report-only mode (``enforce: false``) ``outcome`` is ``report_only`` and ``error`` holds
    the denial that *would* have happened; the request passes.
    """

    outcome: Outcome
    route: CompiledRoute | None = None
    #: The canonical path: matched, and (after prefix rewriting) forwarded.
    path: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    error: GatewayError | None = None
    token: VerifiedToken | None = None
    #: May be shared with other decisions (memoised per policy): read it, never modify it.
    claim_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: Seconds spent verifying the token (0 when none was verified).
    verify_seconds: float = 0.0
    #: Which rule condition failed (for logs only; names the condition, never claim values).
    rule_failure: str | None = None

    @property
    def allowed(self) -> bool:
        """True when the request goes on (allowed, or denied in report-only mode)."""
        return self.outcome != "denied"

    @property
    def reason(self) -> str:
        """Stable reason code: ``ok`` or the error's reason."""
        return "ok" if self.error is None else self.error.reason


def _invalid_host() -> RequestError:
    error = RequestError("the Host header is not a valid host[:port]", reason="invalid_host")
    error.bearer_error = None  # not a credentials problem: no Bearer challenge
    return error


def _is_preflight(view: RequestView) -> bool:
    return (
        view.method == "OPTIONS"
        and view.header(b"origin") is not None
        and view.header(b"access-control-request-method") is not None
    )


class Pipeline:
    """Decides requests under the current policy; :meth:`swap` installs a new one atomically."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._memo = _Memo(policy)

    def swap(self, policy: Policy) -> Policy:
        """Install ``policy`` for requests that start from now on; return the old one."""
        old, self.policy = self.policy, policy
        self._memo = _Memo(policy)
        return old

    def _memo_for(self, policy: Policy) -> _Memo | None:
        # None while another thread swaps policies: that request just skips the memos.
        memo = self._memo
        return memo if memo.policy is policy else None

    # The async and blocking entry points share every step but the verification call.

    async def decide(self, view: RequestView) -> Decision:
        """Decide ``view`` (async: a key re-fetch after an unknown kid may be awaited)."""
        policy = self.policy
        early, route, path, params, token = self._before_verify(policy, view)
        if early is not None:
            return early
        assert route is not None and path is not None and token is not None
        started = time.perf_counter()
        verifier = policy.verifier
        try:
            # A cache hit needs no coroutine.
            verified = verifier.lookup(token, route.providers)
            if verified is None:
                verified = await verifier.verify(token, route.providers)
        except GatewayError as exc:
            return self._deny(route, path, params, exc, verify_seconds=time.perf_counter() - started)
        return self._after_verify(policy, route, path, params, verified, time.perf_counter() - started)

    def decide_blocking(self, view: RequestView) -> Decision:
        """Decide ``view`` without an event loop (WSGI): key re-fetches are synchronous."""
        policy = self.policy
        early, route, path, params, token = self._before_verify(policy, view)
        if early is not None:
            return early
        assert route is not None and path is not None and token is not None
        started = time.perf_counter()
        try:
            verified = policy.verifier.verify_blocking(token, route.providers)
        except GatewayError as exc:
            return self._deny(route, path, params, exc, verify_seconds=time.perf_counter() - started)
        return self._after_verify(policy, route, path, params, verified, time.perf_counter() - started)

    def decide_with_claims(
        self, view: RequestView, claims: Claims, *, provider: str = "(claims)"
    ) -> Decision:
        """Decide ``view`` as if it carried a token that verified to ``claims``.

        For ``jwt-gateway explain --claims`` and policy tests, never for serving: no token is
        looked for and nothing about ``claims`` is checked (no signature, ``exp``, ``iss``,
        ``aud`` or provider claims); every other step (path, route, auth mode, rule, claim
        headers, report-only) is the one :meth:`decide` runs.
        """
        policy = self.policy
        early, route, path, params, _ = self._before_verify(policy, view, claims_given=True)
        if early is not None:
            return early
        assert route is not None and path is not None
        verified = VerifiedToken(provider=provider, claims=claims, header={}, expires_at=None)
        return self._after_verify(policy, route, path, params, verified, 0.0)

    # ---------------------------------------------------------------------------- the steps

    def _before_verify(
        self, policy: Policy, view: RequestView, *, claims_given: bool = False
    ) -> tuple[Decision | None, CompiledRoute | None, str | None, Mapping[str, str], str | None]:
        host = view.header(b"host")
        memo = self._memo_for(policy) if view.method != "OPTIONS" else None
        key = (view.method, view.raw_path, host)
        known = memo.routes.get(key) if memo is not None else None
        if known is not None:
            path, route, params = known
        else:
            early, found = self._route(policy, view, host)
            if early is not None:
                return early, None, early.path, early.params, None
            assert found is not None
            path, route, params = found
            if memo is not None and len(view.raw_path) + (len(host) if host else 0) <= MEMO_MAX_KEY_BYTES:
                if len(memo.routes) >= MEMO_MAX_ENTRIES:
                    memo.routes.clear()
                memo.routes[key] = found
        if route.auth == "deny":
            return (
                self._deny(route, path, params, RouteDenied("this route is closed")),
                None,
                path,
                params,
                None,
            )
        if route.auth == "public":
            return Decision("allowed", route=route, path=path, params=params), None, path, params, None
        if claims_given:
            return None, route, path, params, ""
        try:
            token = extract_token(view.headers, view.query, route.locations, policy.max_token_bytes)
        except GatewayError as exc:
            return self._deny(route, path, params, exc), None, path, params, None
        if token is None:
            if route.auth == "optional":
                return Decision("allowed", route=route, path=path, params=params), None, path, params, None
            missing = TokenMissing("a bearer token is required")
            return self._deny(route, path, params, missing), None, path, params, None
        return None, route, path, params, token

    @staticmethod
    def _route(
        policy: Policy, view: RequestView, host: bytes | None
    ) -> tuple[Decision | None, tuple[str, CompiledRoute, Mapping[str, str]] | None]:
        """The canonical path and the route it matches, or the early decision (refused path,
        no route, an allowed CORS preflight)."""
        try:
            path = canonical_path(view.raw_path, policy.normalize)
        except PathNotCanonical as exc:
            return Decision("denied", error=exc), None
        host_name = host.decode("latin-1") if host else None
        if host_name is not None and normalize_host(host_name) is None:
            # A Host no route could ever name ("admin.example.com:abc", "a b"): matched only by
            # host-less routes here, while a front proxy cutting at ':' may route it to the
            # named host. Refused rather than guessed.
            return Decision("denied", path=path, error=_invalid_host()), None
        if _is_preflight(view):
            # A CORS preflight asks about the route of the method it announces, which need not
            # list OPTIONS: let it through untokened only when that route allows preflights.
            announced = view.header(b"access-control-request-method") or b""
            target = policy.routes.match(announced.decode("latin-1").strip(), path, host_name)
            if target is not None and target.payload.cors_preflight and target.payload.auth != "deny":
                return Decision("allowed", route=target.payload, path=path, params=target.params), None
        match = policy.routes.match(view.method, path, host_name)
        if match is None:
            return Decision("denied", path=path, error=policy.route_not_found()), None
        return None, (path, match.payload, match.params)

    def _after_verify(
        self,
        policy: Policy,
        route: CompiledRoute,
        path: str,
        params: Mapping[str, str],
        verified: VerifiedToken,
        seconds: float,
    ) -> Decision:
        memo = self._memo_for(policy) if not params else None
        granted = memo.grants.get((id(verified), id(route))) if memo is not None else None
        if granted is not None and granted[0] is verified and granted[1] is route:
            headers = granted[2]  # this token already passed this route's rule
        else:
            claims = verified.claims
            if route.rule is not None:
                outcome = route.rule.evaluate(claims, params)
                if not outcome.ok:
                    # The failing condition is logged, never sent: it would teach clients the policy.
                    error = RuleFailed("the token does not satisfy this route's rule", scopes=outcome.scopes)
                    denied = self._deny(route, path, params, error, token=verified, verify_seconds=seconds)
                    denied.rule_failure = outcome.failed
                    if denied.outcome == "report_only":
                        denied.claim_headers = self._claim_headers_or_none(policy, claims)
                    return denied
            try:
                headers = policy.headers.claim_headers(claims)
            except GatewayError as exc:
                return self._deny(route, path, params, exc, token=verified, verify_seconds=seconds)
            if memo is not None:
                if len(memo.grants) >= MEMO_MAX_ENTRIES:
                    memo.grants.clear()
                memo.grants[(id(verified), id(route))] = (verified, route, headers)
        return Decision(
            "allowed",
            route=route,
            path=path,
            params=params,
            token=verified,
            claim_headers=headers,
            verify_seconds=seconds,
        )

    @staticmethod
    def _claim_headers_or_none(policy: Policy, claims: Mapping[str, object]) -> list[tuple[bytes, bytes]]:
        # Report-only: a verified identity is still passed on even though a rule failed.
        try:
            return policy.headers.claim_headers(claims)
        except GatewayError:
            return []

    @staticmethod
    def _deny(
        route: CompiledRoute,
        path: str,
        params: Mapping[str, str],
        error: GatewayError,
        *,
        token: VerifiedToken | None = None,
        verify_seconds: float = 0.0,
    ) -> Decision:
        # Report-only routes let the request pass but keep the would-be denial for the log.
        # Claim headers are only ever set from a verified token whose encoding succeeded,
        # which a denied decision by construction does not have.
        outcome: Outcome = "denied" if route.enforce else "report_only"
        return Decision(
            outcome,
            route=route,
            path=path,
            params=params,
            error=error,
            token=token,
            verify_seconds=verify_seconds,
        )


__all__ = ["Decision", "Pipeline", "RequestView", "RouteNotFound"]
