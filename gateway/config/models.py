"""The schema of ``gateway.yaml``: frozen pydantic v2 models that refuse unknown keys.

These models only *validate*; :mod:`gateway.config.compile` turns a validated
:class:`GatewayConfig` into the runtime objects the request path uses. Every option here is
documented, with its default, in ``gateway.example.yaml``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)

from gateway.config.types import ByteSize, Duration

#: The placeholder of a multi-tenant issuer, and what a tenant ID may look like (no '/' or '.'-only
#: games: it is compared as it appears in ``iss`` and in ``tid``).
TENANT_PLACEHOLDER = "{tenantid}"
TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

#: Algorithms a provider may allow. ``none`` is not among them, in any spelling.
Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    "Ed25519", "Ed448", "HS256", "HS384", "HS512",
]  # fmt: skip

# Used with fullmatch: ``$`` would also accept a trailing newline ("X-User-Id\n").
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*")
#: A cookie or query parameter name holding a token: ASCII, no separators of either syntax.
_PARAMETER_NAME = re.compile(r"[!#$%'*+.^_`|~0-9A-Za-z-]+")

#: A claim path: a plain string names one top-level claim exactly as written (dots, slashes and
#: all: ``https://example.com/roles``); a string starting with ``/`` is a JSON Pointer (RFC 6901,
#: ``/realm_access/roles``, ``~1`` escapes ``/``, ``~0`` escapes ``~``); a list is a list of keys.
ClaimPath = str | list[str]


class Strict(BaseModel):
    """Base of every config model: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


def _check_header_name(name: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    return name


# --------------------------------------------------------------------------------------- listen


class Listen(Strict):
    """Where the proxied (public) port listens."""

    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)


class Admin(Strict):
    """The admin listener: /healthz, /readyz, /metrics. Separate from the proxied port."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9901, ge=0, le=65535)


# ------------------------------------------------------------------------------------ providers


class TokenLocation(Strict):
    """Where a provider's tokens are looked for. Exactly one credential per request."""

    #: Header carrying ``<scheme> <token>``; null disables header extraction.
    header: str | None = "Authorization"
    #: Auth scheme expected in the header (compared case-insensitively). Empty: the bare token.
    scheme: str = "Bearer"
    #: Cookie carrying the bare token (off by default).
    cookie: str | None = None
    #: Query parameter carrying the token (off by default; always redacted from logs).
    query: str | None = None
    #: Accept the token from ``Sec-WebSocket-Protocol`` on WebSocket upgrades (opt-in).
    websocket_protocol: bool = False

    @field_validator("header")
    @classmethod
    def _header(cls, v: str | None) -> str | None:
        return None if v is None else _check_header_name(v)

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if v and not _HEADER_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not an authorization scheme (an HTTP token; empty: a bare token)")
        return v

    @field_validator("cookie", "query")
    @classmethod
    def _parameter(cls, v: str | None) -> str | None:
        if v is not None and not _PARAMETER_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not a cookie or parameter name (ASCII letters, digits, -._~...)")
        return v


class JWKSOptions(Strict):
    """Fetching and caching of a remote JWKS."""

    #: Total time allowed for one fetch.
    timeout: Duration = 5.0
    #: Largest JWKS or discovery document accepted.
    max_bytes: ByteSize = 256 * 1024
    #: TTL when the response has no usable Cache-Control max-age.
    default_ttl: Duration = 600.0
    #: Cache-Control max-age is clamped to [min_ttl, max_ttl].
    min_ttl: Duration = 60.0
    max_ttl: Duration = 86400.0
    #: Unknown-kid re-fetches happen at most once per interval (single flight).
    min_refresh_interval: Duration = 30.0
    #: How long the last good keys keep serving while the IdP cannot be reached.
    max_stale: Duration = 3600.0
    #: CA bundle for the IdP's TLS certificate (default: the system store).
    ca_file: str | None = None
    #: After a failed fetch, retry in the background after this delay, doubling (with jitter)
    #: on each further failure up to ``retry_backoff_max``.
    retry_backoff: Duration = 1.0
    retry_backoff_max: Duration = 60.0

    @model_validator(mode="after")
    def _ttl_order(self) -> JWKSOptions:
        if self.min_ttl > self.max_ttl:
            raise ValueError("min_ttl must not exceed max_ttl")
        if not 0 < self.retry_backoff <= self.retry_backoff_max:
            raise ValueError("retry_backoff must be > 0 and not exceed retry_backoff_max")
        return self


