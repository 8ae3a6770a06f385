"""The gateway's one exception tree.

Every error that can end a request knows its HTTP status, its stable ``reason`` code (used
verbatim in problem+json bodies, access logs and metric labels) and, for authentication and
authorisation failures, its RFC 6750 ``error`` code. Foreign exceptions (PyJWT, httpx,
pydantic, OSError) are translated into this tree at exactly one boundary each.

::

    GatewayError
    ├── RequestError                 400 invalid_request
    │   ├── PathNotCanonical         400  path_not_canonical
    │   └── CredentialsMalformed     400  multiple_credentials, malformed_authorization, ...
    ├── AuthenticationError          401
    │   ├── TokenMissing             401  token_missing (no RFC 6750 error code)
    │   └── InvalidToken             401 invalid_token
    │       ├── TokenMalformed           token_malformed, token_too_large, ...
    │       ├── TokenExpired             token_expired
    │       ├── TokenNotYetValid         token_not_yet_valid
    │       ├── BadSignature             bad_signature
    │       ├── UnknownKid               unknown_kid
    │       ├── AlgorithmNotAllowed      algorithm_not_allowed
    │       ├── IssuerMismatch           issuer_mismatch, issuer_not_allowed, tenant_mismatch, ...
    │       └── ClaimInvalid             claim_invalid, typ_mismatch, token_type_mismatch, ...
    ├── AuthorizationError           403 insufficient_scope
    │   ├── AudienceMismatch         403  audience_mismatch
    │   ├── RuleFailed               403  rule_failed
    │   └── RouteDenied              403  route_denied (no RFC 6750 error code)
    ├── RouteNotFound                404  route_not_found
    ├── LimitExceeded                413 / 431  body_too_large, headers_too_large
    ├── RequestTimeout               408  request_timeout, head_timeout, body_timeout
    ├── OverCapacity                 503  over_capacity (+ Retry-After)
    ├── KeysUnavailable              503  keys_unavailable (+ Retry-After)
    ├── UpstreamError                502 / 504
    │   ├── UpstreamUnavailable      502  upstream_unavailable
    │   └── UpstreamTimeout          504  upstream_timeout
    └── InternalError                500  internal_error
    ConfigError                      never reaches a client: raised while loading config
"""

from __future__ import annotations

from collections.abc import Sequence


class GatewayError(Exception):
    """Base of every error that ends a request with an HTTP response.

    ``detail`` is a short, client-safe sentence: it must never contain a token, a key, a secret
    or a claim value.
    """

    status: int = 500
    reason: str = "internal_error"
    title: str = "Internal Server Error"
    #: RFC 6750 ``error`` attribute of the ``WWW-Authenticate`` challenge, or ``None``.
    bearer_error: str | None = None

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        if reason is not None:
            self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, detail={self.detail!r})"


class RequestError(GatewayError):
    """The request is malformed (RFC 6750 ``invalid_request``): answered 400."""

    status = 400
    reason = "invalid_request"
    title = "Bad Request"
    bearer_error: str | None = "invalid_request"


class PathNotCanonical(RequestError):
    """The request path has an ambiguous encoding (``%2F``, dot-segments, ``//``, NUL...)."""

    reason = "path_not_canonical"
    # A bad path is not a credentials problem: no Bearer challenge.
    bearer_error = None


class CredentialsMalformed(RequestError):
    """The credentials are presented in a malformed way (two tokens, a bad scheme...)."""

    reason = "malformed_authorization"


class AuthenticationError(GatewayError):
    """No valid credentials: answered 401 with a Bearer challenge."""

    status = 401
    reason = "unauthenticated"
    title = "Unauthorized"


class TokenMissing(AuthenticationError):
    """The route needs a token and the request carries none (no RFC 6750 error code, §3.1)."""

    reason = "token_missing"
    bearer_error = None


class InvalidToken(AuthenticationError):
    """The token is present but not acceptable (RFC 6750 ``invalid_token``)."""

    reason = "invalid_token"
    bearer_error = "invalid_token"


class TokenMalformed(InvalidToken):
    """The token is not a well-formed compact JWS with JSON-object header and payload."""

    reason = "token_malformed"


class TokenExpired(InvalidToken):
    """The token's ``exp`` is in the past (beyond the leeway)."""

    reason = "token_expired"


