"""Offline commands: ``check`` (validate a config), ``explain`` (one request, step by step) and
``test`` (a policy test file). They compile the config with the same code as ``serve`` and
decide with the same :class:`~gateway.pipeline.Pipeline`: what they say is what the gateway does.

**explain** (:func:`explain`) decides one request and shows every step: the canonical path (or
why it was refused), the routes considered in file order and which one matched, the auth mode,
the verification steps, each rule condition with pass/fail, the claim headers that would be set,
the inbound headers that would be stripped, the upstream target and the final status. The token
is never printed (every occurrence is replaced by ``<token>``). Credentials:

- ``--token T``: a real token, really verified: the keys of its issuer's provider are fetched
  (discovery/JWKS, as in production, bounded by ``--key-timeout``), then signature, ``exp``,
  ``iss``, ``aud`` and provider claims are checked. The token is placed where the matched
  route's providers look for it (their ``token.header`` and scheme, else cookie, else query).
- ``--claims JSON``: the claims are taken as verified. Nothing about them is checked (no
  signature, no ``exp``/``iss``/``aud``/provider claims): they go straight to the route's rule
  and the claim headers. For trying a policy without minting tokens.
- neither: an anonymous request (or whatever ``--header`` carries, e.g. an Authorization).

Exit status: 0 when the request would be forwarded (allowed, or denied in report-only mode),
1 when it would be denied, 2 for a config error or bad usage.

**Policy test file** (:func:`run_policy_tests`, ``jwt-gateway test [--config F] FILE``)::

    config: gateway.yaml            # optional: the config to test (relative to this file);
                                    # --config overrides it
    cases:
      - name: admins may list users           # unique
        request:
          method: GET                         # default GET (any case)
          path: /admin/users?page=2           # raw request target: path and optional query
          host: api.example.com               # optional Host header
          headers: {X-User-Id: mallory}       # optional; a list value sends the header repeatedly
        claims: {sub: alice, roles: [admin]}  # taken as verified (see --claims above), or
        # token: ${ADMIN_TOKEN}               # a real token, verified as in production;
                                              # neither: an anonymous request
        expect:
          status: 200                         # 200 = forwarded; else the gateway's error status
          reason: ok                          # optional: ok or the (would-be) denial reason
          outcome: allowed                    # optional: allowed | denied | report_only
          route: admin                        # optional: the matched route's name (null: none)
          upstream_path: /admin/users         # optional: the path the upstream would receive
          headers:                            # optional: claim headers set upstream
            X-User-Id: alice                  # exact value; a list for repeated headers;
            X-User-Roles: null                # null: the header must not be set

``${VAR}`` and ``${VAR:-default}`` are substituted from the environment (tokens from CI
secrets). Unknown keys are refused. Each case prints one ``PASS``/``FAIL`` line (a failure lists
every difference), then a summary. Exit status: 0 when every case passes, 1 otherwise, 2 for an
invalid test file (one line: ``<file>: <key path>: <reason>``) or an invalid config.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.auth.claim_headers import normalize_header_name
from gateway.auth.extract import extract_token
from gateway.auth.jws import parse_compact
from gateway.auth.keys import RemoteJWKS
from gateway.config.loader import load_config, load_yaml, read_text, substitute_env, validation_error
from gateway.config.models import GatewayConfig
from gateway.errors import ConfigError, GatewayError, TokenMissing
from gateway.pipeline import Decision, Pipeline, RequestView
from gateway.policy import CompiledRoute, Policy, build_policy
from gateway.proxy.headers import HOP_BY_HOP, METHOD_OVERRIDES, is_forwarding_header, strip_request_headers
from gateway.routing.path import canonical_path

#: Seconds allowed for fetching one provider's keys (discovery + JWKS) offline.
DEFAULT_KEY_TIMEOUT = 5.0
#: The status a policy test expects for a request the gateway forwards.
FORWARDED = 200
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOKEN_MARK = "<token>"  # noqa: S105 - what replaces a token in output, not a secret


# ------------------------------------------------------------------------------------- check


def check(config_path: str, out: TextIO | None = None) -> int:
    """Validate ``config_path``; print providers and routes; warn about unreachable routes.

    Returns 0 when valid (warnings do not fail the check); a config error is raised as
    :class:`~gateway.errors.ConfigError` (the CLI reports it and exits 2).
    """
    out = out or sys.stdout
    cfg = load_config(config_path)
    policy = build_policy(cfg, base_dir=config_path)
    print(f"{config_path}: OK", file=out)
    print("\nproviders:", file=out)
    for name, p in cfg.providers.items():
        if p.discovery:
            source = "discovery"
        elif p.jwks_uri:
            source = f"jwks_uri {p.jwks_uri}"
        elif p.public_key_file:
            source = f"public_key_file {p.public_key_file}"
        elif p.jwks_file:
            source = f"jwks_file {p.jwks_file}"
        else:
            source = "HMAC secret"
        audiences = "any" if p.audiences is None else ",".join(p.audiences)
        print(
            f"  {name}: issuer={p.issuer!r} algorithms={','.join(p.algorithms)} "
            f"audiences={audiences} keys={source}",
            file=out,
        )
    print("\nroutes (first match in file order wins):", file=out)
    for i, route in enumerate(cfg.routes):
        name = route.name or f"route{i}"
        methods = ",".join(route.match.methods) if route.match.methods else "*"
        host = route.match.host or "*"
        extra = []
        if route.providers is not None:
            extra.append(f"providers={','.join(route.providers)}")
        if route.require is not None:
            extra.append("rule")
        if not route.enforce:
            extra.append("report-only")
        upstream = route.upstream or cfg.upstream or "-"
        print(
            f"  [{i}] {name}: {methods} {route.match.path} host={host} auth={route.auth} "
            f"-> {upstream if route.auth != 'deny' else '(denied)'} {' '.join(extra)}".rstrip(),
            file=out,
        )
    warnings = 0
    for i, j in policy.routes.unreachable():
        warnings += 1
        name_i = cfg.routes[i].name or f"route{i}"
        name_j = cfg.routes[j].name or f"route{j}"
        print(
            f"warning: routes[{i}] ({name_i}) can never match: routes[{j}] ({name_j}) "
            "comes first and matches everything it would",
            file=out,
        )
    for i, variant, j in _lenient_fallthroughs(cfg, policy):
        warnings += 1
        name_i = cfg.routes[i].name or f"route{i}"
        name_j = cfg.routes[j].name or f"route{j}"
        print(
            f"warning: routes[{i}] ({name_i}) protects {cfg.routes[i].match.path} exactly, but "
            f"{variant} is matched by routes[{j}] ({name_j}, auth: {cfg.routes[j].auth}): a backend "
            "that ignores a trailing slash or letter case would serve the protected path to it",
            file=out,
        )
    print(f"\nunmatched requests: {cfg.unmatched_status}, never forwarded", file=out)
    if warnings:
        print(f"{warnings} warning(s)", file=out)
    return 0


def _lenient_fallthroughs(cfg: GatewayConfig, policy: Policy) -> list[tuple[int, str, int]]:
    """``(i, variant, j)``: exact route ``i`` (not public) protects a path whose trailing-slash
    or letter-case ``variant`` a later public or optional route ``j`` takes instead.

    The gateway's paths are exact and case-sensitive by design; many backends (Express in
    non-strict mode, Spring before 6, IIS) serve ``/Secret/`` as ``/secret``.
    """
    found: list[tuple[int, str, int]] = []
    strip_slash = "strip_trailing_slash" in cfg.paths.normalize
    for i, route in enumerate(cfg.routes):
        pattern = route.match.path
        if route.auth == "public" or "*" in pattern or "{" in pattern or pattern == "/":
            continue
        method = route.match.methods[0] if route.match.methods else "GET"
        hosts = route.match.host
        host = hosts if isinstance(hosts, str) else hosts[0] if hosts else None
        variants = [] if strip_slash else [pattern[:-1] if pattern.endswith("/") else pattern + "/"]
        variants += [v for v in (pattern.upper(), pattern.lower()) if v != pattern]
        for variant in dict.fromkeys(variants):
            match = policy.routes.match(method, variant, host)
            if match is not None and match.index != i and match.payload.auth in ("public", "optional"):
                found.append((i, variant, match.index))
    return found


# ------------------------------------------------------------------------ offline requests


@dataclass(slots=True)
class OfflineRequest:
    """A request decided without a network client: what explain and policy tests feed the
    pipeline. ``target`` is the raw request target (path, optionally ``?query``)."""

    method: str
    target: str
    host: str | None = None
    headers: Sequence[tuple[str, str]] = ()
    #: A real token (verified as in production). Exclusive with ``claims``.
    token: str | None = None
    #: Claims taken as verified (nothing checked). Exclusive with ``token``.
    claims: Mapping[str, Any] | None = None


@dataclass(slots=True)
class KeyLoad:
    """What loading one provider's keys for a token did (for explain's verification steps)."""

    provider: str
    source: str
    outcome: str
    keys: int


def parse_header_line(line: str) -> tuple[str, str]:
    """``"Name: value"`` -> ``("Name", "value")``; ValueError unless it is a valid header line."""
    name, colon, value = line.partition(":")
    if not colon:
        raise ValueError("write 'Name: value'")
    return check_header(name, value.strip(" \t"))


def check_header(name: str, value: str) -> tuple[str, str]:
    """``(name, value)`` when both are valid in HTTP/1.1, else ValueError (as a server refuses)."""
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid header name")
    if any(c in value for c in "\r\n\x00"):
        raise ValueError(f"the value of {name} contains CR, LF or NUL")
    return name, value


def _split_target(target: str) -> tuple[bytes, bytes]:
    path, _, query = target.partition("?")
    # Bytes as a client would send them; non-ASCII is left raw (and refused, as on the wire).
    return path.encode("utf-8", "surrogateescape"), query.encode("utf-8", "surrogateescape")


def _matched_route(policy: Policy, method: str, raw_path: bytes, host: str | None) -> CompiledRoute | None:
    try:
        path = canonical_path(raw_path, policy.normalize)
    except GatewayError:
        return None
    found = policy.routes.match(method, path, host)
    return None if found is None else found.payload


def _place_token(route: CompiledRoute | None, token: str) -> tuple[tuple[bytes, bytes] | None, bytes]:
    """Where the route's providers look for a token: (header to add, query to append)."""
    if route is None:
        return (b"authorization", f"Bearer {token}".encode()), b""
    locations = route.locations
    if locations.headers:
        name, schemes = next(iter(locations.headers.items()))
        scheme = b"bearer" if b"bearer" in schemes else min(schemes)
        if scheme == b"bearer":
            return (name, f"Bearer {token}".encode()), b""
        value = token.encode() if not scheme else scheme + b" " + token.encode()
        return (name, value), b""
    if locations.cookies:
        return (b"cookie", min(locations.cookies) + b"=" + token.encode()), b""
    if locations.query:
        return None, min(locations.query) + b"=" + token.encode()
    return (b"authorization", f"Bearer {token}".encode()), b""


