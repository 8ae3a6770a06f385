"""Servers most end-to-end modules share: one echo upstream and one IdP per module.

A module that needs another kind (a scripted raw upstream, a function-scoped IdP) defines its
own fixture of the same name, which takes precedence.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.jwks_server import JWKSServer
from tests.support.servers import EchoUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoUpstream]:
    """The echo upstream: records every request it receives and echoes it back as JSON."""
    with EchoUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def idp() -> Iterator[JWKSServer]:
    """A real JWKS/discovery server (no keys until a test adds them)."""
    with JWKSServer() as server:
        yield server
