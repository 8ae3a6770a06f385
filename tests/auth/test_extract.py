"""Bearer-token extraction (gateway.auth.extract): RFC 6750 §2, catalogue section 2.15."""

from __future__ import annotations

import pytest

from gateway.auth.extract import BodyCredentialScanner, TokenLocations, extract_token, is_form_body
from gateway.config.models import TokenLocation
from gateway.errors import CredentialsMalformed, TokenMalformed

T1 = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLW9uZQ"
T2 = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXR3bw"
MAX = 8192

DEFAULT = TokenLocations.compile([TokenLocation()])
EVERYWHERE = TokenLocations.compile([TokenLocation(cookie="session_token", query="token")])
CUSTOM = TokenLocations.compile(
    [
        TokenLocation(),
        TokenLocation(header="X-Api-Token", scheme=""),
        TokenLocation(header="X-Jwt", scheme="JWT"),
    ]
)

Headers = list[tuple[bytes, bytes]]


def auth(*values: str) -> Headers:
    return [(b"authorization", v.encode("latin-1")) for v in values]


def extract(
    headers: Headers, query: bytes = b"", locations: TokenLocations = DEFAULT, max_bytes: int = MAX
) -> str | None:
    return extract_token(headers, query, locations, max_bytes)


def malformed(headers: Headers, query: bytes = b"", locations: TokenLocations = DEFAULT) -> str:
    with pytest.raises(CredentialsMalformed) as info:
        extract(headers, query, locations)
    assert info.value.status == 400
    assert info.value.bearer_error == "invalid_request"
    return info.value.reason


# -------------------------------------------------------------------------------- compile


def test_default_location_is_the_authorization_header_with_bearer() -> None:
    assert DEFAULT.headers == {b"authorization": frozenset({b"bearer"})}
    assert DEFAULT.cookies == frozenset()
    assert DEFAULT.query == frozenset()


def test_locations_of_several_providers_are_merged() -> None:
    locations = TokenLocations.compile(
        [TokenLocation(), TokenLocation(scheme="JWT", cookie="c", query="q"), TokenLocation(header=None)]
    )
    assert locations.headers == {b"authorization": frozenset({b"bearer", b"jwt"})}
    assert locations.cookies == frozenset({b"c"})
    assert locations.query == frozenset({b"q"})


# ------------------------------------------------------------------------- accepted (2.15)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    assert extract(auth(f"{scheme} {T1}")) == T1


def test_header_names_are_compared_case_insensitively() -> None:
    assert extract([(b"Authorization", f"Bearer {T1}".encode())]) == T1
    assert malformed([(b"Authorization", f"Bearer {T1}".encode()), (b"AUTHORIZATION", b"Bearer x")]) == (
        "multiple_credentials"
    )


def test_no_credentials_at_all_gives_none() -> None:
    assert extract([]) is None
    assert extract([(b"host", b"example.com"), (b"cookie", f"session_token={T1}".encode())]) is None


def test_token68_padding_characters_are_syntax_not_our_concern_here() -> None:
    # RFC 6750 b64token allows them; the JWS parser refuses them later (401, not 400).
    assert extract(auth("Bearer abc+/def==")) == "abc+/def=="


# ------------------------------------------------------------------- other schemes (None)


@pytest.mark.parametrize(
    "value",
    [
        "Basic dXNlcjpwYXNz",
        f"Token {T1}",
        T1,  # bare token without scheme
        'Digest username="a", realm="b", nonce="c", uri="/", response="d"',
        f"Bearer\t{T1}",
        f"Bearer-{T1}",
    ],
    ids=["basic", "token", "bare", "digest_with_commas", "tab", "dash"],
)
def test_another_scheme_holds_no_bearer_token(value: str) -> None:
    assert extract(auth(value)) is None


# ------------------------------------------------------------------------ malformed (400)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("Bearer", "malformed_authorization"),
        ("Bearer ", "malformed_authorization"),
        ("Bearer     ", "malformed_authorization"),
        (f"Bearer  {T1}", "malformed_authorization"),
        (f"Bearer {T1} {T2}", "malformed_authorization"),
        (f"Bearer Bearer {T1}", "malformed_authorization"),
        (f"Bearer {T1} ", "malformed_authorization"),
        (f"Bearer {T1},", "multiple_credentials"),
        (f"Bearer {T1}, Bearer {T2}", "multiple_credentials"),
        (f"Bearer {T1},Bearer {T2}", "multiple_credentials"),
        (f"Basic dXNlcjpwYXNz, Bearer {T1}", "multiple_credentials"),
        ('Bearer {"alg":"none"}', "malformed_authorization"),
        ("Bearer a\x00b", "malformed_authorization"),
        (
            'Bearer {"payload":"eyJ","signatures":[{"protected":"eyJ","signature":"c2ln"}]}',
            "malformed_authorization",
        ),
        (f'Bearer {T1}, Digest username="a", realm="b"', "multiple_credentials"),
        (f'Digest username="a", realm="b", Bearer {T1}', "multiple_credentials"),
    ],
    ids=[
        "scheme_only",
        "scheme_space",
        "scheme_spaces",
        "two_spaces",
        "two_tokens",
        "bearer_bearer",
        "trailing_space",
        "trailing_comma",
        "comma_joined",
        "comma_joined_no_space",
        "basic_then_bearer",
        "json",
        "nul",
        "json_serialised_jws",
        "bearer_then_digest",
        "digest_then_bearer",
    ],
)
def test_malformed_authorization_values(value: str, reason: str) -> None:
    assert malformed(auth(value)) == reason


