"""Proxy benchmark of issue 3: this gateway against its peers, in one interleaved run.

Every target gets the same request (``GET /api/bench`` with the same valid RS256 token in
``Authorization: Bearer``) from ``wrk -t1 -c32 --latency`` on 127.0.0.1:

- ``backend``     nginx ``return 200`` (the upstream of every proxy; measured directly as the ceiling)
- ``nginx-proxy`` nginx ``proxy_pass`` with a keep-alive upstream (no token check: the C limit)
- ``naive``       bench/naive_proxy.py under uvicorn: Starlette + httpx + PyJWT, RS256 every request
- ``apache``      Apache httpd + mod_auth_openidc (``AuthType oauth20``), RS256 every request
- ``gateway``     ``jwt-gateway serve --config FILE`` on a protected route

Layout: wrk and the backend pinned to the first CPU, each proxy under test alone on the second
(``taskset -c``). Rounds are interleaved (round 1 runs every target once, then round 2 ...), each
run a warm-up followed by a timed run. Before timing, each target is checked: 200 with the token,
and for the token-checking peers 401 without a token, 401 with a bad signature and a refusal of a
token for another audience. A target that fails its check is not timed; a timed run that saw a
non-2xx answer is marked invalid and left out of the medians. The machine may be shared: the CPU
used by other processes is measured during every run, the harness waits for a quiet moment before
each run and redoes a disturbed one (--quiet-wait, --noise-threshold, --noise-retries).

Servers, keys, token and configs live in a fresh directory under bench/.work/ (removed at the
end unless --keep-work); results go to bench/results/<timestamp>.json. Run ``bench/setup.sh``
first (installs nginx, apache2, libapache2-mod-auth-openidc, wrk).

    .venv/bin/python bench/run_proxy_bench.py                 # 5 rounds x 10 s
    .venv/bin/python bench/run_proxy_bench.py --quick         # smoke run: 1 round x 2 s
    .venv/bin/python bench/run_proxy_bench.py --targets apache,gateway --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import pwd
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORK_ROOT = BENCH_DIR / ".work"
RESULTS_DIR = BENCH_DIR / "results"
#: The venv whose python runs this script also provides uvicorn and jwt-gateway.
VENV_BIN = Path(sys.executable).parent

#: How the gateway is launched: the one place to change it (or pass --gateway-cmd).
#: ``{bin}`` is the venv's bin directory, ``{config}`` the generated YAML file.
GATEWAY_COMMAND = "{bin}/jwt-gateway serve --config {config}"

ISSUER = "https://idp.bench.test"
AUDIENCE = "bench-api"
SUBJECT = "bench-user"
REQUEST_PATH = "/api/bench"
HOST = "127.0.0.1"

APACHE_MODULES_DIR = Path("/usr/lib/apache2/modules")
APACHE_BIN = "/usr/sbin/apache2"
NGINX_BIN = "nginx"
WRK_BIN = "wrk"

TARGET_NAMES = ("backend", "nginx-proxy", "naive", "apache", "gateway")
TARGET_LABELS = {
    "backend": "backend: nginx `return 200` (direct, ceiling)",
    "nginx-proxy": "nginx proxy_pass, keep-alive upstream (no auth)",
    "naive": "naive Python proxy (Starlette + httpx + PyJWT RS256)",
    "apache": "Apache httpd + mod_auth_openidc (RS256 every request)",
    "gateway": "jwt-gateway (protected route, RS256)",
}
#: Targets that must refuse a missing or forged token.
VERIFYING_TARGETS = frozenset({"naive", "apache", "gateway"})
#: Ratios reported: gateway / each of these.
RATIO_PEERS = ("apache", "naive", "nginx-proxy")

#: Big access logs are emptied between runs so a long bench does not fill the disk.
LOG_TRUNCATE_BYTES = 8 * 1024 * 1024


# ----------------------------------------------------------------------------------- key material


@dataclass(frozen=True)
class KeyMaterial:
    """Files and tokens of one bench run (the token is never printed)."""

    private_key_file: Path
    public_key_file: Path
    cert_file: Path
    token: str
    #: Same claims, signed by another key: every verifying peer must refuse it.
    bad_signature_token: str
    #: Right key, wrong ``aud``: refused by peers that check the audience.
    wrong_audience_token: str


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def make_key_material(workdir: Path, lifetime_s: int = 24 * 3600) -> KeyMaterial:
    """Generate a 2048-bit RSA pair, a self-signed certificate of it (mod_auth_openidc's
    ``OIDCOAuthVerifyCertFiles`` takes X.509 certificates) and the RS256 tokens."""
    workdir = workdir.resolve()  # the paths end up in server configs
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_file = workdir / "rsa_private.pem"
    public_file = workdir / "rsa_public.pem"
    cert_file = workdir / "rsa_cert.pem"
    _write_private(
        private_file,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    public_file.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.bench.test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    iat = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": SUBJECT,
        "iat": iat,
        "nbf": iat - 60,
        "exp": iat + lifetime_s,
        "scope": "bench:read",
    }
    return KeyMaterial(
        private_key_file=private_file,
        public_key_file=public_file,
        cert_file=cert_file,
        token=jwt.encode(claims, key, algorithm="RS256"),
        bad_signature_token=jwt.encode(claims, other, algorithm="RS256"),
        wrong_audience_token=jwt.encode({**claims, "aud": "other-api"}, key, algorithm="RS256"),
    )


# --------------------------------------------------------------------------------------- configs


def nginx_backend_conf(workdir: Path, port: int) -> str:
    """The backend: one nginx worker answering ``200 ok`` to everything, no access log."""
    return f"""# jwt-gateway bench: backend (nginx return 200)
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    {_nginx_temp_paths(workdir)}
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 65s;
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def nginx_proxy_conf(workdir: Path, port: int, backend_port: int) -> str:
    """nginx ``proxy_pass`` to the backend over a keep-alive upstream, access log on."""
    return f"""# jwt-gateway bench: nginx proxy_pass (keep-alive upstream)
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    {_nginx_temp_paths(workdir)}
    access_log {workdir}/access.log combined;
    keepalive_requests 1000000;
    keepalive_timeout 65s;
    upstream backend {{
        server {HOST}:{backend_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def _nginx_temp_paths(workdir: Path) -> str:
    tmp = workdir / "tmp"
    return " ".join(
        f"{kind}_temp_path {tmp}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def _apache_user_lines() -> str:
    # Apache refuses to run its children as root; as non-root the directives would be ignored.
    if os.geteuid() != 0:
        return ""
    try:
        pwd.getpwnam("www-data")
    except KeyError:
        return "User nobody\nGroup nogroup\n"
    return "User www-data\nGroup www-data\n"


def apache_conf(workdir: Path, port: int, backend_port: int, cert_file: Path) -> str:
    """Apache httpd (event MPM, Debian's default sizing) with mod_auth_openidc as an OAuth 2.0
    resource server: RS256 checked against a static certificate on every request, ``iss``,
    ``aud`` and ``sub`` required by ``Require claim``, then ``ProxyPass`` to the backend."""
    modules = "\n".join(
        f"LoadModule {name}_module {APACHE_MODULES_DIR}/mod_{name}.so"
        for name in ("mpm_event", "authn_core", "authz_core", "auth_openidc", "proxy", "proxy_http")
    )
    return f"""# jwt-gateway bench: Apache httpd + mod_auth_openidc
ServerRoot "{workdir}"
ServerName {HOST}
Listen {HOST}:{port}
PidFile "{workdir}/httpd.pid"
DefaultRuntimeDir "{workdir}/run"
Mutex file:{workdir}/run default
ErrorLog "{workdir}/error.log"
LogLevel warn
{_apache_user_lines()}{modules}

# Debian's mpm_event.conf defaults.
StartServers 2
MinSpareThreads 25
MaxSpareThreads 75
ThreadLimit 64
ThreadsPerChild 25
MaxRequestWorkers 150
MaxConnectionsPerChild 0

# Keep client connections open for the whole run, as every other target does.
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 65

LogFormat "%h %l %u %t \\"%r\\" %>s %b %D" bench
CustomLog "{workdir}/access.log" bench

# Local JWT validation with a statically configured certificate; no introspection, so the
# RS256 signature is checked on every request.
OIDCOAuthVerifyCertFiles {cert_file}
OIDCOAuthRemoteUserClaim sub

ProxyRequests Off
ProxyPass "/api/" "http://{HOST}:{backend_port}/api/"

<Location "/api/">
    AuthType oauth20
    # Several Require lines alone would mean "any of them": RequireAll makes each one binding.
    <RequireAll>
        Require claim iss:{ISSUER}
        Require claim aud:{AUDIENCE}
        Require claim sub:{SUBJECT}
    </RequireAll>
</Location>
"""


def gateway_config(port: int, admin_port: int, backend_port: int, public_key_file: Path) -> dict[str, Any]:
    """The gateway's config (as data): one RS256 provider, one protected route, production
    features on (access log, admin listener with metrics, verified-token cache)."""
    return {
        "listen": {"host": HOST, "port": port},
        "admin": {"enabled": True, "host": HOST, "port": admin_port},
        "upstream": f"http://{HOST}:{backend_port}",
        "providers": {
            "bench": {
                "issuer": ISSUER,
                "public_key_file": str(public_key_file),
                "algorithms": ["RS256"],
                "audiences": [AUDIENCE],
            }
        },
        "headers": {"claims": {"X-User-Id": "sub"}},
        "logging": {"access_log": True, "format": "json"},
        "routes": [
            {
                "name": "protected",
                "match": {"path": "/api/**"},
                "require": {"claim": "sub", "equals": SUBJECT},
            }
        ],
    }


def gateway_config_yaml(port: int, admin_port: int, backend_port: int, public_key_file: Path) -> str:
    """:func:`gateway_config` as the YAML text written to the gateway's config file."""
    data = gateway_config(port, admin_port, backend_port, public_key_file)
    return "# jwt-gateway bench config\n" + yaml.safe_dump(data, sort_keys=False)


def gateway_argv(template: str, config_file: Path) -> list[str]:
    """The gateway's command line from a ``GATEWAY_COMMAND``-style template."""
    return shlex.split(template.format(bin=VENV_BIN, config=config_file))


# ------------------------------------------------------------------------------------ wrk output

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$", re.M)
_RPS = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)\s*$", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in (\d+(?:\.\d+)?)(us|ms|s|m|h),", re.M)
_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)\s*$", re.M)
_SOCKET_ERRORS = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$", re.M
)


