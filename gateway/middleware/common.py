"""What the ASGI and WSGI middlewares share: the ``config=`` argument, scopes, waiting for keys.

In-process there is no upstream: a route needs none (``build_policy(..., require_upstream=False)``),
and a route's ``upstream``, ``strip_prefix`` and ``add_prefix`` are ignored. Everything else
(canonical path, route table, providers, claim rules, claim headers, inbound stripping) is the
proxy's own code.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pydantic import ValidationError

from gateway.auth.types import Claims, VerifiedToken
from gateway.config.loader import load_config, validation_error
from gateway.config.models import GatewayConfig
from gateway.pipeline import Decision
from gateway.policy import Policy, build_policy

#: What ``config=`` accepts: a YAML file path, a validated config, or a plain mapping.
ConfigSource = str | os.PathLike[str] | GatewayConfig | Mapping[str, Any]

# The proxy's rule (gateway.asgi): a client's X-Request-Id is kept when short and plain.
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")

#: Seconds a starting middleware waits for the first key fetch of each remote provider.
DEFAULT_KEY_WAIT = 5.0


class PolicyFactory:
    """Builds the middleware's policy from ``config=``, and builds it again on demand.

    A policy's remote key sources cannot be restarted once closed (ASGI lifespan shutdown) and
    do not survive ``fork()`` (gunicorn ``--preload``), so a middleware rebuilds its policy
    from the same validated config when that happens.
    """

    def __init__(self, config: ConfigSource, *, base_dir: str | os.PathLike[str] | None = None) -> None:
        if isinstance(config, GatewayConfig):
            self.config = config
        elif isinstance(config, Mapping):
            try:
                self.config = GatewayConfig.model_validate(dict(config))
            except ValidationError as exc:
                raise validation_error(exc, "<config mapping>") from None
        else:
            self.config = load_config(config)
            if base_dir is None:
                base_dir = Path(config)
        self.base_dir = base_dir

    def build(self) -> Policy:
        """A fresh policy (no I/O; key sources not started). Raises ConfigError."""
        return build_policy(self.config, base_dir=self.base_dir, require_upstream=False)


def private_claims(value: Any) -> Any:
    """A copy of verified claims (dicts and lists copied, JSON scalars shared) for the app.

    The verifier caches verified claims per token and re-runs route rules on them for every
    later request with that token: an app that changed the cached object (``roles.append``)
    would change the gateway's next decision. The app gets its own copy.
    """
    kind = type(value)
    if kind is dict:
        return {k: private_claims(v) for k, v in value.items()}
    if kind is list:
        return [private_claims(v) for v in value]
    return value


def admitted_token(decision: Decision) -> VerifiedToken | None:
    """``decision.token`` with app-private claims and header, installed in ``decision``.

    None: no token. The verified header is a read-only view shared by every token with that
    header segment; the app gets its own plain copy (nested members included).
    """
    token = decision.token
    if token is None:
        return None
    token = dataclasses.replace(
        token, claims=private_claims(token.claims), header=private_claims(dict(token.header))
    )
    decision.token = token
    return token


def granted_scopes(claims: Claims | None) -> list[str]:
    """The token's scopes: ``scope`` (space-delimited string) and ``scp`` (array or string)."""
    if not claims:
        return []
    scopes: list[str] = []
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            scopes += [s for s in value.split(" ") if s]
        elif isinstance(value, list):
            scopes += [s for s in value if isinstance(s, str) and s]
    return scopes


def subject_of(claims: Claims | None) -> str:
    """The ``sub`` claim as text ("" when absent or not a string/number)."""
    sub = claims.get("sub") if claims else None
    if isinstance(sub, bool):
        return ""
    return str(sub) if isinstance(sub, str | int) else ""


def first_fetches_done(policy: Policy) -> bool:
    """True when every remote key source has finished at least one fetch attempt (ok or not)."""
    return all(
        status.get("last_outcome") is not None or status.get("source") not in ("discovery", "jwks_uri")
        for status in policy.key_status().values()
    )


def request_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-Id if short and made of safe characters, else a new random one."""
    for name, value in headers:
        if name == b"x-request-id":
            if _SAFE_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return os.urandom(12).hex()


def decoded_path(canonical: str) -> str:
    """The canonical path with its escapes decoded, as ASGI ``path`` / WSGI ``PATH_INFO`` hold it."""
    return unquote(canonical, errors="strict") if "%" in canonical else canonical


__all__ = [
    "DEFAULT_KEY_WAIT",
    "ConfigSource",
    "PolicyFactory",
    "admitted_token",
    "decoded_path",
    "first_fetches_done",
    "granted_scopes",
    "private_claims",
    "request_id_of",
    "subject_of",
]