class Provider(Strict):
    """One token issuer and its key source."""

    #: Exact ``iss`` value. Must be written; ``null`` means the tokens carry no ``iss``. A
    #: multi-tenant issuer names its tenant with ``{tenantid}`` (Azure AD / Entra ID:
    #: ``https://login.microsoftonline.com/{tenantid}/v2.0``): a token's ``iss`` must then be
    #: the template with its own ``tid`` claim filled in, and that tenant one of ``tenants``.
    issuer: str | None
    #: With a ``{tenantid}`` issuer: the accepted tenant IDs, or ``any`` (any tenant in the
    #: world, an attacker's own included: combine it with route rules on ``tid``). Required there.
    tenants: list[str] | Literal["any"] | None = None
    # Key sources: exactly one of these.
    discovery: bool = False
    jwks_uri: str | None = None
    public_key_file: str | None = None
    jwks_file: str | None = None
    secret: SecretStr | None = None
    secret_file: str | None = None
    #: Accept an HMAC secret shorter than the hash output (32/48/64 bytes for HS256/384/512).
    #: An empty secret or public key material is refused regardless.
    allow_weak_secret: bool = False
    #: Allow http:// JWKS and discovery URLs on non-loopback hosts.
    allow_insecure_jwks: bool = False
    #: The algorithms this provider's keys may use. Required; never taken from the token.
    algorithms: list[Algorithm] = Field(min_length=1)
    #: Accepted ``aud`` values (any-of). Required unless ``audience: any``.
    audiences: list[str] | None = None
    audience: Literal["any"] | None = None
    leeway: Duration = 30.0
    require_exp: bool = True
    max_lifetime: Duration | None = None
    required_claims: list[str] = Field(default_factory=list)
    #: Accepted ``typ`` header values, e.g. ``at+jwt`` to refuse ID tokens (RFC 9068).
    typ: str | list[str] | None = None
    #: Claims that must equal a fixed value, e.g. ``{token_type: access}`` (simplejwt).
    claims: dict[str, str | int | float | bool] = Field(default_factory=dict)
    token: TokenLocation = Field(default_factory=TokenLocation)
    jwks: JWKSOptions = Field(default_factory=JWKSOptions)
    #: Readiness waits for this provider's keys.
    required: bool = True

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str | None) -> str | None:
        if v is not None and not v:
            raise ValueError("issuer must not be empty; write null for tokens without iss")
        return v

    @model_validator(mode="before")
    @classmethod
    def _issuer_required(cls, data: Any) -> Any:
        if isinstance(data, dict) and "issuer" not in data:
            raise ValueError("issuer is required (write `issuer: null` for tokens that carry no iss)")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Provider:
        sources = [
            name
            for name, present in (
                ("discovery", self.discovery),
                ("jwks_uri", self.jwks_uri is not None),
                ("public_key_file", self.public_key_file is not None),
                ("jwks_file", self.jwks_file is not None),
                ("secret", self.secret is not None),
                ("secret_file", self.secret_file is not None),
            )
            if present
        ]
        if len(sources) != 1:
            raise ValueError(
                "exactly one key source is required (discovery, jwks_uri, public_key_file, "
                f"jwks_file, secret or secret_file); found {len(sources)}: {', '.join(sources) or 'none'}"
            )
        if self.discovery and not self.issuer:
            raise ValueError("discovery needs an issuer")
        self._check_tenants()
        if (self.audiences is None) == (self.audience is None):
            raise ValueError("write exactly one of `audiences: [...]` or `audience: any`")
        if self.audiences is not None and not self.audiences:
            raise ValueError("audiences must not be empty (write `audience: any` to accept any)")
        symmetric = self.secret is not None or self.secret_file is not None
        hmac_algs = [a for a in self.algorithms if a.startswith("HS")]
        if symmetric and len(hmac_algs) != len(self.algorithms):
            raise ValueError("an HMAC secret can only be used with HS256/HS384/HS512")
        if not symmetric and hmac_algs:
            raise ValueError(
                f"{hmac_algs[0]} needs `secret` or `secret_file`; public keys are never HMAC keys"
            )
        if symmetric and len(self.algorithms) != 1:
            raise ValueError("an HMAC secret must be bound to exactly one algorithm")
        return self

    def _check_tenants(self) -> None:
        templated = self.issuer is not None and TENANT_PLACEHOLDER in self.issuer
        if not templated:
            if self.tenants is not None:
                raise ValueError("tenants needs an issuer with a {tenantid} placeholder")
            return
        assert self.issuer is not None
        rest = self.issuer.replace(TENANT_PLACEHOLDER, "", 1)
        if "{" in rest or "}" in rest:
            raise ValueError("the issuer may hold {tenantid} once, and no other placeholder")
        if self.discovery:
            raise ValueError(
                "a {tenantid} issuer has no discovery document of its own: set jwks_uri "
                "(Azure AD: https://login.microsoftonline.com/common/discovery/v2.0/keys)"
            )
        if self.tenants is None:
            raise ValueError("a {tenantid} issuer needs `tenants: [<tenant id>, ...]` (or `tenants: any`)")
        if isinstance(self.tenants, list):
            if not self.tenants:
                raise ValueError("tenants must not be empty (write `tenants: any` to accept any tenant)")
            for tenant in self.tenants:
                if not TENANT_ID.fullmatch(tenant):
                    raise ValueError(f"tenant {tenant!r} is not a tenant ID (letters, digits, '.', '_', '-')")


