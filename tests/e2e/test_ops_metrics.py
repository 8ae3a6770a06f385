"""Operations over real HTTP, in process: every metric moves as its event happens, readiness
flips with the IdP, request ids and traceparent pass, an unexpected error is a clean 500.

The gateway is built as ``jwt-gateway serve`` builds it (metrics, observer, admin app) and runs
under real uvicorn in threads; /metrics is scraped from its admin listener and parsed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.ops.harness import NamedUpstream, OpsGateway, capture_access, metric, wait_until
from tests.support.jwks_server import JWKSServer
from tests.support.tokens import new_signing_key

SECRET = "an-hmac-secret-for-the-ops-e2e-tests-0123456789"
HS_ISSUER = "https://hs.test"
AUD = "api"

Samples = list[tuple[str, dict[str, str], float]]


def hs_token(secret: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"iss": HS_ISSUER, "aud": AUD, "sub": "user-1", "iat": now, "exp": now + 300}
    body["jti"] = uuid.uuid4().hex  # every token is a new cache key
    body.update(claims)
    return jwt.encode(body, secret, "HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def config(upstream: NamedUpstream, idp: JWKSServer) -> dict[str, Any]:
    return {
        "upstream": upstream.url,
        "providers": {
            "idp": {
                "issuer": idp.issuer,
                "jwks_uri": idp.jwks_uri,
                "algorithms": ["RS256"],
                "audiences": [AUD],
                "jwks": {"min_refresh_interval": 0.2},
            },
            "hs": {"issuer": HS_ISSUER, "secret": SECRET, "algorithms": ["HS256"], "audiences": [AUD]},
        },
        "headers": {"claims": {"X-User-Id": "sub"}},
        "routes": [
            {"name": "public", "match": {"path": "/public/**"}, "auth": "public"},
            {"name": "slow", "match": {"path": "/slow/**"}, "auth": "public"},
            {
                "name": "admin",
                "match": {"path": "/admin/**"},
                "require": {"claim": "roles", "contains": "admin"},
            },
            {
                "name": "shadow",
                "match": {"path": "/shadow/**"},
                "enforce": False,
                "require": {"claim": "roles", "contains": "admin"},
            },
            {"name": "api", "match": {"path": "/api/**"}},
        ],
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[NamedUpstream]:
    with NamedUpstream("a", delay=0.5) as server:
        yield server


@pytest.fixture(scope="module")
def idp() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        server.add_key("RS256")
        yield server


@pytest.fixture(scope="module")
def gw(
    upstream: NamedUpstream, idp: JWKSServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpsGateway]:
    with OpsGateway(config(upstream, idp), tmp_path_factory.mktemp("ops") / "gateway.yaml") as gateway:
        gateway.wait_ready()
        yield gateway


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return metric(after, name, **labels) - metric(before, name, **labels)


# ------------------------------------------------------------------------------ requests


def test_each_outcome_moves_requests_and_denials(gw: OpsGateway, idp: JWKSServer) -> None:
    stranger = new_signing_key("RS256", slot=3)  # its kid is not published
    expired = bearer(hs_token(exp=int(time.time()) - 600))
    forged = bearer(hs_token(secret="another-secret-of-sufficient-length-000"))
    elsewhere = bearer(hs_token(aud="other"))
    unknown_issuer = bearer(hs_token(iss="https://nobody.test"))
    unknown_kid = bearer(idp.mint(stranger, aud=AUD))
    cases: list[tuple[str, str, dict[str, str], str, str, str, str]] = [
        # method, path, headers, route, status class, decision, reason
        ("GET", "/public/x", {}, "public", "2xx", "allowed", "ok"),
        ("PURGE", "/public/x", {}, "public", "2xx", "allowed", "ok"),
        ("GET", "/api/x", {}, "api", "4xx", "denied", "token_missing"),
        ("GET", "/api/x", expired, "api", "4xx", "denied", "token_expired"),
        ("GET", "/api/x", forged, "api", "4xx", "denied", "bad_signature"),
        ("GET", "/api/x", elsewhere, "api", "4xx", "denied", "audience_mismatch"),
        ("GET", "/api/x", unknown_issuer, "api", "4xx", "denied", "issuer_mismatch"),
        ("GET", "/api/x", unknown_kid, "api", "4xx", "denied", "unknown_kid"),
        ("GET", "/admin/x", bearer(hs_token()), "admin", "4xx", "denied", "rule_failed"),
        ("GET", "/shadow/x", bearer(hs_token()), "shadow", "2xx", "report_only", "rule_failed"),
        ("GET", "/nowhere", {}, "(none)", "4xx", "denied", "route_not_found"),
    ]  # fmt: skip
    for method, path, headers, route, status_class, decision, reason in cases:
        before = gw.metrics()
        response = httpx.request(method, gw.url + path, headers=headers)
        after = gw.metrics()
        case = f"{method} {path} -> {reason}"
        assert response.status_code // 100 == int(status_class[0]), case
        shown = "OTHER" if method == "PURGE" else method
        labels = {"route": route, "method": shown, "status_class": status_class, "decision": decision}
        assert delta(before, after, "jwt_gateway_requests_total", **labels) == 1, case
        assert delta(before, after, "jwt_gateway_requests_total") == 1, case
        assert delta(before, after, "jwt_gateway_request_duration_seconds_count", route=route) == 1, case
        denials = delta(
            before, after, "jwt_gateway_denials_total", route=route, reason=reason, decision=decision
        )
        assert denials == (0 if reason == "ok" else 1), case
        forwarded = decision != "denied"
        assert (
            delta(before, after, "jwt_gateway_upstream_duration_seconds_count", route=route) == forwarded
        ), case
        verified = "Authorization" in headers
        assert delta(before, after, "jwt_gateway_verify_duration_seconds_count") == verified, case


def test_token_cache_hits_and_misses(gw: OpsGateway) -> None:
    token = hs_token()
    before = gw.metrics()
    for _ in range(3):
        assert httpx.get(gw.url + "/api/x", headers=bearer(token)).status_code == 200
    after = gw.metrics()
    assert delta(before, after, "jwt_gateway_token_cache_misses_total") == 1
    assert delta(before, after, "jwt_gateway_token_cache_hits_total") == 2


def test_in_flight_requests(gw: OpsGateway, upstream: NamedUpstream) -> None:
    assert metric(gw.metrics(), "jwt_gateway_in_flight_requests") == 0
    answers: list[int] = []
    thread = threading.Thread(target=lambda: answers.append(httpx.get(gw.url + "/slow/x").status_code))
    thread.start()
    wait_until(lambda: upstream.active == 1, what="the slow request upstream")
    assert metric(gw.metrics(), "jwt_gateway_in_flight_requests") == 1
    thread.join(5)
    assert answers == [200]
    assert metric(gw.metrics(), "jwt_gateway_in_flight_requests") == 0


def test_jwks_metrics(gw: OpsGateway, idp: JWKSServer) -> None:
    samples = gw.metrics()
    assert metric(samples, "jwt_gateway_jwks_fetches_total", provider="idp", outcome="ok") >= 1
    assert metric(samples, "jwt_gateway_jwks_fetch_duration_seconds_count", provider="idp") >= 1
    assert metric(samples, "jwt_gateway_jwks_keys", provider="idp") == 1
    assert metric(samples, "jwt_gateway_jwks_keys", provider="hs") == 1
    assert metric(samples, "jwt_gateway_provider_ready", provider="idp") == 1
    age = metric(samples, "jwt_gateway_jwks_key_set_age_seconds", provider="idp")
    assert 0 <= age < 60
    # A failing fetch (an unknown kid asks for one; the IdP answers 500) is counted by outcome,
    # and the keys already loaded stay.
    idp.serve_status(500)
    try:
        time.sleep(0.25)  # past min_refresh_interval
        stranger = new_signing_key("RS256", slot=4)
        response = httpx.get(gw.url + "/api/x", headers=bearer(idp.mint(stranger, aud=AUD)))
        assert response.status_code == 401
    finally:
        idp.serve_ok()
    after = gw.metrics()
    assert delta(samples, after, "jwt_gateway_jwks_fetches_total", provider="idp", outcome="http_status") == 1
    assert metric(after, "jwt_gateway_jwks_keys", provider="idp") == 1
    assert metric(after, "jwt_gateway_jwks_key_set_age_seconds", provider="idp") >= age


def test_reload_outcomes(gw: OpsGateway, upstream: NamedUpstream, idp: JWKSServer) -> None:
    before = gw.metrics()
    assert gw.reload(config(upstream, idp)) is True
    assert gw.reload("routes: [") is False
    assert gw.reload(config(upstream, idp)) is True
    after = gw.metrics()
    assert delta(before, after, "jwt_gateway_config_reloads_total", outcome="ok") == 2
    assert delta(before, after, "jwt_gateway_config_reloads_total", outcome="error") == 1


def test_no_subject_path_or_token_in_metric_labels(gw: OpsGateway) -> None:
    token = hs_token(sub="someone-specific")
    httpx.get(gw.url + "/api/very-specific-path?access_token=x", headers=bearer(token))
    text = httpx.get(gw.admin_url + "/metrics").text
    for secretish in (token, token.split(".")[2], "someone-specific", "very-specific-path", "127.0.0.1"):
        assert secretish not in text


# ------------------------------------------------------------------------------ access log


def test_the_access_line_explains_each_request(
    gw: OpsGateway, upstream: NamedUpstream, idp: JWKSServer
) -> None:
    token = hs_token(sub="alice", email="alice@example.com")
    with capture_access() as log:
        httpx.get(gw.url + "/api/orders?q=secret-query", headers={**bearer(token), "X-Request-Id": "line-1"})
        httpx.get(gw.url + "/admin/x", headers=bearer(token))
    text = log.getvalue()
    assert "secret-query" not in text and token not in text
    allowed, denied = (json.loads(line) for line in text.splitlines())
    assert {
        k: allowed[k] for k in ("request_id", "method", "path", "route", "status", "decision", "reason")
    } == {
        "request_id": "line-1",
        "method": "GET",
        "path": "/api/orders",
        "route": "api",
        "status": 200,
        "decision": "allowed",
        "reason": "ok",
    }
    assert (allowed["provider"], allowed["sub"], allowed["upstream_status"], allowed["client"]) == (
        "hs",
        "alice",
        200,
        "127.0.0.1",
    )
    assert allowed["duration_ms"] >= allowed["upstream_ms"] > 0 and allowed["verify_ms"] > 0
    assert allowed["ts"].endswith("Z")
    assert (denied["route"], denied["status"], denied["decision"], denied["reason"]) == (
        "admin",
        403,
        "denied",
        "rule_failed",
    )
    assert denied["rule"] and "alice" not in denied["rule"] and denied["upstream_status"] is None
    # The logged subject claim is configurable, or off.
    try:
        for claim, expected in (("email", "alice@example.com"), (None, None)):
            cfg = config(upstream, idp)
            cfg["logging"] = {"subject_claim": claim}
            assert gw.reload(cfg) is True
            with capture_access() as log:
                httpx.get(gw.url + "/api/orders", headers=bearer(token))
            assert json.loads(log.getvalue())["sub"] == expected
    finally:
        assert gw.reload(config(upstream, idp)) is True


# ---------------------------------------------------------------------- request id, tracing


def test_a_safe_request_id_is_honoured_forwarded_and_logged(gw: OpsGateway, upstream: NamedUpstream) -> None:
    with capture_access() as log:
        response = httpx.get(gw.url + "/public/rid", headers={"X-Request-Id": "req-123_abc.DEF:9"})
        denied = httpx.get(gw.url + "/api/rid", headers={"X-Request-Id": "req-456"})
    assert response.json()["headers"]["x-request-id"] == "req-123_abc.DEF:9"
    assert denied.headers["x-request-id"] == "req-456"
    assert denied.json()["request_id"] == "req-456"
    ids = [json.loads(line)["request_id"] for line in log.getvalue().splitlines()]
    assert ids == ["req-123_abc.DEF:9", "req-456"]


@pytest.mark.parametrize("incoming", [None, "has spaces", "a" * 129, "x<script>", "ok\u00e9"])
def test_a_missing_or_unsafe_request_id_is_replaced(gw: OpsGateway, incoming: str | None) -> None:
    headers = [] if incoming is None else [(b"x-request-id", incoming.encode("utf-8"))]
    with capture_access() as log:
        response = httpx.get(gw.url + "/public/rid", headers=headers)
    forwarded = response.json()["headers"]["x-request-id"]
    assert forwarded != incoming and len(forwarded) == 24 and int(forwarded, 16) >= 0
    assert json.loads(log.getvalue())["request_id"] == forwarded
    assert response.json()["header_names"].count("x-request-id") == 1  # the new one only


def test_traceparent_and_tracestate_pass_untouched(gw: OpsGateway) -> None:
    trace = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
    }
    received = httpx.get(gw.url + "/api/trace", headers={**trace, **bearer(hs_token())}).json()["headers"]
    assert received["traceparent"] == trace["traceparent"]
    assert received["tracestate"] == trace["tracestate"]


# -------------------------------------------------------------------------- the unexpected


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_an_unexpected_exception_is_a_500_problem_with_the_request_id(
    gw: OpsGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode(view: Any) -> Any:
        raise RuntimeError("kaboom: internal detail that must stay in the log")

    monkeypatch.setattr(gw.app.pipeline, "decide", explode)
    handler = _Records()
    logger = logging.getLogger("jwt_gateway")
    logger.addHandler(handler)
    before = gw.metrics()
    try:
        with capture_access() as log:
            response = httpx.get(gw.url + "/api/x", headers={"X-Request-Id": "boom-1", **bearer(hs_token())})
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["request_id"] == "boom-1" and problem["status"] == 500
    assert "kaboom" not in response.text and "Traceback" not in response.text
    errors = [r for r in handler.records if r.exc_info]
    assert len(errors) == 1 and "boom-1" in errors[0].getMessage()
    assert isinstance(errors[0].exc_info[1], RuntimeError)  # type: ignore[index]
    line = json.loads(log.getvalue())
    assert (line["status"], line["decision"], line["reason"]) == (500, "error", "internal_error")
    after = gw.metrics()
    assert delta(before, after, "jwt_gateway_requests_total", decision="error", status_class="5xx") == 1
    assert metric(after, "jwt_gateway_in_flight_requests") == 0


# ----------------------------------------------------------------------------- readiness


def test_readiness_flips_with_the_idp(upstream: NamedUpstream, tmp_path: Path) -> None:
    with JWKSServer() as idp:
        key = idp.add_key("RS256")
        idp.go_down()  # the gateway starts while the IdP is down
        cfg = config(upstream, idp)
        cfg["providers"] = {"idp": cfg["providers"]["idp"]}
        cfg["providers"]["idp"]["jwks"].update({"retry_backoff": 0.1, "retry_backoff_max": 0.3})
        with OpsGateway(cfg, tmp_path / "gateway.yaml") as gw:
            assert httpx.get(gw.admin_url + "/healthz").status_code == 200
            wait_until(
                lambda: metric(gw.metrics(), "jwt_gateway_jwks_fetches_total", outcome="connect_error") >= 1,
                what="a failed fetch",
            )
            ready = httpx.get(gw.admin_url + "/readyz")
            assert ready.status_code == 503
            assert ready.json()["providers"]["idp"]["ready"] is False
            assert metric(gw.metrics(), "jwt_gateway_provider_ready", provider="idp") == 0
            token = idp.mint(key, aud=AUD)
            refused = httpx.get(gw.url + "/api/x", headers=bearer(token))
            assert refused.status_code == 503 and "retry-after" in refused.headers
            assert refused.json()["reason"] == "keys_unavailable"

            idp.come_up()
            wait_until(lambda: httpx.get(gw.admin_url + "/readyz").status_code == 200, 10, 0.05, "readiness")
            samples = gw.metrics()
            assert metric(samples, "jwt_gateway_provider_ready", provider="idp") == 1
            assert metric(samples, "jwt_gateway_jwks_keys", provider="idp") == 1
            assert metric(samples, "jwt_gateway_denials_total", reason="keys_unavailable") == 1
            assert httpx.get(gw.url + "/api/x", headers=bearer(token)).status_code == 200
