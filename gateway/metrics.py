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

**One process** (the default): the request-path metrics (requests, denials, the three
histograms, in-flight, token-cache hits and misses) are plain Python numbers, exposed at scrape
time by a collector in this object's own registry with the names, types, labels, ``_created``
samples and bucket bounds prometheus-client's own Counter/Histogram/Gauge would give them. The
rare events (JWKS fetches, reloads) stay prometheus-client metrics in the same registry; the
key-status gauges are computed at scrape time from :meth:`gateway.policy.Policy.key_status`.
The loop thread moves the numbers; a scrape from another thread copies each table first.

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

The workers keep prometheus-client's own metric objects on the request path (values in the
memory-mapped files, one lock per operation): correctness over speed there, as every worker's
numbers must be in the files whenever any worker answers a scrape.

Cost on the request path, one process: one dict lookup for the cell of (route, method, status,
decision), then integer increments and a ``bisect`` per histogram (no lock, no call into
prometheus-client): about 1 us per request on the 2-vCPU development VM, against about 4 us
with prometheus-client's objects (about 9 us with memory-mapped multiprocess values).
"""

from __future__ import annotations

import os
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import metrics as _prometheus_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

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


_REQUESTS_HELP: Final = "Requests handled, by route, method, status class and decision."
_DENIALS_HELP: Final = (
    "Requests denied (decision=denied), or that would have been (decision=report_only), by reason."
)
_REQUEST_DURATION_HELP: Final = "Time from the request's arrival to the end of its response, by route."
_VERIFY_HELP: Final = "Time spent verifying tokens (cache hits included)."
_UPSTREAM_HELP: Final = "Time spent waiting for the upstream, by route (forwarded requests)."
_IN_FLIGHT_HELP: Final = "Requests being handled now."
_CACHE_HITS_HELP: Final = "Verified-token cache lookups that hit."
_CACHE_MISSES_HELP: Final = "Verified-token cache lookups that missed."


class _Count:
    """One counter child: its value and when its label set was first seen."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0
        self.created = time.time()


