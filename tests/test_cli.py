"""The ``jwt-gateway`` command line: explain, test and check, in process (``main([...])``); and
the installed console script as a subprocess: --version, config errors of check and serve, and
serve really listening where its flags say."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml

from gateway import __version__
from gateway.cli import EXAMPLES, main
from tests.ops.harness import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = str(ROOT / "config/examples/policy.yaml")
EXAMPLE_TESTS = str(ROOT / "config/examples/policy_tests.yaml")
SECRET = "a-test-hmac-secret-of-at-least-32-bytes!!"
SCRIPT = Path(sys.executable).parent / "jwt-gateway"

CONFIG: dict[str, Any] = {
    "upstream": "http://127.0.0.1:9",
    "providers": {
        "hs": {"issuer": "https://hs.test", "secret": SECRET, "algorithms": ["HS256"], "audiences": ["api"]}
    },
    "headers": {"claims": {"X-User-Id": "sub"}},
    "routes": [
        {"name": "public", "match": {"path": "/public/**"}, "auth": "public"},
        {"name": "admin", "match": {"path": "/admin/**"}, "require": {"claim": "roles", "contains": "admin"}},
        {"name": "api", "match": {"path": "/api/**"}},
    ],
}


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return str(path)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as caught:
        main(list(argv))
    assert caught.value.code == 2
    return capsys.readouterr().err


def hs_token(**claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": "https://hs.test", "aud": "api", "sub": "alice", "iat": now, "exp": now + 600, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


# ---------------------------------------------------------------------------------- explain


def test_explain_allowed_exits_0(capsys: pytest.CaptureFixture[str], config: str) -> None:
    code, out, _ = run(
        capsys,
        "explain",
        "--config",
        config,
        "--path",
        "/admin/x",
        "--claims",
        '{"sub": "a", "roles": ["admin"]}',
    )
    assert code == 0
    assert "MATCH [1] admin" in out and "ALLOWED" in out and "x-user-id: a" in out


def test_explain_denied_exits_1(capsys: pytest.CaptureFixture[str], config: str) -> None:
    code, out, _ = run(
        capsys, "explain", "-c", config, "-X", "DELETE", "--path", "/admin/x", "--claims", "{}"
    )
    assert code == 1
    assert "DENIED 403 rule_failed" in out and "claim absent" in out


def test_explain_json(capsys: pytest.CaptureFixture[str], config: str) -> None:
    code, out, _ = run(
        capsys,
        "explain",
        "--config",
        config,
        "--path",
        "/public/x?q=1",
        "--host",
        "gw.test",
        "-H",
        "X-User-Id: mallory",
        "--header",
        "Connection:close",
        "--json",
    )
    assert code == 0
    report = json.loads(out)
    assert report["request"] == {
        "method": "GET",
        "path": "/public/x",
        "query": "q=1",
        "host": "gw.test",
        "credentials": "none",
    }
    assert {h["name"] for h in report["stripped_headers"]} == {"host", "x-user-id", "connection"}
    assert report["upstream"]["url"] == "http://127.0.0.1:9/public/x?q=1"


def test_explain_token_from_stdin_is_never_printed(
    capsys: pytest.CaptureFixture[str], config: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = hs_token(roles=["admin"])
    monkeypatch.setattr(sys, "stdin", io.StringIO(token + "\n"))
    code, out, err = run(capsys, "explain", "--config", config, "--path", "/admin/x", "--token", "-")
    assert code == 0
    assert "verified (provider hs)" in out
    assert token not in out and token not in err


def test_explain_claims_from_a_file(capsys: pytest.CaptureFixture[str], config: str, tmp_path: Path) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text('{"sub": "bob", "roles": ["admin"]}')
    code, out, _ = run(capsys, "explain", "--config", config, "--path", "/admin/x", "--claims", f"@{claims}")
    assert code == 0 and "x-user-id: bob" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--claims", "{not json"], "--claims: not a readable JSON object"),
        (["--claims", "[1, 2]"], "must be a JSON object"),
        (["--claims", "@/nonexistent/claims.json"], "--claims: not a readable JSON object"),
        (["--claims", "{}", "--token", "x"], "not allowed with argument"),
        (["-H", "X-User-Id mallory"], "write 'Name: value'"),
        (["-H", "X-User-Id : mallory"], "write 'Name: value'"),
        (["-H", ": mallory"], "write 'Name: value'"),
        (["-H", "Ünicode: x"], "is not a valid header name"),
    ],
)
def test_explain_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], config: str
) -> None:
    err = usage_error(capsys, "explain", "--config", config, "--path", "/api/x", *argv)
    assert message in err


def test_explain_config_error_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [{match: {path: admin}}]\n")
    code, out, err = run(capsys, "explain", "--config", str(bad), "--path", "/admin")
    assert code == 2 and out == ""
    assert (
        err.strip()
        == f"jwt-gateway: config error: {bad}: routes[0].match.path: a path pattern must start with /"
    )


# ------------------------------------------------------------------------------------- test


def test_policy_tests_pass_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "test", EXAMPLE_TESTS)
    assert code == 0
    assert out.count("PASS  ") >= 15 and "FAIL" not in out


def test_policy_tests_with_explicit_config(
    capsys: pytest.CaptureFixture[str], config: str, tmp_path: Path
) -> None:
    tests = tmp_path / "t.yaml"
    tests.write_text(
        "cases:\n"
        "  - {name: ok, request: {path: /public/x}, expect: {status: 200}}\n"
        "  - {name: bad, request: {path: /api/x}, expect: {status: 200, reason: ok}}\n"
    )
    code, out, _ = run(capsys, "test", "--config", config, str(tests))
    assert code == 1
    assert "PASS  ok" in out
    assert "FAIL  bad: status 401, expected 200; reason token_missing, expected ok" in out
    assert "1 passed, 1 failed" in out


def test_invalid_test_file_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], config: str, tmp_path: Path
) -> None:
    tests = tmp_path / "t.yaml"
    tests.write_text("cases:\n  - {name: a, request: {path: /x}, expect: {status: OK}}\n")
    code, out, err = run(capsys, "test", "--config", config, str(tests))
    assert code == 2 and out == ""
    assert err == (
        f"jwt-gateway: invalid test file: {tests}: cases[0].expect.status: "
        "Input should be a valid integer, unable to parse string as an integer\n"
    )


def test_policy_tests_against_an_invalid_config_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("routes: [{match: {path: /x}, auth: maybe}]\n")
    code, _, err = run(capsys, "test", "--config", str(bad), EXAMPLE_TESTS)
    assert code == 2 and err.startswith("jwt-gateway: config error: ")


# ------------------------------------------------------------------------------------ check


def test_check_warns_about_a_route_that_can_never_match(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = json.loads(json.dumps(CONFIG))
    config["routes"] += [
        {"name": "admin-users", "match": {"path": "/admin/users", "methods": ["GET"]}, "auth": "public"},
        {"name": "all-public", "match": {"path": "/**"}, "auth": "public"},
        {"name": "too-late", "match": {"path": "/anything/{id}"}},
    ]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, _ = run(capsys, "check", "--config", str(path))
    assert code == 0
    assert "warning: routes[3] (admin-users) can never match: routes[1] (admin) comes first" in out
    assert "warning: routes[5] (too-late) can never match: routes[4] (all-public) comes first" in out
    assert "2 warning(s)" in out


def test_check_without_warnings(capsys: pytest.CaptureFixture[str], config: str) -> None:
    code, out, _ = run(capsys, "check", "--config", config)
    assert code == 0 and "warning:" not in out
    assert "routes (first match in file order wins):" in out


def test_check_lists_the_providers_and_the_route_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = json.loads(json.dumps(CONFIG))
    config["providers"]["idp"] = {
        "issuer": "https://idp.test",
        "jwks_uri": "http://127.0.0.1:9/jwks.json",
        "algorithms": ["RS256", "ES256"],
        "audience": "any",
    }
    config["providers"]["legacy"] = {
        "issuer": "https://legacy.test",
        "public_key_file": str(ROOT / "config/examples/keys/example-rs256.pem"),
        "algorithms": ["RS256"],
        "audiences": ["a", "b"],
    }
    config["routes"] += [
        {
            "name": "legacy",
            "match": {"path": "/legacy/{id}", "methods": ["GET", "POST"], "host": "api.test"},
            "providers": ["legacy"],
            "upstream": "http://127.0.0.1:10",
            "enforce": False,
        },
        {"match": {"path": "/internal/**"}, "auth": "deny"},
    ]
    config["unmatched_status"] = 403
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    code, out, err = run(capsys, "check", "--config", str(path))
    assert code == 0 and err == ""
    assert out == (
        f"{path}: OK\n"
        "\n"
        "providers:\n"
        "  hs: issuer='https://hs.test' algorithms=HS256 audiences=api keys=HMAC secret\n"
        "  idp: issuer='https://idp.test' algorithms=RS256,ES256 audiences=any "
        "keys=jwks_uri http://127.0.0.1:9/jwks.json\n"
        f"  legacy: issuer='https://legacy.test' algorithms=RS256 audiences=a,b "
        f"keys=public_key_file {ROOT / 'config/examples/keys/example-rs256.pem'}\n"
        "\n"
        "routes (first match in file order wins):\n"
        "  [0] public: * /public/** host=* auth=public -> http://127.0.0.1:9\n"
        "  [1] admin: * /admin/** host=* auth=required -> http://127.0.0.1:9 rule\n"
        "  [2] api: * /api/** host=* auth=required -> http://127.0.0.1:9\n"
        "  [3] legacy: GET,POST /legacy/{id} host=api.test auth=required -> http://127.0.0.1:10 "
        "providers=legacy report-only\n"
        "  [4] route4: * /internal/** host=* auth=deny -> (denied)\n"
        "\n"
        "unmatched requests: 403, never forwarded\n"
    )


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for command in ("serve", "check", "explain", "test", "demo"):
        assert command in out


def test_help_shows_the_examples_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert EXAMPLES in out  # verbatim: the raw formatter keeps the block's layout
    for line in (
        "examples:",
        "  jwt-gateway demo ",
        "  jwt-gateway serve --config gateway.yaml ",
        "  jwt-gateway check --config gateway.yaml ",
        "  jwt-gateway explain --config gateway.yaml --method GET --path /admin/users \\",
        "  jwt-gateway test --config gateway.yaml policy_tests.yaml",
        "exit codes: 0 ok, 1 check/test failure, 2 invalid configuration or usage",
    ):
        assert line in out, line
    # `serve --help` shows them too, under the serve flags.
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--host HOST" in out and "--port PORT" in out and "--log-level" in out
    assert EXAMPLES in out


# ---------------------------------------------------------------------- the console script


def test_console_script_smoke() -> None:
    done = subprocess.run(
        [str(SCRIPT), "explain", "--config", EXAMPLE_CONFIG, "--path", "/healthz", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["decision"]["outcome"] == "allowed"
    done = subprocess.run(
        [str(SCRIPT), "test", EXAMPLE_TESTS], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def script(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed ``jwt-gateway`` console script."""
    return subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, timeout=timeout, check=False)