class TokenNotYetValid(InvalidToken):
    """The token's ``nbf`` or ``iat`` is in the future (beyond the leeway)."""

    reason = "token_not_yet_valid"


class BadSignature(InvalidToken):
    """The signature does not verify with the selected key."""

    reason = "bad_signature"


class UnknownKid(InvalidToken):
    """No key of the token's provider matches the token's ``kid`` (after any allowed re-fetch)."""

    reason = "unknown_kid"


class AlgorithmNotAllowed(InvalidToken):
    """The token's ``alg`` is not the algorithm bound to the key, or not allowed at all."""

    reason = "algorithm_not_allowed"


class IssuerMismatch(InvalidToken):
    """The token's ``iss`` names no provider this route accepts."""

    reason = "issuer_mismatch"


class ClaimInvalid(InvalidToken):
    """A registered or provider-required claim is missing or has the wrong type or value."""

    reason = "claim_invalid"


class AuthorizationError(GatewayError):
    """Valid token, not enough privilege: answered 403 ``insufficient_scope``."""

    status = 403
    reason = "forbidden"
    title = "Forbidden"
    bearer_error: str | None = "insufficient_scope"

    def __init__(self, detail: str = "", *, reason: str | None = None, scopes: Sequence[str] = ()) -> None:
        super().__init__(detail, reason=reason)
        #: scopes named in the challenge's ``scope`` attribute when a scope rule failed.
        self.scopes = tuple(scopes)


class AudienceMismatch(AuthorizationError):
    """The token's ``aud`` contains none of the provider's audiences."""

    reason = "audience_mismatch"


class RuleFailed(AuthorizationError):
    """The route's claim rule evaluated to false."""

    reason = "rule_failed"


class RouteDenied(AuthorizationError):
    """The matched route has ``auth: deny``."""

    reason = "route_denied"
    bearer_error = None


class RouteNotFound(GatewayError):
    """No route matches the request: denied, never forwarded."""

    status = 404
    reason = "route_not_found"
    title = "Not Found"


class LimitExceeded(GatewayError):
    """A request size limit was exceeded (body: 413, head: 431)."""

    status = 413
    reason = "body_too_large"
    title = "Content Too Large"

    def __init__(self, detail: str = "", *, reason: str | None = None, status: int | None = None) -> None:
        super().__init__(detail, reason=reason)
        if status is not None:
            self.status = status
            if status == 431:
                self.title = "Request Header Fields Too Large"


class RequestTimeout(GatewayError):
    """The client was too slow: its request head (``head_timeout``) or the next piece of its
    body (``body_timeout``) did not arrive in time. Answered 408; the connection is closed."""

    status = 408
    reason = "request_timeout"
    title = "Request Timeout"


class OverCapacity(GatewayError):
    """More requests are in flight than ``proxy.max_concurrency`` allows: 503 with Retry-After."""

    status = 503
    reason = "over_capacity"
    title = "Service Unavailable"


class KeysUnavailable(GatewayError):
    """No usable signing key is available because the IdP cannot be reached: 503, never 401."""

    status = 503
    reason = "keys_unavailable"
    title = "Service Unavailable"

    def __init__(self, detail: str = "", *, reason: str | None = None, retry_after: int = 30) -> None:
        super().__init__(detail, reason=reason)
        self.retry_after = retry_after


class UpstreamError(GatewayError):
    """The upstream could not be reached or failed to answer."""

    status = 502
    reason = "upstream_error"
    title = "Bad Gateway"


class UpstreamUnavailable(UpstreamError):
    """Connecting to the upstream failed or the connection was reset: 502."""

    reason = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    """Connecting to the upstream or reading its answer timed out: 504."""

    status = 504
    reason = "upstream_timeout"
    title = "Gateway Timeout"


class InternalError(GatewayError):
    """An unexpected exception: 500 with a request id, the traceback goes to the log only."""


class ConfigError(Exception):
    """The configuration is invalid. Raised at load time only, never during a request.

    ``str()`` is one line: ``<file>: <key path>: <reason>``.
    """

    def __init__(self, message: str, *, file: str = "", path: str = "") -> None:
        self.file = file
        self.path = path
        self.message = message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [p for p in (self.file, self.path) if p]
        return ": ".join([*parts, self.message])
