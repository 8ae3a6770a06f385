"""Operations with the real command, ``jwt-gateway serve``, in a subprocess: logs that never hold
a token, reloads under load (SIGHUP and file watching), SIGTERM draining (one process and
``--workers 2``) and multiprocess metrics.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.ops.harness import GatewayProcess, NamedUpstream, free_port, metric, run_in_threads, wait_until
from tests.support.jwks_server import JWKSServer

SECRET = "the-hmac-secret-that-must-never-be-logged-0123456789"
HS_ISSUER = "https://hs.test"
AUD = "api"


def hs_token(secret: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"iss": HS_ISSUER, "aud": AUD, "sub": "user-1", "iat": now, "exp": now + 300}
    body["jti"] = uuid.uuid4().hex
    body.update(claims)
    return jwt.encode(body, secret, "HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def base_config(upstream: str, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "upstream": upstream,
        "providers": {
            "hs": {"issuer": HS_ISSUER, "secret": SECRET, "algorithms": ["HS256"], "audiences": [AUD]},
        },
        "headers": {"claims": {"X-User-Id": "sub"}},
        "routes": [
            {"name": "public", "match": {"path": "/public/**"}, "auth": "public"},
            {"name": "api", "match": {"path": "/api/**"}},
        ],
        "proxy": {"shutdown_timeout": 10},
    }
    cfg.update(extra)
    return cfg


def reloads(gateway: GatewayProcess, outcome: str) -> float:
    return metric(gateway.metrics(), "jwt_gateway_config_reloads_total", outcome=outcome)


@pytest.fixture(scope="module")
def upstream() -> Iterator[NamedUpstream]:
    with NamedUpstream("a", delay=1.0) as server:
        yield server


# ------------------------------------------------------------------------------------ logs


def test_the_output_never_contains_a_token_or_the_secret(upstream: NamedUpstream, tmp_path: Path) -> None:
    cfg = base_config(upstream.url, logging={"format": "json", "level": "debug"})
    cfg["providers"]["hs"]["token"] = {"cookie": "session", "query": "access_token"}
    tokens: dict[str, str] = {
        "header": hs_token(),
        "cookie": hs_token(),
        "query": hs_token(),
        "bad_signature": hs_token(secret="not-the-secret-but-long-enough-0123456789"),
        "expired": hs_token(exp=int(time.time()) - 3600),
        "wrong_audience": hs_token(aud="elsewhere"),
        "on_public_route": hs_token(),
        "second_credential": hs_token(),
        "oversized": hs_token(padding="x" * 10_000),
        "inner": hs_token(),
    }
    # A valid token carrying another token, and the secret itself, in its claims.
    tokens["carrier"] = hs_token(note=tokens["inner"], nested={"t": tokens["inner"], "s": SECRET})
    tokens["garbage"] = "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2lnbmF0dXJlLXNlZ21lbnQtdGhhdC1pcy11bmlxdWU"

    def send_all(gateway: GatewayProcess) -> list[int]:
        url = gateway.url
        statuses = []
        for name in (
            "header",
            "bad_signature",
            "expired",
            "wrong_audience",
            "oversized",
            "carrier",
            "garbage",
        ):
            statuses.append(httpx.get(url + "/api/x", headers=bearer(tokens[name])).status_code)
        statuses.append(
            httpx.get(url + "/api/x", headers={"Cookie": f"session={tokens['cookie']}"}).status_code
        )
        statuses.append(httpx.get(url + f"/api/x?a=1&access_token={tokens['query']}&b=2").status_code)
        statuses.append(httpx.get(url + "/public/x", headers=bearer(tokens["on_public_route"])).status_code)
        both = f"/api/x?access_token={tokens['second_credential']}"
        statuses.append(httpx.get(url + both, headers=bearer(tokens["header"])).status_code)
        return statuses

    with GatewayProcess(cfg, tmp_path) as gateway:
        first = send_all(gateway)
        # The same requests again with text logs (the logging section applies on reload).
        gateway.write_config({**cfg, "logging": {"format": "text", "level": "debug"}})
        gateway.signal(signal.SIGHUP)
        wait_until(lambda: reloads(gateway, "ok") == 1, what="the reload")
        second = send_all(gateway)
        assert gateway.stop() == 0
    assert first == second == [200, 401, 401, 403, 401, 200, 401, 200, 200, 200, 400]
    output = gateway.stdout() + gateway.stderr()
    assert output.count('"route":"api"') >= 10 and "route=api" in output  # both formats written
    for name, token in tokens.items():
        header, payload, signature = token.split(".")
        for piece, label in ((token, "token"), (payload, "payload"), (signature, "signature")):
            assert piece not in output, f"the {label} of the {name} token is in the output"
    assert SECRET not in output
    assert "access_token" not in output and "a=1" not in output  # no query string at all


# ---------------------------------------------------------------------------------- reload


def test_twenty_reloads_under_load_serve_one_config_or_the_other(tmp_path: Path) -> None:
    """Two configs route /x to different upstreams and set different claim headers; a client
    running throughout must get only answers consistent with one whole config."""
    with NamedUpstream("a", delay=1.0) as up_a, NamedUpstream("b") as up_b, JWKSServer() as idp:
        idp.add_key("RS256")
        idp_provider = {
            "issuer": idp.issuer,
            "jwks_uri": idp.jwks_uri,
            "algorithms": ["RS256"],
            "audience": "any",
        }

        def variant(name: str, upstream: NamedUpstream) -> dict[str, Any]:
            cfg = base_config(upstream.url, routes=[{"name": "x", "match": {"path": "/x/**"}}])
            cfg["providers"]["idp"] = idp_provider
            cfg["headers"] = {"claims": {"X-Variant": f"v{name}"}}
            return cfg

        config_a, config_b = variant("a", up_a), variant("b", up_b)
        config_b["listen"], config_b["admin"] = config_a["listen"], config_a["admin"]
        token = hs_token(va="A", vb="B")
        answers: list[tuple[int, str, str | None]] = []
        stop = threading.Event()

        def client(index: int) -> None:
            # One keep-alive client, one that opens a connection per request.
            with httpx.Client(timeout=10) as keep_alive:
                while not stop.is_set():
                    try:
                        if index == 0:
                            response = keep_alive.get(gateway.url + "/x/1", headers=bearer(token))
                        else:
                            response = httpx.get(gateway.url + "/x/2", headers=bearer(token), timeout=10)
                        body = response.json() if response.status_code == 200 else {}
                        answers.append(
                            (
                                response.status_code,
                                body.get("upstream", ""),
                                body.get("headers", {}).get("x-variant"),
                            )
                        )
                    except httpx.HTTPError as exc:
                        answers.append((0, type(exc).__name__, None))

        with GatewayProcess(config_a, tmp_path) as gateway:
            wait_until(lambda: httpx.get(gateway.admin_url + "/readyz").status_code == 200, what="readiness")
            fetches = idp.fetch_count
            # A request in flight under config A while B is swapped in finishes under A.
            slow: list[Any] = []
            slow_thread = run_in_threads(1, lambda _: slow.append(
                httpx.get(gateway.url + "/x/slow", headers=bearer(token), timeout=10).json()))[0]  # fmt: skip
            wait_until(lambda: up_a.active == 1, what="the slow request")
            threads = run_in_threads(2, client)
            for i in range(20):
                gateway.write_config(config_b if i % 2 == 0 else config_a)
                gateway.signal(signal.SIGHUP)
                wait_until(lambda i=i: reloads(gateway, "ok") == i + 1, interval=0.01, what=f"reload {i + 1}")
                time.sleep(0.02)
            stop.set()
            for thread in threads:
                thread.join(10)
            slow_thread.join(10)
            assert reloads(gateway, "error") == 0
            assert idp.fetch_count == fetches  # the provider did not change: its cache was kept
            assert gateway.stop() == 0
    assert slow == [slow[0]] and slow[0]["upstream"] == "a" and slow[0]["headers"]["x-variant"] == "A"
    errors = [answer for answer in answers if answer[0] != 200]
    assert not errors, errors[:5]
    mixed = [answer for answer in answers if (answer[1], answer[2]) not in (("a", "A"), ("b", "B"))]
    assert not mixed, mixed[:5]
    assert {answer[1] for answer in answers} == {"a", "b"}
    assert len(answers) > 40
    assert "Traceback" not in gateway.stderr()


def test_watched_file_invalid_then_valid(upstream: NamedUpstream, tmp_path: Path) -> None:
    cfg = base_config(upstream.url, watch=True)
    with GatewayProcess(cfg, tmp_path) as gateway:
        assert httpx.get(gateway.url + "/public/x").status_code == 200
        # An invalid file is refused, logged and counted; the old routes keep serving.
        gateway.write_config("routes: [")
        wait_until(lambda: reloads(gateway, "error") >= 1, timeout=10, interval=0.05, what="a refused reload")
        assert "config reload refused, the previous config keeps serving" in gateway.stderr()
        assert httpx.get(gateway.url + "/public/x").status_code == 200
        assert httpx.get(gateway.url + "/api/x", headers=bearer(hs_token())).status_code == 200
        # A valid one goes live; a setting that needs a restart is named in a warning.
        new = {**cfg, "routes": [{"name": "fresh", "match": {"path": "/fresh/**"}, "auth": "public"}]}
        new["proxy"] = {"shutdown_timeout": 10, "max_connections": 7}
        gateway.write_config(new)
        wait_until(lambda: reloads(gateway, "ok") >= 1, timeout=10, interval=0.05, what="the reload")
        assert httpx.get(gateway.url + "/fresh/x").status_code == 200
        assert httpx.get(gateway.url + "/public/x").status_code == 404
        assert "only take effect after a restart: proxy.max_connections" in gateway.stderr()
        assert gateway.stop() == 0


# -------------------------------------------------------------------------------- shutdown


def _drain(gateway: GatewayProcess, upstream: NamedUpstream, count: int) -> list[int]:
    """Start ``count`` slow requests, SIGTERM once they are all upstream; their statuses."""
    statuses: list[int] = []

    def slow(_: int) -> None:
        response = httpx.get(gateway.url + "/public/slow", timeout=15)
        statuses.append(response.status_code if response.json()["upstream"] == "a" else -1)

    active = upstream.active
    threads = run_in_threads(count, slow)
    wait_until(lambda: upstream.active == active + count, what="requests in flight")
    gateway.signal(signal.SIGTERM)
    # Readiness turns false at once; the listener stops accepting; in-flight requests finish.
    wait_until(lambda: httpx.get(gateway.admin_url + "/readyz").status_code == 503, what="not ready")
    assert httpx.get(gateway.admin_url + "/readyz").json()["checks"]["draining"] is True

    def refused() -> bool:
        try:
            httpx.get(gateway.url + "/public/x", timeout=2)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            # Refused; or, with several workers, reset when the last one closed the socket
            # while the connection waited in its backlog.
            return True
        return False

    wait_until(refused, what="the listener to close")
    for thread in threads:
        thread.join(15)
    return statuses


def test_sigterm_drains_in_flight_requests(upstream: NamedUpstream, tmp_path: Path) -> None:
    with GatewayProcess(base_config(upstream.url), tmp_path) as gateway:
        statuses = _drain(gateway, upstream, 4)
        assert gateway.process is not None
        assert gateway.process.wait(15) == 0
    assert statuses == [200] * 4
    lines = [line for line in gateway.access_lines() if line["path"] == "/public/slow"]
    assert [line["status"] for line in lines] == [200] * 4


def test_workers_share_metrics_and_each_drains(upstream: NamedUpstream, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    cfg = base_config(upstream.url)
    with GatewayProcess(cfg, tmp_path, workers=2, env={"TMPDIR": str(scratch)}) as gateway:
        wait_until(lambda: httpx.get(gateway.admin_url + "/readyz").status_code == 200, what="readiness")
        (metrics_dir,) = scratch.glob("jwt-gateway-metrics-*")
        for _ in range(20):  # a new connection each: the workers share them
            assert httpx.get(gateway.url + "/public/x").status_code == 200
        # Whichever worker answers the scrape reports the sum over both.
        for _ in range(6):
            samples = gateway.metrics()
            assert metric(samples, "jwt_gateway_requests_total", route="public", decision="allowed") == 20
            assert metric(samples, "jwt_gateway_jwks_keys", provider="hs") == 1
        pids = {path.stem.rsplit("_", 1)[1] for path in metrics_dir.glob("counter_*.db")}
        assert len(pids) == 2, pids  # both workers write their values there
        # SIGHUP to the supervisor reloads every worker (a reload counts once per worker).
        fresh = {"name": "fresh", "match": {"path": "/fresh/**"}, "auth": "public"}
        gateway.write_config({**cfg, "routes": [*cfg["routes"], fresh]})
        gateway.signal(signal.SIGHUP)
        wait_until(lambda: reloads(gateway, "ok") == 2, what="both workers to reload")
        for _ in range(10):
            assert httpx.get(gateway.url + "/fresh/x").status_code == 200
        statuses = _drain(gateway, upstream, 6)
        assert gateway.process is not None
        assert gateway.process.wait(15) == 0
    assert statuses == [200] * 6
    assert not list(scratch.glob("jwt-gateway-metrics-*"))  # removed on exit
    assert "Traceback" not in gateway.stderr()
