"""The gateway's decision core as WSGI middleware (Flask, Django, any WSGI app). No event loop.

::

    app.wsgi_app = JWTGatewayWSGIMiddleware(app.wsgi_app, config="gateway.yaml")    # Flask
    application = JWTGatewayWSGIMiddleware(get_wsgi_application(), config=...)      # Django

Each request is decided by the same :class:`~gateway.pipeline.Pipeline` as in proxy mode
(:meth:`~gateway.pipeline.Pipeline.decide_blocking`); a refusal gets the proxy's status,
``WWW-Authenticate`` challenge and problem+json body and never reaches the app. An admitted
request reaches it with:

- ``environ["jwt_gateway.claims"]``: the verified claims, or ``None`` without a token;
  ``environ["jwt_gateway.decision"]``: the :class:`~gateway.pipeline.Decision`; the claims
  are the request's own copy (changing them cannot change the gateway's cached token);
- the claim headers as CGI keys (``X-User-Id`` -> ``HTTP_X_USER_ID``; several values of one
  header joined with ``,``), after every ``HTTP_*`` key that names a spoofable header was
  removed: a WSGI server folds ``X-User-Id`` and ``X_User_Id`` into the same key, so the key
  itself is what is compared (``Authorization`` is removed too, unless
  ``headers.forward_authorization``);
- ``PATH_INFO`` set from the canonical path when it differs from what the client sent
  (``paths.normalize``), so the app routes on exactly the path that was authorised.

**The raw path.** Routes match the canonical form of the path exactly as the client sent it,
read from ``RAW_URI`` (gunicorn, werkzeug) or ``REQUEST_URI`` (waitress, werkzeug, mod_wsgi,
uWSGI). A server that provides neither (wsgiref, Django's ``runserver``) only gives the decoded
``SCRIPT_NAME + PATH_INFO``: the middleware re-encodes it, and then cannot see what the server
already decoded or resolved (an encoded ``/``, ``%2e%2e``): such a path is checked as the server
understood it, not as sent. Use a server that passes the raw URI in production.

**Threads and processes.** Keys are fetched by a background thread per remote provider
(synchronous httpx), started on the first request of each process, so that a server forking
after loading the app (gunicorn ``--preload``) starts them in every worker. The first request
waits up to ``key_wait`` seconds for the first fetch. Token cache and key caches are
thread-safe (gunicorn ``--threads``, waitress).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from urllib.parse import quote_from_bytes, unquote_to_bytes
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from gateway.errors import GatewayError, PathNotCanonical
from gateway.http.problem import render_error
from gateway.middleware.common import (
    DEFAULT_KEY_WAIT,
    ConfigSource,
    PolicyFactory,
    admitted_token,
    first_fetches_done,
    request_id_of,
)
from gateway.pipeline import Decision, Pipeline, RequestView
from gateway.policy import Policy

#: environ key of the verified claims (None without a token).
CLAIMS_KEY = "jwt_gateway.claims"
#: environ key of the Decision.
DECISION_KEY = "jwt_gateway.decision"

# CGI keys that carry request headers without the HTTP_ prefix.
_UNPREFIXED = {"CONTENT_TYPE": b"content-type", "CONTENT_LENGTH": b"content-length"}
# Characters left raw when re-encoding a decoded PATH_INFO (sub-delims, ":" and "@").
_PATH_SAFE = b"/!$&'()*+,;=:@~"


def _cgi_key(name: bytes) -> str:
    return "HTTP_" + name.decode("latin-1").upper().replace("-", "_")


def raw_path_of(environ: WSGIEnvironment) -> tuple[bytes, bool]:
    """The request path as sent, and whether the server gave it raw (see the module docstring)."""
    uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if uri:
        target = uri.encode("latin-1", "replace").partition(b"?")[0]
        if not target.startswith(b"/"):
            # Absolute-form (``http://host/path``): the path is what follows the authority.
            scheme_end = target.find(b"://")
            if scheme_end > 0:
                slash = target.find(b"/", scheme_end + 3)
                target = target[slash:] if slash >= 0 else b"/"
        return target, True
    decoded = (environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1", "replace")
    return quote_from_bytes(decoded or b"/", safe=_PATH_SAFE).encode("ascii"), False


def request_view(environ: WSGIEnvironment) -> RequestView:
    """The transport-neutral view of a WSGI request (headers rebuilt from the CGI keys)."""
    headers: list[tuple[bytes, bytes]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].lower().replace("_", "-").encode("latin-1")
        else:
            unprefixed = _UNPREFIXED.get(key)
            if unprefixed is None:
                continue
            name = unprefixed
        if isinstance(value, str):
            headers.append((name, value.encode("latin-1", "replace")))
    raw_path, _ = raw_path_of(environ)
    return RequestView(
        environ.get("REQUEST_METHOD", "GET"),
        raw_path,
        environ.get("QUERY_STRING", "").encode("latin-1", "replace"),
        headers,
        environ.get("REMOTE_ADDR") or None,
    )


class JWTGatewayWSGIMiddleware:
    """WSGI middleware running the gateway's decision core in front of ``app``.

    ``config``: a path to ``gateway.yaml``, a :class:`~gateway.config.models.GatewayConfig`,
    or a mapping of the same shape. ``base_dir``: where relative key-file paths are resolved.
    ``key_wait``: seconds the first request of a process waits for the first key fetch of each
    remote provider. Raises :class:`~gateway.errors.ConfigError` for a bad config.
    """

    def __init__(
        self,
        app: WSGIApplication,
        config: ConfigSource,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        key_wait: float = DEFAULT_KEY_WAIT,
    ) -> None:
        self.app = app
        self._factory = PolicyFactory(config, base_dir=base_dir)
        self.pipeline = Pipeline(self._factory.build())
        self.key_wait = key_wait
        self._pid: int | None = None
        self._start_lock = threading.Lock()

    @property
    def policy(self) -> Policy:
        """The compiled policy requests are decided under."""
        return self.pipeline.policy

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the key threads of this process (idempotent) and wait up to ``key_wait``."""
        pid = os.getpid()
        if self._pid == pid:
            return
        with self._start_lock:
            if self._pid == pid:
                return
            if self._pid is not None:
                # Forked after starting: threads, locks and HTTP clients stayed in the parent.
                self.pipeline.swap(self._factory.build())
            policy = self.policy
            for source in policy.key_sources.values():
                source.start_thread()
            deadline = time.monotonic() + self.key_wait
            while not first_fetches_done(policy) and time.monotonic() < deadline:
                time.sleep(0.01)
            self._pid = pid

    def close(self) -> None:
        """Stop the key threads (they are daemon threads: a server exiting need not call this)."""
        for source in self.policy.key_sources.values():
            source.close()

    # ------------------------------------------------------------------------------ requests

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._pid != os.getpid():
            self.start()
        view = request_view(environ)
        decision = self.pipeline.decide_blocking(view)
        if not decision.allowed:
            assert decision.error is not None
            return self._refuse(environ, start_response, decision.error)
        try:
            self._admit(environ, view, decision)
        except GatewayError as exc:
            return self._refuse(environ, start_response, exc)
        return self.app(environ, start_response)

    def _admit(self, environ: WSGIEnvironment, view: RequestView, decision: Decision) -> None:
        inbound = self.policy.headers.inbound
        for key in [k for k in environ if k.startswith("HTTP_")]:
            if inbound.drops(key[5:].lower().replace("_", "-").encode("latin-1")):
                del environ[key]
        if decision.claim_headers:
            values: dict[str, list[str]] = {}
            for name, value in decision.claim_headers:
                values.setdefault(_cgi_key(name), []).append(value.decode("latin-1"))
            for key, parts in values.items():
                environ[key] = ",".join(parts)
        path = decision.path
        if path is not None and path.encode("ascii") != view.raw_path:
            self._set_path(environ, path)
        token = admitted_token(decision)
        environ[CLAIMS_KEY] = token.claims if token is not None else None
        environ[DECISION_KEY] = decision

    @staticmethod
    def _set_path(environ: WSGIEnvironment, canonical: str) -> None:
        """Route the app on the canonical path (PEP 3333: PATH_INFO holds latin-1-decoded bytes)."""
        full = unquote_to_bytes(canonical).decode("latin-1")
        script = environ.get("SCRIPT_NAME", "")
        if script:
            if full != script and not full.startswith(script + "/"):
                raise PathNotCanonical("the normalised path leaves the application's mount point")
            full = full[len(script) :]
        environ["PATH_INFO"] = full
        query = environ.get("QUERY_STRING", "")
        target = canonical + ("?" + query if query else "")
        for key in ("RAW_URI", "REQUEST_URI"):
            if key in environ:
                environ[key] = target

    def _refuse(
        self, environ: WSGIEnvironment, start_response: StartResponse, error: GatewayError
    ) -> Iterable[bytes]:
        client_id = environ.get("HTTP_X_REQUEST_ID")
        supplied = [(b"x-request-id", client_id.encode("latin-1", "replace"))] if client_id else []
        request_id = request_id_of(supplied)
        rendered = render_error(error, realm=self.policy.realm, request_id=request_id)
        headers: list[tuple[str, str]] = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in rendered.headers
        ]
        headers.append(("X-Request-Id", request_id))
        start_response(f"{rendered.status} {error.title}", headers)
        return [rendered.body]


__all__ = ["CLAIMS_KEY", "DECISION_KEY", "JWTGatewayWSGIMiddleware", "raw_path_of", "request_view"]