def test_version_names_the_program_and_its_version() -> None:
    done = script("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"jwt-gateway {__version__}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)


# A bad config: (file content, the expected "<key path>: <reason>" after the file name). Written
# to bad.yaml; the missing-file case writes nothing.
BAD_CONFIGS = {
    "unknown key in a rule": (
        "upstream: http://127.0.0.1:9\n"
        "routes:\n"
        "  - match: {path: /x}\n"
        "    require: {all: [{claim: roles, contains: admin, claims: x}]}\n",
        "routes[0].require.all[0].claims: unknown key",
    ),
    "wrong type": (
        "upstream: http://127.0.0.1:9\n"
        "providers:\n"
        "  hs: {issuer: https://hs.test, secret: x, algorithms: [HS256], audience: any,"
        " jwks: {timeout: soon}}\n"
        "routes: [{match: {path: /x}}]\n",
        "providers.hs.jwks.timeout: expected a duration such as 30s, 500ms, 5m or 1h",
    ),
    "YAML syntax": (
        "upstream: http://127.0.0.1:9\nroutes: [\n",
        "line 3, column 1: invalid YAML: expected the node content, but found '<stream end>'",
    ),
    "missing file": (None, "cannot read the file: No such file or directory"),
}
# Errors found while compiling the validated config (after load_config), not by the schema.
COMPILE_ERRORS = {
    "no upstream": (
        "providers:\n"
        f"  hs: {{issuer: https://hs.test, secret: '{SECRET}', algorithms: [HS256], audience: any}}\n"
        "routes: [{match: {path: /x}}]\n",
        "routes[0]: no upstream: set routes[].upstream or the top-level upstream",
    ),
    "unknown path parameter": (
        "upstream: http://127.0.0.1:9\n"
        "providers:\n"
        f"  hs: {{issuer: https://hs.test, secret: '{SECRET}', algorithms: [HS256], audience: any}}\n"
        "routes: [{match: {path: '/users/{id}'}, require: {claim: sub, equals_param: user}}]\n",
        "routes[0].require.equals_param: the route's path has no parameter {user}",
    ),
}