@dataclass(frozen=True)
class WrkResult:
    """One wrk run, parsed. Latencies in milliseconds."""

    requests_per_sec: float
    p50_ms: float
    p75_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    duration_s: float
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        """False when any answer was not 2xx/3xx (the target's numbers do not count)."""
        return self.non_2xx == 0


def parse_wrk_output(text: str) -> WrkResult:
    """Parse the text of ``wrk --latency``; ValueError when a required figure is missing."""
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    percentiles = {float(p): float(v) * _UNIT_MS[u] for p, v, u in _PERCENTILE.findall(text)}
    missing = [p for p in (50.0, 75.0, 90.0, 99.0) if p not in percentiles]
    if rps is None or total is None or missing:
        raise ValueError(
            "not the output of `wrk --latency` (missing Requests/sec, the request count "
            f"or percentiles {missing}):\n{text[-2000:]}"
        )
    non_2xx = _NON_2XX.search(text)
    errors = _SOCKET_ERRORS.search(text)
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        p50_ms=percentiles[50.0],
        p75_ms=percentiles[75.0],
        p90_ms=percentiles[90.0],
        p99_ms=percentiles[99.0],
        requests=int(total.group(1)),
        duration_s=float(total.group(2)) * _UNIT_MS[total.group(3)] / 1000.0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=(
            dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True))
            if errors
            else {}
        ),
    )


