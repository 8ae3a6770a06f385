"""Logging: one structured access line per request, plus diagnostic logs.

Access lines go to stdout, diagnostics (the ``jwt_gateway`` logger, uvicorn's errors) to
stderr, as JSON objects (``logging.format: json``) or as plain text for development
(``text``). Nothing here ever receives a token, a secret or a key: callers pass only the fields
of :class:`gateway.observe.RequestRecord`, and the query string is never logged at all (it may
carry a token parameter).

Access lines skip the :mod:`logging` machinery once :func:`configure` has run: a request pays for
one line formatted straight from its record (no intermediate dict), appended to a buffer. The
buffer is written out in one ``write`` + ``flush`` when it passes 64 KiB, at the latest 100 ms
after its first line (a timer on the event loop), and at shutdown (:func:`flush`, called when
the servers stop, and at interpreter exit): one system call per few hundred lines under load
instead of one per line, and whole lines only, never interleaved. A line written from a thread
without a running event loop (a WSGI host) is written through at once. With the access log
off, nothing is formatted at all.

Before :func:`configure` (the gateway embedded as a library), access lines go to the
``jwt_gateway.access`` logger, so the host's logging setup decides.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii
from typing import Any, Final, TextIO

ACCESS = logging.getLogger("jwt_gateway.access")
log = logging.getLogger("jwt_gateway")

__all__ = [
    "ACCESS",
    "ACCESS_FIELDS",
    "MAX_LOGGED_SUBJECT",
    "AccessRecord",
    "AccessWriter",
    "JSONFormatter",
    "TextFormatter",
    "access",
    "configure",
    "flush",
    "format_access",
    "format_record",
]

_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, default=str)
#: Control characters (CR, LF, ESC...) are escaped in text lines: no forged log lines.
_CONTROL: Final = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}

#: A logged subject is cut to this many characters (a subject is an id, not a document).
MAX_LOGGED_SUBJECT: Final = 256
#: The buffered writer writes its lines out when they pass this size...
FLUSH_BYTES: Final = 64 * 1024
#: ... or this many seconds after the first line went into an empty buffer.
FLUSH_SECONDS: Final = 0.1

#: The fields of an access line, in order (see :meth:`gateway.observe.RequestRecord.log_fields`).
ACCESS_FIELDS: Final = (
    "request_id",
    "method",
    "path",
    "route",
    "status",
    "decision",
    "reason",
    "rule",
    "provider",
    "sub",
    "client",
    "upstream_status",
    "duration_ms",
    "verify_ms",
    "upstream_ms",
)
# One %-template for the usual line: about half the cost of json.dumps on the same dict
# (which builds a new C encoder on every call). Strings go through the json module's escaper.
_JSON_LINE: Final = (
    '{"ts":"%s","request_id":%s,"method":%s,"path":%s,"route":%s,"status":%d,"decision":%s,'
    '"reason":%s,"rule":%s,"provider":%s,"sub":%s,"client":%s,"upstream_status":%s,'
    '"duration_ms":%r,"verify_ms":%r,"upstream_ms":%r}\n'
)


def _json(value: Any) -> str:
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is int:
        return str(value)
    return _ENCODER.encode(value)


_second: tuple[int, str] = (-1, "")


def _iso(created: float) -> str:
    """``2026-01-31T12:34:56.789Z`` (UTC, milliseconds); the second part is formatted once."""
    global _second
    whole = int(created)
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{cached[1]}.{int((created - whole) * 1000):03d}Z"


_millisecond: tuple[int, str] = (-1, "")


def _iso_cached(created: float) -> str:
    """:func:`_iso`, formatted once per millisecond (a busy gateway logs many lines in one)."""
    global _millisecond
    key = int(created * 1000)
    cached = _millisecond
    if cached[0] != key:
        cached = _millisecond = (key, _iso(created))
    return cached[1]


def _text(value: Any) -> str:
    return str(value).translate(_CONTROL)


def format_access(fields: Mapping[str, Any], fmt: str, created: float | None = None) -> str:
    """One access line (with its newline) in ``json`` or ``text`` format."""
    ts = _iso(time.time() if created is None else created)
    if fmt == "json":
        if len(fields) == len(ACCESS_FIELDS):
            try:
                return _json_line(ts, fields)
            except (KeyError, TypeError):
                pass  # not the usual fields: the generic encoding below
        body = _ENCODER.encode(fields)
        return f'{{"ts":"{ts}",{body[1:]}\n' if len(body) > 2 else f'{{"ts":"{ts}"}}\n'
    f = fields
    line = (
        f"{ts} {_text(f.get('method'))} {_text(f.get('path'))} -> {f.get('status')} "
        f"{f.get('decision')}/{f.get('reason')} route={_text(f.get('route'))} "
        f"{f.get('duration_ms')}ms rid={f.get('request_id')}"
    )
    if f.get("upstream_status") is not None:
        line += f" upstream={f['upstream_status']}/{f.get('upstream_ms')}ms"
    if f.get("provider") is not None:
        line += f" provider={_text(f['provider'])}"
    if f.get("sub") is not None:
        line += f" sub={_text(f['sub'])}"
    if f.get("rule") is not None:
        line += f" rule={_text(f['rule'])}"
    return line + "\n"


def _json_line(ts: str, f: Mapping[str, Any]) -> str:
    esc = encode_basestring_ascii
    return _JSON_LINE % (
        ts,
        esc(f["request_id"]),
        esc(f["method"]),
        _json(f["path"]),
        _json(f["route"]),
        f["status"],
        esc(f["decision"]),
        esc(f["reason"]),
        _json(f["rule"]),
        _json(f["provider"]),
        _json(f["sub"]),
        _json(f["client"]),
        _json(f["upstream_status"]),
        float(f["duration_ms"]),
        float(f["verify_ms"]),
        float(f["upstream_ms"]),
    )


class AccessRecord:
    """What an access line is made of (:class:`gateway.observe.RequestRecord` is one).

    A writer formats a record's attributes straight into a line; :meth:`log_fields` gives them
    as a mapping for everything else (text lines, the :mod:`logging` fallback).
    """

    __slots__ = ()

    request_id: str
    method: str
    path: str | None
    route: str | None
    status: int
    decision: str
    reason: str
    rule: str | None
    provider: str | None
    sub: str | int | None
    client: str | None
    upstream_status: int | None
    duration_ms: float
    verify_ms: float
    upstream_ms: float

    def log_fields(self) -> dict[str, Any]:
        """The access-log fields, in log order."""
        raise NotImplementedError


#: (method, route, status, decision, reason, rule, provider) -> the two constant stretches of a
#: JSON line around its path: ``,"method":..,"path":`` and ``,"route":..,"sub":``. Their values
#: come from the config and the code (a client's method only among the first entries).
_SEGMENTS: dict[tuple[Any, ...], tuple[str, str]] = {}
_SEGMENTS_MAX = 1024


def _opt(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def _segments(r: AccessRecord) -> tuple[str, str]:
    key = (r.method, r.route, r.status, r.decision, r.reason, r.rule, r.provider)
    found = _SEGMENTS.get(key)
    if found is None:
        esc = encode_basestring_ascii
        found = (
            f',"method":{esc(r.method)},"path":',
            f',"route":{_opt(r.route)},"status":{r.status:d},"decision":{esc(r.decision)},'
            f'"reason":{esc(r.reason)},"rule":{_opt(r.rule)},"provider":{_opt(r.provider)},"sub":',
        )
        if len(_SEGMENTS) < _SEGMENTS_MAX:
            _SEGMENTS[key] = found
    return found


def _record_json_line(ts: str, r: AccessRecord) -> str:
    # The same line as _json_line(ts, r.log_fields()), assembled from cached stretches.
    sub = r.sub
    if type(sub) is str:
        if len(sub) > MAX_LOGGED_SUBJECT:
            sub = sub[:MAX_LOGGED_SUBJECT] + "..."
        logged_sub = encode_basestring_ascii(sub)
    else:
        logged_sub = _json(sub)
    path = r.path
    client = r.client
    upstream_status = r.upstream_status
    method_path, route_sub = _segments(r)
    return (
        f'{{"ts":"{ts}","request_id":{encode_basestring_ascii(r.request_id)}{method_path}'
        f"{'null' if path is None else encode_basestring_ascii(path)}{route_sub}{logged_sub},"
        f'"client":{"null" if client is None else encode_basestring_ascii(client)},'
        f'"upstream_status":{"null" if upstream_status is None else upstream_status},'
        f'"duration_ms":{float(r.duration_ms)!r},"verify_ms":{float(r.verify_ms)!r},'
        f'"upstream_ms":{float(r.upstream_ms)!r}}}\n'
    )


def format_record(record: AccessRecord, fmt: str, created: float | None = None) -> str:
    """``record``'s access line (with its newline): the same line as
    ``format_access(record.log_fields(), fmt, created)``, without building the mapping."""
    if fmt == "json":
        try:
            return _record_json_line(_iso_cached(time.time() if created is None else created), record)
        except TypeError:
            pass  # a field of an unexpected type: the generic encoding
    return format_access(record.log_fields(), fmt, created)


class AccessWriter:
    """Writes access lines (records or field mappings) to a stream, whole lines only.

    Unbuffered (``flush_seconds=None``, the default): one write and one flush per line.
    Buffered: lines written on an event loop's thread collect in a buffer written out (one
    write, one flush) past :data:`FLUSH_BYTES`, ``flush_seconds`` after the first buffered
    line, and on :meth:`flush`; a line from a thread without a running loop is written at once
    (after anything buffered, so lines keep their order).
    """

    def __init__(self, stream: TextIO, fmt: str = "json", *, flush_seconds: float | None = None) -> None:
        self.stream = stream
        self.fmt = fmt
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()  # WSGI hosts write from several threads
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        # The event loop lines are buffered for, and its thread. Recognised by thread identity:
        # asking asyncio for the running loop costs a getpid() system call on Python 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = -1

    def __call__(self, entry: Mapping[str, Any] | AccessRecord) -> None:
        if not isinstance(entry, AccessRecord):
            line = format_access(entry, self.fmt)
        elif self.fmt != "json":
            line = format_record(entry, self.fmt)
        else:
            try:  # format_record, inlined
                line = _record_json_line(_iso_cached(time.time()), entry)
            except TypeError:
                line = format_access(entry.log_fields(), "json")
        if self.flush_seconds is None:
            loop = None
        else:
            loop = self._loop
            if loop is None or threading.get_ident() != self._loop_thread or not loop.is_running():
                loop = self._bind_loop()
        with self._lock:
            if loop is None:
                if self._lines:
                    self._write_out()
                self.stream.write(line)
                self.stream.flush()
                return
            self._lines.append(line)
            self._size += len(line)
            if self._size >= FLUSH_BYTES:
                self._write_out()
                return
            if self._timer is None:
                assert self.flush_seconds is not None
                self._timer = loop.call_later(self.flush_seconds, self.flush)

    def _bind_loop(self) -> asyncio.AbstractEventLoop | None:
        # Off the fast path: the loop running in this thread, if any, becomes the one the
        # flush timer runs on.
        loop = asyncio._get_running_loop()
        if loop is not self._loop:
            self.flush()  # what was buffered for another loop must not wait for its timer
        if loop is not None:
            self._loop = loop
            self._loop_thread = threading.get_ident()
        return loop

    def flush(self) -> None:
        """Write out the buffered lines now."""
        with self._lock:
            timer = self._timer
            if timer is not None:
                self._timer = None
                timer.cancel()
            if self._lines:
                self._write_out()

    def _write_out(self) -> None:
        # Called with the lock held. The buffer is emptied first: a failing stream loses
        # these lines but never writes them twice.
        lines = self._lines
        self._lines = []
        self._size = 0
        self.stream.write("".join(lines))
        self.stream.flush()


def _via_logging(entry: Mapping[str, Any] | AccessRecord) -> None:
    if ACCESS.isEnabledFor(logging.INFO):
        fields = entry.log_fields() if isinstance(entry, AccessRecord) else entry
        ACCESS.info("", extra={"fields": fields})


def _discard(entry: Mapping[str, Any] | AccessRecord) -> None:
    return None


_writer: Callable[[Mapping[str, Any] | AccessRecord], None] = _via_logging


class JSONFormatter(logging.Formatter):
    """One JSON object per line. Access records carry their fields in ``record.fields``."""

    def format(self, record: logging.LogRecord) -> str:
        fields: Mapping[str, Any] | None = getattr(record, "fields", None)
        if fields is not None:
            return format_access(fields, "json", record.created).rstrip("\n")
        out = {"ts": _iso(record.created), "level": record.levelname.lower(), "logger": record.name}
        out["message"] = record.getMessage()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(out)


class TextFormatter(logging.Formatter):
    """Human-readable lines for development."""

    def format(self, record: logging.LogRecord) -> str:
        fields: Mapping[str, Any] | None = getattr(record, "fields", None)
        if fields is None:
            return super().format(record)
        return format_access(fields, "text", record.created).rstrip("\n")


class _DropAborts(logging.Filter):
    """Drop uvicorn's traceback for a response we aborted on purpose (already logged by us)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not getattr(exc, "gateway_abort", False)


