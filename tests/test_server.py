"""The uvicorn runner (gateway/server.py) without serving: the settings both listeners get, the
pre-rendered protocol refusals, the app ``serve`` builds, and the configs ``serve`` refuses.
(The refusals' problem+json bodies and their use under real uvicorn: tests/proxy/test_protocol.py;
SIGTERM draining and ``--workers``: tests/e2e/test_ops_process.py.)"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from pydantic import ValidationError
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import server
from gateway.asgi import GatewayApp
from gateway.config.models import GatewayConfig
from gateway.errors import ConfigError
from gateway.http.admin import AdminApp
from gateway.metrics import GatewayMetrics
from gateway.policy import build_policy
from gateway.proxy.protocol import HardenedHttpToolsProtocol, QuietWebSocketProtocol
from gateway.server import build_app, protocol_limits, serve, uvicorn_config

PUBLIC = {"upstream": "http://127.0.0.1:9", "routes": [{"match": {"path": "/**"}, "auth": "public"}]}


def config(**top: Any) -> GatewayConfig:
    return GatewayConfig.model_validate({**PUBLIC, **top})


@pytest.fixture(scope="module")
def gateway_app() -> GatewayApp:
    return GatewayApp(build_policy(config()))


# -------------------------------------------------------------------------------- uvicorn_config


def test_the_proxied_listener_settings(gateway_app: GatewayApp) -> None:
    cfg = config(proxy={"shutdown_timeout": "45s", "max_head_bytes": "8KiB", "head_timeout": "3s"})
    settings = uvicorn_config(gateway_app, "127.0.0.1", 8080, cfg)
    # The gateway decides which forwarding headers to believe: uvicorn must not rewrite the client.
    assert settings.proxy_headers is False
    assert settings.access_log is False  # the gateway writes its own, token-free, access log
    assert settings.loop == "none"  # the caller runs uvloop itself
    assert settings.server_header is False
    assert settings.date_header is False  # the upstream's Date passes through
    assert settings.lifespan == "on"  # key sources start and stop with the app
    assert settings.ws is QuietWebSocketProtocol
    assert settings.log_config is None
    assert settings.timeout_graceful_shutdown == 45
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    protocol = settings.http
    assert isinstance(protocol, type) and issubclass(protocol, HardenedHttpToolsProtocol)
    assert issubclass(protocol, HttpToolsProtocol)
    assert (protocol.limits.max_head_bytes, protocol.limits.head_timeout) == (8192, 3.0)


def test_the_admin_listener_settings(gateway_app: GatewayApp) -> None:
    cfg = config()
    settings = uvicorn_config(AdminApp(gateway_app), "127.0.0.1", 9901, cfg)
    assert settings.proxy_headers is False and settings.access_log is False and settings.loop == "none"
    assert settings.ws == "none"  # the admin port refuses WebSockets
    assert settings.lifespan == "off"
    assert settings.date_header is True
    assert issubclass(settings.http, HardenedHttpToolsProtocol)  # type: ignore[arg-type]


def test_graceful_shutdown_is_at_least_one_second_and_extras_pass_through(gateway_app: GatewayApp) -> None:
    settings = uvicorn_config(
        gateway_app, "::1", 0, config(proxy={"shutdown_timeout": 0}), timeout_keep_alive=7
    )
    assert settings.timeout_graceful_shutdown == 1
    assert settings.timeout_keep_alive == 7
    assert isinstance(settings, uvicorn.Config)


# ------------------------------------------------------------------------------ protocol_limits


@pytest.mark.parametrize(
    ("status", "phrase"),
    [(400, b"Bad Request"), (408, b"Request Timeout"), (431, b"Request Header Fields Too Large")],
)
def test_refusals_are_whole_closing_responses_without_a_date(status: int, phrase: bytes) -> None:
    raw = protocol_limits(config()).responses[status]
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep and body
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 %d %s" % (status, phrase)
    names = [line.split(b":", 1)[0].lower() for line in lines[1:]]
    assert b"date" not in names  # rendered once at start-up: a Date would be stale
    assert names.count(b"connection") == 1 and lines[-1] == b"connection: close"
    assert b"application/problem+json" in head


def test_the_431_answer_names_the_configured_limit() -> None:
    limits = protocol_limits(config(proxy={"max_head_bytes": "4KiB", "head_timeout": "2s"}))
    assert (limits.max_head_bytes, limits.head_timeout) == (4096, 2.0)
    assert b"exceeds 4096 bytes" in limits.responses[431]


@pytest.mark.parametrize(
    "proxy",
    [{"head_timeout": 0}, {"max_head_bytes": 512}, {"connect_timeout": 0}, {"read_timeout": 0}],
    ids=["head_timeout", "max_head_bytes", "connect_timeout", "read_timeout"],
)
def test_every_config_the_schema_accepts_can_be_served(proxy: dict[str, Any]) -> None:
    try:
        cfg = config(proxy=proxy)
    except ValidationError:
        return  # refused at load time: one line from `check` and `serve`, as it should be
    protocol_limits(cfg)
    GatewayApp(build_policy(cfg))


# ------------------------------------------------------------------------------- build and serve


def test_build_app_wires_metrics_into_the_observer_and_the_policy(tmp_path: Path) -> None:
    app = build_app(config(), str(tmp_path / "gw.yaml"))
    assert isinstance(app, GatewayApp)
    assert isinstance(app.observer.metrics, GatewayMetrics)
    assert app.observer.metrics.multiprocess is False
    assert app.policy.verifier.on_cache_hit is not None  # token-cache hooks go to the metrics


def test_serve_refuses_a_middleware_config_before_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_server(coro: Any) -> None:
        coro.close()
        raise AssertionError("serve started a server")

    monkeypatch.setattr(server, "_run", no_server)
    path = tmp_path / "gw.yaml"
    path.write_text(
        yaml.safe_dump({**PUBLIC, "mode": "middleware", "listen": {"port": 0}, "admin": {"port": 0}})
    )
    with pytest.raises(ConfigError) as info:
        serve(str(path))
    assert (info.value.file, info.value.path) == (str(path), "mode")


def test_serve_reports_an_unreadable_config_as_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        serve(str(tmp_path / "missing.yaml"))


def test_a_stop_signal_turns_readiness_off_before_draining(gateway_app: GatewayApp) -> None:
    drained: list[bool] = []
    main = server._MainServer(
        uvicorn_config(gateway_app, "127.0.0.1", 0, config()), on_exit=lambda: drained.append(True)
    )
    assert not main.should_exit
    main.handle_exit(signal.SIGTERM, None)
    assert drained == [True] and main.should_exit
    main.handle_exit(signal.SIGTERM, None)  # a repeated SIGTERM keeps draining
    assert drained == [True, True] and not main.force_exit
    main.handle_exit(signal.SIGINT, None)  # Ctrl-C while draining: stop now
    assert main.force_exit