def wrk_argv(url: str, token: str, duration_s: float, connections: int, threads: int) -> list[str]:
    """The wrk command line (without CPU pinning)."""
    return [
        WRK_BIN,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--latency",
        "--timeout",
        "10s",
        "-H",
        f"Authorization: Bearer {token}",
        url,
    ]


# -------------------------------------------------------------------------------------- servers


def free_port() -> int:
    """A port free on 127.0.0.1 right now (tiny race accepted: this is a bench, not a test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pinned(argv: Sequence[str], cpu: int | None) -> list[str]:
    """``argv`` run under ``taskset -c cpu`` (children inherit the affinity)."""
    return list(argv) if cpu is None else ["taskset", "-c", str(cpu), *argv]


@dataclass
class Server:
    """One server process (and its children, in their own process group)."""

    name: str
    argv: list[str]
    port: int
    log_file: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    #: Further log files written by the server itself (access logs), truncated when big.
    extra_logs: tuple[Path, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process; output goes to ``log_file``."""
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if self.env is None else dict(self.env),
                cwd=self.cwd,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float) -> str | None:
        """Wait until the port accepts connections; the reason when it does not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                return f"{self.name} exited (status {code}) before listening:\n{self.log_tail()}"
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
                return None
            time.sleep(0.1)
        waited = f"within {timeout_s:.0f} s"
        return f"{self.name} did not listen on {HOST}:{self.port} {waited}:\n{self.log_tail()}"

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's output (for error messages)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "  (no output)"
        tail = text.splitlines()[-lines:]
        return "\n".join(f"  | {line}" for line in tail) or "  (no output)"

    def truncate_big_logs(self) -> None:
        """Empty access logs that grew big (writers use O_APPEND, so this is safe)."""
        for path in (self.log_file, *self.extra_logs):
            with contextlib.suppress(OSError):
                if path.stat().st_size > LOG_TRUNCATE_BYTES:
                    os.truncate(path, 0)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after a grace period."""
        proc = self.process
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        # Children (nginx/apache workers) may outlive their parent for a moment.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        self.process = None


@dataclass
class Target:
    """A target of the bench: its URL and the server behind it (None for the backend itself)."""

    name: str
    port: int
    server: Server | None
    skip_reason: str | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{REQUEST_PATH}"


