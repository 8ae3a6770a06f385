"""Small value types for the config schema: durations and byte sizes written the human way."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "k": 1024,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
}


def parse_duration(value: Any) -> float:
    """``30``, ``30s``, ``1.5s``, ``500ms``, ``5m``, ``1h``, ``1d`` -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError("expected a duration such as 30s, 500ms, 5m or 1h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: Any) -> int:
    """``8192``, ``8KiB``, ``1MiB``, ``1GiB`` -> bytes (int)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 8KiB or 1MiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    else:
        raise ValueError("expected a size such as 8192, 8KiB or 1MiB")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


#: Seconds, written as ``30``, ``30s``, ``500ms``, ``5m``, ``1h``.
Duration = Annotated[float, BeforeValidator(parse_duration)]
#: Bytes, written as ``8192``, ``8KiB``, ``1MiB``.
ByteSize = Annotated[int, BeforeValidator(parse_size)]
