"""Prometheus metrics (prometheus-client). Label sets stay bounded: never subjects, paths or tokens."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest

REQUESTS = Counter(
    "jwt_gateway_requests_total",
    "Requests handled, by route, method, status class and decision.",
    ["route", "method", "status_class", "decision"],
)


def render_metrics() -> tuple[bytes, str]:
    """The text exposition of every registered metric, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