@dataclass(frozen=True)
class Layout:
    """CPU pinning: wrk and the backend on ``client_cpu``, the proxy under test on ``proxy_cpu``."""

    client_cpu: int | None
    proxy_cpu: int | None

    @classmethod
    def detect(cls, client_cpu: int | None, proxy_cpu: int | None) -> Layout:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2 or shutil.which("taskset") is None:
            print("warning: fewer than 2 CPUs or no taskset: running unpinned", file=sys.stderr)
            return cls(None, None)
        return cls(
            cpus[0] if client_cpu is None else client_cpu,
            cpus[1] if proxy_cpu is None else proxy_cpu,
        )


def _nginx_server(name: str, workdir: Path, conf: str, port: int, cpu: int | None) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    conf_file = workdir / "nginx.conf"
    conf_file.write_text(conf)
    argv = [NGINX_BIN, "-p", f"{workdir}/", "-c", str(conf_file), "-e", str(workdir / "error.log")]
    return Server(
        name,
        pinned(argv, cpu),
        port,
        workdir / "stdout.log",
        extra_logs=(workdir / "access.log", workdir / "error.log"),
    )


def build_servers(
    selected: Sequence[str],
    workdir: Path,
    keys: KeyMaterial,
    layout: Layout,
    gateway_command: str,
) -> tuple[Server, list[Target]]:
    """Write every config and describe every server (nothing started yet)."""
    workdir = workdir.resolve()  # servers run with other working directories
    backend_port = free_port()
    backend = _nginx_server(
        "backend",
        workdir / "backend",
        nginx_backend_conf(workdir / "backend", backend_port),
        backend_port,
        layout.client_cpu,
    )
    targets: list[Target] = []
    for name in selected:
        if name == "backend":
            targets.append(Target(name, backend_port, None))
            continue
        port = free_port()
        server_dir = workdir / name
        server_dir.mkdir(parents=True, exist_ok=True)
        if name == "nginx-proxy":
            server = _nginx_server(
                name, server_dir, nginx_proxy_conf(server_dir, port, backend_port), port, layout.proxy_cpu
            )
        elif name == "naive":
            env = {
                **os.environ,
                "NAIVE_UPSTREAM": f"http://{HOST}:{backend_port}",
                "NAIVE_PUBLIC_KEY_FILE": str(keys.public_key_file),
                "NAIVE_ISSUER": ISSUER,
                "NAIVE_AUDIENCE": AUDIENCE,
                "NAIVE_SUBJECT": SUBJECT,
            }
            # uvicorn as a user starts it: defaults (uvloop, httptools, access log on).
            argv = [
                str(VENV_BIN / "uvicorn"),
                "naive_proxy:app",
                "--app-dir",
                str(BENCH_DIR),
                "--host",
                HOST,
                "--port",
                str(port),
            ]
            server = Server(name, pinned(argv, layout.proxy_cpu), port, server_dir / "uvicorn.log", env=env)
        elif name == "apache":
            (server_dir / "run").mkdir(exist_ok=True)
            conf_file = server_dir / "httpd.conf"
            conf_file.write_text(apache_conf(server_dir, port, backend_port, keys.cert_file))
            argv = [APACHE_BIN, "-f", str(conf_file), "-D", "FOREGROUND"]
            server = Server(
                name,
                pinned(argv, layout.proxy_cpu),
                port,
                server_dir / "stdout.log",
                extra_logs=(server_dir / "access.log", server_dir / "error.log"),
            )
        elif name == "gateway":
            conf_file = server_dir / "gateway.yaml"
            conf_file.write_text(gateway_config_yaml(port, free_port(), backend_port, keys.public_key_file))
            argv = gateway_argv(gateway_command, conf_file)
            server = Server(
                name, pinned(argv, layout.proxy_cpu), port, server_dir / "gateway.log", cwd=REPO_DIR
            )
        else:  # argparse already refused it
            raise ValueError(f"unknown target {name!r}")
        targets.append(Target(name, port, server))
    return backend, targets


def missing_tools(selected: Sequence[str]) -> dict[str, str]:
    """Targets whose server binary is missing, with the reason (wrk/nginx are fatal)."""
    reasons: dict[str, str] = {}
    if "naive" in selected and not (VENV_BIN / "uvicorn").exists():
        reasons["naive"] = f"{VENV_BIN / 'uvicorn'} not found"
    if "apache" in selected:
        if not Path(APACHE_BIN).exists():
            reasons["apache"] = f"{APACHE_BIN} not found (run bench/setup.sh)"
        elif not (APACHE_MODULES_DIR / "mod_auth_openidc.so").exists():
            reasons["apache"] = "mod_auth_openidc not installed (run bench/setup.sh)"
    return reasons


