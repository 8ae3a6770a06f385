"""The IdP the middleware modules share: one real JWKS/discovery server per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.jwks_server import JWKSServer


@pytest.fixture(scope="module")
def idp() -> Iterator[JWKSServer]:
    """A real JWKS/discovery server (no keys until a test adds them)."""
    with JWKSServer() as server:
        yield server
