"""Config loading: YAML strictness, ${VAR} substitution, one-line errors with key paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import check_servable, format_loc, load_config, parse_config, substitute_env
from gateway.errors import ConfigError

PROVIDER = """
providers:
  corp:
    issuer: https://idp.example.com
    jwks_uri: https://idp.example.com/jwks.json
    algorithms: [RS256]
    audiences: [api]
"""


def error_of(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="gw.yaml", env=env or {})
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith("gw.yaml: ")
    return line


def test_minimal_config_is_valid() -> None:
    cfg = parse_config(PROVIDER + "routes: [{match: {path: /a/**}}]\n", env={})
    assert cfg.providers["corp"].leeway == 30.0
    assert cfg.routes[0].auth == "required"


def test_unknown_key_names_the_key_path() -> None:
    line = error_of(PROVIDER + "routes:\n  - match: {path: /a}\n    requre: {claim: x, exists: true}\n")
    assert line == "gw.yaml: routes[0].requre: unknown key"


def test_nested_rule_error_path_drops_union_tags() -> None:
    text = PROVIDER + "routes:\n  - match: {path: /a}\n    require: {all: [{claim: r, bogus: 1}]}\n"
    assert error_of(text) == "gw.yaml: routes[0].require.all[0].bogus: unknown key"


def test_wrong_type_names_the_key_path() -> None:
    line = error_of("listen: {port: eighty}\n")
    assert line.startswith("gw.yaml: listen.port: ")
    assert "integer" in line


def test_missing_env_var_names_the_key_path() -> None:
    text = PROVIDER.replace("https://idp.example.com/jwks.json", "${JWKS_URL}")
    assert error_of(text) == "gw.yaml: providers.corp.jwks_uri: environment variable JWKS_URL is not set"


def test_env_substitution_with_default_and_escape() -> None:
    text = PROVIDER.replace("https://idp.example.com/jwks.json", "${JWKS_URL:-https://x/j}") + "realm: a$$b\n"
    cfg = parse_config(text, env={})
    assert cfg.providers["corp"].jwks_uri == "https://x/j"
    assert cfg.realm == "a$b"
    cfg = parse_config(text, env={"JWKS_URL": "https://y/j"})
    assert cfg.providers["corp"].jwks_uri == "https://y/j"


def test_env_value_cannot_inject_yaml_structure() -> None:
    out = substitute_env({"a": "${V}"}, {"V": "x\nb: injected"})
    assert out == {"a": "x\nb: injected"}


def test_duplicate_keys_are_refused() -> None:
    line = error_of("realm: a\nrealm: b\n")
    assert "duplicate key 'realm'" in line and "line 2" in line


def test_invalid_yaml_names_the_line() -> None:
    line = error_of("listen: {port: 1\n")
    assert "line 2, column 1: invalid YAML" in line


def test_top_level_must_be_a_mapping() -> None:
    assert error_of("- a\n- b\n") == "gw.yaml: the top level must be a mapping"


def test_several_errors_are_counted_on_one_line() -> None:
    line = error_of("listen: {port: x}\nadmin: {port: y}\n")
    assert "(and 1 more error)" in line


def test_secret_value_is_not_echoed() -> None:
    text = (
        "providers:\n  dj:\n    issuer: null\n    secret: s3cr3t-value-that-must-not-leak\n"
        "    algorithms: [RS256]\n    audience: any\n"
    )
    line = error_of(text)
    assert "s3cr3t" not in line
    assert line.startswith("gw.yaml: providers.dj: ")


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("routes", 2, "require", "<claim>", "claim"), "routes[2].require.claim"),
        (("providers", "corp", "jwks", "timeout"), "providers.corp.jwks.timeout"),
        ((), ""),
    ],
)
def test_format_loc(loc: tuple[int | str, ...], expected: str) -> None:
    assert format_loc(loc) == expected


def test_load_config_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert str(info.value).endswith("missing.yaml: cannot read the file: No such file or directory")


def test_load_config_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(PROVIDER)
    assert load_config(path, env={}).providers["corp"].issuer == "https://idp.example.com"


def test_a_middleware_config_is_not_servable() -> None:
    cfg = parse_config("mode: middleware\n" + PROVIDER + "routes: [{match: {path: /a/**}}]\n", env={})
    with pytest.raises(ConfigError) as info:
        check_servable(cfg, "gw.yaml")
    assert str(info.value).startswith("gw.yaml: mode: this config is for the in-process middleware")
    check_servable(parse_config(PROVIDER + "routes: [{match: {path: /a/**}}]\n", env={}))  # proxy: fine


def test_the_admin_listener_needs_a_port_of_its_own() -> None:
    line = error_of(
        "listen: {port: 8080}\nadmin: {port: 8080}\n" + PROVIDER + "routes: [{match: {path: /a/**}}]\n"
    )
    assert "admin.port and listen.port are both 8080" in line
    # Disabled, or both on any free port: no clash.
    parse_config(
        "listen: {port: 8080}\nadmin: {port: 8080, enabled: false}\n" + PROVIDER + "routes: []\n", env={}
    )
    parse_config("listen: {port: 0}\nadmin: {port: 0}\n" + PROVIDER + "routes: []\n", env={})


TENANT_PROVIDER = """
providers:
  entra:
    issuer: https://login.microsoftonline.com/{{tenantid}}/v2.0
    jwks_uri: https://login.microsoftonline.com/common/discovery/v2.0/keys
    algorithms: [RS256]
    audiences: [api]
{extra}
routes: []
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("", "a {tenantid} issuer needs `tenants:"),
        ("    tenants: []", "tenants must not be empty"),
        ("    tenants: [a/b]", "is not a tenant ID"),
        ("    tenants: [any-tenant, '']", "is not a tenant ID"),
    ],
    ids=["no_tenants", "empty", "slash", "empty_id"],
)
def test_a_tenant_issuer_needs_a_tenant_list(extra: str, message: str) -> None:
    assert message in error_of(TENANT_PROVIDER.format(extra=extra))


def test_tenant_issuer_rules() -> None:
    cfg = parse_config(TENANT_PROVIDER.format(extra="    tenants: any"), env={})
    assert cfg.providers["entra"].tenants == "any"
    twice = TENANT_PROVIDER.replace("/v2.0", "/{{tenantid}}").format(extra="    tenants: any")
    assert "{tenantid} once" in error_of(twice)
    discovery = TENANT_PROVIDER.replace(
        "jwks_uri: https://login.microsoftonline.com/common/discovery/v2.0/keys", "discovery: true"
    )
    assert "no discovery document of its own" in error_of(discovery.format(extra="    tenants: any"))
    plain = PROVIDER.replace("audiences: [api]", "audiences: [api]\n    tenants: [t1]")
    assert "tenants needs an issuer with a {tenantid} placeholder" in error_of(plain + "routes: []\n")