def build_view(policy: Policy, request: OfflineRequest) -> RequestView:
    """The :class:`RequestView` of ``request``: Host first, then its headers, then the token."""
    raw_path, query = _split_target(request.target)
    headers: list[tuple[bytes, bytes]] = []
    if request.host is not None:
        headers.append((b"host", request.host.encode("utf-8", "surrogateescape")))
    for name, value in request.headers:
        check_header(name, value)
        headers.append((name.lower().encode("ascii"), value.strip().encode("utf-8")))
    if request.token is not None:
        route = _matched_route(policy, request.method, raw_path, request.host)
        header, extra_query = _place_token(route, request.token)
        if header is not None:
            headers.append(header)
        if extra_query:
            query = query + b"&" + extra_query if query else extra_query
    return RequestView(request.method, raw_path, query, headers, "127.0.0.1")


def _presented_token(policy: Policy, view: RequestView, *, verified_only: bool = False) -> str | None:
    """The token the request presents where its route looks, if any (errors: none).

    ``verified_only``: only on a route that would verify it (``required``/``optional``).
    """
    route = _matched_route(policy, view.method, view.raw_path, _host(view))
    if route is None or verified_only and route.auth not in ("required", "optional"):
        return None
    try:
        return extract_token(view.headers, view.query, route.locations, policy.max_token_bytes)
    except GatewayError:
        return None