def configure(*, fmt: str = "json", level: str = "info", access_log: bool = True) -> None:
    """Install handlers: access lines on stdout, diagnostics on stderr. Safe to call again
    (a config reload applies a new ``logging`` section this way)."""
    global _writer
    flush()  # lines buffered under the previous settings go out first
    formatter: logging.Formatter = (
        JSONFormatter() if fmt == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(formatter)
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(formatter)
    ACCESS.handlers[:] = [out]
    ACCESS.propagate = False
    ACCESS.setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
    _writer = AccessWriter(sys.stdout, fmt, flush_seconds=FLUSH_SECONDS) if access_log else _discard
    # "gateway.*": the key lifecycle logs under its module name (gateway.keys).
    for diagnostics in (log, logging.getLogger("gateway")):
        diagnostics.handlers[:] = [err]
        diagnostics.propagate = False
        diagnostics.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        uv = logging.getLogger(name)
        uv.handlers[:] = [err]
        uv.propagate = False
        uv.setLevel(level.upper() if level != "debug" else "INFO")
        uv.filters[:] = [_DropAborts()]
    logging.getLogger("uvicorn.access").disabled = True


def access(entry: Mapping[str, Any] | AccessRecord) -> None:
    """Emit one access line: a record, or its fields (already safe to log)."""
    _writer(entry)


def flush() -> None:
    """Write out buffered access lines now (shutdown, drain, reconfiguration)."""
    writer = _writer
    if isinstance(writer, AccessWriter):
        writer.flush()


atexit.register(flush)
