"""Access lines: JSON and text formats, escaping, and what a record may never carry."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import logs
from gateway.observe import MAX_LOGGED_SUBJECT, Observer, RequestRecord
from tests.ops.harness import capture_access


def record(**overrides: object) -> RequestRecord:
    values: dict[str, object] = {
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
        "upstream_status": 200,
        "duration_ms": 0.25,
        "verify_ms": 0.01,
        "upstream_ms": 0.2,
    }
    values.update(overrides)
    return RequestRecord(**values)  # type: ignore[arg-type]


def test_json_line_has_every_field_in_order_and_parses() -> None:
    line = logs.format_access(record().log_fields(), "json", created=0.5)
    assert line.endswith("\n") and line.count("\n") == 1
    parsed = json.loads(line)
    assert list(parsed) == ["ts", *logs.ACCESS_FIELDS]
    assert parsed["ts"] == "1970-01-01T00:00:00.500Z"
    assert parsed["route"] == "orders" and parsed["sub"] == "alice" and parsed["rule"] is None
    assert parsed["duration_ms"] == 0.25 and parsed["upstream_status"] == 200


def test_json_line_escapes_control_characters_and_quotes() -> None:
    hostile = 'alice"\r\n{"forged":true}\u2028é'
    line = logs.format_access(record(sub=hostile, path=None).log_fields(), "json")
    assert line.count("\n") == 1 and "\r" not in line and line.isascii()
    parsed = json.loads(line)
    assert parsed["sub"] == hostile and parsed["path"] is None


def test_integer_subject_and_other_field_sets() -> None:
    assert json.loads(logs.format_access(record(sub=42).log_fields(), "json"))["sub"] == 42
    # A mapping with other keys still makes one valid JSON line.
    parsed = json.loads(logs.format_access({"x": 1, "y": [1, 2]}, "json"))
    assert list(parsed) == ["ts", "x", "y"] and parsed["y"] == [1, 2]


def test_text_line_is_one_line_whatever_the_values() -> None:
    line = logs.format_access(
        record(sub="bob\nFAKE 200 allowed", rule="roles contains admin").log_fields(), "text"
    )
    assert line.count("\n") == 1
    assert "GET /api/orders -> 200 allowed/ok route=orders" in line
    assert "sub=bob\\x0aFAKE" in line and "rule=roles contains admin" in line and "rid=rid-1" in line


def test_long_subjects_are_cut() -> None:
    fields = record(sub="x" * 5000).log_fields()
    assert fields["sub"] == "x" * MAX_LOGGED_SUBJECT + "..."


def test_a_record_has_no_place_for_a_query_or_token() -> None:
    assert set(record().log_fields()) == set(logs.ACCESS_FIELDS)
    assert not {"query", "token", "authorization", "headers", "url"} & set(logs.ACCESS_FIELDS)


def test_writer_writes_whole_lines() -> None:
    stream = io.StringIO()
    writer = logs.AccessWriter(stream, "json")
    writer(record().log_fields())
    writer(record(request_id="rid-2").log_fields())
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["rid-1", "rid-2"]


def test_observer_writes_one_line_per_request() -> None:
    with capture_access() as out:
        Observer().request_done(record())
    assert json.loads(out.getvalue())["request_id"] == "rid-1"


def test_before_configure_lines_go_through_the_logging_module() -> None:
    previous = logs._writer
    logs._writer = logs._via_logging
    handler = logging.Handler()
    seen: list[logging.LogRecord] = []
    handler.emit = seen.append  # type: ignore[method-assign,assignment]
    logs.ACCESS.addHandler(handler)
    level = logs.ACCESS.level
    logs.ACCESS.setLevel(logging.INFO)
    try:
        logs.access(record().log_fields())
    finally:
        logs.ACCESS.removeHandler(handler)
        logs.ACCESS.setLevel(level)
        logs._writer = previous
    assert len(seen) == 1
    assert json.loads(logs.JSONFormatter().format(seen[0]))["route"] == "orders"


# ============================================================ lines formatted from a record

_text_values = st.text(max_size=40)
_optional_text = st.none() | _text_values


@settings(max_examples=200, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "BREW"]) | _text_values,
    path=_optional_text,
    route=_optional_text,
    status=st.integers(100, 599),
    reason=_text_values,
    rule=_optional_text,
    provider=_optional_text,
    sub=_optional_text | st.integers() | st.just("s" * (MAX_LOGGED_SUBJECT + 5)),
    client=_optional_text,
    upstream_status=st.none() | st.integers(100, 599),
    duration=st.floats(0, 1e4, allow_nan=False),
)
def test_a_record_formats_to_the_line_of_its_fields(
    method: str,
    path: str | None,
    route: str | None,
    status: int,
    reason: str,
    rule: str | None,
    provider: str | None,
    sub: str | int | None,
    client: str | None,
    upstream_status: int | None,
    duration: float,
) -> None:
    r = record(
        method=method,
        path=path,
        route=route,
        status=status,
        reason=reason,
        rule=rule,
        provider=provider,
        sub=sub,
        client=client,
        upstream_status=upstream_status,
        duration_ms=duration,
    )
    for fmt in ("json", "text"):
        # Twice: the second line is built from the cached constant stretches.
        for _ in range(2):
            assert logs.format_record(r, fmt, created=12.5) == logs.format_access(
                r.log_fields(), fmt, created=12.5
            )


# ======================================================================= the buffered writer


def _buffered(stream: io.StringIO, seconds: float = 0.05) -> logs.AccessWriter:
    return logs.AccessWriter(stream, "json", flush_seconds=seconds)


def _ids(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]


async def test_lines_on_the_loop_wait_for_the_timer() -> None:
    stream = io.StringIO()
    writer = _buffered(stream)
    writer(record(request_id="a"))
    writer(record(request_id="b"))
    assert stream.getvalue() == ""  # buffered
    await asyncio.sleep(0.2)
    assert _ids(stream) == ["a", "b"]


async def test_a_full_buffer_is_written_at_once() -> None:
    stream = io.StringIO()
    writer = _buffered(stream, seconds=60)
    count = 0
    while not stream.getvalue():
        writer(record(request_id=str(count)))
        count += 1
        assert count < 10_000
    assert len(stream.getvalue()) >= logs.FLUSH_BYTES
    assert _ids(stream) == [str(i) for i in range(count)]  # whole lines, in order
    writer.flush()


async def test_flush_writes_out_and_cancels_the_timer() -> None:
    stream = io.StringIO()
    writer = _buffered(stream, seconds=0.05)
    writer(record(request_id="a"))
    writer.flush()
    assert _ids(stream) == ["a"]
    await asyncio.sleep(0.15)  # the cancelled timer writes nothing twice
    assert _ids(stream) == ["a"]


async def test_a_line_from_another_thread_goes_out_at_once_after_the_buffered_ones() -> None:
    stream = io.StringIO()
    writer = _buffered(stream, seconds=60)
    writer(record(request_id="on-the-loop"))
    thread = threading.Thread(target=writer, args=(record(request_id="from-a-thread"),))
    thread.start()
    thread.join()
    assert _ids(stream) == ["on-the-loop", "from-a-thread"]


def test_without_a_loop_every_line_is_written_through() -> None:
    stream = io.StringIO()
    writer = _buffered(stream)
    writer(record(request_id="a"))
    assert _ids(stream) == ["a"]


async def test_the_module_flush_writes_out_the_installed_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    writer = _buffered(stream, seconds=60)
    monkeypatch.setattr(logs, "_writer", writer)
    writer(record(request_id="a"))
    logs.flush()
    assert _ids(stream) == ["a"]
