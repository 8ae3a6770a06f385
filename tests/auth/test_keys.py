"""Key sources (gateway/auth/keys.py): static keys and the remote JWKS lifecycle.

Lifecycle tests run against a real JWKS server on 127.0.0.1 (tests/support/jwks_server.py).
Durations are small (TTL 1-2 s, timeout 0.5 s); where staleness is the subject, an injected
clock replaces sleeping.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from gateway.auth.jwk import hmac_key, load_jwks
from gateway.auth.keys import (
    FETCH_OUTCOMES,
    MAX_KIDLESS_CANDIDATES,
    KeyIndex,
    KeySourceRegistry,
    RemoteJWKS,
    StaticKeys,
    build_key_source,
    check_fetch_url,
    discovery_url,
    is_loopback_host,
    ttl_from_cache_control,
)
from gateway.auth.types import VerificationKey
from gateway.config.models import JWKSOptions, Provider
from gateway.errors import AlgorithmNotAllowed, ConfigError, KeysUnavailable, TokenMalformed
from tests.support.jwks_server import DISCOVERY_PATH, JWKSServer, Response
from tests.support.tokens import (
    b64url,
    bad_jwks_entries,
    default_claims,
    new_signing_key,
    rsa_private_key,
    signature_verifies,
)

FAST: dict[str, Any] = {
    "timeout": 0.5,
    "default_ttl": 60,
    "min_ttl": 1,
    "max_ttl": 3600,
    "min_refresh_interval": 1.0,
    "max_stale": 5,
    "retry_backoff": 0.05,
    "retry_backoff_max": 0.2,
}


def options(**overrides: Any) -> JWKSOptions:
    return JWKSOptions(**{**FAST, **overrides})


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """KeyEvents that remembers every call."""

    def __init__(self) -> None:
        self.fetches: list[tuple[str, str, float]] = []
        self.keys: list[tuple[str, int]] = []

    def on_fetch(self, provider: str, outcome: str, seconds: float) -> None:
        self.fetches.append((provider, outcome, seconds))

    def on_keys(self, provider: str, count: int) -> None:
        self.keys.append((provider, count))


async def wait_until(predicate: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def keys_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """caplog, receiving ``gateway.keys`` records from INFO up.

    ``gateway.logs.configure`` (run by other tests in the same session) stops propagation at the
    ``gateway`` logger; caplog listens at the root, so propagation is turned back on here.
    """
    monkeypatch.setattr(logging.getLogger("gateway"), "propagate", True)
    monkeypatch.setattr(logging.getLogger("gateway.keys"), "propagate", True)
    caplog.set_level(logging.INFO, logger="gateway.keys")
    return caplog


@pytest.fixture
def idp() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        yield server


MakeSource = Callable[..., RemoteJWKS]


@pytest.fixture
async def sources() -> AsyncIterator[MakeSource]:
    made: list[RemoteJWKS] = []

    def make(
        server: JWKSServer,
        *,
        discovery: bool = False,
        issuer: str | None = None,
        algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA"),
        clock: Callable[[], float] = time.monotonic,
        events: Any = None,
        **overrides: Any,
    ) -> RemoteJWKS:
        source = RemoteJWKS(
            "corp",
            jwks_uri=None if discovery else server.jwks_uri,
            issuer=issuer or server.issuer,
            discovery=discovery,
            algorithms=algorithms,
            options=options(**overrides),
            events=events,
            clock=clock,
        )
        made.append(source)
        return source

    yield make
    for source in made:
        await source.aclose()


# ============================================================================ pure helpers


@pytest.mark.parametrize(
    ("header", "settings", "expected"),
    [
        (None, {}, 600),
        ("max-age=300", {}, 300),
        ("public, max-age=30, must-revalidate", {}, 60),
        ("max-age=999999", {}, 86400),
        ("max-age=0", {}, 60),
        ("MAX-AGE=120", {}, 120),
        ('max-age="120"', {}, 120),
        ("no-cache", {}, 60),
        ("no-store", {}, 60),
        ('no-cache="Set-Cookie", max-age=200', {}, 200),
        ("s-maxage=100", {}, 600),
        ("max-age=abc", {}, 600),
        ("max-age=2", {"min_ttl": 1}, 2),
        ("max-age=5000", {"min_ttl": 1, "max_ttl": 50}, 50),
        (None, {"default_ttl": 10_000, "max_ttl": 100}, 100),
        ("max-age=0", {"min_ttl": 0}, 1),  # never below 1 s: no fetch loop
    ],
)
def test_ttl_from_cache_control(header: str | None, settings: dict[str, float], expected: float) -> None:
    values = {"default_ttl": 600.0, "min_ttl": 60.0, "max_ttl": 86400.0, **settings}
    assert ttl_from_cache_control(header, **values) == expected


@pytest.mark.parametrize(
    ("url", "allow_insecure", "ok"),
    [
        ("https://idp.example.com/jwks", False, True),
        ("http://127.0.0.1:8080/jwks", False, True),
        ("http://127.5.6.7/jwks", False, True),
        ("http://[::1]:9000/jwks", False, True),
        ("http://localhost/jwks", False, True),
        ("http://LOCALHOST/jwks", False, True),
        ("http://idp.example.com/jwks", False, False),
        ("http://10.0.0.1/jwks", False, False),
        ("http://localhost.evil.example/jwks", False, False),
        ("http://127.0.0.1.nip.io/jwks", False, False),
        ("http://[::ffff:10.0.0.1]/jwks", False, False),
        ("http://idp.example.com/jwks", True, True),
        ("ftp://idp.example.com/jwks", True, False),
        ("file:///etc/jwks.json", True, False),
        ("/relative/jwks", False, False),
        ("https://user:pass@idp.example.com/jwks", False, False),
        ("not a url", False, False),
        ("", False, False),
    ],
)
def test_check_fetch_url(url: str, allow_insecure: bool, ok: bool) -> None:
    assert (check_fetch_url(url, allow_insecure=allow_insecure) is None) is ok


def test_loopback_hosts() -> None:
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("128.0.0.1") and not is_loopback_host("example.com")


def test_discovery_url_drops_one_trailing_slash() -> None:
    assert discovery_url("https://idp.example") == "https://idp.example/.well-known/openid-configuration"
    assert discovery_url("https://idp.example/realms/x/") == (
        "https://idp.example/realms/x/.well-known/openid-configuration"
    )


def test_remote_source_refuses_bad_configuration() -> None:
    common: dict[str, Any] = {"algorithms": ["RS256"], "options": options()}
    with pytest.raises(ValueError, match="exactly one"):
        RemoteJWKS("p", jwks_uri="https://a/jwks", issuer="https://a", discovery=True, **common)
    with pytest.raises(ValueError, match="exactly one"):
        RemoteJWKS("p", jwks_uri=None, issuer="https://a", discovery=False, **common)
    with pytest.raises(ValueError, match="https"):
        RemoteJWKS("p", jwks_uri="http://idp.example/jwks", issuer=None, discovery=False, **common)
    with pytest.raises(ValueError, match="https"):
        RemoteJWKS("p", jwks_uri=None, issuer="http://idp.example", discovery=True, **common)
    assert RemoteJWKS(
        "p", jwks_uri="http://idp.example/jwks", issuer=None, discovery=False, allow_insecure=True, **common
    )


def test_fetch_outcomes_are_a_closed_set() -> None:
    assert len(set(FETCH_OUTCOMES)) == len(FETCH_OUTCOMES) and "ok" in FETCH_OUTCOMES


# ================================================================================ key index


def _vk(alg: str, kid: str | None) -> VerificationKey:
    from jwt.algorithms import get_default_algorithms

    return VerificationKey(
        alg=alg, algorithm=get_default_algorithms()[alg], prepared=None, kid=kid, kty="RSA"
    )


def _index(*, wildcard: bool) -> tuple[KeyIndex, list[VerificationKey]]:
    keys = [
        _vk("RS256", "a"),
        _vk("RS256", None),
        _vk("ES256", "b"),
        _vk("RS256", "c"),
        *(_vk("RS256", None) for _ in range(5)),
    ]
    return KeyIndex(keys, allowed=["RS256", "ES256", "PS256"], kidless_matches_any_kid=wildcard), keys


def test_key_index_lookup_by_kid() -> None:
    index, keys = _index(wildcard=False)
    assert index.candidates("a", "RS256") == (keys[0],)
    assert index.candidates("b", "ES256") == (keys[2],)
    assert index.candidates("unknown", "RS256") == ()
    assert len(index) == len(keys)


def test_key_index_kid_bound_to_another_algorithm() -> None:
    index, _ = _index(wildcard=False)
    with pytest.raises(AlgorithmNotAllowed):
        index.candidates("a", "ES256")
    with pytest.raises(AlgorithmNotAllowed):
        index.candidates("a", "PS256")


@pytest.mark.parametrize("alg", ["HS256", "none", "RS384", ""])
def test_key_index_algorithm_outside_allow_list(alg: str) -> None:
    index, _ = _index(wildcard=False)
    with pytest.raises(AlgorithmNotAllowed):
        index.candidates(None, alg)
    with pytest.raises(AlgorithmNotAllowed):
        index.candidates("a", alg)


def test_key_index_token_without_kid_tries_bounded_keys_of_its_alg() -> None:
    index, keys = _index(wildcard=False)
    candidates = index.candidates(None, "RS256")
    assert len(candidates) == MAX_KIDLESS_CANDIDATES == 4
    # Keys without kid first (document order), then keyed ones.
    assert list(candidates) == [keys[1], *keys[4:7]]
    assert index.candidates(None, "ES256") == (keys[2],)
    assert index.candidates(None, "PS256") == ()


def test_key_index_static_kidless_keys_serve_any_kid() -> None:
    index, keys = _index(wildcard=True)
    assert list(index.candidates("whatever", "RS256")) == [keys[1], *keys[4:7]]
    assert index.candidates("whatever", "ES256") == ()
    assert index.candidates("a", "RS256") == (keys[0],)


@pytest.mark.parametrize("kid", [1, ["a"], {"kid": "a"}, b"a"])
def test_key_index_non_string_kid_is_malformed_not_a_crash(kid: Any) -> None:
    index, _ = _index(wildcard=False)
    with pytest.raises(TokenMalformed):
        index.candidates(kid, "RS256")


async def test_static_keys_source() -> None:
    key = hmac_key(b"k" * 32, algorithm="HS256", allow_weak=False)
    source = StaticKeys("django", [key], algorithms=["HS256"], source="secret")
    assert source.candidates(None, "HS256") == (key,)
    assert source.candidates("any-kid", "HS256") == (key,)
    assert await source.refresh_on_miss() is False
    assert source.refresh_on_miss_sync() is False
    assert source.ready and source.keys == (key,)
    status = source.status()
    assert (status.provider, status.source, status.ready, status.keys) == ("django", "secret", True, 1)
    await source.start()
    await source.aclose()
    with pytest.raises(ValueError):
        StaticKeys("x", [], algorithms=["HS256"], source="secret")


# ========================================================================= remote lifecycle


async def test_start_returns_at_once_and_first_fetch_runs_in_background(
    idp: JWKSServer, sources: MakeSource
) -> None:
    key = idp.add_key("RS256")
    idp.delay = 0.3
    source = sources(idp)
    started = time.monotonic()
    await source.start()
    assert time.monotonic() - started < 0.2
    assert not source.ready
    with pytest.raises(KeysUnavailable) as info:
        source.candidates(key.kid, "RS256")
    assert 1 <= info.value.retry_after <= 300
    assert info.value.status == 503
    await wait_until(lambda: source.ready)
    assert signature_verifies(source, idp.mint(key))
    assert source.status().last_outcome == "ok"


async def test_rotation_new_kid_accepted_after_exactly_one_refetch(
    idp: JWKSServer, sources: MakeSource
) -> None:
    clock = FakeClock()
    old = idp.add_key("RS256", slot=0)
    source = sources(idp, clock=clock)
    assert await source.refresh()
    new = idp.add_key("ES256", slot=1)
    token = idp.mint(new)
    assert source.candidates(new.kid, "ES256") == ()
    clock.advance(1.5)  # past min_refresh_interval
    before = idp.fetch_count
    assert await source.refresh_on_miss() is True
    assert idp.fetch_count == before + 1
    assert signature_verifies(source, token)
    assert signature_verifies(source, idp.mint(old))


async def test_withdrawn_key_refused_after_the_next_refresh(idp: JWKSServer, sources: MakeSource) -> None:
    clock = FakeClock()
    withdrawn = idp.add_key("RS256", slot=0)
    kept = idp.add_key("ES256", slot=1)
    source = sources(idp, clock=clock)
    await source.refresh()
    token = idp.mint(withdrawn)
    idp.remove_key(withdrawn)
    assert signature_verifies(source, token)  # cached until the next refresh
    assert await source.refresh() is True
    assert source.candidates(withdrawn.kid, "RS256") == ()
    # A miss right after the refresh is inside the cooldown: no fetch, still unknown.
    count = idp.fetch_count
    assert await source.refresh_on_miss() is False
    assert idp.fetch_count == count
    assert source.candidates(withdrawn.kid, "RS256") == ()
    assert signature_verifies(source, idp.mint(kept))


async def test_unknown_kid_flood_costs_at_most_one_fetch_per_interval(
    idp: JWKSServer, sources: MakeSource
) -> None:
    key = idp.add_key("RS256")
    interval = 0.5
    source = sources(idp, min_refresh_interval=interval)
    await source.refresh()
    await asyncio.sleep(interval + 0.05)
    idp.delay = 0.1  # so the concurrent misses really overlap one fetch
    base = idp.fetch_count
    started = time.monotonic()

    async def miss() -> None:
        kid = secrets.token_hex(8)
        assert source.candidates(kid, "RS256") == ()
        await source.refresh_on_miss()
        assert source.candidates(kid, "RS256") == ()

    await asyncio.gather(*(miss() for _ in range(40)))
    assert idp.fetch_count - base == 1  # single flight
    while time.monotonic() - started < 1.6:
        await miss()
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - started
    assert idp.fetch_count - base <= 1 + elapsed / interval
    assert signature_verifies(source, idp.mint(key))


async def test_miss_inside_cooldown_answers_at_once_without_fetch(
    idp: JWKSServer, sources: MakeSource
) -> None:
    idp.add_key("RS256")
    source = sources(idp, min_refresh_interval=30)
    await source.refresh()
    count = idp.fetch_count
    started = time.monotonic()
    for _ in range(100):
        assert await source.refresh_on_miss() is False
    assert time.monotonic() - started < 0.5
    assert idp.fetch_count == count


async def test_concurrent_misses_join_the_fetch_in_flight(idp: JWKSServer, sources: MakeSource) -> None:
    idp.add_key("RS256")
    idp.delay = 0.3
    source = sources(idp, min_refresh_interval=0)
    refresh = asyncio.create_task(source.refresh())
    await asyncio.sleep(0.05)
    results = await asyncio.gather(*(source.refresh_on_miss() for _ in range(10)))
    assert await refresh is True
    assert results == [True] * 10  # they shared the fetch that installed the first keys
    assert idp.fetch_count == 1


async def test_slow_idp_never_stalls_lookups_of_known_kids(idp: JWKSServer, sources: MakeSource) -> None:
    key = idp.add_key("RS256")
    token = idp.mint(key)
    source = sources(idp, timeout=0.5, min_refresh_interval=0)
    await source.refresh()
    idp.delay = 3.0
    miss = asyncio.create_task(source.refresh_on_miss())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    for _ in range(1000):
        assert source.candidates(key.kid, "RS256")
    assert time.perf_counter() - started < 0.5  # no I/O, no waiting (generous bound)
    assert signature_verifies(source, token)
    started = time.monotonic()
    assert await miss is False
    assert time.monotonic() - started < 1.5  # bounded by jwks.timeout
    status = source.status()
    assert status.last_outcome == "timeout" and status.ready
    assert signature_verifies(source, token)


async def test_total_timeout_bounds_an_idp_that_drips_bytes(idp: JWKSServer, sources: MakeSource) -> None:
    idp.add_key("RS256")
    idp.drip = 0.05  # 16 bytes every 50 ms: each read is quick, the whole body takes seconds
    source = sources(idp, timeout=0.5)
    started = time.monotonic()
    assert await source.refresh() is False
    assert time.monotonic() - started < 1.5
    assert source.status().last_outcome == "timeout"


def _outage(kind: str, server: JWKSServer) -> None:
    if kind == "connect_error":
        server.go_down()
    elif kind == "http_status":
        server.serve_status(503)
    elif kind == "invalid_json":
        server.serve_html()
    else:
        server.delay = 2.0


def _recover(kind: str, server: JWKSServer) -> None:
    if kind == "connect_error":
        server.come_up()
    server.serve_ok()


@pytest.mark.parametrize("kind", ["connect_error", "http_status", "invalid_json", "timeout"])
async def test_idp_down_serves_stale_keys_within_max_stale_then_fails_closed(
    idp: JWKSServer, sources: MakeSource, kind: str
) -> None:
    clock = FakeClock()
    key = idp.add_key("RS256")
    token = idp.mint(key)
    source = sources(idp, clock=clock, default_ttl=10, max_stale=5)
    await source.refresh()
    assert source.status().expires_in == 10
    _outage(kind, idp)
    clock.advance(11)  # past the TTL
    assert await source.refresh() is False
    status = source.status()
    assert (status.last_outcome, status.stale, status.ready) == (kind, True, True)
    assert signature_verifies(source, token)  # stale keys still serve
    clock.advance(3.9)  # 14.9 s: still within ttl + max_stale
    assert signature_verifies(source, token)
    clock.advance(0.2)  # 15.1 s: beyond
    with pytest.raises(KeysUnavailable) as info:
        source.candidates(key.kid, "RS256")
    assert 1 <= info.value.retry_after <= 300
    assert not source.ready and not source.status().ready
    _recover(kind, idp)
    await source.refresh()
    assert source.status().last_outcome == "ok"
    assert signature_verifies(source, token)
    assert not source.status().stale


async def test_recovery_after_outage_is_automatic(idp: JWKSServer, sources: MakeSource) -> None:
    idp.cache_control = "max-age=1"
    idp.add_key("RS256")
    source = sources(idp, min_ttl=1, max_stale=30)
    await source.start()
    await wait_until(lambda: source.ready)
    idp.go_down()
    await wait_until(lambda: source.status().consecutive_failures >= 2)
    assert source.ready  # stale within max_stale
    rotated = idp.add_key("ES256", slot=1)
    idp.come_up()
    await wait_until(lambda: source.status().consecutive_failures == 0)
    assert source.status().last_outcome == "ok"
    assert signature_verifies(source, idp.mint(rotated))


async def test_idp_down_at_start_then_ready_when_it_answers(idp: JWKSServer, sources: MakeSource) -> None:
    key = idp.add_key("RS256")
    idp.go_down()
    source = sources(idp)
    await source.start()
    await wait_until(lambda: source.status().consecutive_failures >= 2)
    assert not source.ready
    with pytest.raises(KeysUnavailable):
        source.candidates(key.kid, "RS256")
    idp.come_up()
    await wait_until(lambda: source.ready)
    assert signature_verifies(source, idp.mint(key))


async def test_failed_fetches_back_off_exponentially_up_to_the_cap(
    idp: JWKSServer, sources: MakeSource
) -> None:
    # Deterministic: a frozen clock, and the retry delay read where clients see it, in the 503's
    # Retry-After = ceil(delay + timeout), delay = min(max, base * 2**(n-1)) * uniform(0.8, 1.0).
    # Whole seconds are precise enough with a 10 s base.
    clock = FakeClock()
    base, cap, timeout = 10.0, 160.0, 0.5
    idp.add_key("RS256")
    idp.serve_status(500)
    source = sources(idp, clock=clock, retry_backoff=base, retry_backoff_max=cap, timeout=timeout)
    delays: list[float] = []
    for failures in range(1, 16):
        assert await source.refresh() is False
        assert source.status().consecutive_failures == failures
        with pytest.raises(KeysUnavailable) as info:
            source.candidates("rs256-0", "RS256")
        delay = info.value.retry_after - timeout  # within [jittered delay, jittered delay + 1)
        nominal = min(cap, base * 2 ** (failures - 1))
        assert 0.8 * nominal <= delay < nominal + 1, (failures, delay, nominal)
        delays.append(delay)
    growing = delays[:5]  # 10, 20, 40, 80, 160 nominal
    for earlier, later in zip(growing, growing[1:], strict=False):
        assert later >= 1.3 * earlier, delays
    capped = delays[4:]
    assert max(capped) <= cap + 1, delays
    # Jittered: 11 draws from [128, 160] s all rounding to one whole second would be a fluke.
    assert len(set(capped)) > 1, delays
    # A success resets the schedule: the next failure waits the base delay again.
    idp.serve_ok()
    assert await source.refresh() is True
    assert source.status().consecutive_failures == 0
    idp.serve_status(500)
    assert await source.refresh() is False
    assert source.status().consecutive_failures == 1


async def test_background_retries_follow_the_backoff_schedule(idp: JWKSServer, sources: MakeSource) -> None:
    # The real background task against a real IdP answering 500: the gaps between the fetches
    # the IdP sees follow base * 2**n * uniform(0.8, 1.0), capped. A retry never comes early
    # (lower bounds are tight); the upper bounds allow for a busy machine.
    base, cap, margin = 0.1, 0.4, 0.25
    idp.serve_status(500)
    source = sources(idp, retry_backoff=base, retry_backoff_max=cap)
    await source.start()
    await idp.await_fetches(6, within=6)
    await source.aclose()
    times = idp.fetch_times[:6]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    for n, gap in enumerate(gaps):
        nominal = min(cap, base * 2**n)
        assert 0.8 * nominal - 0.005 <= gap <= nominal + margin, (n, gaps)
    assert gaps[2] >= 1.3 * gaps[1] and gaps[2] >= 1.3**2 * gaps[0], gaps
    assert max(gaps) <= cap + margin, gaps
    assert source.status().consecutive_failures >= 6


def _garbage() -> list[Any]:
    bad_only = json.dumps({"keys": [entry for _, entry in bad_jwks_entries()]}).encode()
    cases: list[tuple[str, Callable[[JWKSServer], None], str]] = [
        ("html", lambda s: s.serve_html(), "invalid_json"),
        ("truncated-json", lambda s: s.serve_invalid_json(), "invalid_json"),
        ("duplicate-members", lambda s: s.serve_body(b'{"keys": [], "keys": []}'), "invalid_json"),
        ("status-500", lambda s: s.serve_status(500), "http_status"),
        ("status-404", lambda s: s.serve_status(404), "http_status"),
        ("json-array", lambda s: s.serve_body(b"[1, 2]"), "invalid_jwks"),
        ("keys-not-array", lambda s: s.serve_body(b'{"keys": "x"}'), "invalid_jwks"),
        ("empty-set", lambda s: s.serve_body(b'{"keys": []}'), "invalid_jwks"),
        ("only-bad-keys", lambda s: s.serve_body(bad_only), "invalid_jwks"),
        ("redirect", lambda s: s.redirect_to(s.base_url + "/elsewhere.json"), "redirect"),
    ]
    return [pytest.param(change, outcome, id=name) for name, change, outcome in cases]


@pytest.mark.parametrize(("change", "outcome"), _garbage())
async def test_garbage_never_replaces_good_keys(
    idp: JWKSServer, sources: MakeSource, change: Callable[[JWKSServer], None], outcome: str
) -> None:
    key = idp.add_key("RS256")
    source = sources(idp)
    await source.refresh()
    change(idp)
    assert await source.refresh() is False
    assert source.status().last_outcome == outcome
    assert source.status().keys == 1
    assert signature_verifies(source, idp.mint(key))


async def test_redirect_is_not_followed(idp: JWKSServer, sources: MakeSource) -> None:
    idp.add_key("RS256")
    idp.redirect_to(idp.base_url + "/elsewhere.json")
    source = sources(idp)
    assert await source.refresh() is False
    assert idp.request_count("/elsewhere.json") == 0
    assert not source.ready


@pytest.mark.parametrize("omit_length", [False, True], ids=["content-length", "streamed"])
async def test_oversized_document_refused_and_old_keys_kept(
    idp: JWKSServer, sources: MakeSource, omit_length: bool
) -> None:
    key = idp.add_key("RS256")
    source = sources(idp)
    await source.refresh()
    only_in_huge = new_signing_key("ES256", slot=2)
    idp.serve_huge(3 * 1024 * 1024, with_key=only_in_huge, omit_length=omit_length)
    assert await source.refresh() is False
    assert source.status().last_outcome == "too_large"
    assert source.candidates(only_in_huge.kid, "ES256") == ()
    assert signature_verifies(source, idp.mint(key))


async def test_document_just_under_the_cap_is_accepted(idp: JWKSServer, sources: MakeSource) -> None:
    idp.add_key("RS256")
    size = len(json.dumps(idp.jwks()).encode())
    assert await sources(idp, max_bytes=size).refresh() is True
    assert await sources(idp, max_bytes=size - 1).refresh() is False


# ------------------------------------------------------------------------------- discovery


async def test_discovery_finds_the_jwks(idp: JWKSServer, sources: MakeSource) -> None:
    key = idp.add_key("RS256")
    source = sources(idp, discovery=True)
    assert source.status().source == "discovery"
    assert await source.refresh() is True
    assert (idp.discovery_count, idp.fetch_count) == (1, 1)
    assert signature_verifies(source, idp.mint(key))
    await source.refresh()
    assert (idp.discovery_count, idp.fetch_count) == (1, 2)  # the jwks_uri is remembered


async def test_discovery_with_trailing_slash_issuer(idp: JWKSServer, sources: MakeSource) -> None:
    idp.add_key("RS256")
    issuer = idp.base_url + "/"
    idp.discovery_issuer = issuer
    source = sources(idp, discovery=True, issuer=issuer)
    assert await source.refresh() is True


@pytest.mark.parametrize("variant", ["trailing-slash", "upper-case", "other-host", "missing", "not-a-string"])
async def test_discovery_issuer_must_match_exactly(
    idp: JWKSServer, sources: MakeSource, variant: str
) -> None:
    idp.add_key("RS256")
    document: dict[str, Any] = {"jwks_uri": idp.jwks_uri}
    if variant == "trailing-slash":
        document["issuer"] = idp.issuer + "/"
    elif variant == "upper-case":
        document["issuer"] = idp.issuer.upper()
    elif variant == "other-host":
        document["issuer"] = "https://evil.example"
    elif variant == "not-a-string":
        document["issuer"] = [idp.issuer]
    idp.respond(DISCOVERY_PATH, Response(200, json.dumps(document).encode()))
    source = sources(idp, discovery=True)
    assert await source.refresh() is False
    assert source.status().last_outcome == "issuer_mismatch"
    assert idp.fetch_count == 0 and not source.ready


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        (b"<html></html>", "discovery_invalid"),
        (b"[]", "discovery_invalid"),
        (None, "discovery_invalid"),  # no jwks_uri
        ("http://jwks.example.com/keys", "insecure_url"),
        ("ftp://127.0.0.1/keys", "insecure_url"),
        (42, "discovery_invalid"),
    ],
)
async def test_discovery_document_problems(
    idp: JWKSServer, sources: MakeSource, body: bytes | str | int | None, outcome: str
) -> None:
    if isinstance(body, bytes):
        idp.respond(DISCOVERY_PATH, Response(200, body))
    else:
        document: dict[str, Any] = {"issuer": idp.issuer}
        if body is not None:
            document["jwks_uri"] = body
        idp.respond(DISCOVERY_PATH, Response(200, json.dumps(document).encode()))
    source = sources(idp, discovery=True)
    assert await source.refresh() is False
    assert source.status().last_outcome == outcome
    assert idp.fetch_count == 0


async def test_discovery_is_repeated_after_a_failed_fetch(idp: JWKSServer, sources: MakeSource) -> None:
    idp.add_key("RS256")
    source = sources(idp, discovery=True)
    await source.refresh()
    idp.serve_status(503)
    assert await source.refresh() is False
    idp.serve_ok()
    assert await source.refresh() is False  # same document as before: keys unchanged
    assert source.status().last_outcome == "ok"
    assert idp.discovery_count == 2


# ------------------------------------------------------------------------------ caching


@pytest.mark.parametrize(
    ("header", "settings", "ttl"),
    [
        ("max-age=2", {}, 2),
        ("max-age=100000", {"max_ttl": 50}, 50),
        ("max-age=0", {"min_ttl": 3}, 3),
        (None, {"default_ttl": 42}, 42),
        ("no-cache", {"min_ttl": 5}, 5),
        ("public, max-age=30, must-revalidate", {}, 30),
    ],
)
async def test_cache_control_max_age_sets_the_ttl(
    idp: JWKSServer, sources: MakeSource, header: str | None, settings: dict[str, float], ttl: float
) -> None:
    clock = FakeClock()
    idp.add_key("RS256")
    idp.cache_control = header
    source = sources(idp, clock=clock, **settings)
    await source.refresh()
    assert source.status().expires_in == ttl


async def test_background_refresh_happens_before_expiry(idp: JWKSServer, sources: MakeSource) -> None:
    idp.cache_control = "max-age=2"
    idp.add_key("RS256")
    source = sources(idp, min_ttl=1)
    await source.start()
    await idp.await_fetches(2, within=4)
    first, second = idp.fetch_times[:2]
    assert 1.2 <= second - first <= 1.95  # refreshed at 75-85 % of the TTL
    await wait_until(lambda: source.status().last_outcome == "ok")
    assert not source.status().stale


async def test_aclose_stops_background_work(idp: JWKSServer, sources: MakeSource) -> None:
    idp.cache_control = "max-age=1"
    idp.add_key("RS256")
    source = sources(idp, min_ttl=1)
    await source.start()
    await idp.await_fetches(1)
    await source.aclose()
    count = idp.fetch_count
    await asyncio.sleep(1.2)
    assert idp.fetch_count == count


# ------------------------------------------------------- generations (for the token cache)


def test_key_index_holds_compares_keys_by_value() -> None:
    published = new_signing_key("RS256", slot=0).public_jwk()

    def load(*entries: dict[str, Any]) -> KeyIndex:
        keyset = load_jwks({"keys": list(entries)}, algorithms=["RS256"], remote=True)
        return KeyIndex(keyset.keys, allowed=["RS256"], kidless_matches_any_kid=False)

    before = load(published)
    (key,) = before.keys
    assert load(published).holds(key)  # a re-fetch builds new objects for the same key
    assert not load({**published, "kid": "renamed"}).holds(key)
    other = new_signing_key("RS256", slot=1, kid=key.kid).public_jwk()
    assert not load(other).holds(key)  # same kid, other key material
    assert not load({**published, "alg": "PS256"}, other | {"kid": "x"}).holds(key)
    kidless = {k: v for k, v in published.items() if k != "kid"}
    (anonymous,) = load(kidless).keys
    assert load(kidless).holds(anonymous) and not load(published).holds(anonymous)


async def test_static_keys_never_change_generation() -> None:
    key = hmac_key(b"k" * 32, algorithm="HS256", allow_weak=False)
    source = StaticKeys("django", [key], algorithms=["HS256"], source="secret")
    assert source.generation == 0
    assert source.holds(hmac_key(b"k" * 32, algorithm="HS256", allow_weak=False))
    assert not source.holds(hmac_key(b"j" * 32, algorithm="HS256", allow_weak=False))
    assert source.usable_for() == float("inf")


async def test_generation_changes_exactly_when_another_key_set_is_installed(
    idp: JWKSServer, sources: MakeSource
) -> None:
    clock = FakeClock()
    first = idp.add_key("RS256", slot=0)
    source = sources(idp, clock=clock, default_ttl=10, max_stale=5)
    assert source.generation == 0 and source.usable_for() == 0.0
    assert not source.holds(_vk("RS256", first.kid))
    await source.refresh()
    assert source.generation == 1
    (key,) = source.keys
    await source.refresh()  # the same document again
    assert source.generation == 1
    idp.serve_html()
    await source.refresh()  # a failed fetch installs nothing
    assert source.generation == 1 and source.holds(key)
    idp.serve_ok()
    idp.add_key("ES256", slot=1)
    await source.refresh()
    assert source.generation == 2 and source.holds(key)  # a key added: ours is still there
    idp.remove_key(first)
    await source.refresh()
    assert source.generation == 3 and not source.holds(key)


async def test_usable_for_counts_down_to_max_stale(idp: JWKSServer, sources: MakeSource) -> None:
    clock = FakeClock()
    idp.add_key("RS256")
    source = sources(idp, clock=clock, default_ttl=10, max_stale=5)
    await source.refresh()
    (key,) = source.keys
    assert source.usable_for() == 15
    clock.advance(14)
    assert source.usable_for() == 1 and source.holds(key)
    clock.advance(2)
    assert source.usable_for() == 0 and not source.holds(key)


# --------------------------------------------------------------------------- key selection


async def test_tokens_without_kid(idp: JWKSServer, sources: MakeSource) -> None:
    anonymous = idp.add_key("RS256", slot=0, publish_kid=False)
    keyed = idp.add_key("ES256", slot=1)
    source = sources(idp)
    await source.refresh()
    claims = default_claims(idp.issuer)
    assert signature_verifies(source, anonymous.sign(claims, include_kid=False))
    assert signature_verifies(source, keyed.sign(claims, include_kid=False))
    # In a remote set a kid that matches no key is unknown (it may mean a rotation).
    stranger = new_signing_key("RS256", slot=0, kid="not-published")
    assert source.candidates(stranger.kid, "RS256") == ()


async def test_tokens_without_kid_try_at_most_four_keys(idp: JWKSServer, sources: MakeSource) -> None:
    for slot in range(6):
        idp.add_key("ES256", slot=slot, publish_kid=False)
    source = sources(idp)
    await source.refresh()
    assert source.status().keys == 6
    assert len(source.candidates(None, "ES256")) == MAX_KIDLESS_CANDIDATES


async def test_kid_bound_to_another_algorithm_is_refused(idp: JWKSServer, sources: MakeSource) -> None:
    key = idp.add_key("RS256")
    source = sources(idp, algorithms=("RS256", "PS256", "ES384"))
    await source.refresh()
    claims = default_claims(idp.issuer)
    with pytest.raises(AlgorithmNotAllowed):
        signature_verifies(source, key.sign(claims, alg="PS256"))
    with pytest.raises(AlgorithmNotAllowed):
        source.candidates(key.kid, "ES384")
    with pytest.raises(AlgorithmNotAllowed):
        source.candidates(key.kid, "HS256")


async def test_bad_keys_mixed_with_good_do_not_poison_the_set(idp: JWKSServer, sources: MakeSource) -> None:
    good = [idp.add_key("RS256", slot=0), idp.add_key("ES256", slot=1), idp.add_key("EdDSA", slot=0)]
    bad = bad_jwks_entries()
    for _, entry in bad:
        idp.add_entry(entry)
    source = sources(idp)
    assert await source.refresh() is True
    status = source.status()
    assert (status.keys, status.rejected_keys) == (3, len(bad))
    for key in good:
        assert signature_verifies(source, idp.mint(key))
    for _, entry in bad:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        if isinstance(kid, str):
            for alg in ("RS256", "ES256"):
                assert source.candidates(kid, alg) == ()


async def test_duplicate_kid_keeps_the_previous_keys(
    idp: JWKSServer, sources: MakeSource, keys_log: pytest.LogCaptureFixture
) -> None:
    key = idp.add_key("RS256", slot=0)
    source = sources(idp)
    await source.refresh()
    idp.add_entry(new_signing_key("RS256", slot=1).public_jwk(kid=key.kid))
    keys_log.clear()
    assert await source.refresh() is False
    assert source.status().last_outcome == "invalid_jwks"
    assert signature_verifies(source, idp.mint(key))
    warnings = [r for r in keys_log.records if r.name == "gateway.keys" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in keys_log.records]
    message = warnings[0].getMessage()
    assert "provider=corp" in message
    assert "outcome=invalid_jwks" in message
    assert "duplicate_kid" in message
    # No key material: neither JWK members nor any published key value, anywhere in the log.
    logged = keys_log.text + "\n".join(r.getMessage() for r in keys_log.records)
    assert '"n":' not in logged and "'n':" not in logged
    published = idp.jwks()["keys"]
    assert len(published) == 2
    for entry in published:
        for member in ("n", "e", "x", "y"):
            value = entry.get(member)
            if isinstance(value, str) and len(value) > 8:
                assert value not in logged
                assert value[:32] not in logged


async def test_keys_are_per_provider(sources: MakeSource) -> None:
    with JWKSServer() as first, JWKSServer() as second:
        a = first.add_key("RS256", slot=0, kid="shared-name")
        second.add_key("RS256", slot=1, kid="shared-name")
        one, two = sources(first), sources(second)
        await one.refresh()
        await two.refresh()
        token = first.mint(a)
        assert signature_verifies(one, token)
        assert not signature_verifies(two, token)


async def test_events_report_fetches_and_keys(idp: JWKSServer, sources: MakeSource) -> None:
    events = Recorder()
    idp.add_key("RS256")
    source = sources(idp, events=events)
    await source.refresh()
    idp.serve_status(503)
    await source.refresh()
    assert [(p, o) for p, o, _ in events.fetches] == [("corp", "ok"), ("corp", "http_status")]
    assert all(0 <= seconds < 5 for _, _, seconds in events.fetches)
    assert events.keys == [("corp", 1)]


async def test_a_failing_event_hook_does_not_break_the_lifecycle(
    idp: JWKSServer, sources: MakeSource
) -> None:
    class Broken:
        def on_fetch(self, provider: str, outcome: str, seconds: float) -> None:
            raise RuntimeError("metrics down")

        def on_keys(self, provider: str, count: int) -> None:
            raise RuntimeError("metrics down")

    key = idp.add_key("RS256")
    source = sources(idp, events=Broken())
    assert await source.refresh() is True
    assert signature_verifies(source, idp.mint(key))


async def test_https_jwks_with_a_ca_bundle(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with JWKSServer(ssl_context=server_context) as idp:
        key = idp.add_key("RS256")
        assert idp.jwks_uri.startswith("https://")
        base = {"issuer": idp.issuer, "jwks_uri": idp.jwks_uri, "algorithms": ["RS256"], "audience": "any"}
        trusted = build_key_source(
            "tls", Provider.model_validate({**base, "jwks": {"ca_file": str(ca_file)}})
        )
        untrusted = build_key_source("tls", Provider.model_validate(base))
        assert isinstance(trusted, RemoteJWKS) and isinstance(untrusted, RemoteJWKS)
        try:
            assert await trusted.refresh() is True
            assert signature_verifies(trusted, idp.mint(key))
            assert await untrusted.refresh() is False
            assert untrusted.status().last_outcome == "connect_error"
        finally:
            await trusted.aclose()
            await untrusted.aclose()


# ============================================================================ sync twins (WSGI)


def _sync_source(idp: JWKSServer, **overrides: Any) -> RemoteJWKS:
    return RemoteJWKS(
        "corp",
        jwks_uri=idp.jwks_uri,
        issuer=idp.issuer,
        discovery=False,
        algorithms=["RS256", "ES256"],
        options=options(**overrides),
    )


def test_sync_fetch_and_single_flight_refresh_on_miss(idp: JWKSServer) -> None:
    key = idp.add_key("RS256")
    source = _sync_source(idp, min_refresh_interval=0.5)
    try:
        assert source.fetch_sync() is True
        assert signature_verifies(source, idp.mint(key))
        time.sleep(0.55)
        idp.delay = 0.2
        base = idp.fetch_count
        results: list[bool] = []
        threads = [
            threading.Thread(target=lambda: results.append(source.refresh_on_miss_sync())) for _ in range(20)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert idp.fetch_count == base + 1
        assert len(results) == 20
        assert source.refresh_on_miss_sync() is False  # inside the cooldown: no fetch
        assert idp.fetch_count == base + 1
        idp.delay = 0
        rotated = idp.add_key("ES256", slot=1)
        time.sleep(0.55)
        assert source.refresh_on_miss_sync() is True
        assert signature_verifies(source, idp.mint(rotated))
    finally:
        source.close()


def test_sync_background_thread_refreshes_and_stops(idp: JWKSServer) -> None:
    idp.cache_control = "max-age=1"
    idp.add_key("RS256")
    source = _sync_source(idp)
    try:
        source.start_thread()
        idp.wait_for_fetches(2, timeout=4)
        assert source.ready
    finally:
        source.close()
    count = idp.fetch_count
    time.sleep(1.1)
    assert idp.fetch_count == count


def test_sync_fetch_problems_keep_old_keys(idp: JWKSServer) -> None:
    key = idp.add_key("RS256")
    source = _sync_source(idp)
    try:
        source.fetch_sync()
        idp.serve_huge(3 * 1024 * 1024, omit_length=True)
        assert source.fetch_sync() is False
        assert source.status().last_outcome == "too_large"
        idp.serve_ok()
        idp.drip = 0.05
        started = time.monotonic()
        assert source.fetch_sync() is False
        assert time.monotonic() - started < 1.5
        assert source.status().last_outcome == "timeout"
        idp.drip = 0
        idp.redirect_to(idp.base_url + "/elsewhere.json")
        assert source.fetch_sync() is False
        assert source.status().last_outcome == "redirect"
        assert signature_verifies(source, idp.mint(key))
    finally:
        source.close()


def test_sync_discovery(idp: JWKSServer) -> None:
    key = idp.add_key("RS256")
    source = RemoteJWKS(
        "corp", jwks_uri=None, issuer=idp.issuer, discovery=True, algorithms=["RS256"], options=options()
    )
    try:
        assert source.fetch_sync() is True
        assert signature_verifies(source, idp.mint(key))
    finally:
        source.close()


# ======================================================================= building from config


def _provider(**fields: Any) -> Provider:
    return Provider.model_validate({"issuer": "https://idp.example", "audience": "any", **fields})


def _config_error(provider: Provider, **kwargs: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build_key_source("corp", provider, **kwargs)
    return info.value


def test_build_remote_source_is_unstarted() -> None:
    source = build_key_source("corp", _provider(jwks_uri="https://idp.example/jwks", algorithms=["RS256"]))
    assert isinstance(source, RemoteJWKS) and source.source == "jwks_uri" and not source.ready
    source = build_key_source("corp", _provider(discovery=True, algorithms=["RS256"]))
    assert isinstance(source, RemoteJWKS) and source.source == "discovery"


def test_build_refuses_insecure_urls() -> None:
    error = _config_error(_provider(jwks_uri="http://idp.example/jwks", algorithms=["RS256"]))
    assert error.path == "providers.corp.jwks_uri" and "https" in error.message
    error = _config_error(_provider(issuer="http://idp.example", discovery=True, algorithms=["RS256"]))
    assert error.path == "providers.corp.issuer"
    allowed = _provider(jwks_uri="http://idp.example/jwks", algorithms=["RS256"], allow_insecure_jwks=True)
    assert isinstance(build_key_source("corp", allowed), RemoteJWKS)


def test_build_refuses_an_unreadable_ca_bundle(tmp_path: Path) -> None:
    missing = _provider(
        jwks_uri="https://idp.example/jwks", algorithms=["RS256"], jwks={"ca_file": str(tmp_path / "x")}
    )
    assert _config_error(missing).path == "providers.corp.jwks.ca_file"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    bad = _provider(jwks_uri="https://idp.example/jwks", algorithms=["RS256"], jwks={"ca_file": str(garbage)})
    assert _config_error(bad).path == "providers.corp.jwks.ca_file"


def test_build_public_key_file(tmp_path: Path) -> None:
    signer = new_signing_key("RS256")
    pem = signer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "legacy.pem").write_bytes(pem)
    events = Recorder()
    source = build_key_source(
        "legacy",
        _provider(public_key_file="legacy.pem", algorithms=["RS256"]),
        events=events,
        base_dir=tmp_path,
    )
    assert isinstance(source, StaticKeys) and source.source == "public_key_file"
    # A static key without kid serves the IdP's tokens whatever kid they carry.
    assert signature_verifies(source, signer.sign(default_claims("https://idp.example")))
    assert events.keys == [("legacy", 1)]
    error = _config_error(_provider(public_key_file=str(tmp_path / "absent.pem"), algorithms=["RS256"]))
    assert error.path == "providers.corp.public_key_file" and "cannot read" in error.message
    small = (
        rsa_private_key(0, 1024)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "small.pem").write_bytes(small)
    error = _config_error(_provider(public_key_file=str(tmp_path / "small.pem"), algorithms=["RS256"]))
    assert "rsa_too_small" in error.message


def test_build_jwks_file(tmp_path: Path) -> None:
    a, b = new_signing_key("RS256"), new_signing_key("ES256")
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [a.public_jwk(), b.public_jwk()]}))
    source = build_key_source("corp", _provider(jwks_file=str(path), algorithms=["RS256", "ES256"]))
    assert isinstance(source, StaticKeys) and len(source.keys) == 2
    path.write_text(json.dumps({"keys": [a.public_jwk(use="enc"), {"kty": "oct", "k": "AAAA"}]}))
    error = _config_error(_provider(jwks_file=str(path), algorithms=["RS256"]))
    assert error.path == "providers.corp.jwks_file"
    assert "use_enc" in error.message and "no_usable_keys" in error.message


def test_build_hmac_secret() -> None:
    secret = "s3cret-" * 5
    source = build_key_source("django", _provider(issuer=None, secret=secret, algorithms=["HS256"]))
    token = jwt.encode({"sub": "1"}, secret, algorithm="HS256")
    assert isinstance(source, StaticKeys) and signature_verifies(source, token)
    error = _config_error(_provider(secret="tooshort", algorithms=["HS256"]))
    assert error.path == "providers.corp.secret"
    assert "tooshort" not in str(error) and "allow_weak_secret" in error.message
    assert build_key_source(
        "corp", _provider(secret="tooshort", algorithms=["HS256"], allow_weak_secret=True)
    )
    pem = (
        new_signing_key("RS256")
        .private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    error = _config_error(_provider(secret=pem, algorithms=["HS256"], allow_weak_secret=True))
    assert "secret_is_public_key" in error.message and "BEGIN" not in str(error)
    assert "hmac_too_short" in _config_error(_provider(secret="", algorithms=["HS256"])).message


def test_build_hmac_secret_file_strips_one_trailing_newline(tmp_path: Path) -> None:
    secret = b"k" * 32
    (tmp_path / "secret").write_bytes(secret + b"\n")
    source = build_key_source(
        "corp",
        _provider(secret_file="secret", algorithms=["HS512"], allow_weak_secret=True),
        base_dir=tmp_path,
    )
    assert isinstance(source, StaticKeys) and source.keys[0].prepared == secret
    (tmp_path / "crlf").write_bytes(b"k" * 64 + b"\r\n")
    source = build_key_source("corp", _provider(secret_file=str(tmp_path / "crlf"), algorithms=["HS512"]))
    assert isinstance(source, StaticKeys) and source.keys[0].prepared == b"k" * 64
    error = _config_error(_provider(secret_file=str(tmp_path / "absent"), algorithms=["HS256"]))
    assert error.path == "providers.corp.secret_file"


# ============================================================================ reload reuse


async def test_registry_reuses_unchanged_remote_sources(tmp_path: Path) -> None:
    remote = {
        "issuer": "https://idp.example",
        "jwks_uri": "https://idp.example/jwks",
        "algorithms": ["RS256"],
    }
    secret = {"issuer": None, "secret": "x" * 32, "algorithms": ["HS256"], "audience": "any"}
    registry = KeySourceRegistry()
    first = registry.plan(
        {
            "corp": Provider.model_validate({**remote, "audiences": ["a"]}),
            "django": Provider.model_validate(secret),
        }
    )
    corp = first.sources["corp"]
    assert isinstance(corp, RemoteJWKS) and first.to_start == (corp,) and first.retired == ()
    registry.commit(first)

    # Audiences are not part of the key source: the warm cache is kept.
    second = registry.plan(
        {
            "corp": Provider.model_validate({**remote, "audiences": ["b"]}),
            "django": Provider.model_validate(secret),
        }
    )
    assert second.sources["corp"] is corp and second.to_start == () and second.retired == ()
    assert second.sources["django"] is not first.sources["django"]  # static: always re-read

    # A plan that is never committed changes nothing.
    changed = Provider.model_validate({**remote, "audiences": ["a"], "jwks": {"timeout": 2}})
    third = registry.plan({"corp": changed})
    assert third.sources["corp"] is not corp and third.retired == (corp,)
    again = registry.plan({"corp": Provider.model_validate({**remote, "audiences": ["a"]})})
    assert again.sources["corp"] is corp

    registry.commit(third)
    assert registry.remote_sources() == (third.sources["corp"],)
    gone = registry.plan({})
    assert gone.retired == (third.sources["corp"],)
    for source in (corp, third.sources["corp"]):
        assert isinstance(source, RemoteJWKS)
        await source.aclose()


def test_registry_plan_raises_config_errors_without_changing_state() -> None:
    registry = KeySourceRegistry()
    good = Provider.model_validate(
        {
            "issuer": "https://idp.example",
            "jwks_uri": "https://idp.example/jwks",
            "algorithms": ["RS256"],
            "audience": "any",
        }
    )
    registry.commit(registry.plan({"corp": good}))
    before = registry.remote_sources()
    with pytest.raises(ConfigError):
        registry.plan(
            {
                "corp": good,
                "weak": Provider.model_validate(
                    {"issuer": None, "secret": "x", "algorithms": ["HS256"], "audience": "any"}
                ),
            }
        )
    assert registry.remote_sources() == before


def test_config_error_never_contains_the_secret() -> None:
    secret = b64url(b"\x01" * 10)
    error = _config_error(_provider(secret=secret, algorithms=["HS256"]))
    assert secret not in str(error)