# -------------------------------------------------------------------------------------- headers


class ClaimHeader(Strict):
    """How one verified claim becomes one upstream request header."""

    claim: ClaimPath
    #: Arrays and objects: ``csv`` (comma-joined), ``json``, ``repeat`` (one header per
    #: element) or ``first`` (first element only). Scalars are written as they are.
    encode: Literal["csv", "json", "repeat", "first"] = "csv"
    #: Non-ASCII values: ``refuse`` (the header is not set and the request is denied),
    #: ``base64url`` or ``rfc8187`` (``UTF-8''percent-encoded``).
    non_ascii: Literal["refuse", "base64url", "rfc8187"] = "rfc8187"
    #: Largest encoded value; a larger one denies the request.
    max_bytes: ByteSize = 4096
    #: Deny the request when the claim is absent (default: the header is simply not set).
    required: bool = False


def _claim_header(value: Any) -> Any:
    return {"claim": value} if isinstance(value, str | list) else value


class Headers(Strict):
    """Claim headers sent upstream, and the inbound headers removed before forwarding."""

    #: Header name -> claim (shorthand) or a ClaimHeader mapping.
    claims: dict[str, ClaimHeader] = Field(default_factory=dict)
    #: Inbound headers with these prefixes are removed wholesale (compared case-insensitively,
    #: ``_`` and ``-`` treated as equal).
    strip_prefixes: list[str] = Field(default_factory=list)
    #: Further inbound headers always removed.
    strip: list[str] = Field(
        default_factory=lambda: ["X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override"]
    )
    #: Forward the client's Authorization header upstream (default: strip it).
    forward_authorization: bool = False
    #: Forward the verified payload as one base64url header (e.g. X-JWT-Payload); off by default.
    payload_header: str | None = None
    #: Drop every inbound header whose name contains ``_`` (default: true). WSGI/CGI-style
    #: servers read ``X_User_Id`` as ``X-User-Id``; nginx drops such headers by default too
    #: (``underscores_in_headers off``). Set false only for a backend that needs them.
    drop_underscore_headers: bool = True

    @field_validator("claims", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: _claim_header(x) for k, x in v.items()}
        return v

    @field_validator("claims")
    @classmethod
    def _names(cls, v: dict[str, ClaimHeader]) -> dict[str, ClaimHeader]:
        for name in v:
            _check_header_name(name)
        return v

    @field_validator("strip", "strip_prefixes")
    @classmethod
    def _strip_names(cls, v: list[str]) -> list[str]:
        for name in v:
            _check_header_name(name)
        return v


