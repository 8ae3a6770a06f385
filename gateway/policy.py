"""Compile a validated :class:`~gateway.config.models.GatewayConfig` into a runtime :class:`Policy`.

All the work that can happen once happens here: key files read and checked, rules compiled to
closures, regexes compiled, header names lower-cased, upstream URLs parsed, token locations
merged per route. The request path only does lookups on the result. Problems found here (an
unknown provider in a route, an unreadable key file, a bad upstream URL) raise
:class:`~gateway.errors.ConfigError` naming the key path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from gateway.auth.claim_headers import ClaimHeaders, compile_headers
from gateway.auth.extract import STANDARD_QUERY_PARAMETER, TokenLocations, remove_query_credentials
from gateway.auth.keys import KeyEvents, KeySource, KeySourcePlan, KeySourceRegistry
from gateway.auth.rules import CompiledRule, compile_rule
from gateway.auth.types import ProviderPolicy
from gateway.auth.verify import Verifier
from gateway.config.models import GatewayConfig, Provider, Route
from gateway.errors import ConfigError, GatewayError, RouteNotFound
from gateway.proxy.headers import TrustedProxies
from gateway.proxy.pool import Origin, build_ssl_context
from gateway.routing.table import RouteTable, compile_path_pattern

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class PolicyEvents(KeyEvents, Protocol):
    """Metrics hooks a compiled policy wires in (see :class:`gateway.metrics.GatewayMetrics`):
    key-source events, and one call per verified-token cache lookup. Calls must be cheap."""

    def token_cache_hit(self) -> None:
        """A token was found in the verified-token cache."""

    def token_cache_miss(self) -> None:
        """A token was not in the verified-token cache (or its entry had expired)."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """A parsed upstream URL: where to connect, and the base path to put in front."""

    origin: Origin
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Upstream:
        """``http://h:p/base``, ``https://h``, ``unix:/run/app.sock`` -> Upstream (ValueError if bad)."""
        if url.startswith("unix:"):
            return cls(Origin.parse(url), "")
        parts = urlsplit(url)
        if parts.query or parts.fragment:
            raise ValueError("an upstream URL has no query or fragment")
        base = parts.path.rstrip("/")
        origin = Origin.parse(f"{parts.scheme}://{parts.netloc}")
        return cls(origin, base)


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """One route, ready for the request path."""

    index: int
    name: str
    auth: str
    #: Providers whose tokens are accepted; None: every provider.
    providers: frozenset[str] | None
    locations: TokenLocations
    rule: CompiledRule | None
    upstream: Upstream | None
    strip_prefix: str | None
    add_prefix: str | None
    preserve_host: bool
    enforce: bool
    cors_preflight: bool
    websocket: bool
    close_on_expiry: bool
    #: Token query parameters and cookies removed before forwarding (empty when the config
    #: forwards credentials): a token is stripped wherever the route looked for it.
    credential_query: frozenset[bytes] = frozenset()
    credential_cookies: frozenset[bytes] = frozenset()

    @property
    def origin(self) -> Origin:
        """The upstream origin (a forwarding route always has one)."""
        assert self.upstream is not None
        return self.upstream.origin

    def upstream_path(self, path: str) -> str:
        """The path sent upstream: the canonical path with the route's prefix rewrite applied.

        Only whole segments are stripped (``/api`` strips ``/api/x`` and ``/api``, never
        ``/apix``); the result is never re-resolved, so what was authorised is what is sent.
        """
        if self.strip_prefix is not None and (
            path == self.strip_prefix or path.startswith(self.strip_prefix + "/")
        ):
            path = path[len(self.strip_prefix) :] or "/"
        if self.add_prefix is not None:
            path = self.add_prefix + (path if path != "/" else "") or "/"
        base = self.upstream.base_path if self.upstream is not None else ""
        return base + path if base else path

    def upstream_target(self, path: str, query: bytes) -> bytes:
        """The request target sent upstream: :meth:`upstream_path` plus the raw query, byte for
        byte, minus any token parameter this route reads."""
        target = self.upstream_path(path).encode("ascii")
        if self.credential_query and query:
            query = remove_query_credentials(query, self.credential_query)
        return target + b"?" + query if query else target


