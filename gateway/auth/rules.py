"""Claim rules: a route's ``require`` tree compiled once into plain closures.

Operators and their semantics (the lead copies these into README / ``gateway.example.yaml``):

- ``all: [...]`` / ``any: [...]`` / ``not: rule`` combine rules (``all`` and ``any`` short-circuit
  in order).
- ``{claim: P, equals: V}``: the claim is present and equal to ``V`` **with the same JSON type**:
  ``equals: true`` never matches ``1``, ``equals: 1`` never matches ``"1"`` or ``true``
  (Python's ``True == 1`` is not used). Numbers compare as numbers (``1`` equals ``1.0``).
  ``equals: null`` matches a present JSON ``null``.
- ``in: [V, ...]``: the claim (a scalar) strictly equals one of the values.
- ``contains: V``: the claim is an array with an element strictly equal to ``V``. A scalar claim
  counts as a one-element array (``roles: "admin"`` contains ``admin``): equality, never a
  substring (``"superadmin"`` does not contain ``admin``, nor does ``"admin user"``).
- ``contains_all: [...]`` / ``contains_any: [...]``: same, for every / at least one value.
- ``exists: true`` / ``exists: false``: the claim is present (even as ``null``) / absent.
- ``matches: REGEX``: the claim is a string and the regex matches the WHOLE string
  (``re.fullmatch``: no implicit ``.*``, no trailing-newline surprise). Compiled at load.
  Non-string claims never match.
- ``gt``/``ge``/``lt``/``le``: the claim is a finite JSON number (``true`` is not a number, nor
  is ``"5"``) and compares as stated.
- ``equals_param: NAME``: the claim equals path parameter ``NAME`` (``/users/{id}``). The
  parameter is percent-decoded (UTF-8) and compared as a string; a string claim must be equal,
  an integer claim must be written exactly so (``42`` equals ``"42"``, never ``"042"``);
  other types never match. A missing parameter never matches.
- ``{scope: "a b", match: all|any}``: the granted scopes are the union of the ``scope`` claim
  and the ``scp`` claim, each either a space-delimited string or an array of strings. ``all``
  (default) requires every listed scope, ``any`` one of them.

A missing claim fails every operator except ``exists: false`` (and therefore satisfies
``not``). Failure descriptions name the condition, the claim path and the configured (policy)
value, never a value from the token.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from gateway.auth.claims import MISSING, compile_claim_path
from gateway.auth.types import Claims
from gateway.config.models import AllRule, AnyRule, ClaimCondition, NotRule, Rule, ScopeCondition

Params = Mapping[str, str]
_Predicate = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """The result of evaluating a rule.

    ``failed`` describes the failing condition (never a claim value); ``scopes`` lists the
    scopes of a failed scope condition, for the ``scope`` attribute of the 403 challenge.
    """

    ok: bool
    failed: str | None = None
    scopes: tuple[str, ...] = ()


#: The (shared) outcome of a rule that holds.
ALLOWED = RuleOutcome(True)


@dataclass(frozen=True, slots=True)
class ConditionTrace:
    """One node of a rule as ``explain`` shows it (pre-order; ``depth`` 0 is the root)."""

    depth: int
    label: str
    passed: bool
    #: Extra context that names no value, e.g. ``claim absent``.
    note: str = ""


class _Node:
    """A compiled rule node. ``check`` returns None when it holds, else its failure."""

    __slots__ = ("failure", "label")

    label: str
    failure: RuleOutcome

    def check(self, claims: Claims, params: Params) -> RuleOutcome | None:
        raise NotImplementedError

    def trace(self, claims: Claims, params: Params, depth: int, out: list[ConditionTrace]) -> bool:
        raise NotImplementedError

    def scopes(self) -> tuple[str, ...]:
        """Scopes that would satisfy this node (for the challenge when it fails)."""
        return ()


class _Leaf(_Node):
    __slots__ = ("get", "test")

    def __init__(self, label: str, get: Callable[[Claims], Any], test: Callable[[Any, Params], bool]) -> None:
        self.label = label
        self.get = get
        self.test = test
        self.failure = RuleOutcome(False, label)

    def check(self, claims: Claims, params: Params) -> RuleOutcome | None:
        return None if self.test(self.get(claims), params) else self.failure

    def trace(self, claims: Claims, params: Params, depth: int, out: list[ConditionTrace]) -> bool:
        value = self.get(claims)
        passed = self.test(value, params)
        out.append(ConditionTrace(depth, self.label, passed, "claim absent" if value is MISSING else ""))
        return passed


class _Scope(_Node):
    __slots__ = ("required", "any_of")

    def __init__(self, required: tuple[str, ...], any_of: bool) -> None:
        self.required = required
        self.any_of = any_of
        listed = " ".join(required)
        self.label = f'scope "{listed}"' + (" (any of)" if any_of and len(required) > 1 else "")
        self.failure = RuleOutcome(False, self.label, required)

    def scopes(self) -> tuple[str, ...]:
        return self.required

    def holds(self, claims: Claims) -> bool:
        granted = _granted_scopes(claims)
        if self.any_of:
            return any(s in granted for s in self.required)
        return all(s in granted for s in self.required)

    def check(self, claims: Claims, params: Params) -> RuleOutcome | None:
        return None if self.holds(claims) else self.failure

    def trace(self, claims: Claims, params: Params, depth: int, out: list[ConditionTrace]) -> bool:
        passed = self.holds(claims)
        absent = "scope" not in claims and "scp" not in claims
        out.append(ConditionTrace(depth, self.label, passed, "no scope or scp claim" if absent else ""))
        return passed


class _All(_Node):
    __slots__ = ("children",)

    def __init__(self, children: tuple[_Node, ...]) -> None:
        self.children = children
        self.label = "all of"
        self.failure = RuleOutcome(False, "all of (" + ", ".join(_short(c) for c in children) + ")")

    def check(self, claims: Claims, params: Params) -> RuleOutcome | None:
        for child in self.children:
            failed = child.check(claims, params)
            if failed is not None:
                # The first failing condition is the most useful description.
                return failed
        return None

    def trace(self, claims: Claims, params: Params, depth: int, out: list[ConditionTrace]) -> bool:
        at = len(out)
        out.append(ConditionTrace(depth, self.label, True))
        results = [child.trace(claims, params, depth + 1, out) for child in self.children]
        passed = all(results)
        out[at] = ConditionTrace(depth, self.label, passed)
        return passed

    def scopes(self) -> tuple[str, ...]:
        return _unique(s for c in self.children for s in c.scopes())


class _Any(_Node):
    __slots__ = ("children",)

    def __init__(self, children: tuple[_Node, ...]) -> None:
        self.children = children
        self.label = "any of"
        self.failure = RuleOutcome(
            False, "none of (" + " | ".join(_short(c) for c in children) + ")", self.scopes()
        )

    def check(self, claims: Claims, params: Params) -> RuleOutcome | None:
        for child in self.children:
            if child.check(claims, params) is None:
                return None
        return self.failure

    def trace(self, claims: Claims, params: Params, depth: int, out: list[ConditionTrace]) -> bool:
        at = len(out)
        out.append(ConditionTrace(depth, self.label, True))
        results = [child.trace(claims, params, depth + 1, out) for child in self.children]
        passed = any(results)
        out[at] = ConditionTrace(depth, self.label, passed)
        return passed

    def scopes(self) -> tuple[str, ...]:
        return _unique(s for c in self.children for s in c.scopes())


class _Not(_Node):
    __slots__ = ("child",)

    def __init__(self, child: _Node) -> None:
        self.child = child
        self.label = "not"
        self.failure = RuleOutcome(False, f"not ({_short(child)})")

    def check(self, claims: Claims, params: Params) -> RuleOutcome | None:
        return self.failure if self.child.check(claims, params) is None else None

    def trace(self, claims: Claims, params: Params, depth: int, out: list[ConditionTrace]) -> bool:
        at = len(out)
        out.append(ConditionTrace(depth, self.label, True))
        passed = not self.child.trace(claims, params, depth + 1, out)
        out[at] = ConditionTrace(depth, self.label, passed)
        return passed


def _short(node: _Node) -> str:
    if isinstance(node, _All | _Any | _Not):
        return node.failure.failed or node.label
    return node.label


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


class CompiledRule:
    """A route's rule, ready for the request path: no pydantic, no regex compilation."""

    __slots__ = ("_root", "description")

    def __init__(self, root: _Node) -> None:
        self._root = root
        #: The whole rule in words (for logs and ``explain``).
        self.description = _short(root)

    def evaluate(self, claims: Claims, params: Params) -> RuleOutcome:
        """Evaluate against verified ``claims`` and the route's path ``params``."""
        failed = self._root.check(claims, params)
        return ALLOWED if failed is None else failed

    def explain(self, claims: Claims, params: Params) -> list[ConditionTrace]:
        """Every node with pass/fail (no short-circuit), pre-order, for ``explain``."""
        out: list[ConditionTrace] = []
        self._root.trace(claims, params, 0, out)
        return out


