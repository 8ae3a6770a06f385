"""RequestRecord and Observer (gateway/observe.py) as units: field order, the subject cut, and
what the observer hands to its metrics (a recording fake). (Line formats, escaping and the
writer: tests/ops/test_logs.py; the real metrics: tests/ops/test_metrics.py.)"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from gateway import logs
from gateway.observe import MAX_LOGGED_SUBJECT, Observer, RequestRecord
from tests.ops.harness import capture_access


def record(**overrides: Any) -> RequestRecord:
    values: dict[str, Any] = {
        "request_id": "rid-1",
        "method": "GET",
        "path": "/api/orders",
        "route": "orders",
        "status": 200,
        "decision": "allowed",
        "reason": "ok",
        "provider": "corp",
        "sub": "alice",
        "client": "127.0.0.1",
        "upstream_status": 201,
        "duration_ms": 1500.0,
        "verify_ms": 250.0,
        "upstream_ms": 1000.0,
    }
    values.update(overrides)
    return RequestRecord(**values)


class RecordingMetrics:
    """Stands in for GatewayMetrics: records every call the observer makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> None:
            self.calls.append((name, args))

        return call


def test_log_fields_are_the_access_fields_in_order() -> None:
    assert list(record().log_fields()) == list(logs.ACCESS_FIELDS)


def test_log_fields_carry_the_record_values() -> None:
    r = record(rule="roles contains admin", sub=42, path=None)
    fields = r.log_fields()
    assert fields == {name: getattr(r, name) for name in logs.ACCESS_FIELDS}
    assert fields["sub"] == 42  # an integer subject is never cut or quoted


def test_every_record_field_is_logged() -> None:
    # A field added to the record but not to the log (or the other way round) is caught here.
    assert {f.name for f in dataclasses.fields(RequestRecord)} == set(logs.ACCESS_FIELDS)
    assert record().rule is None


@pytest.mark.parametrize(
    ("length", "logged"),
    [(MAX_LOGGED_SUBJECT, MAX_LOGGED_SUBJECT), (MAX_LOGGED_SUBJECT + 1, MAX_LOGGED_SUBJECT + 3)],
)
def test_a_subject_is_cut_only_beyond_the_maximum(length: int, logged: int) -> None:
    sub = "x" * length
    fields = record(sub=sub).log_fields()
    assert len(fields["sub"]) == logged
    assert fields["sub"].endswith("...") == (length > MAX_LOGGED_SUBJECT)


def test_the_record_itself_is_not_changed_by_the_cut() -> None:
    r = record(sub="y" * (MAX_LOGGED_SUBJECT * 2))
    r.log_fields()
    assert r.sub == "y" * (MAX_LOGGED_SUBJECT * 2)


def test_request_done_logs_and_counts_in_seconds() -> None:
    metrics = RecordingMetrics()
    with capture_access() as out:
        Observer(metrics).request_done(record())  # type: ignore[arg-type]
    assert json.loads(out.getvalue())["request_id"] == "rid-1"
    assert metrics.calls == [("request_done", ("orders", "GET", 200, "allowed", "ok", 1.5, 0.25, 1.0))]


def test_no_upstream_answer_means_no_upstream_duration() -> None:
    metrics = RecordingMetrics()
    denied = record(
        status=403, decision="denied", reason="rule_failed", upstream_status=None, upstream_ms=0.0
    )
    with capture_access():
        Observer(metrics).request_done(denied)  # type: ignore[arg-type]
    (name, args), *_ = metrics.calls
    assert name == "request_done" and args[-1] is None
    assert args[:5] == ("orders", "GET", 403, "denied", "rule_failed")


def test_in_flight_and_reload_events_go_to_the_metrics() -> None:
    metrics = RecordingMetrics()
    observer = Observer(metrics)  # type: ignore[arg-type]
    observer.request_started()
    observer.request_ended()
    observer.reload_done("error")
    assert metrics.calls == [("request_started", ()), ("request_ended", ()), ("reload_done", ("error",))]
    assert observer.policy_events is metrics


def test_without_metrics_the_observer_still_logs() -> None:
    observer = Observer()
    assert observer.metrics is None and observer.policy_events is None
    with capture_access() as out:
        observer.request_started()
        observer.request_done(record(request_id="rid-9"))
        observer.request_ended()
        observer.reload_done("ok")
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["rid-9"]
