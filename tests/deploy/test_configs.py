"""Everything under config/: it parses, the example gateway configs pass ``jwt-gateway check``
and decide the way their comments say, the Kubernetes sidecar is consistent with the image and
its own gateway.yaml, and the nginx snippet passes ``nginx -t`` and does its job in a real nginx
(against a stub forward-auth service; the end-to-end test with the real gateway is separate).
"""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from gateway.config.loader import load_config, parse_config
from gateway.config.models import GatewayConfig
from gateway.errors import ConfigError
from gateway.pipeline import Pipeline, RequestView
from gateway.policy import build_policy
from gateway.tools import check

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
EXAMPLES = ROOT / "config" / "examples"
SIDECAR = CONFIG / "kubernetes" / "sidecar.yaml"
NGINX_SNIPPET = CONFIG / "nginx" / "auth_request.conf"
TRAEFIK_FILE = CONFIG / "traefik" / "forward-auth.yaml"
TRAEFIK_CRD = CONFIG / "traefik" / "middleware-crd.yaml"
DOCKERFILE = ROOT / "Dockerfile"

YAML_FILES = sorted(p for p in CONFIG.rglob("*") if p.suffix in (".yaml", ".yml"))
#: The deployment examples this module documents (each one's header says how to run it).
DEPLOYMENT_EXAMPLES = [
    EXAMPLES / f"{name}.yaml"
    for name in ("keycloak", "auth0", "azure-ad", "google", "django-simplejwt", "forward-auth")
]


