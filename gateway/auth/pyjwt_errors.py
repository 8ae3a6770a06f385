"""The one boundary where PyJWT's exceptions become gateway errors.

The request path calls PyJWT's algorithm objects only (their ``verify`` returns a bool), so
PyJWT exceptions normally never reach it; this table exists for every other place that lets
PyJWT run (key loading, interoperability helpers) and so that a new PyJWT release cannot add
an exception class that escapes untranslated: the nearest mapped ancestor is used, and a test
asserts that every class in :mod:`jwt.exceptions` is mapped explicitly.
"""

from __future__ import annotations

from jwt import exceptions as jwt_exceptions

from gateway.errors import (
    AlgorithmNotAllowed,
    AudienceMismatch,
    BadSignature,
    ClaimInvalid,
    GatewayError,
    InternalError,
    InvalidToken,
    IssuerMismatch,
    KeysUnavailable,
    TokenExpired,
    TokenMalformed,
    TokenNotYetValid,
)

__all__ = ["PYJWT_ERRORS", "translate_pyjwt_error"]

#: PyJWT exception class -> (gateway error class, reason code).
PYJWT_ERRORS: dict[type[Exception], tuple[type[GatewayError], str]] = {
    jwt_exceptions.PyJWTError: (InvalidToken, "invalid_token"),
    jwt_exceptions.InvalidTokenError: (InvalidToken, "invalid_token"),
    jwt_exceptions.DecodeError: (TokenMalformed, "token_malformed"),
    jwt_exceptions.InvalidSignatureError: (BadSignature, "bad_signature"),
    jwt_exceptions.ExpiredSignatureError: (TokenExpired, "token_expired"),
    jwt_exceptions.ImmatureSignatureError: (TokenNotYetValid, "token_not_yet_valid"),
    jwt_exceptions.InvalidAudienceError: (AudienceMismatch, "audience_mismatch"),
    jwt_exceptions.InvalidIssuerError: (IssuerMismatch, "issuer_mismatch"),
    jwt_exceptions.InvalidIssuedAtError: (ClaimInvalid, "claim_invalid"),
    jwt_exceptions.InvalidSubjectError: (ClaimInvalid, "claim_invalid"),
    jwt_exceptions.InvalidJTIError: (ClaimInvalid, "claim_invalid"),
    jwt_exceptions.MissingRequiredClaimError: (ClaimInvalid, "claim_missing"),
    jwt_exceptions.InvalidAlgorithmError: (AlgorithmNotAllowed, "algorithm_not_allowed"),
    # A key PyJWT cannot use is the gateway's problem, not the client's: fail closed with 503.
    jwt_exceptions.InvalidKeyError: (KeysUnavailable, "key_invalid"),
    jwt_exceptions.PyJWKError: (KeysUnavailable, "key_invalid"),
    jwt_exceptions.PyJWKSetError: (KeysUnavailable, "keys_unavailable"),
    jwt_exceptions.PyJWKClientError: (KeysUnavailable, "keys_unavailable"),
    jwt_exceptions.PyJWKClientConnectionError: (KeysUnavailable, "keys_unavailable"),
    jwt_exceptions.MissingCryptographyError: (InternalError, "internal_error"),
}


def translate_pyjwt_error(exc: Exception) -> GatewayError:
    """The gateway error for a PyJWT exception (its message is not copied: it may quote input)."""
    for cls in type(exc).__mro__:
        mapped = PYJWT_ERRORS.get(cls)
        if mapped is not None:
            error_class, reason = mapped
            return error_class(reason=reason)
    return InternalError(reason="internal_error")