def _host(view: RequestView) -> str | None:
    host = view.header(b"host")
    return host.decode("latin-1") if host is not None else None


def _provider_of(policy: Policy, token: str) -> str | None:
    """The provider a token's (unverified) ``iss`` routes it to, as the verifier does."""
    try:
        claims = parse_compact(token).claims
    except GatewayError:
        return None
    iss = claims.get("iss")
    for name, provider in policy.config.providers.items():
        if provider.issuer == iss and (iss is None or isinstance(iss, str)):
            return name
    return None


async def load_token_keys(policy: Policy, token: str, within: float) -> KeyLoad | None:
    """Fetch the keys of ``token``'s provider when they are remote and not loaded yet.

    Bounded by ``within`` seconds (and the provider's own ``jwks.timeout``); a failure is reported in
    the result, never raised: the verification step then answers as it would in production.
    """
    name = _provider_of(policy, token)
    if name is None:
        return None
    source = policy.key_sources[name]
    if isinstance(source, RemoteJWKS) and not source.ready:
        try:
            async with asyncio.timeout(within):
                await source.refresh()
        except TimeoutError:
            pass
    status = source.status()
    if isinstance(source, RemoteJWKS):
        outcome = status.last_outcome or "timeout"
    else:
        outcome = "static"
    return KeyLoad(name, status.source, outcome, status.keys)


