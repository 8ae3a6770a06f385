"""Claim paths: how a rule or a claim header names one value inside the verified claims.

Syntax (the lead copies this into README / ``gateway.example.yaml``)::

    sub                          the top-level claim "sub"
    https://example.com/roles    the top-level claim of exactly that name: a plain string is
    realm_access.roles           always ONE top-level name, dots and slashes included
    /realm_access/roles          a string starting with "/" is a JSON Pointer (RFC 6901):
                                 Keycloak's realm roles, nested one level down
    /resource_access/my-app/roles
    /https:~1~1example.com~1roles   "~1" stands for "/", "~0" for "~" (RFC 6901 escaping)
    /groups/0                    array elements by index (0, 1, ...; no leading zeros)
    [resource_access, my-app, roles]   a list of keys: each element is one key, verbatim
                                       (no escaping needed; digit strings index arrays)

A path that leads nowhere (a missing key, an index out of range, a key into a string or a
number) yields :data:`MISSING`; rules and claim headers treat that as "the claim is absent".
A JSON ``null`` is a present value (``None``), not ``MISSING``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gateway.auth.types import Claims

_BAD_ESCAPE = re.compile(r"~(?![01])")


class _Missing:
    """The type of :data:`MISSING`."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


#: Returned by a claim getter when the path leads nowhere.
MISSING: Final = _Missing()

ClaimGetter = Callable[[Claims], Any]


@dataclass(frozen=True, slots=True)
class ClaimPathGetter:
    """A compiled claim path: ``get(claims)`` returns the value or :data:`MISSING`.

    ``label`` is how logs, failure descriptions and ``explain`` name the path (the path as
    written: a name, a JSON Pointer, or a JSON list of keys). It never contains a claim value.
    """

    label: str
    keys: tuple[str, ...]
    get: ClaimGetter


def compile_claim_path(path: str | list[str] | tuple[str, ...]) -> ClaimPathGetter:
    """Compile a ``ClaimPath`` once; raises ValueError (with a one-line reason) when invalid."""
    if isinstance(path, str):
        if path == "":
            raise ValueError("a claim path must not be empty")
        if path.startswith("/"):
            keys = _pointer_keys(path)
            label = path
        else:
            keys = (path,)
            label = path
    else:
        if not path:
            raise ValueError("a claim path list must name at least one key")
        if not all(isinstance(k, str) for k in path):
            raise ValueError("every key of a claim path list must be a string")
        keys = tuple(path)
        label = keys[0] if len(keys) == 1 and not keys[0].startswith("/") else json.dumps(list(keys))
    return ClaimPathGetter(label, keys, _getter(keys))


def _pointer_keys(pointer: str) -> tuple[str, ...]:
    keys = []
    for token in pointer[1:].split("/"):
        # RFC 6901: "~" must be followed by "0" or "1"; "~1" is decoded before "~0".
        if _BAD_ESCAPE.search(token):
            raise ValueError(f"invalid JSON Pointer {pointer!r}: '~' must be written '~0' ('~1' is '/')")
        keys.append(token.replace("~1", "/").replace("~0", "~"))
    return tuple(keys)


def _getter(keys: tuple[str, ...]) -> ClaimGetter:
    if len(keys) == 1:
        (name,) = keys

        def top_level(claims: Claims) -> Any:
            return claims.get(name, MISSING)

        return top_level

    def nested(claims: Claims) -> Any:
        value: Any = claims
        for key in keys:
            value = _step(value, key)
            if value is MISSING:
                return MISSING
        return value

    return nested


def _step(value: Any, key: str) -> Any:
    if type(value) is dict or isinstance(value, Mapping):
        return value.get(key, MISSING)
    if isinstance(value, list) and key.isdigit() and key.isascii() and (key == "0" or key[0] != "0"):
        index = int(key)
        return value[index] if index < len(value) else MISSING
    return MISSING


__all__ = ["MISSING", "ClaimGetter", "ClaimPathGetter", "compile_claim_path"]
