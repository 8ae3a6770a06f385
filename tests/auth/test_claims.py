"""Claim paths: plain names, JSON Pointers (RFC 6901) and lists of keys."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth.claims import MISSING, compile_claim_path

CLAIMS: dict[str, Any] = {
    "sub": "alice",
    "null": None,
    "false": False,
    "realm_access": {"roles": ["user", "admin"]},
    "realm_access.roles": "top-level-with-dot",
    "https://example.com/roles": ["editor"],
    "a/b": "slash",
    "a~b": "tilde",
    "resource_access": {"my-app": {"roles": ["viewer"]}, "": {"x": 1}},
    "groups": ["g0", "g1", {"name": "g2"}],
    "nested": {"list": [[1, 2], [3]]},
    "": "empty-name",
    "0": "zero-name",
}

# (path, expected value)
CASES: list[tuple[Any, Any]] = [
    ("sub", "alice"),
    ("null", None),
    ("false", False),
    ("missing", MISSING),
    # a plain string is ONE top-level name, dots and slashes included
    ("realm_access.roles", "top-level-with-dot"),
    ("https://example.com/roles", ["editor"]),
    ("a/b", "slash"),
    ("a~b", "tilde"),
    # JSON Pointer
    ("/realm_access/roles", ["user", "admin"]),
    ("/realm_access/roles/1", "admin"),
    ("/realm_access/roles/2", MISSING),
    ("/realm_access/roles/-", MISSING),
    ("/realm_access/roles/01", MISSING),
    ("/realm_access/roles/+1", MISSING),
    ("/realm_access/missing", MISSING),
    ("/sub/x", MISSING),
    ("/sub/0", MISSING),
    ("/https:~1~1example.com~1roles", ["editor"]),
    ("/https:~1~1example.com~1roles/0", "editor"),
    ("/a~1b", "slash"),
    ("/a~0b", "tilde"),
    ("/resource_access/my-app/roles/0", "viewer"),
    ("/resource_access//x", 1),
    ("/groups/2/name", "g2"),
    ("/nested/list/0/1", 2),
    ("/", "empty-name"),
    ("/0", "zero-name"),
    ("/null/x", MISSING),
    # list of keys
    (["realm_access", "roles"], ["user", "admin"]),
    (["https://example.com/roles"], ["editor"]),
    (["resource_access", "my-app", "roles", "0"], "viewer"),
    (["a/b"], "slash"),
    (["a~1b"], MISSING),
    (["groups", "2", "name"], "g2"),
    (["groups", "9"], MISSING),
    (["sub"], "alice"),
]


@pytest.mark.parametrize(("path", "expected"), CASES, ids=[str(c[0]) for c in CASES])
def test_claim_paths(path: Any, expected: Any) -> None:
    value = compile_claim_path(path).get(CLAIMS)
    if expected is MISSING:
        assert value is MISSING
    else:
        assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("sub", "sub"),
        ("/realm_access/roles", "/realm_access/roles"),
        (["realm_access", "roles"], '["realm_access", "roles"]'),
        (["sub"], "sub"),
        (["/x"], '["/x"]'),
    ],
)
def test_labels(path: Any, label: str) -> None:
    assert compile_claim_path(path).label == label


@pytest.mark.parametrize("bad", ["", [], "/a~2", "/a~", "/~~01", ["a", 1]])
def test_invalid_paths(bad: Any) -> None:
    with pytest.raises(ValueError):
        compile_claim_path(bad)


def test_missing_is_a_falsy_singleton() -> None:
    assert not MISSING
    assert repr(MISSING) == "MISSING"
    assert type(MISSING)() is MISSING


def test_non_dict_claims_root_values() -> None:
    getter = compile_claim_path("/a/b").get
    assert getter({"a": "string"}) is MISSING
    assert getter({"a": 5}) is MISSING
    assert getter({"a": ["x"]}) is MISSING
    assert getter({"a": {"b": None}}) is None
