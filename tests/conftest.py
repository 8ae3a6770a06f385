"""Suite-wide fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from gateway import logs

_LOGGERS = ("jwt_gateway", "jwt_gateway.access", "gateway", "uvicorn", "uvicorn.error")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Code under test may call ``logs.configure`` (a reload does): undo it after each test,
    so that one test's logging setup never changes what the next one observes."""
    writer = logs._writer
    saved = {
        name: (list(lg.handlers), lg.level, lg.propagate, list(lg.filters))
        for name in _LOGGERS
        for lg in [logging.getLogger(name)]
    }
    yield
    logs._writer = writer
    for name, (handlers, level, propagate, filters) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
        lg.filters[:] = filters
