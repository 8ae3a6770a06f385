"""Prometheus metrics (prometheus-client).

One :class:`GatewayMetrics` per process holds every metric of the gateway::

    jwt_gateway_requests_total{route,method,status_class,decision}     counter
    jwt_gateway_denials_total{route,reason,decision}                    counter (denied / report_only)
    jwt_gateway_request_duration_seconds{route}                         histogram (whole request)
    jwt_gateway_verify_duration_seconds                                 histogram (token verification)
    jwt_gateway_upstream_duration_seconds{route}                        histogram (forwarded requests)
    jwt_gateway_in_flight_requests                                      gauge
    jwt_gateway_token_cache_hits_total / _misses_total                  counters
    jwt_gateway_jwks_fetches_total{provider,outcome}                    counter
    jwt_gateway_jwks_fetch_duration_seconds{provider}                   histogram
    jwt_gateway_jwks_keys{provider}                                     gauge (usable keys loaded)
    jwt_gateway_jwks_key_set_age_seconds{provider}                      gauge (remote sources only)
    jwt_gateway_provider_ready{provider}                                gauge (1: usable keys)
    jwt_gateway_config_reloads_total{outcome}                           counter (ok / error)

Label sets stay bounded: route and provider names come from the config, methods are folded
into a fixed set (anything else is ``OTHER``), reasons and outcomes are the gateway's stable
codes. Never a subject, a path, a token or a client address.

**One process** (the default): the metrics live in this object's own registry; the key-status
gauges are computed at scrape time from :meth:`gateway.policy.Policy.key_status`.

**Several workers** (``serve --workers N``): prometheus-client's multiprocess mode. The
supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before forking; each
worker's values live in memory-mapped files there, and whichever worker answers a scrape sums
them all (counters and histograms: sum; in-flight: sum over live workers; keys loaded and
ready: the minimum over live workers; key-set age: the maximum). Scrape-time collectors cannot
see other processes, so in this mode each worker copies its key status into the gauges every
few seconds (:meth:`GatewayMetrics.refresh_key_status`) and right before it answers a scrape.
Caveats of this mode: every worker reloads on SIGHUP, so one reload counts once per worker; and
label sets cannot be removed, so a provider dropped by a reload keeps its last key gauges until
the workers restart.

Cost on the request path: one dict lookup for the pre-bound children of (route, method,
status, decision), then one counter and up to three histogram observations (about 4 us per
request in one process, about 9 us with memory-mapped multiprocess values, on the 2-vCPU
development VM).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["KNOWN_METHODS", "GatewayMetrics", "KeyStatusSource", "enable_multiprocess_values"]

#: Methods that keep their name as a label value; any other method is counted as ``OTHER``.
KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"}
)

#: Label value for a request that matched no route.
NO_ROUTE: Final = "(none)"

#: Request-sized latencies: a proxied request takes a fraction of a millisecond.
_REQUEST_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: A cache hit costs microseconds, an RS256 verification ~100 us, an unknown-kid re-fetch up to
#: the JWKS timeout.
_VERIFY_BUCKETS: Final = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025, 0.1, 0.5, 2.5, 10.0)
_FETCH_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_STATUS_CLASSES: Final = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
#: A stable reason code looks like this; anything else is folded into ``other`` (defence in
#: depth: reasons are constants in the code, never request data).
_REASON: Final = re.compile(r"[a-z][a-z0-9_]{0,47}")

#: Returns ``Policy.key_status()``: provider name -> status mapping.
KeyStatusSource = Callable[[], Mapping[str, Mapping[str, Any]]]


def enable_multiprocess_values() -> None:
    """Make metrics created from now on store their values in ``PROMETHEUS_MULTIPROC_DIR``.

    prometheus-client picks its value class when it is first imported; a worker forked from a
    supervisor that imported it earlier switches here, before it creates any metric.
    """
    from prometheus_client import values

    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise RuntimeError("PROMETHEUS_MULTIPROC_DIR must be set for multiprocess metrics")
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def _status_class(status: int) -> str:
    index = status // 100
    return _STATUS_CLASSES[index] if 0 < index < 6 else "other"


class _KeyStatusCollector(Collector):
    """Scrape-time gauges from the live policy's key sources (one-process mode)."""

    def __init__(self, source: KeyStatusSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        keys = GaugeMetricFamily(
            "jwt_gateway_jwks_keys", "Usable keys loaded, by provider.", labels=["provider"]
        )
        age = GaugeMetricFamily(
            "jwt_gateway_jwks_key_set_age_seconds",
            "Seconds since the installed remote key set was fetched, by provider.",
            labels=["provider"],
        )
        ready = GaugeMetricFamily(
            "jwt_gateway_provider_ready", "1 when the provider has usable keys, else 0.", labels=["provider"]
        )
        for provider, status in self._source().items():
            keys.add_metric([provider], float(status["keys"]))
            if status.get("age") is not None:
                age.add_metric([provider], float(status["age"]))
            ready.add_metric([provider], 1.0 if status["ready"] else 0.0)
        yield keys
        yield age
        yield ready


class GatewayMetrics:
    """Every metric of one gateway process, and the hooks that move them.

    Implements :class:`gateway.policy.PolicyEvents` (key-source and token-cache events); the
    observer calls :meth:`request_started`, :meth:`request_ended` and :meth:`request_done`.
    """

    def __init__(self, *, multiprocess: bool = False) -> None:
        self.multiprocess = multiprocess
        if multiprocess:
            enable_multiprocess_values()
            # In multiprocess mode values live in files; the registry is built per scrape.
            registry: CollectorRegistry | None = None
            self.registry = CollectorRegistry(auto_describe=True)
        else:
            registry = self.registry = CollectorRegistry(auto_describe=True)
        self._key_source: KeyStatusSource | None = None

        self.requests = Counter(
            "jwt_gateway_requests",
            "Requests handled, by route, method, status class and decision.",
            ["route", "method", "status_class", "decision"],
            registry=registry,
        )
        self.denials = Counter(
            "jwt_gateway_denials",
            "Requests denied (decision=denied), or that would have been (decision=report_only), by reason.",
            ["route", "reason", "decision"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "jwt_gateway_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by route.",
            ["route"],
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.verify_duration = Histogram(
            "jwt_gateway_verify_duration_seconds",
            "Time spent verifying tokens (cache hits included).",
            buckets=_VERIFY_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            "jwt_gateway_upstream_duration_seconds",
            "Time spent waiting for the upstream, by route (forwarded requests).",
            ["route"],
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "jwt_gateway_in_flight_requests",
            "Requests being handled now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.token_cache_hits = Counter(
            "jwt_gateway_token_cache_hits", "Verified-token cache lookups that hit.", registry=registry
        )
        self.token_cache_misses = Counter(
            "jwt_gateway_token_cache_misses", "Verified-token cache lookups that missed.", registry=registry
        )
        self.jwks_fetches = Counter(
            "jwt_gateway_jwks_fetches",
            "JWKS / discovery fetch attempts, by provider and outcome.",
            ["provider", "outcome"],
            registry=registry,
        )
        self.jwks_fetch_duration = Histogram(
            "jwt_gateway_jwks_fetch_duration_seconds",
            "Duration of JWKS / discovery fetch attempts, by provider.",
            ["provider"],
            buckets=_FETCH_BUCKETS,
            registry=registry,
        )
        self.reloads = Counter(
            "jwt_gateway_config_reloads",
            "Config reloads, by outcome (ok, error: refused, the previous config kept serving).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("ok", "error"):
            self.reloads.labels(outcome)
        if multiprocess:
            self._keys_gauge = Gauge(
                "jwt_gateway_jwks_keys",
                "Usable keys loaded, by provider (minimum over workers).",
                ["provider"],
                multiprocess_mode="livemin",
            )
            self._age_gauge = Gauge(
                "jwt_gateway_jwks_key_set_age_seconds",
                "Seconds since the installed remote key set was fetched (maximum over workers).",
                ["provider"],
                multiprocess_mode="livemax",
            )
            self._ready_gauge = Gauge(
                "jwt_gateway_provider_ready",
                "1 when the provider has usable keys in every worker, else 0.",
                ["provider"],
                multiprocess_mode="livemin",
            )

        # Hot-path caches: labelled children bound once per label combination.
        self._request_children: dict[
            tuple[str | None, str, int, str], tuple[Callable[[], None], Callable[[float], None]]
        ] = {}
        self._upstream_children: dict[str | None, Callable[[float], None]] = {}
        self._denial_children: dict[tuple[str | None, str, str], Callable[[], None]] = {}
        self._in_flight_inc = self.in_flight.inc
        self._in_flight_dec = self.in_flight.dec
        self._verify_observe = self.verify_duration.observe
        self.token_cache_hit: Callable[[], None] = self.token_cache_hits.inc
        self.token_cache_miss: Callable[[], None] = self.token_cache_misses.inc

    # -- requests (the hot path) ----------------------------------------------------------------

    def request_started(self) -> None:
        """A request entered the gateway."""
        self._in_flight_inc()

    def request_ended(self) -> None:
        """A request left the gateway (however it ended)."""
        self._in_flight_dec()

    def request_done(
        self,
        route: str | None,
        method: str,
        status: int,
        decision: str,
        reason: str,
        duration: float,
        verify: float,
        upstream: float | None,
    ) -> None:
        """Count one finished request. Durations in seconds; ``upstream`` None: not forwarded."""
        # Every part of the key is bounded (config names, fixed method set, 3-digit statuses,
        # four decisions), so the cache of bound children is bounded too.
        key = (route, method if method in KNOWN_METHODS else "OTHER", status, decision)
        bound = self._request_children.get(key)
        if bound is None:
            bound = self._bind_request(key)
        bound[0]()
        bound[1](duration)
        if verify > 0.0:
            self._verify_observe(verify)
        if upstream is not None:
            observe = self._upstream_children.get(route)
            if observe is None:
                observe = self._upstream_children[route] = self.upstream_duration.labels(
                    NO_ROUTE if route is None else route
                ).observe
            observe(upstream)
        if decision == "denied" or (decision == "report_only" and reason != "ok"):
            dkey = (route, reason, decision)
            inc = self._denial_children.get(dkey)
            if inc is None:
                inc = self._denial_children[dkey] = self.denials.labels(
                    NO_ROUTE if route is None else route,
                    reason if _REASON.fullmatch(reason) else "other",
                    decision,
                ).inc
            inc()

    def _bind_request(
        self, key: tuple[str | None, str, int, str]
    ) -> tuple[Callable[[], None], Callable[[float], None]]:
        route, method, status, decision = key
        label_route = NO_ROUTE if route is None else route
        bound = (
            self.requests.labels(label_route, method, _status_class(status), decision).inc,
            self.request_duration.labels(label_route).observe,
        )
        self._request_children[key] = bound
        return bound

    # -- key sources (gateway.auth.keys.KeyEvents) ---------------------------------------------

    def on_fetch(self, provider: str, outcome: str, seconds: float) -> None:
        """One JWKS / discovery fetch attempt ended."""
        from gateway.auth.keys import FETCH_OUTCOMES

        self.jwks_fetches.labels(provider, outcome if outcome in FETCH_OUTCOMES else "error").inc()
        self.jwks_fetch_duration.labels(provider).observe(seconds)

    def on_keys(self, provider: str, count: int) -> None:
        """A key set was installed (the gauges read the sources themselves)."""
        if self.multiprocess:
            self.refresh_key_status()

    # -- config reloads ---------------------------------------------------------------------------

    def reload_done(self, outcome: str) -> None:
        """A config reload ended: ``ok`` or ``error``."""
        self.reloads.labels("ok" if outcome == "ok" else "error").inc()

    # -- key status gauges and the exposition ------------------------------------------------------

    def bind_key_status(self, source: KeyStatusSource) -> None:
        """Read key-status gauges (keys loaded, key-set age, ready) from ``source`` from now on."""
        if self._key_source is None and not self.multiprocess:
            self.registry.register(_KeyStatusCollector(self._current_key_status))
        self._key_source = source
        self.refresh_key_status()

    def _current_key_status(self) -> Mapping[str, Mapping[str, Any]]:
        source = self._key_source
        return source() if source is not None else {}

    def refresh_key_status(self) -> None:
        """Multiprocess mode: copy this worker's key status into the shared gauges."""
        source = self._key_source
        if not self.multiprocess or source is None:
            return
        for provider, status in source().items():
            self._keys_gauge.labels(provider).set(float(status["keys"]))
            self._ready_gauge.labels(provider).set(1.0 if status["ready"] else 0.0)
            age = status.get("age")
            if age is not None:  # static sources have no age
                self._age_gauge.labels(provider).set(float(age))

    def render(self) -> tuple[bytes, str]:
        """The text exposition (every worker's values in multiprocess mode) and its content type."""
        if self.multiprocess:
            from prometheus_client.multiprocess import MultiProcessCollector

            self.refresh_key_status()
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
