"""Key sources: static keys, and the remote JWKS lifecycle.

Both implement :class:`gateway.auth.types.KeyLookup`. ``candidates()`` never performs I/O: it
reads an immutable :class:`KeyIndex` published by the fetch path, so requests never wait on the
IdP.

The remote lifecycle (:class:`RemoteJWKS`), in short:

- **Fetch** with httpx, off the request path: one total timeout for discovery + JWKS, a size cap
  enforced while streaming, no redirects followed, ``https`` required except for loopback hosts
  (127.0.0.0/8, ::1, ``localhost``) unless ``allow_insecure_jwks``, optional CA bundle. Proxy
  environment variables are ignored (``trust_env=False``): the IdP is reached directly.
- **Discovery**: ``{issuer}/.well-known/openid-configuration`` (one trailing ``/`` of the issuer
  dropped first); its ``issuer`` must equal the configured one exactly; its ``jwks_uri`` obeys the
  same https rule. The discovered URI is re-discovered after any failed fetch and every
  ``max_ttl``.
- **Cache**: TTL from ``Cache-Control: max-age`` clamped to ``[min_ttl, max_ttl]``; ``no-cache``
  or ``no-store`` without max-age means ``min_ttl``; otherwise ``default_ttl`` (also clamped; never
  below 1 s). A background task refreshes at 75-85 % of the TTL, so no request waits.
- **Unknown kid**: :meth:`RemoteJWKS.refresh_on_miss` joins a fetch already in flight, else
  starts one unless any fetch started less than ``min_refresh_interval`` ago (then it returns
  ``False`` at once: the verifier answers ``unknown_kid``). A flood of random kids therefore
  costs the IdP at most one fetch per interval.
- **Failure** (IdP down, timeout, HTTP error, garbage, oversized, invalid or suspect JWKS): the
  installed keys stay. They are usable until ``last_success + ttl + max_stale`` (wall time
  measured on the monotonic clock); after that ``candidates()`` raises
  :class:`~gateway.errors.KeysUnavailable` (503 + Retry-After, never 401) until a fetch
  succeeds. Failed fetches are retried in the background with exponential backoff
  (``retry_backoff`` doubling up to ``retry_backoff_max``, jittered). Recovery is automatic.
- **Rotation**: a new kid is picked up by the one re-fetch it triggers; a withdrawn kid is gone
  as soon as a fetch installs a set without it. Each source has a ``generation`` counter, bumped
  whenever a different set is installed, and :meth:`holds` / :meth:`usable_for`, so that the
  verifier's token cache can tell that a cached token's key was withdrawn (or went stale).

Key selection (:class:`KeyIndex`): a token with a ``kid`` gets the key with that kid (or
:class:`~gateway.errors.AlgorithmNotAllowed` when it is bound to another algorithm). A token
without ``kid`` is tried against the keys bound to its ``alg``: keys without kid first, then the
others, in document order, at most :data:`MAX_KIDLESS_CANDIDATES`. For static sources a key
without kid also serves tokens whose kid matches no key (a PEM key has no kid, the IdP's tokens
may still carry one); for a remote JWKS an unmatched kid is unknown, so it can trigger the
re-fetch that picks up a rotation.

Never logged: key material, secrets, whole documents. Logged: provider, outcome, kid (repr) and
rejection reasons, URLs without query.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Final, Protocol

import httpx

from gateway.auth.jwk import (
    MAX_KEY_FILE_BYTES,
    JWKSInvalid,
    KeyRejected,
    RejectedKey,
    hmac_key,
    load_jwk_file,
    load_jwks,
    load_pem_public_key_file,
    parse_json_document,
)
from gateway.auth.types import VerificationKey
from gateway.config.models import JWKSOptions, Provider
from gateway.errors import AlgorithmNotAllowed, ConfigError, KeysUnavailable, TokenMalformed

__all__ = [
    "FETCH_OUTCOMES",
    "MAX_KIDLESS_CANDIDATES",
    "KeyEvents",
    "KeyIndex",
    "KeySource",
    "KeySourcePlan",
    "KeySourceRegistry",
    "KeyStatus",
    "RemoteJWKS",
    "StaticKeys",
    "build_key_source",
    "check_fetch_url",
    "discovery_url",
    "is_loopback_host",
    "ttl_from_cache_control",
]

_log = logging.getLogger("gateway.keys")

#: A token without kid is tried against at most this many keys (bounds the CPU an
#: attacker can make one request cost).
MAX_KIDLESS_CANDIDATES: Final = 4

#: Every ``outcome`` passed to :meth:`KeyEvents.on_fetch` (a closed set: safe as a metric label).
FETCH_OUTCOMES: Final = (
    "ok",
    "timeout",
    "connect_error",
    "transport_error",
    "http_status",
    "redirect",
    "too_large",
    "invalid_json",
    "invalid_jwks",
    "discovery_invalid",
    "issuer_mismatch",
    "insecure_url",
    "error",
)

_MIN_TTL_FLOOR: Final = 1.0
_REFRESH_AT: Final = (0.75, 0.85)
_MAX_RETRY_AFTER: Final = 300
_REQUEST_HEADERS: Final = {
    "Accept": "application/json, application/jwk-set+json",
    # JWKS are small; refusing compression keeps the size cap meaningful (no decompression bombs).
    "Accept-Encoding": "identity",
}
_MAX_AGE: Final = re.compile(r'(?:^|,)\s*max-age\s*=\s*"?(\d+)"?\s*(?=,|$)', re.IGNORECASE)
_NO_CACHE: Final = re.compile(r"(?:^|,)\s*no-(?:cache|store)\s*(?=,|=|$)", re.IGNORECASE)


class KeyEvents(Protocol):
    """Hooks for metrics (the operations layer implements them; calls must be cheap, never raise)."""

    def on_fetch(self, provider: str, outcome: str, seconds: float) -> None:
        """One fetch attempt ended with ``outcome`` (one of :data:`FETCH_OUTCOMES`)."""

    def on_keys(self, provider: str, count: int) -> None:
        """A key set of ``count`` usable keys was installed."""


# ------------------------------------------------------------------------------------ key index


def _same_key(a: VerificationKey, b: VerificationKey) -> bool:
    # cryptography's public keys compare by value (and are not hashable); HMAC keys are bytes.
    return a is b or (a.alg == b.alg and a.kid == b.kid and a.kty == b.kty and a.prepared == b.prepared)


class KeyIndex:
    """An immutable lookup table over one key set, built when the set is installed."""

    __slots__ = ("_allowed", "_by_alg", "_by_kid", "_kidless_by_alg", "keys")

    def __init__(
        self, keys: Iterable[VerificationKey], *, allowed: Iterable[str], kidless_matches_any_kid: bool
    ) -> None:
        self.keys: tuple[VerificationKey, ...] = tuple(keys)
        self._allowed = frozenset(allowed)
        # One-element tuples built once, so a lookup allocates nothing.
        self._by_kid: dict[str, tuple[VerificationKey]] = {
            k.kid: (k,) for k in self.keys if k.kid is not None
        }
        kidless = [k for k in self.keys if k.kid is None]
        ordered = kidless + [k for k in self.keys if k.kid is not None]
        self._by_alg = self._group(ordered)
        self._kidless_by_alg = self._group(kidless) if kidless_matches_any_kid else {}

    @staticmethod
    def _group(keys: Sequence[VerificationKey]) -> dict[str, tuple[VerificationKey, ...]]:
        groups: dict[str, list[VerificationKey]] = {}
        for key in keys:
            groups.setdefault(key.alg, []).append(key)
        return {alg: tuple(group[:MAX_KIDLESS_CANDIDATES]) for alg, group in groups.items()}

    def __len__(self) -> int:
        return len(self.keys)

    def holds(self, key: VerificationKey) -> bool:
        """True when this set contains ``key``: same kid, algorithm, type and key material.

        Compared by value, not identity: a re-fetched document builds new key objects for the
        keys it still publishes.
        """
        if key.kid is not None:
            found = self._by_kid.get(key.kid)
            return found is not None and _same_key(found[0], key)
        return any(_same_key(candidate, key) for candidate in self.keys if candidate.kid is None)

    def candidates(self, kid: str | None, alg: str) -> Sequence[VerificationKey]:
        """Keys to try for a token (see :class:`gateway.auth.types.KeyLookup`)."""
        if alg not in self._allowed:
            raise AlgorithmNotAllowed("the token's algorithm is not allowed for this issuer")
        if kid is None:
            return self._by_alg.get(alg, ())
        if type(kid) is not str:  # a dict lookup with an unhashable kid would be a 500
            raise TokenMalformed("the kid header must be a string")
        found = self._by_kid.get(kid)
        if found is not None:
            if found[0].alg != alg:
                raise AlgorithmNotAllowed("the key for this kid is bound to another algorithm")
            return found
        return self._kidless_by_alg.get(alg, ())


# --------------------------------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """A snapshot of one key source, for /readyz and metrics. Times are in seconds."""

    provider: str
    #: ``jwks_uri``, ``discovery``, ``public_key_file``, ``jwks_file``, ``secret`` or ``secret_file``.
    source: str
    #: Usable keys are installed (static sources: always).
    ready: bool
    keys: int
    #: Entries of the installed document that were skipped.
    rejected_keys: int = 0
    #: Seconds since the installed set was fetched (``None``: never loaded, or static).
    age: float | None = None
    #: Seconds until the TTL runs out (negative: serving stale keys).
    expires_in: float | None = None
    #: Past the TTL but within ``max_stale``.
    stale: bool = False
    last_outcome: str | None = None
    #: Seconds since the last fetch attempt started.
    last_attempt_age: float | None = None
    consecutive_failures: int = 0


# --------------------------------------------------------------------------------- static keys


class StaticKeys:
    """Keys from configuration (PEM file, JWK/JWKS file, HMAC secret): never re-fetched.

    Has the same lifecycle methods as :class:`RemoteJWKS` (no-ops) so callers can treat every
    source alike.
    """

    def __init__(
        self, provider: str, keys: Sequence[VerificationKey], *, algorithms: Iterable[str], source: str
    ) -> None:
        if not keys:
            raise ValueError("a static key source needs at least one key")
        self.provider = provider
        self.source = source
        self._index = KeyIndex(keys, allowed=algorithms, kidless_matches_any_kid=True)
        #: Bumped whenever the installed key set changes: static keys never change.
        self.generation = 0

    @property
    def keys(self) -> tuple[VerificationKey, ...]:
        """The keys, in load order."""
        return self._index.keys

    def candidates(self, kid: str | None, alg: str) -> Sequence[VerificationKey]:
        """Keys to try for a token; never raises KeysUnavailable."""
        return self._index.candidates(kid, alg)

    def holds(self, key: VerificationKey) -> bool:
        """True when ``key`` is one of these keys."""
        return self._index.holds(key)

    def usable_for(self) -> float:
        """Static keys stay usable for ever."""
        return math.inf

    async def refresh_on_miss(self) -> bool:
        """Static keys never change: always ``False``."""
        return False

    def refresh_on_miss_sync(self) -> bool:
        """Static keys never change: always ``False``."""
        return False

    @property
    def ready(self) -> bool:
        """Always true."""
        return True

    def status(self) -> KeyStatus:
        """The source's status (always ready)."""
        return KeyStatus(provider=self.provider, source=self.source, ready=True, keys=len(self._index))

    async def start(self) -> None:
        """Nothing to start."""

    async def aclose(self) -> None:
        """Nothing to close."""

    def start_thread(self) -> None:
        """Nothing to start."""

    def close(self) -> None:
        """Nothing to close."""