# ---------------------------------------------------------------------------------------- rules


class ClaimCondition(Strict):
    """A condition on one claim. Exactly one operator must be given."""

    claim: ClaimPath
    equals: str | int | float | bool | None = None
    in_: list[str | int | float | bool] | None = Field(None, alias="in")
    contains: str | int | float | bool | None = None
    contains_all: list[str | int | float | bool] | None = None
    contains_any: list[str | int | float | bool] | None = None
    exists: bool | None = None
    matches: str | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    #: The claim must equal the named path parameter (``/users/{id}`` -> ``equals_param: id``).
    equals_param: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _one_operator(cls, data: Any) -> Any:
        if isinstance(data, dict):
            ops = [k for k in data if k != "claim"]
            known = set(cls.model_fields) | {"in"}
            if len([k for k in ops if k in known]) != 1 and all(k in known for k in ops):
                raise ValueError(
                    "a claim condition needs exactly one operator (equals, in, contains, "
                    "contains_all, contains_any, exists, matches, gt, ge, lt, le, equals_param)"
                )
        return data

    @field_validator("matches")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return v

    def operator(self) -> str:
        """The name of the one operator that is set."""
        for name in self.model_fields_set - {"claim"}:
            return "in" if name == "in_" else name
        raise AssertionError("validated condition without operator")


class ScopeCondition(Strict):
    """Scopes from ``scope`` (space-delimited string) or ``scp`` (array)."""

    scope: str | list[str]
    #: ``all`` (default): every listed scope is required; ``any``: one is enough.
    match: Literal["all", "any"] = "all"

    def scopes(self) -> tuple[str, ...]:
        """The listed scopes as a tuple (a string may hold several, space-separated)."""
        raw = self.scope.split() if isinstance(self.scope, str) else self.scope
        return tuple(raw)


class AllRule(Strict):
    """True when every sub-rule is true."""

    all: list[Rule] = Field(min_length=1)


class AnyRule(Strict):
    """True when at least one sub-rule is true."""

    any: list[Rule] = Field(min_length=1)


class NotRule(Strict):
    """True when the sub-rule is false."""

    not_: Rule = Field(alias="not")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _rule_kind(value: Any) -> str | None:
    # Tags are written "<kind>" so that the config loader can drop them from error paths.
    if isinstance(value, dict):
        for key in ("all", "any", "not", "scope", "claim"):
            if key in value:
                return f"<{key}>"
        return None
    if isinstance(value, BaseModel):
        return {
            AllRule: "<all>",
            AnyRule: "<any>",
            NotRule: "<not>",
            ScopeCondition: "<scope>",
            ClaimCondition: "<claim>",
        }.get(type(value))
    return None


Rule = Annotated[
    Annotated[AllRule, Tag("<all>")]
    | Annotated[AnyRule, Tag("<any>")]
    | Annotated[NotRule, Tag("<not>")]
    | Annotated[ScopeCondition, Tag("<scope>")]
    | Annotated[ClaimCondition, Tag("<claim>")],
    Discriminator(
        _rule_kind,
        custom_error_type="rule_kind",
        custom_error_message="a rule needs one of the keys all, any, not, scope or claim",
    ),
]

AllRule.model_rebuild()
AnyRule.model_rebuild()
NotRule.model_rebuild()


# --------------------------------------------------------------------------------------- routes


class Match(Strict):
    """What a route matches: path pattern, methods and host.

    Path patterns: ``/exact``, ``/prefix/**`` (the prefix itself and anything below it, on a
    whole-segment boundary), ``*`` for one segment, ``{name}`` for one named segment.
    """

    path: str
    methods: list[str] | None = None
    host: str | list[str] | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("a path pattern must start with /")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("methods must not be empty (omit it to match every method)")
        out = []
        for m in v:
            if not _METHOD.fullmatch(m.upper()):
                raise ValueError(f"{m!r} is not an HTTP method")
            out.append(m.upper())
        return out


