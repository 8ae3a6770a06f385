"""``explain`` and policy tests: the offline commands decide with the serving engine.

Tokens are real (HS256 against a static secret, RS256 against a real JWKS server); claims are
injected with ``Pipeline.decide_with_claims``.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from gateway.config.loader import parse_config
from gateway.errors import ConfigError
from gateway.pipeline import Pipeline, RequestView
from gateway.policy import Policy, build_policy
from gateway.tools import (
    OfflineRequest,
    PolicyTestFileError,
    build_view,
    check,
    explain,
    explain_report,
    load_policy_tests,
    render_explanation,
    run_policy_tests,
)
from tests.support.jwks_server import JWKSServer

ROOT = Path(__file__).resolve().parents[1]
SECRET = "a-test-hmac-secret-of-at-least-32-bytes!!"
ISSUER = "https://hs.test"
AUD = "api"

CONFIG: dict[str, Any] = {
    "upstream": "http://127.0.0.1:9/base",
    "providers": {"hs": {"issuer": ISSUER, "secret": SECRET, "algorithms": ["HS256"], "audiences": [AUD]}},
    "headers": {
        "claims": {"X-User-Id": "sub", "X-User-Roles": {"claim": "roles", "encode": "csv"}},
        "strip_prefixes": ["X-Auth-"],
        "payload_header": "X-JWT-Payload",
    },
    "routes": [
        {"name": "public", "match": {"path": "/public/**"}, "auth": "public"},
        {"name": "closed", "match": {"path": "/closed/**"}, "auth": "deny"},
        {
            "name": "admin",
            "match": {"path": "/admin/**"},
            "require": {
                "all": [{"claim": "roles", "contains": "admin"}, {"not": {"claim": "banned", "exists": True}}]
            },
        },
        {
            "name": "users",
            "match": {"path": "/users/{id}/**", "methods": ["GET"]},
            "require": {"claim": "sub", "equals_param": "id"},
        },
        {"name": "api", "match": {"path": "/api/**"}, "strip_prefix": "/api"},
        {"name": "docs", "match": {"path": "/docs/**"}, "auth": "optional"},
        {
            "name": "legacy",
            "match": {"path": "/legacy/**"},
            "enforce": False,
            "require": {"claim": "roles", "contains": "legacy"},
        },
    ],
}


def hs_token(*, key: str = SECRET, lifetime: int = 600, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUD, "sub": "alice", "iat": now - 5, "exp": now + lifetime, **claims}
    return jwt.encode(payload, key, algorithm="HS256")


def write_config(folder: Path, config: dict[str, Any] = CONFIG, name: str = "gateway.yaml") -> str:
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def policy_of(config: dict[str, Any] = CONFIG) -> Policy:
    return build_policy(parse_config(yaml.safe_dump(config), env={}))


def report(request: OfflineRequest, config: dict[str, Any] = CONFIG, **kw: Any) -> dict[str, Any]:
    return explain_report(policy_of(config), request, **kw)


# ---------------------------------------------------------------------------------- explain


def test_claims_allowed_shows_every_step() -> None:
    r = report(
        OfflineRequest(
            "GET",
            "/api/orders?x=1",
            "api.example.com",
            [("X-User-Id", "mallory"), ("X-Auth-Role", "admin")],
            claims={"sub": "alice", "roles": ["user", "ops"]},
        )
    )
    assert r["path"] == {"canonical": "/api/orders"}
    assert [c["name"] for c in r["routes"]] == ["public", "closed", "admin", "users", "api", "docs", "legacy"]
    assert [c["matched"] for c in r["routes"]] == [False, False, False, False, True, False, False]
    assert r["route"]["name"] == "api" and r["route"]["auth"] == "required"
    assert r["verification"]["status"] == "assumed"
    assert r["rule"] is None
    headers = {h["name"]: h["value"] for h in r["claim_headers"]}
    assert headers["x-user-id"] == "alice" and headers["x-user-roles"] == "user,ops"
    assert "x-jwt-payload" in headers
    stripped = {h["name"]: h["why"] for h in r["stripped_headers"]}
    assert "claim header" in stripped["x-user-id"]
    assert "strip_prefixes" in stripped["x-auth-role"]
    assert r["upstream"] == {
        "origin": "http://127.0.0.1:9",
        "path": "/base/orders",
        "query": "x=1",
        "url": "http://127.0.0.1:9/base/orders?x=1",
    }
    assert r["decision"] == {"outcome": "allowed", "forwarded": True, "status": 200, "reason": "ok"}


def test_rule_conditions_are_listed_with_pass_and_fail() -> None:
    r = report(OfflineRequest("GET", "/admin/x", claims={"sub": "bob", "roles": ["admin"], "banned": True}))
    conditions = [(c["depth"], c["label"], c["passed"]) for c in r["rule"]["conditions"]]
    assert conditions == [
        (0, "all of", False),
        (1, 'claim roles contains "admin"', True),
        (1, "not", False),
        (2, "claim banned exists", True),
    ]
    assert r["decision"]["status"] == 403 and r["decision"]["reason"] == "rule_failed"
    assert r["decision"]["failed_condition"] == "not (claim banned exists)"
    assert r["claim_headers"] == [] and r["upstream"] is None
    text = render_explanation(r)
    assert "[FAIL] not" in text and '[pass] claim roles contains "admin"' in text
    assert "DENIED 403 rule_failed" in text


def test_path_parameters_feed_the_rule() -> None:
    r = report(OfflineRequest("GET", "/users/alice/settings", claims={"sub": "alice"}))
    assert r["route"]["params"] == {"id": "alice"} and r["decision"]["forwarded"]
    r = report(OfflineRequest("GET", "/users/bob/settings", claims={"sub": "alice"}))
    assert r["decision"]["reason"] == "rule_failed"
    # POST is not listed: the route is considered and explained, nothing matches.
    r = report(OfflineRequest("POST", "/users/alice/settings", claims={"sub": "alice"}))
    users = next(c for c in r["routes"] if c["name"] == "users")
    assert not users["matched"] and "method POST" in users["why"]
    assert r["decision"]["status"] == 404


def test_refused_path_says_why_and_considers_no_route() -> None:
    r = report(OfflineRequest("GET", "/public/../admin/x", claims={"sub": "a", "roles": ["admin"]}))
    assert "dot-segment" in r["path"]["refused"]
    assert r["routes"] == [] and r["route"] is None
    assert r["decision"]["status"] == 400 and r["decision"]["reason"] == "path_not_canonical"
    assert "REFUSED" in render_explanation(r)


@pytest.mark.parametrize(
    ("target", "status", "reason", "verification"),
    [
        ("/public/x", 200, "ok", "skipped"),
        ("/closed/x", 403, "route_denied", "skipped"),
        ("/nowhere", 404, "route_not_found", "skipped"),
        ("/api/x", 401, "token_missing", "refused"),
        ("/docs/x", 200, "ok", "none"),
        ("/legacy/x", 200, "token_missing", "refused"),
    ],
)
def test_anonymous_requests(target: str, status: int, reason: str, verification: str) -> None:
    r = report(OfflineRequest("GET", target))
    assert r["decision"]["status"] == status and r["decision"]["reason"] == reason
    assert r["verification"]["status"] == verification
    assert r["claim_headers"] == []


def test_report_only_shows_the_would_be_denial() -> None:
    r = report(OfflineRequest("GET", "/legacy/x", claims={"sub": "carol"}))
    d = r["decision"]
    assert d["outcome"] == "report_only" and d["forwarded"] and d["status"] == 200
    assert d["would_be_status"] == 403 and d["reason"] == "rule_failed"
    assert r["upstream"] is not None
    assert "REPORT-ONLY: forwarded, but would be denied with 403 rule_failed" in render_explanation(r)


def test_a_real_token_is_verified_and_never_printed(tmp_path: Path) -> None:
    token = hs_token(roles=["admin"])
    out = io.StringIO()
    code = explain(write_config(tmp_path), OfflineRequest("GET", "/admin/x", token=token), out=out)
    text = out.getvalue()
    assert code == 0
    assert token not in text and token.split(".")[2] not in text
    assert "verification: verified" in text and "signature and claims: verified (provider hs)" in text
    assert "issuer: 'https://hs.test' -> provider hs" in text
    assert "keys: hs (secret): 1 key(s)" in text
    assert "x-user-id: alice" in text
    assert (
        "authorization  (credentials: headers.forward_authorization is false)" in text
    )  # the token header is stripped before forwarding


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: hs_token(lifetime=-3600), "token_expired"),
        (lambda: hs_token(key="another-secret-of-at-least-32-bytes!!!"), "bad_signature"),
        (lambda: hs_token(aud="other"), "audience_mismatch"),
        (lambda: "not.a.jwt", "token_malformed"),
    ],
    ids=["expired", "forged", "audience", "garbage"],
)
def test_a_bad_token_is_refused_with_its_reason(make: Any, reason: str, tmp_path: Path) -> None:
    token = make()
    out = io.StringIO()
    code = explain(
        write_config(tmp_path), OfflineRequest("GET", "/api/x", token=token), as_json=True, out=out
    )
    assert code == 1
    assert token not in out.getvalue()
    r = json.loads(out.getvalue())
    assert r["decision"]["reason"] == reason and not r["decision"]["forwarded"]
    assert r["verification"]["status"] == "refused"
    assert r["rule"] is None and r["claims"] is None


def test_a_token_sent_as_a_header_is_verified_and_redacted(tmp_path: Path) -> None:
    token = hs_token()
    out = io.StringIO()
    request = OfflineRequest("GET", "/api/x", headers=[("Authorization", f"Bearer {token}")])
    assert explain(write_config(tmp_path), request, out=out) == 0
    assert token not in out.getvalue() and "<token>" not in out.getvalue()
    assert "signature and claims: verified" in out.getvalue()


def test_rule_is_evaluated_on_verified_claims_only(tmp_path: Path) -> None:
    r = report(OfflineRequest("GET", "/admin/x", token=hs_token(roles=["admin"], lifetime=-3600)))
    assert r["rule"]["evaluated"] is False and "token_expired" in r["rule"]["why"]
    assert r["claims"] is None


@pytest.mark.parametrize(
    ("token_settings", "where"),
    [
        ({"header": "X-Token", "scheme": ""}, (b"x-token", "{token}")),
        ({"header": "Authorization", "scheme": "JWT"}, (b"authorization", "jwt {token}")),
        ({"header": None, "cookie": "session"}, (b"cookie", "session={token}")),
        ({"header": None, "query": "jwt"}, None),
    ],
    ids=["bare_header", "other_scheme", "cookie", "query"],
)
def test_the_token_goes_where_the_route_looks_for_it(token_settings: dict[str, Any], where: Any) -> None:
    config = json.loads(json.dumps(CONFIG))
    config["providers"]["hs"]["token"] = token_settings
    policy = policy_of(config)
    token = hs_token()
    view = build_view(policy, OfflineRequest("GET", "/api/x?a=1", token=token))
    if where is None:
        assert view.query == f"a=1&jwt={token}".encode()
    else:
        name, value = where
        assert (name, value.format(token=token).encode()) in list(view.headers)
    r = explain_report(policy_of(config), OfflineRequest("GET", "/api/x?a=1", token=token))
    assert r["verification"]["status"] == "verified"


def test_a_query_token_is_redacted_from_the_upstream_url(tmp_path: Path) -> None:
    config = json.loads(json.dumps(CONFIG))
    config["providers"]["hs"]["token"] = {"header": None, "query": "jwt"}
    token = hs_token()
    for as_json in (False, True):
        out = io.StringIO()
        request = OfflineRequest("GET", "/api/x?a=1", token=token)
        assert explain(write_config(tmp_path, config), request, as_json=as_json, out=out) == 0
        assert token not in out.getvalue()
        assert "http://127.0.0.1:9/base/x?a=1&jwt=<token>" in out.getvalue()


def test_hop_by_hop_and_forwarding_headers_are_listed_as_stripped() -> None:
    headers = [
        ("Connection", "close, X-Trace"),
        ("X-Trace", "1"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X_Custom", "1"),
        ("X-Original-URL", "/admin"),
        ("Content-Length", "0"),
    ]
    r = report(OfflineRequest("GET", "/public/x", "h.test", headers))
    why = {h["name"]: h["why"] for h in r["stripped_headers"]}
    assert why["connection"] == "hop-by-hop"
    assert "nominated by Connection" in why["x-trace"]
    assert "regenerated" in why["x-forwarded-for"]
    assert "drop_underscore_headers" in why["x_custom"]
    assert "headers.strip" in why["x-original-url"]
    assert why["host"].startswith("replaced") and why["content-length"].startswith("replaced")


def test_remote_keys_are_fetched_like_in_production(tmp_path: Path) -> None:
    with JWKSServer() as idp:
        key = idp.add_key("RS256")
        config = json.loads(json.dumps(CONFIG))
        config["providers"]["idp"] = {
            "issuer": idp.issuer,
            "discovery": True,
            "algorithms": ["RS256"],
            "audiences": [AUD],
        }
        path = write_config(tmp_path, config)
        token = idp.mint(key, aud=AUD, roles=["admin"])
        out = io.StringIO()
        assert explain(path, OfflineRequest("GET", "/admin/x", token=token), out=out) == 0
        text = out.getvalue()
        assert "keys: idp (discovery): fetch ok, 1 key(s)" in text
        assert "signature and claims: verified (provider idp)" in text
        assert idp.fetch_count == 1
        # A public route never looks at the token: nothing is fetched for it.
        assert explain(path, OfflineRequest("GET", "/public/x", token=token), out=io.StringIO()) == 0
        assert idp.fetch_count == 1
        # The IdP is down: keys cannot be had, the answer is 503 as in production, and quickly.
        idp.go_down()
        out = io.StringIO()
        started = time.monotonic()
        assert explain(path, OfflineRequest("GET", "/admin/x", token=token), out=out, key_timeout=2) == 1
        assert time.monotonic() - started < 3
        assert "DENIED 503 keys_unavailable" in out.getvalue()
        assert "fetch connect_error" in out.getvalue()


def test_decide_with_claims_never_looks_for_a_token() -> None:
    pipeline = Pipeline(policy_of())
    view = RequestView("GET", b"/api/x", headers=[(b"authorization", b"Bearer a b c")])
    decision = pipeline.decide_with_claims(view, {"sub": "alice"})
    assert decision.allowed and decision.token is not None and decision.token.provider == "(claims)"
    public = pipeline.decide_with_claims(RequestView("GET", b"/public/x"), {"sub": "alice"})
    assert public.allowed and public.claim_headers == []  # public: no identity, claims or not


# ------------------------------------------------------------------------------ policy tests


@pytest.fixture
def config_path(tmp_path: Path) -> str:
    return write_config(tmp_path)


def write_tests(folder: Path, text: str, name: str = "policy_tests.yaml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def test_the_shipped_example_passes() -> None:
    out = io.StringIO()
    tests = str(ROOT / "config/examples/policy_tests.yaml")
    assert run_policy_tests(None, tests, out=out) == 0, out.getvalue()
    assert "FAIL" not in out.getvalue()
    assert load_policy_tests(tests).cases[0].name in out.getvalue()


def test_passing_and_failing_cases_are_reported(tmp_path: Path, config_path: str) -> None:
    tests = write_tests(
        tmp_path,
        """
