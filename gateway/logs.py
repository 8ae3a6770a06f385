"""Logging: one structured access line per request, plus diagnostic logs.

Access lines go to stdout, diagnostics (the ``jwt_gateway`` logger, uvicorn's errors) to
stderr, as JSON objects (``logging.format: json``) or as plain text for development
(``text``). Nothing here ever receives a token, a secret or a key: callers pass only the fields
of :class:`gateway.observe.RequestRecord`, and the query string is never logged at all (it may
carry a token parameter).

Access lines skip the :mod:`logging` machinery once :func:`configure` has run: a request pays for
one JSON encoding and one write, not for a LogRecord, handler locks and formatter lookups.
Before :func:`configure` (the gateway embedded as a library), they go to the
``jwt_gateway.access`` logger, so the host's logging setup decides.
"""

from __future__ import annotations

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
    "AccessWriter",
    "JSONFormatter",
    "TextFormatter",
    "access",
    "configure",
    "format_access",
]

_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, default=str)
#: Control characters (CR, LF, ESC...) are escaped in text lines: no forged log lines.
_CONTROL: Final = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}

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


class AccessWriter:
    """Writes access lines straight to a stream: one write and one flush per line, so lines
    reach a pipe (a container's log collector) at once and never interleave."""

    def __init__(self, stream: TextIO, fmt: str = "json") -> None:
        self.stream = stream
        self.fmt = fmt
        self._lock = threading.Lock()  # WSGI hosts write from several threads

    def __call__(self, fields: Mapping[str, Any]) -> None:
        line = format_access(fields, self.fmt)
        with self._lock:
            self.stream.write(line)
            self.stream.flush()


def _via_logging(fields: Mapping[str, Any]) -> None:
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info("", extra={"fields": fields})


def _discard(fields: Mapping[str, Any]) -> None:
    return None


_writer: Callable[[Mapping[str, Any]], None] = _via_logging


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
    _writer = AccessWriter(sys.stdout, fmt) if access_log else _discard
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


def access(fields: Mapping[str, Any]) -> None:
    """Emit one access line (fields are already safe to log)."""
    _writer(fields)
