"""The proxy across its life: SIGTERM drains in-flight requests (a real ``jwt-gateway serve``
subprocess), and per-request settings follow a live reload."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config.loader import parse_config
from gateway.policy import build_policy
from tests.support.proxy_servers import GatewayProcess, StreamUpstream, ThreadedRawServer
from tests.support.servers import GatewayServer
from tests.support.upstream_servers import keep_alive, ok


def config(upstream: str, **proxy: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream,
        "proxy": proxy,
        "routes": [{"name": "all", "match": {"path": "/**"}, "auth": "public"}],
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[StreamUpstream]:
    with StreamUpstream() as server:
        yield server


def request_in_thread(url: str) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(httpx.get(url, timeout=30))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_sigterm_drains_in_flight_requests(upstream: StreamUpstream, tmp_path: Path) -> None:
    with GatewayProcess(config(upstream.url, shutdown_timeout="10s"), tmp_path) as gw:
        before = len(upstream.seen)
        thread, outcome = request_in_thread(gw.url + "/slow?delay=1.5")
        wait_until(lambda: len(upstream.seen) > before)  # the request is at the upstream
        gw.terminate()
        time.sleep(0.3)
        # No longer accepting: a new connection is refused.
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", gw.port), timeout=1):
            pass
        thread.join(15)
        assert gw.wait(15) == 0
    (response,) = outcome
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200 and response.text == "slow"


def test_sigterm_waits_no_longer_than_the_shutdown_timeout(upstream: StreamUpstream, tmp_path: Path) -> None:
    with GatewayProcess(config(upstream.url, shutdown_timeout="1s"), tmp_path) as gw:
        before = len(upstream.seen)
        thread, outcome = request_in_thread(gw.url + "/slow?delay=20")
        wait_until(lambda: len(upstream.seen) > before)
        started = time.monotonic()
        gw.terminate()
        gw.wait(15)
        assert time.monotonic() - started < 6
        thread.join(15)
    (result,) = outcome
    assert not (isinstance(result, httpx.Response) and result.status_code == 200)


def test_shutdown_closes_the_upstream_pool() -> None:
    # In process, so the pool can be inspected and the process exiting cannot be what closes
    # the sockets: stopping uvicorn runs the lifespan shutdown, as SIGTERM does in `serve`.
    with ThreadedRawServer(keep_alive(ok(b"fine"))) as upstream:
        gw = GatewayServer(config(upstream.url)).start()
        try:
            for _ in range(2):
                assert httpx.get(gw.url + "/x").text == "fine"
            assert upstream.raw.accepted == 1  # the second request reused the pooled connection
            (conn,) = upstream.raw.connections
            assert upstream.call(conn.client_closed(within=0.2)) is False  # kept alive, idle
            assert gw.gateway.pool.stats()[upstream.url]["idle"] == 1
            assert not gw.gateway.pool.closed
        finally:
            gw.stop()
        assert gw.gateway.pool.closed
        assert gw.gateway.pool.stats()[upstream.url]["open"] == 0
        assert upstream.call(conn.client_closed(within=5)) is True


def test_per_request_settings_follow_a_reload() -> None:
    with ThreadedRawServer(keep_alive(ok(b"fine"))) as upstream:
        first = config(upstream.url, max_body_bytes=1000)
        with GatewayServer(first) as gw:
            assert httpx.post(gw.url + "/x", content=b"a" * 900).status_code == 200
            assert upstream.raw.requests[-1].header(b"x-forwarded-for") == [b"127.0.0.1"]
            second = parse_config(
                _yaml(config(upstream.url, max_body_bytes=500, trusted_proxies=["127.0.0.1/32"])),
                file="<test>",
            )
            gw.call(gw.gateway.install(build_policy(second)))
            assert httpx.post(gw.url + "/x", content=b"a" * 900).status_code == 413
            r = httpx.get(gw.url + "/x", headers={"X-Forwarded-For": "203.0.113.9"})
            assert r.status_code == 200
            assert upstream.raw.requests[-1].header(b"x-forwarded-for") == [b"203.0.113.9, 127.0.0.1"]


def _yaml(data: dict[str, Any]) -> str:
    import json

    import yaml

    return str(yaml.safe_dump(json.loads(json.dumps(data))))
