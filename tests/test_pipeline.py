"""The transport-neutral decision: Pipeline.decide / decide_blocking on a compiled policy."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from gateway.config.loader import parse_config
from gateway.errors import (
    PathNotCanonical,
    RouteDenied,
    RouteNotFound,
    RuleFailed,
    TokenExpired,
    TokenMissing,
)
from gateway.pipeline import Decision, Pipeline, RequestView
from gateway.policy import build_policy

SECRET = "pipeline-test-secret-0123456789abcdef"

CONFIG = f"""
upstream: http://127.0.0.1:9
providers:
  hs: {{issuer: https://hs.test, secret: "{SECRET}", algorithms: [HS256], audiences: [api]}}
headers:
  claims: {{X-User-Id: sub}}
routes:
  - {{name: closed, match: {{path: /closed/**}}, auth: deny}}
  - {{name: public, match: {{path: /public/**}}, auth: public}}
  - {{name: cors, match: {{path: /cors/**, methods: [POST]}}, cors_preflight: true}}
  - {{name: optional, match: {{path: /maybe/**}}, auth: optional}}
  - name: admin
    match: {{path: /admin/**}}
    require: {{claim: roles, contains: admin}}
  - name: trial
    match: {{path: /trial/**}}
    enforce: false
    require: {{claim: roles, contains: admin}}
  - name: user
    match: {{path: "/users/{{id}}"}}
    require: {{claim: sub, equals_param: id}}
  - {{name: api, match: {{path: /api/**, methods: [GET]}}}}
"""


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(build_policy(parse_config(CONFIG, env={})))


def token(**extra: Any) -> str:
    now = int(time.time())
    claims = {"iss": "https://hs.test", "sub": "alice", "aud": "api", "exp": now + 60, "iat": now, **extra}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def view(method: str, path: bytes, tok: str | None = None, **headers: str) -> RequestView:
    hs = [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    if tok is not None:
        hs.append((b"authorization", f"Bearer {tok}".encode()))
    return RequestView(method, path, b"", hs, "127.0.0.1")


async def both(pipeline: Pipeline, v: RequestView) -> Decision:
    """Decide with the async and the blocking entry points; they must agree."""
    a = await pipeline.decide(v)
    b = pipeline.decide_blocking(v)
    assert (a.outcome, a.reason, a.path) == (b.outcome, b.reason, b.path)
    return a


async def test_non_canonical_path_is_denied_before_routing(pipeline: Pipeline) -> None:
    d = await both(pipeline, view("GET", b"/public/../admin"))
    assert d.outcome == "denied" and isinstance(d.error, PathNotCanonical) and d.route is None


async def test_unmatched_request_is_denied(pipeline: Pipeline) -> None:
    d = await both(pipeline, view("GET", b"/nowhere", token()))
    assert isinstance(d.error, RouteNotFound) and d.error.status == 404


async def test_deny_route(pipeline: Pipeline) -> None:
    d = await both(pipeline, view("GET", b"/closed/x", token()))
    assert isinstance(d.error, RouteDenied) and d.route is not None and d.route.name == "closed"


async def test_public_route_ignores_tokens_even_bad_ones(pipeline: Pipeline) -> None:
    d = await both(pipeline, view("GET", b"/public/x", "not-a-token"))
    assert d.outcome == "allowed" and d.token is None and d.claim_headers == []


async def test_cors_preflight_passes_only_with_origin_and_request_method(pipeline: Pipeline) -> None:
    pre = view("OPTIONS", b"/cors/x", origin="https://app", access_control_request_method="POST")
    assert (await both(pipeline, pre)).outcome == "allowed"
    # The preflight is judged by the route of the method it announces (which lists no OPTIONS).
    assert (await both(pipeline, pre)).route.name == "cors"  # type: ignore[union-attr]
    elsewhere = view("OPTIONS", b"/api/x", origin="https://app", access_control_request_method="GET")
    assert isinstance((await both(pipeline, elsewhere)).error, RouteNotFound)
    plain = view("OPTIONS", b"/cors/x", origin="https://app")
    assert isinstance((await both(pipeline, plain)).error, RouteNotFound)
    post = view("POST", b"/cors/x", origin="https://app", access_control_request_method="POST")
    assert isinstance((await both(pipeline, post)).error, TokenMissing)


async def test_optional_route(pipeline: Pipeline) -> None:
    assert (await both(pipeline, view("GET", b"/maybe/x"))).outcome == "allowed"
    d = await both(pipeline, view("GET", b"/maybe/x", token()))
    assert d.outcome == "allowed" and d.claim_headers == [(b"x-user-id", b"alice")]
    bad = await both(pipeline, view("GET", b"/maybe/x", token(exp=1)))
    assert bad.outcome == "denied" and isinstance(bad.error, TokenExpired)


async def test_rule_failure_is_logged_not_taught(pipeline: Pipeline) -> None:
    d = await both(pipeline, view("GET", b"/admin/x", token(roles=["user"])))
    assert isinstance(d.error, RuleFailed)
    assert d.rule_failure is not None and "roles" in d.rule_failure
    assert "roles" not in d.error.detail
    assert d.claim_headers == []
    ok = await both(pipeline, view("GET", b"/admin/x", token(roles=["admin"])))
    assert ok.outcome == "allowed" and ok.claim_headers == [(b"x-user-id", b"alice")]


async def test_report_only_passes_with_the_would_be_denial(pipeline: Pipeline) -> None:
    d = await both(pipeline, view("GET", b"/trial/x", token(roles=["user"])))
    assert d.outcome == "report_only" and d.allowed
    assert isinstance(d.error, RuleFailed)
    assert d.claim_headers == [(b"x-user-id", b"alice")]  # the identity is verified
    anon = await both(pipeline, view("GET", b"/trial/x"))
    assert anon.outcome == "report_only" and isinstance(anon.error, TokenMissing)
    assert anon.claim_headers == []


async def test_path_parameter_rule(pipeline: Pipeline) -> None:
    assert (await both(pipeline, view("GET", b"/users/alice", token()))).outcome == "allowed"
    d = await both(pipeline, view("GET", b"/users/bob", token()))
    assert isinstance(d.error, RuleFailed)
    assert d.params == {"id": "bob"}


async def test_method_outside_the_route_is_unmatched(pipeline: Pipeline) -> None:
    assert (await both(pipeline, view("GET", b"/api/x", token()))).outcome == "allowed"
    assert isinstance((await both(pipeline, view("DELETE", b"/api/x", token()))).error, RouteNotFound)


async def test_swap_installs_a_new_policy_for_new_requests(pipeline: Pipeline) -> None:
    old = pipeline.policy
    new = build_policy(parse_config(CONFIG.replace("/api/**", "/v2/**"), env={}))
    pipeline.swap(new)
    try:
        assert (await pipeline.decide(view("GET", b"/v2/x", token()))).outcome == "allowed"
        assert (await pipeline.decide(view("GET", b"/api/x", token()))).outcome == "denied"
    finally:
        pipeline.swap(old)


# ============================================================================ per-policy memos

MEMO_CONFIG = f"""
upstream: http://127.0.0.1:9
providers:
  hs: {{issuer: https://hs.test, secret: "{SECRET}", algorithms: [HS256], audiences: [api]}}
headers:
  claims: {{X-User-Id: sub}}
routes:
  - name: admin-host
    match: {{path: /x/**, host: admin.example}}
    require: {{claim: roles, contains: admin}}
  - {{name: other-hosts, match: {{path: /x/**}}}}
  - name: admin
    match: {{path: /admin/**}}
    require: {{claim: roles, contains: admin}}
"""


def memo_pipeline() -> Pipeline:
    return Pipeline(build_policy(parse_config(MEMO_CONFIG, env={})))


async def test_a_memoised_route_still_depends_on_the_host() -> None:
    p = memo_pipeline()
    user = token()
    for _ in range(3):  # decided again and again: the memo must answer as the first time did
        d = await both(p, view("GET", b"/x/a", user, host="admin.example"))
        assert isinstance(d.error, RuleFailed) and d.route is not None and d.route.name == "admin-host"
        d = await both(p, view("GET", b"/x/a", user, host="www.example"))
        assert d.outcome == "allowed" and d.route is not None and d.route.name == "other-hosts"


async def test_a_memoised_grant_belongs_to_one_token() -> None:
    p = memo_pipeline()
    admin, user = token(roles=["admin"]), token(roles=["user"])
    for _ in range(3):
        granted = await both(p, view("GET", b"/admin/a", admin))
        assert granted.outcome == "allowed"
        assert granted.claim_headers == [(b"x-user-id", b"alice")]
        assert isinstance((await both(p, view("GET", b"/admin/a", user))).error, RuleFailed)


async def test_an_expired_token_is_refused_even_after_a_memoised_grant() -> None:
    p = memo_pipeline()
    admin = token(roles=["admin"])
    assert (await both(p, view("GET", b"/admin/a", admin))).outcome == "allowed"
    verifier = p.policy.verifier
    later = time.time() + 3600
    verifier._clock = lambda: later  # an hour on: past exp and the leeway
    assert isinstance((await both(p, view("GET", b"/admin/a", admin))).error, TokenExpired)


async def test_only_short_paths_are_memoised_and_a_swap_forgets_them() -> None:
    p = memo_pipeline()
    admin = token(roles=["admin"])
    long_path = b"/admin/" + b"a" * 600
    assert (await both(p, view("GET", long_path, admin))).outcome == "allowed"
    assert (await both(p, view("GET", b"/admin/short", admin))).outcome == "allowed"
    memoised = {key[1] for key in p._memo.routes}
    assert b"/admin/short" in memoised and long_path not in memoised
    p.swap(build_policy(parse_config(MEMO_CONFIG.replace("/admin/**", "/v2/**"), env={})))
    assert isinstance((await both(p, view("GET", b"/admin/short", admin))).error, RouteNotFound)