# --------------------------------------------------------------------------------------- checks


@dataclass
class CheckResult:
    """What a target answered before the timed runs."""

    with_token: int | str
    without_token: int | str | None = None
    bad_signature: int | str | None = None
    wrong_audience: int | str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _status(client: httpx.Client, url: str, token: str | None) -> int | str:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        return client.get(url, headers=headers).status_code
    except httpx.HTTPError as exc:
        return f"error: {type(exc).__name__}: {exc}"


def check_target(target: Target, keys: KeyMaterial) -> CheckResult:
    """200 with the token; for verifying targets 401 without one or with a forged one, and a
    refusal (401/403) of a token for another audience."""
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        result = CheckResult(with_token=_status(client, target.url, keys.token))
        if result.with_token != 200:
            result.problems.append(f"answered {result.with_token} to the valid token (200 expected)")
        if target.name in VERIFYING_TARGETS:
            result.without_token = _status(client, target.url, None)
            result.bad_signature = _status(client, target.url, keys.bad_signature_token)
            result.wrong_audience = _status(client, target.url, keys.wrong_audience_token)
            if result.without_token != 401:
                result.problems.append(f"answered {result.without_token} without a token (401 expected)")
            if result.bad_signature != 401:
                result.problems.append(f"answered {result.bad_signature} to a bad signature (401 expected)")
            if result.wrong_audience not in (401, 403):
                result.problems.append(
                    f"answered {result.wrong_audience} to a token for another audience (401/403 expected)"
                )
    return result


# ---------------------------------------------------------------------------------------- noise

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _system_ticks() -> tuple[int, int]:
    """(user+nice+system, steal) jiffies of all CPUs, from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields]
    return values[0] + values[1] + values[2], values[7] if len(values) > 7 else 0


def _group_ticks(pgids: frozenset[int]) -> int:
    """user+system jiffies of the live processes in these process groups."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        rest = text[text.rfind(")") + 2 :].split()
        # After "pid (comm) ": state ppid pgrp session tty_nr tpgid flags minflt cminflt
        # majflt cmajflt utime stime ...
        if int(rest[2]) in pgids:
            total += int(rest[11]) + int(rest[12])
    return total