@pytest.mark.parametrize(
    "values",
    [
        (f"Bearer {T1}", f"Bearer {T2}"),
        (f"Bearer {T2}", f"Bearer {T1}"),
        ("Bearer invalid", f"Bearer {T1}"),
        (f"Bearer {T1}", "Bearer invalid"),
        (f"Bearer {T1}", f"Bearer {T1}"),
        ("Basic dXNlcjpwYXNz", f"Bearer {T1}"),
        ("Basic a", "Basic b"),
    ],
    ids=[
        "user_admin",
        "admin_user",
        "invalid_valid",
        "valid_invalid",
        "same_twice",
        "basic_bearer",
        "basic_basic",
    ],
)
def test_two_authorization_headers_are_refused(values: tuple[str, str]) -> None:
    """rfc6750_two_authorization_headers_400_invalid_request."""
    assert malformed(auth(*values)) == "multiple_credentials"


# ----------------------------------------------------------------- query string and cookies


def test_access_token_in_the_query_alone_is_not_accepted_by_default() -> None:
    assert extract([], f"access_token={T1}".encode()) is None


@pytest.mark.parametrize(
    "query",
    [
        b"access_token=junk",
        f"access_token={T1}".encode(),
        b"a=1&access_token=junk&b=2",
        b"access%5Ftoken=junk",
        b"%61ccess_token=junk",
        b"access_token=junk&access_token=more",
    ],
    ids=["junk", "same_token", "among_others", "encoded_underscore", "encoded_letter", "twice"],
)
def test_header_token_with_access_token_in_the_query_is_refused(query: bytes) -> None:
    assert malformed(auth(f"Bearer {T1}"), query) == "multiple_credentials"


def test_cookie_token_with_access_token_in_the_query_is_refused() -> None:
    headers = [(b"cookie", f"session_token={T1}".encode())]
    assert malformed(headers, b"access_token=junk", EVERYWHERE) == "multiple_credentials"


def test_empty_or_unrelated_query_parameters_do_not_count() -> None:
    assert extract(auth(f"Bearer {T1}"), b"access_token=&x=1&token=2&&=") == T1
    assert extract(auth(f"Bearer {T1}"), b"my_access_token=1&access_tokens=2") == T1


def test_configured_query_parameter_is_used() -> None:
    assert extract([], f"a=1&token={T1}".encode(), EVERYWHERE) == T1


def test_configured_query_parameter_twice_is_refused() -> None:
    assert malformed([], f"token={T1}&token={T2}".encode(), EVERYWHERE) == "multiple_credentials"


def test_query_values_are_not_percent_decoded() -> None:
    with pytest.raises(CredentialsMalformed) as info:
        extract([], b"token=abc%2Edef", EVERYWHERE)
    assert info.value.reason == "malformed_credentials"


def test_header_and_configured_query_are_two_credentials() -> None:
    assert malformed(auth(f"Bearer {T1}"), f"token={T1}".encode(), EVERYWHERE) == "multiple_credentials"


def test_configured_cookie_is_used() -> None:
    headers = [(b"cookie", f"theme=dark; session_token={T1}; lang=en".encode())]
    assert extract(headers, b"", EVERYWHERE) == T1
    assert extract([(b"cookie", f"session_token={T1};lang=en".encode())], b"", EVERYWHERE) == T1


def test_cookie_names_are_case_sensitive_and_empty_values_ignored() -> None:
    assert extract([(b"cookie", f"Session_Token={T1}".encode())], b"", EVERYWHERE) is None
    assert extract([(b"cookie", b"session_token=")], b"", EVERYWHERE) is None


def test_header_and_cookie_are_two_credentials() -> None:
    headers = [*auth(f"Bearer {T1}"), (b"cookie", f"session_token={T1}".encode())]
    assert malformed(headers, b"", EVERYWHERE) == "multiple_credentials"


@pytest.mark.parametrize(
    "cookies",
    [[f"session_token={T1}; session_token={T2}"], [f"session_token={T1}", f"session_token={T2}"]],
    ids=["one_header", "two_headers"],
)
def test_cookie_twice_is_refused(cookies: list[str]) -> None:
    headers = [(b"cookie", c.encode()) for c in cookies]
    assert malformed(headers, b"", EVERYWHERE) == "multiple_credentials"


