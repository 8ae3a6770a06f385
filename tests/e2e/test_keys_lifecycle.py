"""The JWKS lifecycle over real HTTP (issue 4): rotation, withdrawal (also of cached tokens),
random-kid floods, IdP outages within and beyond ``max_stale``, recovery, garbage and huge
documents, a slow IdP, a gateway started while its IdP is down, discovery, tokens without kid,
and several providers whose keys verify only their own tokens.

Each test runs its own IdP (tests/support/jwks_server.py) and gateway, with durations of a
second or less where the behaviour needs time to pass. Fetch counts are read on the IdP.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from gateway.auth.keys import RemoteJWKS
from tests.support.jwks_server import JWKSServer
from tests.support.servers import EchoUpstream, GatewayServer
from tests.support.tokens import SigningKey, default_claims, new_signing_key, rsa_private_key

AUD = "api"
SECRET = "lifecycle-hmac-secret-0123456789abcdef-xyz"
HMAC_ISSUER = "https://service.test"
LEGACY_ISSUER = "https://legacy.test"

#: Defaults for the tests' remote providers: no background refresh within a test (TTL 60 s),
#: quick retries. Tests override what their behaviour needs.
QUICK: dict[str, Any] = {
    "timeout": "1s",
    "default_ttl": "60s",
    "min_ttl": "60s",
    "min_refresh_interval": "30s",
    "max_stale": "1h",
    "retry_backoff": "200ms",
    "retry_backoff_max": "400ms",
}


@pytest.fixture
def idp() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        yield server


# ------------------------------------------------------------------------------------ helpers


def remote(idp: JWKSServer, *, discovery: bool = False, **jwks: Any) -> dict[str, Any]:
    source: dict[str, Any] = {"discovery": True} if discovery else {"jwks_uri": idp.jwks_uri}
    return {
        "issuer": idp.issuer,
        **source,
        "algorithms": ["RS256", "ES256"],
        "audiences": [AUD],
        "jwks": {**QUICK, **jwks},
    }


def config(upstream: EchoUpstream, providers: dict[str, Any]) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"enabled": False},
        "upstream": upstream.url,
        "providers": providers,
        "headers": {"claims": {"X-User-Id": "sub"}},
        "routes": [
            {"name": "api", "match": {"path": "/api/**"}},
            {
                "name": "admin",
                "match": {"path": "/admin/**"},
                "require": {"claim": "roles", "contains": "admin"},
            },
        ],
    }


class Gateway(GatewayServer):
    """The gateway under test, with the upstream it forwards to and a keep-alive client."""

    def __init__(self, cfg: dict[str, Any], upstream: EchoUpstream, http: httpx.Client) -> None:
        super().__init__(cfg)
        self.upstream = upstream
        self.http = http

    def call(self, token: str | None, path: str = "/api/x") -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return self.http.get(self.url + path, headers=headers)

    def expect(self, token: str, status: int, reason: str | None = None) -> httpx.Response:
        """One request ends with ``status`` (and ``reason``); only a 200 reaches the upstream."""
        before = self.upstream.count
        r = self.call(token)
        assert r.status_code == status, r.text
        if status == 200:
            assert self.upstream.count == before + 1
        else:
            assert self.upstream.count == before, "a denied request reached the upstream"
            if reason is not None:
                assert r.json()["reason"] == reason, r.json()
        if status == 503:
            assert_retry_after(r)
        return r


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


Starter = Callable[..., contextlib.AbstractContextManager[Gateway]]


@pytest.fixture
def gateway(upstream: EchoUpstream, http: httpx.Client) -> Starter:
    """``with gateway(cfg) as gw:`` runs a gateway (by default once its keys are loaded)."""

    @contextlib.contextmanager
    def start(cfg: dict[str, Any], *, wait: bool = True) -> Iterator[Gateway]:
        with Gateway(cfg, upstream, http) as server:
            if wait:
                server.wait_ready()
            yield server

    return start


def source_of(gw: GatewayServer, provider: str = "idp") -> RemoteJWKS:
    source = gw.gateway.policy.key_sources[provider]
    assert isinstance(source, RemoteJWKS)
    return source


def wait_until(predicate: Callable[[], bool], within: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within} s")
        time.sleep(0.02)


def fresh(idp: JWKSServer, key: SigningKey, **extra: Any) -> str:
    """A token the verifier has never seen (distinct jti: never a cache hit)."""
    return idp.mint(key, aud=AUD, jti=secrets.token_hex(8), **extra)


def assert_retry_after(r: httpx.Response) -> None:
    """A 503 for unavailable keys: one Retry-After, no Bearer challenge (the token is not at fault)."""
    assert r.status_code == 503
    assert r.json()["reason"] == "keys_unavailable"
    (value,) = r.headers.get_list("retry-after")
    assert 1 <= int(value) <= 300
    assert "www-authenticate" not in r.headers


# ------------------------------------------------------------------------------------- rotation


def test_rotation_new_kid_accepted_after_one_refetch(
    idp: JWKSServer, upstream: EchoUpstream, gateway: Starter
) -> None:
    old = idp.add_key("RS256", slot=0)
    with gateway(config(upstream, {"idp": remote(idp, min_refresh_interval="0s")})) as gw:
        gw.expect(fresh(idp, old), 200)
        assert idp.fetch_count == 1
        new = idp.add_key("ES256", slot=1)
        gw.expect(fresh(idp, new), 200)
        assert idp.fetch_count == 2  # exactly one re-fetch
        gw.expect(fresh(idp, old), 200)  # the old key is still published
        gw.expect(fresh(idp, new), 200)
        assert idp.fetch_count == 2


@pytest.mark.parametrize("refresh", ["ttl", "unknown_kid"])
def test_withdrawn_key_refused_after_the_next_refresh_even_when_cached(
    idp: JWKSServer, upstream: EchoUpstream, refresh: str, gateway: Starter
) -> None:
    withdrawn = idp.add_key("RS256", slot=0)
    kept = idp.add_key("ES256", slot=1)
    if refresh == "ttl":
        idp.cache_control = "max-age=1"
        jwks: dict[str, Any] = {"min_ttl": "1s"}
    else:
        jwks = {"min_refresh_interval": "0s"}
    with gateway(config(upstream, {"idp": remote(idp, **jwks)})) as gw:
        verifier = gw.gateway.policy.verifier
        cached = fresh(idp, withdrawn)
        gw.expect(cached, 200)
        size = verifier.cache_size
        gw.expect(cached, 200)
        assert verifier.cache_size == size  # served from the token cache
        generation = source_of(gw).generation
        idp.remove_key(withdrawn)
        if refresh == "ttl":
            # The background refresh (at 75-85 % of the 1 s TTL) installs the set without it.
            wait_until(lambda: source_of(gw).generation > generation, what="background refresh")
        else:
            # A token of a newly published key triggers the one re-fetch.
            added = idp.add_key("RS256", slot=2)
            gw.expect(fresh(idp, added), 200)
            assert source_of(gw).generation > generation
        gw.expect(cached, 401, "unknown_kid")  # the cached verification is not used
        gw.expect(fresh(idp, withdrawn), 401, "unknown_kid")
        gw.expect(fresh(idp, kept), 200)


def test_refresh_keeping_the_key_keeps_cached_tokens_valid(
    idp: JWKSServer, upstream: EchoUpstream, gateway: Starter
) -> None:
    key = idp.add_key("RS256", slot=0)
    with gateway(config(upstream, {"idp": remote(idp, min_refresh_interval="0s")})) as gw:
        token = fresh(idp, key)
        gw.expect(token, 200)
        gw.expect(fresh(idp, idp.add_key("ES256", slot=1)), 200)  # another set installed
        size = gw.gateway.policy.verifier.cache_size
        gw.expect(token, 200)
        assert gw.gateway.policy.verifier.cache_size == size


# ----------------------------------------------------------------------------- random-kid flood


def test_random_kid_flood_costs_o1_fetches_and_each_is_unknown_kid(
    idp: JWKSServer, upstream: EchoUpstream, gateway: Starter
) -> None:
    key = idp.add_key("RS256", slot=0)
    interval = 1.0
    claims = default_claims(idp.issuer, AUD)
    flood = [key.sign(claims, headers={"kid": secrets.token_hex(8)}) for _ in range(60)]
    with gateway(config(upstream, {"idp": remote(idp, min_refresh_interval=f"{interval}s")})) as gw:
        time.sleep(interval + 0.05)  # the start-up fetch's cooldown is over
        idp.delay = 0.2  # so that the concurrent misses overlap one fetch
        base, forwarded = idp.fetch_count, upstream.count
        started = time.monotonic()

        async def concurrent(tokens: list[str]) -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=gw.url, timeout=10) as client:
                requests = (client.get("/api/x", headers={"Authorization": f"Bearer {t}"}) for t in tokens)
                return await asyncio.gather(*requests)

        answers = asyncio.run(concurrent(flood[:40]))
        concurrent_seconds = time.monotonic() - started
        idp.delay = 0.0
        with httpx.Client(base_url=gw.url, timeout=10) as client:  # then one after the other
            answers += [client.get("/api/x", headers={"Authorization": f"Bearer {t}"}) for t in flood[40:]]
        elapsed = time.monotonic() - started
        assert [r.status_code for r in answers] == [401] * 60
        assert {r.json()["reason"] for r in answers} == {"unknown_kid"}
        assert upstream.count == forwarded
        if concurrent_seconds < interval:
            assert idp.fetch_times[base:] and idp.fetch_times[base] - started < interval
            assert len([t for t in idp.fetch_times[base:] if t - started < interval]) == 1  # single flight
        assert idp.fetch_count - base <= 1 + int(elapsed / interval)  # at most one per interval
        gw.expect(fresh(idp, key), 200)


# ------------------------------------------------------------------------------------- outages


def test_idp_down_stale_keys_within_max_stale_then_503_then_recovery(
    idp: JWKSServer, upstream: EchoUpstream, gateway: Starter
) -> None:
    key = idp.add_key("RS256", slot=0)
    idp.cache_control = "max-age=1"
    jwks = {"min_ttl": "1s", "max_ttl": "1s", "max_stale": "1s"}
    with gateway(config(upstream, {"idp": remote(idp, **jwks)})) as gw:
        idp.go_down()
        cached = fresh(idp, key)
        gw.expect(cached, 200)
        wait_until(lambda: source_of(gw).status().stale, what="TTL over")
        wait_until(lambda: source_of(gw).status().last_outcome == "connect_error", what="a failed refresh")
        gw.expect(fresh(idp, key), 200)  # stale keys still serve within max_stale
        gw.expect(cached, 200)
        wait_until(lambda: not source_of(gw).ready, within=3, what="max_stale over")
        gw.expect(fresh(idp, key), 503)  # fail closed: 503, never 401
        gw.expect(cached, 503)  # the token cache does not outlive max_stale either
        idp.come_up()
        wait_until(lambda: source_of(gw).ready, within=3, what="recovery")
        gw.expect(fresh(idp, key), 200)
        gw.expect(cached, 200)


def test_gateway_starts_with_the_idp_down_and_serves_503_until_it_answers(
    idp: JWKSServer, upstream: EchoUpstream, gateway: Starter
) -> None:
    key = idp.add_key("RS256", slot=0)
    idp.go_down()
    with gateway(config(upstream, {"idp": remote(idp)}), wait=False) as gw:
        for token in (fresh(idp, key), key.sign(default_claims(idp.issuer, AUD), headers={"kid": "other"})):
            gw.expect(token, 503)
        idp.come_up()
        wait_until(lambda: gw.call(fresh(idp, key)).status_code == 200, what="first keys")
        gw.expect(fresh(idp, key), 200)


def _bad_documents() -> list[Any]:
    def duplicate_kid(idp: JWKSServer, old: SigningKey, new: SigningKey) -> None:
        idp.add_key(new.alg, slot=1)
        idp.add_entry(old.public_jwk())  # the document is suspect: keep the previous keys

    cases: list[tuple[str, Callable[[JWKSServer, SigningKey, SigningKey], None], str]] = [
        ("html", lambda idp, old, new: idp.serve_html(), "invalid_json"),
        ("truncated_json", lambda idp, old, new: idp.serve_invalid_json(), "invalid_json"),
        ("status_500", lambda idp, old, new: idp.serve_status(500), "http_status"),
        ("empty_set", lambda idp, old, new: idp.serve_body(b'{"keys": []}'), "invalid_jwks"),
        ("huge", lambda idp, old, new: idp.serve_huge(with_key=new), "too_large"),
        ("huge_without_length", lambda idp, old, new: idp.serve_huge(with_key=new, omit_length=True),
         "too_large"),
        ("duplicate_kid", duplicate_kid, "invalid_jwks"),
    ]  # fmt: skip
    return [pytest.param(change, outcome, id=name) for name, change, outcome in cases]


@pytest.mark.parametrize(("change", "outcome"), _bad_documents())
def test_garbage_or_huge_document_keeps_the_old_keys(
    idp: JWKSServer,
    upstream: EchoUpstream,
    change: Callable[[JWKSServer, SigningKey, SigningKey], None],
    outcome: str,
    gateway: Starter,
) -> None:
    old = idp.add_key("RS256", slot=0)
    new = new_signing_key("ES256", slot=1)
    with gateway(config(upstream, {"idp": remote(idp, min_refresh_interval="0s")})) as gw:
        change(idp, old, new)
        before = idp.fetch_count
        gw.expect(fresh(idp, new), 401, "unknown_kid")  # its re-fetch was refused
        assert idp.fetch_count == before + 1
        assert source_of(gw).status().last_outcome == outcome
        assert source_of(gw).status().keys == 1
        gw.expect(fresh(idp, old), 200)


def test_slow_idp_never_stalls_requests_with_known_kids(
    idp: JWKSServer, upstream: EchoUpstream, gateway: Starter
) -> None:
    key = idp.add_key("RS256", slot=0)
    with gateway(config(upstream, {"idp": remote(idp, min_refresh_interval="0s")})) as gw:
        idp.delay = 3.0  # longer than the 1 s fetch timeout
        outcome: dict[str, Any] = {}

        def unknown_kid() -> None:
            started = time.monotonic()
            r = gw.call(key.sign(default_claims(idp.issuer, AUD), headers={"kid": "rotated-in"}))
            outcome["status"], outcome["seconds"] = r.status_code, time.monotonic() - started

        miss = threading.Thread(target=unknown_kid)
        miss.start()
        wait_until(lambda: idp.fetch_count == 2, what="the slow re-fetch")
        latencies = []
        for _ in range(10):  # while the re-fetch hangs
            started = time.monotonic()
            gw.expect(fresh(idp, key), 200)
            latencies.append(time.monotonic() - started)
        miss.join(10)
        assert max(latencies) < 0.5, latencies  # generous: a stall would be >= 1 s
        assert outcome["status"] == 401
        assert outcome["seconds"] < 1.0 + 1.5  # bounded by the fetch timeout
        assert source_of(gw).status().last_outcome == "timeout"


# ------------------------------------------------------------------------------------ discovery


def test_discovery_finds_the_jwks(idp: JWKSServer, upstream: EchoUpstream, gateway: Starter) -> None:
    key = idp.add_key("RS256", slot=0)
    with gateway(config(upstream, {"idp": remote(idp, discovery=True)})) as gw:
        gw.expect(fresh(idp, key), 200)
        assert idp.discovery_count == 1 and idp.fetch_count == 1


@pytest.mark.parametrize("named", ["https://evil.test", "{issuer}/"])
def test_discovery_issuer_mismatch_is_never_trusted(
    idp: JWKSServer, upstream: EchoUpstream, named: str, gateway: Starter
) -> None:
    key = idp.add_key("RS256", slot=0)
    idp.discovery_issuer = named.format(issuer=idp.issuer)
    with gateway(config(upstream, {"idp": remote(idp, discovery=True)}), wait=False) as gw:
        wait_until(lambda: idp.discovery_count >= 2, what="discovery retried")
        gw.expect(fresh(idp, key), 503)
        assert idp.fetch_count == 0  # the JWKS it names is never fetched
        assert source_of(gw).status().last_outcome == "issuer_mismatch"
        idp.discovery_issuer = None
        wait_until(lambda: source_of(gw).ready, what="recovery")
        gw.expect(fresh(idp, key), 200)


# -------------------------------------------------------------------------------- without kid


@pytest.fixture
def legacy_pem(tmp_path: Any) -> str:
    path = tmp_path / "legacy.pem"
    path.write_bytes(
        rsa_private_key(2)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return str(path)


def simplejwt_claims(issuer: str | None) -> dict[str, Any]:
    """What djangorestframework-simplejwt puts in an access token (plus iss/aud here)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "token_type": "access",
        "exp": now + 300,
        "iat": now,
        "jti": secrets.token_hex(16),
        "user_id": "42",
        "sub": "42",
        "aud": AUD,
    }
    if issuer is not None:
        claims["iss"] = issuer
    return claims