async def decide_offline(
    pipeline: Pipeline, request: OfflineRequest, *, key_timeout: float = DEFAULT_KEY_TIMEOUT
) -> tuple[RequestView, Decision, KeyLoad | None]:
    """Decide ``request`` with the pipeline: claims injected, or a token verified for real."""
    policy = pipeline.policy
    view = build_view(policy, request)
    if request.claims is not None:
        return view, pipeline.decide_with_claims(view, request.claims), None
    token = _presented_token(policy, view, verified_only=True)
    loaded = await load_token_keys(policy, token, key_timeout) if token is not None else None
    return view, await pipeline.decide(view), loaded


def _status(decision: Decision) -> int:
    if decision.allowed:
        return FORWARDED
    assert decision.error is not None
    return decision.error.status


def _forwarded_path(decision: Decision) -> str | None:
    if not decision.allowed or decision.route is None or decision.path is None:
        return None
    return decision.route.upstream_path(decision.path)


# ------------------------------------------------------------------------------------ explain


def _removed(before: Sequence[tuple[bytes, bytes]], after: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """Names of the headers of ``before`` that ``after`` no longer has (every copy)."""
    left = Counter(after)
    gone: list[bytes] = []
    for header in before:
        if left[header] > 0:
            left[header] -= 1
        else:
            gone.append(header[0])
    return gone


def _stripped_headers(policy: Policy, view: RequestView) -> list[dict[str, str]]:
    """The client's headers the gateway would not forward, each with why (names only)."""
    forwarding = policy.trusted_proxies.forwarding(view.client, "http", view.header(b"host"), view.headers)
    first = strip_request_headers(view.headers, trusted_peer=forwarding.trusted_peer)
    second = policy.headers.strip_inbound(first)
    cfg = policy.config.headers
    claim_names = {normalize_header_name(n) for n in policy.headers.header_names()}
    token_names = {
        normalize_header_name(p.token.header) for p in policy.config.providers.values() if p.token.header
    } or {b"authorization"}
    listed = {normalize_header_name(n) for n in cfg.strip}
    out: list[dict[str, str]] = []
    for name in _removed(view.headers, first):
        if name in HOP_BY_HOP:
            why = "hop-by-hop"
        elif is_forwarding_header(name):
            why = "forwarding header: regenerated from the real peer, or kept only from a trusted proxy"
        elif name == b"host":
            why = "replaced: the gateway sets Host, the upstream's unless preserve_host"
        elif name == b"content-length":
            why = "replaced: the gateway re-derives the framing"
        elif name in METHOD_OVERRIDES:
            why = "method override: the route was decided on the request's own method"
        else:
            why = "hop-by-hop: nominated by Connection"
        out.append({"name": name.decode("latin-1"), "why": why})
    for name in _removed(first, second):
        normal = normalize_header_name(name)
        if normal in claim_names:
            why = "spoofed copy of a claim header the gateway sets"
        elif normal in token_names and not cfg.forward_authorization:
            why = "credentials: headers.forward_authorization is false"
        elif cfg.drop_underscore_headers and b"_" in name:
            why = "name contains '_': headers.drop_underscore_headers"
        elif normal in listed:
            why = "listed in headers.strip"
        else:
            why = "matches headers.strip_prefixes"
        out.append({"name": name.decode("latin-1"), "why": why})
    return out


def _is_preflight(view: RequestView) -> bool:
    return (
        view.method == "OPTIONS"
        and view.header(b"origin") is not None
        and view.header(b"access-control-request-method") is not None
    )


def _verification(
    policy: Policy,
    request: OfflineRequest,
    view: RequestView,
    decision: Decision,
    loaded: KeyLoad | None,
) -> dict[str, Any]:
    """What happened to the credentials, as steps a person can follow."""
    route = decision.route
    if route is None or route.auth == "deny":
        return {
            "status": "skipped",
            "steps": ["skipped: the request was refused before any token was looked at"],
        }
    if route.auth == "public":
        return {"status": "skipped", "steps": ["skipped: auth: public (no token is looked at)"]}
    if route.cors_preflight and _is_preflight(view):
        return {"status": "skipped", "steps": ["skipped: a CORS preflight on a cors_preflight route"]}
    if request.claims is not None:
        return {
            "status": "assumed",
            "steps": [
                "skipped: --claims given: the claims are taken as verified (no signature, exp, "
                "iss, aud or provider-claim checks)"
            ],
        }
    try:
        token = extract_token(view.headers, view.query, route.locations, policy.max_token_bytes)
    except GatewayError as exc:
        return {"status": "refused", "steps": [f"credentials refused: {exc.reason} ({exc.detail})"]}
    if token is None:
        if isinstance(decision.error, TokenMissing):
            return {"status": "refused", "steps": ["no token: refused (token_missing)"]}
        return {"status": "none", "steps": ["no token: passes without claim headers (auth: optional)"]}
    steps = [f"token: {len(token)} bytes (never printed)"]
    try:
        parsed = parse_compact(token)
    except GatewayError as exc:
        steps.append(f"parse: refused: {exc.reason} ({exc.detail})")
        return {"status": "refused", "steps": steps}
    typ = parsed.header.get("typ")
    steps.append(
        f"header: alg={parsed.alg} kid={parsed.kid!r}" + (f" typ={typ!r}" if typ is not None else "")
    )
    iss = parsed.claims.get("iss", None)
    provider = _provider_of(policy, token)
    steps.append(
        f"issuer: {iss!r} -> "
        + (f"provider {provider}" if provider is not None else "no configured provider has this issuer")
    )
    accepted = "any provider" if route.providers is None else ", ".join(sorted(route.providers))
    steps.append(f"route accepts: {accepted}")
    if loaded is not None:
        if loaded.outcome == "static":
            steps.append(f"keys: {loaded.provider} ({loaded.source}): {loaded.keys} key(s)")
        else:
            steps.append(
                f"keys: {loaded.provider} ({loaded.source}): fetch {loaded.outcome}, {loaded.keys} key(s)"
            )
    if decision.token is not None:
        steps.append(f"signature and claims: verified (provider {decision.token.provider})")
        return {"status": "verified", "provider": decision.token.provider, "steps": steps}
    assert decision.error is not None
    steps.append(f"signature and claims: refused: {decision.error.reason} ({decision.error.detail})")
    return {"status": "refused", "steps": steps}


def _credentials(policy: Policy, request: OfflineRequest, view: RequestView) -> str:
    if request.claims is not None:
        return "claims"
    if request.token is not None:
        return "token"
    return "token (from the request)" if _presented_token(policy, view) is not None else "none"


def _claims_for_rule(request: OfflineRequest, decision: Decision) -> Mapping[str, Any] | None:
    if request.claims is not None:
        return request.claims
    return decision.token.claims if decision.token is not None else None


def _rule_report(
    route: CompiledRoute, claims: Mapping[str, Any] | None, decision: Decision
) -> dict[str, Any]:
    rule = route.rule
    assert rule is not None
    if claims is None or decision.token is None:
        why = (
            "no verified claims" if decision.error is None else f"refused before the rule ({decision.reason})"
        )
        return {"description": rule.description, "evaluated": False, "why": why, "conditions": []}
    traces = rule.explain(claims, decision.params)
    return {
        "description": rule.description,
        "evaluated": True,
        "passed": bool(traces) and traces[0].passed,
        "conditions": [
            {"depth": t.depth, "label": t.label, "passed": t.passed, "note": t.note} for t in traces
        ],
    }


def _decision_report(decision: Decision) -> dict[str, Any]:
    error = decision.error
    report: dict[str, Any] = {
        "outcome": decision.outcome,
        "forwarded": decision.allowed,
        "status": _status(decision),
        "reason": decision.reason,
    }
    if error is not None:
        report["would_be_status" if decision.allowed else "error_status"] = error.status
        report["detail"] = error.detail
    if decision.rule_failure is not None:
        report["failed_condition"] = decision.rule_failure
    return report


def explain_report(
    policy: Policy, request: OfflineRequest, *, key_timeout: float = DEFAULT_KEY_TIMEOUT
) -> dict[str, Any]:
    """Decide ``request`` under ``policy`` and return every step as a JSON-ready mapping.

    Keys: ``request``, ``path`` (``canonical`` or ``refused``), ``routes`` (every route in file
    order: ``index``, ``name``, ``matched``, ``why``), ``route`` (the match, or null),
    ``verification`` (``status``: skipped | assumed | none | verified | refused, and ``steps``),
    ``claims``, ``rule`` (``description``, ``evaluated``, ``passed``, ``conditions``),
    ``claim_headers``, ``stripped_headers``, ``upstream`` (``origin``, ``path``, ``query``,
    ``url``, or null) and ``decision`` (``outcome``, ``forwarded``, ``status``, ``reason``,
    ``detail``, ``failed_condition``). Remote keys are fetched and closed here.
    """
    return asyncio.run(_explain(policy, request, key_timeout))


async def _explain(policy: Policy, request: OfflineRequest, key_timeout: float) -> dict[str, Any]:
    pipeline = Pipeline(policy)
    try:
        view, decision, loaded = await decide_offline(pipeline, request, key_timeout=key_timeout)
    finally:
        await policy.aclose()
    raw_path, query = _split_target(request.target)
    report: dict[str, Any] = {
        "request": {
            "method": request.method,
            "path": raw_path.decode("utf-8", "backslashreplace"),
            "query": query.decode("utf-8", "backslashreplace"),
            "host": request.host,
            "credentials": _credentials(policy, request, view),
        }
    }
    try:
        path = canonical_path(raw_path, policy.normalize)
    except GatewayError as exc:
        report["path"] = {"refused": exc.detail}
        report["routes"] = []
    else:
        report["path"] = {"canonical": path}
        names = [r.name or f"route{i}" for i, r in enumerate(policy.config.routes)]
        report["routes"] = [
            {"index": c.index, "name": names[c.index], "matched": c.matched, "why": c.why}
            for c in policy.routes.candidates(request.method, path, _host(view))
        ]
    route = decision.route
    report["route"] = (
        None
        if route is None
        else {
            "index": route.index,
            "name": route.name,
            "auth": route.auth,
            "enforce": route.enforce,
            "providers": None if route.providers is None else sorted(route.providers),
            "params": dict(decision.params),
        }
    )
    report["verification"] = _verification(policy, request, view, decision, loaded)
    claims = _claims_for_rule(request, decision)
    report["claims"] = dict(claims) if claims is not None and route is not None else None
    report["rule"] = _rule_report(route, claims, decision) if route is not None and route.rule else None
    report["claim_headers"] = [
        {"name": n.decode("latin-1"), "value": v.decode("latin-1")} for n, v in decision.claim_headers
    ]
    report["stripped_headers"] = _stripped_headers(policy, view)
    forwarded = _forwarded_path(decision)
    if forwarded is not None and route is not None and route.upstream is not None:
        origin = str(route.origin)
        url = origin + forwarded + (f"?{view.query.decode('latin-1')}" if view.query else "")
        report["upstream"] = {
            "origin": origin,
            "path": forwarded,
            "query": view.query.decode("latin-1"),
            "url": url,
        }
    else:
        report["upstream"] = None
    report["decision"] = _decision_report(decision)
    return report


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, _TOKEN_MARK)
    return text


