"""The config schema itself (gateway/config/models.py): security-relevant defaults, frozen models,
unknown keys refused, and the validators of each model. (One-line error formatting, tenants and
the admin/listen port clash: tests/config/test_loader.py; HMAC/public-key algorithm mixing:
tests/auth/test_catalogue.py; documented defaults: tests/config/test_example.py.)"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from gateway.config import models
from gateway.config.models import (
    Admin,
    Algorithm,
    ClaimCondition,
    ForwardAuth,
    GatewayConfig,
    Headers,
    JWKSOptions,
    Match,
    Provider,
    Proxy,
    Route,
    ScopeCondition,
    Strict,
    TokenLocation,
    UpstreamTLS,
)

RS_PROVIDER: dict[str, Any] = {
    "issuer": "https://idp.test",
    "jwks_uri": "https://idp.test/jwks.json",
    "algorithms": ["RS256"],
    "audiences": ["api"],
}
SECRET = "s" * 32


def refused(model: type[BaseModel], data: Any, fragment: str) -> None:
    """``model`` refuses ``data`` with a message containing ``fragment``."""
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    assert fragment in str(info.value), str(info.value)


def provider(**changes: Any) -> dict[str, Any]:
    data = {**RS_PROVIDER, **changes}
    return {k: v for k, v in data.items() if v is not None}


# ------------------------------------------------------------------------------------ defaults


def test_security_relevant_defaults() -> None:
    cfg = GatewayConfig()
    assert (cfg.admin.enabled, cfg.admin.host, cfg.admin.port) == (True, "127.0.0.1", 9901)
    assert cfg.mode == "proxy" and cfg.unmatched_status == 404
    assert cfg.proxy.trusted_proxies == []
    assert cfg.proxy.preserve_host is False
    assert cfg.proxy.tls.verify is True
    assert (cfg.proxy.head_timeout, cfg.proxy.body_timeout) == (10.0, 60.0)
    assert cfg.proxy.max_body_bytes == 10 * 1024 * 1024
    assert cfg.proxy.max_head_bytes == 16 * 1024
    assert cfg.max_token_bytes == 8 * 1024
    assert cfg.headers.forward_authorization is False
    assert cfg.headers.drop_underscore_headers is True
    assert cfg.headers.payload_header is None
    assert cfg.headers.strip == ["X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override"]
    assert cfg.paths.normalize == []  # ambiguous paths are refused, not resolved
    assert (cfg.token_cache.enabled, cfg.token_cache.ttl, cfg.token_cache.max_entries) == (
        True,
        300.0,
        10_000,
    )
    assert cfg.forward_auth.enabled is False
    assert cfg.forward_auth.trusted_sources == ["127.0.0.1/32", "::1/128"]
    assert cfg.logging.subject_claim == "sub"


def test_provider_defaults() -> None:
    p = Provider.model_validate(RS_PROVIDER)
    assert (p.require_exp, p.leeway, p.max_lifetime) == (True, 30.0, None)
    assert (p.allow_weak_secret, p.allow_insecure_jwks, p.required) == (False, False, True)
    assert (p.token.header, p.token.scheme) == ("Authorization", "Bearer")
    assert (p.token.cookie, p.token.query, p.token.websocket_protocol) == (None, None, False)
    assert (p.jwks.min_refresh_interval, p.jwks.max_stale, p.jwks.max_bytes) == (30.0, 3600.0, 256 * 1024)


def test_route_defaults_deny_nothing_away() -> None:
    r = Route.model_validate({"match": {"path": "/x"}})
    assert (r.auth, r.enforce, r.providers, r.require) == ("required", True, None, None)
    assert (r.cors_preflight, r.close_on_expiry) == (False, True)


def test_each_top_level_default_is_a_fresh_object() -> None:
    # default_factory, not a shared instance: two configs never share a list.
    assert GatewayConfig().proxy.trusted_proxies is not GatewayConfig().proxy.trusted_proxies
    assert GatewayConfig().headers.strip is not GatewayConfig().headers.strip


# ------------------------------------------------------------------------ frozen, extra=forbid

#: Every config model of the module.
STRICT_MODELS = [
    cls
    for _, cls in inspect.getmembers(models, inspect.isclass)
    if issubclass(cls, Strict) and cls is not Strict and cls.__module__ == models.__name__
]


def test_every_model_is_found() -> None:
    assert len(STRICT_MODELS) >= 20 and GatewayConfig in STRICT_MODELS and ClaimCondition in STRICT_MODELS


@pytest.mark.parametrize("model", STRICT_MODELS, ids=[m.__name__ for m in STRICT_MODELS])
def test_every_model_is_frozen_and_refuses_unknown_keys(model: type[Strict]) -> None:
    assert model.model_config.get("frozen") is True
    assert model.model_config.get("extra") == "forbid"
    # A provider checks for its issuer first (a before-validator): give it one.
    data: dict[str, Any] = {"issuer": None} if model is Provider else {}
    with pytest.raises(ValidationError) as info:
        model.model_validate({**data, "bogus_key": 1})
    assert any(e["type"] == "extra_forbidden" and e["loc"] == ("bogus_key",) for e in info.value.errors())


def test_assignment_is_refused() -> None:
    cfg = GatewayConfig()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.realm = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        cfg.proxy.tls.verify = False  # type: ignore[misc]
    p = Provider.model_validate(RS_PROVIDER)
    with pytest.raises(ValidationError, match="frozen"):
        p.algorithms = ["HS256"]  # type: ignore[misc]
    assert cfg.proxy.tls.verify is True and p.algorithms == ["RS256"]


# ----------------------------------------------------------------------------------- providers


def test_the_algorithm_list_has_no_none_in_any_spelling() -> None:
    allowed = typing.get_args(Algorithm)
    assert allowed and not [a for a in allowed if a.lower() == "none"]
    for spelling in ("none", "None", "NONE", "nOnE"):
        refused(Provider, provider(algorithms=[spelling]), "algorithms.0")


def test_an_algorithm_list_is_required_and_not_empty() -> None:
    refused(Provider, provider(algorithms=[]), "algorithms")
    data = dict(RS_PROVIDER)
    del data["algorithms"]
    refused(Provider, data, "algorithms")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"jwks_uri": None}, "found 0: none"),
        ({"public_key_file": "k.pem"}, "found 2: jwks_uri, public_key_file"),
        ({"discovery": True}, "found 2: discovery, jwks_uri"),
        ({"jwks_file": "k.json", "secret_file": "s"}, "found 3: jwks_uri, jwks_file, secret_file"),
        ({"discovery": False, "jwks_uri": None}, "found 0: none"),
    ],
    ids=["none", "two", "discovery_too", "three", "discovery_false_is_no_source"],
)
def test_exactly_one_key_source(changes: dict[str, Any], fragment: str) -> None:
    refused(Provider, provider(**changes), "exactly one key source is required")
    refused(Provider, provider(**changes), fragment)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"audiences": None}, "write exactly one of `audiences: [...]` or `audience: any`"),
        ({"audience": "any"}, "write exactly one of `audiences: [...]` or `audience: any`"),
        ({"audiences": []}, "audiences must not be empty"),
        ({"audiences": None, "audience": "api"}, "audience"),  # only the literal `any`
    ],
    ids=["neither", "both", "empty", "audience_not_any"],
)
def test_audiences_or_audience_any(changes: dict[str, Any], fragment: str) -> None:
    refused(Provider, provider(**changes), fragment)


def test_audience_any_alone_is_accepted() -> None:
    p = Provider.model_validate(provider(audiences=None, audience="any"))
    assert (p.audiences, p.audience) == (None, "any")


def test_the_issuer_must_be_written() -> None:
    data = dict(RS_PROVIDER)
    del data["issuer"]
    refused(Provider, data, "issuer is required")
    refused(Provider, provider(issuer=""), "issuer must not be empty")
    assert Provider.model_validate({**RS_PROVIDER, "issuer": None}).issuer is None  # explicit null


def test_discovery_needs_an_issuer() -> None:
    data = {**provider(jwks_uri=None, discovery=True), "issuer": None}
    refused(Provider, data, "discovery needs an issuer")


def test_a_secret_is_bound_to_one_hmac_algorithm() -> None:
    hs = {"issuer": "https://hs.test", "secret": SECRET, "algorithms": ["HS256"], "audience": "any"}
    assert Provider.model_validate(hs).algorithms == ["HS256"]
    refused(Provider, {**hs, "algorithms": ["HS256", "HS384"]}, "exactly one algorithm")
    refused(Provider, {**hs, "algorithms": ["EdDSA"]}, "only be used with HS256/HS384/HS512")
    jwks = provider(algorithms=["HS512"])
    refused(Provider, jwks, "HS512 needs `secret` or `secret_file`")


def test_a_secret_is_never_echoed_by_repr_or_dump() -> None:
    p = Provider.model_validate(
        {
            "issuer": "https://hs.test",
            "secret": "top-secret-" + SECRET,
            "algorithms": ["HS256"],
            "audience": "any",
        }
    )
    assert "top-secret" not in repr(p) and "top-secret" not in str(p.model_dump())
    assert p.secret is not None and p.secret.get_secret_value() == "top-secret-" + SECRET


@pytest.mark.parametrize(
    ("tenant", "ok"), [("a" * 64, True), ("a" * 65, False), ("-lead", False), ("t.1_x-y", True)]
)
def test_tenant_ids_are_bounded(tenant: str, ok: bool) -> None:
    data = provider(issuer="https://login.test/{tenantid}/v2.0", tenants=[tenant])
    if ok:
        assert Provider.model_validate(data).tenants == [tenant]
    else:
        refused(Provider, data, "is not a tenant ID")


def test_jwks_options_are_ordered() -> None:
    refused(JWKSOptions, {"min_ttl": "2h", "max_ttl": "1h"}, "min_ttl must not exceed max_ttl")
    refused(JWKSOptions, {"retry_backoff": 0}, "retry_backoff must be > 0")
    refused(JWKSOptions, {"retry_backoff": "2m", "retry_backoff_max": "1m"}, "retry_backoff must be > 0")
    assert JWKSOptions.model_validate({"min_ttl": "1h", "max_ttl": "1h"}).min_ttl == 3600.0


# ------------------------------------------------------------------------------ header names


@pytest.mark.parametrize("name", ["X User", "X-User:", "", "X-Üser", "X-User\r\n", "X(User)"])
def test_header_names_are_tokens(name: str) -> None:
    refused(Headers, {"claims": {name: "sub"}}, "is not a valid HTTP header name")
    refused(Headers, {"strip": [name]}, "is not a valid HTTP header name")
    refused(Headers, {"strip_prefixes": [name]}, "is not a valid HTTP header name")
    refused(TokenLocation, {"header": name}, "is not a valid HTTP header name")


def test_a_header_name_with_a_trailing_newline_is_refused() -> None:
    refused(Headers, {"claims": {"X-User-Id\n": "sub"}}, "is not a valid HTTP header name")


def test_a_method_with_a_trailing_newline_is_refused() -> None:
    refused(Match, {"path": "/x", "methods": ["GET\n"]}, "is not an HTTP method")


def test_claim_header_shorthand_and_mapping() -> None:
    h = Headers.model_validate({"claims": {"X-User-Id": "sub", "X-Roles": {"claim": ["realm", "roles"]}}})
    assert h.claims["X-User-Id"].claim == "sub" and h.claims["X-User-Id"].encode == "csv"
    assert h.claims["X-Roles"].claim == ["realm", "roles"]
    assert h.claims["X-User-Id"].non_ascii == "rfc8187" and h.claims["X-User-Id"].max_bytes == 4096
    refused(Headers, {"claims": {"X-A": {"claim": "a", "encode": "xml"}}}, "encode")


# -------------------------------------------------------------------------- rules and routes


def test_a_claim_condition_needs_exactly_one_operator() -> None:
    refused(ClaimCondition, {"claim": "role"}, "exactly one operator")
    refused(ClaimCondition, {"claim": "role", "equals": "a", "exists": True}, "exactly one operator")
    refused(ClaimCondition, {"claim": "role", "matches": "("}, "invalid regular expression")
    assert ClaimCondition.model_validate({"claim": "role", "in": ["a", "b"]}).operator() == "in"
    assert ClaimCondition.model_validate({"claim": "n", "ge": 3}).operator() == "ge"


def test_scope_condition_splits_a_scope_string() -> None:
    assert ScopeCondition.model_validate({"scope": "a  b c"}).scopes() == ("a", "b", "c")
    assert ScopeCondition.model_validate({"scope": ["a", "b"], "match": "any"}).scopes() == ("a", "b")


def test_a_rule_needs_a_known_kind() -> None:
    refused(Route, {"match": {"path": "/x"}, "require": {"role": "admin"}}, "a rule needs one of the keys")
    nested = {
        "match": {"path": "/x"},
        "require": {"all": [{"not": {"scope": "a"}}, {"any": [{"scope": "b"}]}]},
    }
    assert Route.model_validate(nested).require is not None
    refused(Route, {"match": {"path": "/x"}, "require": {"all": []}}, "all")


def test_match_validation() -> None:
    refused(Match, {"path": "x/**"}, "a path pattern must start with /")
    refused(Match, {"path": "/x", "methods": []}, "methods must not be empty")
    refused(Match, {"path": "/x", "methods": ["GE T"]}, "is not an HTTP method")
    assert Match.model_validate({"path": "/x", "methods": ["get", "Post"]}).methods == ["GET", "POST"]


@pytest.mark.parametrize("prefix", ["api", "/api/", "api/"])
def test_route_prefixes_are_whole_segments(prefix: str) -> None:
    refused(Route, {"match": {"path": "/api/**"}, "strip_prefix": prefix}, "a prefix must start with /")
    refused(Route, {"match": {"path": "/api/**"}, "add_prefix": prefix}, "a prefix must start with /")


@pytest.mark.parametrize("auth", ["public", "deny"])
def test_require_on_a_route_that_never_checks_a_token_is_refused(auth: str) -> None:
    route = {"match": {"path": "/x"}, "auth": auth, "require": {"scope": "a"}}
    refused(Route, route, f"`require` has no effect on an `auth: {auth}` route")


# ------------------------------------------------------------------------- proxy and the rest


def test_upstream_tls_cert_and_key_go_together() -> None:
    refused(UpstreamTLS, {"cert_file": "c.pem"}, "cert_file and key_file go together")
    refused(UpstreamTLS, {"key_file": "k.pem"}, "cert_file and key_file go together")
    assert UpstreamTLS.model_validate({"cert_file": "c.pem", "key_file": "k.pem"}).verify is True


@pytest.mark.parametrize("cidr", ["10.0.0.0/33", "example.com", "10.0.0", "*"])
def test_trusted_networks_are_cidrs(cidr: str) -> None:
    refused(Proxy, {"trusted_proxies": [cidr]}, "is not an IP network (CIDR)")
    refused(ForwardAuth, {"trusted_sources": [cidr]}, "is not an IP network (CIDR)")


def test_proxy_bounds() -> None:
    refused(Proxy, {"max_connections": 0}, "max_connections")
    refused(Proxy, {"max_concurrency": 0}, "max_concurrency")
    refused(Proxy, {"head_timeout": -1}, "a duration cannot be negative")
    refused(Proxy, {"max_body_bytes": "10 parsecs"}, "expected a size")
    assert Proxy.model_validate({"max_body_bytes": None}).max_body_bytes is None  # explicit: no limit
    assert Proxy.model_validate({"max_body_bytes": "1MiB", "head_timeout": "500ms"}).head_timeout == 0.5


@pytest.mark.parametrize("path", ["_auth", "/_auth?x=1", "/_auth#f"])
def test_forward_auth_path(path: str) -> None:
    refused(ForwardAuth, {"path": path}, "the forward-auth path must start with / and have no query")


@pytest.mark.parametrize("port", [-1, 65536])
def test_ports_are_bounded(port: int) -> None:
    refused(Admin, {"port": port}, "port")
    refused(GatewayConfig, {"listen": {"port": port}}, "listen.port")


@pytest.mark.parametrize("realm", ['a"b', "a\\b", "a\r\nb", "réalm", "a\x00"])
def test_realm_is_printable_ascii_without_quotes(realm: str) -> None:
    refused(GatewayConfig, {"realm": realm}, "realm must be printable ASCII")


def test_issuers_are_unique_and_one_provider_at_most_has_none() -> None:
    twins = {"a": RS_PROVIDER, "b": RS_PROVIDER}
    refused(GatewayConfig, {"providers": twins}, "providers 'a' and 'b' have the same issuer")
    no_iss = {
        "a": {**RS_PROVIDER, "issuer": None},
        "b": {**RS_PROVIDER, "issuer": None, "jwks_uri": "https://other.test/jwks.json"},
    }
    refused(GatewayConfig, {"providers": no_iss}, "only one provider may have `issuer: null`")


@pytest.mark.parametrize(
    ("key", "value"),
    [("mode", "gateway"), ("unmatched_status", 500), ("paths", {"normalize": ["fold_case"]})],
)
def test_closed_choices(key: str, value: Any) -> None:
    refused(GatewayConfig, {key: value}, key)
