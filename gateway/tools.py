"""Offline commands: ``check`` (validate a config), ``explain`` (one request, step by step) and
``test`` (a policy test file). They run the same compiled policy and pipeline as ``serve``."""

from __future__ import annotations

import sys
from typing import TextIO

from gateway.config.loader import load_config
from gateway.policy import build_policy


def check(config_path: str, out: TextIO = sys.stdout) -> int:
    """Validate ``config_path``; print providers and routes; warn about unreachable routes.

    Returns 0 when valid (warnings do not fail the check), 2 on a config error (raised as
    ConfigError and reported by the CLI).
    """
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
    print("\nroutes (first match wins):", file=out)
    for i, route in enumerate(cfg.routes):
        compiled = policy.routes.entries[i].payload if hasattr(policy.routes, "entries") else None
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
        del compiled
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
            "matches everything it would",
            file=out,
        )
    print(f"\nunmatched requests: {cfg.unmatched_status}, never forwarded", file=out)
    if warnings:
        print(f"{warnings} warning(s)", file=out)
    return 0