class Route(Strict):
    """One entry of the route table: the policy for the requests it matches."""

    name: str | None = None
    match: Match
    #: ``required`` (default), ``optional``, ``public`` (no token looked at) or ``deny``.
    auth: Literal["required", "optional", "public", "deny"] = "required"
    #: Providers whose tokens this route accepts (default: every provider).
    providers: list[str] | None = None
    require: Rule | None = None
    #: Upstream for this route (default: the top-level ``upstream``).
    upstream: str | None = None
    #: Remove this prefix (whole segments) before forwarding.
    strip_prefix: str | None = None
    #: Put this prefix in front of the (stripped) path before forwarding.
    add_prefix: str | None = None
    preserve_host: bool | None = None
    #: ``false``: report-only. The decision is logged and counted, the request passes.
    enforce: bool = True
    #: Let CORS preflights (OPTIONS + Origin + Access-Control-Request-Method) through untokened.
    cors_preflight: bool = False
    #: Allow WebSocket upgrades on this route.
    websocket: bool = True
    #: Close a WebSocket with 1008 when the token's exp passes.
    close_on_expiry: bool = True

    @field_validator("strip_prefix", "add_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or v.endswith("/") and v != "/"):
            raise ValueError("a prefix must start with / and not end with /")
        return v

    @model_validator(mode="after")
    def _auth_fields(self) -> Route:
        if self.auth in ("public", "deny") and self.require is not None:
            raise ValueError(f"`require` has no effect on an `auth: {self.auth}` route")
        return self


# ------------------------------------------------------------------------------------ proxy etc.


class UpstreamTLS(Strict):
    """TLS towards https:// upstreams. Verification is on by default."""

    verify: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _pair(self) -> UpstreamTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class Proxy(Strict):
    """The reverse proxy: timeouts, limits, forwarding headers."""

    connect_timeout: Duration = Field(5.0, gt=0)
    read_timeout: Duration = Field(60.0, gt=0)
    write_timeout: Duration = Field(60.0, gt=0)
    #: Connections kept per upstream.
    max_connections: int = Field(256, ge=1)
    max_idle_connections: int = Field(64, ge=0)
    idle_timeout: Duration = Field(60.0, gt=0)
    #: Retry once, on a fresh connection, an idempotent request whose connect failed.
    retry_on_connect_failure: bool = False
    #: Request bodies larger than this are refused with 413 (null: no limit).
    max_body_bytes: ByteSize | None = 10 * 1024 * 1024
    #: Request heads larger than this are refused with 431.
    max_head_bytes: ByteSize = Field(16 * 1024, ge=1024)
    #: The whole request head must arrive within this time (slowloris guard).
    head_timeout: Duration = Field(10.0, gt=0)
    #: The client's request body may pause this long between two pieces (slow-body guard).
    body_timeout: Duration = Field(60.0, gt=0)
    #: Requests handled at once; more get 503.
    max_concurrency: int = Field(1024, ge=1)
    #: Send the client's Host upstream instead of the upstream's.
    preserve_host: bool = False
    #: Peers whose X-Forwarded-*/Forwarded headers are believed (CIDRs).
    trusted_proxies: list[str] = Field(default_factory=list)
    tls: UpstreamTLS = Field(default_factory=UpstreamTLS)
    #: In-flight requests get this long to finish on SIGTERM.
    shutdown_timeout: Duration = 30.0

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP network (CIDR)") from None
        return v


class Paths(Strict):
    """Canonical-path policy. By default every ambiguous encoding is refused with 400."""

    #: Resolve instead of refusing: ``merge_slashes`` (``//`` -> ``/``),
    #: ``resolve_dots`` (``.``/``..`` segments), ``strip_trailing_slash``.
    normalize: list[Literal["merge_slashes", "resolve_dots", "strip_trailing_slash"]] = Field(
        default_factory=list
    )


class Logging(Strict):
    """Access and diagnostic logs."""

    format: Literal["json", "text"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    #: Claim logged as the subject; null: never log a subject.
    subject_claim: str | None = "sub"


class TokenCache(Strict):
    """Verified-token cache (keyed by the exact token bytes; rules are re-run on every hit)."""

    enabled: bool = True
    max_entries: int = Field(10_000, ge=1)
    #: An entry lives at most this long (and never past the token's exp).
    ttl: Duration = 300.0


class ForwardAuth(Strict):
    """Forward-auth endpoint for nginx auth_request / Traefik ForwardAuth."""

    enabled: bool = False
    #: Path on the gateway's port answering forward-auth calls.
    path: str = "/_auth"
    #: Peers allowed to name the original method/URI (CIDRs). Others are refused.
    trusted_sources: list[str] = Field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or "?" in v or "#" in v:
            raise ValueError("the forward-auth path must start with / and have no query")
        return v

    @field_validator("trusted_sources")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP network (CIDR)") from None
        return v


class GatewayConfig(Strict):
    """The whole ``gateway.yaml``."""

    listen: Listen = Field(default_factory=Listen)
    admin: Admin = Field(default_factory=Admin)
    #: ``proxy``: decide, then forward to the upstream (``forward_auth.enabled`` adds a
    #: forward-auth path). ``forward_auth``: every request on the port is a forward-auth call;
    #: nothing is ever forwarded, and routes need no upstream. ``middleware``: the config of
    #: an in-process JWTGatewayMiddleware / JWTGatewayWSGIMiddleware (routes need no upstream;
    #: ``serve`` refuses it; ``check``, ``explain`` and ``test`` work on it).
    mode: Literal["proxy", "forward_auth", "middleware"] = "proxy"
    #: Default upstream for routes that name none (http://, https:// or unix:/path.sock).
    upstream: str | None = None
    #: ``realm`` of the WWW-Authenticate challenge.
    realm: str = "jwt-gateway"
    providers: dict[str, Provider] = Field(default_factory=dict)
    headers: Headers = Field(default_factory=Headers)
    routes: list[Route] = Field(default_factory=list)
    #: Status for requests no route matches (never forwarded).
    unmatched_status: Literal[401, 403, 404] = 404
    #: Largest token accepted; larger ones are refused before parsing.
    max_token_bytes: ByteSize = 8 * 1024
    paths: Paths = Field(default_factory=Paths)
    proxy: Proxy = Field(default_factory=Proxy)
    logging: Logging = Field(default_factory=Logging)
    token_cache: TokenCache = Field(default_factory=TokenCache)
    forward_auth: ForwardAuth = Field(default_factory=ForwardAuth)
    #: Reload when the file changes (SIGHUP always reloads).
    watch: bool = False

    @field_validator("realm")
    @classmethod
    def _realm(cls, v: str) -> str:
        if not v.isascii() or any(c in v for c in '"\\\r\n') or not v.isprintable():
            raise ValueError("realm must be printable ASCII without quotes or backslashes")
        return v

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        nulls = [name for name, p in self.providers.items() if p.issuer is None]
        if len(nulls) > 1:
            raise ValueError(f"only one provider may have `issuer: null` (tokens are routed by iss): {nulls}")
        issuers: dict[str, str] = {}
        for name, p in self.providers.items():
            if p.issuer is not None:
                if p.issuer in issuers:
                    raise ValueError(f"providers {issuers[p.issuer]!r} and {name!r} have the same issuer")
                issuers[p.issuer] = name
        return self

    @model_validator(mode="after")
    def _ports(self) -> GatewayConfig:
        # Port 0 means "any free port" (tests): two of those never collide.
        if self.admin.enabled and self.admin.port and self.admin.port == self.listen.port:
            raise ValueError(
                f"admin.port and listen.port are both {self.listen.port}: the admin listener "
                "(/healthz, /metrics) needs a port of its own"
            )
        return self