def compile_rule(rule: Rule, *, params: Collection[str] | None = None) -> CompiledRule:
    """Compile a validated ``require`` tree.

    ``params``: the path parameters of the route's pattern; when given, an ``equals_param``
    naming another parameter is refused. Raises ValueError (one line, naming the node) for a
    rule that can never be evaluated (bad claim path, unknown parameter).
    """
    return CompiledRule(_compile(rule, params, "require"))


def _compile(rule: Rule, params: Collection[str] | None, where: str) -> _Node:
    if isinstance(rule, AllRule):
        return _All(tuple(_compile(r, params, f"{where}.all[{i}]") for i, r in enumerate(rule.all)))
    if isinstance(rule, AnyRule):
        return _Any(tuple(_compile(r, params, f"{where}.any[{i}]") for i, r in enumerate(rule.any)))
    if isinstance(rule, NotRule):
        return _Not(_compile(rule.not_, params, f"{where}.not"))
    if isinstance(rule, ScopeCondition):
        scopes = rule.scopes()
        if not scopes or any(not s or any(c.isspace() for c in s) for s in scopes):
            raise ValueError(f"{where}.scope: list one or more scopes (no empty ones)")
        return _Scope(scopes, rule.match == "any")
    return _condition(rule, params, where)


def _condition(cond: ClaimCondition, params: Collection[str] | None, where: str) -> _Leaf:
    try:
        path = compile_claim_path(cond.claim)
    except ValueError as exc:
        raise ValueError(f"{where}.claim: {exc}") from None
    op = cond.operator()
    claim = f"claim {path.label}"
    test: Callable[[Any, Params], bool]
    if op == "equals":
        label, test = f"{claim} equals {_show(cond.equals)}", _ignore_params(_one_of([cond.equals]))
    elif op == "in":
        values = list(cond.in_ or ())
        label, test = f"{claim} in {_show(values)}", _ignore_params(_one_of(values))
    elif op == "contains":
        label, test = (
            f"{claim} contains {_show(cond.contains)}",
            _ignore_params(_contains([cond.contains], all)),
        )
    elif op == "contains_all":
        values = list(cond.contains_all or ())
        label, test = f"{claim} contains all of {_show(values)}", _ignore_params(_contains(values, all))
    elif op == "contains_any":
        values = list(cond.contains_any or ())
        label, test = f"{claim} contains any of {_show(values)}", _ignore_params(_contains(values, any))
    elif op == "exists":
        wanted = bool(cond.exists)
        label = f"{claim} exists" if wanted else f"{claim} is absent"
        test = _ignore_params(lambda v: (v is not MISSING) is wanted)
    elif op == "matches":
        assert cond.matches is not None
        label, test = f"{claim} matches {_show(cond.matches)}", _ignore_params(_matches(cond.matches))
    elif op in ("gt", "ge", "lt", "le"):
        bound = getattr(cond, op)
        symbol = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}[op]
        label, test = f"{claim} {symbol} {_show(bound)}", _ignore_params(_compare(op, bound))
    elif op == "equals_param":
        name = cond.equals_param
        assert name is not None
        if params is not None and name not in params:
            raise ValueError(f"{where}.equals_param: the route's path has no parameter {{{name}}}")
        label, test = f"{claim} equals path parameter {{{name}}}", _equals_param(name)
    else:  # pragma: no cover - the model admits no other operator
        raise ValueError(f"{where}: unknown operator {op!r}")
    return _Leaf(label, path.get, test)