# --------------------------------------------------------------------------------- URL helpers


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1``."""
    if host.lower() == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_fetch_url(url: str, *, allow_insecure: bool) -> str | None:
    """Why ``url`` may not be fetched for keys, or ``None`` when it may."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "is not a valid URL"
    if parsed.scheme not in ("https", "http") or not parsed.host:
        return "must be an absolute http(s) URL"
    if parsed.userinfo:
        return "must not carry credentials"
    if parsed.scheme == "http" and not allow_insecure and not is_loopback_host(parsed.host):
        return "must use https (http only for loopback hosts, or with allow_insecure_jwks: true)"
    return None


def discovery_url(issuer: str) -> str:
    """The OIDC discovery URL of ``issuer`` (OIDC Discovery §4: one trailing ``/`` dropped)."""
    base = issuer[:-1] if issuer.endswith("/") else issuer
    return f"{base}/.well-known/openid-configuration"


def _loggable(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "<invalid url>"
    return str(parsed.copy_with(query=None, fragment=None, username=None, password=None))


def ttl_from_cache_control(
    header: str | None, *, default_ttl: float, min_ttl: float, max_ttl: float
) -> float:
    """The cache TTL for a response with this ``Cache-Control`` value (see module docstring)."""
    low = max(min_ttl, _MIN_TTL_FLOOR)
    high = max(max_ttl, low)
    ttl = default_ttl
    if header:
        match = _MAX_AGE.search(header)
        if match:
            ttl = float(match.group(1))
        elif _NO_CACHE.search(header):
            ttl = low
    return min(max(ttl, low), high)


# ---------------------------------------------------------------------------------- remote JWKS


class _FetchFailed(Exception):
    """A fetch attempt failed for a known reason (``outcome`` is one of FETCH_OUTCOMES)."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


@dataclass(frozen=True, slots=True)
class _Body:
    content: bytes
    cache_control: str | None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What one successful fetch installed; replaced as a whole, read without locks."""

    index: KeyIndex
    loaded_at: float
    expires_at: float
    usable_until: float
    rejected: int


def _classify(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, _FetchFailed):
        return exc.outcome, exc.detail
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout", "the fetch took longer than jwks.timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect_error", f"cannot connect: {type(exc).__name__}"
    if isinstance(exc, httpx.HTTPError):
        return "transport_error", type(exc).__name__
    return "error", type(exc).__name__


def _describe_rejected(rejected: Sequence[RejectedKey], limit: int = 8) -> str:
    parts = [
        f"#{r.index}" + (f" kid={r.kid[:64]!r}" if r.kid is not None else "") + f": {r.reason}"
        for r in rejected[:limit]
    ]
    if len(rejected) > limit:
        parts.append(f"... {len(rejected) - limit} more")
    return "; ".join(parts)


class RemoteJWKS:
    """A provider's keys from a ``jwks_uri`` or OIDC discovery, kept fresh in the background.

    Async hosts call :meth:`start` once (it returns at once; the first fetch runs in the
    background) and :meth:`aclose` at shutdown. WSGI hosts, which have no event loop, call
    :meth:`start_thread` and :meth:`close`, and :meth:`refresh_on_miss_sync` on an unknown kid.
    See the module docstring for the whole lifecycle.
    """

    def __init__(
        self,
        provider_name: str,
        *,
        jwks_uri: str | None,
        issuer: str | None,
        discovery: bool,
        algorithms: Sequence[str],
        options: JWKSOptions,
        allow_insecure: bool = False,
        events: KeyEvents | None = None,
        client: httpx.AsyncClient | None = None,
        sync_client: httpx.Client | None = None,
        ssl_context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if discovery == (jwks_uri is not None):
            raise ValueError("give exactly one of jwks_uri or discovery")
        if discovery:
            if not issuer:
                raise ValueError("discovery needs an issuer")
            first_url = discovery_url(issuer)
        else:
            assert jwks_uri is not None
            first_url = jwks_uri
        problem = check_fetch_url(first_url, allow_insecure=allow_insecure)
        if problem:
            raise ValueError(f"{'the discovery URL' if discovery else 'jwks_uri'} {problem}")
        if not algorithms:
            raise ValueError("algorithms must not be empty")
        self.provider = provider_name
        self.source = "discovery" if discovery else "jwks_uri"
        self._issuer = issuer
        self._discovery_url = first_url if discovery else None
        self._jwks_uri: str | None = jwks_uri
        self._discovered_at: float | None = None
        self._algorithms = tuple(algorithms)
        self._options = options
        self._allow_insecure = allow_insecure
        self._events = events
        self._client = client
        self._owns_client = client is None
        self._sync_client = sync_client
        self._owns_sync_client = sync_client is None
        self._ssl_context = ssl_context
        self._clock = clock
        self._random = random.Random()  # noqa: S311 - jitter, not security

        self._snap: _Snapshot | None = None
        self._digest: bytes | None = None
        #: Bumped each time a different key set is installed. The verifier's token cache
        #: remembers it, so a cached token whose key was withdrawn is verified afresh.
        self.generation = 0
        self._last_fetch_started: float | None = None
        self._last_outcome: str | None = None
        self._failures = 0
        self._next_attempt_at = clock()
        self._closed = False

        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[bool] | None = None

        self._sync_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._thread_wake = threading.Event()

    # -- the request path ---------------------------------------------------------------------

    def candidates(self, kid: str | None, alg: str) -> Sequence[VerificationKey]:
        """Keys to try for a token; no I/O. Raises KeysUnavailable when no usable set exists."""
        snap = self._snap
        if snap is None or self._clock() > snap.usable_until:
            raise KeysUnavailable(
                "the signing keys of this issuer are not available", retry_after=self._retry_after()
            )
        return snap.index.candidates(kid, alg)

    def holds(self, key: VerificationKey) -> bool:
        """True when ``key`` is in the installed set and that set is still usable (no I/O)."""
        snap = self._snap
        if snap is None or self._clock() > snap.usable_until:
            return False
        return snap.index.holds(key)

    def usable_for(self) -> float:
        """Seconds the installed set stays usable without a successful fetch (0: none)."""
        snap = self._snap
        return 0.0 if snap is None else max(0.0, snap.usable_until - self._clock())

    async def refresh_on_miss(self) -> bool:
        """After an unknown kid: join the fetch in flight, or start one unless in the cooldown.

        Returns True when a fetch installed a different key set. Bounded by ``jwks.timeout``.
        """
        task = self._inflight
        if task is not None and not task.done():
            return await asyncio.shield(task)
        if self._in_cooldown():
            return False
        return await self._fetch_shared()

    def refresh_on_miss_sync(self) -> bool:
        """:meth:`refresh_on_miss` for threads without an event loop (WSGI).

        Concurrent callers queue on one lock; those that waited for another caller's fetch
        report its result instead of fetching again.
        """
        digest_before = self._digest
        with self._sync_lock:
            if self._digest != digest_before:
                return True
            if self._in_cooldown():
                return False
            return self._fetch_sync_locked()

    # -- state ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True while a usable key set is installed (fresh, or stale within ``max_stale``)."""
        snap = self._snap
        return snap is not None and self._clock() <= snap.usable_until

    def status(self) -> KeyStatus:
        """Keys loaded, age, freshness and the last fetch outcome."""
        now = self._clock()
        snap = self._snap
        last = self._last_fetch_started
        return KeyStatus(
            provider=self.provider,
            source=self.source,
            ready=snap is not None and now <= snap.usable_until,
            keys=len(snap.index) if snap else 0,
            rejected_keys=snap.rejected if snap else 0,
            age=now - snap.loaded_at if snap else None,
            expires_in=snap.expires_at - now if snap else None,
            stale=snap is not None and snap.expires_at < now <= snap.usable_until,
            last_outcome=self._last_outcome,
            last_attempt_age=now - last if last is not None else None,
            consecutive_failures=self._failures,
        )

    @property
    def keys(self) -> tuple[VerificationKey, ...]:
        """The installed keys (possibly stale), in document order."""
        snap = self._snap
        return snap.index.keys if snap else ()

    def _in_cooldown(self) -> bool:
        last = self._last_fetch_started
        return last is not None and self._clock() - last < self._options.min_refresh_interval

    def _retry_after(self) -> int:
        wait = self._next_attempt_at - self._clock() + self._options.timeout
        return int(min(_MAX_RETRY_AFTER, max(1, math.ceil(wait))))

    # -- async lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background task: first fetch now, then refreshes and retries. Never blocks."""
        if self._runner is not None or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._runner = self._loop.create_task(self._run(), name=f"jwks:{self.provider}")

    async def aclose(self) -> None:
        """Stop the background work and close the HTTP clients this object created."""
        self._closed = True
        runner, self._runner = self._runner, None
        for task in (runner, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None
        self.close()

    async def refresh(self) -> bool:
        """Fetch now (joining a fetch in flight), ignoring the cooldown. True if keys changed."""
        return await self._fetch_shared()

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while not self._closed:
            wake.clear()
            delay = self._next_attempt_at - self._clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await wake.wait()
                continue
            await self._fetch_shared()

    async def _fetch_shared(self) -> bool:
        task = self._inflight
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._fetch_once())
            self._inflight = task
        # Shielded: a request that gives up waiting must not cancel the fetch others share.
        return await asyncio.shield(task)

    async def _fetch_once(self) -> bool:
        started = self._clock()
        self._last_fetch_started = started
        try:
            async with asyncio.timeout(self._options.timeout):
                uri = self._jwks_uri
                if uri is None or self._rediscovery_due(started):
                    assert self._discovery_url is not None
                    uri = self._accept_discovery(await self._get_async(self._discovery_url))
                body = await self._get_async(uri)
        except Exception as exc:  # every failure is an outcome, logged below
            return self._failed(started, exc)
        return self._accept_jwks(body, started)

    def _async_client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=self._tls(),
                follow_redirects=False,
                trust_env=False,
                timeout=httpx.Timeout(self._options.timeout),
            )
        return self._client

    async def _get_async(self, url: str) -> _Body:
        client = self._async_client()
        async with client.stream("GET", url, headers=_REQUEST_HEADERS, follow_redirects=False) as response:
            self._check_head(response)
            content = bytearray()
            async for chunk in response.aiter_bytes():
                content += chunk
                if len(content) > self._options.max_bytes:
                    raise _FetchFailed("too_large", f"document larger than {self._options.max_bytes} bytes")
            return _Body(bytes(content), response.headers.get("cache-control"))

    # -- sync lifecycle -----------------------------------------------------------------------

    def fetch_sync(self) -> bool:
        """Fetch now with a blocking client (no event loop needed). True if keys changed."""
        with self._sync_lock:
            return self._fetch_sync_locked()

    def start_thread(self) -> None:
        """Run the background refresh in a daemon thread (for hosts without an event loop)."""
        if self._thread is not None or self._closed:
            return
        self._thread = threading.Thread(target=self._thread_main, name=f"jwks:{self.provider}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the background thread and close the blocking client this object created."""
        self._closed = True
        self._thread_wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._options.timeout + 1)
        if self._sync_client is not None and self._owns_sync_client:
            self._sync_client.close()
            self._sync_client = None

    def _thread_main(self) -> None:
        while not self._closed:
            self._thread_wake.clear()
            delay = self._next_attempt_at - self._clock()
            if delay > 0:
                self._thread_wake.wait(delay)
                continue
            self.fetch_sync()

    def _fetch_sync_locked(self) -> bool:
        started = self._clock()
        self._last_fetch_started = started
        deadline = started + self._options.timeout
        try:
            uri = self._jwks_uri
            if uri is None or self._rediscovery_due(started):
                assert self._discovery_url is not None
                uri = self._accept_discovery(self._get_sync(self._discovery_url, deadline))
            body = self._get_sync(uri, deadline)
        except Exception as exc:  # every failure is an outcome, logged below
            return self._failed(started, exc)
        return self._accept_jwks(body, started)

    def _get_sync(self, url: str, deadline: float) -> _Body:
        if self._sync_client is None:
            self._sync_client = httpx.Client(verify=self._tls(), follow_redirects=False, trust_env=False)
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise _FetchFailed("timeout", "the fetch took longer than jwks.timeout")
        with self._sync_client.stream(
            "GET", url, headers=_REQUEST_HEADERS, follow_redirects=False, timeout=httpx.Timeout(remaining)
        ) as response:
            self._check_head(response)
            content = bytearray()
            for chunk in response.iter_bytes():
                content += chunk
                if len(content) > self._options.max_bytes:
                    raise _FetchFailed("too_large", f"document larger than {self._options.max_bytes} bytes")
                # httpx times each read, not the whole body: enforce the total between chunks.
                if self._clock() > deadline:
                    raise _FetchFailed("timeout", "the fetch took longer than jwks.timeout")
            return _Body(bytes(content), response.headers.get("cache-control"))

    # -- shared by both paths: check, parse, install, schedule ---------------------------------

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context(cafile=self._options.ca_file)
        return self._ssl_context

    def _check_head(self, response: httpx.Response) -> None:
        status = response.status_code
        if 300 <= status < 400:
            raise _FetchFailed("redirect", f"HTTP {status}: redirects are not followed")
        if status != 200:
            raise _FetchFailed("http_status", f"HTTP {status}")
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._options.max_bytes:
            raise _FetchFailed("too_large", f"document larger than {self._options.max_bytes} bytes")

    def _rediscovery_due(self, now: float) -> bool:
        return self._discovery_url is not None and (
            self._discovered_at is None or now - self._discovered_at > self._options.max_ttl
        )

    def _accept_discovery(self, body: _Body) -> str:
        try:
            document = parse_json_document(body.content)
        except JWKSInvalid:
            raise _FetchFailed("discovery_invalid", "the discovery document is not strict JSON") from None
        if not isinstance(document, Mapping):
            raise _FetchFailed("discovery_invalid", "the discovery document is not a JSON object")
        if document.get("issuer") != self._issuer:
            raise _FetchFailed("issuer_mismatch", "the discovery document names another issuer")
        uri = document.get("jwks_uri")
        if not isinstance(uri, str):
            raise _FetchFailed("discovery_invalid", "the discovery document has no jwks_uri")
        problem = check_fetch_url(uri, allow_insecure=self._allow_insecure)
        if problem:
            raise _FetchFailed("insecure_url", f"the discovered jwks_uri {problem}")
        self._jwks_uri = uri
        self._discovered_at = self._clock()
        return uri

    def _accept_jwks(self, body: _Body, started: float) -> bool:
        try:
            keyset = load_jwks(parse_json_document(body.content), algorithms=self._algorithms, remote=True)
        except JWKSInvalid as exc:
            outcome = "invalid_json" if exc.reason == "invalid_json" else "invalid_jwks"
            detail = exc.reason + (f" ({_describe_rejected(exc.rejected)})" if exc.rejected else "")
            return self._failed(started, _FetchFailed(outcome, detail))
        options = self._options
        ttl = ttl_from_cache_control(
            body.cache_control,
            default_ttl=options.default_ttl,
            min_ttl=options.min_ttl,
            max_ttl=options.max_ttl,
        )
        now = self._clock()
        digest = hashlib.sha256(body.content).digest()
        changed = digest != self._digest
        self._snap = _Snapshot(
            index=KeyIndex(keyset.keys, allowed=self._algorithms, kidless_matches_any_kid=False),
            loaded_at=now,
            expires_at=now + ttl,
            usable_until=now + ttl + options.max_stale,
            rejected=len(keyset.rejected),
        )
        self._digest = digest
        if changed:
            # After the new snapshot is in place: a verification that read the old generation
            # may have used the old keys, and its cache entry will then be checked again.
            self.generation += 1
        self._failures = 0
        self._record(started, "ok")
        if changed:
            _log.info(
                "jwks loaded: provider=%s keys=%d ttl=%.0fs from %s",
                self.provider,
                len(keyset.keys),
                ttl,
                _loggable(self._jwks_uri or ""),
            )
            if keyset.rejected:
                _log.warning(
                    "jwks keys skipped: provider=%s %s", self.provider, _describe_rejected(keyset.rejected)
                )
        self._reschedule(now + ttl * self._random.uniform(*_REFRESH_AT))
        self._emit_keys(len(keyset.keys))
        return changed

    def _failed(self, started: float, exc: BaseException) -> bool:
        outcome, detail = _classify(exc)
        if outcome == "error":
            _log.error("jwks fetch error: provider=%s", self.provider, exc_info=exc)
        self._failures += 1
        self._record(started, outcome)
        if self._discovery_url is not None:
            self._jwks_uri = None  # the IdP may have moved its JWKS: discover again
        options = self._options
        backoff = min(options.retry_backoff_max, options.retry_backoff * 2 ** min(self._failures - 1, 30))
        self._reschedule(self._clock() + backoff * self._random.uniform(0.8, 1.0))
        snap = self._snap
        if snap is None:
            state = "no keys loaded"
        elif self._clock() > snap.usable_until:
            state = "keys expired beyond max_stale: failing closed"
        else:
            state = f"serving the previous {len(snap.index)} keys"
        _log.warning(
            "jwks fetch failed: provider=%s outcome=%s detail=%s; %s; retry in %.1fs",
            self.provider,
            outcome,
            detail,
            state,
            max(0.0, self._next_attempt_at - self._clock()),
        )
        return False

    def _record(self, started: float, outcome: str) -> None:
        self._last_outcome = outcome
        if self._events is not None:
            try:
                self._events.on_fetch(self.provider, outcome, self._clock() - started)
            except Exception:  # a metrics bug must not break the key lifecycle
                _log.exception("key event hook failed")

    def _emit_keys(self, count: int) -> None:
        if self._events is not None:
            try:
                self._events.on_keys(self.provider, count)
            except Exception:  # a metrics bug must not break the key lifecycle
                _log.exception("key event hook failed")

    def _reschedule(self, at: float) -> None:
        self._next_attempt_at = at
        self._thread_wake.set()
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)


