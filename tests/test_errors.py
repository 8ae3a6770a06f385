"""The exception tree (gateway/errors.py): every class documented, every request error with a
status, a stable reason code and a title; the module docstring's tree in step with the code;
ConfigError's one-line form; reprs that show nothing but reason and detail."""

from __future__ import annotations

import inspect
import re

import pytest

from gateway import errors
from gateway.errors import (
    AuthorizationError,
    ConfigError,
    GatewayError,
    KeysUnavailable,
    LimitExceeded,
    RouteDenied,
)

_SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*\Z")
_RFC6750_ERRORS = {None, "invalid_request", "invalid_token", "insufficient_scope"}

#: Every exception class the module defines (imported names excluded).
ALL_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, BaseException) and cls.__module__ == errors.__name__
]
REQUEST_ERRORS = [cls for cls in ALL_CLASSES if issubclass(cls, GatewayError)]
#: The tree drawn in the module docstring (after its ``::``).
_TREE = (errors.__doc__ or "").partition("::")[2]
#: Tree line -> (name, first status written, snake_case codes written).
TREE_LINES = [
    (m["name"], int(m["status"]) if m["status"] else None, re.findall(r"[a-z]+(?:_[a-z]+)+", m["rest"]))
    for m in re.finditer(r"^[│├└─ ]*(?P<name>[A-Z]\w+) *(?P<status>\d{3})?(?P<rest>.*)$", _TREE, re.MULTILINE)
]
TREE_NAMES = {name for name, _, _ in TREE_LINES}


def _ids(classes: list[type[BaseException]]) -> list[str]:
    return [cls.__name__ for cls in classes]


def test_the_module_defines_the_whole_tree() -> None:
    # The discovery above must see the tree, or every parametrised test below passes vacuously.
    assert len(REQUEST_ERRORS) >= 25
    assert ConfigError in ALL_CLASSES and ConfigError not in REQUEST_ERRORS
    assert {"GatewayError", "InvalidToken", "ConfigError"} <= TREE_NAMES


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=_ids(ALL_CLASSES))
def test_every_class_has_a_docstring_of_its_own(cls: type[BaseException]) -> None:
    doc = cls.__dict__.get("__doc__")
    assert doc is not None and doc.strip(), f"{cls.__name__} has no docstring"


@pytest.mark.parametrize("cls", REQUEST_ERRORS, ids=_ids(REQUEST_ERRORS))
def test_every_request_error_has_status_reason_and_title(cls: type[GatewayError]) -> None:
    assert isinstance(cls.status, int) and 400 <= cls.status <= 599
    assert _SNAKE_CASE.match(cls.reason), cls.reason
    assert isinstance(cls.title, str) and cls.title.strip()
    assert cls.bearer_error in _RFC6750_ERRORS


def test_subclasses_have_their_own_reason_codes() -> None:
    # A reason code names one kind of failure: no two classes may share a default reason
    # (InternalError is the base's own case, named: it shares the base's internal_error).
    reasons = [cls.reason for cls in REQUEST_ERRORS if cls is not GatewayError]
    assert sorted(reasons) == sorted(set(reasons))


@pytest.mark.parametrize("cls", [*REQUEST_ERRORS, ConfigError], ids=_ids([*REQUEST_ERRORS, ConfigError]))
def test_the_docstring_tree_names_every_class(cls: type[BaseException]) -> None:
    assert cls.__name__ in TREE_NAMES


@pytest.mark.parametrize(("name", "status", "codes"), TREE_LINES, ids=[line[0] for line in TREE_LINES])
def test_the_docstring_tree_states_the_real_status_and_reason(
    name: str, status: int | None, codes: list[str]
) -> None:
    cls = getattr(errors, name)
    if status is not None:
        assert cls.status == status
    if codes:
        # The tree names the reason code, or for the RFC 6750 classes the challenge's error code.
        assert cls.reason in codes or cls.bearer_error in codes, codes


def test_an_error_defaults_its_detail_to_its_title_and_may_override_its_reason() -> None:
    error = errors.TokenExpired()
    assert (error.detail, str(error), error.reason) == ("Unauthorized", "Unauthorized", "token_expired")
    error = errors.ClaimInvalid("the token type is not accepted", reason="typ_mismatch")
    assert (error.detail, error.reason, error.status) == (
        "the token type is not accepted",
        "typ_mismatch",
        401,
    )
    assert errors.ClaimInvalid.reason == "claim_invalid"  # the class default is untouched


def test_a_431_limit_gets_its_own_title_without_changing_the_class() -> None:
    error = LimitExceeded("head too large", reason="headers_too_large", status=431)
    assert (error.status, error.title) == (431, "Request Header Fields Too Large")
    body = LimitExceeded("body too large")
    assert (body.status, body.title, body.reason) == (413, "Content Too Large", "body_too_large")
    assert (LimitExceeded.status, LimitExceeded.title) == (413, "Content Too Large")


def test_extra_attributes_of_authorization_and_keys_errors() -> None:
    error = AuthorizationError("missing scope", scopes=["orders:read", "orders:write"])
    assert error.scopes == ("orders:read", "orders:write")
    assert RouteDenied().scopes == ()
    assert KeysUnavailable().retry_after == 30
    assert KeysUnavailable(retry_after=5).retry_after == 5


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.BadSignature(), "BadSignature(reason='bad_signature', detail='Unauthorized')"),
        (
            AuthorizationError("no", reason="rule_failed", scopes=["admin:secret-scope"]),
            "AuthorizationError(reason='rule_failed', detail='no')",
        ),
        (
            KeysUnavailable("idp down", retry_after=7),
            "KeysUnavailable(reason='keys_unavailable', detail='idp down')",
        ),
        (
            LimitExceeded("big", reason="headers_too_large", status=431),
            "LimitExceeded(reason='headers_too_large', detail='big')",
        ),
    ],
)
def test_repr_shows_reason_and_detail_only(error: GatewayError, expected: str) -> None:
    assert repr(error) == expected


def test_repr_ignores_attributes_set_later() -> None:
    # Code that hangs context on an error (a token, a claim value) must not leak it via repr.
    error = errors.TokenMalformed("not a JWS")
    error.token = "eyJhbGciOiJIUzI1NiJ9.e30.c2ln"  # type: ignore[attr-defined]
    assert "eyJ" not in repr(error)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"file": "gw.yaml", "path": "routes[0].upstream"}, "gw.yaml: routes[0].upstream: bad URL"),
        ({"file": "gw.yaml"}, "gw.yaml: bad URL"),
        ({"path": "proxy.tls"}, "proxy.tls: bad URL"),
        ({}, "bad URL"),
    ],
)
def test_config_error_is_one_line_and_skips_empty_parts(kwargs: dict[str, str], expected: str) -> None:
    error = ConfigError("bad URL", **kwargs)
    assert error.one_line() == expected == str(error)
    assert (error.message, error.file, error.path) == (
        "bad URL",
        kwargs.get("file", ""),
        kwargs.get("path", ""),
    )


def test_config_error_is_not_a_request_error() -> None:
    # A config problem never becomes an HTTP answer: it is outside the GatewayError tree.
    assert not issubclass(ConfigError, GatewayError)
    assert not hasattr(ConfigError, "status")