def _show(value: Any) -> str:
    """A configured (policy) value as written in descriptions: JSON, so types stay visible."""
    return json.dumps(value, ensure_ascii=False)


def _ignore_params(predicate: _Predicate) -> Callable[[Any, Params], bool]:
    def test(value: Any, params: Params) -> bool:
        return predicate(value)

    return test


def _one_of(values: list[Any]) -> _Predicate:
    """Strict JSON equality with one of ``values``: same JSON type, then equal."""
    if len(values) == 1 and isinstance(values[0], str):
        only = values[0]
        # Only a str compares equal to a str: no type check needed.
        return lambda v: v == only
    strings = frozenset(v for v in values if type(v) is str)
    numbers = frozenset(v for v in values if type(v) is int or type(v) is float)
    booleans = frozenset(v for v in values if type(v) is bool)
    null = any(v is None for v in values)

    def one_of(value: Any) -> bool:
        kind = type(value)
        if kind is str:
            return value in strings
        if kind is bool:
            return value in booleans
        if kind is int or kind is float:
            return value in numbers
        if value is None:
            return null
        return False

    return one_of


def _contains(values: list[Any], quantifier: Callable[[Iterable[bool]], bool]) -> _Predicate:
    """The claim (an array, or a scalar as a one-element array) holds all/any of ``values``."""
    wanted = [_one_of([v]) for v in values]
    if len(values) == 1 and isinstance(values[0], str):
        only = values[0]

        def contains_string(value: Any) -> bool:
            if type(value) is list:
                return only in value  # only str elements compare equal to a str
            return bool(value == only)

        return contains_string

    def contains(value: Any) -> bool:
        if value is MISSING or isinstance(value, dict):
            return False
        elements = value if type(value) is list else (value,)
        return quantifier(any(w(e) for e in elements) for w in wanted)

    return contains


