"""The Reloader, in process: swaps, refusals, warnings, warm key caches, live logging settings."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.asgi import GatewayApp
from gateway.config.loader import load_config
from gateway.config.models import GatewayConfig
from gateway.reload import Reloader, restart_only_changes
from gateway.server import build_app
from tests.ops.harness import metric, parse_metrics
from tests.support.jwks_server import JWKSServer

SECRET = "an-hmac-secret-for-the-reload-tests-0123456789"


def base_config(idp: JWKSServer, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "upstream": "http://127.0.0.1:1",
        "providers": {
            "idp": {
                "issuer": idp.issuer,
                "jwks_uri": idp.jwks_uri,
                "algorithms": ["RS256"],
                "audiences": ["api"],
            },
            "hs": {"issuer": "https://hs.test", "secret": SECRET, "algorithms": ["HS256"], "audience": "any"},
        },
        "routes": [{"name": "one", "match": {"path": "/one/**"}}],
    }
    cfg.update(extra)
    return cfg


def write(path: Path, cfg: dict[str, Any] | str) -> None:
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(json.loads(json.dumps(cfg))))


def route_names(app: GatewayApp) -> list[str]:
    return [route.name for route in app.policy.config.routes if route.name]


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(record.getMessage() for record in self.records)


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    logger = logging.getLogger("jwt_gateway")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def idp() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        server.add_key("RS256")
        yield server


@pytest.fixture
async def running(idp: JWKSServer, tmp_path: Path) -> AsyncIterator[tuple[GatewayApp, Reloader, Path]]:
    path = tmp_path / "gateway.yaml"
    write(path, base_config(idp))
    app = build_app(load_config(str(path)), str(path))
    await app.startup()
    source = app.policy.key_sources["idp"]
    for _ in range(500):
        if source.ready:
            break
        await asyncio.sleep(0.01)
    yield app, Reloader(app, str(path)), path
    await app.shutdown()


async def test_a_valid_config_is_swapped_in(
    running: tuple[GatewayApp, Reloader, Path], idp: JWKSServer, captured: Captured
) -> None:
    app, reloader, path = running
    before = app.policy
    cfg = base_config(idp)
    cfg["routes"].append({"name": "two", "match": {"path": "/two/**"}})
    write(path, cfg)
    assert await reloader.reload_once() is True
    assert app.policy is not before and route_names(app) == ["one", "two"]
    assert reloader.outcomes == {"ok": 1, "error": 0}
    assert "config reloaded from" in captured.text()
    assert app.observer.metrics is not None
    samples = parse_metrics(app.observer.metrics.render()[0].decode())
    assert metric(samples, "jwt_gateway_config_reloads_total", outcome="ok") == 1


@pytest.mark.parametrize(
    "content",
    [
        "routes: [",  # not YAML
        "routes:\n  - match: {path: /x}\n    auth: sometimes\n",  # schema
        "providers: {x: {issuer: https://x, public_key_file: /nonexistent.pem, algorithms: [RS256], "
        "audience: any}}\nupstream: http://127.0.0.1:1\n",  # compile: unreadable key file
    ],
    ids=["yaml", "schema", "compile"],
)
async def test_an_invalid_config_is_refused_and_the_old_one_keeps_serving(
    running: tuple[GatewayApp, Reloader, Path], captured: Captured, content: str
) -> None:
    app, reloader, path = running
    before = app.policy
    write(path, content)
    assert await reloader.reload_once() is False
    assert app.policy is before and route_names(app) == ["one"]
    assert reloader.outcomes == {"ok": 0, "error": 1}
    assert "config reload refused, the previous config keeps serving" in captured.text()
    assert app.observer.metrics is not None
    samples = parse_metrics(app.observer.metrics.render()[0].decode())
    assert metric(samples, "jwt_gateway_config_reloads_total", outcome="error") == 1


async def test_key_caches_survive_a_reload_that_keeps_the_provider(
    running: tuple[GatewayApp, Reloader, Path], idp: JWKSServer
) -> None:
    app, reloader, path = running
    source = app.policy.key_sources["idp"]
    assert source.ready
    fetches = idp.fetch_count
    for name in ("two", "three"):
        cfg = base_config(idp)
        cfg["routes"].append({"name": name, "match": {"path": f"/{name}/**"}})
        # Provider fields that do not concern the key cache may change too.
        cfg["providers"]["idp"]["audiences"] = ["api", name]
        write(path, cfg)
        assert await reloader.reload_once() is True
    assert app.policy.key_sources["idp"] is source and source.ready
    assert idp.fetch_count == fetches


async def test_a_changed_provider_gets_a_new_cache_and_the_old_one_is_closed(
    running: tuple[GatewayApp, Reloader, Path], idp: JWKSServer
) -> None:
    app, reloader, path = running
    old = app.policy.key_sources["idp"]
    fetches = idp.fetch_count
    cfg = base_config(idp)
    cfg["providers"]["idp"]["jwks"] = {"min_ttl": "2m"}
    write(path, cfg)
    assert await reloader.reload_once() is True
    new = app.policy.key_sources["idp"]
    assert new is not old
    await idp.await_fetches(fetches + 1)
    assert getattr(old, "_closed", True) is True


async def test_restart_only_settings_are_reported(
    running: tuple[GatewayApp, Reloader, Path], idp: JWKSServer, captured: Captured
) -> None:
    app, reloader, path = running
    write(
        path,
        base_config(
            idp, listen={"port": 9999}, proxy={"max_connections": 3, "trusted_proxies": ["10.0.0.0/8"]}
        ),
    )
    assert await reloader.reload_once() is True
    warning = [r for r in captured.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    message = warning[0].getMessage()
    assert "listen" in message and "proxy.max_connections" in message
    # Settings read per request are live, and not reported.
    assert "trusted_proxies" not in message


def test_restart_only_changes() -> None:
    old = GatewayConfig()
    assert restart_only_changes(old, GatewayConfig()) == []
    new = GatewayConfig.model_validate(
        {"admin": {"port": 1}, "proxy": {"read_timeout": 1, "tls": {"verify": False}, "preserve_host": True}}
    )
    assert restart_only_changes(old, new) == ["admin", "proxy.read_timeout", "proxy.tls"]


async def test_the_logging_section_is_applied_live(
    running: tuple[GatewayApp, Reloader, Path], idp: JWKSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, reloader, path = running
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("gateway.reload.logs.configure", lambda **kw: calls.append(kw))
    write(path, base_config(idp))
    assert await reloader.reload_once() is True
    assert calls == []  # unchanged: not touched
    write(path, base_config(idp, logging={"format": "text", "level": "debug"}))
    assert await reloader.reload_once() is True
    assert calls == [{"fmt": "text", "level": "debug", "access_log": True}]
    reloader.log_level = "warning"  # --log-level wins over the file
    write(path, base_config(idp, logging={"format": "json", "level": "debug"}))
    assert await reloader.reload_once() is True
    assert calls[-1] == {"fmt": "json", "level": "warning", "access_log": True}


async def test_reloads_asked_for_during_a_reload_coalesce(running: tuple[GatewayApp, Reloader, Path]) -> None:
    app, reloader, _ = running
    reloader.schedule()
    await asyncio.sleep(0)  # the reload has started: it reads the file in a thread
    for _ in range(4):
        reloader.schedule()
    await reloader.aclose()
    # The reload that ran, and one more for the four asks that came while it ran.
    assert reloader.outcomes["ok"] == 2
