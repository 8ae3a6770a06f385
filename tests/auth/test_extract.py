"""Bearer-token extraction (gateway.auth.extract): RFC 6750 §2, catalogue section 2.15."""

from __future__ import annotations

import time

import pytest

from gateway.auth.extract import (
    STANDARD_QUERY_PARAMETER,
    BodyCredentialScanner,
    TokenLocations,
    body_scanner,
    extract_token,
    is_form_body,
    remove_cookie_credentials,
    remove_query_credentials,
)
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


@pytest.mark.parametrize(
    ("types", "form", "multipart"),
    [
        ([b"text/plain", b"application/x-www-form-urlencoded"], True, False),
        ([b"application/x-www-form-urlencoded", b"text/plain"], True, False),
        ([b"application/x-www-form-urlencoded foo"], True, False),
        ([b"text/plain, application/x-www-form-urlencoded"], True, False),
        ([b"multipart/form-data; boundary=x"], False, True),
        ([b"Multipart/Mixed; boundary=x"], False, True),
        ([b"text/plain", b"multipart/form-data; boundary=x"], False, True),
        ([b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x"], True, True),
        ([b"application/json"], False, False),
        ([], False, False),
    ],
)
def test_every_content_type_header_decides_what_is_scanned(
    types: list[bytes], form: bool, multipart: bool
) -> None:
    """A second Content-Type cannot hide a form body: a backend may take either (gunicorn: the
    last); PHP cuts the media type at a space or a comma."""
    headers = [(b"accept", b"*/*"), *((b"content-type", t) for t in types)]
    assert is_form_body(headers) is form
    scanner = body_scanner(headers)
    if not (form or multipart):
        assert scanner is None
        return
    assert scanner is not None
    assert scanner.feed(b"a=1&access_token=x") is form
    scanner = body_scanner(headers)
    assert scanner is not None
    assert scanner.feed(b'; name="access_token"\r\n') is multipart


def _scan_every_split(body: bytes, **syntax: bool) -> bool:
    """Whether the body is found whole, split in two at every byte, and byte by byte; asserts
    all three agree."""
    whole = BodyCredentialScanner(**syntax).feed(body)
    for cut in range(len(body) + 1):
        scanner = BodyCredentialScanner(**syntax)
        assert (scanner.feed(body[:cut]) or scanner.feed(body[cut:])) is whole, cut
    scanner = BodyCredentialScanner(**syntax)
    assert any(scanner.feed(body[i : i + 1]) for i in range(len(body))) is whole
    return whole


@pytest.mark.parametrize(
    "name",
    [
        b"access.token",
        b"access+token",
        b"access%20token",
        b"access token",
        b"+access_token",
        b"%20+ access_token",
        b"access%2Etoken",
        b"access%2etoken",
        b"access[token",
        b"access%5Btoken",
        b"%61ccess.token",
    ],
)
def test_php_spellings_of_access_token_in_a_form_body_are_found(name: bytes) -> None:
    """PHP drops leading spaces and reads `.`, ` ` and `[` as `_`."""
    assert _scan_every_split(b"a=1&" + name + b"=x")
    assert _scan_every_split(name + b"=x")


@pytest.mark.parametrize(
    "body",
    [
        b"x+access_token=1",
        b"access__token=1",
        b"access..token=1",
        b".access_token=1",
        b"access_token_=1",
        b"access_token.=1",
        b"access%2Btoken=1",
        b"a=access.token",
        b"access.token=",
    ],
)
def test_names_php_reads_otherwise_are_not_taken_for_the_token(body: bytes) -> None:
    assert not _scan_every_split(body)


def test_leading_space_padding_cannot_push_the_boundary_out_of_the_carry() -> None:
    body = b"a=1&" + b"+%20" * 20_000 + b"access_token=x"
    for size in (1, 3, 7, 1000, 65536):
        scanner = BodyCredentialScanner()
        assert any(scanner.feed(body[i : i + size]) for i in range(0, len(body), size)), size
    scanner = BodyCredentialScanner()
    assert not any(scanner.feed(chunk) for chunk in (b"a=1&" + b"+" * 70_000, b"x", b"access_token=1"))


@pytest.mark.parametrize(
    "header",
    [
        b'Content-Disposition: form-data; name="access_token"\r\n',
        b"Content-Disposition: form-data; name=access_token\r\n",
        b'content-disposition: form-data; NAME="access_token"\r\n',
        b'Content-Disposition: form-data; Name = "access_token"\r\n',
        b'Content-Disposition: form-data;name="access_token";filename="a.txt"\r\n',
        b'Content-Disposition: form-data; filename="a.txt"; name="access_token"\r\n',
        b'Content-Disposition: form-data;\tname=\t"access_token"\r\n',
        b'Content-Disposition: form-data; name=" access_token"\r\n',
        b'Content-Disposition: form-data; name="access.token"\r\n',
        b'Content-Disposition: form-data; name="access token"\r\n',
        b'Content-Disposition: form-data; name="access[token"\r\n',
        b"Content-Disposition: form-data; name*=UTF-8''access%5Ftoken\r\n",
        b'Content-Disposition: form-data; name*0="acc"; name*1="ess_token"\r\n',
    ],
)
def test_a_multipart_access_token_part_is_found(header: bytes) -> None:
    """Any case of `name`, whitespace around `=`, quoted or not, PHP's spellings; an extended
    `name*` (RFC 2231, which a backend may decode or join) is refused whatever it names."""
    body = b"--XX\r\n" + header + b"\r\nforged\r\n--XX--\r\n"
    assert _scan_every_split(body, form=False, multipart=True)


@pytest.mark.parametrize(
    "header",
    [
        b'Content-Disposition: form-data; name="note"\r\n\r\naccess_token=1',
        b'Content-Disposition: form-data; name="x"; filename="access_token"\r\n',
        b'Content-Disposition: form-data; name="access_tokens"\r\n',
        b"Content-Disposition: form-data; name=access_tokens\r\n",
        b'Content-Disposition: form-data; name="my_access_token"\r\n',
        b'Content-Disposition: form-data; name="access_token_"\r\n',
        b'Content-Disposition: form-data; name="Access_Token"\r\n',
        b'Content-Disposition: form-data; myname="access_token"\r\n',
    ],
)
def test_other_multipart_parts_pass(header: bytes) -> None:
    body = b"--XX\r\n" + header + b"\r\n\r\nvalue\r\n--XX--\r\n"
    assert not _scan_every_split(body, form=False, multipart=True)


def test_multipart_whitespace_padding_cannot_outgrow_the_carry() -> None:
    body = b"form-data;" + b" " * 50_000 + b"name" + b"\t" * 50_000 + b'= "' + b" " * 3000 + b'access_token"'
    for size in (1, 7, 1000, 65536):
        scanner = BodyCredentialScanner(form=False, multipart=True)
        assert any(scanner.feed(body[i : i + size]) for i in range(0, len(body), size)), size


def test_a_scanner_for_both_syntaxes_finds_either() -> None:
    assert BodyCredentialScanner(form=True, multipart=True).feed(b"a=1&access_token=x")
    assert BodyCredentialScanner(form=True, multipart=True).feed(b'; name="access_token"\r\n')
    assert not BodyCredentialScanner(form=True, multipart=True).feed(b"a=1&b=2\r\n; name=x\r\n")
    assert not BodyCredentialScanner(form=False, multipart=True).feed(b"a=1&access_token=x")
    assert not BodyCredentialScanner().feed(b'; name="access_token"\r\n')


@pytest.mark.parametrize(
    "chunk",
    [b"&" * 262_144, b";" * 262_144, b": " * 131_072, b"; " + b" " * 262_144, b"&" + b"+" * 262_144],
    ids=["ampersands", "semicolons", "colons", "spaces", "pluses"],
)
def test_pathological_bodies_are_scanned_in_linear_time(chunk: bytes) -> None:
    started = time.perf_counter()
    scanner = BodyCredentialScanner(form=True, multipart=True)
    for _ in range(4):
        assert not scanner.feed(chunk)
    assert time.perf_counter() - started < 5.0  # a backtracking pattern takes minutes


# =================================================== names as lenient backends read them


@pytest.mark.parametrize(
    "query",
    [
        b"access.token=junk",
        b"access+token=junk",
        b"+access_token=junk",
        b"access%2Etoken=junk",
        b"access%20token=junk",
        b"access[token=junk",
        b"a=1;access_token=junk",
        b"a=1;b=2;access.token=junk&c=3",
        b"a;access_token=junk",
        b"access_token=;junk",
    ],
)
def test_header_token_with_a_php_or_semicolon_spelt_access_token_is_refused(query: bytes) -> None:
    assert malformed(auth(f"Bearer {T1}"), query) == "multiple_credentials"


def test_names_read_otherwise_do_not_count_as_access_token() -> None:
    for query in (b"x.access_token=1", b"access__token=1", b"a=access_token;b=1", b"access_token_=1"):
        assert extract(auth(f"Bearer {T1}"), query) == T1


def test_configured_names_are_compared_in_the_same_normal_form() -> None:
    locations = TokenLocations.compile([TokenLocation(query="my.token", cookie="my.cookie")])
    assert locations.query == frozenset({b"my_token"})
    assert locations.cookies == frozenset({b"my_cookie"})
    for query in (b"my_token=", b"my.token=", b"my+token=", b"+my[token=", b"a=1;my%2Etoken="):
        assert extract([], query + T1.encode(), locations) == T1, query
    for cookie in (b"my_cookie=", b"my.cookie=", b"my%2Ecookie="):
        assert extract([(b"cookie", cookie + T1.encode())], b"", locations) == T1, cookie


def test_a_semicolon_tail_of_a_configured_query_token_is_not_dropped_silently() -> None:
    # Read whole by a backend that splits on '&' only: no token68, refused.
    assert malformed([], f"token={T1};x=1".encode(), EVERYWHERE) == "malformed_credentials"
    assert extract([], f"x=1;token={T1}".encode(), EVERYWHERE) == T1
    assert malformed([], f"token={T1};token={T2}".encode(), EVERYWHERE) == "multiple_credentials"


NAMES = frozenset({STANDARD_QUERY_PARAMETER, b"jwt"})


@pytest.mark.parametrize(
    ("query", "forwarded"),
    [
        (b"a=1&b=%2F", b"a=1&b=%2F"),
        (b"a=1&access_token=x&b=2", b"a=1&b=2"),
        (b"access_token=x", b""),
        (b"a=1&jwt=x", b"a=1"),
        (b"a=1;access_token=x", b"a=1"),
        (b"a=1;access_token=x;b=2", b"a=1;b=2"),
        (b"access_token=x;b=2&c=3", b"b=2&c=3"),
        (b"a;access_token=x", b"a"),
        (b"access_token=x;jwt=y&c=3", b"c=3"),
        (b"a=1&access.token=x&+access_token=y&access%5Btoken=z&b=2", b"a=1&b=2"),
        (b"a=1;;b=2&&c", b"a=1;;b=2&&c"),
        (b"x.access_token=1&access_tokens=2", b"x.access_token=1&access_tokens=2"),
    ],
)
def test_query_credentials_are_removed_however_they_are_spelt_or_separated(
    query: bytes, forwarded: bytes
) -> None:
    assert remove_query_credentials(query, NAMES) == forwarded


@pytest.mark.parametrize(
    "cookie",
    [
        f"session_token ={T1}",
        f"session_token\t= {T1}",
        f"session_token = {T1} ",
        f"a=b, session_token={T1}",
        f"a=b,session_token={T1}",
        f"a=b session_token={T1}",
        f"a=b;  session_token={T1}",
        f"session.token={T1}",
        f"session%5Ftoken={T1}",
    ],
)
def test_cookie_names_are_read_trimmed_and_split_at_commas_and_spaces(cookie: str) -> None:
    """As Django, Starlette, Werkzeug (trimmed names) and http.cookies (split at whitespace, so
    after a comma) read them: the one token, and a second credential beside a header token."""
    headers = [(b"cookie", cookie.encode())]
    assert extract(headers, b"", EVERYWHERE) == T1
    assert malformed([*auth(f"Bearer {T2}"), *headers], b"", EVERYWHERE) == "multiple_credentials"


def test_a_cookie_value_is_read_up_to_its_semicolon() -> None:
    # Django and Starlette read 'T1, x=1' and 'T1 x': no token68, refused, never half-read.
    for cookie in (f"session_token={T1}, x=1", f"session_token={T1} x"):
        with pytest.raises(CredentialsMalformed) as info:
            extract([(b"cookie", cookie.encode())], b"", EVERYWHERE)
        assert info.value.reason == "malformed_credentials"


COOKIES = frozenset({b"session"})


@pytest.mark.parametrize(
    ("cookie", "forwarded"),
    [
        (b"theme=dark; lang=en", b"theme=dark; lang=en"),
        (b"theme=dark; session=x; lang=en", b"theme=dark; lang=en"),
        (b"session=x; lang=en", b"lang=en"),
        (b"theme=dark;session=x", b"theme=dark"),
        (b"session=x", None),
        (b"session =x", None),
        (b"session\t= x; lang=en", b"lang=en"),
        (b"a=b, session=x", b"a=b"),
        (b"a=b session=x; c=d", b"a=b; c=d"),
        (b"a=1; session=x; b=2; session=y", b"a=1; b=2"),
        (b"session.=x; a=1", b"session.=x; a=1"),
        (b"ses%73ion=x; a=1", b"a=1"),
        (b"xsession=1; session_x=2", b"xsession=1; session_x=2"),
        (b"flag; session=x", b"flag"),
    ],
)
def test_token_cookies_are_removed_however_they_are_spelt_or_separated(
    cookie: bytes, forwarded: bytes | None
) -> None:
    headers = [(b"host", b"h"), (b"cookie", cookie), (b"accept", b"*/*")]
    expected = [
        (b"host", b"h"),
        *([(b"cookie", forwarded)] if forwarded is not None else []),
        (b"accept", b"*/*"),
    ]
    assert remove_cookie_credentials(headers, COOKIES) == expected


def test_cookie_padding_is_scanned_in_linear_time() -> None:
    value = b"a=1;" + b" " * 200_000 + b"b" + b" =" * 100_000 + b"; session=x"
    started = time.perf_counter()
    assert remove_cookie_credentials([(b"cookie", value)], COOKIES)[0][1].endswith(b" =")
    assert extract([(b"cookie", value.replace(b"session", b"session_token"))], b"", EVERYWHERE) == "x"
    assert time.perf_counter() - started < 5.0