# ------------------------------------------------------------------------------- from config

KeySource = StaticKeys | RemoteJWKS


def _resolve(path: str, base_dir: Path | None) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() or base_dir is None else base_dir / candidate


def _read_secret_file(path: Path) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyRejected("file_too_large", f"secret file larger than {MAX_KEY_FILE_BYTES} bytes")
    # Files written with `echo` end in a newline that is not part of the secret.
    if data.endswith(b"\r\n"):
        return data[:-2]
    return data[:-1] if data.endswith(b"\n") else data


def _rejection(exc: KeyRejected | JWKSInvalid) -> str:
    if isinstance(exc, JWKSInvalid) and exc.rejected:
        return f"{exc.message} ({exc.reason}): {_describe_rejected(exc.rejected)}"
    return f"{exc.message} ({exc.reason})"


def build_key_source(
    name: str, provider: Provider, *, events: KeyEvents | None = None, base_dir: Path | None = None
) -> KeySource:
    """Build the key source of ``providers.<name>``. Remote sources are returned unstarted.

    Relative file paths are resolved against ``base_dir`` (the config file's folder) when given.
    Raises :class:`~gateway.errors.ConfigError` with the key path of the offending field for an
    unreadable file, an unusable key, a weak or public-key-looking secret, or a bad URL.
    Messages never contain key material or secrets.
    """
    where = f"providers.{name}"
    algorithms = tuple(provider.algorithms)
    if provider.discovery or provider.jwks_uri is not None:
        url_field = "issuer" if provider.discovery else "jwks_uri"
        url = discovery_url(provider.issuer or "") if provider.discovery else (provider.jwks_uri or "")
        problem = check_fetch_url(url, allow_insecure=provider.allow_insecure_jwks)
        if problem:
            what = "the discovery URL built from the issuer" if provider.discovery else "jwks_uri"
            raise ConfigError(f"{what} {problem}", path=f"{where}.{url_field}")
        context = None
        if provider.jwks.ca_file is not None:
            try:
                context = ssl.create_default_context(cafile=_resolve(provider.jwks.ca_file, base_dir))
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or type(exc).__name__
                raise ConfigError(
                    f"cannot load the CA bundle: {reason}", path=f"{where}.jwks.ca_file"
                ) from None
        return RemoteJWKS(
            name,
            jwks_uri=provider.jwks_uri,
            issuer=provider.issuer,
            discovery=provider.discovery,
            algorithms=algorithms,
            options=provider.jwks,
            allow_insecure=provider.allow_insecure_jwks,
            events=events,
            ssl_context=context,
        )

    field: str
    try:
        if provider.public_key_file is not None:
            field, source = "public_key_file", "public_key_file"
            keys: tuple[VerificationKey, ...] = (
                load_pem_public_key_file(_resolve(provider.public_key_file, base_dir), algorithms=algorithms),
            )
        elif provider.jwks_file is not None:
            field, source = "jwks_file", "jwks_file"
            keys = load_jwk_file(_resolve(provider.jwks_file, base_dir), algorithms=algorithms)
        elif provider.secret is not None:
            field, source = "secret", "secret"
            secret = provider.secret.get_secret_value().encode("utf-8")
            keys = (hmac_key(secret, algorithm=algorithms[0], allow_weak=provider.allow_weak_secret),)
        else:
            assert provider.secret_file is not None
            field, source = "secret_file", "secret_file"
            secret = _read_secret_file(_resolve(provider.secret_file, base_dir))
            keys = (hmac_key(secret, algorithm=algorithms[0], allow_weak=provider.allow_weak_secret),)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read the file: {reason}", path=f"{where}.{field}") from None
    except (KeyRejected, JWKSInvalid) as exc:
        raise ConfigError(f"unusable key: {_rejection(exc)}", path=f"{where}.{field}") from None
    static = StaticKeys(name, keys, algorithms=algorithms, source=source)
    if events is not None:
        try:
            events.on_keys(name, len(keys))
        except Exception:  # a metrics bug must not break loading
            _log.exception("key event hook failed")
    return static


