"""The container image, without Docker: the Dockerfile is checked statically, its build steps are
replayed in a venv, and its HEALTHCHECK and stop signal are exercised against a real gateway.

Docker cannot build here, so:

- the Dockerfile is parsed instruction by instruction and each property the image promises
  (slim base, non-root fixed uid, only the venv in the final stage, HEALTHCHECK on /healthz,
  ports, entrypoint, SIGTERM) is asserted;
- the build context is computed from ``.dockerignore``, and the build stage's steps (a wheel of
  the project built from exactly that context, installed into a fresh venv) are run with pip;
- the HEALTHCHECK command line is run as written against a real ``jwt-gateway serve``, which is
  then stopped with the image's STOPSIGNAL and must exit cleanly.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONFIG_PATH = "/etc/jwt-gateway/gateway.yaml"
VENV = "/opt/venv"

# ------------------------------------------------------------------------------ the parser


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value

    def split(self) -> tuple[dict[str, str], list[str]]:
        """Leading ``--flag=value`` options, and the remaining shell words."""
        words = shlex.split(self.args)
        flags: dict[str, str] = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words


@dataclass
class Stage:
    """A build stage: its base image (build ARGs substituted), name and instructions."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        """Every instruction with this keyword, in order."""
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        """The last instruction with this keyword (the one that takes effect); it must exist."""
        found = self.all(keyword)
        assert found, f"no {keyword} in stage {self.name or self.base}"
        return found[-1]


def _substitute(text: str, args: Mapping[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def parse_dockerfile(text: str) -> list[Stage]:
    """Parse ``text`` into stages. Comments and blank lines are dropped (also inside
    continuations, as Docker does); ARGs before the first FROM are substituted into FROM."""
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1].rstrip() + " "
            continue
        logical.append((start, buffer + stripped))
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), number)
        if instruction.keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(_substitute(words[0], global_args), name))
        elif not stages:
            assert instruction.keyword == "ARG", f"line {number}: only ARG may precede FROM"
            name, _, default = instruction.args.partition("=")
            global_args[name.strip()] = default.strip().strip("\"'")
        else:
            stages[-1].instructions.append(instruction)
    return stages


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for word in shlex.split(instruction.args):
            name, sep, value = word.partition("=")
            assert sep, f"line {instruction.line}: use ENV NAME=value"
            env[name] = value
    return env


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_parser_reads_continuations_comments_and_args() -> None:
    parsed = parse_dockerfile(
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.12-slim\nFROM ${BASE} AS build\n"
        'RUN a \\\n  # a comment inside\n  && b\nFROM $BASE\nCMD ["x", "y"]\n'
    )
    assert [(s.base, s.name) for s in parsed] == [("python:3.12-slim", "build"), ("python:3.12-slim", None)]
    assert parsed[0].one("RUN").args == "a && b"
    assert parsed[1].one("CMD").exec_form() == ["x", "y"]


# --------------------------------------------------------------------------- static checks


def test_multi_stage_build_on_one_slim_python_base(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "a build stage and a runtime stage"
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", stages[-1].base)
    # The venv's bin/python links to the base's interpreter: it only runs on the same image.
    assert {s.base for s in stages} == {stages[-1].base}
    names = [s.name for s in stages[:-1]]
    assert all(names) and len(set(names)) == len(names), "earlier stages are named (AS ...)"


def test_final_stage_runs_as_a_fixed_non_root_uid(final: Stage) -> None:
    user = final.one("USER")
    uid, _, gid = user.args.partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) >= 1000, f"USER {user.args} is not a fixed non-root uid"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert user.line < final.one("ENTRYPOINT").line and user.line < final.one("CMD").line
    created = " ".join(i.args for i in final.all("RUN"))
    assert f"--uid {uid}" in created, "the uid is created in the image"
    assert "--shell /usr/sbin/nologin" in created


def test_final_stage_installs_no_build_tools(final: Stage) -> None:
    for run in final.all("RUN"):
        assert not re.search(r"\b(apt-get|apt|apk|dnf|yum)\b.*\binstall\b|\bapk add\b", run.args), run
        assert not re.search(r"\b(gcc|g\+\+|clang|make|build-essential|[a-z0-9]+-dev)\b", run.args), run
        assert not re.search(r"\bpip\b", run.args), f"line {run.line}: pip belongs in the build stage"
    assert not final.all("ADD")


def test_final_stage_copies_only_the_venv_from_the_build_stage(stages: list[Stage], final: Stage) -> None:
    build_names = {s.name for s in stages[:-1]}
    copies = final.all("COPY")
    assert copies, "the venv is copied in"
    for copy in copies:
        flags, words = copy.split()
        assert flags.get("from") in build_names, f"line {copy.line}: copies from the build context"
        assert words == [VENV, VENV], f"line {copy.line}: only {VENV} is copied"


def test_no_dev_dependencies_tests_or_benchmarks_reach_the_image(stages: list[Stage]) -> None:
    for stage in stages:
        for instruction in stage.instructions:
            assert "[dev]" not in instruction.args, instruction
            if instruction.keyword in ("COPY", "ADD"):
                assert not re.search(r"\b(tests|bench)\b", instruction.args), instruction


def test_build_stage_builds_a_wheel_and_installs_it_into_the_venv(stages: list[Stage]) -> None:
    build = " && ".join(i.args for s in stages[:-1] for i in s.all("RUN"))
    assert "pip wheel --no-deps" in build
    assert f"-m venv --without-pip {VENV}" in build
    # Every dependency as a wheel: nothing to compile, so no compiler even in the build stage.
    assert "--only-binary=:all:" in build
    assert f"{VENV}/bin/jwt-gateway --version" in build, "the build fails if the install is broken"


def test_environment_ports_and_signals(final: Stage) -> None:
    env = _env(final)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith(f"{VENV}/bin:")
    exposed = {w.split("/")[0] for i in final.all("EXPOSE") for w in i.args.split()}
    assert {"8080", "9901"} <= exposed
    assert final.one("STOPSIGNAL").args == "SIGTERM"


def test_entrypoint_is_the_console_script_with_the_config_path(final: Stage) -> None:
    # Exec form: the gateway is PID 1 and gets SIGTERM itself, with no shell in between.
    assert final.one("ENTRYPOINT").exec_form() == ["jwt-gateway"]
    assert final.one("CMD").exec_form() == ["serve", "--config", CONFIG_PATH]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["jwt-gateway"] == "gateway.cli:main"
    assert any(CONFIG_PATH.rsplit("/", 1)[0] in i.args for i in final.all("RUN")), "the config dir exists"


def _healthcheck_argv(final: Stage) -> tuple[dict[str, str], list[str]]:
    instruction = final.one("HEALTHCHECK")
    options, _, command = instruction.args.partition("CMD ")
    flags = dict(w[2:].partition("=")[::2] for w in options.split())
    argv = json.loads(command)
    assert isinstance(argv, list)
    return flags, argv


def test_healthcheck_probes_healthz_on_the_admin_port_with_python(final: Stage) -> None:
    flags, argv = _healthcheck_argv(final)
    assert argv[0] in ("python", "python3"), "slim images have no curl or wget"
    assert "http://127.0.0.1:9901/healthz" in " ".join(argv)
    assert {"interval", "timeout", "retries"} <= set(flags)


# ---------------------------------------------------------------------------- build context


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (negated, regex) pairs: Docker's rules for the patterns used here
    (``*`` one level, ``**`` any depth, ``!`` re-includes, the last match wins)."""
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex, i = regex + line[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def in_build_context(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether ``relative`` (a POSIX path from the repository root) is sent to the builder."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in patterns:
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negated
    return not excluded


def _source_files() -> Iterator[str]:
    for directory, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", ".mypy_cache", ".hypothesis")]
        for name in files:
            yield Path(directory, name).relative_to(ROOT).as_posix()


def _package_modules() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "gateway").rglob("*.py")}