def test_tokens_without_kid_against_a_jwks_and_a_pem(
    idp: JWKSServer, upstream: EchoUpstream, legacy_pem: str, gateway: Starter
) -> None:
    anonymous = idp.add_key("RS256", slot=0, publish_kid=False)
    keyed = idp.add_key("RS256", slot=1)
    legacy = {
        "issuer": LEGACY_ISSUER,
        "public_key_file": legacy_pem,
        "algorithms": ["RS256"],
        "audiences": [AUD],
    }
    with gateway(config(upstream, {"idp": remote(idp), "legacy": legacy})) as gw:
        fetches = idp.fetch_count
        for signer in (anonymous, keyed):
            gw.expect(signer.sign(simplejwt_claims(idp.issuer), include_kid=False), 200)
        stranger = new_signing_key("RS256", slot=3, kid=None)
        gw.expect(stranger.sign(simplejwt_claims(idp.issuer)), 401, "bad_signature")
        assert idp.fetch_count == fetches  # a token without kid never triggers a re-fetch

        pem_key = rsa_private_key(2)
        gw.expect(jwt.encode(simplejwt_claims(LEGACY_ISSUER), pem_key, algorithm="RS256"), 200)
        # A static key without kid also serves tokens that carry one.
        with_kid = jwt.encode(
            simplejwt_claims(LEGACY_ISSUER), pem_key, algorithm="RS256", headers={"kid": "k1"}
        )
        gw.expect(with_kid, 200)
        gw.expect(stranger.sign(simplejwt_claims(LEGACY_ISSUER)), 401, "bad_signature")