def render_explanation(report: Mapping[str, Any]) -> str:
    """The human-readable form of :func:`explain_report`'s result."""
    lines: list[str] = []
    add = lines.append
    req = report["request"]
    target = req["path"] + (f"?{req['query']}" if req["query"] else "")
    add(f"request:      {req['method']} {target}" + (f"  (Host: {req['host']})" if req["host"] else ""))
    path = report["path"]
    if "refused" in path:
        add(f"path:         REFUSED: {path['refused']}")
    else:
        add(f"path:         {path['canonical']}  (canonical: matched and forwarded as is)")
    if report["routes"]:
        add("routes:       (first match in file order wins)")
        for c in report["routes"]:
            mark = "MATCH" if c["matched"] else "  -  "
            add(f"  {mark} [{c['index']}] {c['name']}: {c['why']}")
    route = report["route"]
    if route is not None:
        providers = "any" if route["providers"] is None else ",".join(route["providers"])
        mode = "enforced" if route["enforce"] else "report-only (enforce: false)"
        add(
            f"route:        {route['name']} [{route['index']}]  auth={route['auth']}  {mode}  "
            f"providers={providers}"
        )
        if route["params"]:
            add("  params:     " + ", ".join(f"{k}={v}" for k, v in route["params"].items()))
    elif "canonical" in path:
        add("route:        none matches")
    add(f"verification: {report['verification']['status']}")
    for step in report["verification"]["steps"]:
        add(f"  {step}")
    if report["claims"] is not None:
        add("claims:       " + json.dumps(report["claims"], ensure_ascii=False, sort_keys=True))
    rule = report["rule"]
    if rule is not None:
        if rule["evaluated"]:
            add("rule:")
        else:
            add(f"rule:         {rule['description']}")
            add(f"  not evaluated: {rule['why']}")
        for cond in rule["conditions"]:
            mark = "pass" if cond["passed"] else "FAIL"
            note = f"  ({cond['note']})" if cond["note"] else ""
            add(f"  {'  ' * cond['depth']}[{mark}] {cond['label']}{note}")
    elif route is not None and route["auth"] in ("required", "optional"):
        add("rule:         none (any valid token of an accepted provider)")
    add("claim headers set:" if report["claim_headers"] else "claim headers set: none")
    for h in report["claim_headers"]:
        add(f"  {h['name']}: {h['value']}")
    add("inbound headers stripped:" if report["stripped_headers"] else "inbound headers stripped: none")
    for h in report["stripped_headers"]:
        add(f"  {h['name']}  ({h['why']})")
    upstream = report["upstream"]
    add(f"upstream:     {upstream['url']}" if upstream else "upstream:     (not forwarded)")
    d = report["decision"]
    if d["outcome"] == "allowed":
        add("decision:     ALLOWED: forwarded (the status is the upstream's)")
    elif d["outcome"] == "report_only":
        add(
            f"decision:     REPORT-ONLY: forwarded, but would be denied with "
            f"{d['would_be_status']} {d['reason']}: {d['detail']}"
        )
    else:
        add(f"decision:     DENIED {d['status']} {d['reason']}: {d['detail']}")
    if "failed_condition" in d:
        add(f"  failed condition: {d['failed_condition']}")
    return "\n".join(lines)