def test_a_cookie_that_is_not_token68_is_malformed() -> None:
    with pytest.raises(CredentialsMalformed) as info:
        extract([(b"cookie", b'session_token="quoted"')], b"", EVERYWHERE)
    assert info.value.reason == "malformed_credentials"


# --------------------------------------------------------------------------- custom headers


def test_custom_bare_header_and_custom_scheme() -> None:
    assert extract([(b"x-api-token", T1.encode())], b"", CUSTOM) == T1
    assert extract([(b"x-jwt", f"jwt {T1}".encode())], b"", CUSTOM) == T1
    assert extract([(b"x-jwt", f"Bearer {T1}".encode())], b"", CUSTOM) is None


def test_custom_bare_header_must_hold_one_token() -> None:
    assert malformed([(b"x-api-token", f"Bearer {T1}".encode())], b"", CUSTOM) == "malformed_authorization"
    assert malformed([(b"x-api-token", b"{}")], b"", CUSTOM) == "malformed_authorization"


def test_tokens_in_two_configured_headers_are_refused() -> None:
    headers = [*auth(f"Bearer {T1}"), (b"x-api-token", T2.encode())]
    assert malformed(headers, b"", CUSTOM) == "multiple_credentials"


def test_another_scheme_in_authorization_next_to_a_custom_header_token() -> None:
    headers = [*auth("Basic dXNlcjpwYXNz"), (b"x-api-token", T1.encode())]
    assert extract(headers, b"", CUSTOM) == T1


def test_unconfigured_headers_are_ignored() -> None:
    assert extract([(b"x-api-token", T1.encode())]) is None


# ------------------------------------------------------------------------------------ size


def test_a_token_larger_than_max_bytes_is_refused_before_parsing() -> None:
    big = "a" * 9000
    with pytest.raises(TokenMalformed) as info:
        extract(auth(f"Bearer {big}"))
    assert info.value.reason == "token_too_large"
    assert info.value.status == 401
    assert extract(auth(f"Bearer {big}"), max_bytes=9000) == big


def test_the_size_limit_applies_to_every_location() -> None:
    big = "a" * 100
    with pytest.raises(TokenMalformed):
        extract([], f"token={big}".encode(), EVERYWHERE, max_bytes=99)
    with pytest.raises(TokenMalformed):
        extract([(b"cookie", f"session_token={big}".encode())], b"", EVERYWHERE, max_bytes=99)


# ============================================================ form-encoded body credentials


def _scan(*chunks: bytes) -> bool:
    scanner = BodyCredentialScanner()
    return any(scanner.feed(chunk) for chunk in chunks)


@pytest.mark.parametrize(
    "chunks",
    [
        (f"access_token={T1}".encode(),),
        (f"a=1&access_token={T1}".encode(),),
        (f"a=1;access_token={T1}".encode(),),
        (f"access%5Ftoken={T1}".encode(),),
        (f"%61%63%63%65%73%73%5f%74%6F%6B%65%6E={T1}".encode(),),
        (b"a=1&acc", f"ess_token={T1}".encode()),
        (b"a=1&access_token=", T1.encode()),
        (b"a=1&", b"access%5", f"Ftoken={T1}".encode()),
        (b"x" * 70_000 + b"&access_token=", b"v"),
    ],
    ids=[
        "alone",
        "after_another",
        "semicolon",
        "encoded_underscore",
        "all_encoded",
        "split_name",
        "split_at_value",
        "split_in_escape",
        "after_a_large_chunk",
    ],
)
def test_a_form_body_token_is_found_however_it_is_written_or_split(chunks: tuple[bytes, ...]) -> None:
    assert _scan(*chunks)


@pytest.mark.parametrize(
    "chunks",
    [
        (b"a=1&b=2",),
        (b"x_access_token=abc",),
        (b"access_tokens=abc",),
        (b"access_token=&a=1",),
        (b"access_token&a=1",),
        (b"Access_Token=abc",),
        (b"note=access_token%3Dabc",),
        (b"a=1&access_to", b"kens=1"),
    ],
    ids=[
        "none",
        "prefixed",
        "suffixed",
        "empty_value",
        "no_value",
        "other_case",
        "in_a_value",
        "split_other",
    ],
)
def test_other_parameters_are_not_taken_for_a_token(chunks: tuple[bytes, ...]) -> None:
    assert not _scan(*chunks)


@pytest.mark.parametrize(
    ("value", "form"),
    [
        (b"application/x-www-form-urlencoded", True),
        (b"Application/X-WWW-Form-Urlencoded; charset=UTF-8", True),
        (b"application/json", False),
        (b"multipart/form-data; boundary=x", False),
    ],
)
def test_only_form_urlencoded_bodies_are_scanned(value: bytes, form: bool) -> None:
    assert is_form_body([(b"accept", b"*/*"), (b"content-type", value)]) is form
    assert not is_form_body([(b"accept", b"*/*")])