def _is_gateway_config(path: Path) -> bool:
    """A YAML mapping whose top-level keys are all gateway.yaml options (not, e.g., a policy
    test file next to the configs)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return isinstance(data, dict) and set(data) <= set(GatewayConfig.model_fields)


#: Every gateway config under config/examples, whoever wrote it.
EXAMPLE_CONFIGS = sorted(p for p in EXAMPLES.glob("*.yaml") if _is_gateway_config(p))

DJANGO_SECRET = "django-insecure-0123456789abcdefghijklmnopqrstuvwxyz"

#: Every variable the examples need, with plausible values.
EXAMPLE_ENV = {
    "DJANGO_JWT_SECRET": DJANGO_SECRET,
    "KEYCLOAK_ISSUER": "https://keycloak.example.com/realms/myrealm",
    "KEYCLOAK_AUDIENCE": "orders-api",
    "AUTH0_DOMAIN": "example.eu.auth0.com",
    "AUTH0_AUDIENCE": "https://orders.example.com",
    "AZURE_TENANT_ID": "11111111-1111-1111-1111-111111111111",
    "AZURE_PARTNER_TENANT_ID": "22222222-2222-2222-2222-222222222222",
    "AZURE_CLIENT_ID": "33333333-3333-3333-3333-333333333333",
    "GOOGLE_CLIENT_ID": "1234567890-abc.apps.googleusercontent.com",
    "OIDC_ISSUER": "https://idp.example.com/realms/main",
    "OIDC_AUDIENCE": "orders-api",
}

_REQUIRED_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _NoDuplicatesLoader(yaml.SafeLoader):
    """SafeLoader refusing duplicate keys: in a manifest as in a policy, the second silently wins."""


def _mapping(loader: _NoDuplicatesLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {duplicates}", node.start_mark)
    return {k: loader.construct_object(v, deep=deep) for k, (_, v) in zip(keys, node.value, strict=True)}


_NoDuplicatesLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _documents(path: Path) -> list[dict[str, Any]]:
    docs = [
        d
        for d in yaml.load_all(path.read_text(encoding="utf-8"), Loader=_NoDuplicatesLoader)
        if d is not None
    ]
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs)
    return docs


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ------------------------------------------------------------------------------ all of config/


def test_config_holds_the_deployment_files() -> None:
    names = {_rel(p) for p in YAML_FILES}
    expected = {
        "config/kubernetes/sidecar.yaml",
        "config/traefik/forward-auth.yaml",
        "config/traefik/middleware-crd.yaml",
        *(_rel(p) for p in DEPLOYMENT_EXAMPLES),
    }
    assert expected <= names
    assert set(DEPLOYMENT_EXAMPLES) <= set(EXAMPLE_CONFIGS)
    assert NGINX_SNIPPET.is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_every_yaml_file_under_config_parses(path: Path) -> None:
    _documents(path)


def test_no_secret_has_a_default_value() -> None:
    # ${VAR:-default} for a secret would run with a guessable key when the variable is unset.
    for path in [*YAML_FILES, ROOT / "gateway.example.yaml"]:
        for name in re.findall(r"\$\{([A-Za-z0-9_]+):-", path.read_text(encoding="utf-8")):
            assert not re.search(r"SECRET|KEY|PASSWORD|TOKEN", name), f"{_rel(path)}: ${{{name}:-...}}"


# --------------------------------------------------------------------------- example configs


def _check(path: Path) -> str:
    """``jwt-gateway check --config path`` in-process: the output, or ConfigError raised.

    The output stream is passed explicitly: ``check``'s default binds the sys.stdout of the
    moment gateway.tools was imported, which under pytest's capture may be a closed stream.
    """
    out = io.StringIO()
    assert check(str(path), out=out) == 0
    text = out.getvalue()
    assert f"{path}: OK" in text
    assert "warning:" not in text, text
    return text


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=_rel)
def test_example_passes_jwt_gateway_check(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    _check(path)


@pytest.mark.parametrize("path", DEPLOYMENT_EXAMPLES, ids=_rel)
def test_example_says_what_it_is_and_how_to_run_it(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    header = "\n".join(line for line in text.splitlines() if line.startswith("#")).split("\n\n")[0]
    assert text.startswith("# jwt-gateway "), "the first line says what the file is for"
    lead = text[: text.index("\n\n")]
    assert f"jwt-gateway check --config {_rel(path)}" in lead
    assert f"jwt-gateway serve --config {_rel(path)}" in lead
    # Every variable without a default is named in the opening comment, with an example value.
    for name in set(_REQUIRED_VAR.findall(text)):
        assert f"export {name}=" in header, f"{name} is not explained at the top of {_rel(path)}"


@pytest.mark.parametrize("path", DEPLOYMENT_EXAMPLES, ids=_rel)
def test_example_refuses_to_load_without_its_variables(path: Path) -> None:
    for name in set(_REQUIRED_VAR.findall(path.read_text(encoding="utf-8"))):
        env = {k: v for k, v in EXAMPLE_ENV.items() if k != name}
        with pytest.raises(ConfigError, match=f"environment variable {name} is not set"):
            load_config(path, env=env)


def _example(name: str) -> GatewayConfig:
    return load_config(EXAMPLES / f"{name}.yaml", env=EXAMPLE_ENV)


def _pipeline(name: str) -> Pipeline:
    path = EXAMPLES / f"{name}.yaml"
    return Pipeline(build_policy(load_config(path, env=EXAMPLE_ENV), base_dir=path))


def _decide(
    pipeline: Pipeline, method: str, path: str, claims: Mapping[str, Any]
) -> tuple[int, dict[str, str]]:
    """(status, claim headers) for a request whose token verified to ``claims``."""
    decision = pipeline.decide_with_claims(RequestView(method=method, raw_path=path.encode()), dict(claims))
    status = 200 if decision.error is None else decision.error.status
    return status, {k.decode(): v.decode() for k, v in decision.claim_headers}


def test_keycloak_example() -> None:
    provider = _example("keycloak").providers["keycloak"]
    assert provider.discovery and provider.algorithms == ["RS256"]
    # Keycloak's header typ is "JWT" for every token: the check is on the payload's typ.
    assert provider.typ is None
    assert provider.claims == {"typ": "Bearer"}
    assert "account" not in (provider.audiences or [])

    pipeline = _pipeline("keycloak")
    user = {
        "sub": "u1",
        "preferred_username": "alice",
        "realm_access": {"roles": ["user"]},
        "resource_access": {"orders-api": {"roles": ["orders-writer"]}},
        "scope": "openid orders:write",
    }
    status, headers = _decide(pipeline, "GET", "/api/orders/1", user)
    assert status == 200
    assert headers["x-user-roles"] == "user" and headers["x-client-roles"] == "orders-writer"
    assert _decide(pipeline, "POST", "/api/orders", user)[0] == 200
    assert _decide(pipeline, "POST", "/api/orders", {**user, "scope": "openid"})[0] == 403
    assert _decide(pipeline, "GET", "/admin/users", user)[0] == 403
    assert _decide(pipeline, "GET", "/admin/users", {**user, "realm_access": {"roles": ["admin"]}})[0] == 200


def test_auth0_example() -> None:
    provider = _example("auth0").providers["auth0"]
    assert provider.issuer == "https://example.eu.auth0.com/", "Auth0's iss ends with a slash"
    assert provider.audiences == ["https://orders.example.com"]

    pipeline = _pipeline("auth0")
    user = {
        "sub": "auth0|1",
        "permissions": ["read:orders", "write:orders"],
        "scope": "openid",
        "https://example.com/roles": ["admin", "staff"],
    }
    status, headers = _decide(pipeline, "GET", "/api/orders/1", user)
    assert status == 200
    assert headers["x-user-roles"] == "admin,staff"
    assert headers["x-user-permissions"] == "read:orders,write:orders"
    assert _decide(pipeline, "GET", "/api/orders/1", {"sub": "x", "scope": "read:orders"})[0] == 200
    assert _decide(pipeline, "GET", "/api/orders/1", {"sub": "x", "scope": "openid"})[0] == 403
    assert _decide(pipeline, "POST", "/api/orders", user)[0] == 200
    machine = {**user, "gty": "client-credentials"}
    assert _decide(pipeline, "POST", "/api/orders", machine)[0] == 403
    assert _decide(pipeline, "GET", "/admin/x", user)[0] == 200
    assert _decide(pipeline, "GET", "/admin/x", {**user, "https://example.com/roles": ["staff"]})[0] == 403


def test_azure_ad_example_is_one_multi_tenant_provider_with_listed_tenants() -> None:
    cfg = _example("azure-ad")
    (provider,) = cfg.providers.values()
    assert provider.issuer == "https://login.microsoftonline.com/{tenantid}/v2.0"
    assert provider.tenants == [EXAMPLE_ENV["AZURE_TENANT_ID"], EXAMPLE_ENV["AZURE_PARTNER_TENANT_ID"]]
    assert provider.jwks_uri == "https://login.microsoftonline.com/common/discovery/v2.0/keys"
    assert provider.audiences == [EXAMPLE_ENV["AZURE_CLIENT_ID"]]

    pipeline = _pipeline("azure-ad")
    # scp is a space-delimited string in Entra tokens.
    status, headers = _decide(
        pipeline, "GET", "/api/orders/7", {"oid": "o1", "tid": "t", "scp": "Orders.Read User.Read"}
    )
    assert status == 200 and headers["x-user-id"] == "o1"
    assert _decide(pipeline, "GET", "/api/orders/7", {"oid": "app", "roles": ["Orders.Read.All"]})[0] == 200
    assert _decide(pipeline, "GET", "/api/orders/7", {"oid": "o1", "scp": "User.Read"})[0] == 403


def test_azure_ad_admin_route_takes_only_the_home_tenant() -> None:
    pipeline = _pipeline("azure-ad")
    admin = {"oid": "o1", "roles": ["Orders.Admin"]}
    assert _decide(pipeline, "GET", "/admin/x", {**admin, "tid": EXAMPLE_ENV["AZURE_TENANT_ID"]})[0] == 200
    assert (
        _decide(pipeline, "GET", "/admin/x", {**admin, "tid": EXAMPLE_ENV["AZURE_PARTNER_TENANT_ID"]})[0]
        == 403
    )


def test_google_example() -> None:
    cfg = _example("google")
    issuers = {p.issuer for p in cfg.providers.values()}
    assert issuers == {"https://accounts.google.com", "accounts.google.com"}
    assert {p.jwks_uri for p in cfg.providers.values()} == {"https://www.googleapis.com/oauth2/v3/certs"}
    assert all(p.audiences == [EXAMPLE_ENV["GOOGLE_CLIENT_ID"]] for p in cfg.providers.values())

    pipeline = _pipeline("google")
    verified = {"sub": "1089", "email": "a@example.com", "email_verified": True, "hd": "example.com"}
    assert _decide(pipeline, "GET", "/anything", verified)[0] == 200
    # Type-strict: the string "true" is not the boolean true.
    assert _decide(pipeline, "GET", "/anything", {**verified, "email_verified": "true"})[0] == 403
    assert _decide(pipeline, "GET", "/anything", {**verified, "email_verified": False})[0] == 403
    assert _decide(pipeline, "GET", "/internal/x", verified)[0] == 200
    assert _decide(pipeline, "GET", "/internal/x", {**verified, "hd": "other.com"})[0] == 403


def test_django_simplejwt_example_schema() -> None:
    provider = _example("django-simplejwt").providers["django"]
    assert provider.issuer is None and provider.algorithms == ["HS256"] and provider.audience == "any"
    assert provider.claims == {"token_type": "access"}
    assert provider.secret is not None and provider.secret.get_secret_value() == DJANGO_SECRET
    assert _example("django-simplejwt").headers.claims["X-User-Id"].claim == "user_id"


_MINT_SIMPLEJWT = """
import json, sys
import django
from django.conf import settings
secret = sys.argv[1]
settings.configure(
    SECRET_KEY=secret,
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "rest_framework_simplejwt"],
    SIMPLE_JWT={"SIGNING_KEY": secret},
)
django.setup()
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken
access, refresh = AccessToken(), RefreshToken()
access["user_id"] = refresh["user_id"] = 42
print(json.dumps({"access": str(access), "refresh": str(refresh)}))
"""


def test_django_simplejwt_example_accepts_real_simplejwt_access_tokens_only() -> None:
    # Tokens minted by djangorestframework-simplejwt itself (in a subprocess: django.setup()
    # is global state), with the example's default settings.
    minted = subprocess.run(
        [sys.executable, "-c", _MINT_SIMPLEJWT, DJANGO_SECRET],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert minted.returncode == 0, minted.stderr
    tokens = json.loads(minted.stdout)
    pipeline = _pipeline("django-simplejwt")

    def decide(token: str | None) -> tuple[int, dict[str, str]]:
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        decision = pipeline.decide_blocking(
            RequestView(method="GET", raw_path=b"/api/orders", headers=headers)
        )
        status = 200 if decision.error is None else decision.error.status
        return status, {k.decode(): v.decode() for k, v in decision.claim_headers}

    assert decide(tokens["access"]) == (200, {"x-user-id": "42"})
    assert decide(tokens["refresh"])[0] == 401, "a refresh token is not an access token"
    assert decide(None)[0] == 401
    forged = jwt.encode(
        {"token_type": "access", "user_id": 1, "exp": int(time.time()) + 60}, "x" * 40, "HS256"
    )
    assert decide(forged)[0] == 401


def test_forward_auth_example() -> None:
    cfg = _example("forward-auth")
    assert cfg.forward_auth.enabled and cfg.forward_auth.path == "/_auth"
    assert cfg.listen.host == "127.0.0.1", "only the local proxy needs to reach it"
    assert set(cfg.forward_auth.trusted_sources) == {"127.0.0.1/32", "::1/128"}


# ------------------------------------------------------------------------- Kubernetes sidecar


def _kinds(path: Path) -> dict[str, dict[str, Any]]:
    by_kind: dict[str, dict[str, Any]] = {}
    for doc in _documents(path):
        assert doc["kind"] not in by_kind, f"one {doc['kind']} per file keeps this test simple"
        by_kind[doc["kind"]] = doc
    return by_kind


@pytest.fixture(scope="module")
def sidecar() -> dict[str, dict[str, Any]]:
    return _kinds(SIDECAR)


def _containers(sidecar: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in sidecar["Deployment"]["spec"]["template"]["spec"]["containers"]}


def _mounted_at(
    sidecar: Mapping[str, dict[str, Any]], container: Mapping[str, Any], volume_kind: str
) -> tuple[str, dict[str, Any]]:
    """(mountPath, volume) of the container's mount of the one volume of ``volume_kind``."""
    volumes = {v["name"]: v for v in sidecar["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if volume_kind in volumes[m["name"]]]
    assert mount.get("readOnly") is True and "subPath" not in mount, mount
    return mount["mountPath"], volumes[mount["name"]]


def _sidecar_gateway_yaml(sidecar: Mapping[str, dict[str, Any]]) -> str:
    data = sidecar["ConfigMap"]["data"]
    assert set(data) == {"gateway.yaml"}
    text: str = data["gateway.yaml"]
    return text


def test_sidecar_gateway_yaml_passes_jwt_gateway_check(
    sidecar: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    gateway = _containers(sidecar)["jwt-gateway"]
    secret_dir, volume = _mounted_at(sidecar, gateway, "secret")
    (item,) = volume["secret"]["items"]
    assert volume["secret"]["secretName"] == sidecar["Secret"]["metadata"]["name"]
    mounted_file = f"{secret_dir}/{item['path']}"
    text = _sidecar_gateway_yaml(sidecar)
    cfg = parse_config(text, file="sidecar.yaml:gateway.yaml", env={})
    (provider,) = cfg.providers.values()
    assert provider.secret_file == mounted_file, "the config reads the key where the Secret is mounted"

    # The Secret's key, written where the pod would see it (here: a temp dir).
    key_file = tmp_path / "hmac-key"
    key_file.write_text(sidecar["Secret"]["stringData"][item["key"]], encoding="utf-8")
    config = tmp_path / "gateway.yaml"
    config.write_text(text.replace(mounted_file, str(key_file)), encoding="utf-8")
    _check(config)


def test_sidecar_wires_config_ports_and_probes(sidecar: dict[str, dict[str, Any]]) -> None:
    cfg = parse_config(_sidecar_gateway_yaml(sidecar), env={})
    containers = _containers(sidecar)
    gateway, app = containers["jwt-gateway"], containers["app"]

    # The config is mounted where the image's CMD reads it.
    config_dir, volume = _mounted_at(sidecar, gateway, "configMap")
    (item,) = volume["configMap"]["items"]
    assert volume["configMap"]["name"] == sidecar["ConfigMap"]["metadata"]["name"]
    assert gateway["args"] == ["serve", "--config", f"{config_dir}/{item['path']}"]
    assert f'"{config_dir}/{item["path"]}"' in DOCKERFILE.read_text(encoding="utf-8")

    # The app: loopback only, reached by the gateway over the pod's shared network namespace.
    assert cfg.upstream == "http://127.0.0.1:8000"
    assert "127.0.0.1:8000" in " ".join(app.get("args", []) + app.get("command", []))
    assert "ports" not in app

    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert ports == {"http": cfg.listen.port, "admin": cfg.admin.port}
    assert cfg.listen.host == "0.0.0.0"
    # The kubelet probes the pod IP: the admin listener must not be loopback-only.
    assert cfg.admin.enabled and cfg.admin.host == "0.0.0.0"
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}

    # The Service exposes the gateway's port and nothing else.
    service = sidecar["Service"]["spec"]
    assert service["selector"] == sidecar["Deployment"]["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in service["ports"]] in (["http"], [cfg.listen.port])


def test_sidecar_security_context_and_resources(sidecar: dict[str, dict[str, Any]]) -> None:
    pod = sidecar["Deployment"]["spec"]["template"]["spec"]
    uid = re.search(r"^USER (\d+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert uid is not None
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid.group(1)), "the image's uid"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), container["name"]
        assert "memory" in container["resources"]["limits"], container["name"]
    gateway = _containers(sidecar)["jwt-gateway"]
    _, secret_volume = _mounted_at(sidecar, gateway, "secret")
    assert secret_volume["secret"]["defaultMode"] & 0o007 == 0, "the key is not world-readable"


def test_sidecar_grace_period_outlasts_the_gateways_drain(sidecar: dict[str, dict[str, Any]]) -> None:
    cfg = parse_config(_sidecar_gateway_yaml(sidecar), env={})
    pod = sidecar["Deployment"]["spec"]["template"]["spec"]
    command = _containers(sidecar)["jwt-gateway"]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(command[1]) + cfg.proxy.shutdown_timeout


# ----------------------------------------------------------------------------------- Traefik


def _claim_header_names() -> list[str]:
    return list(_example("forward-auth").headers.claims)


def test_traefik_forward_auth_matches_the_gateway() -> None:
    cfg = _example("forward-auth")
    dynamic = _documents(TRAEFIK_FILE)[0]["http"]
    middlewares = dynamic["middlewares"]
    forward = middlewares["jwt-gateway"]["forwardAuth"]
    assert forward["address"] == f"http://{cfg.listen.host}:{cfg.listen.port}{cfg.forward_auth.path}"
    assert forward["trustForwardHeader"] is False
    assert forward["authResponseHeaders"] == _claim_header_names()
    (router,) = dynamic["routers"].values()
    assert router["middlewares"] == ["strip-identity-headers", "jwt-gateway", "drop-token"]
    assert middlewares["drop-token"]["headers"]["customRequestHeaders"] == {"Authorization": ""}
    stripped = middlewares["strip-identity-headers"]["headers"]["customRequestHeaders"]
    _assert_strips_every_spelling(stripped, _claim_header_names())


def _assert_strips_every_spelling(stripped: Mapping[str, str], names: list[str]) -> None:
    assert set(stripped.values()) == {""}, "an empty value removes the header"
    have = {k.lower() for k in stripped}
    for name in names:
        parts = name.lower().split("-")
        spellings = {parts[0]}
        for part in parts[1:]:
            spellings = {s + sep + part for s in spellings for sep in "-_"}
        assert spellings <= have, f"{name}: {sorted(spellings - have)} not removed"


def test_traefik_crds_match_the_file_provider_variant() -> None:
    docs = _documents(TRAEFIK_CRD)
    middlewares = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Middleware"}
    forward = middlewares["jwt-gateway"]["forwardAuth"]
    assert forward["address"].endswith(":8080/_auth")
    assert forward["trustForwardHeader"] is False
    assert forward["authResponseHeaders"] == _claim_header_names()
    _assert_strips_every_spelling(
        middlewares["strip-identity-headers"]["headers"]["customRequestHeaders"], _claim_header_names()
    )
    (route,) = [d for d in docs if d["kind"] == "IngressRoute"]
    names = [m["name"] for m in route["spec"]["routes"][0]["middlewares"]]
    assert names == ["strip-identity-headers", "jwt-gateway", "drop-token"]
    assert middlewares["drop-token"]["headers"]["customRequestHeaders"] == {"Authorization": ""}


# ------------------------------------------------------------------------------------- nginx


def test_nginx_snippet_asks_the_gateways_forward_auth_path_for_every_claim_header() -> None:
    cfg = _example("forward-auth")
    text = NGINX_SNIPPET.read_text(encoding="utf-8")
    directives = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert f"server {cfg.listen.host}:{cfg.listen.port};" in directives
    assert f"proxy_pass http://jwt_gateway{cfg.forward_auth.path};" in directives
    for required in (
        "internal;",
        "proxy_pass_request_body off;",
        'proxy_set_header Content-Length "";',
        "proxy_set_header X-Original-URI $request_uri;",
        "proxy_set_header X-Original-Method $request_method;",
        "underscores_in_headers off;",
    ):
        assert required in directives, required
    for name in _claim_header_names():
        variable = name.lower().replace("-", "_")
        match = re.search(rf"auth_request_set \$(\w+) \$upstream_http_{variable};", directives)
        assert match, f"{name} is not read from the gateway's answer"
        assert f"proxy_set_header {name} ${match.group(1)};" in directives, f"{name} is not set from it"


def _nginx() -> str | None:
    found = shutil.which("nginx")
    if found is None:
        found = next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    return found


def _nginx_conf(directory: Path, snippet: Path) -> Path:
    temp = {name: directory / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(
        f"""pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {snippet};
}}
""",
        encoding="utf-8",
    )
    return conf


def test_nginx_snippet_passes_nginx_t(tmp_path: Path) -> None:
    nginx = _nginx()
    if nginx is None:
        pytest.skip("nginx is not installed")
    conf = _nginx_conf(tmp_path, NGINX_SNIPPET)
    result = subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# nginx with the snippet, against a stub forward-auth service and a stub app.


class _Stub:
    """A threaded HTTP server on 127.0.0.1 answering with ``respond(handler) -> (status, headers, body)``."""

    def __init__(self, respond: Any) -> None:
        self.requests: list[dict[str, Any]] = []
        self.closed = False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = {
                    "method": self.command,
                    "path": self.path,
                    "headers": self.headers.items(),
                    "body": body,
                }
                outer.requests.append(seen)
                status, headers, payload = respond(seen)
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_HEAD = _any

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving; idempotent."""
        if not self.closed:
            self.closed = True
            self.server.shutdown()
            self.server.server_close()


def _forward_auth_stub(seen: Mapping[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """Decides by the original URI's first segment, as the gateway would by route."""
    uri = dict(seen["headers"]).get("X-Original-URI", "")
    if uri.startswith("/ok"):
        return 200, [("X-User-Id", "alice"), ("X-User-Roles", "reader,writer")], b""
    if uri.startswith("/public"):
        return 200, [], b""
    if uri.startswith("/forbidden"):
        return 403, [("WWW-Authenticate", 'Bearer realm="jwt-gateway", error="insufficient_scope"')], b"{}"
    if uri.startswith("/keys-down"):
        return 503, [("Retry-After", "7")], b"{}"
    if uri.startswith("/ambiguous"):
        return 400, [], b"{}"
    if uri.startswith("/unrouted"):
        return 404, [], b"{}"
    return 401, [("WWW-Authenticate", 'Bearer realm="jwt-gateway"')], b"{}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def nginx_in_front(tmp_path: Path) -> Iterator[tuple[str, _Stub, _Stub]]:
    """(nginx base URL, forward-auth stub, app stub) with the snippet as written, ports changed."""
    nginx = _nginx()
    if nginx is None:
        pytest.skip("nginx is not installed")
    auth, app = (
        _Stub(_forward_auth_stub),
        _Stub(
            lambda seen: (200, [], json.dumps({"path": seen["path"], "headers": seen["headers"]}).encode())
        ),
    )
    port = _free_port()
    text = NGINX_SNIPPET.read_text(encoding="utf-8")
    for old, new in (
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{auth.port};"),
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{app.port};"),
        ("listen 80;", f"listen 127.0.0.1:{port};"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    snippet = tmp_path / "auth_request.conf"
    snippet.write_text(text, encoding="utf-8")
    conf = _nginx_conf(tmp_path, snippet)
    process = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, (tmp_path / "error.log").read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", auth, app
    finally:
        process.send_signal(signal.SIGTERM)  # fast shutdown: workers exit with the master
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        auth.close()
        app.close()


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(
    url: str, *, method: str = "GET", headers: Mapping[str, str] | None = None, body: bytes | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _NO_PROXY.open(request, timeout=10) as response:
            return response.status, response.headers.items(), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.items(), error.read()


def _values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def test_nginx_snippet_forwards_the_gateways_claim_headers_only(
    nginx_in_front: tuple[str, _Stub, _Stub],
) -> None:
    base, auth, app = nginx_in_front
    spoofed = {"X-User-Id": "mallory", "x-user-roles": "admin", "Authorization": "Bearer t0ken"}
    status, _, body = _get(f"{base}/ok/orders?id=1", method="POST", headers=spoofed, body=b"payload")
    assert status == 200
    seen = json.loads(body)
    upstream = [(k.lower(), v) for k, v in seen["headers"]]
    assert [v for k, v in upstream if k == "x-user-id"] == ["alice"]
    assert [v for k, v in upstream if k == "x-user-roles"] == ["reader,writer"]
    assert not [k for k, _ in upstream if k == "authorization"], "the token stays with nginx and the gateway"
    assert seen["path"] == "/ok/orders?id=1"

    (asked,) = auth.requests
    asked_headers = dict(asked["headers"])
    assert (asked["method"], asked["path"], asked["body"]) == ("GET", "/_auth", b"")
    assert asked_headers["X-Original-Method"] == "POST"
    assert asked_headers["X-Original-URI"] == "/ok/orders?id=1"
    assert asked_headers["Host"] == asked_headers["X-Forwarded-Host"] == "127.0.0.1"
    assert asked_headers["Authorization"] == "Bearer t0ken"
    assert "Content-Length" not in asked_headers

    # Allowed without identity (a public route): the client's identity headers still never arrive.
    status, _, body = _get(f"{base}/public/x", headers=spoofed)
    assert status == 200
    assert not [k for k, _ in json.loads(body)["headers"] if k.lower().startswith("x-user-")]
    # Underscore spellings are dropped by nginx itself.
    status, _, body = _get(f"{base}/public/x", headers={"X_User_Id": "mallory"})
    assert status == 200
    assert not [k for k, _ in json.loads(body)["headers"] if k.lower().startswith(("x-user", "x_user"))]


def test_nginx_snippet_passes_the_gateways_refusals_on(nginx_in_front: tuple[str, _Stub, _Stub]) -> None:
    base, _, app = nginx_in_front
    status, headers, _ = _get(f"{base}/private")
    assert status == 401
    assert _values(headers, "WWW-Authenticate") == ['Bearer realm="jwt-gateway"'], "exactly one challenge"
    status, headers, _ = _get(f"{base}/forbidden")
    assert status == 403
    assert _values(headers, "WWW-Authenticate") == ['Bearer realm="jwt-gateway", error="insufficient_scope"']
    status, headers, _ = _get(f"{base}/keys-down")
    assert status == 503 and _values(headers, "Retry-After") == ["7"]
    assert _get(f"{base}/ambiguous")[0] == 400
    assert _get(f"{base}/unrouted")[0] == 404
    # The auth location is internal.
    assert _get(f"{base}/_jwt_gateway_auth")[0] == 404
    assert app.requests == [], "nothing refused reached the app"


def test_nginx_snippet_fails_closed_when_the_gateway_is_down(
    nginx_in_front: tuple[str, _Stub, _Stub],
) -> None:
    base, auth, app = nginx_in_front
    auth.close()
    status, headers, _ = _get(f"{base}/ok/x")
    assert status == 503
    assert not _values(headers, "Retry-After")
    assert app.requests == []