cases:
  - name: admin allowed
    request: {path: /admin/x, headers: {X-User-Id: mallory}}
    claims: {sub: alice, roles: [admin]}
    expect: {status: 200, route: admin, headers: {X-User-Id: alice, x-user-roles: admin}}
  - name: wrong expectations
    request: {path: /admin/x}
    claims: {sub: bob, roles: [user]}
    expect:
      status: 200
      reason: ok
      outcome: allowed
      route: api
      upstream_path: /base/admin/x
      headers: {X-User-Id: bob, X-JWT-Payload: null}
  - name: anonymous
    request: {path: /api/x}
    expect: {status: 401, reason: token_missing}
  - name: no route
    request: {method: delete, path: /users/alice/x}
    claims: {sub: alice}
    expect: {status: 404, route: null}
""",
    )
    out = io.StringIO()
    assert run_policy_tests(config_path, tests, out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0] == "PASS  admin allowed"
    assert lines[1] == (
        "FAIL  wrong expectations: status 403, expected 200; reason rule_failed, expected ok; "
        "outcome denied, expected allowed; route admin, expected api; "
        'upstream path (not forwarded), expected /base/admin/x; header X-User-Id absent, expected "bob"'
    )
    assert lines[2] == "PASS  anonymous" and lines[3] == "PASS  no route"
    assert lines[-1].startswith("3 passed, 1 failed")


def test_token_cases_are_verified_for_real(
    tmp_path: Path, config_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, expired = hs_token(roles=["admin"]), hs_token(roles=["admin"], lifetime=-3600)
    tests = write_tests(
        tmp_path,
        """