def _cases() -> list[Any]:
    # Load-time errors (schema, YAML, file) and compile-time ones (found by build_policy) alike.
    return [
        pytest.param(command, text, tail, id=f"{command}-{name}")
        for command in ("check", "serve")
        for name, (text, tail) in {**BAD_CONFIGS, **COMPILE_ERRORS}.items()
    ]


@pytest.mark.parametrize(("command", "text", "tail"), _cases())
def test_a_bad_config_exits_2_with_one_line_naming_file_key_and_reason(
    command: str, text: str | None, tail: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    if text is not None:
        bad.write_text(text)
    done = script(command, "--config", str(bad))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0] == f"jwt-gateway: config error: {bad}: {tail}"


def _accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def test_serve_listens_where_its_flags_say_and_stops_on_sigterm(tmp_path: Path) -> None:
    port, config_port, closed = free_port(), free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    # The file names another address and port, and level info: the flags must win.
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.2", "port": config_port},
                "admin": {"enabled": False},
                "upstream": f"http://127.0.0.1:{closed}",
                "logging": {"level": "info", "access_log": False},
                "routes": [{"match": {"path": "/**"}, "auth": "public"}],
            }
        )
    )
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [
                str(SCRIPT),
                "serve",
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            stdout=stdout,
            stderr=stderr,
        )
    try:

        def listening() -> bool:
            assert proc.poll() is None, err.read_text()
            return _accepts(port)

        wait_until(listening, timeout=20, interval=0.05, what="jwt-gateway serve")
        # It is the gateway: the route is public, the upstream's port is closed.
        response = httpx.get(f"http://127.0.0.1:{port}/anything")
        assert response.status_code == 502
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["reason"] == "upstream_unavailable"
        assert not _accepts(config_port, "127.0.0.2")  # the file's listen address was overridden
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logged = [json.loads(line) for line in err.read_text().splitlines() if line.startswith("{")]
    levels = {entry["level"] for entry in logged}
    # --log-level warning: the upstream failure is logged, nothing at info (not even the
    # "listening on" and uvicorn startup lines the config's level would show).
    assert any("upstream_unavailable" in entry["message"] for entry in logged), logged
    assert levels <= {"warning", "error"}, logged


def test_serving_on_a_taken_port_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        "upstream: http://127.0.0.1:9\nadmin: {enabled: false}\n"
        "providers:\n"
        f"  hs: {{issuer: https://hs.test, secret: '{'s' * 32}', algorithms: [HS256], audience: any}}\n"
        "routes: [{match: {path: /x}}]\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--config", str(config), "--port", str(port), "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Address already in use" in err and "Traceback" not in err
