"""Logging: one structured access line per request, plus diagnostic logs.

Access lines go to the ``jwt_gateway.access`` logger (stdout), diagnostics to ``jwt_gateway``
(stderr). Nothing here ever receives a token, a secret or a key: callers pass only the fields
listed in :func:`access_record`, and the query string is never logged at all (it may carry a
token parameter).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

ACCESS = logging.getLogger("jwt_gateway.access")
log = logging.getLogger("jwt_gateway")


class JSONFormatter(logging.Formatter):
    """One JSON object per line. Access records carry their fields in ``record.fields``."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields is not None:
            out = {"ts": _iso(record.created), **fields}
        else:
            out = {"ts": _iso(record.created), "level": record.levelname.lower(), "logger": record.name}
            out["message"] = record.getMessage()
            if record.exc_info:
                out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines for development."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] | None = getattr(record, "fields", None)
        if fields is None:
            return super().format(record)
        f = fields
        line = (
            f"{_iso(record.created)} {f.get('method')} {f.get('path')} -> {f.get('status')} "
            f"{f.get('decision')}/{f.get('reason')} route={f.get('route')} "
            f"{f.get('duration_ms')}ms rid={f.get('request_id')}"
        )
        if f.get("sub") is not None:
            line += f" sub={f['sub']}"
        return line


def _iso(created: float) -> str:
    t = time.gmtime(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(created % 1 * 1000):03d}Z"


class _DropAborts(logging.Filter):
    """Drop uvicorn's traceback for a response we aborted on purpose (already logged by us)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not getattr(exc, "gateway_abort", False)


def configure(*, fmt: str = "json", level: str = "info", access_log: bool = True) -> None:
    """Install handlers: access lines on stdout, diagnostics on stderr."""
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
    log.handlers[:] = [err]
    log.propagate = False
    log.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        uv = logging.getLogger(name)
        uv.handlers[:] = [err]
        uv.propagate = False
        uv.setLevel(level.upper() if level != "debug" else "INFO")
        uv.filters[:] = [_DropAborts()]
    logging.getLogger("uvicorn.access").disabled = True


def access(fields: dict[str, Any]) -> None:
    """Emit one access line (fields are already safe to log)."""
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info("", extra={"fields": fields})
