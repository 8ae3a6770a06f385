"""Claim rules: every operator, type traps, odd claim names, scopes, nesting, safe descriptions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import TypeAdapter

from gateway.auth.rules import ALLOWED, CompiledRule, compile_rule
from gateway.config.models import Rule

_RULE: TypeAdapter[Any] = TypeAdapter(Rule)


def rule(spec: dict[str, Any], params: list[str] | None = None) -> CompiledRule:
    return compile_rule(_RULE.validate_python(spec), params=params)


def holds(spec: dict[str, Any], claims: dict[str, Any], params: dict[str, str] | None = None) -> bool:
    compiled = rule(spec)
    outcome = compiled.evaluate(claims, params or {})
    # explain() must agree with evaluate() at the root.
    assert compiled.explain(claims, params or {})[0].passed is outcome.ok
    return outcome.ok


# (rule, claims, expected)
OPERATOR_CASES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    # equals: same JSON type, then equal
    ({"claim": "role", "equals": "admin"}, {"role": "admin"}, True),
    ({"claim": "role", "equals": "admin"}, {"role": "Admin"}, False),
    ({"claim": "role", "equals": "admin"}, {"role": ["admin"]}, False),
    ({"claim": "role", "equals": "admin"}, {}, False),
    ({"claim": "ok", "equals": True}, {"ok": True}, True),
    ({"claim": "ok", "equals": True}, {"ok": 1}, False),
    ({"claim": "ok", "equals": True}, {"ok": 1.0}, False),
    ({"claim": "ok", "equals": True}, {"ok": "true"}, False),
    ({"claim": "ok", "equals": False}, {"ok": 0}, False),
    ({"claim": "ok", "equals": False}, {"ok": None}, False),
    ({"claim": "ok", "equals": False}, {}, False),
    ({"claim": "n", "equals": 1}, {"n": 1}, True),
    ({"claim": "n", "equals": 1}, {"n": 1.0}, True),
    ({"claim": "n", "equals": 1}, {"n": True}, False),
    ({"claim": "n", "equals": 1}, {"n": "1"}, False),
    ({"claim": "n", "equals": 0}, {"n": False}, False),
    ({"claim": "s", "equals": "1"}, {"s": 1}, False),
    ({"claim": "x", "equals": None}, {"x": None}, True),
    ({"claim": "x", "equals": None}, {}, False),
    ({"claim": "x", "equals": None}, {"x": False}, False),
    # in
    ({"claim": "tier", "in": ["gold", "silver"]}, {"tier": "gold"}, True),
    ({"claim": "tier", "in": ["gold", "silver"]}, {"tier": "bronze"}, False),
    ({"claim": "tier", "in": ["gold", "silver"]}, {"tier": ["gold"]}, False),
    ({"claim": "lvl", "in": [1, 2]}, {"lvl": True}, False),
    ({"claim": "lvl", "in": [1, 2]}, {"lvl": 2}, True),
    ({"claim": "lvl", "in": [True]}, {"lvl": 1}, False),
    ({"claim": "lvl", "in": [True]}, {"lvl": True}, True),
    ({"claim": "lvl", "in": ["1"]}, {"lvl": 1}, False),
    # contains: arrays, a scalar counts as a one-element array, never a substring
    ({"claim": "roles", "contains": "admin"}, {"roles": ["user", "admin"]}, True),
    ({"claim": "roles", "contains": "admin"}, {"roles": ["user"]}, False),
    ({"claim": "roles", "contains": "admin"}, {"roles": "admin"}, True),
    ({"claim": "roles", "contains": "admin"}, {"roles": "superadmin"}, False),
    ({"claim": "roles", "contains": "admin"}, {"roles": "admin user"}, False),
    ({"claim": "roles", "contains": "admin"}, {"roles": {"admin": True}}, False),
    ({"claim": "roles", "contains": "admin"}, {"roles": [["admin"]]}, False),
    ({"claim": "roles", "contains": "admin"}, {"roles": []}, False),
    ({"claim": "roles", "contains": "admin"}, {}, False),
    ({"claim": "ids", "contains": 1}, {"ids": [True]}, False),
    ({"claim": "ids", "contains": 1}, {"ids": [1.0]}, True),
    ({"claim": "ids", "contains": 1}, {"ids": 1}, True),
    ({"claim": "ids", "contains": True}, {"ids": [1]}, False),
    ({"claim": "ids", "contains": True}, {"ids": [True]}, True),
    ({"claim": "ids", "contains": 1}, {"ids": {"1": 1}}, False),
    # contains_all / contains_any
    ({"claim": "roles", "contains_all": ["a", "b"]}, {"roles": ["b", "c", "a"]}, True),
    ({"claim": "roles", "contains_all": ["a", "b"]}, {"roles": ["a"]}, False),
    ({"claim": "roles", "contains_all": ["a"]}, {"roles": "a"}, True),
    ({"claim": "roles", "contains_all": ["a", 1]}, {"roles": ["a", True]}, False),
    ({"claim": "roles", "contains_all": ["a", 1]}, {"roles": ["a", 1]}, True),
    ({"claim": "roles", "contains_any": ["a", "b"]}, {"roles": ["x", "b"]}, True),
    ({"claim": "roles", "contains_any": ["a", "b"]}, {"roles": ["x"]}, False),
    ({"claim": "roles", "contains_any": ["a", "b"]}, {"roles": "b"}, True),
    ({"claim": "roles", "contains_any": ["a", "b"]}, {}, False),
    # exists
    ({"claim": "x", "exists": True}, {"x": None}, True),
    ({"claim": "x", "exists": True}, {"x": False}, True),
    ({"claim": "x", "exists": True}, {}, False),
    ({"claim": "x", "exists": False}, {}, True),
    ({"claim": "x", "exists": False}, {"x": None}, False),
    ({"claim": "/a/b", "exists": True}, {"a": {"b": 0}}, True),
    ({"claim": "/a/b", "exists": False}, {"a": "b"}, True),
    # matches: whole string, strings only
    ({"claim": "email", "matches": r"[^@]+@corp\.example"}, {"email": "a@corp.example"}, True),
    ({"claim": "email", "matches": r"[^@]+@corp\.example"}, {"email": "a@corp.example.evil"}, False),
    ({"claim": "email", "matches": r"[^@]+@corp\.example"}, {"email": "a@corp.example\n"}, False),
    ({"claim": "email", "matches": r"[^@]+@corp\.example$"}, {"email": "a@corp.example\n"}, False),
    ({"claim": "email", "matches": r"corp"}, {"email": "a@corp.example"}, False),
    ({"claim": "email", "matches": r".*"}, {"email": ["a"]}, False),
    ({"claim": "email", "matches": r".*"}, {"email": 5}, False),
    ({"claim": "email", "matches": r".*"}, {}, False),
    # numbers
    ({"claim": "age", "gt": 17}, {"age": 18}, True),
    ({"claim": "age", "gt": 17}, {"age": 17}, False),
    ({"claim": "age", "ge": 17}, {"age": 17}, True),
    ({"claim": "age", "lt": 17}, {"age": 16.5}, True),
    ({"claim": "age", "le": 17}, {"age": 17.0}, True),
    ({"claim": "age", "le": 17}, {"age": 17.01}, False),
    ({"claim": "age", "gt": 0}, {"age": True}, False),
    ({"claim": "age", "lt": 5}, {"age": False}, False),
    ({"claim": "age", "gt": 17}, {"age": "18"}, False),
    ({"claim": "age", "gt": 17}, {"age": float("inf")}, False),
    ({"claim": "age", "lt": 17}, {"age": float("nan")}, False),
    ({"claim": "age", "gt": 17}, {"age": [18]}, False),
    ({"claim": "age", "gt": 17}, {}, False),
    ({"claim": "big", "gt": 1e18}, {"big": 10**19}, True),
]


@pytest.mark.parametrize(("spec", "claims", "expected"), OPERATOR_CASES)
def test_operators(spec: dict[str, Any], claims: dict[str, Any], expected: bool) -> None:
    assert holds(spec, claims) is expected


# ------------------------------------------------------------------------ odd claim names

ODD_CLAIMS: dict[str, Any] = {
    "https://example.com/roles": ["admin"],
    "a.b": "dotted",
    "a/b": "slashed",
    "a~b": "tilde",
    "realm_access": {"roles": ["offline_access", "admin"]},
    "resource_access": {"my-app": {"roles": ["editor"]}},
}

ODD_CASES: list[tuple[Any, Any, bool]] = [
    ("https://example.com/roles", "admin", True),
    ("/https:~1~1example.com~1roles", "admin", True),
    (["https://example.com/roles"], "admin", True),
    ("a.b", "dotted", True),
    ("/a.b", "dotted", True),
    ("/a~1b", "slashed", True),
    ("a/b", "slashed", True),
    ("/a~0b", "tilde", True),
    ("/realm_access/roles", "admin", True),
    ("realm_access.roles", "admin", False),  # a plain name is top-level only
    (["realm_access", "roles"], "admin", True),
    ("/resource_access/my-app/roles", "editor", True),
    ("/resource_access/other/roles", "editor", False),
]


@pytest.mark.parametrize(("path", "value", "expected"), ODD_CASES, ids=[str(c[0]) for c in ODD_CASES])
def test_odd_claim_names(path: Any, value: str, expected: bool) -> None:
    assert holds({"claim": path, "contains": value}, ODD_CLAIMS) is expected


# ---------------------------------------------------------------------------- equals_param

PARAM_CASES: list[tuple[Any, str | None, bool]] = [
    ("alice", "alice", True),
    ("alice", "bob", False),
    ("alice", "Alice", False),
    ("a@b.c", "a%40b.c", True),
    ("a b", "a%20b", True),
    ("é", "%C3%A9", True),
    (42, "42", True),
    (42, "042", False),
    (True, "true", False),
    (True, "True", False),
    (1, "1", True),
    (1.0, "1", False),
    (None, "None", False),
    (["alice"], "alice", False),
    ("alice", None, False),
]


@pytest.mark.parametrize(("sub", "param", "expected"), PARAM_CASES)
def test_equals_param(sub: Any, param: str | None, expected: bool) -> None:
    params = {} if param is None else {"id": param}
    assert holds({"claim": "sub", "equals_param": "id"}, {"sub": sub}, params) is expected


def test_equals_param_missing_claim() -> None:
    assert not holds({"claim": "sub", "equals_param": "id"}, {}, {"id": "alice"})


def test_equals_param_must_name_a_route_parameter() -> None:
    spec = {"all": [{"claim": "sub", "equals_param": "user"}]}
    rule(spec, params=["user"])
    with pytest.raises(ValueError, match=r"require\.all\[0\]\.equals_param.*\{user\}"):
        rule(spec, params=["id"])


# ----------------------------------------------------------------------------------- scopes

SCOPE_CASES: list[tuple[dict[str, Any], dict[str, Any], bool]] = [
    ({"scope": "orders:read"}, {"scope": "openid orders:read"}, True),
    ({"scope": "orders:read"}, {"scope": "openid orders:reader"}, False),
    ({"scope": "orders:read"}, {"scope": "orders:read:all"}, False),
    ({"scope": "orders:read"}, {"scp": ["orders:read"]}, True),
    ({"scope": "orders:read"}, {"scp": "orders:read profile"}, True),
    ({"scope": "orders:read"}, {"scope": ["orders:read"]}, True),
    ({"scope": "orders:read"}, {"scp": [["orders:read"]]}, False),
    ({"scope": "orders:read"}, {"scp": [1, "x"]}, False),
    ({"scope": "orders:read"}, {"scope": 1}, False),
    ({"scope": "orders:read"}, {}, False),
    ({"scope": "a b"}, {"scope": "b a"}, True),
    ({"scope": "a b"}, {"scope": "a"}, False),
    ({"scope": "a b"}, {"scope": "a", "scp": ["b"]}, True),
    ({"scope": ["a", "b"]}, {"scp": ["a", "b"]}, True),
    ({"scope": "a b", "match": "any"}, {"scope": "b"}, True),
    ({"scope": "a b", "match": "any"}, {"scope": "c"}, False),
    ({"scope": "a"}, {"scope": "a\tb"}, False),
    ({"scope": "a"}, {"scope": "  a  "}, True),
]


@pytest.mark.parametrize(("spec", "claims", "expected"), SCOPE_CASES)
def test_scopes(spec: dict[str, Any], claims: dict[str, Any], expected: bool) -> None:
    assert holds(spec, claims) is expected


def test_failed_scope_reports_its_scopes() -> None:
    outcome = rule({"scope": "orders:read orders:write"}).evaluate({"scope": "orders:read"}, {})
    assert not outcome.ok
    assert outcome.scopes == ("orders:read", "orders:write")
    assert outcome.failed is not None and "orders:read orders:write" in outcome.failed


def test_failed_scope_inside_all_reports_its_scopes() -> None:
    compiled = rule({"all": [{"claim": "sub", "exists": True}, {"scope": "a"}]})
    assert compiled.evaluate({"sub": "x"}, {}).scopes == ("a",)
    assert compiled.evaluate({}, {}).scopes == ()


def test_failed_any_reports_every_alternative_scope() -> None:
    compiled = rule({"any": [{"scope": "a"}, {"scope": "b c"}, {"claim": "admin", "equals": True}]})
    outcome = compiled.evaluate({}, {})
    assert not outcome.ok and outcome.scopes == ("a", "b", "c")


@pytest.mark.parametrize("bad", [{"scope": ""}, {"scope": []}, {"scope": ["a b"]}, {"scope": [""]}])
def test_empty_scope_lists_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="scope"):
        rule(bad)


# ---------------------------------------------------------------------------------- nesting

NESTED = {
    "all": [
        {"scope": "orders:read"},
        {"not": {"claim": "suspended", "equals": True}},
        {
            "any": [
                {"claim": "/realm_access/roles", "contains": "admin"},
                {"all": [{"claim": "tier", "in": ["gold"]}, {"claim": "age", "ge": 18}]},
            ]
        },
    ]
}

NESTED_CASES: list[tuple[dict[str, Any], bool]] = [
    ({"scope": "orders:read", "realm_access": {"roles": ["admin"]}}, True),
    ({"scope": "orders:read", "realm_access": {"roles": ["admin"]}, "suspended": True}, False),
    ({"scope": "orders:read", "realm_access": {"roles": ["admin"]}, "suspended": 1}, True),
    ({"scope": "orders:read", "realm_access": {"roles": ["admin"]}, "suspended": "true"}, True),
    ({"scope": "orders:read", "tier": "gold", "age": 18}, True),
    ({"scope": "orders:read", "tier": "gold", "age": 17}, False),
    ({"scope": "orders:read", "tier": "gold"}, False),
    ({"realm_access": {"roles": ["admin"]}}, False),
    ({}, False),
]


@pytest.mark.parametrize(("claims", "expected"), NESTED_CASES)
def test_nested_rules(claims: dict[str, Any], expected: bool) -> None:
    assert holds(NESTED, claims) is expected


def test_not_of_missing_claim_holds() -> None:
    assert holds({"not": {"claim": "suspended", "equals": True}}, {})
    assert not holds({"not": {"not": {"claim": "suspended", "equals": True}}}, {})


def test_all_reports_the_first_failing_condition() -> None:
    compiled = rule({"all": [{"claim": "a", "exists": True}, {"claim": "b", "equals": "x"}]})
    assert compiled.evaluate({"a": 1}, {}).failed == 'claim b equals "x"'
    assert compiled.evaluate({}, {}).failed == "claim a exists"


def test_ok_outcome_is_shared() -> None:
    assert rule({"claim": "a", "exists": True}).evaluate({"a": 1}, {}) is ALLOWED


# ------------------------------------------------------------ descriptions never leak values

SECRET = "s3cr3t-claim-value"

LEAK_CASES: list[dict[str, Any]] = [
    {"claim": "sub", "equals": "alice"},
    {"claim": "sub", "in": ["alice", "bob"]},
    {"claim": "sub", "contains": "alice"},
    {"claim": "sub", "contains_all": ["alice"]},
    {"claim": "sub", "contains_any": ["alice"]},
    {"claim": "sub", "exists": False},
    {"claim": "sub", "matches": "alice.*"},
    {"claim": "sub", "gt": 3},
    {"claim": "sub", "equals_param": "id"},
    {"scope": "orders:read"},
    {"not": {"claim": "sub", "exists": True}},
    {"any": [{"claim": "sub", "equals": "a"}, {"claim": "/x/y", "equals": "b"}]},
    {"all": [{"claim": "sub", "exists": True}, {"claim": "/x/y", "contains": "b"}]},
]


@pytest.mark.parametrize("spec", LEAK_CASES)
def test_failure_descriptions_never_contain_claim_values(spec: dict[str, Any]) -> None:
    claims = {"sub": SECRET, "x": {"y": [SECRET]}, "scope": SECRET}
    compiled = rule(spec)
    outcome = compiled.evaluate(claims, {"id": "other"})
    assert not outcome.ok
    assert outcome.failed
    assert SECRET not in outcome.failed
    assert SECRET not in " ".join(outcome.scopes)
    assert SECRET not in compiled.description
    for trace in compiled.explain(claims, {"id": "other"}):
        assert SECRET not in trace.label and SECRET not in trace.note


@pytest.mark.parametrize(
    ("spec", "claims", "expected"),
    [
        (
            {"claim": "/realm_access/roles", "contains": "admin"},
            {},
            'claim /realm_access/roles contains "admin"',
        ),
        ({"claim": "ok", "equals": True}, {"ok": 1}, "claim ok equals true"),
        ({"claim": "n", "equals": 1}, {"n": True}, "claim n equals 1"),
        ({"claim": "n", "equals": "1"}, {"n": 1}, 'claim n equals "1"'),
        ({"claim": "n", "in": [1, "1"]}, {"n": 2}, 'claim n in [1, "1"]'),
        ({"claim": "n", "ge": 2}, {"n": 1}, "claim n >= 2.0"),
        ({"claim": "x", "exists": False}, {"x": None}, "claim x is absent"),
        ({"claim": ["a", "b"], "exists": True}, {"a": {}}, 'claim ["a", "b"] exists'),
        ({"claim": "sub", "equals_param": "id"}, {"sub": "x"}, "claim sub equals path parameter {id}"),
        ({"scope": "a b", "match": "any"}, {"scope": "c"}, 'scope "a b" (any of)'),
        ({"not": {"claim": "x", "exists": False}}, {}, "not (claim x is absent)"),
        (
            {"any": [{"claim": "x", "exists": True}, {"scope": "a"}]},
            {},
            'none of (claim x exists | scope "a")',
        ),
    ],
)
def test_failure_descriptions_name_the_condition(
    spec: dict[str, Any], claims: dict[str, Any], expected: str
) -> None:
    outcome = rule(spec).evaluate(claims, {"id": "y"})
    assert not outcome.ok
    assert outcome.failed == expected


# ---------------------------------------------------------------------------------- explain


def test_explain_traces_every_node_without_short_circuit() -> None:
    compiled = rule(NESTED)
    traces = compiled.explain({"realm_access": {"roles": ["user"]}, "tier": "gold"}, {})
    rows = [(t.depth, t.label, t.passed, t.note) for t in traces]
    assert rows == [
        (0, "all of", False, ""),
        (1, 'scope "orders:read"', False, "no scope or scp claim"),
        (1, "not", True, ""),
        (2, "claim suspended equals true", False, "claim absent"),
        (1, "any of", False, ""),
        (2, 'claim /realm_access/roles contains "admin"', False, ""),
        (2, "all of", False, ""),
        (3, 'claim tier in ["gold"]', True, ""),
        (3, "claim age >= 18.0", False, "claim absent"),
    ]


def test_description_of_a_whole_rule() -> None:
    compiled = rule({"all": [{"scope": "a"}, {"claim": "b", "exists": True}]})
    assert compiled.description == 'all of (scope "a", claim b exists)'


@pytest.mark.parametrize(
    "spec",
    [
        {"claim": "", "exists": True},
        {"claim": "/a~2", "exists": True},
        {"all": [{"claim": [], "exists": True}]},
    ],
)
def test_invalid_claim_paths_are_refused_at_compile(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="claim"):
        rule(spec)


def test_json_values_in_descriptions_are_policy_values() -> None:
    compiled = rule({"claim": "role", "in": ['a"b', "c"]})
    outcome = compiled.evaluate({}, {})
    assert outcome.failed == "claim role in " + json.dumps(['a"b', "c"])