def _own_seconds() -> float:
    """CPU seconds of this process and its waited-for children (wrk)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class NoiseProbe:
    """Estimates the CPU used by *other* processes during a run (this machine is shared):
    all user+system time minus that of wrk, the harness and the bench's server groups.
    Time the hypervisor stole is reported apart."""

    def __init__(self, pgids: frozenset[int]) -> None:
        self.pgids = pgids
        busy, steal = _system_ticks()
        self._start = (time.monotonic(), busy, steal, _group_ticks(pgids), _own_seconds())

    def read(self) -> dict[str, float]:
        """``other_cores`` and ``steal_cores``, averaged over the time since creation."""
        t0, busy0, steal0, ours0, own0 = self._start
        busy, steal = _system_ticks()
        elapsed = max(time.monotonic() - t0, 1e-6)
        ours = (_group_ticks(self.pgids) - ours0) / _CLK_TCK + (_own_seconds() - own0)
        other = max(0.0, (busy - busy0) / _CLK_TCK - ours)
        return {
            "other_cores": round(other / elapsed, 3),
            "steal_cores": round((steal - steal0) / _CLK_TCK / elapsed, 3),
        }


# ------------------------------------------------------------------------------------ measuring


def run_wrk(
    url: str, token: str, duration_s: float, connections: int, threads: int, cpu: int | None
) -> WrkResult:
    """One wrk run against ``url``; RuntimeError when wrk fails."""
    argv = pinned(wrk_argv(url, token, duration_s, connections, threads), cpu)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return parse_wrk_output(done.stdout)


@dataclass
class Measurement:
    """One timed run of one target, with the noise seen while it ran."""

    round: int
    result: WrkResult
    noise: dict[str, float]


def wait_for_quiet(pgids: frozenset[int], threshold: float, max_wait_s: float) -> float:
    """Before a run: sample the foreign load for 1 s at a time until it is at most
    ``threshold`` cores or ``max_wait_s`` has passed. Returns the seconds waited."""
    started = time.monotonic()
    while True:
        probe = NoiseProbe(pgids)
        time.sleep(1.0)
        noise = probe.read()
        waited = time.monotonic() - started
        if noise["other_cores"] + noise["steal_cores"] <= threshold or waited >= max_wait_s:
            return waited


def measure(
    target: Target,
    token: str,
    args: argparse.Namespace,
    layout: Layout,
    pgids: frozenset[int],
    round_no: int,
) -> tuple[Measurement, list[Measurement]]:
    """Wait for a quiet machine (up to ``--quiet-wait`` s), warm up, then time one run; a run
    during which other processes used more than ``--noise-threshold`` cores is redone (up to
    ``--noise-retries`` times). Returns the kept run and the discarded noisy ones."""
    discarded: list[Measurement] = []
    while True:
        if args.quiet_wait > 0:
            waited = wait_for_quiet(pgids, args.noise_threshold, args.quiet_wait)
            if waited > 1.5:
                log(f"round {round_no}/{args.rounds} {target.name:<12} waited {waited:.0f} s for other work")
        run_wrk(target.url, token, args.warmup, args.connections, args.threads, layout.client_cpu)
        probe = NoiseProbe(pgids)
        result = run_wrk(target.url, token, args.duration, args.connections, args.threads, layout.client_cpu)
        run = Measurement(round_no, result, probe.read())
        if target.server is not None:
            target.server.truncate_big_logs()
        noise = run.noise["other_cores"] + run.noise["steal_cores"]
        if noise <= args.noise_threshold or len(discarded) >= args.noise_retries:
            return run, discarded
        log(
            f"round {round_no}/{args.rounds} {target.name:<12} noisy: {noise:.2f} cores busy "
            f"elsewhere ({result.requests_per_sec:,.0f} req/s discarded); again"
        )
        discarded.append(run)


@dataclass
class Summary:
    """Medians over the valid runs of one target."""

    target: str
    runs: int
    valid_runs: int
    median_rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    min_rps: float | None
    max_rps: float | None
    #: Median over the kept runs of the cores other processes used meanwhile (noise).
    other_cores: float | None = None


def summarize(target: str, results: Sequence[WrkResult], other_cores: Sequence[float] = ()) -> Summary:
    """Median req/s, p50 and p99 over the valid runs (each a median of per-run figures)."""
    valid = [r for r in results if r.valid]
    noise = statistics.median(other_cores) if other_cores else None
    if not valid:
        return Summary(target, len(results), 0, None, None, None, None, None, noise)
    rps = [r.requests_per_sec for r in valid]
    return Summary(
        target,
        len(results),
        len(valid),
        statistics.median(rps),
        statistics.median(r.p50_ms for r in valid),
        statistics.median(r.p99_ms for r in valid),
        min(rps),
        max(rps),
        noise,
    )


def ratios(summaries: Mapping[str, Summary]) -> dict[str, float]:
    """gateway / peer of the median req/s, for each peer measured."""
    gateway = summaries.get("gateway")
    if gateway is None or gateway.median_rps is None:
        return {}
    out: dict[str, float] = {}
    for peer in RATIO_PEERS:
        other = summaries.get(peer)
        if other is not None and other.median_rps:
            out[f"gateway/{peer}"] = gateway.median_rps / other.median_rps
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown_table(
    order: Sequence[str],
    summaries: Mapping[str, Summary],
    notes: Mapping[str, str],
    ratio_values: Mapping[str, float],
) -> str:
    """The results as a markdown table plus the ratio lines."""
    lines = [
        "| target | what | median req/s | p50 ms | p99 ms | req/s min-max | valid runs | other load | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in order:
        s = summaries.get(name)
        note = notes.get(name, "")
        if s is None:
            lines.append(f"| {name} | {TARGET_LABELS[name]} | - | - | - | - | 0 | - | {note} |")
            continue
        span = "n/a" if s.min_rps is None else f"{s.min_rps:,.0f}-{s.max_rps:,.0f}"
        lines.append(
            f"| {name} | {TARGET_LABELS[name]} | {_fmt(s.median_rps, 0)} | {_fmt(s.p50_ms)} | "
            f"{_fmt(s.p99_ms)} | {span} | {s.valid_runs}/{s.runs} | {_fmt(s.other_cores)} | {note} |"
        )
    if ratio_values:
        lines.append("")
        lines.extend(f"- {key}: **{value:.2f}x**" for key, value in ratio_values.items())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- environment


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    out = (done.stdout or done.stderr).strip().splitlines()
    return out[0] if out else ""


def environment() -> dict[str, Any]:
    """Machine and tool versions recorded with the results."""
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    python_packages = {}
    for module in ("httpx", "starlette", "uvicorn", "jwt", "cryptography"):
        with contextlib.suppress(Exception):
            python_packages[module] = str(__import__(module).__version__)
    return {
        "cpu_model": cpu_model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "python_packages": python_packages,
        "nginx": _first_line([NGINX_BIN, "-v"]),
        "apache": _first_line([APACHE_BIN, "-v"]),
        "mod_auth_openidc": _first_line(
            ["dpkg-query", "-W", "-f", "${Version}", "libapache2-mod-auth-openidc"]
        ),
        "wrk": _first_line([WRK_BIN, "-v"]),
    }


# ------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per timed run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up before each run")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument(
        "--targets",
        default=",".join(TARGET_NAMES),
        help=f"comma-separated subset of {','.join(TARGET_NAMES)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 s runs, 1 s warm-up")
    parser.add_argument(
        "--gateway-cmd",
        default=os.environ.get("JWT_GATEWAY_BENCH_CMD", GATEWAY_COMMAND),
        help="gateway launch template, {bin} = venv bin dir, {config} = YAML file "
        f"(default: env JWT_GATEWAY_BENCH_CMD or {GATEWAY_COMMAND!r})",
    )
    parser.add_argument("--client-cpu", type=int, help="CPU of wrk and the backend (default: first)")
    parser.add_argument("--proxy-cpu", type=int, help="CPU of the proxy under test (default: second)")
    parser.add_argument(
        "--noise-threshold",
        type=float,
        default=0.3,
        help="redo a run when other processes (and the hypervisor) used more than this many "
        "cores during it (default 0.3)",
    )
    parser.add_argument(
        "--noise-retries", type=int, default=2, help="how often a noisy run is redone (default 2)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each run, wait up to this many seconds for other work to drop under "
        "the noise threshold (0: do not wait; default 30)",
    )
    parser.add_argument("--startup-timeout", type=float, default=20.0, help="seconds to wait for a server")
    parser.add_argument("--keep-work", action="store_true", help="keep the bench/.work/ directory")
    parser.add_argument(
        "--require-all", action="store_true", help="exit 1 when a target could not be started"
    )
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/*.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2.0, 1.0
    selected = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(selected) - set(TARGET_NAMES))
    if unknown or not selected:
        parser.error(f"unknown targets {unknown}; choose from {','.join(TARGET_NAMES)}")
    args.selected = [t for t in TARGET_NAMES if t in selected]
    if args.rounds < 1 or args.duration < 1 or args.connections < 1 or args.threads < 1:
        parser.error("--rounds, --duration, --connections and --threads must be at least 1")
    return args


def _run_record(run: Measurement) -> dict[str, Any]:
    return {"round": run.round, **asdict(run.result), **run.noise}


def _run_line(name: str, run: Measurement, rounds: int) -> str:
    r = run.result
    flag = "" if r.valid else f"  INVALID: {r.non_2xx} non-2xx answers"
    return (
        f"round {run.round}/{rounds} {name:<12} {r.requests_per_sec:>10,.0f} req/s  "
        f"p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms  "
        f"(other work {run.noise['other_cores']:.2f} cores){flag}"
    )


def log(message: str) -> None:
    """Progress on stderr (stdout carries the final table)."""
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    # SIGTERM (e.g. from make or CI) must still stop every server we started.
    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_targets(targets: Sequence[Target], servers: list[Server], timeout_s: float) -> None:
    """Start every target's server; one that fails gets a ``skip_reason`` instead."""
    for target in targets:
        if target.server is None or target.skip_reason:
            continue
        try:
            target.server.start()
        except OSError as exc:  # the command itself is missing (unpinned runs)
            target.skip_reason = f"{target.name} could not be started: {exc}"
            continue
        servers.append(target.server)
        target.skip_reason = target.server.wait_ready(timeout_s)


