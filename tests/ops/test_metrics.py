"""GatewayMetrics: each hook moves its metric, label sets stay bounded, the exposition parses."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.config.models import GatewayConfig
from gateway.metrics import KNOWN_METHODS, GatewayMetrics, _SharedRequestMetrics
from gateway.policy import build_policy
from tests.ops.harness import metric, parse_metrics

SECRET = "an-hmac-secret-for-the-metrics-tests-0123456789"


def scrape(metrics: GatewayMetrics) -> list[tuple[str, dict[str, str], float]]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return parse_metrics(body.decode())


def done(metrics: GatewayMetrics, **overrides: Any) -> None:
    values: dict[str, Any] = {
        "route": "api",
        "method": "GET",
        "status": 200,
        "decision": "allowed",
        "reason": "ok",
        "duration": 0.0002,
        "verify": 0.00005,
        "upstream": 0.0001,
    }
    values.update(overrides)
    metrics.request_done(**values)


def test_a_request_moves_requests_and_the_three_histograms() -> None:
    metrics = GatewayMetrics()
    done(metrics)
    samples = scrape(metrics)
    labels = {"route": "api", "method": "GET", "status_class": "2xx", "decision": "allowed"}
    assert metric(samples, "jwt_gateway_requests_total", **labels) == 1
    assert metric(samples, "jwt_gateway_request_duration_seconds_count", route="api") == 1
    assert metric(samples, "jwt_gateway_request_duration_seconds_bucket", route="api", le="0.0005") == 1
    assert metric(samples, "jwt_gateway_verify_duration_seconds_count") == 1
    assert metric(samples, "jwt_gateway_upstream_duration_seconds_count", route="api") == 1
    assert metric(samples, "jwt_gateway_denials_total") == 0


def test_no_verification_and_no_upstream_leave_their_histograms_alone() -> None:
    metrics = GatewayMetrics()
    done(
        metrics,
        verify=0.0,
        upstream=None,
        route=None,
        status=404,
        decision="denied",
        reason="route_not_found",
    )
    samples = scrape(metrics)
    assert metric(samples, "jwt_gateway_verify_duration_seconds_count") == 0
    assert metric(samples, "jwt_gateway_upstream_duration_seconds_count") == 0
    assert metric(samples, "jwt_gateway_requests_total", route="(none)", status_class="4xx") == 1
    assert metric(samples, "jwt_gateway_denials_total", route="(none)", reason="route_not_found") == 1


def test_denials_by_reason_and_report_only() -> None:
    metrics = GatewayMetrics()
    for reason in ("token_missing", "token_expired", "bad_signature", "token_expired"):
        done(metrics, status=401, decision="denied", reason=reason)
    done(metrics, decision="report_only", reason="rule_failed")
    done(metrics, decision="report_only", reason="ok")
    samples = scrape(metrics)
    assert metric(samples, "jwt_gateway_denials_total", reason="token_expired", decision="denied") == 2
    assert metric(samples, "jwt_gateway_denials_total", reason="token_missing") == 1
    assert metric(samples, "jwt_gateway_denials_total", reason="rule_failed", decision="report_only") == 1
    assert metric(samples, "jwt_gateway_denials_total", decision="report_only") == 1
    assert metric(samples, "jwt_gateway_requests_total", decision="report_only") == 2


def test_label_values_are_bounded() -> None:
    metrics = GatewayMetrics()
    for i in range(50):
        done(metrics, method=f"X{i}")  # arbitrary client methods
    done(metrics, status=999)
    done(metrics, decision="denied", reason="Not A Reason: /etc/passwd")
    samples = scrape(metrics)
    methods = {labels["method"] for name, labels, _ in samples if name == "jwt_gateway_requests_total"}
    assert methods <= KNOWN_METHODS | {"OTHER"}
    assert metric(samples, "jwt_gateway_requests_total", method="OTHER") == 50
    assert metric(samples, "jwt_gateway_requests_total", status_class="other") == 1
    assert metric(samples, "jwt_gateway_denials_total", reason="other") == 1
    assert len(metrics._request_children) == 3  # OTHER/2xx, GET/9xx, GET/2xx denied


def test_in_flight_gauge() -> None:
    metrics = GatewayMetrics()
    metrics.request_started()
    metrics.request_started()
    assert metric(scrape(metrics), "jwt_gateway_in_flight_requests") == 2
    metrics.request_ended()
    metrics.request_ended()
    assert metric(scrape(metrics), "jwt_gateway_in_flight_requests") == 0


def test_reloads_and_jwks_fetches() -> None:
    metrics = GatewayMetrics()
    samples = scrape(metrics)
    # Both outcomes exist from the start, so a rate() sees the first failure.
    assert ("jwt_gateway_config_reloads_total", {"outcome": "error"}, 0.0) in samples
    metrics.reload_done("ok")
    metrics.reload_done("error")
    metrics.reload_done("error")
    metrics.on_fetch("idp", "ok", 0.02)
    metrics.on_fetch("idp", "timeout", 5.0)
    metrics.on_fetch("idp", "something-new", 0.1)
    samples = scrape(metrics)
    assert metric(samples, "jwt_gateway_config_reloads_total", outcome="ok") == 1
    assert metric(samples, "jwt_gateway_config_reloads_total", outcome="error") == 2
    assert metric(samples, "jwt_gateway_jwks_fetches_total", provider="idp", outcome="ok") == 1
    assert metric(samples, "jwt_gateway_jwks_fetches_total", provider="idp", outcome="timeout") == 1
    assert metric(samples, "jwt_gateway_jwks_fetches_total", provider="idp", outcome="error") == 1
    assert metric(samples, "jwt_gateway_jwks_fetch_duration_seconds_count", provider="idp") == 3


def test_key_status_gauges_read_the_live_source() -> None:
    metrics = GatewayMetrics()
    status: dict[str, dict[str, Any]] = {
        "idp": {"ready": False, "keys": 0, "age": None},
        "hs": {"ready": True, "keys": 1, "age": None},
    }
    metrics.bind_key_status(lambda: status)
    samples = scrape(metrics)
    assert metric(samples, "jwt_gateway_provider_ready", provider="idp") == 0
    assert metric(samples, "jwt_gateway_jwks_keys", provider="hs") == 1
    assert not [s for s in samples if s[0] == "jwt_gateway_jwks_key_set_age_seconds"]
    status["idp"] = {"ready": True, "keys": 3, "age": 12.5}
    samples = scrape(metrics)
    assert metric(samples, "jwt_gateway_provider_ready", provider="idp") == 1
    assert metric(samples, "jwt_gateway_jwks_keys", provider="idp") == 3
    assert metric(samples, "jwt_gateway_jwks_key_set_age_seconds", provider="idp") == 12.5


@pytest.mark.parametrize("cache", [True, False])
async def test_token_cache_hits_and_misses_through_build_policy(cache: bool) -> None:
    metrics = GatewayMetrics()
    cfg = GatewayConfig.model_validate(
        {
            "upstream": "http://127.0.0.1:1",
            "token_cache": {"enabled": cache},
            "providers": {
                "hs": {
                    "issuer": "https://hs.test",
                    "secret": SECRET,
                    "algorithms": ["HS256"],
                    "audience": "any",
                }
            },
            "routes": [{"match": {"path": "/**"}}],
        }
    )
    policy = build_policy(cfg, events=metrics)
    token = jwt.encode({"iss": "https://hs.test", "sub": "u", "exp": int(time.time()) + 60}, SECRET, "HS256")
    for _ in range(3):
        await policy.verifier.verify(token)
    samples = scrape(metrics)
    assert metric(samples, "jwt_gateway_token_cache_misses_total") == (1 if cache else 0)
    assert metric(samples, "jwt_gateway_token_cache_hits_total") == (2 if cache else 0)
    # The static key source reported its key through the same events object.
    metrics.bind_key_status(policy.key_status)
    assert metric(scrape(metrics), "jwt_gateway_jwks_keys", provider="hs") == 1


def test_two_instances_do_not_share_values() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    done(first)
    assert metric(scrape(second), "jwt_gateway_requests_total") == 0


def _reference_metrics() -> tuple[GatewayMetrics, CollectorRegistry]:
    # The same hooks driving prometheus-client's own Counter/Histogram/Gauge objects (the
    # multiprocess path, with in-process values), registered in a registry of their own.
    reference = GatewayMetrics()
    shared = reference._shared = _SharedRequestMetrics()
    reference._local = None
    reference.token_cache_hit = shared.cache_hits.inc
    reference.token_cache_miss = shared.cache_misses.inc
    registry = CollectorRegistry(auto_describe=True)
    for collector in (
        shared.requests,
        shared.denials,
        shared.request_duration,
        shared.verify_duration,
        shared.upstream_duration,
        shared.in_flight,
        shared.cache_hits,
        shared.cache_misses,
    ):
        registry.register(collector)
    return reference, registry


def _request_lines(exposition: bytes) -> list[str]:
    # The request-path families, without the ``_created`` timestamps (they differ by nature).
    names = (
        "jwt_gateway_requests",
        "jwt_gateway_denials",
        "jwt_gateway_request_duration_seconds",
        "jwt_gateway_verify_duration_seconds",
        "jwt_gateway_upstream_duration_seconds",
        "jwt_gateway_in_flight_requests",
        "jwt_gateway_token_cache_hits",
        "jwt_gateway_token_cache_misses",
    )
    lines = []
    for line in exposition.decode().splitlines():
        name = line.split(" ")[2] if line.startswith("#") else line.split("{")[0].split(" ")[0]
        if name.startswith(names) and "_created" not in name:
            lines.append(line)
    return lines


def test_plain_number_metrics_expose_what_prometheus_client_objects_would() -> None:
    local = GatewayMetrics()
    reference, registry = _reference_metrics()
    events: list[dict[str, Any]] = [
        {},
        {"duration": 0.0005, "verify": 0.00025},  # on bucket bounds: ``le`` is inclusive
        {"duration": 120.0, "upstream": 99.0},  # beyond the last bound: +Inf only
        {"route": None, "status": 404, "decision": "denied", "reason": "no_route", "upstream": None},
        {"method": "BREW", "status": 401, "decision": "denied", "reason": "expired", "upstream": None},
        {"decision": "report_only", "reason": "bad_signature"},
        {"decision": "report_only", "reason": "ok"},
        {"reason": "Not A Stable Reason!", "decision": "denied", "status": 403, "verify": 0.0},
    ]
    for metrics in (local, reference):
        for overrides in events:
            metrics.request_started()
            done(metrics, **overrides)
        metrics.request_started()  # one still in flight
        for _ in range(3):
            metrics.request_ended()
        metrics.token_cache_hit()
        metrics.token_cache_hit()
        metrics.token_cache_miss()
    expected = _request_lines(generate_latest(registry))
    assert expected and any("_bucket" in line for line in expected)
    assert _request_lines(local.render()[0]) == expected


def test_created_samples_are_exposed_per_label_set() -> None:
    metrics = GatewayMetrics()
    before = time.time()
    done(metrics)
    samples = scrape(metrics)
    created = metric(
        samples,
        "jwt_gateway_requests_created",
        route="api",
        method="GET",
        status_class="2xx",
        decision="allowed",
    )
    assert before - 1 <= created <= time.time() + 1
