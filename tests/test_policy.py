"""Compiling a config into a Policy (gateway/policy.py), without servers: which routes need an
upstream, compile-time errors and the file they name, the request target sent upstream, the
credentials removed before forwarding, upstream TLS, and the readiness view of the key sources.
(The one-line CLI form of compile errors: tests/test_cli.py; prefix rewriting on the wire:
tests/e2e/test_proxy_fidelity.py.)"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from gateway.config.loader import parse_config
from gateway.config.models import GatewayConfig
from gateway.errors import ConfigError
from gateway.policy import CompiledRoute, Policy, Upstream, build_policy

SECRET = "s" * 32
HS = {"issuer": "https://hs.test", "secret": SECRET, "algorithms": ["HS256"], "audience": "any"}
NO_UPSTREAM = "no upstream: set routes[].upstream or the top-level upstream"


def config(**top: Any) -> GatewayConfig:
    data: dict[str, Any] = {"providers": {"hs": HS}, "routes": [{"match": {"path": "/api/**"}}]}
    data.update(top)
    return GatewayConfig.model_validate(data)


def route_for(policy: Policy, path: str, method: str = "GET") -> CompiledRoute:
    found = policy.routes.match(method, path, None)
    assert found is not None, path
    return found.payload


def compile_error(cfg: GatewayConfig, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build_policy(cfg, **kwargs)
    return info.value


# ------------------------------------------------------------------------ require_upstream


def test_proxy_mode_needs_an_upstream_for_every_forwarding_route() -> None:
    error = compile_error(config())
    assert (error.path, error.message) == ("routes[0]", NO_UPSTREAM)


@pytest.mark.parametrize("mode", ["forward_auth", "middleware"])
def test_modes_that_never_forward_need_no_upstream(mode: str) -> None:
    policy = build_policy(config(mode=mode))
    assert route_for(policy, "/api/x").upstream is None
    assert policy.upstream_ssl is None


def test_require_upstream_overrides_the_mode() -> None:
    assert route_for(build_policy(config(), require_upstream=False), "/api/x").upstream is None
    assert compile_error(config(mode="middleware"), require_upstream=True).path == "routes[0]"


def test_a_deny_route_needs_no_upstream_even_in_proxy_mode() -> None:
    cfg = config(routes=[{"match": {"path": "/admin/**"}, "auth": "deny"}])
    assert route_for(build_policy(cfg), "/admin/x").upstream is None


def test_an_upstream_written_in_a_non_forwarding_mode_is_still_checked() -> None:
    policy = build_policy(config(mode="middleware", upstream="http://app.internal:8000/base"))
    upstream = route_for(policy, "/api/x").upstream
    assert upstream is not None and upstream.base_path == "/base"
    assert compile_error(config(mode="middleware", upstream="http://app/x?y=1")).path == "upstream"


# ------------------------------------------------------------------- errors and the file named


def test_a_compile_error_names_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"  # need not exist: the suffix says it is a file
    error = compile_error(config(), base_dir=path)
    assert str(error) == f"{path}: routes[0]: {NO_UPSTREAM}"
    assert error.file == str(path)


def test_a_compile_error_names_an_existing_file_whatever_its_suffix(tmp_path: Path) -> None:
    path = tmp_path / "gateway.conf"
    path.write_text("")
    assert compile_error(config(), base_dir=path).file == str(path)


def test_a_directory_base_names_no_file(tmp_path: Path) -> None:
    assert str(compile_error(config(), base_dir=tmp_path)) == f"routes[0]: {NO_UPSTREAM}"
    assert str(compile_error(config())) == f"routes[0]: {NO_UPSTREAM}"


def test_unknown_provider_and_tokenless_routes_are_refused() -> None:
    cfg = config(upstream="http://app", routes=[{"match": {"path": "/a"}, "providers": ["hs", "nope"]}])
    error = compile_error(cfg)
    assert (error.path, error.message) == ("routes[0].providers[1]", "unknown provider 'nope'")
    cfg = config(upstream="http://app", providers={}, routes=[{"match": {"path": "/a"}, "auth": "optional"}])
    assert compile_error(cfg).path == "routes[0].auth"
    # A public route needs no provider.
    build_policy(
        config(upstream="http://app", providers={}, routes=[{"match": {"path": "/a"}, "auth": "public"}])
    )


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("ftp://app", "upstream"),
        ("http://app/base?x=1", "upstream"),
        ("http://app/base#frag", "upstream"),
        ("http://user:pw@app", "upstream"),
        ("unix:relative.sock", "upstream"),
    ],
)
def test_a_bad_upstream_url_names_where_it_was_written(url: str, where: str) -> None:
    error = compile_error(config(upstream=url))
    assert error.path == where and error.message.startswith("invalid upstream URL: ")
    per_route = config(routes=[{"match": {"path": "/a"}, "upstream": url}])
    assert compile_error(per_route).path == "routes[0].upstream"


@pytest.mark.parametrize(
    ("token", "where"),
    [
        ({"cookie": "jetón"}, "providers.hs.token.cookie"),
        ({"query": "tokén"}, "providers.hs.token.query"),
        ({"query": "a&b"}, "providers.hs.token.query"),
        ({"scheme": "Bearér"}, "providers.hs.token.scheme"),
    ],
)
def test_a_bad_token_location_is_a_one_line_config_error(token: dict[str, str], where: str) -> None:
    # Refused by the schema, before anything is compiled (it used to crash the compile).
    data = {"upstream": "http://app", "providers": {"hs": {**HS, "token": token}}, "routes": []}
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(data, allow_unicode=True), file="gw.yaml", env={})
    assert str(info.value).startswith(f"gw.yaml: {where}: ")


# ------------------------------------------------------------------------------- upstreams


def test_a_route_upstream_overrides_the_default_and_equal_urls_share_one_upstream() -> None:
    cfg = config(
        upstream="http://default:8000",
        routes=[
            {"match": {"path": "/a/**"}},
            {"match": {"path": "/b/**"}, "upstream": "http://other:9000/v1/"},
            {"match": {"path": "/c/**"}, "upstream": "http://other:9000/v1/"},
        ],
    )
    policy = build_policy(cfg)
    a, b, c = (route_for(policy, p) for p in ("/a/x", "/b/x", "/c/x"))
    assert (a.origin.host, a.origin.port) == ("default", 8000)
    assert (b.origin.host, b.origin.port, b.upstream.base_path if b.upstream else None) == (
        "other",
        9000,
        "/v1",
    )
    assert b.upstream is c.upstream


def test_upstream_parse() -> None:
    assert Upstream.parse("http://h:81/a/b/").base_path == "/a/b"
    assert Upstream.parse("https://h").origin.scheme == "https"
    unix = Upstream.parse("unix:/run/app.sock")
    assert unix.base_path == "" and unix.origin.scheme == "unix"
    with pytest.raises(ValueError):
        Upstream.parse("http://h/?q")


def test_http_only_upstreams_build_no_tls_context() -> None:
    assert build_policy(config(upstream="http://app")).upstream_ssl is None


def test_an_https_upstream_builds_a_verifying_tls_context() -> None:
    context = build_policy(config(upstream="https://app.internal")).upstream_ssl
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_the_tls_context_follows_proxy_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    tls = {"ca_file": "ca.pem"}  # relative: resolved against the config's directory
    policy = build_policy(config(upstream="https://app", proxy={"tls": tls}), base_dir=tmp_path / "gw.yaml")
    assert policy.upstream_ssl is not None
    assert len(policy.upstream_ssl.get_ca_certs()) == 1  # the bundle replaced the system store
    off = build_policy(config(upstream="https://app", proxy={"tls": {"verify": False}})).upstream_ssl
    assert off is not None and off.verify_mode == ssl.CERT_NONE and not off.check_hostname


def test_a_missing_ca_file_is_a_config_error_naming_proxy_tls(tmp_path: Path) -> None:
    cfg = config(upstream="https://app", proxy={"tls": {"ca_file": "missing-ca.pem"}})
    error = compile_error(cfg, base_dir=tmp_path / "gw.yaml")
    assert error.path == "proxy.tls" and error.file == str(tmp_path / "gw.yaml")
    assert error.message.startswith("cannot build the upstream TLS context")
    # Not looked at while no upstream speaks TLS.
    build_policy(config(upstream="http://app", proxy={"tls": {"ca_file": "missing-ca.pem"}}))


# ---------------------------------------------------------------------- the upstream target

PREFIX_ROUTES = [
    {"name": "strip", "match": {"path": "/api/**"}, "strip_prefix": "/api"},
    {"name": "add", "match": {"path": "/add/**"}, "add_prefix": "/v2"},
    {"name": "both", "match": {"path": "/svc/**"}, "strip_prefix": "/svc", "add_prefix": "/internal"},
    {"name": "base", "match": {"path": "/b/**"}, "upstream": "http://app/base"},
    {"name": "plain", "match": {"path": "/**"}},
]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/orders", b"/orders"),
        ("/api", b"/"),
        ("/api/", b"/"),
        ("/add/x", b"/v2/add/x"),
        ("/svc/a/b", b"/internal/a/b"),
        ("/svc", b"/internal"),
        ("/b/x", b"/base/b/x"),
        ("/apix", b"/apix"),  # only whole segments are stripped (this one is route "plain")
        ("/", b"/"),
    ],
)
def test_upstream_target_applies_the_prefix_rewrite(path: str, expected: bytes) -> None:
    policy = build_policy(config(upstream="http://app", routes=PREFIX_ROUTES))
    assert route_for(policy, path).upstream_target(path, b"") == expected


def test_upstream_target_keeps_the_query_byte_for_byte_minus_token_parameters() -> None:
    providers = {"hs": {**HS, "token": {"query": "access_token"}}}
    policy = build_policy(config(upstream="http://app", providers=providers, routes=PREFIX_ROUTES))
    strip = route_for(policy, "/api/x")
    assert strip.credential_query == frozenset({b"access_token"})
    assert strip.upstream_target("/api/x", b"a=%2F1&access_token=eyJ.x.y&b=") == b"/x?a=%2F1&b="
    assert strip.upstream_target("/api/x", b"access_token=eyJ.x.y") == b"/x"
    assert strip.upstream_target("/api/x", b"z=1&z=2") == b"/x?z=1&z=2"


def test_forward_authorization_keeps_query_and_cookie_tokens() -> None:
    providers = {"hs": {**HS, "token": {"query": "access_token", "cookie": "session"}}}
    cfg = config(upstream="http://app", providers=providers, headers={"forward_authorization": True})
    route = route_for(build_policy(cfg), "/api/x")
    assert (route.credential_query, route.credential_cookies) == (frozenset(), frozenset())
    assert route.upstream_target("/api/x", b"access_token=t") == b"/api/x?access_token=t"


def test_every_providers_credential_locations_are_stripped_on_every_route() -> None:
    providers = {
        "hs": {**HS, "token": {"cookie": "session"}},
        "other": {**HS, "issuer": "https://other.test", "token": {"cookie": "other_session", "query": "tok"}},
    }
    routes = [
        {"match": {"path": "/only-hs/**"}, "providers": ["hs"]},
        {"match": {"path": "/pub/**"}, "auth": "public"},
    ]
    policy = build_policy(config(upstream="http://app", providers=providers, routes=routes))
    # A route that accepts only hs still strips other's cookie and query token (never verified
    # there, so never passed on) and the standard access_token parameter (RFC 6750 §2.3).
    only_hs = route_for(policy, "/only-hs/x")
    assert only_hs.credential_cookies == frozenset({b"session", b"other_session"})
    assert only_hs.credential_query == frozenset({b"tok", b"access_token"})
    # A public route never reads a token, but one sent to it is still stripped.
    public = route_for(policy, "/pub/x")
    assert public.credential_cookies == frozenset({b"session", b"other_session"})
    assert public.credential_query == frozenset({b"tok", b"access_token"})


def test_route_flags_are_compiled_with_their_defaults() -> None:
    routes = [
        {"match": {"path": "/a/**"}},
        {"name": "keep", "match": {"path": "/b/**"}, "preserve_host": False, "enforce": False},
    ]
    policy = build_policy(config(upstream="http://app", routes=routes, proxy={"preserve_host": True}))
    a, b = route_for(policy, "/a/x"), route_for(policy, "/b/x")
    assert (a.name, a.index, a.preserve_host, a.enforce, a.providers) == ("route0", 0, True, True, None)
    assert (b.name, b.index, b.preserve_host, b.enforce) == ("keep", 1, False, False)


# --------------------------------------------------------------------------- runtime helpers


@pytest.mark.parametrize(("status", "title"), [(404, "Not Found"), (401, "Unauthorized"), (403, "Forbidden")])
def test_route_not_found_follows_unmatched_status(status: int, title: str) -> None:
    error = build_policy(config(upstream="http://app", unmatched_status=status)).route_not_found()
    assert (error.status, error.title, error.reason) == (status, title, "route_not_found")


def test_retry_is_for_idempotent_methods_and_only_when_enabled() -> None:
    on = build_policy(config(upstream="http://app", proxy={"retry_on_connect_failure": True}))
    assert [m for m in ("GET", "HEAD", "PUT", "DELETE", "POST", "PATCH") if on.retry_allowed(m)] == [
        "GET",
        "HEAD",
        "PUT",
        "DELETE",
    ]
    assert not build_policy(config(upstream="http://app")).retry_allowed("GET")


def test_key_status_shape() -> None:
    providers = {"hs": HS, "spare": {**HS, "issuer": "https://spare.test", "required": False}}
    status = build_policy(config(upstream="http://app", providers=providers)).key_status()
    assert set(status) == {"hs", "spare"}
    hs = status["hs"]
    assert (hs["provider"], hs["source"], hs["ready"], hs["keys"], hs["required"]) == (
        "hs",
        "secret",
        True,
        1,
        True,
    )
    assert {"rejected_keys", "age", "expires_in", "stale"} <= set(hs)
    assert status["spare"]["required"] is False
    assert SECRET not in repr(status)


class FakeEvents:
    """Records the policy's metric hooks."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def token_cache_hit(self) -> None:
        self.calls.append("hit")

    def token_cache_miss(self) -> None:
        self.calls.append("miss")

    def __getattr__(self, name: str) -> Any:  # key-source events: not looked at here
        return lambda *args, **kwargs: None


def test_token_cache_hooks_are_wired_only_when_the_cache_is_on() -> None:
    events = FakeEvents()
    policy = build_policy(config(upstream="http://app"), events=events)
    assert policy.verifier.on_cache_hit == events.token_cache_hit
    assert policy.verifier.on_cache_miss == events.token_cache_miss
    off = build_policy(config(upstream="http://app", token_cache={"enabled": False}), events=events)
    assert off.verifier.on_cache_hit is None and off.verifier.on_cache_miss is None