def explain(
    config_path: str,
    request: OfflineRequest,
    *,
    as_json: bool = False,
    key_timeout: float = DEFAULT_KEY_TIMEOUT,
    out: TextIO | None = None,
) -> int:
    """``jwt-gateway explain``: print every step of deciding ``request``.

    Returns 0 when the request would be forwarded (allowed or report-only), 1 when denied;
    raises :class:`~gateway.errors.ConfigError` for an invalid config.
    """
    out = out or sys.stdout
    policy = build_policy(load_config(config_path), base_dir=config_path)
    report = explain_report(policy, request, key_timeout=key_timeout)
    secrets = [request.token or ""]
    presented = _presented_token(policy, build_view(policy, request))
    if presented is not None:
        secrets.append(presented)
    text = json.dumps(report, indent=2, ensure_ascii=False) if as_json else render_explanation(report)
    print(_redact(text, secrets), file=out)
    return 0 if report["decision"]["forwarded"] else 1


# ------------------------------------------------------------------------------ policy tests


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TestRequest(_Strict):
    """The request of a policy test case."""

    __test__ = False  # not a pytest test class

    method: str = "GET"
    #: The raw request target: path and optional ``?query``.
    path: str = Field(min_length=1)
    host: str | None = None
    #: Header name -> value, or a list of values (the header is sent once per value).
    headers: dict[str, str | list[str]] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for name, value in v.items():
            for one in [value] if isinstance(value, str) else value:
                check_header(name, one)
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if not v or not v.isascii() or not v.isalpha():
            raise ValueError("a method is letters only, e.g. GET")
        return v