def test_dockerignore_sends_only_the_package_and_its_metadata() -> None:
    patterns = _ignore_patterns()
    context = {f for f in _source_files() if in_build_context(f, patterns)}
    assert _package_modules() | {"pyproject.toml", "gateway/py.typed"} <= context
    outside_package = {f for f in context if not f.startswith("gateway/")}
    assert outside_package <= {"pyproject.toml", "README.md", "LICENSE"}, sorted(outside_package)
    for outside in (
        "tests/deploy/test_dockerfile.py",
        "bench/README.md",
        ".venv/bin/python",
        ".git/config",
        "config/kubernetes/sidecar.yaml",
        "gateway.example.yaml",
        "Dockerfile",
        "gateway/__pycache__/cli.cpython-311.pyc",
        "gateway/auth/__pycache__/keys.cpython-311.pyc",
    ):
        assert not in_build_context(outside, patterns), outside


# --------------------------------------------------------------- the build steps, replayed


def _pip_can_build_offline() -> bool:
    """The running interpreter has the build backend pyproject.toml asks for, with bdist_wheel."""
    try:
        version = tuple(int(x) for x in metadata.version("setuptools").split(".")[:2])
    except metadata.PackageNotFoundError:
        return False
    if version < (77, 0):
        return False
    try:
        metadata.version("wheel")
    except metadata.PackageNotFoundError:
        return version >= (70, 1)  # bdist_wheel moved into setuptools in 70.1
    return True