# ------------------------------------------------------------------------- reuse across reloads

#: Provider fields a remote key cache depends on; a change to any other field (audiences,
#: leeway, rules...) keeps the cache.
_REMOTE_FIELDS: Final = frozenset(
    {"issuer", "discovery", "jwks_uri", "allow_insecure_jwks", "algorithms", "jwks"}
)


def _fingerprint(provider: Provider) -> str:
    # Frozen pydantic models with list fields are not hashable: compare their JSON instead.
    return provider.model_dump_json(include=set(_REMOTE_FIELDS))


@dataclass(frozen=True, slots=True)
class KeySourcePlan:
    """The key sources of one config, before it goes live. Discarding a plan costs nothing."""

    #: Provider name -> its key source.
    sources: Mapping[str, KeySource]
    #: Remote sources created by this plan: ``await start()`` them once the config goes live.
    to_start: tuple[RemoteJWKS, ...]
    #: Remote sources of the previous config that this plan no longer uses: ``await aclose()``
    #: them after :meth:`KeySourceRegistry.commit`.
    retired: tuple[RemoteJWKS, ...]
    _fingerprints: Mapping[str, str]


class KeySourceRegistry:
    """Builds every provider's key source and carries remote key caches across config reloads.

    A :class:`RemoteJWKS` is reused when its provider keeps its name and every field in
    :data:`_REMOTE_FIELDS` is unchanged, so a reload neither drops warm keys nor re-fetches.
    Static sources are always rebuilt (a reload re-reads key files)::

        plan = registry.plan(config.providers, base_dir=config_dir)   # may raise ConfigError
        for source in plan.to_start:
            await source.start()
        registry.commit(plan)                                          # swap the config in here
        for source in plan.retired:
            await source.aclose()
    """

    def __init__(self, *, events: KeyEvents | None = None) -> None:
        self._events = events
        self._remote: dict[str, tuple[str, RemoteJWKS]] = {}

    def plan(self, providers: Mapping[str, Provider], *, base_dir: Path | None = None) -> KeySourcePlan:
        """Build (or reuse) the sources for ``providers``; the registry is not changed."""
        sources: dict[str, KeySource] = {}
        fingerprints: dict[str, str] = {}
        created: list[RemoteJWKS] = []
        for name, provider in providers.items():
            if provider.discovery or provider.jwks_uri is not None:
                fingerprint = _fingerprint(provider)
                fingerprints[name] = fingerprint
                current = self._remote.get(name)
                if current is not None and current[0] == fingerprint:
                    sources[name] = current[1]
                    continue
                source = build_key_source(name, provider, events=self._events, base_dir=base_dir)
                assert isinstance(source, RemoteJWKS)
                created.append(source)
                sources[name] = source
            else:
                sources[name] = build_key_source(name, provider, events=self._events, base_dir=base_dir)
        kept = {id(s) for s in sources.values()}
        retired = tuple(src for _, src in self._remote.values() if id(src) not in kept)
        return KeySourcePlan(sources, tuple(created), retired, fingerprints)

    def commit(self, plan: KeySourcePlan) -> None:
        """Make ``plan`` the current set (the reuse baseline for the next :meth:`plan`)."""
        self._remote = {
            name: (plan._fingerprints[name], source)
            for name, source in plan.sources.items()
            if isinstance(source, RemoteJWKS)
        }

    def remote_sources(self) -> tuple[RemoteJWKS, ...]:
        """The remote sources of the committed plan (to close them all at shutdown)."""
        return tuple(source for _, source in self._remote.values())