cases:
  - name: good token
    request: {path: /admin/x}
    token: ${GOOD}
    expect: {status: 200, headers: {X-User-Id: alice}}
  - name: expired token
    request: {path: /admin/x}
    token: ${EXPIRED}
    expect: {status: 200}
""",
    )
    monkeypatch.setenv("GOOD", good)
    monkeypatch.setenv("EXPIRED", expired)
    out = io.StringIO()
    assert run_policy_tests(config_path, tests, out=out) == 1
    assert "PASS  good token" in out.getvalue()
    assert "FAIL  expired token: status 401, expected 200" in out.getvalue()
    assert good not in out.getvalue() and expired not in out.getvalue()


def test_a_bare_list_of_cases_and_a_relative_config(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    write_config(tmp_path / "conf")
    tests = write_tests(
        tmp_path,
        "config: conf/gateway.yaml\ncases:\n"
        "  - {name: a, request: {path: /public/x}, expect: {status: 200}}\n",
    )
    assert run_policy_tests(None, tests, out=io.StringIO()) == 0
    bare = write_tests(
        tmp_path, "- {name: a, request: {path: /public/x}, expect: {status: 200}}\n", "bare.yaml"
    )
    assert load_policy_tests(bare).cases[0].name == "a"


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "cases: [{name: a, request: {path: /x}, expect: {status: 200, stauts: 2}}]",
            "cases[0].expect.stauts",
            "unknown key",
        ),
        (
            "cases: [{name: a, request: {path: /x}, expect: {}}]",
            "cases[0].expect.status",
            "required key is missing",
        ),
        (
            "cases: [{name: a, request: {path: /x}, expect: {status: 999}}]",
            "cases[0].expect.status",
            "less than",
        ),
        (
            "cases: [{name: a, request: {path: /x}, claims: {}, token: t, expect: {status: 200}}]",
            "cases[0]",
            "not both",
        ),
        (
            "cases: [{name: a, request: {path: /x}, expect: {status: 200}},"
            " {name: a, request: {path: /y}, expect: {status: 200}}]",
            "cases",
            "two cases are named 'a'",
        ),
        ("cases: []", "cases", "at least 1"),
        (
            "cases: [{name: a, request: {path: /x, method: 'G T'}, expect: {status: 200}}]",
            "cases[0].request.method",
            "letters",
        ),
        (
            "cases: [{name: a, request: {path: /x}, token: '${NOPE}', expect: {status: 200}}]",
            "cases[0].token",
            "NOPE",
        ),
        (
            "cases: [{name: a, request: {path: /x, headers: {X User: a}}, expect: {status: 200}}]",
            "cases[0].request.headers",
            "is not a valid header name",
        ),
        (
            'cases: [{name: a, request: {path: /x, headers: {X-A: [ok, "a\\r\\nb"]}},'
            " expect: {status: 200}}]",
            "cases[0].request.headers",
            "contains CR, LF or NUL",
        ),
        ("cases: [{name: a, name: b}]", "line 1, column 19", "duplicate key"),
        ("cases: [", "line 1", "invalid YAML"),
        ("just text", "", "top level"),
    ],
    ids=[
        "unknown_key",
        "missing_status",
        "bad_status",
        "claims_and_token",
        "duplicate_names",
        "no_cases",
        "bad_method",
        "unset_env",
        "bad_header_name",
        "crlf_header_value",
        "duplicate_yaml_key",
        "bad_yaml",
        "not_a_mapping",
    ],
)
def test_an_invalid_test_file_is_one_line_naming_file_key_and_reason(
    text: str, where: str, message: str, tmp_path: Path
) -> None:
    path = write_tests(tmp_path, text)
    with pytest.raises(PolicyTestFileError) as caught:
        load_policy_tests(path, env={})
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: {where}") and message in line, line


def test_a_missing_test_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyTestFileError, match="cannot read the file"):
        load_policy_tests(str(tmp_path / "nope.yaml"))


def test_no_config_anywhere(tmp_path: Path) -> None:
    tests = write_tests(tmp_path, "cases: [{name: a, request: {path: /x}, expect: {status: 200}}]")
    with pytest.raises(PolicyTestFileError, match="no config to test"):
        run_policy_tests(None, tests, out=io.StringIO())


# ------------------------------------------------------------------------------------ check


def test_check_warns_about_a_shadowed_route(tmp_path: Path) -> None:
    config = json.loads(json.dumps(CONFIG))
    config["routes"].append({"name": "shadowed", "match": {"path": "/api/v1/**", "methods": ["GET"]}})
    out = io.StringIO()
    assert check(write_config(tmp_path, config), out=out) == 0
    assert (
        "warning: routes[7] (shadowed) can never match: routes[4] (api) comes first and matches "
        "everything it would" in out.getvalue()
    )
    assert "1 warning(s)" in out.getvalue()


def test_check_accepts_a_middleware_config_without_upstream(tmp_path: Path) -> None:
    config = {
        "mode": "middleware",
        "providers": {"hs": {"issuer": "https://hs.test", "secret": "s" * 32, "algorithms": ["HS256"]}},
        "routes": [
            {"name": "api", "match": {"path": "/api/**"}, "require": {"claim": "sub", "exists": True}}
        ],
    }
    config["providers"]["hs"]["audience"] = "any"
    assert check(write_config(tmp_path, config), out=io.StringIO()) == 0
    # The same routes in proxy mode need an upstream.
    with pytest.raises(ConfigError, match=r"routes\[0\].*no upstream"):
        check(write_config(tmp_path, {**config, "mode": "proxy"}), out=io.StringIO())


def test_check_warns_when_a_lenient_backend_would_serve_a_protected_path_to_a_public_route(
    tmp_path: Path,
) -> None:
    provider = {"issuer": "https://hs.test", "secret": "s" * 32, "algorithms": ["HS256"], "audience": "any"}
    config = {
        "upstream": "http://127.0.0.1:9",
        "providers": {"hs": provider},
        "routes": [
            {"name": "secret", "match": {"path": "/secret"}},
            {"name": "api", "match": {"path": "/api/**"}},  # wildcards cover their variants
            {"name": "everything", "match": {"path": "/**"}, "auth": "public"},
        ],
    }
    out = io.StringIO()
    assert check(write_config(tmp_path, config), out=out) == 0
    text = out.getvalue()
    assert (
        "warning: routes[0] (secret) protects /secret exactly, but /secret/ is matched by routes[2]" in text
    )
    assert "but /SECRET is matched by routes[2] (everything, auth: public)" in text
    assert "routes[1] (api) protects" not in text
    assert "2 warning(s)" in text
    # Without the public catch-all the variants are simply unmatched (404): nothing to warn about.
    config["routes"] = config["routes"][:2]
    out = io.StringIO()
    assert check(write_config(tmp_path, config), out=out) == 0
    assert "warning" not in out.getvalue()