class TestExpectation(_Strict):
    """What a policy test case expects; only the keys written are compared."""

    __test__ = False

    #: 200 for a forwarded request, else the gateway's error status.
    status: int = Field(ge=100, le=599)
    reason: str | None = None
    outcome: Literal["allowed", "denied", "report_only"] | None = None
    #: The matched route's name (``null``: no route matches).
    route: str | None = None
    #: The path the upstream would receive (after prefix rewriting), without the query.
    upstream_path: str | None = None
    #: Claim header -> exact value, a list of values (repeated header), or null (must be absent).
    headers: dict[str, str | list[str] | None] | None = None


class TestCase(_Strict):
    """One policy test case."""

    __test__ = False

    name: str = Field(min_length=1)
    request: TestRequest
    claims: dict[str, Any] | None = None
    token: str | None = None
    expect: TestExpectation

    @model_validator(mode="after")
    def _one_credential(self) -> TestCase:
        if self.claims is not None and self.token is not None:
            raise ValueError("give `claims` or `token`, not both")
        return self


class PolicyTestFile(_Strict):
    """A policy test file: optionally the config it tests, and its cases."""

    config: str | None = None
    cases: list[TestCase] = Field(min_length=1)

    @field_validator("cases")
    @classmethod
    def _unique_names(cls, v: list[TestCase]) -> list[TestCase]:
        seen: set[str] = set()
        for case in v:
            if case.name in seen:
                raise ValueError(f"two cases are named {case.name!r}")
            seen.add(case.name)
        return v


class PolicyTestFileError(ConfigError):
    """The policy test file is unreadable or invalid (``str()``: ``<file>: <key path>: <reason>``)."""


def load_policy_tests(path: str, *, env: Mapping[str, str] | None = None) -> PolicyTestFile:
    """Read and validate a policy test file; raises :class:`PolicyTestFileError` (one line)."""
    text = read_text(path, error=PolicyTestFileError)
    data = load_yaml(text, file=path, error=PolicyTestFileError)
    if isinstance(data, list):
        data = {"cases": data}
    if not isinstance(data, dict):
        raise PolicyTestFileError(
            "the top level must be a mapping with `cases:` (or a list of cases)", file=path
        )
    try:
        data = substitute_env(data, os.environ if env is None else env)
        return PolicyTestFile.model_validate(data)
    except ConfigError as exc:
        raise PolicyTestFileError(exc.message, file=path, path=exc.path) from None
    except ValidationError as exc:
        error = validation_error(exc, path)
        raise PolicyTestFileError(error.message, file=path, path=error.path) from None