class Policy:
    """The compiled config: what the pipeline and the proxy read on every request.

    Immutable once built, apart from the key sources' caches; a reload builds a new Policy and
    swaps it in whole.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        routes: RouteTable[CompiledRoute],
        verifier: Verifier,
        headers: ClaimHeaders,
        keys: KeySourcePlan,
        registry: KeySourceRegistry,
        trusted_proxies: TrustedProxies,
        upstream_ssl: ssl.SSLContext | None,
    ) -> None:
        self.config = config
        self.routes = routes
        self.verifier = verifier
        self.headers = headers
        self.keys = keys
        self.registry = registry
        self.key_sources: Mapping[str, KeySource] = keys.sources
        self.trusted_proxies = trusted_proxies
        self.upstream_ssl = upstream_ssl
        self.realm = config.realm
        self.max_token_bytes = config.max_token_bytes
        self.normalize = frozenset(config.paths.normalize)
        self._retry = config.proxy.retry_on_connect_failure
        self._unmatched_status = config.unmatched_status

    def route_not_found(self) -> GatewayError:
        """The denial for a request no route matches (status from ``unmatched_status``)."""
        error = RouteNotFound("no route matches this request")
        if self._unmatched_status != 404:
            error.status = self._unmatched_status
            error.title = {401: "Unauthorized", 403: "Forbidden"}[self._unmatched_status]
        return error

    def retry_allowed(self, method: str) -> bool:
        """True when a failed connect may be retried once for this method."""
        return self._retry and method in _IDEMPOTENT

    async def start(self) -> None:
        """Start the key sources this policy created (first fetches run in the background).

        Sources carried over from the previous policy by a reload are already running.
        """
        await asyncio.gather(*(source.start() for source in self.keys.to_start))
        self.registry.commit(self.keys)

    async def aclose(self) -> None:
        """Stop every key source of this policy (at shutdown)."""
        await asyncio.gather(*(source.aclose() for source in self.key_sources.values()))

    def key_status(self) -> dict[str, dict[str, Any]]:
        """Per provider: ready, required, keys loaded, age... (for /readyz and metrics)."""
        out: dict[str, dict[str, Any]] = {}
        for name, source in self.key_sources.items():
            status = dataclasses.asdict(source.status())
            status["required"] = self.config.providers[name].required
            out[name] = status
        return out


def _resolve(path: str, base_dir: Path) -> str:
    return path if os.path.isabs(path) else os.fspath(base_dir / path)


def _compile_provider(name: str, provider: Provider, source: KeySource) -> ProviderPolicy:
    typ = provider.typ
    return ProviderPolicy(
        name=name,
        issuer=provider.issuer,
        algorithms=tuple(provider.algorithms),
        audiences=tuple(provider.audiences) if provider.audiences is not None else None,
        keys=source,
        leeway=provider.leeway,
        require_exp=provider.require_exp,
        max_lifetime=provider.max_lifetime,
        required_claims=tuple(provider.required_claims),
        typ=(typ,) if isinstance(typ, str) else tuple(typ) if typ is not None else None,
        claim_equals=dict(provider.claims),
        tenants=frozenset(provider.tenants) if isinstance(provider.tenants, list) else None,
    )


def _compile_route(
    index: int, route: Route, cfg: GatewayConfig, upstreams: dict[str, Upstream], *, require_upstream: bool
) -> CompiledRoute:
    where = f"routes[{index}]"
    if route.providers is not None:
        for i, name in enumerate(route.providers):
            if name not in cfg.providers:
                raise ConfigError(f"unknown provider {name!r}", path=f"{where}.providers[{i}]")
        names: list[str] = list(route.providers)
    else:
        names = list(cfg.providers)
    if route.auth in ("required", "optional") and not names:
        raise ConfigError("this route needs a token but no provider is configured", path=f"{where}.auth")
    url = route.upstream or cfg.upstream
    upstream: Upstream | None = None
    # Middleware and forward-auth modes never forward: a route there may name no upstream.
    if route.auth != "deny" and (url is not None or require_upstream):
        if url is None:
            raise ConfigError("no upstream: set routes[].upstream or the top-level upstream", path=where)
        if url not in upstreams:
            try:
                upstreams[url] = Upstream.parse(url)
            except ValueError as exc:
                key = f"{where}.upstream" if route.upstream else "upstream"
                raise ConfigError(f"invalid upstream URL: {exc}", path=key) from None
        upstream = upstreams[url]
    # Public routes never look at a token, but a token sent to one is still a credential.
    locations = TokenLocations.compile(cfg.providers[n].token for n in names)
    # Stripped before forwarding: the token locations of EVERY provider, not only this route's,
    # as the token headers are. Another provider's cookie or query token is never verified
    # here, so it must not reach the upstream either.
    every_location = TokenLocations.compile(p.token for p in cfg.providers.values())
    # RFC 6750's access_token parameter too, on every route (as the Authorization header is
    # stripped): unless a provider of the route reads it, the gateway never verifies it.
    forward = cfg.headers.forward_authorization
    rule: CompiledRule | None = None
    if route.require is not None:
        try:
            params = compile_path_pattern(route.match.path, cfg.paths.normalize).params
            rule = compile_rule(route.require, params=params)
        except (ValueError, ConfigError) as exc:
            raise _config_error(str(exc), where) from None
    return CompiledRoute(
        index=index,
        name=route.name or f"route{index}",
        auth=route.auth,
        providers=frozenset(route.providers) if route.providers is not None else None,
        locations=locations,
        rule=rule,
        upstream=upstream,
        strip_prefix=route.strip_prefix,
        add_prefix=route.add_prefix,
        preserve_host=route.preserve_host if route.preserve_host is not None else cfg.proxy.preserve_host,
        enforce=route.enforce,
        cors_preflight=route.cors_preflight,
        websocket=route.websocket,
        close_on_expiry=route.close_on_expiry,
        credential_query=frozenset() if forward else every_location.query | {STANDARD_QUERY_PARAMETER},
        credential_cookies=frozenset() if forward else every_location.cookies,
    )


def _config_error(message: str, where: str) -> ConfigError:
    """``"require.all[0].claim: bad"`` under ``routes[2]`` -> path ``routes[2].require.all[0].claim``."""
    head, sep, rest = message.partition(": ")
    if sep and " " not in head:
        return ConfigError(rest, path=f"{where}.{head}" if where else head)
    return ConfigError(message, path=where)


def build_policy(
    cfg: GatewayConfig,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    registry: KeySourceRegistry | None = None,
    require_upstream: bool | None = None,
    events: PolicyEvents | None = None,
) -> Policy:
    """Compile ``cfg``. Relative file paths are resolved against ``base_dir`` (a config file's
    directory, or the file itself). With the ``registry`` of the running gateway, remote key
    sources of unchanged providers are reused, so their caches survive a reload; the caller
    commits the registry when the policy goes live.

    ``require_upstream``: whether every non-deny route needs an upstream. ``None`` (default):
    yes in ``mode: proxy`` only; the ASGI/WSGI middlewares pass ``False`` (they never
    forward).

    ``events``: metrics hooks (key fetches and token-cache lookups); a new registry is created
    with them (a passed ``registry`` keeps the hooks it was created with)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    config_file = ""
    if base.suffix in (".yaml", ".yml") or base.is_file():
        config_file, base = os.fspath(base), base.parent
    try:
        return _compile_policy(cfg, base, registry, require_upstream, events)
    except ConfigError as exc:
        if exc.file or not config_file:
            raise
        # Errors found while compiling name the file too, as load-time errors do.
        raise ConfigError(exc.message, file=config_file, path=exc.path) from None