def _matches(pattern: str) -> _Predicate:
    regex = re.compile(pattern)

    def matches(value: Any) -> bool:
        return type(value) is str and regex.fullmatch(value) is not None

    return matches


def _is_number(value: Any) -> bool:
    kind = type(value)
    return kind is int or (kind is float and math.isfinite(value))


def _compare(op: str, bound: float) -> _Predicate:
    if op == "gt":
        return lambda v: _is_number(v) and v > bound
    if op == "ge":
        return lambda v: _is_number(v) and v >= bound
    if op == "lt":
        return lambda v: _is_number(v) and v < bound
    return lambda v: _is_number(v) and v <= bound


def _equals_param(name: str) -> Callable[[Any, Params], bool]:
    def equals_param(value: Any, params: Params) -> bool:
        raw = params.get(name)
        if raw is None:
            return False
        if "%" in raw:
            try:
                raw = unquote(raw, errors="strict")
            except UnicodeDecodeError:
                return False
        kind = type(value)
        if kind is str:
            return bool(value == raw)
        if kind is int:
            return str(value) == raw
        return False

    return equals_param


def _granted_scopes(claims: Claims) -> list[Any]:
    """Granted scopes from ``scope`` and ``scp`` (strings split on spaces, or arrays).

    Non-string array elements and empty tokens are left in: they never equal a configured
    scope (those are non-empty strings), so filtering them would only cost time.
    """
    granted: list[Any] = []
    for name in ("scope", "scp"):
        value = claims.get(name)
        if type(value) is str:
            granted += value.split(" ")
        elif type(value) is list:
            granted += value
    return granted


__all__ = ["ALLOWED", "CompiledRule", "ConditionTrace", "RuleOutcome", "compile_rule"]