def check_targets(
    targets: Sequence[Target], keys: KeyMaterial, notes: dict[str, str], checks: dict[str, CheckResult]
) -> list[Target]:
    """Check every started target; the ones that may be timed."""
    measured: list[Target] = []
    for target in targets:
        if target.skip_reason:
            notes[target.name] = "SKIPPED: " + target.skip_reason.splitlines()[0].rstrip(":")
            log(f"SKIP {target.name}: {target.skip_reason}")
            continue
        check = checks[target.name] = check_target(target, keys)
        if check.ok:
            log(
                f"check {target.name}: token={check.with_token} no-token={check.without_token} "
                f"bad-signature={check.bad_signature} wrong-aud={check.wrong_audience}: ok"
            )
            measured.append(target)
        else:
            notes[target.name] = "INVALID: " + "; ".join(check.problems)
            log(f"INVALID {target.name}: {'; '.join(check.problems)} -- not timed")
    return measured


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench. Exit status: 0 when every measured target answered correctly (a target
    that could not be started is reported and skipped, an error only with --require-all);
    1 when a target failed its check or answered non-2xx during a run; 2 when the bench
    itself cannot run (wrk, nginx or the backend missing)."""
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    for tool in (WRK_BIN, NGINX_BIN):
        if shutil.which(tool) is None:
            log(f"error: {tool} not found: run `bash bench/setup.sh` first")
            return 2
    layout = Layout.detect(args.client_cpu, args.proxy_cpu)
    started = dt.datetime.now().astimezone()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    workdir = WORK_ROOT / stamp
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)  # Apache/nginx workers (www-data/nobody) read configs and certs here
    try:
        return _run(args, layout, started, workdir)
    finally:
        if args.keep_work:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, layout: Layout, started: dt.datetime, workdir: Path) -> int:
    env_info = environment()

    notes: dict[str, str] = {}
    checks: dict[str, CheckResult] = {}
    runs: dict[str, list[Measurement]] = {}
    discarded: dict[str, list[Measurement]] = {}
    servers: list[Server] = []
    with _terminate_on_sigterm():
        try:
            keys = make_key_material(workdir)
            backend, targets = build_servers(args.selected, workdir, keys, layout, args.gateway_cmd)
            for target in targets:
                target.skip_reason = missing_tools(args.selected).get(target.name)
            backend.start()
            servers.append(backend)
            error = backend.wait_ready(args.startup_timeout)
            if error:
                log(f"error: the backend did not start: {error}")
                return 2
            start_targets(targets, servers, args.startup_timeout)
            measured = check_targets(targets, keys, notes, checks)

            pgids = frozenset(s.process.pid for s in servers if s.process is not None)
            for round_no in range(1, args.rounds + 1):
                # Rotate the order each round so no target always follows the same one.
                shift = (round_no - 1) % max(1, len(measured))
                for target in measured[shift:] + measured[:shift]:
                    run, noisy = measure(target, keys.token, args, layout, pgids, round_no)
                    runs.setdefault(target.name, []).append(run)
                    discarded.setdefault(target.name, []).extend(noisy)
                    log(_run_line(target.name, run, args.rounds))
        finally:
            for server in reversed(servers):
                server.stop()

    summaries = {
        name: summarize(
            name, [m.result for m in ms], [m.noise["other_cores"] + m.noise["steal_cores"] for m in ms]
        )
        for name, ms in runs.items()
    }
    for name, summary in summaries.items():
        if summary.valid_runs < summary.runs:
            bad = summary.runs - summary.valid_runs
            notes[name] = f"INVALID runs: {bad} of {summary.runs} saw non-2xx answers"
    ratio_values = ratios(summaries)
    table = markdown_table(args.selected, summaries, notes, ratio_values)
    print(
        f"wrk -t{args.threads} -c{args.connections}, {args.rounds} interleaved rounds x "
        f"{args.duration:g} s (+{args.warmup:g} s warm-up); wrk+backend on CPU {layout.client_cpu}, "
        f"proxy on CPU {layout.proxy_cpu}; {env_info['cpu_model']}\n"
    )
    print(table)
    print(
        "\nother load: median cores used by other processes (and stolen by the hypervisor) "
        f"during the kept runs; runs above {args.noise_threshold:g} were redone up to "
        f"{args.noise_retries} times."
    )

    if not args.no_save:
        out = write_results(
            RESULTS_DIR / f"{workdir.name}.json",
            {
                "started": started.isoformat(),
                "finished": dt.datetime.now().astimezone().isoformat(),
                "command": [sys.argv[0], *args.argv],
                "settings": {
                    **{k: v for k, v in vars(args).items() if k not in ("quick", "selected", "argv")},
                    "targets": args.selected,
                    "client_cpu": layout.client_cpu,
                    "proxy_cpu": layout.proxy_cpu,
                    "request": f"GET {REQUEST_PATH} with Authorization: Bearer <RS256, 2048-bit>",
                },
                "environment": {**env_info, "loadavg_end": os.getloadavg()},
                "checks": {name: asdict(c) for name, c in checks.items()},
                "notes": notes,
                "runs": {name: [_run_record(m) for m in ms] for name, ms in runs.items()},
                "discarded_noisy_runs": {
                    name: [_run_record(m) for m in ms] for name, ms in discarded.items() if ms
                },
                "summary": {name: asdict(s) for name, s in summaries.items()},
                "ratios": ratio_values,
                "table": table,
            },
        )
        log(f"results written to {out.relative_to(REPO_DIR)}")
    return _exit_status(args, checks, summaries)


def write_results(path: Path, data: Mapping[str, Any]) -> Path:
    """Write the results JSON (bench/results/ is git-ignored)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _exit_status(
    args: argparse.Namespace, checks: Mapping[str, CheckResult], summaries: Mapping[str, Summary]
) -> int:
    failed_checks = any(not c.ok for c in checks.values())
    invalid_runs = any(s.valid_runs < s.runs for s in summaries.values())
    skipped = [t for t in args.selected if t not in checks]
    if skipped:
        log(f"warning: not measured (could not be started): {', '.join(skipped)}")
    if failed_checks or invalid_runs or (skipped and args.require_all):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