def _compile_policy(
    cfg: GatewayConfig,
    base: Path,
    registry: KeySourceRegistry | None,
    require_upstream: bool | None,
    events: PolicyEvents | None,
) -> Policy:
    registry = registry if registry is not None else KeySourceRegistry(events=events)
    plan = registry.plan(cfg.providers, base_dir=base)
    providers = {name: _compile_provider(name, p, plan.sources[name]) for name, p in cfg.providers.items()}
    upstreams: dict[str, Upstream] = {}
    if require_upstream is None:
        require_upstream = cfg.mode == "proxy"
    compiled = [
        _compile_route(i, r, cfg, upstreams, require_upstream=require_upstream)
        for i, r in enumerate(cfg.routes)
    ]
    table: RouteTable[CompiledRoute] = RouteTable(
        [(r.match, c) for r, c in zip(cfg.routes, compiled, strict=True)], normalize=cfg.paths.normalize
    )
    token_headers = {p.token.header for p in cfg.providers.values() if p.token.header is not None}
    try:
        headers = compile_headers(cfg.headers, token_headers=sorted(token_headers) or ("Authorization",))
    except ValueError as exc:
        raise _config_error(str(exc), "") from None
    tls = cfg.proxy.tls
    upstream_ssl = None
    if any(u.origin.scheme == "https" for u in upstreams.values()):
        try:
            upstream_ssl = build_ssl_context(
                verify=tls.verify,
                ca_file=_resolve(tls.ca_file, base) if tls.ca_file else None,
                cert_file=_resolve(tls.cert_file, base) if tls.cert_file else None,
                key_file=_resolve(tls.key_file, base) if tls.key_file else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot build the upstream TLS context: {exc}", path="proxy.tls") from None
    policy = Policy(
        cfg,
        routes=table,
        verifier=Verifier(
            providers,
            cache_enabled=cfg.token_cache.enabled,
            cache_max_entries=cfg.token_cache.max_entries,
            cache_ttl=cfg.token_cache.ttl,
            max_token_bytes=cfg.max_token_bytes,
        ),
        headers=headers,
        keys=plan,
        registry=registry,
        trusted_proxies=TrustedProxies(cfg.proxy.trusted_proxies),
        upstream_ssl=upstream_ssl,
    )
    if events is not None and cfg.token_cache.enabled:
        policy.verifier.on_cache_hit = events.token_cache_hit
        policy.verifier.on_cache_miss = events.token_cache_miss
    return policy