def _headers_of(request: TestRequest) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in request.headers.items():
        for one in [value] if isinstance(value, str) else value:
            out.append((name, one))
    return out


def case_request(case: TestCase) -> OfflineRequest:
    """The :class:`OfflineRequest` of a policy test case."""
    r = case.request
    return OfflineRequest(r.method, r.path, r.host, _headers_of(r), token=case.token, claims=case.claims)


def compare(expect: TestExpectation, decision: Decision) -> list[str]:
    """Every difference between ``expect`` and ``decision`` (empty: the case passes)."""
    diffs: list[str] = []
    status = _status(decision)
    if status != expect.status:
        diffs.append(f"status {status}, expected {expect.status}")
    if expect.reason is not None and decision.reason != expect.reason:
        diffs.append(f"reason {decision.reason}, expected {expect.reason}")
    if expect.outcome is not None and decision.outcome != expect.outcome:
        diffs.append(f"outcome {decision.outcome}, expected {expect.outcome}")
    if "route" in expect.model_fields_set:
        actual = decision.route.name if decision.route is not None else None
        if actual != expect.route:
            diffs.append(f"route {actual or '(none)'}, expected {expect.route or '(none)'}")
    if expect.upstream_path is not None:
        forwarded = _forwarded_path(decision)
        if forwarded != expect.upstream_path:
            diffs.append(f"upstream path {forwarded or '(not forwarded)'}, expected {expect.upstream_path}")
    if expect.headers is not None:
        actual_headers: dict[str, list[str]] = {}
        for name, value in decision.claim_headers:
            actual_headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
        for header, wanted in expect.headers.items():
            got = actual_headers.get(header.lower())
            want = None if wanted is None else [wanted] if isinstance(wanted, str) else list(wanted)
            if got != want:
                shown = "absent" if got is None else json.dumps(got[0] if len(got) == 1 else got)
                expected = "absent" if want is None else json.dumps(wanted)
                diffs.append(f"header {header} {shown}, expected {expected}")
    return diffs


@dataclass(slots=True)
class CaseResult:
    """The outcome of one policy test case."""

    name: str
    differences: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when the decision matched every expectation."""
        return not self.differences


async def _run_cases(policy: Policy, cases: Sequence[TestCase], key_timeout: float) -> list[CaseResult]:
    pipeline = Pipeline(policy)
    results: list[CaseResult] = []
    try:
        for case in cases:
            _, decision, _ = await decide_offline(pipeline, case_request(case), key_timeout=key_timeout)
            results.append(CaseResult(case.name, compare(case.expect, decision)))
    finally:
        await policy.aclose()
    return results


def run_policy_tests(
    config_path: str | None,
    tests_path: str,
    *,
    key_timeout: float = DEFAULT_KEY_TIMEOUT,
    out: TextIO | None = None,
) -> int:
    """``jwt-gateway test``: run a policy test file; 0 all pass, 1 a case failed.

    ``config_path`` overrides the file's ``config:`` (which is relative to the test file).
    Raises :class:`PolicyTestFileError` for an invalid test file and
    :class:`~gateway.errors.ConfigError` for an invalid config.
    """
    out = out or sys.stdout
    tests = load_policy_tests(tests_path)
    if config_path is None:
        if tests.config is None:
            raise PolicyTestFileError(
                "no config to test: pass --config or write `config:` in the test file",
                file=tests_path,
                path="config",
            )
        config_path = os.fspath(Path(tests_path).parent / tests.config)
    policy = build_policy(load_config(config_path), base_dir=config_path)
    results = asyncio.run(_run_cases(policy, tests.cases, key_timeout))
    secrets = [case.token for case in tests.cases if case.token]
    for result in results:
        if result.passed:
            print(f"PASS  {result.name}", file=out)
        else:
            print(_redact(f"FAIL  {result.name}: {'; '.join(result.differences)}", secrets), file=out)
    failed = sum(not r.passed for r in results)
    print(f"\n{len(results) - failed} passed, {failed} failed ({tests_path} against {config_path})", file=out)
    return 1 if failed else 0


__all__ = [
    "DEFAULT_KEY_TIMEOUT",
    "FORWARDED",
    "CaseResult",
    "KeyLoad",
    "OfflineRequest",
    "PolicyTestFile",
    "PolicyTestFileError",
    "TestCase",
    "TestExpectation",
    "TestRequest",
    "build_view",
    "case_request",
    "check",
    "check_header",
    "compare",
    "decide_offline",
    "explain",
    "explain_report",
    "load_policy_tests",
    "load_token_keys",
    "parse_header_line",
    "render_explanation",
    "run_policy_tests",
]