_NO_INDEX = re.compile(
    r"No matching distribution found for (setuptools|wheel)|Failed to establish a new connection|"
    r"Temporary failure in name resolution|Network is unreachable"
)


def _run(
    argv: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False
    )


def test_install_steps_of_the_build_stage_work_in_a_venv(tmp_path: Path) -> None:
    # 1. The build context, exactly as .dockerignore leaves it (COPY . .).
    src = tmp_path / "src"
    patterns = _ignore_patterns()
    for relative in _source_files():
        if in_build_context(relative, patterns):
            (src / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, src / relative)

    # 2. pip wheel --no-deps (offline when this interpreter has the build backend; otherwise in
    #    pip's isolated build env, as in the image, which needs the package index).
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), str(src)]
    if _pip_can_build_offline():
        build.insert(4, "--no-build-isolation")
    built = _run(build, timeout=180)
    if built.returncode != 0 and _NO_INDEX.search(built.stdout + built.stderr):
        pytest.skip(
            "the build backend (setuptools>=68, wheel) is not installed and no package index is reachable"
        )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("jwt_gateway-*.whl")

    # 3. The wheel holds every module of the package, and nothing else of the repository.
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        requires = [
            line.removeprefix("Requires-Dist: ")
            for line in archive.read(f"{dist_info}/METADATA").decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
    assert _package_modules() | {"gateway/py.typed"} <= names
    assert {n.split("/")[0] for n in names} == {"gateway", dist_info}
    assert re.search(r"^jwt-gateway = gateway\.cli:main$", entry_points, re.MULTILINE)
    for tool in ("pytest", "ruff", "mypy", "hypothesis"):
        for requirement in requires:
            if re.match(rf"{tool}\b", requirement, re.IGNORECASE):
                assert 'extra == "dev"' in requirement, f"{tool} is a runtime dependency"

    # 4. A venv without pip, the wheel installed into it by another pip (as in the image).
    venv = tmp_path / "venv"
    created = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    installed = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--no-compile",
            str(wheel),
        ]
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # 5. The console script runs from the venv, importing the package from the venv. The
    #    dependencies come from this test environment (PYTHONPATH); the editable install of the
    #    checkout is not on that path (its finder is only activated by a .pth file), and the
    #    commands run outside the checkout so that `import gateway` cannot find it in the cwd.
    site_packages = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sorted(site_packages)), "PYTHONNOUSERSITE": "1"}
    version = _run([str(venv / "bin" / "jwt-gateway"), "--version"], env=env, cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().startswith("jwt-gateway ")
    where = _run([str(python), "-c", "import gateway; print(gateway.__file__)"], env=env, cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr

    # 6. And validates a config with everything it needs at run time.
    config = tmp_path / "gateway.yaml"
    config.write_text(_minimal_config(listen=8080, admin=9901), encoding="utf-8")
    checked = _run(
        [str(venv / "bin" / "jwt-gateway"), "check", "--config", str(config)],
        env={**env, **_SECRET},
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{config}: OK" in checked.stdout


# ------------------------------------------------------- HEALTHCHECK and STOPSIGNAL, for real

_SECRET = {"DEPLOY_TEST_HMAC_SECRET": "k" * 40}


def _minimal_config(*, listen: int, admin: int, upstream: str = "http://127.0.0.1:9") -> str:
    return f"""
listen: {{host: 127.0.0.1, port: {listen}}}
admin: {{host: 127.0.0.1, port: {admin}}}
upstream: {upstream}
providers:
  local:
    issuer: null
    secret: ${{DEPLOY_TEST_HMAC_SECRET}}
    algorithms: [HS256]
    audience: any
routes:
  - match: {{path: /slow}}
    auth: public
proxy: {{shutdown_timeout: 15s}}
logging: {{access_log: false}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the gateway exited during startup:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with _NO_PROXY.open(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{url} did not answer within the startup bound")


class _SlowUpstream:
    """An upstream that holds each request until released: a request in flight on demand."""

    def __init__(self) -> None:
        self.received = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.received.set()
                outer.release.wait(20)
                body = b"drained"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _SlowUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_healthcheck_command_and_stop_signal_against_a_real_gateway(final: Stage, tmp_path: Path) -> None:
    _, argv = _healthcheck_argv(final)
    # The image's `python` is the venv's; here it is this test environment's interpreter.
    healthcheck = [sys.executable, *argv[1:]]
    entry, cmd = final.one("ENTRYPOINT").exec_form(), final.one("CMD").exec_form()
    assert entry == ["jwt-gateway"] and cmd is not None
    script = Path(sys.executable).with_name("jwt-gateway")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]
    listen_port, admin_port = _free_port(), _free_port()
    config = tmp_path / "gateway.yaml"
    health_url = f"http://127.0.0.1:{admin_port}/healthz"
    # A proxy in the environment must not capture the loopback probe.
    probe_env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    probe_env |= {
        "JWT_GATEWAY_HEALTH_URL": health_url,
        "HTTP_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
    }

    with _SlowUpstream() as upstream:
        config.write_text(_minimal_config(listen=listen_port, admin=admin_port, upstream=upstream.url))
        # CMD as the image runs it, with this test's config file in place of the mounted one.
        args = [str(config) if a == CONFIG_PATH else a for a in cmd]
        log = tmp_path / "gateway.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [*command, *args], env={**os.environ, **_SECRET}, stdout=log_file, stderr=subprocess.STDOUT
            )
        try:
            _wait_healthy(health_url, process, log, time.monotonic() + 20)
            healthy = _run(healthcheck, env=probe_env, timeout=10)
            assert healthy.returncode == 0, healthy.stderr

            # A request in flight when the stop signal arrives still gets its answer.
            answers: list[bytes] = []

            def client() -> None:
                with _NO_PROXY.open(f"http://127.0.0.1:{listen_port}/slow", timeout=30) as response:
                    answers.append(response.read())

            request = threading.Thread(target=client)
            request.start()
            assert upstream.received.wait(10), "the request did not reach the upstream"
            process.send_signal(getattr(signal, final.one("STOPSIGNAL").args))
            time.sleep(0.3)
            upstream.release.set()
            request.join(20)
            assert answers == [b"drained"]
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pytest.fail("the gateway did not exit after draining")
            # After a graceful shutdown uvicorn re-raises the signal, so the exit status says
            # "terminated by SIGTERM" (docker: 143); a crash would be a positive exit code.
            assert process.returncode in (0, -signal.SIGTERM), log.read_text(errors="replace")[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    unhealthy = _run(healthcheck, env=probe_env, timeout=10)
    assert unhealthy.returncode != 0, "nothing listens any more: the probe must fail"