# ---------------------------------------------------------------------------- several providers


def test_each_provider_verifies_only_its_own_tokens(
    idp: JWKSServer, upstream: EchoUpstream, gateway: Starter
) -> None:
    with JWKSServer() as other:
        mine = idp.add_key("RS256", slot=0, kid="shared")
        theirs = other.add_key("RS256", slot=1, kid="shared")  # same kid, another key
        hmac_provider = {"issuer": HMAC_ISSUER, "secret": SECRET, "algorithms": ["HS256"], "audiences": [AUD]}
        providers = {"idp": remote(idp), "other": remote(other), "service": hmac_provider}
        with gateway(config(upstream, providers)) as gw:
            gw.expect(fresh(idp, mine), 200)
            gw.expect(fresh(other, theirs), 200)
            # Routed by exact iss: the other IdP's key, same kid, claiming this IdP.
            gw.expect(theirs.sign(default_claims(idp.issuer, AUD)), 401, "bad_signature")
            gw.expect(mine.sign(default_claims(other.issuer, AUD)), 401, "bad_signature")
            # HS256 with the real secret but the IdP's iss.
            forged = jwt.encode(default_claims(idp.issuer, AUD), SECRET, algorithm="HS256")
            gw.expect(forged, 401, "algorithm_not_allowed")
            forged = jwt.encode(
                default_claims(idp.issuer, AUD), SECRET, algorithm="HS256", headers={"kid": "shared"}
            )
            gw.expect(forged, 401, "algorithm_not_allowed")
            # An IdP-signed token claiming the HMAC issuer.
            gw.expect(mine.sign(default_claims(HMAC_ISSUER, AUD)), 401, "algorithm_not_allowed")
            # The HMAC provider's own token, and unknown or missing issuers.
            gw.expect(jwt.encode(default_claims(HMAC_ISSUER, AUD), SECRET, algorithm="HS256"), 200)
            gw.expect(mine.sign(default_claims(idp.issuer + "/", AUD)), 401, "issuer_mismatch")
            gw.expect(mine.sign(default_claims(None, AUD)), 401, "issuer_mismatch")
