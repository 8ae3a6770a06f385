"""The admin app: liveness, readiness (and why not), metrics, methods."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.asgi import GatewayApp
from gateway.config.models import GatewayConfig
from gateway.http.admin import AdminApp
from gateway.policy import build_policy
from gateway.server import build_app
from tests.ops.harness import free_port

SECRET = "an-hmac-secret-for-the-admin-tests-0123456789"


def config(*, remote_required: bool | None = None) -> GatewayConfig:
    providers: dict[str, Any] = {
        "hs": {"issuer": "https://hs.test", "secret": SECRET, "algorithms": ["HS256"], "audience": "any"}
    }
    if remote_required is not None:
        providers["idp"] = {
            "issuer": "https://idp.test",
            # Nothing listens there: the keys never arrive.
            "jwks_uri": f"http://127.0.0.1:{free_port()}/jwks.json",
            "algorithms": ["RS256"],
            "audience": "any",
            "required": remote_required,
            "jwks": {"timeout": "1s", "retry_backoff": "10s", "retry_backoff_max": "10s"},
        }
    return GatewayConfig.model_validate(
        {"upstream": "http://127.0.0.1:1", "providers": providers, "routes": [{"match": {"path": "/**"}}]}
    )


async def call(app: AdminApp, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    await app(scope, receive, send)
    start, body = sent
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, body["body"]


@pytest.fixture
async def gateway() -> AsyncIterator[GatewayApp]:
    app = build_app(config())
    yield app
    await app.shutdown()


async def test_healthz_is_always_ok(gateway: GatewayApp) -> None:
    admin = AdminApp(gateway)
    status, headers, body = await call(admin, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-store"


async def test_readiness_follows_start_drain_and_pool(gateway: GatewayApp) -> None:
    admin = AdminApp(gateway)
    status, _, body = await call(admin, "/readyz")
    assert status == 503 and json.loads(body)["checks"]["started"] is False
    await gateway.startup()
    status, _, body = await call(admin, "/readyz")
    details = json.loads(body)
    assert status == 200 and details["ready"] is True
    assert details["checks"] == {"started": True, "draining": False, "upstream_pool": "open", "keys": True}
    assert details["providers"]["hs"]["ready"] is True and details["providers"]["hs"]["keys"] == 1
    admin.draining = True
    status, _, body = await call(admin, "/readyz")
    assert status == 503 and json.loads(body)["checks"]["draining"] is True
    admin.draining = False
    await gateway.shutdown()
    status, _, body = await call(admin, "/readyz")
    assert status == 503 and json.loads(body)["checks"]["upstream_pool"] == "closed"


@pytest.mark.parametrize("required", [True, False])
async def test_readiness_waits_for_required_providers_only(required: bool) -> None:
    app = GatewayApp(build_policy(config(remote_required=required)))
    try:
        await app.startup()
        status, _, body = await call(AdminApp(app), "/readyz")
        details = json.loads(body)
        assert details["providers"]["idp"]["ready"] is False
        assert details["providers"]["idp"]["required"] is required
        assert status == (503 if required else 200)
        assert details["checks"]["keys"] is not required
    finally:
        await app.shutdown()


async def test_metrics_and_unknown_paths(gateway: GatewayApp) -> None:
    admin = AdminApp(gateway)
    status, headers, body = await call(admin, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"jwt_gateway_requests_total" in body or b"jwt_gateway_requests " in body
    assert b'jwt_gateway_jwks_keys{provider="hs"} 1.0' in body
    assert (await call(admin, "/nope"))[0] == 404
    # Without metrics (an app built without them) /metrics does not exist.
    bare = GatewayApp(build_policy(config()))
    assert (await call(AdminApp(bare), "/metrics"))[0] == 404


async def test_methods(gateway: GatewayApp) -> None:
    admin = AdminApp(gateway)
    status, headers, _ = await call(admin, "/healthz", "POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, body = await call(admin, "/healthz", "HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(b'{"status":"ok"}\n'))