class _Histogram:
    """One histogram child: per-bucket counts (not cumulative; the last is +Inf) and the sum.

    ``counts[bisect_left(bounds, value)] += 1`` files a value under the first bound >= it:
    Prometheus buckets are upper-inclusive (``le``).
    """

    __slots__ = ("counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()


class _LocalRequestMetrics:
    """The request-path metrics of one process as plain numbers (see the module docstring).

    Tables are keyed by label tuples (bounded: config names, the fixed method set, status
    classes, decisions, stable reasons). Moved from the event loop's thread only.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, str], _Count] = {}
        self.denials: dict[tuple[str, str, str], _Count] = {}
        #: (route, reason as given, decision) -> its denials cell (the reason checked once).
        self.denial_cells: dict[tuple[str | None, str, str], _Count] = {}
        self.durations: dict[str, _Histogram] = {}
        self.upstreams: dict[str, _Histogram] = {}
        self.verify = _Histogram(_VERIFY_BUCKETS)
        self.in_flight = 0
        self.cache_hits = _Count()
        self.cache_misses = _Count()

    def duration_of(self, route: str) -> _Histogram:
        histogram = self.durations.get(route)
        if histogram is None:
            histogram = self.durations[route] = _Histogram(_REQUEST_BUCKETS)
        return histogram

    def upstream_of(self, route: str) -> _Histogram:
        histogram = self.upstreams.get(route)
        if histogram is None:
            histogram = self.upstreams[route] = _Histogram(_REQUEST_BUCKETS)
        return histogram

    def request_count(self, labels: tuple[str, str, str, str]) -> _Count:
        count = self.requests.get(labels)
        if count is None:
            count = self.requests[labels] = _Count()
        return count

    def denial_count(self, key: tuple[str | None, str, str]) -> _Count:
        route, reason, decision = key
        labels = (NO_ROUTE if route is None else route, _reason_label(reason), decision)
        count = self.denials.get(labels)
        if count is None:
            count = self.denials[labels] = _Count()
        self.denial_cells[key] = count
        return count


def _le_labels(bounds: tuple[float, ...]) -> tuple[str, ...]:
    # The ``le`` label values prometheus-client writes, computed once.
    return tuple(str(floatToGoString(bound)) for bound in (*bounds, INF))  # type: ignore[no-untyped-call]


_REQUEST_LE: Final = _le_labels(_REQUEST_BUCKETS)
_VERIFY_LE: Final = _le_labels(_VERIFY_BUCKETS)


def _counter_family(
    name: str,
    documentation: str,
    labelnames: tuple[str, ...],
    children: Iterable[tuple[tuple[str, ...], _Count]],
) -> Metric:
    # The samples prometheus-client's Counter gives: ``_total`` then ``_created`` per child.
    metric = Metric(name, documentation, "counter")
    created = _prometheus_metrics._use_created
    for labels, count in children:
        sample_labels = dict(zip(labelnames, labels, strict=True))
        metric.add_sample(name + "_total", sample_labels, float(count.value))
        if created:
            metric.add_sample(name + "_created", dict(sample_labels), count.created)
    return metric


def _histogram_family(
    name: str,
    documentation: str,
    labelnames: tuple[str, ...],
    le: tuple[str, ...],
    children: Iterable[tuple[tuple[str, ...], _Histogram]],
) -> Metric:
    # The samples prometheus-client's Histogram gives: cumulative buckets, count, sum, created.
    metric = Metric(name, documentation, "histogram")
    created = _prometheus_metrics._use_created
    for labels, histogram in children:
        base = list(zip(labelnames, labels, strict=True))
        counts = list(histogram.counts)
        total = 0.0
        for bound, count in zip(le, counts, strict=True):
            total += count
            metric.add_sample(name + "_bucket", dict([*base, ("le", bound)]), total)
        metric.add_sample(name + "_count", dict(base), total)
        metric.add_sample(name + "_sum", dict(base), histogram.sum)
        if created:
            metric.add_sample(name + "_created", dict(base), histogram.created)
    return metric


class _LocalRequestCollector(Collector):
    """Exposes :class:`_LocalRequestMetrics` at scrape time, in prometheus-client's own order."""

    def __init__(self, values: _LocalRequestMetrics) -> None:
        self._values = values

    def describe(self) -> Iterable[Metric]:
        return [
            Metric("jwt_gateway_requests", _REQUESTS_HELP, "counter"),
            Metric("jwt_gateway_denials", _DENIALS_HELP, "counter"),
            Metric("jwt_gateway_request_duration_seconds", _REQUEST_DURATION_HELP, "histogram"),
            Metric("jwt_gateway_verify_duration_seconds", _VERIFY_HELP, "histogram"),
            Metric("jwt_gateway_upstream_duration_seconds", _UPSTREAM_HELP, "histogram"),
            Metric("jwt_gateway_in_flight_requests", _IN_FLIGHT_HELP, "gauge"),
            Metric("jwt_gateway_token_cache_hits", _CACHE_HITS_HELP, "counter"),
            Metric("jwt_gateway_token_cache_misses", _CACHE_MISSES_HELP, "counter"),
        ]

    def collect(self) -> Iterator[Metric]:
        values = self._values
        # Copies first (one C call each): the loop thread may add a label set meanwhile.
        yield _counter_family(
            "jwt_gateway_requests",
            _REQUESTS_HELP,
            ("route", "method", "status_class", "decision"),
            list(values.requests.items()),
        )
        yield _counter_family(
            "jwt_gateway_denials",
            _DENIALS_HELP,
            ("route", "reason", "decision"),
            list(values.denials.items()),
        )
        yield _histogram_family(
            "jwt_gateway_request_duration_seconds",
            _REQUEST_DURATION_HELP,
            ("route",),
            _REQUEST_LE,
            [((route,), histogram) for route, histogram in list(values.durations.items())],
        )
        yield _histogram_family(
            "jwt_gateway_verify_duration_seconds", _VERIFY_HELP, (), _VERIFY_LE, [((), values.verify)]
        )
        yield _histogram_family(
            "jwt_gateway_upstream_duration_seconds",
            _UPSTREAM_HELP,
            ("route",),
            _REQUEST_LE,
            [((route,), histogram) for route, histogram in list(values.upstreams.items())],
        )
        in_flight = Metric("jwt_gateway_in_flight_requests", _IN_FLIGHT_HELP, "gauge")
        in_flight.add_sample("jwt_gateway_in_flight_requests", {}, float(values.in_flight))
        yield in_flight
        yield _counter_family("jwt_gateway_token_cache_hits", _CACHE_HITS_HELP, (), [((), values.cache_hits)])
        yield _counter_family(
            "jwt_gateway_token_cache_misses", _CACHE_MISSES_HELP, (), [((), values.cache_misses)]
        )


class _SharedRequestMetrics:
    """The request-path metrics of a worker: prometheus-client objects whose values live in
    ``PROMETHEUS_MULTIPROC_DIR`` (summed over the workers by whichever answers a scrape)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "jwt_gateway_requests",
            _REQUESTS_HELP,
            ["route", "method", "status_class", "decision"],
            registry=None,
        )
        self.denials = Counter(
            "jwt_gateway_denials", _DENIALS_HELP, ["route", "reason", "decision"], registry=None
        )
        self.request_duration = Histogram(
            "jwt_gateway_request_duration_seconds",
            _REQUEST_DURATION_HELP,
            ["route"],
            buckets=_REQUEST_BUCKETS,
            registry=None,
        )
        self.verify_duration = Histogram(
            "jwt_gateway_verify_duration_seconds", _VERIFY_HELP, buckets=_VERIFY_BUCKETS, registry=None
        )
        self.upstream_duration = Histogram(
            "jwt_gateway_upstream_duration_seconds",
            _UPSTREAM_HELP,
            ["route"],
            buckets=_REQUEST_BUCKETS,
            registry=None,
        )
        self.in_flight = Gauge(
            "jwt_gateway_in_flight_requests", _IN_FLIGHT_HELP, registry=None, multiprocess_mode="livesum"
        )
        self.cache_hits = Counter("jwt_gateway_token_cache_hits", _CACHE_HITS_HELP, registry=None)
        self.cache_misses = Counter("jwt_gateway_token_cache_misses", _CACHE_MISSES_HELP, registry=None)
        # Labelled children bound once per label combination.
        self.upstream_children: dict[str | None, Callable[[float], None]] = {}
        self.denial_children: dict[tuple[str | None, str, str], Callable[[], None]] = {}

    def done(
        self,
        bound: tuple[Callable[[], None], Callable[[float], None]],
        route: str | None,
        reason: str,
        decision: str,
        duration: float,
        verify: float,
        upstream: float | None,
    ) -> None:
        bound[0]()
        bound[1](duration)
        if verify > 0.0:
            self.verify_duration.observe(verify)
        if upstream is not None:
            observe = self.upstream_children.get(route)
            if observe is None:
                observe = self.upstream_children[route] = self.upstream_duration.labels(
                    NO_ROUTE if route is None else route
                ).observe
            observe(upstream)
        if decision == "denied" or (decision == "report_only" and reason != "ok"):
            key = (route, reason, decision)
            inc = self.denial_children.get(key)
            if inc is None:
                inc = self.denial_children[key] = self.denials.labels(
                    NO_ROUTE if route is None else route, _reason_label(reason), decision
                ).inc
            inc()


def _reason_label(reason: str) -> str:
    return reason if _REASON.fullmatch(reason) else "other"


#: What a (route, method, status, decision) key is bound to: in one process, a list of the
#: requests counter cell, the route's duration histogram and its upstream histogram (``None``
#: until the route first forwards: a series appears once it has a value, as with
#: prometheus-client); in a worker, the prometheus-client children's ``inc`` and ``observe``.
_Bound = Any


class GatewayMetrics:
    """Every metric of one gateway process, and the hooks that move them.

    Implements :class:`gateway.policy.PolicyEvents` (key-source and token-cache events); the
    observer calls :meth:`request_started`, :meth:`request_ended` and :meth:`request_done`.
    """

    def __init__(self, *, multiprocess: bool = False) -> None:
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry(auto_describe=True)
        self._key_source: KeyStatusSource | None = None
        self._local: _LocalRequestMetrics | None = None
        self._shared: _SharedRequestMetrics | None = None
        if multiprocess:
            enable_multiprocess_values()
            # In multiprocess mode values live in files; the registry is built per scrape.
            registry: CollectorRegistry | None = None
            shared = self._shared = _SharedRequestMetrics()
            self.token_cache_hit: Callable[[], None] = shared.cache_hits.inc
            self.token_cache_miss: Callable[[], None] = shared.cache_misses.inc
        else:
            registry = self.registry
            local = self._local = _LocalRequestMetrics()
            # Registered first: the exposition keeps the order of the metric list above.
            registry.register(_LocalRequestCollector(local))
            self.token_cache_hit = self._cache_hit
            self.token_cache_miss = self._cache_miss
        #: (route, method, status, decision) -> what it moves (see ``_Bound``).
        self._request_children: dict[tuple[str | None, str, int, str], _Bound] = {}

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

    # -- requests (the hot path) ----------------------------------------------------------------

    def request_started(self) -> None:
        """A request entered the gateway."""
        local = self._local
        if local is not None:
            local.in_flight += 1
        else:
            assert self._shared is not None
            self._shared.in_flight.inc()

    def request_ended(self) -> None:
        """A request left the gateway (however it ended)."""
        local = self._local
        if local is not None:
            local.in_flight -= 1
        else:
            assert self._shared is not None
            self._shared.in_flight.dec()

    def _cache_hit(self) -> None:
        assert self._local is not None
        self._local.cache_hits.value += 1

    def _cache_miss(self) -> None:
        assert self._local is not None
        self._local.cache_misses.value += 1

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
        # four decisions), so the table of bound cells is bounded too.
        key = (route, method if method in KNOWN_METHODS else "OTHER", status, decision)
        bound = self._request_children.get(key)
        if bound is None:
            bound = self._bind_request(key)
        local = self._local
        if local is None:
            assert self._shared is not None
            self._shared.done(bound, route, reason, decision, duration, verify, upstream)
            return
        bound[0].value += 1
        histogram: _Histogram = bound[1]
        histogram.counts[bisect_left(_REQUEST_BUCKETS, duration)] += 1
        histogram.sum += duration
        if verify > 0.0:
            histogram = local.verify
            histogram.counts[bisect_left(_VERIFY_BUCKETS, verify)] += 1
            histogram.sum += verify
        if upstream is not None:
            forwarded: _Histogram | None = bound[2]
            if forwarded is None:
                forwarded = bound[2] = local.upstream_of(NO_ROUTE if route is None else route)
            forwarded.counts[bisect_left(_REQUEST_BUCKETS, upstream)] += 1
            forwarded.sum += upstream
        if decision == "denied" or (decision == "report_only" and reason != "ok"):
            dkey = (route, reason, decision)
            count = local.denial_cells.get(dkey)
            if count is None:
                count = local.denial_count(dkey)
            count.value += 1

    def _bind_request(self, key: tuple[str | None, str, int, str]) -> _Bound:
        route, method, status, decision = key
        label_route = NO_ROUTE if route is None else route
        labels = (label_route, method, _status_class(status), decision)
        bound: _Bound
        if self._local is not None:
            bound = [self._local.request_count(labels), self._local.duration_of(label_route), None]
        else:
            assert self._shared is not None
            bound = (
                self._shared.requests.labels(*labels).inc,
                self._shared.request_duration.labels(label_route).observe,
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
